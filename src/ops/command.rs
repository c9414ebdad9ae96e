//! The one list of operations that change the system. Every entry point
//! (the CLI, the JSON API, the admin page's forms) parses its input into a
//! [`Command`] whose arguments are already checked; [`Command::run`] runs
//! it, [`Command::title`] names it, and its [`Outcome`] says what happened
//! (as JSON for the API and the job page, as text for the CLI).

use super::connection::{ConnectionOutcome, Peer};
use super::reapply::ReapplyReport;
use super::service::{InstallOutcome, RemoveOutcome, UpdateOutcome};
use super::{Ctx, Session};
use crate::error::{Error, Result};
use crate::ids::ServiceId;
use crate::manifest::VerificationMode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// A change to the system, its arguments checked and ready to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// With the owner's setting values (spec §6 rule 15), checked against
    /// the manifest by the operation.
    Install {
        id: ServiceId,
        settings: BTreeMap<String, String>,
    },
    Update(ServiceId),
    Remove {
        id: ServiceId,
        purge: Purge,
        /// Remove by label when compose down fails (spec §8).
        force: bool,
    },
    ConnectionAdd {
        service: ServiceId,
        name: ServiceId,
        /// Settings of the instance; checked against the manifest by the
        /// operation, which has it.
        env: BTreeMap<String, String>,
    },
    ConnectionRemove(ServiceId),
    PeerRoute {
        peer: Peer,
        connection: ServiceId,
    },
    PeerUnroute(Peer),
    EgressSet {
        service: ServiceId,
        connection: ServiceId,
    },
    EgressClear(ServiceId),
    Settings(VerificationMode),
    Reapply,
    /// At `serve` start: make firewall, routes and Caddy match the state (a
    /// process killed between applying and committing leaves them apart).
    Reconcile,
    /// Start, stop or restart an installed service (spec §13).
    Operate {
        id: ServiceId,
        action: super::Action,
    },
    /// New values for an installed service's settings (spec §13).
    Configure {
        id: ServiceId,
        settings: BTreeMap<String, String>,
    },
    /// Update every installed service with an update, each on its own.
    UpdateAll,
}

/// Whether a remove also deletes the service's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purge {
    KeepData,
    DeleteData,
}

impl Purge {
    pub fn from_flag(purge: bool) -> Purge {
        if purge {
            Purge::DeleteData
        } else {
            Purge::KeepData
        }
    }
}

/// What a command did.
#[derive(Debug)]
pub enum Outcome {
    Install(InstallOutcome),
    Update(UpdateOutcome),
    Remove(RemoveOutcome),
    ConnectionAdd(ConnectionOutcome),
    ConnectionRemove(ServiceId),
    PeerRoute {
        peer: Peer,
        connection: ServiceId,
    },
    PeerUnroute {
        peer: Peer,
        had_route: bool,
    },
    EgressSet {
        service: ServiceId,
        connection: ServiceId,
    },
    EgressClear(ServiceId),
    Settings(VerificationMode),
    Reapply(ReapplyReport),
    Reconcile {
        reconciled: bool,
    },
    Operated {
        id: ServiceId,
        action: super::Action,
    },
    Configured(ServiceId),
    /// Each service's update, or why it failed.
    UpdateAll(Vec<(String, std::result::Result<UpdateOutcome, String>)>),
}

impl Command {
    /// What the job page and the log call it.
    pub fn title(&self) -> String {
        match self {
            Command::Install { id, .. } => format!("install {id}"),
            Command::Update(id) => format!("update {id}"),
            Command::Remove {
                id,
                purge: Purge::DeleteData,
                ..
            } => format!("remove {id} and its data"),
            Command::Remove { id, .. } => format!("remove {id}"),
            Command::ConnectionAdd { service, name, .. } => {
                format!("create connection {name} ({service})")
            }
            Command::ConnectionRemove(id) => format!("delete connection {id}"),
            Command::PeerRoute { peer, connection } => format!("route {peer} via {connection}"),
            Command::PeerUnroute(peer) => format!("unroute {peer}"),
            Command::EgressSet {
                service,
                connection,
            } => format!("send {service} out via {connection}"),
            Command::EgressClear(id) => format!("clear egress of {id}"),
            Command::Settings(m) => format!("set image verification to {}", mode_name(*m)),
            Command::Reapply => "reapply".to_string(),
            Command::Reconcile => "check the network against the state".to_string(),
            Command::Operate { id, action } => format!("{} {id}", action.verb()),
            Command::UpdateAll => "update every service".to_string(),
            Command::Configure { id, settings } => {
                // Names only: a value may be a secret.
                let names: Vec<&str> = settings.keys().map(String::as_str).collect();
                format!("configure {id} ({})", names.join(", "))
            }
        }
    }

