//! Semantics 3: what an arrival does to every other host: link where the
//! name is missing, nothing where it is the same inode, merge identical
//! copies into one inode, and leave different content alone (conflict).

mod common;
use common::*;

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[test]
fn missing_names_get_a_hard_link_and_no_extra_link_pins_the_inode() {
    let env = Env::new(&["a", "b", "c", "d"]);
    let d = env.start();
    env.fetch("b", "foo.tar.gz", b"foo");
    env.wait_everywhere("foo.tar.gz");
    // Exactly one link per host: nothing hidden keeps the bytes alive.
    assert_eq!(env.nlink("a", "foo.tar.gz"), 4);
    drop(d);
}

#[test]
fn identical_copies_are_merged_into_the_inode_with_most_links_without_the_name_ever_vanishing() {
    let env = Env::new(&["a", "b", "c", "d"]);
    let mut d = env.start();
    assert!(d.stop().success());
    // While stopped: a has its own copy; c and d share another inode (2 links).
    let data = vec![42u8; 3 << 20];
    env.write("a", "x.tar", &data);
    env.write("c", "x.tar", &data);
    fs::hard_link(env.path("c", "x.tar"), env.path("d", "x.tar")).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for h in ["a", "c"] {
        fs::File::options()
            .write(true)
            .open(env.path(h, "x.tar"))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let keep = env.ino("c", "x.tar");
    // Watch host a's name the whole time the merge may happen.
    let stop = Arc::new(AtomicBool::new(false));
    let missing = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (stop, missing, p) = (stop.clone(), missing.clone(), env.path("a", "x.tar"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if fs::symlink_metadata(&p).is_err() {
                    missing.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let d = env.start();
    env.wait_everywhere("x.tar");
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    assert_eq!(
        missing.load(Ordering::Relaxed),
        0,
        "the name vanished during the merge"
    );
    assert_eq!(
        env.ino("a", "x.tar"),
        keep,
        "the inode with more links must survive"
    );
    assert_eq!(env.nlink("a", "x.tar"), 4);
    assert_eq!(fs::read(env.path("b", "x.tar")).unwrap(), data);
    assert!(d.log().contains("merged"));
    // No temp names left behind.
    for h in ["a", "b", "c", "d"] {
        assert_eq!(env.names(h), vec![b"x.tar".to_vec()], "host {h}");
    }
}

#[test]
fn a_live_arrival_merges_into_an_identical_copy_elsewhere() {
    let env = Env::new(&["a", "b", "c"]);
    let d = env.start();
    env.fetch("a", "same", b"identical bytes");
    env.wait_everywhere("same");
    let first = env.ino("a", "same");
    // b prunes it and downloads it again: a new inode with the same bytes.
    fs::remove_file(env.path("b", "same")).unwrap();
    env.fetch("b", "same", b"identical bytes");
    assert!(
        wait_until(WAIT, || env.ino("b", "same") == first),
        "b's new copy was not merged"
    );
    assert!(env.same_inode(&["a", "b", "c"], "same"));
    drop(d);
}

#[test]
fn different_content_under_one_name_is_a_conflict_and_both_stay_untouched() {
    let env = Env::new(&["a", "b", "c"]);
    let mut d = env.start();
    env.fetch("a", "reroll.tar.gz", b"upstream v1");
    env.wait_everywhere("reroll.tar.gz");
    let v1 = env.ino("a", "reroll.tar.gz");
    // b and c prune; b fetches a re-rolled tarball under the same name.
    fs::remove_file(env.path("b", "reroll.tar.gz")).unwrap();
    fs::remove_file(env.path("c", "reroll.tar.gz")).unwrap();
    env.fetch("b", "reroll.tar.gz", b"upstream v2!");
    let v2 = env.ino("b", "reroll.tar.gz");
    // The new arrival still reaches the host that lacks the name...
    assert!(wait_until(WAIT, || env.ino("c", "reroll.tar.gz") == v2));
    d.wait_log("conflict", WAIT);
    // ...but a's different file is left exactly as it was.
    assert_eq!(env.ino("a", "reroll.tar.gz"), v1);
    assert_eq!(
        fs::read(env.path("a", "reroll.tar.gz")).unwrap(),
        b"upstream v1"
    );
    assert_eq!(
        fs::read(env.path("b", "reroll.tar.gz")).unwrap(),
        b"upstream v2!"
    );
    assert_eq!(
        d.count_log("conflict"),
        1,
        "one warning per conflict:\n{}",
        d.log()
    );
    assert!(
        d.log()
            .contains(&env.path("a", "reroll.tar.gz").display().to_string())
    );
    assert!(d.stop().success());
    // A restart neither touches them nor warns again.
    let mut d = env.start();
    std::thread::sleep(QUIET);
    assert_eq!(d.count_log("conflict"), 0, "{}", d.log());
    assert_eq!(env.ino("a", "reroll.tar.gz"), v1);
    assert_eq!(env.ino("b", "reroll.tar.gz"), v2);
    assert!(d.stop().success());
    // The conflict is in the record, for status/check.
    let db = env.state.join("state.db");
    let conn = rusqlite::Connection::open(db).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM conflicts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn with_dedupe_off_identical_copies_are_left_alone() {
    let env = Env::new(&["a", "b"]);
    let cfg = env.config("dedupe = false\n");
    let d = env.start_with(&["--config", cfg.to_str().unwrap()]);
    env.fetch("a", "twin", b"same");
    env.wait_everywhere("twin");
    fs::remove_file(env.path("b", "twin")).unwrap();
    env.fetch("b", "twin", b"same");
    let b_ino = env.ino("b", "twin");
    std::thread::sleep(QUIET);
    assert_eq!(env.ino("b", "twin"), b_ino);
    assert_ne!(env.ino("a", "twin"), b_ino);
    assert!(!d.log().contains("conflict"));
}
