//! The CephFS rows of the benchmark suite, on a real single-node cluster
//! (the one the CephFS scenario suite starts: `tests/common/ceph.rs`)
//! mounted twice with ceph-fuse, as two machines: distlink runs on node 1,
//! files arrive through node 2. Runs inside private network, mount and pid
//! namespaces, like the suite; needs root and the Ceph packages.
//!
//!     bench/ceph [--files N] [--hosts N] [--samples N]
//!
//! Rows: a full scan (what every tick of the old poll did) against an idle
//! poll tick; arrival-to-every-host latency in poll mode; a burst against
//! a bare `link()` loop on the same mount; the takeover time of a standby.
//! Prints the section and writes it into bench/RESULTS.md (between its
//! markers, leaving the rest of the file alone).

#[path = "../tests/common/ceph.rs"]
#[allow(dead_code)]
mod ceph;

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const INNER: &str = "DISTLINK_CEPH_BENCH_INNER";
const BEGIN: &str = "<!-- cephfs rows: bench/ceph -->";
const END: &str = "<!-- end of cephfs rows -->";

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Opts {
    files: usize,
    hosts: usize,
    samples: usize,
    bin: PathBuf,
    interval: &'static str,
    settle: &'static str,
}

fn main() {
    let mut o = Opts {
        files: 1000,
        hosts: 10,
        samples: 15,
        bin: std::env::var_os("DISTLINK_BIN").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/distlink"),
            PathBuf::from,
        ),
        interval: "1s",
        settle: "1s",
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut args = raw.iter();
    while let Some(a) = args.next() {
        let mut num = || args.next().and_then(|s| s.parse().ok()).expect("a number");
        match a.as_str() {
            "--files" => o.files = num(),
            "--hosts" => o.hosts = num(),
            "--samples" => o.samples = num(),
            other => panic!("unknown argument {other}"),
        }
    }
    if std::env::var_os(INNER).is_none() {
        if let Some(why) = ceph::missing_prerequisite() {
            eprintln!("bench/ceph: cannot run: {why}");
            std::process::exit(2);
        }
        let st = Command::new("unshare")
            .args(["--net", "--mount", "--propagation", "private", "--pid"])
            .args(["--fork", "--mount-proc", "--kill-child"])
            .arg(std::env::current_exe().expect("exe"))
            .args(&raw)
            .env(INNER, "1")
            .status()
            .expect("unshare");
        std::process::exit(st.code().unwrap_or(1));
    }
    let section = inner(&o);
    println!("{section}");
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/RESULTS.md");
    let old = fs::read_to_string(&results).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if a < b => format!("{}{section}{}", &old[..a], &old[b + END.len()..]),
        _ => format!("{}\n{section}\n", old.trim_end()),
    };
    fs::write(&results, new).expect("write RESULTS.md");
}

/// A tree of `files` files in host 0, each hard-linked into every other
/// host, written through `mount`.
fn tree(root: &Path, hosts: usize, files: usize) {
    for h in 0..hosts {
        fs::create_dir_all(root.join(format!("h{h}"))).unwrap();
    }
    for i in 0..files {
        let p = root.join("h0").join(format!("f{i:06}.tar.gz"));
        fs::write(&p, vec![b'x'; 4096]).unwrap();
        for h in 1..hosts {
            fs::hard_link(
                &p,
                root.join(format!("h{h}")).join(format!("f{i:06}.tar.gz")),
            )
            .unwrap();
        }
    }
}

fn age(path: &Path, by: Duration) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - by)
        .unwrap();
}

struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn wait_log(&self, pat: &str, t: Duration) -> bool {
        wait_until(t, || self.log.lock().unwrap().contains(pat))
    }
    /// The CPU time of the process (every thread), in seconds, to the
    /// nanosecond (`/proc/PID/task/*/schedstat`).
    fn cpu(&self) -> f64 {
        let tasks = fs::read_dir(format!("/proc/{}/task", self.child.id())).unwrap();
        let ns: u64 = tasks
            .filter_map(Result::ok)
            .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        ns as f64 / 1e9
    }
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn hosts_args(hosts: usize) -> Vec<String> {
    (0..hosts)
        .flat_map(|h| ["--host".into(), format!("h{h}")])
        .collect()
}

