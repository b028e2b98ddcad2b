//! The cheap poll: what poll mode looks at each tick, so that a tick costs
//! one `statx` per host dir when nothing changed.
//!
//! Per tick, each host dir is `statx`ed by its name under the root (which
//! also shows it vanished or was replaced). Only a dir whose change stamp
//! (mtime, ctime) moved since its last listing is listed again, and of its
//! entries only those whose (name, inode number) the previous listing did not
//! have are `statx`ed; the ones of generations not recorded yet are
//! returned, for the caller to settle (re-stat'ed one by one until
//! unchanged for the settle time: on CephFS an append does not move the
//! dir's mtime, only the file's). Nothing is decided here: distributing
//! stays `Engine::arrive`'s job, and a prune stays final because nothing
//! but a listing is skipped.
//!
//! Timestamp granularity: a change made within one clock tick of a listing
//! may leave the stamp as it was. So when a listing saw the stamp move to a
//! value within one "grain" of the local clock (2 s where stamps are whole
//! seconds, 50 ms otherwise), the dir is listed once more at the first tick
//! at least a grain later: any change after that listing is at least a
//! grain after the one that set the stamp, so it moves the stamp. On a
//! remote filesystem the stamps come from another clock (and may lag), so
//! there a dir whose stamp moved is always listed once more, 2 s later.
//!
//! What this misses, a full scan (`[watch] full_scan_every`, SIGHUP) finds:
//! a name removed and created again on the same inode number between two
//! listings of its dir, or an entry whose `statx` failed.

use std::ffi::OsString;
use std::hash::BuildHasher;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;

use super::Engine;
use super::survey::{EntryKind, entry_kind};
use crate::fsops::{self, FileStat};
use crate::quote;

/// The grain where stamps are whole seconds or come from another machine.
const COARSE: Duration = Duration::from_secs(2);
/// The grain of a local filesystem with sub-second stamps (a kernel clock
/// tick is at most 10 ms).
const FINE: Duration = Duration::from_millis(50);

/// What the poll remembers of one host dir's last listing.
#[derive(Debug)]
struct DirState {
    /// The dir listed (a replaced dir starts over).
    dev: u64,
    ino: u64,
    /// (mtime, ctime) seen by the `statx` before the last listing; `None`:
    /// never listed.
    stamp: Option<(i64, i64)>,
    /// When the dir must be listed once more although its stamp did not
    /// move (see the module doc).
    recheck: Option<Instant>,
    /// Keyed hashes of (name, inode number) of the candidates listed, sorted.
    seen: Vec<u64>,
    /// The last listing error, said once.
    error: Option<Errno>,
}

/// The poll's memory of every host dir, by host index.
#[derive(Debug)]
pub struct Poller {
    dirs: Vec<Option<DirState>>,
    /// The filesystem is remote: its stamps come from another clock.
    remote: bool,
    /// Random keys: a client cannot pick a name whose hash matches another.
    hasher: std::collections::hash_map::RandomState,
    /// Host dirs the engine linked into since their last listing.
    echo: Vec<bool>,
}

/// A new entry of a generation not recorded yet.
#[derive(Debug, Clone)]
pub struct Found {
    pub host: usize,
    pub name: OsString,
    pub stat: FileStat,
    /// When `stat` was taken: its settle clock starts there, not when the
    /// tick (which may list other big dirs after it) ends.
    pub at: Instant,
}

/// What one tick did and found.
#[derive(Debug, Default)]
pub struct Tick {
    /// Host dirs `statx`ed.
    pub looked: usize,
    /// Host dirs listed again.
    pub listed: usize,
    /// Entries `statx`ed.
    pub stated: usize,
    pub found: Vec<Found>,
    /// Host dirs that vanished or were replaced (to reopen).
    pub replaced: Vec<usize>,
    /// Some due host dirs were left for the next tick (see
    /// [`Engine::poll_tick`]).
    pub more: bool,
}

impl Poller {
    pub fn new(remote: bool) -> Poller {
        Poller {
            dirs: Vec::new(),
            remote,
            hasher: Default::default(),
            echo: Vec::new(),
        }
    }

    /// The engine linked into host dir `host`: its stamp moved, most likely
    /// by that alone, so it is listed after the dirs a client changed. (It
    /// is still listed: a client may have changed it too.)
    pub fn expect_echo(&mut self, host: usize) {
        if host >= self.echo.len() {
            self.echo.resize(host + 1, false);
        }
        self.echo[host] = true;
    }

