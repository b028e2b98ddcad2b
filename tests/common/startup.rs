//! Start-up checks: `run --check` against `run` on the same disk, a listing
//! of a whole tree to prove that nothing changed, and mounts that go away
//! with the test.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every entry under `dir` (not following symlinks, but entering mounts):
/// path, type, mode, owner, size, mtime, ctime, and a symlink's target, one
/// line each, sorted. Two equal listings mean nothing was created, removed,
/// written, chmod'ed or chown'ed.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(dir) else {
            return;
        };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            let target = fs::read_link(&p)
                .map(|t| format!(" -> {}", t.display()))
                .unwrap_or_default();
            out.push(format!(
                "{} mode={:o} uid={} gid={} size={} mtime={}.{} ctime={}.{}{target}",
                p.display(),
                m.mode(),
                m.uid(),
                m.gid(),
                if m.is_dir() { 0 } else { m.size() },
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            ));
            if m.is_dir() {
                walk(&p, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(m) = fs::symlink_metadata(dir) {
        out.push(format!("{} mode={:o}", dir.display(), m.mode()));
    }
    walk(dir, &mut out);
    out.sort();
    out
}

/// The message a command exits with: its stderr from the last line that
/// starts with `distlink: ` to the end (a TOML error spans lines).
pub fn final_message(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    match lines.iter().rposition(|l| l.starts_with("distlink: ")) {
        Some(i) => lines[i..].join("\n"),
        None => String::new(),
    }
}

/// Runs `cmd` to completion within `limit`; a process still running then
/// (a daemon that started instead of refusing) is killed and the test
/// fails. Returns (exit code, stdout, stderr).
pub fn run_to_end(mut cmd: Command, limit: Duration) -> (Option<i32>, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn distlink");
    let end = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "{cmd:?} still runs after {limit:?} (it started instead of refusing):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether the tests run as root; without it (and without
/// DISTLINK_REQUIRE_TOOLS, which CI sets) the caller skips.
pub fn need_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("DISTLINK_REQUIRE_TOOLS").is_none(),
        "this test needs root"
    );
    eprintln!("skipped: needs root");
    false
}

/// A mount that is undone when dropped, so a failing test leaves none.
pub struct Mount(pub PathBuf);

impl Mount {
    /// `mount ARGS... ON`; panics when it fails.
    pub fn new(args: &[&str], on: &Path) -> Mount {
        let st = Command::new("mount")
            .args(args)
            .arg(on)
            .status()
            .expect("mount");
        assert!(st.success(), "mount {args:?} {}", on.display());
        Mount(on.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
