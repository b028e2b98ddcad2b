//! `distlink migrate`: the one-time move to the per-host layout. Moves a
//! flat DISTDIR into one host's dir (`--from`), then links every file into
//! every host that lacks it, merging identical per-host copies and listing
//! conflicts, and writes the record so the daemon starts clean.

use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::config::Config;
use crate::engine::{self, Engine, Imported, Progress};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::names::NameFilter;
use crate::quote;
use crate::state::{self, Store};

#[derive(Debug, Clone, Default)]
pub struct MigrateOpts {
    pub from: Option<PathBuf>,
    pub host: Option<String>,
    pub copy: bool,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrateReport {
    pub dry_run: bool,
    pub imported: Option<Imported>,
    /// The daemon was running: it distributes what was moved in.
    pub left_to_daemon: bool,
    /// A record already existed: only new files were distributed (prunes
    /// it knows of stay).
    pub record_existed: bool,
    pub linked: u64,
    pub deduplicated: u64,
    pub bytes_reclaimed: u64,
    pub conflicts: Vec<String>,
    pub not_settled: Vec<String>,
    pub failed: u64,
}

/// A dry run's scratch dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Result<Scratch> {
        let template = std::env::temp_dir().join(format!("distlink-dry-run-{what}-XXXXXX"));
        nix::unistd::mkdtemp(&template)
            .map(Scratch)
            .map_err(|e| Error::sys(&template, e))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {msg} ETA {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(what.to_string());
    pb
}

pub fn migrate(cfg: &Config, opts: &MigrateOpts) -> Result<MigrateReport> {
    let host = match (&opts.from, &opts.host) {
        (Some(_), None) => {
            return Err(Error::Usage(
                "--from needs --into HOST: the host the files belong to".into(),
            ));
        }
        (None, Some(_)) => return Err(Error::Usage("--into goes with --from DIR".into())),
        (_, Some(h)) if !cfg.hosts.contains(h) => {
            return Err(Error::Usage(format!(
                "unknown host '{}'; known hosts: {}",
                quote::bytes(h.as_bytes()),
                cfg.hosts.join(", ")
            )));
        }
        (_, h) => h.clone(),
    };
    if opts.copy && opts.from.is_none() {
        return Err(Error::Usage("--copy goes with --from DIR".into()));
    }
    let mut report = MigrateReport {
        dry_run: opts.dry_run,
        ..MigrateReport::default()
    };
    let filter = NameFilter::new(&cfg.ignore)?;
    // `--from` is opened once, checked, and only ever used through that
    // fd: its path may lead through a dir someone else can write, who
    // could point it at a host dir after the check. Checked before
    // anything is created (the record, a host dir).
    let from = match &opts.from {
        Some(path) => {
            let fd = crate::fsops::open_dir_path(path)
                .map_err(|e| Error::Usage(format!("--from {}: {e}", quote::path(path))))?;
            let layout = Layout::open_existing(&cfg.root, &cfg.hosts)?.0;
            refuse_from_inside(path, fd.as_fd(), &layout, &cfg.state_dir)?;
            Some(FromDir { path, fd })
        }
        None => None,
    };

    // With the daemon running, only the move is ours to do.
    if let Some(pid) = state::lock_holder(&cfg.state_dir)? {
        let Some(from) = &from else {
            return Err(Error::Refused(format!(
                "distlink (pid {pid}) holds the state lock {}; it already distributes every new \
                 file. Stop it to link everything with `distlink migrate`",
                quote::path(&cfg.state_dir)
            )));
        };
        let layout = Layout::open(&cfg.root, &cfg.hosts)?;
        let idx = host
            .as_deref()
            .and_then(|h| layout.index_of(h))
            .unwrap_or(0);
        report.imported = Some(import(from, &layout, idx, &filter, opts)?);
        report.left_to_daemon = true;
        return Ok(report);
    }

    // A dry run must not create a record, nor a host dir: it works on a
    // scratch copy of the record, and empty scratch dirs stand in for the
    // host dirs the real run creates. (Fresh, unpredictable root-only
    // dirs: nobody can plant anything in them beforehand.)
    let scratch = match opts.dry_run {
        true => Some((Scratch::new("record")?, Scratch::new("hosts")?)),
        false => None,
    };
    // The record (checked to describe this root) is opened before any
    // host dir is created.
    let (mut layout, store) = match &scratch {
        Some((record, stand_ins)) => {
            let mut l = Layout::open_root(&cfg.root)?;
            for h in &cfg.hosts {
                let dir = match crate::fsops::stat_at(l.root_fd(), std::ffi::OsStr::new(h)) {
                    Err(nix::errno::Errno::ENOENT) => {
                        let path = stand_ins.0.join(h);
                        std::fs::create_dir(&path).map_err(|e| Error::Io {
                            path: path.clone(),
                            source: e,
                        })?;
                        crate::layout::HostDir::stand_in(h, &l, &path)?
                    }
                    _ => l.open_host(h)?.0,
                };
                l.hosts.push(dir);
            }
            l.check_same_fs()?;
            state::copy_record(&cfg.state_dir, &record.0)?;
            // Refused as the real run would be (a record of another root).
            let s = Store::open_for_root(&record.0, &cfg.root, l.root_fd(), false)?;
            (l, s)
        }
        None => {
            let mut l = Layout::open_root(&cfg.root)?;
            let s = Store::open_for_root(&cfg.state_dir, &cfg.root, l.root_fd(), false)?;
            l.open_hosts(&cfg.hosts)?;
            (l, s)
        }
    };
    if let Some(from) = &from {
        let idx = host
            .as_deref()
            .and_then(|h| layout.index_of(h))
            .ok_or_else(|| Error::Usage("--from needs --into HOST".into()))?;
        let imported = import(from, &layout, idx, &filter, opts)?;
        if opts.dry_run {
            // The engine sees the files the real run would have moved in.
            let fd = from.fd.try_clone().map_err(|e| Error::Io {
                path: from.path.to_path_buf(),
                source: e,
            })?;
            let names = imported.names_in.iter().cloned().collect();
            layout.hosts[idx].pretend.moved_in = Some((fd, names));
        }
        report.imported = Some(imported);
    }
    let mut store = store;
    crate::identity::upgrade_record(&layout, &mut store);
    let mut engine = Engine::new(layout, filter, store, cfg.dedupe);
    engine.dry_run = opts.dry_run;
    let young = if engine.store.is_initialized() {
        // A record exists: prunes it knows of must stay. Distribute only
        // what is new (the files just moved in), as `sync` does.
        report.record_existed = true;
        engine.sync_hosts()?;
        let y = engine.reconcile(SystemTime::now(), cfg.settle, !opts.dry_run);
        engine.commit()?;
        y
    } else {
        let pb = bar(0, "linking");
        let mut progress = |p: Progress| {
            pb.set_length(p.bytes_total);
            pb.set_position(p.bytes_done);
            pb.set_message(format!("{}/{} files", p.files_done, p.files_total));
        };
        let y = engine.link_everything(SystemTime::now(), cfg.settle, &mut progress)?;
        pb.finish_and_clear();
        y
    };
    let young = wait_for_young(&mut engine, young, cfg.settle, "migrate")?;
    drop(scratch);
    report.linked = engine.counters.linked;
    report.deduplicated = engine.counters.merged;
    report.bytes_reclaimed = engine.counters.reclaimed;
    report.failed = engine.counters.failed;
    for n in engine.store.conflict_names() {
        report.conflicts.push(crate::status::conflict_line(
            &n,
            engine.store.conflicts_of(&n),
        ));
    }
    report.conflicts.sort();
    report.not_settled = young
        .iter()
        .map(|y| quote::path(&engine.layout.hosts[y.host].path.join(&y.name)).to_string())
        .collect();
    Ok(report)
}

/// The `--from` dir: the path the admin gave (for messages) and the one
/// directory it led to when it was checked.
struct FromDir<'a> {
    path: &'a Path,
    fd: OwnedFd,
}

