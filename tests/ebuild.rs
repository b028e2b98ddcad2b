//! The Gentoo ebuilds in packaging/gentoo: the versioned one is named after
//! Cargo.toml's version and its CRATES list is exactly the crates.io
//! packages of Cargo.lock (regenerate it with pycargoebuild when this
//! fails: see packaging/gentoo/README.md); the live one installs the same
//! way and states the same licenses; both are valid bash and name only
//! files that exist. Offline: nothing is fetched.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const PKG: &str = "packaging/gentoo/app-portage/distlink";

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn read(p: &str) -> String {
    std::fs::read_to_string(repo(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// `key = "value"` in a TOML block's lines.
fn toml_value<'a>(block: &'a str, key: &str) -> Option<&'a str> {
    block.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.trim_start().strip_prefix('=')?;
        Some(rest.trim().trim_matches('"'))
    })
}

/// Every crates.io package Cargo.lock pins, as `name@version`.
fn locked_crates() -> BTreeSet<String> {
    let lock = read("Cargo.lock");
    let mut set = BTreeSet::new();
    for block in lock.split("[[package]]").skip(1) {
        let name = toml_value(block, "name").expect("package name");
        let version = toml_value(block, "version").expect("package version");
        match toml_value(block, "source") {
            Some(s) if s.starts_with("registry+https://github.com/rust-lang/crates.io-index") => {
                set.insert(format!("{name}@{version}"));
            }
            // The workspace's own package.
            None => assert_eq!(name, "distlink", "a path dependency: {name}"),
            Some(s) => panic!("{name} comes from {s}: the ebuild would need GIT_CRATES"),
        }
    }
    set
}

/// The value of a multi-line `VAR="…"` assignment.
fn ebuild_var(text: &str, var: &str) -> String {
    let start = text
        .find(&format!("\n{var}=\""))
        .unwrap_or_else(|| panic!("no {var}= in the ebuild"))
        + var.len()
        + 3;
    let len = text[start..].find('"').expect("closing quote");
    text[start..start + len].to_string()
}

fn package_version() -> String {
    let toml = read("Cargo.toml");
    toml_value(&toml, "version")
        .expect("package version")
        .to_string()
}

#[test]
fn the_versioned_ebuilds_crates_are_exactly_cargo_locks() {
    let version = package_version();
    let ebuild = read(&format!("{PKG}/distlink-{version}.ebuild"));
    let crates: Vec<String> = ebuild_var(&ebuild, "CRATES")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let listed: BTreeSet<String> = crates.iter().cloned().collect();
    assert_eq!(listed.len(), crates.len(), "a crate is listed twice");
    let locked = locked_crates();
    let missing: Vec<_> = locked.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&locked).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "CRATES is out of step with Cargo.lock (run pycargoebuild, see \
         packaging/gentoo/README.md)\nmissing: {missing:?}\nnot in Cargo.lock: {stale:?}"
    );
    // Its Rust is the one Cargo.toml asks for.
    let toml = read("Cargo.toml");
    let rust = toml_value(&toml, "rust-version").expect("rust-version");
    let min = ebuild_var(&ebuild, "RUST_MIN_VER");
    assert!(
        min == rust || min == format!("{rust}.0"),
        "RUST_MIN_VER {min} is not Cargo.toml's rust-version {rust}"
    );
}

