//! Semantics 1: which entries are candidates. Only regular, non-setid files
//! with non-ignored names are ever linked; nothing else is followed.

mod common;
use common::*;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};

#[test]
fn temp_lock_and_failure_names_are_never_linked() {
    let env = Env::new(&["a", "b"]);
    let d = env.start();
    let ignored = [
        "foo.tar.gz.__download__",
        "foo.tar.gz._checksum_failure_.x1y2",
        ".foo.tar.gz.portage_lockfile",
        "..foo.tar.gz.hardlock-a-123",
        ".nfs0000000000001234",
        ".rsync-tmp.abc",
    ];
    for n in ignored {
        env.write("a", n, b"data");
    }
    // A marker file that is linked proves the daemon saw the events.
    env.fetch("a", "marker", b"m");
    env.wait_everywhere("marker");
    env.all_stays_absent("b", &ignored);
    drop(d);
}

#[test]
fn configured_ignore_globs_are_honoured() {
    let env = Env::new(&["a", "b"]);
    let cfg = env.config("ignore = [\"*.part\", \"scratch-*\"]\n");
    let d = env.start_with(&["--config", cfg.to_str().unwrap()]);
    env.fetch("a", "x.part", b"p");
    env.fetch("a", "scratch-1", b"s");
    env.fetch("a", "real.tar.xz", b"r");
    env.wait_everywhere("real.tar.xz");
    env.all_stays_absent("b", &["x.part", "scratch-1"]);
    drop(d);
}

#[test]
fn symlinks_dirs_fifos_sockets_and_setid_files_are_never_linked() {
    let env = Env::new(&["a", "b"]);
    let outside = env.tmp.path().join("secret");
    fs::write(&outside, b"secret").unwrap();
    let d = env.start();
    symlink(&outside, env.path("a", "evil-link")).unwrap();
    symlink("/etc/shadow", env.path("a", "shadow")).unwrap();
    fs::create_dir(env.path("a", "git3-src")).unwrap();
    fs::write(env.path("a", "git3-src").join("inside"), b"x").unwrap();
    nix::unistd::mkfifo(
        &env.path("a", "fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(env.path("a", "sock")).unwrap();
    // A device node (needs root; a client with root_squash cannot make one).
    let _ = nix::sys::stat::mknod(
        &env.path("a", "null-dev"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    );
    env.write("a", "setuid", b"x");
    fs::set_permissions(env.path("a", "setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    env.write("a", "setgid", b"x");
    fs::set_permissions(env.path("a", "setgid"), fs::Permissions::from_mode(0o2755)).unwrap();
    // A rename of a setid file into the dir, too.
    let staged = env.root.join("staged");
    fs::write(&staged, b"y").unwrap();
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o4755)).unwrap();
    fs::rename(&staged, env.path("a", "setuid-moved")).unwrap();

    env.fetch("a", "marker", b"m");
    env.wait_everywhere("marker");
    // Let in-place writes settle, then make sure none were linked.
    std::thread::sleep(std::time::Duration::from_millis(800));
    env.all_stays_absent(
        "b",
        &[
            "evil-link",
            "shadow",
            "git3-src",
            "fifo",
            "sock",
            "setuid",
            "setgid",
            "setuid-moved",
        ],
    );
    // The outside file was not touched, its link count is 1.
    assert_eq!(
        fs::metadata(&outside)
            .map(|m| std::os::unix::fs::MetadataExt::nlink(&m))
            .unwrap(),
        1
    );
    // A full scan (sync after stop) also ignores them.
    let mut d = d;
    assert!(d.stop().success());
    let out = env.sync(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.names("b"), vec![b"marker".to_vec()]);
}

#[test]
fn non_utf8_and_newline_names_work_like_any_other() {
    let env = Env::new(&["a", "b", "c"]);
    let d = env.start();
    let weird: [&[u8]; 4] = [
        b"caf\xe9-1.0.tar.gz",
        b"line\nbreak.tar",
        b"-rf",
        b"\xff\xfe\xfd",
    ];
    for n in weird {
        env.fetch("a", OsStr::from_bytes(n), n);
    }
    for n in weird {
        env.wait_everywhere(OsStr::from_bytes(n));
        assert_eq!(fs::read(env.path("c", OsStr::from_bytes(n))).unwrap(), n);
    }
    // A 255-byte name.
    let long = "x".repeat(255);
    env.move_in("b", &long, b"long");
    env.wait_everywhere(&long);
    drop(d);
}
