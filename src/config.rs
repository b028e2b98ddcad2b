//! The configuration: a TOML file merged with command-line overrides into one
//! plain [`Config`]. Nothing outside `main.rs` sees the command-line parser.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Where the configuration file is looked for when none is named.
pub const DEFAULT_CONFIG: &str = "/etc/distlink.toml";
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(5);
/// The poll interval: one `statx` per host dir per tick, so it can be short.
pub const DEFAULT_POLL: Duration = Duration::from_secs(2);
/// How often poll mode lists every host dir in full, whatever the stamps say.
pub const DEFAULT_FULL_SCAN: Duration = Duration::from_secs(3600);
/// Where the record lives unless configured: root's alone, outside the
/// distfiles root (which clients and portage write).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/distlink";
/// How often the daemon rewrites its metrics file, unless configured.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(60);

/// `[metrics]`: the daemon writes its metrics, in the Prometheus text
/// format, to `path` every `interval` (for node_exporter's textfile
/// collector).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    pub path: PathBuf,
    pub interval: Duration,
}

/// How changes in the host dirs are noticed (`[watch] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// inotify where the kernel sees every write to the root (a local
    /// filesystem), poll elsewhere (see `crate::fskind`).
    Auto,
    Inotify,
    Poll,
}

/// The `[watch]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    pub mode: WatchMode,
    /// The poll interval (poll mode, or auto when it picks poll).
    pub interval: Duration,
    /// The admin states that every write to the root goes through this
    /// machine's kernel (e.g. a kernel NFS server re-exporting a FUSE
    /// mount): inotify is then allowed on a network or FUSE filesystem.
    pub all_writes_local: bool,
    /// In poll mode, how often every host dir is listed in full.
    pub full_scan_every: Duration,
}

