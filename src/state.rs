//! The persistent record: which (name, file generation) were distributed,
//! which hosts it knows, which links are still owed to a host, and the
//! conflicts seen. Kept in SQLite (a rollback journal, `synchronous=FULL`:
//! no `-shm` mapping to fault on a full filesystem), so it survives power
//! loss and other processes can read it between the daemon's commits. An in-memory mirror answers the hot-path questions.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rustc_hash::FxHashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use std::os::fd::AsFd;

use crate::statedir::StateDir;

mod startup;
use rusqlite::{Connection, OpenFlags, params};
pub use startup::Inspected;

use crate::error::{Error, Result};
use crate::few::Few;
use crate::fsops::{self, FileId};

pub const DB_NAME: &str = "state.db";
/// SQLite's rollback journal beside the database, during a commit.
const DB_JOURNAL_NAME: &str = "state.db-journal";
/// What was linked since the last commit (see [`Store::journal_distributed`]).
pub const JOURNAL_NAME: &str = "links.journal";
/// 2: files carry the commit sequence that recorded them (`seq`) and their
/// mtime then; hosts that left the configuration are remembered as absent.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (name TEXT PRIMARY KEY, added_at INTEGER NOT NULL,
    absent_since INTEGER);
CREATE TABLE IF NOT EXISTS files (
    name BLOB NOT NULL, ino INTEGER NOT NULL, birth INTEGER NOT NULL,
    size INTEGER NOT NULL, recorded_at INTEGER NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0, mtime INTEGER,
    PRIMARY KEY (name, ino, birth)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owed (
    name BLOB NOT NULL, ino INTEGER NOT NULL, birth INTEGER NOT NULL, host TEXT NOT NULL,
    PRIMARY KEY (name, ino, birth, host)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS different (
    a_ino INTEGER NOT NULL, a_birth INTEGER NOT NULL, a_size INTEGER NOT NULL, a_mtime INTEGER NOT NULL,
    b_ino INTEGER NOT NULL, b_birth INTEGER NOT NULL, b_size INTEGER NOT NULL, b_mtime INTEGER NOT NULL,
    PRIMARY KEY (a_ino, a_birth, b_ino, b_birth)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conflicts (
    name BLOB NOT NULL, host TEXT NOT NULL, ino INTEGER NOT NULL,
    other_host TEXT NOT NULL, other_ino INTEGER NOT NULL, seen_at INTEGER NOT NULL,
    PRIMARY KEY (name, host)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stats (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

/// One write waiting for the next commit.
#[derive(Debug)]
enum Op {
    /// Name, generation, size and mtime (unknown for links a journal told).
    Record(OsString, FileId, u64, Option<i64>),
    /// A generation's identity stamp changed its form (an upgrade): the
    /// row, its owed links and its sequence number are kept.
    Rekey(OsString, FileId, FileId),
    /// The file was accepted as it is now (size, mtime).
    Restamp(OsString, FileId, u64, i64),
    Forget(OsString, FileId),
    Owe(OsString, FileId, String),
    Paid(OsString, FileId, String),
    AddHost(String),
    RemoveHost(String),
    /// Left the configuration as of commit `seq` (remembered, not forgotten).
    Absent(String, i64),
    Conflict(Conflict),
    ClearConflicts(OsString),
    Different(Version, Version),
    ForgetDifferent(Version, Version),
    Initialized,
    /// A write that proves the record can be written again.
    Probe,
}

/// The hosts one link is owed to. Almost always one, so a sorted `Vec`
/// rather than a `BTreeSet` (whose first node alone takes ~280 bytes:
/// seeding a new host owes it every file, 100,000s of them).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostSet(Vec<String>);

impl HostSet {
    /// Adds `host`; false when it was there already.
    pub fn insert(&mut self, host: String) -> bool {
        match self.0.binary_search(&host) {
            Ok(_) => false,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, host);
                true
            }
        }
    }

    /// Removes `host`; false when it was not there.
    pub fn remove(&mut self, host: &str) -> bool {
        match self.0.binary_search_by(|h| h.as_str().cmp(host)) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    pub fn contains(&self, host: &str) -> bool {
        self.0.binary_search_by(|h| h.as_str().cmp(host)).is_ok()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }
}

impl IntoIterator for HostSet {
    type Item = String;
    type IntoIter = std::vec::IntoIter<String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a HostSet {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One file's content as far as a comparison is concerned: its generation
/// and what would change if it were written (size, mtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub ino: u64,
    pub birth: i64,
    pub size: u64,
    pub mtime: i64,
}

impl Version {
    pub fn of(st: &crate::fsops::FileStat) -> Version {
        Version {
            ino: st.ino,
            birth: st.birth_ns,
            size: st.size,
            mtime: st.mtime_ns,
        }
    }
}

/// Same name, different content in two hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub name: OsString,
    pub host: String,
    pub ino: u64,
    pub other_host: String,
    pub other_ino: u64,
}

/// Running totals the daemon keeps in the record, so they grow across
/// restarts (the metrics' counters), and when things last happened. A
/// table of their own (`stats`), created beside the others: a record
/// without it (an older version's) reads as all zero.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// New file generations distributed (an arrival, or one a scan found).
    pub files_distributed: u64,
    /// Links made into hosts (arrivals, owed links, seeding).
    pub links_made: u64,
    /// Identical copies merged into one inode.
    pub merges: u64,
    /// inotify queue overflows (each one costs a full rescan).
    pub queue_overflows: u64,
    /// Full scans of every host dir (start-up, overflow rescans, SIGHUP,
    /// poll mode's `full_scan_every`; a poll tick is not one).
    pub full_scans: u64,
    /// How long the last full scan took, in milliseconds.
    pub last_full_scan_ms: Option<u64>,
    /// When the last full scan ended (Unix time, seconds).
    pub last_full_scan_at: Option<i64>,
    /// When a new file generation was last distributed (Unix time, seconds).
    pub last_arrival_at: Option<i64>,
}

impl Stats {
    fn rows(&self) -> [(&'static str, Option<i64>); 8] {
        let n = |v: u64| Some(v as i64);
        [
            ("files_distributed", n(self.files_distributed)),
            ("links_made", n(self.links_made)),
            ("merges", n(self.merges)),
            ("queue_overflows", n(self.queue_overflows)),
            ("full_scans", n(self.full_scans)),
            (
                "last_full_scan_ms",
                self.last_full_scan_ms.map(|v| v as i64),
            ),
            ("last_full_scan_at", self.last_full_scan_at),
            ("last_arrival_at", self.last_arrival_at),
        ]
    }

    fn set(&mut self, key: &str, v: i64) {
        let u = v.max(0) as u64;
        match key {
            "files_distributed" => self.files_distributed = u,
            "links_made" => self.links_made = u,
            "merges" => self.merges = u,
            "queue_overflows" => self.queue_overflows = u,
            "full_scans" => self.full_scans = u,
            "last_full_scan_ms" => self.last_full_scan_ms = Some(u),
            "last_full_scan_at" => self.last_full_scan_at = Some(v),
            "last_arrival_at" => self.last_arrival_at = Some(v),
            // A newer version's key: kept in the table, not shown.
            _ => {}
        }
    }

    fn load(conn: &Connection, p: &Path) -> Result<Stats> {
        let mut st = Stats::default();
        let exists = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'stats'",
                [],
                |_| Ok(()),
            )
            .is_ok();
        if exists {
            for (k, v) in rows(conn, p, "SELECT key, value FROM stats", |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })? {
                st.set(&k, v);
            }
        }
        Ok(st)
    }
}

/// The record as loaded from the database: the in-memory mirror the daemon
/// keeps, and what `status`/`check` read.
#[derive(Debug, Default, Clone)]
pub struct Record {
    pub initialized: bool,
    /// Name → its recorded generations (almost always one).
    pub files: FxHashMap<OsString, Few<FileId>>,
    pub owed: BTreeMap<(OsString, FileId), HostSet>,
    /// Every host the record knows, configured or absent.
    pub hosts: BTreeSet<String>,
    /// Hosts that left the configuration, with the commit sequence number
    /// they left at: one that comes back is owed what was recorded since.
    pub absent: BTreeMap<String, i64>,
    /// The sequence number of the last commit.
    pub seq: i64,
    pub conflicts: HashMap<OsString, Vec<Conflict>>,
    /// Pairs of files compared and found different (so never read again
    /// while both stay as they are).
    pub different: Vec<(Version, Version)>,
    /// The daemon's running totals.
    pub stats: Stats,
}

impl Record {
    fn load(conn: &Connection, p: &Path) -> Result<Record> {
        let mut rec = Record {
            initialized: conn
                .query_row(
                    "SELECT value FROM meta WHERE key = 'initialized'",
                    [],
                    |r| r.get::<_, String>(0),
                )
                .is_ok(),
            ..Record::default()
        };
        let name = |r: &rusqlite::Row, i: usize| -> rusqlite::Result<OsString> {
            Ok(OsString::from_vec(r.get::<_, Vec<u8>>(i)?))
        };
        let id = |r: &rusqlite::Row, i: usize| -> rusqlite::Result<FileId> {
            Ok(FileId {
                ino: r.get::<_, i64>(i)? as u64,
                birth: r.get(i + 1)?,
            })
        };
        for (n, fid) in rows(conn, p, "SELECT name, ino, birth FROM files", |r| {
            Ok((name(r, 0)?, id(r, 1)?))
        })? {
            match rec.files.get_mut(&n) {
                Some(ids) => ids.push(fid),
                None => {
                    rec.files.insert(n, Few::One(fid));
                }
            }
        }
        for (n, fid, host) in rows(conn, p, "SELECT name, ino, birth, host FROM owed", |r| {
            Ok((name(r, 0)?, id(r, 1)?, r.get::<_, String>(3)?))
        })? {
            rec.owed.entry((n, fid)).or_default().insert(host);
        }
        for (h, absent) in rows(conn, p, "SELECT name, absent_since FROM hosts", |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
        })? {
            if let Some(seq) = absent {
                rec.absent.insert(h.clone(), seq);
            }
            rec.hosts.insert(h);
        }
        rec.seq = conn
            .query_row("SELECT value FROM meta WHERE key = 'seq'", [], |r| {
                r.get::<_, String>(0)
            })
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let sql = "SELECT a_ino, a_birth, a_size, a_mtime, b_ino, b_birth, b_size, b_mtime FROM different";
        rec.different = rows(conn, p, sql, |r| {
            let v = |i: usize| -> rusqlite::Result<Version> {
                Ok(Version {
                    ino: r.get::<_, i64>(i)? as u64,
                    birth: r.get(i + 1)?,
                    size: r.get::<_, i64>(i + 2)? as u64,
                    mtime: r.get(i + 3)?,
                })
            };
            Ok((v(0)?, v(4)?))
        })?;
        let sql = "SELECT name, host, ino, other_host, other_ino FROM conflicts";
        for c in rows(conn, p, sql, |r| {
            Ok(Conflict {
                name: name(r, 0)?,
                host: r.get(1)?,
                ino: r.get::<_, i64>(2)? as u64,
                other_host: r.get(3)?,
                other_ino: r.get::<_, i64>(4)? as u64,
            })
        })? {
            rec.conflicts.entry(c.name.clone()).or_default().push(c);
        }
        rec.stats = Stats::load(conn, p)?;
        Ok(rec)
    }

    pub fn is_known(&self, name: &OsStr, id: FileId) -> bool {
        self.files.get(name).is_some_and(|v| v.contains(&id))
    }
}

/// Drops what this machine's page cache holds of the record's files, now
/// that the lock is held: on a filesystem shared between machines
/// (CephFS), pages read here earlier (a `run --check`, a `status`, a
/// standby's start-up check) may predate the commits another machine's
/// daemon made since, and a record read from them forgets what it
/// distributed — its prunes would be undone.
fn drop_cached_pages(dir: &StateDir) {
    for name in [DB_NAME, DB_JOURNAL_NAME, JOURNAL_NAME] {
        if let Ok(fd) = nix::fcntl::openat(
            dir.fd(),
            name,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_CLOEXEC
                | nix::fcntl::OFlag::O_NONBLOCK,
            nix::sys::stat::Mode::empty(),
        ) {
            let _ = nix::fcntl::posix_fadvise(
                &fd,
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
    }
}

/// Runs a query and collects its rows.
fn rows<T>(
    conn: &Connection,
    p: &Path,
    sql: &str,
    f: impl FnMut(&rusqlite::Row) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let e = db_err(p);
    let mut st = conn.prepare(sql).map_err(&e)?;
    let it = st.query_map([], f).map_err(&e)?;
    it.collect::<rusqlite::Result<Vec<T>>>().map_err(&e)
}

/// Reads the record without taking the lock (the daemon may be writing).
/// `Ok(None)`: there is no record yet.
pub fn read_only(state_dir: &Path) -> Result<Option<Record>> {
    match open_read_only(state_dir)? {
        Some((conn, path)) => Record::load(&conn, &path).map(Some),
        None => Ok(None),
    }
}

/// The record opened for reading without the lock (never through a
/// symlink); `None` when there is none.
fn open_read_only(state_dir: &Path) -> Result<Option<(Connection, PathBuf)>> {
    let path = state_dir.join(DB_NAME);
    // A record this user may not read is an error that says so, never
    // "no record".
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(crate::statedir::unreadable(&path));
        }
        Err(e) => return Err(Error::Io { path, source: e }),
        Ok(_) => {}
    }
    if let Err(e) = std::fs::File::open(&path) {
        return Err(match e.kind() {
            std::io::ErrorKind::PermissionDenied => crate::statedir::unreadable(&path),
            _ => Error::Io { path, source: e },
        });
    }
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(db_err(&path))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(db_err(&path))?;
    // A writer killed mid-commit leaves a hot rollback journal, which only
    // a writer may roll back: the first read fails. The record is then
    // read as the next writer will find it, rolled back on a copy.
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ReadOnly
                && e.extended_code == rusqlite::ffi::SQLITE_READONLY_ROLLBACK =>
        {
            drop(conn);
            Ok(Some((rolled_back_copy(state_dir)?, path)))
        }
        Err(e) => Err(db_err(&path)(e)),
        Ok(_) => Ok(Some((conn, path))),
    }
}

