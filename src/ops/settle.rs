//! Settling an operation left `pending` by a process that died (spec §4):
//! an install or a connection create is rolled back, an update is rolled
//! back to the old version, a remove or a connection delete is finished.

use super::service::{self, compose_down, project_file, Volumes};
use super::Ctx;
use crate::compose::Project;
use crate::error::Result;
use crate::files;
use crate::state::{Pending, PendingOp, State};

/// Returns the state with the operation settled (the caller clears
/// `pending` and commits). Steps that fail are logged and skipped where
/// the state can still be kept true; the next reapply retries them.
pub fn settle(ctx: &mut Ctx, state: &State, pending: &Pending) -> Result<State> {
    let id = pending.target.as_str();
    ctx.say(&format!(
        "settling a {:?} of {id} left by process {}",
        pending.op, pending.pid
    ));
    let mut next = state.clone();
    next.pending = None;
    match pending.op {
        PendingOp::Install => {
            let name = crate::compose::project_name(id, None);
            let project = Project {
                file: project_file(ctx.config, &name),
                name,
            };
            log_err(compose_down(
                ctx.host,
                ctx.config,
                &project,
                Volumes::Remove,
            ));
            log_err(files::remove_file_if_exists(&project.file));
            if pending.detail["made_data_dir"].as_bool() == Some(true) {
                log_err(files::remove_dir_all_if_exists(&service::data_dir(
                    ctx.config, id,
                )));
            }
            next.services.remove(id);
        }
        PendingOp::Remove => {
            let purge = pending.detail["purge"].as_bool() == Some(true);
            match service::remove_steps(ctx, state, id, purge) {
                Ok(s) => next = s,
                Err(e) => {
                    log::error!("finishing the remove of {id} failed: {e}; it stays installed")
                }
            }
        }
        PendingOp::Update => {
            let name = crate::compose::project_name(id, None);
            let project = Project {
                file: project_file(ctx.config, &name),
                name: name.clone(),
            };
            log_err(files::remove_file_if_exists(&service::config_new_file(
                ctx.config, &name,
            )));
            if let Some(doc) = pending.detail.get("old_doc").filter(|d| !d.is_null()) {
                let restored = serde_json::to_vec_pretty(doc)
                    .map_err(|e| crate::error::Error::failed("restore the compose file", e))
                    .and_then(|b| files::write_atomic(&project.file, &b, 0o600));
                log_err(restored);
                log_err(service::compose_up(ctx, &project));
            }
        }
        PendingOp::ConnectionCreate | PendingOp::ConnectionDelete => {
            super::connection::settle_connection(ctx, &mut next, pending);
        }
    }
    log_err(service::apply_network(ctx, &next));
    Ok(next)
}

fn log_err(r: Result<()>) {
    if let Err(e) = r {
        log::error!("while settling: {e}");
    }
}
