//! Operations that change the system (spec §4, §8, §10): install, remove,
//! update, connection create/delete, peer routes, egress, settings. Each is
//! a transaction under the state lock: `pending` is written before the
//! first side effect, every completed step is undone in reverse on failure,
//! and whoever takes the lock next settles a `pending` left by a process
//! that died (`settle.rs`). [`Command`] is the one list of operations;
//! `txn.rs` holds the transaction machinery, `project.rs` the compose
//! project lifecycle.

mod alloc;
mod command;
mod connection;
mod logs;
mod operate;
mod parallel;
mod project;
mod reapply;
mod service;
mod settle;
mod txn;
mod values;

#[cfg(test)]
mod tests;

pub(crate) use command::{mode_name, parse_mode, Command, Purge};
pub use connection::Peer;
pub(crate) use connection::{
    connection_add, connection_remove, egress_clear, egress_set, peer_route, peer_unroute,
    set_verification_mode,
};
pub(crate) use logs::{logs, parse_tail, LogsOf};
pub(crate) use operate::{operate, Action};
pub(crate) use reapply::{dry_run, reapply, DryRun};
pub(crate) use service::prepare_doc;
#[cfg(test)]
use service::remove;
pub(crate) use service::{configure, install, remove_forcing, update};
pub(crate) use txn::Session;

use crate::config::Config;
use crate::host::Host;
use crate::store::StoreClient;

/// What every operation runs with.
pub struct Ctx<'a> {
    pub config: &'a Config,
    pub host: &'a dyn Host,
    pub store: &'a StoreClient,
    /// Receives progress lines (image pull progress included).
    pub progress: &'a mut dyn FnMut(&str),
}

impl Ctx<'_> {
    pub fn say(&mut self, line: &str) {
        log::info!("{line}");
        (self.progress)(line);
    }
}
