//! The identity of a file generation on a filesystem without birth time:
//! an ext4 made with 128-byte inodes (`mkfs.ext4 -I 128`), loop-mounted as
//! the root. A write or a `touch` must never make a distributed file look
//! like a new download (it would come back into a host that pruned it); a
//! real new download (a new inode, even one reusing the inode number) is
//! distributed again.
//!
//! Needs root, `mkfs.ext4`, `mount` and `losetup` (and loop devices); without
//! them it is skipped with a reason, unless `DISTLINK_REQUIRE_TOOLS=1`.

mod common;
use common::*;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root (needs a loop mount)".into());
    }
    for tool in ["mkfs.ext4", "mount", "umount", "losetup"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false)
            || Path::new("/sbin").join(tool).is_file()
            || Path::new("/usr/sbin").join(tool).is_file();
        if !found {
            return Some(format!("{tool} not found (Debian: e2fsprogs, mount)"));
        }
    }
    None
}

/// Skips (returns false) with a printed reason, or fails when the tools are
/// required.
fn can_run(why: Option<String>) -> bool {
    let Some(why) = why else {
        return true;
    };
    assert!(
        std::env::var("DISTLINK_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "DISTLINK_REQUIRE_TOOLS=1 but the identity test cannot run: {why}"
    );
    eprintln!("skipped: {why}");
    false
}

/// Whether `statx` reports a birth time for `path`.
fn has_birth_time(path: &Path) -> bool {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    let mut buf = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: a NUL-terminated path and an out-pointer for one struct statx.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS | libc::STATX_BTIME,
            buf.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "statx {}", path.display());
    // SAFETY: statx succeeded.
    let s = unsafe { buf.assume_init() };
    s.stx_mask & libc::STATX_BTIME != 0
}

/// A three-host root on a fresh ext4 without birth time, the record kept
/// outside it. `None` (after saying why) when this machine cannot do it.
fn root_without_birth_time() -> Option<(Env, mounts::Mounted)> {
    if !can_run(missing_prerequisite()) {
        return None;
    }
    let mut env = Env::new(&[]);
    let image = env.tmp.path().join("ext4-128.img");
    // 128-byte inodes: no room for a birth time.
    let mount = match mounts::ext4_whole_seconds(&image, &env.root) {
        Ok(m) => m,
        Err(why) => {
            can_run(Some(format!("cannot loop-mount an ext4 here: {why}")));
            return None;
        }
    };
    env.hosts = vec!["a".into(), "b".into(), "c".into()];
    for h in &env.hosts {
        fs::create_dir(env.dir(h)).expect("mkdir host");
    }
    // The test proves nothing on a filesystem that has birth times.
    fs::write(env.root.join("probe"), b"").expect("write probe");
    assert!(
        !has_birth_time(&env.root.join("probe")) && !has_birth_time(&env.dir("a")),
        "the ext4 made with -I 128 reports a birth time: the test would prove nothing"
    );
    fs::remove_file(env.root.join("probe")).expect("remove probe");
    Some((env, mount))
}

fn mtime(env: &Env, host: &str, name: &str) -> (i64, i64) {
    let m = fs::symlink_metadata(env.path(host, name)).expect("stat");
    (m.mtime(), m.mtime_nsec())
}

/// Waits until the clock has passed the next whole second: timestamps on
/// 128-byte inodes have whole seconds only, and a change in the same
/// second as the last one would not move the mtime.
fn next_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    std::thread::sleep(Duration::from_nanos(
        1_000_000_000 - u64::from(now.subsec_nanos()) + 50_000_000,
    ));
}