/// The record of `state_dir` copied (with its hot journal) into a scratch
/// dir and opened there for writing, which rolls the copy back; the
/// scratch dir is gone when this returns (the connection keeps the file).
fn rolled_back_copy(state_dir: &Path) -> Result<Connection> {
    let template = std::env::temp_dir().join("distlink-record-XXXXXX");
    let scratch = nix::unistd::mkdtemp(&template).map_err(|e| Error::sys(&template, e))?;
    let opened = (|| {
        copy_record(state_dir, &scratch)?;
        let path = scratch.join(DB_NAME);
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(db_err(&path))?;
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(db_err(&path))?;
        Ok(conn)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    opened
}

/// (name, generation) → (size, mtime) when distributed, where known.
pub type Stamps = FxHashMap<(OsString, FileId), (u64, i64)>;

fn stamps(conn: &Connection, p: &Path) -> Result<Stamps> {
    let sql = "SELECT name, ino, birth, size, mtime FROM files WHERE mtime IS NOT NULL";
    Ok(rows(conn, p, sql, |r| {
        Ok((
            (
                OsString::from_vec(r.get::<_, Vec<u8>>(0)?),
                FileId {
                    ino: r.get::<_, i64>(1)? as u64,
                    birth: r.get(2)?,
                },
            ),
            (r.get::<_, i64>(3)? as u64, r.get::<_, i64>(4)?),
        ))
    })?
    .into_iter()
    .collect())
}

/// What [`read_stamps`] reads, without the lock, for `status`/`check`.
pub fn read_stamps(state_dir: &Path) -> Result<Stamps> {
    match open_read_only(state_dir)? {
        Some((conn, path)) => stamps(&conn, &path),
        None => Ok(Stamps::default()),
    }
}

/// Copies the record as a process stopped now would leave it (the
/// database, its rollback journal where a process killed mid-commit
/// leaves one, and the links journal) from the state dir `from` into the
/// dir `to`, for a dry run to work on. Both dirs are checked like any
/// state dir; nothing is opened through a symlink.
pub fn copy_record(from: &Path, to: &Path) -> Result<()> {
    match std::fs::metadata(from) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(crate::statedir::unreadable(from));
        }
        Err(e) => {
            return Err(Error::Io {
                path: from.to_path_buf(),
                source: e,
            });
        }
        Ok(m) if !m.is_dir() => return Ok(()),
        Ok(_) => {}
    }
    let (src, dst) = (StateDir::open(from)?, StateDir::open(to)?);
    for name in [DB_NAME, DB_JOURNAL_NAME, JOURNAL_NAME] {
        let path = src.path.join(name);
        let mut f = match src.open_file(OsStr::new(name), false) {
            Ok(f) => f,
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(nix::errno::Errno::EACCES) => return Err(crate::statedir::unreadable(&path)),
            Err(e) => return Err(Error::sys(&path, e)),
        };
        let mut out = dst
            .create_file(OsStr::new(name), 0o600, true)
            .map_err(|e| Error::sys(dst.path.join(name), e))?;
        std::io::copy(&mut f, &mut out).map_err(|e| Error::Io { path, source: e })?;
    }
    Ok(())
}

