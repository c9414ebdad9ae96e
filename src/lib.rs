//! pic-store: the service store manager of a Personal Internet Cell.
//! `main.rs` is a shim over [`cli::run`]; see README.md, "Architecture".

pub mod cli;
pub mod compose;
pub mod config;
pub mod disk;
pub mod docker;
pub mod error;
pub mod files;
pub mod host;
pub mod http;
pub mod ids;
pub mod manifest;
pub mod net;
pub mod ops;
pub mod report;
pub mod runtime;
pub mod state;
pub mod store;
pub mod token;
pub mod validate;
