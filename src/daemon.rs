//! `distlink run` and `distlink sync`: start-up, the event loop, signals,
//! reload and readiness.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::time::{Duration, Instant, SystemTime};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::config::{Config, Overrides};
use crate::engine::{self, Arrival, Engine};
use crate::error::{Error, Result};
use crate::fskind::{self, Chosen};
use crate::fsops;
use crate::identity;
use crate::layout::Layout;
use crate::logbuf;
use crate::names::NameFilter;
use crate::quote;
use crate::settle::{self, Ready, Seen, Settler, Stamp, Verdict, Writers};
use crate::state::{Inspected, Store};
use crate::watch::{Kind, WatchEvent, Watcher};

/// How long the record may trail the links it describes.
const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// How long one round of distributing may run before the daemon reads the
/// inotify queue again: about 150 files at 4 hosts, 10 at 100 hosts. Its
/// own links queue one event per link; reading between rounds keeps the
/// kernel queue far from overflowing (an overflow costs a full rescan).
const ROUND: Duration = Duration::from_millis(20);

/// While the record cannot be written, how often writing it is tried.
const RECORD_RETRY: Duration = Duration::from_secs(1);

/// How often owed links (failed earlier, or owed to a new host) are looked
/// at; each one that keeps failing backs off on its own (see the engine).
const RETRY_EVERY: Duration = Duration::from_secs(10);

/// How start-up treats what it checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// `run` and `sync`: missing host dirs and state dir are created, the
    /// lock is taken, the record written. `adopt`: `sync --adopt`.
    Open { adopt: bool },
    /// `run --check`: the same checks in the same order; nothing is
    /// created, locked or changed.
    Check,
}

/// What start-up opened.
enum Started {
    Engine(Box<Engine>),
    Checked(Inspected),
}

/// Opens the record (taking the lock) and the layout: the start of `run`
/// and `sync`. Without a record, a root whose host dirs already hold files
/// is refused: guessing would either resurrect prunes or strand files.
pub fn open_engine(cfg: &Config, adopt: bool) -> Result<Engine> {
    open_engine_or_wait(cfg, adopt, None)?
        .ok_or_else(|| Error::Refused("the state lock is held by another process".into()))
}

/// [`open_engine`]; with `wait`, a lock held by another process is waited
/// for (see [`Store::open_for_root_or_wait`]): `None` when the wait was
/// given up.
fn open_engine_or_wait(
    cfg: &Config,
    adopt: bool,
    wait: Option<&mut dyn FnMut(Option<u32>) -> bool>,
) -> Result<Option<Engine>> {
    Ok(match start_up(cfg, Start::Open { adopt }, wait)? {
        Some(Started::Engine(engine)) => Some(*engine),
        Some(Started::Checked(_)) => unreachable!("Start::Open opens the engine"),
        None => None,
    })
}

/// `distlink run --check`: every check `run` makes before it starts, with
/// its exit code and message, creating, locking and changing nothing. A
/// running daemon is not an error.
pub fn check(cfg: &Config) -> Result<Inspected> {
    // As `run`: the watch mode first (an explicit inotify where it would
    // miss writes is refused).
    watch_mode(cfg)?;
    match start_up(cfg, Start::Check, None)? {
        Some(Started::Checked(found)) => Ok(found),
        _ => unreachable!("Start::Check opens nothing and never waits"),
    }
}

/// Start-up, the one path `run`, `sync` and `run --check` share. What can
/// refuse a start, in this order (the configuration itself — keys, hosts,
/// globs, durations — was checked when it was loaded):
/// 1. the root exists and is a directory;
/// 2. the state dir and every dir above it are root's alone, and it lies
///    outside the root (a missing one: the dirs it would be created in);
/// 3. its files are root's, the record is readable and describes this
///    root (is the distfiles filesystem mounted?);
/// 4. every host dir is a directory, not a symlink, and all are on one
///    filesystem and one mount;
/// 5. without a record, the host dirs hold no files (else `migrate` or
///    `sync --adopt`; a record an older version left in `ROOT/.distlink`
///    is pointed at).
///
/// With `wait` (a standby), a lock another process holds is waited for
/// instead of refused: `None` when the wait was given up.
fn start_up(
    cfg: &Config,
    how: Start,
    wait: Option<&mut dyn FnMut(Option<u32>) -> bool>,
) -> Result<Option<Started>> {
    // The record is opened, and checked to describe this root, before any
    // host dir is created: an unmounted root must not be filled with new
    // empty host dirs that would make the record forget every file.
    let mut layout = Layout::open_root(&cfg.root)?;
    let (store, found) = match how {
        Start::Open { adopt } => {
            let Some(store) = Store::open_for_root_or_wait(
                &cfg.state_dir,
                &cfg.root,
                layout.root_fd(),
                adopt,
                wait,
            )?
            else {
                return Ok(None);
            };
            let found = Inspected {
                path: store.path().to_path_buf(),
                initialized: store.is_initialized(),
            };
            (Some(store), found)
        }
        Start::Check => {
            let found = Store::inspect_for_root(&cfg.state_dir, &cfg.root, layout.root_fd())?;
            (None, found)
        }
    };
    // Missing host dirs are created (only when opening).
    if store.is_some() {
        layout.open_hosts(&cfg.hosts)?;
    } else {
        layout.check_hosts(&cfg.hosts)?;
    }
    let filter = NameFilter::new(&cfg.ignore)?;
    let adopt = how == Start::Open { adopt: true };
    if !adopt && !found.initialized {
        refuse_guessing(cfg, &layout, &filter, &found.path)?;
    }
    let Some(mut store) = store else {
        return Ok(Some(Started::Checked(found)));
    };
    identity::announce(&layout);
    identity::upgrade_record(&layout, &mut store);
    let mut engine = Engine::new(layout, filter, store, cfg.dedupe);
    if adopt {
        let n = engine.adopt()?;
        for h in cfg.hosts.iter() {
            engine.store.add_host(h);
        }
        engine.store.mark_initialized();
        engine.commit()?;
        tracing::info!(
            files = n,
            "adopted the host dirs as they are: every file on disk now counts as distributed"
        );
    } else if !engine.store.is_initialized() {
        engine.sync_hosts()?;
        engine.store.mark_initialized();
        engine.commit()?;
        tracing::info!(state = %quote::path(engine.store.path()), "fresh start: new record created");
    }
    Ok(Some(Started::Engine(Box::new(engine))))
}

