//! Links owed to hosts (a link that failed, a host being seeded) and
//! changes of the host list.

use std::ffi::OsString;

use super::{Engine, Mode, RETRY_FIRST, RETRY_MAX, ineligible};
use crate::error::Result;
use crate::fsops;

impl Engine {
    /// Links still owed to hosts (failed earlier, or seeding a new host).
    pub fn pay_owed(&mut self) {
        let now = std::time::Instant::now();
        for (k, (name, id, hosts)) in self.store.owed().into_iter().enumerate() {
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
}
