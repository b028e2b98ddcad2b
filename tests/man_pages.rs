//! The man pages `distlink man --dir` writes: one per subcommand `--help`
//! lists, each rendered by groff and man without a single warning, with
//! the sections an admin looks for, and no reference to a distlink page
//! that was not written. groff and man-db are needed (skipped with a
//! reason when missing, unless DISTLINK_REQUIRE_TOOLS=1, which CI sets).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::{bin, tools};

/// The subcommands `distlink --help` lists (clap's own `help` aside).
fn subcommands() -> Vec<String> {
    let out = Command::new(bin()).arg("--help").output().expect("--help");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut subs = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("Commands:") {
            inside = true;
            continue;
        }
        if inside {
            if !line.starts_with("  ") {
                break;
            }
            if let Some(w) = line.split_whitespace().next()
                && w != "help"
            {
                subs.push(w.to_string());
            }
        }
    }
    assert!(subs.len() >= 5, "no subcommands in --help:\n{text}");
    subs
}

/// Renders a page to text; panics on any warning.
fn render(page: &Path) -> String {
    let out = Command::new("groff")
        .args(["-man", "-ww", "-Tutf8"])
        .arg(page)
        .output()
        .expect("run groff");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "groff warns about {}:\n{err}",
        page.display()
    );
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(page)
        .env("MANWIDTH", "80")
        .env("MAN_KEEP_FORMATTING", "0")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .expect("run man");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "man -l warns about {}:\n{err}",
        page.display()
    );
    // Plain text: no overstrike, one kind of hyphen.
    let mut text = String::new();
    let mut chars = String::from_utf8_lossy(&out.stdout).into_owned();
    while let Some(i) = chars.find('\u{8}') {
        // "x\bx" (bold), "_\bx" (underline): keep the last character.
        let (a, b) = chars.split_at(i);
        let a = &a[..a.len() - a.chars().last().map_or(0, char::len_utf8)];
        chars = format!("{a}{}", &b[1..]);
    }
    text.push_str(&chars);
    text.replace(['\u{2010}', '\u{2212}'], "-")
}

/// Every `distlink(1)` / `distlink-SUB(1)` a text refers to.
fn references(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for (i, _) in text.match_indices("distlink") {
        let rest = &text[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(rest.len());
        if rest[end..].starts_with("(1)") {
            refs.insert(rest[..end].to_string());
        }
    }
    refs
}

#[test]
fn every_subcommand_has_a_page_that_renders_without_warnings_and_no_reference_dangles() {
    if !tools::have("groff", "groff") || !tools::have("man", "man-db") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(bin())
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .expect("distlink man --dir");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let subs = subcommands();
    let mut expected: BTreeSet<String> = subs.iter().map(|s| format!("distlink-{s}.1")).collect();
    expected.insert("distlink.1".into());
    let written: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written, expected, "one page per subcommand, and distlink.1");

    for page in &written {
        let text = render(&dir.path().join(page));
        let name = page.trim_end_matches(".1");
        for section in [
            "NAME",
            "SYNOPSIS",
            "OPTIONS",
            "EXIT STATUS",
            "EXAMPLES",
            "SEE ALSO",
        ] {
            assert!(
                text.lines().any(|l| l == section),
                "{page} lacks the section {section}:\n{text}"
            );
        }
        if name != "distlink-completions" && name != "distlink-man" {
            assert!(text.contains("/etc/distlink.toml"), "{page}: FILES");
            assert!(text.contains("/var/lib/distlink"), "{page}: FILES");
        }
        let see_also = text
            .split("\nSEE ALSO\n")
            .nth(1)
            .unwrap_or_else(|| panic!("{page}: no SEE ALSO"));
        assert!(see_also.contains("eclean-dist(1)"), "{page}: {see_also}");
        assert!(see_also.contains("exports(5)"), "{page}: {see_also}");
        let refs = references(&text);
        for r in &refs {
            assert!(
                written.contains(&format!("{r}.1")),
                "{page} refers to {r}(1), which was not written"
            );
        }
        // Every other page is reachable from this one.
        for other in &written {
            let o = other.trim_end_matches(".1");
            if o != name {
                assert!(refs.contains(o), "{page} does not point to {o}(1)");
            }
        }
    }
    let run = render(&dir.path().join("distlink-run.1"));
    let signals = run
        .split("\nSIGNALS\n")
        .nth(1)
        .expect("distlink-run(1) has a SIGNALS section");
    for sig in ["SIGHUP", "SIGTERM", "SIGINT"] {
        assert!(signals.contains(sig), "SIGNALS lacks {sig}:\n{signals}");
    }
    // The top page printed by `distlink man` is the one written.
    let printed = Command::new(bin()).arg("man").output().expect("man");
    assert_eq!(
        String::from_utf8_lossy(&printed.stdout),
        std::fs::read_to_string(dir.path().join("distlink.1")).unwrap()
    );
}

#[test]
fn a_symlink_planted_under_a_page_name_is_not_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"untouched").unwrap();
    let pages = dir.path().join("pages");
    std::fs::create_dir(&pages).unwrap();
    std::os::unix::fs::symlink(&victim, pages.join("distlink-run.1")).unwrap();
    let out = Command::new(bin())
        .args(["man", "--dir"])
        .arg(&pages)
        .output()
        .expect("distlink man --dir");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("distlink-run.1"),
        "the error names the page"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
}
