//! Command line and config errors: exit 2 with a message naming the key
//! (and the line, for TOML syntax errors).

mod common;
use common::*;

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_and_config_errors_exit_2_naming_the_key() {
    let env = Env::new(&["a"]);
    let root = env.root.to_str().unwrap().to_string();
    let bad_cfg = env.config("root = \"/x\"\nhosts = [\"a\"]\nfrobnicate = true\n");
    let missing = env.tmp.path().join("nope");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "--host", "a"], "root"),
        (vec!["run", "--root", "relative/dir", "--host", "a"], "root"),
        (vec!["run", "--root", &root], "hosts"),
        (vec!["run", "--root", &root, "--host", "a/b"], "hosts"),
        (vec!["run", "--root", &root, "--host", ".."], "hosts"),
        (
            vec!["run", "--root", &root, "--host", "a", "--host", "a"],
            "twice",
        ),
        (
            vec!["run", "--root", &root, "--host", "a", "--settle", "soon"],
            "settle",
        ),
        (
            vec!["run", "--config", bad_cfg.to_str().unwrap()],
            "frobnicate",
        ),
        (
            vec!["run", "--root", missing.to_str().unwrap(), "--host", "a"],
            "does not exist",
        ),
        (
            vec!["sync", "--config", "/nonexistent/distlink.toml"],
            "/nonexistent/distlink.toml",
        ),
        (vec!["frobnicate"], "frobnicate"),
    ];
    for (args, want) in cases {
        let (code, err) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains(want),
            "{args:?} should mention {want:?}: {err}"
        );
    }
}

#[test]
fn a_toml_syntax_error_names_the_file_and_line() {
    let env = Env::new(&["a"]);
    let cfg = env.config("root = \"/x\"\nhosts = [\"a\"\nsettle = \"1s\"\n");
    let (code, err) = run(&["sync", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("line") && err.contains(cfg.to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn a_wrong_type_names_the_key_and_line() {
    let env = Env::new(&["a"]);
    let cfg = env.config("root = \"/x\"\nhosts = [\"a\"]\n[watch]\ninterval = 5\n");
    let (code, err) = run(&["sync", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("interval") && err.contains("line 4"), "{err}");
}

/// One command line: every command takes `--config`, `--root`, `--host
/// NAME` (repeated: the host list) and `--state-dir` for the same thing;
/// the host a command acts on is named apart (`prune HOST`, `forget
/// HOST`, `migrate --from DIR --into HOST`); options that mean nothing to
/// a command are refused by it.
#[test]
fn every_command_takes_the_same_options_and_refuses_those_it_has_no_use_for() {
    let env = Env::new(&["a", "b"]);
    let cfg = env.config("root = \"/nonexistent-root\"\nhosts = [\"a\"]\n");
    // Parsing passes when the error is the missing root, not an option.
    let parses = |args: &[&str]| {
        let (code, err) = run(args);
        let ok = !err.contains("unexpected argument") && !err.contains("Usage:");
        (ok, code, err)
    };
    let common = [
        "--config",
        cfg.to_str().unwrap(),
        "--root",
        "/nonexistent-root",
        "--host",
        "a",
        "--host",
        "b",
        "--state-dir",
        "/nonexistent-state",
    ];
    let commands: [(&str, &[&str], &[&str]); 7] = [
        ("run", &[], &["--settle", "--poll", "--log-format"]),
        ("sync", &[], &["--settle", "--log-format"]),
        ("migrate", &[], &["--settle", "--log-format"]),
        ("prune", &["b", "--all"], &[]),
        ("status", &[], &[]),
        ("check", &[], &[]),
        ("forget", &["c"], &[]),
    ];
    for (sub, own, tuning) in commands {
        let mut args = vec![sub];
        args.extend_from_slice(own);
        args.extend_from_slice(&common);
        let (ok, code, err) = parses(&args);
        assert!(
            ok && code == Some(2) && err.contains("nonexistent-root"),
            "{args:?}: {err}"
        );
        for (opt, value) in [
            ("--settle", "1s"),
            ("--poll", "5s"),
            ("--log-format", "json"),
        ] {
            let mut with = args.clone();
            with.extend([opt, value]);
            let (ok, code, err) = parses(&with);
            assert_eq!(ok, tuning.contains(&opt), "{with:?}: {err}");
            if !ok {
                assert_eq!(code, Some(2), "{with:?}");
                assert!(
                    err.contains(&format!("unexpected argument '{opt}'")),
                    "{err}"
                );
            }
        }
        // The old spelling of the host list is gone.
        let mut with = args.clone();
        with.extend(["--hosts", "a,b"]);
        let (ok, code, err) = parses(&with);
        assert!(!ok && code == Some(2), "{with:?}: {err}");
    }
    // The command line: a target host and the host list together.
    let (ok, _, err) = parses(&[
        "prune",
        "b",
        "--root",
        "/nonexistent-root",
        "--host",
        "a",
        "--host",
        "b",
        "--all",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = parses(&["prune", "--root", "/nonexistent-root", "--all"]);
    assert!(!ok && err.contains("<HOST>"), "{err}");
    // migrate: --from and --into go together.
    let (ok, _, err) = parses(&[
        "migrate",
        "--from",
        "/x",
        "--into",
        "a",
        "--root",
        "/nonexistent-root",
    ]);
    assert!(ok, "{err}");
    for half in [&["--from", "/x"][..], &["--into", "a"]] {
        let mut args = vec!["migrate"];
        args.extend_from_slice(half);
        let (ok, code, err) = parses(&args);
        assert!(!ok && code == Some(2), "{args:?}: {err}");
    }
}
