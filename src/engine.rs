//! Every link, dedupe and conflict decision, in one place.
//!
//! The engine converges one name at a time: given a complete file (the
//! origin) in one host, every host in scope ends up with that very inode
//! under that name, unless it holds different bytes under the name (a
//! conflict, left untouched). The record is written only after the links
//! exist (and their directories are fsynced), so a crash at any instant
//! leaves work that the next start-up finishes.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use nix::errno::Errno;

use crate::error::{FileError, Result};
use crate::few::Few;
use crate::fsops::{self, FileStat};
use crate::layout::Layout;
use crate::names::{self, NameFilter};
use crate::state::{Conflict, Store};

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
}

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
    /// Byte comparisons made ahead of time (in parallel), keyed by the two
    /// inodes, with the stats they were made against.
    compared: rustc_hash::FxHashMap<(u64, u64), (FileStat, FileStat, bool)>,
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

/// How long ago the file was last written (zero for an mtime in the future).
pub fn age(st: &FileStat, now: SystemTime) -> Duration {
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_nanos(st.mtime_ns.max(0) as u64);
    now.duration_since(mtime).unwrap_or(Duration::ZERO)
}

/// Whether a file found by a scan counts as complete: its mtime is already
/// older than the settle time.
pub fn old_enough(st: &FileStat, now: SystemTime, settle: Duration) -> bool {
    age(st, now) >= settle
}

impl Engine {
    pub fn new(layout: Layout, filter: NameFilter, store: Store, dedupe: bool) -> Engine {
        Engine {
            layout,
            filter,
            store,
            dedupe,
            counters: Counters::default(),
            dry_run: false,
            compared: Default::default(),
            backoff: Default::default(),
            hosts_checked: None,
            touched: BTreeSet::new(),
            seq: 0,
            echoes: None,
            held_young: Default::default(),
        }
    }

    /// Starts (or stops) remembering the links made, so that the watcher
    /// can tell their `CREATE` events from a new file without a `stat`.
    /// Starting or stopping forgets what was remembered.
    pub fn track_echoes(&mut self, on: bool) {
        self.echoes = on.then(Default::default);
    }

    /// Forgets the links remembered so far (their events will be looked at
    /// like any other); keeps remembering new ones if it did.
    pub fn forget_echoes(&mut self) {
        if let Some(e) = self.echoes.as_mut() {
            e.clear();
            e.shrink_to_fit();
        }
    }

    /// `name` in `host` was created (`created`) or written and closed: its
    /// stat when it is an eligible file of a generation not distributed
    /// yet, to be settled; `None` when there is nothing to look at (gone,
    /// not a regular file, known, or the echo of a link this engine made,
    /// recognised without a stat).
    pub fn changed(&mut self, host: usize, name: &OsStr, created: bool) -> Option<FileStat> {
        if created && self.take_echo(host, name) {
            return None;
        }
        let st = fsops::stat_at(self.layout.hosts.get(host)?.fd(), name).ok()?;
        (ineligible(&st).is_none() && !self.store.is_known(name, st.id())).then_some(st)
    }

