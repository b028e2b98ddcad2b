//! Semantics 4: prunes are final. A name deleted from a host is never put
//! back (live, after a rescan, after a restart); only a new arrival (a new
//! inode of the name) is distributed again.

mod common;
use common::*;

use nix::sys::signal::Signal;
use std::fs;

#[test]
fn a_live_prune_stays_pruned_through_rescans_and_restarts() {
    let env = Env::new(&["a", "b", "c"]);
    let mut d = env.start();
    env.fetch("a", "old.tar.gz", b"old");
    env.wait_everywhere("old.tar.gz");
    fs::remove_file(env.path("b", "old.tar.gz")).unwrap(); // eclean-dist on b
    env.stays_absent("b", "old.tar.gz");
    d.signal(Signal::SIGHUP); // reload = full rescan
    d.wait_log("config reloaded", WAIT);
    env.stays_absent("b", "old.tar.gz");
    assert!(d.stop().success());
    let d = env.start();
    env.stays_absent("b", "old.tar.gz");
    // The other hosts keep it.
    assert!(env.same_inode(&["a", "c"], "old.tar.gz"));
    assert_eq!(env.nlink("a", "old.tar.gz"), 2);
    drop(d);
}

#[test]
fn a_prune_while_stopped_stays_pruned_after_restart() {
    let env = Env::new(&["a", "b"]);
    let mut d = env.start();
    env.fetch("a", "gone-while-down", b"x");
    env.wait_everywhere("gone-while-down");
    assert!(d.stop().success());
    fs::remove_file(env.path("b", "gone-while-down")).unwrap();
    let d = env.start();
    env.stays_absent("b", "gone-while-down");
    // sync agrees.
    drop(d);
    let out = env.sync(&[]);
    assert!(out.status.success());
    assert!(!env.exists("b", "gone-while-down"));
}

#[test]
fn a_new_download_of_a_pruned_name_is_distributed_again() {
    let env = Env::new(&["a", "b", "c"]);
    let d = env.start();
    env.fetch("a", "foo", b"v1");
    env.wait_everywhere("foo");
    // Every host prunes it: the bytes are freed.
    for h in ["a", "b", "c"] {
        fs::remove_file(env.path(h, "foo")).unwrap();
    }
    // c downloads it again later: a new arrival, so it reaches everyone.
    env.fetch("c", "foo", b"v1 again");
    env.wait_everywhere("foo");
    assert_eq!(fs::read(env.path("a", "foo")).unwrap(), b"v1 again");
    drop(d);
}

#[test]
fn a_prune_of_every_copy_frees_the_record_entry() {
    let env = Env::new(&["a", "b"]);
    let mut d = env.start();
    env.fetch("a", "tmp1", b"1");
    env.wait_everywhere("tmp1");
    assert!(d.stop().success());
    fs::remove_file(env.path("a", "tmp1")).unwrap();
    fs::remove_file(env.path("b", "tmp1")).unwrap();
    assert!(env.sync(&[]).status.success());
    let conn = rusqlite::Connection::open(env.state.join("state.db")).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM files", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "a generation pruned everywhere is forgotten");
}

#[test]
fn merging_known_copies_never_fills_a_hosts_gap() {
    // After --adopt, a and c hold identical copies on two inodes and b has
    // none (taken as pruned). Merging a and c must not hand b a link.
    let env = Env::new(&["a", "b", "c"]);
    env.write("a", "twin.tar", b"same bytes");
    env.write("c", "twin.tar", b"same bytes");
    assert!(env.sync(&["--adopt"]).status.success());
    let d = env.start();
    assert!(
        wait_until(WAIT, || env.same_inode(&["a", "c"], "twin.tar")),
        "{}",
        d.log()
    );
    env.stays_absent("b", "twin.tar");
    drop(d);
    // Likewise for different bytes (a conflict).
    let env = Env::new(&["a", "b", "c"]);
    env.write("a", "diff.tar", b"one");
    env.write("c", "diff.tar", b"two");
    assert!(env.sync(&["--adopt"]).status.success());
    let d = env.start();
    d.wait_log("conflict", WAIT);
    env.stays_absent("b", "diff.tar");
}
