//! Prunes stay final under races: two hosts fetching one name at the same
//! moment, a prune in the middle of a merge, a host that fetched an owed
//! file itself. A host that holds a name in any form has never missed it,
//! so it is never owed that name.

mod common;
use common::*;

use nix::sys::signal::Signal;
use std::fs;
use std::process::Command;
use std::time::Duration;

/// Stages `data` under a dot-name (never a candidate) in `host`, so that a
/// later rename publishes it at once.
fn stage(env: &Env, host: &str, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = env.path(host, format!(".stage-{name}"));
    fs::write(&p, data).unwrap();
    p
}

/// SIGHUP makes every owed link due at once; returns once the reload is done.
fn reload_and_retry(d: &Daemon) {
    let before = d.count_log("config reloaded");
    d.signal(Signal::SIGHUP);
    assert!(
        wait_until(WAIT, || d.count_log("config reloaded") > before),
        "no reload; log:\n{}",
        d.log()
    );
}

#[test]
fn two_hosts_fetching_one_name_at_once_then_pruning_it_never_get_it_back() {
    let env = Env::new(&["a", "b", "c"]);
    let d = env.start();
    let mut raced = 0;
    let mut round = 0;
    // Repeated until distlink's link into b has lost the race to b's own
    // rename (EEXIST) at least twice.
    while raced < 2 {
        round += 1;
        assert!(
            round <= 20,
            "the race was hit {raced} times in 20 rounds; log:\n{}",
            d.log()
        );
        let names: Vec<String> = (0..60).map(|k| format!("r{round}-{k}.tar")).collect();
        for (k, n) in names.iter().enumerate() {
            let data = format!("same bytes {n}").into_bytes();
            let sa = stage(&env, "a", n, &data);
            let sb = stage(&env, "b", n, &data);
            fs::rename(&sa, env.path("a", n)).unwrap();
            // 0 to 2 ms apart, as a fleet updating together; mostly within
            // the daemon's reaction time, where the link and b's rename race.
            std::thread::sleep(Duration::from_micros((k as u64 * 37) % [400, 2000][k % 2]));
            fs::rename(&sb, env.path("b", n)).unwrap();
        }
        for n in &names {
            env.wait_everywhere(n);
        }
        for n in &names {
            fs::remove_file(env.path("a", n)).unwrap();
            fs::remove_file(env.path("b", n)).unwrap();
        }
        reload_and_retry(&d);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        env.all_stays_absent("a", &names);
        env.all_stays_absent("b", &names);
        raced = d.count_log("EEXIST");
    }
    let (_, check) = env.check();
    assert!(!check.contains("link owed"), "{check}");
    assert!(!d.log().contains("will retry"), "{}", d.log());
}

#[test]
fn a_host_pruning_its_fresh_copy_during_the_merge_does_not_get_the_file_back() {
    let env = Env::new(&["a", "b", "c"]);
    let d = env.start();
    // Large enough that comparing it takes a while: the prune lands during
    // the comparison, before the exchange.
    let data = vec![7u8; 96 << 20];
    env.fetch("a", "big.tar", &data);
    env.wait_everywhere("big.tar");
    let mut hit = false;
    for (round, delay_ms) in [5u64, 15, 30, 60, 100, 150].into_iter().enumerate() {
        // c prunes it, fetches it again (a new inode, same bytes), then
        // prunes the fresh copy while distlink merges it into the shared one.
        fs::remove_file(env.path("c", "big.tar")).unwrap();
        let s = stage(&env, "c", "big.tar", &data);
        let before = d.count_log("merge");
        fs::rename(&s, env.path("c", "big.tar")).unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        fs::remove_file(env.path("c", "big.tar")).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        reload_and_retry(&d);
        env.stays_absent("c", "big.tar");
        hit |= d.log().contains("changed before merge") || d.count_log("merge") > before;
        assert!(
            env.same_inode(&["a", "b"], "big.tar"),
            "round {round}: a and b lost the file"
        );
        // Put it back in c for the next round.
        fs::hard_link(env.path("a", "big.tar"), env.path("c", "big.tar")).unwrap();
    }
    assert!(hit, "no round hit the merge; log:\n{}", d.log());
    let (_, check) = env.check();
    assert!(!check.contains("link owed"), "{check}");
}

