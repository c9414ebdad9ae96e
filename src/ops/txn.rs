//! The transaction machinery every operation shares (spec §4): the
//! [`Session`] (the lock, the state loaded under it, a dead process's
//! pending operation settled, `pending` written before the first side
//! effect and cleared with the final state), the [`Undo`] steps taken back
//! in reverse when a later step fails, and [`step`], which names a failed
//! step in its error.

use super::project::{self, Volumes};
use super::settle::settle;
use super::Ctx;
use crate::compose::Project;
use crate::error::{Error, Result};
use crate::files;
use crate::state::{Pending, PendingOp, State, StateLock, StateStore};
use std::path::PathBuf;
use std::time::Duration;

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
        apply_network(ctx, &self.state)
    }

    /// Records `pending` before the operation's first side effect.
    pub fn begin(&mut self, op: PendingOp, target: &str) -> Result<()> {
        self.state.pending = Some(Pending::now(op, target));
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

/// A step to take back when a later step fails.
pub(crate) enum Undo {
    /// `docker compose down` of a project brought up by this operation.
    Down(Project),
    /// `docker compose up -d` of the project file as it was before.
    Restore(Project),
    RemoveFile(PathBuf),
    RemoveDir(PathBuf),
    /// Re-program firewall, routes and Caddy for this (the old) state.
    Network(Box<State>),
}

pub(crate) fn undo_all(ctx: &mut Ctx, undo: Vec<Undo>) {
    for u in undo.into_iter().rev() {
        let r = match &u {
            Undo::Down(p) => project::down(ctx.host, ctx.config, p, Volumes::Remove),
            Undo::Restore(p) => project::up(ctx, p),
            Undo::RemoveFile(f) => files::remove_file_if_exists(f),
            Undo::RemoveDir(d) => files::remove_dir_all_if_exists(d),
            Undo::Network(s) => crate::net::apply_all(ctx.host, ctx.config, s).map(|_| ()),
        };
        if let Err(e) = r {
            log::error!("undo failed: {e}");
        }
    }
}

/// Programs the network for `state`; a Caddy reload failure is reported,
/// not fatal.
pub(crate) fn apply_network(ctx: &mut Ctx, state: &State) -> Result<()> {
    let report = crate::net::apply_all(ctx.host, ctx.config, state)?;
    for line in report.problems() {
        ctx.say(&line);
    }
    report.fatal()
}
