//! How a name or a path is shown: in log lines (text and JSON), in the
//! output of `check`, `status`, `prune` and `migrate` (text and JSON), and
//! in error messages. File names are chosen by NFS clients, so they may
//! hold newlines, terminal escapes, bidi overrides or bytes that are not
//! UTF-8; shown raw they could forge log lines, drive the admin's
//! terminal, or make two different names look the same.
//!
//! The rule, one character (or stray byte) at a time:
//!
//! - valid UTF-8 printable characters, non-ASCII letters included, stand
//!   for themselves;
//! - `\` is shown as `\\`;
//! - a `#` at the start or right after a space is shown as `\#`, and a
//!   final space as `\ ` (a pasted name stays exact in a keep list, whose
//!   comments start there);
//! - newline, tab and carriage return are shown as `\n`, `\t`, `\r`;
//! - the other control characters (C0, DEL, C1 U+0080–U+009F) and the
//!   invisible characters that can hide or reorder text on a line (see
//!   [`is_hidden`]) are shown as `\u{HEX}`, the code point in lower-case
//!   hex without leading zeros (`\u{1b}`, `\u{202e}`);
//! - every byte that is not part of valid UTF-8 is shown as `\xHH`
//!   (two lower-case hex digits).
//!
//! The result is valid UTF-8 without a control character, so one log
//! event stays one line and JSON carries it as a plain string. Every
//! escape starts with a `\` and a literal `\` is always doubled, so the
//! form is reversible ([`unquote`]) and two different names never show
//! the same.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A name or path shown by the escaping rule (a `Display` that does not
/// allocate: `tracing` fields take `%quote::path(&p)`).
#[derive(Clone, Copy)]
pub struct Quoted<'a>(&'a [u8]);

/// A file name, escaped.
pub fn name(n: &OsStr) -> Quoted<'_> {
    Quoted(n.as_bytes())
}

/// A path, escaped (every component alike: host dirs too).
pub fn path(p: &Path) -> Quoted<'_> {
    Quoted(p.as_os_str().as_bytes())
}

/// Raw bytes, escaped.
pub fn bytes(b: &[u8]) -> Quoted<'_> {
    Quoted(b)
}

/// Characters that are shown as `\u{HEX}` (besides `\n`, `\t`, `\r`):
/// controls (C0, DEL, C1) and the invisible characters that can hide or
/// reorder text on a terminal line: the Arabic letter mark (U+061C), the
/// Mongolian vowel separator (U+180E), zero-width spaces and joiners and
/// the direction marks (U+200B–U+200F), the line and paragraph separators
/// and the bidi embeddings and overrides (U+2028–U+202E), the word joiner,
/// invisible operators and bidi isolates (U+2060–U+2069) and the byte
/// order mark (U+FEFF).
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        )
}

/// Writes a character that [`is_hidden`] or is `\` in its escaped form.
fn escape_char(c: char, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match c {
        '\\' => f.write_str("\\\\"),
        '\n' => f.write_str("\\n"),
        '\t' => f.write_str("\\t"),
        '\r' => f.write_str("\\r"),
        '#' => f.write_str("\\#"),
        ' ' => f.write_str("\\ "),
        c => write!(f, "\\u{{{:x}}}", c as u32),
    }
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = self.0.len();
        let mut at = 0;
        // At the start, or right after a space: a `#` here would start a
        // comment in a keep list.
        let mut after_blank = true;
        for chunk in self.0.utf8_chunks() {
            let valid = chunk.valid();
            // Runs of characters shown as they are go out in one piece.
            let mut plain = 0;
            for (i, c) in valid.char_indices() {
                let comment = c == '#' && after_blank;
                // A final space is kept exact before a keep list's comment.
                let final_space = c == ' ' && at + i + 1 == last;
                if c == '\\' || is_hidden(c) || comment || final_space {
                    f.write_str(&valid[plain..i])?;
                    escape_char(c, f)?;
                    plain = i + c.len_utf8();
                }
                after_blank = c == ' ';
            }
            f.write_str(&valid[plain..])?;
            at += valid.len();
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
                after_blank = false;
            }
            at += chunk.invalid().len();
        }
        Ok(())
    }
}

