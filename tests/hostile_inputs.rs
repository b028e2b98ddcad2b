//! Operator commands fed what a careless admin or a hostile user gives
//! them: a `--from` swapped while it is checked or naming distlink's own
//! state dir, keep lists as other tools and editors write them, a
//! monitoring user locking the state dir or passing a lock of its own for
//! the daemon's, a metrics path in the root or the state dir, mtimes in
//! the future, a record left mid-commit.

mod common;
use common::*;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Points `link` at `target` in one step (a new symlink renamed over it),
/// as an attacker who owns the dir holding `link` would.
fn point(link: &Path, target: &Path) {
    let tmp = link.with_extension("swap");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    fs::rename(&tmp, link).unwrap();
}

/// The `--from` an admin typed goes through a dir someone else can write
/// (an old DISTDIR under a portage-owned /usr/portage); while migrate
/// runs, that someone flips it between a flat DISTDIR and client1's dir.
/// Migrate works on the directory it checked: each run either refuses
/// (it saw client1's dir) or moves the flat DISTDIR's files; client1's
/// own files never leave it.
#[test]
fn a_from_swapped_to_a_host_dir_after_the_check_moves_nothing_of_that_host() {
    let mut env = Env::new(&["server", "client1"]);
    env.settle = "0s".into();
    let old = Duration::from_secs(3600);
    fs::write(env.path("client1", "only-c1.tar.gz"), b"client1's").unwrap();
    env.age("client1", "only-c1.tar.gz", old);
    let (code, out, err) = Env::output(env.migrate(&[]));
    assert_eq!(code, Some(0), "{out}{err}");
    let attacker = env.tmp.path().join("usr-portage");
    let flat = attacker.join("distfiles.real");
    fs::create_dir_all(&flat).unwrap();
    let from = attacker.join("distfiles");
    point(&from, &flat);

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, from, flat, c1) = (stop.clone(), from.clone(), flat.clone(), env.dir("client1"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                point(&from, &c1);
                point(&from, &flat);
            }
        })
    };
    let (mut refused, mut moved) = (0, 0);
    for k in 0..60 {
        let name = format!("flat-{k}.tar.gz");
        fs::write(flat.join(&name), name.as_bytes()).unwrap();
        let (code, out, err) = Env::output(env.migrate_from(&from, "server", &[]));
        match code {
            Some(2) if err.contains("compared by identity") => refused += 1,
            Some(0) => moved += 1,
            _ => panic!("run {k}: exit {code:?}: {out}{err}"),
        }
        if !env.path("client1", "only-c1.tar.gz").exists() {
            stop.store(true, Ordering::Relaxed);
            panic!(
                "run {k}: client1's only-c1.tar.gz left client1 (migrate checked one dir and \
                 moved from another): {out}{err}"
            );
        }
        if refused > 3 && moved > 3 && k >= 30 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    // The swap really happened under migrate's feet, both ways.
    assert!(refused > 0 && moved > 0, "refused {refused}, moved {moved}");
}

/// `migrate --from /var/lib/distlink` (the state dir, e.g. a typo for the
/// old DISTDIR) used to move the record, its journal and the pid file
/// into the server's dir and link them into every client's.
#[test]
fn the_state_dir_as_from_is_refused_and_the_record_stays_where_it_is() {
    let mut env = Env::new(&["server", "client1"]);
    env.settle = "0s".into();
    fs::write(env.path("client1", "c.tar.gz"), b"c").unwrap();
    env.age("client1", "c.tar.gz", Duration::from_secs(3600));
    let (code, out, err) = Env::output(env.migrate(&[]));
    assert_eq!(code, Some(0), "{out}{err}");
    let before = env.snapshot();
    let record: Vec<_> = fs::read_dir(&env.state)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let state = env.state.clone();
    let spelled = env.tmp.path().join("state-link");
    std::os::unix::fs::symlink(&state, &spelled).unwrap();
    for from in [state.clone(), spelled, state.join(".")] {
        for dry in [true, false] {
            let more: &[&str] = if dry { &["--dry-run"] } else { &[] };
            let (code, out, err) = Env::output(env.migrate_from(&from, "server", more));
            assert_eq!(code, Some(2), "{} dry={dry}: {out}{err}", from.display());
            assert!(
                err.contains("the state dir") && err.contains("compared by identity"),
                "{err}"
            );
            assert_eq!(env.snapshot(), before, "{} moved files", from.display());
            for n in &record {
                assert!(state.join(n).exists(), "{n:?} left the state dir");
            }
        }
    }
}

