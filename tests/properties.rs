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
use distlink::engine::Engine;
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
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..4usize, 0..3u8).prop_map(|(host, name, content)| Op::Arrive { host, name, content }),
        3 => (0..3usize, 0..4usize).prop_map(|(host, name)| Op::Prune { host, name }),
        1 => Just(Op::Rescan),
        1 => Just(Op::Restart),
        1 => (0..3usize, 0..4usize, 0..3u8).prop_map(|(host, name, content)| Op::PlantAndAdopt { host, name, content }),
    ]
}

const HOSTS: [&str; 3] = ["a", "b", "c"];

fn open(root: &Path, state: &Path, adopt: bool) -> Engine {
    let hosts: Vec<String> = HOSTS.iter().map(|s| s.to_string()).collect();
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let state = tmp.path().join("state");
        fs::create_dir(&root).unwrap();
        let mut engine = Some(open(&root, &state, false));
        // The model: what each host holds under each name.
        let mut model: Vec<BTreeMap<usize, u8>> = vec![BTreeMap::new(); 3];
        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::Arrive { host, name, content: c } => {
                    if model[*host].contains_key(name) {
                        continue;
                    }
                    let n = format!("n{name}");
                    let staged = root.join(".staging");
                    fs::write(&staged, content(*c)).unwrap();
                    fs::rename(&staged, root.join(HOSTS[*host]).join(&n)).unwrap();
                    let e = engine.as_mut().unwrap();
                    e.arrive(*host, OsStr::new(&n)).unwrap();
                    e.commit().unwrap();
                    model[*host].insert(*name, *c);
                    for (p, held) in model.iter_mut().enumerate() {
                        if p != *host {
                            held.entry(*name).or_insert(*c);
                        }
                    }
                }
                Op::Prune { host, name } => {
                    if model[*host].remove(name).is_some() {
                        fs::remove_file(root.join(HOSTS[*host]).join(format!("n{name}"))).unwrap();
                    }
                }
                Op::Rescan => {
                    let e = engine.as_mut().unwrap();
                    e.reconcile(SystemTime::now() + Duration::from_secs(3600), Duration::ZERO, false);
                    e.commit().unwrap();
                }
                Op::Restart => {
                    // Stop (releasing the lock) before starting again.
                    drop(engine.take());
                    engine = Some(open(&root, &state, false));
                }
                Op::PlantAndAdopt { host, name, content: c } => {
                    if model[*host].contains_key(name) {
                        continue;
                    }
                    drop(engine.take());
                    fs::write(root.join(HOSTS[*host]).join(format!("n{name}")), content(*c)).unwrap();
                    model[*host].insert(*name, *c);
                    engine = Some(open(&root, &state, true));
                }
            }
            // Disk equals the model, and equal content under one name is one inode.
            for (h, held) in model.iter().enumerate() {
                for name in 0..4usize {
                    let p = root.join(HOSTS[h]).join(format!("n{name}"));
                    match held.get(&name) {
                        Some(c) => prop_assert_eq!(fs::read(&p).ok(), Some(content(*c)), "step {} {:?}: host {} n{}", step, op, HOSTS[h], name),
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
                for (h, held) in model.iter().enumerate() {
                    if let Some(c) = held.get(&name) {
                        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(root.join(HOSTS[h]).join(format!("n{name}"))).unwrap());
                        by_content.entry(*c).or_default().insert(ino);
                    }
                }
                for (c, inos) in by_content {
                    prop_assert_eq!(inos.len(), 1, "n{} content {} on several inodes", name, c);
                }
            }
        }
    }
}
