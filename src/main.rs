//! Command line: parse, turn into a plain `Config`, hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use distlink::config::{self, Config, LogFormat, Overrides};
use distlink::error::Error;
use distlink::{daemon, migrate, prune, status};

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
        common: Common,
        /// While another daemon holds the state lock, wait and take over
        /// when it stops, instead of exiting (config: `standby = true`).
        #[arg(long)]
        standby: bool,
    },
    /// One reconcile pass over all hosts, then exit.
    Sync {
        #[command(flatten)]
        common: Common,
        /// Take every file now in the host dirs as already distributed
        /// (writes the record, links nothing).
        #[arg(long)]
        adopt: bool,
    },
    /// Remove files from one host's dir on the server (offline or retired
    /// hosts, age policies), reporting what is really freed.
    Prune {
        #[command(flatten)]
        common: Single,
        /// The host whose dir is pruned.
        #[arg(long = "host", value_name = "NAME", id = "prune_host")]
        target: String,
        /// Keep only the names listed in FILE (- for stdin): one name per
        /// line, nothing trimmed; a line starting with # is a comment;
        /// escapes \\ \n \t \r \xHH \u{HHHH}, and \# for a name that
        /// starts with # (names print in this form, so they can be pasted).
        #[arg(long, value_name = "FILE", conflicts_with = "keep_list0")]
        keep_list: Option<PathBuf>,
        /// Like --keep-list, but FILE holds NUL-separated names taken as
        /// they are (e.g. from find DIR -maxdepth 1 -type f -printf '%f\0').
        #[arg(long, value_name = "FILE")]
        keep_list0: Option<PathBuf>,
        /// Remove files whose mtime is older than DURATION (e.g. 180d).
        #[arg(long, value_name = "DURATION", value_parser = duration)]
        older_than: Option<Duration>,
        /// Remove every file (retire the host).
        #[arg(long)]
        all: bool,
        /// Remove nothing; report what would be removed.
        #[arg(long, visible_alias = "pretend")]
        dry_run: bool,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// One-time move to the per-host layout: link every file into every host.
    Migrate {
        #[command(flatten)]
        common: Single,
        /// A flat DISTDIR whose files move into --host's dir first.
        #[arg(long, value_name = "DIR")]
        from: Option<PathBuf>,
        /// The host the --from files belong to.
        #[arg(long = "host", value_name = "NAME", id = "migrate_host")]
        target: Option<String>,
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
        common: Common,
        /// Print as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when every host is consistent, 1 with one line per problem.
    Check {
        #[command(flatten)]
        common: Common,
        /// Print the problems as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Forget a host that left the configuration: if it is configured
    /// again, it is seeded with every file like a new host. (Until then the
    /// record remembers it, so that a host dropped from the configuration by
    /// mistake keeps its prunes when it comes back.)
    Forget {
        #[command(flatten)]
        common: Common,
        /// The host to forget (must not be configured).
        #[arg(value_name = "HOST")]
        host: String,
    },
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

#[derive(Args, Debug)]
struct Common {
    #[command(flatten)]
    src: Source,
    /// A host (repeat for each); replaces the config file's list.
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
}

/// For commands whose `--host` names the one host they act on.
#[derive(Args, Debug)]
struct Single {
    #[command(flatten)]
    src: Source,
    /// All hosts, comma-separated; replaces the config file's list.
    #[arg(long = "hosts", value_name = "NAME,...", value_delimiter = ',')]
    hosts: Vec<String>,
}

#[derive(Args, Debug)]
struct Source {
    /// Configuration file (default: /etc/distlink.toml when it exists).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory holding one directory per host.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Where the record lives (default: ROOT/.distlink).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// How long a file written in place must stay unchanged, e.g. "5s".
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    settle: Option<Duration>,
    /// Scan every INTERVAL instead of using inotify (e.g. "30s").
    #[arg(long, value_name = "INTERVAL", value_parser = duration)]
    poll: Option<Duration>,
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
    fn overrides(&self, hosts: &[String]) -> Overrides {
        Overrides {
            config: self.config.clone(),
            root: self.root.clone(),
            hosts: hosts.to_vec(),
            state_dir: self.state_dir.clone(),
            settle: self.settle,
            poll: self.poll,
            log_format: self.log_format.map(|f| match f {
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

fn load(src: &Source, hosts: &[String]) -> Result<(Config, Overrides), ExitCode> {
    let ov = src.overrides(hosts);
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
        Cmd::Man => match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("distlink: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Run { common, standby } => {
            let (mut cfg, ov) = load(&common.src, &common.hosts)?;
            cfg.standby |= standby;
            match daemon::run(cfg, ov) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Cmd::Forget { common, host } => {
            let (cfg, _) = load(&common.src, &common.hosts)?;
            match daemon::forget_host(&cfg, &host) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Cmd::Sync { common, adopt } => {
            let (cfg, _) = load(&common.src, &common.hosts)?;
            match daemon::sync(&cfg, adopt) {
                Ok(r) => {
                    let c = r.counters;
                    eprintln!(
                        "distlink sync: {} linked, {} merged, {} new conflicts, {} failed, {} not yet settled",
                        c.linked, c.merged, c.conflicts, c.failed, r.young
                    );
                    if c.failed > 0 || r.owed {
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => fail(&e),
            }
        }
        Cmd::Prune {
            common,
            target,
            keep_list,
            keep_list0,
            older_than,
            all,
            dry_run,
            json,
        } => {
            let (cfg, _) = load(&common.src, &common.hosts)?;
            let sel = prune::Selection {
                keep_nul: keep_list0.is_some(),
                keep_list: keep_list.or(keep_list0),
                older_than,
                all,
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
            common,
            from,
            target,
            copy,
            dry_run,
            json,
        } => {
            let (cfg, _) = load(&common.src, &common.hosts)?;
            let opts = migrate::MigrateOpts {
                from,
                host: target,
                copy,
                dry_run,
            };
            match migrate::migrate(&cfg, &opts) {
                Ok(r) => {
                    show(json, &r, migrate::render);
                    let import_errors = r.imported.as_ref().is_some_and(|i| !i.errors.is_empty());
                    if r.failed > 0 || import_errors {
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => fail(&e),
            }
        }
        Cmd::Status { common, json } => {
            let (cfg, _) = load(&common.src, &common.hosts)?;
            match status::gather(&cfg) {
                Ok(s) => {
                    show(json, &s, status::render);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Cmd::Check { common, json } => {
            let (cfg, _) = load(&common.src, &common.hosts)?;
            match status::gather(&cfg) {
                Ok(s) => {
                    let problems = s.problems();
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
