//! Where log lines go: straight to stderr, except while the daemon's
//! event loop holds them. Then they are gathered and written once per
//! loop iteration, before the daemon waits again: a burst of 10,000
//! arrivals logs 10,000 lines, and one `write` per line to a pipe or the
//! journal cost the daemon 10–20% of its time at 4 hosts.
//!
//! Every event is written as exactly one line: a control or hidden
//! character anywhere but at its end is escaped here ([`one_line`]), so a
//! name that reached a log call without `crate::quote` still cannot forge a
//! line or drive a terminal. (ANSI colours are off for the same reason.)

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static HOLD: AtomicBool = AtomicBool::new(false);
static HELD: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Written out at once beyond this much, whatever the loop is doing.
const MAX_HELD: usize = 64 * 1024;

/// The log writer. `tracing_subscriber`'s fmt layer formats each event
/// into a buffer and hands it over with one `write_all`, so every `write`
/// here gets one whole event; it is taken whole, never in part.
pub struct Writer {
    /// The events are JSON objects (`--log-format json`).
    pub json: bool,
}

impl Write for Writer {
    fn write(&mut self, event: &[u8]) -> std::io::Result<usize> {
        if HOLD.load(Ordering::Relaxed) {
            let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
            one_line(event, self.json, &mut held);
            if held.len() >= MAX_HELD {
                write_out(&mut held);
            }
            return Ok(event.len());
        }
        if is_plain(event) {
            std::io::stderr().write_all(event)?;
        } else {
            let mut line = Vec::with_capacity(event.len() + 16);
            one_line(event, self.json, &mut line);
            std::io::stderr().write_all(&line)?;
        }
        Ok(event.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Printable ASCII up to a final newline: written as it is.
fn is_plain(event: &[u8]) -> bool {
    let body = event.strip_suffix(b"\n").unwrap_or(event);
    body.iter().all(|b| (b' '..=b'~').contains(b))
}

/// Appends one event to `out` as one line: every control or hidden
/// character ([`crate::quote::is_hidden`]) but a final newline is escaped,
/// as `\n`, `\t`, `\r` or, for the others, `\u{HEX}` in text and `\uXXXX` in
/// JSON (where only a string can hold one, and that is its JSON escape); a
/// byte that is not UTF-8 (the fmt layer writes a `String`, so none) as
/// `\xHH` in text and U+FFFD in JSON. Backslashes are left alone: this is
/// the guard behind `crate::quote`, not a second quoting.
pub fn one_line(event: &[u8], json: bool, out: &mut Vec<u8>) {
    if is_plain(event) {
        out.extend_from_slice(event);
        return;
    }
    let (body, end) = match event.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (event, &b""[..]),
    };
    for chunk in body.utf8_chunks() {
        let valid = chunk.valid();
        let mut plain = 0;
        for (i, c) in valid.char_indices() {
            if !crate::quote::is_hidden(c) {
                continue;
            }
            out.extend_from_slice(&valid.as_bytes()[plain..i]);
            let _ = match c {
                '\n' => out.write_all(b"\\n"),
                '\t' => out.write_all(b"\\t"),
                '\r' => out.write_all(b"\\r"),
                // Every hidden character is in the BMP: four digits do.
                c if json => write!(out, "\\u{:04x}", c as u32),
                c => write!(out, "\\u{{{:x}}}", c as u32),
            };
            plain = i + c.len_utf8();
        }
        out.extend_from_slice(&valid.as_bytes()[plain..]);
        for b in chunk.invalid() {
            let _ = if json {
                out.write_all("\u{fffd}".as_bytes())
            } else {
                write!(out, "\\x{b:02x}")
            };
        }
    }
    out.extend_from_slice(end);
}

fn write_out(held: &mut Vec<u8>) {
    // Nowhere to report a failed log write; the lines are dropped.
    let _ = std::io::stderr().write_all(held);
    held.clear();
    if held.capacity() > MAX_HELD * 2 {
        held.shrink_to(MAX_HELD);
    }
}

/// Writes out the lines held so far.
pub fn flush() {
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if !held.is_empty() {
        write_out(&mut held);
    }
}

/// Holds log lines until [`flush`] or until the guard is dropped (which
/// writes them out, on unwinding too).
#[must_use]
pub struct Hold(());

pub fn hold() -> Hold {
    HOLD.store(true, Ordering::Relaxed);
    Hold(())
}

impl Drop for Hold {
    fn drop(&mut self) {
        HOLD.store(false, Ordering::Relaxed);
        flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(event: &[u8], json: bool) -> String {
        let mut out = Vec::new();
        one_line(event, json, &mut out);
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn controls_are_escaped_and_the_final_newline_kept() {
        assert_eq!(line(b"plain text\n", false), "plain text\n");
        assert_eq!(
            line(b"a\nforged\x1b[31m\tx\r\n", false),
            "a\\nforged\\u{1b}[31m\\tx\\r\n"
        );
        assert_eq!(
            line("rtl\u{202e}\u{85} caf\u{e9}\n".as_bytes(), false),
            "rtl\\u{202e}\\u{85} caf\u{e9}\n"
        );
        assert_eq!(line(b"x\xff\n", false), "x\\xff\n");
        assert_eq!(
            line("{\"p\":\"\u{202e}\u{1b}\"}\n".as_bytes(), true),
            "{\"p\":\"\\u202e\\u001b\"}\n"
        );
        // Backslashes are the call sites' business.
        assert_eq!(line(b"a\\nb\n", false), "a\\nb\n");
    }

    proptest! {
        #[test]
        fn any_event_is_one_line_without_controls(
            body in proptest::collection::vec(any::<u8>(), 0..64),
            json in any::<bool>(),
        ) {
            let mut event = body.clone();
            event.push(b'\n');
            let out = line(&event, json);
            prop_assert!(out.ends_with('\n'));
            prop_assert_eq!(out.matches('\n').count(), 1);
            let body = &out[..out.len() - 1];
            prop_assert!(!body.chars().any(crate::quote::is_hidden), "{:?}", out);
        }

        #[test]
        fn a_json_event_still_parses_to_the_same_value(
            s in proptest::collection::vec(
                prop_oneof![
                    any::<char>(),
                    (0u32..0xa0).prop_filter_map("a char", char::from_u32),
                    Just('\u{202e}'),
                    Just('\u{2028}'),
                    Just('\u{feff}'),
                ],
                0..32,
            )
            .prop_map(|v| v.into_iter().collect::<String>())
        ) {
            let v = serde_json::json!({ "message": "m", "path": s });
            let event = format!("{v}\n");
            let out = line(event.as_bytes(), true);
            let back: serde_json::Value = serde_json::from_str(&out).expect("JSON");
            prop_assert_eq!(back, v);
            prop_assert!(!out[..out.len() - 1].chars().any(crate::quote::is_hidden));
        }
    }
}