/// Without a record (`db`), host dirs that already hold files are refused.
fn refuse_guessing(cfg: &Config, layout: &Layout, filter: &NameFilter, db: &Path) -> Result<()> {
    let all: Vec<usize> = (0..layout.hosts.len()).collect();
    let survey = engine::survey(layout, filter, &all);
    let Some((name, holders)) = survey.present.iter().next() else {
        return Ok(());
    };
    let example = layout.hosts[holders[0].0].path.join(name);
    // Older versions kept the record inside the root: moving it keeps
    // every prune it knows of.
    let old = cfg.root.join(".distlink");
    let hint = match fsops::stat_at(layout.root_fd(), std::ffi::OsStr::new(".distlink")) {
        Ok(st) if st.is_dir() => format!(
            ". A record of an older version is in {old}: to keep its prunes, check that \
             nothing in it is a symlink or owned by anyone but root, then move \
             {old}/state.db* (with its -wal) and {old}/links.journal into {new} (replacing the empty \
             record there) and remove {old}",
            old = quote::path(&old),
            new = quote::path(&cfg.state_dir)
        ),
        _ => String::new(),
    };
    Err(Error::Refused(format!(
        "no record of what was distributed yet ({}), but the host dirs already hold files \
         (e.g. {}); distlink will not guess. Run `distlink migrate` to link every file \
         into every host, or `distlink sync --adopt` to take the host dirs as they are \
         now as already distributed{hint}",
        quote::path(db),
        quote::path(&example)
    )))
}

/// How often a standby looks whether the lock was let go.
const STANDBY_POLL: Duration = Duration::from_millis(250);

/// `run --standby`: opens the engine, waiting (instead of refusing) while
/// another process holds the state lock, e.g. the active daemon of a pair
/// on another machine sharing the state dir on CephFS. Logs once that it
/// stands by; keeps a service manager's start timeout from running out
/// meanwhile. `None` when SIGTERM/SIGINT came first. Once the lock is
/// taken, the start-up continues as usual: a full reconcile, then `ready`.
fn stand_by(cfg: &Config, signals: &mut Signals) -> Result<Option<Engine>> {
    // What would refuse the start at takeover (a record describing another
    // root, an unusable host dir, ...) refuses it now, as `run --check`
    // does: a standby that could never take over must not wait for it.
    start_up(cfg, Start::Check, None)?;
    let mut told = false;
    let mut extended: Option<Instant> = None;
    let mut wait = |holder: Option<u32>| {
        if !told {
            told = true;
            let holder = holder.map_or_else(|| "unknown".to_string(), |p| p.to_string());
            tracing::info!(state_dir = %quote::path(&cfg.state_dir), holder = %holder,
                "standing by: another distlink process holds the state lock; taking over when it lets go");
            sd_notify(&format!(
                "STATUS=standing by: the state lock is held (pid {holder})"
            ));
        }
        if extended.is_none_or(|t| t.elapsed() >= STANDBY_EXTEND / 2) {
            extended = Some(Instant::now());
            sd_notify(&format!(
                "EXTEND_TIMEOUT_USEC={}",
                STANDBY_EXTEND.as_micros()
            ));
        }
        let mut fds = [PollFd::new(signals.wake.as_fd(), PollFlags::POLLIN)];
        let _ = nix::poll::poll(
            &mut fds,
            PollTimeout::try_from(STANDBY_POLL).unwrap_or(PollTimeout::NONE),
        );
        signals.drain();
        !signals.term.load(Ordering::Relaxed)
    };
    let engine = open_engine_or_wait(cfg, false, Some(&mut wait))?;
    if engine.is_some() && told {
        tracing::info!("taking over: the state lock is ours");
    }
    Ok(engine)
}

