//! `distlink status` and `distlink check`: numbers checked against sums
//! computed here from `stat`, problems reported one per line.

mod common;
use common::*;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Per host (files, bytes, unique bytes) and overall (apparent, physical),
/// from plain `stat` of every entry.
fn expected(env: &Env) -> (HashMap<String, (u64, u64, u64)>, u64, u64) {
    let mut inodes: HashMap<u64, (u64, u64, Vec<String>)> = HashMap::new();
    let mut per: HashMap<String, (u64, u64, u64)> = HashMap::new();
    let mut apparent = 0;
    for h in &env.hosts {
        let e = per.entry(h.clone()).or_default();
        for ent in fs::read_dir(env.dir(h)).unwrap() {
            let ent = ent.unwrap();
            let m = fs::symlink_metadata(ent.path()).unwrap();
            let name = ent.file_name();
            if !m.is_file() || name.to_string_lossy().starts_with('.') {
                continue;
            }
            e.0 += 1;
            e.1 += m.len();
            apparent += m.len();
            inodes
                .entry(m.ino())
                .or_insert((m.len(), m.nlink(), Vec::new()))
                .2
                .push(h.clone());
        }
    }
    let mut physical = 0;
    for (size, nlink, holders) in inodes.values() {
        physical += size;
        if *nlink == holders.len() as u64 && holders.iter().all(|h| h == &holders[0]) {
            per.get_mut(&holders[0]).unwrap().2 += size;
        }
    }
    (per, apparent, physical)
}

#[test]
fn status_numbers_match_sums_computed_from_stat() {
    let env = Env::new(&["a", "b", "c"]);
    let mut d = env.start();
    for i in 0..20 {
        env.fetch(
            ["a", "b", "c"][i % 3],
            format!("f{i}"),
            &vec![b'x'; 1000 + i * 37],
        );
    }
    for i in 0..20 {
        env.wait_everywhere(format!("f{i}"));
    }
    // Prunes make some bytes unique to one host.
    for i in 0..6 {
        fs::remove_file(env.path("a", format!("f{i}"))).unwrap();
        fs::remove_file(env.path("b", format!("f{i}"))).unwrap();
    }
    fs::remove_file(env.path("c", "f7")).unwrap();
    // A file of c's own, plus noise that is not counted.
    fs::write(env.root.join("staged"), vec![0u8; 4321]).unwrap();
    fs::rename(env.root.join("staged"), env.path("c", "own")).unwrap();
    fs::write(env.path("b", ".lock"), b"l").unwrap();
    fs::create_dir(env.path("b", "git3-src")).unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let (code, out, err) = Env::output(env.command("status", &["--json"]));
    assert_eq!(code, Some(0), "{err}");
    let s = json(&out);
    let (per, apparent, physical) = expected(&env);
    for row in s["hosts"].as_array().unwrap() {
        let h = row["host"].as_str().unwrap();
        let (files, bytes, unique) = per[h];
        assert_eq!(row["files"], files, "{h} files");
        assert_eq!(row["bytes"], bytes, "{h} bytes");
        assert_eq!(row["unique_bytes"], unique, "{h} unique");
    }
    assert_eq!(s["apparent_bytes"], apparent);
    assert_eq!(s["physical_bytes"], physical);
    assert_eq!(s["saved_bytes"], apparent - physical);
    // Pruned: a and b dropped f0..f5; c dropped f7.
    let pruned: HashMap<&str, u64> = s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["host"].as_str().unwrap(), r["pruned"].as_u64().unwrap()))
        .collect();
    assert_eq!(pruned["a"], 6);
    assert_eq!(pruned["b"], 6);
    assert_eq!(pruned["c"], 1);
    assert!(s["daemon_pid"].as_u64().is_some(), "daemon runs: {s}");
    assert_eq!(s["daemon_pid"].as_u64().unwrap(), u64::from(d.child.id()));
    // The human table has a row per host.
    let (_, table, _) = Env::output(env.command("status", &[]));
    for h in ["a", "b", "c"] {
        assert!(table.lines().any(|l| l.starts_with(h)), "{table}");
    }
    assert!(table.contains("running"), "{table}");
    assert!(d.stop().success());
    let (_, out, _) = Env::output(env.command("status", &["--json"]));
    assert!(json(&out)["daemon_pid"].is_null());
}

#[test]
fn check_is_0_when_consistent_and_1_with_a_line_per_problem() {
    let env = Env::new(&["a", "b", "c"]);
    let mut d = env.start();
    env.fetch("a", "good", b"g");
    env.wait_everywhere("good");
    let (code, out, _) = Env::output(env.command("check", &[]));
    assert_eq!((code, out.as_str()), (Some(0), ""));
    // A conflict.
    fs::remove_file(env.path("b", "good")).unwrap();
    env.fetch("b", "good", b"different");
    d.wait_log("conflict", WAIT);
    assert!(d.stop().success());
    // A file that arrived while the daemon is down (complete: old mtime).
    env.write("c", "late", b"l");
    env.age("c", "late", Duration::from_secs(3600));
    let (code, out, _) = Env::output(env.command("check", &[]));
    assert_eq!(code, Some(1), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines.iter().any(|l| l.starts_with("conflict: good")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("not distributed:") && l.ends_with("/c/late")),
        "{out}"
    );
    let (code, out, _) = Env::output(env.command("check", &["--json"]));
    assert_eq!(code, Some(1));
    let j = json(&out);
    assert_eq!(j["ok"], false);
    assert_eq!(j["problems"].as_array().unwrap().len(), 2);
    // A missing host dir is a problem too.
    fs::remove_file(env.path("c", "late")).unwrap();
    for n in env.names("c") {
        fs::remove_file(env.path("c", std::ffi::OsStr::new(std::str::from_utf8(&n).unwrap())))
            .unwrap();
    }
    fs::remove_dir(env.dir("c")).unwrap();
    let (code, out, _) = Env::output(env.command("check", &[]));
    assert_eq!(code, Some(1));
    assert!(out.contains("host dir") && out.contains("missing"), "{out}");
    assert!(!env.dir("c").exists(), "check must not create anything");
}

#[test]
fn check_reports_host_dirs_on_different_filesystems_and_no_record() {
    let env = Env::new(&["a", "b"]);
    let (code, out, _) = Env::output(env.command("check", &[]));
    assert_eq!(code, Some(1));
    assert!(out.contains("no record"), "{out}");
    assert!(env.sync(&[]).status.success());
    if !mount_tmpfs(&env.dir("b"), "size=1m") {
        return;
    }
    let (code, out, _) = Env::output(env.command("check", &[]));
    umount(&env.dir("b"));
    assert_eq!(code, Some(1));
    assert!(out.contains("one filesystem"), "{out}");
}

#[test]
fn completions_and_man_page_are_generated_from_the_cli() {
    let (code, out, _) = Env::output({
        let mut c = Command::new(bin());
        c.args(["completions", "bash"]);
        c
    });
    assert_eq!(code, Some(0));
    assert!(
        out.contains("distlink") && out.contains("--keep-list"),
        "bash completion"
    );
    let (code, out, _) = Env::output({
        let mut c = Command::new(bin());
        c.arg("man");
        c
    });
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with(".ie") || out.contains(".TH"),
        "{}",
        &out[..out.len().min(200)]
    );
    assert!(out.contains("prune") && out.contains("migrate"));
}
