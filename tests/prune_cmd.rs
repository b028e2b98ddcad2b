//! `distlink prune --host NAME`: server-side pruning with honest accounting.

mod common;
use common::*;

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::process::Stdio;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86400);

/// a and b share x, y, z; b alone has only-b (a pruned it).
fn setup() -> Env {
    let env = Env::new(&["a", "b"]);
    let mut d = env.start();
    for (n, data) in [
        ("x", &b"xx"[..]),
        ("y", b"yyyy"),
        ("z", b"zzzzzzzz"),
        ("only-b", b"0123456789"),
    ] {
        env.fetch("b", n, data);
        env.wait_everywhere(n);
    }
    fs::remove_file(env.path("a", "only-b")).unwrap();
    assert!(d.stop().success());
    env
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn keep_list_removes_everything_else_and_counts_freed_bytes_honestly() {
    let env = setup();
    let keep = env.tmp.path().join("keep");
    fs::write(&keep, "# what b still needs\nx\n\nz\n").unwrap();
    let (code, out, err) = Env::output(env.single(
        "prune",
        &["b", "--keep-list", keep.to_str().unwrap(), "--json"],
    ));
    assert_eq!(code, Some(0), "{err}");
    let r = json(&out);
    assert_eq!(r["files_removed"], 2);
    // only-b had one link: its 10 bytes are freed; y is still held by a.
    assert_eq!(r["bytes_freed"], 10);
    assert_eq!(r["bytes_still_held"], 4);
    let mut names: Vec<&str> = r["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["only-b", "y"]);
    assert_eq!(env.names("b"), vec![b"x".to_vec(), b"z".to_vec()]);
    assert!(env.exists("a", "y"));
}

#[test]
fn keep_list_from_stdin() {
    let env = setup();
    let mut child = env
        .single("prune", &["b", "--keep-list", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"y\nonly-b\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(env.names("b"), vec![b"only-b".to_vec(), b"y".to_vec()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("removed 2 files"), "{text}");
}

#[test]
fn older_than_selects_by_mtime() {
    let env = setup();
    env.age("b", "x", 200 * DAY);
    env.age("b", "only-b", 200 * DAY);
    let (code, out, _) = Env::output(env.single("prune", &["b", "--older-than", "180d", "--json"]));
    assert_eq!(code, Some(0));
    assert_eq!(json(&out)["files_removed"], 2);
    assert_eq!(env.names("b"), vec![b"y".to_vec(), b"z".to_vec()]);
}

#[test]
fn keep_list_and_older_than_together_remove_only_what_both_select() {
    let env = setup();
    env.age("b", "x", 200 * DAY);
    env.age("b", "y", 200 * DAY);
    let keep = env.tmp.path().join("keep");
    fs::write(&keep, "x\n").unwrap();
    let (code, _, _) = Env::output(env.single(
        "prune",
        &[
            "b",
            "--keep-list",
            keep.to_str().unwrap(),
            "--older-than",
            "180d",
        ],
    ));
    assert_eq!(code, Some(0));
    // y: not kept and old → removed. x: kept. z, only-b: young → stay.
    assert_eq!(
        env.names("b"),
        vec![b"only-b".to_vec(), b"x".to_vec(), b"z".to_vec()]
    );
}

#[test]
fn all_retires_a_host_but_touches_only_candidates() {
    let env = setup();
    fs::create_dir(env.path("b", "git3-src")).unwrap();
    fs::write(env.path("b", ".foo.portage_lockfile"), b"").unwrap();
    fs::write(env.path("b", "big.iso.__download__"), b"partial").unwrap();
    symlink("/etc/passwd", env.path("b", "link")).unwrap();
    let (code, out, _) = Env::output(env.single("prune", &["b", "--all"]));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        env.names("b"),
        vec![
            b".foo.portage_lockfile".to_vec(),
            b"big.iso.__download__".to_vec(),
            b"git3-src".to_vec(),
            b"link".to_vec()
        ]
    );
    assert!(out.contains("removed 4 files"), "{out}");
}

#[test]
fn dry_run_and_pretend_delete_nothing_and_report_the_same() {
    let env = setup();
    let before = env.snapshot();
    let (_, real_would, _) =
        Env::output(env.single("prune", &["b", "--all", "--dry-run", "--json"]));
    let (code, pretend, _) =
        Env::output(env.single("prune", &["b", "--all", "--pretend", "--json"]));
    assert_eq!(code, Some(0));
    assert_eq!(env.snapshot(), before);
    let (a, b) = (json(&real_would), json(&pretend));
    assert_eq!(a, b);
    assert_eq!(a["dry_run"], true);
    assert_eq!(a["files_removed"], 4);
    assert_eq!(a["bytes_freed"], 10);
    // The real run reports exactly what the dry run said.
    let (_, real, _) = Env::output(env.single("prune", &["b", "--all", "--json"]));
    let mut r = json(&real);
    r["dry_run"] = serde_json::Value::Bool(true);
    assert_eq!(r, a);
}

#[test]
fn bad_selections_and_unknown_hosts_exit_2() {
    let env = setup();
    let (code, _, err) = Env::output(env.single("prune", &["nosuch", "--all"]));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("nosuch") && err.contains("known hosts: a, b"),
        "{err}"
    );
    let (code, _, err) = Env::output(env.single("prune", &["b"]));
    assert_eq!(code, Some(2));
    assert!(err.contains("--keep-list"), "{err}");
    let empty = env.tmp.path().join("empty");
    fs::write(&empty, "# nothing\n").unwrap();
    let (code, _, err) =
        Env::output(env.single("prune", &["b", "--keep-list", empty.to_str().unwrap()]));
    assert_eq!(code, Some(2));
    assert!(err.contains("--all"), "{err}");
    let (code, _, err) =
        Env::output(env.single("prune", &["b", "--keep-list", "/nonexistent/keep"]));
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/keep"), "{err}");
    assert_eq!(env.names("b").len(), 4);
}

#[test]
fn prune_while_the_daemon_runs_stays_pruned() {
    let env = setup();
    let mut d = env.start();
    let (code, _, _) = Env::output(env.single("prune", &["b", "--all"]));
    assert_eq!(code, Some(0));
    env.fetch("a", "marker", b"m");
    env.wait_everywhere("marker");
    env.all_stays_absent("b", &["x", "y", "z", "only-b"]);
    assert!(d.stop().success());
    let d = env.start();
    env.all_stays_absent("b", &["x", "y", "z", "only-b"]);
    drop(d);
}

/// Names the old reader lost (trimmed, taken for comments, split at the
/// newline), a backslash and a non-UTF-8 name, plus `gone.tar`.
fn awkward_names() -> (Env, Vec<Vec<u8>>) {
    let env = Env::new(&["a", "b"]);
    let kept: Vec<Vec<u8>> = [
        &b"keep me "[..],
        b" keep2",
        b"keep3\t",
        b"#hash.tar",
        b"new\nline.tar",
        b"back\\slash.tar",
        b"\xff.tar",
        b"end\r",
    ]
    .iter()
    .map(|n| n.to_vec())
    .collect();
    for n in kept.iter().chain([&b"gone.tar".to_vec()]) {
        fs::write(env.path("b", std::ffi::OsStr::from_bytes(n)), b"data").unwrap();
    }
    (env, kept)
}

fn prune_keeping(env: &Env, flag: &str, list: &[u8]) -> (Option<i32>, String, String) {
    let keep = env.tmp.path().join("keep");
    fs::write(&keep, list).unwrap();
    Env::output(env.single("prune", &["b", flag, keep.to_str().unwrap(), "--json"]))
}

#[test]
fn keep_list_keeps_every_listed_name_exactly_in_the_documented_form() {
    let (env, mut kept) = awkward_names();
    // One name per line, no trimming; `\#` for a leading hash, C-style
    // escapes for a newline, a backslash, raw bytes, a trailing CR (a raw
    // CR before the newline is a CRLF line ending); `#` lines are comments.
    let list = b"# kept in b\n\
        keep me \n\
        \\ keep2\n\
        keep3\\t\n\
        \\#hash.tar\n\
        new\\nline.tar\n\
        back\\\\slash.tar\n\
        \\xff.tar\n\
        \n\
        end\\r\r\n";
    let (code, out, err) = prune_keeping(&env, "--keep-list", list);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out)["files_removed"], 1, "{out}");
    kept.sort();
    assert_eq!(env.names("b"), kept);
}

