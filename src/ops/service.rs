//! Install, remove and update of store services (spec §8), each a
//! transaction: checks first, `pending` before the first side effect, and
//! every completed step undone in reverse when a later one fails.

use super::alloc::allocate_ip;
use super::project::{self, Volumes};
use super::txn::{apply_network, step, undo_all, Session, Undo};
use super::{Ctx, Purge};
use crate::compose::{self, CheckContext, InstanceCtx, Project, Vars};
use crate::config::Config;
use crate::docker;
use crate::error::{Error, Result};
use crate::files;
use crate::host::Host;
use crate::ids::ServiceId;
use crate::manifest::{self, Rules, ValidManifest, VerificationMode};
use crate::state::{InstalledService, PendingOp, State};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

const HOOK_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const COSIGN_TIMEOUT: Duration = Duration::from_secs(2 * 60);

#[derive(Debug, Serialize)]
pub struct InstallOutcome {
    pub id: String,
    pub already_installed: bool,
    pub version: String,
    pub ip: Option<Ipv4Addr>,
    pub image_digest: Option<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RemoveOutcome {
    pub id: String,
    pub purged: bool,
    /// What a forced remove could not remove (spec §8).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_removed: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct UpdateOutcome {
    pub id: String,
    pub updated: bool,
    pub from_version: String,
    pub to_version: String,
    pub warnings: Vec<String>,
}

fn rules<'a>(config: &'a Config, state: &State, id: &str) -> Rules<'a> {
    Rules {
        image_registry: &config.image_registry,
        cell_dir: &config.cell_dir,
        state_dir: &config.state_dir,
        mount_roots: &config.host_mount_roots,
        verification: state.settings.image_verification_mode,
        taken: state.taken_names(id),
    }
}

/// Fetches and validates the store's current manifest of `id`.
fn fetch_manifest(
    ctx: &mut Ctx,
    state: &State,
    id: &ServiceId,
) -> Result<(ValidManifest, Vec<String>)> {
    ctx.say(&format!("{id}: fetching manifest"));
    let raw = ctx.store.manifest(id)?;
    let (valid, report) = manifest::validate(&raw, &rules(ctx.config, state, id.as_str()));
    for w in &report.warnings {
        log::warn!("{id}: manifest: {w}");
    }
    match valid {
        Some(m) => Ok((m, report.warnings)),
        None => Err(Error::invalid(format!("manifest of {id}"), report.errors)),
    }
}

fn check_requires(state: &State, m: &ValidManifest) -> Result<()> {
    let missing: Vec<&str> = m
        .requires
        .iter()
        .map(ServiceId::as_str)
        .filter(|r| !state.services.contains_key(*r))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Conflict(format!(
        "{} requires {}, which {} not installed",
        m.id,
        missing.join(", "),
        if missing.len() == 1 { "is" } else { "are" }
    )))
}

/// Renders and checks the template. An instanceable service's template is
/// checked with sample instance values, so a broken one is refused at
/// install rather than at its first connection.
pub(crate) fn prepare_doc(
    host: &dyn Host,
    config: &Config,
    m: &manifest::Manifest,
    template: &str,
    ip: Option<Ipv4Addr>,
) -> Result<(String, serde_json::Value)> {
    prepare_doc_with(host, config, m, template, ip, &BTreeMap::new())
}

/// [`prepare_doc`] with the settings' values (spec §6 rule 15).
pub(crate) fn prepare_doc_with(
    host: &dyn Host,
    config: &Config,
    m: &manifest::Manifest,
    template: &str,
    ip: Option<Ipv4Addr>,
    values: &BTreeMap<String, String>,
) -> Result<(String, serde_json::Value)> {
    let project = compose::project_name(m.id.as_str(), None);
    let (vars, ip, instance) = match ip {
        Some(ip) => (Vars::for_service(m, ip, config), ip, None),
        None => {
            let ip = config.service_pool.first;
            let sample = sample_instance();
            let vars = Vars::for_instance(
                m,
                &sample.0,
                ip,
                sample.1,
                sample.2,
                sample.3,
                &Default::default(),
                config,
            );
            let instance = InstanceCtx {
                id: sample.0.clone(),
                redirect_port: sample.1,
            };
            (vars, ip, Some(instance))
        }
    };
    let vars = vars.with_settings(m, values);
    let rendered = compose::render(template, &vars)?;
    let cctx = CheckContext {
        manifest: m,
        config,
        data_dir: vars.data_dir().to_path_buf(),
        service_ip: ip,
        instance,
    };
    let doc = compose::prepare(host, config, &project, &rendered, &cctx)?;
    Ok((project, doc))
}

