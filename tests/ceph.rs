//! Proven on a real CephFS: a single-node cluster (see `common/ceph.rs`)
//! mounted twice with ceph-fuse, as two machines. distlink runs on node 1;
//! clients write through node 2, where node 1's kernel sees no inotify
//! event at all; one scenario puts an NFS gateway (nfs-ganesha with its
//! Ceph backend) between an NFSv4 client and CephFS. The scenarios share
//! one cluster (started once, about 8 s, with the MDS defaults) and run in
//! sequence, each in its own directory of CephFS.
//!
//! Needs root, /dev/fuse, the Ceph daemons and nfs-ganesha's Ceph backend;
//! without them it is skipped
//! with a reason, unless `DISTLINK_REQUIRE_CEPH=1` (CI), which also fails
//! the run when the cluster does not start.

mod common;
use common::ceph::{self, Cluster};
use common::*;

use nix::sys::signal::Signal;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

const TEST: &str = "distlink_on_cephfs_through_a_second_client";

/// Poll interval of every scenario (auto mode picks poll on ceph-fuse).
const INTERVAL: &str = "1s";

#[test]
fn distlink_on_cephfs_through_a_second_client() {
    if ceph::inside() {
        inner();
        return;
    }
    if let Some(why) = ceph::missing_prerequisite() {
        assert!(
            !ceph::required(),
            "DISTLINK_REQUIRE_CEPH=1 but the CephFS suite cannot run: {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    ceph::in_namespaces(TEST, Duration::from_secs(300));
}

/// One scenario's directory on CephFS: `node1` is distlink's view (its
/// root, a local state dir), `node2` the clients' view of the same root.
struct Site {
    node1: Env,
    node2: Env,
}

impl Site {
    fn new(cluster: &Cluster, work: &Path, name: &str, hosts: &[&str]) -> Site {
        let rel = Path::new(name).join("distfiles");
        fs::create_dir_all(cluster.node1.join(&rel)).expect("mkdir root on CephFS");
        for h in hosts {
            fs::create_dir(cluster.node1.join(&rel).join(h)).expect("mkdir host on CephFS");
        }
        let view = |mount: &Path| {
            let tmp = tempfile::Builder::new()
                .prefix(name)
                .tempdir_in(work)
                .expect("tempdir");
            let state = tmp.path().join("state");
            let mut env = Env {
                tmp,
                root: mount.join(&rel),
                state,
                hosts: hosts.iter().map(|s| s.to_string()).collect(),
                extra: Vec::new(),
                settle: SETTLE.to_string(),
            };
            // Only the interval: auto mode must pick poll by itself.
            let cfg = env.config(&format!("[watch]\ninterval = \"{INTERVAL}\"\n"));
            env.extra = vec!["--config".into(), cfg.display().to_string()];
            env
        };
        Site {
            node1: view(&cluster.node1),
            node2: view(&cluster.node2),
        }
    }
}

/// Writes `data` to `path` in `parts` pieces, `gap` apart, keeping the file
/// open in between; `each` runs after every piece.
fn write_slowly(path: &Path, data: &[u8], parts: usize, gap: Duration, mut each: impl FnMut()) {
    let mut f = fs::File::create(path).expect("create");
    for chunk in data.chunks(data.len().div_ceil(parts)) {
        f.write_all(chunk).expect("write");
        f.flush().expect("flush");
        std::thread::sleep(gap);
        each();
    }
}

fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A Portage download through node 2 (NAME.__download__ written over
/// several poll ticks, then renamed) reaches every host as one inode; the
/// temp name never reaches another host.
fn portage_download(cluster: &Cluster, work: &Path) {
    let site = Site::new(cluster, work, "download", &["a", "b", "c", "d"]);
    let (n1, n2) = (&site.node1, &site.node2);
    let mut d = n1.start();
    let log = d.log();
    assert!(
        log.contains("mode=\"poll\"") && log.contains("fuse.ceph-fuse"),
        "auto mode did not pick poll on ceph-fuse:\n{log}"
    );
    let name = "portage-1.0.tar.gz";
    let temp = format!("{name}.__download__");
    let data = payload(1, 3 << 20);
    let temp_nowhere_else = || {
        for h in ["b", "c", "d"] {
            assert!(!n1.exists(h, &temp), "the temp name reached host {h}");
            assert!(!n1.exists(h, name), "linked before the rename, into {h}");
        }
    };
    write_slowly(
        &n2.path("a", &temp),
        &data,
        6,
        Duration::from_millis(500),
        temp_nowhere_else,
    );
    fs::rename(n2.path("a", &temp), n2.path("a", name)).expect("rename through node 2");
    n1.wait_everywhere(name);
    n2.wait_everywhere(name);
    assert_eq!(fs::read(n2.path("d", name)).unwrap(), data);
    assert_eq!(fs::metadata(n2.path("b", name)).unwrap().nlink(), 4);
    for h in ["b", "c", "d"] {
        assert!(!n2.exists(h, &temp), "the temp name reached host {h}");
    }
    assert!(d.stop().success(), "{}", d.log());
    eprintln!("ceph: a download through node 2 reached every host as one inode");
}

/// A file written in place through node 2 is linked only after it settles
/// (the settle time is longer than the pauses between its writes).
fn in_place_write(cluster: &Cluster, work: &Path) {
    let mut site = Site::new(cluster, work, "inplace", &["a", "b", "c"]);
    site.node1.settle = "2s".into();
    let (n1, n2) = (&site.node1, &site.node2);
    let d = n1.start();
    let name = "written-in-place.bin";
    let data = payload(2, 2 << 20);
    write_slowly(
        &n2.path("b", name),
        &data,
        8,
        Duration::from_millis(400),
        || {
            assert!(!n1.exists("a", name), "linked while still being written");
            assert!(!n1.exists("c", name), "linked while still being written");
        },
    );
    n1.wait_everywhere(name);
    assert_eq!(fs::read(n2.path("a", name)).unwrap(), data);
    assert_eq!(fs::read(n2.path("c", name)).unwrap(), data);
    drop(d);
    eprintln!("ceph: an in-place write through node 2 was linked once settled, whole");
}

/// A prune through node 2 stays gone: live, across a restart, and across
/// a `kill -9` right after it.
fn prunes_stay_gone(cluster: &Cluster, work: &Path) {
    let site = Site::new(cluster, work, "prune", &["a", "b", "c"]);
    let (n1, n2) = (&site.node1, &site.node2);
    let mut d = n1.start();
    for name in ["one.tar.gz", "two.tar.gz"] {
        n2.fetch("a", name, name.as_bytes());
        n1.wait_everywhere(name);
    }
    fs::remove_file(n2.path("b", "one.tar.gz")).expect("prune through node 2");
    // A poll tick (or more) sees the prune; it stays a prune.
    n2.stays_absent("b", "one.tar.gz");
    assert!(d.stop().success(), "{}", d.log());
    let mut d = n1.start();
    n2.stays_absent("b", "one.tar.gz");
    // Pruned, then the daemon is killed before its next tick.
    fs::remove_file(n2.path("c", "two.tar.gz")).expect("prune through node 2");
    d.kill9();
    let d = n1.start();
    n2.stays_absent("b", "one.tar.gz");
    n2.stays_absent("c", "two.tar.gz");
    assert!(n2.exists("a", "one.tar.gz") && n2.exists("a", "two.tar.gz"));
    drop(d);
    eprintln!("ceph: prunes through node 2 stayed gone across a restart and a kill -9");
}

/// `auto` picks poll on ceph-fuse and says why; an explicit inotify is
/// refused, naming the filesystem type.
fn auto_polls_and_inotify_is_refused(cluster: &Cluster, work: &Path) {
    let site = Site::new(cluster, work, "mode", &["a", "b"]);
    let n1 = &site.node1;
    let d = n1.start();
    let ready = d
        .log()
        .lines()
        .find(|l| l.contains("ready"))
        .unwrap_or_default()
        .to_string();
    assert!(
        ready.contains("mode=\"poll\"") && ready.contains("fuse.ceph-fuse"),
        "{ready}"
    );
    drop(d);
    let cfg = n1.config("[watch]\nmode = \"inotify\"\n");
    let mut c = std::process::Command::new(bin());
    c.arg("run")
        .args(["--root"])
        .arg(&n1.root)
        .arg("--state-dir")
        .arg(&n1.state)
        .args(["--host", "a", "--host", "b", "--config"])
        .arg(&cfg);
    let (code, out, err) = Env::output(c);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("refused") && err.contains("fuse.ceph-fuse"),
        "{err}"
    );
    eprintln!("ceph: auto picked poll; an explicit inotify was refused");
}

/// An active/standby pair on two machines sharing the state dir on
/// CephFS: the standby on node 2 waits, takes over after a `kill -9` of
/// the active daemon on node 1, accepts the record node 1 wrote,
/// distributes what arrived in between and keeps the prunes.
fn standby_takes_over(cluster: &Cluster, work: &Path) {
    let mut site = Site::new(cluster, work, "pair", &["a", "b", "c"]);
    fs::create_dir(cluster.node1.join("pair/state")).expect("state dir on CephFS");
    fs::set_permissions(
        cluster.node1.join("pair/state"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    site.node1.state = cluster.node1.join("pair/state");
    site.node2.state = cluster.node2.join("pair/state");
    let (n1, n2) = (&site.node1, &site.node2);
    let mut active = n1.start();
    let standby = n2.spawn(n2.command("run", &["--standby"]));
    standby.wait_log("standing by", WAIT);
    n2.fetch("a", "before.tar.gz", b"distributed by the active daemon");
    n1.wait_everywhere("before.tar.gz");
    fs::remove_file(n2.path("b", "before.tar.gz")).expect("prune through node 2");
    std::thread::sleep(Duration::from_millis(2500));
    active.signal(Signal::SIGSTOP);
    n2.fetch(
        "c",
        "meanwhile.tar.gz",
        b"arrived while the active one hung",
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!n2.exists("a", "meanwhile.tar.gz"));
    assert!(!standby.log().contains("ready"), "{}", standby.log());
    let killed = Instant::now();
    active.kill9();
    standby.wait_log("ready", WAIT);
    let took = killed.elapsed();
    assert!(standby.log().contains("taking over"), "{}", standby.log());
    n2.wait_everywhere("meanwhile.tar.gz");
    n2.stays_absent("b", "before.tar.gz");
    n2.fetch("b", "after.tar.gz", b"new");
    n2.wait_everywhere("after.tar.gz");
    drop(standby);
    eprintln!("ceph: the standby on node 2 took over {took:?} after kill -9 of the active one");
}

/// A background server, stopped when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            Signal::SIGTERM,
        );
        let end = Instant::now() + Duration::from_secs(5);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Clients → NFS gateway → CephFS: nfs-ganesha with its Ceph backend
/// exports one host dir (a third CephFS client, in the gateway's own
/// process); an NFSv4 client fetches and prunes through it while distlink
/// polls on node 1's ceph-fuse mount.
fn through_an_nfs_gateway(cluster: &Cluster, work: &Path) {
    let site = Site::new(cluster, work, "gateway", &["a", "b", "c"]);
    let n1 = &site.node1;
    let gw = work.join("ganesha");
    fs::create_dir(&gw).unwrap();
    let conf = gw.join("ganesha.conf");
    fs::write(
        &conf,
        format!(
            "NFS_CORE_PARAM {{ Protocols = 4; Enable_NLM = false; Enable_RQUOTA = false; \
             Enable_UDP = false; }}\n\
             NFSv4 {{ Graceless = true; RecoveryBackend = fs; RecoveryRoot = {rec}; }}\n\
             CEPH {{ Ceph_Conf = {ceph}; }}\n\
             EXPORT {{ Export_Id = 1; Path = /gateway/distfiles/a; Pseudo = /export/a; \
             Access_Type = RW; Squash = No_Root_Squash; SecType = sys; Transports = TCP; \
             Protocols = 4; Attr_Expiration_Time = 0; \
             FSAL {{ Name = CEPH; User_Id = \"gateway\"; }} \
             CLIENT {{ Clients = 127.0.0.1; Access_Type = RW; }} }}\n",
            rec = gw.display(),
            ceph = cluster.conf().display()
        ),
    )
    .unwrap();
    for d in ["/run/ganesha", "/run/rpcbind"] {
        fs::create_dir_all(d).unwrap();
    }
    let _rpcbind = Server(
        std::process::Command::new("rpcbind")
            .args(["-f", "-w"])
            .spawn()
            .expect("rpcbind"),
    );
    let log = gw.join("ganesha.log");
    let _ganesha = Server(
        std::process::Command::new("ganesha.nfsd")
            .args(["-F", "-f"])
            .arg(&conf)
            .arg("-L")
            .arg(&log)
            .arg("-p")
            .arg(gw.join("ganesha.pid"))
            .args(["-N", "NIV_EVENT"])
            .spawn()
            .expect("ganesha.nfsd"),
    );
    let d = n1.start();
    let mut client = None;
    let connected = wait_until(Duration::from_secs(30), || {
        client = nfs::v4::blocking::Client::connect("127.0.0.1").ok();
        client.is_some()
    });
    assert!(
        connected,
        "cannot connect to the gateway; its log:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    let mut c = client.expect("connected");
    let name = "gateway-1.0.tar.gz";
    let temp = format!("/export/a/{name}.__download__");
    let data = payload(3, 200_000);
    c.write(&temp, &data)
        .expect("NFS write through the gateway");
    c.rename(&temp, &format!("/export/a/{name}"))
        .expect("NFS rename through the gateway");
    n1.wait_everywhere(name);
    assert_eq!(fs::read(n1.path("c", name)).unwrap(), data);
    for h in ["b", "c"] {
        assert!(!n1.exists(h, format!("{name}.__download__")));
    }
    // The gateway's client prunes its own dir: it stays pruned.
    c.remove(&format!("/export/a/{name}"))
        .expect("NFS remove through the gateway");
    assert!(wait_until(WAIT, || !n1.exists("a", name)));
    n1.stays_absent("a", name);
    assert!(n1.exists("b", name));
    drop(d);
    eprintln!(
        "ceph: a download over NFS through a Ceph gateway reached every host; its prune stayed"
    );
}

fn inner() {
    // A tmpfs over /tmp, private to the namespace: the cluster's files and
    // every scenario's state vanish with it, even after a kill. (Not where
    // the test binary itself lives.)
    let exe = std::env::current_exe().expect("test binary");
    let fallback = exe.starts_with("/tmp").then(|| {
        tempfile::Builder::new()
            .prefix("distlink-ceph")
            .tempdir()
            .expect("tempdir")
    });
    let cluster_dir = fallback
        .as_ref()
        .map_or(Path::new("/tmp"), |t| t.path())
        .to_path_buf();
    // /run too: the gateway's rpcbind and ganesha keep their sockets there.
    let run = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(run, "cannot mount a private tmpfs on /run");
    let cluster = match Cluster::start(&cluster_dir) {
        Ok(c) => c,
        Err(e) => {
            assert!(
                !ceph::required(),
                "DISTLINK_REQUIRE_CEPH=1 but the cluster did not start: {e}"
            );
            eprintln!("skipped: the cluster did not start: {e}");
            return;
        }
    };
    eprintln!("ceph: cluster up in {:?}", cluster.started_in);
    let scratch = cluster_dir.join("scratch");
    fs::create_dir(&scratch).unwrap();
    let t = Instant::now();
    for (name, scenario) in [
        ("download", portage_download as fn(&Cluster, &Path)),
        ("in place", in_place_write),
        ("prunes", prunes_stay_gone),
        ("modes", auto_polls_and_inotify_is_refused),
        ("standby", standby_takes_over),
        ("gateway", through_an_nfs_gateway),
    ] {
        let s = Instant::now();
        scenario(&cluster, &scratch);
        eprintln!("ceph: scenario {name} took {:?}", s.elapsed());
    }
    eprintln!("ceph: all scenarios took {:?}", t.elapsed());
}
