//! One directory's candidates, for `prune` and `migrate --from`, and the
//! removal of one selected file.

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::errno::Errno;

use super::ineligible;
use super::survey::{EntryKind, entry_kind, par_map, stat_failed};
use crate::error::FileError;
use crate::fsops::{self, FileStat};
use crate::names::NameFilter;

/// What one directory holds, as far as distlink is concerned.
#[derive(Debug, Default)]
pub struct Listing {
    /// Candidates: (name, statx).
    pub files: Vec<(OsString, FileStat)>,
    /// distlink's own leftover temp names.
    pub temps: Vec<OsString>,
    /// False when some entry could not be looked at.
    pub complete: bool,
}

/// Lists the candidates directly inside one directory (`prune`, `migrate
/// --from`): names that pass the filter and entries that are eligible
/// regular files, stat'ed in parallel, plus distlink's own temp names.
pub fn list_candidates(
    dir: BorrowedFd<'_>,
    path: &Path,
    filter: &NameFilter,
) -> std::result::Result<Listing, Errno> {
    let entries = fsops::list_dir(dir)?;
    let mut l = Listing {
        complete: true,
        ..Listing::default()
    };
    let mut cand = Vec::new();
    for (k, e) in entries.iter().enumerate() {
        match entry_kind(filter, &e) {
            EntryKind::OwnTemp => l.temps.push(e.name.to_os_string()),
            EntryKind::Candidate => cand.push(k),
            EntryKind::Other => {}
        }
    }
    let stats = par_map(&cand, |&k| fsops::stat_at(dir, entries.get(k).name));
    for (&k, st) in cand.iter().zip(stats) {
        let name = entries.get(k).name;
        match st {
            Ok(st) => {
                if ineligible(&st).is_none() {
                    l.files.push((name.to_os_string(), st));
                }
            }
            Err(err) => l.complete &= stat_failed(path, name, err),
        }
    }
    Ok(l)
}

/// Removes one candidate from a directory, provided it still is the file
/// that was selected (same inode, size and mtime). Returns whether that
/// removed its last link, i.e. freed its bytes. With `dry_run`, only says
/// what it would do.
pub fn remove_candidate(
    dir: BorrowedFd<'_>,
    path: &Path,
    name: &OsStr,
    expect: &FileStat,
    dry_run: bool,
) -> std::result::Result<bool, FileError> {
    let err = |what, e| FileError::new(path, &name.to_os_string(), what, e);
    let st = fsops::stat_at(dir, name).map_err(|e| err("stat", e))?;
    if !st.same_content_stamp(expect) || ineligible(&st).is_some() {
        return Err(err(
            "changed since it was selected; left alone",
            Errno::ESTALE,
        ));
    }
    if !dry_run {
        fsops::unlink_at(dir, name).map_err(|e| err("unlink", e))?;
    }
    Ok(st.nlink == 1)
}
