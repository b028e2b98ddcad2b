//! Semantics 8: SIGTERM/SIGINT stop cleanly, SIGHUP reloads the config,
//! readiness is logged and sent to $NOTIFY_SOCKET.

mod common;
use common::*;

use nix::sys::signal::Signal;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

/// Writes the config file: this env's root, the given hosts, extra lines.
fn write_config(env: &Env, hosts: &[&str], extra: &str) -> std::path::PathBuf {
    let list: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    env.config(&format!(
        "root = \"{}\"\nstate_dir = \"{}\"\nhosts = [{}]\n{extra}",
        env.root.display(),
        env.state.display(),
        list.join(", ")
    ))
}

/// Starts the daemon on a config file (so SIGHUP re-reads it).
fn start_on_config(env: &Env, hosts: &[&str]) -> Daemon {
    let cfg = write_config(env, hosts, "");
    let d = env.spawn(run_with_config(&cfg));
    d.wait_log("ready", WAIT);
    d
}

fn run_with_config(cfg: &std::path::Path) -> Command {
    let mut c = Command::new(bin());
    c.args(["run", "--settle", SETTLE, "--config"]).arg(cfg);
    c
}

#[test]
fn sigterm_and_sigint_stop_with_exit_0() {
    let env = Env::new(&["a", "b"]);
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut d = env.start();
        env.fetch("a", format!("f-{sig:?}"), b"x");
        env.wait_everywhere(format!("f-{sig:?}"));
        d.signal(sig);
        let st = d.wait(WAIT);
        assert_eq!(st.code(), Some(0), "{sig:?}: {}", d.log());
        d.wait_log("stopped", WAIT);
    }
}

#[test]
fn sighup_adds_a_host_and_seeds_it() {
    let env = Env::new(&["a", "b"]);
    let d = start_on_config(&env, &["a", "b"]);
    env.fetch("a", "existing", b"e");
    assert!(wait_until(WAIT, || env.same_inode(&["a", "b"], "existing")));
    write_config(&env, &["a", "b", "c"], "");
    d.signal(Signal::SIGHUP);
    d.wait_log("config reloaded", WAIT);
    assert!(
        wait_until(WAIT, || env.same_inode(&["a", "b", "c"], "existing")),
        "{}",
        d.log()
    );
    env.fetch("c", "from-c", b"c");
    assert!(wait_until(WAIT, || env.same_inode(&["a", "b", "c"], "from-c")));
}

#[test]
fn sighup_with_an_invalid_config_keeps_the_old_one() {
    let env = Env::new(&["a", "b"]);
    let d = start_on_config(&env, &["a", "b"]);
    write_config(&env, &["a", "b"], "settle = 5\n");
    d.signal(Signal::SIGHUP);
    d.wait_log("keeping the old config", WAIT);
    assert!(d.log().contains("settle"), "{}", d.log());
    env.fetch("b", "still-works", b"s");
    assert!(wait_until(WAIT, || env.same_inode(&["a", "b"], "still-works")));
}

#[test]
fn sighup_applies_new_ignore_globs() {
    let env = Env::new(&["a", "b"]);
    let d = start_on_config(&env, &["a", "b"]);
    write_config(&env, &["a", "b"], "ignore = [\"*.iso\"]\n");
    d.signal(Signal::SIGHUP);
    d.wait_log("config reloaded", WAIT);
    env.fetch("a", "big.iso", b"i");
    env.fetch("a", "small.tar", b"t");
    assert!(wait_until(WAIT, || env.same_inode(&["a", "b"], "small.tar")));
    env.stays_absent("b", "big.iso");
}

#[test]
fn readiness_is_logged_and_sent_to_notify_socket() {
    let env = Env::new(&["a", "b"]);
    let sock_path = env.tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut cmd = env.command("run", &[]);
    cmd.env("NOTIFY_SOCKET", &sock_path);
    let mut d = env.spawn(cmd);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("no READY=1 received");
    assert_eq!(&buf[..n], b"READY=1");
    // The log line is written just before the notification.
    d.wait_log("ready", WAIT);
    d.signal(Signal::SIGTERM);
    let n = sock.recv(&mut buf).expect("no STOPPING=1 received");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(d.wait(WAIT).success());
}

