//! Metrics in the Prometheus text exposition format (0.0.4), for
//! node_exporter's textfile collector: `distlink status --prometheus`
//! prints them, the daemon's `[metrics]` writes them to a file every
//! interval. The numbers are `status`'s (one survey of the host dirs) plus
//! the running totals kept in the record ([`Stats`]).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::Mode;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fsops;
use crate::state::Stats;
use crate::status::{self, Status};

/// One metric family: its name, type and help, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.out, "{name}");
        if !labels.is_empty() {
            let parts: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label_value(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", parts.join(","));
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn family<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {}", help_text(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out }
}

/// A label value as the exposition format wants it: `\`, `"` and line
/// feeds escaped. (Host names come from the configuration; a control
/// character is refused there, but the format must hold whatever comes.)
pub fn label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// HELP text: `\` and line feeds escaped.
fn help_text(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Every metric, from what `status` gathered, the running totals, and
/// whether the daemon is up.
pub fn render(s: &Status, stats: &Stats, up: bool) -> String {
    let mut o = String::new();
    let g = "gauge";
    let c = "counter";
    family(
        &mut o,
        "distlink_up",
        g,
        "1 while the distlink daemon runs, 0 when it is not running.",
    )
    .sample("distlink_up", &[], u8::from(up));

    type HostField = fn(&status::HostRow) -> u64;
    let per_host: [(&str, &str, HostField); 5] = [
        (
            "distlink_host_dir_present",
            "1 when the host's dir exists and could be opened.",
            |h| u64::from(h.present),
        ),
        (
            "distlink_host_files",
            "Candidate files in the host's dir.",
            |h| h.files,
        ),
        (
            "distlink_host_apparent_bytes",
            "Sum of the sizes of the files in the host's dir.",
            |h| h.bytes,
        ),
        (
            "distlink_host_unique_bytes",
            "Bytes held only by this host's dir: what removing all its files would free.",
            |h| h.unique_bytes,
        ),
        (
            "distlink_host_pruned_files",
            "Distributed names this host no longer holds.",
            |h| h.pruned,
        ),
    ];
    for (name, help, field) in per_host {
        let mut f = family(&mut o, name, g, help);
        for h in &s.hosts {
            f.sample(name, &[("host", &h.host)], field(h));
        }
    }

    let totals: [(&str, &str, u64); 10] = [
        (
            "distlink_names",
            "Distinct file names over all host dirs.",
            s.names,
        ),
        (
            "distlink_apparent_bytes",
            "Sum of the sizes of every file in every host dir.",
            s.apparent_bytes,
        ),
        (
            "distlink_physical_bytes",
            "Bytes the host dirs' files take once (each inode counted once).",
            s.physical_bytes,
        ),
        (
            "distlink_saved_bytes",
            "Bytes saved by sharing inodes (apparent minus physical).",
            s.saved_bytes,
        ),
        (
            "distlink_conflicts",
            "Names held with different contents by different hosts.",
            s.conflicts.len() as u64,
        ),
        (
            "distlink_owed_links",
            "Links owed to a host that could not be made yet (retried).",
            s.owed_links.len() as u64,
        ),
        (
            "distlink_undistributed_files",
            "Complete files not distributed yet.",
            s.undistributed.len() as u64,
        ),
        (
            "distlink_settling_files",
            "Files not distributed yet because they changed within the settle time.",
            s.settling,
        ),
        (
            "distlink_written_in_place_files",
            "Distributed files written in place since.",
            s.written_in_place.len() as u64,
        ),
        (
            "distlink_layout_problems",
            "Host dir problems (missing, unreadable, on another filesystem).",
            s.layout_problems.len() as u64,
        ),
    ];
    for (name, help, v) in totals {
        family(&mut o, name, g, help).sample(name, &[], v);
    }
    family(
        &mut o,
        "distlink_record_present",
        g,
        "1 when the record of what was distributed exists.",
    )
    .sample("distlink_record_present", &[], u8::from(s.record));

    let counters: [(&str, &str, u64); 5] = [
        (
            "distlink_files_distributed_total",
            "New files the daemon distributed (an arrival, or one a scan found).",
            stats.files_distributed,
        ),
        (
            "distlink_links_made_total",
            "Hard links the daemon made into host dirs.",
            stats.links_made,
        ),
        (
            "distlink_merges_total",
            "Identical copies the daemon merged into one inode.",
            stats.merges,
        ),
        (
            "distlink_queue_overflows_total",
            "inotify queue overflows (each one costs a full scan).",
            stats.queue_overflows,
        ),
        (
            "distlink_full_scans_total",
            "Full scans of every host dir (start-up, overflow rescans, SIGHUP, full_scan_every).",
            stats.full_scans,
        ),
    ];
    for (name, help, v) in counters {
        family(&mut o, name, c, help).sample(name, &[], v);
    }
    if let Some(ms) = stats.last_full_scan_ms {
        let name = "distlink_last_full_scan_duration_seconds";
        family(&mut o, name, g, "How long the last full scan took.").sample(
            name,
            &[],
            format_args!("{}.{:03}", ms / 1000, ms % 1000),
        );
    }
    let stamps = [
        (
            "distlink_last_full_scan_timestamp_seconds",
            "When the last full scan ended (Unix time).",
            stats.last_full_scan_at,
        ),
        (
            "distlink_last_arrival_timestamp_seconds",
            "When the daemon last distributed a new file (Unix time).",
            stats.last_arrival_at,
        ),
    ];
    for (name, help, v) in stamps {
        if let Some(t) = v {
            family(&mut o, name, g, help).sample(name, &[], t);
        }
    }
    o
}

fn sys(p: &Path) -> impl Fn(Errno) -> Error + '_ {
    move |e| Error::sys(p, e)
}

/// Writes `text` to `path` atomically: a temp file in the same dir
/// (created with `O_EXCL | O_NOFOLLOW`, so nothing planted under its name
/// is followed or reused), fsynced, renamed over `path`, the dir fsynced.
/// Readers see the old file or the new one, never a part. The temp name
/// does not end in `.prom`, so the textfile collector never reads it.
///
/// With `outside` (the root and the state dir), a `path` whose dir is one
/// of them or lies inside one (by identity, as `migrate --from` is
/// checked) is refused: in the root the file would be distributed to every
/// host, in the state dir it could replace the record.
pub fn write_atomically(path: &Path, text: &str, outside: Option<(&Path, &Path)>) -> Result<()> {
    let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
        return Err(Error::Config(format!(
            "metrics.path: {} is not a path to a file",
            crate::quote::path(path)
        )));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let dfd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys(dir))?;
    if let Some((root, state)) = outside {
        let state_id = match nix::sys::stat::stat(state) {
            Ok(st) => vec![(
                (st.st_dev, st.st_ino),
                format!("the state dir {}", crate::quote::path(state)),
            )],
            Err(_) => Vec::new(),
        };
        let layout = crate::layout::Layout::open_root(root)?;
        if let Some(what) = layout.holds_dir(dfd.as_fd(), dir, &state_id)? {
            return Err(Error::Refused(format!(
                "metrics.path {} lies in {what} (compared by identity): in the root it would be \
                 distributed to every host as a download, in the state dir it could replace the \
                 record. Choose a path outside both, e.g. in node_exporter's textfile directory",
                crate::quote::path(path)
            )));
        }
    }
    let mut tmp = OsString::from(".");
    tmp.push(file);
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp_path = dir.join(&tmp);
    let create = || {
        openat(
            dfd.as_fd(),
            tmp.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
    };
    let fd = match create() {
        Ok(fd) => fd,
        Err(Errno::EEXIST) => {
            // Left by a process of this pid that died mid-write: removed
            // (a symlink itself, never what it points to), then made anew.
            fsops::unlink_at(dfd.as_fd(), &tmp).map_err(sys(&tmp_path))?;
            create().map_err(sys(&tmp_path))?
        }
        Err(e) => return Err(Error::sys(&tmp_path, e)),
    };
    let mut f = std::fs::File::from(fd);
    let written = std::io::Write::write_all(&mut f, text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::Io {
            path: tmp_path.clone(),
            source: e,
        });
    drop(f);
    let res = written.and_then(|()| {
        renameat(dfd.as_fd(), tmp.as_os_str(), dfd.as_fd(), file).map_err(sys(path))
    });
    if res.is_err() {
        let _ = fsops::unlink_at(dfd.as_fd(), &tmp);
        return res;
    }
    fsops::fsync_fd(dfd.as_fd()).map_err(sys(dir))
}

/// The daemon's side: every interval, gathers `status` on a thread of its
/// own (a survey of every host dir must not hold up the event loop) and
/// writes the metrics file; on a clean stop, writes it once more with
/// `distlink_up 0`.
#[derive(Default)]
pub struct Publisher {
    next: Option<Instant>,
    job: Option<JoinHandle<Option<Status>>>,
    /// What the last gathering found, for the file written at the stop.
    last: Option<Status>,
    /// Whether the last write failed (a failure is logged once, until a
    /// write works again).
    failing: Arc<AtomicBool>,
}

impl Publisher {
    /// Starts a write when one is due and none is running. `stats` are the
    /// running totals as the daemon holds them now.
    pub fn tick(&mut self, cfg: &Config, stats: Stats) {
        let Some(m) = cfg.metrics.clone() else {
            // None configured (or no longer, after a reload).
            self.next = None;
            return;
        };
        self.reap();
        let now = Instant::now();
        if self.job.is_some() || self.next.is_some_and(|t| t > now) {
            return;
        }
        self.next = Some(now + m.interval);
        let cfg = cfg.clone();
        let failing = self.failing.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                let st = match status::gather(&cfg) {
                    Ok(s) => s,
                    Err(e) => {
                        if !failing.swap(true, Ordering::Relaxed) {
                            tracing::warn!(error = %e, "metrics not written: cannot gather them (said once until it works again)");
                        }
                        return None;
                    }
                };
                publish(&m.path, &cfg, &render(&st, &stats, true), &failing);
                Some(st)
            });
        match spawned {
            Ok(h) => self.job = Some(h),
            Err(e) => tracing::warn!(error = %e, "metrics not written: no thread"),
        }
    }

    /// When the next write is due (for the event loop's wait).
    pub fn next_due(&self) -> Option<Instant> {
        self.next
    }

    fn reap(&mut self) {
        if self.job.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(h) = self.job.take()
        {
            if let Ok(Some(st)) = h.join() {
                self.last = Some(st);
            }
            // The survey's tens of MiB (at 100,000s of names) go back to
            // the system: the daemon lives on and would otherwise keep
            // them in the thread's heap arena.
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only releases free heap pages.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }

    /// At a clean stop: waits for a write in progress, then writes the
    /// last numbers with `distlink_up 0` (nothing when none were gathered).
    pub fn stop(&mut self, cfg: &Config, stats: Stats) {
        let Some(m) = &cfg.metrics else {
            return;
        };
        if let Some(h) = self.job.take()
            && let Ok(Some(st)) = h.join()
        {
            self.last = Some(st);
        }
        if let Some(st) = &self.last {
            publish(&m.path, cfg, &render(st, &stats, false), &self.failing);
        }
    }
}

/// Writes the file; a failure is logged once (the daemon goes on), and
/// the first write that works again says so.
fn publish(path: &Path, cfg: &Config, text: &str, failing: &AtomicBool) {
    match write_atomically(path, text, Some((&cfg.root, &cfg.state_dir))) {
        Ok(()) => {
            if failing.swap(false, Ordering::Relaxed) {
                tracing::info!(path = %crate::quote::path(path), "metrics written again");
            }
            tracing::debug!(path = %crate::quote::path(path), "metrics written");
        }
        Err(e) => {
            if !failing.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "cannot write the metrics file (said once until it works again)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        assert_eq!(label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(label_value("x\ny"), "x\\ny");
        assert_eq!(label_value("plain-host_1"), "plain-host_1");
    }

    #[test]
    fn a_file_planted_under_the_temp_name_is_replaced_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        let tmp = d
            .path()
            .join(format!(".distlink.prom.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&target, &tmp).unwrap();
        let out = d.path().join("distlink.prom");
        write_atomically(&out, "distlink_up 1\n", None).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert_eq!(std::fs::read(&out).unwrap(), b"distlink_up 1\n");
        assert!(std::fs::symlink_metadata(&tmp).is_err());
    }
}
