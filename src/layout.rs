//! The root and its host directories: directory fds, creation of missing
//! host dirs, and the same-filesystem check.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::fsops::{self, FileStat};
use crate::quote;

/// One host's directory, held open.
#[derive(Debug)]
pub struct HostDir {
    pub name: String,
    pub path: PathBuf,
    fd: OwnedFd,
    pub stat: FileStat,
    /// Dry runs only: what the real run would have done to this dir first.
    pub pretend: Pretend,
}

/// What a dry run takes a host dir to hold, so that it decides exactly as
/// the real run will: the dir may not exist yet (the real run creates it
/// empty: an empty scratch dir stands in for it), and `migrate --from`
/// would first move files into it (they are read where they are now).
#[derive(Debug, Default)]
pub struct Pretend {
    /// A scratch dir stands in for a host dir the real run creates.
    pub stand_in: bool,
    /// Files the real run moves in first: the dir they are in now, and
    /// their names.
    pub moved_in: Option<(OwnedFd, rustc_hash::FxHashSet<std::ffi::OsString>)>,
}

impl HostDir {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The dir holding `name` for this host: the host dir itself, or in a
    /// dry run the dir a file the real run moves in is in now.
    pub fn at(&self, name: &OsStr) -> BorrowedFd<'_> {
        match &self.pretend.moved_in {
            Some((fd, names)) if names.contains(name) => fd.as_fd(),
            _ => self.fd.as_fd(),
        }
    }

    /// A dry run's stand-in for the missing dir of host `name` under
    /// `root`: the empty directory `scratch`, taken to be on the root's
    /// filesystem (nothing is linked in a dry run).
    pub fn stand_in(name: &str, root: &Layout, scratch: &Path) -> Result<HostDir> {
        let fd = fsops::open_dir_path(scratch).map_err(|e| Error::sys(scratch, e))?;
        let mut stat = fsops::stat_fd(fd.as_fd()).map_err(|e| Error::sys(scratch, e))?;
        stat.dev = root.root_stat.dev;
        stat.mnt_id = root.root_stat.mnt_id;
        Ok(HostDir {
            name: name.to_string(),
            path: root.root.join(name),
            fd,
            stat,
            pretend: Pretend {
                stand_in: true,
                moved_in: None,
            },
        })
    }
}

/// The root directory and every configured host dir.
#[derive(Debug)]
pub struct Layout {
    pub root: PathBuf,
    root_fd: OwnedFd,
    root_stat: FileStat,
    pub hosts: Vec<HostDir>,
}

/// How a host dir was found when opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    Existing,
    Created,
}

impl Layout {
    /// Opens the root and every host dir (creating missing ones), and checks
    /// that all host dirs share one filesystem.
    pub fn open(root: &Path, hosts: &[String]) -> Result<Layout> {
        let mut layout = Layout::open_root(root)?;
        layout.open_hosts(hosts)?;
        Ok(layout)
    }

    /// Opens every host dir (creating missing ones) of a layout opened
    /// with [`Layout::open_root`], and checks they share one filesystem.
    pub fn open_hosts(&mut self, hosts: &[String]) -> Result<()> {
        self.open_hosts_as(hosts, true)
    }

    /// The checks of [`Layout::open_hosts`], creating nothing (`run
    /// --check`): the host dirs that exist are opened and checked.
    pub fn check_hosts(&mut self, hosts: &[String]) -> Result<()> {
        self.open_hosts_as(hosts, false)
    }

    fn open_hosts_as(&mut self, hosts: &[String], create: bool) -> Result<()> {
        let layout = self;
        for h in hosts {
            let Some((dir, opened)) = layout.open_host_as(h, create)? else {
                continue;
            };
            if opened == Opened::Created {
                tracing::info!(host = %h, path = %quote::path(&dir.path), "created missing host dir");
            }
            layout.hosts.push(dir);
        }
        layout.check_same_fs()
    }