/// The pid of the process holding the state lock (a running daemon, or a
/// `sync`/`migrate` in progress), if any; see [`crate::statedir::lock_holder`].
pub fn lock_holder(state_dir: &Path) -> Result<Option<u32>> {
    crate::statedir::lock_holder(state_dir)
}

pub use crate::statedir::pid_file;

/// The identity of the root a record describes: what survives a reboot
/// (device numbers may not, e.g. device-mapper minors) and tells another
/// filesystem, an empty mount point or a copy apart: the filesystem type,
/// the root dir's inode and birth time, and, where there is no birth time,
/// the filesystem id (`f_fsid`, from the UUID on ext4 and btrfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootId {
    pub fs_type: i64,
    pub ino: u64,
    pub birth: Option<i64>,
    pub fsid: u64,
    pub dev: u64,
}

impl RootId {
    /// The identity of the open directory `fd`.
    pub fn of(fd: std::os::fd::BorrowedFd<'_>) -> std::result::Result<RootId, nix::errno::Errno> {
        let st = fsops::stat_fd(fd)?;
        let fs = nix::sys::statfs::fstatfs(fd)?;
        let vfs = nix::sys::statvfs::fstatvfs(fd)?;
        Ok(RootId {
            fs_type: fs.filesystem_type().0 as i64,
            ino: st.ino,
            birth: (fsops::Identity::of_stamp(st.birth_ns) == fsops::Identity::BirthTime)
                .then_some(st.birth_ns),
            fsid: match vfs.filesystem_id() as u64 {
                0 => ceph_cluster_fsid(fd).unwrap_or(0),
                id => id,
            },
            dev: st.dev,
        })
    }

    fn encode(&self) -> String {
        format!(
            "type={:#x} ino={} birth={} fsid={:#x} dev={:#x}",
            self.fs_type,
            self.ino,
            self.birth.map_or("none".to_string(), |b| b.to_string()),
            self.fsid,
            self.dev
        )
    }

    fn decode(s: &str) -> Option<RootId> {
        let mut id = RootId {
            fs_type: 0,
            ino: 0,
            birth: None,
            fsid: 0,
            dev: 0,
        };
        let hex = |v: &str| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok();
        for part in s.split_whitespace() {
            let (k, v) = part.split_once('=')?;
            match k {
                "type" => id.fs_type = hex(v)? as i64,
                "ino" => id.ino = v.parse().ok()?,
                "birth" if v == "none" => id.birth = None,
                "birth" => id.birth = Some(v.parse().ok()?),
                "fsid" => id.fsid = hex(v)?,
                "dev" => id.dev = hex(v)?,
                _ => {}
            }
        }
        Some(id)
    }

    /// Whether `self` (recorded) describes the root `now`.
    pub fn same_root(&self, now: &RootId) -> bool {
        if self.fs_type != now.fs_type || self.ino != now.ino {
            return false;
        }
        match (self.birth, now.birth) {
            (Some(a), Some(b)) => a == b,
            _ if self.fsid != 0 && now.fsid != 0 => self.fsid == now.fsid,
            _ => self.dev == now.dev,
        }
    }
}

/// The id of the Ceph cluster a CephFS directory belongs to (its
/// `ceph.cluster_fsid`, folded to 64 bits), where the filesystem reports
/// none of its own: ceph-fuse gives every mount its own device number and
/// no birth times, so this, with the directory's inode number (the same
/// through every client), is what tells one CephFS root apart through any
/// machine's mount — a standby on another machine accepts the record the
/// active one wrote.
fn ceph_cluster_fsid(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 64];
    // SAFETY: the buffer outlives the call and its length is passed.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            c"ceph.cluster_fsid".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    fold_uuid(buf.get(..usize::try_from(n).ok()?)?)
}

/// A UUID in text form, its two 64-bit halves xor-ed; `None` for anything
/// else (or an all-zero result, which means "no id").
fn fold_uuid(text: &[u8]) -> Option<u64> {
    let text = text
        .trim_ascii_end()
        .strip_suffix(b"\0")
        .unwrap_or(text)
        .trim_ascii_end();
    let hex: Vec<u8> = text.iter().copied().filter(u8::is_ascii_hexdigit).collect();
    let dashes = text.iter().filter(|&&b| b == b'-').count();
    if hex.len() != 32 || hex.len() + dashes != text.len() {
        return None;
    }
    let half = |h: &[u8]| u64::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok();
    Some(half(&hex[..16])? ^ half(&hex[16..])?).filter(|&id| id != 0)
}

/// The record, opened for writing (holds the state lock).
pub struct Store {
    conn: Connection,
    path: PathBuf,
    dir: StateDir,
    _lock: crate::statedir::Lock,
    rec: Record,
    ops: Vec<Op>,
    /// Opened for appending; emptied by every commit.
    journal: File,
    journal_path: PathBuf,
    /// Whether the journal holds entries the record does not have yet.
    journal_dirty: bool,
    /// Why the record cannot be written now (None: it can). While it is
    /// set, nothing is linked: no link is made that cannot be recorded.
    failing: Option<String>,
    /// (dev, ino) of the database and the links journal as opened: a file
    /// deleted or replaced behind distlink's back is noticed.
    files: StateFiles,
    /// For the property test only: every write fails while set.
    fault: bool,
    /// Whether `rec.stats` changed since the last commit.
    stats_dirty: bool,
    /// New generations recorded with their stamp since this store was
    /// opened (see [`Store::new_generations`]).
    new_generations: u64,
}

/// (dev, ino) of the database and of the links journal, where they exist.
type StateFiles = (Option<(u64, u64)>, Option<(u64, u64)>);

/// One entry of the links journal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// About to link (name, generation) into `targets`: written before the
    /// links, and nothing is linked unless it was. Followed by a
    /// `Distributed` or `Paid` entry once the links are made; one found
    /// alone (the process died among its links) leaves every target owed
    /// (an owed link is only made to a host that still lacks the name).
    Intent {
        name: OsString,
        id: FileId,
        size: u64,
        targets: Vec<String>,
    },
    /// A new generation was linked into every host in scope but `failed`.
    Distributed {
        name: OsString,
        id: FileId,
        size: u64,
        failed: Vec<String>,
    },
    /// Links owed to `hosts` were made.
    Paid {
        name: OsString,
        id: FileId,
        hosts: Vec<String>,
    },
}

const KIND_INTENT: u8 = b'I';
const KIND_DISTRIBUTED: u8 = b'D';
const KIND_PAID: u8 = b'P';

/// FNV-1a: enough to tell a torn or garbled entry from a whole one.
fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

