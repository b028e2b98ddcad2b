//! The OpenRC service script run for real, by `rc-service`, under
//! `supervise-daemon`, without touching the machine's own OpenRC: every
//! service lives in a private mount and pid namespace (`unshare -m -p -f
//! --mount-proc`) holding
//! - a tmpfs on `/run` with an empty `/run/openrc` (its `softlevel` file
//!   says OpenRC is up), so the service states are private;
//! - a tmpfs on `/sys/fs/cgroup`, so the cgroup OpenRC gives the service is
//!   private too (with `rc_cgroup_mode="unified"` in `/etc/rc.conf`, or it
//!   looks for the hybrid layout's `/sys/fs/cgroup/unified`);
//! - an overlay on `/etc` (its upper dir on a tmpfs) holding
//!   `/etc/init.d/distlink` (the repository's script) and
//!   `/etc/conf.d/distlink` (pointing at the binary under test, a temp
//!   config, log and state dir).
//!
//! - stand-ins for Gentoo's `localmount` and `nfs` (Debian has neither),
//!   which do nothing, so that `rc-service distlink VERB` runs exactly as
//!   an administrator runs it. (`--nodeps` would do for start, stop and
//!   reload, but OpenRC 0.45 runs a `--nodeps restart` without its
//!   bookkeeping: the service is left marked stopped with the new daemon
//!   running, and a restart whose stop was refused exits 0.)
//!
//! Dropping [`OpenRc`] kills the namespace's init, and with it every
//! process the test started there.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_until;

/// Whether OpenRC is installed; without it (and without
/// DISTLINK_REQUIRE_TOOLS=1, which CI sets) the caller skips.
pub fn have_openrc() -> bool {
    let ok = [
        "/sbin/openrc-run",
        "/sbin/supervise-daemon",
        "/sbin/rc-service",
    ]
    .iter()
    .all(|p| Path::new(p).exists())
        && Command::new("unshare")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("DISTLINK_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "DISTLINK_REQUIRE_TOOLS=1 but OpenRC (openrc-run, supervise-daemon, rc-service) or \
             unshare is missing"
        );
        eprintln!("skipped: OpenRC is not installed (apt-get install openrc)");
    }
    ok
}

/// A private OpenRC with the distlink service installed.
pub struct OpenRc {
    unshare: Child,
    /// The namespace's init, as the machine numbers it.
    init: i32,
    /// `readlink /proc/PID/ns/pid` of the namespace.
    ns: PathBuf,
}

impl OpenRc {
    /// Sets up the namespace, with the repository's script and `confd` as
    /// `/etc/conf.d/distlink`; `work` holds the overlay's tmpfs mount
    /// point.
    pub fn new(work: &Path, confd: &str) -> OpenRc {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let ovl = work.join("etc-overlay");
        fs::create_dir_all(&ovl).expect("mkdir overlay");
        let confd_file = work.join("distlink.confd");
        fs::write(&confd_file, confd).expect("write conf.d");
        let ready = work.join("namespace-ready");
        let setup = r#"set -e
mount -t tmpfs tmpfs /run
for d in daemons exclusive failed hotplugged inactive options scheduled started \
         starting stopping tmp wasinactive; do
    mkdir -p "/run/openrc/$d"
done
touch /run/openrc/softlevel
mount -t tmpfs tmpfs /sys/fs/cgroup
mount -t tmpfs tmpfs "$OVL"
mkdir "$OVL/up" "$OVL/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$OVL/up,workdir=$OVL/work" /etc
mkdir -p /etc/conf.d /etc/init.d
cp "$SCRIPT" /etc/init.d/distlink
chmod 755 /etc/init.d/distlink
cp "$CONFD" /etc/conf.d/distlink
for svc in localmount nfs; do
    printf '#!/sbin/openrc-run\ndescription="stand-in"\nstart() { :; }\nstop() { :; }\n' \
        > "/etc/init.d/$svc"
    chmod 755 "/etc/init.d/$svc"
done
echo 'rc_cgroup_mode="unified"' >> /etc/rc.conf
echo ok > "$READY"
# The namespace's init reaps what supervise-daemon leaves (the shell
# reaps any child while it waits for its sleep): `supervise-daemon
# --stop` waits until the supervisor's pid is gone, zombie included.
while :; do sleep 0.2; done
"#;
        let unshare = Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--mount-proc", "--kill-child"])
            .args(["sh", "-c", setup])
            .env("OVL", &ovl)
            .env("SCRIPT", repo.join("openrc/distlink"))
            .env("CONFD", &confd_file)
            .env("READY", &ready)
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        let pid = unshare.id();
        let mut rc = OpenRc {
            unshare,
            init: 0,
            ns: PathBuf::new(),
        };
        assert!(
            wait_until(super::WAIT, || ready.exists()),
            "the namespace was never set up"
        );
        let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .expect("children of unshare");
        rc.init = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the namespace's init");
        rc.ns = fs::read_link(format!("/proc/{}/ns/pid", rc.init)).expect("pid namespace");
        rc
    }

    /// Runs a shell command inside the namespace: (exit code, stdout and
    /// stderr together, as a terminal shows them).
    pub fn sh(&self, cmd: &str) -> (i32, String) {
        let out = Command::new("nsenter")
            .args(["--target", &self.init.to_string(), "--mount", "--pid"])
            // A hung command fails the test instead of hanging it.
            .args(["timeout", "30", "sh", "-c", &format!("{cmd} 2>&1")])
            .stdin(Stdio::null())
            .output()
            .expect("nsenter");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    /// `rc-service distlink VERB`.
    pub fn service(&self, verb: &str) -> (i32, String) {
        self.sh(&format!("rc-service distlink {verb}"))
    }

    /// The live (not zombie) processes of the namespace whose name starts
    /// with `comm` (`distlink`, `supervise-daemo`), as the machine numbers
    /// them.
    pub fn processes(&self, comm: &str) -> Vec<i32> {
        let mut found = Vec::new();
        let Ok(rd) = fs::read_dir("/proc") else {
            return found;
        };
        for e in rd.filter_map(Result::ok) {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if fs::read_link(format!("/proc/{pid}/ns/pid")).ok().as_ref() != Some(&self.ns) {
                continue;
            }
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // PID (COMM) STATE ...; COMM may hold spaces and parentheses.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = &stat[open + 1..close];
            let state = stat[close + 1..].trim_start().chars().next();
            if name.starts_with(comm) && state != Some('Z') {
                found.push(pid);
            }
        }
        found.sort();
        found
    }

    /// The one distlink daemon running, once there is exactly one.
    pub fn daemon_pid(&self, timeout: Duration) -> Option<i32> {
        let mut pid = None;
        wait_until(timeout, || {
            let p = self.processes("distlink");
            pid = (p.len() == 1).then(|| p[0]);
            pid.is_some()
        });
        pid
    }
}

impl Drop for OpenRc {
    fn drop(&mut self) {
        // The namespace's init dies, and the kernel kills every process
        // left in its pid namespace; its mounts go with the last of them.
        if self.init > 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.init),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}
