//! When is a file written in place complete? A pure state machine over
//! events and stat stamps, with the clock passed in (so tests drive time).
//!
//! Rules:
//! - renamed into a host dir (`MOVED_TO`): complete at once (Portage's path);
//! - created (`CREATE`) as a new, single-link file: being written; nothing
//!   happens until it is closed (`CLOSE_WRITE`);
//! - created as an extra hard link of an existing file, or closed after
//!   writing, or found young by a scan: complete once its (size, mtime)
//!   stayed the same for the settle time;
//! - removed or renamed away: forgotten.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::time::{Duration, Instant};

/// Host index and file name.
pub type Key = (usize, OsString);

/// What a file looked like: size and mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i64,
}

impl Stamp {
    pub fn of(st: &crate::fsops::FileStat) -> Stamp {
        Stamp {
            size: st.size,
            mtime_ns: st.mtime_ns,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// `CREATE` of a new file (one link): it is being written.
    CreatedNew,
    /// `CREATE` of an extra hard link: its content is already there.
    CreatedLink,
    /// `CLOSE_WRITE`.
    Closed,
    /// Found by a scan, younger than the settle time.
    Scanned,
    /// `MOVED_TO`: complete now.
    MovedIn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Complete,
    Wait,
}

#[derive(Debug, Clone)]
struct Pending {
    writing: bool,
    since: Instant,
    stamp: Stamp,
}

#[derive(Debug)]
pub struct Settler {
    settle: Duration,
    pending: HashMap<Key, Pending>,
}

impl Settler {
    pub fn new(settle: Duration) -> Settler {
        Settler {
            settle,
            pending: HashMap::new(),
        }
    }

    pub fn set_settle(&mut self, settle: Duration) {
        self.settle = settle;
    }

    /// Whether `key` is still being settled.
    pub fn contains(&self, key: &Key) -> bool {
        self.pending.contains_key(key)
    }

    /// Notes an event. Returns `Complete` when the file is complete now.
    pub fn note(&mut self, key: Key, seen: Seen, stamp: Stamp, now: Instant) -> Verdict {
        match seen {
            Seen::MovedIn => {
                self.pending.remove(&key);
                Verdict::Complete
            }
            Seen::CreatedNew => {
                self.pending.insert(
                    key,
                    Pending {
                        writing: true,
                        since: now,
                        stamp,
                    },
                );
                Verdict::Wait
            }
            Seen::CreatedLink | Seen::Closed => {
                self.pending.insert(
                    key,
                    Pending {
                        writing: false,
                        since: now,
                        stamp,
                    },
                );
                Verdict::Wait
            }
            Seen::Scanned => {
                // A scan never overrides what events already told.
                self.pending.entry(key).or_insert(Pending {
                    writing: false,
                    since: now,
                    stamp,
                });
                Verdict::Wait
            }
        }
    }

    /// The file is gone from this name (deleted or renamed away).
    pub fn forget(&mut self, key: &Key) {
        self.pending.remove(key);
    }

    /// Drops everything pending for one host (its dir went away).
    pub fn forget_host(&mut self, host: usize) {
        self.pending.retain(|(h, _), _| *h != host);
    }

    /// Host indices shift when a host is removed from the config.
    pub fn remap_hosts(&mut self, map: impl Fn(usize) -> Option<usize>) {
        let old = std::mem::take(&mut self.pending);
        for ((h, n), p) in old {
            if let Some(nh) = map(h) {
                self.pending.insert((nh, n), p);
            }
        }
    }

    /// When the next entry may be due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter(|p| !p.writing)
            .map(|p| p.since + self.settle)
            .min()
    }

    /// Entries whose settle time has passed; the caller stats each and calls
    /// [`Settler::confirm`].
    pub fn due(&self, now: Instant) -> Vec<Key> {
        self.pending
            .iter()
            .filter(|(_, p)| !p.writing && p.since + self.settle <= now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Called with a fresh stat of a due entry (`None`: the file is gone).
    pub fn confirm(&mut self, key: &Key, stamp: Option<Stamp>, now: Instant) -> Verdict {
        let Some(p) = self.pending.get_mut(key) else {
            return Verdict::Wait;
        };
        match stamp {
            None => {
                self.pending.remove(key);
                Verdict::Wait
            }
            Some(s) if s == p.stamp && !p.writing && p.since + self.settle <= now => {
                self.pending.remove(key);
                Verdict::Complete
            }
            Some(s) => {
                if s != p.stamp {
                    p.stamp = s;
                    p.since = now;
                }
                Verdict::Wait
            }
        }
    }
}

/// Files known complete, waiting to be distributed: first come, first
/// served, each key once. The daemon takes them a round at a time so that
/// it goes back to reading inotify between rounds (a burst of arrivals and
/// the events of its own links must not overflow the kernel queue).
#[derive(Debug, Default)]
pub struct Ready {
    queue: VecDeque<Key>,
    queued: HashSet<Key>,
}

impl Ready {
    pub fn push(&mut self, key: Key) {
        if self.queued.insert(key.clone()) {
            self.queue.push_back(key);
        }
    }

    pub fn pop(&mut self) -> Option<Key> {
        let key = self.queue.pop_front()?;
        self.queued.remove(&key);
        Some(key)
    }

    /// Whether `key` waits to be distributed.
    pub fn contains(&self, key: &Key) -> bool {
        self.queued.contains(key)
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_secs(5);

    fn st(size: u64, m: i64) -> Stamp {
        Stamp { size, mtime_ns: m }
    }

    enum Step {
        Note(Seen, Stamp, u64),
        Forget,
        /// At time t (ms), confirm with this stamp (None = gone) and expect.
        Confirm(Option<Stamp>, u64, Verdict),
        /// At time t, expect the entry due (true) or not.
        Due(u64, bool),
    }
    use Step::*;

    fn run(steps: &[Step]) {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let key: Key = (0, OsString::from("foo.tar.gz"));
        let mut s = Settler::new(SETTLE);
        for (i, step) in steps.iter().enumerate() {
            match step {
                Note(seen, stamp, t) => {
                    let v = s.note(key.clone(), *seen, *stamp, at(*t));
                    if *seen == Seen::MovedIn {
                        assert_eq!(v, Verdict::Complete, "step {i}");
                    } else {
                        assert_eq!(v, Verdict::Wait, "step {i}");
                    }
                }
                Forget => s.forget(&key),
                Confirm(stamp, t, want) => {
                    assert_eq!(s.confirm(&key, *stamp, at(*t)), *want, "step {i}")
                }
                Due(t, want) => assert_eq!(s.due(at(*t)).contains(&key), *want, "step {i}"),
            }
        }
    }

    #[test]
    fn rename_in_is_complete_at_once() {
        run(&[Note(Seen::MovedIn, st(10, 1), 0), Due(10_000, false)]);
    }

    #[test]
    fn written_in_place_waits_for_close_then_settle() {
        run(&[
            Note(Seen::CreatedNew, st(0, 1), 0),
            Due(60_000, false), // still open: never due, however long
            Note(Seen::Closed, st(100, 2), 60_000),
            Due(64_999, false),
            Due(65_000, true),
            Confirm(Some(st(100, 2)), 65_000, Verdict::Complete),
        ]);
    }

    #[test]
    fn change_during_settle_restarts_the_clock() {
        run(&[
            Note(Seen::Closed, st(100, 2), 0),
            Confirm(Some(st(150, 3)), 5_000, Verdict::Wait),
            Due(9_999, false),
            Due(10_000, true),
            Confirm(Some(st(150, 3)), 10_000, Verdict::Complete),
        ]);
    }

    #[test]
    fn second_close_restarts_the_clock() {
        run(&[
            Note(Seen::Closed, st(100, 2), 0),
            Note(Seen::Closed, st(100, 2), 4_000),
            Due(5_000, false),
            Due(9_000, true),
        ]);
    }

    #[test]
    fn rewritten_forever_never_completes() {
        let mut steps = vec![Note(Seen::CreatedNew, st(0, 0), 0)];
        for k in 1..200u64 {
            steps.push(Note(Seen::Closed, st(k, k as i64), k * 10));
            steps.push(Due(k * 10 + 9, false));
        }
        run(&steps);
    }

    #[test]
    fn hard_link_created_settles_without_close() {
        run(&[
            Note(Seen::CreatedLink, st(100, 2), 0),
            Due(5_000, true),
            Confirm(Some(st(100, 2)), 5_000, Verdict::Complete),
        ]);
    }

    #[test]
    fn deleted_while_settling_is_forgotten() {
        run(&[
            Note(Seen::Closed, st(100, 2), 0),
            Forget,
            Due(10_000, false),
        ]);
        run(&[
            Note(Seen::Closed, st(100, 2), 0),
            Confirm(None, 5_000, Verdict::Wait),
            Due(20_000, false),
        ]);
    }

    #[test]
    fn scan_does_not_override_an_open_writer() {
        run(&[
            Note(Seen::CreatedNew, st(0, 1), 0),
            Note(Seen::Scanned, st(10, 2), 1_000),
            Due(30_000, false),
        ]);
    }

    #[test]
    fn scanned_young_file_settles() {
        run(&[
            Note(Seen::Scanned, st(10, 2), 0),
            Due(4_999, false),
            Confirm(Some(st(10, 2)), 5_000, Verdict::Complete),
        ]);
    }

    #[test]
    fn next_deadline_ignores_open_writers() {
        let t0 = Instant::now();
        let mut s = Settler::new(SETTLE);
        s.note((0, "a".into()), Seen::CreatedNew, st(0, 0), t0);
        assert_eq!(s.next_deadline(), None);
        s.note(
            (1, "b".into()),
            Seen::Closed,
            st(0, 0),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(6)));
    }

    #[test]
    fn ready_is_first_come_first_served_and_holds_each_file_once() {
        let k = |h: usize, n: &str| (h, OsString::from(n));
        let mut r = Ready::default();
        assert!(r.is_empty());
        for key in [k(1, "b"), k(0, "z"), k(1, "b"), k(0, "a"), k(0, "z")] {
            r.push(key);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.pop(), Some(k(1, "b")));
        // Taken, then reported again: queued again, behind the others.
        r.push(k(1, "b"));
        let order: Vec<Key> = std::iter::from_fn(|| r.pop()).collect();
        assert_eq!(order, vec![k(0, "z"), k(0, "a"), k(1, "b")]);
        assert!(r.is_empty());
    }
}
