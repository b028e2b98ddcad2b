//! Monitoring: `status` and `check` tell the truth about the daemon and
//! the record, to root and to an unprivileged monitoring user alike.

mod common;
use common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;

fn need_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("DISTLINK_REQUIRE_TOOLS").is_none(),
        "these tests need root (setpriv)"
    );
    eprintln!("skipped: needs root (setpriv)");
    false
}

/// A daemon killed with SIGKILL leaves its pid file but holds no lock any
/// more: `check` says so (exit 1) even though nothing new arrived. One
/// stopped cleanly is only a problem to `check --daemon`.
#[test]
fn check_reports_a_killed_daemon_and_with_daemon_a_stopped_one() {
    let env = Env::new(&["a", "b"]);
    let mut d = env.start();
    env.fetch("a", "foo-1.0.tar.gz", b"foo");
    env.wait_everywhere("foo-1.0.tar.gz");
    let (code, out, err) = Env::output(env.reader("check", &[]));
    assert_eq!(code, Some(0), "{out}{err}");
    d.kill9();
    for more in [&[][..], &["--daemon"]] {
        let (code, out, err) = Env::output(env.reader("check", more));
        assert_eq!(code, Some(1), "{more:?}: {out}{err}");
        assert!(
            out.contains("did not stop cleanly") && out.contains("killed"),
            "{out}"
        );
    }
    let (_, out, _) = Env::output(env.reader("status", &[]));
    assert!(out.contains("was killed or crashed"), "{out}");
    // Started again: fine again; stopped cleanly: only --daemon minds.
    let mut d = env.start();
    let (code, out, _) = Env::output(env.reader("check", &["--daemon"]));
    assert_eq!(code, Some(0), "{out}");
    assert!(d.stop().success());
    let (code, out, _) = Env::output(env.reader("check", &[]));
    assert_eq!(code, Some(0), "{out}");
    let (code, out, _) = Env::output(env.reader("check", &["--daemon", "--json"]));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("the daemon is not running"), "{out}");
    let (_, out, _) = Env::output(env.reader("status", &[]));
    assert!(out.contains("daemon not running\n"), "{out}");
}

/// A status or check run by a user who cannot read the state dir used to
/// say "daemon not running" and "no record": now it is an error (exit 2)
/// naming the file and the fix. With `state_group` that user's group can
/// read the record and gets the truth.
#[test]
fn an_unprivileged_reader_gets_an_error_or_with_state_group_the_truth() {
    if !need_root() {
        return;
    }
    let mut env = Env::new(&["a", "b"]);
    // The temp dir is root's 0700: let others reach the root and the
    // state dir's parent, as /var/cache and /var/lib are.
    fs::set_permissions(env.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut d = env.start();
    env.fetch("a", "foo-1.0.tar.gz", b"foo");
    env.wait_everywhere("foo-1.0.tar.gz");
    let refused = |sub: &str, more: &[&str]| {
        let (code, out, err) = Env::output(env.reader_as_nobody("nogroup", sub, more));
        assert_eq!(code, Some(2), "{sub} {more:?}: {out}{err}");
        assert!(
            err.contains("permission denied")
                && err.contains("state_group")
                && err.contains(&*env.state.to_string_lossy()),
            "{sub}: {err}"
        );
        assert!(
            !out.contains("not running") && !out.contains("no record"),
            "{sub}: {out}"
        );
    };
    refused("status", &[]);
    refused("check", &[]);
    refused("check", &["--daemon"]);
    assert!(d.stop().success());
    // Without the daemon, migrate's dry run would have predicted links
    // from a record it could not read.
    refused("migrate", &["--dry-run"]);
    refused("check", &[]);
    // The monitoring group is given read access at the next start.
    let cfg = env.config("state_group = \"nogroup\"\n");
    env.extra = vec!["--config".into(), cfg.to_str().unwrap().into()];
    let d = env.start();
    let (code, out, err) = Env::output(env.reader_as_nobody("nogroup", "status", &[]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("daemon running (pid {})", d.pid())),
        "{out}"
    );
    let (code, out, err) = Env::output(env.reader_as_nobody("nogroup", "check", &["--daemon"]));
    assert_eq!(code, Some(0), "{out}{err}");
    // Writers are still root alone: the dir and files are not group-writable.
    let mode = fs::metadata(&env.state).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o2710);
    let mode = fs::metadata(env.state.join("state.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    drop(d);
}
