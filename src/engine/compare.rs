//! Byte comparisons, and the verdicts remembered.
//!
//! Two same-named, same-sized files on different inodes must be compared
//! before they can be merged or called a conflict. A client can make that
//! arbitrarily expensive (two 4 GiB sparse files differing in the last
//! byte cost nothing to make), so in the daemon comparisons run on a
//! thread of their own: the name waits (its hosts keep what they hold),
//! everything else goes on, and when the verdict comes back the name is
//! looked at again ([`Engine::revisit`]). A pair found different is kept in
//! the record with both files' (inode, birth, size, mtime): while neither
//! changes it is never read again, not after a rescan, not after a restart.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;

use rustc_hash::FxHashSet;

use super::{Engine, same_content};
use crate::error::FileError;
use crate::fsops::FileStat;
use crate::state::Version;

/// The two generations a verdict is about, in a fixed order.
pub(super) type PairKey = ((u64, i64), (u64, i64));

/// `(a, b)` in the order of their keys, and whether they were swapped.
pub(super) fn pair_key(a: &FileStat, b: &FileStat) -> (PairKey, bool) {
    let (ka, kb) = ((a.ino, a.birth_ns), (b.ino, b.birth_ns));
    if ka <= kb {
        ((ka, kb), false)
    } else {
        ((kb, ka), true)
    }
}

struct Job {
    key: PairKey,
    name: OsString,
    a: (OwnedFd, PathBuf, FileStat),
    b: (OwnedFd, PathBuf, FileStat),
}

/// What a comparison found.
struct Done {
    key: PairKey,
    name: OsString,
    a: FileStat,
    b: FileStat,
    verdict: std::result::Result<bool, FileError>,
}

/// The comparison thread, and the pairs it has in hand.
pub struct Comparer {
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<Done>,
    /// Readable when verdicts wait (one byte per verdict).
    wake: UnixStream,
    pending: FxHashSet<PairKey>,
}

impl Comparer {
    fn start() -> std::io::Result<Comparer> {
        let (wake, ring) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (outbox, done) = mpsc::channel::<Done>();
        std::thread::Builder::new()
            .name("compare".into())
            .spawn(move || {
                for job in inbox {
                    let (a, b) = (&job.a, &job.b);
                    let verdict = same_content(
                        (a.0.as_fd(), &a.1, &job.name),
                        &a.2,
                        (b.0.as_fd(), &b.1, &job.name),
                        &b.2,
                    );
                    let sent = outbox.send(Done {
                        key: job.key,
                        name: job.name,
                        a: a.2,
                        b: b.2,
                        verdict,
                    });
                    if sent.is_err() {
                        return;
                    }
                    let _ = std::io::Write::write(&mut &ring, &[1]);
                }
            })?;
        Ok(Comparer {
            jobs,
            done,
            wake,
            pending: Default::default(),
        })
    }
}

impl Engine {
    /// From now on, comparisons the engine needs run on a thread of their
    /// own (the daemon); without this they are made inline (one-shot
    /// commands, which have nothing else to do meanwhile).
    pub fn compare_in_background(&mut self) -> std::io::Result<()> {
        self.comparer = Some(Comparer::start()?);
        Ok(())
    }

    /// The fd to poll: readable when verdicts are ready for
    /// [`Engine::take_verdicts`].
    pub fn verdicts_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.comparer.as_ref().map(|c| c.wake.as_fd())
    }

    /// Takes the verdicts that came back (remembered for the next time)
    /// and returns the names to look at again.
    pub fn take_verdicts(&mut self) -> Vec<OsString> {
        let Some(c) = self.comparer.as_mut() else {
            return Vec::new();
        };
        let mut buf = [0u8; 256];
        while matches!(std::io::Read::read(&mut c.wake, &mut buf), Ok(n) if n > 0) {}
        let done: Vec<Done> = c.done.try_iter().collect();
        let mut names = Vec::new();
        for d in done {
            if let Some(c) = self.comparer.as_mut() {
                c.pending.remove(&d.key);
            }
            match d.verdict {
                Ok(v) => self.remember_verdict(&d.a, &d.b, v),
                Err(e) => tracing::debug!(error = %e, "not compared; looked at again later"),
            }
            if !names.contains(&d.name) {
                names.push(d.name);
            }
        }
        names
    }

    /// Whether a comparison of `a` (in host `ha`) and `b` (in `hb`) is on
    /// its way, asking for one if not. False when comparisons are made
    /// inline (no comparison thread).
    pub(super) fn compare_later(
        &mut self,
        name: &OsStr,
        (ha, a): (usize, &FileStat),
        (hb, b): (usize, &FileStat),
    ) -> bool {
        let (key, _) = pair_key(a, b);
        let Some(c) = self.comparer.as_ref() else {
            return false;
        };
        if c.pending.contains(&key) {
            return true;
        }
        let side = |h: usize, st: &FileStat| {
            let host = &self.layout.hosts[h];
            host.fd()
                .try_clone_to_owned()
                .ok()
                .map(|fd| (fd, host.path.clone(), *st))
        };
        let (Some(ja), Some(jb)) = (side(ha, a), side(hb, b)) else {
            return false;
        };
        let job = Job {
            key,
            name: name.to_os_string(),
            a: ja,
            b: jb,
        };
        match self.comparer.as_mut() {
            Some(c) if c.jobs.send(job).is_ok() => {
                c.pending.insert(key);
                true
            }
            _ => false,
        }
    }

    /// Remembers a verdict; a pair found different goes into the record
    /// too, so no restart reads it again.
    pub(super) fn remember_verdict(&mut self, a: &FileStat, b: &FileStat, same: bool) {
        let (key, swapped) = pair_key(a, b);
        let (va, vb) = if swapped {
            (Version::of(b), Version::of(a))
        } else {
            (Version::of(a), Version::of(b))
        };
        if !same && !self.dry_run {
            self.store.remember_different(va, vb);
        }
        self.compared.insert(key, (va, vb, same));
    }

    /// A verdict on `a` and `b`, if one was made while both were as they
    /// are now.
    pub(super) fn cached_verdict(&self, a: &FileStat, b: &FileStat) -> Option<bool> {
        let (key, swapped) = pair_key(a, b);
        let (va, vb, v) = self.compared.get(&key)?;
        let (na, nb) = if swapped {
            (Version::of(b), Version::of(a))
        } else {
            (Version::of(a), Version::of(b))
        };
        (*va == na && *vb == nb).then_some(*v)
    }

    /// Forgets the verdicts on generations no host holds any more (after
    /// a complete scan saw every generation present).
    pub(super) fn forget_verdicts_except(&mut self, present: &FxHashSet<(u64, i64)>) {
        let gone: Vec<PairKey> = self
            .compared
            .keys()
            .filter(|(a, b)| !present.contains(a) || !present.contains(b))
            .copied()
            .collect();
        for key in gone {
            if let Some((va, vb, _)) = self.compared.remove(&key) {
                self.store.forget_different(va, vb);
            }
        }
    }
}
