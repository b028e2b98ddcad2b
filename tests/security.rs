//! Semantics 9: client-controlled dirs cannot make distlink touch anything
//! outside the root.

mod common;
use common::*;

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};

#[test]
fn a_host_dir_swapped_for_a_symlink_while_running_leads_nowhere() {
    let env = Env::new(&["a", "b"]);
    let outside = env.tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let d = env.start();
    // Swap atomically (the daemon recreates a host dir that merely vanishes).
    let exchange = |x: &std::path::Path, y: &std::path::Path| {
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            x,
            nix::fcntl::AT_FDCWD,
            y,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
        .unwrap()
    };
    symlink(&outside, env.root.join("b.old")).unwrap();
    exchange(&env.root.join("b.old"), &env.dir("b"));
    env.fetch("a", "payload", b"p");
    d.wait_log("symlink", WAIT);
    std::thread::sleep(QUIET);
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written through the symlink"
    );
    assert!(!env.root.join("b.old/payload").exists());
    assert_eq!(fs::metadata(env.path("a", "payload")).unwrap().nlink(), 1);
    // Put a real dir back: b is reopened, and owed the file.
    fs::create_dir(env.root.join("b.new")).unwrap();
    exchange(&env.root.join("b.new"), &env.dir("b"));
    fs::remove_file(env.root.join("b.new")).unwrap();
    env.wait_everywhere("payload");
}

#[test]
fn a_file_swapped_for_a_symlink_is_not_followed() {
    let env = Env::new(&["a", "b"]);
    let secret = env.tmp.path().join("secret");
    fs::write(&secret, b"secret").unwrap();
    let d = env.start();
    // Written in place, then replaced by a symlink before it settles.
    env.write("a", "swap", b"harmless");
    fs::remove_file(env.path("a", "swap")).unwrap();
    symlink(&secret, env.path("a", "swap")).unwrap();
    env.stays_absent("b", "swap");
    assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);
    drop(d);
}
