//! Hostile floods planted by a client in its own host dir: huge numbers of
//! files, a file that never stops changing, a rename ping-pong. The daemon
//! stays responsive, links only what is complete, and does not spin.

mod common;
use common::*;

use std::fs;
use std::time::{Duration, Instant};

/// CPU seconds (user + system) the process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

#[test]
fn a_hundred_thousand_empty_files_are_all_linked() {
    let n: usize = std::env::var("DISTLINK_FLOOD_FILES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let env = Env::new(&["a", "b"]);
    let mut d = env.start();
    let t = Instant::now();
    for i in 0..n {
        fs::write(env.path("a", format!("e{i:06}")), b"").unwrap();
    }
    let written = t.elapsed();
    assert!(
        wait_until(Duration::from_secs(120), || env.names("b").len() == n),
        "only {} of {n} linked",
        env.names("b").len()
    );
    eprintln!(
        "{n} empty files written in {written:?}, all linked after {:?}",
        t.elapsed()
    );
    env.fetch("a", "marker", b"m");
    env.wait_everywhere("marker");
    assert!(d.stop().success());
}

#[test]
fn a_file_rewritten_every_10ms_is_never_linked_and_costs_little_cpu() {
    let env = Env::new(&["a", "b"]);
    let d = env.start();
    let pid = d.child.id();
    let cpu0 = cpu_secs(pid);
    let end = Instant::now() + Duration::from_secs(3);
    let mut i = 0u64;
    while Instant::now() < end {
        fs::write(env.path("a", "churn.bin"), i.to_le_bytes()).unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpu = cpu_secs(pid) - cpu0;
    assert!(
        !env.exists("b", "churn.bin"),
        "a file that never settled was linked"
    );
    // About 300 rewrites in 3 s: a few events each, no busy loop.
    assert!(
        cpu < 1.5,
        "daemon used {cpu:.2} CPU seconds in 3 s of churn"
    );
    // Still responsive.
    env.fetch("a", "after-churn", b"x");
    env.wait_everywhere("after-churn");
    // Once it stops changing, it settles and is linked.
    env.wait_everywhere("churn.bin");
    eprintln!("{i} rewrites, daemon CPU {cpu:.2} s");
}

#[test]
fn a_rename_ping_pong_does_not_wedge_the_daemon() {
    let env = Env::new(&["a", "b"]);
    let mut d = env.start();
    env.fetch("a", "ping", b"ball");
    env.wait_everywhere("ping");
    let end = Instant::now() + Duration::from_secs(2);
    let mut flips = 0;
    while Instant::now() < end {
        let (from, to) = if flips % 2 == 0 {
            ("ping", "pong")
        } else {
            ("pong", "ping")
        };
        fs::rename(env.path("a", from), env.path("a", to)).unwrap();
        flips += 1;
    }
    env.fetch("a", "after-pingpong", b"x");
    env.wait_everywhere("after-pingpong");
    // Every name in b is a link of the one inode: nothing copied, nothing
    // half-written, no temp names.
    let ino = env.ino("b", "ping");
    for n in env.names("b") {
        let n = String::from_utf8(n).unwrap();
        assert!(!n.starts_with('.'), "temp name {n} left in b");
        if n == "ping" || n == "pong" {
            assert_eq!(env.ino("b", &n), ino);
        }
    }
    assert!(d.stop().success());
    eprintln!("{flips} renames");
}

#[test]
fn a_burst_of_renames_is_linked_without_overflowing_the_event_queue() {
    // 10,000 arrivals into one host of four raise 30,000 events of the
    // daemon's own links, more than the kernel queue holds (16,384 by
    // default): it must read the queue between rounds of linking. The
    // daemon is stopped while the files arrive, so it finds all 10,000
    // arrivals queued at once.
    let n = 10_000;
    let env = Env::new(&["a", "b", "c", "d"]);
    let staging = env.root.join("staging");
    fs::create_dir(&staging).unwrap();
    for i in 0..n {
        fs::write(staging.join(format!("f{i:05}")), format!("{i}")).unwrap();
    }
    let mut d = env.start();
    d.signal(nix::sys::signal::Signal::SIGSTOP);
    for i in 0..n {
        let name = format!("f{i:05}");
        fs::rename(staging.join(&name), env.path("a", &name)).unwrap();
    }
    d.signal(nix::sys::signal::Signal::SIGCONT);
    assert!(
        wait_until(Duration::from_secs(120), || ["b", "c", "d"]
            .iter()
            .all(|h| env.names(h).len() == n)),
        "not all linked"
    );
    // The last links' events are read after they are made: stopping
    // makes the daemon read what is queued (an overflow included) first.
    assert!(d.stop().success());
    assert_eq!(d.count_log("overflowed"), 0, "the queue overflowed");
}
