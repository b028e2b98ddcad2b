//! Semantics 7: events. A kernel queue overflow triggers a full rescan;
//! poll mode works without inotify.

mod common;
use common::*;

use nix::sys::signal::Signal;
use std::fs;

#[test]
fn a_queue_overflow_forced_by_sigstop_is_recovered_by_a_rescan() {
    let env = Env::new(&["a", "b"]);
    let d = env.start();
    let max: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16384);
    let n = max + 2000;
    let staging = env.root.join("staging");
    fs::create_dir(&staging).unwrap();
    for i in 0..n {
        fs::write(staging.join(format!("o{i:06}")), b"x").unwrap();
    }
    d.signal(Signal::SIGSTOP);
    for i in 0..n {
        fs::rename(
            staging.join(format!("o{i:06}")),
            env.path("a", format!("o{i:06}")),
        )
        .unwrap();
    }
    d.signal(Signal::SIGCONT);
    d.wait_log("overflowed", WAIT);
    let last = format!("o{:06}", n - 1);
    env.wait_everywhere(&last);
    assert!(
        wait_until(WAIT, || env.names("b").len() == n),
        "only {} of {n} linked",
        env.names("b").len()
    );
    for i in (0..n).step_by(997) {
        assert!(env.same_inode(&["a", "b"], format!("o{i:06}")));
    }
}

#[test]
fn poll_mode_links_without_inotify() {
    let mut env = Env::new(&["a", "b", "c"]);
    env.extra = vec!["--poll".into(), "200ms".into()];
    let d = env.start();
    assert!(
        d.log().contains("mode=\"poll\"") || d.log().contains("mode=poll"),
        "{}",
        d.log()
    );
    env.fetch("a", "polled", b"p");
    env.write("b", "written", b"w");
    env.wait_everywhere("polled");
    env.wait_everywhere("written");
    fs::remove_file(env.path("c", "polled")).unwrap();
    env.stays_absent("c", "polled");
}
