//! Semantics 5 and 8, an active/standby pair: `run --standby` (or
//! `standby = true`) waits while another daemon holds the state lock,
//! takes over when it dies — full reconcile, then `ready` and `READY=1` —
//! and never undoes a prune the active one recorded.

mod common;
use common::*;

use nix::sys::signal::Signal;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Receives every notification sent to the socket until one equals `want`.
fn wait_notify(sock: &UnixDatagram, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {want} received ({e}); got {seen:?}"));
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = msg == want;
        seen.push(msg);
        if done {
            return seen;
        }
    }
}

#[test]
fn a_standby_waits_then_takes_over_after_kill_9_keeping_prunes_and_distributing_what_arrived_meanwhile()
 {
    let env = Env::new(&["a", "b", "c"]);
    let mut active = env.start();
    let sock_path = env.tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut cmd = env.command("run", &["--standby"]);
    cmd.env("NOTIFY_SOCKET", &sock_path);
    let standby = env.spawn(cmd);
    standby.wait_log("standing by", WAIT);
    let told = wait_notify(&sock, "EXTEND_TIMEOUT_USEC=30000000");
    assert!(
        told.iter().any(|m| m.starts_with("STATUS=standing by")),
        "{told:?}"
    );

    // While the active daemon runs, it alone distributes; host b prunes.
    env.fetch("a", "kept-pruned.tar.gz", b"distributed, then pruned by b");
    env.wait_everywhere("kept-pruned.tar.gz");
    std::fs::remove_file(env.path("b", "kept-pruned.tar.gz")).unwrap();
    // The active one stalls and dies; meanwhile a download completes.
    active.signal(Signal::SIGSTOP);
    env.fetch(
        "c",
        "arrived-meanwhile.tar.gz",
        b"downloaded while nobody was active",
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!env.exists("a", "arrived-meanwhile.tar.gz"));
    assert!(
        !standby.log().contains("ready"),
        "the standby started while the lock was held:\n{}",
        standby.log()
    );
    active.kill9();

    let told = wait_notify(&sock, "READY=1");
    assert!(!told.iter().any(|m| m == "STOPPING=1"), "{told:?}");
    standby.wait_log("taking over", WAIT);
    assert_eq!(
        standby.count_log("standing by"),
        1,
        "said more than once:\n{}",
        standby.log()
    );
    env.wait_everywhere("arrived-meanwhile.tar.gz");
    env.stays_absent("b", "kept-pruned.tar.gz");
    // It is the active daemon now: it follows new arrivals.
    env.fetch("b", "after-takeover.tar.gz", b"new");
    env.wait_everywhere("after-takeover.tar.gz");
    env.stays_absent("b", "kept-pruned.tar.gz");
    // And a daemon without --standby is refused while it runs.
    let (code, _, err) = Env::output(env.command("run", &[]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("holds the lock"), "{err}");
}

#[test]
fn sigterm_to_a_waiting_standby_from_the_config_key_exits_cleanly_and_leaves_the_active_alone() {
    let env = Env::new(&["a", "b"]);
    let mut active = env.start();
    let cfg = env.config(&format!(
        "root = \"{}\"\nstate_dir = \"{}\"\nhosts = [\"a\", \"b\"]\nstandby = true\nsettle = \"{}\"\n",
        env.root.display(),
        env.state.display(),
        SETTLE
    ));
    let mut c = std::process::Command::new(bin());
    c.arg("run").arg("--config").arg(&cfg);
    let mut standby = env.spawn(c);
    standby.wait_log("standing by", WAIT);
    standby.signal(Signal::SIGTERM);
    let st = standby.wait(WAIT);
    assert!(st.success(), "{st:?}\n{}", standby.log());
    assert!(!standby.log().contains("ready"), "{}", standby.log());
    assert!(standby.log().contains("stopped"), "{}", standby.log());
    // The active daemon still holds the lock and works.
    env.fetch("a", "still-active", b"x");
    env.wait_everywhere("still-active");
    assert!(active.stop().success());
}
