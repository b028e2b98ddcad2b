//! The checks opening the record makes before the daemon may start, shared
//! by [`Store::open_for_root`] and [`Store::inspect_for_root`] (`distlink
//! run --check`), which makes them in the same order without creating,
//! locking or changing anything.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::{DB_JOURNAL_NAME, DB_NAME, JOURNAL_NAME, RootId, SCHEMA_VERSION, Store, db_err};
use crate::error::{Error, Result};
use crate::fsops;
use crate::statedir::{Found, PID_NAME, StateDir};

/// What [`Store::inspect_for_root`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// The database (which may not exist yet).
    pub path: PathBuf,
    /// Whether a start (or `sync --adopt`) already wrote a record.
    pub initialized: bool,
}

/// Every file of the state dir must be root's alone (those that exist).
pub(super) fn check_files(dir: &StateDir) -> Result<()> {
    for name in [DB_NAME, DB_JOURNAL_NAME, JOURNAL_NAME, PID_NAME] {
        dir.check_file(name)?;
    }
    Ok(())
}

/// A record that cannot be read is refused, not guessed at.
pub(super) fn unreadable(e: Error) -> Error {
    match e {
        Error::State { path, message } => Error::Refused(format!(
            "state store {} is unreadable ({message}); distlink will not guess what was \
             distributed. Move it aside and run `distlink sync --adopt` to take the host dirs \
             as they are now",
            crate::quote::path(&path)
        )),
        e => e,
    }
}

/// A schema version this build can read (the current one, or one it
/// upgrades).
pub(super) fn schema_known(p: &Path, v: &str) -> Result<()> {
    if v == SCHEMA_VERSION.to_string() || v == "1" {
        return Ok(());
    }
    Err(Error::State {
        path: p.to_path_buf(),
        message: format!("schema version {v} is not {SCHEMA_VERSION}"),
    })
}

/// How the root the record describes relates to the root now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Binding {
    /// The record describes exactly this root.
    Same,
    /// The same root; a device number or fsid moved (a reboot).
    Moved,
    /// Another root, bound to this one on purpose (`sync --adopt`).
    Rebound,
    /// The record does not say which root it describes.
    Unbound,
}

/// Whether the record at `db` (describing the root `was`) may be used on
/// the root `now`: another root is refused unless `rebind`.
pub(super) fn judge_root(
    db: &Path,
    root: &Path,
    was: Option<RootId>,
    now: &RootId,
    rebind: bool,
) -> Result<Binding> {
    match was {
        Some(w) if w == *now => Ok(Binding::Same),
        Some(w) if w.same_root(now) => Ok(Binding::Moved),
        Some(w) if !rebind => Err(Error::Refused(format!(
            "the record in {} describes another root than {} ({}; now {}): is the \
             distfiles filesystem mounted? distlink will not reuse it, or its prunes \
             would be undone. If the root was moved or restored on purpose, run \
             `distlink sync --adopt` to bind the record to it (every file now in the \
             host dirs then counts as distributed)",
            crate::quote::path(db),
            crate::quote::path(root),
            w.encode(),
            now.encode()
        ))),
        Some(_) => Ok(Binding::Rebound),
        None => Ok(Binding::Unbound),
    }
}

/// A record with a commit to roll back (its last one was cut short, or a
/// daemon is in the middle of one): `run` rolls it back, then checks it;
/// the check cannot read it as it will be.
fn rolled_back_by_run(path: PathBuf) -> Inspected {
    tracing::warn!(path = %crate::quote::path(&path),
        "the record has a commit to roll back (or one in progress), which only `run` may do: \
         whether it describes this root is not checked");
    Inspected {
        path,
        initialized: true,
    }
}

impl Store {
    /// The checks of [`Store::open_for_root`] (without `rebind`), in its
    /// order, creating, locking and changing nothing: the state dir and
    /// every dir above it are root's alone and outside the root (a missing
    /// one: the dirs it would be created in), its files are root's, the
    /// record is readable and describes this root. A daemon holding the
    /// lock is no obstacle.
    pub fn inspect_for_root(
        state_dir: &Path,
        root: &Path,
        root_fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<Inspected> {
        let rst = fsops::stat_fd(root_fd).map_err(|e| Error::sys(root, e))?;
        let dir = match StateDir::inspect_outside(state_dir, Some((root, (rst.dev, rst.ino))))? {
            Found::Dir(dir) => dir,
            Found::Missing(at) => {
                return Ok(Inspected {
                    path: at.join(DB_NAME),
                    initialized: false,
                });
            }
        };
        check_files(&dir)?;
        let path = dir.path.join(DB_NAME);
        let fresh = Inspected {
            path: path.clone(),
            initialized: false,
        };
        if fsops::stat_at(dir.fd(), std::ffi::OsStr::new(DB_NAME)).is_err() {
            return Ok(fresh);
        }
        // A commit in progress, or one cut short: only a writer may roll it
        // back (a reader opening the journal as root even chowns it).
        if fsops::stat_at(dir.fd(), std::ffi::OsStr::new(DB_JOURNAL_NAME))
            .is_ok_and(|st| st.size > 0)
        {
            return Ok(rolled_back_by_run(path));
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(db_err(&path))
        .map_err(unreadable)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db_err(&path))?;
        let read = |sql: &str| -> Result<Option<String>> {
            match conn.query_row(sql, [], |r| r.get::<_, String>(0)) {
                Ok(v) => Ok(Some(v)),
                Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
                Err(e) => Err(db_err(&path)(e)),
            }
        };
        let tables = read("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'meta'");
        match tables {
            // An empty database: `run` makes it a record.
            Ok(None) => return Ok(fresh),
            Ok(Some(_)) => {}
            // A commit cut short left a rollback journal that only a
            // writer may roll back: `run` does, then reads what it holds.
            Err(Error::State { message, .. })
                if message.contains("readonly") || message.contains("read-only") =>
            {
                return Ok(rolled_back_by_run(path));
            }
            Err(e) => return Err(unreadable(e)),
        }
        let meta = |key: &str| read(&format!("SELECT value FROM meta WHERE key = '{key}'"));
        if let Some(v) = meta("schema_version").map_err(unreadable)? {
            schema_known(&path, &v).map_err(unreadable)?;
        }
        let initialized = meta("initialized").map_err(unreadable)?.is_some();
        let now = RootId::of(root_fd).map_err(|e| Error::sys(root, e))?;
        let was = meta("root")
            .map_err(unreadable)?
            .as_deref()
            .and_then(RootId::decode);
        judge_root(&path, root, was, &now, false)?;
        Ok(Inspected { path, initialized })
    }
}
