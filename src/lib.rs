//! pic-store: the service store manager of a Personal Internet Cell.
//! `main.rs` is a shim over [`cli::run`]; see README.md, "Architecture".
//! Public are only the modules the binary, `tests/` and `fuzz/` use.

pub mod cli;
pub mod compose;
pub mod config;
mod disk;
mod docker;
pub mod error;
mod files;
pub mod host;
pub mod http;
pub mod ids;
pub mod manifest;
pub mod net;
pub mod ops;
mod out;
mod report;
mod runtime;
pub mod state;
pub mod store;
mod token;
mod validate;
