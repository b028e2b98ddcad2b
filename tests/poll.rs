//! The cheap poll: a tick `statx`es each host dir and lists again only the
//! ones whose change stamp moved. These scenarios are what that could miss
//! if done carelessly: a change in the same clock second as the previous
//! listing (an ext4 with whole-second timestamps, `mkfs.ext4 -I 128`, on a
//! loop device), a file written in place whose appends never move its dir's
//! stamp, a new download on the inode number of a pruned file, and a prune.
//!
//! The loop-device scenarios need root, `mkfs.ext4`, `mount` and `losetup`;
//! without them they are skipped with a reason, unless
//! `DISTLINK_REQUIRE_TOOLS=1`.

mod common;
use common::mounts::{Mounted, can_run, ext4_whole_seconds, missing};
use common::*;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Poll every 100 ms; no full scan during a test.
const POLL: &str = "[watch]\nmode = \"poll\"\ninterval = \"100ms\"\nfull_scan_every = \"1h\"\n";

/// A root on a fresh ext4 with whole-second timestamps, holding `hosts`.
fn ext4_root(hosts: &[&str]) -> Option<(Env, Mounted)> {
    if !can_run(missing(&["mkfs.ext4", "mount", "umount", "losetup"])) {
        return None;
    }
    let env = Env::new(&[]);
    let image = env.tmp.path().join("ext4.img");
    let m = match ext4_whole_seconds(&image, &env.root) {
        Ok(m) => m,
        Err(why) => {
            assert!(can_run(Some(why)), "unreachable");
            return None;
        }
    };
    for h in hosts {
        fs::create_dir(env.root.join(h)).expect("mkdir host");
    }
    let env = Env {
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        ..env
    };
    Some((env, m))
}

fn start_polling(env: &Env) -> Daemon {
    let cfg = env.config(POLL);
    let d = env.start_with(&["--config", &cfg.display().to_string()]);
    assert!(d.log().contains("mode=\"poll\""), "{}", d.log());
    d
}

/// A dir's (mtime, ctime), to the nanosecond.
fn dir_stamp(env: &Env, host: &str) -> (i64, i64, i64, i64) {
    let m = fs::metadata(env.dir(host)).expect("stat host dir");
    (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
}

/// Sub-second part of the wall clock, and the second.
fn wall() -> (u64, u32) {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    (t.as_secs(), t.subsec_millis())
}

/// Renames a file already older than the settle time into `host`.
fn move_in_old(env: &Env, host: &str, name: &str) {
    let staged = env.root.join(".staging-file");
    fs::write(&staged, name.as_bytes()).expect("write staged");
    fs::File::options()
        .write(true)
        .open(&staged)
        .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(3600)))
        .expect("age staged");
    fs::rename(&staged, env.path(host, name)).expect("rename staged");
}

fn listings_of(d: &Daemon, host: &str) -> usize {
    d.log()
        .lines()
        .filter(|l| l.contains("listed again") && l.contains(&format!("host={host} ")))
        .count()
}

#[test]
fn a_rename_in_the_same_second_as_the_previous_listing_is_still_linked() {
    let Some((env, _m)) = ext4_root(&["a", "b"]) else {
        return;
    };
    let d = start_polling(&env);
    // Past the extra listing that follows the start-up scan.
    std::thread::sleep(Duration::from_millis(2500));
    let mut raced = None;
    for round in 0..8 {
        // Just after a second starts: the listing and the next rename can
        // then fall in the same second.
        while wall().1 > 50 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let second = wall().0;
        let (first, late) = (format!("first-{round}"), format!("late-{round}"));
        let before = listings_of(&d, "a");
        move_in_old(&env, "a", &first);
        let after_first = dir_stamp(&env, "a");
        assert!(
            wait_until(WAIT, || listings_of(&d, "a") > before),
            "dir a was never listed again; log:\n{}",
            d.log()
        );
        // The daemon has listed a (and seen `first`); now, in the same
        // second, one more file.
        move_in_old(&env, "a", &late);
        if wall().0 == second && dir_stamp(&env, "a") == after_first {
            // The stamp did not move: only the extra listing finds it.
            raced = Some(late);
            break;
        }
        // Crossed a second boundary: the stamp moved, which proves nothing.
        env.wait_everywhere(&late);
    }
    let late = raced.expect("could not make a rename in the same second as a listing");
    env.wait_everywhere_within(&late, WAIT);
    drop(d);
}

#[test]
fn an_in_place_write_is_followed_until_it_settles_and_only_then_linked() {
    let mut env = Env::new(&["a", "b"]);
    env.settle = "1s".into();
    let d = start_polling(&env);
    // Appends, each from a fresh open and close: after the first, nothing
    // moves the dir's stamp (as on CephFS, where an append does not move a
    // dir's mtime), and no process holds it open between appends.
    let path = env.path("a", "growing.tar.xz");
    let mut written = Vec::new();
    for i in 0..12u8 {
        let chunk = vec![i; 4096];
        fs::File::options()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&chunk))
            .expect("append");
        written.extend_from_slice(&chunk);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !env.exists("b", "growing.tar.xz"),
            "linked after {} bytes, while still being written; log:\n{}",
            written.len(),
            d.log()
        );
    }
    env.wait_everywhere("growing.tar.xz");
    assert_eq!(
        fs::read(env.path("b", "growing.tar.xz")).expect("read"),
        written
    );
}