/// Instance values used to check an instanceable service's template.
pub(crate) fn sample_instance() -> (String, u16, u32, u32) {
    ("check".to_string(), 12000, 0x100, 100)
}

/// Checks the pulled image against the manifest's pin and, when a key is
/// configured, its cosign signature; then each helper image the same way
/// (spec §6 rule 14). Returns the main image's repo digest.
fn verify_image(
    ctx: &mut Ctx,
    m: &ValidManifest,
    mode: VerificationMode,
    warnings: &mut Vec<String>,
) -> Result<Option<String>> {
    let digest = verify_one_image(ctx, m.id.as_str(), &m.image, mode, warnings)?;
    for (key, image) in &m.helper_images {
        verify_one_image(ctx, m.id.as_str(), image, mode, warnings).map_err(|e| {
            Error::failed(
                "helper image check",
                format!("helper_images.{key} ({image}): {e}"),
            )
        })?;
    }
    Ok(digest)
}

fn verify_one_image(
    ctx: &mut Ctx,
    id: &str,
    image: &str,
    mode: VerificationMode,
    warnings: &mut Vec<String>,
) -> Result<Option<String>> {
    let digests = docker::repo_digests(ctx.host, ctx.config, image)?;
    let (repo, pin) = split_pin(image);
    let found = digests
        .iter()
        .find(|d| d.split_once('@').map(|(_, h)| h) == pin)
        .cloned();
    let digest = match (pin, &found) {
        (Some(_), Some(d)) => d.split_once('@').map(|(_, h)| h.to_string()),
        (Some(_), None) if digests.is_empty() => {
            return Err(Error::failed(
                "image check",
                format!("{image} is not there after the pull"),
            ))
        }
        (Some(p), None) => {
            return Err(Error::failed(
                "image check",
                format!(
                    "the pulled image {repo} has digests [{}], not the pinned {p}",
                    digests.join(", ")
                ),
            ))
        }
        (None, _) => {
            let msg = format!("{image} is not pinned by digest");
            if mode == VerificationMode::Enforce {
                return Err(Error::failed("image check", msg));
            }
            if mode == VerificationMode::Warn {
                log::warn!("{id}: {msg}");
                warnings.push(msg);
            }
            digests
                .first()
                .and_then(|d| d.split_once('@'))
                .map(|(_, h)| h.to_string())
        }
    };
    if let Some(key) = &ctx.config.cosign_key {
        if mode != VerificationMode::Off {
            let cmd = crate::host::Cmd::new(&ctx.config.cosign)
                .args(["verify", "--key"])
                .arg(key.display().to_string())
                .arg(image)
                .timeout(COSIGN_TIMEOUT);
            if let Err(e) = ctx.host.run(&cmd) {
                if mode == VerificationMode::Enforce {
                    return Err(Error::failed("signature check", e));
                }
                let msg = format!("signature check of {} failed: {e}", image);
                log::warn!("{id}: {msg}");
                warnings.push(msg);
            } else {
                ctx.say(&format!("{id}: signature verified"));
            }
        }
    }
    Ok(digest)
}

/// Splits `REPO[:TAG][@sha256:HEX]` into the part before `@` and the pin.
fn split_pin(image: &str) -> (&str, Option<&str>) {
    match image.split_once('@') {
        Some((repo, pin)) => (repo, Some(pin)),
        None => (image, None),
    }
}

