//! The state dir: where the record lives. distlink runs as root and the
//! record decides what is linked where, so the state dir and everything in
//! it must belong to root and nobody else may be able to write or replace
//! them. Opened once, from `/` down, one directory fd at a time without
//! following a symlink after the administrator's own path is resolved; each
//! step is checked (owner root; no write permission for any other user, or
//! for a group other than root's, unless the sticky bit keeps others from
//! replacing what root owns). Files in it are only ever opened relative to
//! the held fd with `O_NOFOLLOW`. The single-writer lock is a `flock` on
//! the directory's own fd (removing a file cannot get around it) and one on
//! the file [`LOCK_NAME`] in it: a network filesystem may keep only the
//! latter coherent across machines (CephFS shares a file's `flock` between
//! clients, not a directory's), which is what makes a standby on another
//! machine wait for the active daemon.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};
use crate::fsops;

/// Written by the lock holder: its pid, for `status`.
pub const PID_NAME: &str = "pid";

/// A state dir looked at without creating it.
#[derive(Debug)]
pub enum Found {
    Dir(StateDir),
    /// It does not exist yet; where it would be created.
    Missing(PathBuf),
}

/// The file whose `flock` is shared between the machines that mount a
/// network filesystem (the directory's own is not, on CephFS).
pub const LOCK_NAME: &str = "lock";

/// The single-writer lock, held as long as it lives: the state dir's own
/// `flock` and the lock file's.
#[derive(Debug)]
pub struct Lock {
    _dir: Flock<OwnedFd>,
    _file: Flock<OwnedFd>,
}

/// The state dir, held open and checked.
#[derive(Debug)]
pub struct StateDir {
    pub path: PathBuf,
    fd: OwnedFd,
    /// (dev, ino) of the state dir and of each of its ancestors up to `/`.
    chain: Vec<(u64, u64)>,
}

fn refused_unsafe(path: &Path, st: &nix::sys::stat::FileStat, why: &str) -> Error {
    Error::Refused(format!(
        "state dir: {} {why} (owner uid {}, gid {}, mode {:04o}); the record decides what is linked \
         where, so no user but root may be able to change or replace it. Fix: `chown root:root {p}` \
         and `chmod go-w {p}`, or choose a state_dir under a root-only directory such as \
         /var/lib/distlink",
        crate::quote::path(path),
        st.st_uid,
        st.st_gid,
        st.st_mode & 0o7777,
        p = crate::quote::path(path)
    ))
}

/// Whether a user other than root could create, rename or remove entries
/// in this directory, or write this file.
fn writable_by_others(st: &nix::sys::stat::FileStat) -> bool {
    let m = st.st_mode;
    m & 0o002 != 0 || (m & 0o020 != 0 && st.st_gid != 0)
}

/// Root, and the user distlink runs as (root in service; anyone trying
/// it out on a demo root of their own).
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

fn check_owned_by_root(path: &Path, st: &nix::sys::stat::FileStat, is_dir: bool) -> Result<()> {
    if !trusted_owner(st.st_uid) {
        return Err(refused_unsafe(path, st, "is not owned by root"));
    }
    if writable_by_others(st) {
        // A sticky directory (like /tmp) lets others add entries but not
        // rename or remove root's: the next step is checked on its own.
        let sticky = is_dir && st.st_mode & 0o1000 != 0;
        if !sticky {
            return Err(refused_unsafe(
                path,
                st,
                "can be written by users other than root",
            ));
        }
    }
    Ok(())
}

/// The refusal for a state dir or state file this user may not read: an
/// error that says so (never "no record" or "not running"), naming the
/// path and the fix.
pub fn unreadable(path: &Path) -> Error {
    Error::Refused(format!(
        "cannot read {}: permission denied. The state dir is root's; to let a monitoring user run \
         `distlink status` and `distlink check`, set `state_group = \"GROUP\"` in the config \
         (the daemon then makes the state dir and its files readable by that group at each \
         start) and add the user to GROUP; else run them as root",
        crate::quote::path(path)
    ))
}

