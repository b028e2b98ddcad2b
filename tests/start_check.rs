//! `distlink run --check` makes the daemon's own start-up checks: wherever
//! `run` would refuse to start, the check exits with the same code and the
//! same message, and it never creates, locks or changes anything (the whole
//! temp tree is listed before and after). Where `run` would start, the
//! check exits 0 — also while the daemon runs, so a reload can use it.

mod common;
use common::startup::{Mount, final_message, need_root, run_to_end, tree};
use common::*;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

/// `run --check`, then `run`, on the same disk. The check leaves the tree
/// under `watch` exactly as it was; both give the same exit code and
/// message. Returns them.
fn check_then_run(watch: &Path, cmd: impl Fn(&[&str]) -> Command) -> (Option<i32>, String) {
    let before = tree(watch);
    let (code, _, err) = run_to_end(cmd(&["--check"]), WAIT);
    assert_eq!(
        tree(watch),
        before,
        "run --check changed the disk; its stderr:\n{err}"
    );
    let checked = final_message(&err);
    let (run_code, _, run_err) = run_to_end(cmd(&[]), WAIT);
    assert_eq!(
        (code, checked.as_str()),
        (run_code, final_message(&run_err).as_str()),
        "run --check and run disagree; run's stderr:\n{run_err}"
    );
    (code, checked)
}

/// Like [`check_then_run`] for an [`Env`] (its whole temp dir is watched),
/// asserting a refusal (exit 2) whose message holds every one of `says`.
fn refused_alike(env: &Env, says: &[&str]) -> String {
    let (code, msg) = check_then_run(env.tmp.path(), |more| env.command("run", more));
    assert_eq!(code, Some(2), "not a refusal: {msg}");
    for s in says {
        assert!(msg.contains(s), "the message lacks {s:?}: {msg}");
    }
    msg
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn a_missing_root_is_refused_alike() {
    let env = Env::new(&["a", "b"]);
    fs::remove_dir_all(&env.root).unwrap();
    refused_alike(&env, &["root", "does not exist"]);
}

#[test]
fn host_dirs_holding_files_without_a_record_are_refused_alike() {
    let env = Env::new(&["a", "b", "c"]);
    env.fetch("a", "foo-1.tar.gz", b"downloaded before distlink");
    // Host c is missing: run would create it, the check must not.
    fs::remove_dir(env.dir("c")).unwrap();
    refused_alike(
        &env,
        &[
            "no record",
            "foo-1.tar.gz",
            "distlink migrate",
            "sync --adopt",
        ],
    );
}

#[test]
fn a_record_left_in_the_old_place_inside_the_root_is_pointed_at_alike() {
    let env = Env::new(&["a", "b"]);
    env.fetch("b", "bar-2.zip", b"x");
    fs::create_dir(env.root.join(".distlink")).unwrap();
    fs::write(env.root.join(".distlink/state.db"), b"an old record").unwrap();
    refused_alike(&env, &["no record", ".distlink", "move"]);
}

#[test]
fn a_state_dir_others_can_write_is_refused_alike() {
    let env = Env::new(&["a", "b"]);
    fs::create_dir(&env.state).unwrap();
    chmod(&env.state, 0o777);
    refused_alike(
        &env,
        &["state dir", "can be written by users other than root"],
    );
}

#[test]
fn a_missing_state_dir_under_a_dir_others_can_write_is_refused_alike() {
    let env = Env::new(&["a", "b"]);
    let shared = env.tmp.path().join("shared");
    fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    let mut env = env;
    env.state = shared.join("state");
    refused_alike(&env, &["shared", "can be written by users other than root"]);
    assert!(!env.state.exists());
}

#[test]
fn a_state_dir_owned_by_another_user_is_refused_alike() {
    if !need_root() {
        return;
    }
    let env = Env::new(&["a", "b"]);
    fs::create_dir(&env.state).unwrap();
    std::os::unix::fs::chown(&env.state, Some(250), Some(250)).unwrap();
    refused_alike(&env, &["state dir", "is not owned by root"]);
}

#[test]
fn a_state_dir_inside_the_root_is_refused_alike() {
    let mut env = Env::new(&["a", "b"]);
    env.state = env.root.join("a").join(".record");
    refused_alike(&env, &["lies inside the root"]);
}

#[test]
fn a_record_bound_to_another_root_is_refused_alike() {
    let env = Env::new(&["a", "b"]);
    let out = env.sync(&[]);
    assert!(out.status.success(), "{out:?}");
    // The distfiles filesystem "not mounted": an empty dir in its place.
    fs::rename(&env.root, env.tmp.path().join("elsewhere")).unwrap();
    fs::create_dir(&env.root).unwrap();
    refused_alike(&env, &["describes another root", "mounted", "sync --adopt"]);
    assert!(!env.dir("a").exists(), "host dirs were created");
}

#[test]
fn a_state_file_owned_by_another_user_is_refused_alike() {
    if !need_root() {
        return;
    }
    let env = Env::new(&["a", "b"]);
    assert!(env.sync(&[]).status.success());
    std::os::unix::fs::chown(env.state.join("state.db"), Some(250), Some(250)).unwrap();
    refused_alike(&env, &["state.db", "will not trust it"]);
}

#[test]
fn an_unreadable_record_is_refused_alike() {
    let env = Env::new(&["a", "b"]);
    assert!(env.sync(&[]).status.success());
    fs::write(
        env.state.join("state.db"),
        b"not a database, but long enough to be read as one...........................",
    )
    .unwrap();
    refused_alike(&env, &["state.db", "unreadable", "sync --adopt"]);
}

#[test]
fn a_host_dir_that_is_a_symlink_is_refused_alike() {
    let env = Env::new(&["a"]);
    let mut env = env;
    env.hosts.push("b".into());
    symlink("/etc", env.dir("b")).unwrap();
    refused_alike(&env, &["host dir", "symlink"]);
}

#[test]
fn a_host_dir_that_is_a_file_is_refused_alike() {
    let mut env = Env::new(&["a"]);
    env.hosts.push("b".into());
    fs::write(env.dir("b"), b"").unwrap();
    refused_alike(&env, &["host dir", "not a directory"]);
}

#[test]
fn host_dirs_on_different_mounts_are_refused_alike() {
    if !need_root() {
        return;
    }
    let env = Env::new(&["a", "b"]);
    let elsewhere = env.tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let b = env.dir("b");
    let _bound = Mount::new(&["--bind", elsewhere.to_str().unwrap()], &b);
    refused_alike(&env, &["different mounts"]);
}

#[test]
fn host_dirs_on_different_filesystems_are_refused_alike() {
    if !need_root() {
        return;
    }
    let env = Env::new(&["a", "b"]);
    let _tmpfs = Mount::new(&["-t", "tmpfs", "-o", "size=1m", "tmpfs"], &env.dir("b"));
    refused_alike(&env, &["not all on one filesystem"]);
}

#[test]
fn a_bad_configuration_key_is_refused_alike() {
    let env = Env::new(&["a", "b"]);
    let cfg = env.config(&format!(
        "root = \"{}\"\nstate_dir = \"{}\"\nhosts = [\"a\", \"b\"]\nsetle = \"5s\"\n",
        env.root.display(),
        env.state.display()
    ));
    let (code, msg) = check_then_run(env.tmp.path(), |more| {
        let mut c = Command::new(bin());
        c.arg("run").arg("--config").arg(&cfg).args(more);
        c
    });
    assert_eq!(code, Some(2), "{msg}");
    assert!(
        msg.contains("setle") && msg.contains("distlink.toml"),
        "{msg}"
    );
}

#[test]
fn a_good_root_passes_and_the_check_creates_nothing_run_would() {
    // A missing host dir and a missing state dir: run creates both.
    let env = Env::new(&["a", "b"]);
    let mut env = env;
    env.hosts.push("c".into());
    let before = tree(env.tmp.path());
    let (code, out, err) = run_to_end(env.command("run", &["--check"]), WAIT);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("start-up checks passed"), "{out}");
    assert_eq!(tree(env.tmp.path()), before, "the check changed the disk");
    assert!(!env.dir("c").exists() && !env.state.exists());
    // run starts on it.
    let mut d = env.start();
    env.fetch("a", "f", b"after the check");
    env.wait_everywhere("f");
    assert!(d.stop().success());
}

