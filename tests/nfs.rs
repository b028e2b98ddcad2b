//! Proven over real NFS: an nfs-ganesha server (VFS backend) exports the
//! distlink root; real NFSv3 and NFSv4.2 clients (the `nfs` crate, a
//! user-space client speaking the wire protocol) fetch, write and prune
//! while a distlink daemon runs on the server side. Everything runs inside
//! a private network and mount namespace that the test creates, so nothing
//! listens outside it.
//!
//! Needs root, `unshare`, `ip`, `ganesha.nfsd` and `rpcbind`; without them
//! it is skipped with a reason, unless `DISTLINK_REQUIRE_NFS=1`.

mod common;
use common::*;

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TEST: &str = "portage_fetch_in_place_write_and_prune_over_real_nfs";

fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".into());
    }
    for tool in ["unshare", "ip", "mount", "ganesha.nfsd", "rpcbind"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "{tool} not found (Debian: nfs-ganesha nfs-ganesha-vfs rpcbind iproute2)"
            ));
        }
    }
    None
}

#[test]
fn portage_fetch_in_place_write_and_prune_over_real_nfs() {
    if std::env::var_os("DISTLINK_NFS_INNER").is_some() {
        inner();
        return;
    }
    if let Some(why) = missing_prerequisite() {
        assert!(
            std::env::var("DISTLINK_REQUIRE_NFS").as_deref() != Ok("1"),
            "DISTLINK_REQUIRE_NFS=1 but the NFS test cannot run: {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    // Re-run just this test inside a fresh network + mount namespace.
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private"])
        .arg(exe)
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env("DISTLINK_NFS_INNER", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    let end = Instant::now() + Duration::from_secs(240);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("NFS test timed out");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "NFS scenarios failed inside the namespace"
    );
    assert!(stdout.contains("1 passed"), "the inner test did not run");
}

/// Kills a background server when dropped.
struct Server(Child, &'static str);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let end = Instant::now() + Duration::from_secs(5);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        eprintln!("stopped {}", self.1);
    }
}

fn sh(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).status().expect(cmd);
    assert!(st.success(), "{cmd} {args:?} failed");
}