impl Default for Watch {
    fn default() -> Watch {
        Watch {
            mode: WatchMode::Auto,
            interval: DEFAULT_POLL,
            all_writes_local: false,
            full_scan_every: DEFAULT_FULL_SCAN,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The complete, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub root: PathBuf,
    pub hosts: Vec<String>,
    pub state_dir: PathBuf,
    pub settle: Duration,
    pub ignore: Vec<String>,
    pub dedupe: bool,
    pub watch: Watch,
    pub log_format: LogFormat,
    /// Where the daemon writes its metrics, if anywhere.
    pub metrics: Option<Metrics>,
    /// The group whose members may read the record (`status`, `check`):
    /// the daemon makes the state dir root:GROUP 2710 at each start.
    pub state_group: Option<String>,
    /// `run`: wait for the state lock instead of refusing when another
    /// daemon holds it (the standby of an active/standby pair).
    pub standby: bool,
    /// The file this came from, if any (re-read on SIGHUP).
    pub file: Option<PathBuf>,
}

/// Values given on the command line; each one overrides the file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub root: Option<PathBuf>,
    pub hosts: Vec<String>,
    pub state_dir: Option<PathBuf>,
    pub settle: Option<Duration>,
    pub poll: Option<Duration>,
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    root: Option<String>,
    hosts: Option<Vec<String>>,
    state_dir: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    settle: Option<Duration>,
    ignore: Option<Vec<String>>,
    dedupe: Option<bool>,
    log_format: Option<LogFormat>,
    state_group: Option<String>,
    standby: Option<bool>,
    watch: Option<WatchTable>,
    metrics: Option<MetricsTable>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsTable {
    path: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchTable {
    mode: Option<WatchModeName>,
    #[serde(default, deserialize_with = "de_duration")]
    interval: Option<Duration>,
    all_writes_local: Option<bool>,
    #[serde(default, deserialize_with = "de_duration")]
    full_scan_every: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WatchModeName {
    Auto,
    Inotify,
    Poll,
}

fn de_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// Parses a humantime duration ("500ms", "5s", "1h 30m").
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!(
            "invalid duration '{}' ({e}); use a form like 500ms or 5s",
            crate::quote::bytes(s.as_bytes())
        )
    })
}

impl Config {
    /// Loads the file (the one named, else [`DEFAULT_CONFIG`] when it exists)
    /// and applies the overrides.
    pub fn load(ov: &Overrides) -> Result<Config> {
        let file = match &ov.config {
            Some(p) => Some(p.clone()),
            None => Path::new(DEFAULT_CONFIG)
                .exists()
                .then(|| PathBuf::from(DEFAULT_CONFIG)),
        };
        let parsed = match &file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    Error::Config(format!("config file {}: {e}", crate::quote::path(p)))
                })?;
                parse_file(&text).map_err(|m| {
                    Error::Config(format!("config file {}: {m}", crate::quote::path(p)))
                })?
            }
            None => FileConfig::default(),
        };
        Self::merge(parsed, ov, file)
    }

    /// Parses TOML text as a config file, applying the overrides (used by
    /// tests and by `load`).
    pub fn from_toml(text: &str, ov: &Overrides) -> Result<Config> {
        let parsed = parse_file(text).map_err(Error::Config)?;
        Self::merge(parsed, ov, None)
    }

    fn merge(f: FileConfig, ov: &Overrides, file: Option<PathBuf>) -> Result<Config> {
        let cfg_err = |m: String| Error::Config(m);
        let root = match (&ov.root, &f.root) {
            (Some(r), _) => r.clone(),
            (None, Some(r)) => PathBuf::from(r),
            (None, None) => {
                return Err(cfg_err(
                    "root: no root directory given (set `root` in the config file or pass --root)"
                        .into(),
                ));
            }
        };
        if !root.is_absolute() {
            return Err(cfg_err(format!(
                "root: {} is not an absolute path",
                crate::quote::path(&root)
            )));
        }
        let hosts = if !ov.hosts.is_empty() {
            ov.hosts.clone()
        } else {
            f.hosts.unwrap_or_default()
        };
        if hosts.is_empty() {
            return Err(cfg_err(
                "hosts: no hosts given (set `hosts` in the config file, or pass --host NAME for each)".into(),
            ));
        }
        for (i, h) in hosts.iter().enumerate() {
            validate_host(h)?;
            if hosts[..i].contains(h) {
                return Err(cfg_err(format!(
                    "hosts: host '{}' is listed twice",
                    crate::quote::bytes(h.as_bytes())
                )));
            }
        }
        let state_dir = match (&ov.state_dir, &f.state_dir) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => PathBuf::from(s),
            (None, None) => PathBuf::from(DEFAULT_STATE_DIR),
        };
        if !state_dir.is_absolute() {
            return Err(cfg_err(format!(
                "state_dir: {} is not an absolute path",
                crate::quote::path(&state_dir)
            )));
        }
        let ignore = f.ignore.unwrap_or_default();
        crate::names::NameFilter::new(&ignore)?;
        let watch = watch_table(f.watch.unwrap_or_default(), ov.poll)?;
        let metrics = match f.metrics {
            None => None,
            Some(m) => Some(metrics_of(m)?),
        };
        if let Some(g) = &f.state_group {
            group_id(g)?;
        }
        Ok(Config {
            root,
            hosts,
            state_dir,
            settle: ov.settle.or(f.settle).unwrap_or(DEFAULT_SETTLE),
            ignore,
            dedupe: f.dedupe.unwrap_or(true),
            watch,
            log_format: ov.log_format.or(f.log_format).unwrap_or_default(),
            metrics,
            state_group: f.state_group,
            standby: f.standby.unwrap_or(false),
            file,
        })
    }
}

/// `[metrics]` checked: an absolute file path (not a directory), an
/// interval of at least a second.
fn metrics_of(m: MetricsTable) -> Result<Metrics> {
    let err = |m: String| Err(Error::Config(m));
    let Some(path) = m.path.map(PathBuf::from) else {
        return err(
            "metrics.path: missing (the file the daemon writes its metrics to, e.g. \
             \"/var/lib/node_exporter/textfile_collector/distlink.prom\")"
                .into(),
        );
    };
    if !path.is_absolute() || path.file_name().is_none() || path.to_string_lossy().ends_with('/') {
        return err(format!(
            "metrics.path: {:?} is not an absolute path to a file",
            path.display().to_string()
        ));
    }
    let interval = m.interval.unwrap_or(DEFAULT_METRICS_INTERVAL);
    if interval < Duration::from_secs(1) {
        return err(format!(
            "metrics.interval: {} is shorter than one second",
            humantime::format_duration(interval)
        ));
    }
    Ok(Metrics { path, interval })
}

/// The id of the group named by `state_group`.
pub fn group_id(name: &str) -> Result<u32> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(Error::Config(format!(
            "state_group: there is no group named '{}' (create it with groupadd, or remove the key)",
            crate::quote::bytes(name.as_bytes())
        ))),
        Err(e) => Err(Error::Config(format!(
            "state_group: cannot look up group '{}': {e}",
            crate::quote::bytes(name.as_bytes())
        ))),
    }
}

