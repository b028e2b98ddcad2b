//! distlink: keeps per-host Gentoo distfiles directories hardlinked.

pub mod config;
pub mod engine;
pub mod error;
pub mod fsops;
pub mod layout;
pub mod names;
pub mod state;
pub mod settle;