/// How far each notice of a standby pushes a service manager's start
/// timeout back.
const STANDBY_EXTEND: Duration = Duration::from_secs(30);

/// What `sync` did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    pub counters: engine::Counters,
    pub young: usize,
    pub owed: bool,
}

/// One reconcile pass over all hosts.
pub fn sync(cfg: &Config, adopt: bool) -> Result<SyncReport> {
    let mut engine = open_engine(cfg, adopt)?;
    if adopt {
        return Ok(SyncReport::default());
    }
    engine.sync_hosts()?;
    let young = engine.reconcile(SystemTime::now(), cfg.settle, true);
    engine.commit()?;
    let young = crate::migrate::wait_for_young(&mut engine, young, cfg.settle, "sync")?;
    for y in &young {
        tracing::warn!(path = %quote::path(&engine.layout.hosts[y.host].path.join(&y.name)),
            "not distributed: still being written after the wait");
    }
    Ok(SyncReport {
        counters: engine.counters,
        young: young.len(),
        owed: engine.store.has_owed(),
    })
}

/// `distlink forget HOST`: drops a host that left the configuration from
/// the record (with the daemon stopped: it takes the state lock).
pub fn forget_host(cfg: &Config, host: &str) -> Result<()> {
    if cfg.hosts.iter().any(|h| h == host) {
        return Err(Error::Usage(format!(
            "host '{host}' is configured; remove it from `hosts` first (a configured host cannot be forgotten)"
        )));
    }
    // The same checks as every command that writes the record: a state
    // dir outside the root, a record that describes this root.
    let layout = Layout::open_root(&cfg.root)?;
    let mut store = Store::open_for_root(&cfg.state_dir, &cfg.root, layout.root_fd(), false)?;
    if !store.hosts().contains(host) {
        let known: Vec<&str> = store.absent().keys().map(String::as_str).collect();
        return Err(Error::Usage(format!(
            "the record in {} does not know host '{}'; hosts it remembers outside the configuration: {}",
            crate::quote::path(store.path()),
            crate::quote::bytes(host.as_bytes()),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    }
    store.remove_host(host);
    store.commit()?;
    tracing::info!(
        host,
        "forgotten: if it is configured again, it is seeded with every distributed file"
    );
    Ok(())
}

/// Tells systemd (Type=notify) a state change, when `$NOTIFY_SOCKET` is set.
fn sd_notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
    let addr = if let Some(abs) = bytes.strip_prefix(b"@") {
        SocketAddr::from_abstract_name(abs)
    } else {
        SocketAddr::from_pathname(std::path::Path::new(&path))
    };
    let sent = addr.and_then(|a| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &a));
    if let Err(e) = sent {
        tracing::warn!(socket = ?path, error = %e, "cannot notify the service manager");
    }
}

struct Daemon {
    cfg: Config,
    overrides: Overrides,
    engine: Engine,
    watcher: Option<Watcher>,
    /// The watch mode in use, and why it was chosen.
    mode: fskind::Choice,
    settler: Settler,
    ready: Ready,
    rescan: bool,
    next_retry: Instant,
    next_poll: Option<Instant>,
    /// Poll mode: what each tick looks at (see `engine::Poller`), and when
    /// the next full scan is due.
    poller: Option<engine::Poller>,
    next_full: Option<Instant>,
    next_commit: Option<Instant>,
    /// Until "ready": the young files the start-up scan found, and when
    /// readiness is announced even if some are still changing.
    starting: Option<(Vec<settle::Key>, Instant)>,
    /// The metrics file (`[metrics]`), rewritten every interval.
    metrics: crate::metrics::Publisher,
    /// The engine's counts already added to the record's running totals:
    /// links made, merges, new generations recorded.
    tallied: (u64, u64, u64),
    /// Host dirs found unusable, by name, with the error said (each said
    /// once, not at every poll tick, until it changes or the dir is fixed).
    unusable: HashMap<String, String>,
}

/// Signals, turned into flags plus a wake-up byte on a socket the event
/// loop polls.
struct Signals {
    term: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
    wake: UnixStream,
}

impl Signals {
    fn install() -> Result<Signals> {
        let io = |e: std::io::Error| Error::Io {
            path: "signal handlers".into(),
            source: e,
        };
        let (wake, writer) = UnixStream::pair().map_err(io)?;
        wake.set_nonblocking(true).map_err(io)?;
        writer.set_nonblocking(true).map_err(io)?;
        let term = Arc::new(AtomicBool::new(false));
        let hup = Arc::new(AtomicBool::new(false));
        for sig in [SIGTERM, SIGINT] {
            signal_hook::flag::register(sig, term.clone()).map_err(io)?;
        }
        signal_hook::flag::register(SIGHUP, hup.clone()).map_err(io)?;
        for sig in [SIGTERM, SIGINT, SIGHUP] {
            signal_hook::low_level::pipe::register(sig, writer.try_clone().map_err(io)?)
                .map_err(io)?;
        }
        ignore_sigio()?;
        Ok(Signals { term, hup, wake })
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 64];
        while matches!(std::io::Read::read(&mut self.wake, &mut buf), Ok(n) if n > 0) {}
    }
}

