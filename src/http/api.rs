//! The JSON API of spec §12 (the table's rows; routed, and the Bearer
//! token checked, by the router). Reads answer from the state file without
//! the lock; every change is a [`Command`] run as a job on the mutation
//! thread, and its `POST`/`PUT`/`DELETE` waits for it and answers the final
//! result with the job's id.

use super::jobs::Outcome;
use super::msg::{Req, Resp};
use super::App;
use crate::error::{Error, Result};
use crate::host::RealHost;
use crate::ids::ServiceId;
use crate::ops::Command;
use crate::state::{State, StateStore};
use serde_json::{json, Map, Value};

/// `GET /api/services/<id>`.
pub fn service(app: &App, args: &[&str]) -> Result<Resp> {
    let id = ServiceId::parse(args.first().copied().unwrap_or(""))?;
    match read_state(app)?.services.get(id.as_str()) {
        Some(s) => Ok(Resp::json(200, &json!(s))),
        None => Err(not_installed(&id)),
    }
}

/// `GET /api/jobs/<id>`.
pub fn job(app: &App, args: &[&str]) -> Result<Resp> {
    let id = args.first().copied().unwrap_or("");
    match app.jobs.get(id) {
        Some(job) => Ok(Resp::json(200, &job.to_json())),
        None => Err(Error::NotFound(format!(
            "no job {}",
            crate::ids::truncate(id, 40)
        ))),
    }
}

/// `GET /api/connections`.
pub fn connections(app: &App, _: &[&str]) -> Result<Resp> {
    Ok(Resp::json(
        200,
        &json!({"connections": read_state(app)?.connections}),
    ))
}

/// `GET /api/connections/<id>`.
pub fn connection(app: &App, args: &[&str]) -> Result<Resp> {
    let id = ServiceId::parse(args.first().copied().unwrap_or(""))?;
    match read_state(app)?.connections.get(id.as_str()) {
        Some(c) => Ok(Resp::json(200, &json!(c))),
        None => Err(Error::NotFound(format!("no connection {id}"))),
    }
}

/// `GET /api/peers`.
pub fn peers(app: &App, _: &[&str]) -> Result<Resp> {
    Ok(Resp::json(
        200,
        &json!({"routes": read_state(app)?.peer_routes}),
    ))
}

/// `GET /api/settings`.
pub fn settings(app: &App, _: &[&str]) -> Result<Resp> {
    let s = read_state(app)?.settings;
    Ok(Resp::json(200, &json!(s)))
}

/// Workers that may wait for a job's outcome at once: the rest stay free
/// for reads and `/healthz`, however long a job waits for the lock.
const MAX_WAITING: usize = super::WORKERS / 2;

/// One worker waiting for a job, counted in [`super::Load`] while it waits.
struct Waiting<'a>(&'a super::Slots);

impl<'a> Waiting<'a> {
    fn take(app: &'a App) -> Option<Waiting<'a>> {
        let slots = &app.load.waiting;
        // Lazily: a `Waiting` made and dropped when no slot was taken
        // would give back a slot it never had.
        slots.take(MAX_WAITING).then(|| Waiting(slots))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

/// Queues `m`, waits for it and answers its outcome with the job's id;
/// with [`MAX_WAITING`] workers already waiting, answers 202 at once with
/// the job and its URL (`Location`) instead.
pub fn run_and_wait(app: &App, m: Command) -> Resp {
    let job = match app.jobs.submit(m) {
        Ok(j) => j,
        Err(e) => return Resp::from_error(&e),
    };
    let Some(_waiting) = Waiting::take(app) else {
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

pub fn status(app: &App, _: &[&str]) -> Result<Resp> {
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
/// identity, the index's fetch (or why there is none) and the containers'
/// inventory (taken at most once per 2 s).
#[derive(Clone, PartialEq, Eq)]
pub struct ServicesKey {
    state: Option<(u64, i64, i64, u64)>,
    fetched_at: u64,
    stale: bool,
    entries: usize,
    index_error: Option<String>,
    inventory: u64,
}

/// The last answer of `GET /api/services` (in [`super::Load`]): the page
/// every client polls is served from memory until the state file, the
/// index or the inventory changes.
pub type ServicesCache = std::sync::Mutex<Option<(ServicesKey, std::sync::Arc<Vec<u8>>)>>;

/// `GET /api/services`: 200 also when the store cannot be read (spec §13:
/// what is installed is always shown, `error` says why `available` is
/// empty).
pub fn services(app: &App, _: &[&str]) -> Result<Resp> {
    use std::os::unix::fs::MetadataExt;
    let index = app.store.index();
    let (inventory, inv) = crate::runtime::cached_inventory(&RealHost, &app.config);
    let state_file = app.config.state_file();
    let key = ServicesKey {
        state: std::fs::metadata(&state_file)
            .ok()
            .map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino())),
        fetched_at: index.as_ref().map_or(0, |i| i.fetched_at),
        stale: index.as_ref().is_ok_and(|i| i.stale),
        entries: index.as_ref().map_or(0, |i| i.services.len()),
        index_error: index.as_ref().err().map(|e| e.to_string()),
        inventory,
    };
    let mut cache = app
        .load
        .services
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((k, body)) = cache.as_ref() {
        if *k == key {
            return Ok(Resp::new(200, "application/json", body.to_vec()));
        }
    }
    let state = read_state(app)?;
    let runtimes = match inv.as_ref() {
        Ok(inv) => Ok(crate::runtime::Runtimes::of(&state, inv)),
        Err(e) => Err(e.clone()),
    };
    let v = crate::report::services_value(&state, index.as_ref(), &runtimes);
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

// --- logs (spec §13) ---------------------------------------------------------

/// `GET /api/services/<id>/logs?tail=N&service=NAME`, as `text/plain`.
pub fn service_logs(app: &App, req: &Req, args: &[&str]) -> Result<Resp> {
    logs_answer(app, req, args, crate::ops::LogsOf::Service)
}

/// `GET /api/connections/<id>/logs?tail=N`, as `text/plain`.
pub fn connection_logs(app: &App, req: &Req, args: &[&str]) -> Result<Resp> {
    logs_answer(app, req, args, crate::ops::LogsOf::Connection)
}

fn logs_answer(app: &App, req: &Req, args: &[&str], of: crate::ops::LogsOf) -> Result<Resp> {
    let text = logs_text(app, req, args, of)?;
    Ok(Resp::new(200, "text/plain; charset=utf-8", text))
}

/// The logs a request asks for (the page's logs view too).
pub fn logs_text(app: &App, req: &Req, args: &[&str], of: crate::ops::LogsOf) -> Result<String> {
    let id = ServiceId::parse(args.first().copied().unwrap_or(""))?;
    let tail = crate::ops::parse_tail(req.query_param("tail").as_deref())?;
    let service = req.query_param("service").filter(|s| !s.is_empty());
    let state = read_state(app)?;
    crate::ops::logs(
        &RealHost,
        &app.config,
        &state,
        &id,
        of,
        tail,
        service.as_deref(),
    )
}