pub fn install(
    ctx: &mut Ctx,
    id: &ServiceId,
    given: &BTreeMap<String, String>,
    wait: Duration,
) -> Result<InstallOutcome> {
    let mut session = Session::open(ctx, wait)?;
    if let Some(rec) = session.state.services.get(id.as_str()) {
        return Ok(InstallOutcome {
            id: id.to_string(),
            already_installed: true,
            version: rec.manifest.version.clone(),
            ip: rec.ip,
            image_digest: rec.image_digest.clone(),
            warnings: Vec::new(),
        });
    }
    let state = session.state.clone();
    let (m, warnings) = fetch_manifest(ctx, &state, id)?;
    check_requires(&state, &m)?;
    let values = super::values::resolve(&m, given, &BTreeMap::new())?;
    let template = ctx.store.template(id)?;
    let ip = if m.instanceable {
        None
    } else {
        Some(step("allocate an address", allocate_ip(ctx, &state))?)
    };
    ctx.say(&format!("{id}: checking the compose template"));
    let (_, doc) = prepare_doc_with(ctx.host, ctx.config, &m, &template, ip, &values)?;
    install_checked(
        ctx,
        &mut session,
        Checked {
            m,
            template,
            ip,
            doc,
            warnings,
            values,
        },
    )
}

/// What an install or an update has checked before its first side effect:
/// the manifest, its template, the address and the compose document.
pub(super) struct Checked {
    pub m: ValidManifest,
    pub template: String,
    pub ip: Option<Ipv4Addr>,
    pub doc: serde_json::Value,
    pub warnings: Vec<String>,
    /// The settings' values (spec §6 rule 15).
    pub values: BTreeMap<String, String>,
}