/// `distlink run`: reconcile, then follow events until SIGTERM/SIGINT.
pub fn run(cfg: Config, overrides: Overrides) -> Result<()> {
    let mut signals = Signals::install()?;
    // The watch mode is decided (an explicit inotify on a network
    // filesystem refused) before a standby starts waiting.
    let mode = watch_mode(&cfg)?;
    let mut engine = if cfg.standby {
        match stand_by(&cfg, &mut signals)? {
            Some(engine) => engine,
            None => {
                tracing::info!("stopped while standing by");
                return Ok(());
            }
        }
    } else {
        open_engine(&cfg, false)?
    };
    if let Some(group) = &cfg.state_group {
        engine
            .store
            .share_with_group(crate::config::group_id(group)?)?;
    }
    // Byte comparisons (which a client can make as slow as it likes) never
    // hold up the event loop.
    engine.compare_in_background().map_err(|e| Error::Io {
        path: "comparison thread".into(),
        source: e,
    })?;
    // SIGTERM/SIGINT also cut the start-up reconcile (and any later full
    // scan or seeding) short.
    engine.stop_on(signals.term.clone());
    let watcher = match mode.mode {
        Chosen::Inotify => {
            let mut w = Watcher::new().map_err(|e| Error::Io {
                path: "inotify".into(),
                source: e,
            })?;
            w.watch_all(&engine.layout)?;
            Some(w)
        }
        Chosen::Poll(_) => None,
    };
    let mut settler = Settler::new(cfg.settle);
    // Whether a file is still open for writing is asked with a read lease
    // until the filesystem says it has none.
    settler.set_probe_writers(true);
    let mut d = Daemon {
        settler,
        next_poll: match mode.mode {
            Chosen::Poll(iv) => Some(Instant::now() + iv),
            Chosen::Inotify => None,
        },
        poller: match mode.mode {
            Chosen::Poll(_) => Some(engine::Poller::new(mode.reach != fskind::Reach::Local)),
            Chosen::Inotify => None,
        },
        next_full: None,
        mode,
        cfg,
        overrides,
        engine,
        watcher,
        ready: Ready::default(),
        rescan: false,
        next_retry: Instant::now() + RETRY_EVERY,
        next_commit: None,
        starting: None,
        metrics: Default::default(),
        tallied: (0, 0, 0),
        unusable: HashMap::new(),
    };
    d.engine.track_echoes(d.watcher.is_some());
    // Watches are in place before the scan, so nothing slips between them.
    d.engine.sync_hosts()?;
    let young = d.full_scan(true);
    // "Ready" waits for the files the scan found too young to call
    // complete (a download that finished just before the start, or links
    // a killed run made but never recorded): once it is announced,
    // everything that was on disk at start-up is distributed and recorded,
    // so a prune made after it is never undone, even by a crash. A file
    // still changing after twice the settle time does not hold it up.
    if !young.is_empty() {
        tracing::info!(
            files = young.len(),
            settle = ?d.cfg.settle,
            "files younger than the settle time found; start-up completes once they are distributed"
        );
    }
    d.starting = Some((young, Instant::now() + d.cfg.settle * 2));
    if signals.term.load(Ordering::Relaxed) {
        // Stopped during the start-up: never "ready". What was linked is
        // recorded now; the next start does the rest.
        return stop_during_start_up(d);
    }
    d.announce_when_started()?;
    let res = d.event_loop(&mut signals);
    sd_notify("STOPPING=1");
    d.tally();
    let commit = d.engine.commit();
    d.metrics.stop(&d.cfg, d.engine.store.stats());
    res.and(commit)?;
    tracing::info!("stopped");
    Ok(())
}

/// The start-up check of the watch mode: which one `[watch]` gives for the
/// filesystem of the host dirs (the first one that exists, else the root),
/// or a refusal (exit 2) of inotify where the kernel does not see every
/// write. Nothing is created before it.
pub fn watch_mode(cfg: &Config) -> Result<fskind::Choice> {
    let layout = Layout::open_root(&cfg.root)?;
    let host = cfg
        .hosts
        .iter()
        .find_map(|h| fsops::open_dir_at(layout.root_fd(), std::ffi::OsStr::new(h)).ok());
    let fd = host.as_ref().map_or(layout.root_fd(), |h| h.as_fd());
    let kind = fskind::probe(fd).map_err(|e| Error::sys(&cfg.root, e))?;
    fskind::choose(&cfg.watch, &kind, &cfg.root)
}