#[test]
fn keep_list0_takes_nul_separated_names_as_they_are() {
    let (env, mut kept) = awkward_names();
    // As `find DIR -maxdepth 1 -type f -printf '%f\0'` writes them.
    let mut list = Vec::new();
    for n in &kept {
        list.extend_from_slice(n);
        list.push(0);
    }
    let (code, out, err) = prune_keeping(&env, "--keep-list0", &list);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out)["files_removed"], 1, "{out}");
    kept.sort();
    assert_eq!(env.names("b"), kept);
}

#[test]
fn a_keep_list_that_cannot_be_read_exactly_is_refused_and_removes_nothing() {
    let (env, _) = awkward_names();
    let before = env.names("b");
    for (flag, list, says) in [
        ("--keep-list", &b"ok\nbad\\q\n"[..], "line 2"),
        ("--keep-list", b"ok\ntrunc\\x4\n", "line 2"),
        ("--keep-list", b"nul\\x00\n", "line 1"),
        ("--keep-list", b"b/keep me \n", "not a path"),
        ("--keep-list0", b"./keep me \0", "not a path"),
    ] {
        let (code, _, err) = prune_keeping(&env, flag, list);
        assert_eq!(code, Some(2), "{flag} {list:?}: {err}");
        assert!(err.contains(says) && err.contains("keep"), "{err}");
        assert_eq!(env.names("b"), before);
    }
}

