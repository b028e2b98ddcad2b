//! Command line: parse, turn into a plain `Config`, hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use distlink::config::{self, Config, LogFormat, Overrides};
use distlink::error::Error;
use distlink::{daemon, metrics, migrate, prune, status};

/// Keeps per-host Gentoo distfiles directories hardlinked.
#[derive(Parser, Debug)]
#[command(name = "distlink", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon: reconcile, then follow every host dir until SIGTERM.
    Run {
        #[command(flatten)]
        src: Source,
        #[command(flatten)]
        tuning: Tuning,
        /// Poll every INTERVAL instead of using inotify (e.g. "2s"): one statx
        /// per host dir, listing only those that changed.
        #[arg(long, value_name = "INTERVAL", value_parser = duration)]
        poll: Option<Duration>,
        /// Make every start-up check (configuration, root, host dirs, state
        /// dir, record) and exit: 0 when the daemon would start, else run's
        /// exit code and message. Creates, locks and changes nothing; a
        /// running daemon is not an error.
        #[arg(long)]
        check: bool,
        /// While another daemon holds the state lock, wait and take over
        /// when it stops, instead of exiting (config: `standby = true`).
        #[arg(long, conflicts_with = "check")]
        standby: bool,
    },
    /// One reconcile pass over all hosts, then exit (1 when something was
    /// left undone).
    Sync {
        #[command(flatten)]
        src: Source,
        #[command(flatten)]
        tuning: Tuning,
        /// Take every file now in the host dirs as already distributed
        /// (writes the record, links nothing).
        #[arg(long)]
        adopt: bool,
    },
    /// Remove files from one host's dir on the server (offline or retired
    /// hosts, age policies), reporting what is really freed.
    Prune {
        /// The host whose dir is pruned.
        #[arg(value_name = "HOST")]
        target: String,
        #[command(flatten)]
        src: Source,
        /// Keep the names listed in FILE (- for stdin): one name per line,
        /// nothing trimmed; a # at the start or after a blank starts a
        /// comment; escapes \\ \n \t \r \xHH \u{HHHH} \# and \ (space),
        /// the form distlink prints names in.
        #[arg(long, value_name = "FILE")]
        keep_list: Option<PathBuf>,
        /// Keep the names in FILE, NUL-separated and taken as they are
        /// (e.g. from find DIR -maxdepth 1 -type f -printf '%f\0').
        #[arg(long, value_name = "FILE")]
        keep_list0: Option<PathBuf>,
        /// Keep the file name of every URL in FILE: what
        /// `emerge --pretend --fetchonly --emptytree @world` prints on the
        /// host (other words are ignored).
        #[arg(long, value_name = "FILE")]
        keep_urls: Option<PathBuf>,
        /// Remove files whose mtime is older than AGE: a number and a unit
        /// as in eclean-dist's --time-limit: h, d, w, m (months of 30
        /// days), y (years of 365 days); e.g. 180d, 6m.
        #[arg(long, value_name = "AGE", value_parser = prune::parse_age)]
        older_than: Option<Duration>,
        /// Remove every file (retire the host); with other criteria, lets
        /// them take every file.
        #[arg(long)]
        all: bool,
        /// Prune even when the keep lists name none of the host's files.
        #[arg(long)]
        force: bool,
        /// Remove nothing; report what would be removed.
        #[arg(long, visible_alias = "pretend")]
        dry_run: bool,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// One-time move to the per-host layout: link every file into every
    /// host, waiting for files just copied in to settle (1 when one was
    /// still being written).
    Migrate {
        #[command(flatten)]
        src: Source,
        #[command(flatten)]
        tuning: Tuning,
        /// A flat DISTDIR whose files move into the dir of the --into host
        /// first.
        #[arg(long, value_name = "DIR", requires = "into")]
        from: Option<PathBuf>,
        /// The host the --from files belong to.
        #[arg(long, value_name = "HOST", requires = "from")]
        into: Option<String>,
        /// With --from on another filesystem: copy, fsync, verify, then remove.
        #[arg(long)]
        copy: bool,
        /// Change nothing; report what would be done.
        #[arg(long, visible_alias = "pretend")]
        dry_run: bool,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Per-host files, sizes and savings; conflicts; whether the daemon runs.
    Status {
        #[command(flatten)]
        src: Source,
        /// Print as one JSON object.
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// Print metrics in the Prometheus text format (what the daemon's
        /// [metrics] section writes to a file).
        #[arg(long)]
        prometheus: bool,
    },
    /// Exit 0 when every host is consistent, 1 with one line per problem.
    Check {
        #[command(flatten)]
        src: Source,
        /// A daemon is expected: one that does not run is a problem (one
        /// that was killed or crashed always is).
        #[arg(long)]
        daemon: bool,
        /// Print the problems as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Forget a host that left the configuration: if it is configured
    /// again, it is seeded with every file like a new host. (Until then the
    /// record remembers it, so that a host dropped from the configuration by
    /// mistake keeps its prunes when it comes back.)
    Forget {
        /// The host to forget (must not be configured).
        #[arg(value_name = "HOST")]
        host: String,
        #[command(flatten)]
        src: Source,
    },
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page distlink(1) (roff), or write every page.
    Man {
        /// Write distlink.1 and one page per subcommand into DIR.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Where everything is: every command takes these, for the same thing.
#[derive(Args, Debug)]
struct Source {
    /// Configuration file (default: /etc/distlink.toml when it exists).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory holding one directory per host.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// A host (repeat for each); replaces the config file's list.
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// Where the record lives (default: /var/lib/distlink).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// How the work is done: for the commands that distribute files (run,
/// sync, migrate).
#[derive(Args, Debug)]
struct Tuning {
    /// How long a file written in place must stay unchanged, e.g. "5s".
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    settle: Option<Duration>,
    /// Log format on stderr.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<LogFmt>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFmt {
    Text,
    Json,
}

fn duration(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

impl Source {
    /// The overrides of these options, and of `tuning` and `poll` where
    /// the command takes them.
    fn overrides(&self, tuning: Option<&Tuning>, poll: Option<Duration>) -> Overrides {
        Overrides {
            config: self.config.clone(),
            root: self.root.clone(),
            hosts: self.hosts.clone(),
            state_dir: self.state_dir.clone(),
            settle: tuning.and_then(|t| t.settle),
            poll,
            log_format: tuning.and_then(|t| t.log_format).map(|f| match f {
                LogFmt::Text => LogFormat::Text,
                LogFmt::Json => LogFormat::Json,
            }),
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("DISTLINK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = format == LogFormat::Json;
    // No ANSI colours: the writer escapes every ESC (a name must not drive
    // a terminal), and a daemon's log is rarely a terminal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || distlink::logbuf::Writer { json })
        .with_ansi(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("distlink: {e}");
    ExitCode::from(e.exit_code() as u8)
}

fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("distlink: cannot encode JSON: {e}"),
    }
}

/// Prints a report as JSON or as text.
fn show<T: serde::Serialize>(json: bool, value: &T, text: impl FnOnce(&T) -> String) {
    if json {
        print_json(value);
    } else {
        print!("{}", text(value));
    }
}

fn load(ov: Overrides) -> Result<(Config, Overrides), ExitCode> {
    match Config::load(&ov) {
        Ok(c) => {
            init_logging(c.log_format);
            Ok((c, ov))
        }
        Err(e) => Err(fail(&e)),
    }
}

fn main() -> ExitCode {
    dispatch(Cli::parse().cmd).unwrap_or_else(|code| code)
}

/// Runs one command; `Err` carries the exit code of a failure already
/// reported.
fn dispatch(cmd: Cmd) -> Result<ExitCode, ExitCode> {
    Ok(match cmd {
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "distlink",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Cmd::Man { dir } => match dir {
            Some(d) => match distlink::man::write_pages(Cli::command(), &d) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            },
            None => match distlink::man::top_page(Cli::command()) {
                Ok(p) => {
                    print!("{p}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            },
        },
        Cmd::Run {
            src,
            tuning,
            poll,
            check,
            standby,
        } => {
            let (mut cfg, ov) = load(src.overrides(Some(&tuning), poll))?;
            cfg.standby |= standby;
            if check {
                return Ok(match daemon::check(&cfg) {
                    Ok(found) => {
                        println!(
                            "distlink: start-up checks passed: root {}, {} hosts, record {} ({})",
                            distlink::quote::path(&cfg.root),
                            cfg.hosts.len(),
                            distlink::quote::path(&found.path),
                            if found.initialized {
                                "in use"
                            } else {
                                "a fresh start would create it"
                            }
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(&e),
                });
            }
            match daemon::run(cfg, ov) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Cmd::Forget { src, host } => {
            let (cfg, _) = load(src.overrides(None, None))?;
            match daemon::forget_host(&cfg, &host) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Cmd::Sync { src, tuning, adopt } => {
            let (cfg, _) = load(src.overrides(Some(&tuning), None))?;
            match daemon::sync(&cfg, adopt) {
                Ok(r) => {
                    let c = r.counters;
                    eprintln!(
                        "distlink sync: {} linked, {} merged, {} new conflicts, {} failed, {} still being written",
                        c.linked, c.merged, c.conflicts, c.failed, r.young
                    );
                    if c.failed > 0 || r.owed || r.young > 0 {
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => fail(&e),
            }
        }
        Cmd::Prune {
            src,
            target,
            keep_list,
            keep_list0,
            keep_urls,
            older_than,
            all,
            force,
            dry_run,
            json,
        } => {
            let (cfg, _) = load(src.overrides(None, None))?;
            use prune::{KeepForm, KeepList};
            let keep = [
                (keep_list, KeepForm::Lines),
                (keep_list0, KeepForm::Nul),
                (keep_urls, KeepForm::Urls),
            ];
            let sel = prune::Selection {
                keep: keep
                    .into_iter()
                    .filter_map(|(p, form)| p.map(|path| KeepList { path, form }))
                    .collect(),
                older_than,
                all,
                force,
            };
            match prune::prune(&cfg, &target, &sel, dry_run) {
                Ok(r) => {
                    show(json, &r, prune::render);
                    if r.errors.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => fail(&e),
            }
        }
        Cmd::Migrate {
            src,
            tuning,
            from,
            into,
            copy,
            dry_run,
            json,
        } => {
            let (cfg, _) = load(src.overrides(Some(&tuning), None))?;
            let opts = migrate::MigrateOpts {
                from,
                host: into,
                copy,
                dry_run,
            };
            match migrate::migrate(&cfg, &opts) {
                Ok(r) => {
                    show(json, &r, migrate::render);
                    let import_errors = r.imported.as_ref().is_some_and(|i| !i.errors.is_empty());
                    if r.failed > 0 || import_errors || !r.not_settled.is_empty() {
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => fail(&e),
            }
        }
        Cmd::Status {
            src,
            json,
            prometheus,
        } => {
            let (cfg, _) = load(src.overrides(None, None))?;
            match status::gather(&cfg) {
                Ok(s) if prometheus => {
                    print!("{}", metrics::render(&s, &s.stats, s.daemon_pid.is_some()));
                    ExitCode::SUCCESS
                }
                Ok(s) => {
                    show(json, &s, status::render);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Cmd::Check { src, daemon, json } => {
            let (cfg, _) = load(src.overrides(None, None))?;
            match status::gather(&cfg) {
                Ok(s) => {
                    let problems = s.problems(daemon);
                    if json {
                        print_json(
                            &serde_json::json!({ "ok": problems.is_empty(), "problems": problems }),
                        );
                    } else {
                        for p in &problems {
                            println!("{p}");
                        }
                    }
                    if problems.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => fail(&e),
            }
        }
    })
}
