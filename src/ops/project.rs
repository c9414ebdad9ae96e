//! The compose project's lifecycle: which project a service or a
//! connection instance is (its name and file), and the one argv, with its
//! time limit, of each compose subcommand pic-store runs on it (`up`,
//! `down`, `pull`; `config` is the checker's, in `compose/run.rs`).

use super::Ctx;
use crate::compose::{self, Project};
use crate::config::Config;
use crate::docker;
use crate::error::{Error, Result};
use crate::files;
use crate::host::{Cmd, Host};
use crate::manifest;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PULL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const UP_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const DOWN_TIMEOUT: Duration = Duration::from_secs(3 * 60);
const LOGS_TIMEOUT: Duration = Duration::from_secs(10);

/// The project of an installed service: `pic-<id>`.
pub(crate) fn service(config: &Config, id: &str) -> Project {
    let name = compose::project_name(id, None);
    Project {
        file: project_file(config, &name),
        name,
    }
}

/// The project of a connection instance: `pic-<service>-<instance>`.
pub(crate) fn instance(config: &Config, service: &str, instance: &str) -> Project {
    let name = compose::project_name(service, Some(instance));
    Project {
        file: project_file(config, &name),
        name,
    }
}

/// Whether `compose down` also removes the project's named volumes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Volumes {
    Keep,
    Remove,
}

fn project_file(config: &Config, project: &str) -> PathBuf {
    config.compose_dir().join(format!("{project}.json"))
}

pub(crate) fn data_dir(config: &Config, id: &str) -> PathBuf {
    config.data_root().join(id)
}

pub(crate) fn down(
    host: &dyn Host,
    config: &Config,
    project: &Project,
    volumes: Volumes,
) -> Result<()> {
    if !project.file.exists() {
        return docker::remove_project_by_label(host, config, &project.name);
    }
    let mut cmd = compose::compose_cmd(config, project)
        .args(["--profile", "*", "down", "--remove-orphans"])
        .timeout(DOWN_TIMEOUT);
    if volumes == Volumes::Remove {
        cmd = cmd.arg("--volumes");
    }
    host.run(&cmd).map(|_| ())
}

/// `up -d`, pulling an image only when it is missing. Callers that may
/// have to pull (boot) give it a longer timeout.
pub(crate) fn up_cmd(config: &Config, project: &Project) -> Cmd {
    compose::compose_cmd(config, project)
        .args(["up", "-d", "--remove-orphans", "--pull", "missing"])
        .timeout(UP_TIMEOUT)
}

/// Brings a project up after checking its bind sources.
pub(crate) fn up(ctx: &mut Ctx, project: &Project) -> Result<()> {
    guard_binds(ctx.config, &project.file)?;
    let cmd = up_cmd(ctx.config, project);
    let host = ctx.host;
    host.run_with_progress(&cmd, &mut *ctx.progress).map(|_| ())
}

/// Refuses to bring a project up when one of its bind sources under the
/// data folders is, or passes through, a symlink: a container could plant
/// one in its own data folder to reach the host at the next `up`, which
/// docker would follow.
pub(crate) fn guard_binds(config: &Config, file: &Path) -> Result<()> {
    let bytes = files::read(file)?;
    let doc: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::failed(format!("read {}", file.display()), e))?;
    let root = config.data_root();
    for src in compose::bind_sources(&doc) {
        let norm = PathBuf::from(manifest::normalize_path(&src.to_string_lossy()));
        let Ok(rest) = norm.strip_prefix(&root) else {
            continue;
        };
        let mut p = root.clone();
        for part in rest.components() {
            p.push(part);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(Error::failed(
                        "bind mount check",
                        format!(
                            "{} is a symlink inside a data folder; refusing to mount {}",
                            p.display(),
                            src.display()
                        ),
                    ))
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    Ok(())
}

pub(crate) fn pull(ctx: &mut Ctx, project: &Project) -> Result<()> {
    // Every profile: each helper image is pulled and checked at install,
    // also one that only a profile turned off by default runs.
    let cmd = compose::compose_cmd(ctx.config, project)
        .args(["--profile", "*", "pull"])
        .timeout(PULL_TIMEOUT);
    let host = ctx.host;
    host.run_with_progress(&cmd, &mut *ctx.progress).map(|_| ())
}

/// The new version's compose file of an update, under the service's
/// project name, before it replaces the current one.
pub(crate) fn staged(config: &Config, id: &str) -> Project {
    let name = compose::project_name(id, None);
    Project {
        file: config.compose_dir().join(format!("{name}.new.json")),
        name,
    }
}

/// `logs --no-color --tail N [SERVICE]` over every profile; `service` must
/// have been checked against the project's compose file (`logs.rs`).
pub(crate) fn logs_cmd(
    config: &Config,
    project: &Project,
    tail: usize,
    service: Option<&str>,
) -> Cmd {
    let cmd = compose::compose_cmd(config, project)
        .args(["--profile", "*", "logs", "--no-color", "--tail"])
        .arg(tail.to_string())
        .timeout(LOGS_TIMEOUT);
    match service {
        Some(s) => cmd.arg(s),
        None => cmd,
    }
}

/// Waits up to `PIC_HEALTH_TIMEOUT` for every container of `project` to be
/// running, and healthy where it has a healthcheck (spec §13).
pub(crate) fn wait_healthy(ctx: &mut Ctx, project: &Project) -> Result<()> {
    let host = ctx.host;
    crate::runtime::wait_healthy(
        host,
        ctx.config,
        &project.name,
        ctx.config.health_timeout,
        &mut *ctx.progress,
    )
}

/// Refuses a pull that would leave the docker root or the state folder
/// with less than `PIC_MIN_FREE_MB` free (spec §13). The images' sizes are
/// not known before the pull, so they count as nothing.
pub(crate) fn check_disk(ctx: &mut Ctx) -> Result<()> {
    let root = crate::disk::docker_root(ctx.host, ctx.config)?;
    for folder in [root.as_path(), ctx.config.state_dir.as_path()] {
        let space = crate::disk::free(folder)?;
        crate::disk::check(&space, 0, ctx.config.min_free_mb)?;
    }
    Ok(())
}
