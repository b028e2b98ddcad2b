//! Hostile scenarios against the watch modes (the cheap poll), the
//! active/standby pair and `run --check` (issues 12 and 14): what a
//! misconfigured standby, a client racing the poll's ticks and a daemon
//! killed at the wrong moment must not get away with.

mod common;
use common::*;

use std::time::{Duration, Instant};

/// A standby is the daemon that must work at failover time: a standby
/// that could never take over must say so when it is started, not wait for
/// the lock and then refuse at the moment it is needed.
/// `n` complete files named by `name`, written under the root's `.stage`
/// (a dot name: not a candidate), ready to be renamed into a host at once.
fn staged_burst(env: &Env, n: usize, name: impl Fn(usize) -> String) -> std::path::PathBuf {
    let stage = env.root.join(".stage");
    std::fs::create_dir(&stage).unwrap();
    for i in 0..n {
        std::fs::write(stage.join(name(i)), format!("b's complete file {i}")).unwrap();
    }
    stage
}

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

/// The active daemon (polling) is stopped between linking a file into
/// every host and recording it; host b prunes it in that window; the
/// active daemon is killed. The standby that takes over replays the links
/// journal: the prune stays, and what arrives afterwards is distributed.
#[test]
fn a_standby_taking_over_from_a_poller_killed_inside_the_commit_window_keeps_the_prune() {
    let mut env = Env::new(&["a", "b", "c"]);
    env.extra = vec!["--poll".into(), "200ms".into()];
    let mut active = env.start();
    let mut standby = env.spawn(env.command("run", &["--standby"]));
    standby.wait_log("standing by", WAIT);
    env.move_in("a", "window.tar.gz", b"linked, pruned, never recorded");
    assert!(wait_until(WAIT, || env.exists("b", "window.tar.gz")));
    active.signal(nix::sys::signal::Signal::SIGSTOP);
    std::fs::remove_file(env.path("b", "window.tar.gz")).unwrap();
    active.kill9();
    standby.wait_log("ready", WAIT);
    env.stays_absent("b", "window.tar.gz");
    assert!(env.same_inode(&["a", "c"], "window.tar.gz"));
    env.fetch("c", "after.tar.gz", b"after the takeover");
    env.wait_everywhere("after.tar.gz");
    env.stays_absent("b", "window.tar.gz");
    assert!(standby.stop().success(), "{}", standby.log());
}