    fn grain(&self, st: &FileStat) -> Duration {
        const SEC: i64 = 1_000_000_000;
        if self.remote || (st.mtime_ns % SEC == 0 && st.ctime_ns % SEC == 0) {
            COARSE
        } else {
            FINE
        }
    }

    /// When a dir whose stamp moved must be listed once more: a grain
    /// after `at` (the `statx` before the listing, at wall time `wall`),
    /// unless the stamp is already a grain older than the local clock
    /// (then any later change gets a later stamp). A remote filesystem's
    /// stamps come from another clock: always.
    fn recheck(&self, st: &FileStat, at: Instant, wall: SystemTime) -> Option<Instant> {
        let grain = self.grain(st);
        let stamp = st.mtime_ns.max(st.ctime_ns);
        let now = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let old = stamp.saturating_add(grain.as_nanos() as i64) <= now;
        (self.remote || !old).then_some(at + grain)
    }

    fn key(&self, name: &std::ffi::OsStr, ino: u64) -> u64 {
        self.hasher
            .hash_one((std::os::unix::ffi::OsStrExt::as_bytes(name), ino))
    }
}

impl Engine {
    /// Remembers what every host dir holds now, without `statx`ing a file:
    /// called just before a full scan, which looks at all of it. Anything
    /// that changes after this is new to the next tick.
    pub fn poll_baseline(&self, p: &mut Poller) {
        p.dirs.clear();
        p.echo.clear();
        for i in 0..self.layout.hosts.len() {
            let (at, wall) = (Instant::now(), SystemTime::now());
            let h = &self.layout.hosts[i];
            let state = fsops::stat_at(self.layout.root_fd(), h.name.as_ref())
                .ok()
                .filter(|st| st.is_dir() && st.ino == h.stat.ino && st.dev == h.stat.dev)
                .and_then(|st| {
                    let entries = fsops::list_dir(h.fd()).ok()?;
                    let mut seen: Vec<u64> = entries
                        .iter()
                        .filter(|e| entry_kind(&self.filter, e) == EntryKind::Candidate)
                        .map(|e| p.key(e.name, e.ino))
                        .collect();
                    seen.sort_unstable();
                    Some(DirState {
                        dev: st.dev,
                        ino: st.ino,
                        stamp: Some((st.mtime_ns, st.ctime_ns)),
                        // The full scan that follows lists it: whatever
                        // changes within a grain of this is seen once more.
                        recheck: p.recheck(&st, at, wall),
                        seen,
                        error: None,
                    })
                });
            // A dir that could not be looked at is listed in full (every
            // entry `statx`ed) by the next tick.
            p.dirs.push(state);
        }
    }

    /// One poll tick (see the module doc). Host dirs a client changed are
    /// listed first; ones only expected to have changed by the engine's own
    /// links (see [`Poller::expect_echo`]) after them, and only while the
    /// tick has run less than `budget`: the rest is left for the next tick
    /// (`Tick::more`), so that a tick over big dirs does not hold up the
    /// settling and distributing of what it found.
    pub fn poll_tick(&self, p: &mut Poller, budget: Duration) -> Tick {
        let start = Instant::now();
        let mut t = Tick::default();
        let n = self.layout.hosts.len();
        p.dirs.resize_with(n, || None);
        p.echo.resize(n, false);
        // Every host dir is statx'ed first (before its listing, as the
        // module doc requires); the due ones are listed after.
        let mut due = Vec::new();
        for i in 0..n {
            let (at, wall) = (Instant::now(), SystemTime::now());
            let h = &self.layout.hosts[i];
            t.looked += 1;
            let st = match fsops::stat_at(self.layout.root_fd(), h.name.as_ref()) {
                Ok(st) if st.is_dir() && st.ino == h.stat.ino && st.dev == h.stat.dev => st,
                _ => {
                    t.replaced.push(i);
                    continue;
                }
            };
            let state = match p.dirs[i].take() {
                Some(s) if s.ino == st.ino && s.dev == st.dev => s,
                _ => DirState {
                    dev: st.dev,
                    ino: st.ino,
                    stamp: None,
                    recheck: None,
                    seen: Vec::new(),
                    error: None,
                },
            };
            let moved = state.stamp != Some((st.mtime_ns, st.ctime_ns));
            if moved || state.recheck.is_some_and(|r| at >= r) {
                due.push((p.echo[i], i, st, at, wall, moved));
            }
            p.dirs[i] = Some(state);
        }
        // Stable: client changes first, in host order.
        due.sort_by_key(|d| (d.0, d.1));
        let mut echoes = 0;
        for (echo, i, st, at, wall, moved) in due {
            if echo && echoes > 0 && start.elapsed() >= budget {
                t.more = true;
                continue;
            }
            echoes += usize::from(echo);
            let Some(mut state) = p.dirs[i].take() else {
                continue;
            };
            if self.relist(p, i, &mut state, &mut t) {
                state.stamp = Some((st.mtime_ns, st.ctime_ns));
                state.recheck = if moved {
                    p.recheck(&st, at, wall)
                } else {
                    None
                };
                p.echo[i] = false;
            }
            p.dirs[i] = Some(state);
        }
        t
    }

