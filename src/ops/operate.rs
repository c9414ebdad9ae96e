//! Start, stop and restart of an installed service (spec §13). Stop
//! records that its owner stopped it, so `reapply` and boot leave it down;
//! start and restart wait for its health. Routes and rules stay.

use super::project;
use super::txn::{step, Session};
use super::Ctx;
use crate::compose::{self, Project};
use crate::error::{Error, Result};
use crate::ids::ServiceId;
use std::time::Duration;

const STOP_TIMEOUT: Duration = Duration::from_secs(3 * 60);

/// What the owner asks of a running service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
}

impl Action {
    pub fn verb(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
        }
    }

    pub fn done(self) -> &'static str {
        match self {
            Action::Start => "started",
            Action::Stop => "stopped",
            Action::Restart => "restarted",
        }
    }
}

/// Runs `action` on the installed, non-instanceable service `id`.
pub fn operate(ctx: &mut Ctx, id: &ServiceId, action: Action, wait: Duration) -> Result<()> {
    let mut session = Session::open(ctx, wait)?;
    let Some(rec) = session.state.services.get(id.as_str()) else {
        return Err(Error::NotFound(format!("{id} is not installed")));
    };
    if rec.manifest.instanceable {
        return Err(Error::Conflict(format!(
            "{id} runs only as its connections' instances; there is nothing to {}",
            action.verb()
        )));
    }
    let project = project::service(ctx.config, id.as_str());
    ctx.say(&format!("{id}: {}", action.verb()));
    match action {
        Action::Stop => step("docker compose stop", compose_run(ctx, &project, "stop"))?,
        Action::Start => {
            step("docker compose up", project::up(ctx, &project))?;
            if let Err(e) = project::wait_healthy(ctx, &project) {
                // Undone as any failure: the service is down again, as its
                // owner left it.
                if let Err(u) = compose_run(ctx, &project, "stop") {
                    log::error!("undo failed: {u}");
                }
                return Err(e);
            }
        }
        Action::Restart => {
            step(
                "docker compose restart",
                compose_run(ctx, &project, "restart"),
            )?;
            project::wait_healthy(ctx, &project)?;
        }
    }
    let mut next = session.state.clone();
    if let Some(rec) = next.services.get_mut(id.as_str()) {
        rec.stopped = action == Action::Stop;
    }
    session.commit(next)?;
    ctx.say(&format!("{id}: {}", action.done()));
    Ok(())
}

/// `docker compose stop` or `restart` of every container of the project.
fn compose_run(ctx: &mut Ctx, project: &Project, sub: &str) -> Result<()> {
    let mut cmd = compose::compose_cmd(ctx.config, project);
    if sub == "stop" {
        // Also a helper that only a profile runs.
        cmd = cmd.args(["--profile", "*"]);
    }
    let cmd = cmd.arg(sub).timeout(STOP_TIMEOUT);
    let host = ctx.host;
    host.run_with_progress(&cmd, &mut *ctx.progress).map(|_| ())
}