/// Refuses a `--from` that is the root, a host dir, or inside one of them
/// (by identity, not path text): its files already belong to a host, and
/// moving them would empty that host and record its names as pruned there.
/// The state dir too: its files are the record.
fn refuse_from_inside(
    from: &Path,
    fd: BorrowedFd<'_>,
    layout: &Layout,
    state: &Path,
) -> Result<()> {
    let state_id = match nix::sys::stat::stat(state) {
        Ok(st) => vec![(
            (st.st_dev, st.st_ino),
            format!("the state dir {}", quote::path(state)),
        )],
        Err(nix::errno::Errno::ENOENT) => Vec::new(),
        Err(e) => return Err(Error::sys(state, e)),
    };
    match layout.holds_dir(fd, from, &state_id)? {
        None => Ok(()),
        Some(what) => Err(Error::Refused(format!(
            "--from {} is {what} (compared by identity, not by path): its files already belong \
             to a host or to distlink. --from takes a flat DISTDIR outside the root; to migrate \
             one that is the root itself, move it aside first (mv ROOT ROOT.old, mkdir ROOT) and \
             give that",
            quote::path(from)
        ))),
    }
}

/// Waits (in the engine: [`Engine::settle_young`]) for the files a scan
/// found written less than the settle time ago, the usual state of files
/// just copied in, instead of leaving them for another run; says so on
/// stderr, with a progress bar on a terminal. Returns those still being
/// written when the wait ends.
pub fn wait_for_young(
    engine: &mut Engine,
    young: Vec<engine::Young>,
    settle: std::time::Duration,
    what: &str,
) -> Result<Vec<engine::Young>> {
    if young.is_empty() {
        return Ok(young);
    }
    let limit = Engine::settle_limit(settle);
    // SIGINT/SIGTERM end the wait: what was done is recorded, the rest
    // is reported (and a later run finishes it).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    engine.stop_on(stop);
    eprintln!(
        "distlink {what}: {} names were written less than {} ago (just copied in?); waiting up \
         to {} for them to settle",
        young.len(),
        humantime::format_duration(settle),
        humantime::format_duration(limit)
    );
    let pb = if std::io::stderr().is_terminal() {
        let pb = ProgressBar::with_draw_target(
            Some(limit.as_secs().max(1)),
            ProgressDrawTarget::stderr(),
        );
        if let Ok(style) =
            ProgressStyle::with_template("settling [{bar:30}] {msg}, at most {eta} more")
        {
            pb.set_style(style.progress_chars("=> "));
        }
        pb
    } else {
        ProgressBar::hidden()
    };
    let mut waiting = |n: usize, left: std::time::Duration| {
        pb.set_position(limit.saturating_sub(left).as_secs());
        pb.set_message(format!("{n} files still young"));
    };
    let left = engine.settle_young(young, settle, limit, &mut waiting)?;
    pb.finish_and_clear();
    Ok(left)
}

