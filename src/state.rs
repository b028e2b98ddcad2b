//! The persistent record: which (name, file generation) were distributed,
//! which hosts it knows, which links are still owed to a host, and the
//! conflicts seen. Kept in SQLite (WAL mode, `synchronous=FULL`), so it
//! survives power loss and other processes can read it while the daemon
//! writes. An in-memory mirror answers the hot-path questions.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rustc_hash::FxHashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, OpenFlags, params};

use crate::error::{Error, Result};
use crate::few::Few;
use crate::fsops::FileId;

pub const DB_NAME: &str = "state.db";
const LOCK_NAME: &str = "lock";
/// What was linked since the last commit (see [`Store::journal_distributed`]).
pub const JOURNAL_NAME: &str = "links.journal";
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (name TEXT PRIMARY KEY, added_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    name BLOB NOT NULL, ino INTEGER NOT NULL, birth INTEGER NOT NULL,
    size INTEGER NOT NULL, recorded_at INTEGER NOT NULL,
    PRIMARY KEY (name, ino, birth)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owed (
    name BLOB NOT NULL, ino INTEGER NOT NULL, birth INTEGER NOT NULL, host TEXT NOT NULL,
    PRIMARY KEY (name, ino, birth, host)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conflicts (
    name BLOB NOT NULL, host TEXT NOT NULL, ino INTEGER NOT NULL,
    other_host TEXT NOT NULL, other_ino INTEGER NOT NULL, seen_at INTEGER NOT NULL,
    PRIMARY KEY (name, host)) WITHOUT ROWID;
";

/// One write waiting for the next commit.
#[derive(Debug)]
enum Op {
    Record(OsString, FileId, u64),
    Forget(OsString, FileId),
    Owe(OsString, FileId, String),
    Paid(OsString, FileId, String),
    AddHost(String),
    RemoveHost(String),
    Conflict(Conflict),
    ClearConflicts(OsString),
    Initialized,
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

/// Same name, different content in two hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub name: OsString,
    pub host: String,
    pub ino: u64,
    pub other_host: String,
    pub other_ino: u64,
}

/// The record as loaded from the database: the in-memory mirror the daemon
/// keeps, and what `status`/`check` read.
#[derive(Debug, Default, Clone)]
pub struct Record {
    pub initialized: bool,
    /// Name → its recorded generations (almost always one).
    pub files: FxHashMap<OsString, Few<FileId>>,
    pub owed: BTreeMap<(OsString, FileId), HostSet>,
    pub hosts: BTreeSet<String>,
    pub conflicts: HashMap<OsString, Vec<Conflict>>,
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
        rec.hosts = rows(conn, p, "SELECT name FROM hosts", |r| r.get::<_, String>(0))?
            .into_iter()
            .collect();
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
        Ok(rec)
    }

    pub fn is_known(&self, name: &OsStr, id: FileId) -> bool {
        self.files.get(name).is_some_and(|v| v.contains(&id))
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
    let path = state_dir.join(DB_NAME);
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db_err(&path))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(db_err(&path))?;
    Record::load(&conn, &path).map(Some)
}

/// Copies the record as a process stopped now would leave it (the
/// database, its write-ahead log where a killed process leaves its last
/// commits, and the links journal) from `from` into the dir `to`, for a
/// dry run to work on.
pub fn copy_record(from: &Path, to: &Path) -> Result<()> {
    let wal = format!("{DB_NAME}-wal");
    for name in [DB_NAME, &wal, JOURNAL_NAME] {
        let src = from.join(name);
        if src.exists() {
            std::fs::copy(&src, to.join(name)).map_err(|e| Error::Io {
                path: src,
                source: e,
            })?;
        }
    }
    Ok(())
}

/// The pid of the process holding the state lock (a running daemon, or a
/// `sync`/`migrate` in progress), if any.
pub fn lock_holder(state_dir: &Path) -> Option<u32> {
    let path = state_dir.join(LOCK_NAME);
    let file = File::open(&path).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_) => None,
        Err((mut f, _)) => {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut f, &mut s);
            Some(s.trim().parse().unwrap_or(0))
        }
    }
}

/// The record, opened for writing (holds the state lock).
pub struct Store {
    conn: Connection,
    path: PathBuf,
    _lock: Flock<File>,
    rec: Record,
    ops: Vec<Op>,
    /// Opened for appending; emptied by every commit.
    journal: File,
    journal_path: PathBuf,
    /// Whether the journal holds entries the record does not have yet.
    journal_dirty: bool,
}

/// One entry of the links journal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
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