/// An admin used to eclean-dist writes `--older-than 6m` meaning six
/// months: a file fetched an hour ago stays, one 200 days old goes.
#[test]
fn older_than_reads_ages_as_eclean_dist_does_and_refuses_the_rest() {
    let env = setup();
    env.age("b", "x", 200 * DAY);
    env.age("b", "y", Duration::from_secs(3600));
    env.age("b", "z", 100 * DAY);
    env.age("b", "only-b", 2 * DAY);
    let (code, out, err) = Env::output(env.prune("b", &["--older-than", "6m", "--json"]));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out)["files_removed"], 1, "{out}");
    assert_eq!(
        env.names("b"),
        vec![b"only-b".to_vec(), b"y".to_vec(), b"z".to_vec()]
    );
    for (age, remain) in [("1y", 3), ("14w", 2), ("36h", 1)] {
        let (code, _, err) = Env::output(env.prune("b", &["--older-than", age]));
        assert_eq!(code, Some(0), "{age}: {err}");
        assert_eq!(env.names("b").len(), remain, "{age}");
    }
    // What eclean-dist would not take, and a zero age (every file).
    for age in ["6min", "5s", "1h30m", "180", "0d"] {
        let (code, _, err) = Env::output(env.prune("b", &["--older-than", age]));
        assert_eq!(code, Some(2), "{age}: {err}");
        let want = if age == "0d" {
            "use --all"
        } else {
            "m (months of 30 days)"
        };
        assert!(err.contains(want), "{age}: {err}");
    }
    assert_eq!(env.names("b"), vec![b"y".to_vec()]);
}

/// What `emerge --pretend --fetchonly --emptytree @world` prints on a
/// host: emerge's own messages, then one line of URLs per distfile
/// (mirrors first, percent-encoded names, a GitHub archive renamed on
/// download, a fetch-restricted file with no URL: an empty line).
const EMERGE_TRANSCRIPT: &str = "\
These are the packages that would be fetched, in order:

Calculating dependencies  ... done!
Dependency resolution took 3.87 s (backtrack: 0/20).

[ebuild   R    ] sys-devel/gcc-14.2.1_p20241221:14::gentoo  USE=\"cxx fortran (multilib) nls openmp pie sanitize ssp\" 0 KiB
[ebuild   R    ] dev-libs/libsigc++-3.6.0:3::gentoo  USE=\"-doc -test\" 0 KiB
[ebuild   R    ] app-misc/foo-1.2::gentoo  0 KiB

Total: 3 packages (3 reinstalls), Size of downloads: 0 KiB

https://distfiles.gentoo.org/distfiles/3b/gcc-14-20241221.tar.xz https://gcc.gnu.org/pub/gcc/snapshots/14-20241221/gcc-14-20241221.tar.xz 
https://distfiles.gentoo.org/distfiles/d1/gcc-14.2.0-patches-8.tar.xz https://dev.gentoo.org/~sam/distfiles/sys-devel/gcc/gcc-14.2.0-patches-8.tar.xz 
https://distfiles.gentoo.org/distfiles/5c/libsigc%2B%2B-3.6.0.tar.xz https://download.gnome.org/sources/libsigc++/3.6/libsigc++-3.6.0.tar.xz 
https://distfiles.gentoo.org/distfiles/7e/foo-1.2.tar.gz https://github.com/example/foo/archive/v1.2.tar.gz 


 * IMPORTANT: 2 news items need reading for repository 'gentoo'.
 * Use eselect news read to view new items.

";

/// A host's dir after a year: what its packages need, and what they no
/// longer do.
const NEEDED: [&str; 4] = [
    "gcc-14-20241221.tar.xz",
    "gcc-14.2.0-patches-8.tar.xz",
    "libsigc++-3.6.0.tar.xz",
    "foo-1.2.tar.gz",
];
const STALE: [&str; 2] = ["gcc-13.3.0.tar.xz", "firefox-120.0.source.tar.xz"];

fn client1() -> Env {
    let env = Env::new(&["server", "client1"]);
    for n in NEEDED.iter().chain(&STALE) {
        fs::write(env.path("client1", n), n.as_bytes()).unwrap();
    }
    env
}

fn sorted(v: &[&str]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = v.iter().map(|s| s.as_bytes().to_vec()).collect();
    v.sort();
    v
}

