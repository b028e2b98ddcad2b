//! Metrics in the Prometheus text format: `status --prometheus` says what
//! `status --json` says, the counters grow across restarts, the daemon's
//! `[metrics]` file is rewritten as files arrive, and promtool accepts
//! every output (skipped when promtool is missing, unless
//! DISTLINK_REQUIRE_TOOLS=1, which CI sets; Debian package `prometheus`).

mod common;
use common::*;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `promtool check metrics` (its linter too) accepts the text.
fn promtool_accepts(text: &str) {
    if !tools::have("promtool", "prometheus") {
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refuses:\n{}{}\n--- the text:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A status-only command (no --settle: status has no use for it).
fn status(env: &Env, more: &[&str]) -> String {
    let mut c = Command::new(bin());
    c.arg("status")
        .arg("--root")
        .arg(&env.root)
        .arg("--state-dir")
        .arg(&env.state);
    for h in &env.hosts {
        c.args(["--host", h]);
    }
    c.args(more);
    let (code, out, err) = Env::output(c);
    assert_eq!(code, Some(0), "status {more:?}: {err}");
    out
}

/// Samples: `name{label="value"}` (labels as written) → value. Every
/// sample's family has HELP and TYPE lines before it.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let mut typed = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.push(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("sample line");
        let name = key.split('{').next().unwrap();
        assert!(typed.iter().any(|t| t == name), "no TYPE for {name}");
        let v: f64 = value.parse().expect("a number");
        assert!(m.insert(key.to_string(), v).is_none(), "{key} twice");
    }
    m
}

fn host_label(h: &str) -> String {
    h.replace('\\', "\\\\").replace('"', "\\\"")
}

