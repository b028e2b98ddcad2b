//! Every link, dedupe and conflict decision, in one place.
//!
//! The engine converges one name at a time: given a complete file (the
//! origin) in one host, every host in scope ends up with that very inode
//! under that name, unless it holds different bytes under the name (a
//! conflict, left untouched). The record is written only after the links
//! exist (and their directories are fsynced), so a crash at any instant
//! leaves work that the next start-up finishes.
//!
//! The data path of one arrival: [`Engine::arrive`] (`arrival.rs`) pins the
//! file and decides the hosts in scope; `Engine::converge` (`converge.rs`)
//! surveys them, links, merges identical copies and records conflicts; the
//! record and the links journal are written by `crate::state`. Full scans and
//! the start-up reconcile are in `reconcile.rs` (over the compact `survey.rs`),
//! owed links and host-list changes in `owed.rs`, and the file operations of
//! the operator commands in `listing.rs` (prune) and `import.rs` (migrate).

mod arrival;
mod compare;
mod converge;
mod import;
mod listing;
mod owed;
mod poll;
mod reconcile;
mod survey;

pub use converge::same_content;
pub use import::{Imported, import_flat};
pub use listing::{Listing, list_candidates, remove_candidate};
pub use poll::{Found, Poller, Tick};
pub use survey::{Present, Survey, survey};

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;

use crate::error::{FileError, Result};
use crate::fsops::{self, FileStat};
use crate::layout::Layout;
use crate::names::NameFilter;
use crate::quote;
use crate::state::Store;

/// How long a check that every host dir is still the one held open is
/// trusted.
const HOST_CHECK_EVERY: Duration = Duration::from_millis(100);

/// The first retry of a failed link comes after this long...
const RETRY_FIRST: Duration = Duration::from_secs(10);
/// ...and the delay doubles up to this.
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Running totals, for logs and `sync`'s summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub linked: u64,
    pub merged: u64,
    pub conflicts: u64,
    pub failed: u64,
    /// Bytes freed by merging identical copies.
    pub reclaimed: u64,
}

/// How far a long operation got.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// What became of one arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// Not a candidate (wrong type, setuid/setgid, ignored name).
    Skipped(&'static str),
    /// Gone before it could be looked at.
    Gone,
    /// This generation was distributed before: nothing to do (prunes stay).
    Known,
    /// Distributed now.
    Distributed,
    /// The name holds another file than the one found complete (replaced,
    /// or its host dir swapped, since): nothing was linked; the caller
    /// settles the new one.
    Replaced,
}

/// A point in the middle of converging a name where the scenario tests
/// of races let another actor act (see [`Engine::race_hook`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RacePoint {
    /// `name` was found missing in host `host` and is about to be linked.
    BeforeLink,
    /// An identical copy of `name` in `host` is about to be exchanged for
    /// the surviving inode.
    BeforeExchange,
}

/// Called at a [`RacePoint`] with the host index and the name.
pub type RaceHook = Box<dyn FnMut(RacePoint, usize, &OsStr) + Send>;

/// Why a name is being converged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A new generation completed: every host lacking the name gets it;
    /// identical copies merge into the inode with the most links.
    Arrival,
    /// Links owed to some hosts (a failed link, a new host): the recorded
    /// generation is what they get.
    Owed,
    /// Every generation present is known, yet the name is on more than
    /// one inode: merge identical copies, record conflicts, fill no gaps.
    Tidy,
    /// Like `Tidy`, but only merging: conflicts are recorded by the one
    /// `Tidy` pass that follows, always from the same origin.
    Merge,
}

/// One host dir that could not be brought in line this time.
#[derive(Debug)]
struct Failure {
    host: usize,
    err: FileError,
}

/// A file found by a scan that is too young to call complete.
#[derive(Debug, Clone)]
pub struct Young {
    pub host: usize,
    pub name: OsString,
    pub stat: FileStat,
}

