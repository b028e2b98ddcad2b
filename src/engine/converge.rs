//! Converging one name: every host in scope ends up with the chosen inode
//! (hard link into hosts lacking the name; identical copies merged by an
//! atomic exchange; different bytes recorded as a conflict, untouched).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;

use super::survey::{Present, par_map};
use super::{Engine, Failure, Mode, ineligible};
use crate::error::FileError;
use crate::fsops::{self, FileStat};
use crate::names;
use crate::quote;
use crate::state::Conflict;

impl Engine {
    /// Brings every host in `scope` in line with the file `expect` held by
    /// `origin`, then records it. Returns the hosts that lack the name and
    /// could not get it (they are owed the link and retried later).
    ///
    /// Only a host that lacks the name can be owed it: a host that holds
    /// the name in any form (the same inode, an identical or a different
    /// copy, or one that appeared while it was being linked) has never
    /// missed it, and a merge or comparison that failed there is left to
    /// the next scan, never turned into a link that could undo a prune.
    pub(super) fn converge(
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
    pub(super) fn converge_pinned(
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
                let fd = fsops::open_path_at(self.layout.hosts[origin].at(name), name)
                    .map_err(|e| self.ferr(origin, name, "open", e))?;
                let st =
                    fsops::stat_fd(fd.as_fd()).map_err(|e| self.ferr(origin, name, "stat", e))?;
                (fd, st)
            }
        };
        if ost.ino != expect.ino || ost.dev != expect.dev || ineligible(&ost).is_some() {
            return Err(self.ferr(origin, name, "changed while being looked at", Errno::ESTALE));
        }
        if !self.dry_run && !self.store.can_record() {
            // No link, no merge, that could not be recorded.
            return Err(self.ferr(
                origin,
                name,
                "the record cannot be written; not distributed yet",
                Errno::EAGAIN,
            ));
        }

