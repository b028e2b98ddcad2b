//! Operator commands as an admin types them: the command lines of
//! `prune` and `migrate`, in one place.

use std::path::Path;
use std::process::Command;

use super::Env;

impl Env {
    /// `distlink prune` of `host`'s dir, with the selection in `more`.
    pub fn prune(&self, host: &str, more: &[&str]) -> Command {
        let mut args = vec!["--host", host];
        args.extend_from_slice(more);
        self.single("prune", &args)
    }

    /// `distlink migrate` moving the flat DISTDIR `from` into `host`.
    pub fn migrate_from(&self, from: &Path, host: &str, more: &[&str]) -> Command {
        let from = from.to_str().expect("utf-8 temp path");
        let mut args = vec!["--from", from, "--host", host];
        args.extend_from_slice(more);
        self.single("migrate", &args)
    }

    /// `distlink migrate` of the host dirs as they are.
    pub fn migrate(&self, more: &[&str]) -> Command {
        self.single("migrate", more)
    }
}