impl Entry {
    /// `len(u32) | kind | ino | birth | size | name | hosts | checksum`,
    /// little-endian, strings as `u32` length + bytes.
    fn encode(&self) -> Vec<u8> {
        let (kind, name, id, size, hosts) = match self {
            Entry::Intent {
                name,
                id,
                size,
                targets,
            } => (KIND_INTENT, name, id, *size, targets),
            Entry::Distributed {
                name,
                id,
                size,
                failed,
            } => (KIND_DISTRIBUTED, name, id, *size, failed),
            Entry::Paid { name, id, hosts } => (KIND_PAID, name, id, 0, hosts),
        };
        let mut b = vec![0u8; 4];
        b.push(kind);
        b.extend_from_slice(&id.ino.to_le_bytes());
        b.extend_from_slice(&id.birth.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        fn put(b: &mut Vec<u8>, bytes: &[u8]) {
            b.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            b.extend_from_slice(bytes);
        }
        put(&mut b, name.as_bytes());
        b.extend_from_slice(&(hosts.len() as u32).to_le_bytes());
        for h in hosts {
            put(&mut b, h.as_bytes());
        }
        // The length counts what follows it, checksum included.
        let len = (b.len() - 4 + 4) as u32;
        b[..4].copy_from_slice(&len.to_le_bytes());
        let sum = checksum(&b[4..]);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }

    /// The entries of a journal, and how many bytes at its end could not
    /// be read (a torn last write, or garbage).
    fn decode_all(mut data: &[u8]) -> (Vec<Entry>, usize) {
        let mut out = Vec::new();
        while !data.is_empty() {
            match Entry::decode(data) {
                Some((e, used)) => {
                    out.push(e);
                    data = &data[used..];
                }
                None => break,
            }
        }
        (out, data.len())
    }

    fn decode(data: &[u8]) -> Option<(Entry, usize)> {
        let len = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
        let whole = data.get(..4 + len)?;
        let (body, sum) = whole[4..].split_at(len.checked_sub(4)?);
        if checksum(body) != u32::from_le_bytes(sum.try_into().ok()?) {
            return None;
        }
        struct Reader<'a>(&'a [u8]);
        impl<'a> Reader<'a> {
            fn take(&mut self, n: usize) -> Option<&'a [u8]> {
                let (a, rest) = (self.0.get(..n)?, self.0.get(n..)?);
                self.0 = rest;
                Some(a)
            }
            fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
                self.take(N)?.try_into().ok()
            }
            fn bytes(&mut self) -> Option<Vec<u8>> {
                let n = u32::from_le_bytes(self.array()?) as usize;
                self.take(n).map(<[u8]>::to_vec)
            }
        }
        let mut r = Reader(body);
        let kind = r.take(1)?[0];
        let ino = u64::from_le_bytes(r.array()?);
        let birth = i64::from_le_bytes(r.array()?);
        let size = u64::from_le_bytes(r.array()?);
        let name = OsString::from_vec(r.bytes()?);
        let count = u32::from_le_bytes(r.array()?) as usize;
        let mut hosts = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            hosts.push(String::from_utf8(r.bytes()?).ok()?);
        }
        let id = FileId { ino, birth };
        let e = match kind {
            KIND_INTENT => Entry::Intent {
                name,
                id,
                size,
                targets: hosts,
            },
            KIND_DISTRIBUTED => Entry::Distributed {
                name,
                id,
                size,
                failed: hosts,
            },
            KIND_PAID => Entry::Paid { name, id, hosts },
            _ => return None,
        };
        Some((e, 4 + len))
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Every process holding the lock removes its pid file as it lets go of
/// the record: a pid file without a lock holder is one that was killed.
impl Drop for Store {
    fn drop(&mut self) {
        self.dir.remove_pid();
    }
}

impl Store {
    /// Lets the members of group `gid` read the record (see
    /// [`StateDir::share_with_group`]).
    pub fn share_with_group(&self, gid: u32) -> Result<()> {
        self.dir.share_with_group(gid)
    }

    /// Opens (creating if needed) the record in `state_dir` and takes the
    /// exclusive lock; a second writer is refused. The state dir must be
    /// root's alone (see [`StateDir`]); nothing in it is opened through a
    /// symlink.
    pub fn open(state_dir: &Path) -> Result<Store> {
        let dir = StateDir::open(state_dir)?;
        let lock = dir.lock()?;
        Store::open_locked(dir, lock)
    }

    fn open_locked(dir: StateDir, lock: crate::statedir::Lock) -> Result<Store> {
        startup::check_files(&dir)?;
        drop_cached_pages(&dir);
        let path = dir.path.join(DB_NAME);
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(db_err(&path))?;
        let journal_path = dir.path.join(JOURNAL_NAME);
        let journal = dir
            .create_file(OsStr::new(JOURNAL_NAME), 0o600, false)
            .map_err(|e| Error::sys(&journal_path, e))?;
        let mut store = Store {
            conn,
            path,
            dir,
            _lock: lock,
            rec: Record::default(),
            ops: Vec::new(),
            journal,
            journal_path,
            journal_dirty: false,
            failing: None,
            files: (None, None),
            fault: false,
            stats_dirty: false,
            new_generations: 0,
        };
        store.setup().map_err(startup::unreadable)?;
        store.files = store.file_ids();
        store.replay_journal()?;
        Ok(store)
    }

    /// Opens the record of the root `root` (held open as `root_fd`): the
    /// state dir must lie outside it, and the record must describe it
    /// (see [`RootId`]). With `rebind` (`sync --adopt`, an admin's explicit
    /// act) a record made for another root is bound to this one.
    pub fn open_for_root(
        state_dir: &Path,
        root: &Path,
        root_fd: std::os::fd::BorrowedFd<'_>,
        rebind: bool,
    ) -> Result<Store> {
        Store::open_for_root_or_wait(state_dir, root, root_fd, rebind, None)?
            .ok_or_else(|| Error::Refused("the state lock is held by another process".into()))
    }

    /// [`Store::open_for_root`]; with `wait`, while another process holds
    /// the lock, calls `wait(its pid)` and tries again for as long as it
    /// returns true (`None` once it returned false), instead of refusing.
    pub fn open_for_root_or_wait(
        state_dir: &Path,
        root: &Path,
        root_fd: std::os::fd::BorrowedFd<'_>,
        rebind: bool,
        mut wait: Option<&mut dyn FnMut(Option<u32>) -> bool>,
    ) -> Result<Option<Store>> {
        let rst = fsops::stat_fd(root_fd).map_err(|e| Error::sys(root, e))?;
        // Refused before anything is created inside the root.
        let dir = StateDir::open_outside(state_dir, Some((root, (rst.dev, rst.ino))))?;
        let lock = loop {
            match (dir.try_lock()?, wait.as_mut()) {
                (Ok(lock), _) => break lock,
                (Err(holder), Some(wait)) => {
                    if !wait(holder) {
                        return Ok(None);
                    }
                }
                (Err(holder), None) => return Err(dir.held_by(holder)),
            }
        };
        let mut store = Store::open_locked(dir, lock)?;
        let now = RootId::of(root_fd).map_err(|e| Error::sys(root, e))?;
        store.bind_root(root, &now, rebind)?;
        Ok(Some(store))
    }

