//! `migrate --from`: moving a flat DISTDIR into one host's dir.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

use super::{list_candidates, same_content};
use crate::error::{FileError, Result};
use crate::fsops;
use crate::names::{self, NameFilter};
use crate::quote;

/// What importing a flat DISTDIR did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Imported {
    /// Renamed into the host dir (same filesystem).
    pub moved: u64,
    /// Copied, fsynced, verified, then removed from the source.
    pub copied: u64,
    /// Already in the host dir with identical bytes: the source name was
    /// dropped (nothing is lost).
    pub duplicates: u64,
    /// Same name, different bytes: both left in place.
    pub conflicts: Vec<String>,
    pub bytes: u64,
    pub errors: Vec<String>,
    /// The names moved or copied in (or, in a dry run, that would be).
    #[serde(skip)]
    pub names_in: Vec<std::ffi::OsString>,
}

/// Moves every candidate of a flat directory into a host dir: a rename on
/// one filesystem, else (with `copy`) a copy that is fsynced and verified
/// before the original is removed. A file never leaves its old place
/// before it is complete in the new one; an existing name is never
/// replaced. `src` is the flat dir, held open since it was checked
/// (`from` is how it was named, for messages).
pub fn import_flat(
    (src, from): (BorrowedFd<'_>, &Path),
    host: &crate::layout::HostDir,
    filter: &NameFilter,
    copy: bool,
    dry_run: bool,
    mut progress: impl FnMut(u64),
) -> Result<Imported> {
    use crate::error::Error;
    let sst = fsops::stat_fd(src).map_err(|e| Error::sys(from, e))?;
    // `rename` crosses neither filesystems nor mounts (a bind mount of
    // the same filesystem fails with EXDEV too).
    let same_mount = sst.dev == host.stat.dev && sst.mnt_id == host.stat.mnt_id;
    if !same_mount && !copy {
        return Err(Error::Usage(format!(
            "--from {} is on another filesystem or mount than {}; pass --copy to copy (fsync, \
             verify, then remove)",
            quote::path(from),
            quote::path(&host.path)
        )));
    }
    let listing = list_candidates(src, from, filter).map_err(|e| Error::sys(from, e))?;
    let mut out = Imported::default();
    let mut seq = 0u64;
    let mut files = listing.files;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, st) in files {
        progress(st.size);
        let err = |what, e| FileError::new(from, &name, what, e).to_string();
        match fsops::stat_at(host.fd(), &name) {
            Err(Errno::ENOENT) => {}
            Ok(t) if t.ino == st.ino && t.dev == st.dev => {
                // Already linked there: the source name is a spare link.
                out.duplicates += 1;
                if !dry_run && let Err(e) = fsops::unlink_at(src, &name) {
                    out.errors.push(err("unlink", e));
                }
                continue;
            }
            Ok(t) => {
                match same_content((src, from, &name), &st, (host.fd(), &host.path, &name), &t) {
                    Ok(true) => {
                        out.duplicates += 1;
                        if !dry_run && let Err(e) = fsops::unlink_at(src, &name) {
                            out.errors.push(err("unlink", e));
                        }
                    }
                    Ok(false) => out.conflicts.push(format!(
                        "{} differs from {}; both left in place",
                        quote::path(&from.join(&name)),
                        quote::path(&host.path.join(&name))
                    )),
                    Err(e) => out.errors.push(e.to_string()),
                }
                continue;
            }
            Err(e) => {
                out.errors
                    .push(FileError::new(&host.path, &name, "stat", e).to_string());
                continue;
            }
        }
        out.bytes += st.size;
        if dry_run {
            out.names_in.push(name.clone());
            if same_mount {
                out.moved += 1;
            } else {
                out.copied += 1;
            }
            continue;
        }
        if same_mount {
            match fsops::rename_noreplace(src, &name, host.fd(), &name) {
                Ok(()) => out.moved += 1,
                Err(e) => out.errors.push(err("rename into host dir", e)),
            }
            continue;
        }
        // Copy under a temp name, verify, then give it its name.
        seq += 1;
        let mut tmp = names::TEMP_PREFIX.to_vec();
        tmp.extend_from_slice(format!("{}.c{seq}", std::process::id()).as_bytes());
        let tmp = OsStr::from_bytes(&tmp).to_os_string();
        let res = (|| -> std::result::Result<(), String> {
            let mut f = fsops::open_read_at(src, &name, &st).map_err(|e| err("open", e))?;
            let (uid, gid) = fsops::owner_at(src, &name).map_err(|e| err("stat", e))?;
            fsops::copy_new(&mut f, host.fd(), &tmp, &st, uid, gid)
                .map_err(|e| FileError::new(&host.path, &tmp, "copy", e).to_string())?;
            let copied = fsops::stat_at(host.fd(), &tmp).map_err(|e| err("stat copy", e))?;
            let mut a = fsops::open_read_at(src, &name, &st).map_err(|e| err("open", e))?;
            let mut b =
                fsops::open_read_at(host.fd(), &tmp, &copied).map_err(|e| err("open copy", e))?;
            if !fsops::same_bytes(&mut a, &mut b)
                .map_err(|e| format!("{}: verify: {e}", quote::path(&from.join(&name))))?
            {
                return Err(format!(
                    "{}: copy does not verify",
                    quote::path(&from.join(&name))
                ));
            }
            fsops::rename_noreplace(host.fd(), &tmp, host.fd(), &name)
                .map_err(|e| err("rename copy into place", e))?;
            fsops::fsync_fd(host.fd()).map_err(|e| err("fsync host dir", e))?;
            fsops::unlink_at(src, &name).map_err(|e| err("remove original", e))?;
            Ok(())
        })();
        match res {
            Ok(()) => out.copied += 1,
            Err(e) => {
                let _ = fsops::unlink_at(host.fd(), &tmp);
                out.errors.push(e);
            }
        }
    }
    if !dry_run {
        let _ = fsops::fsync_fd(host.fd());
        let _ = fsops::fsync_fd(src);
    }
    Ok(out)
}
