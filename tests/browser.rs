//! The admin page in a real browser (issue 6, acceptance 2): `pic-store
//! serve` on the rig, driven by headless Chromium through
//! `tests/browser/run.mjs` (playwright-core). The script logs in with the
//! token URL, installs a service from the store list through its install
//! page (giving one setting a value) and follows its job
//! page, sees its runtime, logs view and update badge, changes a setting
//! through its settings form (the secret shown only as an empty password
//! field), installs the proxy, creates a connection, routes a peer, takes
//! the screenshots and removes the service; this test then checks that
//! the clicks reached the state file and the namespace's firewall.
//!
//! `PIC_UPDATE_SCREENSHOT=1` copies the desktop screenshot to
//! `docs/admin.png` (the README's picture) and the phone one to
//! `$CARGO_TARGET_TMPDIR/admin-mobile.png`; otherwise both stay in the
//! test's temp dir, so a test run never dirties the tree.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run; one install pulls an image, so it is generous.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(180);

const WEB: &str = "bt-web";
const PROXY: &str = "bt-proxy";
/// The projects this test can leave behind when it dies half way.
const PROJECTS: [&str; 2] = ["pic-bt-web", "pic-bt-proxy-home-proxy"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn script_dir() -> PathBuf {
    repo().join("tests/browser")
}

/// The rig, Chromium, node and playwright-core, or a loud skip (a failure
/// under `CI=true`) naming what is missing.
fn browser_ready() -> bool {
    if !require_rig() {
        return false;
    }
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("{CHROMIUM} (apt-get install -y chromium)"));
    }
    if !script_dir()
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push(
            "tests/browser/node_modules/playwright-core (npm ci --prefix tests/browser)".into(),
        );
    }
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        missing.push("node (apt-get install -y nodejs npm)".into());
    }
    if missing.is_empty() {
        return true;
    }
    let what = missing.join(", ");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the browser test needs {what}; scripts/test installs them");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED the browser test: missing {what}. scripts/test installs them. ***"
    );
    false
}

// --- the store: the demo's services, made from the busybox image -----------------

fn web_manifest(id: &str, name: &str, digest: &str, description: &str) -> Value {
    json!({
        "id": id, "name": name, "version": "1.0.0", "author": "tests",
        "image": image_ref("web", "1", digest),
        "container_name": id,
        "iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 8080}],
        "subdomain": id, "backend": format!("{id}:8080"),
        "description": description
    })
}

fn store(dir: &TempDir, digest: &str) -> Store {
    let mut store = Store::new(dir);
    // The home page has install-time settings (a form on the page) and the
    // store lists a newer version than the one it serves (the update badge).
    let mut home = web_manifest(
        WEB,
        "Home page",
        digest,
        "A static web page served by busybox httpd.",
    );
    home["settings"] = json!([
        {"name": "GREETING", "label": "Greeting", "type": "string", "default": "hello"},
        {"name": "ADMIN_PASSWORD", "label": "Admin password", "type": "secret", "generate": 20}
    ]);
    store.add(WEB, home, WEB_TEMPLATE);
    // Listed only, never installed here: they make the store look like one.
    store.add(
        "bt-notes",
        web_manifest(
            "bt-notes",
            "Notes",
            digest,
            "A tiny notes site for the household.",
        ),
        WEB_TEMPLATE,
    );
    store.add(
        "bt-files",
        web_manifest(
            "bt-files",
            "Files",
            digest,
            "Share files from the cell over the web.",
        ),
        WEB_TEMPLATE,
    );
    store.add(
        PROXY,
        json!({
            "id": PROXY, "name": "Proxy", "version": "1.0.0", "author": "tests",
            "kind": "connectivity", "instanceable": true, "connectivity": {"mode": "redirect"},
            "image": image_ref("web", "1", digest), "container_name": PROXY,
            "cap_add": ["NET_ADMIN"],
            "env": [{"name": "UPSTREAM", "value": "none"}],
            "description": "A transparent proxy: route chosen VPN peers' web traffic through it."
        }),
        PROXY_TEMPLATE,
    );
    // The index says 1.0.1 while the manifest is still 1.0.0: the page
    // shows an update for the installed home page.
    let index = std::fs::read_to_string(store.root().join("index.json")).expect("index.json");
    let mut entries: Value = serde_json::from_str(&index).expect("index.json is JSON");
    for e in entries.as_array_mut().expect("an index array") {
        if e["id"] == json!(WEB) {
            e["version"] = json!("1.0.1");
        }
    }
    store.write("index.json", serde_json::to_vec_pretty(&entries).unwrap());
    store
}

// --- the server under test -------------------------------------------------------

