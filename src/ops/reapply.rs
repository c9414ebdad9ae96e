//! `pic-store reapply` (spec §11): make the running system match the state
//! file again, at boot or on demand. It settles a pending operation,
//! ensures the cell network, brings every service up in `requires` order
//! and then every connection instance (never pulling an image that is
//! present, so boot works offline), and rebuilds chains, policy routing and
//! the Caddy file. It carries on past a failing item.

use super::parallel;
use super::project;
use super::{Ctx, Session};
use crate::compose::Project;
use crate::config::Config;
use crate::docker;
use crate::error::Result;
use crate::state::{State, StateStore};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct Item {
    pub item: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct ReapplyReport {
    pub recovered: Option<String>,
    pub items: Vec<Item>,
    pub applied: usize,
    pub failed: usize,
}

impl ReapplyReport {
    pub fn summary(&self) -> String {
        format!("reapply: {} applied, {} failed", self.applied, self.failed)
    }
}

/// The ids an installed service requires.
fn requires_of(state: &State, id: &str) -> Vec<String> {
    state.services[id]
        .manifest
        .requires
        .iter()
        .map(|r| r.to_string())
        .collect()
}

/// Every installed service after the ones it requires (level by level of
/// the `requires` graph; ids sorted within a level).
pub(crate) fn start_order(state: &State) -> Vec<String> {
    let ids: Vec<&str> = state.services.keys().map(|id| id.as_str()).collect();
    let requires = |id: &str| requires_of(state, id);
    parallel::levels(&ids, requires)
        .into_iter()
        .flatten()
        .map(str::to_string)
        .collect()
}

pub fn reapply(ctx: &mut Ctx, wait: Duration) -> Result<ReapplyReport> {
    let (session, recovered) = Session::open_recovering(ctx, wait)?;
    let state = session.state.clone();
    let mut items = Vec::new();
    let mut record = |ctx: &mut Ctx, item: String, r: Result<String>| {
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(e) => (false, e.to_string()),
        };
        ctx.say(&format!(
            "{} {item}: {detail}",
            if ok { "ok  " } else { "FAIL" }
        ));
        items.push(Item { item, ok, detail });
    };

    let net = docker::ensure_network(ctx.host, ctx.config).map(|made| {
        if made {
            "created".to_string()
        } else {
            "present".to_string()
        }
    });
    record(ctx, format!("network {}", ctx.config.network), net);

    let inventory = Inventory::read(ctx);
    for (id, _) in state.services.iter().filter(|(_, svc)| svc.stopped) {
        record(
            ctx,
            format!("service {id}"),
            Ok("left down: stopped by its owner".into()),
        );
    }
    for (what, level) in up_levels(ctx.config, &state) {
        for (up, r) in level.iter().zip(up_level(ctx, &inventory, &level)) {
            record(ctx, format!("{what} {}", up.id), r);
        }
    }
    match crate::net::apply_all(ctx.host, ctx.config, &state) {
        Ok(report) => {
            for (part, r) in report.parts() {
                record(
                    ctx,
                    part,
                    r.map_err(|e| crate::error::Error::failed("apply", e)),
                );
            }
            for w in report.warnings() {
                ctx.say(&format!("warning: {w}"));
            }
        }
        Err(e) => record(ctx, "network rules".into(), Err(e)),
    }
    drop(session);
    let failed = items.iter().filter(|i| !i.ok).count();
    Ok(ReapplyReport {
        recovered,
        applied: items.len() - failed,
        failed,
        items,
    })
}

/// One project to bring up: the id it is reported under, the compose
/// project's name and its image.
struct Up {
    id: String,
    project: Project,
    image: String,
}

/// What `reapply` brings up, in the order it reports them: the services
/// level by level of their `requires` (each level's projects may come up
/// together), then the connection instances as one last level.
fn up_levels(config: &Config, state: &State) -> Vec<(&'static str, Vec<Up>)> {
    let ids: Vec<&str> = state
        .services
        .iter()
        .filter(|(_, svc)| !svc.manifest.instanceable && !svc.stopped)
        .map(|(id, _)| id.as_str())
        .collect();
    let requires = |id: &str| requires_of(state, id);
    let mut out = Vec::new();
    for level in parallel::levels(&ids, requires) {
        let ups = level
            .into_iter()
            .map(|id| Up {
                id: id.to_string(),
                project: project::service(config, id),
                image: state.services[id].manifest.image.clone(),
            })
            .collect();
        out.push(("service", ups));
    }
    let conns: Vec<Up> = state
        .connections
        .iter()
        .map(|(cid, conn)| Up {
            id: cid.to_string(),
            project: project::instance(config, &conn.service, cid),
            image: state
                .services
                .get(&conn.service)
                .map(|s| s.manifest.image.clone())
                .unwrap_or_default(),
        })
        .collect();
    if !conns.is_empty() {
        out.push(("connection", conns));
    }
    out
}

/// Brings up the projects of one level, `PIC_PARALLEL` at a time; the
/// results are in the level's order. A project that fails (or whose worker
/// panics) fails alone.
fn up_level(ctx: &mut Ctx, inv: &Inventory, level: &[Up]) -> Vec<Result<String>> {
    let (config, host, store) = (ctx.config, ctx.host, ctx.store);
    parallel::run_all(level, config.parallel, &mut *ctx.progress, |up, say| {
        let mut worker = Ctx {
            config,
            host,
            store,
            progress: say,
        };
        up_offline(&mut worker, inv, &up.project, &up.image)
    })
    .into_iter()
    .map(|r| r.unwrap_or_else(|panic| Err(crate::error::Error::failed("start", panic))))
    .collect()
}

