//! Faults and load through the API with the real parts (issue 8): a kill
//! storm (random mutations, `serve` SIGKILLed at random moments, then
//! restarted) and concurrent mutations from the API, the CLI and reapply.
//! After each, the state parses and containers, compose files, chains,
//! band rules and the Caddy file all match it (`reapply --dry-run` in
//! sync), with nothing orphaned and no update lost.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const WEB: &str = "services:\n  web:\n    image: ${IMAGE}\n    container_name: ${CONTAINER_NAME}\n    command: [\"httpd\", \"-f\", \"-p\", \"8080\"]\n    networks: [${NETWORK}]\n";
/// A `route` instance: no published port, so tests can run side by side.
const TUNNEL: &str = "services:\n  tunnel:\n    image: ${IMAGE}\n    container_name: ${CONTAINER_NAME}\n    command: [\"httpd\", \"-f\", \"-p\", \"${REDIRECT_PORT}\"]\n    environment:\n      MARK: \"${FWMARK}\"\n    networks: [${NETWORK}]\n";

/// A cell: state folder, store, namespace for its rules, and the program
/// overrides that run iptables and ip inside that namespace (so `serve`
/// can listen on the host's loopback).
struct Cell {
    dir: TempDir,
    ns: Netns,
    env: Vec<(String, String)>,
    ids: Vec<String>,
}

impl Cell {
    fn new(prefix: &str, pool: &str, services: &[(&str, Value, &str)]) -> Cell {
        let dir = TempDir::with_prefix(prefix);
        let ns = Netns::new();
        let mut store = Store::new(&dir);
        let mut ids = Vec::new();
        for (id, m, t) in services {
            remove_compose_project(&format!("pic-{id}"));
            store.add(id, m.clone(), t);
            ids.push(id.to_string());
        }
        let mut env = vec![
            ("PIC_SERVICE_POOL".to_string(), pool.to_string()),
            ("PIC_WAN_IFACE".to_string(), "picdummy".to_string()),
            (
                "PIC_CADDYFILE".to_string(),
                dir.join("services.caddy").display().to_string(),
            ),
        ];
        env.extend(ns.program_overrides(&dir.join("bin")));
        Cell { dir, ns, env, ids }
    }