/// The transaction of an install, once everything is checked: `pending`,
/// the steps, and on a failure their undo in reverse.
pub(super) fn install_checked(
    ctx: &mut Ctx,
    session: &mut Session,
    c: Checked,
) -> Result<InstallOutcome> {
    let Checked {
        m,
        template,
        ip,
        doc,
        mut warnings,
        values,
    } = c;
    let id = m.id.clone();
    let state = session.state.clone();
    let project = project::service(ctx.config, id.as_str());
    let data = project::data_dir(ctx.config, id.as_str());
    let made_data_dir = !data.exists();
    session.begin(PendingOp::Install { made_data_dir }, id.as_str())?;

    let mut undo = Vec::new();
    let result = install_steps(
        ctx,
        &m,
        &template,
        ip,
        &doc,
        &project,
        &data,
        &mut undo,
        &mut warnings,
        &state,
    )
    .map(|mut next| {
        if let Some(rec) = next.services.get_mut(id.as_str()) {
            (rec.settings, rec.secrets) = super::values::split(&m, values);
        }
        next
    });
    match result {
        Ok(next) => {
            session.finish(next)?;
            ctx.say(&format!("{id}: installed version {}", m.version));
            let rec = &session.state.services[id.as_str()];
            Ok(InstallOutcome {
                id: id.to_string(),
                already_installed: false,
                version: m.version.clone(),
                ip,
                image_digest: rec.image_digest.clone(),
                warnings,
            })
        }
        Err(e) => {
            ctx.say(&format!("{id}: install failed, undoing: {e}"));
            undo_all(ctx, undo);
            session.abandon()?;
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn install_steps(
    ctx: &mut Ctx,
    m: &ValidManifest,
    template: &str,
    ip: Option<Ipv4Addr>,
    doc: &serde_json::Value,
    project: &Project,
    data: &Path,
    undo: &mut Vec<Undo>,
    warnings: &mut Vec<String>,
    old: &State,
) -> Result<State> {
    let id = m.id.as_str();
    step(
        "create the docker network",
        docker::ensure_network(ctx.host, ctx.config),
    )?;
    if !data.exists() {
        step("create the data folder", files::create_dir_all(data))?;
        undo.push(Undo::RemoveDir(data.to_path_buf()));
    }
    undo.push(Undo::RemoveFile(project.file.clone()));
    step(
        "write the compose file",
        compose::write_checked(ctx.config, &project.name, doc),
    )?;
    step("check free space", project::check_disk(ctx))?;
    ctx.say(&format!("{id}: pulling {}", m.image));
    step("pull", project::pull(ctx, project))?;
    let mode = old.settings.image_verification_mode;
    let digest = verify_image(ctx, m, mode, warnings)?;
    if m.instanceable {
        // Its containers are made per connection.
        files::remove_file_if_exists(&project.file)?;
    } else {
        undo.push(Undo::Down(project.clone()));
        ctx.say(&format!("{id}: starting"));
        step("docker compose up", project::up(ctx, project))?;
        project::wait_healthy(ctx, project)?;
        if let Some(hook) = &m.provision_hook {
            ctx.say(&format!("{id}: running the provision hook"));
            let host = ctx.host;
            step(
                "provision hook",
                docker::exec(
                    host,
                    ctx.config,
                    &m.container_name,
                    hook,
                    HOOK_TIMEOUT,
                    &mut *ctx.progress,
                ),
            )?;
        }
    }
    let mut next = old.clone();
    next.services.insert(
        id.to_string(),
        InstalledService {
            manifest: m.get().clone(),
            ip,
            installed_at: files::now_unix(),
            image_digest: digest,
            template: Some(template.to_string()),
            stopped: false,
            settings: Default::default(),
            secrets: Default::default(),
        },
    );
    undo.push(Undo::Network(Box::new(old.clone())));
    step(
        "program firewall, routes and Caddy",
        apply_network(ctx, &next),
    )?;
    Ok(next)
}

#[cfg(test)]
pub fn remove(
    ctx: &mut Ctx,
    id: &ServiceId,
    purge: Purge,
    wait: Duration,
) -> Result<RemoveOutcome> {
    remove_forcing(ctx, id, purge, false, wait)
}

/// A remove; with `force`, a failing compose down is replaced by removing
/// the project's containers and networks by label (spec §8).
pub fn remove_forcing(
    ctx: &mut Ctx,
    id: &ServiceId,
    purge: Purge,
    force: bool,
    wait: Duration,
) -> Result<RemoveOutcome> {
    let purge = purge == Purge::DeleteData;
    let mut session = Session::open(ctx, wait)?;
    let state = session.state.clone();
    let Some(rec) = state.services.get(id.as_str()) else {
        return Err(Error::NotFound(format!("{id} is not installed")));
    };
    let dependents: Vec<&str> = state
        .services
        .iter()
        .filter(|(_, s)| s.manifest.requires.iter().any(|r| r == id))
        .map(|(k, _)| k.as_str())
        .collect();
    if !dependents.is_empty() {
        return Err(Error::Conflict(format!(
            "{id} is required by {}; remove {} first",
            dependents.join(", "),
            if dependents.len() == 1 { "it" } else { "them" }
        )));
    }
    let users: Vec<&str> = state
        .connections
        .iter()
        .filter(|(_, c)| c.service == id.as_str())
        .map(|(k, _)| k.as_str())
        .collect();
    if rec.manifest.instanceable && !users.is_empty() {
        return Err(Error::Conflict(format!(
            "{id} has connections {}; delete them first",
            users.join(", ")
        )));
    }
    session.begin(PendingOp::Remove { purge }, id.as_str())?;
    let mut not_removed = Vec::new();
    let forced = force.then_some(&mut not_removed);
    match remove_steps_forcing(ctx, &state, id.as_str(), purge, forced) {
        Ok(next) => {
            session.finish(next)?;
            ctx.say(&format!("{id}: removed"));
            for what in &not_removed {
                ctx.say(&format!("{id}: could not remove {what}"));
            }
            Ok(RemoveOutcome {
                id: id.to_string(),
                purged: purge,
                not_removed,
            })
        }
        Err(e) => {
            // The record stays: the service is still installed, and a
            // reapply brings back whatever was stopped.
            session.abandon()?;
            Err(e)
        }
    }
}

/// The steps of a remove; each is idempotent, so a remove left by a dead
/// process is finished by running them again.
pub(crate) fn remove_steps(ctx: &mut Ctx, state: &State, id: &str, purge: bool) -> Result<State> {
    remove_steps_forcing(ctx, state, id, purge, None)
}

/// [`remove_steps`]; with `forced`, a failing compose down is followed by
/// removing what is left by label, and what could not be is listed there.
fn remove_steps_forcing(
    ctx: &mut Ctx,
    state: &State,
    id: &str,
    purge: bool,
    forced: Option<&mut Vec<String>>,
) -> Result<State> {
    let project = project::service(ctx.config, id);
    let volumes = if purge {
        Volumes::Remove
    } else {
        Volumes::Keep
    };
    let down = project::down(ctx.host, ctx.config, &project, volumes);
    match (down, forced) {
        (Ok(()), _) => {}
        (Err(e), Some(left)) => {
            ctx.say(&format!(
                "{id}: docker compose down failed ({e}); removing its containers and networks by label"
            ));
            left.extend(docker::force_remove_project(
                ctx.host,
                ctx.config,
                &project.name,
            ));
        }
        (Err(e), None) => return step("docker compose down", Err(e)),
    }
    files::remove_file_if_exists(&project.file)?;
    if purge {
        step(
            "delete the data folder",
            files::remove_dir_all_if_exists(&project::data_dir(ctx.config, id)),
        )?;
    }
    let mut next = state.clone();
    next.services.remove(id);
    next.egress.remove(id);
    step(
        "clear firewall, routes and Caddy",
        apply_network(ctx, &next),
    )?;
    Ok(next)
}

pub fn update(ctx: &mut Ctx, id: &ServiceId, wait: Duration) -> Result<UpdateOutcome> {
    let mut session = Session::open(ctx, wait)?;
    let state = session.state.clone();
    let Some(old) = state.services.get(id.as_str()).cloned() else {
        return Err(Error::NotFound(format!("{id} is not installed")));
    };
    let (m, warnings) = fetch_manifest(ctx, &state, id)?;
    let from_version = old.manifest.version.clone();
    if m.version == old.manifest.version && m.image == old.manifest.image {
        ctx.say(&format!("{id}: already at version {}", m.version));
        return Ok(UpdateOutcome {
            id: id.to_string(),
            updated: false,
            from_version: from_version.clone(),
            to_version: from_version,
            warnings,
        });
    }
    check_requires(&state, &m)?;
    // Kept values; a new setting takes its default or a generated value.
    let values = super::values::resolve(&m, &BTreeMap::new(), &kept(&m, &old))?;
    let template = ctx.store.template(id)?;
    ctx.say(&format!(
        "{id}: checking the compose template of {}",
        m.version
    ));
    let (_, doc) = prepare_doc_with(ctx.host, ctx.config, &m, &template, old.ip, &values)?;
    let checked = Checked {
        m,
        template,
        ip: old.ip,
        doc,
        warnings,
        values,
    };
    update_checked(ctx, &mut session, &old, checked)
}

/// The values an update keeps: those of settings the new version still
/// has, of the same type.
fn kept(m: &ValidManifest, old: &InstalledService) -> BTreeMap<String, String> {
    let mut values = old.setting_values();
    values.retain(|k, _| {
        let was = old.manifest.settings.iter().find(|s| &s.name == k);
        let now = m.settings.iter().find(|s| &s.name == k);
        matches!((was, now), (Some(a), Some(b)) if a.kind == b.kind)
    });
    values
}

/// The transaction of an update, once everything is checked: the new
/// compose file is staged beside the old one, which is brought back when
/// a later step fails.
pub(super) fn update_checked(
    ctx: &mut Ctx,
    session: &mut Session,
    old: &InstalledService,
    c: Checked,
) -> Result<UpdateOutcome> {
    let Checked {
        m,
        template,
        doc,
        mut warnings,
        values,
        ..
    } = c;
    let id = m.id.clone();
    let state = session.state.clone();
    let from_version = old.manifest.version.clone();
    let project = project::service(ctx.config, id.as_str());
    let old_doc = files::read_optional(&project.file)?
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let had_doc = old_doc.is_some();
    session.begin(PendingOp::Update { old_doc }, id.as_str())?;
    let new_project = project::staged(ctx.config, id.as_str());
    let new_file = new_project.file.clone();
    let mut undo = vec![Undo::RemoveFile(new_file.clone())];
    let result = (|| -> Result<State> {
        let bytes = serde_json::to_vec_pretty(&doc)
            .map_err(|e| Error::failed("write the compose file", e))?;
        step(
            "write the compose file",
            files::write_atomic(&new_file, &bytes, 0o600),
        )?;
        step("check free space", project::check_disk(ctx))?;
        ctx.say(&format!("{id}: pulling {}", m.image));
        step("pull", project::pull(ctx, &new_project))?;
        let digest = verify_image(
            ctx,
            &m,
            state.settings.image_verification_mode,
            &mut warnings,
        )?;
        if !m.instanceable {
            if had_doc {
                undo.push(Undo::Restore(project.clone()));
            }
            ctx.say(&format!("{id}: starting version {}", m.version));
            step("docker compose up", project::up(ctx, &new_project))?;
            project::wait_healthy(ctx, &new_project)?;
        }
        let mut next = state.clone();
        let (settings, secrets) = super::values::split(&m, values.clone());
        next.services.insert(
            id.to_string(),
            InstalledService {
                manifest: m.get().clone(),
                ip: old.ip,
                installed_at: files::now_unix(),
                image_digest: digest,
                template: Some(template.clone()),
                stopped: false,
                settings,
                secrets,
            },
        );
        undo.push(Undo::Network(Box::new(state.clone())));
        step(
            "program firewall, routes and Caddy",
            apply_network(ctx, &next),
        )?;
        if m.instanceable {
            files::remove_file_if_exists(&new_file)?;
            let left = super::connection::rerender_instances(ctx, &next, id.as_str());
            warnings.extend(left);
        } else {
            files::rename(&new_file, &project.file)?;
        }
        Ok(next)
    })();
    match result {
        Ok(next) => {
            session.finish(next)?;
            ctx.say(&format!(
                "{id}: updated from {from_version} to {}",
                m.version
            ));
            Ok(UpdateOutcome {
                id: id.to_string(),
                updated: true,
                from_version,
                to_version: m.version.clone(),
                warnings,
            })
        }
        Err(e) => {
            ctx.say(&format!(
                "{id}: update failed, restoring {from_version}: {e}"
            ));
            undo_all(ctx, undo);
            session.abandon()?;
            Err(e)
        }
    }
}

/// New values for an installed service's settings (spec §13): re-render
/// its template, bring it up and wait for its health; on a failure the old
/// compose file (and so the old values) is brought back up.
pub fn configure(
    ctx: &mut Ctx,
    id: &ServiceId,
    given: &BTreeMap<String, String>,
    wait: Duration,
) -> Result<()> {
    let mut session = Session::open(ctx, wait)?;
    let state = session.state.clone();
    let Some(old) = state.services.get(id.as_str()).cloned() else {
        return Err(Error::NotFound(format!("{id} is not installed")));
    };
    if old.manifest.instanceable {
        return Err(Error::Conflict(format!(
            "{id} runs only as its connections' instances; configure those"
        )));
    }
    let values = super::values::resolve(&old.manifest, given, &old.setting_values())?;
    // Records from before the template was kept: the store's, which is
    // that version's while the store has not moved on.
    let template = match &old.template {
        Some(t) => t.clone(),
        None => ctx.store.template(id)?,
    };
    ctx.say(&format!("{id}: checking the compose template"));
    let (_, doc) = prepare_doc_with(
        ctx.host,
        ctx.config,
        &old.manifest,
        &template,
        old.ip,
        &values,
    )?;
    let project = project::service(ctx.config, id.as_str());
    let old_bytes = files::read_optional(&project.file)?;
    let old_doc = old_bytes
        .as_deref()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
    session.begin(PendingOp::Configure { old_doc }, id.as_str())?;
    let result = (|| -> Result<()> {
        step(
            "write the compose file",
            compose::write_checked(ctx.config, &project.name, &doc),
        )?;
        ctx.say(&format!("{id}: starting with the new settings"));
        step("docker compose up", project::up(ctx, &project))?;
        project::wait_healthy(ctx, &project)
    })();
    match result {
        Ok(()) => {
            let mut next = state.clone();
            if let Some(rec) = next.services.get_mut(id.as_str()) {
                (rec.settings, rec.secrets) = super::values::split(&old.manifest, values);
                rec.template = Some(template);
                rec.stopped = false;
            }
            session.finish(next)?;
            ctx.say(&format!("{id}: configured"));
            Ok(())
        }
        Err(e) => {
            ctx.say(&format!(
                "{id}: configure failed, restoring the old settings: {e}"
            ));
            if let Some(bytes) = old_bytes {
                let restored = files::write_atomic(&project.file, &bytes, 0o600)
                    .and_then(|()| project::up(ctx, &project));
                if let Err(u) = restored {
                    log::error!("undo failed: {u}");
                }
            }
            session.abandon()?;
            Err(e)
        }
    }
}
