//! Thin, safe wrappers over the `*at` system calls distlink needs.
//!
//! Every call here works relative to a directory fd and never follows a
//! symlink in the last path component: the directories are controlled by NFS
//! clients, and distlink runs as root.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::Read;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{OFlag, RenameFlags};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

/// What `statx` tells about one directory entry, without following symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
///
/// 64 bytes, no padding: a scan keeps one per inode (100,000s of them).
pub struct FileStat {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// The birth stamp of [`FileId`] (see there): the birth time, else
    /// the inode generation, else a constant, never the mtime.
    pub birth_ns: i64,
    /// The mount it was reached through, 0 when the kernel does not say
    /// (hard links cannot cross mounts, even of one filesystem).
    pub mnt_id: u64,
    pub mode: u32,
    pub nlink: u32,
}

const _: () = assert!(std::mem::size_of::<FileStat>() == 64);

/// The identity of one file generation: its inode number plus a birth
/// stamp, so that an inode number reused by the filesystem for a new
/// download is not mistaken for the old, already distributed file. Nothing
/// a write or a `touch` changes goes into it. The stamp is:
///
/// - the birth time in nanoseconds, where `statx` reports one (ext4 with
///   256-byte inodes, xfs, btrfs, tmpfs): free, it comes with the stat;
/// - else, for a regular file, `i64::MIN + generation`, where the
///   filesystem gives the inode generation (`FS_IOC_GETVERSION`: ext2/3/4
///   with 128-byte inodes), a 32-bit number it draws anew for every inode
///   it allocates;
/// - else [`INODE_ONLY_STAMP`] (`i64::MIN + 2^32`): the inode number
///   alone tells generations apart (some network and FUSE filesystems),
///   so a new download that gets the inode number of a still recorded
///   generation of its name is taken for it.
///
/// The last two lie below any birth time a filesystem can report (they are
/// years before 1677; ext4 and xfs stop at 1901), and a birth time is kept
/// above them, so the three never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub ino: u64,
    pub birth: i64,
}

/// The birth stamp of a generation on a filesystem that gives neither a
/// birth time nor an inode generation (see [`FileId`]).
pub const INODE_ONLY_STAMP: i64 = i64::MIN + (1 << 32);

/// Birth times are kept at or above this (below lie the other stamps).
const LOWEST_BIRTH_TIME: i64 = INODE_ONLY_STAMP + 1;

/// What tells the generations of one inode number apart on a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    BirthTime,
    Generation,
    InodeOnly,
}

impl Identity {
    /// Which identity a birth stamp comes from.
    pub fn of_stamp(birth: i64) -> Identity {
        if birth >= LOWEST_BIRTH_TIME {
            Identity::BirthTime
        } else if birth == INODE_ONLY_STAMP {
            Identity::InodeOnly
        } else {
            Identity::Generation
        }
    }

    /// For logs.
    pub fn describe(self) -> &'static str {
        match self {
            Identity::BirthTime => "birth time",
            Identity::Generation => "inode generation",
            Identity::InodeOnly => "inode number only",
        }
    }
}

fn generation_stamp(generation: u32) -> i64 {
    i64::MIN + i64::from(generation)
}

impl FileStat {
    pub fn id(&self) -> FileId {
        FileId {
            ino: self.ino,
            birth: self.birth_ns,
        }
    }
    pub fn is_regular(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub fn is_setid(&self) -> bool {
        self.mode & (libc::S_ISUID | libc::S_ISGID) != 0
    }
    /// Whether the content may have changed between two looks at the same
    /// inode: size, mtime or ctime moved.
    pub fn same_content_stamp(&self, other: &FileStat) -> bool {
        self.ino == other.ino
            && self.dev == other.dev
            && self.size == other.size
            && self.mtime_ns == other.mtime_ns
    }
    pub fn kind(&self) -> &'static str {
        match self.mode & libc::S_IFMT {
            libc::S_IFREG => "regular file",
            libc::S_IFDIR => "directory",
            libc::S_IFLNK => "symlink",
            libc::S_IFIFO => "fifo",
            libc::S_IFSOCK => "socket",
            libc::S_IFCHR => "character device",
            libc::S_IFBLK => "block device",
            _ => "unknown file type",
        }
    }
}

