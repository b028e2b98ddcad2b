//! inotify: one instance, one non-recursive watch per host dir plus one on
//! the root (to notice a host dir vanishing or being replaced). Watches are
//! placed through `/proc/self/fd/N` of the directory fds distlink holds, so
//! they are on exactly the directories it operates on, never on whatever a
//! path resolves to later.
//!
//! The daemon loop polls the inotify fd itself and reads every queued event
//! as one batch (no reader thread: events queue up in the kernel while a
//! batch is being worked on), then classifies them with
//! [`Watcher::classify`].

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::AsRawFd;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};

use crate::layout::Layout;

#[derive(Debug, Clone)]
pub struct RawEvent {
    pub wd: WatchDescriptor,
    pub mask: EventMask,
    pub name: Option<OsString>,
}

/// What one event means for distlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A name in host dir `host`.
    Host {
        host: usize,
        name: OsString,
        kind: Kind,
    },
    /// A host dir itself went away (deleted or moved).
    HostGone(usize),
    /// A name directly in the root changed (maybe a host dir).
    Root(OsString),
    /// The kernel queue overflowed: events were lost, rescan everything.
    Overflow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Created,
    ClosedWrite,
    MovedIn,
    Removed,
}

const HOST_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::EXCL_UNLINK);

const ROOT_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::EXCL_UNLINK);

pub struct Watcher {
    inotify: Inotify,
    buf: Vec<u8>,
    watches: Watches,
    root: Option<WatchDescriptor>,
    hosts: HashMap<WatchDescriptor, usize>,
}

impl Watcher {
    /// Creates the inotify instance (non-blocking).
    pub fn new() -> std::io::Result<Watcher> {
        let inotify = Inotify::init()?;
        let watches = inotify.watches();
        Ok(Watcher {
            inotify,
            buf: vec![0u8; 64 * 1024],
            watches,
            root: None,
            hosts: HashMap::new(),
        })
    }

    /// The fd to poll for readability.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.inotify)
    }

    /// Every event queued now (empty when none).
    pub fn read(&mut self) -> std::io::Result<Vec<RawEvent>> {
        let mut out = Vec::new();
        loop {
            match self.inotify.read_events(&mut self.buf) {
                Ok(events) => {
                    let before = out.len();
                    out.extend(events.map(|e| RawEvent {
                        wd: e.wd,
                        mask: e.mask,
                        name: e.name.map(|n| n.to_os_string()),
                    }));
                    if out.len() == before {
                        return Ok(out);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn add(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        mask: WatchMask,
    ) -> std::io::Result<WatchDescriptor> {
        self.watches
            .add(format!("/proc/self/fd/{}", fd.as_raw_fd()), mask)
    }

    /// Watches the root and every host dir of `layout`, replacing any
    /// earlier host watches (host indices may have changed).
    pub fn watch_all(&mut self, layout: &Layout) -> crate::error::Result<()> {
        if self.root.is_none() {
            let wd =
                self.add(layout.root_fd(), ROOT_MASK)
                    .map_err(|e| crate::error::Error::Io {
                        path: layout.root.clone(),
                        source: e,
                    })?;
            self.root = Some(wd);
        }
        self.hosts.clear();
        for i in 0..layout.hosts.len() {
            self.watch_host(layout, i)?;
        }
        Ok(())
    }

    /// (Re-)watches host dir `i`.
    pub fn watch_host(&mut self, layout: &Layout, i: usize) -> crate::error::Result<()> {
        let h = &layout.hosts[i];
        let wd = self
            .add(h.fd(), HOST_MASK)
            .map_err(|e| crate::error::Error::Io {
                path: h.path.clone(),
                source: e,
            })?;
        self.hosts.retain(|_, v| *v != i);
        self.hosts.insert(wd, i);
        Ok(())
    }

    /// Stops watching a host dir (removed from the config).
    pub fn unwatch_host(&mut self, i: usize) {
        let wds: Vec<WatchDescriptor> = self
            .hosts
            .iter()
            .filter(|(_, v)| **v == i)
            .map(|(k, _)| k.clone())
            .collect();
        for wd in wds {
            self.hosts.remove(&wd);
            let _ = self.watches.remove(wd);
        }
    }

    pub fn classify(&self, ev: &RawEvent) -> Option<WatchEvent> {
        let m = ev.mask;
        if m.contains(EventMask::Q_OVERFLOW) {
            return Some(WatchEvent::Overflow);
        }
        if Some(&ev.wd) == self.root.as_ref() {
            return ev.name.clone().map(WatchEvent::Root);
        }
        let host = *self.hosts.get(&ev.wd)?;
        if m.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED) {
            return Some(WatchEvent::HostGone(host));
        }
        let name = ev.name.clone()?;
        if m.contains(EventMask::ISDIR) {
            return None;
        }
        let kind = if m.contains(EventMask::MOVED_TO) {
            Kind::MovedIn
        } else if m.contains(EventMask::CLOSE_WRITE) {
            Kind::ClosedWrite
        } else if m.contains(EventMask::CREATE) {
            Kind::Created
        } else if m.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
            Kind::Removed
        } else {
            return None;
        };
        Some(WatchEvent::Host { host, name, kind })
    }
}
