//! Semantics 6: host dirs. One filesystem; missing dirs created safely;
//! new hosts seeded; a vanished dir recreated empty; removed hosts left as
//! they are.

mod common;
use common::*;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

#[test]
fn a_host_dir_on_another_filesystem_is_refused_at_start() {
    let env = Env::new(&["a", "b"]);
    if !mount_tmpfs(&env.dir("b"), "size=1m") {
        return;
    }
    let out = env.command("run", &[]).output().unwrap();
    umount(&env.dir("b"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("one filesystem"), "{err}");
    for h in ["a", "b"] {
        assert!(err.contains(&env.dir(h).display().to_string()), "{err}");
    }
    assert!(err.contains("device"), "{err}");
}

#[test]
fn a_missing_host_dir_is_created_with_the_roots_owner_and_mode() {
    let env = Env::new(&["a"]);
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: giving the root to uid 250 needs root");
        return;
    }
    fs::set_permissions(&env.root, fs::Permissions::from_mode(0o2775)).unwrap();
    nix::unistd::chown(
        &env.root,
        Some(nix::unistd::Uid::from_raw(250)),
        Some(nix::unistd::Gid::from_raw(250)),
    )
    .unwrap();
    let mut env = env;
    env.hosts.push("newhost".into());
    let d = env.start();
    let m = fs::metadata(env.dir("newhost")).unwrap();
    assert!(m.is_dir());
    assert_eq!((m.uid(), m.gid()), (250, 250));
    assert_eq!(m.mode() & 0o7777, 0o2775);
    drop(d);
}

#[test]
fn a_symlink_planted_as_a_host_dir_is_not_followed() {
    let env = Env::new(&["a"]);
    let outside = env.tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    symlink(&outside, env.dir("b")).unwrap();
    let mut env = env;
    env.hosts.push("b".into());
    let out = env.command("run", &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("symlink"));
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn a_host_new_to_the_record_is_seeded_with_every_distributed_file() {
    let mut env = Env::new(&["a", "b"]);
    let mut d = env.start();
    env.fetch("a", "one", b"1");
    env.fetch("b", "two", b"2");
    env.wait_everywhere("one");
    env.wait_everywhere("two");
    assert!(d.stop().success());
    env.hosts.push("c".into());
    let d = env.start();
    env.wait_everywhere("one");
    env.wait_everywhere("two");
    assert_eq!(env.nlink("a", "one"), 3);
    drop(d);
}

#[test]
fn a_vanished_host_dir_is_recreated_empty_and_watched_again() {
    let env = Env::new(&["a", "b"]);
    let d = env.start();
    env.fetch("a", "before", b"x");
    env.wait_everywhere("before");
    // eclean-dist empties b and rmdirs it.
    fs::remove_file(env.path("b", "before")).unwrap();
    fs::remove_dir(env.dir("b")).unwrap();
    assert!(
        wait_until(WAIT, || env.dir("b").is_dir()),
        "b was not recreated"
    );
    d.wait_log("now watching the new one", WAIT);
    env.stays_absent("b", "before");
    env.fetch("a", "after", b"y");
    env.wait_everywhere("after");
    assert!(!env.exists("b", "before"));
    // And b's new dir is watched: its own arrivals reach a.
    env.fetch("b", "from-b", b"z");
    env.wait_everywhere("from-b");
}

#[test]
fn a_host_removed_from_the_config_is_left_untouched() {
    let mut env = Env::new(&["a", "b", "c"]);
    let mut d = env.start();
    env.fetch("a", "shared", b"s");
    env.wait_everywhere("shared");
    assert!(d.stop().success());
    env.hosts.retain(|h| h != "c");
    let d = env.start();
    env.fetch("a", "later", b"l");
    env.wait_everywhere("later");
    assert!(
        env.exists("c", "shared"),
        "a removed host's files must stay"
    );
    env.stays_absent("c", "later");
    drop(d);
}

#[test]
fn a_sync_with_some_of_the_hosts_then_a_restart_with_all_keeps_every_prune() {
    let mut env = Env::new(&["a", "b", "c"]);
    let mut d = env.start();
    env.fetch("a", "pruned-by-c", b"p");
    env.wait_everywhere("pruned-by-c");
    assert!(d.stop().success());
    std::fs::remove_file(env.path("c", "pruned-by-c")).unwrap();
    // A one-off sync naming only a and b.
    env.hosts.retain(|h| h != "c");
    assert!(env.sync(&[]).status.success());
    env.fetch("a", "while-c-was-away", b"w");
    env.age("a", "while-c-was-away", std::time::Duration::from_secs(60));
    assert!(env.sync(&[]).status.success());
    env.hosts.push("c".into());
    let d = env.start();
    env.wait_everywhere("while-c-was-away");
    env.stays_absent("c", "pruned-by-c");
    drop(d);
}

#[test]
fn forgetting_a_host_that_left_is_explicit_and_makes_it_new_again() {
    let mut env = Env::new(&["a", "b", "c"]);
    let mut d = env.start();
    env.fetch("a", "f.tar", b"f");
    env.wait_everywhere("f.tar");
    assert!(d.stop().success());
    std::fs::remove_file(env.path("c", "f.tar")).unwrap();
    env.hosts.retain(|h| h != "c");
    assert!(env.sync(&[]).status.success());
    // A configured host, or one the record does not know, is refused.
    let (code, _, err) = Env::output(env.command("forget", &["a"]));
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = Env::output(env.command("forget", &["zz"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("c"), "names the hosts it remembers: {err}");
    let (code, _, err) = Env::output(env.command("forget", &["c"]));
    assert_eq!(code, Some(0), "{err}");
    // Configured again, c is a new host: seeded with every file.
    env.hosts.push("c".into());
    let d = env.start();
    env.wait_everywhere("f.tar");
    drop(d);
}

#[test]
fn a_file_only_a_host_away_from_the_config_still_holds_is_not_forgotten() {
    // The record forgets a generation no host holds. A host that left the
    // configuration still holds what it held: were its copy forgotten, it
    // would look like a new download when the host comes back, and go back
    // to every host that pruned it.
    let mut env = Env::new(&["a", "b", "c"]);
    let mut d = env.start();
    env.fetch("a", "f.tar", b"f");
    env.wait_everywhere("f.tar");
    assert!(d.stop().success());
    env.hosts.retain(|h| h != "c");
    assert!(env.sync(&[]).status.success());
    for h in ["a", "b"] {
        std::fs::remove_file(env.path(h, "f.tar")).unwrap();
    }
    assert!(env.sync(&[]).status.success()); // a complete scan of a and b
    env.hosts.push("c".into());
    let d = env.start();
    env.stays_absent("a", "f.tar");
    env.stays_absent("b", "f.tar");
    assert!(env.exists("c", "f.tar"));
    drop(d);
}
