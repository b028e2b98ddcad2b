//! Links owed to hosts (a link that failed, a host being seeded) and
//! changes of the host list.

use std::ffi::{OsStr, OsString};

use super::{Engine, Mode, RETRY_FIRST, RETRY_MAX, ineligible};
use crate::error::Result;
use crate::fsops;
use crate::quote;

impl Engine {
    /// Links still owed to hosts (failed earlier, or seeding a new host).
    pub fn pay_owed(&mut self) {
        let now = std::time::Instant::now();
        for (k, (name, id, hosts)) in self.store.owed().into_iter().enumerate() {
            if !self.dry_run && !self.store.can_record() {
                // Nothing is linked that could not be recorded.
                return;
            }
            if self.stopping() {
                return; // the rows not paid stay owed
            }
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
            // Links owed to an absent host wait for its return.
            let targets: Vec<usize> = hosts
                .iter()
                .filter_map(|h| self.layout.index_of(h))
                .collect();
            if targets.is_empty() {
                continue;
            }
            // Find a host that still holds this generation.
            let source = (0..self.layout.hosts.len())
                .filter(|h| !targets.contains(h))
                .chain(targets.iter().copied())
                .find_map(|h| {
                    fsops::stat_at(self.layout.hosts[h].at(&name), &name)
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
                            if self.store.can_record() {
                                tracing::warn!(error = %e, "will retry");
                            }
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
                if failed != [usize::MAX]
                    && let Some(i) = self.layout.index_of(h)
                    && !failed.contains(&i)
                {
                    self.store.paid(&name, id, h);
                    paid.push(h.as_str());
                }
            }
            // Done: a host that prunes its new link before the commit keeps
            // its prune after a crash.
            if !self.dry_run
                && let Err(e) = self.store.journal_paid(&name, id, &paid)
            {
                tracing::debug!(error = %e, "links journal not written");
            }
        }
    }

    /// `name` was seen appearing in `host` (renamed or linked in, or
    /// created): a host that holds a name in any form has never missed it,
    /// so whatever link of that name it was owed is paid now. (Were it
    /// paid later, after the host pruned its own copy, the prune would be
    /// undone.)
    pub fn host_holds(&mut self, host: usize, name: &OsStr) {
        if !self.store.has_owed() {
            return;
        }
        let Some(h) = self.layout.hosts.get(host).map(|h| h.name.clone()) else {
            return;
        };
        for id in self.store.owed_to(name, &h) {
            self.store.paid(name, id, &h);
            self.backoff.remove(&(name.to_os_string(), id));
            if !self.dry_run
                && let Err(e) = self.store.journal_paid(name, id, &[h.as_str()])
            {
                tracing::warn!(error = %e, "cannot write the links journal");
            }
            tracing::debug!(host = %h, name = %quote::name(name), "owed link dropped: the host holds the name");
        }
    }

    /// Makes every owed link due now (after a reload: the admin may have
    /// fixed what made them fail).
    pub fn retry_now(&mut self) {
        self.backoff.clear();
    }

    /// Aligns the record's host list with the configured hosts. A new host
    /// is owed every distributed file. A host that left the configuration
    /// is remembered as absent (its dir is left untouched); when it comes
    /// back it is owed only what was distributed while it was away, so its
    /// prunes stay prunes. Forgetting a host is an explicit act
    /// ([`crate::state::Store::remove_host`]).
    pub fn sync_hosts(&mut self) -> Result<()> {
        let configured: Vec<String> = self.layout.hosts.iter().map(|h| h.name.clone()).collect();
        let leaving: Vec<String> = self
            .store
            .hosts()
            .iter()
            .filter(|h| !configured.contains(h) && !self.store.absent().contains_key(*h))
            .cloned()
            .collect();
        if !leaving.is_empty() {
            // What it got is told from what it misses by the commit it left at.
            self.commit()?;
            for h in &leaving {
                tracing::info!(host = %h, "host no longer configured; its dir is left as it is, and it is remembered: if it comes back, it gets only what is distributed meanwhile");
                self.store.mark_absent(h);
            }
        }
        for h in &configured {
            if let Some(&since) = self.store.absent().get(h) {
                self.commit()?;
                let missed: Vec<(OsString, fsops::FileId)> = self
                    .store
                    .recorded_after(since)?
                    .into_iter()
                    .filter(|(n, id)| self.store.is_known(n, *id))
                    .collect();
                tracing::info!(host = %h, missed = missed.len(), "host configured again: it is owed what was distributed while it was away; what it pruned stays pruned");
                for (n, id) in missed {
                    self.store.owe(&n, id, h);
                }
                self.store.add_host(h);
                self.commit()?;
            } else if !self.store.hosts().contains(h) {
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
}
