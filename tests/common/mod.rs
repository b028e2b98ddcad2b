//! Test harness: a temp root with host dirs, the real `distlink` binary,
//! and helpers that wait for (or rule out) links.
#![allow(dead_code)]

pub mod ceph;
pub mod mounts;
pub mod openrc;
pub mod operator;
pub mod startup;

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod tools;

pub const SETTLE: &str = "300ms";
/// How long to wait for something that should happen.
pub const WAIT: Duration = Duration::from_secs(20);
/// How long to wait for a failed link to be retried: failing links back
/// off (10 s, then 20 s, ...), so recovery may take two rounds.
pub const RECOVER: Duration = Duration::from_secs(60);
/// How long to watch for something that must not happen.
pub const QUIET: Duration = Duration::from_millis(1500);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_distlink")
}

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    /// The state dir (outside the root, as distlink requires).
    pub state: PathBuf,
    pub hosts: Vec<String>,
    /// Extra arguments given to every run/sync.
    pub extra: Vec<String>,
    /// The --settle given to every run/sync.
    pub settle: String,
}

impl Env {
    /// A root holding one (empty) dir per host.
    pub fn new(hosts: &[&str]) -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("distlink-test")
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().join("distfiles");
        fs::create_dir(&root).expect("mkdir root");
        for h in hosts {
            fs::create_dir(root.join(h)).expect("mkdir host");
        }
        let state = tmp.path().join("state");
        Env {
            tmp,
            root,
            state,
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            extra: Vec::new(),
            settle: SETTLE.to_string(),
        }
    }

    pub fn dir(&self, host: &str) -> PathBuf {
        self.root.join(host)
    }

    pub fn path(&self, host: &str, name: impl AsRef<OsStr>) -> PathBuf {
        self.root.join(host).join(name.as_ref())
    }

    /// Root, state dir and hosts: what every command takes.
    pub fn base_args(&self) -> Vec<String> {
        let mut a = vec![
            "--root".to_string(),
            self.root.display().to_string(),
            "--state-dir".to_string(),
            self.state.display().to_string(),
        ];
        for h in &self.hosts {
            a.push("--host".into());
            a.push(h.clone());
        }
        a
    }

    /// [`Env::base_args`], the `--settle` and the extra arguments given to
    /// every run/sync (and migrate).
    pub fn args(&self) -> Vec<String> {
        let mut a = self.base_args();
        a.push("--settle".into());
        a.push(self.settle.clone());
        a.extend(self.extra.iter().cloned());
        a
    }

    /// `distlink SUB` with [`Env::args`] for the commands that distribute
    /// files (run, sync, migrate), [`Env::base_args`] for the others.
    pub fn command(&self, sub: &str, more: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg(sub);
        if matches!(sub, "run" | "sync" | "migrate") {
            c.args(self.args());
        } else {
            c.args(self.base_args());
        }
        c.args(more);
        c.env("DISTLINK_LOG", "debug");
        c
    }

    /// The same as [`Env::command`] (prune and migrate once took the host
    /// list another way).
    pub fn single(&self, sub: &str, more: &[&str]) -> Command {
        self.command(sub, more)
    }

    /// Runs a command to completion: (exit code, stdout, stderr).
    pub fn output(mut cmd: Command) -> (Option<i32>, String, String) {
        let out = cmd.output().expect("run distlink");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `distlink check`: (exit code, stdout and stderr together).
    pub fn check(&self) -> (Option<i32>, String) {
        let (code, out, err) = Env::output(self.command("check", &[]));
        (code, format!("{out}{err}"))
    }

    /// Sets a file's mtime to `age` ago.
    pub fn age(&self, host: &str, name: impl AsRef<OsStr>, age: Duration) {
        let t = std::time::SystemTime::now() - age;
        fs::File::options()
            .write(true)
            .open(self.path(host, name))
            .expect("open to set mtime")
            .set_modified(t)
            .expect("set mtime");
    }

    /// (name → inode) of every entry in every host, to prove nothing moved.
    pub fn snapshot(&self) -> Vec<(String, Vec<u8>, u64)> {
        let mut v = Vec::new();
        for h in &self.hosts {
            for n in self.names(h) {
                let ino = self.ino(h, OsStr::from_bytes(&n)).unwrap_or(0);
                v.push((h.clone(), n, ino));
            }
        }
        v
    }

    /// Runs `distlink sync` (plus arguments) to completion.
    pub fn sync(&self, more: &[&str]) -> Output {
        self.command("sync", more)
            .output()
            .expect("run distlink sync")
    }

    /// Starts `distlink run` and waits until it is ready.
    pub fn start(&self) -> Daemon {
        self.start_with(&[])
    }

    pub fn start_with(&self, more: &[&str]) -> Daemon {
        let d = self.spawn(self.command("run", more));
        d.wait_log("ready", WAIT);
        d
    }

    /// Starts a command and collects its stderr without waiting.
    pub fn spawn(&self, mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn distlink");
        let log = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().expect("stderr");
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l2.lock().unwrap().push_str(&line);
                l2.lock().unwrap().push('\n');
            }
        });
        Daemon { child, log }
    }

    /// Portage's way: write NAME.__download__, then rename it to NAME.
    pub fn fetch(&self, host: &str, name: impl AsRef<OsStr>, data: &[u8]) {
        let name = name.as_ref();
        let mut tmp = name.to_os_string();
        tmp.push(".__download__");
        fs::write(self.path(host, &tmp), data).expect("write download");
        fs::rename(self.path(host, &tmp), self.path(host, name)).expect("rename download");
    }

    /// Writes a file outside the host dirs, then renames it into `host`.
    pub fn move_in(&self, host: &str, name: impl AsRef<OsStr>, data: &[u8]) {
        let staged = self.tmp.path().join("distfiles").join(".staging");
        fs::write(&staged, data).expect("write staged");
        fs::rename(&staged, self.path(host, name)).expect("rename staged");
    }

    /// Writes a file in the root's own `.staging` dir, then renames it into
    /// `host` (for roots that are a separate filesystem).
    pub fn move_in_tmp(&self, host: &str, name: impl AsRef<OsStr>, data: &[u8]) {
        let staged = self.root.join(".staging-file");
        fs::write(&staged, data).expect("write staged");
        fs::rename(&staged, self.path(host, name)).expect("rename staged");
    }

    /// Writes a file in place (created, written, closed).
    pub fn write(&self, host: &str, name: impl AsRef<OsStr>, data: &[u8]) {
        fs::write(self.path(host, name), data).expect("write in place");
    }

    pub fn ino(&self, host: &str, name: impl AsRef<OsStr>) -> Option<u64> {
        fs::symlink_metadata(self.path(host, name))
            .ok()
            .map(|m| m.ino())
    }

    pub fn nlink(&self, host: &str, name: impl AsRef<OsStr>) -> u64 {
        fs::symlink_metadata(self.path(host, name))
            .map(|m| m.nlink())
            .unwrap_or(0)
    }

    pub fn exists(&self, host: &str, name: impl AsRef<OsStr>) -> bool {
        fs::symlink_metadata(self.path(host, name)).is_ok()
    }

    /// True when `name` is one inode in every one of `hosts`.
    pub fn same_inode(&self, hosts: &[&str], name: impl AsRef<OsStr>) -> bool {
        let name = name.as_ref();
        let inos: Vec<Option<u64>> = hosts.iter().map(|h| self.ino(h, name)).collect();
        inos[0].is_some() && inos.iter().all(|i| *i == inos[0])
    }

    pub fn all_hosts(&self) -> Vec<&str> {
        self.hosts.iter().map(String::as_str).collect()
    }

    /// Waits until `name` is the same inode in every host.
    pub fn wait_everywhere(&self, name: impl AsRef<OsStr>) {
        self.wait_everywhere_within(name, WAIT)
    }

    /// Like [`Env::wait_everywhere`], with a chosen timeout.
    pub fn wait_everywhere_within(&self, name: impl AsRef<OsStr>, timeout: Duration) {
        let name = name.as_ref();
        let hosts = self.all_hosts();
        assert!(
            wait_until(timeout, || self.same_inode(&hosts, name)),
            "{} never became one inode in every host: {:?}",
            show(name),
            hosts
                .iter()
                .map(|h| (h, self.ino(h, name)))
                .collect::<Vec<_>>()
        );
    }

    /// Leaves what the crash window leaves: a daemon links `name` (moved
    /// into `from`) into every host, `pruner` drops it before the daemon
    /// writes the record, and the daemon is killed. Returns once `name` is
    /// older than the settle time, so a restart would distribute it at once.
    pub fn pruned_inside_the_commit_window(&self, from: &str, name: &str, pruner: &str) {
        let mut d = self.start();
        self.move_in(from, name, b"linked, pruned, never recorded");
        assert!(wait_until(WAIT, || self.exists(pruner, name)));
        d.signal(nix::sys::signal::Signal::SIGSTOP);
        fs::remove_file(self.path(pruner, name)).expect("prune");
        d.kill9();
        std::thread::sleep(Duration::from_millis(400));
    }

    /// Asserts that `name` does not appear in `host` for a while.
    pub fn stays_absent(&self, host: &str, name: impl AsRef<OsStr>) {
        let name = name.as_ref();
        assert!(
            !wait_until(QUIET, || self.exists(host, name)),
            "{} appeared in host {host}",
            show(name)
        );
    }

    /// Asserts that none of `names` appears in `host` for a while.
    pub fn all_stays_absent(&self, host: &str, names: &[&str]) {
        let seen = wait_until(QUIET, || names.iter().any(|n| self.exists(host, n)));
        let present: Vec<&&str> = names.iter().filter(|n| self.exists(host, n)).collect();
        assert!(!seen, "appeared in host {host}: {present:?}");
    }

    /// Writes a config file and returns its path.
    pub fn config(&self, text: &str) -> PathBuf {
        let p = self.tmp.path().join("distlink.toml");
        fs::write(&p, text).expect("write config");
        p
    }

    pub fn names(&self, host: &str) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = fs::read_dir(self.dir(host))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().as_bytes().to_vec())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

pub fn show(n: &OsStr) -> String {
    n.as_bytes().escape_ascii().to_string()
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Daemon {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
}

impl Daemon {
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_log(&self, pat: &str, timeout: Duration) {
        let ok = wait_until(timeout, || self.log().contains(pat));
        assert!(ok, "log never showed {pat:?}; log so far:\n{}", self.log());
    }

    pub fn count_log(&self, pat: &str) -> usize {
        self.log().matches(pat).count()
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).expect("kill");
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                // Let the stderr reader drain.
                std::thread::sleep(Duration::from_millis(50));
                return s;
            }
            assert!(
                Instant::now() < end,
                "process did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait(WAIT)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a path lies on the same filesystem as another.
pub fn same_dev(a: &Path, b: &Path) -> bool {
    fs::metadata(a).map(|m| m.dev()).ok() == fs::metadata(b).map(|m| m.dev()).ok()
}

/// Mounts a tmpfs with `opts` on `dir`; false (with a printed reason) when
/// this machine does not allow it, so the caller can skip.
pub fn mount_tmpfs(dir: &Path, opts: &str) -> bool {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
    }
    ok
}

pub fn umount(dir: &Path) {
    let _ = Command::new("umount").arg(dir).status();
}
