//! The record and everything in the state dir belong to root: a user who
//! can write the distfiles root (portage, uid 250) can neither make the
//! root daemon write through a planted symlink nor plant a record of its
//! own; the record is bound to the root it describes; a record that cannot
//! be written pauses distribution rather than letting a prune be undone.

mod common;
use common::*;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

const PORTAGE: u32 = 250;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips (returning false) unless running as root, which these scenarios
/// need (chown, mount, setpriv); CI requires them.
fn need_root() -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("DISTLINK_REQUIRE_TOOLS").is_none(),
        "these tests need root"
    );
    eprintln!("skipped: needs root");
    false
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs a shell command as the portage user.
fn as_portage(cmd: &str) {
    let st = Command::new("setpriv")
        .args([
            "--reuid",
            "250",
            "--regid",
            "250",
            "--clear-groups",
            "sh",
            "-c",
            cmd,
        ])
        .status()
        .expect("setpriv");
    assert!(st.success(), "as portage: {cmd}");
}

/// A root owned by portage, mode 2775, as docs/admin.md had it.
fn portage_root(env: &Env) {
    for d in std::iter::once(env.root.clone()).chain(env.hosts.iter().map(|h| env.dir(h))) {
        chown(&d, PORTAGE);
        chmod(&d, 0o2775);
    }
}

fn run_with_state(env: &Env, sub: &str, state: &Path) -> (Option<i32>, String) {
    let mut c = Command::new(bin());
    c.arg(sub).args(["--root"]).arg(&env.root);
    for h in &env.hosts {
        c.args(["--host", h]);
    }
    c.arg("--state-dir").arg(state);
    let (code, out, err) = Env::output(c);
    (code, format!("{out}{err}"))
}

#[test]
fn a_state_dir_inside_the_portage_owned_root_is_refused_and_a_planted_lock_symlink_writes_nothing()
{
    if !need_root() {
        return;
    }
    let env = Env::new(&["server", "client1"]);
    portage_root(&env);
    let victim = env.tmp.path().join("victim");
    fs::write(&victim, "secret\n").unwrap();
    chmod(&victim, 0o600);
    let state = env.root.join(".distlink");
    // The old default: refused, and nothing is created there.
    let (code, out) = run_with_state(&env, "sync", &state);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains(&env.root.display().to_string()), "{out}");
    assert!(!state.exists(), "created {}", state.display());
    // The attack of the report: portage plants the state dir with a lock
    // symlink to the victim. Still refused, the victim untouched.
    let v = victim.display();
    let s = state.display();
    as_portage(&format!(
        "mkdir {s} && ln -s {v} {s}/lock && ln -s {v} {s}/pid"
    ));
    let (code, out) = run_with_state(&env, "sync", &state);
    assert_eq!(code, Some(2), "{out}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "secret\n");
}

#[test]
fn a_state_dir_spelled_with_dotdot_or_through_a_symlink_into_a_host_dir_is_refused() {
    let env = Env::new(&["a", "b"]);
    let root_name = env.root.file_name().unwrap().to_owned();
    let dotted = env.root.join("..").join(&root_name).join("a").join("st");
    let alias = env.tmp.path().join("alias");
    symlink(env.dir("a"), &alias).unwrap();
    for state in [dotted, alias.join("st")] {
        let (code, out) = run_with_state(&env, "sync", &state);
        assert_eq!(code, Some(2), "{}: {out}", state.display());
        assert!(out.contains("inside the root"), "{out}");
        assert!(
            !env.dir("a").join("st").exists(),
            "created inside host dir a"
        );
    }
}

