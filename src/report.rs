//! The read-only commands `list` and `status`: what is available, what is
//! installed, and whether the cell has what pic-store needs. They read the
//! state without the lock (it is only ever replaced whole).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::host::{Cmd, Host, RealHost};
use crate::out::outln;
use crate::runtime::{self, RunState, Runtime, Runtimes};
use crate::state::{InstalledService, State, StateStore};
use crate::store::{Index, StoreClient};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// `{"available": [...], "installed": {...}, "connections": {...},
/// "stale": bool}` (spec §12, §13). Each installed service carries its
/// `runtime` and `update_available`, each connection instance its
/// `runtime`. With the store unreachable and nothing cached, `available`
/// is empty and `error` says why; with docker unanswering, each runtime
/// is null and `runtime_error` says why.
pub fn services_value(
    state: &State,
    index: std::result::Result<&Index, &Error>,
    runtimes: &std::result::Result<Runtimes, String>,
) -> Value {
    let mut installed = Map::new();
    for (id, s) in &state.services {
        let mut v = json!(s);
        if let Value::Object(fields) = &mut v {
            let rt = runtimes.as_ref().ok().and_then(|r| r.services.get(id));
            fields.insert("runtime".into(), json!(rt));
            let update = index.ok().is_some_and(|i| update_available(s, i));
            fields.insert("update_available".into(), json!(update));
        }
        installed.insert(id.clone(), v);
    }
    let mut connections = Map::new();
    for (id, c) in &state.connections {
        let rt = runtimes.as_ref().ok().and_then(|r| r.connections.get(id));
        connections.insert(id.clone(), json!({"service": c.service, "runtime": rt}));
    }
    let mut v = match index {
        Ok(index) => json!({
            "available": index.services,
            "stale": index.stale,
            "index_fetched_at": index.fetched_at,
        }),
        Err(e) => json!({
            "available": [],
            "stale": false,
            "index_fetched_at": null,
            "error": e.to_string(),
        }),
    };
    v["installed"] = Value::Object(installed);
    v["connections"] = Value::Object(connections);
    if let Err(e) = runtimes {
        v["runtime_error"] = json!(e);
    }
    v
}

/// Whether the store offers another version of an installed service: the
/// index entry's `version` (and its `image`, when the index gives one)
/// differs from the installed manifest's. The index is what every reader
/// already has; no manifest is fetched per request (README, "Choices").
pub fn update_available(s: &InstalledService, index: &Index) -> bool {
    let Some(e) = index
        .services
        .iter()
        .find(|e| e.id.as_str() == s.manifest.id.as_str())
    else {
        return false;
    };
    let image_differs = e
        .extra
        .get("image")
        .and_then(Value::as_str)
        .is_some_and(|image| image != s.manifest.image);
    e.version != s.manifest.version || image_differs
}

/// The runtime of everything installed, from one `docker ps -a` (at most
/// one per [`runtime::INVENTORY_TTL`] in a process).
pub fn runtimes(
    host: &dyn Host,
    config: &Config,
    state: &State,
) -> std::result::Result<Runtimes, String> {
    let (_, inv) = runtime::cached_inventory(host, config);
    inv.as_ref()
        .as_ref()
        .map(|inv| Runtimes::of(state, inv))
        .map_err(Clone::clone)
}

/// A runtime as one word for text output: `exited (137)`, `healthy`...
pub fn runtime_word(rt: Option<&Runtime>) -> String {
    match rt {
        None => "-".into(),
        Some(r) => match r.exit_code {
            Some(code) if r.state == RunState::Exited => format!("exited ({code})"),
            _ => r.state.as_str().to_string(),
        },
    }
}