pub struct Engine {
    pub layout: Layout,
    pub filter: NameFilter,
    pub store: Store,
    pub dedupe: bool,
    pub counters: Counters,
    /// Decide and count, but change nothing on disk or in the record.
    pub dry_run: bool,
    /// Verdicts of byte comparisons, keyed by the two generations, with
    /// what both files were like when compared (see `compare.rs`).
    compared: rustc_hash::FxHashMap<
        compare::PairKey,
        (crate::state::Version, crate::state::Version, bool),
    >,
    /// The comparison thread (the daemon), or none (comparisons inline).
    comparer: Option<compare::Comparer>,
    /// When each failing owed link may be tried again, and the current delay.
    backoff: rustc_hash::FxHashMap<(OsString, fsops::FileId), (std::time::Instant, Duration)>,
    /// When the host dirs were last checked, and the result per host.
    hosts_checked: Option<(std::time::Instant, Vec<bool>)>,
    touched: BTreeSet<usize>,
    seq: u64,
    /// Links made whose inotify `CREATE` has not been read yet, when a
    /// watcher is reading them (`None`: nobody is, keep nothing).
    echoes: Option<rustc_hash::FxHashSet<(usize, OsString)>>,
    /// Unrecorded generations a scan found too young to distribute, with
    /// the hosts that already held them then (by name: indices change on
    /// reload). When the generation is distributed those hosts are not
    /// linked again: one that dropped it since pruned it. (A run killed
    /// before its group commit leaves exactly this: links everywhere, no
    /// record, a file still young at the restart.)
    held_young: rustc_hash::FxHashMap<(OsString, fsops::FileId), Vec<String>>,
    /// Copies an arrival found beside its own generation and recorded (so
    /// that they never fill a gap), not merged with their identical copies
    /// yet: the arrival compared them with its own file only, and they may
    /// not have been complete. Their own arrival, or a scan (or migrate)
    /// that finds them complete, merges them (see `merge_aside`).
    aside: rustc_hash::FxHashSet<(OsString, fsops::FileId)>,
    /// For tests of races only: called at each [`RacePoint`], so that a
    /// client can act exactly there. `None` in the daemon.
    #[doc(hidden)]
    pub race_hook: Option<RaceHook>,
    /// Writes in place to distributed files already warned about (name,
    /// generation, size and mtime after the write).
    warned_writes: rustc_hash::FxHashSet<(OsString, fsops::FileId, (u64, i64))>,
    /// Set (by a signal handler) when the process is asked to stop: the
    /// long loops return early, leaving the rest to the next start.
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Why a file is never a candidate, judged from its `statx`.
pub fn ineligible(st: &FileStat) -> Option<&'static str> {
    if !st.is_regular() {
        Some(st.kind())
    } else if st.is_setid() {
        Some("setuid/setgid file")
    } else {
        None
    }
}

/// Whether a distributed file was written since it was recorded with
/// `(size, mtime)`: the one rule for the daemon's warning, `status` and
/// `sync --adopt`.
pub fn written_since(recorded: (u64, i64), st: &FileStat) -> bool {
    recorded != (st.size, st.mtime_ns)
}

/// How long ago the file was last written (zero for an mtime in the future).
pub fn age(st: &FileStat, now: SystemTime) -> Duration {
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_nanos(st.mtime_ns.max(0) as u64);
    now.duration_since(mtime).unwrap_or(Duration::ZERO)
}

/// Whether a file found by a scan counts as complete: its mtime is already
/// older than the settle time. An mtime in the future (set by `touch`,
/// `wget -N`, `rsync -t` from a clock that runs ahead) says nothing of
/// when the file was written, except that it was not written since (a
/// write sets the mtime to now): its change time, when the mtime was set,
/// is taken instead.
pub fn old_enough(st: &FileStat, now: SystemTime, settle: Duration) -> bool {
    let at = |ns: i64| SystemTime::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
    if at(st.mtime_ns) > now {
        return now
            .duration_since(at(st.ctime_ns))
            .is_ok_and(|a| a >= settle);
    }
    age(st, now) >= settle
}

