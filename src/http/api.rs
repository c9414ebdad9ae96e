//! The JSON API of spec §12 (the table's rows), behind the Bearer token.
//! Reads answer from the state file without the lock; every change is a
//! job on the mutation thread, and its `POST`/`PUT`/`DELETE` waits for it
//! and answers the final result with the job's id. Path ids and addresses
//! are checked before any use, and the builders here are shared with the
//! admin page's forms.

use super::forms;
use super::jobs::{Mutation, Outcome};
use super::router::{Req, Resp};
use super::App;
use crate::error::{Error, Result};
use crate::host::RealHost;
use crate::ids::ServiceId;
use crate::manifest::VerificationMode;
use crate::state::{State, StateStore};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Answers an authenticated `/api/*` request whose method fits its path.
pub fn handle(app: &App, req: &Req, segs: &[&str]) -> Resp {
    match answer(app, req, segs) {
        Ok(r) => r,
        Err(e) => Resp::from_error(&e),
    }
}

fn answer(app: &App, req: &Req, segs: &[&str]) -> Result<Resp> {
    let m = req.method.as_str();
    match (m, segs) {
        ("GET", ["api", "status"]) => status(app),
        ("GET", ["api", "services"]) => services(app),
        ("GET", ["api", "services", id]) => {
            let id = ServiceId::parse(id)?;
            match read_state(app)?.services.get(id.as_str()) {
                Some(s) => Ok(Resp::json(200, &json!(s))),
                None => Err(not_installed(&id)),
            }
        }
        ("GET", ["api", "jobs", id]) => match app.jobs.get(id) {
            Some(job) => Ok(Resp::json(200, &job.to_json())),
            None => Err(Error::NotFound(format!(
                "no job {}",
                crate::ids::truncate(id, 40)
            ))),
        },
        ("GET", ["api", "connections"]) => Ok(Resp::json(
            200,
            &json!({"connections": read_state(app)?.connections}),
        )),
        ("GET", ["api", "connections", id]) => {
            let id = ServiceId::parse(id)?;
            match read_state(app)?.connections.get(id.as_str()) {
                Some(c) => Ok(Resp::json(200, &json!(c))),
                None => Err(Error::NotFound(format!("no connection {id}"))),
            }
        }
        ("GET", ["api", "peers"]) => Ok(Resp::json(
            200,
            &json!({"routes": read_state(app)?.peer_routes}),
        )),
        ("GET", ["api", "settings"]) => {
            let s = read_state(app)?.settings;
            Ok(Resp::json(200, &json!(s)))
        }
        _ => {
            let fields = req.fields()?;
            let mutation = api_mutation(m, segs, &fields, req)?;
            Ok(run_and_wait(app, mutation))
        }
    }
}

/// The mutation a `POST`, `PUT` or `DELETE` asks for.
fn api_mutation(
    method: &str,
    segs: &[&str],
    fields: &Map<String, Value>,
    req: &Req,
) -> Result<Mutation> {
    Ok(match (method, segs) {
        ("POST", ["api", "services", id, "install"]) => Mutation::Install(ServiceId::parse(id)?),
        ("POST", ["api", "services", id, "update"]) => Mutation::Update(ServiceId::parse(id)?),
        ("POST", ["api", "services", id, "remove"]) => {
            let purge = forms::flag(fields, "purge")
                || req
                    .query_param("purge")
                    .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "on" | "yes"));
            Mutation::Remove {
                id: ServiceId::parse(id)?,
                purge,
            }
        }
        ("PUT", ["api", "services", id, "egress"]) => egress_set(id, fields)?,
        ("DELETE", ["api", "services", id, "egress"]) => {
            Mutation::EgressClear(ServiceId::parse(id)?)
        }
        ("POST", ["api", "connections"]) => connection_add(fields)?,
        ("DELETE", ["api", "connections", id]) => Mutation::ConnectionRemove(ServiceId::parse(id)?),
        ("PUT", ["api", "peers", ip, "route"]) => peer_route(ip, fields)?,
        ("DELETE", ["api", "peers", ip, "route"]) => Mutation::PeerUnroute(peer_ip(ip)?),
        ("PUT", ["api", "settings"]) => settings(fields)?,
        ("POST", ["api", "reapply"]) => Mutation::Reapply,
        _ => return Err(Error::NotFound("no such API path".into())),
    })
}

/// Workers that may wait for a job's outcome at once: the rest stay free
/// for reads and `/healthz`, however long a job waits for the lock.
const MAX_WAITING: usize = super::WORKERS / 2;

/// Counts one worker waiting for a job while it waits.
struct Waiting;

static WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Waiting {
    fn take() -> Option<Waiting> {
        use std::sync::atomic::Ordering::SeqCst;
        if WAITING.fetch_add(1, SeqCst) >= MAX_WAITING {
            WAITING.fetch_sub(1, SeqCst);
            return None;
        }
        Some(Waiting)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Queues `m`, waits for it and answers its outcome with the job's id;
/// with [`MAX_WAITING`] workers already waiting, answers 202 at once with
/// the job and its URL (`Location`) instead.
pub fn run_and_wait(app: &App, m: Mutation) -> Resp {
    let job = match app.jobs.submit(m) {
        Ok(j) => j,
        Err(e) => return Resp::from_error(&e),
    };
    let Some(_waiting) = Waiting::take() else {
        let url = format!("/api/jobs/{}", job.id);
        let mut body = job.to_json();
        body["job"] = json!(job.id);
        body["url"] = json!(url);
        return Resp::json(202, &body).with("Location", &url);
    };
    match job.wait() {
        Outcome::Ok(v) => {
            let mut body = Map::new();
            body.insert("ok".into(), json!(true));
            body.insert("job".into(), json!(job.id));
            match v {
                Value::Object(fields) => body.extend(fields),
                other => {
                    body.insert("result".into(), other);
                }
            }
            Resp::json(200, &Value::Object(body))
        }
        Outcome::Failed { status, mut body } => {
            body["job"] = json!(job.id);
            Resp::json(status, &body)
        }
    }
}

fn status(app: &App) -> Result<Resp> {
    let state = read_state(app)?;
    let mut v = crate::report::status_json(&app.config, &RealHost, &state, &app.store);
    let active: Vec<Value> = app
        .jobs
        .active()
        .iter()
        .map(|j| json!({"id": j.id, "title": j.title}))
        .collect();
    v["jobs"] = json!(active);
    Ok(ok_json(v))
}

fn ok_json(v: Value) -> Resp {
    Resp::json(200, &v)
}

/// What the answer of `GET /api/services` was made from: the state file's
/// identity and the index's fetch.
#[derive(Clone, PartialEq, Eq)]
struct ServicesKey {
    state: Option<(u64, i64, i64, u64)>,
    fetched_at: u64,
    stale: bool,
    entries: usize,
}

/// The last answer of `GET /api/services`: the page every client polls is
/// served from memory until the state file or the index changes.
static SERVICES: std::sync::Mutex<Option<(ServicesKey, std::sync::Arc<Vec<u8>>)>> =
    std::sync::Mutex::new(None);

fn services(app: &App) -> Result<Resp> {
    use std::os::unix::fs::MetadataExt;
    let index = app.store.index()?;
    let state_file = app.config.state_file();
    let key = ServicesKey {
        state: std::fs::metadata(&state_file)
            .ok()
            .map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino())),
        fetched_at: index.fetched_at,
        stale: index.stale,
        entries: index.services.len(),
    };
    let mut cache = SERVICES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((k, body)) = cache.as_ref() {
        if *k == key {
            return Ok(Resp::new(200, "application/json", body.to_vec()));
        }
    }
    let v = crate::report::services_value(&read_state(app)?, &index);
    let mut body = serde_json::to_vec(&v).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    *cache = Some((key, std::sync::Arc::new(body.clone())));
    Ok(Resp::new(200, "application/json", body))
}

pub fn read_state(app: &App) -> Result<State> {
    StateStore::new(&app.config.state_dir).read()
}

fn not_installed(id: &ServiceId) -> Error {
    Error::NotFound(format!("{id} is not installed"))
}

/// A peer address from a path or a form: the one check the CLI uses too
/// (`ops::parse_peer`: unicast IPv4, spec §12).
pub fn peer_ip(s: &str) -> Result<Ipv4Addr> {
    crate::ops::parse_peer(s.trim())
}

fn id_field(fields: &Map<String, Value>, name: &str) -> Result<ServiceId> {
    ServiceId::parse(forms::text(fields, name)?)
}

pub fn peer_route(ip: &str, fields: &Map<String, Value>) -> Result<Mutation> {
    Ok(Mutation::PeerRoute {
        peer: peer_ip(ip)?,
        connection: id_field(fields, "connection")?,
    })
}

pub fn egress_set(service: &str, fields: &Map<String, Value>) -> Result<Mutation> {
    Ok(Mutation::EgressSet {
        service: ServiceId::parse(service)?,
        connection: id_field(fields, "connection")?,
    })
}

/// `{"service", "name", "env"}`; `env` an object of strings, or (from a
/// form) `KEY=VALUE` lines.
pub fn connection_add(fields: &Map<String, Value>) -> Result<Mutation> {
    let service = id_field(fields, "service")?;
    let name = id_field(fields, "name")?;
    let env = match fields.get("env") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::String(lines)) => forms::env_lines(lines)?.into_iter().collect(),
        Some(Value::Object(m)) => {
            let mut env = BTreeMap::new();
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        env.insert(k.clone(), s.clone());
                    }
                    _ => {
                        return Err(Error::invalid(
                            "env",
                            vec![format!("the value of {k:?} must be a string")],
                        ))
                    }
                }
            }
            env
        }
        Some(_) => {
            return Err(Error::invalid(
                "env",
                vec!["env must be an object of strings".into()],
            ))
        }
    };
    Ok(Mutation::ConnectionAdd { service, name, env })
}

pub fn settings(fields: &Map<String, Value>) -> Result<Mutation> {
    let mode = forms::text(fields, "image_verification_mode")?;
    let mode = match mode {
        "off" => VerificationMode::Off,
        "warn" => VerificationMode::Warn,
        "enforce" => VerificationMode::Enforce,
        other => {
            return Err(Error::invalid(
                "image_verification_mode",
                vec![format!(
                    "{:?} is not one of off, warn, enforce",
                    crate::ids::truncate(other, 32)
                )],
            ))
        }
    };
    Ok(Mutation::Settings(mode))
}
