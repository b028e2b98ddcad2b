//! Reading host dirs: which entries are candidates, and the compact
//! survey of every host dir a scan (and `status`) works from.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::path::Path;

use nix::errno::Errno;

use super::ineligible;
use crate::few::Few;
use crate::fsops::{self, FileStat};
use crate::layout::Layout;
use crate::names::{self, NameFilter};

/// What a directory entry is to distlink, judged from its name and
/// `d_type` alone (a candidate is still `statx`ed before it counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntryKind {
    /// A temp name distlink itself makes (left by a crash).
    OwnTemp,
    /// A name that passes the filter, on a regular file or an unknown type.
    Candidate,
    /// Anything else: never looked at again.
    Other,
}

pub(super) fn entry_kind(filter: &NameFilter, e: &fsops::DirEntry<'_>) -> EntryKind {
    use nix::dir::Type;
    if names::is_own_temp(e.name) {
        EntryKind::OwnTemp
    } else if filter.is_candidate(e.name) && matches!(e.kind, None | Some(Type::File)) {
        EntryKind::Candidate
    } else {
        EntryKind::Other
    }
}

/// A candidate's `statx` failed: gone since it was listed (skipped
/// quietly), or unreadable (warned about). Returns whether the listing is
/// still complete.
pub(super) fn stat_failed(dir: &Path, name: &OsStr, err: Errno) -> bool {
    if err == Errno::ENOENT {
        return true;
    }
    tracing::warn!(path = %crate::quote::path(&dir.join(name)), error = %err, "cannot stat; skipped");
    false
}

/// Reads the host dirs `usable` one at a time, stat'ing each inode once however
/// many host dirs link it (the stats of a block of entries spread over
/// the CPUs), into a compact [`Present`]: memory stays proportional to
/// the number of names and inodes, not to names × hosts.
pub fn survey(layout: &Layout, filter: &NameFilter, usable: &[usize]) -> Survey {
    /// Entries looked at together: bounds the memory of their stats.
    const BLOCK: usize = 4096;
    let mut out = Survey {
        complete: true,
        ..Survey::default()
    };
    let present = &mut out.present;
    let mut ino_idx: rustc_hash::FxHashMap<u64, u32> = Default::default();
    for &i in usable {
        let h = &layout.hosts[i];
        let entries = match fsops::list_dir(h.fd()) {
            Ok(v) => v,
            Err(e) => {
                out.unlisted.push((i, e));
                out.complete = false;
                continue;
            }
        };
        let mut todo: Vec<(usize, Option<u32>)> = Vec::with_capacity(BLOCK);
        let mut need: Vec<usize> = Vec::with_capacity(BLOCK);
        for start in (0..entries.len()).step_by(BLOCK) {
            todo.clear();
            need.clear();
            for k in start..(start + BLOCK).min(entries.len()) {
                let e = entries.get(k);
                match entry_kind(filter, &e) {
                    EntryKind::OwnTemp => {
                        out.temps.push((i, e.name.to_os_string()));
                        continue;
                    }
                    EntryKind::Other => continue,
                    EntryKind::Candidate => {}
                }
                // An inode already stat'ed with more than one link: this
                // entry is another link of it (an inode with one link
                // seen elsewhere means this name is something else now).
                match ino_idx.get(&e.ino) {
                    Some(&idx) if present.stats[idx as usize].nlink > 1 => {
                        todo.push((k, Some(idx)));
                    }
                    _ => {
                        todo.push((k, None));
                        need.push(k);
                    }
                }
            }
            let mut stats =
                par_map(&need, |&k| fsops::stat_at(h.fd(), entries.get(k).name)).into_iter();
            for &(k, known) in &todo {
                let e = entries.get(k);
                let idx = match known {
                    Some(idx) => idx,
                    None => match stats.next() {
                        Some(Ok(st)) => *ino_idx.entry(st.ino).or_insert_with(|| {
                            present.stats.push(st);
                            (present.stats.len() - 1) as u32
                        }),
                        Some(Err(err)) => {
                            out.complete &= stat_failed(&h.path, e.name, err);
                            continue;
                        }
                        None => continue,
                    },
                };
                if ineligible(&present.stats[idx as usize]).is_none() {
                    present.add(e.name, i, idx);
                }
            }
        }
        // A dry run of `migrate --from`: the files the real run moves in.
        if let Some((fd, names)) = &h.pretend.moved_in {
            for name in names {
                match fsops::stat_at(fd.as_fd(), name) {
                    Ok(st) if ineligible(&st).is_none() => {
                        let idx = *ino_idx.entry(st.ino).or_insert_with(|| {
                            present.stats.push(st);
                            (present.stats.len() - 1) as u32
                        });
                        present.add(name, i, idx);
                    }
                    Ok(_) => {}
                    Err(err) => out.complete &= stat_failed(&h.path, name, err),
                }
            }
        }
    }
    out
}

/// The result of [`survey`].
#[derive(Debug, Default)]
pub struct Survey {
    pub present: Present,
    /// distlink's own leftover temp names: (host, name).
    pub temps: Vec<(usize, OsString)>,
    /// Host dirs that could not be listed.
    pub unlisted: Vec<(usize, Errno)>,
    /// False when some host dir or entry could not be looked at.
    pub complete: bool,
}