fn cstr(name: &OsStr) -> Result<CString, Errno> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

/// Where the file `statx` looked at can be reached again, to ask for its
/// inode generation.
#[derive(Clone, Copy)]
enum Reach<'a> {
    /// `name` in the directory `dirfd`, not following a symlink.
    At(BorrowedFd<'a>, &'a CStr),
    /// The fd itself (an `O_PATH` fd or an open file).
    Fd(BorrowedFd<'a>),
}

fn statx_raw(reach: Reach<'_>) -> Result<FileStat, Errno> {
    let (dirfd, name, flags) = match reach {
        Reach::At(dirfd, name) => (dirfd, name, 0),
        Reach::Fd(fd) => (fd, c"", libc::AT_EMPTY_PATH),
    };
    let mut buf = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `name` is a valid NUL-terminated string and `buf` is a valid
    // out-pointer for one `struct statx`.
    let rc = unsafe {
        libc::statx(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            flags | libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_SYNC_AS_STAT,
            libc::STATX_BASIC_STATS | libc::STATX_BTIME | libc::STATX_MNT_ID,
            buf.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(Errno::last());
    }
    // SAFETY: statx succeeded and filled the structure.
    let s = unsafe { buf.assume_init() };
    // Saturating: a client may set any mtime.
    let ts = |t: libc::statx_timestamp| {
        t.tv_sec
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(t.tv_nsec))
    };
    let mut st = FileStat {
        dev: libc::makedev(s.stx_dev_major, s.stx_dev_minor),
        ino: s.stx_ino,
        mode: u32::from(s.stx_mode),
        nlink: s.stx_nlink,
        size: s.stx_size,
        mtime_ns: ts(s.stx_mtime),
        ctime_ns: ts(s.stx_ctime),
        birth_ns: INODE_ONLY_STAMP,
        mnt_id: if s.stx_mask & libc::STATX_MNT_ID != 0 {
            s.stx_mnt_id
        } else {
            0
        },
    };
    // A zero birth time is none: ext4 reports one once it grows an old
    // inode's extra space (on a write), zeroed.
    let btime = s.stx_btime;
    if s.stx_mask & libc::STATX_BTIME != 0 && (btime.tv_sec, btime.tv_nsec) != (0, 0) {
        st.birth_ns = ts(btime).max(LOWEST_BIRTH_TIME);
    } else if st.is_regular() {
        st.birth_ns = stamp_without_birth_time(reach, &st)?;
    }
    Ok(st)
}

/// The birth stamp of the regular file `st` (just `statx`ed through
/// `reach`), which has no birth time: its inode generation where its
/// filesystem keeps a stable one, else [`INODE_ONLY_STAMP`].
fn stamp_without_birth_time(reach: Reach<'_>, st: &FileStat) -> Result<i64, Errno> {
    if !keeps_generations(reach, st)? {
        return Ok(INODE_ONLY_STAMP);
    }
    // An ioctl needs a real open file: an `O_PATH` fd (EBADF) is opened
    // again, through /proc, as the very inode it pins. A name is opened
    // without following a symlink and without side effects (no blocking,
    // no controlling tty); it is known to be a regular file, and is
    // checked to still be the inode that was `statx`ed.
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let generation = match reach {
        Reach::Fd(fd) => match inode_generation(fd) {
            Err(Errno::EBADF) => {
                let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
                let file = nix::fcntl::open(path.as_str(), flags, Mode::empty())?;
                generation_if_same(file.as_fd(), st)?
            }
            other => other?,
        },
        Reach::At(dirfd, name) => {
            let file = nix::fcntl::openat(dirfd, name, flags | OFlag::O_NOFOLLOW, Mode::empty())?;
            generation_if_same(file.as_fd(), st)?
        }
    };
    Ok(generation_stamp(generation))
}

/// The inode generation of the open file `fd`, when it is the inode `st`
/// describes (ESTALE when the name was replaced meanwhile).
fn generation_if_same(fd: BorrowedFd<'_>, st: &FileStat) -> Result<u32, Errno> {
    let now = nix::sys::stat::fstat(fd)?;
    if now.st_dev != st.dev || now.st_ino != st.ino {
        return Err(Errno::ESTALE);
    }
    inode_generation(fd)
}