/// The keep-list recipe of docs/admin.md, run as written: `emerge` prints
/// the transcript above (on stderr, as Portage does), `distlink` is the
/// binary under test reading a config for this root.
#[test]
fn the_documented_keep_list_recipe_keeps_what_the_hosts_packages_need() {
    let env = client1();
    let doc = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/admin.md")).unwrap();
    let marker = "<!-- keep-list recipe: run by tests/prune_cmd.rs -->\n```sh\n";
    let start = doc.find(marker).expect("docs/admin.md has the recipe") + marker.len();
    let recipe = &doc[start..start + doc[start..].find("```").unwrap()];
    assert!(recipe.contains("--keep-urls"), "{recipe}");

    let bin_dir = env.tmp.path().join("bin");
    fs::create_dir(&bin_dir).unwrap();
    let transcript = env.tmp.path().join("transcript");
    fs::write(&transcript, EMERGE_TRANSCRIPT).unwrap();
    let cfg = env.config(&format!(
        "root = {:?}\nstate_dir = {:?}\nhosts = [\"server\", \"client1\"]\n",
        env.root, env.state
    ));
    let script = |name: &str, body: String| {
        let p = bin_dir.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut fs::metadata(&p).unwrap().permissions(),
            0o755,
        );
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    };
    script("emerge", format!("cat {:?} >&2", transcript));
    script(
        "distlink",
        format!(
            "sub=$1; shift; exec {:?} \"$sub\" --config {:?} \"$@\"",
            bin(),
            cfg
        ),
    );
    let work = env.tmp.path().join("work");
    fs::create_dir(&work).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("sh")
        .args(["-e", "-c", recipe])
        .current_dir(&work)
        .env("PATH", path)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{recipe}\n{stdout}\n{stderr}");
    for n in STALE {
        assert!(stdout.contains(&format!("would remove {n}")), "{stdout}");
        assert!(stdout.contains(&format!("removed {n}")), "{stdout}");
    }
    assert_eq!(env.names("client1"), sorted(&NEEDED));
}

/// Each way a keep list goes wrong holds the prune back or refuses it,
/// and removes nothing.
#[test]
fn a_keep_list_that_cannot_be_what_was_meant_removes_nothing() {
    let env = client1();
    let write = |name: &str, text: &str| {
        let p = env.tmp.path().join(name);
        fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let everything = sorted(&[&NEEDED[..], &STALE[..]].concat());
    // The transcript given as a keep list: the URL's line is named.
    let urls = write("client1.fetch", EMERGE_TRANSCRIPT);
    for dry in [false, true] {
        let mut args = vec!["--keep-list", urls.as_str()];
        if dry {
            args.push("--dry-run");
        }
        let (code, out, err) = Env::output(env.prune("client1", &args));
        assert_eq!(code, Some(2), "{out}{err}");
        assert!(
            err.contains(&urls) && err.contains("line 12:") && err.contains("--keep-urls"),
            "{err}"
        );
    }
    // A list of names made for another host: none is among client1's.
    let other = write("other", "linux-6.12.tar.xz\nglibc-2.40.tar.xz\n");
    for extra in [&[][..], &["--dry-run"], &["--older-than", "1h"]] {
        let mut args = vec!["--keep-list", other.as_str()];
        args.extend_from_slice(extra);
        let (code, out, err) = Env::output(env.prune("client1", &args));
        assert_eq!(code, Some(1), "{extra:?}: {out}{err}");
        assert!(
            err.contains("nothing removed") && err.contains("none of them"),
            "{err}"
        );
        assert_eq!(env.names("client1"), everything);
    }
    // A selection taking every file needs --all.
    for n in NEEDED.iter().chain(&STALE) {
        env.age("client1", n, 400 * DAY);
    }
    let (code, _, err) = Env::output(env.prune("client1", &["--older-than", "1y", "--dry-run"]));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("every file of host client1") && err.contains("--all"),
        "{err}"
    );
    assert_eq!(env.names("client1"), everything);
    // A trailing comment no longer hides the name: only the stale go.
    let commented = write(
        "commented",
        &NEEDED
            .iter()
            .map(|n| format!("{n}   # needed by @world\n"))
            .collect::<String>(),
    );
    let (code, _, err) = Env::output(env.prune("client1", &["--keep-list", &commented]));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(env.names("client1"), sorted(&NEEDED));
    // The forced prune: a list naming none of the files, but not all go.
    env.age("client1", NEEDED[0], Duration::from_secs(7200));
    let (code, _, err) = Env::output(env.prune(
        "client1",
        &["--keep-list", &other, "--older-than", "1d", "--force"],
    ));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(env.names("client1"), sorted(&NEEDED[..1]));
}
