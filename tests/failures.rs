//! Semantics 7 (failures): a link that fails (here EPERM on an immutable
//! host dir) is logged with its path, holds up no other host, and is
//! retried until it succeeds.

mod common;
use common::*;

use std::process::Command;

#[test]
fn a_failed_link_is_logged_with_its_path_and_retried() {
    let env = Env::new(&["a", "b", "c"]);
    let immutable = Command::new("chattr").arg("+i").arg(env.dir("b")).status();
    if !immutable.is_ok_and(|s| s.success()) {
        eprintln!("skipped: chattr +i does not work here (needs root on ext4/xfs/btrfs)");
        return;
    }
    let _ = Command::new("chattr").arg("-i").arg(env.dir("b")).status();
    let mut d = env.start();
    let _ = Command::new("chattr").arg("+i").arg(env.dir("b")).status();
    env.fetch("a", "blocked", b"x");
    // The other hosts are not held up by b.
    assert!(wait_until(WAIT, || env.same_inode(&["a", "c"], "blocked")));
    d.wait_log(&env.path("b", "blocked").display().to_string(), WAIT);
    assert!(d.log().contains("will retry"));
    // sync meanwhile? It cannot take the lock: stop the daemon, sync fails (exit 1).
    assert!(d.stop().success());
    let out = env.sync(&[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = Command::new("chattr").arg("-i").arg(env.dir("b")).status();
    let d = env.start();
    env.wait_everywhere("blocked");
    drop(d);
}

#[test]
fn a_failed_link_is_retried_while_running() {
    let env = Env::new(&["a", "b"]);
    if !Command::new("chattr")
        .arg("+i")
        .arg(env.dir("b"))
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("skipped: chattr +i does not work here");
        return;
    }
    let _ = Command::new("chattr").arg("-i").arg(env.dir("b")).status();
    let d = env.start();
    let _ = Command::new("chattr").arg("+i").arg(env.dir("b")).status();
    env.fetch("a", "later", b"x");
    d.wait_log("will retry", WAIT);
    let _ = Command::new("chattr").arg("-i").arg(env.dir("b")).status();
    env.wait_everywhere_within("later", RECOVER);
}