    /// Runs the operation, waiting up to `wait` for the state lock.
    pub fn run(&self, ctx: &mut Ctx, wait: Duration) -> Result<Outcome> {
        self.tools_present(ctx)?;
        Ok(match self {
            Command::Install { id, settings } => {
                listed_or_installed(ctx, id)?;
                Outcome::Install(super::install(ctx, id, settings, wait)?)
            }
            Command::Update(id) => Outcome::Update(super::update(ctx, id, wait)?),
            Command::Remove { id, purge, force } => {
                Outcome::Remove(super::remove_forcing(ctx, id, *purge, *force, wait)?)
            }
            Command::ConnectionAdd { service, name, env } => Outcome::ConnectionAdd(
                super::connection_add(ctx, service, name, env.clone(), wait)?,
            ),
            Command::ConnectionRemove(id) => {
                super::connection_remove(ctx, id, wait)?;
                Outcome::ConnectionRemove(id.clone())
            }
            Command::PeerRoute { peer, connection } => {
                super::peer_route(ctx, *peer, connection, wait)?;
                Outcome::PeerRoute {
                    peer: *peer,
                    connection: connection.clone(),
                }
            }
            Command::PeerUnroute(peer) => Outcome::PeerUnroute {
                peer: *peer,
                had_route: super::peer_unroute(ctx, *peer, wait)?,
            },
            Command::EgressSet {
                service,
                connection,
            } => {
                super::egress_set(ctx, service, connection, wait)?;
                Outcome::EgressSet {
                    service: service.clone(),
                    connection: connection.clone(),
                }
            }
            Command::EgressClear(id) => {
                super::egress_clear(ctx, id, wait)?;
                Outcome::EgressClear(id.clone())
            }
            Command::Settings(mode) => {
                super::set_verification_mode(ctx, *mode, wait)?;
                Outcome::Settings(*mode)
            }
            Command::Reapply => Outcome::Reapply(super::reapply(ctx, wait)?),
            Command::Reconcile => Outcome::Reconcile {
                reconciled: reconcile(ctx, wait)?,
            },
            Command::Operate { id, action } => {
                super::operate(ctx, id, *action, wait)?;
                Outcome::Operated {
                    id: id.clone(),
                    action: *action,
                }
            }
            Command::Configure { id, settings } => {
                super::configure(ctx, id, settings, wait)?;
                Outcome::Configured(id.clone())
            }
            Command::UpdateAll => Outcome::UpdateAll(update_all(ctx, wait)?),
        })
    }
}

/// An id the store does not list (and that is not installed) is "not
/// found", not a failed fetch of its manifest.
fn listed_or_installed(ctx: &Ctx, id: &ServiceId) -> Result<()> {
    let installed = crate::state::StateStore::new(&ctx.config.state_dir)
        .read()
        .map(|s| s.services.contains_key(id.as_str()))
        .unwrap_or(false);
    match ctx.store.index() {
        Ok(index) if !installed && !index.services.iter().any(|e| &e.id == id) => {
            Err(Error::NotFound(format!("the store lists no service {id}")))
        }
        _ => Ok(()),
    }
}

/// Every installed service, in `requires` order, updated on its own: one
/// failure does not stop the others (spec §8).
fn update_all(
    ctx: &mut Ctx,
    wait: Duration,
) -> Result<Vec<(String, std::result::Result<UpdateOutcome, String>)>> {
    let state = crate::state::StateStore::new(&ctx.config.state_dir).read()?;
    let mut all = Vec::new();
    for id in super::reapply::start_order(&state) {
        let r = ServiceId::parse(&id)
            .and_then(|sid| super::update(ctx, &sid, wait))
            .map_err(|e| e.to_string());
        all.push((id, r));
    }
    Ok(all)
}