fn command(o: &Opts, sub: &str, root: &Path, state: &Path, more: &[&str]) -> Command {
    let mut c = Command::new(&o.bin);
    c.arg(sub)
        .arg("--root")
        .arg(root)
        .arg("--state-dir")
        .arg(state)
        .args(hosts_args(o.hosts))
        .args(["--settle", o.settle])
        .args(more);
    c
}

fn spawn(mut c: Command) -> Daemon {
    c.env("DISTLINK_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn distlink");
    let err = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let l2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let mut l = l2.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    Daemon { child, log }
}

/// The CPU (user + system) of the children reaped so far, in seconds.
fn children_cpu() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid rusage to fill.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn poll_config(dir: &Path, interval: &str) -> PathBuf {
    let p = dir.join("poll.toml");
    fs::write(&p, format!("[watch]\ninterval = \"{interval}\"\n")).unwrap();
    p
}

fn inner(o: &Opts) -> String {
    // A tmpfs over /tmp, private to the namespace: nothing outlives it.
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/tmp"])
        .status()
        .expect("mount");
    assert!(st.success(), "cannot mount a tmpfs on /tmp");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{BEGIN}\n## CephFS: ceph-fuse, distlink on node 1, files arriving through node 2\n"
    );
    let _ = writeln!(
        out,
        "Command: `bench/ceph` (a single-node Ceph 16.2 cluster with a memstore OSD, in this \
         machine's memory; two ceph-fuse mounts stand for two machines). Poll interval {}, \
         settle {}, {} hosts. Binary: `{}`. Each row says which cluster setting it ran with.\n",
        o.interval,
        o.settle,
        o.hosts,
        o.bin
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(&o.bin)
            .display()
    );

    // With the MDS's default settings.
    fs::create_dir("/tmp/a").unwrap();
    let a = ceph::Cluster::start_with(Path::new("/tmp/a"), "")
        .unwrap_or_else(|e| panic!("the cluster did not start: {e}"));
    eprintln!("cluster (defaults) up in {:?}", a.started_in);
    let local = Path::new("/tmp/local-a");
    fs::create_dir(local).unwrap();
    let _ = writeln!(
        out,
        "### The hand-over of a new file between clients (default MDS settings)\n"
    );
    let per_file = handoff(&a, 8);
    let _ = writeln!(
        out,
        "A file written and renamed into place through node 2 is first `stat`ed through node 1 \
         after {:.2} s (median of 8, one after the other, no distlink involved): the MDS answered \
         the client early and holds the lock until its journal is flushed, at the next MDS tick \
         (`mds_tick_interval`, 5 s). Every file pays it, in turn. With `mds_early_reply = false` \
         the same `stat`s take {{early_off}} s each.\n",
        per_file
    );
    out.push_str(&latency(o, &a, local, 5, "defaults"));
    out.push_str(&burst(o, &a, local, 20, "defaults"));
    drop(a);

    // With mds_early_reply = false (see docs/admin.md).
    fs::create_dir("/tmp/b").unwrap();
    let b = ceph::Cluster::start_with(Path::new("/tmp/b"), "mds early reply = false")
        .unwrap_or_else(|e| panic!("the cluster did not start: {e}"));
    eprintln!("cluster (mds early reply = false) up in {:?}", b.started_in);
    let local = Path::new("/tmp/local-b");
    fs::create_dir(local).unwrap();
    let early_off = handoff(&b, 8);
    out = out.replace("{early_off}", &format!("{early_off:.3}"));
    out.push_str(&idle(o, &b, local));
    out.push_str(&latency(o, &b, local, o.samples, "mds_early_reply = false"));
    out.push_str(&burst(o, &b, local, o.files, "mds_early_reply = false"));
    out.push_str(&takeover(o, &b, local));
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let _ = writeln!(
        out,
        "Load average at the end of the run (the machine is shared; the cluster itself is part \
         of it): {}.\n",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    out.push_str(END);
    out
}

/// The median time of the first `stat` through node 1 of a file just
/// created through node 2.
fn handoff(c: &ceph::Cluster, n: usize) -> f64 {
    let dir = "handoff";
    fs::create_dir_all(c.node1.join(dir)).unwrap();
    let mut each = Vec::new();
    for i in 0..n {
        // Portage's way: a temp name, then the rename.
        let tmp = c.node2.join(dir).join(format!("h{i}.__download__"));
        fs::write(&tmp, b"x").unwrap();
        fs::rename(&tmp, c.node2.join(dir).join(format!("h{i}"))).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        fs::metadata(c.node1.join(dir).join(format!("h{i}"))).unwrap();
        each.push(t.elapsed().as_secs_f64());
    }
    median(&mut each)
}

