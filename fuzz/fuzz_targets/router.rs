//! Fuzzes request routing (`http::router::handle`) with whole requests, as
//! the server would see them once tiny_http has read one, against one
//! long-lived `App` (as in `serve`). Never a panic; every answer a valid
//! status with the security headers and no header line break; API errors
//! in the JSON shape of spec §12; `/api/*` never 2xx without the token;
//! and no request ever queues a job: mutations need the token or a session
//! *and* its CSRF token, which the input only gets for `GET`.
//!
//! Input: a request line, header lines, an empty line, the body:
//!
//! ```text
//! GET /api/services/radicale?x=1 HTTP/1.1
//! Host: localhost
//! Authorization: Bearer @TOKEN@
//!
//! body bytes
//! ```
//!
//! `@TOKEN@` and `@CSRF@` become the real API token and the session's CSRF
//! token in a `GET` only; `@SESSION@` becomes a logged-in session's id in
//! any request. `X-Fuzz-Remote: <ip>` sets the client address (otherwise
//! one derived from the input, so the wrong-token throttle does not lock
//! every input out); it is not passed on as a header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pic_store::config::Config;
use pic_store::http::msg::{Req, Resp};
use pic_store::http::{auth, forms, jobs, router, App};
use pic_store::ids::ServiceId;
use pic_store::ops::Peer;
use pic_store::store::StoreClient;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};

const TOKEN: &str = "5e2b0c7f9a1d4e8b6c3f0a2d7e9b1c4f8a6d3e0b2c7f9a1d4e8b6c3f0a2d7e9b";
const STORE_INDEX: &str = r#"{"schema": 1, "services": [
  {"id": "radicale", "name": "Radicale", "version": "3.1.8"},
  {"id": "web", "name": "Web", "version": "1"}
]}"#;

struct World {
    app: App,
    /// A logged-in session `(id, csrf)`, renewed if it is ever evicted.
    session: Mutex<(String, String)>,
}

static WORLD: LazyLock<World> = LazyLock::new(world);

/// A state folder of its own with a `file://` store index; every program
/// path leads nowhere, so nothing could touch the host even by mistake.
fn world() -> World {
    let dir = std::env::temp_dir().join(format!("pic-store-fuzz-router-{}", std::process::id()));
    let store = dir.join("store");
    std::fs::create_dir_all(&store).expect("create the fuzz state folder");
    std::fs::write(store.join("index.json"), STORE_INDEX).expect("write the store index");
    let state = dir.join("state");
    let index_url = format!("file://{}", store.join("index.json").display());
    let config = Config::from_lookup(|k| match k {
        "PIC_STATE_DIR" => Some(state.display().to_string()),
        "PIC_STORE_INDEX_URL" => Some(index_url.clone()),
        "PIC_CADDY_RELOAD" => Some("/nonexistent/caddy reload".into()),
        k if PROGRAMS.contains(&k) => Some(nowhere(k).display().to_string()),
        _ => None,
    })
    .expect("the fuzz configuration");
    let config = Arc::new(config);
    let store = Arc::new(StoreClient::from_config(&config));
    let app = App {
        allowed_hosts: vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "[::1]".into(),
            "127.0.0.1:8420".into(),
        ],
        jobs: jobs::Jobs::start(config.clone(), store.clone()).expect("start the job thread"),
        config,
        store,
        token: TOKEN.into(),
        sessions: auth::Sessions::default(),
        throttle: auth::Throttle::default(),
        load: Default::default(),
    };
    let session = app.sessions.create().expect("a session");
    World {
        app,
        session: Mutex::new(session),
    }
}

const PROGRAMS: &[&str] = &[
    "PIC_DOCKER",
    "PIC_IPTABLES",
    "PIC_IPTABLES_RESTORE",
    "PIC_IPTABLES_SAVE",
    "PIC_IP",
    "PIC_COSIGN",
];

fn nowhere(var: &str) -> PathBuf {
    PathBuf::from("/nonexistent").join(var.to_ascii_lowercase())
}

fn live_session(w: &World) -> (String, String) {
    let mut s = w.session.lock().unwrap_or_else(|p| p.into_inner());
    if w.app.sessions.csrf(&s.0).is_none() {
        *s = w.app.sessions.create().expect("a session");
    }
    s.clone()
}

