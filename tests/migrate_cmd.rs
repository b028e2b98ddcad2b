//! `distlink migrate`: the one-time move to the per-host layout.

mod common;
use common::*;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// `migrate --from FLAT --host a --dry-run --json`.
fn dry_run_into_a(env: &Env, flat: &std::path::Path) -> (Option<i32>, String, String) {
    Env::output(env.single(
        "migrate",
        &[
            "--from",
            flat.to_str().unwrap(),
            "--into",
            "a",
            "--dry-run",
            "--json",
        ],
    ))
}

fn flat_distdir(env: &Env) -> std::path::PathBuf {
    let flat = env.tmp.path().join("flat");
    fs::create_dir(&flat).unwrap();
    fs::write(flat.join("foo-1.0.tar.gz"), vec![1u8; 5000]).unwrap();
    fs::write(flat.join("bar-2.tar.xz"), vec![2u8; 7000]).unwrap();
    fs::write(flat.join("baz.zip.__download__"), b"partial").unwrap();
    fs::write(flat.join(".bar-2.tar.xz.portage_lockfile"), b"").unwrap();
    fs::create_dir(flat.join("git3-src")).unwrap();
    flat
}

#[test]
fn from_a_flat_distdir_moves_into_the_host_and_links_everywhere() {
    let mut env = Env::new(&["server", "c1", "c2"]);
    env.settle = "0s".into();
    let flat = flat_distdir(&env);
    let foo_ino = fs::metadata(flat.join("foo-1.0.tar.gz")).unwrap().ino();
    let (code, out, err) = Env::output(env.single(
        "migrate",
        &[
            "--from",
            flat.to_str().unwrap(),
            "--into",
            "server",
            "--json",
        ],
    ));
    assert_eq!(code, Some(0), "{out}{err}");
    let r = json(&out);
    assert_eq!(r["imported"]["moved"], 2);
    assert_eq!(r["linked"], 4);
    // Renamed, not copied: the same inode now lives in every host.
    assert_eq!(env.ino("server", "foo-1.0.tar.gz"), Some(foo_ino));
    assert!(env.same_inode(&["server", "c1", "c2"], "foo-1.0.tar.gz"));
    assert!(env.same_inode(&["server", "c1", "c2"], "bar-2.tar.xz"));
    // Non-candidates stay where they were.
    let mut left: Vec<String> = fs::read_dir(&flat)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            ".bar-2.tar.xz.portage_lockfile",
            "baz.zip.__download__",
            "git3-src"
        ]
    );
    // The record is written: the daemon starts clean, check is happy.
    let mut d = env.start();
    assert!(d.stop().success());
    let (code, out, _) = Env::output(env.command("check", &[]));
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn from_another_filesystem_needs_copy_and_then_verifies_before_removing() {
    let mut env = Env::new(&["a", "b"]);
    env.settle = "0s".into();
    let other = env.tmp.path().join("other-fs");
    fs::create_dir(&other).unwrap();
    if !mount_tmpfs(&other, "size=4m") {
        return;
    }
    fs::write(other.join("pkg.tar"), vec![9u8; 100_000]).unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(7 * 86400);
    fs::File::options()
        .write(true)
        .open(other.join("pkg.tar"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let from = other.to_str().unwrap().to_string();
    let (code, _, err) = Env::output(env.single("migrate", &["--from", &from, "--into", "a"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--copy"), "{err}");
    assert!(other.join("pkg.tar").exists());
    let (code, out, err) = Env::output(env.single(
        "migrate",
        &["--from", &from, "--into", "a", "--copy", "--json"],
    ));
    umount(&other);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(json(&out)["imported"]["copied"], 1);
    assert_eq!(
        fs::read(env.path("a", "pkg.tar")).unwrap(),
        vec![9u8; 100_000]
    );
    assert!(env.same_inode(&["a", "b"], "pkg.tar"));
    let m = fs::metadata(env.path("a", "pkg.tar")).unwrap();
    assert_eq!(
        m.modified().unwrap(),
        old,
        "mtime is kept, so --older-than still works"
    );
    assert_eq!(
        env.names("a"),
        vec![b"pkg.tar".to_vec()],
        "no temp copy left behind"
    );
}

#[test]
fn per_host_copies_are_deduplicated_and_conflicts_listed() {
    let mut env = Env::new(&["a", "b", "c"]);
    env.settle = "0s".into();
    let same = vec![5u8; 64 * 1024];
    for h in ["a", "b", "c"] {
        env.write(h, "common.tar", &same);
    }
    env.write("a", "reroll.tar", b"version one");
    env.write("b", "reroll.tar", b"version two");
    env.write("b", "only-b.tar", b"b");
    let (code, out, err) = Env::output(env.single("migrate", &["--json"]));
    assert_eq!(code, Some(0), "{out}{err}");
    let r = json(&out);
    assert_eq!(r["deduplicated"], 2);
    assert_eq!(r["bytes_reclaimed"], 2 * 64 * 1024);
    assert!(env.same_inode(&["a", "b", "c"], "common.tar"));
    assert!(env.same_inode(&["a", "b", "c"], "only-b.tar"));
    // The conflict: both versions untouched, c got one of them.
    assert_eq!(
        fs::read(env.path("a", "reroll.tar")).unwrap(),
        b"version one"
    );
    assert_eq!(
        fs::read(env.path("b", "reroll.tar")).unwrap(),
        b"version two"
    );
    assert!(env.exists("c", "reroll.tar"));
    let conflicts = r["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{r}");
    assert!(conflicts[0].as_str().unwrap().contains("reroll.tar"));
    // Idempotent: a second run changes nothing.
    let before = env.snapshot();
    let (code, out, _) = Env::output(env.single("migrate", &["--json"]));
    assert_eq!(code, Some(0));
    assert_eq!(json(&out)["linked"], 0);
    assert_eq!(env.snapshot(), before);
}

#[test]
fn dry_run_changes_nothing_not_even_the_record() {
    let mut env = Env::new(&["a", "b"]);
    env.settle = "0s".into();
    let flat = flat_distdir(&env);
    env.write("a", "x", b"x");
    env.write("b", "x", b"x");
    let before = env.snapshot();
    let flat_before: Vec<_> = fs::read_dir(&flat)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let (code, out, err) = dry_run_into_a(&env, &flat);
    assert_eq!(code, Some(0), "{err}");
    let r = json(&out);
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["imported"]["moved"], 2);
    assert_eq!(r["deduplicated"], 1);
    assert_eq!(env.snapshot(), before);
    assert_eq!(fs::read_dir(&flat).unwrap().count(), flat_before.len());
    assert!(!env.state.join("state.db").exists());
    assert!(
        !err.contains('\r'),
        "no progress bar when stderr is not a terminal"
    );
}

#[test]
fn killed_mid_run_and_rerun_finishes_and_never_loses_a_file() {
    let mut env = Env::new(&["a", "b", "c"]);
    env.settle = "0s".into();
    const N: usize = 1500;
    // Each host has its own copy of every file: lots to compare and merge.
    for i in 0..N {
        let data = vec![(i % 251) as u8; 20_000];
        for h in ["a", "b", "c"] {
            env.write(h, format!("f{i:05}"), &data);
        }
    }
    let mut child = env.single("migrate", &[]).spawn().unwrap();
    // Kill it once it has merged some but not all.
    let started = wait_until(WAIT, || env.ino("a", "f00050") == env.ino("c", "f00050"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(started, "migrate made no progress");
    // No name vanished from any host at the kill.
    for i in 0..N {
        for h in ["a", "b", "c"] {
            assert!(
                env.exists(h, format!("f{i:05}")),
                "{h}/f{i:05} missing after kill -9"
            );
        }
    }
    let merged_at_kill = (0..N)
        .filter(|i| env.same_inode(&["a", "b", "c"], format!("f{i:05}")))
        .count();
    let (code, out, err) = Env::output(env.single("migrate", &[]));
    assert_eq!(code, Some(0), "{out}{err}");
    for i in 0..N {
        let n = format!("f{i:05}");
        assert!(
            env.same_inode(&["a", "b", "c"], &n),
            "{n} not merged after re-run"
        );
        assert_eq!(
            fs::read(env.path("b", &n)).unwrap(),
            vec![(i % 251) as u8; 20_000]
        );
    }
    for h in ["a", "b", "c"] {
        assert_eq!(env.names(h).len(), N, "stray names in {h}");
    }
    eprintln!("merged before kill -9: {merged_at_kill}/{N}");
}

#[test]
fn with_the_daemon_running_from_moves_and_the_daemon_distributes() {
    let mut env = Env::new(&["a", "b"]);
    env.settle = "0s".into();
    let flat = flat_distdir(&env);
    let d = env.start();
    let (code, out, err) = Env::output(env.single(
        "migrate",
        &["--from", flat.to_str().unwrap(), "--into", "b"],
    ));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("running daemon distributes"), "{out}");
    env.wait_everywhere("foo-1.0.tar.gz");
    env.wait_everywhere("bar-2.tar.xz");
    // Without --from, migrate refuses: the daemon already does the job.
    let (code, _, err) = Env::output(env.single("migrate", &[]));
    assert_eq!(code, Some(2));
    assert!(err.contains("holds the state lock"), "{err}");
    drop(d);
}

#[test]
fn after_migrate_a_record_exists_so_a_later_migrate_keeps_prunes() {
    let mut env = Env::new(&["a", "b"]);
    env.settle = "0s".into();
    env.write("a", "old", b"o");
    assert_eq!(Env::output(env.single("migrate", &[])).0, Some(0));
    assert!(env.same_inode(&["a", "b"], "old"));
    fs::remove_file(env.path("b", "old")).unwrap();
    let flat = flat_distdir(&env);
    let (code, out, _) = Env::output(env.single(
        "migrate",
        &["--from", flat.to_str().unwrap(), "--into", "a"],
    ));
    assert_eq!(code, Some(0));
    assert!(out.contains("stay pruned"), "{out}");
    assert!(env.same_inode(&["a", "b"], "foo-1.0.tar.gz"));
    assert!(!env.exists("b", "old"));
}

#[test]
fn a_dry_run_after_a_kill_9_sees_the_links_journal_and_keeps_a_prune() {
    // The daemon linked foo.tar into c and died before recording it; c
    // pruned it in between. A dry run must report what a real run would
    // do: nothing for foo.tar.
    let env = Env::new(&["a", "b", "c"]);
    env.pruned_inside_the_commit_window("a", "foo.tar", "c");
    let flat = env.tmp.path().join("empty-flat");
    fs::create_dir(&flat).unwrap();
    let before = env.snapshot();
    let journal = env.state.join("links.journal");
    let journal_before = fs::read(&journal).unwrap();
    assert!(
        !journal_before.is_empty(),
        "the killed daemon left no journal"
    );
    let (code, out, err) = dry_run_into_a(&env, &flat);
    assert_eq!(code, Some(0), "{err}");
    let r = json(&out);
    assert_eq!(r["record_existed"], true);
    assert_eq!(
        r["linked"], 0,
        "the dry run would relink the pruned file: {out}"
    );
    assert_eq!(env.snapshot(), before);
    assert_eq!(
        fs::read(&journal).unwrap(),
        journal_before,
        "the dry run consumed the journal"
    );
}

/// `migrate --from` pointed at files a host already holds (the root, a
/// host dir, a dir inside one), however the path is spelled, is refused
/// before anything moves: it used to empty client1 into server and
/// record client1's names as pruned there.
#[test]
fn from_a_host_dir_or_anything_inside_the_root_is_refused_however_spelled() {
    let mut env = Env::new(&["server", "client1"]);
    env.settle = "0s".into();
    fs::write(env.path("client1", "qux-3.tar.gz"), b"qux").unwrap();
    fs::write(env.path("server", "zed.tar.xz"), b"zed").unwrap();
    fs::create_dir(env.path("client1", "git3-src")).unwrap();
    let link = env.tmp.path().join("distdir-link");
    std::os::unix::fs::symlink(env.dir("client1"), &link).unwrap();
    let before = env.snapshot();
    let mut spellings = vec![
        (env.dir("client1"), "the dir of host client1"),
        (
            env.dir("server").join("..").join("client1"),
            "the dir of host client1",
        ),
        (link.clone(), "the dir of host client1"),
        (env.root.clone(), "the root"),
        (env.root.join("."), "the root"),
        (
            env.path("client1", "git3-src"),
            "inside the dir of host client1",
        ),
    ];
    let mnt = env.tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let bound = std::process::Command::new("mount")
        .arg("--bind")
        .arg(env.dir("client1"))
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    // A bind mount of a directory inside a host dir: its `..` leads out.
    let mnt2 = env.tmp.path().join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    let bound2 = bound
        && std::process::Command::new("mount")
            .arg("--bind")
            .arg(env.path("client1", "git3-src"))
            .arg(&mnt2)
            .status()
            .is_ok_and(|s| s.success());
    if bound {
        spellings.push((mnt.clone(), "the dir of host client1"));
    }
    if bound2 {
        spellings.push((mnt2.clone(), "inside the dir of host client1"));
    }
    if !bound {
        eprintln!("skipped the bind-mount spelling: cannot bind-mount here (needs root)");
    }
    for (from, what) in &spellings {
        for dry in [true, false] {
            let more: &[&str] = if dry { &["--dry-run"] } else { &[] };
            let (code, out, err) = Env::output(env.migrate_from(from, "server", more));
            assert_eq!(code, Some(2), "{} dry={dry}: {out}{err}", from.display());
            assert!(
                err.contains(what) && err.contains("compared by identity"),
                "{}: {err}",
                from.display()
            );
            assert_eq!(env.snapshot(), before, "{} moved files", from.display());
            assert!(!env.state.exists(), "a record was created");
        }
    }
    if bound2 {
        umount(&mnt2);
    }
    if bound {
        umount(&mnt);
    }
    // A flat DISTDIR outside the root still works.
    let flat = flat_distdir(&env);
    let (code, out, err) = Env::output(env.migrate_from(&flat, "server", &[]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        env.same_inode(&["server", "client1"], "qux-3.tar.gz"),
        "{out}{err}"
    );
}

/// Runs `migrate` (with `more`) as a dry run, then for real, and checks
/// the dry run's JSON report is the real run's, word for word.
fn dry_run_predicts(env: &Env, what: &str, more: &[&str]) -> serde_json::Value {
    let with = |extra: &[&str]| {
        let mut args = more.to_vec();
        args.extend_from_slice(extra);
        let cmd = match args.iter().position(|a| *a == "--from") {
            Some(k) => {
                let (from, host) = (args[k + 1].to_string(), args[k + 3].to_string());
                args.drain(k..k + 4);
                env.migrate_from(std::path::Path::new(&from), &host, &args)
            }
            None => env.migrate(&args),
        };
        Env::output(cmd)
    };
    let before = env.snapshot();
    let (code_dry, dry, err) = with(&["--dry-run", "--json"]);
    assert_eq!(
        env.snapshot(),
        before,
        "{what}: the dry run changed something"
    );
    let (code, real, err2) = with(&["--json"]);
    let (mut dry, mut real) = (json(&dry), json(&real));
    assert_eq!(dry["dry_run"], true);
    dry["dry_run"] = false.into();
    assert_eq!(dry, real, "{what}: dry run {err}\nreal run {err2}");
    assert_eq!(code_dry, code, "{what}");
    real["dry_run"] = true.into();
    real
}

/// Every setup a migrate meets: the dry run says exactly what the run
/// does (it used to say "would be linked 0" where the run linked 6, and
/// fail on a fresh root with `host dir of Some("server") is missing`).
#[test]
fn a_dry_run_predicts_exactly_what_the_run_does() {
    // A fresh root: no host dir yet; a flat DISTDIR moves into server.
    let mut env = Env::new(&[]);
    env.hosts = vec!["server".into(), "c1".into(), "c2".into()];
    env.settle = "0s".into();
    let flat = flat_distdir(&env);
    let r = dry_run_predicts(
        &env,
        "fresh root",
        &["--from", flat.to_str().unwrap(), "--into", "server"],
    );
    assert_eq!(r["imported"]["moved"], 2);
    assert_eq!(r["linked"], 4);
    assert!(env.same_inode(&["server", "c1", "c2"], "foo-1.0.tar.gz"));

    // Per-host copies: identical ones merge, different ones conflict.
    let mut env = Env::new(&["a", "b", "c"]);
    env.settle = "0s".into();
    for h in ["a", "b", "c"] {
        fs::write(env.path(h, "same.tar"), b"same bytes").unwrap();
    }
    fs::write(env.path("a", "differs.tar"), b"one").unwrap();
    fs::write(env.path("b", "differs.tar"), b"two").unwrap();
    fs::write(env.path("c", "only-c.tar"), b"c").unwrap();
    let r = dry_run_predicts(&env, "dedupe and conflict", &[]);
    assert_eq!(r["deduplicated"], 2, "{r}");
    assert_eq!(r["conflicts"].as_array().map(Vec::len), Some(1), "{r}");
    assert!(env.same_inode(&["a", "b", "c"], "same.tar"));

    // --from into a host that holds files: a duplicate, a conflict, new
    // files; then a second run with a record, after a prune.
    let flat = flat_distdir(&env);
    fs::write(flat.join("only-c.tar"), b"c").unwrap();
    fs::write(flat.join("same.tar"), b"other bytes").unwrap();
    let r = dry_run_predicts(
        &env,
        "--from with a record",
        &["--from", flat.to_str().unwrap(), "--into", "a"],
    );
    assert_eq!(r["record_existed"], true, "{r}");
    assert_eq!(r["imported"]["moved"], 2, "{r}");
    assert_eq!(r["imported"]["duplicates"], 1, "{r}");
    fs::remove_file(env.path("b", "foo-1.0.tar.gz")).unwrap();
    fs::write(flat.join("new-3.tar"), b"new").unwrap();
    let r = dry_run_predicts(
        &env,
        "second --from",
        &["--from", flat.to_str().unwrap(), "--into", "c"],
    );
    assert!(
        !env.exists("b", "foo-1.0.tar.gz"),
        "a prune was undone: {r}"
    );
    assert!(env.same_inode(&["a", "b", "c"], "new-3.tar"));
    // Every host fetched the same new file at once: one merge each.
    for h in ["a", "b", "c"] {
        fs::write(env.path(h, "w.tar"), b"fetched everywhere").unwrap();
    }
    let r = dry_run_predicts(&env, "identical copies with a record", &[]);
    assert_eq!(r["deduplicated"], 2, "{r}");
    dry_run_predicts(&env, "nothing left", &[]);
}

/// Files just copied into place (mtime now): one migrate does the whole
/// job, waiting for them to settle, saying so; a second run is a quiet
/// no-op. (Reported: three hosts each holding fresh identical copies of
/// three files, `migrate` linked nothing, "run migrate again later".)
#[test]
fn freshly_copied_files_are_distributed_in_one_run_and_a_second_is_a_quiet_no_op() {
    let env = Env::new(&["a", "b", "c"]);
    for h in ["a", "b", "c"] {
        for n in ["x.tar", "y.tar", "z.tar"] {
            fs::write(env.path(h, n), format!("bytes of {n}")).unwrap();
        }
    }
    let (code, out, err) = Env::output(env.migrate(&["--json"]));
    assert_eq!(code, Some(0), "{out}{err}");
    let r = json(&out);
    assert_eq!(r["deduplicated"], 6, "{r}");
    assert_eq!(r["not_settled"], serde_json::json!([]), "{r}");
    assert!(
        err.contains("waiting up to 20s for them to settle"),
        "{err}"
    );
    assert!(!err.contains("WARN"), "{err}");
    for n in ["x.tar", "y.tar", "z.tar"] {
        assert!(env.same_inode(&["a", "b", "c"], n), "{n}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let (code, out, err) = Env::output(env.migrate(&[]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out, "linked 0, deduplicated 0, conflicts 0, failed 0, 0 B reclaimed\n",
        "{err}"
    );
    assert!(!err.contains("WARN") && !err.contains("waiting"), "{err}");
}

/// A file that never stops changing is waited for (four settle times, at
/// least 20 s), then reported, and the exit status says something was
/// left undone: migrate, and sync alike.
#[test]
fn a_file_still_being_written_after_the_wait_is_reported_with_exit_1() {
    let env = Env::new(&["a", "b"]);
    fs::write(env.path("a", "done.tar"), b"complete").unwrap();
    let busy = env.path("a", "busy.tar");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (busy, stop) = (busy.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut f = fs::File::create(&busy).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::io::Write::write_all(&mut f, b"more").unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let t0 = std::time::Instant::now();
    let (code, out, err) = Env::output(env.migrate(&[]));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        t0.elapsed() >= Duration::from_secs(20),
        "{:?}",
        t0.elapsed()
    );
    assert!(
        out.contains("still being written after the wait") && out.contains("busy.tar"),
        "{out}"
    );
    assert!(env.same_inode(&["a", "b"], "done.tar"));
    assert!(!env.exists("b", "busy.tar"));
    fs::write(env.path("b", "new.tar"), b"new").unwrap();
    let out = env.sync(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("1 still being written"), "{err}");
    assert!(env.same_inode(&["a", "b"], "new.tar"));
    assert!(!env.exists("b", "busy.tar"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
}

#[test]
fn copies_identical_to_each_other_but_not_to_the_first_host_are_merged_too() {
    let mut env = Env::new(&["a", "b", "c"]);
    env.settle = "0s".into();
    env.write("a", "reroll.tar", b"version one, longer");
    env.write("b", "reroll.tar", b"version two");
    env.write("c", "reroll.tar", b"version two");
    let (code, out, err) = Env::output(env.single("migrate", &["--dry-run", "--json"]));
    assert_eq!(code, Some(0), "{out}{err}");
    let predicted = json(&out);
    let (code, out, err) = Env::output(env.single("migrate", &["--json"]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(env.same_inode(&["b", "c"], "reroll.tar"));
    assert_eq!(
        fs::read(env.path("a", "reroll.tar")).unwrap(),
        b"version one, longer"
    );
    let r = json(&out);
    assert_eq!(r["deduplicated"], 1, "{r}");
    let conflicts = r["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{r}");
    assert!(conflicts[0].as_str().unwrap().contains("2 versions"), "{r}");
    // The dry run said as much.
    assert_eq!(predicted["deduplicated"], 1, "{predicted}");
    assert_eq!(
        predicted["conflicts"].as_array().map(Vec::len),
        Some(1),
        "{predicted}"
    );
    assert!(
        predicted["conflicts"][0]
            .as_str()
            .unwrap()
            .contains("2 versions"),
        "{predicted}"
    );
}