pub fn list(config: &Config, as_json: bool) -> Result<i32> {
    let state = StateStore::new(&config.state_dir).read()?;
    let store = StoreClient::from_config(config);
    let index = store.index();
    let runtimes = runtimes(&RealHost, config, &state);
    if as_json {
        outln!("{}", services_value(&state, index.as_ref(), &runtimes));
        return Ok(0);
    }
    match &index {
        Ok(i) if i.stale => eprintln!(
            "note: the store is unreachable; this is the index fetched {}",
            age(i.fetched_at)
        ),
        Ok(_) => {}
        Err(e) => eprintln!("note: the store cannot be read, showing only what is installed: {e}"),
    }
    if let Err(e) = &runtimes {
        eprintln!("note: the containers' state is unknown: {e}");
    }
    let rt = |id: &str| runtime_word(runtimes.as_ref().ok().and_then(|r| r.services.get(id)));
    let no_services = Vec::new();
    let available = index.as_ref().map(|i| &i.services).unwrap_or(&no_services);
    outln!(
        "{:<24} {:<28} {:<12} {:<12} RUNTIME",
        "ID",
        "NAME",
        "VERSION",
        "INSTALLED"
    );
    for e in available {
        let id = e.id.as_str();
        let installed = match state.services.get(id) {
            Some(s) if s.manifest.version != e.version => {
                format!("{} (update)", s.manifest.version)
            }
            Some(s) => s.manifest.version.clone(),
            None => "-".into(),
        };
        let runtime = if state.services.contains_key(id) {
            rt(id)
        } else {
            "-".into()
        };
        outln!(
            "{:<24} {:<28} {:<12} {:<12} {runtime}",
            id,
            clip(&e.name, 28),
            clip(&e.version, 12),
            installed
        );
    }
    for (id, s) in &state.services {
        if !available.iter().any(|e| e.id.as_str() == id) {
            let note = if index.is_ok() {
                " (no longer in the store)"
            } else {
                ""
            };
            outln!(
                "{:<24} {:<28} {:<12} {:<12} {}{note}",
                id,
                clip(&s.manifest.name, 28),
                "-",
                s.manifest.version,
                rt(id)
            );
        }
    }
    for (id, c) in &state.connections {
        let word = runtime_word(runtimes.as_ref().ok().and_then(|r| r.connections.get(id)));
        outln!("connection {id} ({}): {word}", c.service);
    }
    Ok(0)
}

/// The facts `status` shows, as JSON (the API's `/api/status` too).
pub fn status_json(config: &Config, host: &dyn Host, state: &State, store: &StoreClient) -> Value {
    let cached = store.cached_index();
    let tools = json!({
        "docker": tool(config.docker.found, &config.docker.display()),
        "compose": compose_version(host, config),
        "iptables": tool(config.iptables.found, &config.iptables.display()),
        "iptables_restore": tool(config.iptables_restore.found, &config.iptables_restore.display()),
        "ip": tool(config.ip.found, &config.ip.display()),
        "cosign": if config.cosign_key.is_some() {
            tool(config.cosign.found, &config.cosign.display())
        } else {
            json!({"ok": true, "detail": "not used (PIC_COSIGN_KEY unset)"})
        },
    });
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "services": state.services.len(),
        "connections": state.connections.len(),
        "peer_routes": state.peer_routes.len(),
        "egress": state.egress.len(),
        "image_verification_mode": state.settings.image_verification_mode,
        "pending": state.pending,
        "index": cached.as_ref().map(|i| json!({
            "fetched_at": i.fetched_at,
            "age_seconds": crate::files::now_unix().saturating_sub(i.fetched_at),
            "stale": i.stale,
            "services": i.services.len(),
        })),
        "tools": tools,
        "runtime": status_runtime(host, config, state),
        "updates_available": cached.as_ref().map(|i| {
            state
                .services
                .iter()
                .filter(|(_, s)| update_available(s, i))
                .map(|(id, _)| id.clone())
                .collect::<Vec<_>>()
        }),
    })
}

/// `status`'s `runtime`: `{"services": {ID: RUNTIME}, "connections":
/// {ID: RUNTIME}}`, with `update_available` for the services when an
/// index is cached (no fetch: `status` only reads), or `{"error": ...}`.
fn status_runtime(host: &dyn Host, config: &Config, state: &State) -> Value {
    match runtimes(host, config, state) {
        Ok(r) => json!({"services": r.services, "connections": r.connections}),
        Err(e) => json!({"error": e}),
    }
}