    /// Lists host dir `i` again, `statx`ing its new entries. Returns
    /// whether it could be listed.
    fn relist(&self, p: &Poller, i: usize, state: &mut DirState, t: &mut Tick) -> bool {
        let h = &self.layout.hosts[i];
        let entries = match fsops::list_dir(h.fd()) {
            Ok(v) => v,
            Err(e) => {
                if state.error != Some(e) {
                    tracing::error!(path = %quote::path(&h.path), error = %e, "cannot list host dir; will try again");
                }
                state.error = Some(e);
                return false;
            }
        };
        state.error = None;
        t.listed += 1;
        let mut seen = Vec::with_capacity(entries.len());
        let mut new = 0usize;
        for e in entries.iter() {
            if entry_kind(&self.filter, &e) != EntryKind::Candidate {
                continue;
            }
            let key = p.key(e.name, e.ino);
            if state.seen.binary_search(&key).is_ok() {
                seen.push(key);
                continue;
            }
            new += 1;
            t.stated += 1;
            match fsops::stat_at(h.fd(), e.name) {
                Ok(st) => {
                    seen.push(key);
                    // A copy an arrival recorded aside is still to arrive.
                    if super::ineligible(&st).is_none()
                        && (!self.store.is_known(e.name, st.id()) || self.is_aside(e.name, &st))
                    {
                        t.found.push(Found {
                            host: i,
                            name: e.name.to_os_string(),
                            stat: st,
                            at: Instant::now(),
                        });
                    }
                }
                // Gone since listed: nothing to remember.
                Err(Errno::ENOENT) => {}
                // Not remembered: looked at again by the next listing.
                Err(err) => {
                    tracing::debug!(path = %quote::path(&h.path.join(e.name)), error = %err, "cannot stat; looked at again later")
                }
            }
        }
        seen.sort_unstable();
        state.seen = seen;
        tracing::debug!(host = %h.name, entries = entries.len(), new, "host dir changed; listed again");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_stat(mtime_ns: i64) -> FileStat {
        FileStat {
            dev: 1,
            ino: 2,
            size: 4096,
            mtime_ns,
            ctime_ns: mtime_ns,
            birth_ns: 0,
            mnt_id: 0,
            mode: libc::S_IFDIR | 0o755,
            nlink: 2,
        }
    }

    const SEC: i64 = 1_000_000_000;

    #[test]
    fn a_stamp_within_a_grain_of_the_listing_is_listed_once_more_a_grain_later() {
        let at = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let now = 1_000_000 * SEC;
        let local = Poller::new(false);
        // Sub-second stamps: the grain is 50 ms.
        assert_eq!(
            local.recheck(&dir_stat(now - 10_000_000 + 1), at, wall),
            Some(at + FINE)
        );
        assert_eq!(
            local.recheck(&dir_stat(now - 60_000_000 + 1), at, wall),
            None
        );
        // Whole seconds: 2 s, and the stamp is the start of its second.
        assert_eq!(
            local.recheck(&dir_stat(now - SEC), at, wall),
            Some(at + COARSE)
        );
        assert_eq!(local.recheck(&dir_stat(now - 3 * SEC), at, wall), None);
        // Another machine's clock: always, however old the stamp looks.
        let remote = Poller::new(true);
        assert_eq!(
            remote.recheck(&dir_stat(now - 3600 * SEC + 7), at, wall),
            Some(at + COARSE)
        );
    }
}