    /// Opens the root alone (no host dirs yet).
    pub fn open_root(root: &Path) -> Result<Layout> {
        let root_fd = fsops::open_dir_path(root).map_err(|e| match e {
            Errno::ENOENT => Error::Config(format!(
                "root: directory {} does not exist",
                quote::path(root)
            )),
            Errno::ENOTDIR => {
                Error::Config(format!("root: {} is not a directory", quote::path(root)))
            }
            e => Error::sys(root, e),
        })?;
        let root_stat = fsops::stat_fd(root_fd.as_fd()).map_err(|e| Error::sys(root, e))?;
        Ok(Layout {
            root: root.to_path_buf(),
            root_fd,
            root_stat,
            hosts: Vec::new(),
        })
    }

    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root_fd.as_fd()
    }

    /// Whether the directory held open as `dir` is the root, a host dir,
    /// or lies inside one of them, by identity (device and inode), however
    /// it was spelled: walks `..` from `dir` up to `/`, comparing each
    /// step with the root and every host dir of this layout (a bind mount
    /// of a host dir is that dir), and the `extra` directories given by
    /// (dev, ino) and what to call them. Says which, for a refusal.
    pub fn holds_dir(
        &self,
        dir: BorrowedFd<'_>,
        path: &Path,
        extra: &[((u64, u64), String)],
    ) -> Result<Option<String>> {
        let ids: Vec<((u64, u64), String)> = std::iter::once((
            (self.root_stat.dev, self.root_stat.ino),
            format!("the root {}", quote::path(&self.root)),
        ))
        .chain(self.hosts.iter().map(|h| {
            (
                (h.stat.dev, h.stat.ino),
                format!("the dir of host {} ({})", h.name, quote::path(&h.path)),
            )
        }))
        .chain(extra.iter().cloned())
        .collect();
        if let Some(what) = Self::walk_up(&ids, dir, path)? {
            return Ok(Some(what));
        }
        // Through a bind mount of a directory inside the root, `..` leads
        // out of the mount, never into the root: the same directory opened
        // through the root's own mount is walked too.
        let st = fsops::stat_fd(dir).map_err(|e| Error::sys(path, e))?;
        if st.dev == self.root_stat.dev
            && let Ok(again) = fsops::reopen_through(dir, self.root_fd())
        {
            return Self::walk_up(&ids, again.as_fd(), path);
        }
        Ok(None)
    }

    /// Walks `..` from `dir` up to `/`: what of `ids` it meets first.
    fn walk_up(
        ids: &[((u64, u64), String)],
        dir: BorrowedFd<'_>,
        path: &Path,
    ) -> Result<Option<String>> {
        let mut here = fsops::stat_fd(dir).map_err(|e| Error::sys(path, e))?;
        let mut up: Option<OwnedFd> = None;
        let mut first = true;
        loop {
            if let Some((_, what)) = ids.iter().find(|(id, _)| *id == (here.dev, here.ino)) {
                return Ok(Some(if first {
                    what.clone()
                } else {
                    format!("a directory inside {what}")
                }));
            }
            let at = up.as_ref().map_or(dir, |f| f.as_fd());
            let parent =
                fsops::search_dir_at(at, OsStr::new("..")).map_err(|e| Error::sys(path, e))?;
            let pst = fsops::stat_fd(parent.as_fd()).map_err(|e| Error::sys(path, e))?;
            if (pst.dev, pst.ino) == (here.dev, here.ino) {
                return Ok(None);
            }
            here = pst;
            up = Some(parent);
            first = false;
        }
    }

    /// Opens (creating if missing) the dir of host `name`, never following a
    /// symlink planted at its place.
    pub fn open_host(&self, name: &str) -> Result<(HostDir, Opened)> {
        self.open_host_as(name, true)?
            .ok_or_else(|| Error::sys(self.root.join(name), Errno::ENOENT))
    }

    /// [`Layout::open_host`]; without `create`, a missing dir is `None`.
    fn open_host_as(&self, name: &str, create: bool) -> Result<Option<(HostDir, Opened)>> {
        let path = self.root.join(name);
        let os = OsStr::new(name);
        let mut opened = Opened::Existing;
        match fsops::stat_at(self.root_fd(), os) {
            Ok(st) if st.mode & libc::S_IFMT == libc::S_IFLNK => {
                return Err(Error::Refused(format!(
                    "host dir {} is a symlink; refusing to follow it (host {name})",
                    quote::path(&path)
                )));
            }
            Ok(_) => {}
            Err(Errno::ENOENT) if !create => return Ok(None),
            Err(Errno::ENOENT) => {
                match fsops::mkdir_at(self.root_fd(), os, 0o700) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(Error::sys(&path, e)),
                }
                opened = Opened::Created;
            }
            Err(e) => return Err(Error::sys(&path, e)),
        }
        let fd = fsops::open_dir_at(self.root_fd(), os).map_err(|e| match e {
            Errno::ELOOP => Error::Refused(format!(
                "host dir {} is a symlink; refusing to follow it (host {name})",
                quote::path(&path)
            )),
            Errno::ENOTDIR => Error::Refused(format!(
                "host dir {} is not a directory (host {name})",
                quote::path(&path)
            )),
            e => Error::sys(&path, e),
        })?;
        if opened == Opened::Created {
            let (uid, gid) =
                fsops::owner_of(self.root_fd()).map_err(|e| Error::sys(&self.root, e))?;
            fsops::copy_owner_mode(fd.as_fd(), &self.root_stat, uid, gid)
                .map_err(|e| Error::sys(&path, e))?;
        }
        let stat = fsops::stat_fd(fd.as_fd()).map_err(|e| Error::sys(&path, e))?;
        Ok(Some((
            HostDir {
                name: name.to_string(),
                path,
                fd,
                stat,
                pretend: Pretend::default(),
            },
            opened,
        )))
    }

    /// All host dirs must live on one filesystem, or hard links between
    /// them are impossible.
    pub fn check_same_fs(&self) -> Result<()> {
        let Some(first) = self.hosts.first() else {
            return Ok(());
        };
        if self.hosts.iter().all(|h| h.stat.dev == first.stat.dev) {
            if self
                .hosts
                .iter()
                .all(|h| h.stat.mnt_id == first.stat.mnt_id)
            {
                return Ok(());
            }
            let list: Vec<String> = self
                .hosts
                .iter()
                .map(|h| format!("{} (mount {})", quote::path(&h.path), h.stat.mnt_id))
                .collect();
            return Err(Error::Refused(format!(
                "host dirs are on one filesystem but on different mounts (a bind mount?), and hard \
                 links cannot cross mounts: {}",
                list.join(", ")
            )));
        }
        let list: Vec<String> = self
            .hosts
            .iter()
            .map(|h| {
                format!(
                    "{} (device {}:{})",
                    quote::path(&h.path),
                    nix::sys::stat::major(h.stat.dev),
                    nix::sys::stat::minor(h.stat.dev)
                )
            })
            .collect();
        Err(Error::Refused(format!(
            "host dirs are not all on one filesystem, so they cannot share hard links: {}",
            list.join(", ")
        )))
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.name == name)
    }

    /// Whether `<root>/<host>` still is the directory we hold open.
    pub fn host_is_current(&self, i: usize) -> bool {
        let h = &self.hosts[i];
        if h.pretend.stand_in {
            return true;
        }
        match fsops::stat_at(self.root_fd(), OsStr::new(&h.name)) {
            Ok(st) => st.is_dir() && st.ino == h.stat.ino && st.dev == h.stat.dev,
            Err(_) => false,
        }
    }

    /// Re-opens host `i` after its dir vanished or was replaced (a missing
    /// dir is recreated empty).
    pub fn reopen_host(&mut self, i: usize) -> Result<Opened> {
        let name = self.hosts[i].name.clone();
        let (dir, opened) = self.open_host(&name)?;
        let old = std::mem::replace(&mut self.hosts[i], dir);
        if let Err(e) = self.check_same_fs() {
            self.hosts[i] = old;
            return Err(e);
        }
        Ok(opened)
    }
}