/// The `[watch]` table, with `--poll INTERVAL` (poll mode at that
/// interval) applied.
fn watch_table(wt: WatchTable, poll: Option<Duration>) -> Result<Watch> {
    let d = Watch::default();
    let mut w = Watch {
        mode: match wt.mode {
            Some(WatchModeName::Auto) | None => WatchMode::Auto,
            Some(WatchModeName::Inotify) => WatchMode::Inotify,
            Some(WatchModeName::Poll) => WatchMode::Poll,
        },
        interval: wt.interval.unwrap_or(d.interval),
        all_writes_local: wt.all_writes_local.unwrap_or(d.all_writes_local),
        full_scan_every: wt.full_scan_every.unwrap_or(d.full_scan_every),
    };
    if let Some(p) = poll {
        w.mode = WatchMode::Poll;
        w.interval = p;
    }
    if w.interval.is_zero() {
        return Err(Error::Config(
            "watch.interval: the poll interval must be greater than zero".into(),
        ));
    }
    if w.full_scan_every.is_zero() {
        return Err(Error::Config(
            "watch.full_scan_every: must be greater than zero".into(),
        ));
    }
    Ok(w)
}

fn parse_file(text: &str) -> std::result::Result<FileConfig, String> {
    toml::from_str::<FileConfig>(text).map_err(|e| e.to_string().trim_end().replace('\n', "\n  "))
}