/// A host holding `names` (an hour old) and `stale.tar.gz`, which no list
/// below keeps, so that a prune that keeps every named file has
/// something to remove.
fn host_holding(names: &[&str]) -> Env {
    let env = Env::new(&["server", "client1"]);
    for n in names.iter().chain(&["stale.tar.gz"]) {
        fs::write(env.path("client1", n), n.as_bytes()).unwrap();
        env.age("client1", n, Duration::from_secs(3600));
    }
    env
}

/// client1's names, as text.
fn names_of(env: &Env) -> Vec<String> {
    env.names("client1")
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

/// Runs `prune client1 FLAG -` with `list` on stdin: (exit, stdout+stderr).
fn prune_with_stdin(env: &Env, flag: &str, list: &[u8]) -> (Option<i32>, String) {
    use std::io::Write;
    let mut child = env
        .prune("client1", &[flag, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(list).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Portage names a distfile fetched from upstream after the whole SRC_URI
/// word's last `/`, as it is: no percent-decoding, query and fragment
/// included (only the URL of a mirror, which percent-encodes the name, is
/// decoded to it). Where the host's packages may not be mirrored
/// (`RESTRICT="mirror"`), `emerge --pretend --fetchonly` prints only those
/// upstream URLs; `--keep-urls` used to decode or cut them and remove
/// the very files they name. A SRC_URI's `URL -> NAME` (pasted from an
/// ebuild or a tool that prints SRC_URI) keeps NAME.
#[test]
fn keep_urls_keeps_the_names_portage_gives_upstream_urls() {
    let kept = [
        "Game%20Data-1.0.tar.gz",
        "download.php?file=tool-2.zip",
        "notes-3.pdf#page=2",
        "libfoo%2B%2B-1.0.tar.xz",
        "bar++-2.0.tar.xz",
        "p-3.1.tar.gz",
    ];
    let env = host_holding(&kept);
    let transcript = "\
Calculating dependencies... done!\n\
https://games.example/dl/Game%20Data-1.0.tar.gz\n\
https://tool.example/download.php?file=tool-2.zip\n\
https://docs.example/a/notes-3.pdf#page=2\n\
https://upstream.example/libfoo%2B%2B-1.0.tar.xz\n\
https://distfiles.gentoo.org/distfiles/1f/bar%2B%2B-2.0.tar.xz https://up.example/bar++-2.0.tar.xz\n\
# a SRC_URI pasted in, with its rename:\n\
https://github.com/o/p/archive/v3.1.tar.gz -> p-3.1.tar.gz\n";
    let (code, out) = prune_with_stdin(&env, "--keep-urls", transcript.as_bytes());
    assert_eq!(code, Some(0), "{out}");
    let mut want: Vec<String> = kept.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(names_of(&env), want, "{out}");
}

/// A keep list saved by an editor that writes a byte-order mark and CRLF
/// line endings (Notepad's "UTF-8 with BOM"): the BOM is not part of the
/// first name, which is kept like every other.
#[test]
fn a_keep_list_with_a_byte_order_mark_keeps_its_first_name() {
    let env = host_holding(&["first-1.0.tar.gz", "second-2.0.tar.gz"]);
    let list = b"\xef\xbb\xbffirst-1.0.tar.gz\r\nsecond-2.0.tar.gz\r\n";
    let (code, out) = prune_with_stdin(&env, "--keep-list", list);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        names_of(&env),
        ["first-1.0.tar.gz", "second-2.0.tar.gz"],
        "{out}"
    );
    // Lists joined with `cat` carry a mark at the start of each.
    let env = host_holding(&["first-1.0.tar.gz", "second-2.0.tar.gz"]);
    let list = b"\xef\xbb\xbffirst-1.0.tar.gz\n\xef\xbb\xbfsecond-2.0.tar.gz\n";
    let (code, out) = prune_with_stdin(&env, "--keep-list", list);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        names_of(&env),
        ["first-1.0.tar.gz", "second-2.0.tar.gz"],
        "{out}"
    );
}

/// A member of `state_group` (a monitoring agent: read access only) takes
/// a lock on the state dir, as `flock -s /var/lib/distlink sleep inf`
/// would. It used to keep the daemon from starting ("another distlink
/// process holds the lock") while `check --daemon` said all was well,
/// naming the flock as the running daemon. The group may read the
/// record's files but not open the state dir itself.
#[test]
fn a_state_group_member_cannot_take_the_state_lock() {
    // Needs root: setpriv.
    if !startup::need_root() {
        return;
    }
    let mut env = Env::new(&["a", "b"]);
    std::fs::set_permissions(
        env.tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cfg = env.config("state_group = \"nogroup\"\n");
    env.extra = vec!["--config".into(), cfg.to_str().unwrap().into()];
    let d = env.start();
    env.fetch("a", "foo-1.0.tar.gz", b"foo");
    env.wait_everywhere("foo-1.0.tar.gz");
    drop(d);
    let (code, out, err) = Env::output(env.reader_as_nobody("nogroup", "status", &[]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("daemon not running"), "{out}");
    // The dry run reads the record through the dir it may only search.
    let (code, out, err) = Env::output(env.reader_as_nobody("nogroup", "migrate", &["--dry-run"]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("would be linked 0"), "{out}");

    // The member tries for the lock (the state dir's own, then the lock
    // file's, which a network filesystem shares between machines), and
    // holds it if it gets it.
    for target in [env.state.clone(), env.state.join("lock")] {
        let mut flock = std::process::Command::new("setpriv")
            .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
            .args(["flock", "--no-fork", "--nonblock", "--shared"])
            .arg(&target)
            .args(["sleep", "60"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let held = flock.try_wait().unwrap().is_none();
        let d = env.spawn(env.command("run", &[]));
        let started = wait_until(WAIT, || {
            d.log().contains("ready") || d.log().contains("holds the lock")
        }) && d.log().contains("ready");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(flock.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = flock.wait();
        assert!(
            !held,
            "a state_group member holds a lock on {}",
            target.display()
        );
        assert!(started, "the daemon did not start: {}", d.log());
        // And the group still reads the truth.
        let (code, out, err) = Env::output(env.reader_as_nobody("nogroup", "check", &["--daemon"]));
        assert_eq!(code, Some(0), "{out}{err}");
        let (code, out, err) = Env::output(env.reader_as_nobody("nogroup", "status", &[]));
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(
            out.contains(&format!("daemon running (pid {})", d.pid())),
            "{out}"
        );
    }
}

/// Any user can lock a file of their own whose inode number is the state
/// dir's, on another filesystem (a fresh tmpfs or a FUSE mount of theirs
/// hands out small or chosen numbers). With the daemon stopped, `status`
/// took that lock for the daemon's ("daemon running (pid …)"), so
/// `check --daemon` passed and `migrate` refused to run. Only a lock on
/// the state dir's own device counts.
#[test]
fn a_lock_on_another_filesystems_file_with_the_state_dirs_inode_number_is_not_the_daemon() {
    // Needs root: mount, setpriv.
    if !startup::need_root() {
        return;
    }
    let mut env = Env::new(&["a", "b"]);
    let statefs = env.tmp.path().join("statefs");
    let theirs = env.tmp.path().join("theirs");
    fs::create_dir(&statefs).unwrap();
    fs::create_dir(&theirs).unwrap();
    if !mount_tmpfs(&statefs, "mode=755") {
        return;
    }
    let _m1 = scopeguard(&statefs);
    assert!(mount_tmpfs(&theirs, "mode=1777"));
    let _m2 = scopeguard(&theirs);
    env.state = statefs.join("state");
    let mut d = env.start();
    env.fetch("a", "foo-1.0.tar.gz", b"foo");
    env.wait_everywhere("foo-1.0.tar.gz");
    assert!(d.stop().success());
    let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&env.state).unwrap());

    // Their files, until one has the state dir's inode number.
    let mut decoy = None;
    for k in 0..100_000 {
        let f = theirs.join(format!("f{k}"));
        fs::write(&f, b"").unwrap();
        let i = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&f).unwrap());
        if i == ino {
            decoy = Some(f);
            break;
        }
        if i > ino {
            panic!("tmpfs passed inode {ino} (at {i}): cannot set the scene");
        }
    }
    let decoy = decoy.expect("a file with the state dir's inode number");
    let mut flock = std::process::Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
        .args(["flock", "--no-fork", "--shared"])
        .arg(&decoy)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (code, out, err) = Env::output(env.reader("check", &["--daemon"]));
    let (_, status, _) = Env::output(env.reader("status", &[]));
    let _ = flock.kill();
    let _ = flock.wait();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("the daemon is not running"), "{out}");
    assert!(status.contains("daemon not running"), "{status}");
}

/// Unmounts `dir` when dropped.
fn scopeguard(dir: &Path) -> impl Drop + '_ {
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            umount(self.0);
        }
    }
    Unmount(dir)
}

