//! Names that clients choose, as distlink shows them: a file name can
//! neither forge log lines nor reach a terminal raw (newlines, ESC, bidi
//! controls), and `check` / `status --json` print every name
//! unambiguously and losslessly (README: "How names are shown").

mod common;
use common::*;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::process::Output;
use std::time::Duration;

/// A name that, printed raw, forges a "ready" line and colours the line
/// after it; with a right-to-left override and a byte that is not UTF-8.
const FORGER: &[u8] =
    b"evil\n2026-11-23T00:00:00.000000Z  INFO distlink::daemon: ready\n\x1b[31m\xe2\x80\xaeraw.tar\xff";
/// How that name must appear, by the escaping rule.
const FORGER_SHOWN: &str = r"evil\n2026-11-23T00:00:00.000000Z  INFO distlink::daemon: ready\n\u{1b}[31m\u{202e}raw.tar\xff";

/// The documented decoding, written independently of distlink's own:
/// `\\`, `\n`, `\t`, `\r`, `\u{HEX}` (that character), `\xHH` (that byte);
/// every other character stands for itself.
fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            continue;
        }
        match it.next() {
            Some('\\') => out.push(b'\\'),
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('r') => out.push(b'\r'),
            Some('x') => {
                let h: String = it.by_ref().take(2).collect();
                out.push(u8::from_str_radix(&h, 16).unwrap_or_else(|_| panic!("bad \\x in {s}")));
            }
            Some('u') => {
                assert_eq!(it.next(), Some('{'), "bad \\u in {s}");
                let h: String = it.by_ref().take_while(|c| *c != '}').collect();
                let c = u32::from_str_radix(&h, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .unwrap_or_else(|| panic!("bad \\u{{{h}}} in {s}"));
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
            other => panic!("unknown escape \\{other:?} in {s}"),
        }
    }
    out
}

/// Characters that must never reach a log or a terminal raw: controls
/// (C0, DEL, C1), bidi controls, line and paragraph separators.
fn is_dangerous(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Every character of `text` except the line ends is harmless.
fn assert_no_raw_controls(what: &str, text: &str) {
    for (n, line) in text.lines().enumerate() {
        let bad: Vec<char> = line.chars().filter(|c| is_dangerous(*c)).collect();
        assert!(
            bad.is_empty(),
            "{what}: line {} holds raw control characters {bad:?}:\n{}",
            n + 1,
            line.escape_debug()
        );
    }
}

/// Whether a text log line starts as tracing's text format starts one:
/// `2026-11-23T06:50:01.123456Z  INFO target: ...`.
fn is_log_line(line: &str) -> bool {
    let Some((ts, rest)) = line.split_once("Z ") else {
        return false;
    };
    let shape = ts.len() == 26
        && ts.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            _ => b.is_ascii_digit(),
        });
    let level = rest.trim_start();
    shape
        && ["TRACE ", "DEBUG ", "INFO ", "WARN ", "ERROR "]
            .iter()
            .any(|l| level.starts_with(l))
}

/// Starts a daemon on hosts a and b and makes `FORGER` a conflict: a
/// holds one file under it, b another. Returns the stopped daemon's log.
fn conflict_log(format: &str) -> (Env, String) {
    let env = Env::new(&["a", "b"]);
    let name = OsStr::from_bytes(FORGER);
    let mut d = env.start_with(&["--log-format", format]);
    env.move_in("a", name, b"one version");
    env.wait_everywhere(name);
    fs::remove_file(env.path("b", name)).expect("prune from b");
    env.move_in("b", name, b"another version");
    d.wait_log("conflict", WAIT);
    assert!(d.stop().success(), "{}", d.log());
    let log = d.log();
    assert!(log.contains("stopped"), "log incomplete:\n{log}");
    (env, log)
}

#[test]
fn a_name_cannot_forge_log_lines_or_reach_the_log_raw() {
    let (_env, log) = conflict_log("text");
    for line in log.lines() {
        assert!(
            is_log_line(line),
            "a line that is no log event:\n{}\nlog:\n{}",
            line.escape_debug(),
            log.escape_debug()
        );
        assert!(
            !line.starts_with("2026-11-23T00:00:00.000000Z"),
            "forged line: {}",
            line.escape_debug()
        );
    }
    let ready = log
        .lines()
        .filter_map(|l| l.split_once("Z "))
        .filter(|(_, event)| {
            event
                .trim_start()
                .starts_with("INFO distlink::daemon: ready")
        })
        .count();
    assert_eq!(ready, 1, "one real ready line:\n{}", log.escape_debug());
    assert_no_raw_controls("daemon log", &log);
    let conflict = log
        .lines()
        .find(|l| l.contains("conflict"))
        .expect("a conflict line");
    assert_eq!(
        conflict.matches(FORGER_SHOWN).count(),
        2,
        "path= and other= carry the escaped name: {conflict}"
    );
}