#[test]
fn a_state_dir_another_user_could_write_or_replace_is_refused_naming_owner_and_mode() {
    if !need_root() {
        return;
    }
    let env = Env::new(&["a", "b"]);
    let parent = env.tmp.path().join("parent");
    fs::create_dir(&parent).unwrap();
    let state = parent.join("state");
    // A parent owned by portage: it could rename the state dir away.
    chown(&parent, PORTAGE);
    let (code, out) = run_with_state(&env, "sync", &state);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("uid 250") && out.contains("chown root:root"),
        "{out}"
    );
    // Group-writable by portage's group.
    chown(&parent, 0);
    std::os::unix::fs::chown(&parent, Some(0), Some(PORTAGE)).unwrap();
    chmod(&parent, 0o775);
    let (code, out) = run_with_state(&env, "sync", &state);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("0775"), "{out}");
    // The state dir itself open to everyone.
    chmod(&parent, 0o755);
    fs::create_dir(&state).unwrap();
    chmod(&state, 0o777);
    let (code, out) = run_with_state(&env, "sync", &state);
    assert_eq!(code, Some(2), "{out}");
    // Fixed: accepted.
    chmod(&state, 0o700);
    let (code, out) = run_with_state(&env, "sync", &state);
    assert_eq!(code, Some(0), "{out}");
    // A record file planted or made writable by portage is never trusted.
    chown(&state.join("state.db"), PORTAGE);
    let (code, out) = run_with_state(&env, "sync", &state);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("state.db"), "{out}");
}

#[test]
fn removing_every_file_of_the_state_dir_does_not_let_a_second_daemon_start() {
    let env = Env::new(&["a", "b"]);
    let d = env.start();
    for e in fs::read_dir(&env.state).unwrap() {
        let _ = fs::remove_file(e.unwrap().path());
    }
    let (code, out, err) = Env::output(env.command("run", &[]));
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("lock"), "{err}");
    drop(d);
}

/// Unmounts when dropped, so a failing test leaves no mount behind.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        umount(&self.0);
    }
}

/// Mounts `from` on `on` (a bind mount); false when not possible here.
fn bind(from: &Path, on: &Path) -> bool {
    Command::new("mount")
        .arg("--bind")
        .arg(from)
        .arg(on)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_record_started_against_an_unmounted_root_or_a_copy_is_refused_and_creates_nothing() {
    if !need_root() {
        return;
    }
    let env = Env::new(&[]);
    // The distfiles filesystem: mounted on the root.
    let disk = env.tmp.path().join("disk");
    fs::create_dir(&disk).unwrap();
    for h in ["a", "b"] {
        fs::create_dir(disk.join(h)).unwrap();
    }
    assert!(bind(&disk, &env.root), "cannot bind-mount here");
    let mounted = Mounted(env.root.clone());
    let mut env = env;
    env.hosts = vec!["a".into(), "b".into()];
    let mut d = env.start();
    env.fetch("a", "f.tar", b"f");
    env.wait_everywhere("f.tar");
    fs::remove_file(env.path("b", "f.tar")).unwrap();
    assert!(d.stop().success());
    drop(mounted);
    // Not mounted: refused, and the empty mount point stays empty.
    let (code, out, err) = Env::output(env.command("run", &[]));
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("another root") && err.contains("mounted"),
        "{err}"
    );
    assert_eq!(
        fs::read_dir(&env.root).unwrap().count(),
        0,
        "host dirs were created"
    );
    // A copy of the root is another root too.
    let copy = env.tmp.path().join("copy");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(&disk)
            .arg(&copy)
            .status()
            .unwrap()
            .success()
    );
    let mut other = Command::new(bin());
    other
        .args(["sync", "--host", "a", "--host", "b", "--root"])
        .arg(&copy)
        .arg("--state-dir")
        .arg(&env.state);
    let (code, _, err) = Env::output(other);
    assert_eq!(code, Some(2), "{err}");
    // Mounted again: the prune the record knows of stays.
    assert!(bind(&disk, &env.root));
    let mounted = Mounted(env.root.clone());
    let mut d = env.start();
    env.stays_absent("b", "f.tar");
    assert!(d.stop().success());
    drop(mounted);
    // Moved on purpose: `sync --adopt` binds the record to the copy, which
    // is then accepted (and the other one refused).
    let on = |root: &Path, sub: &str, more: &[&str]| {
        let mut c = Command::new(bin());
        c.args([sub, "--host", "a", "--host", "b", "--root"])
            .arg(root)
            .arg("--state-dir")
            .arg(&env.state)
            .args(more);
        Env::output(c).0
    };
    assert_eq!(on(&copy, "sync", &["--adopt"]), Some(0));
    assert_eq!(on(&copy, "sync", &[]), Some(0));
    assert!(
        !copy.join("b").join("f.tar").exists(),
        "the adopted copy regained the prune"
    );
    assert!(bind(&disk, &env.root));
    let _mounted = Mounted(env.root.clone());
    assert_eq!(on(&env.root, "sync", &[]), Some(2));
}

