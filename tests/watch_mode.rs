//! `[watch] mode = "auto"` on real mounts: inotify where the kernel sees
//! every write (the test dir's own filesystem, a tmpfs), poll on a FUSE
//! mount (`bindfs`, standing in for ceph-fuse or glusterfs: a file written
//! beside the mount — through its source dir, as another machine writes to
//! a network filesystem — raises no inotify event on the mount). An
//! explicit inotify there is refused (exit 2) unless the admin states that
//! every write goes through this kernel.
//!
//! The FUSE scenarios need root, `/dev/fuse` and `bindfs`; without them
//! they are skipped with a reason, unless `DISTLINK_REQUIRE_TOOLS=1`.

mod common;
use common::mounts::{FuseRoot, can_run, missing};
use common::*;

use std::time::Duration;

/// The `ready` line of a daemon's log.
fn ready_line(d: &Daemon) -> String {
    d.log()
        .lines()
        .find(|l| l.contains(" ready"))
        .unwrap_or_default()
        .to_string()
}

fn fuse_root(hosts: &[&str]) -> Option<FuseRoot> {
    if !can_run(missing(&["bindfs", "mount", "umount"])) {
        return None;
    }
    match FuseRoot::new(hosts) {
        Ok(f) => Some(f),
        Err(why) => {
            assert!(can_run(Some(why)), "unreachable");
            None
        }
    }
}

#[test]
fn auto_on_the_test_dirs_own_filesystem_uses_inotify_and_says_why() {
    let env = Env::new(&["a", "b"]);
    let d = env.start();
    let ready = ready_line(&d);
    assert!(ready.contains("mode=\"inotify\""), "{ready}");
    assert!(ready.contains("auto: a local filesystem"), "{ready}");
    // And it is inotify indeed: a rename is linked at once.
    env.move_in("a", "foo.tar.gz", b"foo");
    env.wait_everywhere("foo.tar.gz");
}

#[test]
fn auto_on_a_tmpfs_uses_inotify() {
    let env = Env::new(&[]);
    if !mount_tmpfs(&env.root, "size=4m") {
        assert!(can_run(Some("cannot mount a tmpfs".into())), "unreachable");
        return;
    }
    let env = Env {
        hosts: vec!["a".into(), "b".into()],
        ..env
    };
    let d = env.start();
    let ready = ready_line(&d);
    umount_after(&env, || {
        assert!(ready.contains("mode=\"inotify\""), "{ready}");
        assert!(ready.contains("fs=tmpfs"), "{ready}");
    });
    drop(d);
    umount(&env.root);
}

/// Runs `f`, unmounting the root even when it fails.
fn umount_after(env: &Env, f: impl FnOnce() + std::panic::UnwindSafe) {
    if let Err(p) = std::panic::catch_unwind(f) {
        umount(&env.root);
        std::panic::resume_unwind(p);
    }
}

#[test]
fn auto_on_a_fuse_mount_polls_and_links_a_file_written_beside_the_mount() {
    let Some(f) = fuse_root(&["a", "b", "c"]) else {
        return;
    };
    let env = &f.env;
    let d = env.start_with(&[
        "--config",
        &env.config("[watch]\ninterval = \"200ms\"\n")
            .display()
            .to_string(),
    ]);
    let ready = ready_line(&d);
    assert!(ready.contains("mode=\"poll\""), "{ready}");
    assert!(ready.contains("fs=fuse"), "{ready}");
    assert!(ready.contains("network or FUSE"), "{ready}");
    // Portage on "another machine": the rename happens in the source tree,
    // never through the mount distlink watches.
    f.move_in_beside("a", "foo-1.0.tar.gz", b"written beside the mount");
    assert!(
        wait_until(WAIT, || ["b", "c"].iter().all(|h| f
            .ino_beside(h, "foo-1.0.tar.gz")
            == f.ino_beside("a", "foo-1.0.tar.gz"))),
        "never linked; log:\n{}",
        d.log()
    );
}

#[test]
fn explicit_inotify_on_a_fuse_mount_is_refused_naming_the_type_and_the_fix() {
    let Some(f) = fuse_root(&["a", "b"]) else {
        return;
    };
    let env = &f.env;
    let cfg = env.config("[watch]\nmode = \"inotify\"\n");
    // Spawned, not waited on blindly: a daemon that wrongly starts must
    // fail the test, not hang it.
    let mut d = env.spawn(env.command("run", &["--config", &cfg.display().to_string()]));
    let code = d.wait(WAIT).code();
    let err = d.log();
    assert_eq!(code, Some(2), "{err}");
    for part in [
        "mode = \"inotify\" refused",
        "fuse",
        "another machine",
        "never be distributed",
        "mode = \"auto\"",
        "all_writes_local = true",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    // Refused before anything was created.
    assert!(!env.state.join("state.db").exists());
}

#[test]
fn explicit_inotify_on_a_fuse_mount_with_all_writes_local_is_accepted() {
    let Some(f) = fuse_root(&["a", "b"]) else {
        return;
    };
    let env = &f.env;
    let cfg = env.config("[watch]\nmode = \"inotify\"\nall_writes_local = true\n");
    let d = env.start_with(&["--config", &cfg.display().to_string()]);
    let ready = ready_line(&d);
    assert!(ready.contains("mode=\"inotify\""), "{ready}");
    assert!(ready.contains("all_writes_local"), "{ready}");
    // Writes through the mount (this kernel) are seen at once...
    env.move_in("a", "through.tar.gz", b"through the mount");
    env.wait_everywhere("through.tar.gz");
    // ...and one made beside it is not: what the setting makes the admin
    // answer for, and why auto polls here.
    f.move_in_beside("a", "beside.tar.gz", b"beside the mount");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(f.ino_beside("b", "beside.tar.gz"), None);
}

#[test]
fn the_poll_flag_still_means_poll_mode_at_that_interval() {
    let env = Env::new(&["a", "b"]);
    let d = env.start_with(&["--poll", "300ms"]);
    let ready = ready_line(&d);
    assert!(ready.contains("mode=\"poll\""), "{ready}");
    assert!(ready.contains("why=\"configured\""), "{ready}");
    env.move_in("a", "foo.tar.gz", b"foo");
    env.wait_everywhere("foo.tar.gz");
}