    fn bind_root(&mut self, root: &Path, now: &RootId, rebind: bool) -> Result<()> {
        let e = db_err(&self.path);
        let recorded: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'root'", [], |r| {
                r.get(0)
            })
            .ok();
        let was = recorded.as_deref().and_then(RootId::decode);
        match startup::judge_root(&self.path, root, was, now, rebind)? {
            startup::Binding::Same => return Ok(()),
            startup::Binding::Moved => {}
            startup::Binding::Rebound => {
                tracing::warn!(root = %crate::quote::path(root), "record bound to this root (sync --adopt)")
            }
            startup::Binding::Unbound if self.rec.initialized => {
                tracing::info!(root = %crate::quote::path(root), "record bound to this root (it did not say which it described)")
            }
            startup::Binding::Unbound => {}
        }
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('root', ?1)",
                params![now.encode()],
            )
            .map_err(&e)?;
        Ok(())
    }

    /// Takes into the record (in memory; written by the next commit) what
    /// the journal says was linked by a process that stopped before its
    /// commit: a generation linked into some hosts is recorded, with the
    /// links that failed owed, so a host that pruned it since is not
    /// linked again; owed links that were made are paid.
    fn replay_journal(&mut self) -> Result<()> {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut &self.journal, &mut data).map_err(|e| Error::Io {
            path: self.journal_path.clone(),
            source: e,
        })?;
        if data.is_empty() {
            return Ok(());
        }
        let (entries, unread) = Entry::decode_all(&data);
        if unread > 0 {
            tracing::warn!(path = %crate::quote::path(&self.journal_path), bytes = unread,
                "links journal ends in an unreadable entry; it is ignored");
        }
        let n = entries.len();
        // Intents not followed by their outcome: the process died among
        // those links.
        let mut open: Vec<((OsString, FileId), Vec<String>)> = Vec::new();
        for e in entries {
            match e {
                Entry::Intent {
                    name,
                    id,
                    size,
                    targets,
                } => {
                    if !self.is_known(&name, id) {
                        self.record(&name, id, size, None);
                    }
                    open.push(((name, id), targets));
                }
                Entry::Distributed {
                    name,
                    id,
                    size,
                    failed,
                } => {
                    open.retain(|(k, _)| *k != (name.clone(), id));
                    if !self.is_known(&name, id) {
                        self.record(&name, id, size, None);
                    }
                    for h in &failed {
                        if self.rec.hosts.contains(h) {
                            self.owe(&name, id, h);
                        }
                    }
                }
                Entry::Paid { name, id, hosts } => {
                    open.retain(|(k, _)| *k != (name.clone(), id));
                    for h in &hosts {
                        self.paid(&name, id, h);
                    }
                }
            }
        }
        for ((name, id), targets) in open {
            for h in &targets {
                if self.rec.hosts.contains(h) {
                    self.owe(&name, id, h);
                }
            }
        }
        tracing::info!(path = %crate::quote::path(&self.journal_path), entries = n,
            "links made by a process that stopped before writing the record are taken from the journal");
        self.journal_dirty = true;
        Ok(())
    }

    fn journal_append(&mut self, e: &Entry) -> Result<()> {
        if self.fault {
            let e = self.injected();
            self.failed(&e);
            return Err(e);
        }
        // One write: a process killed after it has the whole entry or none.
        let res =
            std::io::Write::write_all(&mut self.journal, &e.encode()).map_err(|err| Error::Io {
                path: self.journal_path.clone(),
                source: err,
            });
        match res {
            Ok(()) => self.journal_dirty = true,
            Err(ref e) => self.failed(e),
        }
        res
    }

    /// Notes, right after the links of a [`Store::journal_intent`] were
    /// made and before the record is committed, that the new generation is
    /// in every host but `failed`. If the process dies before the commit,
    /// the next open takes it from the journal: without it, a host that
    /// pruned the file in between would be linked again. (A power loss can
    /// lose the journal, but then the links were not durable yet either.)
    pub fn journal_distributed(
        &mut self,
        name: &OsStr,
        id: FileId,
        size: u64,
        failed: &[&str],
    ) -> Result<()> {
        self.journal_append(&Entry::Distributed {
            name: name.to_os_string(),
            id,
            size,
            failed: failed.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Notes, before any link is made, that (name, generation) is about to
    /// be linked into `targets`. An error means nothing may be linked (the
    /// store is failing: see [`Store::can_record`]).
    pub fn journal_intent(
        &mut self,
        name: &OsStr,
        id: FileId,
        size: u64,
        targets: &[&str],
    ) -> Result<()> {
        self.journal_append(&Entry::Intent {
            name: name.to_os_string(),
            id,
            size,
            targets: targets.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Like [`Store::journal_distributed`], for owed links made to `hosts`.
    pub fn journal_paid(&mut self, name: &OsStr, id: FileId, hosts: &[&str]) -> Result<()> {
        self.journal_append(&Entry::Paid {
            name: name.to_os_string(),
            id,
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// A rollback journal (no `-shm` file mapped into memory, which a full
    /// filesystem turns into SIGBUS; readers need no write access), synced
    /// at every commit.
    fn pragmas(&mut self) -> Result<()> {
        let e = db_err(&self.path);
        self.conn
            .pragma_update(None, "journal_mode", "DELETE")
            .map_err(&e)?;
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(&e)?;
        self.conn
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(&e)?;
        Ok(())
    }

    fn setup(&mut self) -> Result<()> {
        let p = self.path.clone();
        let e = db_err(&p);
        self.pragmas()?;
        self.conn.execute_batch(SCHEMA).map_err(&e)?;
        let version: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .ok();
        match version {
            None => {
                self.conn
                    .execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                        params![SCHEMA_VERSION.to_string()],
                    )
                    .map_err(&e)?;
            }
            Some(v) if v == SCHEMA_VERSION.to_string() => {}
            Some(v) if v == "1" => {
                // Version 1 lacks the columns added since; rows recorded
                // before count as sequence 0, mtime unknown.
                self.conn
                    .execute_batch(
                        "BEGIN;
                         ALTER TABLE files ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
                         ALTER TABLE files ADD COLUMN mtime INTEGER;
                         ALTER TABLE hosts ADD COLUMN absent_since INTEGER;
                         UPDATE meta SET value = '2' WHERE key = 'schema_version';
                         COMMIT;",
                    )
                    .map_err(&e)?;
                tracing::info!(path = %crate::quote::path(&p), "record upgraded to schema version 2");
            }
            Some(v) => startup::schema_known(&p, &v)?,
        }
        self.rec = Record::load(&self.conn, &p)?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// False until the first start (or `--adopt`) wrote a record.
    pub fn is_initialized(&self) -> bool {
        self.rec.initialized
    }

    pub fn mark_initialized(&mut self) {
        self.rec.initialized = true;
        self.ops.push(Op::Initialized);
    }

    pub fn is_known(&self, name: &OsStr, id: FileId) -> bool {
        self.rec.files.get(name).is_some_and(|v| v.contains(&id))
    }

    /// Every recorded (name, generation).
    pub fn all_files(&self) -> impl Iterator<Item = (&OsString, FileId)> {
        self.rec
            .files
            .iter()
            .flat_map(|(n, ids)| ids.as_slice().iter().map(move |id| (n, *id)))
    }

    pub fn file_count(&self) -> usize {
        self.rec.files.values().map(Few::len).sum()
    }

    /// Records a distributed generation, with its size and mtime then (so
    /// that a later write in place can be told).
    pub fn record(&mut self, name: &OsStr, id: FileId, size: u64, mtime: Option<i64>) {
        match self.rec.files.get_mut(name) {
            Some(ids) if ids.contains(&id) => return,
            Some(ids) => ids.push(id),
            None => {
                self.rec.files.insert(name.to_os_string(), Few::One(id));
            }
        }
        if mtime.is_some() {
            self.new_generations += 1;
        }
        self.ops
            .push(Op::Record(name.to_os_string(), id, size, mtime));
    }

    /// How many new generations were recorded with their stamp since the
    /// store was opened: distributed ones (an arrival, a file a scan
    /// found), or ones `migrate`/`sync --adopt` took. Copies recorded only
    /// because another copy arrived, and links taken from the journal, have
    /// no stamp and are not counted.
    pub fn new_generations(&self) -> u64 {
        self.new_generations
    }

    /// The running totals, as the next commit will write them.
    pub fn stats(&self) -> Stats {
        self.rec.stats
    }

    /// Changes the running totals (written by the next commit).
    pub fn update_stats(&mut self, f: impl FnOnce(&mut Stats)) {
        let before = self.rec.stats;
        f(&mut self.rec.stats);
        self.stats_dirty |= self.rec.stats != before;
    }

    /// The size and mtime a committed generation had when it was
    /// distributed (`None`: not committed yet, or the mtime is unknown).
    pub fn recorded_stamp(&self, name: &OsStr, id: FileId) -> Option<(u64, i64)> {
        self.conn
            .query_row(
                "SELECT size, mtime FROM files WHERE name = ?1 AND ino = ?2 AND birth = ?3",
                params![name.as_bytes(), id.ino as i64, id.birth],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Option<i64>>(1)?)),
            )
            .ok()
            .and_then(|(size, mtime)| Some((size, mtime?)))
    }

    /// Every committed generation's size and mtime when it was distributed.
    pub fn recorded_stamps(&self) -> Result<Stamps> {
        stamps(&self.conn, &self.path)
    }

    /// Gives a recorded generation another identity stamp in place (an
    /// upgrade that changed how stamps are made): when it was recorded
    /// (its commit sequence) and the links owed for it stay.
    pub fn rekey(&mut self, name: &OsStr, old: FileId, new: FileId) {
        let Some(ids) = self.rec.files.get_mut(name) else {
            return;
        };
        if !ids.contains(&old) || ids.contains(&new) {
            return;
        }
        ids.retain(|x| *x != old);
        ids.push(new);
        if let Some(hosts) = self.rec.owed.remove(&(name.to_os_string(), old)) {
            self.rec.owed.insert((name.to_os_string(), new), hosts);
        }
        self.ops.push(Op::Rekey(name.to_os_string(), old, new));
    }

    /// Accepts a distributed file as it is now (it was written in place).
    pub fn restamp(&mut self, name: &OsStr, id: FileId, size: u64, mtime: i64) {
        self.ops
            .push(Op::Restamp(name.to_os_string(), id, size, mtime));
    }

    pub fn forget(&mut self, name: &OsStr, id: FileId) {
        if let Some(v) = self.rec.files.get_mut(name) {
            v.retain(|x| *x != id);
            if v.is_empty() {
                self.rec.files.remove(name);
            }
        }
        if let Some(hosts) = self.rec.owed.remove(&(name.to_os_string(), id)) {
            for h in hosts {
                self.ops.push(Op::Paid(name.to_os_string(), id, h));
            }
        }
        self.ops.push(Op::Forget(name.to_os_string(), id));
    }

    pub fn owe(&mut self, name: &OsStr, id: FileId, host: &str) {
        if self
            .rec
            .owed
            .entry((name.to_os_string(), id))
            .or_default()
            .insert(host.to_string())
        {
            self.ops
                .push(Op::Owe(name.to_os_string(), id, host.to_string()));
        }
    }

    pub fn paid(&mut self, name: &OsStr, id: FileId, host: &str) {
        let key = (name.to_os_string(), id);
        if let Some(set) = self.rec.owed.get_mut(&key)
            && set.remove(host)
        {
            if set.is_empty() {
                self.rec.owed.remove(&key);
            }
            self.ops.push(Op::Paid(key.0, id, host.to_string()));
        }
    }

    /// Links still owed: (name, generation) → hosts.
    pub fn owed(&self) -> Vec<(OsString, FileId, Vec<String>)> {
        self.rec
            .owed
            .iter()
            .map(|((n, id), hs)| (n.clone(), *id, hs.iter().cloned().collect()))
            .collect()
    }

    /// The generations of `name` whose link is owed to `host`.
    pub fn owed_to(&self, name: &OsStr, host: &str) -> Vec<FileId> {
        let lo = (
            name.to_os_string(),
            FileId {
                ino: 0,
                birth: i64::MIN,
            },
        );
        let hi = (
            name.to_os_string(),
            FileId {
                ino: u64::MAX,
                birth: i64::MAX,
            },
        );
        self.rec
            .owed
            .range(lo..=hi)
            .filter(|(_, hs)| hs.contains(host))
            .map(|((_, id), _)| *id)
            .collect()
    }

    pub fn has_owed(&self) -> bool {
        !self.rec.owed.is_empty()
    }

    pub fn hosts(&self) -> &BTreeSet<String> {
        &self.rec.hosts
    }

    /// Adds a host, or takes back one that was absent.
    pub fn add_host(&mut self, host: &str) {
        let back = self.rec.absent.remove(host).is_some();
        if self.rec.hosts.insert(host.to_string()) || back {
            self.ops.push(Op::AddHost(host.to_string()));
        }
    }

    /// Hosts that left the configuration, and the commit they left at.
    pub fn absent(&self) -> &BTreeMap<String, i64> {
        &self.rec.absent
    }

    /// The host left the configuration: it is remembered (its prunes stay
    /// prunes if it comes back), its conflicts are dropped, links owed to it
    /// wait for its return. Pending changes must be committed first, so
    /// that what it got is told apart from what it missed.
    pub fn mark_absent(&mut self, host: &str) {
        if self.rec.hosts.contains(host) && !self.rec.absent.contains_key(host) {
            self.rec.absent.insert(host.to_string(), self.rec.seq);
            self.ops.push(Op::Absent(host.to_string(), self.rec.seq));
        }
        for v in self.rec.conflicts.values_mut() {
            v.retain(|c| c.host != host && c.other_host != host);
        }
    }

    /// Every (name, generation) recorded by a commit after `seq` (what a
    /// host absent since then missed). Reads the database: commit first.
    pub fn recorded_after(&self, seq: i64) -> Result<Vec<(OsString, FileId)>> {
        let p = self.path.clone();
        let e = db_err(&p);
        let mut st = self
            .conn
            .prepare("SELECT name, ino, birth FROM files WHERE seq > ?1")
            .map_err(&e)?;
        let it = st
            .query_map(params![seq], |r| {
                Ok((
                    OsString::from_vec(r.get::<_, Vec<u8>>(0)?),
                    FileId {
                        ino: r.get::<_, i64>(1)? as u64,
                        birth: r.get(2)?,
                    },
                ))
            })
            .map_err(&e)?;
        it.collect::<rusqlite::Result<Vec<_>>>().map_err(&e)
    }

    /// Forgets a host entirely (its owed links and conflicts go too): if
    /// it is configured again, it is seeded like a new host.
    pub fn remove_host(&mut self, host: &str) {
        self.rec.absent.remove(host);
        if self.rec.hosts.remove(host) {
            self.ops.push(Op::RemoveHost(host.to_string()));
        }
        for set in self.rec.owed.values_mut() {
            set.remove(host);
        }
        self.rec.owed.retain(|_, s| !s.is_empty());
        for v in self.rec.conflicts.values_mut() {
            v.retain(|c| c.host != host && c.other_host != host);
        }
    }

    /// Pairs found different, as loaded (the engine keeps its own cache).
    pub fn differents(&self) -> &[(Version, Version)] {
        &self.rec.different
    }

    pub fn remember_different(&mut self, a: Version, b: Version) {
        self.ops.push(Op::Different(a, b));
    }

    pub fn forget_different(&mut self, a: Version, b: Version) {
        self.ops.push(Op::ForgetDifferent(a, b));
    }

    pub fn conflicts_of(&self, name: &OsStr) -> &[Conflict] {
        self.rec
            .conflicts
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn conflict_names(&self) -> Vec<OsString> {
        self.rec.conflicts.keys().cloned().collect()
    }

    /// Replaces the recorded conflicts of one name.
    pub fn set_conflicts(&mut self, name: &OsStr, list: Vec<Conflict>) {
        let old = self.rec.conflicts.get(name).cloned().unwrap_or_default();
        if old == list {
            return;
        }
        self.ops.push(Op::ClearConflicts(name.to_os_string()));
        if list.is_empty() {
            self.rec.conflicts.remove(name);
        } else {
            for c in &list {
                self.ops.push(Op::Conflict(c.clone()));
            }
            self.rec.conflicts.insert(name.to_os_string(), list);
        }
    }

    pub fn dirty(&self) -> bool {
        !self.ops.is_empty() || self.journal_dirty || self.stats_dirty
    }

    /// Writes every queued change in one transaction.
    /// While it cannot (a full or failing filesystem, immutable files),
    /// [`Store::can_record`] is false; the first commit that succeeds again
    /// clears it.
    pub fn commit(&mut self) -> Result<()> {
        if self.fault {
            let e = self.injected();
            self.failed(&e);
            return Err(e);
        }
        if self.failing.is_some() {
            // Resume only on proof: a real write to the database and to the
            // links journal (a no-op entry; the commit empties it).
            if !matches!(self.ops.last(), Some(Op::Probe)) {
                self.ops.push(Op::Probe);
            }
            let probe = Entry::Paid {
                name: OsString::new(),
                id: FileId { ino: 0, birth: 0 },
                hosts: Vec::new(),
            };
            self.journal_append(&probe)?;
        }
        let res = self.check_files().and_then(|()| self.commit_now());
        match &res {
            Ok(()) => {
                if self.failing.take().is_some() {
                    tracing::info!(path = %crate::quote::path(&self.path), "the record can be written again; distribution resumes");
                }
            }
            Err(e) => self.failed(e),
        }
        res
    }

    fn commit_now(&mut self) -> Result<()> {
        self.commit_ops()?;
        if self.journal_dirty {
            // The record now holds all the journal told.
            self.journal.set_len(0).map_err(|e| Error::Io {
                path: self.journal_path.clone(),
                source: e,
            })?;
            self.journal_dirty = false;
        }
        Ok(())
    }

    /// For the property test only: makes every write to the record fail
    /// (`on`), as a full or failing filesystem would, or work again.
    #[doc(hidden)]
    pub fn inject_write_failures(&mut self, on: bool) {
        self.fault = on;
    }

    fn injected(&self) -> Error {
        Error::Io {
            path: self.path.clone(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        }
    }

    /// Whether the record can be written now. While it cannot, nothing is
    /// linked (a link that cannot be recorded could undo a prune after a
    /// crash); the daemon retries the commit until it works.
    pub fn can_record(&self) -> bool {
        self.failing.is_none()
    }

    /// The record cannot be written: said once, until it can again.
    fn failed(&mut self, e: &Error) {
        if self.failing.is_none() {
            tracing::error!(error = %e, "cannot write the record: distribution pauses (nothing is linked that could not be recorded) and resumes by itself once it can be written");
        }
        self.failing = Some(e.to_string());
    }

    /// The files of the record as they are now in the state dir.
    fn file_ids(&self) -> StateFiles {
        (self.dir.file_id(DB_NAME), self.dir.file_id(JOURNAL_NAME))
    }

    /// Before each commit: the state dir and its files must still be the
    /// ones held open. A database deleted or replaced behind distlink's
    /// back is written again from the copy the connection still holds
    /// open; a links journal, recreated (what it held is also in the
    /// pending changes this commit writes).
    fn check_files(&mut self) -> Result<()> {
        if !self.dir.is_current() {
            return Err(Error::State {
                path: self.dir.path.clone(),
                message: "the state dir was removed or replaced while distlink ran; restart it \
                          (the record it holds is written there then)"
                    .into(),
            });
        }
        let (db, journal) = self.file_ids();
        if db != self.files.0 {
            tracing::warn!(path = %crate::quote::path(&self.path), "the record was deleted or replaced while distlink ran; writing it again from the copy distlink holds open");
            self.rebuild_db()?;
        }
        if journal != self.files.1 {
            tracing::warn!(path = %crate::quote::path(&self.journal_path), "the links journal was deleted or replaced while distlink ran; starting a new one");
            self.journal = self
                .dir
                .create_file(OsStr::new(JOURNAL_NAME), 0o600, false)
                .map_err(|e| Error::sys(&self.journal_path, e))?;
            self.journal_dirty = true;
        }
        self.files = self.file_ids();
        Ok(())
    }

    /// Copies the open database (`VACUUM INTO`) to a new file, moves it
    /// into place and reopens it.
    fn rebuild_db(&mut self) -> Result<()> {
        const TMP: &str = "state.db.rebuild";
        let path = self.path.clone();
        let e = db_err(&path);
        let tmp = self.dir.path.join(TMP);
        let _ = fsops::unlink_at(self.dir.fd(), OsStr::new(TMP));
        self.conn
            .execute("VACUUM INTO ?1", params![tmp.to_string_lossy()])
            .map_err(&e)?;
        fsops::fsync_fd(
            self.dir
                .open_file(OsStr::new(TMP), false)
                .map_err(|er| Error::sys(&tmp, er))?
                .as_fd(),
        )
        .map_err(|er| Error::sys(&tmp, er))?;
        nix::fcntl::renameat(self.dir.fd(), TMP, self.dir.fd(), DB_NAME)
            .map_err(|er| Error::sys(&self.path, er))?;
        let _ = fsops::fsync_fd(self.dir.fd());
        self.conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(&e)?;
        self.pragmas()?;
        Ok(())
    }

    fn commit_ops(&mut self) -> Result<()> {
        if self.ops.is_empty() && !self.stats_dirty {
            return Ok(());
        }
        let p = self.path.clone();
        let e = db_err(&p);
        let now = now_secs();
        let seq = self.rec.seq + 1;
        let tx = self.conn.transaction().map_err(&e)?;
        for op in &self.ops {
            match op {
                Op::Record(n, id, size, mtime) => tx.execute(
                    "INSERT OR IGNORE INTO files (name, ino, birth, size, recorded_at, seq, mtime) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![n.as_bytes(), id.ino as i64, id.birth, *size as i64, now, seq, mtime],
                ),
                Op::Rekey(n, old, new) => tx
                    .execute(
                        "UPDATE files SET ino = ?4, birth = ?5 WHERE name = ?1 AND ino = ?2 AND birth = ?3",
                        params![n.as_bytes(), old.ino as i64, old.birth, new.ino as i64, new.birth],
                    )
                    .and_then(|_| {
                        tx.execute(
                            "UPDATE owed SET ino = ?4, birth = ?5 WHERE name = ?1 AND ino = ?2 AND birth = ?3",
                            params![n.as_bytes(), old.ino as i64, old.birth, new.ino as i64, new.birth],
                        )
                    }),
                Op::Restamp(n, id, size, mtime) => tx.execute(
                    "UPDATE files SET size = ?4, mtime = ?5 WHERE name = ?1 AND ino = ?2 AND birth = ?3",
                    params![n.as_bytes(), id.ino as i64, id.birth, *size as i64, mtime],
                ),
                Op::Forget(n, id) => tx.execute(
                    "DELETE FROM files WHERE name = ?1 AND ino = ?2 AND birth = ?3",
                    params![n.as_bytes(), id.ino as i64, id.birth],
                ),
                Op::Owe(n, id, h) => tx.execute(
                    "INSERT OR IGNORE INTO owed (name, ino, birth, host) VALUES (?1, ?2, ?3, ?4)",
                    params![n.as_bytes(), id.ino as i64, id.birth, h],
                ),
                Op::Paid(n, id, h) => tx.execute(
                    "DELETE FROM owed WHERE name = ?1 AND ino = ?2 AND birth = ?3 AND host = ?4",
                    params![n.as_bytes(), id.ino as i64, id.birth, h],
                ),
                Op::AddHost(h) => tx
                    .execute(
                        "INSERT OR IGNORE INTO hosts (name, added_at) VALUES (?1, ?2)",
                        params![h, now],
                    )
                    .and_then(|_| {
                        tx.execute(
                            "UPDATE hosts SET absent_since = NULL WHERE name = ?1",
                            params![h],
                        )
                    }),
                Op::Absent(h, since) => tx
                    .execute(
                        "UPDATE hosts SET absent_since = ?2 WHERE name = ?1",
                        params![h, since],
                    )
                    .and_then(|_| {
                        tx.execute(
                            "DELETE FROM conflicts WHERE host = ?1 OR other_host = ?1",
                            params![h],
                        )
                    }),
                Op::RemoveHost(h) => tx
                    .execute("DELETE FROM hosts WHERE name = ?1", params![h])
                    .and_then(|_| tx.execute("DELETE FROM owed WHERE host = ?1", params![h]))
                    .and_then(|_| {
                        tx.execute(
                            "DELETE FROM conflicts WHERE host = ?1 OR other_host = ?1",
                            params![h],
                        )
                    }),
                Op::Conflict(c) => tx.execute(
                    "INSERT OR REPLACE INTO conflicts (name, host, ino, other_host, other_ino, seen_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![c.name.as_bytes(), c.host, c.ino as i64, c.other_host, c.other_ino as i64, now],
                ),
                Op::Different(a, b) => tx.execute(
                    "INSERT OR REPLACE INTO different VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![a.ino as i64, a.birth, a.size as i64, a.mtime, b.ino as i64, b.birth, b.size as i64, b.mtime],
                ),
                Op::ForgetDifferent(a, b) => tx.execute(
                    "DELETE FROM different WHERE a_ino = ?1 AND a_birth = ?2 AND b_ino = ?3 AND b_birth = ?4",
                    params![a.ino as i64, a.birth, b.ino as i64, b.birth],
                ),
                Op::ClearConflicts(n) => tx.execute("DELETE FROM conflicts WHERE name = ?1", params![n.as_bytes()]),
                Op::Probe => tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('probed_at', ?1)",
                    params![now.to_string()],
                ),
                Op::Initialized => tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('initialized', ?1)",
                    params![now.to_string()],
                ),
            }
            .map_err(&e)?;
        }
        if self.stats_dirty {
            for (k, v) in self.rec.stats.rows() {
                if let Some(v) = v {
                    tx.execute(
                        "INSERT OR REPLACE INTO stats (key, value) VALUES (?1, ?2)",
                        params![k, v],
                    )
                    .map_err(&e)?;
                }
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('seq', ?1)",
            params![seq.to_string()],
        )
        .map_err(&e)?;
        tx.commit().map_err(&e)?;
        self.rec.seq = seq;
        self.stats_dirty = false;
        self.ops.clear();
        // A large batch (seeding a host) leaves no large buffer behind.
        self.ops.shrink_to(1024);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Entry, HostSet, JOURNAL_NAME, Store};
    use crate::fsops::FileId;
    use std::ffi::{OsStr, OsString};
    use std::os::unix::ffi::OsStrExt;

    fn id(ino: u64) -> FileId {
        FileId { ino, birth: -7 }
    }

    #[test]
    fn journal_entries_read_back_and_a_torn_tail_is_left_out() {
        let a = Entry::Distributed {
            name: OsStr::from_bytes(b"odd\nname\xff").to_os_string(),
            id: id(5),
            size: 1 << 40,
            failed: vec!["b".into(), "host-c".into()],
        };
        let p = Entry::Paid {
            name: OsString::from("foo.tar.gz"),
            id: id(9),
            hosts: vec!["d".into()],
        };
        let mut data = a.encode();
        data.extend(p.encode());
        assert_eq!(Entry::decode_all(&data), (vec![a.clone(), p.clone()], 0));
        // A torn last entry, then one with a flipped byte.
        let whole = data.len();
        data.extend(&p.encode()[..10]);
        assert_eq!(Entry::decode_all(&data), (vec![a.clone(), p.clone()], 10));
        data.truncate(whole);
        let mut bad = a.encode();
        bad[12] ^= 1;
        data.extend(&bad);
        assert_eq!(Entry::decode_all(&data).0, vec![a, p]);
    }

    #[test]
    fn a_store_reopened_after_a_crash_takes_what_the_journal_says() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        for h in ["a", "b", "c"] {
            s.add_host(h);
        }
        s.record(OsStr::new("old"), id(1), 10, None);
        s.owe(OsStr::new("old"), id(1), "c");
        s.commit().unwrap();
        // Linked, journaled, never committed: the process dies here.
        s.record(OsStr::new("new"), id(2), 20, None);
        s.journal_distributed(OsStr::new("new"), id(2), 20, &["b"])
            .unwrap();
        s.paid(OsStr::new("old"), id(1), "c");
        s.journal_paid(OsStr::new("old"), id(1), &["c"]).unwrap();
        drop(s);
        let mut s = Store::open(dir.path()).unwrap();
        assert!(s.is_known(OsStr::new("new"), id(2)));
        let owed = s.owed();
        assert_eq!(
            owed,
            vec![(OsString::from("new"), id(2), vec!["b".to_string()])]
        );
        assert!(s.dirty(), "what the journal told waits for a commit");
        s.commit().unwrap();
        let len = std::fs::metadata(dir.path().join(JOURNAL_NAME))
            .unwrap()
            .len();
        assert_eq!(len, 0, "a commit empties the journal");
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert!(s.is_known(OsStr::new("new"), id(2)));
        assert_eq!(s.owed().len(), 1);
        assert!(!s.dirty());
    }

    #[test]
    fn a_version_1_record_is_upgraded_and_its_rows_count_as_recorded_before_any_absence() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = rusqlite::Connection::open(dir.path().join(super::DB_NAME)).unwrap();
            c.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE hosts (name TEXT PRIMARY KEY, added_at INTEGER NOT NULL);
                 CREATE TABLE files (name BLOB NOT NULL, ino INTEGER NOT NULL, birth INTEGER NOT NULL,
                    size INTEGER NOT NULL, recorded_at INTEGER NOT NULL,
                    PRIMARY KEY (name, ino, birth)) WITHOUT ROWID;
                 INSERT INTO meta VALUES ('schema_version', '1'), ('initialized', '1');
                 INSERT INTO hosts VALUES ('a', 0), ('c', 0);
                 INSERT INTO files VALUES (X'6f6c64', 1, -7, 10, 0);",
            )
            .unwrap();
        }
        let mut s = Store::open(dir.path()).unwrap();
        assert!(s.is_initialized() && s.is_known(OsStr::new("old"), id(1)));
        s.mark_absent("c");
        s.record(OsStr::new("new"), id(2), 20, None);
        s.commit().unwrap();
        let since = s.absent()["c"];
        let missed = s.recorded_after(since).unwrap();
        assert_eq!(missed, vec![(OsString::from("new"), id(2))]);
        drop(s);
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.absent().get("c"),
            Some(&since),
            "absence survives a reopen"
        );
        s.add_host("c");
        s.commit().unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert!(s.absent().is_empty() && s.hosts().contains("c"));
    }

    #[test]
    fn running_totals_survive_a_reopen_and_a_record_without_them_reads_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        {
            // A record of a version without the stats table.
            let c = rusqlite::Connection::open(dir.path().join(super::DB_NAME)).unwrap();
            let stats =
                "CREATE TABLE IF NOT EXISTS stats (key TEXT PRIMARY KEY, value INTEGER NOT NULL);";
            assert!(super::SCHEMA.contains(stats));
            c.execute_batch(&super::SCHEMA.replace(stats, "")).unwrap();
            c.execute_batch(
                "INSERT INTO meta VALUES ('schema_version', '2'), ('initialized', '1');",
            )
            .unwrap();
        }
        let rec = super::read_only(dir.path()).unwrap().unwrap();
        assert_eq!(rec.stats, super::Stats::default());
        let mut s = Store::open(dir.path()).unwrap();
        assert!(!s.dirty());
        s.record(OsStr::new("stamped"), id(1), 10, Some(5));
        s.record(OsStr::new("unstamped"), id(2), 10, None);
        s.record(OsStr::new("stamped"), id(1), 10, Some(5));
        assert_eq!(
            s.new_generations(),
            1,
            "only a new stamped generation counts"
        );
        s.commit().unwrap();
        s.update_stats(|st| {
            st.links_made += 3;
            st.last_arrival_at = Some(1234);
        });
        assert!(
            s.dirty(),
            "a change of the totals is written by the next commit"
        );
        s.commit().unwrap();
        assert!(!s.dirty());
        drop(s);
        let rec = super::read_only(dir.path()).unwrap().unwrap();
        assert_eq!(rec.stats.links_made, 3);
        assert_eq!(rec.stats.last_arrival_at, Some(1234));
        assert_eq!(rec.stats.last_full_scan_ms, None);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.stats().links_made, 3);
    }

    #[test]
    fn an_intent_without_its_outcome_leaves_its_targets_owed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        for h in ["a", "b", "c"] {
            s.add_host(h);
        }
        s.commit().unwrap();
        // Completed: b and c got it.
        s.journal_intent(OsStr::new("done"), id(1), 1, &["b", "c"])
            .unwrap();
        s.journal_distributed(OsStr::new("done"), id(1), 1, &[])
            .unwrap();
        // The process dies among the links of this one.
        s.journal_intent(OsStr::new("cut"), id(2), 2, &["b", "c"])
            .unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert!(s.is_known(OsStr::new("done"), id(1)));
        assert!(s.is_known(OsStr::new("cut"), id(2)));
        assert_eq!(
            s.owed(),
            vec![(
                OsString::from("cut"),
                id(2),
                vec!["b".to_string(), "c".to_string()]
            )]
        );
    }

    #[test]
    fn a_host_set_holds_each_host_once_in_order() {
        let mut s = HostSet::default();
        assert!(s.is_empty());
        assert!(s.insert("c".into()));
        assert!(s.insert("a".into()));
        assert!(!s.insert("c".into()), "second insert of c");
        assert!(s.insert("b".into()));
        assert_eq!(s.iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(s.contains("b") && !s.contains("d"));
        assert!(s.remove("b"));
        assert!(!s.remove("b"), "second remove of b");
        assert_eq!(s.clone().into_iter().collect::<Vec<_>>(), ["a", "c"]);
        assert!(s.remove("a") && s.remove("c") && s.is_empty());
    }

    #[test]
    fn a_ceph_cluster_fsid_folds_to_one_nonzero_id() {
        let a = super::fold_uuid(b"683ab17b-3103-4d40-8be5-706f8cebf5e7");
        assert_eq!(a, Some(0x683ab17b31034d40 ^ 0x8be5706f8cebf5e7));
        assert_ne!(a, super::fold_uuid(b"683ab17b-3103-4d40-8be5-706f8cebf5e8"));
        assert_eq!(
            super::fold_uuid(b"683ab17b-3103-4d40-8be5-706f8cebf5e"),
            None
        );
        assert_eq!(
            super::fold_uuid(b"683ab17b-3103-4d40-8be5-706f8cebf5e7\0\n"),
            a
        );
        assert_eq!(
            super::fold_uuid(b"683ab17b-3103-4d40-8be5-706f8cebf5e7 x"),
            None
        );
        assert_eq!(
            super::fold_uuid(b"00000000-0000-0000-0000-000000000000"),
            None
        );
    }
}
