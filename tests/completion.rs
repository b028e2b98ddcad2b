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

/// A scan (here `sync`) links a file older than the settle time at once
/// and never links a younger one early: it waits for it to settle.
#[test]
fn sync_links_old_files_and_waits_for_young_ones() {
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
    let mut d = env.spawn(env.command("sync", &[]));
    d.wait_log("waiting up to 10m for them to settle", WAIT);
    assert!(env.same_inode(&["a", "b"], "old"));
    env.stays_absent("b", "young");
    // Stopped while it waits: it says what was left (exit 1).
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait(WAIT).code(), Some(1), "{}", d.log());
    assert!(d.log().contains("1 still being written"), "{}", d.log());
    assert!(
        !env.exists("b", "young"),
        "a file modified within the settle time was linked by a scan"
    );
}

/// Watches `path` from another thread until `stop` is set; true when it
/// ever existed meanwhile (checked every 5 ms).
fn appeared_while(path: std::path::PathBuf, stop: impl FnOnce()) -> bool {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let watcher = std::thread::spawn(move || {
        while !d2.load(Ordering::Relaxed) {
            if fs::symlink_metadata(&path).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    });
    stop();
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap_or(true)
}

#[test]
fn files_published_by_link_and_unlink_reach_every_host() {
    let env = Env::new(&["a", "b", "c"]);
    let d = env.start();
    // Stopped while the files are published, the daemon sees each name
    // only after its temp name is gone: one link, and the CLOSE_WRITE was
    // the temp name's.
    d.signal(nix::sys::signal::Signal::SIGSTOP);
    let names: Vec<String> = (0..15).map(|k| format!("published-{k}.tar")).collect();
    for n in &names {
        let tmp = format!(".{n}.tmp");
        fs::write(env.path("a", &tmp), n.as_bytes()).unwrap();
        fs::hard_link(env.path("a", &tmp), env.path("a", n)).unwrap();
        fs::remove_file(env.path("a", &tmp)).unwrap();
    }
    d.signal(nix::sys::signal::Signal::SIGCONT);
    let missing = |env: &Env| {
        names
            .iter()
            .filter(|n| !env.same_inode(&["a", "b", "c"], n))
            .count()
    };
    assert!(
        wait_until(WAIT, || missing(&env) == 0),
        "{} of 15 never reached b and c; log:\n{}",
        missing(&env),
        d.log()
    );
    assert_eq!(
        fs::read(env.path("c", &names[3])).unwrap(),
        names[3].as_bytes()
    );
}

#[test]
fn an_o_tmpfile_published_with_linkat_reaches_every_host_once_closed() {
    use nix::fcntl::{AtFlags, OFlag, open};
    use nix::sys::stat::Mode;
    let env = Env::new(&["a", "b", "c"]);
    let d = env.start();
    let fd = open(
        &env.dir("a"),
        OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .expect("O_TMPFILE (needs a filesystem that has it)");
    let mut f = fs::File::from(fd);
    f.write_all(b"written before it had a name").unwrap();
    nix::unistd::linkat(
        nix::fcntl::AT_FDCWD,
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f)).as_str(),
        nix::fcntl::AT_FDCWD,
        &env.path("a", "tmpfile.tar"),
        AtFlags::AT_SYMLINK_FOLLOW,
    )
    .unwrap();
    // Still open for writing a while (longer than the settle time): not
    // complete yet.
    let seen = appeared_while(env.path("b", "tmpfile.tar"), || {
        std::thread::sleep(Duration::from_millis(900));
        f.write_all(b", and after").unwrap();
        drop(f);
    });
    assert!(!seen, "linked while its writer still had it open");
    env.wait_everywhere("tmpfile.tar");
    assert_eq!(
        fs::read(env.path("c", "tmpfile.tar")).unwrap(),
        b"written before it had a name, and after"
    );
    drop(d);
}

#[test]
fn a_writer_that_stalls_with_its_file_open_is_never_linked_early() {
    let env = Env::new(&["a", "b"]);
    let d = env.start();
    let mut f = fs::File::create(env.path("a", "stalled.tar")).unwrap();
    f.write_all(&[1u8; 4096]).unwrap();
    // Open, unchanged, for three settle times, then written and closed.
    let seen = appeared_while(env.path("b", "stalled.tar"), || {
        std::thread::sleep(Duration::from_millis(900));
        f.write_all(b"tail").unwrap();
        drop(f);
    });
    assert!(
        !seen,
        "a partial copy reached b while the writer held it open"
    );
    env.wait_everywhere("stalled.tar");
    assert_eq!(
        fs::metadata(env.path("b", "stalled.tar")).unwrap().len(),
        4100
    );
    drop(d);
}

#[test]
fn a_close_by_another_process_does_not_complete_a_file_still_open_for_writing() {
    let env = Env::new(&["a", "b"]);
    let d = env.start();
    let mut f = fs::File::create(env.path("a", "shared.tar")).unwrap();
    f.write_all(b"part1").unwrap();
    // Someone else opens it for writing and closes it: a CLOSE_WRITE, while
    // the first writer still has it open and stalls.
    drop(
        OpenOptions::new()
            .write(true)
            .open(env.path("a", "shared.tar"))
            .unwrap(),
    );
    let seen = appeared_while(env.path("b", "shared.tar"), || {
        std::thread::sleep(Duration::from_millis(900));
        f.write_all(b"part2").unwrap();
        drop(f);
    });
    assert!(!seen, "linked while its first writer still had it open");
    env.wait_everywhere("shared.tar");
    assert_eq!(
        fs::read(env.path("b", "shared.tar")).unwrap(),
        b"part1part2"
    );
    drop(d);
}

#[test]
fn without_file_leases_a_closed_file_still_completes_and_a_linked_in_one_waits_for_a_rescan() {
    // Without CAP_LEASE, root cannot take a lease on a file it does not
    // own: the daemon cannot tell open writers, as on an NFS or FUSE root.
    if !nix::unistd::geteuid().is_root()
        || std::process::Command::new("setpriv")
            .arg("--help")
            .output()
            .is_err()
    {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    let env = Env::new(&["a", "b"]);
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--bounding-set", "-lease", bin(), "run"])
        .args(env.args())
        .env("DISTLINK_LOG", "debug");
    let d = env.spawn(cmd);
    d.wait_log("ready", WAIT);
    let nobody = Some(nix::unistd::Uid::from_raw(65534));
    // Published by a link while the daemon looks away: never closed under
    // its name, so it waits for a rescan.
    d.signal(nix::sys::signal::Signal::SIGSTOP);
    fs::write(env.path("a", ".linked.tmp"), b"linked").unwrap();
    nix::unistd::chown(&env.path("a", ".linked.tmp"), nobody, None).unwrap();
    fs::hard_link(env.path("a", ".linked.tmp"), env.path("a", "linked.tar")).unwrap();
    fs::remove_file(env.path("a", ".linked.tmp")).unwrap();
    d.signal(nix::sys::signal::Signal::SIGCONT);
    d.wait_log("cannot take file leases", WAIT);
    // Written in place and closed: complete as before.
    let mut f = fs::File::create(env.path("a", "closed.tar")).unwrap();
    nix::unistd::fchown(&f, nobody, None).unwrap();
    f.write_all(b"closed").unwrap();
    drop(f);
    env.wait_everywhere("closed.tar");
    env.stays_absent("b", "linked.tar");
    // The next rescan (a reload makes one) finds it.
    d.signal(nix::sys::signal::Signal::SIGHUP);
    env.wait_everywhere("linked.tar");
    assert_eq!(d.count_log("cannot take file leases"), 1, "{}", d.log());
}