#[test]
fn a_name_cannot_forge_json_log_lines_and_decodes_back_to_its_bytes() {
    let (env, log) = conflict_log("json");
    let mut ready = 0;
    let mut conflict = None;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "not a JSON object ({e}): {}\nlog:\n{}",
                line.escape_debug(),
                log.escape_debug()
            )
        });
        assert!(v.is_object() && v["timestamp"].is_string() && v["level"].is_string());
        if v["message"] == "ready" {
            ready += 1;
        }
        if v["message"]
            .as_str()
            .is_some_and(|m| m.contains("conflict"))
        {
            conflict = Some(v.clone());
        }
        // Decoded JSON strings carry no raw controls either.
        for (k, f) in v.as_object().into_iter().flatten() {
            if let Some(s) = f.as_str() {
                assert_no_raw_controls(k, s);
            }
        }
    }
    assert_eq!(ready, 1, "one ready event:\n{}", log.escape_debug());
    assert_no_raw_controls("daemon log", &log);
    let c = conflict.expect("a conflict event");
    let mut paths: Vec<Vec<u8>> = ["path", "other"]
        .iter()
        .map(|k| unescape(c[k].as_str().unwrap_or_else(|| panic!("no {k} in {c}"))))
        .collect();
    paths.sort();
    let name = OsStr::from_bytes(FORGER);
    let want = vec![
        env.path("a", name).as_os_str().as_bytes().to_vec(),
        env.path("b", name).as_os_str().as_bytes().to_vec(),
    ];
    assert_eq!(paths, want, "the fields decode back to the two paths");
}

/// Runs a command and returns (exit code, stdout as text), asserting the
/// output is UTF-8 (names that are not are escaped, never written raw).
fn run(out: Output) -> (Option<i32>, String) {
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    (out.status.code(), stdout)
}

#[test]
fn check_and_status_show_every_name_unambiguously_and_losslessly() {
    let env = Env::new(&["a", "b"]);
    // An empty root: the record is created.
    let out = env.sync(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One name in two versions: a conflict, recorded by a sync.
    let twice: &[u8] = b"two\nversions\x1b[0m\xfe";
    fs::write(env.path("a", OsStr::from_bytes(twice)), b"one").unwrap();
    fs::write(env.path("b", OsStr::from_bytes(twice)), b"two").unwrap();
    for h in ["a", "b"] {
        env.age(h, OsStr::from_bytes(twice), Duration::from_secs(60));
    }
    let out = env.sync(&[]);
    let sync_log = String::from_utf8(out.stderr).expect("sync log is UTF-8");
    assert!(out.status.success(), "{sync_log}");

    // Files not distributed (made while no daemon ran).
    let odd: [&[u8]; 6] = [
        b"nl\nnot distributed: forged",
        b"esc\x1b[2Jclear.tar",
        b"x\xff",
        b"x\xfe",
        b"back\\slash\\xff.tar",
        "café-1.0-\u{202e}rat.gz".as_bytes(),
    ];
    for n in odd {
        env.write("a", OsStr::from_bytes(n), n);
        env.age("a", OsStr::from_bytes(n), Duration::from_secs(60));
    }
    let path_of = |n: &[u8]| {
        env.path("a", OsStr::from_bytes(n))
            .as_os_str()
            .as_bytes()
            .to_vec()
    };
    let mut want_paths: Vec<Vec<u8>> = odd.iter().map(|n| path_of(n)).collect();
    want_paths.sort();

    // check: one problem per line, each decoding back to its name.
    let (code, text) = run(env.command("check", &[]).output().expect("run check"));
    assert_eq!(code, Some(1), "{text}");
    assert_no_raw_controls("check", &text);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), odd.len() + 1, "one line per problem:\n{text}");
    let mut paths = Vec::new();
    let mut conflicts = Vec::new();
    for l in &lines {
        if let Some(p) = l.strip_prefix("not distributed: ") {
            paths.push(unescape(p));
        } else if let Some(c) = l.strip_prefix("conflict: ") {
            let (name, _) = c.rsplit_once(": 2 versions: ").expect("conflict line");
            conflicts.push(unescape(name));
        } else {
            panic!("not a problem line: {l}");
        }
    }
    paths.sort();
    assert_eq!(paths, want_paths, "check:\n{text}");
    assert_eq!(conflicts, vec![twice.to_vec()], "check:\n{text}");
    let shown = |n: &[u8]| {
        let p = path_of(n);
        lines
            .iter()
            .find(|l| {
                l.strip_prefix("not distributed: ")
                    .is_some_and(|s| unescape(s) == p)
            })
            .copied()
    };
    assert_ne!(shown(b"x\xff"), shown(b"x\xfe"), "two names, one rendering");
    // Valid UTF-8 stays as it is.
    assert!(text.contains("café-1.0-"), "{text}");

    // check --json: the same lines.
    let (code, text) = run(env
        .command("check", &["--json"])
        .output()
        .expect("run check"));
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&text).expect("check --json parses");
    let problems: Vec<&str> = v["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(problems, lines, "check --json lists what check prints");

    // status --json: names decode back to their bytes.
    let (code, text) = run(env
        .command("status", &["--json"])
        .output()
        .expect("run status"));
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&text).expect("status --json parses");
    let mut paths: Vec<Vec<u8>> = v["undistributed"]
        .as_array()
        .expect("undistributed")
        .iter()
        .map(|p| unescape(p.as_str().expect("a string")))
        .collect();
    paths.sort();
    assert_eq!(paths, want_paths, "status --json:\n{text}");
    let conflicts: Vec<Vec<u8>> = v["conflicts"]
        .as_array()
        .expect("conflicts")
        .iter()
        .filter_map(|c| c.as_str()?.rsplit_once(": 2 versions: "))
        .map(|(n, _)| unescape(n))
        .collect();
    assert_eq!(conflicts, vec![twice.to_vec()], "status --json:\n{text}");
    for s in v["undistributed"].as_array().into_iter().flatten() {
        assert_no_raw_controls("status --json", s.as_str().unwrap_or_default());
    }

    // The sync that found the conflict logged it in one line.
    for line in sync_log.lines() {
        assert!(
            is_log_line(line) || line.starts_with("distlink sync: "),
            "a line that is no log event: {}",
            line.escape_debug()
        );
    }
    assert_no_raw_controls("sync log", &sync_log);
}
