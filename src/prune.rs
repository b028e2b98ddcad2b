//! `distlink prune HOST`: server-side pruning of one host's dir, for
//! hosts that are offline or retired, age policies, and honest accounting
//! of what is freed. Only candidates are touched; the running daemon treats
//! the removals like any client prune (final, never undone).

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::Config;
use crate::engine;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::names::NameFilter;
use crate::quote;

/// Which files to remove. With several criteria, a file is removed only
/// when every one given selects it.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Lists of names to keep (their union); everything else is selected.
    pub keep: Vec<KeepList>,
    /// Files whose mtime is older than this.
    pub older_than: Option<Duration>,
    /// Everything may go (retire a host): without it, a selection that
    /// takes every file of the host is held back.
    pub all: bool,
    /// Prune even when the keep lists name none of the host's files.
    pub force: bool,
}

/// A file of names to keep (`-` is standard input).
#[derive(Debug, Clone)]
pub struct KeepList {
    pub path: PathBuf,
    pub form: KeepForm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepForm {
    /// One escaped name per line (`--keep-list`), see [`parse_keep_lines`].
    Lines,
    /// NUL-separated raw names (`--keep-list0`), see [`parse_keep_nul`].
    Nul,
    /// What `emerge --pretend --fetchonly` prints (`--keep-urls`): each
    /// URL's file name, see [`parse_keep_urls`].
    Urls,
}

impl KeepForm {
    pub fn flag(self) -> &'static str {
        match self {
            KeepForm::Lines => "--keep-list",
            KeepForm::Nul => "--keep-list0",
            KeepForm::Urls => "--keep-urls",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    pub name: String,
    pub bytes: u64,
    pub freed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub host: String,
    pub dry_run: bool,
    pub files_removed: u64,
    /// Bytes whose last link was removed: really freed.
    pub bytes_freed: u64,
    /// Bytes of removed names that other links (other hosts) still hold.
    pub bytes_still_held: u64,
    pub removed: Vec<Removed>,
    pub errors: Vec<String>,
}

/// Reads a keep list (`-` is standard input). A list that cannot be read
/// exactly is an error naming the file (and the line): a misread name
/// would be removed.
pub fn read_keep_list(list: &KeepList) -> Result<HashSet<OsString>> {
    let (path, flag) = (&list.path, list.form.flag());
    let mut bytes = Vec::new();
    let res = if path.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes).map(|_| ()))
    };
    res.map_err(|e| Error::Usage(format!("{flag} {}: {e}", quote::path(path))))?;
    let parsed = match list.form {
        KeepForm::Lines => parse_keep_lines(&bytes),
        KeepForm::Nul => parse_keep_nul(&bytes),
        KeepForm::Urls => parse_keep_urls(&bytes),
    };
    parsed.map_err(|e| Error::Usage(format!("{flag} {}: {e}", quote::path(path))))
}

/// Parses an age as eclean-dist's `--time-limit` does: a number and one
/// unit, `h` hours, `d` days, `w` weeks, `m` months (30 days), `y` years
/// (365 days) — so `6m` is six months, as eclean-dist users read it.
/// Anything else is refused with the units spelled out, and so is a zero
/// age (it selects every file: that is `--all`).
pub fn parse_age(s: &str) -> std::result::Result<Duration, String> {
    const UNITS: &str =
        "h (hours), d (days), w (weeks), m (months of 30 days) or y (years of 365 days)";
    let bad = || {
        format!(
            "invalid age '{}': write a whole number and one unit, as eclean-dist's --time-limit: \
             {UNITS}; e.g. 180d or 6m",
            quote::bytes(s.as_bytes())
        )
    };
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: u64 = match unit {
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "m" => 30 * 86_400,
        "y" => 365 * 86_400,
        _ => return Err(bad()),
    };
    let n: u64 = n.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!(
            "age '{s}' selects every file; use --all to remove every file of a host"
        ));
    }
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(bad)
}

