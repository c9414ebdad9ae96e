//! The read-only commands `list` and `status`: what is available, what is
//! installed, and whether the cell has what pic-store needs. They read the
//! state without the lock (it is only ever replaced whole).

use crate::config::Config;
use crate::error::Result;
use crate::host::{Cmd, Host};
use crate::state::{State, StateStore};
use crate::store::StoreClient;
use serde_json::{json, Value};
use std::time::Duration;

/// `{"available": [...], "installed": {...}, "stale": bool}` (spec §12).
pub fn services_value(state: &State, index: &crate::store::Index) -> Value {
    json!({
        "available": index.services,
        "installed": state.services,
        "stale": index.stale,
        "index_fetched_at": index.fetched_at,
    })
}

pub fn list(config: &Config, as_json: bool) -> Result<i32> {
    let state = StateStore::new(&config.state_dir).read()?;
    let store = StoreClient::from_config(config);
    let index = store.index()?;
    if as_json {
        println!("{}", services_value(&state, &index));
        return Ok(0);
    }
    if index.stale {
        eprintln!(
            "note: the store is unreachable; this is the index fetched {}",
            age(index.fetched_at)
        );
    }
    println!("{:<24} {:<28} {:<12} INSTALLED", "ID", "NAME", "VERSION");
    for e in &index.services {
        let installed = state
            .services
            .get(e.id.as_str())
            .map(|s| s.manifest.version.as_str())
            .unwrap_or("-");
        println!(
            "{:<24} {:<28} {:<12} {installed}",
            e.id.as_str(),
            clip(&e.name, 28),
            clip(&e.version, 12)
        );
    }
    for (id, s) in &state.services {
        if !index.services.iter().any(|e| e.id.as_str() == id) {
            println!(
                "{:<24} {:<28} {:<12} {} (no longer in the store)",
                id,
                clip(&s.manifest.name, 28),
                "-",
                s.manifest.version
            );
        }
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
        "index": cached.map(|i| json!({
            "fetched_at": i.fetched_at,
            "age_seconds": crate::files::now_unix().saturating_sub(i.fetched_at),
            "stale": i.stale,
            "services": i.services.len(),
        })),
        "tools": tools,
    })
}

pub fn status(config: &Config, host: &dyn Host, as_json: bool) -> Result<i32> {
    let state = StateStore::new(&config.state_dir).read()?;
    let store = StoreClient::from_config(config);
    let v = status_json(config, host, &state, &store);
    if as_json {
        println!("{v}");
    } else {
        println!("pic-store {}", v["version"].as_str().unwrap_or(""));
        println!(
            "installed services: {}, connections: {}, peer routes: {}, egress choices: {}",
            state.services.len(),
            state.connections.len(),
            state.peer_routes.len(),
            state.egress.len()
        );
        match &state.pending {
            Some(p) => println!("pending: {} of {} (pid {})", p.op, p.target, p.pid),
            None => println!("pending: none"),
        }
        match store.cached_index() {
            Some(i) => println!(
                "store index: {} services, fetched {}",
                i.services.len(),
                age(i.fetched_at)
            ),
            None => println!("store index: not fetched yet"),
        }
        if let Some(tools) = v["tools"].as_object() {
            for (name, t) in tools {
                let mark = if t["ok"] == json!(true) {
                    "ok"
                } else {
                    "MISSING"
                };
                println!(
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
