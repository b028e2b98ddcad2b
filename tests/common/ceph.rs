//! A real single-node CephFS for the scenario suite: one mon, one mgr, one
//! OSD keeping its data in memory (memstore), one MDS, all on 127.0.0.1
//! with authentication off, and two ceph-fuse mounts that act as two
//! machines (`--id node1`, `--id node2`). Every file of the cluster (its
//! config, mon store, logs, sockets, pid files) lives in a directory the
//! caller gives — a tmpfs in the test's own mount namespace — and nothing
//! of it outlives the namespace.
//!
//! [`in_namespaces`] re-runs one test inside private network, mount and
//! pid namespaces (`unshare -n -m -p -f`): whatever the test leaves
//! running, even when it panics or is killed, dies with it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::wait_until;

/// The tools a cluster needs (Debian: ceph-mon ceph-osd ceph-mds ceph-mgr
/// ceph-fuse ceph-common, plus util-linux, iproute2, fuse3).
const TOOLS: &[&str] = &[
    "unshare",
    "ip",
    "mount",
    "monmaptool",
    "ceph-mon",
    "ceph-osd",
    "ceph-mds",
    "ceph-mgr",
    "ceph-fuse",
    "ceph",
    "fusermount3",
    "ganesha.nfsd",
    "rpcbind",
];

/// Why the CephFS suite cannot run here, if it cannot.
pub fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    let fsal = fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .any(|d| d.path().join("ganesha/libfsalceph.so").exists());
    if !fsal {
        return Some("nfs-ganesha's Ceph backend is missing (Debian: nfs-ganesha-ceph)".into());
    }
    TOOLS.iter().find(|t| !on_path(t)).map(|t| {
        format!(
            "{t} not found (Debian: ceph-mon ceph-osd ceph-mds ceph-mgr ceph-fuse ceph-common \
             fuse3 iproute2 nfs-ganesha nfs-ganesha-ceph rpcbind)"
        )
    })
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Whether CI demands that the suite really runs (`DISTLINK_REQUIRE_CEPH=1`).
pub fn required() -> bool {
    std::env::var("DISTLINK_REQUIRE_CEPH").as_deref() == Ok("1")
}

/// Set inside the namespaces.
const INNER: &str = "DISTLINK_CEPH_INNER";

/// Whether this process is the copy running inside the namespaces.
pub fn inside() -> bool {
    std::env::var_os(INNER).is_some()
}

/// Re-runs the test `test` of this test binary inside fresh network,
/// mount and pid namespaces and asserts that it passed there. The copy
/// inside sees [`inside`] true.
pub fn in_namespaces(test: &str, limit: Duration) {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new("unshare")
        .args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
        ])
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(INNER, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    // Read both pipes while waiting, so a chatty child never blocks.
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || std::io::read_to_string(out).unwrap_or_default());
    let t_err = std::thread::spawn(move || std::io::read_to_string(err).unwrap_or_default());
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > end {
            // --kill-child: the namespace's first process, and so
            // everything in it, dies with unshare.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    eprintln!("{stdout}\n{stderr}");
    let status = status.unwrap_or_else(|| panic!("{test} timed out after {limit:?}"));
    assert!(status.success(), "{test} failed inside the namespaces");
    assert!(stdout.contains("1 passed"), "the inner test did not run");
}