/// The other side of the test above: on btrfs, `stat` of a dir in a
/// subvolume reports the subvolume's device, `/proc/locks` the
/// filesystem's. The daemon's lock on a state dir there is still found
/// (the filesystem's device is read from the mount's line in mountinfo).
#[test]
fn the_daemons_lock_on_a_state_dir_in_a_btrfs_subvolume_is_found() {
    // Needs root: a loop mount.
    if !startup::need_root() {
        return;
    }
    if !tools::have("mkfs.btrfs", "btrfs-progs") || !tools::have("btrfs", "btrfs-progs") {
        return;
    }
    let mut env = Env::new(&["a", "b"]);
    let image = env.tmp.path().join("btrfs.img");
    let mnt = env.tmp.path().join("btrfs");
    fs::create_dir(&mnt).unwrap();
    fs::File::create(&image)
        .and_then(|f| f.set_len(256 << 20))
        .unwrap();
    let ok = |c: &mut std::process::Command| {
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{c:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(std::process::Command::new("mkfs.btrfs")
        .arg("-q")
        .arg(&image));
    let mounted = std::process::Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var("DISTLINK_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "DISTLINK_REQUIRE_TOOLS=1 but a btrfs image cannot be loop-mounted here"
        );
        eprintln!("skipped: cannot loop-mount a btrfs image (no loop devices or no btrfs)");
        return;
    }
    let _m = scopeguard(&mnt);
    let sub = mnt.join("sub");
    ok(std::process::Command::new("btrfs")
        .args(["-q", "subvolume", "create"])
        .arg(&sub));
    env.root = sub.join("distfiles");
    env.state = sub.join("state");
    for h in ["a", "b"] {
        fs::create_dir_all(env.dir(h)).unwrap();
    }
    let stat_dev = std::os::unix::fs::MetadataExt::dev(&fs::metadata(&sub).unwrap());
    let fs_dev = std::os::unix::fs::MetadataExt::dev(&fs::metadata(&mnt).unwrap());
    assert_ne!(stat_dev, fs_dev, "the subvolume reports its own device");
    let mut d = env.start();
    let (code, out, err) = Env::output(env.reader("check", &["--daemon"]));
    assert_eq!(code, Some(0), "{out}{err}");
    let (_, status, _) = Env::output(env.reader("status", &[]));
    assert!(
        status.contains(&format!("daemon running (pid {})", d.pid())),
        "{status}"
    );
    assert!(d.stop().success());
    let (code, out, _) = Env::output(env.reader("check", &["--daemon"]));
    assert_eq!(code, Some(1), "{out}");
}

/// `[metrics] path` pointed into the root (a host dir) by mistake: the
/// file was distributed to every other host as a download, then listed
/// as a conflict at each rewrite. Now it is never written there, and the
/// log says why.
#[test]
fn a_metrics_path_inside_the_root_is_never_written_there() {
    let mut env = Env::new(&["a", "b"]);
    let cfg = env.config(&format!(
        "[metrics]\npath = {:?}\ninterval = \"1s\"\n",
        env.path("a", "distlink.prom")
    ));
    env.extra = vec!["--config".into(), cfg.to_str().unwrap().into()];
    let d = env.start();
    d.wait_log("inside the root", WAIT);
    env.fetch("a", "foo-1.0.tar.gz", b"foo");
    env.wait_everywhere("foo-1.0.tar.gz");
    std::thread::sleep(Duration::from_secs(3));
    for h in ["a", "b"] {
        assert_eq!(
            env.names(h),
            vec![b"foo-1.0.tar.gz".to_vec()],
            "host {h}; log:\n{}",
            d.log()
        );
    }
    assert!(!d.log().contains("conflict"), "{}", d.log());
}

/// An old DISTDIR reached through a bind mount (a chroot's or a
/// container's view of it) is on the root's filesystem but on another
/// mount, where `rename` fails with EXDEV: migrate used to try anyway,
/// file by file, and `--copy` did not help. Now another mount is treated
/// as another filesystem: refused without `--copy`, copied with it.
#[test]
fn a_from_on_another_mount_of_the_same_filesystem_needs_copy_and_then_copies() {
    // Needs root: a bind mount.
    if !startup::need_root() {
        return;
    }
    let mut env = Env::new(&["a", "b"]);
    env.settle = "0s".into();
    let flat = env.tmp.path().join("flat");
    let mnt = env.tmp.path().join("chroot-distfiles");
    fs::create_dir(&flat).unwrap();
    fs::create_dir(&mnt).unwrap();
    fs::write(flat.join("f-1.tar.gz"), b"f").unwrap();
    let ok = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&flat)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ok.success());
    let _m = scopeguard(&mnt);
    let (code, out, err) = Env::output(env.migrate_from(&mnt, "a", &[]));
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("--copy"), "{err}");
    assert!(flat.join("f-1.tar.gz").exists());
    let (code, out, err) = Env::output(env.migrate_from(&mnt, "a", &["--copy"]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(env.same_inode(&["a", "b"], "f-1.tar.gz"), "{out}{err}");
    assert!(!flat.join("f-1.tar.gz").exists(), "{out}{err}");
}

/// A keep list pasted from a terminal or a web page carries stray blanks
/// at the ends of lines. Read exactly, `gcc-14.2.0.tar.xz ` kept no file
/// and the compiler's sources were removed. Now a line with blanks at
/// its ends keeps both the name as written and the name without them: a
/// name that really has blanks (written raw or escaped) is kept as
/// before, and no stray blank costs a file.
#[test]
fn stray_blanks_around_a_keep_list_name_do_not_cost_the_file() {
    let env = host_holding(&[
        "gcc-14.2.0.tar.xz",
        "vim-9.1.tar.gz",
        "  lead.tar",
        "tail.tar ",
    ]);
    let list = b"gcc-14.2.0.tar.xz \n\tvim-9.1.tar.gz\t# editor\n  lead.tar\ntail.tar\\ \n";
    let (code, out) = prune_with_stdin(&env, "--keep-list", list);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        names_of(&env),
        [
            "  lead.tar",
            "gcc-14.2.0.tar.xz",
            "tail.tar ",
            "vim-9.1.tar.gz"
        ],
        "{out}"
    );
}

