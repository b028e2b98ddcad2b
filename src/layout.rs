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
}

impl HostDir {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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
                    "host dir {} is a symlink; refusing to follow it (host {name:?})",
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
                "host dir {} is a symlink; refusing to follow it (host {name:?})",
                quote::path(&path)
            )),
            Errno::ENOTDIR => Error::Refused(format!(
                "host dir {} is not a directory (host {name:?})",
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
                    "host dir {} is missing (host {h:?})",
                    quote::path(&path)
                )),
                Err(e) => problems.push(format!("host dir {}: {e}", quote::path(&path))),
                Ok(st) if !st.is_dir() => problems.push(format!(
                    "host dir {} is a {}, not a directory (host {h:?})",
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