/// `FS_IOC_GETVERSION`: the inode generation, which the filesystem sets when
/// it allocates the inode and nothing but that ioctl's setter changes.
pub fn inode_generation(fd: BorrowedFd<'_>) -> Result<u32, Errno> {
    // Declared as a `long`, but every filesystem writes an `int` at the
    // start of it.
    let mut buf = [0u8; std::mem::size_of::<libc::c_long>()];
    // SAFETY: `buf` is a writable buffer of the size the request declares.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FS_IOC_GETVERSION, buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(Errno::last());
    }
    Ok(u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]))
}

/// Filesystems whose inode generation (`FS_IOC_GETVERSION`) is a stable
/// identity: set at allocation, drawn anew for each, kept on disk.
const GENERATION_KEEPERS: [nix::sys::statfs::FsType; 6] = {
    use nix::sys::statfs::*;
    [
        EXT4_SUPER_MAGIC, // also ext2 and ext3: one magic number
        XFS_SUPER_MAGIC,
        BTRFS_SUPER_MAGIC,
        F2FS_SUPER_MAGIC,
        NILFS_SUPER_MAGIC,
        REISERFS_SUPER_MAGIC,
    ]
};

/// Whether a filesystem of this type keeps stable inode generations.
pub fn type_keeps_generations(fs: nix::sys::statfs::FsType) -> bool {
    GENERATION_KEEPERS.contains(&fs)
}

/// Per device: whether its filesystem keeps stable inode generations.
/// Decided by the filesystem's type, never by how one file answers, so
/// that every file and every run agrees.
static GENERATIONS: std::sync::Mutex<Vec<(u64, bool)>> = std::sync::Mutex::new(Vec::new());

fn keeps_generations(reach: Reach<'_>, st: &FileStat) -> Result<bool, Errno> {
    let known = |dev| {
        GENERATIONS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(d, _)| *d == dev)
            .map(|(_, k)| *k)
    };
    if let Some(k) = known(st.dev) {
        return Ok(k);
    }
    // Once per filesystem: its type, through an fd on the file itself (an
    // `O_PATH` one: opens nothing, needs no permission).
    let fs = match reach {
        Reach::Fd(fd) => nix::sys::statfs::fstatfs(fd)?,
        Reach::At(dirfd, name) => {
            let fd = nix::fcntl::openat(
                dirfd,
                name,
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            if nix::sys::stat::fstat(fd.as_fd())?.st_dev != st.dev {
                return Err(Errno::ESTALE);
            }
            nix::sys::statfs::fstatfs(fd.as_fd())?
        }
    };
    let keeps = type_keeps_generations(fs.filesystem_type());
    let mut all = GENERATIONS.lock().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|(d, _)| *d == st.dev) {
        all.push((st.dev, keeps));
    }
    Ok(keeps)
}

/// `statx(dirfd, name, AT_SYMLINK_NOFOLLOW)`.
pub fn stat_at(dirfd: BorrowedFd<'_>, name: &OsStr) -> Result<FileStat, Errno> {
    statx_raw(Reach::At(dirfd, &cstr(name)?))
}

/// `statx` of an open fd (`AT_EMPTY_PATH`).
pub fn stat_fd(fd: BorrowedFd<'_>) -> Result<FileStat, Errno> {
    statx_raw(Reach::Fd(fd))
}

