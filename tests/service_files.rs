//! The files packagers install: the example config (parsed by the real
//! parser so it cannot rot), the systemd unit (`systemd-analyze verify` and
//! `security`; its restart rules, parsed, since no systemd runs here) and
//! the OpenRC script (`sh -n`, shellcheck; `tests/openrc.rs` runs it). Tools that are missing are
//! skipped with a reason, unless DISTLINK_REQUIRE_TOOLS=1 (CI sets it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use distlink::config::{self, Config, LogFormat, Overrides, Watch, WatchMode};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn the_example_config_parses_and_states_the_defaults() {
    let cfg = Config::load(&Overrides {
        config: Some(repo("config/distlink.toml")),
        ..Overrides::default()
    })
    .expect("config/distlink.toml must load");
    assert_eq!(cfg.root, PathBuf::from("/var/cache/distfiles"));
    assert_eq!(cfg.state_dir, PathBuf::from("/var/lib/distlink"));
    assert_eq!(cfg.settle, config::DEFAULT_SETTLE);
    assert!(cfg.dedupe);
    assert!(cfg.ignore.is_empty());
    assert_eq!(cfg.watch, Watch::default());
    assert_eq!(cfg.log_format, LogFormat::Text);
    // Every key the parser accepts is documented in the example.
    let text = std::fs::read_to_string(repo("config/distlink.toml")).unwrap();
    for key in [
        "root",
        "hosts",
        "state_dir",
        "settle",
        "ignore",
        "dedupe",
        "log_format",
        "[watch]",
        "mode",
        "interval",
        "all_writes_local",
        "full_scan_every",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(key)),
            "config/distlink.toml does not set {key}"
        );
    }
    // Its poll interval is the real default.
    let poll = text.replace("mode = \"auto\"", "mode = \"poll\"");
    let cfg = Config::from_toml(&poll, &Overrides::default()).unwrap();
    assert_eq!(cfg.watch.mode, WatchMode::Poll);
    assert_eq!(cfg.watch.interval, config::DEFAULT_POLL);
}

#[test]
fn the_systemd_unit_verifies_and_is_sandboxed() {
    let unit = std::fs::read_to_string(repo("systemd/distlink.service")).unwrap();
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "Before=nfs-server.service",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/cache/distfiles /var/lib/distlink",
        "PrivateNetwork=yes",
        "NoNewPrivileges=yes",
        "ProtectHome=yes",
        "RestrictAddressFamilies=AF_UNIX",
        "CapabilityBoundingSet=CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_CHOWN CAP_FSETID CAP_LEASE",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line:?}");
    }
    if !common::tools::have("systemd-analyze", "systemd") {
        return;
    }
    // Verify a copy whose ExecStart points at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("distlink.service");
    std::fs::write(&copy, unit.replace("/usr/bin/distlink", common::bin())).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("distlink.service:"),
        "systemd-analyze verify:\n{err}"
    );
}

/// The unit as systemd reads it: (section, key) → every value, in order.
fn parse_unit(text: &str) -> std::collections::BTreeMap<(String, String), Vec<String>> {
    let mut map = std::collections::BTreeMap::new();
    let mut section = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let mut line = line.trim().to_string();
        // A trailing backslash continues the line.
        while line.ends_with('\\') {
            line.pop();
            line.push(' ');
            line.push_str(lines.next().unwrap_or("").trim());
        }
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').expect("KEY=VALUE");
        map.entry((section.clone(), k.trim().to_string()))
            .or_insert_with(Vec::new)
            .push(v.trim().to_string());
    }
    map
}

/// A duration as systemd writes it here (`60`, `5s`, `1min`), in seconds.
fn seconds(v: &str) -> u64 {
    if let Some(m) = v.strip_suffix("min") {
        return m.parse::<u64>().expect("minutes") * 60;
    }
    v.trim_end_matches('s').parse().expect("seconds")
}

