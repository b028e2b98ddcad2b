//! One arrival: a file completed in a host (renamed in, or written and
//! settled) is pinned, checked against the record, and converged into the
//! hosts in scope. Also the echoes of the engine's own links, so their
//! `CREATE` events cost no `stat`.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;

use super::{Arrival, Engine, Mode, ineligible};
use crate::error::FileError;
use crate::fsops::{self, FileId, FileStat};

impl Engine {
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
        let st = fsops::stat_at(self.layout.hosts.get(host)?.at(name), name).ok()?;
        if ineligible(&st).is_some() {
            return None;
        }
        if self.store.is_known(name, st.id()) && !self.is_aside(name, &st) {
            if !created {
                self.written_in_place(host, name, &st);
            }
            return None;
        }
        Some(st)
    }

    /// A distributed file was written and closed in `host`: every host
    /// holds that one inode, so every host now sees the change. Said once
    /// per change (status and check keep showing it).
    fn written_in_place(&mut self, host: usize, name: &OsStr, st: &FileStat) {
        let id = st.id();
        if self.store.recorded_stamp(name, id).is_none() && self.pending() {
            // Distributed moments ago: its record is not written yet.
            if let Err(e) = self.commit() {
                tracing::error!(error = %e, "cannot write the record");
            }
        }
        let Some(was) = self.store.recorded_stamp(name, id) else {
            return;
        };
        let now = (st.size, st.mtime_ns);
        if !super::written_since(was, st)
            || !self.warned_writes.insert((name.to_os_string(), id, now))
        {
            return;
        }
        let h = &self.layout.hosts[host];
        tracing::warn!(
            host = %h.name,
            path = %crate::quote::path(&h.path.join(name)),
            size_was = was.0,
            size = st.size,
            "a distributed file was written in place: every host holds this one inode and sees the change; \
             delete it from every host dir to have it fetched again, or accept it with `distlink sync --adopt`"
        );
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

    /// A file completed in `host` (renamed in, or written and settled).
    pub fn arrive(&mut self, host: usize, name: &OsStr) -> std::result::Result<Arrival, FileError> {
        self.arrive_as(host, name, None)
    }

    /// [`Engine::arrive`] of the generation `expect` found complete: if
    /// the name now holds another file, nothing is linked
    /// ([`Arrival::Replaced`]).
    pub fn arrive_as(
        &mut self,
        host: usize,
        name: &OsStr,
        expect: Option<FileId>,
    ) -> std::result::Result<Arrival, FileError> {
        if !self.filter.is_candidate(name) {
            return Ok(Arrival::Skipped("ignored name"));
        }
        // Pinned first, then looked at: what is checked is what gets linked.
        let fd = match fsops::open_path_at(self.layout.hosts[host].at(name), name) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(Arrival::Gone),
            Err(e) => return Err(self.ferr(host, name, "open", e)),
        };
        let st = fsops::stat_fd(fd.as_fd()).map_err(|e| self.ferr(host, name, "stat", e))?;
        if let Some(why) = ineligible(&st) {
            return Ok(Arrival::Skipped(why));
        }
        if expect.is_some_and(|id| id != st.id()) {
            return Ok(Arrival::Replaced);
        }
        if self.store.is_known(name, st.id()) {
            if self.is_aside(name, &st) {
                self.merge_aside(name, host, Some(fd), st)?;
            }
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
    pub(super) fn arrival_scope(&self, name: &OsStr, origin: usize, st: &FileStat) -> Vec<usize> {
        // Usually empty: then no key is built.
        let held = (!self.held_young.is_empty())
            .then(|| self.held_young.get(&(name.to_os_string(), st.id())))
            .flatten();
        (0..self.layout.hosts.len())
            .filter(|&h| h != origin)
            .filter(|&h| held.is_none_or(|held| !held.contains(&self.layout.hosts[h].name)))
            .collect()
    }

    /// Whether `st` is a copy of `name` recorded beside another host's new
    /// generation and not merged yet (see `aside`).
    pub(super) fn is_aside(&self, name: &OsStr, st: &FileStat) -> bool {
        // Usually empty: then no key is built.
        !self.aside.is_empty() && self.aside.contains(&(name.to_os_string(), st.id()))
    }

    /// A copy recorded aside is complete now (it arrived, or a scan or
    /// migrate found it old enough): merged with its identical copies in
    /// every host, with no gap filled (a host lacking the name by now pruned
    /// it); the recorded conflicts follow the merge (`merged_into`).
    pub(super) fn merge_aside(
        &mut self,
        name: &OsStr,
        host: usize,
        pinned: Option<OwnedFd>,
        st: FileStat,
    ) -> std::result::Result<(), FileError> {
        if self.dedupe {
            let scope: Vec<usize> = (0..self.layout.hosts.len())
                .filter(|&h| h != host)
                .collect();
            let pinned = pinned.map(|fd| (fd, st));
            self.converge_pinned(name, host, pinned, st, &scope, Mode::Merge)?;
        }
        self.aside.remove(&(name.to_os_string(), st.id()));
        Ok(())
    }

    /// A young generation was distributed (and recorded).
    pub(super) fn forget_held(&mut self, name: &OsStr, st: &FileStat) {
        if !self.held_young.is_empty() {
            self.held_young.remove(&(name.to_os_string(), st.id()));
        }
    }
}
