//! Semantics 2: a file is linked only once complete. Renamed in: at once.
//! Written in place: after it is closed and unchanged for the settle time.
//! Found by a scan: when already older than the settle time.

mod common;
use common::*;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn portage_rename_is_linked_at_once_and_the_temp_name_never_is() {
    let env = Env::new(&["a", "b", "c"]);
    let d = env.start();
    let t = Instant::now();
    env.fetch("a", "foo-1.0.tar.gz", b"payload");
    env.wait_everywhere("foo-1.0.tar.gz");
    // Renames need no settle time (300ms here): far sooner than that.
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(env.nlink("a", "foo-1.0.tar.gz"), 3);
    assert!(!env.exists("b", "foo-1.0.tar.gz.__download__"));
    d.wait_log("distributed", WAIT);
}

#[test]
fn a_file_still_being_written_is_never_linked() {
    let env = Env::new(&["a", "b"]);
    let d = env.start();
    let mut f = fs::File::create(env.path("a", "big.tar")).unwrap();
    for _ in 0..5 {
        f.write_all(&[7u8; 4096]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    // Open for writing far longer than the settle time: still not linked.
    env.stays_absent("b", "big.tar");
    f.write_all(b"end").unwrap();
    drop(f); // CLOSE_WRITE
    env.wait_everywhere("big.tar");
    assert_eq!(
        fs::metadata(env.path("b", "big.tar")).unwrap().len(),
        5 * 4096 + 3
    );
    drop(d);
}

#[test]
fn a_file_rewritten_after_close_waits_for_the_settle_time_again() {
    let mut env = Env::new(&["a", "b"]);
    // Far longer than the pauses below, so a slow machine cannot make a
    // pause look like the end of the writes.
    env.settle = "2s".into();
    let d = env.start();
    // Close, then reopen and append before the settle time passes, a few times.
    for i in 0..4 {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(env.path("a", "grow"))
            .unwrap();
        f.write_all(format!("chunk{i}").as_bytes()).unwrap();
        drop(f);
        std::thread::sleep(Duration::from_millis(100));
        assert!(!env.exists("b", "grow"), "linked while still changing");
    }
    env.wait_everywhere("grow");
    assert_eq!(
        fs::read(env.path("b", "grow")).unwrap(),
        b"chunk0chunk1chunk2chunk3"
    );
    drop(d);
}

#[test]
fn duplicate_close_events_are_harmless() {
    let env = Env::new(&["a", "b"]);
    let d = env.start();
    env.write("a", "dup", b"one");
    env.wait_everywhere("dup");
    let ino = env.ino("a", "dup");
    // Re-open and close for writing without changing it: more CLOSE_WRITEs.
    for _ in 0..3 {
        drop(
            OpenOptions::new()
                .write(true)
                .open(env.path("a", "dup"))
                .unwrap(),
        );
    }
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(env.ino("b", "dup"), ino);
    assert_eq!(env.nlink("a", "dup"), 2);
    drop(d);
}

#[test]
fn sync_links_old_files_and_leaves_young_ones() {
    let mut env = Env::new(&["a", "b"]);
    assert!(env.sync(&[]).status.success()); // fresh start: empty record
    env.write("a", "old", b"o");
    let past = std::time::SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(env.path("a", "old"))
        .unwrap()
        .set_modified(past)
        .unwrap();
    env.write("a", "young", b"y");
    env.settle = "1h".into();
    let out = env.sync(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.same_inode(&["a", "b"], "old"));
    assert!(
        !env.exists("b", "young"),
        "a file modified within the settle time was linked by a scan"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 not yet settled"));
}
