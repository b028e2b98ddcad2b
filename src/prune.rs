//! `distlink prune --host NAME`: server-side pruning of one host's dir, for
//! hosts that are offline or retired, age policies, and honest accounting
//! of what is freed. Only candidates are touched; the running daemon treats
//! the removals like any client prune (final, never undone).

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::Config;
use crate::engine;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::names::NameFilter;
use crate::quote;

/// Which files to remove. With several criteria, a file is removed only
/// when every one given selects it.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Names to keep (from `--keep-list`); everything else is selected.
    pub keep_list: Option<PathBuf>,
    /// Files whose mtime is older than this.
    pub older_than: Option<Duration>,
    /// Everything (retire a host).
    pub all: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    pub name: String,
    pub bytes: u64,
    pub freed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub host: String,
    pub dry_run: bool,
    pub files_removed: u64,
    /// Bytes whose last link was removed: really freed.
    pub bytes_freed: u64,
    /// Bytes of removed names that other links (other hosts) still hold.
    pub bytes_still_held: u64,
    pub removed: Vec<Removed>,
    pub errors: Vec<String>,
}

/// Reads a keep list: one name per line, `#` comments, blank lines
/// ignored, surrounding white space trimmed; `-` is standard input.
pub fn read_keep_list(path: &std::path::Path) -> Result<HashSet<OsString>> {
    let mut bytes = Vec::new();
    let res = if path.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes).map(|_| ()))
    };
    res.map_err(|e| Error::Usage(format!("--keep-list {}: {e}", quote::path(path))))?;
    Ok(bytes
        .split(|b| *b == b'\n')
        .map(|l| l.trim_ascii())
        .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
        .map(|l| OsString::from_vec(l.to_vec()))
        .collect())
}

pub fn prune(cfg: &Config, host: &str, sel: &Selection, dry_run: bool) -> Result<PruneReport> {
    if !cfg.hosts.iter().any(|h| h == host) {
        return Err(Error::Usage(format!(
            "--host: unknown host {host:?}; known hosts: {}",
            cfg.hosts.join(", ")
        )));
    }
    if sel.keep_list.is_none() && sel.older_than.is_none() && !sel.all {
        return Err(Error::Usage(
            "prune needs a selection: --keep-list FILE, --older-than DURATION or --all".into(),
        ));
    }
    let keep = match &sel.keep_list {
        Some(p) => {
            let k = read_keep_list(p)?;
            if k.is_empty() && !sel.all {
                return Err(Error::Usage(format!(
                    "--keep-list {} names no file, which would remove everything; use --all to empty a host",
                    quote::path(p)
                )));
            }
            Some(k)
        }
        None => None,
    };
    let (layout, problems) = Layout::open_existing(&cfg.root, &[host.to_string()])?;
    let Some(dir) = layout.hosts.first() else {
        return Err(Error::Refused(problems.join("; ")));
    };
    let filter = NameFilter::new(&cfg.ignore)?;
    let listing = engine::list_candidates(dir.fd(), &dir.path, &filter)
        .map_err(|e| Error::sys(&dir.path, e))?;
    let now = SystemTime::now();
    let mut files = listing.files;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut report = PruneReport {
        host: host.to_string(),
        dry_run,
        files_removed: 0,
        bytes_freed: 0,
        bytes_still_held: 0,
        removed: Vec::new(),
        errors: Vec::new(),
    };
    for (name, st) in files {
        let by_keep = keep.as_ref().is_none_or(|k| !k.contains(&name));
        let by_age = sel
            .older_than
            .is_none_or(|d| engine::old_enough(&st, now, d));
        if !(by_keep && by_age) {
            continue;
        }
        match engine::remove_candidate(dir.fd(), &dir.path, &name, &st, dry_run) {
            Ok(freed) => {
                report.files_removed += 1;
                if freed {
                    report.bytes_freed += st.size;
                } else {
                    report.bytes_still_held += st.size;
                }
                report.removed.push(Removed {
                    name: quote::name(&name).to_string(),
                    bytes: st.size,
                    freed,
                });
                if !dry_run {
                    tracing::info!(path = %quote::path(&dir.path.join(&name)), freed, "pruned");
                }
            }
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    Ok(report)
}

pub fn render(r: &PruneReport) -> String {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    let mut o = String::new();
    for f in &r.removed {
        o.push_str(&format!(
            "{verb} {}{}\n",
            f.name,
            if f.freed {
                ""
            } else {
                " (still held by another host)"
            }
        ));
    }
    for e in &r.errors {
        o.push_str(&format!("error: {e}\n"));
    }
    o.push_str(&format!(
        "host {}: {verb} {} files; {} freed, {} still held by other hosts\n",
        r.host,
        r.files_removed,
        crate::status::human(r.bytes_freed),
        crate::status::human(r.bytes_still_held)
    ));
    o
}