fuzz_target!(|data: &[u8]| {
    let w = &*WORLD;
    let session = live_session(w);
    let (req, authenticated) = parse(data, &session);
    let resp = router::handle(&w.app, &req);
    check_answer(&req, &resp, authenticated);
    mutation_builders(&req);
    assert!(
        w.app.jobs.recent(1).is_empty(),
        "{} {} queued a job without the token or a CSRF token",
        req.method,
        req.path
    );
});

/// Splits the input into a request as `http::to_req` builds one, with the
/// placeholders replaced. Also says whether the API token was given.
fn parse(data: &[u8], session: &(String, String)) -> (Req, bool) {
    let (head, body) = split_head(data);
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or("");
    let mut words = request_line.split(' ');
    let method = words.next().unwrap_or("").to_ascii_uppercase();
    let target = words.next().unwrap_or("");
    let get = method == "GET";
    let fill = |s: &str| {
        let s = s.replace("@SESSION@", &session.0);
        if get {
            s.replace("@TOKEN@", TOKEN).replace("@CSRF@", &session.1)
        } else {
            s
        }
    };
    let authenticated = get && head.contains("@TOKEN@");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut remote = None;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.trim();
        if name.eq_ignore_ascii_case("X-Fuzz-Remote") {
            remote = value.parse::<IpAddr>().ok();
        } else {
            headers.push((name.to_string(), fill(value)));
        }
    }
    let req = Req {
        method,
        path: path.to_string(),
        query: fill(query),
        headers,
        body: body.to_vec(),
        remote: Some(remote.unwrap_or_else(|| derived_address(data))),
    };
    (req, authenticated)
}

/// The head ends at the first empty line (`\n\n` or `\r\n\r\n`).
fn split_head(data: &[u8]) -> (&[u8], &[u8]) {
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'\n' {
            let rest = &data[i + 1..];
            if rest.starts_with(b"\n") {
                return (&data[..i], &rest[1..]);
            }
            if rest.starts_with(b"\r\n") {
                return (&data[..i], &rest[2..]);
            }
        }
        i += 1;
    }
    (data, &[])
}

/// An address in 10.0.0.0/8 from an FNV-1a hash of the input.
fn derived_address(data: &[u8]) -> IpAddr {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    let [_, a, b, c] = h.to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(10, a, b, c))
}

fn check_answer(req: &Req, resp: &Resp, authenticated: bool) {
    let what = format!("{} {:?}: {}", req.method, req.path, resp.status);
    assert!((100..=599).contains(&resp.status), "{what}");
    for name in [
        "Content-Security-Policy",
        "X-Frame-Options",
        "X-Content-Type-Options",
    ] {
        assert!(
            resp.headers.iter().any(|(k, _)| k == name),
            "{what}: no {name} header"
        );
    }
    for (k, v) in &resp.headers {
        assert!(
            !k.contains(['\r', '\n']) && !v.contains(['\r', '\n']),
            "{what}: header line break in {k}: {v:?}"
        );
    }
    let api = req.path.trim_start_matches('/').split('/').next() == Some("api");
    if api && !authenticated {
        assert!(resp.status >= 400, "{what} without the token");
    }
    if api && resp.status >= 400 {
        let body: Value = serde_json::from_slice(&resp.body)
            .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e})"));
        assert_eq!(body["ok"], Value::Bool(false), "{what}: {body}");
        assert!(body["error"].is_string(), "{what}: {body}");
        assert!(body["errors"].is_array(), "{what}: {body}");
    }
}

/// The parsers of the API's and the forms' commands, called directly on
/// the request's fields and path words: the router only reaches them with
/// the token or a CSRF token, and a queued job would run for real.
fn mutation_builders(req: &Req) {
    let Ok(fields) = forms::body_object(forms::body_kind(req.header("Content-Type")), &req.body)
    else {
        return;
    };
    for word in req.path.split('/').take(8) {
        let _ = Peer::parse(word);
        let _ = ServiceId::parse(word);
    }
    let _ = forms::id_field(&fields, "connection");
    let _ = forms::connection_add(&fields);
    let _ = forms::settings(&fields);
    let _ = req.query_param("purge");
}
