//! Semantics 5: the record lets a restart tell arrivals from prunes, and
//! `kill -9` at any instant loses nothing.

mod common;
use common::*;

use std::fs;
use std::time::Duration;

#[test]
fn a_file_that_arrived_while_stopped_is_distributed_at_start() {
    let env = Env::new(&["a", "b", "c"]);
    let mut d = env.start();
    assert!(d.stop().success());
    env.fetch("b", "while-down.tar", b"arrived");
    let d = env.start();
    // Found by the start-up scan; as it is younger than the settle time it
    // is linked once that has passed.
    env.wait_everywhere("while-down.tar");
    drop(d);
}

/// What a run killed before its group commit leaves: `young.tar` linked
/// into every host, `half.tar` into a and b only, neither recorded, both
/// younger than the settle time when the daemon comes back.
fn crashed_run_leftovers(env: &Env) {
    let mut d = env.start();
    assert!(d.stop().success());
    env.fetch("a", "young.tar", b"linked everywhere, not recorded");
    fs::hard_link(env.path("a", "young.tar"), env.path("b", "young.tar")).unwrap();
    fs::hard_link(env.path("a", "young.tar"), env.path("c", "young.tar")).unwrap();
    env.fetch("a", "half.tar", b"linked into b, not recorded");
    fs::hard_link(env.path("a", "half.tar"), env.path("b", "half.tar")).unwrap();
}

#[test]
fn files_linked_by_a_crashed_run_and_pruned_during_the_restart_stay_gone() {
    let env = Env::new(&["a", "b", "c"]);
    crashed_run_leftovers(&env);
    // Pruned after the start-up scan saw them, before they settled (an
    // admin does not wait for "ready").
    let d = env.spawn(env.command("run", &[]));
    d.wait_log("start-up completes once they are distributed", WAIT);
    fs::remove_file(env.path("c", "young.tar")).unwrap();
    fs::remove_file(env.path("b", "half.tar")).unwrap();
    d.wait_log("ready", WAIT);
    // c lacked half.tar when the daemon looked: it still gets it.
    assert!(
        wait_until(WAIT, || env.same_inode(&["a", "c"], "half.tar")),
        "half.tar not linked into c; log:\n{}",
        d.log()
    );
    env.stays_absent("c", "young.tar");
    env.stays_absent("b", "half.tar");
    assert!(env.same_inode(&["a", "b"], "young.tar"));
}

#[test]
fn files_linked_by_a_crashed_run_are_recorded_before_ready_so_a_prune_survives_another_crash() {
    let env = Env::new(&["a", "b", "c"]);
    crashed_run_leftovers(&env);
    let mut d = env.start();
    assert!(
        env.same_inode(&["a", "b", "c"], "half.tar"),
        "\"ready\" came before half.tar was linked into c; log:\n{}",
        d.log()
    );
    // Pruned right after "ready", then the daemon dies at once; by the
    // restart both files are older than the settle time.
    fs::remove_file(env.path("c", "young.tar")).unwrap();
    fs::remove_file(env.path("b", "half.tar")).unwrap();
    d.kill9();
    std::thread::sleep(Duration::from_millis(400));
    let d = env.start();
    env.stays_absent("c", "young.tar");
    env.stays_absent("b", "half.tar");
    assert!(env.same_inode(&["a", "b"], "young.tar"));
    assert!(env.same_inode(&["a", "c"], "half.tar"));
    drop(d);
}

#[test]
fn a_file_pruned_between_its_link_and_the_record_stays_gone_after_a_kill_9() {
    // The record trails the links by up to 200 ms. c prunes foo.tar inside
    // that window, and the daemon dies before it writes the record.
    let env = Env::new(&["a", "b", "c"]);
    env.pruned_inside_the_commit_window("a", "foo.tar", "c");
    let d = env.start();
    env.stays_absent("c", "foo.tar");
    assert!(env.same_inode(&["a", "b"], "foo.tar"));
    drop(d);
}

#[test]
fn kill_9_during_a_burst_then_restart_leaves_every_file_everywhere() {
    let env = Env::new(&["a", "b", "c", "d"]);
    let mut d = env.start();
    let staging = env.root.join("staging");
    fs::create_dir(&staging).unwrap();
    const N: usize = 3000;
    for i in 0..N {
        fs::write(staging.join(format!("f{i:05}")), format!("{i}")).unwrap();
    }
    for i in 0..N {
        fs::rename(
            staging.join(format!("f{i:05}")),
            env.path("a", format!("f{i:05}")),
        )
        .unwrap();
    }
    // Kill it mid-way through distributing.
    assert!(wait_until(WAIT, || env.exists("d", "f00100")));
    d.kill9();
    let linked_before = (0..N)
        .filter(|i| env.exists("d", format!("f{i:05}")))
        .count();
    let d = env.start();
    env.wait_everywhere(format!("f{:05}", N - 1));
    for i in 0..N {
        let n = format!("f{i:05}");
        assert!(wait_until(WAIT, || env.same_inode(&["a", "b", "c", "d"], &n)));
        assert!(
            env.same_inode(&["a", "b", "c", "d"], &n),
            "{n} missing after restart; log:\n{}",
            d.log()
        );
        assert_eq!(env.nlink("a", &n), 4, "{n}");
    }
    for h in ["a", "b", "c", "d"] {
        assert_eq!(env.names(h).len(), N, "host {h} holds stray names");
    }
    eprintln!("linked into d before kill -9: {linked_before}/{N}");
}