/// The pid of the process holding the state lock on the state dir at
/// `path`, read from `/proc/locks` (the `flock` on the dir's inode), so
/// that asking takes no lock a starting daemon could run into, and needs
/// no right to open the state dir. `Ok(None)` when the dir does not exist
/// or nobody holds the lock; `Err` when the dir cannot be looked at.
pub fn lock_holder(path: &Path) -> Result<Option<u32>> {
    let st = match nix::sys::stat::stat(path) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::EACCES) => return Err(unreadable(path)),
        Err(e) => return Err(Error::sys(path, e)),
    };
    let locks = match std::fs::read_to_string("/proc/locks") {
        Ok(t) => t,
        // No /proc: ask the lock itself (a shared lock taken and dropped
        // at once), where the state dir can be opened.
        Err(_) => return Ok(StateDir::open(path)?.holder()),
    };
    // The device `/proc/locks` names is the superblock's; `stat` may
    // report another (a btrfs subvolume's): the mount's entry in
    // mountinfo gives the superblock's. A lock on an inode of the same
    // number on any other device is someone else's (any user can lock a
    // file of theirs whose number they chose), never the daemon's.
    let mut devs = vec![(libc::major(st.st_dev) as u64, libc::minor(st.st_dev) as u64)];
    devs.extend(superblock_dev(path));
    for line in locks.lines() {
        // "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF"; a waiter's
        // line has "->" after the number.
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&"FLOCK") {
            continue;
        }
        let (Some(pid), Some(id)) = (f.get(4), f.get(5)) else {
            continue;
        };
        let id: Vec<&str> = id.split(':').collect();
        let [maj, min, ino] = id[..] else { continue };
        let (Ok(pid), Ok(maj), Ok(min), Ok(ino)) = (
            pid.parse::<u32>(),
            u64::from_str_radix(maj, 16),
            u64::from_str_radix(min, 16),
            ino.parse::<u64>(),
        ) else {
            continue;
        };
        if ino == st.st_ino && devs.contains(&(maj, min)) {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}

/// The device (major, minor) of the superblock of the filesystem `path`
/// is on, from its mount's line in `/proc/self/mountinfo` (found by the
/// mount id `statx` gives).
fn superblock_dev(path: &Path) -> Option<(u64, u64)> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mnt_id = fsops::stat_fd(fd.as_fd()).ok()?.mnt_id;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"
    info.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let id: u64 = f.next()?.parse().ok()?;
        let dev = f.nth(1)?;
        if id != mnt_id {
            return None;
        }
        let (maj, min) = dev.split_once(':')?;
        Some((maj.parse().ok()?, min.parse().ok()?))
    })
}

/// The pid in the state dir's pid file, if there is one: left behind by a
/// process that held the lock and did not stop cleanly (every holder
/// removes it when it lets go). Never through a symlink; `Err` when it
/// cannot be read.
pub fn pid_file(state_dir: &Path) -> Result<Option<u32>> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join(PID_NAME);
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(mut f) => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut f, &mut s).map_err(|e| Error::Io {
                path: path.clone(),
                source: e,
            })?;
            Ok(Some(s.trim().parse().unwrap_or(0)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(unreadable(&path)),
        Err(e) => Err(Error::Io { path, source: e }),
    }
}

impl StateDir {
    /// Opens (creating it, root-only, when missing) the state dir at `path`
    /// and checks it and every directory above it.
    pub fn open(path: &Path) -> Result<StateDir> {
        StateDir::open_outside(path, None)
    }

    /// [`StateDir::open`], refusing (before creating anything) a state dir
    /// that is the directory `outside` (dev, ino) or lies inside it.
    pub fn open_outside(path: &Path, outside: Option<(&Path, (u64, u64))>) -> Result<StateDir> {
        match StateDir::open_checked(path, outside, false, true)? {
            Found::Dir(dir) => Ok(dir),
            Found::Missing(at) => Err(Error::sys(at, Errno::ENOENT)), // created above
        }
    }

