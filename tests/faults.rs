//! Faults: the daemon is killed, the disk fills, a host dir turns read-only,
//! the record is damaged. Each time: the other hosts keep being served,
//! nothing is lost, and afterwards `distlink check` is clean.

mod common;
use common::*;

use std::fs;
use std::process::Command;
use std::time::Duration;

fn check_clean(env: &Env) {
    let (code, out, err) = Env::output(env.command("check", &[]));
    assert_eq!(code, Some(0), "check found problems:\n{out}{err}");
}

/// A cheap deterministic pseudo-random sequence (no extra dependency).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn kill_9_at_random_points_never_loses_or_resurrects_a_file() {
    let rounds: usize = std::env::var("DISTLINK_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let env = Env::new(&["a", "b", "c"]);
    let staging = env.root.join("staging");
    fs::create_dir(&staging).unwrap();
    let mut rng = Lcg(42);
    let mut arrived: Vec<String> = Vec::new();
    let mut pruned: Vec<(String, &str)> = Vec::new();
    for round in 0..rounds {
        let mut d = env.start();
        // Prune some files that are fully distributed by now (b and c in turn).
        let host = if round % 2 == 0 { "b" } else { "c" };
        for n in arrived
            .iter()
            .filter(|n| env.exists(host, n.as_str()))
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
        {
            if env.same_inode(&["a", "b", "c"], &n) && rng.next(3) == 0 {
                fs::remove_file(env.path(host, &n)).unwrap();
                pruned.push((n, host));
            }
        }
        // A burst of arrivals into a and b, killed at a random point.
        let names: Vec<String> = (0..400).map(|i| format!("r{round:02}-{i:04}")).collect();
        for n in &names {
            fs::write(staging.join(n), n.as_bytes()).unwrap();
        }
        let delay = rng.next(120);
        for (i, n) in names.iter().enumerate() {
            let h = if i % 2 == 0 { "a" } else { "b" };
            fs::rename(staging.join(n), env.path(h, n)).unwrap();
            if i as u64 == delay * 3 {
                std::thread::sleep(Duration::from_millis(delay));
            }
        }
        std::thread::sleep(Duration::from_millis(rng.next(60)));
        d.kill9();
        arrived.extend(names);
    }
    // A final clean run settles everything.
    let mut d = env.start();
    let pruned_names: Vec<&str> = pruned.iter().map(|(n, _)| n.as_str()).collect();
    for n in &arrived {
        let holders: Vec<&str> = ["a", "b", "c"]
            .into_iter()
            .filter(|h| !pruned.iter().any(|(pn, ph)| pn == n && ph == h))
            .collect();
        assert!(
            wait_until(WAIT, || env.same_inode(&holders, n)),
            "{n} is not one inode in {holders:?}; log:\n{}",
            d.log()
        );
    }
    for (n, h) in &pruned {
        assert!(!env.exists(h, n), "{n} was pruned from {h} but came back");
    }
    assert!(d.stop().success());
    check_clean(&env);
    eprintln!(
        "{rounds} rounds, {} arrivals, {} prunes kept",
        arrived.len(),
        pruned_names.len()
    );
}

#[test]
fn kill_9_during_prune_then_rerun_completes_it() {
    let env = Env::new(&["a", "b"]);
    let mut d = env.start();
    let staging = env.root.join("staging");
    fs::create_dir(&staging).unwrap();
    for i in 0..3000 {
        fs::write(staging.join(format!("p{i:05}")), b"x").unwrap();
        fs::rename(
            staging.join(format!("p{i:05}")),
            env.path("a", format!("p{i:05}")),
        )
        .unwrap();
    }
    env.wait_everywhere("p02999");
    assert!(d.stop().success());
    let mut child = env.single("prune", &["b", "--all"]).spawn().unwrap();
    let _ = wait_until(WAIT, || !env.exists("b", "p00100"));
    let _ = child.kill();
    let _ = child.wait();
    let (code, _, _) = Env::output(env.single("prune", &["b", "--all"]));
    assert_eq!(code, Some(0));
    assert!(env.names("b").is_empty());
    assert_eq!(env.names("a").len(), 3000, "prune of b must not touch a");
    let d = env.start();
    env.all_stays_absent("b", &["p00000", "p01500", "p02999"]);
    drop(d);
}