/// Fetches files into `a` until the daemon says the record cannot be
/// written (the first ones may still fit in the links journal).
fn fetch_until_paused(env: &Env, d: &Daemon, prefix: &str) {
    let mut k = 0;
    while !d.log().contains("cannot write the record") {
        assert!(k < 50, "never paused: {}", d.log());
        env.fetch("a", format!("{prefix}-{k}.tar"), b"noted");
        std::thread::sleep(std::time::Duration::from_millis(300));
        k += 1;
    }
}

#[test]
fn a_full_state_filesystem_pauses_distribution_and_nothing_pruned_comes_back() {
    if !need_root() {
        return;
    }
    let env = Env::new(&["a", "b", "c"]);
    fs::create_dir(&env.state).unwrap();
    chmod(&env.state, 0o700);
    if !mount_tmpfs(&env.state, "size=256k,mode=0700") {
        return;
    }
    let _mounted = Mounted(env.state.clone());
    let mut d = env.start();
    env.fetch("a", "before.tar", b"before");
    env.wait_everywhere("before.tar");
    // Fill the state filesystem.
    let filler = env.state.join("filler");
    let _ = fs::write(&filler, vec![0u8; 512 << 10]);
    // b prunes; new files arrive. The first one whose links cannot be
    // noted in the links journal pauses distribution: from then on
    // nothing is linked, and the daemon says so once. (One already noted
    // is linked: the journal is its record until the commit.)
    fs::remove_file(env.path("b", "before.tar")).unwrap();
    fetch_until_paused(&env, &d, "noted");
    env.fetch("a", "during.tar", b"during");
    env.stays_absent("b", "during.tar");
    env.stays_absent("c", "during.tar");
    assert_eq!(d.count_log("cannot write the record"), 1, "{}", d.log());
    // Space returns: it resumes by itself.
    fs::remove_file(&filler).unwrap();
    d.wait_log("can be written again", WAIT);
    env.wait_everywhere("during.tar");
    d.kill9();
    let mut d = env.start();
    env.stays_absent("b", "before.tar");
    assert!(env.same_inode(&["a", "c"], "before.tar"));
    // Killed while paused: a prune made then stays, and what waited is
    // distributed at the next start.
    let _ = fs::write(&filler, vec![0u8; 512 << 10]);
    fetch_until_paused(&env, &d, "again");
    fs::remove_file(env.path("c", "during.tar")).unwrap();
    env.fetch("a", "waited.tar", b"waited");
    d.kill9();
    fs::remove_file(&filler).unwrap();
    let d = env.start();
    env.stays_absent("c", "during.tar");
    env.wait_everywhere("waited.tar");
    drop(d);
}

#[test]
fn an_immutable_record_pauses_distribution_until_it_is_writable_again() {
    let env = Env::new(&["a", "b"]);
    let d = env.start();
    let db = env.state.join("state.db");
    if !Command::new("chattr")
        .arg("+i")
        .arg(&db)
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("skipped: chattr +i does not work here");
        return;
    }
    // The first arrival is noted in the links journal and linked; its
    // commit fails and distribution pauses: the next one waits.
    env.fetch("a", "first.tar", b"first");
    d.wait_log("cannot write the record", WAIT);
    env.fetch("a", "held.tar", b"held");
    env.stays_absent("b", "held.tar");
    let _ = Command::new("chattr").arg("-i").arg(&db).status();
    d.wait_log("can be written again", WAIT);
    env.wait_everywhere("held.tar");
    env.wait_everywhere("first.tar");
}