pub fn status(config: &Config, host: &dyn Host, as_json: bool) -> Result<i32> {
    let state = StateStore::new(&config.state_dir).read()?;
    let store = StoreClient::from_config(config);
    let v = status_json(config, host, &state, &store);
    if as_json {
        outln!("{v}");
    } else {
        outln!("pic-store {}", v["version"].as_str().unwrap_or(""));
        outln!(
            "installed services: {}, connections: {}, peer routes: {}, egress choices: {}",
            state.services.len(),
            state.connections.len(),
            state.peer_routes.len(),
            state.egress.len()
        );
        match &state.pending {
            Some(p) => outln!("pending: {} of {} (pid {})", p.op, p.target, p.pid),
            None => outln!("pending: none"),
        }
        status_services(&v);
        match store.cached_index() {
            Some(i) => outln!(
                "store index: {} services, fetched {}",
                i.services.len(),
                age(i.fetched_at)
            ),
            None => outln!("store index: not fetched yet"),
        }
        if let Some(tools) = v["tools"].as_object() {
            for (name, t) in tools {
                let mark = if t["ok"] == json!(true) {
                    "ok"
                } else {
                    "MISSING"
                };
                outln!(
                    "{name:<17} {mark:<8} {}",
                    t["detail"].as_str().unwrap_or("")
                );
            }
        }
    }
    let tools_ok = v["tools"]
        .as_object()
        .is_some_and(|t| t.values().all(|x| x["ok"] == json!(true)));
    Ok(if tools_ok { 0 } else { 1 })
}

/// `status`'s lines for each service's and connection's runtime.
fn status_services(v: &Value) {
    let rt = &v["runtime"];
    if let Some(e) = rt["error"].as_str() {
        outln!("runtime: unknown ({e})");
        return;
    }
    let updates: Vec<&str> = v["updates_available"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (kind, key) in [("service", "services"), ("connection", "connections")] {
        if let Some(map) = rt[key].as_object() {
            for (id, r) in map {
                let update = if updates.contains(&id.as_str()) {
                    "  (update available)"
                } else {
                    ""
                };
                outln!("{kind} {id}: {}{update}", json_word(r));
            }
        }
    }
}

/// [`runtime_word`] of a runtime's JSON form.
fn json_word(v: &Value) -> String {
    match (v["state"].as_str(), v["exit_code"].as_i64()) {
        (None, _) => "-".into(),
        (Some("exited"), Some(code)) => format!("exited ({code})"),
        (Some(state), _) => state.to_string(),
    }
}

fn tool(found: bool, path: &str) -> Value {
    if found {
        json!({"ok": true, "detail": path})
    } else {
        json!({"ok": false, "detail": format!("{path} not found")})
    }
}

/// How long a Compose plugin check is reused: `docker compose version`
/// takes a few hundred milliseconds, and status pages are polled.
const COMPOSE_CHECK_TTL: Duration = Duration::from_secs(60);

static COMPOSE_CHECK: std::sync::Mutex<Option<(std::time::Instant, Value)>> =
    std::sync::Mutex::new(None);

/// The Compose v2 plugin is a separate install from docker: say so when
/// it is missing rather than failing at the first install.
fn compose_version(host: &dyn Host, config: &Config) -> Value {
    let mut cache = COMPOSE_CHECK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((at, v)) = cache.as_ref() {
        if at.elapsed() < COMPOSE_CHECK_TTL {
            return v.clone();
        }
    }
    let v = check_compose(host, config);
    *cache = Some((std::time::Instant::now(), v.clone()));
    v
}

fn check_compose(host: &dyn Host, config: &Config) -> Value {
    if !config.docker.found {
        return json!({"ok": false, "detail": "docker not found"});
    }
    let cmd = Cmd::new(&config.docker)
        .args(["compose", "version", "--short"])
        .timeout(Duration::from_secs(10));
    match host.run(&cmd) {
        Ok(out) => {
            json!({"ok": true, "detail": format!("v{}", out.stdout.trim().trim_start_matches('v'))})
        }
        Err(e) => json!({
            "ok": false,
            "detail": format!("the docker compose plugin is missing or broken: {e}"),
        }),
    }
}

/// How long ago a unix time was, as a person says it.
pub fn age(unix: u64) -> String {
    let secs = crate::files::now_unix().saturating_sub(unix);
    match secs {
        0..=89 => format!("{secs} s ago"),
        90..=5399 => format!("{} min ago", secs / 60),
        5400..=172_799 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}

fn clip(s: &str, n: usize) -> String {
    crate::ids::truncate(s, n.saturating_sub(3))
}