        // Survey the hosts in scope.
        let mut lacking = Vec::new();
        let mut holders = vec![origin];
        let mut identical: Vec<(usize, FileStat)> = Vec::new();
        let mut different: Vec<(usize, FileStat)> = Vec::new();
        let mut failures: Vec<Failure> = Vec::new();
        let mut verdicts: HashMap<u64, bool> = HashMap::new();
        // Hosts whose copy waits for a comparison: left as they are.
        let mut pending: Vec<(usize, FileStat)> = Vec::new();
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
            match fsops::stat_at(self.layout.hosts[h].at(name), name) {
                Ok(s) if s.ino == ost.ino && s.dev == ost.dev => holders.push(h),
                Ok(s) if !s.is_regular() || s.size != ost.size => different.push((h, s)),
                Ok(s) => {
                    let v = match verdicts.get(&s.ino) {
                        Some(v) => Ok(*v),
                        None => match self.cached_verdict(&ost, &s) {
                            Some(v) => Ok(v),
                            None if self.compare_later(name, (origin, &ost), (h, &s)) => {
                                pending.push((h, s));
                                continue;
                            }
                            None => {
                                let v = self.same_content(name, origin, &ost, h, &s);
                                if let Ok(v) = v {
                                    self.remember_verdict(&ost, &s, v);
                                }
                                v
                            }
                        },
                    };
                    match v {
                        Ok(true) => identical.push((h, s)),
                        Ok(false) => different.push((h, s)),
                        Err(err) => {
                            // It holds the name: nothing is owed.
                            tracing::debug!(error = %err, "not compared; the next scan looks again");
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
            && let Ok(fd) = fsops::open_path_at(self.layout.hosts[*h].at(name), name)
            && fsops::stat_fd(fd.as_fd()).is_ok_and(|x| x.ino == s.ino && x.same_content_stamp(s))
        {
            winner = (*h, fd, *s);
        }
        let (_, wfd, wst) = &winner;
        let wst = *wst;

        // A host lacking a known generation pruned it: only arrivals and
        // owed links fill gaps. Owed links touch nothing else: a host owed
        // the name that holds it in any form now is paid.
        if matches!(mode, Mode::Tidy | Mode::Merge) {
            lacking.clear();
        }
        if mode == Mode::Owed {
            identical.clear();
            different.clear();
        }
        if matches!(mode, Mode::Arrival | Mode::Owed) && !self.dry_run {
            // Before any link: until the record is committed, the journal
            // tells a restart what is being linked where. Not written, not
            // linked.
            let targets = host_names(&self.layout, &lacking);
            if let Err(e) = self
                .store
                .journal_intent(name, wst.id(), wst.size, &targets)
            {
                tracing::debug!(error = %e, "links journal not written; nothing linked");
                return Err(self.ferr(
                    origin,
                    name,
                    "the links journal cannot be written; not distributed yet",
                    Errno::EAGAIN,
                ));
            }
        }
        for h in lacking {
            if self.dry_run {
                self.counters.linked += 1;
                continue;
            }
            if let Some(hook) = self.race_hook.as_mut() {
                hook(super::RacePoint::BeforeLink, h, name);
            }
            match fsops::link_fd_at(wfd.as_fd(), self.layout.hosts[h].at(name), name) {
                Ok(()) => {
                    self.touched.insert(h);
                    self.counters.linked += 1;
                    if let Some(e) = self.echoes.as_mut() {
                        e.insert((h, name.to_os_string()));
                    }
                    tracing::debug!(host = %self.layout.hosts[h].name, name = %quote::name(name), "linked");
                }
                Err(Errno::EEXIST) => {
                    // The host's own copy landed between the survey and the
                    // link (two hosts fetching one name at once): it holds
                    // the name, its own arrival merges or records it.
                    tracing::debug!(host = %self.layout.hosts[h].name, name = %quote::name(name),
                        "name appeared in the host meanwhile (EEXIST); not owed");
                }
                Err(e) => failures.push(Failure {
                    host: h,
                    err: self.ferr(h, name, "link", e),
                }),
            }
        }
        // The copies merged into the winner (or that a dry run would merge).
        let mut merged: Vec<(usize, FileStat)> = Vec::new();
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
                    merged.push((h, s));
                    continue;
                }
                match self.replace(h, name, wfd, &wst, &s) {
                    Ok(true) => {
                        merged.push((h, s));
                        self.counters.merged += 1;
                        tracing::debug!(host = %self.layout.hosts[h].name, name = %quote::name(name),
                            "merged identical copy into one inode");
                    }
                    // The host still holds the name (or pruned it meanwhile):
                    // not owed; a later scan merges what is left.
                    Ok(false) => tracing::debug!(host = %self.layout.hosts[h].name,
                        name = %quote::name(name), "changed during merge; left as it is"),
                    Err(err) => tracing::debug!(error = %err, "merge not done; left as it is"),
                }
            }
            self.merged_into(name, &merged, wst.ino);
        }

        if mode != Mode::Merge {
            // Conflicts: same name, different bytes. Both are kept untouched.
            let mut conflicts: Vec<Conflict> = self
                .store
                .conflicts_of(name)
                .iter()
                .filter(|c| {
                    let hs = &self.layout.hosts;
                    let looked_at =
                        |h: usize| hs[h].name == c.host && !pending.iter().any(|(p, _)| *p == h);
                    !scope.iter().any(|&h| looked_at(h)) && hs[origin].name != c.host
                })
                .cloned()
                .collect();
            // One warning per conflict: only an inode not yet part of a
            // known conflict of this name (from either side) is news.
            let mut known: Vec<u64> = self
                .store
                .conflicts_of(name)
                .iter()
                .flat_map(|c| [c.ino, c.other_ino])
                .collect();
            for (h, s) in &different {
                let c = Conflict {
                    name: name.to_os_string(),
                    host: self.layout.hosts[*h].name.clone(),
                    ino: s.ino,
                    other_host: self.layout.hosts[winner.0].name.clone(),
                    other_ino: wst.ino,
                };
                let already = known.contains(&c.ino) && known.contains(&c.other_ino);
                known.extend([c.ino, c.other_ino]);
                if !already {
                    self.counters.conflicts += 1;
                    tracing::warn!(
                        path = %quote::path(&self.layout.hosts[*h].path.join(name)),
                        other = %quote::path(&self.layout.hosts[winner.0].path.join(name)),
                        kind = s.kind(),
                        "conflict: same name, different content; both left untouched"
                    );
                }
                conflicts.push(c);
            }
            self.store.set_conflicts(name, conflicts);
        }

        self.store
            .record(name, wst.id(), wst.size, Some(wst.mtime_ns));
        if mode == Mode::Arrival {
            // (A dry run records them too, in its scratch record: it
            // decides the rest of the name as the run will.)
            // Every other copy the hosts hold now (different, identical but
            // not merged, or waiting for its comparison) was there before
            // this arrival was handled: recorded too, it never fills a gap
            // when its own turn comes (a host lacking the name by then has
            // pruned it). Without a stamp: it may still be being written,
            // which is no write to a distributed file. Compared with this
            // file only, a new one is merged with its identical copies
            // when its own turn comes (`merge_aside`).
            for (_, s) in different.iter().chain(&identical).chain(&pending) {
                if ineligible(s).is_none() && !self.store.is_known(name, s.id()) {
                    self.store.record(name, s.id(), s.size, None);
                    if !merged.iter().any(|(_, m)| m.ino == s.ino) {
                        self.aside.insert((name.to_os_string(), s.id()));
                    }
                }
            }
        }
        let mut failed = Vec::new();
        for f in failures {
            self.counters.failed += 1;
            tracing::warn!(error = %f.err, "will retry");
            self.store
                .owe(name, wst.id(), &self.layout.hosts[f.host].name);
            failed.push(f.host);
        }
        if mode == Mode::Arrival && !self.dry_run {
            // Done: the generation is distributed, a host lacking it from
            // now on has pruned it; the hosts whose link failed are owed it.
            let names = host_names(&self.layout, &failed);
            if let Err(e) = self
                .store
                .journal_distributed(name, wst.id(), wst.size, &names)
            {
                tracing::debug!(error = %e, "links journal not written");
            }
        }
        Ok(failed)
    }