impl Engine {
    pub fn new(layout: Layout, filter: NameFilter, store: Store, dedupe: bool) -> Engine {
        // Pairs the record knows to differ are never compared again.
        let compared = store
            .differents()
            .iter()
            .map(|(a, b)| (((a.ino, a.birth), (b.ino, b.birth)), (*a, *b, false)))
            .collect();
        Engine {
            layout,
            filter,
            store,
            dedupe,
            counters: Counters::default(),
            dry_run: false,
            compared,
            comparer: None,
            backoff: Default::default(),
            hosts_checked: None,
            touched: BTreeSet::new(),
            seq: 0,
            echoes: None,
            held_young: Default::default(),
            aside: Default::default(),
            warned_writes: Default::default(),
            race_hook: None,
            stop: Default::default(),
        }
    }

    fn ferr(&self, host: usize, name: &OsStr, what: &'static str, errno: Errno) -> FileError {
        FileError::new(
            &self.layout.hosts[host].path,
            &name.to_os_string(),
            what,
            errno,
        )
    }

    /// Whether `<root>/<host>` still is the dir held open. Checked for all
    /// hosts at most every [`HOST_CHECK_EVERY`] (a swap is also reported by
    /// the root watch at once), not once per file and host.
    fn host_ok(&mut self, h: usize) -> bool {
        let stale = self.hosts_checked.as_ref().is_none_or(|(at, v)| {
            at.elapsed() > HOST_CHECK_EVERY || v.len() != self.layout.hosts.len()
        });
        if stale {
            let v = (0..self.layout.hosts.len())
                .map(|i| self.layout.host_is_current(i))
                .collect();
            self.hosts_checked = Some((std::time::Instant::now(), v));
        }
        self.hosts_checked
            .as_ref()
            .is_some_and(|(_, v)| v.get(h).copied().unwrap_or(false))
    }

    /// Forgets the cached host check (after a host dir was reopened).
    pub fn hosts_changed(&mut self) {
        // Echoes are keyed on host indexes, which may have changed.
        self.forget_echoes();
        self.hosts_checked = None;
    }

    /// Whether links or record changes wait for [`Engine::commit`].
    pub fn pending(&self) -> bool {
        !self.touched.is_empty() || self.store.dirty()
    }

    /// Makes the links durable, then writes the record.
    pub fn commit(&mut self) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        self.sync_links();
        self.store.commit()
    }

    /// Makes the links made so far durable (fsyncs the host dirs linked
    /// into). Done before the host dirs are renumbered (a reload): the dirs
    /// to fsync are known by their index.
    pub fn sync_links(&mut self) {
        let dirs: Vec<&crate::layout::HostDir> = std::mem::take(&mut self.touched)
            .into_iter()
            .filter_map(|h| self.layout.hosts.get(h))
            .collect();
        let fsync = |dirs: &[&crate::layout::HostDir]| {
            for dir in dirs {
                if let Err(e) = fsops::fsync_fd(dir.fd()) {
                    tracing::warn!(path = %quote::path(&dir.path), error = %e, "fsync of host dir failed");
                }
            }
        };
        // The links are on disk before the record says so. Each fsync
        // mostly waits for the disk, so many go at once.
        const FSYNC_THREADS: usize = 16;
        if dirs.len() <= 1 {
            fsync(&dirs);
        } else {
            let per = dirs.len().div_ceil(FSYNC_THREADS);
            std::thread::scope(|sc| {
                for chunk in dirs.chunks(per) {
                    sc.spawn(move || fsync(chunk));
                }
            });
        }
    }
}

impl Engine {
    /// Makes the long loops (the full reconcile, paying owed links,
    /// `link_everything`) stop early once `flag` is set. What they did is
    /// recorded as usual by the next commit; what they left is done by the
    /// next full scan, as after a crash.
    pub fn stop_on(&mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        self.stop = flag;
    }

    /// Whether the engine was asked to stop (see [`Engine::stop_on`]).
    pub fn stopping(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed)
    }
}
