//! The OpenRC script (`openrc/distlink`) run for real by `rc-service` and
//! `supervise-daemon` (see `tests/common/openrc.rs` for the private
//! namespace it runs in): a start distlink would refuse fails with the
//! reason on the terminal and leaves nothing running; a good one links;
//! reload and restart check first and keep the running daemon on a bad
//! configuration; respawning is bounded. Needs root and OpenRC (Debian's
//! `openrc` installs beside systemd); CI requires both.

mod common;
use common::openrc::{OpenRc, have_openrc};
use common::startup::{need_root, tree};
use common::*;

use std::fs;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A temp root with `hosts`, its config, and a private OpenRC whose conf.d
/// points at them and at the binary under test, plus `more` conf.d lines
/// (`respawn_delay=1`, so the tests need not wait minutes).
struct Service {
    env: Env,
    rc: OpenRc,
    log: std::path::PathBuf,
}

fn config_text(env: &Env, hosts: &[&str]) -> String {
    let list: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    format!(
        "root = \"{}\"\nstate_dir = \"{}\"\nhosts = [{}]\nsettle = \"{SETTLE}\"\n",
        env.root.display(),
        env.state.display(),
        list.join(", ")
    )
}

impl Service {
    fn new(hosts: &[&str], more: &str) -> Option<Service> {
        if !need_root() || !have_openrc() {
            return None;
        }
        let env = Env::new(hosts);
        let config = env.config(&config_text(&env, hosts));
        let log = env.tmp.path().join("distlink.log");
        let confd = format!(
            "DISTLINK_BINARY=\"{}\"\nDISTLINK_CONFIG=\"{}\"\nDISTLINK_STATE_DIR=\"{}\"\n\
             error_log=\"{}\"\n{more}",
            bin(),
            config.display(),
            env.state.display(),
            log.display(),
        );
        let rc = OpenRc::new(env.tmp.path(), &confd);
        Some(Service { env, rc, log })
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, pat: &str, n: usize) {
        assert!(
            wait_until(WAIT, || self.log().matches(pat).count() >= n),
            "the daemon's log never showed {pat:?} {n} times:\n{}",
            self.log()
        );
    }

    /// Stops the service, and proves nothing of it is left running.
    fn stop(&self) {
        let (code, out) = self.rc.service("stop");
        assert_eq!(
            code,
            0,
            "stop failed:\n{out}\nprocesses: distlink {:?}, supervise-daemon {:?}\nlog:\n{}",
            self.rc.processes("distlink"),
            self.rc.processes("supervise-daemo"),
            self.log()
        );
        assert!(
            wait_until(WAIT, || self.rc.processes("distlink").is_empty()
                && self.rc.processes("supervise-daemo").is_empty()),
            "left running after stop: distlink {:?}, supervise-daemon {:?}",
            self.rc.processes("distlink"),
            self.rc.processes("supervise-daemo")
        );
    }
}

/// Respawning after 1 s rather than 5; the script's limits (3 within 60 s).
const QUICK: &str = "respawn_delay=1\n";

#[test]
fn a_service_on_a_good_root_starts_links_reloads_a_new_host_and_stops() {
    let Some(s) = Service::new(&["a", "b"], QUICK) else {
        return;
    };
    let (code, out) = s.rc.service("start");
    assert_eq!(code, 0, "start failed:\n{out}");
    assert!(out.contains("Checking distlink"), "{out}");
    s.wait_log("ready", 1);
    // The state dir made root's alone.
    let st = fs::metadata(&s.env.state).expect("state dir");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&st.permissions()) & 0o777,
        0o700
    );
    let (code, out) = s.rc.service("status");
    assert!(code == 0 && out.contains("started"), "{out}");

    s.env.fetch("a", "foo-1.tar.gz", b"fetched by host a");
    s.env.wait_everywhere("foo-1.tar.gz");

    // A new host in the configuration: reload seeds it.
    s.env.config(&config_text(&s.env, &["a", "b", "c"]));
    let (code, out) = s.rc.service("reload");
    assert_eq!(code, 0, "reload failed:\n{out}");
    s.wait_log("config reloaded", 1);
    assert!(
        wait_until(WAIT, || s.env.ino("c", "foo-1.tar.gz")
            == s.env.ino("a", "foo-1.tar.gz")),
        "host c was not seeded; log:\n{}",
        s.log()
    );
    s.stop();
    let (code, out) = s.rc.service("status");
    assert!(code == 3 && out.contains("stopped"), "{code}: {out}");
}

