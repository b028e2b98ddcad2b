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
