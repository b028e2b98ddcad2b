//! Whether the kernel distlink runs on sees every write to the root, and so
//! which watch mode `[watch] mode = "auto"` picks: inotify on a local
//! filesystem, poll on a network, cluster or FUSE filesystem (where a file
//! written through another machine, or through an NFS gateway of the same
//! filesystem, produces no inotify event here at all) and on any type not
//! known to be local. Decided from the mount's type in
//! `/proc/self/mountinfo` (found by the mount id `statx` reports) and the
//! `statfs` magic number; either one naming a shared filesystem is enough.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;

use crate::config::{Watch, WatchMode};
use crate::error::{Error, Result};
use crate::fsops;
use crate::quote;

/// Who can write to a filesystem, as far as this kernel can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// A local filesystem: every write goes through this kernel.
    Local,
    /// A network, cluster or FUSE filesystem: other machines (or a FUSE
    /// daemon's own backing store) write to it unseen by inotify.
    Shared,
    /// A type distlink does not know: taken as shared.
    Unknown,
}

/// Local filesystems, by the name the mount table gives them.
const LOCAL_TYPES: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "tmpfs", "ramfs", "jfs", "reiserfs",
    "bcachefs", "nilfs2", "overlay", "vfat", "exfat", "ntfs3", "hfsplus",
];

/// Network and cluster filesystems (every `fuse`, `fuseblk` and `fuse.*`
/// type counts too).
const SHARED_TYPES: &[&str] = &[
    "nfs",
    "nfs4",
    "ceph",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "lustre",
    "gpfs",
    "afs",
    "ocfs2",
    "gfs2",
    "glusterfs",
    "beegfs",
    "orangefs",
    "pvfs2",
    "virtiofs",
    "davfs",
    "coda",
];

/// `statfs` magic numbers: (magic, name, reach).
const MAGICS: &[(i64, &str, Reach)] = &[
    (0xEF53, "ext2/ext3/ext4", Reach::Local),
    (0x5846_5342, "xfs", Reach::Local),
    (0x9123_683E, "btrfs", Reach::Local),
    (0x2FC1_2FC1, "zfs", Reach::Local),
    (0xF2F5_2010, "f2fs", Reach::Local),
    (0x0102_1994, "tmpfs", Reach::Local),
    (0x8584_58f6, "ramfs", Reach::Local),
    (0x794C_7630, "overlay", Reach::Local),
    (0x6969, "nfs", Reach::Shared),
    (0x00C3_6400, "ceph", Reach::Shared),
    (0x6573_5546, "fuse", Reach::Shared),
    (0xFF53_4D42, "cifs", Reach::Shared),
    (0xFE53_4D42, "smb2", Reach::Shared),
    (0x517B, "smbfs", Reach::Shared),
    (0x0102_1997, "9p", Reach::Shared),
    (0x0BD0_0BD0, "lustre", Reach::Shared),
    (0x4750_4653, "gpfs", Reach::Shared),
    (0x5346_414F, "afs", Reach::Shared),
    (0x7461_636f, "ocfs2", Reach::Shared),
    (0x0116_1970, "gfs2", Reach::Shared),
];

/// The reach of a filesystem type named by the mount table.
pub fn reach_of_type(t: &str) -> Reach {
    if t == "fuse" || t == "fuseblk" || t.starts_with("fuse.") || SHARED_TYPES.contains(&t) {
        Reach::Shared
    } else if LOCAL_TYPES.contains(&t) {
        Reach::Local
    } else {
        Reach::Unknown
    }
}

/// What the filesystem of the root is, and who can write to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsKind {
    /// As the mount table names it (`ext4`, `fuse.ceph-fuse`), else as the
    /// magic number does, else the magic number itself.
    pub fs_type: String,
    pub reach: Reach,
}

/// Classifies a filesystem from its mount-table type (if found) and its
/// `statfs` magic number.
pub fn classify(mount_type: Option<&str>, magic: i64) -> FsKind {
    let by_magic = MAGICS.iter().find(|(m, _, _)| *m == magic);
    let by_name = mount_type.map(reach_of_type);
    let reach = if by_name == Some(Reach::Shared)
        || by_magic.is_some_and(|(_, _, r)| *r == Reach::Shared)
    {
        Reach::Shared
    } else if let Some(r) = by_name.filter(|r| *r != Reach::Unknown) {
        r
    } else {
        by_magic.map_or(Reach::Unknown, |(_, _, r)| *r)
    };
    let fs_type = match (mount_type, by_magic) {
        (Some(t), _) => t.to_string(),
        (None, Some((_, name, _))) => name.to_string(),
        (None, None) => format!("type {magic:#x}"),
    };
    FsKind { fs_type, reach }
}