fn wait_port(port: u16) {
    assert!(
        wait_until(Duration::from_secs(20), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "nothing listens on port {port}"
    );
}

/// One NFS client, either protocol version, with the calls the scenarios use.
enum Client {
    V3(nfs::v3::blocking::Client),
    V4(nfs::v4::blocking::Client),
}

impl Client {
    fn connect(v4: bool) -> Client {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let c = if v4 {
                nfs::v4::blocking::Client::connect("127.0.0.1")
                    .map(Client::V4)
                    .map_err(|e| e.to_string())
            } else {
                nfs::v3::blocking::Client::connect("127.0.0.1:/export")
                    .map(Client::V3)
                    .map_err(|e| e.to_string())
            };
            match c {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("cannot connect (v4={v4}): {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    /// Paths as the client sees them: v3 mounts /export, v4 walks the pseudo root.
    fn path(&self, host: &str, name: &str) -> String {
        match self {
            Client::V3(_) => format!("/{host}/{name}"),
            Client::V4(_) => format!("/export/{host}/{name}"),
        }
    }
    fn write(&mut self, p: &str, data: &[u8]) {
        match self {
            Client::V3(c) => c.write(p, data).expect("v3 write"),
            Client::V4(c) => c.write(p, data).expect("v4 write"),
        }
    }
    fn create(&mut self, p: &str) {
        match self {
            Client::V3(c) => c.create(p, 0o644).expect("v3 create"),
            Client::V4(c) => c.create(p).expect("v4 create"),
        }
    }
    fn write_at(&mut self, p: &str, off: u64, data: &[u8]) {
        match self {
            Client::V3(c) => c.write_at(p, off, data).expect("v3 write_at"),
            Client::V4(c) => c.write_at(p, off, data).expect("v4 write_at"),
        }
    }
    fn rename(&mut self, a: &str, b: &str) {
        match self {
            Client::V3(c) => c.rename(a, b).expect("v3 rename"),
            Client::V4(c) => c.rename(a, b).expect("v4 rename"),
        }
    }
    fn remove(&mut self, p: &str) {
        match self {
            Client::V3(c) => c.remove(p).expect("v3 remove"),
            Client::V4(c) => c.remove(p).expect("v4 remove"),
        }
    }
    fn read(&mut self, p: &str) -> Option<Vec<u8>> {
        match self {
            Client::V3(c) => c.read(p).ok(),
            Client::V4(c) => c.read(p).ok(),
        }
    }
    fn nlink(&mut self, p: &str) -> Option<u64> {
        match self {
            Client::V3(c) => c.metadata(p).ok().map(|m| u64::from(m.nlink)),
            Client::V4(c) => c.metadata(p).ok().and_then(|m| m.numlinks).map(u64::from),
        }
    }
    fn names(&mut self, dir: &str) -> Vec<String> {
        match self {
            Client::V3(c) => c
                .read_dir(dir)
                .map(|v| v.into_iter().map(|e| e.name).collect())
                .unwrap_or_default(),
            Client::V4(c) => c
                .read_dir(dir)
                .map(|v| v.into_iter().map(|e| e.name).collect())
                .unwrap_or_default(),
        }
    }
}

fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn scenarios(env: &Env, v4: bool) {
    let tag = if v4 { "v4" } else { "v3" };
    let mut c1 = Client::connect(v4);
    let mut c2 = Client::connect(v4);

    // 1. A Portage fetch on client 1: NAME.__download__, then rename.
    let name = format!("foo-{tag}.tar.gz");
    let dl = format!("{name}.__download__");
    let data = payload(1, 300_000);
    c1.write(&c1.path("h1", &dl), &data);
    for _ in 0..5 {
        assert!(
            !c2.names(&c2.path("h2", "")).contains(&dl),
            "{tag}: the temp name reached client 2"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c1.rename(&c1.path("h1", &dl), &c1.path("h1", &name));
    let p2 = c2.path("h2", &name);
    assert!(
        wait_until(WAIT, || c2.read(&p2).as_deref() == Some(&data[..])),
        "{tag}: fetched file never readable on client 2"
    );
    assert_eq!(c2.nlink(&p2), Some(2), "{tag}: link count seen over NFS");
    assert!(
        !c2.names(&c2.path("h2", "")).contains(&dl),
        "{tag}: the temp name reached client 2"
    );
    assert_eq!(
        fs::metadata(env.path("h1", &name)).unwrap().ino(),
        fs::metadata(env.path("h2", &name)).unwrap().ino()
    );

    // 2. An in-place write (nfs-cp style): linked only after it completes.
    let inplace = format!("inplace-{tag}.bin");
    let p1 = c1.path("h1", &inplace);
    c1.create(&p1);
    let chunk = payload(2, 64 * 1024);
    for i in 0..6u64 {
        c1.write_at(&p1, i * chunk.len() as u64, &chunk);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !env.exists("h2", &inplace),
            "{tag}: linked while still being written (chunk {i})"
        );
    }
    let whole: Vec<u8> = chunk
        .iter()
        .cycle()
        .take(6 * chunk.len())
        .copied()
        .collect();
    let p2 = c2.path("h2", &inplace);
    assert!(
        wait_until(WAIT, || c2.read(&p2).as_deref() == Some(&whole[..])),
        "{tag}: in-place write never linked"
    );

    // 3. Client 2 prunes (eclean-dist): gone for client 2, still there for client 1.
    c2.remove(&c2.path("h2", &name));
    std::thread::sleep(QUIET);
    assert!(
        c2.read(&c2.path("h2", &name)).is_none(),
        "{tag}: the prune was undone"
    );
    assert_eq!(c1.read(&c1.path("h1", &name)).as_deref(), Some(&data[..]));
    assert_eq!(c1.nlink(&c1.path("h1", &name)), Some(1));
    eprintln!("NFS {tag}: fetch, in-place write and prune behaved");
}

fn inner() {
    sh("ip", &["link", "set", "lo", "up"]);
    sh("mount", &["-t", "tmpfs", "tmpfs", "/run"]);
    fs::create_dir_all("/run/rpcbind").unwrap();
    fs::create_dir_all("/run/ganesha").unwrap();
    let mut env = Env::new(&["h1", "h2"]);
    // Much longer than the pauses between the in-place writes below.
    env.settle = "3s".into();
    let work = env.tmp.path().to_path_buf();
    fs::create_dir(work.join("recovery")).unwrap();
    let conf = work.join("ganesha.conf");
    fs::write(&conf, ganesha_conf(&env.root, &work.join("recovery"))).unwrap();
    let _rpcbind = Server(
        Command::new("rpcbind")
            .args(["-f", "-w"])
            .spawn()
            .expect("rpcbind"),
        "rpcbind",
    );
    wait_port(111);
    let log = work.join("ganesha.log");
    let _ganesha = Server(
        Command::new("ganesha.nfsd")
            .args(["-F", "-f"])
            .arg(&conf)
            .arg("-L")
            .arg(&log)
            .arg("-p")
            .arg(work.join("ganesha.pid"))
            .args(["-N", "NIV_EVENT"])
            .spawn()
            .expect("ganesha.nfsd"),
        "ganesha",
    );
    wait_port(2049);
    let mut d = env.start();
    scenarios(&env, false);
    scenarios(&env, true);
    assert!(d.stop().success(), "{}", d.log());
    // dbus and Kerberos are absent on purpose: their complaints are harmless.
    if let Ok(l) = fs::read_to_string(&log) {
        let critical: Vec<&str> = l
            .lines()
            .filter(|x| {
                x.contains(":CRIT")
                    && !x.contains(":DBUS :")
                    && !x.contains("credentials for principal")
                    && !x.contains("krb5")
            })
            .collect();
        assert!(
            critical.is_empty(),
            "ganesha reported critical errors:\n{}",
            critical.join("\n")
        );
    }
}

fn ganesha_conf(root: &Path, recovery: &Path) -> String {
    format!(
        "NFS_CORE_PARAM {{ Protocols = 3, 4; Enable_NLM = false; Enable_RQUOTA = false; \
         Enable_UDP = false; Mount_Path_Pseudo = true; }}\n\
         NFSv4 {{ Graceless = true; RecoveryBackend = fs; RecoveryRoot = {}; }}\n\
         MDCACHE {{ FD_LWMark_Percent = 0; FD_HWMark_Percent = 1; LRU_Run_Interval = 1; }}\n\
         EXPORT {{ Export_Id = 1; Path = {}; Pseudo = /export; Access_Type = RW; \
         Squash = No_Root_Squash; SecType = sys; Transports = TCP; Protocols = 3, 4; \
         Attr_Expiration_Time = 0; FSAL {{ Name = VFS; }} \
         CLIENT {{ Clients = 127.0.0.1; Access_Type = RW; }} }}\n",
        recovery.display(),
        root.display()
    )
}