#[test]
fn a_host_dir_on_its_own_bind_mount_is_refused_at_start() {
    // Same filesystem, different mount: link() fails with EXDEV, so a
    // read-only (or any) bind mount of one host dir cannot work.
    let env = Env::new(&["a", "b", "c"]);
    let b = env.dir("b");
    let bind = Command::new("mount").arg("--bind").arg(&b).arg(&b).status();
    if !bind.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot bind-mount here (needs root)");
        return;
    }
    let _ = Command::new("mount")
        .args(["-o", "remount,ro,bind"])
        .arg(&b)
        .status();
    let (code, _, err) = Env::output(env.command("run", &[]));
    let (check, out, _) = Env::output(env.command("check", &[]));
    umount(&b);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("different mounts") && err.contains(&b.display().to_string()),
        "{err}"
    );
    assert_eq!(check, Some(1));
    assert!(out.contains("different mounts"), "{out}");
}

#[test]
fn a_full_filesystem_is_reported_and_recovered_from() {
    let env = Env::new(&[]);
    let root = env.root.clone();
    // A tmpfs root with very few inodes: hard links count against them.
    if !mount_tmpfs(&root, "size=8m,nr_inodes=64") {
        return;
    }
    let mut env = env;
    env.hosts = vec!["a".into(), "b".into()];
    let d = env.start();
    // Fill the inode table with ballast.
    fs::create_dir(root.join("ballast")).unwrap();
    let mut n = 0;
    while fs::write(root.join("ballast").join(format!("f{n}")), b"").is_ok() {
        n += 1;
    }
    assert!(n > 0);
    // Free two inodes: one for the new file, not enough for its link.
    fs::remove_file(root.join("ballast").join(format!("f{}", n - 1))).unwrap();
    env.move_in_tmp("a", "big.tar", b"payload");
    d.wait_log("No space left on device", WAIT);
    assert!(!env.exists("b", "big.tar"));
    // Space returns: the owed link follows without a restart.
    fs::remove_dir_all(root.join("ballast")).unwrap();
    env.wait_everywhere_within("big.tar", RECOVER);
    let mut d = d;
    assert!(d.stop().success());
    check_clean(&env);
    umount(&root);
}

#[test]
fn a_deleted_or_truncated_record_is_refused_with_the_way_on() {
    for damage in ["delete", "truncate"] {
        let env = Env::new(&["a", "b"]);
        let mut d = env.start();
        env.fetch("a", "f", b"f");
        env.wait_everywhere("f");
        fs::remove_file(env.path("b", "f")).unwrap(); // a prune the record knows of
        assert!(d.stop().success());
        let db = env.state.join("state.db");
        match damage {
            "delete" => {
                fs::remove_file(&db).unwrap();
                let _ = fs::remove_file(env.state.join("state.db-journal"));
            }
            _ => {
                let _ = fs::remove_file(env.state.join("state.db-journal"));
                fs::File::options()
                    .write(true)
                    .open(&db)
                    .unwrap()
                    .set_len(100)
                    .unwrap();
            }
        }
        let (code, _, err) = Env::output(env.command("run", &[]));
        assert_eq!(code, Some(2), "{damage}: {err}");
        assert!(err.contains("sync --adopt"), "{damage}: {err}");
        assert!(!env.exists("b", "f"), "{damage}: the prune was undone");
    }
}

#[test]
fn a_file_at_the_hard_link_limit_is_logged_and_the_rest_continues() {
    let env = Env::new(&["a", "b", "c"]);
    // ext4 allows 65,000 links; other filesystems differ (tmpfs has no limit).
    let side = env.root.join(".side");
    fs::create_dir(&side).unwrap();
    fs::write(side.join("orig"), b"popular").unwrap();
    let mut made = 1u64;
    while made < 64_999 {
        if fs::hard_link(side.join("orig"), side.join(format!("l{made}"))).is_err() {
            break;
        }
        made += 1;
    }
    if made < 64_999 {
        eprintln!("skipped: this filesystem stops at {made} links, not ext4's 65,000");
        return;
    }
    let d = env.start();
    fs::rename(side.join("orig"), env.path("a", "popular.tar")).unwrap();
    // b gets the 65,000th link; c cannot.
    assert!(wait_until(WAIT, || env.same_inode(&["a", "b"], "popular.tar")));
    d.wait_log("EMLINK", WAIT);
    assert!(
        d.log()
            .contains(&env.path("c", "popular.tar").display().to_string()),
        "{}",
        d.log()
    );
    assert!(!env.exists("c", "popular.tar"));
    // Everything else goes on.
    env.fetch("b", "other.tar", b"o");
    env.wait_everywhere("other.tar");
    // Once links are freed, the owed link is made.
    fs::remove_dir_all(&side).unwrap();
    env.wait_everywhere_within("popular.tar", RECOVER);
}