/// The bytes an escaped name stands for: the inverse of the rule (`None`
/// for text that no name escapes to, e.g. a lone `\`).
pub fn unquote(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            continue;
        }
        match it.next()? {
            '\\' => out.push(b'\\'),
            'n' => out.push(b'\n'),
            't' => out.push(b'\t'),
            'r' => out.push(b'\r'),
            '#' => out.push(b'#'),
            ' ' => out.push(b' '),
            'x' => {
                let hex: String = it.by_ref().take(2).collect();
                if hex.len() != 2 {
                    return None;
                }
                out.push(u8::from_str_radix(&hex, 16).ok()?);
            }
            'u' => {
                if it.next()? != '{' {
                    return None;
                }
                let mut hex = String::new();
                loop {
                    match it.next()? {
                        '}' => break,
                        h => hex.push(h),
                    }
                }
                let c = char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(b: &[u8]) -> String {
        bytes(b).to_string()
    }

    #[test]
    fn table() {
        let cases: &[(&[u8], &str)] = &[
            (b"foo-1.0.tar.gz", "foo-1.0.tar.gz"),
            ("café-1.0.tar.gz".as_bytes(), "café-1.0.tar.gz"),
            ("日本語.tar".as_bytes(), "日本語.tar"),
            (b"a\\b", r"a\\b"),
            (b"a\\xffb", r"a\\xffb"),
            (b"line\nbreak\ttab\rcr", r"line\nbreak\ttab\rcr"),
            (b"\x1b[31mred", r"\u{1b}[31mred"),
            (b"nul\0del\x7f", r"nul\u{0}del\u{7f}"),
            ("c1\u{85}\u{9b}".as_bytes(), r"c1\u{85}\u{9b}"),
            ("rtl\u{202e}rat.gz".as_bytes(), r"rtl\u{202e}rat.gz"),
            ("iso\u{2066}x\u{2069}".as_bytes(), r"iso\u{2066}x\u{2069}"),
            ("ls\u{2028}ps\u{2029}".as_bytes(), r"ls\u{2028}ps\u{2029}"),
            ("zw\u{200b}bom\u{feff}".as_bytes(), r"zw\u{200b}bom\u{feff}"),
            (b"x\xff", r"x\xff"),
            (b"x\xfe", r"x\xfe"),
            // A truncated sequence is shown byte by byte.
            (b"caf\xc3", r"caf\xc3"),
            (b"\xe2\x80", r"\xe2\x80"),
            (b"", ""),
            // A `#` that would start a keep list's comment, a final space.
            (b"#foo.tar", r"\#foo.tar"),
            (b"a #b", r"a \#b"),
            (b"a#b c#", "a#b c#"),
            (b"x ", r"x\ "),
            (b"a b", "a b"),
        ];
        for (raw, shown) in cases {
            assert_eq!(q(raw), *shown, "{}", raw.escape_ascii());
            assert_eq!(unquote(shown).as_deref(), Some(*raw), "{shown}");
        }
        assert_eq!(
            path(Path::new("/r/a/x\ny")).to_string(),
            r"/r/a/x\ny".to_string()
        );
    }

    #[test]
    fn text_no_name_escapes_to_is_refused() {
        for s in [
            r"\",
            r"\q",
            r"\x",
            r"\xf",
            r"\xzz",
            r"\u",
            r"\u{",
            r"\u{d800}",
            r"\u41",
        ] {
            assert_eq!(unquote(s), None, "{s}");
        }
    }

    /// Names that printed alike before (a lossy U+FFFD, an unescaped
    /// backslash) print differently. (In general two names never print
    /// alike: decoding gives each back, see the properties below.)
    #[test]
    fn look_alikes_print_differently() {
        let pairs: &[(&[u8], &[u8])] = &[
            (b"x\xff", b"x\xfe"),
            (b"x\xff", "x\u{fffd}".as_bytes()),
            (b"\\xff", b"\xff"),
            (b"\\n", b"\n"),
            (b"\\u{1b}", b"\x1b"),
            ("caf\u{e9}".as_bytes(), b"caf\\xc3\\xa9"),
        ];
        for (a, b) in pairs {
            assert_ne!(q(a), q(b), "{} / {}", a.escape_ascii(), b.escape_ascii());
        }
    }

    /// Byte strings rich in what matters: any byte, any character,
    /// backslashes and text that looks like an escape.
    fn names() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            any::<u8>().prop_map(|b| vec![b]),
            any::<char>().prop_map(|c| c.to_string().into_bytes()),
            (0x80u32..0xa0).prop_map(|c| char::from_u32(c).unwrap_or('?').to_string().into_bytes()),
            Just(b"\\".to_vec()),
            Just(b"\\x41".to_vec()),
            Just(b"\\u{1b}".to_vec()),
            Just(b"\n".to_vec()),
            Just(b" ".to_vec()),
            Just(b"#".to_vec()),
            Just(b" #".to_vec()),
            Just("\u{202e}".as_bytes().to_vec()),
            "[a-z.]{1,4}".prop_map(String::into_bytes),
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn decoding_gives_back_the_bytes_and_no_control_gets_through(b in names()) {
            let shown = q(&b);
            prop_assert_eq!(unquote(&shown), Some(b.clone()), "{}", shown);
            prop_assert!(!shown.chars().any(|c| c.is_control() || is_hidden(c)), "{:?}", shown);
        }

        #[test]
        fn any_bytes_round_trip(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(unquote(&q(&b)), Some(b));
        }
    }
}