#[test]
fn a_write_or_touch_never_brings_a_pruned_file_back_without_birth_time() {
    let Some((env, _mount)) = root_without_birth_time() else {
        return;
    };
    let mut d = env.start();
    let data = b"distfile v1 ".repeat(1000);
    env.move_in_tmp("a", "foo.tar.xz", &data);
    env.wait_everywhere("foo.tar.xz");
    fs::remove_file(env.path("c", "foo.tar.xz")).expect("prune from c");
    env.stays_absent("c", "foo.tar.xz");

    // (1) A one-byte write in place in a: open, write, close (CLOSE_WRITE).
    let before = mtime(&env, "a", "foo.tar.xz");
    next_second();
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(env.path("a", "foo.tar.xz"))
            .expect("open for writing");
        f.seek(SeekFrom::Start(5)).expect("seek");
        f.write_all(b"V").expect("write one byte");
    }
    assert_ne!(
        mtime(&env, "a", "foo.tar.xz"),
        before,
        "the write moved no mtime"
    );
    env.stays_absent("c", "foo.tar.xz");

    // (2) A touch in b (no event), then a rescan (SIGHUP).
    let before = mtime(&env, "b", "foo.tar.xz");
    next_second();
    let touched = Command::new("touch")
        .arg(env.path("b", "foo.tar.xz"))
        .status()
        .expect("run touch");
    assert!(touched.success());
    assert_ne!(
        mtime(&env, "b", "foo.tar.xz"),
        before,
        "touch moved no mtime"
    );
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("config reloaded", WAIT);
    env.stays_absent("c", "foo.tar.xz");

    // (3) Nor after a restart (the start-up scan compares with the record).
    assert!(d.stop().success());
    let mut d = env.start();
    env.stays_absent("c", "foo.tar.xz");

    // (4) A new download of the name is a new generation, even when the
    // filesystem gives it the inode number of the old one: distributed.
    let old_ino = env.ino("a", "foo.tar.xz");
    fs::remove_file(env.path("a", "foo.tar.xz")).expect("prune from a");
    fs::remove_file(env.path("b", "foo.tar.xz")).expect("prune from b");
    env.fetch("a", "foo.tar.xz", &b"distfile v2 ".repeat(1000));
    env.wait_everywhere("foo.tar.xz");
    eprintln!(
        "new download: inode {:?}, old one {old_ino:?}{}",
        env.ino("a", "foo.tar.xz"),
        if env.ino("a", "foo.tar.xz") == old_ino {
            " (number reused: told apart by the inode generation)"
        } else {
            ""
        }
    );
    assert!(
        d.log().contains("inode generation"),
        "the start-up log does not say which identity is used:\n{}",
        d.log()
    );
    assert!(d.stop().success());
    let (code, out, err) = Env::output(env.command("check", &[]));
    assert_eq!(code, Some(0), "check found problems:\n{out}{err}");
}

#[test]
fn a_record_with_the_mtime_stamps_of_older_versions_does_not_bring_prunes_back() {
    let Some((env, _mount)) = root_without_birth_time() else {
        return;
    };
    let mut d = env.start();
    env.move_in_tmp("a", "old.tar.gz", b"recorded by an older version");
    env.wait_everywhere("old.tar.gz");
    fs::remove_file(env.path("c", "old.tar.gz")).expect("prune from c");
    env.stays_absent("c", "old.tar.gz");
    assert!(d.stop().success());

    // What versions that stamped with the mtime where there is no birth
    // time wrote for this file.
    let m = fs::symlink_metadata(env.path("a", "old.tar.gz")).expect("stat");
    let stamp = m.mtime() * 1_000_000_000 + m.mtime_nsec();
    let db = env.state.join("state.db");
    let conn = rusqlite::Connection::open(&db).expect("open the record");
    let n = conn
        .execute(
            "UPDATE files SET birth = ?1 WHERE name = ?2",
            rusqlite::params![stamp, b"old.tar.gz".as_slice()],
        )
        .expect("rewrite the stamp");
    assert_eq!(n, 1);
    drop(conn);
    // And a touch while the daemon is down.
    next_second();
    assert!(
        Command::new("touch")
            .arg(env.path("b", "old.tar.gz"))
            .status()
            .expect("run touch")
            .success()
    );

    let mut d = env.start();
    env.stays_absent("c", "old.tar.gz");
    // A restart after that keeps it so (the record was rewritten once).
    assert!(d.stop().success());
    let mut d = env.start();
    env.stays_absent("c", "old.tar.gz");
    assert!(d.stop().success());
}
