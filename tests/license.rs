//! The LICENSE file says what Cargo.toml's `license` field says: a change
//! to one without the other fails here.

use std::path::Path;

fn repo(p: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The SPDX id in Cargo.toml's `[package]` table.
fn cargo_license() -> String {
    let manifest: toml::Value = toml::from_str(&repo("Cargo.toml")).expect("Cargo.toml parses");
    manifest["package"]["license"]
        .as_str()
        .expect("Cargo.toml has package.license")
        .to_string()
}

#[test]
fn the_license_file_is_the_text_of_the_license_cargo_toml_names() {
    let id = cargo_license();
    // The heading each SPDX id's text starts with.
    let heading: &[&str] = match id.as_str() {
        "GPL-2.0-only" | "GPL-2.0-or-later" => {
            &["GNU GENERAL PUBLIC LICENSE", "Version 2, June 1991"]
        }
        other => {
            panic!("Cargo.toml names license {other}: add its heading here and its text to LICENSE")
        }
    };
    let text = repo("LICENSE");
    let head: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(2)
        .collect();
    assert_eq!(
        head, heading,
        "LICENSE does not start like the text of {id}"
    );
    // The whole text, where the system ships it (Debian: base-files).
    let system = Path::new("/usr/share/common-licenses/GPL-2");
    if let Ok(want) = std::fs::read_to_string(system) {
        assert!(text == want, "LICENSE differs from {}", system.display());
    }
}
