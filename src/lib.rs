//! distlink: keeps per-host Gentoo distfiles directories hardlinked.

pub mod config;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod few;
pub mod fskind;
pub mod fsops;
pub mod identity;
pub mod layout;
pub mod logbuf;
pub mod man;
pub mod metrics;
pub mod migrate;
pub mod names;
pub mod prune;
pub mod quote;
pub mod settle;
pub mod state;
pub mod statedir;
pub mod status;
pub mod watch;