#[test]
fn the_live_ebuild_installs_the_same_files_with_the_same_licenses() {
    let version = package_version();
    let versioned = read(&format!("{PKG}/distlink-{version}.ebuild"));
    let live = read(&format!("{PKG}/distlink-9999.ebuild"));
    let install = |t: &str| t[t.find("\nsrc_install()").expect("src_install")..].to_string();
    assert_eq!(install(&live), install(&versioned), "src_install and after");
    let licenses = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("LICENSE"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(licenses(&live), licenses(&versioned));
    assert!(
        licenses(&versioned)
            .iter()
            .any(|l| l == "LICENSE=\"GPL-2\"")
    );
    assert!(live.contains("inherit cargo git-r3"), "live: git-r3");
    assert!(live.contains("cargo_live_src_unpack"));
    assert!(
        !live.contains("\nKEYWORDS="),
        "a live ebuild has no keywords"
    );

    // Through the eclasses' helpers, every file `make install` installs.
    for helper in [
        "cargo_src_install",
        "doman",
        "newbashcomp",
        "dozshcomp",
        "dofishcomp",
        "systemd_dounit",
        "newinitd",
        "newconfd",
        "dodoc",
    ] {
        assert!(
            versioned.contains(helper),
            "the ebuild does not call {helper}"
        );
    }
    for (inherit, helper) in [
        ("shell-completion", "dofishcomp"),
        ("systemd", "systemd_dounit"),
    ] {
        assert!(
            versioned.contains(inherit),
            "{helper} needs {inherit}.eclass"
        );
    }
    // Every source file src_install names exists.
    let all = install(&versioned);
    let body = &all[..all.find("\n}\n").expect("end of src_install")];
    for word in body.split_whitespace() {
        let w = word.trim_matches('"');
        if w.contains('/') && !w.contains('$') {
            assert!(
                repo(w).is_file(),
                "the ebuild installs {w}, which does not exist"
            );
        }
    }
    let makefile = read("Makefile");
    for src in [
        "systemd/distlink.service",
        "openrc/distlink",
        "openrc/distlink.confd",
        "config/distlink.toml",
    ] {
        assert!(body.contains(src) && makefile.contains(src), "{src}");
    }
    // Never the configuration itself: it is the admin's to write.
    assert!(!body.contains("/etc/distlink.toml"));
}

#[test]
fn the_ebuilds_are_valid_bash_and_the_metadata_is_xml() {
    for e in [
        "distlink-9999.ebuild",
        &format!("distlink-{}.ebuild", package_version()),
    ] {
        let out = Command::new("bash")
            .arg("-n")
            .arg(repo(&format!("{PKG}/{e}")))
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{e}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta = read(&format!("{PKG}/metadata.xml"));
    assert!(meta.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
    assert!(
        meta.contains("<!DOCTYPE pkgmetadata SYSTEM \"https://www.gentoo.org/dtd/metadata.dtd\">")
    );
    assert!(meta.trim_end().ends_with("</pkgmetadata>"));
    assert_eq!(
        read("packaging/gentoo/profiles/repo_name").trim(),
        "distlink"
    );
}

/// The ebuild's src_install, run by bash with the eclass and Portage
/// helpers it calls replaced by what they do (the paths and modes of
/// ::gentoo's doman, newbashcomp, dozshcomp, dofishcomp, systemd_dounit,
/// newinitd, newconfd, dodoc), puts in its image exactly the tree
/// `make install PREFIX=/usr` does (with Gentoo's versioned doc dir).
#[test]
fn the_ebuilds_src_install_installs_what_make_install_installs() {
    if !common::tools::have("make", "make") {
        return;
    }
    let version = package_version();
    let pf = format!("distlink-{version}");
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("image");
    let t = tmp.path().join("T");
    std::fs::create_dir_all(&t).unwrap();
    let bin = env!("CARGO_BIN_EXE_distlink");
    let script = format!(
        r#"
set -e
die() {{ echo "die: $*" >&2; exit 1; }}
inherit() {{ :; }}
ins() {{ install -D -m "$1" "$2" "${{ED}}$3"; }}
cargo_src_install() {{ ins 0755 "$BIN" /usr/bin/distlink; }}
cargo_target_dir() {{ dirname "$BIN"; }}
doman() {{ local f; for f; do ins 0644 "$f" "/usr/share/man/man1/${{f##*/}}"; done; }}
newbashcomp() {{ ins 0644 "$1" "/usr/share/bash-completion/completions/$2"; }}
dozshcomp() {{ local f; for f; do ins 0644 "$f" "/usr/share/zsh/site-functions/${{f##*/}}"; done; }}
dofishcomp() {{ local f; for f; do ins 0644 "$f" "/usr/share/fish/vendor_completions.d/${{f##*/}}"; done; }}
systemd_dounit() {{ local f; for f; do ins 0644 "$f" "/usr/lib/systemd/system/${{f##*/}}"; done; }}
newinitd() {{ ins 0755 "$1" "/etc/init.d/$2"; }}
newconfd() {{ ins 0644 "$1" "/etc/conf.d/$2"; }}
dodoc() {{ local f; for f; do ins 0644 "$f" "/usr/share/doc/${{PF}}/${{f##*/}}"; done; }}
EAPI=8 PV={version} P={pf} PF={pf}
source "$EBUILD"
cd "$SRC"
src_install
"#
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("BIN", bin)
        .env("ED", &image)
        .env("T", &t)
        .env("SRC", env!("CARGO_MANIFEST_DIR"))
        .env("EBUILD", repo(&format!("{PKG}/distlink-{version}.ebuild")))
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "src_install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dest = tmp.path().join("dest");
    let out = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .arg("install")
        .arg(format!("DESTDIR={}", dest.display()))
        .arg("PREFIX=/usr")
        .arg(format!("DOCDIR=/usr/share/doc/{pf}"))
        .arg(format!("DISTLINK={bin}"))
        .arg(format!("GEN={}", tmp.path().join("gen").display()))
        .output()
        .expect("make");
    assert!(
        out.status.success(),
        "make install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        tree(&image),
        tree(&dest),
        "the ebuild's image and make install's tree"
    );
}

/// Every file under `root`: relative path, mode, a digest of its contents.
fn tree(root: &Path) -> Vec<(String, u32, u64)> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u32, u64)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                walk(root, &p, out);
            } else {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&p).unwrap().hash(&mut h);
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, m.permissions().mode() & 0o7777, h.finish()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}