    /// Whether the `CREATE` of `name` in `host` is the event of a link
    /// this engine made (consumed: each link has one event). Any doubt, e.g.
    /// after lost events, must be settled by forgetting them all with
    /// [`Engine::forget_echoes`]: a `CREATE` wrongly taken for an echo would
    /// not be looked at.
    pub fn take_echo(&mut self, host: usize, name: &OsStr) -> bool {
        match self.echoes.as_mut() {
            Some(e) if !e.is_empty() => e.remove(&(host, name.to_os_string())),
            _ => false,
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

    /// A file completed in `host` (renamed in, or written and settled).
    pub fn arrive(&mut self, host: usize, name: &OsStr) -> std::result::Result<Arrival, FileError> {
        if !self.filter.is_candidate(name) {
            return Ok(Arrival::Skipped("ignored name"));
        }
        // Pinned first, then looked at: what is checked is what gets linked.
        let fd = match fsops::open_path_at(self.layout.hosts[host].fd(), name) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(Arrival::Gone),
            Err(e) => return Err(self.ferr(host, name, "open", e)),
        };
        let st = fsops::stat_fd(fd.as_fd()).map_err(|e| self.ferr(host, name, "stat", e))?;
        if let Some(why) = ineligible(&st) {
            return Ok(Arrival::Skipped(why));
        }
        if self.store.is_known(name, st.id()) {
            return Ok(Arrival::Known);
        }
        let scope = self.arrival_scope(name, host, &st);
        self.converge_pinned(name, host, Some((fd, st)), st, &scope, Mode::Arrival)?;
        self.forget_held(name, &st);
        Ok(Arrival::Distributed)
    }

    /// The hosts a new generation held by `origin` is linked into: every
    /// other host, except those a scan saw holding it before (see
    /// `held_young`).
    fn arrival_scope(&self, name: &OsStr, origin: usize, st: &FileStat) -> Vec<usize> {
        // Usually empty: then no key is built.
        let held = (!self.held_young.is_empty())
            .then(|| self.held_young.get(&(name.to_os_string(), st.id())))
            .flatten();
        (0..self.layout.hosts.len())
            .filter(|&h| h != origin)
            .filter(|&h| held.is_none_or(|held| !held.contains(&self.layout.hosts[h].name)))
            .collect()
    }

    /// A young generation was distributed (and recorded).
    fn forget_held(&mut self, name: &OsStr, st: &FileStat) {
        if !self.held_young.is_empty() {
            self.held_young.remove(&(name.to_os_string(), st.id()));
        }
    }

    /// Brings every host in `scope` in line with the file `expect` held by
    /// `origin`, then records it. Returns the hosts that failed (they are
    /// owed the link and retried later).
    fn converge(
        &mut self,
        name: &OsStr,
        origin: usize,
        expect: FileStat,
        scope: &[usize],
        mode: Mode,
    ) -> std::result::Result<Vec<usize>, FileError> {
        self.converge_pinned(name, origin, None, expect, scope, mode)
    }

    /// [`Engine::converge`], with the origin's file already pinned (an
    /// `O_PATH` fd and its stat) when the caller has it.
    fn converge_pinned(
        &mut self,
        name: &OsStr,
        origin: usize,
        pinned: Option<(OwnedFd, FileStat)>,
        expect: FileStat,
        scope: &[usize],
        mode: Mode,
    ) -> std::result::Result<Vec<usize>, FileError> {
        let (ofd, ost) = match pinned {
            Some(p) => p,
            None => {
                let fd = fsops::open_path_at(self.layout.hosts[origin].fd(), name)
                    .map_err(|e| self.ferr(origin, name, "open", e))?;
                let st =
                    fsops::stat_fd(fd.as_fd()).map_err(|e| self.ferr(origin, name, "stat", e))?;
                (fd, st)
            }
        };
        if ost.ino != expect.ino || ost.dev != expect.dev || ineligible(&ost).is_some() {
            return Err(self.ferr(origin, name, "changed while being looked at", Errno::ESTALE));
        }

        // Survey the hosts in scope.
        let mut lacking = Vec::new();
        let mut holders = vec![origin];
        let mut identical: Vec<(usize, FileStat)> = Vec::new();
        let mut different: Vec<(usize, FileStat)> = Vec::new();
        let mut failures: Vec<Failure> = Vec::new();
        let mut verdicts: HashMap<u64, bool> = HashMap::new();
        for &h in scope {
            if h == origin {
                continue;
            }
            if !self.host_ok(h) {
                // The dir was removed or swapped (maybe for a symlink):
                // touch nothing there until it is reopened.
                failures.push(Failure {
                    host: h,
                    err: FileError::new(
                        &self.layout.hosts[h].path,
                        &OsString::new(),
                        "host dir replaced",
                        Errno::ESTALE,
                    ),
                });
                continue;
            }
            match fsops::stat_at(self.layout.hosts[h].fd(), name) {
                Ok(s) if s.ino == ost.ino && s.dev == ost.dev => holders.push(h),
                Ok(s) if !s.is_regular() || s.size != ost.size => different.push((h, s)),
                Ok(s) => {
                    let v = match verdicts.get(&s.ino) {
                        Some(v) => Ok(*v),
                        None => match self.cached_verdict(&ost, &s) {
                            Some(v) => Ok(v),
                            None => self.same_content(name, origin, &ost, h, &s),
                        },
                    };
                    match v {
                        Ok(true) => identical.push((h, s)),
                        Ok(false) => different.push((h, s)),
                        Err(err) => {
                            failures.push(Failure { host: h, err });
                            continue;
                        }
                    }
                    if let Ok(v) = v {
                        verdicts.insert(s.ino, v);
                    }
                }
                Err(Errno::ENOENT) => lacking.push(h),
                Err(e) => failures.push(Failure {
                    host: h,
                    err: self.ferr(h, name, "stat", e),
                }),
            }
        }

        // Choose the inode that survives: the one with the most links.
        let mut winner: (usize, OwnedFd, FileStat) = (origin, ofd, ost);
        if self.dedupe
            && mode != Mode::Owed
            && let Some((h, s)) = identical
                .iter()
                .max_by_key(|(h, s)| (s.nlink, std::cmp::Reverse(*h)))
            && s.nlink > ost.nlink
            && let Ok(fd) = fsops::open_path_at(self.layout.hosts[*h].fd(), name)
            && fsops::stat_fd(fd.as_fd()).is_ok_and(|x| x.ino == s.ino && x.same_content_stamp(s))
        {
            winner = (*h, fd, *s);
        }
        let (_, wfd, wst) = &winner;
        let wst = *wst;

        // A host lacking a known generation pruned it: only arrivals and
        // owed links fill gaps.
        if matches!(mode, Mode::Tidy | Mode::Merge) {
            lacking.clear();
        }
        for h in lacking {
            if self.dry_run {
                self.counters.linked += 1;
                continue;
            }
            match fsops::link_fd_at(wfd.as_fd(), self.layout.hosts[h].fd(), name) {
                Ok(()) => {
                    self.touched.insert(h);
                    self.counters.linked += 1;
                    if let Some(e) = self.echoes.as_mut() {
                        e.insert((h, name.to_os_string()));
                    }
                    tracing::debug!(host = %self.layout.hosts[h].name, name = %show(name), "linked");
                }
                Err(e) => failures.push(Failure {
                    host: h,
                    err: self.ferr(h, name, "link", e),
                }),
            }
        }
        if self.dedupe {
            // Every identical copy on another inode is replaced by the winner;
            // when the winner is not the origin, the origin's holders too.
            let mut losers: Vec<(usize, FileStat)> = identical
                .iter()
                .filter(|(_, s)| s.ino != wst.ino)
                .copied()
                .collect();
            if wst.ino != ost.ino {
                losers.extend(holders.iter().map(|&h| (h, ost)));
            }
            for (h, s) in losers {
                if self.dry_run {
                    self.counters.merged += 1;
                    if s.nlink == 1 {
                        self.counters.reclaimed += s.size;
                    }
                    continue;
                }
                match self.replace(h, name, wfd, &wst, &s) {
                    Ok(true) => {
                        self.counters.merged += 1;
                        tracing::debug!(host = %self.layout.hosts[h].name, name = %show(name),
                            "merged identical copy into one inode");
                    }
                    Ok(false) => failures.push(Failure {
                        host: h,
                        err: self.ferr(h, name, "changed during merge", Errno::EAGAIN),
                    }),
                    Err(err) => failures.push(Failure { host: h, err }),
                }
            }
        }

        if mode != Mode::Merge {
            // Conflicts: same name, different bytes. Both are kept untouched.
            let mut conflicts: Vec<Conflict> = self
                .store
                .conflicts_of(name)
                .iter()
                .filter(|c| {
                    let hs = &self.layout.hosts;
                    !scope.iter().any(|&h| hs[h].name == c.host) && hs[origin].name != c.host
                })
                .cloned()
                .collect();
            for (h, s) in &different {
                let c = Conflict {
                    name: name.to_os_string(),
                    host: self.layout.hosts[*h].name.clone(),
                    ino: s.ino,
                    other_host: self.layout.hosts[winner.0].name.clone(),
                    other_ino: wst.ino,
                };
                let already = self
                    .store
                    .conflicts_of(name)
                    .iter()
                    .any(|o| o.host == c.host && o.ino == c.ino && o.other_ino == c.other_ino);
                if !already {
                    self.counters.conflicts += 1;
                    tracing::warn!(
                        path = %self.layout.hosts[*h].path.join(name).display(),
                        other = %self.layout.hosts[winner.0].path.join(name).display(),
                        kind = s.kind(),
                        "conflict: same name, different content; both left untouched"
                    );
                }
                conflicts.push(c);
            }
            self.store.set_conflicts(name, conflicts);
        }

        self.store.record(name, wst.id(), wst.size);
        let mut failed = Vec::new();
        for f in failures {
            self.counters.failed += 1;
            tracing::warn!(error = %f.err, "will retry");
            self.store
                .owe(name, wst.id(), &self.layout.hosts[f.host].name);
            failed.push(f.host);
        }
        if mode == Mode::Arrival && !self.dry_run {
            // Until the record is committed, the journal tells a restart
            // which hosts had it: one lacking it then has pruned it.
            let names: Vec<&str> = failed
                .iter()
                .map(|&h| self.layout.hosts[h].name.as_str())
                .collect();
            if let Err(e) = self
                .store
                .journal_distributed(name, wst.id(), wst.size, &names)
            {
                tracing::warn!(error = %e, "cannot write the links journal");
            }
        }
        Ok(failed)
    }

    fn same_content(
        &self,
        name: &OsStr,
        a: usize,
        ast: &FileStat,
        b: usize,
        bst: &FileStat,
    ) -> std::result::Result<bool, FileError> {
        let ha = &self.layout.hosts[a];
        let hb = &self.layout.hosts[b];
        same_content(
            (ha.fd(), &ha.path, name),
            ast,
            (hb.fd(), &hb.path, name),
            bst,
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

    /// A comparison made ahead of time, if both files are unchanged since.
    fn cached_verdict(&mut self, a: &FileStat, b: &FileStat) -> Option<bool> {
        let (ca, cb, v) = self.compared.remove(&(a.ino, b.ino))?;
        (ca.same_content_stamp(a) && cb.same_content_stamp(b)).then_some(v)
    }

    /// Compares, in parallel, every pair of same-named, same-sized files on
    /// different inodes that converging `present` will need, so that the
    /// (serial) linking finds the answers ready.
    fn precompare(&mut self, present: &Present) {
        let mut pairs: Vec<(&OsStr, usize, FileStat, usize, FileStat)> = Vec::new();
        for (name, holders) in present.iter() {
            let Some((oh, ost)) = holders
                .iter()
                .max_by_key(|(h, s)| (s.nlink, std::cmp::Reverse(*h)))
            else {
                continue;
            };
            let mut seen = vec![ost.ino];
            for (h, s) in &holders {
                if !seen.contains(&s.ino) {
                    seen.push(s.ino);
                    if s.size == ost.size {
                        pairs.push((name, *oh, *ost, *h, *s));
                    }
                }
            }
        }
        if pairs.len() < 2 {
            return;
        }
        let layout = &self.layout;
        let verdicts = par_map(&pairs, |(name, a, ast, b, bst)| {
            let (ha, hb) = (&layout.hosts[*a], &layout.hosts[*b]);
            same_content(
                (ha.fd(), &ha.path, name),
                ast,
                (hb.fd(), &hb.path, name),
                bst,
            )
        });
        for ((_, _, ast, _, bst), v) in pairs.iter().zip(verdicts) {
            if let Ok(v) = v {
                self.compared.insert((ast.ino, bst.ino), (*ast, *bst, v));
            }
        }
    }

    fn temp_name(&mut self) -> OsString {
        self.seq += 1;
        let mut v = names::TEMP_PREFIX.to_vec();
        v.extend_from_slice(format!("{}.{}", std::process::id(), self.seq).as_bytes());
        OsString::from(std::ffi::OsStr::from_bytes(&v))
    }

    /// Replaces `host/name` (currently the identical inode `old`) by the
    /// inode behind `wfd`, without the name ever disappearing: link the
    /// winner under a temp name, atomically exchange the two names, check
    /// that what was swapped out is still the unchanged `old`, and only then
    /// drop it. Returns false (and leaves the name as it was) when the file
    /// changed meanwhile.
    fn replace(
        &mut self,
        host: usize,
        name: &OsStr,
        wfd: &OwnedFd,
        wst: &FileStat,
        old: &FileStat,
    ) -> std::result::Result<bool, FileError> {
        let tmp = self.temp_name();
        let dir = self.layout.hosts[host].fd();
        fsops::link_fd_at(wfd.as_fd(), dir, &tmp)
            .map_err(|e| self.ferr(host, name, "link temp", e))?;
        self.touched.insert(host);
        let undo = |this: &Self, what| {
            let _ = fsops::unlink_at(this.layout.hosts[host].fd(), &tmp);
            this.ferr(host, name, what, Errno::EAGAIN)
        };
        match fsops::stat_at(dir, name) {
            Ok(cur) if cur.same_content_stamp(old) => {}
            _ => return Err(undo(self, "changed before merge")),
        }
        if let Err(e) = fsops::exchange_at(dir, &tmp, name) {
            let _ = fsops::unlink_at(dir, &tmp);
            return Err(self.ferr(host, name, "exchange", e));
        }
        // `tmp` now names what was at `name`.
        match fsops::stat_at(dir, &tmp) {
            Ok(swapped) if swapped.same_content_stamp(old) => {
                fsops::unlink_at(dir, &tmp).map_err(|e| self.ferr(host, name, "unlink temp", e))?;
                if swapped.nlink == 1 {
                    self.counters.reclaimed += swapped.size;
                }
                Ok(true)
            }
            _ => {
                // Someone replaced the file in between: swap back, and drop
                // our extra link only if it really is ours.
                let _ = fsops::exchange_at(dir, &tmp, name);
                if fsops::stat_at(dir, &tmp).is_ok_and(|s| s.ino == wst.ino) {
                    let _ = fsops::unlink_at(dir, &tmp);
                }
                Ok(false)
            }
        }
    }

    /// Links still owed to hosts (failed earlier, or seeding a new host).
    pub fn pay_owed(&mut self) {
        let now = std::time::Instant::now();
        for (k, (name, id, hosts)) in self.store.owed().into_iter().enumerate() {
            // Seeding a new host pays 100,000s: keep what is queued for the
            // record small (a failed commit keeps its queue for the next).
            if k % 4096 == 4095
                && let Err(e) = self.commit()
            {
                tracing::error!(error = %e, "cannot write the record");
            }
            let key = (name.clone(), id);
            if self.backoff.get(&key).is_some_and(|(at, _)| *at > now) {
                continue;
            }
            let targets: Vec<usize> = hosts
                .iter()
                .filter_map(|h| self.layout.index_of(h))
                .collect();
            // Find a host that still holds this generation.
            let source = (0..self.layout.hosts.len())
                .filter(|h| !targets.contains(h))
                .chain(targets.iter().copied())
                .find_map(|h| {
                    fsops::stat_at(self.layout.hosts[h].fd(), &name)
                        .ok()
                        .filter(|s| s.id() == id && ineligible(s).is_none())
                        .map(|s| (h, s))
                });
            let failed = match source {
                None => Vec::new(), // gone everywhere: nothing left to hand out
                Some((origin, st)) => {
                    match self.converge(&name, origin, st, &targets, Mode::Owed) {
                        Ok(f) => f,
                        Err(e) => {
                            tracing::warn!(error = %e, "will retry");
                            vec![usize::MAX]
                        }
                    }
                }
            };
            if failed.is_empty() {
                self.backoff.remove(&key);
            } else {
                // Retry a link that keeps failing less and less often.
                let delay = self
                    .backoff
                    .get(&key)
                    .map_or(RETRY_FIRST, |(_, d)| (*d * 2).min(RETRY_MAX));
                self.backoff.insert(key, (now + delay, delay));
            }
            let mut paid = Vec::new();
            for h in &hosts {
                let idx = self.layout.index_of(h);
                if failed != [usize::MAX] && idx.is_none_or(|i| !failed.contains(&i)) {
                    self.store.paid(&name, id, h);
                    paid.push(h.as_str());
                }
            }
            if !self.dry_run
                && let Err(e) = self.store.journal_paid(&name, id, &paid)
            {
                tracing::warn!(error = %e, "cannot write the links journal");
            }
        }
    }

    /// Makes every owed link due now (after a reload: the admin may have
    /// fixed what made them fail).
    pub fn retry_now(&mut self) {
        self.backoff.clear();
    }

    /// Aligns the record's host list with the configured hosts: a new host
    /// is owed every distributed file; a removed one is forgotten (its dir
    /// is left untouched).
    pub fn sync_hosts(&mut self) -> Result<()> {
        let configured: Vec<String> = self.layout.hosts.iter().map(|h| h.name.clone()).collect();
        let recorded: Vec<String> = self.store.hosts().iter().cloned().collect();
        for h in &recorded {
            if !configured.contains(h) {
                tracing::info!(host = %h, "host no longer configured; its dir is left as it is");
                self.store.remove_host(h);
            }
        }
        for h in &configured {
            if !self.store.hosts().contains(h) {
                let files: Vec<(OsString, fsops::FileId)> = self
                    .store
                    .all_files()
                    .map(|(n, id)| (n.clone(), id))
                    .collect();
                if !files.is_empty() {
                    tracing::info!(host = %h, files = files.len(), "new host: seeding it with every distributed file");
                }
                for (n, id) in files {
                    self.store.owe(&n, id, h);
                }
                self.store.add_host(h);
                // What the new host is owed is on disk before any of it is
                // paid (and out of memory: 100,000s of rows).
                self.commit()?;
            }
        }
        Ok(())
    }

    /// Lists the candidates in every host dir. Host dirs that vanished are
    /// recreated (empty). Returns name → holders, and whether every host
    /// was read completely.
    pub fn scan(&mut self, cleanup_temps: bool) -> (Present, bool) {
        let mut complete = true;
        let mut usable = Vec::new();
        for i in 0..self.layout.hosts.len() {
            if !self.layout.host_is_current(i) {
                match self.layout.reopen_host(i) {
                    Ok(o) => {
                        tracing::warn!(host = %self.layout.hosts[i].name, how = ?o, "host dir was replaced or removed; reopened")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "host dir unusable");
                        complete = false;
                        continue;
                    }
                }
            }
            usable.push(i);
        }
        self.hosts_checked = None;
        let s = survey(&self.layout, &self.filter, &usable);
        for (i, e) in &s.unlisted {
            tracing::error!(path = %self.layout.hosts[*i].path.display(), error = %e, "cannot list host dir");
        }
        complete &= s.complete;
        if cleanup_temps {
            for (i, t) in s.temps {
                self.cleanup_temp(i, &t, &s.present);
            }
        }
        (s.present, complete)
    }

    /// A temp link left by a crash. Dropped when another name keeps the
    /// inode; otherwise left for the admin (it may be the only copy).
    fn cleanup_temp(&self, host: usize, name: &OsStr, present: &Present) {
        let h = &self.layout.hosts[host];
        let dir = h.fd();
        let path = h.path.join(name);
        let Ok(st) = fsops::stat_at(dir, name) else {
            return;
        };
        // An extra link, or a copy whose bytes another name in this host
        // dir still holds (a crash right after a merge's exchange), goes.
        let spare = st.is_regular()
            && (st.nlink > 1
                || present.iter().any(|(other, holders)| {
                    holders.iter().any(|(hh, os)| {
                        *hh == host
                            && os.size == st.size
                            && os.ino != st.ino
                            && same_content((dir, &h.path, name), &st, (dir, &h.path, other), os)
                                .unwrap_or(false)
                    })
                }));
        if spare {
            if fsops::unlink_at(dir, name).is_ok() {
                tracing::info!(path = %path.display(), "removed stale temp link");
            }
        } else {
            tracing::warn!(path = %path.display(), "stale temp name holds the only copy of its bytes; left for the admin");
        }
    }

    /// A full reconcile: distribute every complete unknown file, pay owed
    /// links, re-check conflicts, forget generations pruned everywhere.
    /// Files too young to call complete are returned for the caller to
    /// settle.
    pub fn reconcile(
        &mut self,
        now: SystemTime,
        settle: Duration,
        cleanup_temps: bool,
    ) -> Vec<Young> {
        let (present, complete) = self.scan(cleanup_temps);
        let mut young = Vec::new();
        let mut names: Vec<&OsStr> = present.names().collect();
        names.sort();
        let all: Vec<usize> = (0..self.layout.hosts.len()).collect();
        for name in names {
            let holders = &present.get(name).unwrap_or_default();
            let mut inodes: Vec<(usize, FileStat)> = Vec::new();
            for (h, st) in holders {
                if !inodes.iter().any(|(_, s)| s.ino == st.ino) {
                    inodes.push((*h, *st));
                }
            }
            let mut acted = false;
            for (h, st) in &inodes {
                if self.store.is_known(name, st.id()) {
                    continue;
                }
                if !old_enough(st, now, settle) {
                    // Every host holding it now is remembered (with those
                    // seen by earlier scans): it is not linked there again.
                    let held = self
                        .held_young
                        .entry((name.to_os_string(), st.id()))
                        .or_default();
                    for (hh, s) in holders {
                        let hn = &self.layout.hosts[*hh].name;
                        if s.ino == st.ino && !held.contains(hn) {
                            held.push(hn.clone());
                        }
                    }
                    young.push(Young {
                        host: *h,
                        name: name.to_os_string(),
                        stat: *st,
                    });
                    continue;
                }
                let scope = self.arrival_scope(name, *h, st);
                match self.converge(name, *h, *st, &scope, Mode::Arrival) {
                    Ok(_) => self.forget_held(name, st),
                    Err(e) => tracing::warn!(error = %e, "will retry"),
                }
                acted = true;
            }
            if !acted && inodes.len() > 1 {
                // All known, yet not one inode: merge identical copies and
                // (re)record conflicts. (Recorded conflicts are not trusted
                // to skip this: inode numbers are reused.) First every inode
                // but the most linked one is compared with the others, so
                // copies identical to each other but not to that one merge
                // too (one merged away meanwhile is skipped).
                let mut order = inodes.clone();
                order.sort_by_key(|(h, s)| (std::cmp::Reverse(s.nlink), *h));
                for (i, (h, st)) in order.iter().enumerate() {
                    let still = fsops::stat_at(self.layout.hosts[*h].fd(), name)
                        .is_ok_and(|now| now.ino == st.ino);
                    if !still || i == 0 {
                        continue;
                    }
                    let scope: Vec<usize> = all.iter().copied().filter(|x| x != h).collect();
                    if let Err(e) = self.converge(name, *h, *st, &scope, Mode::Merge) {
                        tracing::warn!(error = %e, "will retry");
                    }
                }
                // Then once from the inode with the most links now (first
                // host on a tie): merges into it, records the conflicts, so
                // they are described from the same side every time.
                let mut best: Option<(usize, FileStat)> = None;
                for &h in &all {
                    if let Ok(st) = fsops::stat_at(self.layout.hosts[h].fd(), name)
                        && ineligible(&st).is_none()
                        && best.is_none_or(|(_, b)| st.nlink > b.nlink)
                    {
                        best = Some((h, st));
                    }
                }
                if let Some((h, st)) = best {
                    let scope: Vec<usize> = all.iter().copied().filter(|x| *x != h).collect();
                    if let Err(e) = self.converge(name, h, st, &scope, Mode::Tidy) {
                        tracing::warn!(error = %e, "will retry");
                    }
                }
            }
            if inodes.len() == 1 && !self.store.conflicts_of(name).is_empty() {
                self.store.set_conflicts(name, Vec::new());
            }
        }
        self.pay_owed();
        if complete {
            let gone: Vec<(OsString, fsops::FileId)> = self
                .store
                .all_files()
                .filter(|(n, id)| {
                    !present
                        .get(n)
                        .is_some_and(|v| v.iter().any(|(_, s)| s.id() == *id))
                })
                .map(|(n, id)| (n.clone(), id))
                .collect();
            for (n, id) in gone {
                self.store.forget(&n, id);
            }
            for n in self.store.conflict_names() {
                if !present.contains(&n) {
                    self.store.set_conflicts(&n, Vec::new());
                }
            }
            // A young generation recorded since, or held by no host any
            // more, is forgotten.
            let store = &self.store;
            self.held_young.retain(|(n, id), _| {
                !store.is_known(n, *id)
                    && present
                        .get(n)
                        .is_some_and(|v| v.iter().any(|(_, s)| s.id() == *id))
            });
        }
        young
    }

    /// `distlink migrate`: takes the host dirs as they are and links every
    /// candidate into every host that lacks it (identical copies merged,
    /// different ones left as conflicts), then records every file present
    /// as distributed, so the daemon starts clean. Resumable: it only ever
    /// adds what is missing. Files younger than `settle` are left out.
    pub fn link_everything(
        &mut self,
        now: SystemTime,
        settle: Duration,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<Young>> {
        let (present, _) = self.scan(!self.dry_run);
        if self.dedupe {
            self.precompare(&present);
        }
        let configured: Vec<String> = self.layout.hosts.iter().map(|h| h.name.clone()).collect();
        for h in self.store.hosts().clone() {
            if !configured.contains(&h) {
                self.store.remove_host(&h);
            }
        }
        for h in &configured {
            self.store.add_host(h);
        }
        let mut names: Vec<&OsStr> = present.names().collect();
        names.sort();
        let mut p = Progress {
            files_total: names.len() as u64,
            bytes_total: present.iter().map(|(_, v)| v[0].1.size).sum(),
            ..Progress::default()
        };
        let all: Vec<usize> = (0..self.layout.hosts.len()).collect();
        let mut young = Vec::new();
        for (k, name) in names.iter().enumerate() {
            let holders = &present.get(name).unwrap_or_default();
            p.files_done += 1;
            p.bytes_done += holders[0].1.size;
            progress(p);
            if let Some((h, st)) = holders.iter().find(|(_, st)| !old_enough(st, now, settle)) {
                young.push(Young {
                    host: *h,
                    name: name.to_os_string(),
                    stat: *st,
                });
                continue;
            }
            let Some((h, st)) = holders
                .iter()
                .max_by_key(|(h, s)| (s.nlink, std::cmp::Reverse(*h)))
            else {
                continue;
            };
            let scope: Vec<usize> = all.iter().copied().filter(|x| x != h).collect();
            if let Err(e) = self.converge(name, *h, *st, &scope, Mode::Arrival) {
                tracing::warn!(error = %e, "not linked; run migrate again");
                continue;
            }
            if !self.dry_run {
                // Every copy left (conflicting ones too) counts as distributed.
                for i in &all {
                    if let Ok(s) = fsops::stat_at(self.layout.hosts[*i].fd(), name)
                        && ineligible(&s).is_none()
                    {
                        self.store.record(name, s.id(), s.size);
                    }
                }
            }
            if k % 1000 == 999 {
                self.commit()?;
            }
        }
        self.pay_owed();
        self.store.mark_initialized();
        self.commit()?;
        Ok(young)
    }

    /// Takes every candidate on disk now as already distributed (no links
    /// are made): `distlink sync --adopt`.
    pub fn adopt(&mut self) -> usize {
        let (present, _) = self.scan(true);
        let mut n = 0;
        for (name, holders) in present.iter() {
            for (_, st) in holders {
                if !self.store.is_known(name, st.id()) {
                    self.store.record(name, st.id(), st.size);
                    n += 1;
                }
            }
        }
        n
    }

    /// Whether any host dir holds a candidate (used to refuse guessing when
    /// there is no record).
    pub fn any_candidate(&mut self) -> Option<std::path::PathBuf> {
        let (present, _) = self.scan(false);
        present
            .iter()
            .next()
            .map(|(n, v)| self.layout.hosts[v[0].0].path.join(n))
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
        let dirs: Vec<&crate::layout::HostDir> = std::mem::take(&mut self.touched)
            .into_iter()
            .filter_map(|h| self.layout.hosts.get(h))
            .collect();
        let fsync = |dirs: &[&crate::layout::HostDir]| {
            for dir in dirs {
                if let Err(e) = fsops::fsync_fd(dir.fd()) {
                    tracing::warn!(path = %dir.path.display(), error = %e, "fsync of host dir failed");
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
        self.store.commit()
    }
}

/// What a directory entry is to distlink, judged from its name and
/// `d_type` alone (a candidate is still `statx`ed before it counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    /// A temp name distlink itself makes (left by a crash).
    OwnTemp,
    /// A name that passes the filter, on a regular file or an unknown type.
    Candidate,
    /// Anything else: never looked at again.
    Other,
}

fn entry_kind(filter: &NameFilter, e: &fsops::DirEntry<'_>) -> EntryKind {
    use nix::dir::Type;
    if names::is_own_temp(e.name) {
        EntryKind::OwnTemp
    } else if filter.is_candidate(e.name) && matches!(e.kind, None | Some(Type::File)) {
        EntryKind::Candidate
    } else {
        EntryKind::Other
    }
}

/// A candidate's `statx` failed: gone since it was listed (skipped
/// quietly), or unreadable (warned about). Returns whether the listing is
/// still complete.
fn stat_failed(dir: &Path, name: &OsStr, err: Errno) -> bool {
    if err == Errno::ENOENT {
        return true;
    }
    tracing::warn!(path = %dir.join(name).display(), error = %err, "cannot stat; skipped");
    false
}

/// Reads the host dirs `usable` one at a time, stat'ing each inode once however
/// many host dirs link it (the stats of a block of entries spread over
/// the CPUs), into a compact [`Present`]: memory stays proportional to
/// the number of names and inodes, not to names × hosts.
pub fn survey(layout: &Layout, filter: &NameFilter, usable: &[usize]) -> Survey {
    /// Entries looked at together: bounds the memory of their stats.
    const BLOCK: usize = 4096;
    let mut out = Survey {
        complete: true,
        ..Survey::default()
    };
    let present = &mut out.present;
    let mut ino_idx: rustc_hash::FxHashMap<u64, u32> = Default::default();
    for &i in usable {
        let h = &layout.hosts[i];
        let entries = match fsops::list_dir(h.fd()) {
            Ok(v) => v,
            Err(e) => {
                out.unlisted.push((i, e));
                out.complete = false;
                continue;
            }
        };
        let mut todo: Vec<(usize, Option<u32>)> = Vec::with_capacity(BLOCK);
        let mut need: Vec<usize> = Vec::with_capacity(BLOCK);
        for start in (0..entries.len()).step_by(BLOCK) {
            todo.clear();
            need.clear();
            for k in start..(start + BLOCK).min(entries.len()) {
                let e = entries.get(k);
                match entry_kind(filter, &e) {
                    EntryKind::OwnTemp => {
                        out.temps.push((i, e.name.to_os_string()));
                        continue;
                    }
                    EntryKind::Other => continue,
                    EntryKind::Candidate => {}
                }
                // An inode already stat'ed with more than one link: this
                // entry is another link of it (an inode with one link
                // seen elsewhere means this name is something else now).
                match ino_idx.get(&e.ino) {
                    Some(&idx) if present.stats[idx as usize].nlink > 1 => {
                        todo.push((k, Some(idx)));
                    }
                    _ => {
                        todo.push((k, None));
                        need.push(k);
                    }
                }
            }
            let mut stats =
                par_map(&need, |&k| fsops::stat_at(h.fd(), entries.get(k).name)).into_iter();
            for &(k, known) in &todo {
                let e = entries.get(k);
                let idx = match known {
                    Some(idx) => idx,
                    None => match stats.next() {
                        Some(Ok(st)) => *ino_idx.entry(st.ino).or_insert_with(|| {
                            present.stats.push(st);
                            (present.stats.len() - 1) as u32
                        }),
                        Some(Err(err)) => {
                            out.complete &= stat_failed(&h.path, e.name, err);
                            continue;
                        }
                        None => continue,
                    },
                };
                if ineligible(&present.stats[idx as usize]).is_none() {
                    present.add(e.name, i, idx);
                }
            }
        }
    }
    out
}

/// The result of [`survey`].
#[derive(Debug, Default)]
pub struct Survey {
    pub present: Present,
    /// distlink's own leftover temp names: (host, name).
    pub temps: Vec<(usize, OsString)>,
    /// Host dirs that could not be listed.
    pub unlisted: Vec<(usize, Errno)>,
    /// False when some host dir or entry could not be looked at.
    pub complete: bool,
}

/// What a scan of the host dirs found: every candidate name, and which
/// hosts hold it on which inode. One stat per inode, and per name the
/// holders as runs of consecutive hosts on one inode: a name every host
/// holds on one inode (the usual case) costs its hash entry and nothing
/// else, so 100,000 names × 10 hosts fit in about 20 MiB.
#[derive(Debug, Default)]
pub struct Present {
    stats: Vec<FileStat>,
    names: rustc_hash::FxHashMap<Box<OsStr>, Few<Run>>,
}

/// Hosts `first .. first + count` hold inode `stats[idx]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    idx: u32,
    first: u16,
    count: u16,
}

impl Present {
    /// Host `host` holds `name` on inode `stats[idx]`. Hosts are added in
    /// increasing order for the runs to merge (any order is correct).
    fn add(&mut self, name: &OsStr, host: usize, idx: u32) {
        let host = host as u16;
        let run = Run {
            idx,
            first: host,
            count: 1,
        };
        match self.names.get_mut(name) {
            None => {
                self.names.insert(name.into(), Few::One(run));
            }
            Some(runs) => match runs.last_mut() {
                Some(r)
                    if r.idx == idx
                        && u32::from(r.first) + u32::from(r.count) == u32::from(host) =>
                {
                    r.count += 1;
                }
                _ => runs.push(run),
            },
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &OsStr> {
        self.names.keys().map(|k| &**k)
    }

    pub fn contains(&self, name: &OsStr) -> bool {
        self.names.contains_key(name)
    }

    fn expand(&self, runs: &Few<Run>) -> Vec<(usize, FileStat)> {
        runs.as_slice()
            .iter()
            .flat_map(|r| {
                let st = self.stats[r.idx as usize];
                (r.first..r.first + r.count).map(move |h| (usize::from(h), st))
            })
            .collect()
    }

    /// The hosts holding `name`, with the stat of what each holds.
    pub fn get(&self, name: &OsStr) -> Option<Vec<(usize, FileStat)>> {
        self.names.get(name).map(|v| self.expand(v))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&OsStr, Vec<(usize, FileStat)>)> {
        self.names.iter().map(|(n, v)| (&**n, self.expand(v)))
    }
}

/// What one directory holds, as far as distlink is concerned.
#[derive(Debug, Default)]
pub struct Listing {
    /// Candidates: (name, statx).
    pub files: Vec<(OsString, FileStat)>,
    /// distlink's own leftover temp names.
    pub temps: Vec<OsString>,
    /// False when some entry could not be looked at.
    pub complete: bool,
}

/// Lists the candidates directly inside one directory (`prune`, `migrate
/// --from`): names that pass the filter and entries that are eligible
/// regular files, stat'ed in parallel, plus distlink's own temp names.
pub fn list_candidates(
    dir: BorrowedFd<'_>,
    path: &Path,
    filter: &NameFilter,
) -> std::result::Result<Listing, Errno> {
    let entries = fsops::list_dir(dir)?;
    let mut l = Listing {
        complete: true,
        ..Listing::default()
    };
    let mut cand = Vec::new();
    for (k, e) in entries.iter().enumerate() {
        match entry_kind(filter, &e) {
            EntryKind::OwnTemp => l.temps.push(e.name.to_os_string()),
            EntryKind::Candidate => cand.push(k),
            EntryKind::Other => {}
        }
    }
    let stats = par_map(&cand, |&k| fsops::stat_at(dir, entries.get(k).name));
    for (&k, st) in cand.iter().zip(stats) {
        let name = entries.get(k).name;
        match st {
            Ok(st) => {
                if ineligible(&st).is_none() {
                    l.files.push((name.to_os_string(), st));
                }
            }
            Err(err) => l.complete &= stat_failed(path, name, err),
        }
    }
    Ok(l)
}

/// Runs `f` over `items` on every CPU, keeping the order.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    const CHUNK: usize = 256;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut parts: Vec<Vec<(usize, Vec<R>)>> = Vec::new();
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                sc.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let start = next.fetch_add(CHUNK, std::sync::atomic::Ordering::Relaxed);
                        if start >= items.len() {
                            break;
                        }
                        let end = (start + CHUNK).min(items.len());
                        mine.push((start, items[start..end].iter().map(&f).collect()));
                    }
                    mine
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(v) => parts.push(v),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
    });
    let mut chunks: Vec<(usize, Vec<R>)> = parts.into_iter().flatten().collect();
    chunks.sort_by_key(|(i, _)| *i);
    chunks.into_iter().flat_map(|(_, v)| v).collect()
}

/// Compares the bytes of two files (directory, its path, name), proving afterwards (by
/// re-stat of the open files) that neither changed while being read.
pub fn same_content(
    a: (BorrowedFd<'_>, &Path, &OsStr),
    ast: &FileStat,
    b: (BorrowedFd<'_>, &Path, &OsStr),
    bst: &FileStat,
) -> std::result::Result<bool, FileError> {
    let ea = |what, e| FileError::new(a.1, &a.2.to_os_string(), what, e);
    let eb = |what, e| FileError::new(b.1, &b.2.to_os_string(), what, e);
    if ast.size != bst.size {
        return Ok(false);
    }
    let mut fa = fsops::open_read_at(a.0, a.2, ast).map_err(|e| ea("open for compare", e))?;
    let mut fb = fsops::open_read_at(b.0, b.2, bst).map_err(|e| eb("open for compare", e))?;
    let same = fsops::same_bytes(&mut fa, &mut fb).map_err(|e| {
        eb(
            "read for compare",
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    })?;
    let a2 = fsops::stat_fd(fa.as_fd()).map_err(|e| ea("stat", e))?;
    let b2 = fsops::stat_fd(fb.as_fd()).map_err(|e| eb("stat", e))?;
    if !a2.same_content_stamp(ast) || !b2.same_content_stamp(bst) {
        return Err(eb("changed while being compared", Errno::EAGAIN));
    }
    Ok(same)
}

/// Removes one candidate from a directory, provided it still is the file
/// that was selected (same inode, size and mtime). Returns whether that
/// removed its last link, i.e. freed its bytes. With `dry_run`, only says
/// what it would do.
pub fn remove_candidate(
    dir: BorrowedFd<'_>,
    path: &Path,
    name: &OsStr,
    expect: &FileStat,
    dry_run: bool,
) -> std::result::Result<bool, FileError> {
    let err = |what, e| FileError::new(path, &name.to_os_string(), what, e);
    let st = fsops::stat_at(dir, name).map_err(|e| err("stat", e))?;
    if !st.same_content_stamp(expect) || ineligible(&st).is_some() {
        return Err(err(
            "changed since it was selected; left alone",
            Errno::ESTALE,
        ));
    }
    if !dry_run {
        fsops::unlink_at(dir, name).map_err(|e| err("unlink", e))?;
    }
    Ok(st.nlink == 1)
}

/// What importing a flat DISTDIR did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Imported {
    /// Renamed into the host dir (same filesystem).
    pub moved: u64,
    /// Copied, fsynced, verified, then removed from the source.
    pub copied: u64,
    /// Already in the host dir with identical bytes: the source name was
    /// dropped (nothing is lost).
    pub duplicates: u64,
    /// Same name, different bytes: both left in place.
    pub conflicts: Vec<String>,
    pub bytes: u64,
    pub errors: Vec<String>,
}

/// Moves every candidate of a flat directory into a host dir: a rename on
/// one filesystem, else (with `copy`) a copy that is fsynced and verified
/// before the original is removed. A file never leaves its old place
/// before it is complete in the new one; an existing name is never
/// replaced.
pub fn import_flat(
    from: &Path,
    host: &crate::layout::HostDir,
    filter: &NameFilter,
    copy: bool,
    dry_run: bool,
    mut progress: impl FnMut(u64),
) -> Result<Imported> {
    use crate::error::Error;
    let src = fsops::open_dir_path(from)
        .map_err(|e| Error::Usage(format!("--from {}: {e}", from.display())))?;
    let sst = fsops::stat_fd(src.as_fd()).map_err(|e| Error::sys(from, e))?;
    if sst.dev != host.stat.dev && !copy {
        return Err(Error::Usage(format!(
            "--from {} is on another filesystem than {}; pass --copy to copy (fsync, verify, then remove)",
            from.display(),
            host.path.display()
        )));
    }
    let listing = list_candidates(src.as_fd(), from, filter).map_err(|e| Error::sys(from, e))?;
    let mut out = Imported::default();
    let mut seq = 0u64;
    let mut files = listing.files;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, st) in files {
        progress(st.size);
        let err = |what, e| FileError::new(from, &name, what, e).to_string();
        match fsops::stat_at(host.fd(), &name) {
            Err(Errno::ENOENT) => {}
            Ok(t) if t.ino == st.ino && t.dev == st.dev => {
                // Already linked there: the source name is a spare link.
                out.duplicates += 1;
                if !dry_run && let Err(e) = fsops::unlink_at(src.as_fd(), &name) {
                    out.errors.push(err("unlink", e));
                }
                continue;
            }
            Ok(t) => {
                match same_content(
                    (src.as_fd(), from, &name),
                    &st,
                    (host.fd(), &host.path, &name),
                    &t,
                ) {
                    Ok(true) => {
                        out.duplicates += 1;
                        if !dry_run && let Err(e) = fsops::unlink_at(src.as_fd(), &name) {
                            out.errors.push(err("unlink", e));
                        }
                    }
                    Ok(false) => out.conflicts.push(format!(
                        "{} differs from {}; both left in place",
                        from.join(&name).display(),
                        host.path.join(&name).display()
                    )),
                    Err(e) => out.errors.push(e.to_string()),
                }
                continue;
            }
            Err(e) => {
                out.errors
                    .push(FileError::new(&host.path, &name, "stat", e).to_string());
                continue;
            }
        }
        out.bytes += st.size;
        if dry_run {
            if sst.dev == host.stat.dev {
                out.moved += 1;
            } else {
                out.copied += 1;
            }
            continue;
        }
        if sst.dev == host.stat.dev {
            match fsops::rename_noreplace(src.as_fd(), &name, host.fd(), &name) {
                Ok(()) => out.moved += 1,
                Err(e) => out.errors.push(err("rename into host dir", e)),
            }
            continue;
        }
        // Copy under a temp name, verify, then give it its name.
        seq += 1;
        let mut tmp = names::TEMP_PREFIX.to_vec();
        tmp.extend_from_slice(format!("{}.c{seq}", std::process::id()).as_bytes());
        let tmp = OsStr::from_bytes(&tmp).to_os_string();
        let res = (|| -> std::result::Result<(), String> {
            let mut f = fsops::open_read_at(src.as_fd(), &name, &st).map_err(|e| err("open", e))?;
            let (uid, gid) = fsops::owner_at(src.as_fd(), &name).map_err(|e| err("stat", e))?;
            fsops::copy_new(&mut f, host.fd(), &tmp, &st, uid, gid)
                .map_err(|e| FileError::new(&host.path, &tmp, "copy", e).to_string())?;
            let copied = fsops::stat_at(host.fd(), &tmp).map_err(|e| err("stat copy", e))?;
            let mut a = fsops::open_read_at(src.as_fd(), &name, &st).map_err(|e| err("open", e))?;
            let mut b =
                fsops::open_read_at(host.fd(), &tmp, &copied).map_err(|e| err("open copy", e))?;
            if !fsops::same_bytes(&mut a, &mut b)
                .map_err(|e| format!("{}: verify: {e}", from.join(&name).display()))?
            {
                return Err(format!(
                    "{}: copy does not verify",
                    from.join(&name).display()
                ));
            }
            fsops::rename_noreplace(host.fd(), &tmp, host.fd(), &name)
                .map_err(|e| err("rename copy into place", e))?;
            fsops::fsync_fd(host.fd()).map_err(|e| err("fsync host dir", e))?;
            fsops::unlink_at(src.as_fd(), &name).map_err(|e| err("remove original", e))?;
            Ok(())
        })();
        match res {
            Ok(()) => out.copied += 1,
            Err(e) => {
                let _ = fsops::unlink_at(host.fd(), &tmp);
                out.errors.push(e);
            }
        }
    }
    if !dry_run {
        let _ = fsops::fsync_fd(host.fd());
        let _ = fsops::fsync_fd(src.as_fd());
    }
    Ok(out)
}

/// A name for logs: lossless for UTF-8, escaped otherwise.
pub fn show(name: &OsStr) -> String {
    name.as_bytes().escape_ascii().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(ino: u64) -> FileStat {
        FileStat {
            dev: 1,
            ino,
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            birth_ns: 0,
            mnt_id: 0,
            mode: libc::S_IFREG | 0o644,
            nlink: 1,
        }
    }

    fn holders(p: &Present, name: &str) -> Vec<(usize, u64)> {
        p.get(OsStr::new(name))
            .unwrap_or_default()
            .into_iter()
            .map(|(h, st)| (h, st.ino))
            .collect()
    }

    #[test]
    fn present_keeps_every_holder_through_runs_gaps_and_other_inodes() {
        let mut p = Present {
            stats: vec![stat(10), stat(20)],
            ..Present::default()
        };
        // "a": hosts 0..4 on inode 10: one run.
        for h in 0..4 {
            p.add(OsStr::new("a"), h, 0);
        }
        // "b": a gap at host 2, and host 4 on another inode.
        for (h, i) in [(0, 0), (1, 0), (3, 0), (4, 1), (5, 0)] {
            p.add(OsStr::new("b"), h, i);
        }
        assert_eq!(holders(&p, "a"), vec![(0, 10), (1, 10), (2, 10), (3, 10)]);
        assert_eq!(p.names.get(OsStr::new("a")).map(Few::len), Some(1));
        assert_eq!(
            holders(&p, "b"),
            vec![(0, 10), (1, 10), (3, 10), (4, 20), (5, 10)]
        );
        assert!(p.contains(OsStr::new("b")) && !p.contains(OsStr::new("c")));
        assert_eq!(p.get(OsStr::new("c")), None);
        let mut all: Vec<&OsStr> = p.names().collect();
        all.sort();
        assert_eq!(all, vec![OsStr::new("a"), OsStr::new("b")]);
        assert_eq!(p.iter().map(|(_, v)| v.len()).sum::<usize>(), 9);
    }
}
