//! `distlink status` and `distlink check`: what the host dirs hold, what
//! the sharing saves, and what is not as it should be. Read-only: works
//! while the daemon runs (the record is read without taking its lock).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::time::SystemTime;

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::config::Config;
use crate::engine;
use crate::error::Result;
use crate::layout::Layout;
use crate::names::NameFilter;
use crate::quote;
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
    /// The pid in a pid file that no lock holder owns: a daemon (or
    /// `sync`/`migrate`) that was killed or crashed.
    pub daemon_killed: Option<u32>,
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
    /// Distributed files written in place since (every host sees the
    /// change): one path each.
    pub written_in_place: Vec<String>,
    /// Host dir problems (missing, not a dir, other filesystem).
    pub layout_problems: Vec<String>,
    /// The daemon's running totals, as last committed to the record.
    pub stats: state::Stats,
}

impl Status {
    /// Everything `check` reports, one line each; with `daemon`, a daemon
    /// that does not run is one too.
    pub fn problems(&self, daemon: bool) -> Vec<String> {
        let mut p = self.layout_problems.clone();
        if let Some(pid) = self.daemon_killed {
            p.push(format!(
                "distlink (pid {pid}) did not stop cleanly: its pid file {}/pid remains and no \
                 process holds the state lock (killed or crashed?); start the daemon again (it \
                 finishes what was left)",
                self.state_dir
            ));
        } else if daemon && self.daemon_pid.is_none() {
            p.push(format!(
                "the daemon is not running (it stopped cleanly: no process holds the state lock \
                 on {})",
                self.state_dir
            ));
        }
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
        p.extend(self.written_in_place.iter().map(|f| {
            format!(
                "written in place after it was distributed: {f} (every host holding it sees the change)"
            )
        }));
        p
    }
}

/// Looks at every host dir and the record.
/// Whether a daemon runs (the pid holding the state lock), and else the
/// pid of one that was killed (its pid file is left; a holder that lets
/// go removes it first). Read twice where they disagree, so that a
/// daemon stopping or starting meanwhile is not taken for a killed one.
pub fn daemon_state(state_dir: &std::path::Path) -> Result<(Option<u32>, Option<u32>)> {
    let pid = state::pid_file(state_dir)?;
    let holder = state::lock_holder(state_dir)?;
    if holder.is_some() || pid.is_none() {
        return Ok((holder, None));
    }
    let pid = state::pid_file(state_dir)?;
    let holder = state::lock_holder(state_dir)?;
    Ok(match holder {
        Some(h) => (Some(h), None),
        None => (None, pid),
    })
}

