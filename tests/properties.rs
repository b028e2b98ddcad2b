//! Property tests: the name filter and the config parser never panic and
//! keep their rules on any input; and the engine, driven through any
//! interleaving of arrivals, prunes, rescans and restarts on real
//! directories, always matches a simple model of the promised semantics.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use distlink::config::{Config, Overrides};
use distlink::engine::{Engine, RacePoint};
use distlink::layout::Layout;
use distlink::names::NameFilter;
use distlink::state::Store;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_name_filter_keeps_its_rules(name in proptest::collection::vec(any::<u8>(), 0..80)) {
        let f = NameFilter::new(&["*.part".to_string()]).unwrap();
        let ok = f.is_candidate(OsStr::from_bytes(&name));
        let must_reject = name.is_empty()
            || name[0] == b'.'
            || name.contains(&b'/')
            || name.ends_with(b".__download__")
            || name.windows(19).any(|w| w == b"._checksum_failure_")
            || name.ends_with(b".part");
        if must_reject {
            prop_assert!(!ok);
        }
    }

    #[test]
    fn the_config_parser_never_panics(text in "\\PC{0,200}") {
        let _ = Config::from_toml(&text, &Overrides::default());
    }

    #[test]
    fn config_keys_with_wrong_types_are_errors_naming_the_key(
        key in prop::sample::select(vec!["root", "hosts", "state_dir", "settle", "ignore", "dedupe", "log_format"]),
        value in prop::sample::select(vec!["1", "true", "[1, 2]", "{ a = 1 }", "\"\"", "\"relative/x\""]),
    ) {
        let base: BTreeMap<&str, &str> = [
            ("root", "\"/r\""), ("hosts", "[\"a\"]"), ("state_dir", "\"/s\""), ("settle", "\"1s\""),
            ("ignore", "[]"), ("dedupe", "true"), ("log_format", "\"text\""),
        ].into_iter().collect();
        let mut text = String::new();
        for (k, v) in &base {
            text.push_str(&format!("{k} = {}\n", if *k == key { value } else { v }));
        }
        if let Err(e) = Config::from_toml(&text, &Overrides::default()) {
            let m = e.to_string();
            prop_assert!(m.contains(key) || m.contains("hosts"), "error does not name {}: {}", key, m);
        }
    }
}

/// One step of the engine property test.
#[derive(Debug, Clone)]
enum Op {
    /// A new download of `name` with `content` completes in `host` (only
    /// when the host lacks the name, as Portage fetches only what is missing).
    Arrive {
        host: usize,
        name: usize,
        content: u8,
    },
    /// `eclean-dist` on `host` drops `name`.
    Prune { host: usize, name: usize },
    /// A full rescan (overflow, SIGHUP, poll).
    Rescan,
    /// The daemon stops and starts again.
    Restart,
    /// While the daemon is stopped, `host` gets its own copy of `name` (a
    /// manual copy, a restored backup); the admin then runs
    /// `distlink sync --adopt` and starts the daemon.
    PlantAndAdopt {
        host: usize,
        name: usize,
        content: u8,
    },
    /// Two hosts lacking `name` fetch it at the same moment: both are in
    /// place before distlink handles either.
    Simultaneous {
        host: usize,
        other: usize,
        name: usize,
        content: u8,
        other_content: u8,
    },
    /// `racer` renames its own copy of `name` into place just as distlink,
    /// distributing `host`'s new download, is about to link it there
    /// (its `link()` then fails with EEXIST).
    RaceLink {
        host: usize,
        racer: usize,
        name: usize,
        content: u8,
        racer_content: u8,
    },
    /// `host` fetches again a name that other hosts hold, and prunes its
    /// fresh copy just as distlink is about to merge it into theirs.
    PruneDuringMerge { host: usize, name: usize },
    /// `host` is dropped from the configuration (a reload with a typo).
    Leave { host: usize },
    /// The host that left is configured again.
    Return,
    /// The record cannot be written any more (a full or failing disk).
    RecordFails,
    /// It can again.
    RecordRecovers,
}

