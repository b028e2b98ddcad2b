//! When is a file written in place complete? A pure state machine over
//! events and stat stamps, with the clock passed in (so tests drive time).
//!
//! Rules:
//! - renamed into a host dir (`MOVED_TO`): complete at once (Portage's path);
//! - created (`CREATE`) as a new, single-link file: being written. Where
//!   the caller can tell whether a file is open for writing (see
//!   [`Settler::set_probe_writers`]) it settles like the rest (a file
//!   published by `link()` + `unlink()` of its temp name, or an `O_TMPFILE`
//!   given a name with `linkat()`, never reports a `CLOSE_WRITE` under its
//!   name); otherwise nothing happens until it is closed (`CLOSE_WRITE`);
//! - created as an extra hard link of an existing file, or closed after
//!   writing, or found young by a scan: complete once its (size, mtime)
//!   stayed the same for the settle time;
//! - and in every case, once unchanged, only when no process has it open
//!   for writing (asked through the closure given to [`Settler::confirm`]);
//!   a file with a writer is looked at again after another settle time;
//! - removed or renamed away: forgotten.

use std::collections::{HashMap, VecDeque};

use crate::fsops::FileId;
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

/// Whether some process has a file open for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    /// Nobody has it open for writing.
    None,
    /// Someone has it open for writing (or it could not be asked this
    /// time): look again after another settle time.
    Open,
    /// The filesystem cannot tell (no file leases): a file seen closed
    /// counts as complete, one never seen closed waits for its close.
    Unknown,
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
    /// Files never seen closed become due too (the caller can tell open
    /// writers); otherwise they wait for `CLOSE_WRITE`.
    probe: bool,
}

impl Settler {
    pub fn new(settle: Duration) -> Settler {
        Settler {
            settle,
            pending: HashMap::new(),
            probe: false,
        }
    }

    /// Whether a file created in place but never seen closed may complete
    /// without its `CLOSE_WRITE`, once unchanged and with no writer (the
    /// caller can ask the filesystem whether it is open for writing).
    pub fn set_probe_writers(&mut self, on: bool) {
        self.probe = on;
    }

    /// Whether [`Settler::set_probe_writers`] is on.
    pub fn probes_writers(&self) -> bool {
        self.probe
    }

    /// Whether an entry's settle clock runs (else it waits for a close).
    fn runs(&self, p: &Pending) -> bool {
        !p.writing || self.probe
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
            .filter(|p| self.runs(p))
            .map(|p| p.since + self.settle)
            .min()
    }