#[test]
fn a_new_download_on_a_freed_inode_number_is_distributed() {
    let Some((env, _m)) = ext4_root(&["a", "b"]) else {
        return;
    };
    let d = start_polling(&env);
    move_in_old(&env, "a", "foo.tar.gz");
    env.wait_everywhere("foo.tar.gz");
    let old = env.ino("a", "foo.tar.gz").expect("ino");
    // Both hosts prune it: the inode is freed.
    fs::remove_file(env.path("a", "foo.tar.gz")).unwrap();
    fs::remove_file(env.path("b", "foo.tar.gz")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // A new download of the name, on the freed inode number.
    let mut spare = Vec::new();
    let staged = loop {
        let p = env.root.join(format!(".new-{}", spare.len()));
        fs::write(&p, b"a new download").expect("write");
        if fs::metadata(&p).expect("stat").ino() == old {
            break p;
        }
        spare.push(p);
        assert!(spare.len() < 200, "the inode number was never reused");
    };
    for p in spare {
        fs::remove_file(p).unwrap();
    }
    fs::rename(&staged, env.path("a", "foo.tar.gz")).unwrap();
    assert!(
        wait_until(WAIT, || env.same_inode(&["a", "b"], "foo.tar.gz")),
        "the new download never reached b; log:\n{}",
        d.log()
    );
    assert_eq!(
        fs::read(env.path("b", "foo.tar.gz")).unwrap(),
        b"a new download"
    );
}

#[test]
fn a_prune_in_poll_mode_stays_gone_across_ticks_a_full_scan_and_a_restart() {
    let env = Env::new(&["a", "b", "c"]);
    let mut d = start_polling(&env);
    env.fetch("a", "foo.tar.gz", b"foo");
    env.wait_everywhere("foo.tar.gz");
    fs::remove_file(env.path("b", "foo.tar.gz")).unwrap();
    // Ticks list b again (its stamp moved).
    env.stays_absent("b", "foo.tar.gz");
    // A full scan (SIGHUP forces one).
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("config reloaded", WAIT);
    env.stays_absent("b", "foo.tar.gz");
    assert_eq!(d.stop().code(), Some(0));
    let _d = start_polling(&env);
    env.stays_absent("b", "foo.tar.gz");
    assert!(env.same_inode(&["a", "c"], "foo.tar.gz"));
}

#[test]
fn an_idle_poll_lists_nothing_and_a_change_lists_only_its_dir() {
    let mut env = Env::new(&["a", "b", "c"]);
    // Long enough that x is not linked into a and b (which would change
    // them) while the test looks.
    env.settle = "5s".into();
    let d = start_polling(&env);
    // Past the extra listing after the start-up scan.
    std::thread::sleep(Duration::from_millis(500));
    let idle = d.count_log("listed again");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(d.count_log("listed again"), idle, "{}", d.log());
    let others = listings_of(&d, "a") + listings_of(&d, "b");
    let c = listings_of(&d, "c");
    env.write("c", "x.tar.gz", b"x");
    assert!(wait_until(WAIT, || listings_of(&d, "c") > c));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        listings_of(&d, "a") + listings_of(&d, "b"),
        others,
        "{}",
        d.log()
    );
}

/// b's `n.tar` was distributed, then pruned by a and c. c fetches a
/// different version; just after the tick that listed c (a's dir already
/// looked at), a fetches b's version again. c's arrival finds a's copy and
/// records it; the next tick lists a: its copy still arrives and is merged
/// with b's, not left apart until the next full scan.
#[test]
fn a_copy_recorded_by_another_arrival_before_its_dir_was_listed_still_merges() {
    let env = Env::new(&["a", "b", "c"]);
    let cfg = env.config("[watch]\nmode = \"poll\"\ninterval = \"2s\"\nfull_scan_every = \"1h\"\n");
    let d = env.start_with(&["--config", &cfg.display().to_string()]);
    env.fetch("b", "n.tar", b"version of b");
    env.wait_everywhere("n.tar");
    fs::remove_file(env.path("a", "n.tar")).unwrap();
    fs::remove_file(env.path("c", "n.tar")).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let c = listings_of(&d, "c");
    env.fetch("c", "n.tar", b"c's newer version, longer");
    assert!(wait_until(WAIT, || listings_of(&d, "c") > c), "{}", d.log());
    // Within the settle time of c's file: before its arrival.
    env.fetch("a", "n.tar", b"version of b");
    assert!(
        wait_until(WAIT, || env.same_inode(&["a", "b"], "n.tar")),
        "a's copy was never merged with b's identical one; log:\n{}",
        d.log()
    );
    assert_eq!(
        fs::read(env.path("c", "n.tar")).unwrap(),
        b"c's newer version, longer"
    );
}
