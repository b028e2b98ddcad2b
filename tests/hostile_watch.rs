//! Hostile scenarios against the watch modes (the cheap poll), the
//! active/standby pair and `run --check` (issues 12 and 14): what a
//! misconfigured standby, a client racing the poll's ticks and a daemon
//! killed at the wrong moment must not get away with.

mod common;
use common::*;

use std::time::Instant;

/// A standby is the daemon that must work at failover time: a standby
/// that could never take over must say so when it is started, not wait for
/// the lock and then refuse at the moment it is needed.
#[test]
fn a_standby_given_another_root_than_the_record_describes_is_refused_before_it_waits() {
    let env = Env::new(&["a", "b"]);
    let mut active = env.start();
    // The standby's root is another directory (the distfiles filesystem
    // not mounted on the standby's machine, say) sharing the state dir.
    let mut other = Env::new(&["a", "b"]);
    other.state = env.state.clone();
    let mut standby = other.spawn(other.command("run", &["--standby"]));
    let t0 = Instant::now();
    let st = standby.wait(WAIT);
    assert_eq!(
        st.code(),
        Some(2),
        "a standby that cannot take over waited instead of refusing:\n{}",
        standby.log()
    );
    assert!(t0.elapsed() < WAIT, "{}", standby.log());
    assert!(
        standby.log().contains("describes another root"),
        "{}",
        standby.log()
    );
    assert!(!standby.log().contains("standing by"), "{}", standby.log());
    // The active daemon was left alone.
    env.fetch("a", "still-active", b"x");
    env.wait_everywhere("still-active");
    assert!(active.stop().success());
}

/// The same refusal for host dirs a standby could not use: its config
/// names a host whose dir is a symlink (nothing is followed).
#[test]
fn a_standby_whose_host_dir_is_a_symlink_is_refused_before_it_waits() {
    let env = Env::new(&["a", "b"]);
    let mut active = env.start();
    let outside = env.tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, env.dir("c")).unwrap();
    let mut standby_env = Env::new(&[]);
    standby_env.root = env.root.clone();
    standby_env.state = env.state.clone();
    standby_env.hosts = vec!["a".into(), "b".into(), "c".into()];
    let mut standby = standby_env.spawn(standby_env.command("run", &["--standby"]));
    let st = standby.wait(WAIT);
    assert_eq!(st.code(), Some(2), "{}", standby.log());
    assert!(!standby.log().contains("standing by"), "{}", standby.log());
    assert!(active.stop().success());
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}
