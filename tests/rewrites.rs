//! Every host's copy of a distributed file is one inode, so a client that
//! writes to it in place changes what every host gets. distlink cannot
//! prevent that (the client owns the file); it says so at once, naming the
//! host and the file, and `status`/`check` show it until it is resolved.

mod common;
use common::*;

use std::fs;
use std::io::Write;

#[test]
fn a_distributed_file_rewritten_or_appended_in_place_is_reported_until_resolved() {
    let env = Env::new(&["a", "b", "c"]);
    let mut d = env.start();
    env.fetch("a", "rewritten.tar", b"original bytes");
    env.fetch("a", "appended.tar", b"original");
    env.wait_everywhere("rewritten.tar");
    env.wait_everywhere("appended.tar");
    assert_eq!(env.check().0, Some(0));
    // b truncates and rewrites one; c appends to the other.
    fs::write(env.path("b", "rewritten.tar"), b"other bytes!").unwrap();
    let mut f = fs::File::options()
        .append(true)
        .open(env.path("c", "appended.tar"))
        .unwrap();
    f.write_all(b" and more").unwrap();
    drop(f);
    d.wait_log("written in place", WAIT);
    assert!(
        wait_until(WAIT, || d.count_log("written in place") >= 2),
        "{}",
        d.log()
    );
    let log = d.log();
    let line = |name: &str| {
        log.lines()
            .find(|l| l.contains("written in place") && l.contains(name))
            .unwrap_or_else(|| panic!("no warning for {name}: {log}"))
            .to_string()
    };
    assert!(line("rewritten.tar").contains("host=b"), "{log}");
    assert!(line("appended.tar").contains("host=c"), "{log}");
    // Nothing is relinked or copied: every host still has the one inode.
    assert!(env.same_inode(&["a", "b", "c"], "rewritten.tar"));
    let (code, out) = env.check();
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        out.matches("written in place after it was distributed")
            .count(),
        2,
        "{out}"
    );
    // Resolved: one file is deleted from every host (Portage fetches it
    // again), the other accepted as it is now (`sync --adopt`).
    for h in ["a", "b", "c"] {
        fs::remove_file(env.path(h, "rewritten.tar")).unwrap();
    }
    assert!(d.stop().success());
    let out = env.sync(&["--adopt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, out) = env.check();
    assert_eq!(code, Some(0), "{out}");
}
