//! Quick measurement of the running daemon: latency from a Portage-style
//! rename into one host until the same inode is visible in every peer, and
//! the link rate of a burst. (The full benchmark suite lives in `bench/`.)
//!
//! cargo build --release && cargo run --release --example measure -- [HOSTS] [BURST]

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cpu_ticks(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after ')'.
    f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
}

fn ino(p: &Path) -> Option<u64> {
    fs::symlink_metadata(p).ok().map(|m| m.ino())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let hosts: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let burst: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let bin = std::env::var("DISTLINK_BIN").unwrap_or_else(|_| "target/release/distlink".into());
    let tmp = tempfile::Builder::new()
        .prefix("distlink-measure")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let root = tmp.path().join("root");
    fs::create_dir(&root).expect("mkdir");
    let names: Vec<String> = (0..hosts).map(|i| format!("h{i}")).collect();
    let mut cmd = Command::new(&bin);
    cmd.arg("run")
        .arg("--root")
        .arg(&root)
        .args(["--settle", "1s"]);
    for n in &names {
        cmd.args(["--host", n]);
    }
    let mut child = cmd.stderr(Stdio::piped()).spawn().expect("spawn distlink");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("ready") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("daemon not ready");
    let staging = root.join("staging");
    fs::create_dir(&staging).expect("mkdir staging");
    let peers: Vec<_> = names[1..].iter().map(|n| root.join(n)).collect();

    // Latency: one file at a time.
    let mut lat = Vec::new();
    for i in 0..200 {
        let name = format!("lat-{i}.tar.gz");
        let dl = root.join(&names[0]).join(format!("{name}.__download__"));
        fs::write(&dl, b"payload").expect("write");
        let t0 = Instant::now();
        fs::rename(&dl, root.join(&names[0]).join(&name)).expect("rename");
        let want = ino(&root.join(&names[0]).join(&name));
        while !peers.iter().all(|p| ino(&p.join(&name)) == want) {
            std::hint::spin_loop();
        }
        lat.push(t0.elapsed());
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];

    // Burst: many renames at once.
    for i in 0..burst {
        fs::write(staging.join(format!("b{i:06}")), b"x").expect("write");
    }
    let cpu0 = cpu_ticks(child.id());
    let t0 = Instant::now();
    for i in 0..burst {
        let n = format!("b{i:06}");
        fs::rename(staging.join(&n), root.join(&names[0]).join(&n)).expect("rename");
    }
    let count = |p: &Path| fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    while !peers.iter().all(|p| count(p) >= burst + 200) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let burst_time = t0.elapsed();
    let cpu = (cpu_ticks(child.id()) - cpu0) as f64 / 100.0;
    let links = burst * (hosts - 1);
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();

    println!(
        "| hosts | latency p50 | p90 | max | burst files | links | burst time | links/s | daemon CPU s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {hosts} | {:.2} ms | {:.2} ms | {:.2} ms | {burst} | {links} | {:.2} s | {:.0} | {cpu:.2} |",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.9).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3,
        burst_time.as_secs_f64(),
        links as f64 / burst_time.as_secs_f64()
    );
}
