//! Full scans: the start-up reconcile, rescans, poll ticks; `migrate`'s
//! link-everything pass and `sync --adopt`.

use std::ffi::{OsStr, OsString};
use std::time::{Duration, SystemTime};

use super::survey::{Present, survey};
use super::{Engine, Mode, Progress, Young, ineligible, old_enough, same_content};
use crate::error::Result;
use crate::fsops::{self, FileStat};
use crate::quote;

impl Engine {
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
            tracing::error!(path = %quote::path(&self.layout.hosts[*i].path), error = %e, "cannot list host dir");
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
                tracing::info!(path = %quote::path(&path), "removed stale temp link");
            }
        } else {
            tracing::warn!(path = %quote::path(&path), "stale temp name holds the only copy of its bytes; left for the admin");
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
}