/// Returns whether there was anything to put back.
fn reconcile(ctx: &mut Ctx, wait: Duration) -> Result<bool> {
    let session = Session::open(ctx, wait)?;
    // An empty state has nothing to put back, and a cell with nothing
    // installed needs no chains yet.
    let empty = session.state.services.is_empty() && session.state.connections.is_empty();
    if !empty {
        session.reconcile_network(ctx)?;
    }
    Ok(!empty)
}

impl Outcome {
    /// The outcome as the API answers it and the job page shows it.
    pub fn to_json(&self) -> Value {
        match self {
            Outcome::Install(o) => to_json(o),
            Outcome::Update(o) => to_json(o),
            Outcome::Remove(o) => to_json(o),
            Outcome::ConnectionAdd(o) => to_json(o),
            Outcome::ConnectionRemove(id) => json!({"id": id, "removed": true}),
            Outcome::PeerRoute { peer, connection } => {
                json!({"peer": peer, "connection": connection})
            }
            Outcome::PeerUnroute { peer, had_route } => {
                json!({"peer": peer, "had_route": had_route})
            }
            Outcome::EgressSet {
                service,
                connection,
            } => json!({"service": service, "connection": connection}),
            Outcome::EgressClear(id) => json!({"service": id, "connection": null}),
            Outcome::Settings(mode) => json!({"image_verification_mode": mode}),
            Outcome::Reapply(r) => to_json(r),
            Outcome::Reconcile { reconciled } => json!({"reconciled": reconciled}),
            Outcome::Operated { id, action } => json!({"id": id, action.done(): true}),
            Outcome::Configured(id) => json!({"id": id, "configured": true}),
            Outcome::UpdateAll(all) => {
                let each: Vec<Value> = all
                    .iter()
                    .map(|(id, r)| match r {
                        Ok(o) => to_json(o),
                        Err(e) => json!({"id": id, "updated": false, "error": e}),
                    })
                    .collect();
                json!({"services": each})
            }
        }
    }

    /// The outcome as the CLI prints it: lines for stdout, and warnings
    /// for stderr.
    pub fn text(&self) -> (Vec<String>, Vec<String>) {
        let one = |s: String| (vec![s], Vec::new());
        match self {
            Outcome::Install(out) => install_text(out),
            Outcome::Update(out) if out.updated => one(format!(
                "updated {} from {} to {}",
                out.id, out.from_version, out.to_version
            )),
            Outcome::Update(out) => one(format!(
                "{} is already at version {}",
                out.id, out.to_version
            )),
            Outcome::Remove(out) => {
                let how = if out.purged {
                    " and its data deleted"
                } else {
                    ""
                };
                one(format!("removed {}{how}", out.id))
            }
            Outcome::ConnectionAdd(c) => one(format!(
                "connection {} of {} is up: mark {:#x}, table {}, port {}, address {}",
                c.id, c.service, c.fwmark, c.table, c.port, c.ip
            )),
            Outcome::ConnectionRemove(id) => one(format!("connection {id} deleted")),
            Outcome::PeerRoute { peer, connection } => {
                one(format!("peer {peer} routed through {connection}"))
            }
            Outcome::PeerUnroute {
                peer,
                had_route: true,
            } => one(format!("peer {peer} is back on the default route")),
            Outcome::PeerUnroute { peer, .. } => one(format!("peer {peer} had no route")),
            Outcome::EgressSet {
                service,
                connection,
            } => one(format!(
                "{service}: outbound traffic goes through {connection}"
            )),
            Outcome::EgressClear(id) => one(format!("{id}: outbound traffic on the default route")),
            Outcome::Settings(mode) => one(format!("image verification: {}", mode_name(*mode))),
            Outcome::Reapply(r) => {
                let mut lines = Vec::new();
                if let Some(msg) = &r.recovered {
                    lines.push(format!("recovered: {msg}"));
                }
                for i in &r.items {
                    let mark = if i.ok { "ok  " } else { "FAIL" };
                    lines.push(format!("{mark} {}: {}", i.item, i.detail));
                }
                lines.push(r.summary());
                (lines, Vec::new())
            }
            Outcome::Reconcile { reconciled: true } => one("network reconciled".into()),
            Outcome::Reconcile { .. } => one("nothing to reconcile".into()),
            Outcome::Operated { id, action } => one(format!("{id} {}", action.done())),
            Outcome::Configured(id) => one(format!("{id} configured")),
            Outcome::UpdateAll(all) => {
                let mut lines = Vec::new();
                let mut errors = Vec::new();
                for (id, r) in all {
                    match r {
                        Ok(o) if o.updated => lines.push(format!(
                            "updated {id} from {} to {}",
                            o.from_version, o.to_version
                        )),
                        Ok(o) => lines.push(format!("{id} is already at version {}", o.to_version)),
                        Err(e) => errors.push(format!("{id}: update failed: {e}")),
                    }
                }
                (lines, errors)
            }
        }
    }