/// `PIC_*` overrides that run iptables and ip inside `ns`, so `serve`
/// listens on the host's loopback (where the browser is) while its rules
/// stay in the namespace.
/// `pic-store serve`, killed on drop.
struct Serve {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Serve {
    fn start(dir: &TempDir, envs: &[(&str, &str)]) -> Serve {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listen = addr.to_string();
        let mut all = vec![("PIC_LISTEN", listen.as_str())];
        all.extend_from_slice(envs);
        let log = dir.join("serve.log");
        let file = std::fs::File::create(&log).expect("create serve.log");
        let child = pic_command(dir, &all, &["serve"])
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start pic-store serve");
        let mut s = Serve { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.healthy() {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("serve exited ({st}):\n{}", s.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "serve did not answer:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn healthy(&self) -> bool {
        let Ok(mut c) = TcpStream::connect(self.addr) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!(
            "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        let mut answer = String::new();
        c.write_all(req.as_bytes()).is_ok()
            && c.read_to_string(&mut answer).is_ok()
            && answer.starts_with("HTTP/1.1 200")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes this test's containers however it ends.
struct Leftovers;

impl Drop for Leftovers {
    fn drop(&mut self) {
        for p in PROJECTS {
            remove_compose_project(p);
        }
    }
}

// --- the browser ------------------------------------------------------------------

/// Runs the node script, killing it after [`BROWSER_TIMEOUT`]; returns
/// whether it succeeded and what it printed.
fn run_browser(dir: &TempDir, base: &str, token: &str, shot: &Path) -> (bool, String) {
    let out_path = dir.join("browser.out");
    let out = std::fs::File::create(&out_path).expect("create browser.out");
    let err = out.try_clone().expect("clone browser.out");
    let mut child = Command::new("node")
        .arg(script_dir().join("run.mjs"))
        .args([base, token])
        .arg(shot)
        .env("PIC_BROWSER_WEB", WEB)
        .env("PIC_BROWSER_PROXY", PROXY)
        .env("PIC_CHROMIUM", CHROMIUM)
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start node");
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for node") {
            break Some(st);
        }
        if Instant::now() > deadline {
            // Only the node process is ours to kill; Chromium is its child
            // and exits when the pipe to node closes.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut text = std::fs::read_to_string(&out_path).unwrap_or_default();
    if status.is_none() {
        text.push_str(&format!("\n(killed after {} s)", BROWSER_TIMEOUT.as_secs()));
    }
    (status.is_some_and(|s| s.success()), text)
}

/// A PNG's width and height (from its IHDR chunk); panics if it is none.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR",
        "{} is not a PNG",
        path.display()
    );
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (be(16), be(20))
}

fn assert_plausible_png(path: &Path, width: u32) {
    let (w, h) = png_size(path);
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    eprintln!("{}: {w}x{h}, {size} bytes", path.display());
    assert_eq!(w, width, "{} width", path.display());
    assert!((400..=20_000).contains(&h), "{} height {h}", path.display());
    assert!(
        (20_000..=5_000_000).contains(&size),
        "{} is {size} bytes",
        path.display()
    );
}

#[test]
fn the_admin_page_works_in_a_real_browser() {
    if !browser_ready() {
        return;
    }
    let t0 = Instant::now();
    let digest = image("web", "1", &["httpd", "-f", "-p", "8080"]);
    let _leftovers = Leftovers;
    for p in PROJECTS {
        remove_compose_project(p);
    }
    let dir = TempDir::with_prefix("pic-browser");
    let ns = Netns::new();
    let _store = store(&dir, &digest);
    let programs = ns.program_overrides(&dir.join("bin"));
    let mut envs: Vec<(&str, &str)> = programs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    envs.push(("PIC_SERVICE_POOL", "172.20.0.120-172.20.0.129"));
    envs.push(("PIC_WAN_IFACE", "picdummy"));
    let serve = Serve::start(&dir, &envs);
    let token = std::fs::read_to_string(dir.state_dir().join("api-token")).expect("token file");

    let shots = dir.join("shots");
    std::fs::create_dir_all(&shots).expect("create shots folder");
    let shot = shots.join("admin.png");
    let t = Instant::now();
    let (ok, output) = run_browser(&dir, &format!("http://{}", serve.addr), token.trim(), &shot);
    eprintln!("--- browser ({:?}) ---\n{output}", t.elapsed());
    if !ok {
        // The temp dir goes with the test: keep what the page looked like.
        let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-failure.png");
        let _ = std::fs::copy(shots.join("failure.png"), &kept);
        panic!(
            "the browser test failed (the page: {}):\n{output}\n--- serve log ---\n{}",
            kept.display(),
            serve.log_text()
        );
    }

    // What the clicks did, seen from outside the browser.
    let state: Value = serde_json::from_slice(
        &std::fs::read(dir.state_dir().join("state.json")).expect("state.json"),
    )
    .expect("state.json is JSON");
    assert!(state["services"].get(WEB).is_none(), "{state}");
    assert!(state["services"].get(PROXY).is_some(), "{state}");
    let conn = &state["connections"]["home-proxy"];
    assert_eq!(conn["service"], json!(PROXY), "{state}");
    assert_eq!(
        state["peer_routes"]["10.8.0.2"],
        json!("home-proxy"),
        "{state}"
    );
    let port = conn["port"].as_u64().expect("a port");
    let rules = ns.iptables_save();
    assert!(
        rules.contains(&format!(
            "-A PIC_CONNECTIVITY -s 10.8.0.2/32 -p tcp -j REDIRECT --to-ports {port}"
        )),
        "{rules}"
    );
    assert!(compose_project_containers("pic-bt-web").is_empty());
    assert_eq!(
        compose_project_containers("pic-bt-proxy-home-proxy").len(),
        1
    );
    assert!(!dir.state_dir().join("data").join(WEB).exists(), "purged");

    let phone = shots.join("admin-mobile.png");
    assert_plausible_png(&shot, 1280);
    assert_plausible_png(&phone, 390);
    if std::env::var("PIC_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        let docs = repo().join("docs/admin.png");
        std::fs::create_dir_all(repo().join("docs")).expect("create docs/");
        std::fs::copy(&shot, &docs).expect("copy the screenshot to docs/");
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-mobile.png");
        std::fs::copy(&phone, &tmp).expect("copy the phone screenshot");
        eprintln!("updated {} (phone: {})", docs.display(), tmp.display());
    }
    eprintln!("browser test: {:?} in all", t0.elapsed());
}
