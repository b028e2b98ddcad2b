//! `distlink status` and `distlink check`: what the host dirs hold, what
//! the sharing saves, and what is not as it should be. Read-only: works
//! while the daemon runs (the record is read without taking its lock).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::SystemTime;

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::config::Config;
use crate::engine::{self, show};
use crate::error::Result;
use crate::layout::Layout;
use crate::names::NameFilter;
use crate::state;

#[derive(Debug, Clone, Serialize)]
pub struct HostRow {
    pub host: String,
    pub present: bool,
    pub files: u64,
    pub bytes: u64,
    /// What removing every file of this host would free.
    pub unique_bytes: u64,
    /// Distributed names this host no longer holds.
    pub pruned: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub root: String,
    pub state_dir: String,
    pub daemon_pid: Option<u32>,
    pub record: bool,
    pub hosts: Vec<HostRow>,
    pub names: u64,
    pub apparent_bytes: u64,
    pub physical_bytes: u64,
    pub saved_bytes: u64,
    pub conflicts: Vec<String>,
    pub undistributed: Vec<String>,
    pub settling: u64,
    pub owed_links: Vec<String>,
    /// Host dir problems (missing, not a dir, other filesystem).
    pub layout_problems: Vec<String>,
}

impl Status {
    /// Everything `check` reports, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut p = self.layout_problems.clone();
        if !self.record {
            p.push(format!(
                "no record in {} yet (run `distlink migrate` or `distlink sync --adopt`)",
                self.state_dir
            ));
        }
        p.extend(
            self.undistributed
                .iter()
                .map(|f| format!("not distributed: {f}")),
        );
        p.extend(self.conflicts.iter().map(|c| format!("conflict: {c}")));
        p.extend(self.owed_links.iter().map(|o| format!("link owed: {o}")));
        p
    }
}

