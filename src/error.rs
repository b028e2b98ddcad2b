//! Error types. Fatal errors ([`Error`]) stop a command; per-file problems
//! are [`FileError`]s, logged and retried, and never stop the daemon.

use std::ffi::OsString;
use std::path::PathBuf;

use nix::errno::Errno;

/// Errors that end a command (exit code 2 for [`Error::Config`] and
/// [`Error::Usage`], 1 otherwise).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Usage(String),
    #[error("{}: {source}", crate::quote::path(.path))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {errno}", crate::quote::path(.path))]
    Sys { path: PathBuf, errno: Errno },
    #[error("state store {}: {message}", crate::quote::path(.path))]
    State { path: PathBuf, message: String },
    #[error("{0}")]
    Refused(String),
    /// A command that would do what was probably not meant (a prune that
    /// empties a host without `--all`): nothing was done (exit 1).
    #[error("{0}")]
    HeldBack(String),
}

impl Error {
    pub fn sys(path: impl Into<PathBuf>, errno: Errno) -> Self {
        Error::Sys {
            path: path.into(),
            errno,
        }
    }

    /// The process exit code this error maps to.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Usage(_) | Error::Refused(_) => 2,
            _ => 1,
        }
    }
}

/// A problem with one file in one host dir. Logged with its path; the work
/// is retried later.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {what}: {errno}", crate::quote::path(.path))]
pub struct FileError {
    pub path: PathBuf,
    pub what: &'static str,
    pub errno: Errno,
}

impl FileError {
    pub fn new(
        host_dir: &std::path::Path,
        name: &OsString,
        what: &'static str,
        errno: Errno,
    ) -> Self {
        FileError {
            path: host_dir.join(name),
            what,
            errno,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