impl Layout {
    /// Switches to a new host list (on reload). Host dirs kept stay open;
    /// new ones are opened or created. Returns, for each old index, its new
    /// index (None: removed). Nothing changes if a new dir is unusable or on
    /// another filesystem.
    pub fn set_hosts(&mut self, names: &[String]) -> Result<Vec<Option<usize>>> {
        let mut fresh = Vec::new();
        for n in names {
            if self.index_of(n).is_none() {
                let (dir, opened) = self.open_host(n)?;
                if let Some(first) = self.hosts.first()
                    && (first.stat.dev != dir.stat.dev || first.stat.mnt_id != dir.stat.mnt_id)
                {
                    return Err(Error::Refused(format!(
                        "host dir {} (device {}, mount {}) is not on the filesystem and mount of {} \
                         (device {}, mount {}); hard links cannot cross them",
                        quote::path(&dir.path),
                        dir.stat.dev,
                        dir.stat.mnt_id,
                        quote::path(&first.path),
                        first.stat.dev,
                        first.stat.mnt_id
                    )));
                }
                if opened == Opened::Created {
                    tracing::info!(host = %n, path = %quote::path(&dir.path), "created missing host dir");
                }
                fresh.push(dir);
            }
        }
        let mut old: Vec<Option<HostDir>> = std::mem::take(&mut self.hosts)
            .into_iter()
            .map(Some)
            .collect();
        let mut map = vec![None; old.len()];
        for n in names {
            if let Some(j) = old
                .iter()
                .position(|h| h.as_ref().is_some_and(|h| &h.name == n))
            {
                map[j] = Some(self.hosts.len());
                if let Some(h) = old[j].take() {
                    self.hosts.push(h);
                }
            } else if let Some(k) = fresh.iter().position(|h| &h.name == n) {
                self.hosts.push(fresh.remove(k));
            }
        }
        Ok(map)
    }
}

impl Layout {
    /// Opens the root and the host dirs that exist, creating nothing (for
    /// read-only commands). Returns the problems found with the others.
    pub fn open_existing(root: &Path, hosts: &[String]) -> Result<(Layout, Vec<String>)> {
        let mut layout = Layout::open_root(root)?;
        let mut problems = Vec::new();
        for h in hosts {
            let path = root.join(h);
            match fsops::stat_at(layout.root_fd(), OsStr::new(h)) {
                Err(Errno::ENOENT) => problems.push(format!(
                    "host dir {} is missing (host {h})",
                    quote::path(&path)
                )),
                Err(e) => problems.push(format!("host dir {}: {e}", quote::path(&path))),
                Ok(st) if !st.is_dir() => problems.push(format!(
                    "host dir {} is a {}, not a directory (host {h})",
                    quote::path(&path),
                    st.kind()
                )),
                Ok(_) => match fsops::open_dir_at(layout.root_fd(), OsStr::new(h)) {
                    Ok(fd) => match fsops::stat_fd(fd.as_fd()) {
                        Ok(stat) => layout.hosts.push(HostDir {
                            name: h.clone(),
                            path,
                            fd,
                            stat,
                            pretend: Pretend::default(),
                        }),
                        Err(e) => problems.push(format!("host dir {}: {e}", quote::path(&path))),
                    },
                    Err(e) => problems.push(format!("host dir {}: {e}", quote::path(&path))),
                },
            }
        }
        Ok((layout, problems))
    }
}
