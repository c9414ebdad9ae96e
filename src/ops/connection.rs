//! Connection instances of instanceable connectivity services, peer routes
//! and service egress (spec §9, §10). A connection is one compose project
//! `pic-<service>-<name>` with its own firewall mark, routing table,
//! redirect port and pool address; create and delete are transactions like
//! install and remove.

use super::alloc::allocate;
use super::project::{self, Volumes};
use super::txn::{apply_network, step, undo_all, Session, Undo};
use super::Ctx;
use crate::compose::{self, CheckContext, InstanceCtx, Vars};
use crate::error::{Error, Result};
use crate::files;
use crate::ids::ServiceId;
use crate::manifest::{self, VerificationMode};
use crate::state::{Connection, Pending, PendingOp, State};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct ConnectionOutcome {
    pub id: String,
    pub service: String,
    pub fwmark: u32,
    pub table: u32,
    pub port: u16,
    pub ip: Ipv4Addr,
}

/// Checks the env a person gave: names the manifest declares, safe values.
fn check_env(
    m: &manifest::Manifest,
    env: &BTreeMap<String, String>,
) -> std::result::Result<(), Vec<String>> {
    let mut errors = Vec::new();
    for (k, v) in env {
        if !m.env.iter().any(|e| &e.name == k) {
            let names: Vec<&str> = m.env.iter().map(|e| e.name.as_str()).collect();
            errors.push(format!(
                "{k:?} is not one of {}'s settings ({})",
                m.id,
                if names.is_empty() {
                    "it has none".to_string()
                } else {
                    names.join(", ")
                }
            ));
        } else if let Some(p) = manifest::env_value_problem(v) {
            errors.push(format!("{k}: {p}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

pub fn connection_add(
    ctx: &mut Ctx,
    service: &ServiceId,
    name: &ServiceId,
    env: BTreeMap<String, String>,
    wait: Duration,
) -> Result<ConnectionOutcome> {
    let mut session = Session::open(ctx, wait)?;
    let state = session.state.clone();
    let Some(svc) = state.services.get(service.as_str()) else {
        return Err(Error::NotFound(format!("{service} is not installed")));
    };
    let m = svc.manifest.clone();
    let Some(template) = svc.template.clone().filter(|_| m.instanceable) else {
        return Err(Error::invalid(
            format!("connection {name}"),
            vec![format!(
                "{service} is not an instanceable connectivity service"
            )],
        ));
    };
    if state.connections.contains_key(name.as_str()) {
        return Err(Error::Conflict(format!("a connection named {name} exists")));
    }
    check_env(&m, &env).map_err(|e| Error::invalid(format!("connection {name}"), e))?;
    let alloc = step("allocate", allocate(ctx, &state))?;
    let vars = Vars::for_instance(
        &m,
        name.as_str(),
        alloc.ip,
        alloc.port,
        alloc.fwmark,
        alloc.table,
        &env,
        ctx.config,
    )
    .with_settings(&m, &svc.setting_values());
    let rendered = compose::render(&template, &vars)?;
    let project = project::instance(ctx.config, service.as_str(), name.as_str());
    let cctx = CheckContext {
        manifest: &m,
        config: ctx.config,
        data_dir: vars.data_dir().to_path_buf(),
        service_ip: alloc.ip,
        instance: Some(InstanceCtx {
            id: name.to_string(),
            redirect_port: alloc.port,
        }),
    };
    let doc = compose::prepare(ctx.host, ctx.config, &project.name, &rendered, &cctx)?;
    let conn = Connection {
        service: service.to_string(),
        env,
        fwmark: alloc.fwmark,
        table: alloc.table,
        port: alloc.port,
        ip: alloc.ip,
        created_at: files::now_unix(),
    };
    let checked = CreateChecked {
        name: name.clone(),
        conn,
        doc,
        data: vars.data_dir().to_path_buf(),
        container: vars.container_name().to_string(),
    };
    create_checked(ctx, &mut session, checked)
}

/// What a connection create has checked and allocated before its first
/// side effect.
pub(super) struct CreateChecked {
    pub name: ServiceId,
    pub conn: Connection,
    pub doc: serde_json::Value,
    pub data: std::path::PathBuf,
    pub container: String,
}

/// The transaction of a connection create, once everything is checked.
pub(super) fn create_checked(
    ctx: &mut Ctx,
    session: &mut Session,
    c: CreateChecked,
) -> Result<ConnectionOutcome> {
    let CreateChecked {
        name,
        conn,
        doc,
        data,
        container,
    } = c;
    let service = conn.service.clone();
    let state = session.state.clone();
    let project = project::instance(ctx.config, &service, name.as_str());
    session.begin(
        PendingOp::ConnectionCreate {
            service: Some(service.clone()),
            made_data_dir: !data.exists(),
        },
        name.as_str(),
    )?;
    let mut undo = Vec::new();
    let result = (|| -> Result<State> {
        if !data.exists() {
            step("create the data folder", files::create_dir_all(&data))?;
            undo.push(Undo::RemoveDir(data.clone()));
        }
        undo.push(Undo::RemoveFile(project.file.clone()));
        step(
            "write the compose file",
            compose::write_checked(ctx.config, &project.name, &doc),
        )?;
        undo.push(Undo::Down(project.clone()));
        ctx.say(&format!("{name}: starting {container}"));
        step("docker compose up", project::up(ctx, &project))?;
        project::wait_healthy(ctx, &project)?;
        let mut next = state.clone();
        next.connections.insert(name.to_string(), conn.clone());
        undo.push(Undo::Network(Box::new(state.clone())));
        step("program firewall and routes", apply_network(ctx, &next))?;
        Ok(next)
    })();
    match result {
        Ok(next) => {
            session.finish(next)?;
            ctx.say(&format!(
                "{name}: connection of {service} up (mark {:#x}, table {}, port {}, {})",
                conn.fwmark, conn.table, conn.port, conn.ip
            ));
            Ok(ConnectionOutcome {
                id: name.to_string(),
                service: service.to_string(),
                fwmark: conn.fwmark,
                table: conn.table,
                port: conn.port,
                ip: conn.ip,
            })
        }
        Err(e) => {
            ctx.say(&format!("{name}: create failed, undoing: {e}"));
            undo_all(ctx, undo);
            session.abandon()?;
            Err(e)
        }
    }
}

/// What still uses a connection: peers routed through it, services whose
/// egress it carries.
fn users(state: &State, id: &str) -> Vec<String> {
    let peers = state
        .peer_routes
        .iter()
        .filter(|(_, c)| c.as_str() == id)
        .map(|(p, _)| format!("peer {p}"));
    let services = state
        .egress
        .iter()
        .filter(|(_, c)| c.as_str() == id)
        .map(|(s, _)| format!("the egress of {s}"));
    peers.chain(services).collect()
}

pub fn connection_remove(ctx: &mut Ctx, id: &ServiceId, wait: Duration) -> Result<()> {
    let mut session = Session::open(ctx, wait)?;
    let state = session.state.clone();
    let Some(conn) = state.connections.get(id.as_str()).cloned() else {
        return Err(Error::NotFound(format!("no connection named {id}")));
    };
    let using = users(&state, id.as_str());
    if !using.is_empty() {
        return Err(Error::Conflict(format!(
            "connection {id} is used by {}; move them off it first",
            using.join(", ")
        )));
    }
    session.begin(
        PendingOp::ConnectionDelete {
            service: Some(conn.service.clone()),
        },
        id.as_str(),
    )?;
    match delete_steps(ctx, &state, id.as_str(), &conn.service) {
        Ok(next) => {
            session.finish(next)?;
            ctx.say(&format!("{id}: connection deleted"));
            Ok(())
        }
        Err(e) => {
            session.abandon()?;
            Err(e)
        }
    }
}

/// The steps of a delete; idempotent, so a delete left by a dead process
/// is finished by running them again.
fn delete_steps(ctx: &mut Ctx, state: &State, id: &str, service: &str) -> Result<State> {
    let project = project::instance(ctx.config, service, id);
    step(
        "docker compose down",
        project::down(ctx.host, ctx.config, &project, Volumes::Remove),
    )?;
    files::remove_file_if_exists(&project.file)?;
    files::remove_dir_all_if_exists(&compose::data_dir(ctx.config, service, Some(id)))?;
    let mut next = state.clone();
    next.connections.remove(id);
    step("clear firewall and routes", apply_network(ctx, &next))?;
    Ok(next)
}

/// Settles a connection create (rolled back) or delete (finished) left by
/// a process that died.
pub(crate) fn settle_connection(ctx: &mut Ctx, next: &mut State, pending: &Pending) {
    let id = pending.target.as_str();
    let (PendingOp::ConnectionCreate {
        service: Some(service),
        ..
    }
    | PendingOp::ConnectionDelete {
        service: Some(service),
    }) = &pending.op
    else {
        log::error!("pending connection {id} names no service; nothing to settle");
        return;
    };
    match pending.op {
        PendingOp::ConnectionCreate { made_data_dir, .. } => {
            let project = project::instance(ctx.config, service, id);
            let undo = vec![
                Undo::Down(project.clone()),
                Undo::RemoveFile(project.file.clone()),
            ];
            undo_all(ctx, undo);
            if made_data_dir {
                let dir = compose::data_dir(ctx.config, service, Some(id));
                if let Err(e) = files::remove_dir_all_if_exists(&dir) {
                    log::error!("while settling connection {id}: {e}");
                }
            }
            next.connections.remove(id);
        }
        PendingOp::ConnectionDelete { .. } => match delete_steps(ctx, next, id, service) {
            Ok(s) => *next = s,
            Err(e) => log::error!("finishing the delete of connection {id} failed: {e}"),
        },
        _ => {}
    }
}

/// A VPN peer's address, checked: the only way to make one is
/// [`Peer::parse`], which every entry point uses (spec §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Peer(Ipv4Addr);

impl Peer {
    /// A unicast IPv4 address: not 0.0.0.0, loopback, multicast,
    /// broadcast or link-local.
    pub fn parse(s: &str) -> Result<Peer> {
        let bad = |why: &str| {
            Error::invalid(
                "peer",
                vec![format!("{:?} {why}", crate::ids::truncate(s, 64))],
            )
        };
        let ip: Ipv4Addr = s.parse().map_err(|_| bad("is not an IPv4 address"))?;
        if ip.is_unspecified()
            || ip.is_loopback()
            || ip.is_multicast()
            || ip.is_broadcast()
            || ip.is_link_local()
        {
            return Err(bad("is not a unicast peer address"));
        }
        Ok(Peer(ip))
    }

    pub fn ip(self) -> Ipv4Addr {
        self.0
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Applies `next` to the network and commits it; when the commit fails,
/// the network is put back to the committed state.
fn apply_and_commit(ctx: &mut Ctx, session: &mut Session, next: State) -> Result<()> {
    step("program firewall and routes", apply_network(ctx, &next))?;
    let old = session.state.clone();
    if let Err(e) = session.commit(next) {
        let _ = apply_network(ctx, &old);
        return Err(e);
    }
    Ok(())
}

/// Routes `peer` through connection `conn` (moving it if routed elsewhere).
pub fn peer_route(ctx: &mut Ctx, peer: Peer, conn: &ServiceId, wait: Duration) -> Result<()> {
    let mut session = Session::open(ctx, wait)?;
    if !session.state.connections.contains_key(conn.as_str()) {
        return Err(Error::NotFound(format!("no connection named {conn}")));
    }
    let mut next = session.state.clone();
    let before = next.peer_routes.insert(peer.to_string(), conn.to_string());
    if before.as_deref() == Some(conn.as_str()) {
        return Ok(());
    }
    apply_and_commit(ctx, &mut session, next)?;
    ctx.say(&format!("peer {peer} routed through {conn}"));
    Ok(())
}

/// Returns whether the peer had a route.
pub fn peer_unroute(ctx: &mut Ctx, peer: Peer, wait: Duration) -> Result<bool> {
    let mut session = Session::open(ctx, wait)?;
    let mut next = session.state.clone();
    if next.peer_routes.remove(&peer.to_string()).is_none() {
        return Ok(false);
    }
    apply_and_commit(ctx, &mut session, next)?;
    ctx.say(&format!("peer {peer} back on the default route"));
    Ok(true)
}

pub fn egress_set(
    ctx: &mut Ctx,
    service: &ServiceId,
    conn: &ServiceId,
    wait: Duration,
) -> Result<()> {
    let mut session = Session::open(ctx, wait)?;
    let Some(svc) = session.state.services.get(service.as_str()) else {
        return Err(Error::NotFound(format!("{service} is not installed")));
    };
    if svc.ip.is_none() {
        return Err(Error::invalid(
            format!("egress of {service}"),
            vec![format!("{service} runs no container of its own")],
        ));
    }
    if !session.state.connections.contains_key(conn.as_str()) {
        return Err(Error::NotFound(format!("no connection named {conn}")));
    }
    let mut next = session.state.clone();
    next.egress.insert(service.to_string(), conn.to_string());
    apply_and_commit(ctx, &mut session, next)?;
    ctx.say(&format!("{service}: outbound traffic through {conn}"));
    Ok(())
}

pub fn egress_clear(ctx: &mut Ctx, service: &ServiceId, wait: Duration) -> Result<()> {
    let mut session = Session::open(ctx, wait)?;
    let mut next = session.state.clone();
    if next.egress.remove(service.as_str()).is_none() {
        return Ok(());
    }
    apply_and_commit(ctx, &mut session, next)?;
    ctx.say(&format!("{service}: outbound traffic on the default route"));
    Ok(())
}

pub fn set_verification_mode(ctx: &mut Ctx, mode: VerificationMode, wait: Duration) -> Result<()> {
    let mut session = Session::open(ctx, wait)?;
    let mut next = session.state.clone();
    next.settings.image_verification_mode = mode;
    session.commit(next)
}

/// After an update of the instanceable `service` (its new manifest and
/// template in `state`), re-renders each of its connection instances and
/// brings it up with the new version, waiting for its health; one that
/// fails is put back alone on its old compose file (spec §8). Returns a
/// warning for each instance left on its old version.
pub(super) fn rerender_instances(ctx: &mut Ctx, state: &State, service: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    let Some(svc) = state.services.get(service) else {
        return warnings;
    };
    let Some(template) = svc.template.clone() else {
        return warnings;
    };
    let values = svc.setting_values();
    for (cid, conn) in state
        .connections
        .iter()
        .filter(|(_, c)| c.service == service)
    {
        let project = project::instance(ctx.config, service, cid);
        let r = (|| -> Result<()> {
            let vars = Vars::for_instance(
                &svc.manifest,
                cid,
                conn.ip,
                conn.port,
                conn.fwmark,
                conn.table,
                &conn.env,
                ctx.config,
            )
            .with_settings(&svc.manifest, &values);
            let rendered = compose::render(&template, &vars)?;
            let cctx = CheckContext {
                manifest: &svc.manifest,
                config: ctx.config,
                data_dir: vars.data_dir().to_path_buf(),
                service_ip: conn.ip,
                instance: Some(InstanceCtx {
                    id: cid.clone(),
                    redirect_port: conn.port,
                }),
            };
            let doc = compose::prepare(ctx.host, ctx.config, &project.name, &rendered, &cctx)?;
            let old = files::read_optional(&project.file)?;
            compose::write_checked(ctx.config, &project.name, &doc)?;
            ctx.say(&format!("{cid}: starting the new version of {service}"));
            let up = project::up(ctx, &project).and_then(|()| project::wait_healthy(ctx, &project));
            if let Err(e) = up {
                if let Some(bytes) = old {
                    let back = files::write_atomic(&project.file, &bytes, 0o600)
                        .and_then(|()| project::up(ctx, &project));
                    if let Err(u) = back {
                        log::error!("{cid}: putting the old version back failed: {u}");
                    }
                }
                return Err(e);
            }
            Ok(())
        })();
        if let Err(e) = r {
            let w = format!("connection {cid} kept its old version: {e}");
            ctx.say(&w);
            warnings.push(w);
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn peers_must_be_unicast_ipv4() {
        assert_eq!(
            Peer::parse("10.8.0.2").unwrap().ip(),
            Ipv4Addr::new(10, 8, 0, 2)
        );
        for bad in [
            "10.8.0",
            "::1",
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "169.254.1.1",
            "10.8.0.2\n-j ACCEPT",
        ] {
            assert!(Peer::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_names_must_be_declared() {
        let m: manifest::Manifest = serde_json::from_value(json!({
            "id": "proxy", "name": "P", "version": "1", "author": "a", "kind": "connectivity",
            "image": "x", "container_name": "proxy", "requires": [], "volumes": [],
            "env": [{"name": "UPSTREAM", "value": ""}], "iptables_rules": [], "routes": [],
            "cap_add": [], "provision_hook": null, "instanceable": true,
            "connectivity": {"mode": "redirect"}
        }))
        .unwrap();
        let ok: BTreeMap<String, String> =
            [("UPSTREAM".to_string(), "socks5://10.0.0.1:1080".to_string())].into();
        assert!(check_env(&m, &ok).is_ok());
        let bad: BTreeMap<String, String> = [
            ("OTHER".to_string(), "x".to_string()),
            ("UPSTREAM".to_string(), "$(id)".to_string()),
        ]
        .into();
        assert_eq!(check_env(&m, &bad).unwrap_err().len(), 2);
    }
}
