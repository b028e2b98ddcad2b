//! Which identity tells file generations apart on the root's filesystem
//! (birth time, inode generation, or the inode number alone; see
//! [`fsops::FileId`]), said once at start, and the one-time rewrite of
//! record rows that older versions stamped with the mtime where there is
//! no birth time.

use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::errno::Errno;

use crate::fsops::{self, FileId, Identity};
use crate::layout::Layout;
use crate::state::Store;

/// What the host dirs' filesystem offers, judged from the first host dir
/// (the root when there is none): all host dirs share one filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsIdentity {
    pub identity: Identity,
    /// The filesystem type, as the mount table names it (`ext4`, `nfs4`,
    /// `fuse.sshfs`), else its magic number.
    pub fs_type: String,
    /// Why the inode generation cannot be read although this type keeps
    /// one (every file would fail to be looked at).
    pub generation_error: Option<Errno>,
}

/// Looks at the filesystem of the host dirs.
pub fn probe(layout: &Layout) -> Result<FsIdentity, Errno> {
    probe_fd(first_dir(layout))
}

/// The first host dir, else the root.
fn first_dir(layout: &Layout) -> BorrowedFd<'_> {
    layout
        .hosts
        .first()
        .map_or_else(|| layout.root_fd(), |h| h.fd())
}

/// Looks at the filesystem of the directory `fd`.
pub fn probe_fd(fd: BorrowedFd<'_>) -> Result<FsIdentity, Errno> {
    let st = fsops::stat_fd(fd)?;
    let fs = nix::sys::statfs::fstatfs(fd)?;
    let fs_type =
        mount_type(st.mnt_id).unwrap_or_else(|| format!("type {:#x}", fs.filesystem_type().0));
    let mut generation_error = None;
    let identity = if Identity::of_stamp(st.birth_ns) == Identity::BirthTime {
        Identity::BirthTime
    } else if fsops::type_keeps_generations(fs.filesystem_type()) {
        generation_error = fsops::inode_generation(fd).err();
        Identity::Generation
    } else {
        Identity::InodeOnly
    };
    Ok(FsIdentity {
        identity,
        fs_type,
        generation_error,
    })
}

/// The filesystem type of mount `mnt_id` in `/proc/self/mountinfo`.
pub(crate) fn mount_type(mnt_id: u64) -> Option<String> {
    if mnt_id == 0 {
        return None;
    }
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_type_in(&table, mnt_id)
}

/// One line per mount: `ID PARENT MAJ:MIN ROOT POINT OPTS [TAGS...] - TYPE
/// SOURCE SUPEROPTS` (paths escape their spaces, so fields split on them).
pub(crate) fn mount_type_in(table: &str, mnt_id: u64) -> Option<String> {
    let id = mnt_id.to_string();
    table.lines().find_map(|line| {
        let mut fields = line.split(' ');
        if fields.next()? != id {
            return None;
        }
        fields.by_ref().find(|f| *f == "-")?;
        fields.next().map(str::to_string)
    })
}

/// Says at start which identity is used, and what it costs where it is
/// the inode number alone.
pub fn announce(layout: &Layout) {
    let root = &layout.root;
    match probe(layout) {
        Ok(p) => log_probe(root, &p),
        Err(e) => tracing::warn!(root = %crate::quote::path(root), error = %e,
            "cannot tell which identity the filesystem offers"),
    }
}

fn log_probe(root: &Path, p: &FsIdentity) {
    tracing::info!(root = %crate::quote::path(root), fs = %p.fs_type, identity = p.identity.describe(),
        "file generations are told apart by inode number and {}", p.identity.describe());
    match (p.identity, p.generation_error) {
        (Identity::Generation, Some(e)) => tracing::error!(
            root = %crate::quote::path(root), fs = %p.fs_type, error = %e,
            "the filesystem has no birth time and its inode generation (FS_IOC_GETVERSION) \
             cannot be read: files there cannot be looked at and are not distributed"
        ),
        (Identity::InodeOnly, _) => tracing::warn!(
            root = %crate::quote::path(root), fs = %p.fs_type,
            "the filesystem reports neither a birth time nor a stable inode generation: a file \
             is known by its inode number alone. A write or touch never makes it look new, but a \
             new download that gets the inode number of a file of the same name still in the \
             record is taken for that file and not distributed (the record forgets a file at \
             the first full scan after the last host dropped it)"
        ),
        _ => {}
    }
}

/// Rewrites the record rows that versions before the inode generation
/// stamped with the mtime (where the file has no birth time): a row whose
/// stamp is not one of those a file without birth time gets now, for a
/// name some host holds on that inode number with no birth time, now
/// carries the file's present stamp (owed links follow). Without this,
/// every such file would look new once after an upgrade and come back
/// into the hosts that had pruned it. Returns how many were rewritten.
///
/// Costs nothing where the host dirs have birth times; elsewhere one
/// `statx` per row that still has an old stamp (once: the rows are
/// rewritten, and rows of files gone everywhere are forgotten by the
/// next full scan).
pub fn upgrade_record(layout: &Layout, store: &mut Store) -> usize {
    let dir_has_birth_time = fsops::stat_fd(first_dir(layout))
        .is_ok_and(|st| Identity::of_stamp(st.birth_ns) == Identity::BirthTime);
    if dir_has_birth_time {
        return 0;
    }
    let old: Vec<(OsString, FileId)> = store
        .all_files()
        .filter(|(_, id)| Identity::of_stamp(id.birth) == Identity::BirthTime)
        .map(|(n, id)| (n.clone(), id))
        .collect();
    if old.is_empty() {
        return 0;
    }
    let mut rewritten = 0;
    for (name, id) in old {
        let now = layout.hosts.iter().find_map(|h| {
            fsops::stat_at(h.fd(), &name).ok().filter(|s| {
                s.ino == id.ino
                    && s.is_regular()
                    && Identity::of_stamp(s.birth_ns) != Identity::BirthTime
            })
        });
        let Some(st) = now else {
            continue;
        };
        // In place: when it was recorded (which hosts away from the
        // configuration missed it) and the links owed for it stay.
        store.rekey(&name, id, st.id());
        rewritten += 1;
    }
    if rewritten > 0 {
        tracing::info!(
            files = rewritten,
            "record rows stamped with the mtime by an older version now carry the inode generation"
        );
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_type_is_read_from_the_line_of_the_mount() {
        let table = "\
22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw
29 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
301 29 0:55 / /mnt/my\\040dir rw master:4 opt:x - nfs4 srv:/x rw,vers=4.2
";
        assert_eq!(mount_type_in(table, 29).as_deref(), Some("ext4"));
        assert_eq!(mount_type_in(table, 301).as_deref(), Some("nfs4"));
        assert_eq!(mount_type_in(table, 2), None);
    }

    #[test]
    fn this_machines_temp_dir_is_probed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fd = fsops::open_dir_path(dir.path()).expect("open");
        let p = probe_fd(std::os::fd::AsFd::as_fd(&fd)).expect("probe");
        assert!(!p.fs_type.is_empty());
        assert_eq!(p.generation_error, None, "{p:?}");
    }
}