/// Returns the memory a full scan used (tens of MiB at 100,000s of names)
/// to the system: the daemon lives on and would otherwise keep it.
fn give_back_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages; no pointers change.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Daemon {
    /// Once every young file of the start-up scan is distributed (or gone,
    /// or the wait is over): commits, then logs "ready" and tells the
    /// service manager. Does nothing before, or after it was done.
    fn announce_when_started(&mut self) -> Result<()> {
        let Some((young, until)) = self.starting.as_mut() else {
            return Ok(());
        };
        let (settler, ready) = (&self.settler, &self.ready);
        young.retain(|k| settler.contains(k) || ready.contains(k));
        // Complete ones are always waited for; ones still changing only
        // until the time is up.
        if young.iter().any(|k| ready.contains(k)) || (!young.is_empty() && Instant::now() < *until)
        {
            return Ok(());
        }
        let unsettled = young.len();
        if self.engine.commit().is_err() {
            // "ready" means recorded: it waits until the record can be
            // written (the error is logged once by the store).
            return Ok(());
        }
        self.starting = None;
        self.next_commit = None;
        tracing::info!(
            hosts = self.engine.layout.hosts.len(),
            root = %quote::path(&self.engine.layout.root),
            files = self.engine.store.file_count(),
            mode = if self.watcher.is_some() { "inotify" } else { "poll" },
            fs = %self.mode.fs_type,
            why = self.mode.why,
            unsettled,
            "ready"
        );
        sd_notify("READY=1");
        Ok(())
    }

    /// Reconciles every host dir; the files too young to call complete are
    /// settled (their age counts) and returned.
    fn full_scan(&mut self, cleanup_temps: bool) -> Vec<settle::Key> {
        // Poll mode: what the host dirs hold now is what the ticks compare
        // with; the scan looks at all of it.
        if let Some(p) = self.poller.as_mut() {
            self.engine.poll_baseline(p);
            self.next_full = Some(Instant::now() + self.cfg.watch.full_scan_every);
        }
        let sys_now = SystemTime::now();
        let t0 = Instant::now();
        let young = self
            .engine
            .reconcile(sys_now, self.cfg.settle, cleanup_temps);
        let ms = t0.elapsed().as_millis() as u64;
        self.engine.store.update_stats(|s| {
            s.full_scans += 1;
            s.last_full_scan_ms = Some(ms);
            s.last_full_scan_at = Some(unix_now());
        });
        give_back_memory();
        let now = Instant::now();
        let mut keys = Vec::with_capacity(young.len());
        for y in young {
            let stamp = Stamp::of(&y.stat);
            // Unchanged since its mtime: the time already passed counts.
            let since = now
                .checked_sub(engine::age(&y.stat, sys_now))
                .unwrap_or(now);
            let key = (y.host, y.name);
            keys.push(key.clone());
            self.settler.note(key, Seen::Scanned, stamp, since);
        }
        // Watches may have been lost with a host dir that the scan reopened.
        if let Some(w) = self.watcher.as_mut()
            && let Err(e) = w.watch_all(&self.engine.layout)
        {
            tracing::error!(error = %e, "cannot re-watch host dirs");
        }
        // Watches may have changed: the events of links made so far are
        // looked at like any other.
        self.engine.forget_echoes();
        keys
    }

    fn event_loop(&mut self, signals: &mut Signals) -> Result<()> {
        // Log lines go out once per iteration, before waiting.
        let _held = logbuf::hold();
        loop {
            let now = Instant::now();
            let mut deadline = self.next_retry;
            if let Some(t) = self.settler.next_deadline() {
                deadline = deadline.min(t);
            }
            if let Some(t) = self.next_poll {
                deadline = deadline.min(t);
            }
            if let Some(t) = self.next_full {
                deadline = deadline.min(t);
            }
            if let Some(t) = self.next_commit {
                deadline = deadline.min(t);
            }
            if let Some((_, t)) = self.starting {
                deadline = deadline.min(t);
            }
            if let Some(t) = self.metrics.next_due() {
                deadline = deadline.min(t);
            }
            if !self.ready.is_empty() {
                deadline = now;
            }
            // Rounded up: rounded down, the loop would wake (and find
            // nothing due) once more per millisecond before a deadline.
            let wait_ms = deadline
                .saturating_duration_since(now)
                .as_micros()
                .div_ceil(1000)
                .min(60_000) as u16;
            logbuf::flush();
            {
                let mut fds = vec![PollFd::new(signals.wake.as_fd(), PollFlags::POLLIN)];
                if let Some(w) = &self.watcher {
                    fds.push(PollFd::new(w.fd(), PollFlags::POLLIN));
                }
                if let Some(fd) = self.engine.verdicts_fd() {
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                }
                match nix::poll::poll(&mut fds, PollTimeout::from(wait_ms)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(Error::sys("poll", e)),
                }
            }
            signals.drain();
            let stop = signals.term.load(Ordering::Relaxed);
            if stop {
                tracing::info!("stopping on signal");
            }
            if signals.hup.swap(false, Ordering::Relaxed) {
                self.reload();
            }
            // Everything queued now is one batch.
            let batch = match self.watcher.as_mut().map(Watcher::read) {
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "inotify read failed; falling back to rescans");
                    self.watcher = None;
                    self.engine.track_echoes(false);
                    self.next_poll = Some(Instant::now());
                    self.mode.mode = Chosen::Poll(self.cfg.watch.interval);
                    self.mode.why = "inotify failed";
                    self.poller = Some(engine::Poller::new(true));
                    self.rescan = true;
                    Vec::new()
                }
                None => Vec::new(),
            };
            for ev in &batch {
                let Some(w) = self.watcher.as_ref() else {
                    break;
                };
                if let Some(we) = w.classify(ev) {
                    self.on_watch_event(we);
                }
            }
            self.work();
            self.tally();
            self.metrics.tick(&self.cfg, self.engine.store.stats());
            // Group commit: the links are made at once, the record follows
            // within COMMIT_EVERY (always after the links, so a crash in
            // between only leaves work for the next start).
            let now = Instant::now();
            let paused = !self.engine.store.can_record();
            if self.engine.pending() || paused {
                let due = *self.next_commit.get_or_insert(now + COMMIT_EVERY);
                if due <= now || stop {
                    match self.engine.commit() {
                        Ok(()) => {
                            self.next_commit = None;
                            if paused {
                                // What was skipped meanwhile is found again.
                                self.rescan = true;
                            }
                        }
                        // Logged once by the store; distribution pauses.
                        Err(_) if !stop => self.next_commit = Some(now + RECORD_RETRY),
                        Err(e) => return Err(e),
                    }
                }
            }
            if !stop {
                self.announce_when_started()?;
            }
            if stop {
                return Ok(());
            }
        }
    }

    fn on_watch_event(&mut self, ev: WatchEvent) {
        let now = Instant::now();
        match ev {
            WatchEvent::Overflow => {
                tracing::warn!("inotify queue overflowed; rescanning every host dir");
                self.engine.store.update_stats(|s| s.queue_overflows += 1);
                self.rescan = true;
                // Events were lost: a remembered link may never be echoed.
                self.engine.forget_echoes();
            }
            WatchEvent::HostGone(i) => self.host_changed(i),
            WatchEvent::Root(name) => {
                if let Some(i) = name.to_str().and_then(|n| self.engine.layout.index_of(n)) {
                    self.host_changed(i);
                }
            }
            WatchEvent::Host { host, name, kind } => {
                if !self.engine.filter.is_candidate(&name) {
                    return;
                }
                let key = (host, name);
                match kind {
                    Kind::Removed => {
                        self.engine.take_echo(key.0, &key.1);
                        self.settler.forget(&key);
                        self.ready.forget(&key);
                    }
                    Kind::MovedIn => {
                        self.engine.host_holds(key.0, &key.1);
                        self.settler.forget(&key);
                        // Complete at once: the file renamed in, no other.
                        let id = self.stat_now(&key).map(|st| st.id());
                        self.ready.push(key, id);
                    }
                    Kind::Created | Kind::ClosedWrite => {
                        let created = kind == Kind::Created;
                        if created {
                            // A new file under a name queued as complete.
                            self.ready.forget(&key);
                            self.engine.host_holds(key.0, &key.1);
                        }
                        let Some(st) = self.engine.changed(host, &key.1, created) else {
                            self.settler.forget(&key);
                            return;
                        };
                        let seen = match kind {
                            Kind::Created if st.nlink > 1 => Seen::CreatedLink,
                            Kind::Created => Seen::CreatedNew,
                            _ => Seen::Closed,
                        };
                        self.settler.note(key, seen, Stamp::of(&st), now);
                    }
                }
            }
        }
    }

    /// A host dir may have vanished or been replaced: recreate, re-watch.
    fn host_changed(&mut self, i: usize) {
        if self.engine.layout.host_is_current(i) {
            return;
        }
        self.settler.forget_host(i);
        self.engine.hosts_changed();
        match self.engine.layout.reopen_host(i) {
            Ok(how) => {
                let h = &self.engine.layout.hosts[i];
                self.unusable.remove(&h.name);
                tracing::warn!(host = %h.name, path = %quote::path(&h.path), how = ?how,
                    "host dir vanished or was replaced; now watching the new one");
                if let Some(w) = self.watcher.as_mut()
                    && let Err(e) = w.watch_host(&self.engine.layout, i)
                {
                    tracing::error!(error = %e, "cannot watch host dir");
                }
                // Whatever the new dir holds is looked at by a rescan, and
                // links owed to it are tried at once.
                self.rescan = true;
                self.engine.retry_now();
            }
            Err(e) => {
                let (name, e) = (self.engine.layout.hosts[i].name.clone(), e.to_string());
                if self.unusable.get(&name) != Some(&e) {
                    tracing::error!(error = %e, "host dir unusable; will try again");
                    self.unusable.insert(name, e);
                }
            }
        }
    }

    /// What the file looks like now (`None`: gone or unreadable).
    fn stamp_now(&self, key: &settle::Key) -> Option<Stamp> {
        self.stat_now(key).map(|st| Stamp::of(&st))
    }

    fn stat_now(&self, (host, name): &settle::Key) -> Option<fsops::FileStat> {
        let dir = self.engine.layout.hosts.get(*host)?.fd();
        fsops::stat_at(dir, name).ok()
    }

    /// Settles due files, distributes complete ones, retries, rescans.
    fn work(&mut self) {
        if !self.engine.store.can_record() {
            // Paused until the record can be written: complete files wait
            // in the queue, nothing is linked.
            return;
        }
        // Names whose comparison came back are looked at again.
        for name in self.engine.take_verdicts() {
            self.engine
                .revisit(&name, SystemTime::now(), self.cfg.settle);
        }
        let now = Instant::now();
        for key in self.settler.due(now) {
            let st = self.stat_now(&key);
            let stamp = st.as_ref().map(Stamp::of);
            // Unchanged for the settle time: complete only when nobody has
            // it open for writing any more (asked with a read lease).
            let probe = self.settler.probes_writers();
            let layout = &self.engine.layout;
            let mut cannot_tell = None;
            let verdict = self.settler.confirm(&key, stamp, now, || {
                writers_of(layout, &key, probe, &mut cannot_tell)
            });
            if let Some(e) = cannot_tell {
                self.no_leases(e);
            }
            if verdict == Verdict::Complete {
                // The generation that stayed unchanged is the one linked.
                self.ready.push(key, st.map(|st| st.id()));
            }
        }
        // One round of arrivals, then back to the event queue.
        let round = Instant::now();
        while round.elapsed() < ROUND
            && let Some(((host, name), id)) = self.ready.pop()
        {
            self.arrive(host, name, id);
        }
        if let Some(t) = self.next_poll
            && t <= now
        {
            if let Chosen::Poll(iv) = self.mode.mode {
                // On the interval's beat, however long the tick took (never
                // in the past: a slow tick is not followed by a burst).
                self.next_poll = Some((t + iv).max(Instant::now()));
            }
            self.poll_tick();
        }
        if self.next_full.is_some_and(|t| t <= now) {
            self.rescan = true;
        }
        if self.rescan {
            self.rescan = false;
            self.full_scan(false);
        }
        if self.next_retry <= now {
            if self.engine.store.has_owed() {
                self.engine.pay_owed();
            }
            self.next_retry = Instant::now() + RETRY_EVERY;
        }
    }

    /// One poll tick: host dirs that vanished are recreated (and rescanned),
    /// new files of generations not recorded yet are settled from now on
    /// (their mtime, perhaps from another machine's clock, is not trusted),
    /// so a new file is distributed within one interval plus the settle time.
    fn poll_tick(&mut self) {
        let Some(mut p) = self.poller.take() else {
            return;
        };
        let tick = self.engine.poll_tick(&mut p, ROUND);
        self.poller = Some(p);
        if tick.more {
            // The rest after one round of settling and distributing.
            self.next_poll = Some(Instant::now());
        }
        for i in tick.replaced {
            self.host_changed(i);
        }
        for f in tick.found {
            self.settler
                .note((f.host, f.name), Seen::Scanned, Stamp::of(&f.stat), f.at);
        }
    }

    fn arrive(&mut self, host: usize, name: OsString, id: Option<fsops::FileId>) {
        if host >= self.engine.layout.hosts.len() {
            return;
        }
        let arrived = self.engine.arrive_as(host, &name, id);
        if matches!(arrived, Ok(Arrival::Distributed))
            && let Some(p) = self.poller.as_mut()
        {
            // Its peers' stamps moved with the links: listed after the
            // dirs a client changed.
            for h in (0..self.engine.layout.hosts.len()).filter(|h| *h != host) {
                p.expect_echo(h);
            }
        }
        match arrived {
            Ok(Arrival::Distributed) => tracing::info!(
                host = %self.engine.layout.hosts[host].name, name = %quote::name(&name), "distributed"),
            Ok(Arrival::Skipped(why)) => tracing::debug!(
                host = %self.engine.layout.hosts[host].name, name = %quote::name(&name), why, "not a candidate"),
            Ok(Arrival::Known | Arrival::Gone) => {}
            Ok(Arrival::Replaced) => {
                tracing::debug!(host = %self.engine.layout.hosts[host].name, name = %quote::name(&name),
                    "replaced since found complete; settling the new file");
                let key = (host, name);
                if let Some(stamp) = self.stamp_now(&key) {
                    self.settler.note(key, Seen::Scanned, stamp, Instant::now());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "will look again after the settle time");
                let key = (host, name);
                if let Some(stamp) = self.stamp_now(&key) {
                    self.settler.note(key, Seen::Scanned, stamp, Instant::now());
                }
            }
        }
    }

    /// SIGHUP: re-read the config; an invalid one is logged and the old one
    /// kept.
    fn reload(&mut self) {
        let new = match Config::load(&self.overrides) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reload failed; keeping the old config");
                return;
            }
        };
        if new.root != self.cfg.root
            || new.state_dir != self.cfg.state_dir
            || new.watch != self.cfg.watch
        {
            tracing::error!(
                "reload: root, state_dir and watch mode can change only with a restart; keeping the old config"
            );
            return;
        }
        let filter = match NameFilter::new(&new.ignore) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "reload failed; keeping the old config");
                return;
            }
        };
        let old_names: Vec<String> = self
            .engine
            .layout
            .hosts
            .iter()
            .map(|h| h.name.clone())
            .collect();
        // The dirs linked into are fsynced by their index: before it changes.
        self.engine.sync_links();
        let map = match self.engine.layout.set_hosts(&new.hosts) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "reload failed; keeping the old config");
                return;
            }
        };
        for (old, name) in old_names.iter().enumerate() {
            if map[old].is_none() {
                tracing::info!(host = %name, "host removed from the config; its dir is left untouched");
            }
        }
        self.engine.hosts_changed();
        // Every key naming a host by its index follows the new numbering.
        let remap = |h: usize| map.get(h).copied().flatten();
        self.settler.remap_hosts(remap);
        self.ready.remap_hosts(remap);
        if let Some((young, _)) = self.starting.as_mut() {
            *young = std::mem::take(young)
                .into_iter()
                .filter_map(|(h, n)| remap(h).map(|nh| (nh, n)))
                .collect();
        }
        self.engine.filter = filter;
        self.engine.dedupe = new.dedupe;
        self.settler.set_settle(new.settle);
        if let Some(w) = self.watcher.as_mut() {
            for (old, m) in map.iter().enumerate() {
                if m.is_none() {
                    w.unwatch_host(old);
                }
            }
            if let Err(e) = w.watch_all(&self.engine.layout) {
                tracing::error!(error = %e, "cannot watch host dirs");
            }
        }
        self.cfg = new;
        if let Err(e) = self.engine.sync_hosts() {
            tracing::error!(error = %e, "cannot write the record");
        }
        self.engine.retry_now();
        self.engine.pay_owed();
        self.rescan = true;
        tracing::info!(hosts = self.engine.layout.hosts.len(), "config reloaded");
    }
}