    /// The CLI's exit code: a reapply with a failed item is 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Reapply(r) if r.failed > 0 => 1,
            Outcome::UpdateAll(all) if all.iter().any(|(_, r)| r.is_err()) => 1,
            _ => 0,
        }
    }
}

fn install_text(out: &InstallOutcome) -> (Vec<String>, Vec<String>) {
    let line = if out.already_installed {
        format!("{} is already installed (version {})", out.id, out.version)
    } else {
        match out.ip {
            Some(ip) => format!("installed {} {} at {ip}", out.id, out.version),
            None => format!(
                "installed {} {} (instanceable: add connections to run it)",
                out.id, out.version
            ),
        }
    };
    let warnings = if out.already_installed {
        Vec::new()
    } else {
        out.warnings
            .iter()
            .map(|w| format!("warning: {w}"))
            .collect()
    };
    (vec![line], warnings)
}

fn to_json(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or_else(|e| json!({"note": format!("unprintable: {e}")}))
}

/// The name of a verification mode, as the settings take it.
pub fn mode_name(m: VerificationMode) -> &'static str {
    match m {
        VerificationMode::Off => "off",
        VerificationMode::Warn => "warn",
        VerificationMode::Enforce => "enforce",
    }
}

/// Parses a verification mode: `off`, `warn` or `enforce`.
pub fn parse_mode(s: &str) -> Result<VerificationMode> {
    [
        VerificationMode::Off,
        VerificationMode::Warn,
        VerificationMode::Enforce,
    ]
    .into_iter()
    .find(|m| mode_name(*m) == s)
    .ok_or_else(|| {
        Error::invalid(
            "image_verification_mode",
            vec![format!(
                "{:?} is not one of off, warn, enforce",
                crate::ids::truncate(s, 32)
            )],
        )
    })
}

impl Command {
    /// A missing docker is its own error (spec §13), before an install
    /// fails at whichever step first runs it; a missing Compose plugin is
    /// found where compose first runs (`compose::missing_tool`).
    fn tools_present(&self, ctx: &Ctx) -> Result<()> {
        if matches!(self, Command::Install { .. }) && !ctx.config.docker.found {
            return Err(crate::error::Error::ToolMissing(format!(
                "docker not found: {}",
                ctx.config.docker.display()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_and_others_are_refused() {
        for m in [
            VerificationMode::Off,
            VerificationMode::Warn,
            VerificationMode::Enforce,
        ] {
            assert_eq!(parse_mode(mode_name(m)).unwrap(), m);
        }
        assert!(parse_mode("Enforce").is_err());
        assert!(parse_mode("").is_err());
    }

    #[test]
    fn titles_name_the_operation_and_its_target() {
        let id = ServiceId::parse("radicale").unwrap();
        let remove = |purge| Command::Remove {
            id: id.clone(),
            purge,
            force: false,
        };
        assert_eq!(remove(Purge::KeepData).title(), "remove radicale");
        assert_eq!(
            remove(Purge::DeleteData).title(),
            "remove radicale and its data"
        );
        let peer = Peer::parse("10.8.0.2").unwrap();
        assert_eq!(
            Command::PeerUnroute(peer).title(),
            "unroute 10.8.0.2".to_string()
        );
    }
}