#[test]
fn a_host_that_fetched_an_owed_file_itself_and_pruned_it_is_not_given_it_again() {
    // With c holding it too, a's inode has the most links: b's own copy is
    // merged into it, so the owed generation is still there to hand out.
    let env = Env::new(&["a", "b", "c"]);
    if !Command::new("chattr")
        .arg("+i")
        .arg(env.dir("b"))
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("skipped: chattr +i does not work here (needs root on ext4/xfs/btrfs)");
        return;
    }
    let _ = Command::new("chattr").arg("-i").arg(env.dir("b")).status();
    let d = env.start();
    // b cannot take the link: it is owed.
    let _ = Command::new("chattr").arg("+i").arg(env.dir("b")).status();
    env.fetch("a", "owed.tar", b"owed");
    d.wait_log("will retry", WAIT);
    let _ = Command::new("chattr").arg("-i").arg(env.dir("b")).status();
    // Before the retry, b fetches the file itself and prunes it.
    env.fetch("b", "owed.tar", b"owed");
    std::thread::sleep(Duration::from_millis(300));
    fs::remove_file(env.path("b", "owed.tar")).unwrap();
    reload_and_retry(&d);
    env.stays_absent("b", "owed.tar");
    let (code, check) = env.check();
    assert!(!check.contains("link owed"), "{check}");
    assert_eq!(code, Some(0), "{check}");
}