/// What docker holds, read once per reapply: containers by project and
/// the local images. When it cannot be read, every project is brought up
/// (compose itself then says what is wrong).
struct Inventory {
    projects: std::collections::BTreeMap<String, Vec<crate::runtime::ContainerRuntime>>,
    images: Option<Vec<(String, String, String)>>,
}

impl Inventory {
    fn read(ctx: &mut Ctx) -> Inventory {
        Inventory {
            projects: crate::runtime::inventory(ctx.host, ctx.config).unwrap_or_default(),
            images: docker::local_images(ctx.host, ctx.config).ok(),
        }
    }

    /// Every container of the project is running (and there is one).
    fn all_running(&self, project: &str) -> bool {
        self.projects
            .get(project)
            .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.state.is_up()))
    }
}

/// `compose up -d` of a project that is not fully running, pulling nothing
/// when the image is present, and naming the image when it is missing and
/// cannot be pulled. A project whose containers all run is left alone.
fn up_offline(ctx: &mut Ctx, inv: &Inventory, project: &Project, image: &str) -> Result<String> {
    if !project.file.exists() {
        return Err(crate::error::Error::failed(
            "start",
            format!(
                "its compose file {} is missing; run `pic-store update` or reinstall",
                project.file.display()
            ),
        ));
    }
    if inv.all_running(&project.name) {
        return Ok("running".into());
    }
    project::guard_binds(ctx.config, &project.file)?;
    let present = match &inv.images {
        Some(images) => docker::image_listed(images, image),
        None => docker::image_present(ctx.host, ctx.config, image)?,
    };
    // It may have to pull a missing image: a longer bound than an install's.
    let cmd = project::up_cmd(ctx.config, project).timeout(Duration::from_secs(10 * 60));
    let host = ctx.host;
    match host.run_with_progress(&cmd, &mut *ctx.progress) {
        Ok(out) => {
            let mut detail = match repaired(&out.stderr) {
                Some(what) => format!("repaired: {what}"),
                None => "running".to_string(),
            };
            if !present {
                detail.push_str(&format!(" (pulled {image})"));
            }
            Ok(detail)
        }
        Err(e) if !present => Err(crate::error::Error::failed(
            "start",
            format!("image {image} is missing and could not be pulled: {e}"),
        )),
        Err(e) => Err(e),
    }
}

/// What `compose up` had to do, from its progress lines: containers it
/// created or started (`None` when every one was already running).
fn repaired(compose_stderr: &str) -> Option<String> {
    let mut done: Vec<String> = Vec::new();
    for line in compose_stderr.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["Container", name, state] = words.as_slice() {
            let what = match *state {
                "Created" | "Recreated" => "created",
                "Started" => "started",
                _ => continue,
            };
            let entry = format!("{what} {name}");
            if !done.contains(&entry) {
                done.push(entry);
            }
        }
    }
    // A created container is also started; say it once.
    let created: Vec<String> = done
        .iter()
        .filter(|e| e.starts_with("created "))
        .map(|e| e.replacen("created ", "started ", 1))
        .collect();
    done.retain(|e| !created.contains(e));
    (!done.is_empty()).then(|| done.join(", "))
}

/// What `reapply --dry-run` found; changes nothing.
#[derive(Debug, Serialize)]
pub struct DryRun {
    pub drift: Vec<String>,
    pub ruleset: String,
    pub ip_batch: String,
    pub caddyfile: String,
}

pub fn dry_run(ctx: &mut Ctx) -> Result<DryRun> {
    let state = StateStore::new(&ctx.config.state_dir).read()?;
    let mut drift = Vec::new();
    if let Some(p) = &state.pending {
        drift.push(format!(
            "a {} of {} is pending and would be settled",
            p.op, p.target
        ));
    }
    let inv = Inventory {
        projects: crate::runtime::inventory(ctx.host, ctx.config)?,
        images: None,
    };
    for (id, svc) in &state.services {
        // A service its owner stopped is meant to be down.
        if svc.manifest.instanceable || svc.stopped {
            continue;
        }
        let project = project::service(ctx.config, id);
        drift.extend(project_drift(&inv, &format!("service {id}"), &project));
    }
    for (cid, conn) in &state.connections {
        let project = project::instance(ctx.config, &conn.service, cid);
        drift.extend(project_drift(&inv, &format!("connection {cid}"), &project));
    }
    let net = crate::net::dry_run(ctx.host, ctx.config, &state);
    drift.extend(net.drift.iter().cloned());
    Ok(DryRun {
        drift,
        ruleset: net.ruleset,
        ip_batch: net.ip_batch,
        caddyfile: net.caddyfile,
    })
}

fn project_drift(inv: &Inventory, what: &str, project: &Project) -> Vec<String> {
    let (file, project) = (&project.file, &project.name);
    let mut out = Vec::new();
    if !file.exists() {
        out.push(format!(
            "{what}: compose file {} is missing",
            file.display()
        ));
    }
    if !inv.all_running(project) {
        out.push(format!(
            "{what}: not every container of project {project} is running"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::repaired;

    #[test]
    fn compose_progress_tells_what_was_repaired() {
        assert_eq!(repaired(" Container web  Running\n"), None);
        assert_eq!(
            repaired(" Container web  Starting\n Container web  Started\n"),
            Some("started web".into())
        );
        assert_eq!(
            repaired(" Container a  Creating\n Container a  Created\n Container a  Starting\n Container a  Started\n Container b  Running\n"),
            Some("created a".into())
        );
    }
}