/// Distfiles whose mtime lies in the future (a mirror with its clock
/// ahead, kept by `wget -N` or `rsync -t`; a client's clock ahead) never
/// looked settled to `migrate`: it waited its whole limit, reported them
/// as still being written and exited 1, run after run. A file no one has
/// written since its mtime was set (any write sets the mtime to now) is
/// as old as its change time says.
#[test]
fn files_with_an_mtime_in_the_future_are_distributed_by_one_migrate() {
    let mut env = Env::new(&["a", "b"]);
    env.settle = "1s".into();
    fs::write(env.path("a", "skewed-1.0.tar.gz"), b"from a mirror ahead").unwrap();
    let ahead = std::time::SystemTime::now() + Duration::from_secs(2 * 3600);
    fs::File::options()
        .write(true)
        .open(env.path("a", "skewed-1.0.tar.gz"))
        .unwrap()
        .set_modified(ahead)
        .unwrap();
    let t0 = std::time::Instant::now();
    let (code, out, err) = Env::output(env.migrate(&[]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        env.same_inode(&["a", "b"], "skewed-1.0.tar.gz"),
        "{out}{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
}

/// The daemon killed in the middle of a commit (SIGKILL, a power cut)
/// leaves a hot rollback journal beside the record, which only a writer
/// may roll back. `status` and `check`, which open the record read-only,
/// then failed with "attempt to write a readonly database" (exit 2)
/// just when the admin asks what happened. They now read the record as
/// the next start will see it (rolled back, on a scratch copy).
#[test]
fn status_and_check_after_a_kill_in_the_middle_of_a_commit_tell_what_happened() {
    if !tools::have("sqlite3", "sqlite3") {
        return;
    }
    let env = Env::new(&["a", "b"]);
    let mut d = env.start();
    env.fetch("a", "foo-1.0.tar.gz", b"foo");
    env.wait_everywhere("foo-1.0.tar.gz");
    d.kill9();
    // A writer killed mid-transaction: its journal is left hot.
    let out = std::process::Command::new("sqlite3")
        .arg(env.state.join("state.db"))
        .arg(
            "PRAGMA cache_size=1; BEGIN; CREATE TABLE spill(x); \
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<2000) \
             INSERT INTO spill SELECT randomblob(500) FROM c; .system kill -9 $PPID",
        )
        .output()
        .unwrap();
    assert!(!out.status.success(), "sqlite3 was not killed");
    let journal = env.state.join("state.db-journal");
    assert!(
        fs::metadata(&journal).is_ok_and(|m| m.len() > 0),
        "no hot journal"
    );
    let (code, out, err) = Env::output(env.reader("status", &[]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("was killed or crashed"), "{out}");
    let (code, out, err) = Env::output(env.reader("check", &[]));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("did not stop cleanly"), "{out}{err}");
    // The record itself is left for the next start to roll back.
    assert!(journal.exists());
    let d = env.start();
    env.fetch("b", "bar-2.0.tar.gz", b"bar");
    env.wait_everywhere("bar-2.0.tar.gz");
    drop(d);
}

/// `[metrics] path` naming a file of the state dir (a slip of the pen:
/// `/var/lib/distlink/state.db`) replaced the record with the metrics
/// text at every interval, without a word; the next start refused the
/// record, and only `sync --adopt` (which forgets the prunes) led on.
/// A path in the state dir is refused like one in the root.
#[test]
fn a_metrics_path_in_the_state_dir_never_replaces_the_record() {
    let mut env = Env::new(&["a", "b"]);
    let cfg = env.config(&format!(
        "[metrics]\npath = {:?}\ninterval = \"1s\"\n",
        env.state.join("state.db")
    ));
    env.extra = vec!["--config".into(), cfg.to_str().unwrap().into()];
    let d = env.start();
    d.wait_log("the state dir", WAIT);
    std::thread::sleep(Duration::from_secs(2));
    let head = fs::read(env.state.join("state.db")).unwrap();
    assert!(head.starts_with(b"SQLite format 3\0"), "{}", d.log());
    assert!(!env.state.join("distlink.prom").exists());
    drop(d);
    // The record still serves the next start.
    let d = env.start();
    env.fetch("a", "foo-1.0.tar.gz", b"foo");
    env.wait_everywhere("foo-1.0.tar.gz");
    drop(d);
}

/// A user trying distlink on a demo root of their own, under a dir they
/// may search but not list (mode 0711, as many home dirs are): the walk
/// up from `--from` that proves it lies outside the root opened each
/// parent for reading and failed with EACCES. It only needs to search.
#[test]
fn the_from_check_climbs_through_a_dir_it_may_only_search() {
    // Needs root: setpriv.
    if !startup::need_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new(&["a", "b"]);
    let home = env.tmp.path().join("home");
    let mine = home.join("user");
    fs::create_dir_all(mine.join("flat")).unwrap();
    fs::write(mine.join("flat").join("f-1.tar.gz"), b"f").unwrap();
    for h in ["a", "b"] {
        fs::create_dir_all(mine.join("root").join(h)).unwrap();
    }
    let nobody = |p: &Path| {
        let out = std::process::Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(p)
            .output()
            .unwrap();
        assert!(out.status.success());
    };
    nobody(&mine);
    fs::set_permissions(env.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o711)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
        .arg(bin())
        .arg("migrate")
        .arg("--root")
        .arg(mine.join("root"))
        .arg("--state-dir")
        .arg(mine.join("state"))
        .args(["--host", "a", "--host", "b", "--settle", "0s", "--from"])
        .arg(mine.join("flat"))
        .args(["--into", "a"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(mine.join("root/b/f-1.tar.gz").exists(), "{text}");
}
