//! Which directory entries are candidates for distribution, judged by name
//! alone. (File type is judged by the engine from `statx`.)

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

/// Prefix of distlink's own transient names inside host dirs (temp links
/// used for atomic replacement). A dot-name, so never a candidate.
pub const TEMP_PREFIX: &[u8] = b".distlink-tmp.";

#[derive(Debug, Clone)]
pub struct NameFilter {
    extra: GlobSet,
}

impl NameFilter {
    /// Builds the filter from the configured extra glob patterns.
    pub fn new(patterns: &[String]) -> Result<NameFilter> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            let g = Glob::new(p).map_err(|e| {
                Error::Config(format!(
                    "ignore: bad glob pattern '{}': {e}",
                    crate::quote::bytes(p.as_bytes())
                ))
            })?;
            b.add(g);
        }
        let extra = b
            .build()
            .map_err(|e| Error::Config(format!("ignore: cannot build glob set: {e}")))?;
        Ok(NameFilter { extra })
    }

    /// True when a file of this name may be distributed.
    pub fn is_candidate(&self, name: &OsStr) -> bool {
        let b = name.as_bytes();
        !(b.is_empty()
            || b[0] == b'.'
            || b.contains(&b'/')
            || b.ends_with(b".__download__")
            || contains(b, b"._checksum_failure_")
            || self.extra.is_match(Path::new(name)))
    }
}

/// True for distlink's own leftover temp links.
pub fn is_own_temp(name: &OsStr) -> bool {
    name.as_bytes().starts_with(TEMP_PREFIX)
}

/// What the name of one of the engine's temp links says: a merge
/// linked inode `winner` under it, then exchanged it with the name that
/// held inode `old` (whose mtime was `old_mtime_ns`). Written
/// `.distlink-tmp.PID.SEQ.WINNER.OLD.OLD_MTIME_NS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TempLink {
    pub winner: u64,
    pub old: u64,
    pub old_mtime_ns: i64,
}

impl TempLink {
    pub fn name(&self, seq: u64) -> std::ffi::OsString {
        let mut v = TEMP_PREFIX.to_vec();
        v.extend_from_slice(
            format!(
                "{}.{seq}.{}.{}.{}",
                std::process::id(),
                self.winner,
                self.old,
                self.old_mtime_ns
            )
            .as_bytes(),
        );
        std::ffi::OsString::from(OsStr::from_bytes(&v))
    }

    /// Reads a temp link name; `None` for any other form.
    pub fn parse(name: &OsStr) -> Option<TempLink> {
        let rest = std::str::from_utf8(name.as_bytes().strip_prefix(TEMP_PREFIX)?).ok()?;
        let parts: Vec<&str> = rest.split('.').collect();
        let [pid, seq, winner, old, mtime] = parts[..] else {
            return None;
        };
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !(digits(pid) && digits(seq) && digits(winner) && digits(old)) {
            return None;
        }
        Some(TempLink {
            winner: winner.parse().ok()?,
            old: old.parse().ok()?,
            old_mtime_ns: mtime.parse().ok()?,
        })
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn table() {
        let f = NameFilter::new(&["*.part".into(), "cache-*".into()]).unwrap();
        let cases: &[(&[u8], bool)] = &[
            (b"foo-1.0.tar.gz", true),
            (b"foo-1.0.tar.gz.__download__", false),
            (b"foo-1.0.tar.gz._checksum_failure_.abc123", false),
            (b".foo-1.0.tar.gz.portage_lockfile", false),
            (b"..foo.hardlock-host-123", false),
            (b".nfs000000000123", false),
            (b".distlink-tmp.1.2", false),
            (b"x.part", false),
            (b"cache-zzz", false),
            (b"zzz-cache", true),
            (b"\xff\xfe-latin1.tar", true),
            (b"line\nbreak.tar", true),
            (b"-rf", true),
            (b"__download__", true),
            (b"", false),
        ];
        for (name, want) in cases {
            assert_eq!(
                f.is_candidate(OsStr::from_bytes(name)),
                *want,
                "{:?}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn temp_link_names_read_back() {
        let t = TempLink {
            winner: 4567,
            old: 89,
            old_mtime_ns: -12,
        };
        assert_eq!(TempLink::parse(&t.name(3)), Some(t));
        for bad in [
            &b".distlink-tmp.12.3.4567"[..],
            b".distlink-tmp.12.3.4.5",
            b".distlink-tmp.12.c3.4.5.6",
            b".distlink-tmp.12.3.4x.5.6",
            b".distlink-tmp.12.3.4.5.6.7",
            b".distlink-tmp..3.4.5.6",
            b"distlink-tmp.1.2.3.4.5",
        ] {
            assert_eq!(
                TempLink::parse(OsStr::from_bytes(bad)),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bad_glob_names_the_key() {
        let e = NameFilter::new(&["a[".into()]).unwrap_err().to_string();
        assert!(e.contains("ignore") && e.contains("a["), "{e}");
    }
}