/// What a scan of the host dirs found: every candidate name, and which
/// hosts hold it on which inode. One stat per inode, and per name the
/// holders as runs of consecutive hosts on one inode: a name every host
/// holds on one inode (the usual case) costs its hash entry and nothing
/// else, so 100,000 names × 10 hosts fit in about 20 MiB.
#[derive(Debug, Default)]
pub struct Present {
    stats: Vec<FileStat>,
    names: rustc_hash::FxHashMap<Box<OsStr>, Few<Run>>,
}

/// Hosts `first .. first + count` hold inode `stats[idx]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    idx: u32,
    first: u16,
    count: u16,
}

impl Present {
    /// Host `host` holds `name` on inode `stats[idx]`. Hosts are added in
    /// increasing order for the runs to merge (any order is correct).
    fn add(&mut self, name: &OsStr, host: usize, idx: u32) {
        let host = host as u16;
        let run = Run {
            idx,
            first: host,
            count: 1,
        };
        match self.names.get_mut(name) {
            None => {
                self.names.insert(name.into(), Few::One(run));
            }
            Some(runs) => match runs.last_mut() {
                Some(r)
                    if r.idx == idx
                        && u32::from(r.first) + u32::from(r.count) == u32::from(host) =>
                {
                    r.count += 1;
                }
                _ => runs.push(run),
            },
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &OsStr> {
        self.names.keys().map(|k| &**k)
    }

    /// Every generation (inode, birth stamp) present.
    pub fn generations(&self) -> rustc_hash::FxHashSet<(u64, i64)> {
        self.stats.iter().map(|s| (s.ino, s.birth_ns)).collect()
    }

    pub fn contains(&self, name: &OsStr) -> bool {
        self.names.contains_key(name)
    }

    fn expand(&self, runs: &Few<Run>) -> Vec<(usize, FileStat)> {
        runs.as_slice()
            .iter()
            .flat_map(|r| {
                let st = self.stats[r.idx as usize];
                (r.first..r.first + r.count).map(move |h| (usize::from(h), st))
            })
            .collect()
    }

    /// The hosts holding `name`, with the stat of what each holds.
    pub fn get(&self, name: &OsStr) -> Option<Vec<(usize, FileStat)>> {
        self.names.get(name).map(|v| self.expand(v))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&OsStr, Vec<(usize, FileStat)>)> {
        self.names.iter().map(|(n, v)| (&**n, self.expand(v)))
    }
}

/// Runs `f` over `items` on every CPU, keeping the order.
pub(super) fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    const CHUNK: usize = 256;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut parts: Vec<Vec<(usize, Vec<R>)>> = Vec::new();
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                sc.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let start = next.fetch_add(CHUNK, std::sync::atomic::Ordering::Relaxed);
                        if start >= items.len() {
                            break;
                        }
                        let end = (start + CHUNK).min(items.len());
                        mine.push((start, items[start..end].iter().map(&f).collect()));
                    }
                    mine
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(v) => parts.push(v),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
    });
    let mut chunks: Vec<(usize, Vec<R>)> = parts.into_iter().flatten().collect();
    chunks.sort_by_key(|(i, _)| *i);
    chunks.into_iter().flat_map(|(_, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(ino: u64) -> FileStat {
        FileStat {
            dev: 1,
            ino,
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            birth_ns: 0,
            mnt_id: 0,
            mode: libc::S_IFREG | 0o644,
            nlink: 1,
        }
    }

    fn holders(p: &Present, name: &str) -> Vec<(usize, u64)> {
        p.get(OsStr::new(name))
            .unwrap_or_default()
            .into_iter()
            .map(|(h, st)| (h, st.ino))
            .collect()
    }

    #[test]
    fn present_keeps_every_holder_through_runs_gaps_and_other_inodes() {
        let mut p = Present {
            stats: vec![stat(10), stat(20)],
            ..Present::default()
        };
        // "a": hosts 0..4 on inode 10: one run.
        for h in 0..4 {
            p.add(OsStr::new("a"), h, 0);
        }
        // "b": a gap at host 2, and host 4 on another inode.
        for (h, i) in [(0, 0), (1, 0), (3, 0), (4, 1), (5, 0)] {
            p.add(OsStr::new("b"), h, i);
        }
        assert_eq!(holders(&p, "a"), vec![(0, 10), (1, 10), (2, 10), (3, 10)]);
        assert_eq!(p.names.get(OsStr::new("a")).map(Few::len), Some(1));
        assert_eq!(
            holders(&p, "b"),
            vec![(0, 10), (1, 10), (3, 10), (4, 20), (5, 10)]
        );
        assert!(p.contains(OsStr::new("b")) && !p.contains(OsStr::new("c")));
        assert_eq!(p.get(OsStr::new("c")), None);
        let mut all: Vec<&OsStr> = p.names().collect();
        all.sort();
        assert_eq!(all, vec![OsStr::new("a"), OsStr::new("b")]);
        assert_eq!(p.iter().map(|(_, v)| v.len()).sum::<usize>(), 9);
    }
}