#[test]
fn a_start_distlink_would_refuse_fails_with_the_reason_and_nothing_keeps_restarting() {
    let Some(s) = Service::new(&["a", "b"], "respawn_delay=1\nrespawn_period=5\n") else {
        return;
    };
    // Files in the host dirs, but no record: distlink will not guess.
    s.env.fetch("a", "old-1.tar.gz", b"there before distlink");
    let before = tree(s.env.tmp.path());
    let (code, out) = s.rc.service("start");
    assert_ne!(code, 0, "start succeeded:\n{out}");
    assert!(
        out.contains("no record of what was distributed yet")
            && out.contains("distlink migrate")
            && out.contains("would refuse to start"),
        "the reason is not on the terminal:\n{out}"
    );
    let (code, out) = s.rc.service("status");
    assert!(code != 0 && !out.contains("started"), "{code}: {out}");
    // Past a whole respawn period, nothing ever ran.
    let spawned = wait_until(Duration::from_secs(7), || {
        !s.rc.processes("distlink").is_empty() || !s.rc.processes("supervise-daemo").is_empty()
    });
    assert!(!spawned, "something was started: {:?}", s.rc.processes(""));
    assert_eq!(s.log(), "", "the daemon ran");
    // A refused start changes nothing (no state dir, no log file).
    let after: Vec<String> = tree(s.env.tmp.path())
        .into_iter()
        .filter(|l| !l.contains("etc-overlay") && !l.contains("namespace-ready"))
        .collect();
    let before: Vec<String> = before
        .into_iter()
        .filter(|l| !l.contains("etc-overlay") && !l.contains("namespace-ready"))
        .collect();
    assert_eq!(after, before, "the refused start changed the disk");
}

#[test]
fn a_reload_or_restart_onto_a_bad_configuration_keeps_the_running_daemon() {
    let Some(s) = Service::new(&["a", "b"], QUICK) else {
        return;
    };
    let (code, out) = s.rc.service("start");
    assert_eq!(code, 0, "start failed:\n{out}");
    s.wait_log("ready", 1);
    let pid = s.rc.daemon_pid(WAIT).expect("one daemon");

    let good = fs::read_to_string(s.env.tmp.path().join("distlink.toml")).unwrap();
    s.env.config(&format!("{good}setle = \"5s\"\n"));
    let (code, out) = s.rc.service("reload");
    assert_ne!(code, 0, "reload succeeded on a bad configuration:\n{out}");
    assert!(
        out.contains("setle"),
        "reload: the reason is not shown:\n{out}"
    );
    assert_eq!(
        s.rc.processes("distlink"),
        vec![pid],
        "reload touched the daemon"
    );
    let (code, out) = s.rc.service("restart");
    assert_ne!(code, 0, "restart succeeded on a bad configuration:\n{out}");
    assert!(
        out.contains("setle") && out.contains("would refuse to start") && !out.contains("Stopping"),
        "restart: the reason is not shown, or it stopped:\n{out}"
    );
    assert_eq!(
        s.rc.processes("distlink"),
        vec![pid],
        "restart touched the daemon"
    );
    assert!(!s.log().contains("config reloaded"), "{}", s.log());
    let (code, out) = s.rc.service("status");
    assert!(code == 0 && out.contains("started"), "{out}");
    s.env
        .fetch("b", "still-2.tar.gz", b"the old daemon still links");
    s.env.wait_everywhere("still-2.tar.gz");

    // Fixed, a restart goes through: a new daemon.
    s.env.config(&good);
    let (code, out) = s.rc.service("restart");
    assert_eq!(code, 0, "restart failed:\n{out}");
    s.wait_log("ready", 2);
    let new = s.rc.daemon_pid(WAIT).expect("one daemon");
    assert_ne!(new, pid);
    s.stop();

    // A restart of the stopped service is a start: checked too.
    s.env.config(&format!("{good}setle = \"5s\"\n"));
    let (code, out) = s.rc.service("restart");
    assert!(code != 0 && out.contains("setle"), "{code}: {out}");
    assert!(
        !wait_until(Duration::from_secs(3), || !s
            .rc
            .processes("distlink")
            .is_empty()),
        "a daemon was started"
    );
}

#[test]
fn respawning_a_daemon_that_keeps_dying_gives_up_after_three_times() {
    let Some(s) = Service::new(&["a", "b"], QUICK) else {
        return;
    };
    let (code, out) = s.rc.service("start");
    assert_eq!(code, 0, "start failed:\n{out}");
    let mut pid = s.rc.daemon_pid(WAIT).expect("one daemon");
    // Three deaths are respawned...
    for n in 1..=3 {
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        let mut next = None;
        wait_until(WAIT, || {
            next = s.rc.daemon_pid(Duration::ZERO).filter(|p| *p != pid);
            next.is_some()
        });
        pid = next.unwrap_or_else(|| panic!("death {n} was not respawned"));
    }
    // ... the fourth within the period is not.
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let respawned = wait_until(Duration::from_secs(8), || {
        s.rc.processes("distlink").iter().any(|p| *p != pid)
    });
    assert!(
        !respawned,
        "respawned a fourth time: {:?}",
        s.rc.processes("distlink")
    );
    assert!(
        wait_until(WAIT, || s.rc.processes("supervise-daemo").is_empty()),
        "supervise-daemon did not give up"
    );
    let (code, out) = s.rc.service("status");
    assert!(code != 0 && !out.contains("started"), "{code}: {out}");
}