fn op() -> impl Strategy<Value = Op> {
    let h = || 0..3usize;
    let n = || 0..4usize;
    let c = || 0..3u8;
    prop_oneof![
        4 => (h(), n(), c()).prop_map(|(host, name, content)| Op::Arrive { host, name, content }),
        3 => (h(), n()).prop_map(|(host, name)| Op::Prune { host, name }),
        1 => Just(Op::Rescan),
        1 => Just(Op::Restart),
        1 => (h(), n(), c()).prop_map(|(host, name, content)| Op::PlantAndAdopt { host, name, content }),
        2 => (h(), h(), n(), c(), c()).prop_map(|(host, other, name, content, other_content)| Op::Simultaneous { host, other, name, content, other_content }),
        2 => (h(), h(), n(), c(), c()).prop_map(|(host, racer, name, content, racer_content)| Op::RaceLink { host, racer, name, content, racer_content }),
        2 => (h(), n()).prop_map(|(host, name)| Op::PruneDuringMerge { host, name }),
        1 => h().prop_map(|host| Op::Leave { host }),
        1 => Just(Op::Return),
        1 => Just(Op::RecordFails),
        1 => Just(Op::RecordRecovers),
    ]
}

const HOSTS: [&str; 3] = ["a", "b", "c"];

fn open(root: &Path, state: &Path, hosts: &[usize], adopt: bool) -> Engine {
    let hosts: Vec<String> = hosts.iter().map(|&h| HOSTS[h].to_string()).collect();
    let layout = Layout::open(root, &hosts).unwrap();
    let store = Store::open(state).unwrap();
    let mut e = Engine::new(layout, NameFilter::new(&[]).unwrap(), store, true);
    if adopt {
        e.adopt().unwrap();
    }
    if !e.store.is_initialized() {
        e.store.mark_initialized();
    }
    e.sync_hosts().unwrap();
    e.reconcile(
        SystemTime::now() + Duration::from_secs(3600),
        Duration::ZERO,
        true,
    );
    e.commit().unwrap();
    e
}

fn content(c: u8) -> Vec<u8> {
    vec![c; 10 + c as usize]
}

fn file(root: &Path, host: usize, name: usize) -> std::path::PathBuf {
    root.join(HOSTS[host]).join(format!("n{name}"))
}

/// Puts `content` under `name` in `host` the way Portage does (a rename).
fn publish(root: &Path, host: usize, name: usize, c: u8) {
    let staged = root.join(format!(".staging-{host}"));
    fs::write(&staged, content(c)).unwrap();
    fs::rename(&staged, file(root, host, name)).unwrap();
}

/// What the model says a host holds under a name: `Some(content)`, or
/// `None` where the outcome is legitimately open (not checked). A name
/// missing from the map must be missing on disk.
type Held = BTreeMap<usize, Option<u8>>;

/// The engine's index of a host, given which host (if any) is absent.
fn idx(host: usize, absent: Option<usize>) -> usize {
    match absent {
        Some(a) if host > a => host - 1,
        _ => host,
    }
}