    /// The checks of [`StateDir::open_outside`], creating nothing (`run
    /// --check`): a state dir that does not exist yet is
    /// [`Found::Missing`], once the directories it would be created in are
    /// checked.
    pub fn inspect_outside(path: &Path, outside: Option<(&Path, (u64, u64))>) -> Result<Found> {
        StateDir::open_checked(path, outside, false, false)
    }

    /// With `parent`, `path` is a directory a missing state dir is created
    /// in: checked like every dir above the state dir (a sticky `/tmp`
    /// passes), not like the state dir itself. Without `create`, a missing
    /// dir is not created: [`Found::Missing`], once the dirs above it are
    /// checked.
    fn open_checked(
        path: &Path,
        outside: Option<(&Path, (u64, u64))>,
        parent: bool,
        create: bool,
    ) -> Result<Found> {
        if !path.is_absolute() {
            return Err(Error::Config(format!(
                "state_dir: {} is not an absolute path",
                crate::quote::path(path)
            )));
        }
        // Symlinks in the administrator's own path are resolved once, here;
        // every directory of the result is then checked.
        let real = match std::fs::canonicalize(path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = path.parent().ok_or_else(|| {
                    Error::Config(format!(
                        "state_dir: {} has no parent",
                        crate::quote::path(path)
                    ))
                })?;
                // The parent is created (and checked) first, then this dir.
                let dir = StateDir::open_checked(parent, outside, true, create)?;
                let name = path.file_name().ok_or_else(|| {
                    Error::Config(format!(
                        "state_dir: {} has no name",
                        crate::quote::path(path)
                    ))
                })?;
                let dir = match dir {
                    Found::Dir(dir) if create => dir,
                    Found::Dir(dir) => return Ok(Found::Missing(dir.path.join(name))),
                    Found::Missing(at) => return Ok(Found::Missing(at.join(name))),
                };
                match fsops::mkdir_at(dir.fd(), name, 0o700) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(Error::sys(path, e)),
                }
                dir.path.join(name)
            }
            Err(e) => {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
        };
        let mut fd = fsops::open_dir_path(Path::new("/")).map_err(|e| Error::sys("/", e))?;
        let mut at = PathBuf::from("/");
        let mut chain = Vec::new();
        let step = |fd: &OwnedFd, at: &Path| -> Result<(u64, u64)> {
            let st = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| Error::sys(at, e))?;
            check_owned_by_root(at, &st, true)?;
            Ok((st.st_dev, st.st_ino))
        };
        chain.push(step(&fd, &at)?);
        for c in real.components() {
            let Component::Normal(name) = c else {
                continue;
            };
            at.push(name);
            // A dir this user may only search (the state dir as a
            // `state_group` member sees it, mode 2710) is held as an
            // `O_PATH` fd: enough to check it and open files in it, never
            // to lock it.
            let next = match fsops::open_dir_at(fd.as_fd(), name) {
                Err(Errno::EACCES) => fsops::search_dir_at(fd.as_fd(), name),
                r => r,
            };
            let next = next.map_err(|e| match e {
                Errno::EACCES => unreadable(&at),
                Errno::ELOOP | Errno::ENOTDIR => Error::Refused(format!(
                    "state dir: {} is not a directory (or was replaced by a symlink while being \
                     opened)",
                    crate::quote::path(&at)
                )),
                e => Error::sys(&at, e),
            })?;
            fd = next;
            chain.push(step(&fd, &at)?);
        }
        // The state dir itself: nobody else may even add entries to it.
        let st = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| Error::sys(&at, e))?;
        if !parent && writable_by_others(&st) {
            return Err(refused_unsafe(
                &at,
                &st,
                "can be written by users other than root",
            ));
        }
        chain.reverse();
        let dir = StateDir {
            path: at,
            fd,
            chain,
        };
        if let Some((what, id)) = outside {
            dir.refuse_inside("the root", what, id)?;
        }
        Ok(Found::Dir(dir))
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Refuses a state dir that is the directory `(dev, ino)` (the root)
    /// or lies anywhere inside it: clients write there.
    pub fn refuse_inside(&self, what: &str, dir: &Path, id: (u64, u64)) -> Result<()> {
        if self.chain.contains(&id) {
            return Err(Error::Refused(format!(
                "state dir {} lies inside {what} {} (compared by identity, not by path), where \
                 clients and portage write; choose a state_dir outside it, such as \
                 /var/lib/distlink",
                crate::quote::path(&self.path),
                crate::quote::path(dir)
            )));
        }
        Ok(())
    }

    /// Takes the single-writer lock (see [`Lock`]), or says who holds it;
    /// writes this process's pid into [`PID_NAME`] for `status`.
    pub fn lock(&self) -> Result<Lock> {
        self.try_lock()?.map_err(|pid| self.held_by(pid))
    }

    /// The refusal when the process `pid` holds the lock.
    pub fn held_by(&self, pid: Option<u32>) -> Error {
        let pid = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
        Error::Refused(format!(
            "another distlink process{pid} holds the lock on the state dir {} (is the daemon \
             running? on a shared filesystem it may run on another machine; `run --standby` \
             waits for it instead)",
            crate::quote::path(&self.path)
        ))
    }

    /// Takes the single-writer lock if nobody holds it: `Ok(Err(pid))`
    /// when another process does (its pid, when it wrote one).
    pub fn try_lock(&self) -> Result<std::result::Result<Lock, Option<u32>>> {
        let dir = match Flock::lock(self.reopen_dir()?, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(Err(self.read_pid())),
            Err((_, e)) => return Err(Error::sys(&self.path, e)),
        };
        // Created root-only, never through a symlink; one planted by
        // anyone else is refused like any state file.
        self.check_file(LOCK_NAME)?;
        let path = self.path.join(LOCK_NAME);
        let fd = self
            .create_file(OsStr::new(LOCK_NAME), 0o600, false)
            .map_err(|e| Error::sys(&path, e))?;
        let file = match Flock::lock(OwnedFd::from(fd), FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(Err(self.read_pid())),
            Err((_, e)) => return Err(Error::sys(&path, e)),
        };
        let pid = std::process::id().to_string();
        let written = self
            .create_file(OsStr::new(PID_NAME), 0o644, true)
            .and_then(|f| {
                std::io::Write::write_all(&mut &f, pid.as_bytes())
                    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            });
        if let Err(e) = written {
            tracing::warn!(path = %crate::quote::path(&self.path.join(PID_NAME)), error = %e, "cannot write the pid file");
        }
        Ok(Ok(Lock {
            _dir: dir,
            _file: file,
        }))
    }

    /// Removes the pid file: called by the lock holder as it lets go, so
    /// that a pid file without a lock holder means one that was killed.
    pub fn remove_pid(&self) {
        let _ = fsops::unlink_at(self.fd(), OsStr::new(PID_NAME));
    }

    /// Lets the members of group `gid` read the record (`status`,
    /// `check`): the state dir becomes root:gid 2710 (the setgid bit gives
    /// files created later the group too) and its files root:gid 0640.
    /// Nobody but root can write any of it, as before. The group may
    /// search the dir, not read it: opening the dir is what a lock on it
    /// needs, and a member holding one would keep the daemon from
    /// starting (and pass for it in `status`).
    pub fn share_with_group(&self, gid: u32) -> Result<()> {
        let gid = Some(nix::unistd::Gid::from_raw(gid));
        nix::unistd::fchown(self.fd(), None, gid).map_err(|e| Error::sys(&self.path, e))?;
        nix::sys::stat::fchmod(self.fd(), Mode::from_bits_truncate(0o2710))
            .map_err(|e| Error::sys(&self.path, e))?;
        for name in ["state.db", "state.db-journal", "links.journal", PID_NAME] {
            let f = match self.open_file(OsStr::new(name), false) {
                Ok(f) => f,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(Error::sys(self.path.join(name), e)),
            };
            let path = self.path.join(name);
            nix::unistd::fchown(&f, None, gid).map_err(|e| Error::sys(&path, e))?;
            nix::sys::stat::fchmod(&f, Mode::from_bits_truncate(0o640))
                .map_err(|e| Error::sys(&path, e))?;
        }
        Ok(())
    }

    fn reopen_dir(&self) -> Result<OwnedFd> {
        nix::fcntl::openat(
            self.fd(),
            c".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::sys(&self.path, e))
    }

    /// The pid of the process holding the lock, if one does (0 when it
    /// wrote none). Creates nothing.
    pub fn holder(&self) -> Option<u32> {
        let held = |fd: OwnedFd| Flock::lock(fd, FlockArg::LockSharedNonblock).is_err();
        let dir = self.reopen_dir().ok().is_some_and(held);
        let file = self
            .open_file(OsStr::new(LOCK_NAME), false)
            .ok()
            .is_some_and(|f| held(OwnedFd::from(f)));
        (dir || file).then(|| self.read_pid().unwrap_or(0))
    }

    fn read_pid(&self) -> Option<u32> {
        let f = self.open_file(OsStr::new(PID_NAME), false).ok()?;
        let mut s = String::new();
        std::io::Read::read_to_string(&mut &f, &mut s).ok()?;
        s.trim().parse().ok()
    }

    /// Opens `name` in the state dir without following a symlink, checking
    /// that it is a regular file owned by root that no one else can write.
    pub fn open_file(
        &self,
        name: &OsStr,
        write: bool,
    ) -> std::result::Result<std::fs::File, Errno> {
        let mode = if write {
            OFlag::O_RDWR
        } else {
            OFlag::O_RDONLY
        };
        let fd = nix::fcntl::openat(
            self.fd(),
            name,
            mode | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let st = nix::sys::stat::fstat(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno::EINVAL);
        }
        Ok(std::fs::File::from(fd))
    }

    /// Creates or opens `name` for writing (appending or truncating),
    /// never through a symlink.
    pub fn create_file(
        &self,
        name: &OsStr,
        mode: u32,
        truncate: bool,
    ) -> std::result::Result<std::fs::File, Errno> {
        let mut flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        flags |= if truncate {
            OFlag::O_TRUNC
        } else {
            OFlag::O_APPEND
        };
        let fd = nix::fcntl::openat(self.fd(), name, flags, Mode::from_bits_truncate(mode))?;
        let st = nix::sys::stat::fstat(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno::EINVAL);
        }
        Ok(std::fs::File::from(fd))
    }

    /// Refuses a file of the state dir that is not a regular file owned by
    /// root and writable by root alone (when it exists).
    pub fn check_file(&self, name: &str) -> Result<()> {
        let path = self.path.join(name);
        match nix::sys::stat::fstatat(self.fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(Error::sys(&path, e)),
            Ok(st) if st.st_mode & libc::S_IFMT != libc::S_IFREG => Err(Error::Refused(format!(
                "state file {} is not a regular file (a symlink?); distlink never follows one \
                 there. Remove it",
                crate::quote::path(&path)
            ))),
            Ok(st) => {
                if !trusted_owner(st.st_uid) || writable_by_others(&st) || st.st_mode & 0o020 != 0 {
                    return Err(Error::Refused(format!(
                        "state file {} (owner uid {}, gid {}, mode {:04o}) could have been \
                         written by a user other than root; distlink will not trust it. Fix: \
                         `chown root:root {p}` and `chmod 600 {p}` if you are sure nobody else \
                         changed it, else move it aside",
                        crate::quote::path(&path),
                        st.st_uid,
                        st.st_gid,
                        st.st_mode & 0o7777,
                        p = crate::quote::path(&path)
                    )));
                }
                Ok(())
            }
        }
    }

    /// (dev, ino) of `name` in the state dir, not following a symlink.
    pub fn file_id(&self, name: &str) -> Option<(u64, u64)> {
        nix::sys::stat::fstatat(self.fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| (st.st_dev, st.st_ino))
    }

    /// Whether the path still names the directory held open.
    pub fn is_current(&self) -> bool {
        let held = nix::sys::stat::fstat(self.fd()).ok();
        let now = nix::sys::stat::lstat(&self.path).ok();
        matches!((held, now), (Some(a), Some(b)) if a.st_dev == b.st_dev && a.st_ino == b.st_ino)
    }
}