/// Looks at the filesystem of the directory `fd`.
pub fn probe(fd: BorrowedFd<'_>) -> std::result::Result<FsKind, Errno> {
    let st = fsops::stat_fd(fd)?;
    let magic = nix::sys::statfs::fstatfs(fd)?.filesystem_type().0 as i64;
    let name = crate::identity::mount_type(st.mnt_id);
    Ok(classify(name.as_deref(), magic))
}

/// The watch mode the daemon runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    Inotify,
    /// Poll at this interval.
    Poll(Duration),
}

/// The mode, and why (said in the `ready` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub mode: Chosen,
    pub fs_type: String,
    pub reach: Reach,
    pub why: &'static str,
}

/// Picks the watch mode for a root on `kind`. An explicit inotify on a
/// filesystem the kernel does not see every write to is refused (exit 2),
/// unless the admin stated `all_writes_local`.
pub fn choose(w: &Watch, kind: &FsKind, root: &Path) -> Result<Choice> {
    let local = kind.reach == Reach::Local;
    let poll = Chosen::Poll(w.interval);
    let (mode, why) = match w.mode {
        WatchMode::Poll => (poll, "configured"),
        WatchMode::Auto if local => (
            Chosen::Inotify,
            "auto: a local filesystem, the kernel sees every write",
        ),
        WatchMode::Auto if w.all_writes_local => (
            Chosen::Inotify,
            "auto: all_writes_local = true, every write goes through this kernel",
        ),
        WatchMode::Auto if kind.reach == Reach::Shared => (
            poll,
            "auto: a network or FUSE filesystem, writes through other machines raise no inotify event",
        ),
        WatchMode::Auto => (
            poll,
            "auto: a filesystem type not known to be local, writes may raise no inotify event",
        ),
        WatchMode::Inotify if local => (Chosen::Inotify, "configured"),
        WatchMode::Inotify if w.all_writes_local => {
            (Chosen::Inotify, "configured, with all_writes_local = true")
        }
        WatchMode::Inotify => {
            return Err(Error::Refused(format!(
                "[watch] mode = \"inotify\" refused: the root {} is on {} ({}). A file written \
                 there through another machine, or through an NFS or SMB gateway of that \
                 filesystem, raises no inotify event on this machine: it would never be \
                 distributed, and nothing would say so. Use mode = \"auto\" or \"poll\" \
                 (periodic checks, cheap when nothing changed); or, only if every write to the \
                 root goes through this machine's kernel (e.g. a kernel NFS server here \
                 re-exporting this mount, and no other client), set all_writes_local = true \
                 in [watch]",
                quote::path(root),
                kind.fs_type,
                match kind.reach {
                    Reach::Unknown => "a filesystem type distlink does not know to be local",
                    _ => "a network, cluster or FUSE filesystem",
                }
            )));
        }
    };
    Ok(Choice {
        mode,
        fs_type: kind.fs_type.clone(),
        reach: kind.reach,
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sample `/proc/self/mountinfo` lines, one per kind of mount.
    const TABLE: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683772k
41 27 0:40 / /srv/x\\040y rw,relatime shared:5 master:1 - xfs /dev/sdb1 rw
50 27 0:45 / /mnt/ceph rw,nosuid,nodev,relatime - fuse.ceph-fuse ceph-fuse rw,user_id=0
51 27 0:46 / /mnt/gluster rw,relatime - fuse.glusterfs srv:/vol rw
52 27 0:47 / /mnt/bind rw,relatime - fuse /srv/src rw,user_id=0
53 27 0:48 / /mnt/bindfs rw,relatime - fuse.bindfs /srv/src rw
54 27 0:49 / /mnt/nas rw,relatime - nfs4 nas:/export rw,vers=4.2
55 27 0:50 / /mnt/k rw,relatime - ceph 10.0.0.1:/ rw,name=admin
56 27 0:51 / /mnt/smb rw,relatime - cifs //srv/share rw
57 27 0:52 / /mnt/vm rw,relatime - 9p hostshare rw,trans=virtio
58 27 0:53 / /mnt/l rw,relatime - lustre 10.0.0.2@tcp:/fs rw
59 27 0:54 / /mnt/g rw,relatime - gpfs gpfs0 rw
60 27 0:55 / /mnt/o rw,relatime - overlay overlay rw,lowerdir=/a
61 27 0:56 / /mnt/z rw,relatime - zfs tank/distfiles rw
62 27 0:57 / /mnt/q rw,relatime - quuxfs none rw
63 27 0:58 / /mnt/s rw,relatime - smb3 //srv/s rw
64 27 0:59 / /mnt/b rw,relatime - btrfs /dev/sdc rw
";

    fn kind_of(id: u64, magic: i64) -> FsKind {
        let t = crate::identity::mount_type_in(TABLE, id);
        classify(t.as_deref(), magic)
    }

    #[test]
    fn local_disk_filesystems_are_local() {
        for (id, t) in [
            (27, "ext4"),
            (30, "tmpfs"),
            (41, "xfs"),
            (60, "overlay"),
            (61, "zfs"),
            (64, "btrfs"),
        ] {
            let k = kind_of(id, 0);
            assert_eq!(k.fs_type, t);
            assert_eq!(k.reach, Reach::Local, "{t}");
        }
    }

    #[test]
    fn network_cluster_and_fuse_filesystems_are_shared() {
        for (id, t) in [
            (50, "fuse.ceph-fuse"),
            (51, "fuse.glusterfs"),
            (52, "fuse"),
            (53, "fuse.bindfs"),
            (54, "nfs4"),
            (55, "ceph"),
            (56, "cifs"),
            (57, "9p"),
            (58, "lustre"),
            (59, "gpfs"),
            (63, "smb3"),
        ] {
            let k = kind_of(id, 0);
            assert_eq!(k.fs_type, t);
            assert_eq!(k.reach, Reach::Shared, "{t}");
        }
    }

    #[test]
    fn an_unknown_type_is_not_taken_for_local() {
        assert_eq!(kind_of(62, 0).reach, Reach::Unknown);
        // No mount table entry and an unknown magic.
        let k = classify(None, 0x1234);
        assert_eq!(
            (k.fs_type.as_str(), k.reach),
            ("type 0x1234", Reach::Unknown)
        );
    }

    #[test]
    fn either_the_mount_type_or_the_magic_naming_a_shared_filesystem_is_enough() {
        // A FUSE magic under a type the table calls something else.
        assert_eq!(kind_of(62, 0x6573_5546).reach, Reach::Shared);
        // No mount id (old kernel): the magic alone.
        assert_eq!(classify(None, 0x6969).reach, Reach::Shared);
        assert_eq!(classify(None, 0xEF53).reach, Reach::Local);
        // A local-looking magic does not make a FUSE mount local.
        assert_eq!(kind_of(53, 0xEF53).reach, Reach::Shared);
    }

    fn watch(mode: WatchMode, all_writes_local: bool) -> Watch {
        Watch {
            mode,
            all_writes_local,
            ..Watch::default()
        }
    }

    #[test]
    fn auto_picks_inotify_on_local_and_poll_elsewhere() {
        let root = Path::new("/r");
        let local = kind_of(27, 0);
        let ceph = kind_of(50, 0);
        let odd = kind_of(62, 0);
        let w = watch(WatchMode::Auto, false);
        assert_eq!(choose(&w, &local, root).unwrap().mode, Chosen::Inotify);
        let c = choose(&w, &ceph, root).unwrap();
        assert_eq!(c.mode, Chosen::Poll(w.interval));
        assert_eq!(c.fs_type, "fuse.ceph-fuse");
        assert_eq!(
            choose(&w, &odd, root).unwrap().mode,
            Chosen::Poll(w.interval)
        );
        let p = watch(WatchMode::Poll, false);
        assert_eq!(
            choose(&p, &local, root).unwrap().mode,
            Chosen::Poll(p.interval)
        );
    }

    #[test]
    fn explicit_inotify_on_a_shared_filesystem_is_refused_unless_all_writes_are_local() {
        let root = Path::new("/srv/distfiles");
        let ceph = kind_of(50, 0);
        let e = choose(&watch(WatchMode::Inotify, false), &ceph, root).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let m = e.to_string();
        for part in [
            "fuse.ceph-fuse",
            "/srv/distfiles",
            "another machine",
            "mode = \"auto\"",
            "all_writes_local = true",
        ] {
            assert!(m.contains(part), "{part:?} missing from: {m}");
        }
        let ok = choose(&watch(WatchMode::Inotify, true), &ceph, root).unwrap();
        assert_eq!(ok.mode, Chosen::Inotify);
        let local = kind_of(27, 0);
        let ok = choose(&watch(WatchMode::Inotify, false), &local, root).unwrap();
        assert_eq!(ok.mode, Chosen::Inotify);
    }
}