/// Looks at every host dir and the record.
pub fn gather(cfg: &Config) -> Result<Status> {
    let (layout, mut layout_problems) = Layout::open_existing(&cfg.root, &cfg.hosts)?;
    if let Err(e) = layout.check_same_fs() {
        layout_problems.push(e.to_string());
    }
    let filter = NameFilter::new(&cfg.ignore)?;
    let dirs: Vec<(BorrowedFd<'_>, &Path)> = layout
        .hosts
        .iter()
        .map(|h| (h.fd(), h.path.as_path()))
        .collect();
    let t0 = std::time::Instant::now();
    // Read the record while the directories are being listed.
    let (listings, rec) = std::thread::scope(|sc| {
        let rec = sc.spawn(|| state::read_only(&cfg.state_dir));
        let listings = engine::list_dirs(&dirs, &filter);
        (listings, rec.join())
    });
    let rec = match rec {
        Ok(r) => r?,
        Err(p) => std::panic::resume_unwind(p),
    };
    tracing::debug!(elapsed = ?t0.elapsed(), "listed host dirs and read the record");
    let now = SystemTime::now();

    struct Inode {
        size: u64,
        nlink: u64,
        holders: Vec<usize>,
    }
    let mut inodes: FxHashMap<u64, Inode> = FxHashMap::default();
    // Every name seen, with its recorded generations (looked up once).
    let mut names: FxHashMap<&OsStr, Option<&crate::few::Few<crate::fsops::FileId>>> =
        FxHashMap::default();
    let mut rows: Vec<HostRow> = Vec::new();
    let mut present_recorded: Vec<u64> = Vec::new();
    let mut undistributed = Vec::new();
    let mut seen_unknown: HashSet<(&OsStr, u64)> = HashSet::new();
    let mut settling = 0;
    for (i, l) in listings.iter().enumerate() {
        let h = &layout.hosts[i];
        let mut row = HostRow {
            host: h.name.clone(),
            present: true,
            files: 0,
            bytes: 0,
            unique_bytes: 0,
            pruned: 0,
        };
        let mut recorded_here = 0;
        match l {
            Ok(l) => {
                for (name, st) in &l.files {
                    row.files += 1;
                    row.bytes += st.size;
                    let ids = *names
                        .entry(name.as_os_str())
                        .or_insert_with(|| rec.as_ref().and_then(|r| r.files.get(name)));
                    if ids.is_some() {
                        recorded_here += 1;
                    }
                    inodes
                        .entry(st.ino)
                        .or_insert(Inode {
                            size: st.size,
                            nlink: u64::from(st.nlink),
                            holders: Vec::new(),
                        })
                        .holders
                        .push(i);
                    let known = ids.is_some_and(|v| v.contains(&st.id()));
                    if !known && seen_unknown.insert((name.as_os_str(), st.ino)) {
                        if engine::old_enough(st, now, cfg.settle) {
                            undistributed.push(h.path.join(name).display().to_string());
                        } else {
                            settling += 1;
                        }
                    }
                }
            }
            Err(e) => layout_problems.push(format!("cannot list {}: {e}", h.path.display())),
        }
        present_recorded.push(recorded_here);
        rows.push(row);
    }
    tracing::debug!(elapsed = ?t0.elapsed(), "summed");
    let mut physical = 0;
    for ino in inodes.values() {
        physical += ino.size;
        let first = ino.holders[0];
        if ino.nlink == ino.holders.len() as u64 && ino.holders.iter().all(|&h| h == first) {
            rows[first].unique_bytes += ino.size;
        }
    }
    let mut owed_links = Vec::new();
    let mut conflicts = Vec::new();
    if let Some(r) = &rec {
        // Pruned: recorded names a host does not hold, less those still
        // owed to it (not yet linked is not pruned).
        for (i, row) in rows.iter_mut().enumerate() {
            let h = &layout.hosts[i];
            let owed_absent = r
                .owed
                .iter()
                .filter(|((n, _), hs)| {
                    hs.contains(&h.name) && crate::fsops::stat_at(h.fd(), n).is_err()
                })
                .map(|((n, _), _)| n)
                .collect::<BTreeSet<_>>()
                .len() as u64;
            row.pruned = (r.files.len() as u64).saturating_sub(present_recorded[i] + owed_absent);
        }
        for ((n, _), hs) in &r.owed {
            for h in hs {
                owed_links.push(format!("{} to host {h}", show(n)));
            }
        }
        for (name, list) in &r.conflicts {
            conflicts.push(conflict_line(name, list));
        }
    }
    conflicts.sort();
    owed_links.sort();
    undistributed.sort();
    // Hosts whose dir could not be opened still get a row.
    let mut ordered = Vec::new();
    for h in &cfg.hosts {
        match rows.iter().position(|r| &r.host == h) {
            Some(i) => ordered.push(rows[i].clone()),
            None => ordered.push(HostRow {
                host: h.clone(),
                present: false,
                files: 0,
                bytes: 0,
                unique_bytes: 0,
                pruned: 0,
            }),
        }
    }
    let apparent: u64 = ordered.iter().map(|r| r.bytes).sum();
    Ok(Status {
        root: cfg.root.display().to_string(),
        state_dir: cfg.state_dir.display().to_string(),
        daemon_pid: state::lock_holder(&cfg.state_dir),
        record: rec.as_ref().is_some_and(|r| r.initialized),
        hosts: ordered,
        names: names.len() as u64,
        apparent_bytes: apparent,
        physical_bytes: physical,
        saved_bytes: apparent.saturating_sub(physical),
        conflicts,
        undistributed,
        settling,
        owed_links,
        layout_problems,
    })
}

/// One line per conflicting name, listing its versions:
/// `foo.tar: 2 versions: inode 12 in a, c; inode 34 in b`.
pub fn conflict_line(name: &OsStr, list: &[state::Conflict]) -> String {
    let mut versions: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    for c in list {
        versions.entry(c.ino).or_default().insert(&c.host);
        versions
            .entry(c.other_ino)
            .or_default()
            .insert(&c.other_host);
    }
    let parts: Vec<String> = versions
        .iter()
        .map(|(ino, hs)| {
            format!(
                "inode {ino} in {}",
                hs.iter().copied().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    format!(
        "{}: {} versions: {}",
        show(name),
        versions.len(),
        parts.join("; ")
    )
}

/// Sizes for people: "1.5 GiB".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The human table.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let daemon = match s.daemon_pid {
        Some(pid) => format!("running (pid {pid})"),
        None => "not running".to_string(),
    };
    let _ = writeln!(
        o,
        "root {}   state {}   daemon {}",
        s.root, s.state_dir, daemon
    );
    let _ = writeln!(o);
    let w = s
        .hosts
        .iter()
        .map(|h| h.host.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        o,
        "{:<w$}  {:>9}  {:>10}  {:>10}  {:>7}",
        "HOST", "FILES", "SIZE", "UNIQUE", "PRUNED"
    );
    for h in &s.hosts {
        if h.present {
            let _ = writeln!(
                o,
                "{:<w$}  {:>9}  {:>10}  {:>10}  {:>7}",
                h.host,
                h.files,
                human(h.bytes),
                human(h.unique_bytes),
                h.pruned
            );
        } else {
            let _ = writeln!(o, "{:<w$}  (missing)", h.host);
        }
    }
    let pct = if s.apparent_bytes > 0 {
        s.saved_bytes as f64 * 100.0 / s.apparent_bytes as f64
    } else {
        0.0
    };
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "names {}   apparent {}   on disk {}   saved {} ({pct:.0}%)",
        s.names,
        human(s.apparent_bytes),
        human(s.physical_bytes),
        human(s.saved_bytes)
    );
    let _ = writeln!(
        o,
        "conflicts {}   not yet distributed {}   settling {}   owed links {}",
        s.conflicts.len(),
        s.undistributed.len(),
        s.settling,
        s.owed_links.len()
    );
    for p in &s.layout_problems {
        let _ = writeln!(o, "problem: {p}");
    }
    o
}
