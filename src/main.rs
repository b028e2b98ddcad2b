//! Command line: parse, turn into a plain `Config`, hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use distlink::config::{self, Config, LogFormat, Overrides};
use distlink::daemon;
use distlink::error::Error;

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
    Run(Common),
    /// One reconcile pass over all hosts, then exit.
    Sync {
        #[command(flatten)]
        common: Common,
        /// Take every file now in the host dirs as already distributed
        /// (writes the record, links nothing).
        #[arg(long)]
        adopt: bool,
    },
}

#[derive(Args, Debug)]
struct Common {
    /// Configuration file (default: /etc/distlink.toml when it exists).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory holding one directory per host.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// A host (repeat for each); replaces the config file's list.
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
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

impl Common {
    fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            root: self.root.clone(),
            hosts: self.hosts.clone(),
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("distlink: {e}");
    ExitCode::from(e.exit_code() as u8)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (common, adopt, is_sync) = match &cli.cmd {
        Cmd::Run(c) => (c, false, false),
        Cmd::Sync { common, adopt } => (common, *adopt, true),
    };
    let ov = common.overrides();
    let cfg = match Config::load(&ov) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    init_logging(cfg.log_format);
    if !is_sync {
        return match daemon::run(cfg, ov) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
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