/// Two standbys wait for one active daemon; when it dies exactly one takes
/// over, the other goes on standing by (said once), and takes over in turn
/// when the first one stops.
#[test]
fn of_two_standbys_racing_for_the_lock_exactly_one_takes_over() {
    let mut env = Env::new(&["a", "b"]);
    env.extra = vec!["--poll".into(), "200ms".into()];
    let mut active = env.start();
    let mut s1 = env.spawn(env.command("run", &["--standby"]));
    let mut s2 = env.spawn(env.command("run", &["--standby"]));
    s1.wait_log("standing by", WAIT);
    s2.wait_log("standing by", WAIT);
    // `run --check` meanwhile: passes, taking no lock from anyone.
    let (code, out, err) = Env::output(env.command("run", &["--check"]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(format!("{out}{err}").contains("in use"), "{out}{err}");
    active.kill9();
    assert!(wait_until(WAIT, || s1.log().contains("ready")
        || s2.log().contains("ready")));
    std::thread::sleep(Duration::from_secs(1));
    let (first, second) = if s1.log().contains("ready") {
        (&mut s1, &mut s2)
    } else {
        (&mut s2, &mut s1)
    };
    assert!(
        !second.log().contains(" ready ") && !second.log().contains("the state lock is ours"),
        "both took over:\n{}\n---\n{}",
        first.log(),
        second.log()
    );
    assert_eq!(second.count_log("standing by"), 1, "{}", second.log());
    env.fetch("a", "one.tar.gz", b"one");
    env.wait_everywhere("one.tar.gz");
    assert!(first.stop().success(), "{}", first.log());
    second.wait_log("ready", WAIT);
    env.fetch("b", "two.tar.gz", b"two");
    env.wait_everywhere("two.tar.gz");
    assert!(second.stop().success(), "{}", second.log());
}

/// A burst of downloads completes in host b (more than one round of
/// arrivals, so some wait in the queue of complete files) while host c
/// holds files of the same names still being written. SIGHUP reloads a
/// config without host a: every host after it moves up one place. What
/// was queued as complete in b must stay b's: taken for c's, c's
/// half-written files would be linked into d at once.
#[test]
fn a_reload_that_removes_a_host_never_takes_a_queued_arrival_for_another_hosts_file() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new(&["a", "b", "c", "d"]);
    let conf = |hosts: &str| {
        env.config(&format!(
            "root = \"{}\"\nstate_dir = \"{}\"\nhosts = [{hosts}]\nsettle = \"30s\"\n",
            env.root.display(),
            env.state.display(),
        ))
    };
    let cfg = conf("\"a\", \"b\", \"c\", \"d\"");
    let mut c = std::process::Command::new(bin());
    c.arg("run").arg("--config").arg(&cfg);
    c.env("DISTLINK_LOG", "info");
    let d = env.spawn(c);
    d.wait_log("ready", WAIT);
    const N: usize = 1500;
    let name = |i: usize| format!("burst-{i:05}.tar.gz");
    // c's downloads in progress: open for writing, half there.
    let mut writing = Vec::new();
    for i in 0..N {
        let mut f = std::fs::File::create(env.path("c", name(i))).unwrap();
        std::io::Write::write_all(&mut f, b"half of c's ").unwrap();
        writing.push(f);
    }
    // b's downloads, staged in the root, renamed in at once (complete).
    let stage = staged_burst(&env, N, name);
    let _ = conf("\"b\", \"c\", \"d\"");
    for i in 0..N {
        std::fs::rename(stage.join(name(i)), env.path("b", name(i))).unwrap();
    }
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("config reloaded", WAIT);
    std::thread::sleep(Duration::from_secs(3));
    let ino = |h: &str, n: &str| {
        std::fs::symlink_metadata(env.path(h, n))
            .ok()
            .map(|m| m.ino())
    };
    let leaked: Vec<String> = (0..N)
        .map(name)
        .filter(|n| ino("d", n).is_some() && ino("d", n) == ino("c", n))
        .collect();
    assert!(
        leaked.is_empty(),
        "{} half-written files of c reached d, e.g. {:?}",
        leaked.len(),
        leaked.first()
    );
    drop(writing);
}

/// A burst of downloads completes in host b; while they wait to be
/// distributed, b's dir is moved aside and a new one made in its place,
/// holding files of the same names still being written. What was queued
/// as complete was the old dir's: the new dir's half-written files must not
/// reach a peer.
#[test]
fn a_host_dir_replaced_while_its_arrivals_wait_never_distributes_the_new_dirs_half_written_files() {
    use std::os::unix::fs::MetadataExt;
    let mut env = Env::new(&["a", "b", "c"]);
    env.settle = "30s".into();
    let d = env.start();
    const N: usize = 1500;
    let name = |i: usize| format!("burst-{i:05}.tar.gz");
    let stage = staged_burst(&env, N, name);
    // The new dir, made ready beside (a dot name: not a candidate).
    let new = env.root.join(".b.new");
    std::fs::create_dir(&new).unwrap();
    let mut writing = Vec::new();
    for i in 0..N {
        let mut f = std::fs::File::create(new.join(name(i))).unwrap();
        std::io::Write::write_all(&mut f, b"half of the new b's ").unwrap();
        writing.push(f);
    }
    for i in 0..N {
        std::fs::rename(stage.join(name(i)), env.path("b", name(i))).unwrap();
    }
    std::fs::rename(env.dir("b"), env.root.join(".b.old")).unwrap();
    std::fs::rename(&new, env.dir("b")).unwrap();
    d.wait_log("host dir vanished or was replaced", WAIT);
    std::thread::sleep(Duration::from_secs(3));
    let ino = |h: &str, n: &str| {
        std::fs::symlink_metadata(env.path(h, n))
            .ok()
            .map(|m| m.ino())
    };
    let leaked: Vec<String> = (0..N)
        .map(name)
        .filter(|n| {
            ino("b", n).is_some() && (ino("a", n) == ino("b", n) || ino("c", n) == ino("b", n))
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "{} half-written files of the new b reached a peer, e.g. {:?}\n{}",
        leaked.len(),
        leaked.first(),
        d.log()
            .lines()
            .filter(|l| !l.contains("DEBUG"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(writing);
}

/// A burst of downloads completes in host b; while they wait to be
/// distributed, a client deletes each one and starts writing a new file
/// under the same name. The new files are half-written: only the files
/// found complete may be linked.
#[test]
fn a_queued_arrival_replaced_by_a_file_being_written_is_not_linked() {
    use std::os::unix::fs::MetadataExt;
    let mut env = Env::new(&["a", "b", "c"]);
    env.settle = "30s".into();
    let _d = env.start();
    const N: usize = 1500;
    let name = |i: usize| format!("burst-{i:05}.tar.gz");
    let stage = staged_burst(&env, N, name);
    for i in 0..N {
        std::fs::rename(stage.join(name(i)), env.path("b", name(i))).unwrap();
    }
    let mut writing = Vec::new();
    for i in (0..N).rev() {
        let _ = std::fs::remove_file(env.path("b", name(i)));
        let mut f = std::fs::File::create(env.path("b", name(i))).unwrap();
        std::io::Write::write_all(&mut f, b"half of a new one").unwrap();
        writing.push(f);
    }
    std::thread::sleep(Duration::from_secs(3));
    let ino = |h: &str, n: &str| {
        std::fs::symlink_metadata(env.path(h, n))
            .ok()
            .map(|m| m.ino())
    };
    let leaked: Vec<String> = (0..N)
        .map(name)
        .filter(|n| ino("a", n) == ino("b", n) || ino("c", n) == ino("b", n))
        .collect();
    assert!(
        leaked.is_empty(),
        "{} half-written files reached a peer, e.g. {:?}",
        leaked.len(),
        leaked.first()
    );
    drop(writing);
}

/// Poll mode: a download appended to slowly, its writer pausing longer
/// than the settle time with the file open, is not linked before the
/// writer closes it; meanwhile host b's dir is replaced by a symlink to a
/// dir outside the root, which is never followed.
#[test]
fn polling_a_slow_writer_waits_for_it_and_a_host_dir_swapped_for_a_symlink_leads_nowhere() {
    let mut env = Env::new(&["a", "b", "c"]);
    env.extra = vec!["--poll".into(), "200ms".into()];
    env.settle = "500ms".into();
    let _d = env.start();
    let outside = env.tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::rename(env.dir("b"), env.root.join(".b.old")).unwrap();
    std::os::unix::fs::symlink(&outside, env.dir("b")).unwrap();
    let mut f = std::fs::File::create(env.path("a", "slow.tar.gz")).unwrap();
    for part in 0..4 {
        std::io::Write::write_all(&mut f, format!("part {part}\n").as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(1200));
        assert!(
            !env.exists("c", "slow.tar.gz"),
            "linked while still being written (after part {part})"
        );
    }
    drop(f);
    assert!(wait_until(WAIT, || env.same_inode(&["a", "c"], "slow.tar.gz")));
    assert_eq!(
        std::fs::read(env.path("c", "slow.tar.gz")).unwrap().len(),
        28
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

/// Poll mode: a host dir swapped for a symlink is refused every tick until
/// it is a dir again, but said once (a tick every 200 ms must not make a
/// log line each), and said again once it is fixed.
#[test]
fn polling_a_host_dir_that_stays_a_symlink_says_so_once_and_recovers() {
    let mut env = Env::new(&["a", "b"]);
    env.extra = vec!["--poll".into(), "200ms".into()];
    let d = env.start();
    let outside = env.tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::rename(env.dir("b"), env.root.join(".b.old")).unwrap();
    std::os::unix::fs::symlink(&outside, env.dir("b")).unwrap();
    d.wait_log("host dir unusable", WAIT);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(d.count_log("host dir unusable"), 1, "{}", d.log());
    std::fs::remove_file(env.dir("b")).unwrap();
    std::fs::create_dir(env.dir("b")).unwrap();
    env.fetch("a", "after.tar.gz", b"after");
    env.wait_everywhere("after.tar.gz");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

/// `run --check` with `[watch] mode = "inotify"` on a FUSE mount (bindfs,
/// standing in for ceph-fuse) refuses as `run` does, with the same exit
/// code and reason, creating nothing; a standby is refused the same way
/// before it waits.
#[test]
fn run_check_and_a_standby_refuse_explicit_inotify_on_a_fuse_mount_as_run_does() {
    if !mounts::can_run(mounts::missing(&["bindfs", "mount", "umount"])) {
        return;
    }
    let f = match mounts::FuseRoot::new(&["a", "b"]) {
        Ok(f) => f,
        Err(why) => {
            assert!(mounts::can_run(Some(why)), "unreachable");
            return;
        }
    };
    let env = &f.env;
    let cfg = env.config("[watch]\nmode = \"inotify\"\n");
    let cfg = cfg.display().to_string();
    let mut run = env.spawn(env.command("run", &["--config", &cfg]));
    assert_eq!(run.wait(WAIT).code(), Some(2), "{}", run.log());
    let (code, out, err) = Env::output(env.command("run", &["--config", &cfg, "--check"]));
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("mode = \"inotify\" refused"), "{err}");
    let mut standby = env.spawn(env.command("run", &["--config", &cfg, "--standby"]));
    assert_eq!(standby.wait(WAIT).code(), Some(2), "{}", standby.log());
    assert!(!standby.log().contains("standing by"), "{}", standby.log());
    assert!(
        !env.state.exists(),
        "something was created in the state dir"
    );
}