impl Store {
    /// Opens (creating if needed) the record in `state_dir` and takes the
    /// exclusive lock; a second writer is refused.
    pub fn open(state_dir: &Path) -> Result<Store> {
        if !state_dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .map_err(|e| Error::Io {
                    path: state_dir.to_path_buf(),
                    source: e,
                })?;
        }
        let lock_path = state_dir.join(LOCK_NAME);
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::Io {
                path: lock_path.clone(),
                source: e,
            })?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            if e == nix::errno::Errno::EWOULDBLOCK {
                Error::Refused(format!(
                    "another distlink process holds the state lock {} (is the daemon running?)",
                    crate::quote::path(&lock_path)
                ))
            } else {
                Error::sys(&lock_path, e)
            }
        })?;
        // Tell `status` who holds the lock.
        let mut lock = lock;
        let _ = lock.set_len(0);
        let _ = std::io::Write::write_all(&mut *lock, std::process::id().to_string().as_bytes());
        let path = state_dir.join(DB_NAME);
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_err(&path))?;
        let journal_path = state_dir.join(JOURNAL_NAME);
        let journal = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&journal_path)
                .map_err(|e| Error::Io {
                    path: journal_path.clone(),
                    source: e,
                })?
        };
        let mut store = Store {
            conn,
            path,
            _lock: lock,
            rec: Record::default(),
            ops: Vec::new(),
            journal,
            journal_path,
            journal_dirty: false,
        };
        store.setup().map_err(|e| match e {
            Error::State { path, message } => Error::Refused(format!(
                "state store {} is unreadable ({message}); distlink will not guess what was \
                 distributed. Move it aside and run `distlink sync --adopt` to take the host dirs \
                 as they are now",
                crate::quote::path(&path)
            )),
            e => e,
        })?;
        store.replay_journal()?;
        Ok(store)
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
        for e in entries {
            match e {
                Entry::Distributed {
                    name,
                    id,
                    size,
                    failed,
                } => {
                    if !self.is_known(&name, id) {
                        self.record(&name, id, size);
                        for h in &failed {
                            if self.rec.hosts.contains(h) {
                                self.owe(&name, id, h);
                            }
                        }
                    }
                }
                Entry::Paid { name, id, hosts } => {
                    for h in &hosts {
                        self.paid(&name, id, h);
                    }
                }
            }
        }
        tracing::info!(path = %crate::quote::path(&self.journal_path), entries = n,
            "links made by a process that stopped before writing the record are taken from the journal");
        self.journal_dirty = true;
        Ok(())
    }

    fn journal_append(&mut self, e: &Entry) -> Result<()> {
        // One write: a process killed after it has the whole entry or none.
        std::io::Write::write_all(&mut self.journal, &e.encode()).map_err(|err| Error::Io {
            path: self.journal_path.clone(),
            source: err,
        })?;
        self.journal_dirty = true;
        Ok(())
    }

    /// Notes, right after the links were made and before the record is
    /// committed, that a new generation was linked into every host but
    /// `failed`. If the process dies before the commit, the next open
    /// takes it from the journal: without it, a host that pruned the file
    /// in between would be linked again. (A power loss can lose the
    /// journal, but then the links were not durable yet either.)
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

    /// Like [`Store::journal_distributed`], for owed links made to `hosts`.
    pub fn journal_paid(&mut self, name: &OsStr, id: FileId, hosts: &[&str]) -> Result<()> {
        if hosts.is_empty() {
            return Ok(());
        }
        self.journal_append(&Entry::Paid {
            name: name.to_os_string(),
            id,
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn setup(&mut self) -> Result<()> {
        let p = self.path.clone();
        let e = db_err(&p);
        self.conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(&e)?;
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(&e)?;
        self.conn
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(&e)?;
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
            Some(v) => {
                return Err(Error::State {
                    path: p.clone(),
                    message: format!("schema version {v} is not {SCHEMA_VERSION}"),
                });
            }
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

    pub fn record(&mut self, name: &OsStr, id: FileId, size: u64) {
        match self.rec.files.get_mut(name) {
            Some(ids) if ids.contains(&id) => return,
            Some(ids) => ids.push(id),
            None => {
                self.rec.files.insert(name.to_os_string(), Few::One(id));
            }
        }
        self.ops.push(Op::Record(name.to_os_string(), id, size));
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

    pub fn has_owed(&self) -> bool {
        !self.rec.owed.is_empty()
    }

    pub fn hosts(&self) -> &BTreeSet<String> {
        &self.rec.hosts
    }

    pub fn add_host(&mut self, host: &str) {
        if self.rec.hosts.insert(host.to_string()) {
            self.ops.push(Op::AddHost(host.to_string()));
        }
    }

    /// Drops a host from the record (its owed links and conflicts go too).
    pub fn remove_host(&mut self, host: &str) {
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
        !self.ops.is_empty() || self.journal_dirty
    }

    /// Writes every queued change in one transaction.
    pub fn commit(&mut self) -> Result<()> {
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

    fn commit_ops(&mut self) -> Result<()> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let p = self.path.clone();
        let e = db_err(&p);
        let now = now_secs();
        let tx = self.conn.transaction().map_err(&e)?;
        for op in &self.ops {
            match op {
                Op::Record(n, id, size) => tx.execute(
                    "INSERT OR IGNORE INTO files (name, ino, birth, size, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![n.as_bytes(), id.ino as i64, id.birth, *size as i64, now],
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
                Op::AddHost(h) => tx.execute(
                    "INSERT OR IGNORE INTO hosts (name, added_at) VALUES (?1, ?2)",
                    params![h, now],
                ),
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
                Op::ClearConflicts(n) => tx.execute("DELETE FROM conflicts WHERE name = ?1", params![n.as_bytes()]),
                Op::Initialized => tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('initialized', ?1)",
                    params![now.to_string()],
                ),
            }
            .map_err(&e)?;
        }
        tx.commit().map_err(&e)?;
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
        s.record(OsStr::new("old"), id(1), 10);
        s.owe(OsStr::new("old"), id(1), "c");
        s.commit().unwrap();
        // Linked, journaled, never committed: the process dies here.
        s.record(OsStr::new("new"), id(2), 20);
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
}