    /// The copies `merged` (host, what it held) of `name` now are the inode
    /// `into`: none waits aside any more, and a recorded conflict that
    /// named one of them names `into` (no row keeps an inode merged away).
    fn merged_into(&mut self, name: &OsStr, merged: &[(usize, FileStat)], into: u64) {
        if merged.is_empty() {
            return;
        }
        for (_, s) in merged {
            if !self.aside.is_empty() {
                self.aside.remove(&(name.to_os_string(), s.id()));
            }
        }
        let hosts = &self.layout.hosts;
        let was = |host: &str, ino: u64| {
            merged
                .iter()
                .any(|(h, s)| hosts[*h].name == host && s.ino == ino)
        };
        let mut list = self.store.conflicts_of(name).to_vec();
        let mut changed = false;
        for c in &mut list {
            if was(&c.host, c.ino) {
                c.ino = into;
                changed = true;
            }
            if was(&c.other_host, c.other_ino) {
                c.other_ino = into;
                changed = true;
            }
        }
        if changed {
            list.retain(|c| c.ino != c.other_ino);
            self.store.set_conflicts(name, list);
        }
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
            (ha.at(name), &ha.path, name),
            ast,
            (hb.at(name), &hb.path, name),
            bst,
        )
    }

    /// Compares, in parallel, every pair of same-named, same-sized files on
    /// different inodes that converging `present` will need, so that the
    /// (serial) linking finds the answers ready.
    pub(super) fn precompare(&mut self, present: &Present) {
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
                (ha.at(name), &ha.path, name),
                ast,
                (hb.at(name), &hb.path, name),
                bst,
            )
        });
        for ((_, _, ast, _, bst), v) in pairs.iter().zip(verdicts) {
            if let Ok(v) = v {
                self.remember_verdict(ast, bst, v);
            }
        }
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
        self.seq += 1;
        let tmp = names::TempLink {
            winner: wst.ino,
            old: old.ino,
            old_mtime_ns: old.mtime_ns,
        }
        .name(self.seq);
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
        if let Some(hook) = self.race_hook.as_mut() {
            hook(super::RacePoint::BeforeExchange, host, name);
        }
        let dir = self.layout.hosts[host].fd();
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
    tracing::debug!(a = %crate::quote::path(&a.1.join(a.2)), b = %crate::quote::path(&b.1.join(b.2)), bytes = ast.size, "comparing");
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

/// The names of hosts given by index.
fn host_names<'a>(layout: &'a crate::layout::Layout, hosts: &[usize]) -> Vec<&'a str> {
    hosts
        .iter()
        .map(|&h| layout.hosts[h].name.as_str())
        .collect()
}
