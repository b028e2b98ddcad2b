//! The files packagers install: the example config (parsed by the real
//! parser so it cannot rot), the systemd unit (`systemd-analyze verify`) and
//! the OpenRC script (`sh -n`, shellcheck). Tools that are missing are
//! skipped with a reason, unless DISTLINK_REQUIRE_TOOLS=1 (CI sets it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use distlink::config::{self, Config, LogFormat, Overrides, Watch, WatchMode};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("DISTLINK_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "DISTLINK_REQUIRE_TOOLS=1 but {tool} is missing"
        );
        eprintln!("skipped: {tool} is not installed");
    }
    ok
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
    if !have("systemd-analyze") {
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

#[test]
fn the_openrc_script_parses_and_passes_shellcheck() {
    let script = std::fs::read_to_string(repo("openrc/distlink")).unwrap();
    assert!(script.starts_with("#!/sbin/openrc-run\n"));
    for want in [
        "supervisor=\"supervise-daemon\"",
        "extra_started_commands=\"reload\"",
        "need localmount",
        "before nfs",
        "--signal HUP",
    ] {
        assert!(script.contains(want), "openrc/distlink lacks {want:?}");
    }
    for f in ["openrc/distlink", "openrc/distlink.confd"] {
        let st = Command::new("sh").arg("-n").arg(repo(f)).status().unwrap();
        assert!(st.success(), "sh -n {f}");
    }
    if !have("shellcheck") {
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
