//! Operator commands as an admin types them: the command lines of
//! `prune` and `migrate`, in one place.

use std::path::Path;
use std::process::Command;

use super::Env;

impl Env {
    /// `distlink prune` of `host`'s dir, with the selection in `more`.
    pub fn prune(&self, host: &str, more: &[&str]) -> Command {
        let mut args = vec![host];
        args.extend_from_slice(more);
        self.command("prune", &args)
    }

    /// `distlink migrate` moving the flat DISTDIR `from` into `host`.
    pub fn migrate_from(&self, from: &Path, host: &str, more: &[&str]) -> Command {
        let from = from.to_str().expect("utf-8 temp path");
        let mut args = vec!["--from", from, "--into", host];
        args.extend_from_slice(more);
        self.command("migrate", &args)
    }

    /// `distlink migrate` of the host dirs as they are.
    pub fn migrate(&self, more: &[&str]) -> Command {
        self.command("migrate", more)
    }
}

impl Env {
    /// `status`/`check` and the like: root, state dir, hosts and the
    /// extra arguments (a `--config`), nothing a reader does not take.
    pub fn reader(&self, sub: &str, more: &[&str]) -> Command {
        let mut c = Command::new(super::bin());
        c.arg(sub)
            .arg("--root")
            .arg(&self.root)
            .arg("--state-dir")
            .arg(&self.state);
        for h in &self.hosts {
            c.args(["--host", h]);
        }
        c.args(&self.extra).args(more);
        c
    }

    /// Like [`Env::reader`], run as user `nobody` with group `group` and
    /// no other (a monitoring agent), through `setpriv`.
    pub fn reader_as_nobody(&self, group: &str, sub: &str, more: &[&str]) -> Command {
        let inner = self.reader(sub, more);
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "nobody", "--regid", group, "--clear-groups"])
            .arg(inner.get_program())
            .args(inner.get_args());
        c
    }
}