#[test]
fn no_record_but_files_present_is_refused_with_the_ways_on() {
    let env = Env::new(&["a", "b"]);
    env.write("a", "preexisting", b"p");
    for sub in ["run", "sync"] {
        let out = env.command(sub, &[]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{sub}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("distlink migrate") && err.contains("distlink sync --adopt"),
            "{err}"
        );
        assert!(err.contains("preexisting"), "{err}");
    }
    assert!(!env.exists("b", "preexisting"));
}

#[test]
fn adopt_takes_the_host_dirs_as_they_are() {
    let env = Env::new(&["a", "b"]);
    env.write("a", "only-in-a", b"a");
    env.write("b", "only-in-b", b"b");
    let out = env.sync(&["--adopt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = env.start();
    // Taken as distributed: a host lacking a name counts as having pruned it.
    env.stays_absent("b", "only-in-a");
    assert!(!env.exists("a", "only-in-b"));
    // New arrivals are distributed as usual.
    env.fetch("a", "new", b"n");
    env.wait_everywhere("new");
    drop(d);
}

#[test]
fn a_second_daemon_on_the_same_state_is_refused() {
    let env = Env::new(&["a", "b"]);
    let _d = env.start();
    let out = env.command("run", &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lock"));
    let out = env.sync(&[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_garbage_record_is_refused_rather_than_guessed_around() {
    let env = Env::new(&["a", "b"]);
    let mut d = env.start();
    env.fetch("a", "f", b"f");
    env.wait_everywhere("f");
    assert!(d.stop().success());
    let db = env.state.join("state.db");
    fs::write(&db, vec![0x5au8; 8192]).unwrap();
    let _ = fs::remove_file(env.state.join("state.db-journal"));
    let out = env.command("run", &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("state.db") && err.contains("--adopt"), "{err}");
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn temp_links_left_by_a_crash_are_cleaned_up_only_when_provably_spare() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new(&["a", "b"]);
    let mut d = env.start();
    env.fetch("a", "kept", b"k");
    env.wait_everywhere("kept");
    assert!(d.stop().success());
    let w = env.ino("a", "kept").unwrap();
    // A crash mid-merge leaves a temp link, named after the winning inode,
    // the inode it replaced and that one's mtime. Before the exchange it is
    // a spare link of the winner...
    let before = format!(".distlink-tmp.999.1.{w}.1.1");
    fs::hard_link(env.path("a", "kept"), env.path("b", &before)).unwrap();
    // ...after it, the copy swapped out, unchanged, while b holds the winner.
    let staged = env.path("b", ".staging");
    fs::write(&staged, b"k").unwrap();
    let m = fs::metadata(&staged).unwrap();
    let mtime = m.mtime() * 1_000_000_000 + m.mtime_nsec();
    let after = format!(".distlink-tmp.999.2.{w}.{}.{mtime}", m.ino());
    fs::rename(&staged, env.path("b", &after)).unwrap();
    // Nothing else under the prefix is touched: a copy whose name does not
    // say so, a link of another inode than its name says, a changed copy,
    // a name of another form.
    let lone = format!(".distlink-tmp.999.3.{w}.1.1");
    fs::write(env.path("b", &lone), b"k").unwrap();
    let wrong = format!(".distlink-tmp.999.4.{}.1.1", w + 1);
    fs::hard_link(env.path("a", "kept"), env.path("b", &wrong)).unwrap();
    let changed = env.path("b", ".staging");
    fs::write(&changed, b"k").unwrap();
    let m = fs::metadata(&changed).unwrap();
    let stale = format!(
        ".distlink-tmp.999.5.{w}.{}.{}",
        m.ino(),
        m.mtime() * 1_000_000_000 + m.mtime_nsec() + 1
    );
    fs::rename(&changed, env.path("b", &stale)).unwrap();
    fs::write(env.path("b", ".distlink-tmp.999.6"), b"only copy").unwrap();
    let d = env.start();
    assert!(!env.exists("b", &before));
    assert!(!env.exists("b", &after));
    for left in [&lone, &wrong, &stale, ".distlink-tmp.999.6"] {
        assert!(env.exists("b", left), "{left} was removed");
    }
    assert_eq!(d.count_log("left for the admin"), 1, "{}", d.log());
    assert!(d.log().contains("count=4"), "{}", d.log());
    assert_eq!(env.nlink("a", "kept"), 3);
}
