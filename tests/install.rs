//! `make install DESTDIR=… PREFIX=…` puts exactly the expected tree in
//! place, each file what its source says (the binary, the pages and
//! completions it generates, the service files naming the installed
//! binary, the example config in the doc dir), never /etc/distlink.toml,
//! and never an admin's conf.d. Uses the binary already built (make's
//! DISTLINK=). Needs make (skipped when missing, unless
//! DISTLINK_REQUIRE_TOOLS=1, which CI sets).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bin, tools};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// `make install` with these variables; panics when it fails.
fn make_install(tmp: &Path, dest: &Path, vars: &[&str]) {
    let out = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .arg("install")
        .arg(format!("DESTDIR={}", dest.display()))
        .arg(format!("DISTLINK={}", bin()))
        .arg(format!("GEN={}", tmp.join("gen").display()))
        .args(vars)
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "make install failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `root`: relative path → (mode bits, contents).
fn tree(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(
                    rel,
                    (m.permissions().mode() & 0o7777, fs::read(&p).unwrap()),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn run(args: &[&str]) -> Vec<u8> {
    let out = Command::new(bin()).args(args).output().expect("distlink");
    assert!(out.status.success(), "distlink {args:?}");
    out.stdout
}

#[test]
fn make_install_puts_every_file_in_place_as_its_source_says() {
    if !tools::have("make", "make") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = tmp.path().join("dest");
    make_install(tmp.path(), &dest, &["PREFIX=/usr"]);
    let got = tree(&dest);

    // What each installed file must be.
    let pages = tmp.path().join("pages");
    fs::create_dir(&pages).unwrap();
    let st = Command::new(bin())
        .args(["man", "--dir"])
        .arg(&pages)
        .status()
        .unwrap();
    assert!(st.success());
    let mut want: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
    let mut put = |path: &str, mode: u32, bytes: Vec<u8>| {
        want.insert(path.to_string(), (mode, bytes));
    };
    put("usr/bin/distlink", 0o755, fs::read(bin()).unwrap());
    for e in fs::read_dir(&pages).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        put(
            &format!("usr/share/man/man1/{name}"),
            0o644,
            fs::read(e.path()).unwrap(),
        );
    }
    put(
        "usr/share/bash-completion/completions/distlink",
        0o644,
        run(&["completions", "bash"]),
    );
    put(
        "usr/share/zsh/site-functions/_distlink",
        0o644,
        run(&["completions", "zsh"]),
    );
    put(
        "usr/share/fish/vendor_completions.d/distlink.fish",
        0o644,
        run(&["completions", "fish"]),
    );
    let source = |p: &str| fs::read(repo(p)).unwrap();
    put(
        "usr/lib/systemd/system/distlink.service",
        0o644,
        source("systemd/distlink.service"),
    );
    put("etc/init.d/distlink", 0o755, source("openrc/distlink"));
    put(
        "etc/conf.d/distlink",
        0o644,
        source("openrc/distlink.confd"),
    );
    put(
        "usr/share/doc/distlink/distlink.toml",
        0o644,
        source("config/distlink.toml"),
    );
    put(
        "usr/share/doc/distlink/README.md",
        0o644,
        source("README.md"),
    );
    put(
        "usr/share/doc/distlink/admin.md",
        0o644,
        source("docs/admin.md"),
    );

    let names = |m: &BTreeMap<String, (u32, Vec<u8>)>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want), "the installed tree");
    for (path, (mode, bytes)) in &want {
        let (gmode, gbytes) = &got[path];
        assert_eq!(gmode, mode, "mode of {path}");
        assert!(gbytes == bytes, "{path} differs from its source");
    }
    assert!(
        pages.join("distlink-run.1").exists() && want.len() > 12,
        "a page per subcommand"
    );
    assert!(!dest.join("etc/distlink.toml").exists());
}

#[test]
fn another_prefix_is_named_in_the_service_files_and_an_admins_confd_is_kept() {
    if !tools::have("make", "make") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = tmp.path().join("dest");
    let confd = dest.join("etc/conf.d/distlink");
    fs::create_dir_all(confd.parent().unwrap()).unwrap();
    fs::write(&confd, "DISTLINK_OPTS=\"--log-format json\"\n").unwrap();
    make_install(tmp.path(), &dest, &["PREFIX=/usr/local"]);

    assert!(dest.join("usr/local/bin/distlink").is_file());
    let unit = fs::read_to_string(dest.join("usr/local/lib/systemd/system/distlink.service"))
        .expect("unit under the prefix");
    let init = fs::read_to_string(dest.join("etc/init.d/distlink")).expect("init script");
    for (what, text) in [("unit", &unit), ("init script", &init)] {
        assert!(
            text.contains("/usr/local/bin/distlink"),
            "the {what} names the installed binary:\n{text}"
        );
        assert!(
            !text.contains("/usr/bin/distlink"),
            "the {what} still names /usr/bin/distlink:\n{text}"
        );
    }
    // Apart from the binary's path, the files are their sources.
    let src = fs::read_to_string(repo("systemd/distlink.service")).unwrap();
    assert_eq!(unit.replace("/usr/local/bin/", "/usr/bin/"), src);
    assert_eq!(
        fs::read_to_string(&confd).unwrap(),
        "DISTLINK_OPTS=\"--log-format json\"\n",
        "an existing conf.d is the admin's"
    );
    assert!(dest.join("usr/local/share/man/man1/distlink.1").is_file());
    assert!(!dest.join("etc/distlink.toml").exists());
}