/// Opens a directory entry as a directory, refusing symlinks.
pub fn open_dir_at(dirfd: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    nix::fcntl::openat(
        dirfd,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens a directory this user may search but perhaps not read as an
/// `O_PATH` fd (never following a symlink): usable for `fstat` and as the
/// base of `*at` calls, not for listing or locking it.
pub fn search_dir_at(dirfd: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    nix::fcntl::openat(
        dirfd,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens an absolute directory path chosen by the administrator (symlinks in
/// it are the administrator's own and are followed).
pub fn open_dir_path(path: &std::path::Path) -> Result<OwnedFd, Errno> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(fd)
}

/// Opens the directory held as `dir` again, by its file handle, through
/// the mount `via` is on (same filesystem): its `..` then climbs that
/// mount's tree, not the tree of the mount `dir` was reached through (a
/// bind mount of a subdirectory hides where it lies). Needs
/// `CAP_DAC_READ_SEARCH` and a filesystem with file handles.
pub fn reopen_through(dir: BorrowedFd<'_>, via: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    /// `struct file_handle` with room for `MAX_HANDLE_SZ` bytes.
    #[repr(C)]
    struct Handle {
        bytes: libc::c_uint,
        kind: libc::c_int,
        f: [u8; 128],
    }
    let mut h = Handle {
        bytes: 128,
        kind: 0,
        f: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: the name is a valid empty C string, `h` has the layout of a
    // `struct file_handle` with `bytes` of room, `mount_id` is a valid
    // out-pointer.
    let rc = unsafe {
        libc::name_to_handle_at(
            dir.as_raw_fd(),
            c"".as_ptr(),
            (&mut h as *mut Handle).cast::<libc::file_handle>(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(Errno::last());
    }
    // SAFETY: `h` was filled by name_to_handle_at.
    let fd = unsafe {
        libc::open_by_handle_at(
            via.as_raw_fd(),
            (&mut h as *mut Handle).cast::<libc::file_handle>(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new fd this process owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Pins a directory entry with an `O_PATH` fd (no symlink following, no
/// open side effects: fifos do not block, devices are not opened).
pub fn open_path_at(dirfd: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    nix::fcntl::openat(
        dirfd,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens a pinned regular file for reading, checking that the name still
/// refers to the same inode.
pub fn open_read_at(dirfd: BorrowedFd<'_>, name: &OsStr, expect: &FileStat) -> Result<File, Errno> {
    let fd = nix::fcntl::openat(
        dirfd,
        name,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let st = stat_fd(fd.as_fd())?;
    if !st.is_regular() || st.ino != expect.ino || st.dev != expect.dev {
        return Err(Errno::ESTALE);
    }
    Ok(File::from(fd))
}

/// Hard-links exactly the inode behind `fd` (an `O_PATH` fd) as
/// `newdir/newname`. Fails with `EEXIST` rather than replacing anything, and
/// with `ENOENT` when the inode has no names left.
pub fn link_fd_at(
    fd: BorrowedFd<'_>,
    newdir: BorrowedFd<'_>,
    newname: &OsStr,
) -> Result<(), Errno> {
    nix::unistd::linkat(fd, c"", newdir, newname, AtFlags::AT_EMPTY_PATH)
}

/// Atomically swaps two names in one directory.
pub fn exchange_at(dirfd: BorrowedFd<'_>, a: &OsStr, b: &OsStr) -> Result<(), Errno> {
    nix::fcntl::renameat2(dirfd, a, dirfd, b, RenameFlags::RENAME_EXCHANGE)
}

/// Unlinks a non-directory entry.
pub fn unlink_at(dirfd: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    nix::unistd::unlinkat(dirfd, name, UnlinkatFlags::NoRemoveDir)
}

/// Creates a directory (never following a symlink planted at the name).
pub fn mkdir_at(dirfd: BorrowedFd<'_>, name: &OsStr, mode: u32) -> Result<(), Errno> {
    nix::sys::stat::mkdirat(dirfd, name, Mode::from_bits_truncate(mode))
}

/// Copies owner, group and permission bits onto an open directory.
pub fn copy_owner_mode(
    fd: BorrowedFd<'_>,
    from: &FileStat,
    uid: u32,
    gid: u32,
) -> Result<(), Errno> {
    nix::unistd::fchown(
        fd,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )?;
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(from.mode & 0o7777))
}

/// Owner and group of an open fd.
pub fn owner_of(fd: BorrowedFd<'_>) -> Result<(u32, u32), Errno> {
    let st = nix::sys::stat::fstat(fd)?;
    Ok((st.st_uid, st.st_gid))
}

pub fn fsync_fd(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    nix::unistd::fsync(fd)
}

/// One directory's entries (without `.` and `..`). The names share one
/// byte buffer: 16 bytes per entry besides the name itself, where an
/// `OsString` per entry would cost 24 plus an allocation.
#[derive(Debug, Default)]
pub struct DirList {
    bytes: Vec<u8>,
    ents: Vec<RawEntry>,
}

#[derive(Debug, Clone, Copy)]
struct RawEntry {
    ino: u64,
    start: u32,
    len: u8,
    kind: Option<nix::dir::Type>,
}

/// One entry of a [`DirList`].
#[derive(Debug, Clone, Copy)]
pub struct DirEntry<'a> {
    pub name: &'a OsStr,
    pub ino: u64,
    /// The entry's type, when the filesystem reports it (`d_type`).
    pub kind: Option<nix::dir::Type>,
}

impl DirList {
    pub fn len(&self) -> usize {
        self.ents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ents.is_empty()
    }

    /// Entry `k` (panics when out of range, like slice indexing).
    pub fn get(&self, k: usize) -> DirEntry<'_> {
        let e = self.ents[k];
        let start = e.start as usize;
        DirEntry {
            name: OsStr::from_bytes(&self.bytes[start..start + usize::from(e.len)]),
            ino: e.ino,
            kind: e.kind,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = DirEntry<'_>> {
        (0..self.len()).map(|k| self.get(k))
    }
}

/// Lists a directory, reading through a fresh fd of the very directory
/// `dirfd` refers to.
pub fn list_dir(dirfd: BorrowedFd<'_>) -> Result<DirList, Errno> {
    let fd = nix::fcntl::openat(
        dirfd,
        c".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let dir = nix::dir::Dir::from_fd(fd)?;
    let mut out = DirList::default();
    for entry in dir {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        // Names are at most 255 bytes (NAME_MAX); the buffer is addressed
        // with 32 bits.
        let len = u8::try_from(name.len()).map_err(|_| Errno::ENAMETOOLONG)?;
        let start = u32::try_from(out.bytes.len()).map_err(|_| Errno::EOVERFLOW)?;
        out.bytes.extend_from_slice(name);
        out.ents.push(RawEntry {
            ino: entry.ino(),
            start,
            len,
            kind: entry.file_type(),
        });
    }
    out.bytes.shrink_to_fit();
    out.ents.shrink_to_fit();
    Ok(out)
}

/// Compares the full contents of two open files, returning true when they
/// are byte for byte identical.
pub fn same_bytes(a: &mut File, b: &mut File) -> std::io::Result<bool> {
    const CHUNK: usize = 1 << 20;
    let mut ba = vec![0u8; CHUNK];
    let mut bb = vec![0u8; CHUNK];
    loop {
        let na = read_full(a, &mut ba)?;
        let nb = read_full(b, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Renames `from_dir/from` to `to_dir/to`, failing with `EEXIST` rather
/// than replacing anything.
pub fn rename_noreplace(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
) -> Result<(), Errno> {
    nix::fcntl::renameat2(from_dir, from, to_dir, to, RenameFlags::RENAME_NOREPLACE)
}

/// Copies the open file `src` into a new file `dir/name` (which must not
/// exist), with the given owner, mode and mtime, and fsyncs it.
pub fn copy_new(
    src: &mut File,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    like: &FileStat,
    uid: u32,
    gid: u32,
) -> Result<(), Errno> {
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    let mut dst = File::from(fd);
    let io = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    std::io::copy(src, &mut dst).map_err(io)?;
    nix::unistd::fchown(
        dst.as_fd(),
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )?;
    nix::sys::stat::fchmod(dst.as_fd(), Mode::from_bits_truncate(like.mode & 0o777))?;
    let mtime =
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(like.mtime_ns.max(0) as u64);
    dst.set_modified(mtime).map_err(io)?;
    dst.sync_all().map_err(io)?;
    Ok(())
}

/// Owner of a directory entry (without following symlinks).
pub fn owner_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(u32, u32), Errno> {
    let st = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok((st.st_uid, st.st_gid))
}

/// Whether some process has the regular file `dirfd/name` (the inode
/// `expect`) open for writing. Asked with a read lease, which the kernel
/// grants only when nobody has the file open for writing (or mapped
/// shared-writable) and refuses with `EAGAIN` otherwise; a granted lease is
/// released at once. The open never blocks: a file under another process's
/// write lease counts as open for writing. Fails with `EINVAL` where the
/// filesystem has no leases (NFS or FUSE mounts, `fs.leases-enable = 0`),
/// `ESTALE` when the name now holds another inode.
///
/// A lease broken in the instant it is held sends this process `SIGIO`,
/// whose default action ends it: the caller ignores that signal first.
pub fn open_for_writing(
    dirfd: BorrowedFd<'_>,
    name: &OsStr,
    expect: &FileStat,
) -> Result<bool, Errno> {
    let f = match open_read_at(dirfd, name, expect) {
        Err(Errno::EAGAIN) => return Ok(true),
        r => r?,
    };
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on an fd this function owns, with integer arguments.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK as libc::c_int) };
    if rc == -1 {
        return match Errno::last() {
            Errno::EAGAIN => Ok(true),
            e => Err(e),
        };
    }
    // SAFETY: as above. (Closing the fd would release the lease too.)
    unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK as libc::c_int) };
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_three_kinds_of_birth_stamp_never_collide() {
        assert_eq!(
            Identity::of_stamp(generation_stamp(0)),
            Identity::Generation
        );
        assert_eq!(
            Identity::of_stamp(generation_stamp(u32::MAX)),
            Identity::Generation
        );
        assert_eq!(Identity::of_stamp(INODE_ONLY_STAMP), Identity::InodeOnly);
        // The earliest birth time ext4 and xfs can hold (1901), and any
        // later one, is a birth time.
        for t in [
            -(1i64 << 31) * 1_000_000_000,
            -1,
            1,
            1_700_000_000_000_000_000,
        ] {
            assert_eq!(Identity::of_stamp(t), Identity::BirthTime, "{t}");
        }
        assert_eq!(Identity::of_stamp(LOWEST_BIRTH_TIME), Identity::BirthTime);
        assert!(generation_stamp(u32::MAX) < INODE_ONLY_STAMP);
    }

    fn open_tmp() -> (tempfile::TempDir, OwnedFd) {
        let dir = tempfile::tempdir().expect("tempdir");
        let fd = open_dir_path(dir.path()).expect("open dir");
        (dir, fd)
    }

    #[test]
    fn a_write_or_touch_keeps_the_identity_and_every_way_of_looking_agrees() {
        let (dir, dfd) = open_tmp();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").expect("write");
        let name = OsStr::new("f");
        let first = stat_at(dfd.as_fd(), name).expect("stat");
        let pinned = open_path_at(dfd.as_fd(), name).expect("pin");
        assert_eq!(
            stat_fd(pinned.as_fd()).expect("stat O_PATH").id(),
            first.id()
        );
        let read = open_read_at(dfd.as_fd(), name, &first).expect("open");
        assert_eq!(stat_fd(read.as_fd()).expect("stat fd").id(), first.id());
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open for writing");
            f.write_all(b"J").expect("write one byte");
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
                .expect("touch");
        }
        let after = stat_at(dfd.as_fd(), name).expect("stat again");
        assert_ne!(after.mtime_ns, first.mtime_ns);
        assert_eq!(
            after.id(),
            first.id(),
            "a write and a touch changed the identity"
        );
        // A new file is a new generation, whatever inode number it gets.
        std::fs::remove_file(&path).expect("remove");
        std::fs::write(&path, b"hello").expect("write new");
        let new = stat_at(dfd.as_fd(), name).expect("stat new");
        assert!(new.ino != first.ino || new.birth_ns != first.birth_ns);
    }

    #[test]
    fn the_inode_generation_needs_a_real_open_file() {
        let (dir, dfd) = open_tmp();
        std::fs::write(dir.path().join("f"), b"x").expect("write");
        let keeps = nix::sys::statfs::fstatfs(dfd.as_fd())
            .is_ok_and(|fs| type_keeps_generations(fs.filesystem_type()));
        if !keeps {
            eprintln!("skipped: the temp dir's filesystem keeps no inode generations");
            return;
        }
        let pinned = open_path_at(dfd.as_fd(), OsStr::new("f")).expect("pin");
        assert_eq!(inode_generation(pinned.as_fd()), Err(Errno::EBADF));
        let st = stat_fd(pinned.as_fd()).expect("stat");
        let file = open_read_at(dfd.as_fd(), OsStr::new("f"), &st).expect("open");
        assert!(inode_generation(file.as_fd()).is_ok());
        // The generation of another inode is refused.
        std::fs::write(dir.path().join("g"), b"y").expect("write");
        let other = stat_at(dfd.as_fd(), OsStr::new("g")).expect("stat g");
        assert_eq!(generation_if_same(file.as_fd(), &other), Err(Errno::ESTALE));
    }
}