#[test]
fn simultaneous_different_downloads_of_one_name_warn_once_per_conflict() {
    let env = Env::new(&["a", "b", "c"]);
    let mut d = env.start();
    let names: Vec<String> = (0..40).map(|k| format!("c{k}.tar")).collect();
    for (k, n) in names.iter().enumerate() {
        let sa = stage(&env, "a", n, format!("version A of {n}").as_bytes());
        let sb = stage(&env, "b", n, format!("version B of {n}").as_bytes());
        fs::rename(&sa, env.path("a", n)).unwrap();
        std::thread::sleep(Duration::from_micros((k as u64 * 53) % 2000));
        fs::rename(&sb, env.path("b", n)).unwrap();
    }
    for n in &names {
        assert!(
            wait_until(WAIT, || env.exists("c", n)),
            "{n} never reached c"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    reload_and_retry(&d); // a rescan: the conflicts are known, no new warning
    assert!(d.stop().success());
    let warned = d.count_log("conflict: same name, different content");
    assert_eq!(warned, 40, "one warning per conflict; log:\n{}", d.log());
    assert!(!d.log().contains("will retry"), "{}", d.log());
    // A restart knows them too.
    let mut d = env.start();
    assert!(d.stop().success());
    assert_eq!(d.count_log("conflict: same name"), 0, "{}", d.log());
    let (code, check) = env.check();
    assert_eq!(code, Some(1));
    assert_eq!(check.matches("conflict:").count(), 40, "{check}");
    assert!(!check.contains("link owed"), "{check}");
}

#[test]
fn a_different_copy_still_settling_elsewhere_is_not_linked_into_a_host_that_pruned_the_name() {
    let env = Env::new(&["a", "b", "c"]);
    let d = env.start();
    // c writes its own version in place (complete only after the settle
    // time), while a's version is renamed in and distributed at once.
    env.write("c", "n.tar", b"c's own, longer version");
    env.fetch("a", "n.tar", b"version of a");
    assert!(wait_until(WAIT, || env.same_inode(&["a", "b"], "n.tar")));
    // b prunes the name before c's version settles.
    fs::remove_file(env.path("b", "n.tar")).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    env.stays_absent("b", "n.tar");
    assert_eq!(
        fs::read(env.path("c", "n.tar")).unwrap(),
        b"c's own, longer version"
    );
    drop(d);
}

/// b's `n.tar` was distributed, then pruned by a and c. Now a fetches a
/// different version while c fetches b's again, both before distlink looks:
/// a's arrival finds c's copy already there (and records it). c's copy is
/// still merged into b's at its own arrival, not only by the next scan.
#[test]
fn a_copy_fetched_alongside_a_different_version_still_merges_with_its_identical_copy() {
    let env = Env::new(&["a", "b", "c"]);
    let mut d = env.start();
    env.fetch("b", "n.tar", b"version of b");
    env.wait_everywhere("n.tar");
    fs::remove_file(env.path("a", "n.tar")).unwrap();
    fs::remove_file(env.path("c", "n.tar")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Both renames land while distlink is not looking; a's event is first.
    let sa = stage(&env, "a", "n.tar", b"a's newer version, longer");
    let sc = stage(&env, "c", "n.tar", b"version of b");
    d.signal(Signal::SIGSTOP);
    fs::rename(&sa, env.path("a", "n.tar")).unwrap();
    fs::rename(&sc, env.path("c", "n.tar")).unwrap();
    d.signal(Signal::SIGCONT);
    assert!(
        wait_until(WAIT, || env.same_inode(&["b", "c"], "n.tar")),
        "c's copy was never merged with b's identical one; log:\n{}",
        d.log()
    );
    assert_eq!(
        fs::read(env.path("a", "n.tar")).unwrap(),
        b"a's newer version, longer"
    );
    // The conflict is recorded as it is now: two versions, not three.
    assert!(d.stop().success());
    let (_, check) = env.check();
    assert!(check.contains("n.tar: 2 versions"), "{check}");
}

/// The same, found by the start-up scan: while distlink was stopped, a got
/// a different version and c fetched b's again. The scan distributes a's
/// (recording c's as a copy present), and still merges c's into b's.
#[test]
fn a_copy_found_by_the_scan_beside_a_different_new_version_merges_with_its_identical_copy() {
    let env = Env::new(&["a", "b", "c"]);
    let mut d = env.start();
    env.fetch("b", "n.tar", b"version of b");
    env.wait_everywhere("n.tar");
    fs::remove_file(env.path("a", "n.tar")).unwrap();
    fs::remove_file(env.path("c", "n.tar")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.stop().success());
    env.fetch("a", "n.tar", b"a's newer version, longer");
    env.fetch("c", "n.tar", b"version of b");
    for h in ["a", "c"] {
        env.age(h, "n.tar", Duration::from_secs(3600));
    }
    let d = env.start();
    assert!(
        env.same_inode(&["b", "c"], "n.tar"),
        "c's copy was not merged with b's identical one at start-up; log:\n{}",
        d.log()
    );
    assert_eq!(
        fs::read(env.path("a", "n.tar")).unwrap(),
        b"a's newer version, longer"
    );
    drop(d);
}

/// Like the above, but c writes its copy in place: a's arrival records it
/// half-written, and c's copy merges with b's once its write is complete.
#[test]
fn a_copy_written_in_place_while_another_host_fetched_merges_once_complete() {
    use std::io::Write;
    let env = Env::new(&["a", "b", "c"]);
    let d = env.start();
    env.fetch("b", "n.tar", b"version of b");
    env.wait_everywhere("n.tar");
    fs::remove_file(env.path("a", "n.tar")).unwrap();
    fs::remove_file(env.path("c", "n.tar")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut c = fs::File::create(env.path("c", "n.tar")).unwrap();
    c.write_all(b"version").unwrap();
    c.flush().unwrap();
    env.fetch("a", "n.tar", b"a's newer version, longer");
    d.wait_log("conflict: same name", WAIT);
    c.write_all(b" of b").unwrap();
    drop(c);
    assert!(
        wait_until(WAIT, || env.same_inode(&["b", "c"], "n.tar")),
        "c's copy was never merged with b's identical one; log:\n{}",
        d.log()
    );
    assert_eq!(
        fs::read(env.path("a", "n.tar")).unwrap(),
        b"a's newer version, longer"
    );
    drop(d);
}