/// A running cluster with its two mounts.
pub struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    /// CephFS as the machine running distlink sees it.
    pub node1: PathBuf,
    /// CephFS as the machine clients write through sees it.
    pub node2: PathBuf,
    /// How long starting the cluster took.
    pub started_in: Duration,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Cluster {
    /// Brings `lo` up (the namespace starts with it down), mounts a tmpfs
    /// on `dir` and starts a cluster there. The error says which step
    /// failed, with the end of the daemons' logs.
    pub fn start(dir: &Path) -> Result<Cluster, String> {
        Cluster::start_with(dir, "")
    }

    /// [`Cluster::start`] with extra `[global]` settings (`key = value`
    /// lines). One cluster at a time: the mon listens on 127.0.0.1:3300.
    pub fn start_with(dir: &Path, extra: &str) -> Result<Cluster, String> {
        let t0 = Instant::now();
        run(Command::new("ip").args(["link", "set", "lo", "up"]))?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0755", "tmpfs"])
            .arg(dir))?;
        let fsid = uuid(dir)?;
        let conf = dir.join("ceph.conf");
        for sub in ["mon", "osd", "mds", "mgr", "run", "node1", "node2"] {
            fs::create_dir(dir.join(sub)).map_err(|e| format!("mkdir {sub}: {e}"))?;
        }
        fs::write(&conf, config(dir, &fsid, extra)).map_err(|e| format!("ceph.conf: {e}"))?;
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            conf: conf.clone(),
            node1: dir.join("node1"),
            node2: dir.join("node2"),
            started_in: Duration::ZERO,
        };
        c.bring_up(&fsid)
            .map_err(|e| format!("{e}\n{}", c.log_tails()))?;
        c.started_in = t0.elapsed();
        Ok(c)
    }

    fn bring_up(&self, fsid: &str) -> Result<(), String> {
        let monmap = self.dir.join("monmap");
        run(Command::new("monmaptool")
            .args([
                "--create",
                "--addv",
                "a",
                "[v2:127.0.0.1:3300]",
                "--fsid",
                fsid,
            ])
            .arg(&monmap))?;
        run(self
            .daemon("ceph-mon")
            .args(["--mkfs", "-i", "a", "--monmap"])
            .arg(&monmap))?;
        run(self.daemon("ceph-mon").args(["-i", "a"]))?;
        self.ceph(&["osd", "create"])?;
        run(self.daemon("ceph-osd").args(["-i", "0", "--mkfs"]))?;
        run(self.daemon("ceph-osd").args(["-i", "0"]))?;
        run(self.daemon("ceph-mgr").args(["-i", "x"]))?;
        self.ceph(&["osd", "pool", "create", "cephfs_metadata", "8"])?;
        self.ceph(&["osd", "pool", "create", "cephfs_data", "8"])?;
        self.ceph(&["fs", "new", "cephfs", "cephfs_metadata", "cephfs_data"])?;
        run(self.daemon("ceph-mds").args(["-i", "a"]))?;
        let active = wait_until(Duration::from_secs(60), || {
            self.ceph(&["mds", "stat"])
                .is_ok_and(|s| s.contains("up:active"))
        });
        if !active {
            return Err("the MDS never became active".into());
        }
        for (id, dir) in [("node1", &self.node1), ("node2", &self.node2)] {
            run(self.daemon("ceph-fuse").args(["--id", id]).arg(dir))?;
            let mounted = wait_until(Duration::from_secs(30), || is_ceph_fuse(dir));
            if !mounted {
                return Err(format!(
                    "ceph-fuse --id {id} never mounted {}",
                    dir.display()
                ));
            }
        }
        Ok(())
    }

    fn daemon(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.arg("-c").arg(&self.conf);
        c
    }

    /// The cluster's `ceph.conf`.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// Runs the `ceph` command-line tool against the cluster.
    pub fn ceph(&self, args: &[&str]) -> Result<String, String> {
        run(self
            .daemon("ceph")
            .args(["--connect-timeout", "20"])
            .args(args))
    }

    /// The last lines of every daemon's log, for a failure message.
    pub fn log_tails(&self) -> String {
        let mut s = String::new();
        let Ok(rd) = fs::read_dir(self.dir.join("run")) else {
            return s;
        };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                let text = fs::read_to_string(&p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                s.push_str(&format!("--- {}\n{tail}\n", p.display()));
            }
        }
        s
    }
}

impl Drop for Cluster {
    /// Unmounts and stops the daemons; the namespaces would end them
    /// anyway, this only keeps the end orderly.
    fn drop(&mut self) {
        for dir in [&self.node2, &self.node1] {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(dir)
                .stderr(Stdio::null())
                .status();
        }
        use nix::sys::signal::{Signal, kill};
        use nix::sys::wait::{WaitPidFlag, waitpid};
        use nix::unistd::Pid;
        let mut pids = Vec::new();
        for name in ["mds.a", "mgr.x", "osd.0", "mon.a"] {
            let pid = fs::read_to_string(self.dir.join("run").join(format!("{name}.pid")));
            if let Some(pid) = pid.ok().and_then(|p| p.trim().parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                pids.push(Pid::from_raw(pid));
            }
        }
        // Gone before the next cluster takes the ports. In the pid
        // namespace this process is the first one: the daemons (which fork
        // into the background) are its children once orphaned, and are
        // reaped here.
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end && pids.iter().any(|&p| kill(p, None).is_ok()) {
            for &p in &pids {
                let _ = waitpid(p, Some(WaitPidFlag::WNOHANG));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for &p in &pids {
            let _ = kill(p, Signal::SIGKILL);
            let _ = waitpid(p, Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// Whether `dir` is a ceph-fuse mount now.
fn is_ceph_fuse(dir: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.to_string_lossy();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(4) == Some(&want.as_ref()) && l.contains(" - fuse.ceph-fuse ")
    })
}

fn uuid(dir: &Path) -> Result<String, String> {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("{}: no uuid: {e}", dir.display()))
}

fn config(dir: &Path, fsid: &str, extra: &str) -> String {
    let d = dir.display();
    format!(
        "[global]\n\
         fsid = {fsid}\n\
         mon host = v2:127.0.0.1:3300\n\
         mon initial members = a\n\
         public addr = 127.0.0.1\n\
         auth cluster required = none\n\
         auth service required = none\n\
         auth client required = none\n\
         osd pool default size = 1\n\
         osd pool default min size = 1\n\
         mon allow pool size one = true\n\
         osd objectstore = memstore\n\
         memstore device bytes = 1073741824\n\
         osd crush chooseleaf type = 0\n\
         run dir = {d}/run\n\
         pid file = {d}/run/$name.pid\n\
         log file = {d}/run/$name.log\n\
         admin socket = {d}/run/$name.asok\n\
         {extra}\n\
         [mon.a]\nmon data = {d}/mon\n\
         [osd.0]\nosd data = {d}/osd\n\
         [mds.a]\nmds data = {d}/mds\n\
         [mgr.x]\nmgr data = {d}/mgr\n"
    )
}
