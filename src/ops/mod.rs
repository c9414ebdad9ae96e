//! Operations that change the system (spec §4, §8, §10): install, remove,
//! update, connection create/delete, peer routes, egress, settings. Each is
//! a transaction under the state lock: `pending` is written before the
//! first side effect, every completed step is undone in reverse on failure,
//! and whoever takes the lock next settles a `pending` left by a process
//! that died (see [`settle`]).

mod connection;
mod parallel;
mod reapply;
mod service;
mod settle;

pub use connection::{
    connection_add, connection_remove, egress_clear, egress_set, parse_peer, peer_route,
    peer_unroute, set_verification_mode, ConnectionOutcome,
};
pub use reapply::{dry_run, reapply, start_order, DryRun, ReapplyReport};
pub(crate) use service::prepare_doc;
pub use service::{install, remove, update, InstallOutcome, RemoveOutcome, UpdateOutcome};
pub use settle::settle;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::state::{Pending, PendingOp, State, StateLock, StateStore};
use crate::store::StoreClient;
use std::time::Duration;

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

/// The lock and the state loaded under it, with any pending operation of
/// a dead process already settled.
pub struct Session {
    lock: StateLock,
    pub state: State,
}

impl Session {
    /// Takes the lock (waiting up to `wait`), loads the state (an
    /// unreadable file is an error, never an empty state) and settles a
    /// pending operation.
    pub fn open(ctx: &mut Ctx, wait: Duration) -> Result<Session> {
        let store = StateStore::new(&ctx.config.state_dir);
        let lock = store.lock(wait)?;
        let state = lock.load()?;
        let mut session = Session { lock, state };
        session.settle(ctx)?;
        Ok(session)
    }

    /// Like [`Session::open`], but an unreadable `state.json` is restored
    /// from `state.json.bak` (for `reapply`). Returns what it recovered.
    pub fn open_recovering(ctx: &mut Ctx, wait: Duration) -> Result<(Session, Option<String>)> {
        let store = StateStore::new(&ctx.config.state_dir);
        let lock = store.lock(wait)?;
        let (state, recovered) = lock.load_or_recover()?;
        let mut session = Session { lock, state };
        session.settle(ctx)?;
        Ok((session, recovered))
    }

    fn settle(&mut self, ctx: &mut Ctx) -> Result<()> {
        remove_stray_temp_files(&ctx.config.compose_dir());
        if let Some(pending) = self.state.pending.clone() {
            let settled = settle(ctx, &self.state, &pending)?;
            self.state = settled;
            self.state.pending = None;
            self.lock.commit(&self.state)?;
        }
        Ok(())
    }

    /// Makes firewall, policy routing and Caddy match the state: a process
    /// killed between applying a route and committing it (or the other way
    /// round) leaves the kernel and the state apart until this runs.
    pub fn reconcile_network(&self, ctx: &mut Ctx) -> Result<()> {
        service::apply_network(ctx, &self.state)
    }

    /// Records `pending` before the operation's first side effect.
    pub fn begin(&mut self, op: PendingOp, target: &str, detail: serde_json::Value) -> Result<()> {
        self.state.pending = Some(Pending {
            op,
            target: target.to_string(),
            started_at: crate::files::now_unix(),
            pid: std::process::id(),
            detail,
        });
        self.lock.commit(&self.state)
    }

    /// Commits `next` as the new state with `pending` cleared.
    pub fn finish(&mut self, mut next: State) -> Result<()> {
        next.pending = None;
        self.lock.commit(&next)?;
        self.state = next;
        Ok(())
    }

    /// Clears `pending`, keeping the state as it was before the operation.
    pub fn abandon(&mut self) -> Result<()> {
        let mut s = self.state.clone();
        s.pending = None;
        self.finish(s)
    }

    /// Commits a change that has no side effect outside the state.
    pub fn commit(&mut self, next: State) -> Result<()> {
        self.finish(next)
    }
}

/// A process killed in the middle of an atomic write leaves its temporary
/// file; under the lock nobody else is writing, so any there is garbage.
fn remove_stray_temp_files(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        if e.file_name().to_string_lossy().ends_with(".tmp") {
            log::info!(
                "removing {}, left by an interrupted write",
                e.path().display()
            );
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Turns a step's error into one that names the step.
pub(crate) fn step<T>(name: &str, r: Result<T>) -> Result<T> {
    r.map_err(|e| match e {
        e @ (Error::Invalid { .. }
        | Error::NotFound(_)
        | Error::Conflict(_)
        | Error::Store { .. }
        | Error::Busy(_)
        | Error::Failed { .. }) => e,
        other => Error::failed(name, other),
    })
}