#[test]
fn a_running_daemon_is_no_obstacle_to_the_check() {
    let env = Env::new(&["a", "b"]);
    let mut d = env.start();
    // run refuses a second daemon on the same state; the check passes
    // (the running daemon's config can be checked before a reload).
    let (code, _, err) = run_to_end(env.command("run", &[]), WAIT);
    assert_eq!(code, Some(2), "{err}");
    assert!(final_message(&err).contains("lock"), "{err}");
    let before = tree(env.tmp.path());
    let (code, out, err) = run_to_end(env.command("run", &["--check"]), WAIT);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("in use"), "{out}");
    assert_eq!(tree(env.tmp.path()), before, "the check changed the disk");
    assert!(d.stop().success());
}

#[test]
fn a_record_whose_last_commit_was_cut_short_passes_the_check_untouched() {
    let env = Env::new(&["a", "b"]);
    assert!(env.sync(&[]).status.success());
    // A commit cut short: pages written to the database, the rollback
    // journal beside it (copied while a writer holds them mid-transaction,
    // as a kill -9 leaves them).
    let db = env.state.join("state.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA journal_mode=DELETE; PRAGMA cache_size=1; BEGIN EXCLUSIVE;")
        .unwrap();
    for i in 0..3000 {
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)",
            (format!("filler{i}"), "x".repeat(200)),
        )
        .unwrap();
    }
    let crashed = env.tmp.path().join("crashed");
    fs::create_dir(&crashed).unwrap();
    chmod(&crashed, 0o700);
    for f in ["state.db", "state.db-journal", "links.journal"] {
        fs::copy(env.state.join(f), crashed.join(f)).unwrap();
    }
    drop(conn);
    let mut env = env;
    env.state = crashed;
    // Only a writer may roll it back: the check says so and leaves it.
    let before = tree(env.tmp.path());
    let (code, out, err) = run_to_end(env.command("run", &["--check"]), WAIT);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("roll back"), "{err}");
    assert_eq!(tree(env.tmp.path()), before, "the check changed the disk");
    // run rolls it back and starts.
    let mut d = env.start();
    assert!(!env.state.join("state.db-journal").exists());
    assert!(d.stop().success());
}