#[test]
fn json_logs_are_one_object_per_line() {
    let env = Env::new(&["a", "b"]);
    let d = env.start_with(&["--log-format", "json"]);
    env.fetch("a", "j", b"j");
    env.wait_everywhere("j");
    let log = d.log();
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(
            l.starts_with('{') && l.ends_with('}'),
            "not a JSON object: {l}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("\"message\":\"ready\"")),
        "{log}"
    );
}

#[test]
fn sighup_removing_a_host_leaves_it_alone_and_keeps_the_others_linked() {
    let env = Env::new(&["a", "b", "c"]);
    let d = start_on_config(&env, &["a", "b", "c"]);
    write_config(&env, &["a", "c"], "");
    d.signal(Signal::SIGHUP);
    d.wait_log("config reloaded", WAIT);
    env.fetch("c", "from-c", b"c");
    env.fetch("a", "from-a", b"a");
    assert!(wait_until(WAIT, || env.same_inode(&["a", "c"], "from-c")));
    assert!(wait_until(WAIT, || env.same_inode(&["a", "c"], "from-a")));
    env.all_stays_absent("b", &["from-a", "from-c"]);
    // b's own new files are no longer distributed either.
    env.fetch("b", "from-b", b"b");
    env.all_stays_absent("a", &["from-b"]);
    assert!(env.exists("b", "from-b"));
}

#[test]
fn a_seeded_file_pruned_before_the_record_says_it_was_paid_stays_gone_after_a_kill_9() {
    // SIGHUP adds c, which is owed every file; the owed links are made at
    // once, the record says they were paid up to 200 ms later. c prunes
    // one in between, and the daemon dies before writing the record.
    let env = Env::new(&["a", "b", "c"]);
    let mut d = start_on_config(&env, &["a", "b"]);
    env.fetch("a", "seeded.tar", b"owed to c");
    assert!(wait_until(WAIT, || env.same_inode(&["a", "b"], "seeded.tar")));
    write_config(&env, &["a", "b", "c"], "");
    d.signal(Signal::SIGHUP);
    assert!(wait_until(WAIT, || env.exists("c", "seeded.tar")));
    d.signal(Signal::SIGSTOP);
    std::fs::remove_file(env.path("c", "seeded.tar")).unwrap();
    d.kill9();
    let d = start_on_config(&env, &["a", "b", "c"]);
    env.stays_absent("c", "seeded.tar");
    assert!(env.same_inode(&["a", "b"], "seeded.tar"), "{}", d.log());
}