fn mkhosts(root: &Path, hosts: usize) {
    for h in 0..hosts {
        fs::create_dir_all(root.join(format!("h{h}"))).unwrap();
    }
}

/// A full scan against an idle poll tick, on files × hosts.
fn idle(o: &Opts, c: &ceph::Cluster, local: &Path) -> String {
    let mut out = String::new();
    let cfg = poll_config(local, o.interval);
    let cfg_s = cfg.display().to_string();
    let t = Instant::now();
    let root = c.node1.join("idle");
    tree(&root, o.hosts, o.files);
    let built = t.elapsed();
    let state = local.join("idle-state");
    let st = command(o, "sync", &root, &state, &["--adopt"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let mut scan_wall = Vec::new();
    let mut scan_cpu = Vec::new();
    for _ in 0..3 {
        let c0 = children_cpu();
        let t = Instant::now();
        let st = command(o, "sync", &root, &state, &[])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        scan_wall.push(t.elapsed().as_secs_f64());
        scan_cpu.push(children_cpu() - c0);
    }
    let d = spawn(command(o, "run", &root, &state, &["--config", &cfg_s]));
    assert!(d.wait_log("ready", Duration::from_secs(120)), "never ready");
    let ready = d
        .log
        .lock()
        .unwrap()
        .lines()
        .find(|l| l.contains(" ready "))
        .unwrap_or_default()
        .to_string();
    std::thread::sleep(Duration::from_secs(3));
    let secs = 20.0;
    let c0 = d.cpu();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let ticks = secs / parse_secs(o.interval);
    let tick_cpu = (d.cpu() - c0) / ticks;
    drop(d);
    let full = median(&mut scan_cpu);
    let _ = writeln!(
        out,
        "### Idle poll tick against a full scan: {} files × {} hosts ({} names, built through node 1 in {:.1} s; mds_early_reply = false)\n",
        o.files,
        o.hosts,
        o.files * o.hosts,
        built.as_secs_f64()
    );
    let _ = writeln!(out, "| what | wall | CPU | ratio |\n|---|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| full scan (`distlink sync`, no-op: what every tick of the old poll did) | {:.3} s | {:.3} s | 1× |",
        median(&mut scan_wall),
        full
    );
    let ratio = if tick_cpu > 0.0 {
        format!("{:.0}× less CPU", full / tick_cpu)
    } else {
        format!("no CPU tick (10 ms) counted in {secs:.0} s")
    };
    let _ = writeln!(
        out,
        "| idle poll tick of `distlink run` (its CPU over {secs:.0} idle s / {ticks:.0} ticks) | | {:.1} µs | {ratio} |\n",
        tick_cpu * 1e6
    );
    let _ = writeln!(
        out,
        "The daemon's ready line: `{}`\n",
        ready.split(" ready ").nth(1).unwrap_or("").trim()
    );
    out
}

fn parse_secs(s: &str) -> f64 {
    s.trim_end_matches('s').parse().unwrap_or(1.0)
}

/// Latency in poll mode: rename through node 2 until one inode in every
/// host as node 1 sees it.
fn latency(o: &Opts, c: &ceph::Cluster, local: &Path, samples: usize, setting: &str) -> String {
    let mut out = String::new();
    let cfg = poll_config(local, o.interval);
    let cfg_s = cfg.display().to_string();
    let root = c.node1.join("latency");
    mkhosts(&root, o.hosts);
    let state = local.join("latency-state");
    let d = spawn(command(o, "run", &root, &state, &["--config", &cfg_s]));
    assert!(d.wait_log("ready", Duration::from_secs(60)));
    let _ = writeln!(
        out,
        "### Latency in poll mode ({setting}): rename into host 0 through node 2 until the same inode is in every host (seen through node 1), {samples} samples each\n",
    );
    let _ = writeln!(
        out,
        "| file renamed in | p50 | p90 | max |\n|---|---:|---:|---:|"
    );
    for (what, aged) in [
        (
            "written long before (mtime older than the settle time)",
            true,
        ),
        ("written just before the rename (a fresh mtime)", false),
    ] {
        let mut lat = Vec::new();
        for i in 0..samples {
            // A random phase against the poll tick.
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            std::thread::sleep(Duration::from_millis(u64::from(nanos % 1000)));
            let name = format!("lat-{aged}-{i}.tar.gz");
            let h0 = c.node2.join("latency/h0");
            let tmp = h0.join(format!("{name}.__download__"));
            fs::write(&tmp, b"payload").unwrap();
            if aged {
                age(&tmp, Duration::from_secs(60));
            }
            let t = Instant::now();
            fs::rename(&tmp, h0.join(&name)).unwrap();
            let ok = wait_until(Duration::from_secs(120), || {
                let ino = |h: usize| {
                    fs::symlink_metadata(root.join(format!("h{h}")).join(&name))
                        .ok()
                        .map(|m| m.ino())
                };
                let first = ino(0);
                first.is_some() && (1..o.hosts).all(|h| ino(h) == first)
            });
            assert!(ok, "{name} never reached every host");
            lat.push(t.elapsed().as_secs_f64());
        }
        let _ = writeln!(
            out,
            "| {what} | {:.2} s | {:.2} s | {:.2} s |",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.9),
            pct(&mut lat, 1.0)
        );
    }
    out.push('\n');
    drop(d);
    out
}

/// `n` files written through node 2 (aged), renamed into `dir`/h0
/// through node 2 at once; returns when the renames are done.
fn stage_and_rename(c: &ceph::Cluster, dir: &str, n: usize, rename: bool) -> Vec<String> {
    let stage = c.node2.join(dir).join(".stage");
    fs::create_dir_all(&stage).unwrap();
    let names: Vec<String> = (0..n).map(|i| format!("b{i:06}")).collect();
    for name in &names {
        let p = stage.join(name);
        fs::write(&p, vec![b'b'; 4096]).unwrap();
        age(&p, Duration::from_secs(60));
    }
    if rename {
        for name in &names {
            fs::rename(stage.join(name), c.node2.join(dir).join("h0").join(name)).unwrap();
        }
    }
    names
}

/// Burst: files renamed into host 0 through node 2 at once, against bare
/// `link()` loops on node 1's mount making as many links: over the same
/// kind of files (just arrived through node 2), and over files node 1
/// made itself.
fn burst(o: &Opts, c: &ceph::Cluster, local: &Path, files: usize, setting: &str) -> String {
    let mut out = String::new();
    let cfg = poll_config(local, o.interval);
    let cfg_s = cfg.display().to_string();
    let tag = setting.split_whitespace().next().unwrap_or("x").to_string();
    let dir = format!("burst-{tag}");
    let root = c.node1.join(&dir);
    mkhosts(&root, o.hosts);
    let names = stage_and_rename(c, &dir, files, false);
    let state = local.join("burst-state");
    let d = spawn(command(o, "run", &root, &state, &["--config", &cfg_s]));
    assert!(d.wait_log("ready", Duration::from_secs(60)));
    let c0 = d.cpu();
    let t = Instant::now();
    let stage = c.node2.join(&dir).join(".stage");
    for name in &names {
        fs::rename(stage.join(name), c.node2.join(&dir).join("h0").join(name)).unwrap();
    }
    let last = names.last().unwrap();
    let all = wait_until(Duration::from_secs(3600), || {
        (1..o.hosts).all(|h| root.join(format!("h{h}")).join(last).exists())
    }) && wait_until(Duration::from_secs(3600), || {
        (1..o.hosts).all(|h| {
            fs::read_dir(root.join(format!("h{h}")))
                .map(|r| r.count())
                .unwrap_or(0)
                == files
        })
    });
    assert!(all, "the burst never completed");
    let took = t.elapsed().as_secs_f64();
    let cpu = d.cpu() - c0;
    drop(d);
    let links = (files * (o.hosts - 1)) as f64;
    // The bare loops.
    let bare = |from_node2: bool| {
        let dir = format!("bare-{tag}-{from_node2}");
        let root = c.node1.join(&dir);
        mkhosts(&root, o.hosts);
        let names = if from_node2 {
            stage_and_rename(c, &dir, files, true)
        } else {
            let names: Vec<String> = (0..files).map(|i| format!("b{i:06}")).collect();
            for n in &names {
                fs::write(root.join("h0").join(n), vec![b'b'; 4096]).unwrap();
            }
            names
        };
        let t = Instant::now();
        for n in &names {
            let src = root.join("h0").join(n);
            for h in 1..o.hosts {
                fs::hard_link(&src, root.join(format!("h{h}")).join(n)).unwrap();
            }
        }
        t.elapsed().as_secs_f64()
    };
    let bare_handed = bare(true);
    let bare_own = bare(false);
    let _ = writeln!(
        out,
        "### Burst ({setting}): {files} files renamed into host 0 through node 2 at once, against bare `link()` loops on node 1's mount\n"
    );
    let _ = writeln!(
        out,
        "| | links | time | links/s | CPU s | vs distlink |\n|---|---:|---:|---:|---:|---:|"
    );
    let _ = writeln!(
        out,
        "| distlink (poll, {}) | {links} | {took:.2} s | {:.0} | {cpu:.2} | 100% |",
        o.interval,
        links / took
    );
    let _ = writeln!(
        out,
        "| bare `link()` loop, files just renamed in through node 2 | {links} | {bare_handed:.2} s | {:.0} | | distlink at {:.0}% of it |",
        links / bare_handed,
        100.0 * bare_handed / took
    );
    let _ = writeln!(
        out,
        "| bare `link()` loop, files node 1 wrote itself | {links} | {bare_own:.2} s | {:.0} | | distlink at {:.0}% of it |\n",
        links / bare_own,
        100.0 * bare_own / took
    );
    let _ = writeln!(
        out,
        "distlink's time runs from the first rename, so it includes up to one poll interval and \
         the settle time before the first link. The first bare loop starts the moment the last \
         rename returned, while node 2 still holds the new files' capabilities: each link waits \
         for the MDS to recall them (with the default MDS settings, for its journal flush too). \
         distlink links a tick or more later, by when they are released; the second bare loop, \
         on files node 1 made itself, is the pure cost of the links.\n"
    );
    out
}

/// The state dir on CephFS; the active daemon on node 1, a standby on
/// node 2; `kill -9` of the active one until the standby's "ready". Then
/// the roles swap and it is done again.
fn takeover(o: &Opts, c: &ceph::Cluster, local: &Path) -> String {
    let mut out = String::new();
    let cfg = poll_config(local, o.interval);
    let cfg_s = cfg.display().to_string();
    let root1 = c.node1.join("idle");
    let root2 = c.node2.join("idle");
    let st1 = c.node1.join("pair-state");
    let st2 = c.node2.join("pair-state");
    fs::create_dir(&st1).unwrap();
    let st = command(o, "sync", &root1, &st1, &["--adopt"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let sides = [(root1, st1), (root2, st2)];
    let mut active = spawn(command(
        o,
        "run",
        &sides[0].0,
        &sides[0].1,
        &["--config", &cfg_s],
    ));
    assert!(active.wait_log("ready", Duration::from_secs(120)));
    let mut took = Vec::new();
    for run in 0..3 {
        let (r, s) = &sides[(run + 1) % 2];
        let standby = spawn(command(o, "run", r, s, &["--config", &cfg_s, "--standby"]));
        assert!(standby.wait_log("standing by", Duration::from_secs(60)));
        std::thread::sleep(Duration::from_secs(1));
        let t = Instant::now();
        active.kill9();
        assert!(
            standby.wait_log("ready", Duration::from_secs(120)),
            "{}",
            standby.log.lock().unwrap()
        );
        took.push(t.elapsed().as_secs_f64());
        active = standby;
    }
    drop(active);
    let shown: Vec<String> = took.iter().map(|s| format!("{s:.2} s")).collect();
    let _ = writeln!(
        out,
        "### Takeover (mds_early_reply = false): the standby on the other mount, after `kill -9` of the active daemon, until its `ready` ({} files × {} hosts, state dir on CephFS)\n",
        o.files, o.hosts
    );
    let _ = writeln!(
        out,
        "| runs | median | each |\n|---:|---:|---|\n| 3 | {:.2} s | {} |\n",
        median(&mut took),
        shown.join(", ")
    );
    let _ = writeln!(
        out,
        "It is the standby's lock poll (every 250 ms), opening the record, and the full start-up reconcile of the tree through its own mount.\n"
    );
    out
}