    fn envs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        pic(&self.dir, &self.envs(), args)
    }

    fn state(&self) -> Value {
        let bytes =
            fs::read(self.dir.state_dir().join("state.json")).unwrap_or_else(|_| b"{}".to_vec());
        serde_json::from_slice(&bytes).expect("state.json parses")
    }

    fn serve(&self) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut envs = self.envs();
        envs.push(("PIC_LISTEN", &listen));
        envs.push(("PIC_LOG", "info"));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("serve.log"))
            .unwrap();
        let child = pic_command(&self.dir, &envs, &["serve"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            api: Client {
                port,
                token: String::new(),
            },
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while server.api.get("/healthz").map(|(s, _)| s) != Some(200) {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "serve exited {status}: {}",
                    fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "serve did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        server.api.token = fs::read_to_string(self.dir.state_dir().join("api-token"))
            .unwrap()
            .trim()
            .to_string();
        // serve makes the network match the state as its first queued job:
        // a mutation answered after it proves it has run.
        let current = self.state()["settings"]["image_verification_mode"]
            .as_str()
            .unwrap_or("warn")
            .to_string();
        let barrier = server.api.call(
            "PUT",
            "/api/settings",
            Some(json!({"image_verification_mode": current})),
        );
        assert_eq!(barrier.map(|r| r.0), Some(200));
        server
    }

    /// The system matches the state and nothing is orphaned.
    fn assert_consistent(&self, when: &str) {
        let state = self.state();
        assert!(
            state["pending"].is_null(),
            "{when}: pending left: {}",
            state["pending"]
        );
        let dry = self.cli(&["reapply", "--dry-run"]);
        assert_eq!(dry.status.code(), Some(0), "{when}: drift\n{}", show(&dry));
        let mut expected: BTreeSet<String> = BTreeSet::new();
        for (id, s) in state["services"].as_object().into_iter().flatten() {
            if s["manifest"]["instanceable"] != json!(true) {
                expected.insert(format!("pic-{id}"));
            }
        }
        for (id, c) in state["connections"].as_object().into_iter().flatten() {
            expected.insert(format!("pic-{}-{id}", c["service"].as_str().unwrap()));
        }
        let files: BTreeSet<String> = fs::read_dir(self.dir.state_dir().join("compose"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .trim_end_matches(".json")
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(files, expected, "{when}: compose files");
        for id in &self.ids {
            let project = format!("pic-{id}");
            let running = !compose_project_containers(&project).is_empty();
            assert_eq!(
                running,
                expected.contains(&project),
                "{when}: containers of {project}"
            );
        }
        for c in state["connections"].as_object().into_iter().flatten() {
            let project = format!("pic-{}-{}", c.1["service"].as_str().unwrap(), c.0);
            assert!(
                !compose_project_containers(&project).is_empty(),
                "{when}: {project} not running"
            );
        }
    }
}

struct Server {
    child: Child,
    api: Client,
}

/// The API over loopback with the token.
#[derive(Clone)]
struct Client {
    port: u16,
    token: String,
}

impl Client {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        minreq::get(self.url(path))
            .with_header("Authorization", format!("Bearer {}", self.token))
            .with_timeout(5)
            .send()
            .ok()
            .map(|r| (r.status_code, r.as_str().unwrap_or("").to_string()))
    }

    /// A mutation; `None` when the server died under it.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Option<(u16, Value)> {
        let url = self.url(path);
        let req = match method {
            "POST" => minreq::post(url),
            "PUT" => minreq::put(url),
            "DELETE" => minreq::delete(url),
            _ => minreq::get(url),
        };
        let mut req = req
            .with_header("Authorization", format!("Bearer {}", self.token))
            .with_timeout(300);
        if let Some(b) = body {
            req = req
                .with_header("Content-Type", "application/json")
                .with_body(b.to_string());
        }
        let r = req.send().ok()?;
        let v = serde_json::from_str(r.as_str().unwrap_or("null")).unwrap_or(Value::Null);
        match (r.status_code, v["url"].as_str()) {
            // More mutations wait than the server lets workers wait for
            // (spec §12): follow the job to its outcome.
            (202, Some(url)) => self.outcome(url),
            _ => Some((r.status_code, v)),
        }
    }

    /// A job's outcome as the mutation would have answered it: 200 with
    /// the job, or its error status; `None` when the server died first.
    fn outcome(&self, url: &str) -> Option<(u16, Value)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        while std::time::Instant::now() < deadline {
            let (_, text) = self.get(url)?;
            let job: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if job["state"] == "done" {
                let status = match job["ok"].as_bool() {
                    Some(true) => 200,
                    _ => job["status"].as_u64().unwrap_or(500) as u16,
                };
                return Some((status, job));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Server {
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn services(digest: &str, web: &str, tunnel: &str) -> Vec<(String, Value, &'static str)> {
    let img = image_ref("web", "1", digest);
    vec![
        (
            web.to_string(),
            json!({"id": web, "name": "w", "version": "1", "author": "t", "image": img,
                   "container_name": web, "subdomain": web, "backend": format!("{web}:8080"),
                   "iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 8080}]}),
            WEB,
        ),
        (
            tunnel.to_string(),
            json!({"id": tunnel, "name": "t", "version": "1", "author": "t", "image": img,
                   "container_name": tunnel, "kind": "connectivity", "instanceable": true,
                   "connectivity": {"mode": "route"}}),
            TUNNEL,
        ),
    ]
}

/// Whether `state` shows the effect of a mutation that was answered 200.
fn holds(state: &Value, method: &str, path: &str, body: &Option<Value>) -> bool {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let field = |k: &str| body.as_ref().map(|b| b[k].clone()).unwrap_or(Value::Null);
    match (method, parts.as_slice()) {
        ("POST", ["api", "services", id, "install"]) => state["services"].get(*id).is_some(),
        ("POST", ["api", "services", id, "remove"]) => state["services"].get(*id).is_none(),
        ("POST", ["api", "connections"]) => state["connections"]
            .get(field("name").as_str().unwrap_or(""))
            .is_some(),
        ("DELETE", ["api", "connections", id]) => state["connections"].get(*id).is_none(),
        ("PUT", ["api", "peers", peer, "route"]) => {
            state["peer_routes"][*peer] == field("connection")
        }
        ("DELETE", ["api", "peers", peer, "route"]) => state["peer_routes"].get(*peer).is_none(),
        ("PUT", ["api", "settings"]) => {
            state["settings"]["image_verification_mode"] == field("image_verification_mode")
        }
        _ => panic!("no check for {method} {path}"),
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn kill_storm_keeps_every_operation_whole() {
    if !require_rig() {
        return;
    }
    let rounds: usize = std::env::var("PIC_STORM_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let digest = image("web", "1", &["httpd", "-f", "-p", "8080"]);
    let defs = services(&digest, "ks-web", "ks-tun");
    let defs: Vec<(&str, Value, &str)> = defs
        .iter()
        .map(|(i, m, t)| (i.as_str(), m.clone(), *t))
        .collect();
    let cell = Cell::new("pic-storm", "172.20.0.120-172.20.0.139", &defs);
    for c in ["ka", "kb"] {
        remove_compose_project(&format!("pic-ks-tun-{c}"));
    }
    let mut server = cell.serve();
    assert_eq!(
        server
            .api
            .call("POST", "/api/services/ks-tun/install", None)
            .map(|r| r.0),
        Some(200)
    );
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id()));
    let mut effects = 0;
    for round in 0..rounds {
        let state = cell.state();
        let installed = state["services"].get("ks-web").is_some();
        let conns: Vec<String> = state["connections"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let peer = format!("10.8.0.{}", 2 + rng.below(20));
        let (method, path, body, slow): (&str, String, Option<Value>, bool) = match rng.below(6) {
            0 if installed => (
                "POST",
                "/api/services/ks-web/remove".into(),
                Some(json!({"purge": rng.below(2) == 0})),
                true,
            ),
            0 => ("POST", "/api/services/ks-web/install".into(), None, true),
            1 if conns.len() < 2 => {
                let name = if conns.iter().any(|c| c == "ka") {
                    "kb"
                } else {
                    "ka"
                };
                (
                    "POST",
                    "/api/connections".into(),
                    Some(json!({"service": "ks-tun", "name": name})),
                    true,
                )
            }
            1 => {
                // Only a connection nobody routes through can go.
                let used: Vec<&str> = state["peer_routes"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(_, c)| c.as_str())
                    .collect();
                match conns.iter().find(|c| !used.contains(&c.as_str())) {
                    Some(c) => ("DELETE", format!("/api/connections/{c}"), None, true),
                    None => ("DELETE", format!("/api/peers/{peer}/route"), None, false),
                }
            }
            2 | 3 if !conns.is_empty() => {
                let c = &conns[rng.below(conns.len() as u64) as usize];
                (
                    "PUT",
                    format!("/api/peers/{peer}/route"),
                    Some(json!({"connection": c})),
                    false,
                )
            }
            2 | 3 => ("DELETE", format!("/api/peers/{peer}/route"), None, false),
            4 => ("DELETE", format!("/api/peers/{peer}/route"), None, false),
            _ => {
                let mode = ["off", "warn", "enforce"][rng.below(3) as usize];
                (
                    "PUT",
                    "/api/settings".into(),
                    Some(json!({"image_verification_mode": mode})),
                    false,
                )
            }
        };
        let before = cell.state();
        let api = server.api.clone();
        let (what, sent) = (path.clone(), body.clone());
        let req = std::thread::spawn(move || api.call(method, &path, body));
        let window = if slow { 2500 } else { 150 };
        std::thread::sleep(Duration::from_millis(rng.below(window)));
        server.kill();
        let answered = req.join().unwrap();
        server = cell.serve();
        let after = cell.state();
        if after != before {
            effects += 1;
        }
        if let Some((200, _)) = &answered {
            // An answered success is never lost.
            assert!(
                holds(&after, method, &what, &sent),
                "round {round}: {method} {what} answered 200 but the state does not show it"
            );
        }
        cell.assert_consistent(&format!("round {round} ({method})"));
    }
    eprintln!("kill storm: {rounds} rounds, {effects} changed the state");
    assert!(
        effects > rounds / 10,
        "the storm changed almost nothing ({effects})"
    );
    // Tidy up through the API.
    let state = cell.state();
    for peer in state["peer_routes"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(p, _)| p.clone())
    {
        server
            .api
            .call("DELETE", &format!("/api/peers/{peer}/route"), None);
    }
    for c in state["connections"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(c, _)| c.clone())
    {
        server
            .api
            .call("DELETE", &format!("/api/connections/{c}"), None);
    }
    server.api.call(
        "POST",
        "/api/services/ks-web/remove",
        Some(json!({"purge": true})),
    );
    server.api.call("POST", "/api/services/ks-tun/remove", None);
    server.kill();
}

#[test]
fn concurrent_mutations_from_api_cli_and_reapply_lose_nothing() {
    if !require_rig() {
        return;
    }
    let digest = image("web", "1", &["httpd", "-f", "-p", "8080"]);
    let defs = services(&digest, "cc-web", "cc-tun");
    let defs: Vec<(&str, Value, &str)> = defs
        .iter()
        .map(|(i, m, t)| (i.as_str(), m.clone(), *t))
        .collect();
    let cell = Cell::new("pic-concurrent", "172.20.0.140-172.20.0.159", &defs);
    for c in ["ca", "cb", "cc", "cd", "ce", "cf"] {
        remove_compose_project(&format!("pic-cc-tun-{c}"));
    }
    let server = cell.serve();
    assert_eq!(
        server
            .api
            .call("POST", "/api/services/cc-tun/install", None)
            .map(|r| r.0),
        Some(200)
    );
    assert_eq!(
        server
            .api
            .call(
                "POST",
                "/api/connections",
                Some(json!({"service": "cc-tun", "name": "ca"}))
            )
            .map(|r| r.0),
        Some(200)
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The CLI routes its own peers in a loop; reapply runs in another.
    let cli_peers: Vec<String> = (0..30).map(|i| format!("10.9.1.{}", i + 1)).collect();
    let cli = {
        let (dir, envs, peers) = (
            cell.dir.path().to_path_buf(),
            cell.env.clone(),
            cli_peers.clone(),
        );
        std::thread::spawn(move || {
            for p in &peers {
                let envs: Vec<(&str, &str)> =
                    envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                // The lock is not fair: past its 30 s wait the CLI gives
                // up cleanly with "busy" and changes nothing; try again.
                let mut out = pic_in_dir(&dir, &envs, &["peer", "route", p, "ca"]);
                for _ in 0..5 {
                    if out.status.success()
                        || !String::from_utf8_lossy(&out.stderr).contains("busy")
                    {
                        break;
                    }
                    out = pic_in_dir(&dir, &envs, &["peer", "route", p, "ca"]);
                }
                assert!(out.status.success(), "{}", show(&out));
            }
        })
    };
    let reapply = {
        let (dir, envs, stop) = (
            cell.dir.path().to_path_buf(),
            cell.env.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && runs < 40 {
                let envs: Vec<(&str, &str)> =
                    envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let out = pic_in_dir(&dir, &envs, &["reapply"]);
                assert!(out.status.success(), "{}", show(&out));
                runs += 1;
            }
            runs
        })
    };
    // 50 API mutations: 5 connection creates, 40 peer routes and the web
    // service's install at once, and 4 settings changes in a row.
    let mut calls: Vec<(&str, String, Option<Value>)> = Vec::new();
    for c in ["cb", "cc", "cd", "ce", "cf"] {
        calls.push((
            "POST",
            "/api/connections".into(),
            Some(json!({"service": "cc-tun", "name": c})),
        ));
    }
    for i in 0..40 {
        calls.push((
            "PUT",
            format!("/api/peers/10.8.2.{}/route", i + 1),
            Some(json!({"connection": "ca"})),
        ));
    }
    calls.push(("POST", "/api/services/cc-web/install".into(), None));
    // Four settings changes one after another from one client (concurrent
    // requests have no order), while everything else runs at once.
    let settings = {
        let api = server.api.clone();
        std::thread::spawn(move || {
            for mode in ["off", "enforce", "warn", "off"] {
                let r = api.call(
                    "PUT",
                    "/api/settings",
                    Some(json!({"image_verification_mode": mode})),
                );
                assert_eq!(r.map(|r| r.0), Some(200), "{mode}");
            }
        })
    };
    let handles: Vec<_> = calls
        .into_iter()
        .map(|(m, p, b)| {
            let api = server.api.clone();
            std::thread::spawn(move || {
                let r = api.call(m, &p, b);
                (p, r)
            })
        })
        .collect();
    for h in handles {
        let (path, r) = h.join().unwrap();
        assert_eq!(r.as_ref().map(|r| r.0), Some(200), "{path}: {r:?}");
    }
    cli.join().unwrap();
    settings.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = reapply.join().unwrap();
    assert!(runs >= 1);

    let state = cell.state();
    let routes = state["peer_routes"].as_object().unwrap();
    assert_eq!(routes.len(), 70, "no lost update: 40 API + 30 CLI peers");
    let conns = state["connections"].as_object().unwrap();
    assert_eq!(conns.len(), 6);
    for key in ["fwmark", "table", "port", "ip"] {
        let values: BTreeSet<String> = conns.values().map(|c| c[key].to_string()).collect();
        assert_eq!(values.len(), 6, "duplicate {key}");
    }
    assert!(!conns
        .values()
        .any(|c| c["ip"] == state["services"]["cc-web"]["ip"]));
    let save = cell.ns.iptables_save();
    let mut seen = BTreeSet::new();
    for line in save.lines().filter(|l| l.starts_with("-A PIC_")) {
        assert!(seen.insert(line.to_string()), "duplicate rule {line}");
    }
    assert_eq!(state["settings"]["image_verification_mode"], json!("off"));
    cell.assert_consistent("after the concurrent mutations");

    for p in routes.keys() {
        server
            .api
            .call("DELETE", &format!("/api/peers/{p}/route"), None);
    }
    for c in conns.keys() {
        server
            .api
            .call("DELETE", &format!("/api/connections/{c}"), None);
    }
    server.api.call("POST", "/api/services/cc-web/remove", None);
    server.api.call("POST", "/api/services/cc-tun/remove", None);
}

/// `pic` for a folder path (the CLI threads outlive the borrow of `TempDir`).
fn pic_in_dir(dir: &Path, envs: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(bin());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PIC_STATE_DIR", dir.join("state"))
        .env("PIC_CADDY_RELOAD", "")
        .env(
            "PIC_STORE_INDEX_URL",
            format!("file://{}", dir.join("store/index.json").display()),
        )
        .env("PIC_IMAGE_REGISTRY", IMAGE_PREFIX)
        .env("PIC_LOG", "warn")
        .envs(envs.iter().copied())
        .args(args)
        .stdin(Stdio::null());
    cmd.output().unwrap()
}

fn proc_figures(pid: u32) -> (u64, usize) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

/// `scripts/soak`: mixed reads and mutations for `PIC_SOAK_SECONDS`
/// (default 600). RSS and open descriptors of `serve` must stay flat and
/// every answered mutation must be in the final state.
#[test]
#[ignore]
fn soak() {
    if !require_rig() {
        return;
    }
    let seconds: u64 = std::env::var("PIC_SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let digest = image("web", "1", &["httpd", "-f", "-p", "8080"]);
    let defs = services(&digest, "sk-web", "sk-tun");
    let defs: Vec<(&str, Value, &str)> = defs
        .iter()
        .map(|(i, m, t)| (i.as_str(), m.clone(), *t))
        .collect();
    let cell = Cell::new("pic-soak", "172.20.0.160-172.20.0.169", &defs);
    remove_compose_project("pic-sk-tun-s1");
    let server = cell.serve();
    let api = server.api.clone();
    assert_eq!(
        api.call("POST", "/api/services/sk-tun/install", None)
            .map(|r| r.0),
        Some(200)
    );
    assert_eq!(
        api.call(
            "POST",
            "/api/connections",
            Some(json!({"service": "sk-tun", "name": "s1"}))
        )
        .map(|r| r.0),
        Some(200)
    );
    let pid = server.child.id();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut model: std::collections::BTreeMap<String, bool> = Default::default();
    let (mut reads, mut mutations, mut installs) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let mut samples = vec![(0u64, proc_figures(pid))];
    let mut next_sample = 10;
    let mut web_installed = false;
    while start.elapsed() < Duration::from_secs(seconds) {
        for path in ["/api/services", "/api/status", "/healthz", "/api/peers"] {
            let r = api.get(path);
            assert_eq!(r.as_ref().map(|r| r.0), Some(200), "{path}");
            reads += 1;
        }
        let peer = format!("10.8.3.{}", 1 + rng.below(50));
        let route = rng.below(2) == 0;
        let r = if route {
            api.call(
                "PUT",
                &format!("/api/peers/{peer}/route"),
                Some(json!({"connection": "s1"})),
            )
        } else {
            api.call("DELETE", &format!("/api/peers/{peer}/route"), None)
        };
        assert_eq!(r.map(|r| r.0), Some(200));
        model.insert(peer, route);
        mutations += 1;
        if rng.below(200) == 0 {
            let path = if web_installed {
                "/api/services/sk-web/remove"
            } else {
                "/api/services/sk-web/install"
            };
            assert_eq!(
                api.call("POST", path, None).map(|r| r.0),
                Some(200),
                "{path}"
            );
            web_installed = !web_installed;
            installs += 1;
        }
        let t = start.elapsed().as_secs();
        if t >= next_sample {
            samples.push((t, proc_figures(pid)));
            next_sample += 10;
        }
    }
    samples.push((start.elapsed().as_secs(), proc_figures(pid)));
    let state = cell.state();
    for (peer, routed) in &model {
        assert_eq!(
            state["peer_routes"].get(peer).is_some(),
            *routed,
            "peer {peer}"
        );
    }
    assert_eq!(state["services"].get("sk-web").is_some(), web_installed);
    eprintln!(
        "soak: {seconds} s, {reads} reads, {mutations} route changes, {installs} installs/removes"
    );
    eprintln!("  t(s)  RSS(KiB)  fds");
    for (t, (rss, fds)) in &samples {
        eprintln!("  {t:>4}  {rss:>8}  {fds:>3}");
    }
    // Flat: compare the second half with the first sample after warm-up.
    let warm = samples.get(1).map(|s| s.1).unwrap_or(samples[0].1);
    let last = samples.last().map(|s| s.1).unwrap_or(warm);
    assert!(
        last.0 <= warm.0 + 4096,
        "RSS grew from {} to {} KiB",
        warm.0,
        last.0
    );
    assert!(
        last.1 <= warm.1 + 4,
        "descriptors grew from {} to {}",
        warm.1,
        last.1
    );
    for p in model.iter().filter(|(_, r)| **r).map(|(p, _)| p) {
        api.call("DELETE", &format!("/api/peers/{p}/route"), None);
    }
    api.call("DELETE", "/api/connections/s1", None);
    if web_installed {
        api.call("POST", "/api/services/sk-web/remove", None);
    }
    api.call("POST", "/api/services/sk-tun/remove", None);
}
