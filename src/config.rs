//! The configuration: a TOML file merged with command-line overrides into one
//! plain [`Config`]. Nothing outside `main.rs` sees the command-line parser.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Where the configuration file is looked for when none is named.
pub const DEFAULT_CONFIG: &str = "/etc/distlink.toml";
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(5);
pub const DEFAULT_POLL: Duration = Duration::from_secs(30);
/// Where the record lives unless configured: root's alone, outside the
/// distfiles root (which clients and portage write).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/distlink";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    Inotify,
    Poll(Duration),
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
    pub watch: WatchMode,
    pub log_format: LogFormat,
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
    standby: Option<bool>,
    watch: Option<WatchTable>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchTable {
    mode: Option<WatchModeName>,
    #[serde(default, deserialize_with = "de_duration")]
    interval: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WatchModeName {
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
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); use a form like \"500ms\" or \"5s\""))
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
                "root: {:?} is not an absolute path",
                root.display().to_string()
            )));
        }
        let hosts = if !ov.hosts.is_empty() {
            ov.hosts.clone()
        } else {
            f.hosts.unwrap_or_default()
        };
        if hosts.is_empty() {
            return Err(cfg_err(
                "hosts: no hosts given (set `hosts` in the config file, or pass --host for run, sync, status and check, --hosts for prune and migrate)".into(),
            ));
        }
        for (i, h) in hosts.iter().enumerate() {
            validate_host(h)?;
            if hosts[..i].contains(h) {
                return Err(cfg_err(format!("hosts: host {h:?} is listed twice")));
            }
        }
        let state_dir = match (&ov.state_dir, &f.state_dir) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => PathBuf::from(s),
            (None, None) => PathBuf::from(DEFAULT_STATE_DIR),
        };
        if !state_dir.is_absolute() {
            return Err(cfg_err(format!(
                "state_dir: {:?} is not an absolute path",
                state_dir.display().to_string()
            )));
        }
        let ignore = f.ignore.unwrap_or_default();
        crate::names::NameFilter::new(&ignore)?;
        let wt = f.watch.unwrap_or_default();
        let mut watch = match wt.mode {
            Some(WatchModeName::Poll) => WatchMode::Poll(wt.interval.unwrap_or(DEFAULT_POLL)),
            Some(WatchModeName::Inotify) | None => WatchMode::Inotify,
        };
        if let Some(p) = ov.poll {
            watch = WatchMode::Poll(p);
        }
        if let WatchMode::Poll(d) = watch
            && d.is_zero()
        {
            return Err(cfg_err(
                "watch.interval: the poll interval must be greater than zero".into(),
            ));
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
            standby: f.standby.unwrap_or(false),
            file,
        })
    }
}

fn parse_file(text: &str) -> std::result::Result<FileConfig, String> {
    toml::from_str::<FileConfig>(text).map_err(|e| e.to_string().trim_end().replace('\n', "\n  "))
}

/// A host name becomes a directory name under the root: one plain path
/// component, not hidden (dot-names belong to distlink's own state).
pub fn validate_host(h: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::Config(format!(
            "hosts: invalid host name {h:?}: {why}"
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
        assert_eq!(c.watch, WatchMode::Poll(Duration::from_secs(10)));
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
        assert_eq!(c.watch, WatchMode::Poll(Duration::from_secs(3)));
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
                "root = \"/r\"\nhosts = [\"a\"]\nignore = [\"[\"]\n",
                "ignore",
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