    /// Entries whose settle time has passed; the caller stats each and calls
    /// [`Settler::confirm`].
    pub fn due(&self, now: Instant) -> Vec<Key> {
        self.pending
            .iter()
            .filter(|(_, p)| self.runs(p) && p.since + self.settle <= now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Called with a fresh stat of a due entry (`None`: the file is gone).
    /// When it stayed unchanged for the settle time, `writers` is asked
    /// whether it is still open for writing.
    pub fn confirm(
        &mut self,
        key: &Key,
        stamp: Option<Stamp>,
        now: Instant,
        writers: impl FnOnce() -> Writers,
    ) -> Verdict {
        let probe = self.probe;
        let Some(p) = self.pending.get_mut(key) else {
            return Verdict::Wait;
        };
        match stamp {
            None => {
                self.pending.remove(key);
                Verdict::Wait
            }
            Some(s) if s == p.stamp && (!p.writing || probe) && p.since + self.settle <= now => {
                match writers() {
                    Writers::None => {
                        self.pending.remove(key);
                        Verdict::Complete
                    }
                    Writers::Unknown if !p.writing => {
                        self.pending.remove(key);
                        Verdict::Complete
                    }
                    // Never seen closed: its close decides (the caller
                    // turns probing off when the filesystem cannot tell).
                    Writers::Unknown | Writers::Open => {
                        p.since = now;
                        Verdict::Wait
                    }
                }
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
/// the events of its own links must not overflow the kernel queue). Each
/// key carries the generation found complete (when known): the name may
/// hold another file by the time it is distributed (replaced, its dir
/// swapped), and only the one found complete may be linked.
#[derive(Debug, Default)]
pub struct Ready {
    queue: VecDeque<Key>,
    queued: HashMap<Key, Option<FileId>>,
}

impl Ready {
    pub fn push(&mut self, key: Key, id: Option<FileId>) {
        match self.queued.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                // The newer look wins.
                e.insert(id);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                self.queue.push_back(e.key().clone());
                e.insert(id);
            }
        }
    }

    pub fn pop(&mut self) -> Option<(Key, Option<FileId>)> {
        loop {
            let key = self.queue.pop_front()?;
            // A key forgotten since it was queued is skipped.
            if let Some(id) = self.queued.remove(&key) {
                return Some((key, id));
            }
        }
    }

    /// The name was removed or created anew since it was queued: what was
    /// found complete is no longer there.
    pub fn forget(&mut self, key: &Key) {
        self.queued.remove(key);
    }

    /// Whether `key` waits to be distributed.
    pub fn contains(&self, key: &Key) -> bool {
        self.queued.contains_key(key)
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// The host dirs were renumbered (a reload): each queued key follows
    /// its host; a removed host's are dropped. Never left as they were: an
    /// index now naming another host would take its file as complete.
    pub fn remap_hosts(&mut self, map: impl Fn(usize) -> Option<usize>) {
        let old = std::mem::take(&mut self.queue);
        let mut ids = std::mem::take(&mut self.queued);
        for key in old {
            let Some(id) = ids.remove(&key) else {
                continue;
            };
            if let Some(nh) = map(key.0) {
                self.push((nh, key.1), id);
            }
        }
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
        /// Like `Confirm`, with what the writers check answers.
        ConfirmW(Option<Stamp>, u64, Writers, Verdict),
        /// Turns probing for writers on or off.
        Probe(bool),
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
                Confirm(stamp, t, want) => assert_eq!(
                    s.confirm(&key, *stamp, at(*t), || Writers::None),
                    *want,
                    "step {i}"
                ),
                ConfirmW(stamp, t, w, want) => {
                    assert_eq!(s.confirm(&key, *stamp, at(*t), || *w), *want, "step {i}")
                }
                Probe(on) => s.set_probe_writers(*on),
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
            r.push(key, None);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.pop(), Some((k(1, "b"), None)));
        // Taken, then reported again: queued again, behind the others.
        r.push(k(1, "b"), None);
        let order: Vec<Key> = std::iter::from_fn(|| r.pop().map(|(k, _)| k)).collect();
        assert_eq!(order, vec![k(0, "z"), k(0, "a"), k(1, "b")]);
        assert!(r.is_empty());
    }

    #[test]
    fn a_file_never_seen_closed_settles_when_writers_can_be_asked_and_none_is_left() {
        run(&[
            Probe(true),
            Note(Seen::CreatedNew, st(10, 1), 0),
            Due(4_999, false),
            Due(5_000, true),
            ConfirmW(Some(st(10, 1)), 5_000, Writers::None, Verdict::Complete),
        ]);
    }

    #[test]
    fn an_open_writer_is_looked_at_again_after_another_settle_time() {
        for seen in [
            Seen::CreatedNew,
            Seen::Closed,
            Seen::CreatedLink,
            Seen::Scanned,
        ] {
            run(&[
                Probe(true),
                Note(seen, st(10, 1), 0),
                ConfirmW(Some(st(10, 1)), 5_000, Writers::Open, Verdict::Wait),
                Due(9_999, false),
                Due(10_000, true),
                ConfirmW(Some(st(10, 1)), 10_000, Writers::Open, Verdict::Wait),
                ConfirmW(Some(st(10, 1)), 15_000, Writers::None, Verdict::Complete),
            ]);
        }
    }

    #[test]
    fn without_a_way_to_ask_a_closed_file_completes_and_an_unclosed_one_waits_for_its_close() {
        run(&[
            Note(Seen::Closed, st(10, 1), 0),
            ConfirmW(Some(st(10, 1)), 5_000, Writers::Unknown, Verdict::Complete),
        ]);
        run(&[
            Probe(true),
            Note(Seen::CreatedNew, st(10, 1), 0),
            ConfirmW(Some(st(10, 1)), 5_000, Writers::Unknown, Verdict::Wait),
            Probe(false),
            Due(60_000, false),
            Note(Seen::Closed, st(12, 2), 60_000),
            Due(65_000, true),
            ConfirmW(Some(st(12, 2)), 65_000, Writers::Unknown, Verdict::Complete),
        ]);
    }
}