fn get(m: &BTreeMap<String, f64>, key: &str) -> u64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {m:#?}")) as u64
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn status_prometheus_says_what_status_json_says_and_counters_grow_across_restarts() {
    // A host name a label value must escape (the config allows it).
    let odd = "we\"ird\\host";
    let env = Env::new(&["a", "b", odd]);
    let mut d = env.start();
    for i in 0..6 {
        env.fetch(["a", "b"][i % 2], format!("f{i}"), &vec![b'x'; 1000 + i]);
    }
    for i in 0..6 {
        env.wait_everywhere(format!("f{i}"));
    }
    fs::remove_file(env.path("a", "f0")).unwrap();
    fs::remove_file(env.path(odd, "f0")).unwrap();
    fs::remove_file(env.path("b", "f1")).unwrap();
    assert_eq!(d.stop().code(), Some(0));
    // While it was down: b fetched a file of its own, which
    // is not distributed yet.
    fs::write(env.path("b", "own"), vec![0u8; 4321]).unwrap();
    env.age("b", "own", Duration::from_secs(60));

    let text = status(&env, &["--prometheus"]);
    promtool_accepts(&text);
    let m = samples(&text);
    let j = json(&status(&env, &["--json"]));
    assert_eq!(get(&m, "distlink_up"), 0, "the daemon is stopped");
    assert_eq!(j["daemon_pid"], serde_json::Value::Null);
    for h in j["hosts"].as_array().unwrap() {
        let l = format!("{{host=\"{}\"}}", host_label(h["host"].as_str().unwrap()));
        assert_eq!(get(&m, &format!("distlink_host_files{l}")), h["files"]);
        let bytes = get(&m, &format!("distlink_host_apparent_bytes{l}"));
        assert_eq!(bytes, h["bytes"]);
        let unique = get(&m, &format!("distlink_host_unique_bytes{l}"));
        assert_eq!(unique, h["unique_bytes"]);
        let pruned = get(&m, &format!("distlink_host_pruned_files{l}"));
        assert_eq!(pruned, h["pruned"]);
    }
    // The numbers themselves, from what the scenario did.
    assert_eq!(
        get(
            &m,
            &format!("distlink_host_pruned_files{{host=\"{}\"}}", host_label(odd))
        ),
        1
    );
    // b alone holds f0 (1000 bytes) and its own file (4321).
    assert_eq!(get(&m, "distlink_host_unique_bytes{host=\"b\"}"), 5321);
    for (metric, key) in [
        ("distlink_names", "names"),
        ("distlink_apparent_bytes", "apparent_bytes"),
        ("distlink_physical_bytes", "physical_bytes"),
        ("distlink_saved_bytes", "saved_bytes"),
    ] {
        assert_eq!(get(&m, metric), j[key], "{metric}");
    }
    for (metric, key) in [
        ("distlink_conflicts", "conflicts"),
        ("distlink_owed_links", "owed_links"),
        ("distlink_undistributed_files", "undistributed"),
    ] {
        assert_eq!(
            get(&m, metric) as usize,
            j[key].as_array().unwrap().len(),
            "{metric}"
        );
    }
    assert_eq!(get(&m, "distlink_undistributed_files"), 1, "b's own file");
    let s = &j["stats"];
    for (metric, key, want) in [
        ("distlink_files_distributed_total", "files_distributed", 6),
        ("distlink_links_made_total", "links_made", 12),
        ("distlink_merges_total", "merges", 0),
        ("distlink_queue_overflows_total", "queue_overflows", 0),
        ("distlink_full_scans_total", "full_scans", 1),
    ] {
        assert_eq!(get(&m, metric), s[key], "{metric}");
        assert_eq!(get(&m, metric), want, "{metric}");
    }
    let arrival = get(&m, "distlink_last_arrival_timestamp_seconds");
    assert_eq!(arrival, s["last_arrival_at"]);
    assert!(m.contains_key("distlink_last_full_scan_duration_seconds"));

    // While still down: a and the odd host fetched the same bytes.
    for h in ["a", odd] {
        fs::write(env.path(h, "same"), b"same bytes").unwrap();
        env.age(h, "same", Duration::from_secs(60));
    }
    // Restarted: the start-up scan distributes b's file (2 links) and
    // "same" (1 link, and the other copy merged). The counters go on from
    // where they were.
    let mut d = env.start();
    env.wait_everywhere("own");
    env.wait_everywhere("same");
    let text = status(&env, &["--prometheus"]);
    promtool_accepts(&text);
    assert_eq!(get(&samples(&text), "distlink_up"), 1, "the daemon runs");
    assert_eq!(d.stop().code(), Some(0));
    let m = samples(&status(&env, &["--prometheus"]));
    assert_eq!(get(&m, "distlink_files_distributed_total"), 8);
    assert_eq!(get(&m, "distlink_links_made_total"), 15);
    assert_eq!(get(&m, "distlink_merges_total"), 1);
    assert_eq!(get(&m, "distlink_full_scans_total"), 2);
    assert!(get(&m, "distlink_last_arrival_timestamp_seconds") >= arrival);
}

#[test]
fn the_daemons_metrics_file_is_rewritten_as_files_arrive() {
    let env = Env::new(&["a", "b", "c"]);
    let dir = env.tmp.path().join("textfile");
    fs::create_dir(&dir).unwrap();
    let file = dir.join("distlink.prom");
    let cfg = env.config(&format!(
        "[metrics]\npath = \"{}\"\ninterval = \"1s\"\n",
        file.display()
    ));
    let cfg = cfg.display().to_string();
    let mut d = env.start_with(&["--config", &cfg]);
    assert!(
        wait_until(WAIT, || file.exists()),
        "no metrics file; log:\n{}",
        d.log()
    );
    let first = fs::read_to_string(&file).unwrap();
    promtool_accepts(&first);
    let m = samples(&first);
    assert_eq!(get(&m, "distlink_up"), 1);
    assert_eq!(get(&m, "distlink_files_distributed_total"), 0);
    let ino = fs::metadata(&file).unwrap().ino();

    env.fetch("b", "new.tar.gz", b"a new tarball");
    env.wait_everywhere("new.tar.gz");
    let moved = wait_until(WAIT, || {
        let m = samples(&fs::read_to_string(&file).unwrap_or_default());
        m.get("distlink_files_distributed_total") == Some(&1.0)
            && m.get("distlink_host_files{host=\"a\"}") == Some(&1.0)
    });
    let now = fs::read_to_string(&file).unwrap();
    assert!(moved, "the file never showed the arrival:\n{now}");
    // Replaced by a rename, never written in place.
    assert_ne!(fs::metadata(&file).unwrap().ino(), ino);
    promtool_accepts(&now);
    let m = samples(&now);
    assert_eq!(get(&m, "distlink_links_made_total"), 2);
    assert!(m.contains_key("distlink_last_arrival_timestamp_seconds"));

    assert_eq!(d.stop().code(), Some(0));
    let last = samples(&fs::read_to_string(&file).unwrap());
    assert_eq!(get(&last, "distlink_up"), 0, "a clean stop says so");
    assert_eq!(get(&last, "distlink_files_distributed_total"), 1);
    // Nothing but the file is left in the collector's dir.
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("distlink.prom")]);
}

#[test]
fn a_metrics_dir_that_is_missing_is_reported_once_and_used_once_it_exists() {
    let env = Env::new(&["a", "b"]);
    let dir = env.tmp.path().join("textfile-later");
    let file = dir.join("distlink.prom");
    let cfg = env.config(&format!(
        "[metrics]\npath = \"{}\"\ninterval = \"1s\"\n",
        file.display()
    ));
    let cfg = cfg.display().to_string();
    let d = env.start_with(&["--config", &cfg]);
    d.wait_log("cannot write the metrics file", WAIT);
    // Several intervals pass: one warning, the daemon goes on.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(
        d.count_log("cannot write the metrics file"),
        1,
        "{}",
        d.log()
    );
    env.fetch("a", "meanwhile", b"distributed while metrics failed");
    env.wait_everywhere("meanwhile");
    fs::create_dir(&dir).unwrap();
    d.wait_log("metrics written again", WAIT);
    let m = samples(&fs::read_to_string(&file).unwrap());
    assert_eq!(get(&m, "distlink_files_distributed_total"), 1);
}
