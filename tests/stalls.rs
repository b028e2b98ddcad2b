//! Nothing a client plants can stall the daemon: start-up cost does not grow
//! with names planted under distlink's temp prefix, and byte comparisons of
//! large files never hold up the event loop.

mod common;
use common::*;

use std::fs;
use std::time::{Duration, SystemTime};

#[test]
fn temp_names_planted_by_a_client_are_never_read_at_start_up() {
    let env = Env::new(&["a", "b"]);
    let mut d = env.start();
    assert!(d.stop().success());
    // 300 files of one size in a and b (distributed by the start-up)...
    let old = SystemTime::now() - Duration::from_secs(3600);
    for k in 0..300 {
        let n = format!("f{k:03}.tar");
        env.write("a", &n, &[k as u8; 16384]);
        env.age("a", &n, Duration::from_secs(3600));
    }
    let mut d = env.start();
    assert!(d.stop().success());
    // ...and 200 names under the temp prefix, of the same size, planted by
    // a client: each would have been compared with every file of b.
    let long_ago = SystemTime::now() - Duration::from_secs(3 * 86400);
    let mut planted = Vec::new();
    for k in 0..200 {
        let n = format!(".distlink-tmp.{}.{k}.{}", 4000 + k, 77 + k);
        let p = env.path("b", &n);
        let mut bytes = vec![0xcd; 16384];
        bytes[0] = 0xab; // like no distributed file
        fs::write(&p, bytes).unwrap();
        let f = fs::File::options().write(true).open(&p).unwrap();
        f.set_times(
            fs::FileTimes::new()
                .set_accessed(long_ago)
                .set_modified(old),
        )
        .unwrap();
        planted.push((n, p));
    }
    let d = env.start();
    // Not one planted byte was read (relatime updates an access time
    // older than the mtime on any read), and every planted name is there.
    for (n, p) in &planted {
        let atime = fs::metadata(p).unwrap().accessed().unwrap();
        assert_eq!(atime, long_ago, "{n} was read at start-up");
    }
    assert_eq!(d.count_log("left for the admin"), 1, "{}", d.log());
}

/// A sparse file of `len` bytes whose last byte is `last`: free to make,
/// expensive to compare.
fn sparse(p: &std::path::Path, len: u64, last: u8) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = fs::File::create(p).unwrap();
    f.seek(SeekFrom::Start(len - 1)).unwrap();
    f.write_all(&[last]).unwrap();
}

#[test]
fn a_large_sparse_conflict_holds_up_no_other_arrival_and_is_compared_once() {
    let env = Env::new(&["a", "b", "c"]);
    let mut d = env.start();
    let len = 4u64 << 30;
    for (h, last) in [("a", 1u8), ("b", 2u8)] {
        let s = env.path(h, ".stage-big");
        sparse(&s, len, last);
        fs::rename(&s, env.path(h, "big.iso")).unwrap();
    }
    // An unrelated download right behind it is distributed at once, while
    // the two big files are still being compared.
    env.fetch("a", "small.tar", b"small");
    env.wait_everywhere("small.tar");
    let log = d.log();
    assert!(
        !log.contains("conflict: same name"),
        "the comparison finished before an unrelated arrival was handled: {log}"
    );
    d.wait_log("conflict: same name", Duration::from_secs(120));
    assert_eq!(d.count_log("comparing"), 1, "{}", d.log());
    // A rescan and a restart know the verdict: the pair is not read again.
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("config reloaded", WAIT);
    env.fetch("a", "after-reload.tar", b"x");
    env.wait_everywhere("after-reload.tar");
    assert!(d.stop().success());
    assert_eq!(d.count_log("comparing"), 1, "{}", d.log());
    let mut d = env.start();
    env.fetch("a", "after-restart.tar", b"y");
    env.wait_everywhere("after-restart.tar");
    assert!(d.stop().success());
    assert_eq!(d.count_log("comparing"), 0, "{}", d.log());
    assert_eq!(d.count_log("conflict: same name"), 0, "{}", d.log());
}