/// A host name becomes a directory name under the root: one plain path
/// component, not hidden (dot-names belong to distlink's own state).
pub fn validate_host(h: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::Config(format!(
            "hosts: invalid host name '{}': {why}",
            crate::quote::bytes(h.as_bytes())
        )))
    };
    if h.is_empty() {
        return bad("it is empty");
    }
    if h.contains('/') {
        return bad("it contains '/'");
    }
    if h.contains('\0') {
        return bad("it contains a NUL byte");
    }
    if h.chars().any(char::is_control) {
        // Host names are printed in tables, logs and status lines.
        return bad("it contains a control character");
    }
    if h.starts_with('.') {
        return bad("it starts with '.' (hidden names are reserved)");
    }
    if h.len() > 255 {
        return bad("it is longer than 255 bytes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ov() -> Overrides {
        Overrides::default()
    }

    #[test]
    fn full_file_parses() {
        let c = Config::from_toml(
            r#"
root = "/srv/d"
hosts = ["a", "b"]
state_dir = "/var/lib/distlink"
settle = "2s"
ignore = ["*.part"]
dedupe = false
[watch]
mode = "poll"
interval = "10s"
"#,
            &ov(),
        )
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/srv/d"));
        assert_eq!(c.hosts, vec!["a", "b"]);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/distlink"));
        assert_eq!(c.settle, Duration::from_secs(2));
        assert!(!c.dedupe);
        assert_eq!(c.watch.mode, WatchMode::Poll);
        assert_eq!(c.watch.interval, Duration::from_secs(10));
        assert_eq!(c.metrics, None);
    }

    #[test]
    fn the_metrics_section_gives_a_path_and_an_interval() {
        let base = "root = \"/r\"\nhosts = [\"a\"]\n[metrics]\npath = \"/t/distlink.prom\"\n";
        let c = Config::from_toml(base, &ov()).unwrap();
        assert_eq!(
            c.metrics,
            Some(Metrics {
                path: PathBuf::from("/t/distlink.prom"),
                interval: DEFAULT_METRICS_INTERVAL
            })
        );
        let c = Config::from_toml(&format!("{base}interval = \"15s\"\n"), &ov()).unwrap();
        assert_eq!(c.metrics.unwrap().interval, Duration::from_secs(15));
    }

    #[test]
    fn watch_defaults_to_auto_and_takes_its_keys() {
        let c = Config::from_toml("root = \"/r\"\nhosts = [\"a\"]\n", &ov()).unwrap();
        assert_eq!(c.watch, Watch::default());
        assert_eq!(c.watch.mode, WatchMode::Auto);
        let c = Config::from_toml(
            "root = \"/r\"\nhosts = [\"a\"]\n[watch]\nmode = \"inotify\"\nall_writes_local = true\nfull_scan_every = \"10m\"\n",
            &ov(),
        )
        .unwrap();
        assert_eq!(c.watch.mode, WatchMode::Inotify);
        assert!(c.watch.all_writes_local);
        assert_eq!(c.watch.full_scan_every, Duration::from_secs(600));
    }

    #[test]
    fn flags_override_file() {
        let o = Overrides {
            root: Some("/x".into()),
            hosts: vec!["z".into()],
            settle: Some(Duration::from_millis(100)),
            poll: Some(Duration::from_secs(3)),
            ..ov()
        };
        let c = Config::from_toml("root = \"/srv/d\"\nhosts = [\"a\"]\n", &o).unwrap();
        assert_eq!(c.root, PathBuf::from("/x"));
        assert_eq!(c.hosts, vec!["z"]);
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.settle, Duration::from_millis(100));
        assert_eq!(c.watch.mode, WatchMode::Poll);
        assert_eq!(c.watch.interval, Duration::from_secs(3));
        assert!(c.dedupe);
    }

    fn err(text: &str) -> String {
        Config::from_toml(text, &ov()).unwrap_err().to_string()
    }

    #[test]
    fn bad_input_names_the_key() {
        let cases: &[(&str, &str)] = &[
            ("root = \"/r\"\nhosts = [\"a\"]\nbogus = 1\n", "bogus"),
            ("root = 5\nhosts = [\"a\"]\n", "root"),
            ("root = \"rel\"\nhosts = [\"a\"]\n", "root"),
            ("root = \"/r\"\nhosts = \"a\"\n", "hosts"),
            ("root = \"/r\"\nhosts = [\"a/b\"]\n", "hosts"),
            ("root = \"/r\"\nhosts = [\"..\"]\n", "hosts"),
            ("root = \"/r\"\nhosts = [\"a\", \"a\"]\n", "twice"),
            ("root = \"/r\"\nhosts = [\"a\\nb\"]\n", "control character"),
            (
                "root = \"/r\"\nhosts = [\"a\\u001b\"]\n",
                "control character",
            ),
            (
                "root = \"/r\"\nhosts = [\"a\"]\nsettle = \"soon\"\n",
                "settle",
            ),
            (
                "root = \"/r\"\nhosts = [\"a\"]\ndedupe = \"yes\"\n",
                "dedupe",
            ),
            (
                "root = \"/r\"\nhosts = [\"a\"]\n[watch]\nmode = \"fanotify\"\n",
                "mode",
            ),
            (
                "root = \"/r\"\nhosts = [\"a\"]\n[watch]\nspeed = 1\n",
                "speed",
            ),
            (
                "root = \"/r\"\nhosts = [\"a\"]\n[watch]\nall_writes_local = \"yes\"\n",
                "all_writes_local",
            ),
            (
                "root = \"/r\"\nhosts = [\"a\"]\n[watch]\nfull_scan_every = \"0s\"\n",
                "full_scan_every",
            ),
            (
                "root = \"/r\"\nhosts = [\"a\"]\n[watch]\ninterval = \"0s\"\n",
                "interval",
            ),
            (
                "root = \"/r\"\nhosts = [\"a\"]\nignore = [\"[\"]\n",
                "ignore",
            ),
            (
                "root = \"/r\"\nhosts = [\"a\"]\n[metrics]\ninterval = \"5s\"\n",
                "metrics.path",
            ),
            (
                "root = \"/r\"\nhosts = [\"a\"]\n[metrics]\npath = \"rel.prom\"\n",
                "metrics.path",
            ),
            (
                "root = \"/r\"\nhosts = [\"a\"]\n[metrics]\npath = \"/m/\"\n",
                "metrics.path",
            ),
            (
                "root = \"/r\"\nhosts = [\"a\"]\n[metrics]\npath = \"/m.prom\"\ninterval = \"10ms\"\n",
                "metrics.interval",
            ),
            (
                "root = \"/r\"\nhosts = [\"a\"]\n[metrics]\npath = \"/m.prom\"\nport = 9100\n",
                "port",
            ),
            (
                "root = \"/r\"\nhosts = [\"a\"]\nstate_group = \"no-such-group-x\"\n",
                "state_group",
            ),
            ("hosts = [\"a\"]\n", "root"),
            ("root = \"/r\"\n", "hosts"),
        ];
        for (text, key) in cases {
            let m = err(text);
            assert!(
                m.contains(key),
                "error for {text:?} should name {key:?}: {m}"
            );
        }
    }

    #[test]
    fn toml_syntax_error_names_the_line() {
        let m = err("root = \"/r\"\nhosts = [\"a\"\n");
        assert!(m.contains("line"), "{m}");
    }
}
