//! Full scans: the start-up reconcile, rescans, poll ticks; `migrate`'s
//! link-everything pass and `sync --adopt`.

use std::ffi::{OsStr, OsString};
use std::time::{Duration, SystemTime};

use super::survey::{Present, survey};
use super::{Engine, Mode, Progress, Young, ineligible, old_enough};
use crate::error::Result;
use crate::fsops::{self, FileStat};
use crate::names;
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
            self.cleanup_temps(&s.temps, &s.present);
        }
        (s.present, complete)
    }

    /// Temp names left by a crash in the middle of a merge, whose name
    /// (see [`names::TempLink`]) proves what they are without reading a
    /// byte: a spare link of the winning inode (the crash came before the
    /// exchange), or the copy the exchange swapped out (the winner now
    /// holds a name of that host dir, and the copy is unchanged since it
    /// was found identical). Both go. Anything else under the prefix (a
    /// `migrate --copy` leftover, a name a client planted) is left alone,
    /// with one warning for all: start-up costs the same whatever clients
    /// plant.
    fn cleanup_temps(&self, temps: &[(usize, OsString)], present: &Present) {
        if temps.is_empty() {
            return;
        }
        // Which inode each host dir holds under some name, and its size.
        let mut held: rustc_hash::FxHashMap<(usize, u64), u64> = Default::default();
        for (_, holders) in present.iter() {
            for (h, st) in holders {
                held.insert((h, st.ino), st.size);
            }
        }
        let mut left: Vec<std::path::PathBuf> = Vec::new();
        for (host, name) in temps {
            let h = &self.layout.hosts[*host];
            let Ok(st) = fsops::stat_at(h.fd(), name) else {
                continue;
            };
            let ours = names::TempLink::parse(name).filter(|_| st.is_regular());
            let spare = ours.is_some_and(|t| {
                (st.ino == t.winner && st.nlink > 1)
                    || (st.ino == t.old
                        && st.mtime_ns == t.old_mtime_ns
                        && held.get(&(*host, t.winner)) == Some(&st.size))
            });
            if spare && fsops::unlink_at(h.fd(), name).is_ok() {
                tracing::info!(path = %quote::path(&h.path.join(name)), "removed a temp link left by a crash during a merge");
            } else {
                left.push(h.path.join(name));
            }
        }
        if let Some(first) = left.first() {
            tracing::warn!(
                count = left.len(),
                first = %quote::path(first),
                "names under distlink's temp prefix that are not provably its own leftovers; left for the admin"
            );
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
        for name in names {
            if self.stopping() {
                // Asked to stop: what was done is recorded at the commit,
                // the rest is left to the next scan (nothing is forgotten
                // on a partial pass).
                tracing::info!("reconcile stopped early; the next start finishes it");
                return young;
            }
            if !self.dry_run && !self.store.can_record() {
                // Paused: the next scan, once the record can be written
                // again, does the rest.
                break;
            }
            let holders = present.get(name).unwrap_or_default();
            self.converge_name(name, &holders, now, settle, &mut young);
        }
        self.pay_owed();
        // A generation is forgotten only when no host the record knows
        // holds it: hosts that left the configuration count too (were one
        // the last to hold it, its copy would look new when it came back).
        let away = self.held_by_absent_hosts();
        if complete && let Some(away) = away {
            let gone: Vec<(OsString, fsops::FileId)> = self
                .store
                .all_files()
                .filter(|(n, id)| {
                    !present
                        .get(n)
                        .is_some_and(|v| v.iter().any(|(_, s)| s.id() == *id))
                        && !away.contains(&((*n).clone(), *id))
                })
                .map(|(n, id)| (n.clone(), id))
                .collect();
            for (n, id) in gone {
                self.store.forget(&n, id);
            }
            self.forget_verdicts_except(&present.generations());
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
            // A copy recorded aside that no host holds any more is gone.
            self.aside.retain(|(n, id)| {
                present
                    .get(n)
                    .is_some_and(|v| v.iter().any(|(_, s)| s.id() == *id))
            });
        }
        young
    }

    /// The generations the dirs of hosts that left the configuration hold
    /// (read only; a dir that is gone holds nothing). `None` when one
    /// could not be read: then nothing can be forgotten safely.
    fn held_by_absent_hosts(&self) -> Option<rustc_hash::FxHashSet<(OsString, fsops::FileId)>> {
        let mut out = rustc_hash::FxHashSet::default();
        for host in self.store.absent().keys() {
            let path = self.layout.root.join(host);
            let dir = match fsops::open_dir_at(self.layout.root_fd(), OsStr::new(host)) {
                Ok(fd) => fd,
                Err(nix::errno::Errno::ENOENT) => continue,
                Err(e) => {
                    tracing::warn!(path = %quote::path(&path), error = %e, "cannot read the dir of a host that left the configuration; the record forgets nothing until it can");
                    return None;
                }
            };
            match super::list_candidates(std::os::fd::AsFd::as_fd(&dir), &path, &self.filter) {
                Ok(l) if l.complete => {
                    out.extend(l.files.into_iter().map(|(n, st)| (n, st.id())));
                }
                _ => return None,
            }
        }
        Some(out)
    }

    /// One name as a scan found it (`holders`: every host holding it, with
    /// what it holds): a complete generation not recorded yet is
    /// distributed; one too young is returned in `young`; a known name on
    /// several inodes has its identical copies merged and its conflicts
    /// recorded.
    fn converge_name(
        &mut self,
        name: &OsStr,
        holders: &[(usize, FileStat)],
        now: SystemTime,
        settle: Duration,
        young: &mut Vec<Young>,
    ) {
        let all: Vec<usize> = (0..self.layout.hosts.len()).collect();
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
        // Copies recorded aside (by an arrival just now or before) are
        // merged once complete: by the pass below when nothing new came,
        // each from its own side when something did. A young one is
        // settled first, like an unknown one.
        for (h, st) in &inodes {
            if !self.is_aside(name, st) {
                continue;
            }
            if !old_enough(st, now, settle) {
                if !young.iter().any(|y| y.host == *h && y.name == name) {
                    young.push(Young {
                        host: *h,
                        name: name.to_os_string(),
                        stat: *st,
                    });
                }
                continue;
            }
            let still = fsops::stat_at(self.layout.hosts[*h].at(name), name)
                .is_ok_and(|now| now.ino == st.ino);
            if acted && still {
                if let Err(e) = self.merge_aside(name, *h, None, *st) {
                    tracing::warn!(error = %e, "will retry");
                }
            } else {
                self.aside.remove(&(name.to_os_string(), st.id()));
            }
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
                let still = fsops::stat_at(self.layout.hosts[*h].at(name), name)
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
                if let Ok(st) = fsops::stat_at(self.layout.hosts[h].at(name), name)
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

    /// How long `migrate` and `sync` wait at most for files a scan found
    /// too young: four settle times, at least 20 s, at most 10 minutes.
    pub fn settle_limit(settle: Duration) -> Duration {
        (settle * 4).clamp(Duration::from_secs(20), Duration::from_secs(600))
    }

    /// Waits for the files a scan found too young (written less than the
    /// settle time ago: freshly copied in) instead of leaving them: each
    /// name is looked at again, as a scan would, once its youngest copy
    /// could be old enough, and distributed when it is; until none is left
    /// or `limit` has passed. Returns those still changing then. `waiting`
    /// is told how many are left and how much of the limit (for a display).
    pub fn settle_young(
        &mut self,
        mut young: Vec<Young>,
        settle: Duration,
        limit: Duration,
        waiting: &mut dyn FnMut(usize, Duration),
    ) -> Result<Vec<Young>> {
        let deadline = std::time::Instant::now() + limit;
        while !young.is_empty() && !self.stopping() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            waiting(young.len(), left);
            let now = SystemTime::now();
            let next = young
                .iter()
                .map(|y| settle.saturating_sub(super::age(&y.stat, now)))
                .min()
                .unwrap_or_default();
            // A little past the moment, so that it is old enough then;
            // in short steps, so that a stop request is seen.
            let until = std::time::Instant::now() + (next + Duration::from_millis(20)).min(left);
            while !self.stopping() {
                let rest = until.saturating_duration_since(std::time::Instant::now());
                if rest.is_zero() {
                    break;
                }
                std::thread::sleep(rest.min(Duration::from_millis(100)));
            }
            if self.stopping() {
                break;
            }
            let mut names: Vec<OsString> = young.drain(..).map(|y| y.name).collect();
            names.sort();
            names.dedup();
            let now = SystemTime::now();
            for name in names {
                self.revisit_into(&name, now, settle, &mut young);
            }
            self.commit()?;
        }
        Ok(young)
    }

    /// Looks at `name` in every host again, as a scan would (after a
    /// comparison it waited for came back).
    pub fn revisit(&mut self, name: &OsStr, now: SystemTime, settle: Duration) {
        // Young ones have events of their own coming.
        self.revisit_into(name, now, settle, &mut Vec::new());
    }

    /// [`Engine::revisit`], collecting the copies still too young.
    fn revisit_into(
        &mut self,
        name: &OsStr,
        now: SystemTime,
        settle: Duration,
        young: &mut Vec<Young>,
    ) {
        let holders: Vec<(usize, FileStat)> = (0..self.layout.hosts.len())
            .filter_map(|h| {
                fsops::stat_at(self.layout.hosts[h].at(name), name)
                    .ok()
                    .filter(|s| ineligible(s).is_none())
                    .map(|s| (h, s))
            })
            .collect();
        if !holders.is_empty() {
            self.converge_name(name, &holders, now, settle, young);
        }
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
        if self.store.is_initialized() {
            // Hosts that left are remembered, ones that came back owed what
            // they missed, as the daemon does.
            self.sync_hosts()?;
        } else {
            for h in &configured {
                self.store.add_host(h);
            }
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
            if self.stopping() {
                // Not marked initialized: running migrate again finishes.
                self.commit()?;
                return Ok(young);
            }
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
            // Copies identical to each other but not to that one merge too.
            for (h, st) in holders {
                if self.is_aside(name, st)
                    && fsops::stat_at(self.layout.hosts[*h].at(name), name)
                        .is_ok_and(|now| now.ino == st.ino)
                    && let Err(e) = self.merge_aside(name, *h, None, *st)
                {
                    tracing::warn!(error = %e, "not merged; the daemon merges it when it starts");
                }
            }
            if !self.dry_run {
                // Every copy left (conflicting ones too) counts as distributed.
                for i in &all {
                    if let Ok(s) = fsops::stat_at(self.layout.hosts[*i].at(name), name)
                        && ineligible(&s).is_none()
                    {
                        self.store.record(name, s.id(), s.size, Some(s.mtime_ns));
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
    /// Files written in place since they were distributed are accepted as
    /// they are now.
    pub fn adopt(&mut self) -> Result<usize> {
        let (present, _) = self.scan(true);
        let stamps = self.store.recorded_stamps()?;
        let mut n = 0;
        for (name, holders) in present.iter() {
            for (_, st) in holders {
                let id = st.id();
                if !self.store.is_known(name, id) {
                    self.store.record(name, id, st.size, Some(st.mtime_ns));
                    n += 1;
                } else if stamps
                    .get(&(name.to_os_string(), id))
                    .is_some_and(|s| super::written_since(*s, &st))
                {
                    self.store.restamp(name, id, st.size, st.mtime_ns);
                }
            }
        }
        Ok(n)
    }
}
