//! Settling an operation left `pending` by a process that died (spec §4):
//! an install or a connection create is rolled back, an update is rolled
//! back to the old version, a remove or a connection delete is finished.

use super::project::{self, Volumes};
use super::service;
use super::Ctx;
use crate::error::Result;
use crate::files;
use crate::state::{Pending, PendingOp, State};

/// Returns the state with the operation settled (the caller clears
/// `pending` and commits). Steps that fail are logged and skipped where
/// the state can still be kept true; the next reapply retries them.
pub fn settle(ctx: &mut Ctx, state: &State, pending: &Pending) -> Result<State> {
    let id = pending.target.as_str();
    ctx.say(&format!(
        "settling a {} of {id} left by process {}",
        pending.op, pending.pid
    ));
    let mut next = state.clone();
    next.pending = None;
    match &pending.op {
        PendingOp::Install { made_data_dir } => {
            let project = project::service(ctx.config, id);
            log_err(project::down(
                ctx.host,
                ctx.config,
                &project,
                Volumes::Remove,
            ));
            log_err(files::remove_file_if_exists(&project.file));
            if *made_data_dir {
                log_err(files::remove_dir_all_if_exists(&project::data_dir(
                    ctx.config, id,
                )));
            }
            next.services.remove(id);
        }
        PendingOp::Remove { purge } => match service::remove_steps(ctx, state, id, *purge) {
            Ok(s) => next = s,
            Err(e) => {
                log::error!("finishing the remove of {id} failed: {e}; it stays installed")
            }
        },
        PendingOp::Update { old_doc } | PendingOp::Configure { old_doc } => {
            let project = project::service(ctx.config, id);
            log_err(files::remove_file_if_exists(
                &project::staged(ctx.config, id).file,
            ));
            if let Some(doc) = old_doc {
                let restored = serde_json::to_vec_pretty(doc)
                    .map_err(|e| crate::error::Error::failed("restore the compose file", e))
                    .and_then(|b| files::write_atomic(&project.file, &b, 0o600));
                log_err(restored);
                log_err(project::up(ctx, &project));
            }
        }
        PendingOp::ConnectionCreate { .. } | PendingOp::ConnectionDelete { .. } => {
            super::connection::settle_connection(ctx, &mut next, pending);
        }
    }
    log_err(super::txn::apply_network(ctx, &next));
    Ok(next)
}

fn log_err(r: Result<()>) {
    if let Err(e) = r {
        log::error!("while settling: {e}");
    }
}
