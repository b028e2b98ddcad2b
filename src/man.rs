//! Man pages: `distlink(1)` and one page per subcommand (`distlink-run(1)`,
//! …), generated from the command-line definitions by `clap_mangen`, with
//! the sections it cannot know added: EXIT STATUS, FILES, SIGNALS (run),
//! EXAMPLES and SEE ALSO.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The command as the pages describe it: built, without clap's `help`
/// subcommand (it would get a page of its own).
fn built(cmd: clap::Command) -> clap::Command {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The subcommands that get a page, in the order clap lists them.
fn subcommands(cmd: &clap::Command) -> Vec<clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect()
}

/// Writes `distlink.1` and one `distlink-SUB.1` per subcommand into
/// `dir` (which must exist); returns the paths written.
pub fn write_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    let cmd = built(cmd);
    let subs = subcommands(&cmd);
    let names: Vec<String> = subs.iter().map(|s| s.get_name().to_string()).collect();
    let mut pages = vec![("distlink.1".to_string(), page(&cmd, None, &names)?)];
    for s in &subs {
        pages.push((
            format!("distlink-{}.1", s.get_name()),
            page(s, Some(s.get_name()), &names)?,
        ));
    }
    let mut written = Vec::new();
    for (file, text) in pages {
        let path = dir.join(file);
        // Never written through a symlink planted under a page's name.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| Error::Io {
                path: path.clone(),
                source: e,
            })?;
        f.write_all(text.as_bytes()).map_err(|e| Error::Io {
            path: path.clone(),
            source: e,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// The page `distlink(1)` (what `distlink man` prints).
pub fn top_page(cmd: clap::Command) -> Result<String> {
    let cmd = built(cmd);
    let names: Vec<String> = subcommands(&cmd)
        .iter()
        .map(|s| s.get_name().to_string())
        .collect();
    page(&cmd, None, &names)
}

/// One page: clap's sections, then ours.
fn page(cmd: &clap::Command, sub: Option<&str>, all: &[String]) -> Result<String> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .manual("distlink")
        .source(format!("distlink {}", env!("CARGO_PKG_VERSION")))
        .render(&mut out)
        .map_err(|e| Error::Io {
            path: "man page".into(),
            source: e,
        })?;
    let mut s = String::from_utf8_lossy(&out).into_owned();
    if sub.is_none() {
        // distlink(1) says what it is for, after clap's one-line description.
        let at = s.find(".SH OPTIONS").unwrap_or(s.len());
        let text: String = OVERVIEW
            .iter()
            .map(|p| format!(".PP\n{}\n", esc(p)))
            .collect();
        s.insert_str(at, &text);
    }
    extra_sections(&mut s, sub, all);
    Ok(s)
}

/// What distlink(1) says it is for, one paragraph each.
const OVERVIEW: &[&str] = &[
    "Gentoo machines sharing one distfiles directory over NFS cannot prune it: eclean-dist on \
     one host deletes tarballs another host still needs. distlink gives every host its own \
     directory on the server (ROOT/HOST, each client mounting its own as DISTDIR), all on one \
     filesystem, and hardlinks every completed file of one host's directory into every other \
     host's directory. Each host prunes its own directory freely; the bytes are freed when the \
     last host drops its link.",
    "A pruned file never comes back (not after a rescan, a restart or a crash); a file still \
     being written never reaches another host; identical copies are merged into one inode, \
     different ones under one name are reported as conflicts and left alone; nothing outside \
     the root is ever touched. A small record in the state dir tells a file that arrived while \
     distlink was down from one a host pruned meanwhile.",
    "distlink run is the daemon; migrate moves an existing setup over once; prune removes files \
     of an offline or retired host; status and check report. Each has its own page.",
];

/// Text for a roff text line: backslashes and minus signs escaped (so
/// options copy and paste as typed), a leading `.` or `'` made literal.
fn esc(text: &str) -> String {
    let t = text
        .split(' ')
        .map(|w| {
            let w = w.replace('\\', "\\e").replace('-', "\\-");
            // A path is never hyphenated.
            if w.contains('/') {
                format!("\\%{w}")
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

/// Exit statuses: 0 and 2 mean the same for every command; 1 differs.
fn exit_one(sub: Option<&str>) -> &'static str {
    match sub {
        Some("run") => {
            "A fatal error after the start (the record or a host dir could not be opened); \
             the log says which. Per-file problems never stop the daemon."
        }
        Some("sync") => {
            "Something was left undone: a link failed or is still owed to a host, or a file \
             was still changing after the wait."
        }
        Some("prune") => {
            "A file could not be removed (each one is listed), or the prune was held back and \
             nothing removed: keep lists that name none of the host's files (without --force), \
             or a selection that takes every file of the host (without --all)."
        }
        Some("migrate") => {
            "Something was left undone: a link or an import failed, or a file was still \
             changing after the wait."
        }
        Some("check") => "Problems were found: one line each on standard output.",
        Some("completions" | "man") => "The output could not be written.",
        _ => "An error (the message names the file, key or host).",
    }
}

fn examples(sub: Option<&str>) -> &'static [(&'static str, &'static str)] {
    match sub {
        None => &[
            (
                "Try it on a demo root (two hosts; Ctrl-C stops it):",
                "distlink run --root /tmp/distfiles --state-dir /tmp/distfiles.state \\\n  \
                 --host server --host client1",
            ),
            (
                "Once, on host dirs that already hold files, then as a service:",
                "distlink migrate\nsystemctl enable --now distlink",
            ),
            ("What is shared and saved:", "distlink status"),
        ],
        Some("run") => &[
            (
                "As the services run it:",
                "distlink run --config /etc/distlink.toml",
            ),
            (
                "Without a configuration file:",
                "distlink run --root /var/cache/distfiles --state-dir /var/lib/distlink \\\n  \
                 --host server --host client1 --host client2",
            ),
            (
                "Re-read the configuration and rescan:",
                "systemctl reload distlink     # or: rc-service distlink reload",
            ),
        ],
        Some("sync") => &[
            (
                "One reconcile pass with the daemon stopped:",
                "distlink sync",
            ),
            (
                "Take the host dirs as they are now as already distributed:",
                "distlink sync --adopt",
            ),
        ],
        Some("prune") => &[
            (
                "See what removing an offline host's old files would free:",
                "distlink prune client2 --older-than 180d --dry-run",
            ),
            (
                "Keep only what a host still needs (list made on that host):",
                "distlink prune client2 --keep-list client2-needed.txt",
            ),
            ("Retire a host:", "distlink prune oldhost --all"),
        ],
        Some("migrate") => &[
            (
                "What would be linked and merged:",
                "distlink migrate --dry-run",
            ),
            ("Link every file into every host:", "distlink migrate"),
            (
                "Move a flat DISTDIR into the server's own host dir first:",
                "distlink migrate --from /var/cache/distfiles.old --into server",
            ),
        ],
        Some("status") => &[
            ("The table:", "distlink status"),
            ("For scripts:", "distlink status --json"),
            (
                "Metrics for node_exporter's textfile collector (the daemon's [metrics] \
                 section writes them by itself):",
                "distlink status --prometheus > /var/lib/node_exporter/distlink.prom.tmp &&\n  \
                 mv /var/lib/node_exporter/distlink.prom.tmp /var/lib/node_exporter/distlink.prom",
            ),
        ],
        Some("check") => &[
            (
                "A Nagios-style check (exit 0 or 1, one line per problem):",
                "distlink check",
            ),
            ("For scripts:", "distlink check --json"),
        ],
        Some("forget") => &[(
            "Forget a retired host, so that a new machine of that name gets every file:",
            "systemctl stop distlink\ndistlink forget oldhost\nsystemctl start distlink",
        )],
        Some("completions") => &[(
            "Install the bash completion:",
            "distlink completions bash > /usr/share/bash-completion/completions/distlink",
        )],
        Some("man") => &[(
            "Write every page:",
            "distlink man --dir /usr/share/man/man1",
        )],
        Some(_) => &[],
    }
}

fn extra_sections(o: &mut String, sub: Option<&str>, all: &[String]) {
    let _ = writeln!(o, ".SH \"EXIT STATUS\"");
    for (code, text) in [
        ("0", "Success."),
        ("1", exit_one(sub)),
        (
            "2",
            "A usage or configuration error, or a refusal (another daemon holds the state dir, \
             a state dir others could write, a record of another root, host dirs holding files \
             but no record yet).",
        ),
    ] {
        let _ = writeln!(o, ".TP\n.B {code}\n{}", esc(text));
    }
    if !matches!(sub, Some("completions" | "man")) {
        let _ = writeln!(o, ".SH FILES");
        for (file, text) in [
            (
                "/etc/distlink.toml",
                "The configuration, read when it exists and no --config is given; \
                 command-line options override it.",
            ),
            (
                "/var/lib/distlink",
                "The state dir (state_dir): the record state.db, the links journal \
                 links.journal and the pid of the process holding the lock. It must be \
                 root's alone and outside the root.",
            ),
            (
                "/var/log/distlink.log",
                "The daemon's log under OpenRC (error_log in /etc/conf.d/distlink); under \
                 systemd the log goes to the journal.",
            ),
        ] {
            let _ = writeln!(o, ".TP\n.I {file}\n{}", esc(text));
        }
    }
    if sub == Some("run") {
        let _ = writeln!(o, ".SH SIGNALS");
        for (sig, text) in [
            (
                "SIGHUP",
                "Re-read the configuration file and rescan every host dir: new hosts are \
                 seeded, removed ones left as they are, new ignore patterns and settle time \
                 applied. An invalid configuration is logged and the old one kept. root, \
                 state_dir and the watch mode change only with a restart.",
            ),
            (
                "SIGTERM, SIGINT",
                "Finish the batch in hand, write the record and exit 0. A full scan in \
                 progress stops between two files; the next start does the rest.",
            ),
        ] {
            let _ = writeln!(o, ".TP\n.B {sig}\n{}", esc(text));
        }
    }
    let ex = examples(sub);
    if !ex.is_empty() {
        let _ = writeln!(o, ".SH EXAMPLES");
        for (what, cmds) in ex {
            let cmds = cmds.lines().map(esc).collect::<Vec<_>>().join("\n");
            let _ = writeln!(o, ".PP\n{}\n.PP\n.RS 4\n.nf\n{cmds}\n.fi\n.RE", esc(what));
        }
    }
    // `\%`: a page name is never hyphenated across two lines.
    let _ = writeln!(o, ".SH \"SEE ALSO\"");
    let mut refs: Vec<(String, &str)> = Vec::new();
    if sub.is_some() {
        refs.push(("distlink".into(), "1"));
    }
    for n in all {
        if sub != Some(n.as_str()) {
            refs.push((format!("distlink\\-{n}"), "1"));
        }
    }
    refs.push(("eclean\\-dist".into(), "1"));
    refs.push(("exports".into(), "5"));
    let last = refs.len() - 1;
    for (i, (page, sec)) in refs.iter().enumerate() {
        let sep = if i == last { "" } else { "," };
        let _ = writeln!(o, ".BR \\%{page} ({sec}){sep}");
    }
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn text_is_escaped_for_roff() {
        assert_eq!(esc("--dir"), "\\-\\-dir");
        assert_eq!(esc(".hidden"), "\\&.hidden");
        assert_eq!(esc("a\\b"), "a\\eb");
        assert_eq!(esc("in /a/b-c"), "in \\%/a/b\\-c");
    }
}
