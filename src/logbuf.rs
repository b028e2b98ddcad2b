//! Where log lines go: straight to stderr, except while the daemon's
//! event loop holds them. Then they are gathered and written once per
//! loop iteration, before the daemon waits again: a burst of 10,000
//! arrivals logs 10,000 lines, and one `write` per line to a pipe or the
//! journal cost the daemon 10–20% of its time at 4 hosts.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static HOLD: AtomicBool = AtomicBool::new(false);
static HELD: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Written out at once beyond this much, whatever the loop is doing.
const MAX_HELD: usize = 64 * 1024;

/// The log writer (`tracing_subscriber` gets one per line).
pub struct Writer;

impl Write for Writer {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if HOLD.load(Ordering::Relaxed) {
            let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
            held.extend_from_slice(line);
            if held.len() >= MAX_HELD {
                write_out(&mut held);
            }
            return Ok(line.len());
        }
        std::io::stderr().write(line)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
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