fn import(
    from: &FromDir<'_>,
    layout: &Layout,
    idx: usize,
    filter: &NameFilter,
    opts: &MigrateOpts,
) -> Result<Imported> {
    let pb = bar(0, "moving");
    let mut done = 0;
    let imported = engine::import_flat(
        (from.fd.as_fd(), from.path),
        &layout.hosts[idx],
        filter,
        opts.copy,
        opts.dry_run,
        |b| {
            done += b;
            pb.set_position(done);
        },
    )?;
    pb.finish_and_clear();
    for e in &imported.errors {
        tracing::warn!("{e}");
    }
    Ok(imported)
}

pub fn render(r: &MigrateReport) -> String {
    let w = if r.dry_run { "would be " } else { "" };
    let mut o = String::new();
    if let Some(i) = &r.imported {
        o.push_str(&format!(
            "{w}moved {}, {w}copied {}, already present {} ({})\n",
            i.moved,
            i.copied,
            i.duplicates,
            crate::status::human(i.bytes)
        ));
        for c in &i.conflicts {
            o.push_str(&format!("conflict: {c}\n"));
        }
        for e in &i.errors {
            o.push_str(&format!("error: {e}\n"));
        }
    }
    if r.left_to_daemon {
        o.push_str("the running daemon distributes the moved files\n");
        return o;
    }
    let did = r.linked + r.deduplicated + r.failed > 0 || !r.not_settled.is_empty();
    if r.record_existed && did {
        o.push_str(
            "a record exists: only new files were distributed; names pruned earlier stay pruned\n",
        );
    }
    for c in &r.conflicts {
        o.push_str(&format!("conflict: {c}\n"));
    }
    for y in &r.not_settled {
        o.push_str(&format!(
            "still being written after the wait, not distributed (run migrate again once it is \
             complete): {y}\n"
        ));
    }
    o.push_str(&format!(
        "{w}linked {}, {w}deduplicated {}, conflicts {}, failed {}, {} reclaimed\n",
        r.linked,
        r.deduplicated,
        r.conflicts.len(),
        r.failed,
        crate::status::human(r.bytes_reclaimed)
    ));
    o
}