pub fn gather(cfg: &Config) -> Result<Status> {
    let (daemon_pid, daemon_killed) = daemon_state(&cfg.state_dir)?;
    let (layout, mut layout_problems) = Layout::open_existing(&cfg.root, &cfg.hosts)?;
    if let Err(e) = layout.check_same_fs() {
        layout_problems.push(e.to_string());
    }
    let filter = NameFilter::new(&cfg.ignore)?;
    let t0 = std::time::Instant::now();
    // Read the record while the directories are being surveyed.
    let usable: Vec<usize> = (0..layout.hosts.len()).collect();
    let (survey, rec) = std::thread::scope(|sc| {
        let rec = sc.spawn(|| {
            let rec = state::read_only(&cfg.state_dir)?;
            let stamps = match rec {
                Some(_) => state::read_stamps(&cfg.state_dir)?,
                None => Default::default(),
            };
            Ok::<_, crate::error::Error>(rec.map(|r| (r, stamps)))
        });
        let survey = engine::survey(&layout, &filter, &usable);
        (survey, rec.join())
    });
    let (rec, stamps) = match rec {
        Ok(r) => match r? {
            Some((r, s)) => (Some(r), s),
            None => (None, Default::default()),
        },
        Err(p) => std::panic::resume_unwind(p),
    };
    let mut written_in_place = Vec::new();
    tracing::debug!(elapsed = ?t0.elapsed(), "surveyed host dirs and read the record");
    for (i, e) in &survey.unlisted {
        layout_problems.push(format!(
            "cannot list {}: {e}",
            quote::path(&layout.hosts[*i].path)
        ));
    }
    let now = SystemTime::now();

    /// One inode: its size, link count, and the host dirs holding it
    /// (how many names, and whether all in one host dir).
    struct Inode {
        size: u64,
        nlink: u64,
        names: u64,
        host: usize,
        one_host: bool,
    }
    let mut inodes: FxHashMap<u64, Inode> = FxHashMap::default();
    let mut rows: Vec<HostRow> = layout
        .hosts
        .iter()
        .map(|h| HostRow {
            host: h.name.clone(),
            present: true,
            files: 0,
            bytes: 0,
            unique_bytes: 0,
            pruned: 0,
        })
        .collect();
    let mut present_recorded: Vec<u64> = vec![0; rows.len()];
    let mut undistributed = Vec::new();
    let mut settling = 0;
    let mut names = 0u64;
    for (name, holders) in survey.present.iter() {
        names += 1;
        let ids = rec.as_ref().and_then(|r| r.files.get(name));
        let mut seen_unknown: Vec<u64> = Vec::new();
        for (i, st) in &holders {
            let row = &mut rows[*i];
            row.files += 1;
            row.bytes += st.size;
            if ids.is_some() {
                present_recorded[*i] += 1;
            }
            let ino = inodes.entry(st.ino).or_insert(Inode {
                size: st.size,
                nlink: u64::from(st.nlink),
                names: 0,
                host: *i,
                one_host: true,
            });
            ino.names += 1;
            ino.one_host &= ino.host == *i;
            let known = ids.is_some_and(|v| v.contains(&st.id()));
            if known
                && !seen_unknown.contains(&st.ino)
                && stamps
                    .get(&(name.to_os_string(), st.id()))
                    .is_some_and(|was| engine::written_since(*was, st))
            {
                // Reported once per inode, not per host holding it.
                seen_unknown.push(st.ino);
                written_in_place.push(quote::path(&layout.hosts[*i].path.join(name)).to_string());
            }
            if !known && !seen_unknown.contains(&st.ino) {
                seen_unknown.push(st.ino);
                if engine::old_enough(st, now, cfg.settle) {
                    let path = layout.hosts[*i].path.join(name);
                    undistributed.push(quote::path(&path).to_string());
                } else {
                    settling += 1;
                }
            }
        }
    }
    tracing::debug!(elapsed = ?t0.elapsed(), "summed");
    let mut physical = 0;
    for ino in inodes.values() {
        physical += ino.size;
        if ino.one_host && ino.nlink == ino.names {
            rows[ino.host].unique_bytes += ino.size;
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
        // Links owed to a host that left the configuration wait for its
        // return: not a problem now.
        for ((n, _), hs) in &r.owed {
            for h in hs.iter().filter(|h| cfg.hosts.contains(h)) {
                owed_links.push(format!("{} to host {h}", quote::name(n)));
            }
        }
        for (name, list) in &r.conflicts {
            conflicts.push(conflict_line(name, list));
        }
    }
    conflicts.sort();
    owed_links.sort();
    undistributed.sort();
    written_in_place.sort();
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
        root: quote::path(&cfg.root).to_string(),
        state_dir: quote::path(&cfg.state_dir).to_string(),
        daemon_pid,
        daemon_killed,
        record: rec.as_ref().is_some_and(|r| r.initialized),
        hosts: ordered,
        names,
        apparent_bytes: apparent,
        physical_bytes: physical,
        saved_bytes: apparent.saturating_sub(physical),
        conflicts,
        undistributed,
        settling,
        owed_links,
        written_in_place,
        layout_problems,
        stats: rec.as_ref().map(|r| r.stats).unwrap_or_default(),
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
        quote::name(name),
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
    let daemon = match (s.daemon_pid, s.daemon_killed) {
        (Some(pid), _) => format!("running (pid {pid})"),
        (None, Some(pid)) => format!("not running (pid {pid} was killed or crashed)"),
        (None, None) => "not running".to_string(),
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