#[test]
fn a_file_still_being_written_at_start_up_does_not_hold_ready_up() {
    // A young file found by the start-up scan is waited for before
    // "ready", but one that keeps changing only for twice the settle time.
    let env = Env::new(&["a", "b"]);
    let mut d = env.start();
    assert!(d.stop().success());
    let path = env.path("a", "growing.iso");
    std::fs::write(&path, b"start").unwrap();
    let writer = std::thread::spawn(move || {
        for _ in 0..80 {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            std::io::Write::write_all(&mut f, b"more").unwrap();
            drop(f);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let d = env.spawn(env.command("run", &[]));
    d.wait_log("ready", WAIT);
    assert!(
        !writer.is_finished(),
        "\"ready\" waited for the writer to finish; log:\n{}",
        d.log()
    );
    assert!(d.log().contains("unsettled=1"), "{}", d.log());
    writer.join().unwrap();
    // Once it stops changing it is distributed as usual.
    assert!(wait_until(WAIT, || env.same_inode(&["a", "b"], "growing.iso")));
}

#[test]
fn a_host_dropped_from_the_config_for_one_reload_keeps_its_prunes_and_gets_what_it_missed() {
    let env = Env::new(&["a", "b", "c"]);
    let d = start_on_config(&env, &["a", "b", "c"]);
    env.fetch("a", "pruned-by-c", b"p");
    env.fetch("a", "kept-by-c", b"k");
    env.wait_everywhere("pruned-by-c");
    env.wait_everywhere("kept-by-c");
    std::fs::remove_file(env.path("c", "pruned-by-c")).unwrap();
    // A typo: c becomes cc for one reload, then is fixed.
    write_config(&env, &["a", "b", "cc"], "");
    d.signal(Signal::SIGHUP);
    d.wait_log("config reloaded", WAIT);
    env.fetch("a", "while-away", b"w");
    assert!(wait_until(WAIT, || env.same_inode(&["a", "b", "cc"], "while-away")));
    write_config(&env, &["a", "b", "c"], "");
    d.signal(Signal::SIGHUP);
    assert!(wait_until(WAIT, || d.count_log("config reloaded") == 2));
    // c gets what it missed, and only that.
    env.wait_everywhere("while-away");
    env.stays_absent("c", "pruned-by-c");
    assert!(env.same_inode(&["a", "b", "c"], "kept-by-c"));
    // A restart agrees.
    drop(d);
    let _d = start_on_config(&env, &["a", "b", "c"]);
    env.stays_absent("c", "pruned-by-c");
}

/// A root of three hosts with a record, then `n` files (empty) added to
/// host a while no daemon runs: a start-up has to link every one of them
/// into b and c.
fn root_with_undistributed_files(n: usize) -> Env {
    let env = Env::new(&["a", "b", "c"]);
    let mut d = env.start();
    assert!(d.stop().success());
    for k in 0..n {
        std::fs::File::create(env.path("a", format!("f{k:05}.tar"))).unwrap();
    }
    env
}

/// Waits for the process to exit, looking every 5 ms (what `Daemon::wait`
/// adds to measure the time to exit would blur the measurement).
fn exit_within(d: &mut Daemon, timeout: Duration) -> (std::process::ExitStatus, Duration) {
    let t = Instant::now();
    loop {
        if let Some(st) = d.child.try_wait().unwrap() {
            let took = t.elapsed();
            std::thread::sleep(Duration::from_millis(100)); // the log reader drains
            return (st, took);
        }
        assert!(t.elapsed() < timeout, "did not exit; log:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn logged_ready(log: &str) -> bool {
    log.lines()
        .any(|l| l.contains(" ready") || l.contains("\"ready\""))
}

#[test]
fn sigterm_during_the_start_up_reconcile_stops_promptly_and_loses_nothing() {
    const N: usize = 30_000;
    // The same work twice: one start-up runs to "ready", the other is
    // stopped in the middle.
    let full_env = root_with_undistributed_files(N);
    let env = root_with_undistributed_files(N);
    // Older than the settle time: complete, distributed by the scan.
    std::thread::sleep(Duration::from_millis(500));

    let t = Instant::now();
    let mut full = full_env.spawn(full_env.command("run", &[]));
    full.wait_log("ready", WAIT * 3);
    let start_up = t.elapsed();
    assert!(full.stop().success());

    let mut d = env.spawn(env.command("run", &[]));
    std::thread::sleep(Duration::from_millis(200));
    d.signal(Signal::SIGTERM);
    let (st, stop) = exit_within(&mut d, WAIT * 3);
    let log = d.log();
    eprintln!("full start-up {start_up:?}; SIGTERM 200 ms in, exit {stop:?} later");
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(!logged_ready(&log), "\"ready\" after SIGTERM:\n{log}");
    assert!(log.contains("reconcile stopped early"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    eprintln!(
        "{} of {N} files were linked into b before the stop",
        env.names("b").len()
    );
    assert!(
        stop < start_up / 2,
        "SIGTERM took {stop:?} to stop a start-up that takes {start_up:?} in full"
    );

    // What was linked before the stop is recorded: a host that prunes one
    // of those files does not get it back.
    let pruned = (0..N)
        .map(|k| format!("f{k:05}.tar"))
        .find(|n| env.exists("b", n));
    if let Some(n) = &pruned {
        std::fs::remove_file(env.path("b", n)).unwrap();
    }
    // The rest is done at the next start.
    let mut d = env.start();
    for k in 0..N {
        let n = format!("f{k:05}.tar");
        if pruned.as_ref() == Some(&n) {
            assert!(!env.exists("b", &n), "{n} was pruned from b but came back");
            assert!(env.same_inode(&["a", "c"], &n), "{n} not in a and c");
        } else {
            assert!(env.same_inode(&["a", "b", "c"], &n), "{n} not everywhere");
        }
    }
    assert!(d.stop().success());
}