impl Daemon {
    /// Adds what the engine did since the last call to the running totals
    /// the record keeps (the metrics' counters: they grow across restarts).
    fn tally(&mut self) {
        let c = &self.engine.counters;
        let now = (c.linked, c.merged, self.engine.store.new_generations());
        let was = self.tallied;
        if now == was {
            return;
        }
        let at = unix_now();
        self.engine.store.update_stats(|s| {
            s.links_made += now.0.saturating_sub(was.0);
            s.merges += now.1.saturating_sub(was.1);
            s.files_distributed += now.2.saturating_sub(was.2);
            if now.2 > was.2 {
                s.last_arrival_at = Some(at);
            }
        });
        self.tallied = now;
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// SIGTERM/SIGINT came before "ready": commit what was done and stop.
fn stop_during_start_up(mut d: Daemon) -> Result<()> {
    tracing::info!("stopping on signal before start-up completed");
    sd_notify("STOPPING=1");
    d.engine.commit()?;
    tracing::info!("stopped");
    Ok(())
}

/// A read lease broken in the instant distlink holds it (see
/// `fsops::open_for_writing`) sends `SIGIO`, which would end the process.
fn ignore_sigio() -> Result<()> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_IGN installs no handler code.
    unsafe { signal(Signal::SIGIO, SigHandler::SigIgn) }
        .map(|_| ())
        .map_err(|e| Error::sys("SIGIO", e))
}

/// Whether the file of `key` is open for writing. With `probe` off (the
/// filesystem has no leases) it is not asked: `Unknown`. `cannot_tell`
/// gets the errno when the filesystem turns out to have no leases.
fn writers_of(
    layout: &Layout,
    (host, name): &settle::Key,
    probe: bool,
    cannot_tell: &mut Option<nix::errno::Errno>,
) -> Writers {
    use nix::errno::Errno;
    if !probe {
        return Writers::Unknown;
    }
    let Some(h) = layout.hosts.get(*host) else {
        return Writers::Open; // gone with its host: the next look drops it
    };
    let dir = h.fd();
    match fsops::stat_at(dir, name).and_then(|st| fsops::open_for_writing(dir, name, &st)) {
        Ok(false) => Writers::None,
        Ok(true) => {
            tracing::debug!(path = %crate::quote::path(&h.path.join(name)),
                "unchanged but still open for writing; looking again after the settle time");
            Writers::Open
        }
        Err(
            e @ (Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EACCES | Errno::EPERM),
        ) => {
            *cannot_tell = Some(e);
            Writers::Unknown
        }
        // Gone or replaced meanwhile: the next look tells.
        Err(_) => Writers::Open,
    }
}

impl Daemon {
    /// The filesystem cannot tell whether a file is open for writing:
    /// said once, and from now on a file created in place waits for its
    /// `CLOSE_WRITE` again.
    fn no_leases(&mut self, e: nix::errno::Errno) {
        if self.settler.probes_writers() {
            self.settler.set_probe_writers(false);
            tracing::warn!(
                error = %e,
                "cannot take file leases here, so cannot tell whether a file is still open for \
                 writing: a file created in place is complete only after its CLOSE_WRITE, and one \
                 published by link() or O_TMPFILE is found by the next rescan"
            );
        }
    }
}