#[test]
fn the_systemd_unit_never_restarts_a_refusal_and_gives_up_on_a_daemon_that_keeps_dying() {
    let unit = parse_unit(&std::fs::read_to_string(repo("systemd/distlink.service")).unwrap());
    let one = |sec: &str, key: &str| -> String {
        let v = unit
            .get(&(sec.to_string(), key.to_string()))
            .unwrap_or_else(|| panic!("[{sec}] {key}= is not set"));
        assert_eq!(v.len(), 1, "[{sec}] {key}= is set {} times", v.len());
        v[0].clone()
    };
    // What distlink exits with when it refuses to start, or on a bad
    // configuration (the binary is asked, not assumed).
    let env = common::Env::new(&["a", "b"]);
    env.fetch("a", "f", b"files but no record");
    let refusal = common::Env::output(env.command("run", &[])).0;
    let cfg = env.config("setle = \"5s\"\n");
    let cfg = cfg.to_str().unwrap();
    let bad_config = common::Env::output(env.command("run", &["--config", cfg])).0;
    assert_eq!(refusal, bad_config);
    let refusal = refusal.expect("an exit code");
    // Restarted on failure, except that one.
    assert_eq!(one("Service", "Restart"), "on-failure");
    let prevent = one("Service", "RestartPreventExitStatus");
    assert!(
        prevent.split_whitespace().any(|c| c == refusal.to_string()),
        "RestartPreventExitStatus={prevent} lacks {refusal}, so a refusal is restarted forever"
    );
    // A check in ExecStartPre= would be restarted: RestartPreventExitStatus=
    // looks at the main process only.
    assert!(
        !unit.contains_key(&("Service".into(), "ExecStartPre".into())),
        "ExecStartPre= fails are restarted regardless of RestartPreventExitStatus="
    );
    // A daemon that keeps dying for another reason: the start limit is
    // reached long before its interval is over.
    let burst: u64 = one("Unit", "StartLimitBurst").parse().unwrap();
    let interval = seconds(&one("Unit", "StartLimitIntervalSec"));
    let delay = seconds(&one("Service", "RestartSec"));
    assert!(
        burst >= 2 && burst * delay < interval,
        "{burst} starts {delay} s apart fit in {interval} s only if the limit bites"
    );
    // A reload checks the configuration first, then signals the daemon.
    let start = one("Service", "ExecStart");
    let reload = &unit[&("Service".to_string(), "ExecReload".to_string())];
    assert_eq!(
        reload,
        &vec![
            start.replace(" run ", " run --check "),
            "/bin/kill -HUP $MAINPID".to_string()
        ]
    );
}

/// `systemd-analyze security` of the unit before the restart rules were
/// added: it may only get better.
const SECURITY_EXPOSURE: f64 = 1.8;

#[test]
fn the_systemd_unit_stays_as_sandboxed_as_it_was() {
    if !common::tools::have("systemd-analyze", "systemd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("distlink.service");
    let unit = std::fs::read_to_string(repo("systemd/distlink.service")).unwrap();
    std::fs::write(&copy, unit.replace("/usr/bin/distlink", common::bin())).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&copy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for distlink.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        level <= SECURITY_EXPOSURE,
        "systemd-analyze security: exposure {level} > {SECURITY_EXPOSURE}:\n{text}"
    );
}

#[test]
fn the_openrc_script_parses_and_passes_shellcheck() {
    let script = std::fs::read_to_string(repo("openrc/distlink")).unwrap();
    assert!(script.starts_with("#!/sbin/openrc-run\n"));
    for want in [
        "supervisor=\"supervise-daemon\"",
        "extra_started_commands=\"reload\"",
        "extra_commands=\"checkconfig\"",
        "need localmount",
        "before nfs",
        "--signal HUP",
        "run --check",
        ": \"${respawn_max:=3}\"",
        ": \"${respawn_period:=60}\"",
        "checkpath --directory --owner root:root --mode 0700",
    ] {
        assert!(script.contains(want), "openrc/distlink lacks {want:?}");
    }
    for f in ["openrc/distlink", "openrc/distlink.confd"] {
        let st = Command::new("sh").arg("-n").arg(repo(f)).status().unwrap();
        assert!(st.success(), "sh -n {f}");
    }
    if !common::tools::have("shellcheck", "shellcheck") {
        return;
    }
    let out = Command::new("shellcheck")
        .args(["-s", "sh"])
        .arg(repo("openrc/distlink"))
        .arg(repo("openrc/distlink.confd"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shellcheck:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