/// Cases of the engine property test: 128, or `PROPTEST_CASES` for a longer hunt.
fn engine_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: engine_cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_engine_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let state = tmp.path().join("state");
        fs::create_dir(&root).unwrap();
        let mut engine = Some(open(&root, &state, &[0, 1, 2], false));
        // The model: what each host holds under each name.
        let mut model: Vec<Held> = vec![BTreeMap::new(); 3];
        // The host that left the configuration, and the names that arrived
        // while it was away.
        let mut absent: Option<usize> = None;
        let mut missed: std::collections::BTreeSet<usize> = Default::default();
        // While the record cannot be written: the arrivals distlink could
        // not distribute yet (host, name, content).
        let mut failing = false;
        let mut waiting: Vec<(usize, usize, u8)> = Vec::new();
        for (step, op) in ops.iter().enumerate() {
            // Ops that need a healthy record wait until it is back.
            if failing && matches!(op, Op::PlantAndAdopt { .. } | Op::Simultaneous { .. } | Op::RaceLink { .. } | Op::PruneDuringMerge { .. } | Op::Leave { .. } | Op::Return) {
                continue;
            }
            let present: Vec<usize> = (0..3).filter(|h| Some(*h) != absent).collect();
            let here = |h: &usize| Some(*h) != absent;
            // Every present host lacking the name gets `c` (an arrival).
            let spread = |model: &mut Vec<Held>, name: usize, c: u8, missed: &mut std::collections::BTreeSet<usize>| {
                for &p in &present {
                    model[p].entry(name).or_insert(Some(c));
                }
                if absent.is_some() {
                    missed.insert(name);
                }
            };
            // Once the record works again (or a restart opens it afresh),
            // what waited is distributed: what its host still holds.
            let catch_up = |model: &mut Vec<Held>, waiting: &mut Vec<(usize, usize, u8)>, missed: &mut std::collections::BTreeSet<usize>| {
                for (h, name, c) in std::mem::take(waiting) {
                    if model[h].get(&name) == Some(&Some(c)) {
                        spread(model, name, c, missed);
                    }
                }
            };
            match op {
                Op::Arrive { host, name, content: c } if failing => {
                    if !here(host) || model[*host].contains_key(name)
                        || waiting.iter().any(|(_, n, _)| n == name) {
                        continue;
                    }
                    publish(&root, *host, *name, *c);
                    let e = engine.as_mut().unwrap();
                    prop_assert!(e.arrive(idx(*host, absent), OsStr::new(&format!("n{name}"))).is_err(),
                        "step {}: distributed while the record could not be written", step);
                    model[*host].insert(*name, Some(*c));
                    waiting.push((*host, *name, *c));
                }
                Op::RecordFails => {
                    if failing {
                        continue;
                    }
                    failing = true;
                    let e = engine.as_mut().unwrap();
                    e.store.inject_write_failures(true);
                    prop_assert!(e.commit().is_err());
                }
                Op::RecordRecovers => {
                    if !failing {
                        continue;
                    }
                    failing = false;
                    let e = engine.as_mut().unwrap();
                    e.store.inject_write_failures(false);
                    e.commit().unwrap();
                    // The daemon rescans once the record works again.
                    e.reconcile(SystemTime::now() + Duration::from_secs(3600), Duration::ZERO, false);
                    e.commit().unwrap();
                    catch_up(&mut model, &mut waiting, &mut missed);
                }
                Op::Arrive { host, name, content: c } => {
                    if !here(host) || model[*host].contains_key(name) {
                        continue;
                    }
                    publish(&root, *host, *name, *c);
                    let e = engine.as_mut().unwrap();
                    e.arrive(idx(*host, absent), OsStr::new(&format!("n{name}"))).unwrap();
                    e.commit().unwrap();
                    model[*host].insert(*name, Some(*c));
                    spread(&mut model, *name, *c, &mut missed);
                }
                Op::Prune { host, name } => {
                    if here(host) && model[*host].remove(name).is_some() {
                        let _ = fs::remove_file(file(&root, *host, *name));
                    }
                }
                Op::Rescan => {
                    let e = engine.as_mut().unwrap();
                    e.reconcile(SystemTime::now() + Duration::from_secs(3600), Duration::ZERO, false);
                    prop_assert_eq!(e.commit().is_ok(), !failing);
                }
                Op::Restart => {
                    // Stop (releasing the lock) before starting again; the
                    // record opens afresh (the disk was fixed meanwhile).
                    drop(engine.take());
                    engine = Some(open(&root, &state, &present, false));
                    failing = false;
                    catch_up(&mut model, &mut waiting, &mut missed);
                }
                Op::PlantAndAdopt { host, name, content: c } => {
                    if !here(host) || model[*host].contains_key(name) {
                        continue;
                    }
                    drop(engine.take());
                    fs::write(file(&root, *host, *name), content(*c)).unwrap();
                    model[*host].insert(*name, Some(*c));
                    if absent.is_some() {
                        // Recorded while a host was away: it may get it.
                        missed.insert(*name);
                    }
                    engine = Some(open(&root, &state, &present, true));
                }
                Op::Simultaneous { host, other, name, content: c, other_content: oc } => {
                    if host == other || !here(host) || !here(other)
                        || model[*host].contains_key(name) || model[*other].contains_key(name) {
                        continue;
                    }
                    publish(&root, *host, *name, *c);
                    publish(&root, *other, *name, *oc);
                    let n = format!("n{name}");
                    let e = engine.as_mut().unwrap();
                    e.arrive(idx(*host, absent), OsStr::new(&n)).unwrap();
                    e.arrive(idx(*other, absent), OsStr::new(&n)).unwrap();
                    e.commit().unwrap();
                    model[*host].insert(*name, Some(*c));
                    model[*other].insert(*name, Some(*oc));
                    spread(&mut model, *name, *c, &mut missed);
                }
                Op::RaceLink { host, racer, name, content: c, racer_content: rc } => {
                    if host == racer || !here(host) || !here(racer)
                        || model[*host].contains_key(name) || model[*racer].contains_key(name) {
                        continue;
                    }
                    publish(&root, *host, *name, *c);
                    let (r, ri, root2) = (*racer, idx(*racer, absent), root.clone());
                    let (nm, rcc) = (*name, *rc);
                    let n = format!("n{name}");
                    let e = engine.as_mut().unwrap();
                    e.race_hook = Some(Box::new(move |point, h, _| {
                        if point == RacePoint::BeforeLink && h == ri && !file(&root2, r, nm).exists() {
                            publish(&root2, r, nm, rcc);
                        }
                    }));
                    e.arrive(idx(*host, absent), OsStr::new(&n)).unwrap();
                    e.race_hook = None;
                    // The racer's own rename is an arrival too.
                    e.arrive(ri, OsStr::new(&n)).unwrap();
                    e.pay_owed();
                    e.commit().unwrap();
                    model[*host].insert(*name, Some(*c));
                    model[*racer].insert(*name, Some(*rc));
                    spread(&mut model, *name, *c, &mut missed);
                }
                Op::PruneDuringMerge { host, name } => {
                    // Another present host holds it for sure; host lacks it.
                    let Some(c) = present.iter().find_map(|p| model[*p].get(name).copied().flatten()) else {
                        continue;
                    };
                    if !here(host) || model[*host].contains_key(name) {
                        continue;
                    }
                    publish(&root, *host, *name, c);
                    let (hi, root2, nm, hh) = (idx(*host, absent), root.clone(), *name, *host);
                    let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let f2 = fired.clone();
                    let n = format!("n{name}");
                    let e = engine.as_mut().unwrap();
                    e.race_hook = Some(Box::new(move |point, h, _| {
                        if point == RacePoint::BeforeExchange && h == hi {
                            let _ = fs::remove_file(file(&root2, hh, nm));
                            f2.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                    }));
                    e.arrive(hi, OsStr::new(&n)).unwrap();
                    e.race_hook = None;
                    e.pay_owed();
                    e.commit().unwrap();
                    if fired.load(std::sync::atomic::Ordering::SeqCst) {
                        // Pruned mid-merge: it must stay pruned.
                        model[*host].remove(name);
                    } else {
                        // Its copy won (no other inode had more links): a
                        // new arrival like any other.
                        model[*host].insert(*name, Some(c));
                        spread(&mut model, *name, c, &mut missed);
                    }
                }
                Op::Leave { host } => {
                    if absent.is_some() {
                        continue;
                    }
                    drop(engine.take());
                    absent = Some(*host);
                    missed.clear();
                    let rest: Vec<usize> = (0..3).filter(|h| h != host).collect();
                    engine = Some(open(&root, &state, &rest, false));
                }
                Op::Return => {
                    let Some(back) = absent.take() else {
                        continue;
                    };
                    drop(engine.take());
                    engine = Some(open(&root, &state, &[0, 1, 2], false));
                    // It may get what arrived while it was away (if still
                    // held); what it pruned before leaving stays pruned.
                    for name in std::mem::take(&mut missed) {
                        model[back].entry(name).or_insert(None);
                    }
                }
            }
            // Disk equals the model, and equal content under one name is one inode.
            for (h, held) in model.iter().enumerate() {
                for name in 0..4usize {
                    let p = file(&root, h, name);
                    match held.get(&name) {
                        Some(Some(c)) => prop_assert_eq!(fs::read(&p).ok(), Some(content(*c)), "step {} {:?}: host {} n{}", step, op, HOSTS[h], name),
                        Some(None) => {}
                        None => prop_assert!(!p.exists(), "step {} {:?}: host {} regained n{}", step, op, HOSTS[h], name),
                    }
                }
                let stray: Vec<_> = fs::read_dir(root.join(HOSTS[h])).unwrap()
                    .map(|e| e.unwrap().file_name())
                    .filter(|n| n.as_bytes().starts_with(b"."))
                    .collect();
                prop_assert!(stray.is_empty(), "temp names left: {:?}", stray);
            }
            for name in 0..4usize {
                let mut by_content: BTreeMap<u8, std::collections::BTreeSet<u64>> = BTreeMap::new();
                // A host away from the configuration is not managed: its
                // copies are merged once it is back. A waiting arrival is
                // merged once the record works again.
                if waiting.iter().any(|(_, n, _)| *n == name) {
                    continue;
                }
                for (h, held) in model.iter().enumerate().filter(|(h, _)| Some(*h) != absent) {
                    if let Some(Some(c)) = held.get(&name) {
                        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(file(&root, h, name)).unwrap());
                        by_content.entry(*c).or_default().insert(ino);
                    }
                }
                for (c, inos) in by_content {
                    prop_assert_eq!(inos.len(), 1, "step {} {:?}: n{} content {} on several inodes", step, op, name, c);
                }
            }
        }
    }
}