#[test]
fn a_record_deleted_while_running_is_written_again_and_prunes_made_since_survive_a_kill_9() {
    let env = Env::new(&["a", "b"]);
    let mut d = env.start();
    env.fetch("a", "old.tar", b"old");
    env.wait_everywhere("old.tar");
    fs::remove_file(env.state.join("state.db")).unwrap();
    env.fetch("a", "new.tar", b"new");
    env.wait_everywhere("new.tar");
    d.wait_log("writing it again", WAIT);
    std::thread::sleep(std::time::Duration::from_millis(500));
    for n in ["old.tar", "new.tar"] {
        fs::remove_file(env.path("b", n)).unwrap();
    }
    d.kill9();
    assert!(env.state.join("state.db").exists());
    let d = env.start();
    env.all_stays_absent("b", &["old.tar", "new.tar"]);
    drop(d);
}

#[test]
fn a_record_left_inside_the_root_by_an_older_version_is_named_and_can_be_moved_with_its_prunes() {
    let env = Env::new(&["a", "b"]);
    let mut d = env.start();
    env.fetch("a", "f.tar", b"f");
    env.wait_everywhere("f.tar");
    fs::remove_file(env.path("b", "f.tar")).unwrap();
    assert!(d.stop().success());
    // Where older versions kept it.
    let old = env.root.join(".distlink");
    fs::rename(&env.state, &old).unwrap();
    let (code, out, err) = Env::output(env.command("run", &[]));
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains(&old.display().to_string()) && err.contains("move"),
        "{err}"
    );
    // The documented move keeps the prune.
    for e in fs::read_dir(&old).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_owned();
        if n.to_string_lossy().starts_with("state.db") || n == "links.journal" {
            fs::rename(&p, env.state.join(n)).unwrap();
        }
    }
    fs::remove_dir_all(&old).unwrap();
    let d = env.start();
    env.stays_absent("b", "f.tar");
    drop(d);
}

#[test]
fn a_links_journal_deleted_while_running_is_started_again_and_still_keeps_a_prune() {
    let env = Env::new(&["a", "b"]);
    let mut d = env.start();
    fs::remove_file(env.state.join("links.journal")).unwrap();
    env.fetch("a", "first.tar", b"first");
    env.wait_everywhere("first.tar");
    d.wait_log("starting a new one", WAIT);
    assert!(env.state.join("links.journal").exists());
    assert!(d.stop().success());
    // The new journal does its job: a prune between a link and the commit
    // that records it survives a kill -9.
    env.pruned_inside_the_commit_window("a", "late.tar", "b");
    let d = env.start();
    env.stays_absent("b", "late.tar");
    drop(d);
}

#[test]
fn a_missing_state_dir_is_created_root_only_even_in_a_sticky_dir_like_tmp() {
    if !need_root() {
        return;
    }
    let env = Env::new(&["a", "b"]);
    let sticky = env.tmp.path().join("tmp");
    fs::create_dir(&sticky).unwrap();
    chmod(&sticky, 0o1777);
    let state = sticky.join("distlink.state");
    let (code, out) = run_with_state(&env, "sync", &state);
    assert_eq!(code, Some(0), "{out}");
    let m = fs::metadata(&state).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o700));
    // Made by another user first: refused, not used.
    let planted = sticky.join("planted.state");
    as_portage(&format!("mkdir -m 700 {}", planted.display()));
    let (code, out) = run_with_state(&env, "sync", &planted);
    assert_eq!(code, Some(2), "{out}");
}