pub fn prune(cfg: &Config, host: &str, sel: &Selection, dry_run: bool) -> Result<PruneReport> {
    if !cfg.hosts.iter().any(|h| h == host) {
        return Err(Error::Usage(format!(
            "unknown host '{}'; known hosts: {}",
            quote::bytes(host.as_bytes()),
            cfg.hosts.join(", ")
        )));
    }
    if sel.keep.is_empty() && sel.older_than.is_none() && !sel.all {
        return Err(Error::Usage(
            "prune needs a selection: --keep-list FILE, --keep-list0 FILE, --keep-urls FILE, --older-than AGE or --all".into(),
        ));
    }
    if sel
        .keep
        .iter()
        .filter(|k| k.path.as_os_str() == "-")
        .count()
        > 1
    {
        return Err(Error::Usage(
            "only one keep list can be read from standard input (-)".into(),
        ));
    }
    let keep = if sel.keep.is_empty() {
        None
    } else {
        let mut all = HashSet::new();
        for k in &sel.keep {
            all.extend(read_keep_list(k)?);
        }
        if all.is_empty() && !sel.all {
            let lists: Vec<String> = sel
                .keep
                .iter()
                .map(|k| format!("{} {}", k.form.flag(), quote::path(&k.path)))
                .collect();
            return Err(Error::Usage(format!(
                "{} names no file, which would remove everything; use --all to empty a host",
                lists.join(" and ")
            )));
        }
        Some(all)
    };
    let (layout, problems) = Layout::open_existing(&cfg.root, &[host.to_string()])?;
    let Some(dir) = layout.hosts.first() else {
        return Err(Error::Refused(problems.join("; ")));
    };
    let filter = NameFilter::new(&cfg.ignore)?;
    let listing = engine::list_candidates(dir.fd(), &dir.path, &filter)
        .map_err(|e| Error::sys(&dir.path, e))?;
    let now = SystemTime::now();
    let mut files = listing.files;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut report = PruneReport {
        host: host.to_string(),
        dry_run,
        files_removed: 0,
        bytes_freed: 0,
        bytes_still_held: 0,
        removed: Vec::new(),
        errors: Vec::new(),
    };
    let selected: Vec<_> = files
        .iter()
        .filter(|(name, st)| {
            keep.as_ref().is_none_or(|k| !k.contains(name))
                && sel.older_than.is_none_or(|d| engine::age(st, now) >= d)
        })
        .collect();
    hold_back(
        host,
        sel,
        keep.as_ref(),
        files.len(),
        selected.len(),
        &files,
    )?;
    for (name, st) in selected {
        let (name, st) = (name.clone(), *st);
        match engine::remove_candidate(dir.fd(), &dir.path, &name, &st, dry_run) {
            Ok(freed) => {
                report.files_removed += 1;
                if freed {
                    report.bytes_freed += st.size;
                } else {
                    report.bytes_still_held += st.size;
                }
                report.removed.push(Removed {
                    name: quote::name(&name).to_string(),
                    bytes: st.size,
                    freed,
                });
                if !dry_run {
                    tracing::info!(path = %quote::path(&dir.path.join(&name)), freed, "pruned");
                }
            }
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    Ok(report)
}

/// The two guards against a selection that was probably not meant; both
/// hold back the whole prune (dry run alike) before anything is removed:
/// keep lists naming none of the host's files (a list for another host,
/// URLs given as names, a stale list) need `--force`; a selection taking
/// every file of the host needs `--all`.
fn hold_back(
    host: &str,
    sel: &Selection,
    keep: Option<&HashSet<OsString>>,
    files: usize,
    selected: usize,
    listed: &[(OsString, crate::fsops::FileStat)],
) -> Result<()> {
    if files == 0 {
        return Ok(());
    }
    let everything = selected == files;
    if let Some(k) = keep
        && !sel.force
        && !sel.all
        && !listed.iter().any(|(n, _)| k.contains(n))
    {
        let fix = if everything {
            "if it is right and the host should be emptied, add --all"
        } else {
            "if it is right, add --force"
        };
        return Err(Error::HeldBack(format!(
            "nothing removed: the keep list names {}, none of them among the {} of host {host} \
             (a list for another host? URLs, which go to --keep-urls?); {fix}",
            count(k.len(), "file"),
            count(files, "file")
        )));
    }
    if everything && !sel.all {
        return Err(Error::HeldBack(format!(
            "nothing removed: the selection takes every file of host {host} ({}); add --all \
             if the host should be emptied",
            count(files, "file")
        )));
    }
    Ok(())
}

/// "1 file", "3 files".
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

pub fn render(r: &PruneReport) -> String {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    let mut o = String::new();
    for f in &r.removed {
        o.push_str(&format!(
            "{verb} {}{}\n",
            f.name,
            if f.freed {
                ""
            } else {
                " (still held by another host)"
            }
        ));
    }
    for e in &r.errors {
        o.push_str(&format!("error: {e}\n"));
    }
    o.push_str(&format!(
        "host {}: {verb} {} files; {} freed, {} still held by other hosts\n",
        r.host,
        r.files_removed,
        crate::status::human(r.bytes_freed),
        crate::status::human(r.bytes_still_held)
    ));
    o
}

/// Parses a keep list written one name per line. Nothing is trimmed: a
/// line is the name, byte for byte, except that
/// - a `#` at the start of a line or after a blank (space or tab) that is
///   not escaped starts a comment, which ends the line; the blanks before
///   it go with it (a name ending in a blank is written with `\ `); a
///   line left empty is skipped;
/// - a `\r` right before the `\n` is part of a CRLF line ending (a name
///   ending in CR is written `\r`), and a byte-order mark (U+FEFF) that
///   starts a line is dropped (a name starting with it is written
///   `\u{feff}`);
/// - a backslash starts an escape ([`unescape_name`]): the form distlink
///   prints names in, so a printed name can be pasted into a list.
///
/// Spaces and tabs at the ends of a line (not escaped) are kept as part
/// of the name, and the name without them is kept too: a stray blank
/// never costs a file.
///
/// A name holding `/` is refused (a keep list names files, not paths: a
/// list of paths would match nothing and remove everything), a URL with
/// a pointer to `--keep-urls`, and a raw NUL byte (a NUL-separated list
/// is read with `--keep-list0`).
pub fn parse_keep_lines(bytes: &[u8]) -> std::result::Result<HashSet<OsString>, String> {
    let mut names = HashSet::new();
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    // A byte-order mark (an editor's, or one per list joined with `cat`)
    // is not part of a name: distlink writes U+FEFF as `\u{feff}`.
    let lines: Vec<&[u8]> = lines
        .into_iter()
        .map(|l| l.strip_prefix(BOM).unwrap_or(l))
        .map(|l| strip_comment(l.strip_suffix(b"\r").unwrap_or(l)))
        .collect();
    // What emerge prints is the likeliest wrong list: said first.
    if let Some(k) = lines.iter().position(|l| l.windows(3).any(|w| w == b"://")) {
        return Err(format!(
            "line {}: is a URL; a keep list holds file names. For what emerge --fetchonly \
             prints, use --keep-urls FILE",
            k + 1
        ));
    }
    for (k, line) in lines.into_iter().enumerate() {
        let at = |what: String| format!("line {}: {what}", k + 1);
        if line.is_empty() {
            continue;
        }
        if line.contains(&0) {
            return Err(at(
                "holds a NUL byte (a NUL-separated list is read with --keep-list0)".into(),
            ));
        }
        let name = unescape_name(line).map_err(at)?;
        keep_name(&mut names, name).map_err(at)?;
        // Blanks at a line's ends are more often stray (pasted from a
        // terminal) than part of a name: the name without them is kept
        // too. Keeping a name no file has costs nothing.
        let trimmed = trim_blanks(line);
        if trimmed.len() != line.len() && !trimmed.is_empty() {
            keep_name(&mut names, unescape_name(trimmed).map_err(at)?).map_err(at)?;
        }
    }
    Ok(names)
}

/// A line without the spaces and tabs at its start and end; an escaped
/// one (`\ `) at the end stays.
fn trim_blanks(line: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = line.iter().position(|b| !blank(b)).unwrap_or(line.len());
    let mut end = line.len();
    while end > start && blank(&line[end - 1]) {
        let slashes = line[start..end - 1]
            .iter()
            .rev()
            .take_while(|b| **b == b'\\')
            .count();
        if slashes % 2 == 1 {
            break;
        }
        end -= 1;
    }
    &line[start..end]
}

/// U+FEFF in UTF-8, the byte-order mark some editors write first.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// A keep list line without its comment: a `#` at the start of the line
/// or after a blank (space or tab) that is not escaped starts one, and the
/// blanks before it go with it. Nothing else is trimmed.
fn strip_comment(line: &[u8]) -> &[u8] {
    let (mut i, mut end, mut after_blank) = (0, 0, true);
    while i < line.len() {
        match line[i] {
            b'\\' => {
                i = (i + 2).min(line.len());
                end = i;
                after_blank = false;
            }
            b'#' if after_blank => return &line[..end],
            b' ' | b'\t' => {
                i += 1;
                after_blank = true;
            }
            _ => {
                i += 1;
                end = i;
                after_blank = false;
            }
        }
    }
    line
}

/// Reads what `emerge --pretend --fetchonly` prints: for every distfile,
/// a line of the URLs it can be fetched from. Every word holding `://` is
/// a URL, and both names Portage can have given its file are kept:
/// - what follows the word's last `/`, as it is (query, fragment, `%`
///   and all): Portage's name for a file fetched from upstream
///   (`os.path.basename` of the SRC_URI word), the only URL printed for
///   a file that may not be mirrored;
/// - its last path segment without query or fragment, percent-decoded:
///   the name in a mirror's URL, which Portage percent-encodes.
///
/// The word after a `->` (a SRC_URI's rename, pasted in) is a name too.
///
/// Keeping a name no file has costs nothing; missing one removes a file.
/// Other words (emerge's messages) are ignored. Text holding no URL at
/// all is refused: it is not what emerge prints.
pub fn parse_keep_urls(bytes: &[u8]) -> std::result::Result<HashSet<OsString>, String> {
    let mut names = HashSet::new();
    let mut urls = 0;
    let mut renamed = false;
    for word in bytes.split(|b| b.is_ascii_whitespace()) {
        if word.is_empty() {
            continue;
        }
        // SRC_URI's `URL -> NAME`: NAME is the distfile's name.
        if std::mem::replace(&mut renamed, word == b"->") {
            if !word.contains(&b'/') && !word.contains(&0) && word != b"." && word != b".." {
                names.insert(OsString::from_vec(word.to_vec()));
            }
            continue;
        }
        let Some(at) = word.windows(3).position(|w| w == b"://") else {
            continue;
        };
        urls += 1;
        let rest = &word[at + 3..];
        // The path starts after the host; query and fragment are not part
        // of it.
        let Some(slash) = rest.iter().position(|b| *b == b'/') else {
            continue;
        };
        let path = &rest[slash..];
        let path = &path[..path
            .iter()
            .position(|b| *b == b'?' || *b == b'#')
            .unwrap_or(path.len())];
        let last = path.rsplit(|b| *b == b'/').next().unwrap_or_default();
        let upstream = rest.rsplit(|b| *b == b'/').next().unwrap_or_default();
        for name in [percent_decode(last), upstream.to_vec()] {
            if name.is_empty()
                || name == b"."
                || name == b".."
                || name.contains(&b'/')
                || name.contains(&0)
            {
                continue;
            }
            names.insert(OsString::from_vec(name));
        }
    }
    if urls == 0 {
        return Err(
            "holds no URL: expected what `emerge --pretend --fetchonly` prints (one line of URLs \
             per distfile)"
                .into(),
        );
    }
    Ok(names)
}

/// `%HH` → that byte; anything else as it is.
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = s
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (s[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Parses a NUL-separated keep list (as `find DIR -maxdepth 1 -type f
/// -printf '%f\0'` writes it): every record is a name as it is, no
/// escapes, no comments; empty records are skipped.
pub fn parse_keep_nul(bytes: &[u8]) -> std::result::Result<HashSet<OsString>, String> {
    let mut names = HashSet::new();
    for (k, rec) in bytes.split(|b| *b == 0).enumerate() {
        if !rec.is_empty() {
            keep_name(&mut names, rec.to_vec()).map_err(|e| format!("record {}: {e}", k + 1))?;
        }
    }
    Ok(names)
}

fn keep_name(names: &mut HashSet<OsString>, name: Vec<u8>) -> std::result::Result<(), String> {
    if name.contains(&b'/') {
        return Err(format!(
            "{} holds '/': a keep list holds names, not a path",
            quote::name(std::ffi::OsStr::from_bytes(&name))
        ));
    }
    names.insert(OsString::from_vec(name));
    Ok(())
}

/// Decodes one escaped name: `\\` backslash, `\n` newline, `\t` tab,
/// `\r` carriage return, `\xHH` one raw byte (two hex digits), `\u{H..}`
/// one Unicode character (1 to 6 hex digits, UTF-8 encoded), and `\#`,
/// `\ `, `\'`, `\"` for the character itself (`\#` lets a name start
/// with `#`). Any other escape, a truncated one, or one that means a NUL
/// byte (which no name can hold) is an error.
pub fn unescape_name(s: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    let hex = |d: &[u8]| {
        std::str::from_utf8(d)
            .ok()
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|t| u32::from_str_radix(t, 16).ok())
    };
    while i < s.len() {
        let b = s[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&e) = s.get(i) else {
            return Err("ends in a lone backslash (a backslash is written \\\\)".into());
        };
        i += 1;
        match e {
            b'\\' | b'#' | b' ' | b'\'' | b'"' => out.push(e),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'x' => {
                let v = s
                    .get(i..i + 2)
                    .and_then(hex)
                    .ok_or("\\x needs two hex digits")?;
                if v == 0 {
                    return Err("\\x00: a name cannot hold a NUL byte".into());
                }
                out.push(v as u8);
                i += 2;
            }
            b'u' => {
                let body = s
                    .get(i..)
                    .and_then(|r| r.strip_prefix(b"{"))
                    .and_then(|r| r.iter().position(|c| *c == b'}').map(|end| &r[..end]))
                    .filter(|d| d.len() <= 6)
                    .ok_or("\\u needs {H..}: 1 to 6 hex digits in braces")?;
                let c = hex(body)
                    .and_then(char::from_u32)
                    .filter(|c| *c != '\0')
                    .ok_or("\\u{..} is not a Unicode character a name can hold")?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                i += body.len() + 2;
            }
            other => {
                return Err(format!(
                    "unknown escape \\{} (a backslash is written \\\\)",
                    quote::name(std::ffi::OsStr::from_bytes(&[other]))
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
        let mut v: Vec<Vec<u8>> = parse_keep_lines(s)?
            .into_iter()
            .map(OsStringExt::into_vec)
            .collect();
        v.sort();
        Ok(v)
    }

    #[test]
    fn every_name_as_distlink_prints_it_reads_back_as_itself() {
        // Every byte a name can hold, alone and between others.
        for b in 1..=255u8 {
            if b == b'/' {
                continue;
            }
            for name in [vec![b], vec![b'a', b, b'z'], vec![b, b, b'.', b]] {
                let shown = quote::name(std::ffi::OsStr::from_bytes(&name)).to_string();
                assert_eq!(unescape_name(shown.as_bytes()), Ok(name.clone()), "{shown}");
            }
        }
    }

    #[test]
    fn unicode_escapes_and_the_characters_themselves() {
        assert_eq!(
            unescape_name(br"a\u{7f}b\u{1B}"),
            Ok(b"a\x7fb\x1b".to_vec())
        );
        assert_eq!(unescape_name(br"\u{e9}"), Ok("é".as_bytes().to_vec()));
        assert_eq!(
            unescape_name("é ü".as_bytes()),
            Ok("é ü".as_bytes().to_vec())
        );
        assert_eq!(unescape_name(br#"\#\ x\'\""#), Ok(b"# x'\"".to_vec()));
        for bad in [
            &br"a\"[..],
            br"\q",
            br"\x",
            br"\xg0",
            br"\x0",
            br"\x00",
            br"\u",
            br"\u{}",
            br"\u{0}",
            br"\u{d800}",
            br"\u{1234567}",
            br"\u{41",
        ] {
            assert!(unescape_name(bad).is_err(), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn keep_lines_keep_names_exactly_and_skip_comments_and_blank_lines() {
        assert_eq!(
            lines(b"# c\n\n a \r\n\\#b\nc\\r\r\n  # a comment\nlast # note\nx#y z\\ #w\ttab\t# t"),
            Ok(vec![
                b" a ".to_vec(),
                b"#b".to_vec(),
                b"a".to_vec(),
                b"c\r".to_vec(),
                b"last".to_vec(),
                b"x#y z #w\ttab".to_vec(),
            ])
        );
        assert_eq!(lines(b"\n# only comments\n\r\n"), Ok(vec![]));
        let e = lines(b"a\nb/c\n").unwrap_err();
        assert!(e.starts_with("line 2:") && e.contains("not a path"), "{e}");
        let e = lines(b"a\0b\0").unwrap_err();
        assert!(e.contains("--keep-list0"), "{e}");
    }

    #[test]
    fn ages_read_as_eclean_dist_reads_them() {
        let d = |n: u64| Duration::from_secs(n * 86_400);
        assert_eq!(parse_age("6m"), Ok(d(180)));
        assert_eq!(parse_age("1y"), Ok(d(365)));
        assert_eq!(parse_age("2w"), Ok(d(14)));
        assert_eq!(parse_age("180d"), Ok(d(180)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        for bad in [
            "",
            "m",
            "6",
            "6M",
            "6min",
            "5s",
            "1h30m",
            "1.5d",
            "-1d",
            " 6m",
            "6m ",
            "+6m",
            "99999999999999999999y",
        ] {
            let e = parse_age(bad).unwrap_err();
            assert!(e.contains("m (months of 30 days)"), "{bad}: {e}");
        }
        assert!(parse_age("0d").unwrap_err().contains("--all"));
    }

    fn urls(s: &str) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = parse_keep_urls(s.as_bytes())
            .unwrap_or_default()
            .into_iter()
            .map(OsStringExt::into_vec)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn keep_urls_take_each_urls_file_name_and_ignore_other_words() {
        assert_eq!(
            urls(
                "Calculating dependencies... done!\n\
                 https://distfiles.gentoo.org/distfiles/6a/gcc-14.2.0.tar.xz https://ftp.gnu.org/gnu/gcc/gcc-14.2.0/gcc-14.2.0.tar.xz \n\
                 \n\
                 http://m/d/libsigc%2B%2B-3.6.0.tar.xz?raw=1#x ftp://h/a%20b%ZZ.tgz https://host-only.example\n\
                 https://h/o/v1.zip  ->  p-1.zip -> a/b ->"
            ),
            vec![
                b"a b%ZZ.tgz".to_vec(),
                b"a%20b%ZZ.tgz".to_vec(),
                b"gcc-14.2.0.tar.xz".to_vec(),
                b"libsigc%2B%2B-3.6.0.tar.xz?raw=1#x".to_vec(),
                b"libsigc++-3.6.0.tar.xz".to_vec(),
                b"p-1.zip".to_vec(),
                b"v1.zip".to_vec(),
            ]
        );
        assert!(parse_keep_urls(b"foo.tar.gz\nbar.tar.gz\n").is_err());
        // Never a name holding `/`, `.` or `..`; `%2F` only as it is.
        assert_eq!(
            urls("https://h/d/a%2Fb https://h/d/..  https://h/d/ https://h/d/. https://h/x?p=a/.."),
            vec![b"a%2Fb".to_vec(), b"x".to_vec()]
        );
    }

    #[test]
    fn a_url_in_a_keep_list_points_to_keep_urls() {
        let e = lines(b"a\nhttps://h/d/foo.tar.gz\n").unwrap_err();
        assert!(e.starts_with("line 2:") && e.contains("--keep-urls"), "{e}");
        assert_eq!(
            lines(b"foo.tar # from https://h/d/foo.tar\n"),
            Ok(vec![b"foo.tar".to_vec()])
        );
    }

    proptest::proptest! {
        /// Every name as distlink prints it, pasted into a keep list alone
        /// or followed by a comment, reads back as the name.
        #[test]
        fn a_printed_name_pasted_with_or_without_a_comment_reads_back(
            name in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::any::<u8>(),
                    proptest::strategy::Just(b' '),
                    proptest::strategy::Just(b'#'),
                    proptest::strategy::Just(b'\t'),
                ],
                1..24,
            )
        ) {
            proptest::prop_assume!(!name.contains(&b'/') && !name.contains(&0));
            let shown = quote::name(std::ffi::OsStr::from_bytes(&name)).to_string();
            for line in [shown.clone(), format!("{shown} # note"), format!("{shown}\t#")] {
                // The name, and perhaps the name without (some of) the
                // blanks at its ends.
                let blank = |b: &u8| *b == b' ' || *b == b'\t';
                let trimmed = |n: &Vec<u8>| {
                    (0..=name.len()).any(|i| {
                        name[..i].iter().all(blank)
                            && name[i..].starts_with(n)
                            && name[i + n.len()..].iter().all(blank)
                    })
                };
                let got = lines(line.as_bytes());
                proptest::prop_assert!(
                    got.as_ref()
                        .is_ok_and(|v| v.contains(&name) && v.iter().all(trimmed)),
                    "{}: {:?}", line, got
                );
            }
        }
    }

    #[test]
    fn keep_nul_takes_records_as_they_are() {
        let mut v: Vec<Vec<u8>> = parse_keep_nul(b"a\\n\0# b \r\n\0\0")
            .unwrap_or_default()
            .into_iter()
            .map(OsStringExt::into_vec)
            .collect();
        v.sort();
        assert_eq!(v, vec![b"# b \r\n".to_vec(), b"a\\n".to_vec()]);
        assert!(parse_keep_nul(b"./x\0").is_err());
    }
}
