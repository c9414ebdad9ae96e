//! Operating installed services on the real docker engine, Compose plugin
//! and registry (spec §13, §8 v2): the health-gated install and update,
//! the free-space check before a pull. pic-store runs inside its own
//! network namespace so the firewall it programs never touches the host's.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;

/// A busybox web service with a healthcheck that passes once `/ok` exists;
/// `PREPARE` runs before the server (it may print a line, touch `/ok`).
const HEALTH_TEMPLATE: &str = r#"services:
  web:
    image: ${IMAGE}
    container_name: ${CONTAINER_NAME}
    command: ["sh", "-c", "PREPARE; exec httpd -f -p 8080"]
    healthcheck:
      test: ["CMD", "sh", "-c", "test -f /ok"]
      interval: 1s
      timeout: 1s
      retries: 2
    networks:
      - ${NETWORK}
networks:
  ${NETWORK}:
    external: true
"#;

fn template(prepare: &str) -> String {
    HEALTH_TEMPLATE.replace("PREPARE", prepare)
}

fn manifest(id: &str, version: &str, digest: &str) -> Value {
    json!({
        "id": id, "name": format!("Test {id}"), "version": version, "author": "tests",
        "image": image_ref("web", "1", digest),
        "container_name": format!("pt-{id}"),
        "description": "a test service"
    })
}

/// A cell whose health waits and free-space floor suit the tests.
fn cell(pool: &str) -> Cell {
    let mut cell = Cell::new("pic-op", pool);
    cell.env.extend([
        ("PIC_HEALTH_TIMEOUT".into(), "60".into()),
        ("PIC_MIN_FREE_MB".into(), "1".into()),
    ]);
    cell
}

fn web_digest() -> String {
    image("web", "1", &["httpd", "-f", "-p", "8080"])
}

fn inspect(container: &str, format: &str) -> String {
    let out = docker(&["inspect", "--format", format, container]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn health(container: &str) -> String {
    inspect(container, "{{.State.Health.Status}}")
}

/// Waits up to 30 s for `container` (`what`, in the message) to be healthy.
fn become_healthy(container: &str, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while health(container) != "healthy" {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} is not healthy: {}",
            health(container)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// A cell with `id` installed at version 1.0 (healthy once `/ok` exists),
/// and the guard that removes its project when the test ends.
fn installed(pool: &str, id: &str, digest: &str) -> (Cell, Project) {
    let mut cell = cell(pool);
    let project = Project::new(id);
    cell.store
        .add(id, manifest(id, "1.0", digest), &template("touch /ok"));
    ok(&cell.run(&["install", id]));
    (cell, project)
}

/// Removes the project's containers when the test ends, passed or not.
struct Project(String);

impl Project {
    fn new(id: &str) -> Project {
        let p = Project(format!("pic-{id}"));
        remove_compose_project(&p.0);
        p
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        remove_compose_project(&self.0);
    }
}

#[test]
fn an_install_whose_healthcheck_never_passes_leaves_nothing() {
    if !require_rig() {
        return;
    }
    let digest = web_digest();
    let mut cell = cell("172.20.0.240-172.20.0.243");
    let id = "op-sick";
    let project = Project::new(id);
    cell.store.add(
        id,
        manifest(id, "1.0", &digest),
        &template("echo op-sick-was-here"),
    );
    let out = cell.run(&["install", id]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("health check"), "{err}");
    assert!(err.contains("unhealthy"), "{err}");
    assert!(err.contains("op-sick-was-here"), "the log lines: {err}");
    assert_eq!(cell.state()["services"], json!({}));
    assert!(compose_project_containers(&project.0).is_empty());
    assert!(!cell
        .dir
        .state_dir()
        .join(format!("compose/{}.json", project.0))
        .exists());
}

#[test]
fn install_returns_once_healthy_and_an_unhealthy_update_brings_the_old_one_back() {
    if !require_rig() {
        return;
    }
    let digest = web_digest();
    let id = "op-upd";
    let (mut cell, _project) = installed("172.20.0.244-172.20.0.247", id, &digest);
    let container = format!("pt-{id}");
    // The install waited for the healthcheck, not only for `up -d`.
    assert_eq!(health(&container), "healthy");

    cell.store.add(
        id,
        manifest(id, "2.0", &digest),
        &template("echo version-2-is-sick"),
    );
    let out = cell.run(&["update", id]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("health check"), "{err}");
    assert!(err.contains("version-2-is-sick"), "the log lines: {err}");
    assert_eq!(
        cell.state()["services"][id]["manifest"]["version"],
        json!("1.0")
    );
    // Version 1 is back and comes up healthy.
    let cmd = inspect(&container, "{{json .Config.Cmd}}");
    assert!(cmd.contains("touch /ok"), "{cmd}");
    become_healthy(&container, "the old version");
    ok(&cell.run(&["remove", id]));
}

#[test]
fn too_little_free_space_refuses_the_install_before_any_pull() {
    if !require_rig() {
        return;
    }
    let mut cell = cell("172.20.0.248-172.20.0.251");
    cell.env
        .push(("PIC_MIN_FREE_MB".into(), "999999999".into()));
    let id = "op-full";
    let project = Project::new(id);
    // An image that is nowhere: a pull would fail with another error.
    let absent = format!("sha256:{}", "e".repeat(64));
    cell.store
        .add(id, manifest(id, "1.0", &absent), &template("touch /ok"));
    let out = cell.run(&["install", id]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("check free space"), "{err}");
    assert!(err.contains("MiB free"), "{err}");
    assert!(err.contains("999999999"), "the amount needed: {err}");
    assert!(!err.contains("pull"), "{err}");
    assert!(err.contains('/'), "the folder: {err}");
    assert_eq!(cell.state()["services"], json!({}));
    assert!(compose_project_containers(&project.0).is_empty());
}

#[test]
fn a_stopped_service_stays_down_through_reapply_and_start_and_restart_bring_it_back_healthy() {
    if !require_rig() {
        return;
    }
    let digest = web_digest();
    let id = "op-stop";
    let (cell, _project) = installed("172.20.0.252-172.20.0.254", id, &digest);
    let container = format!("pt-{id}");

    let out = ok(&cell.run(&["stop", id]));
    assert!(out.contains("stopped"), "{out}");
    assert_eq!(inspect(&container, "{{.State.Running}}"), "false");
    assert_eq!(cell.state()["services"][id]["stopped"], json!(true));
    // Shown as stopped (by its owner), not as a failure.
    let status: Value = serde_json::from_str(&ok(&cell.run(&["status", "--json"]))).unwrap();
    assert_eq!(
        status["runtime"]["services"][id]["state"],
        json!("stopped"),
        "{status}"
    );
    let out = ok(&cell.run(&["reapply"]));
    assert!(out.contains("stopped by its owner"), "{out}");
    assert_eq!(
        inspect(&container, "{{.State.Running}}"),
        "false",
        "reapply started a stopped service"
    );

    ok(&cell.run(&["start", id]));
    assert_eq!(health(&container), "healthy");
    assert!(cell.state()["services"][id].get("stopped").is_none());

    let before = inspect(&container, "{{.State.StartedAt}}");
    ok(&cell.run(&["restart", id]));
    assert_eq!(health(&container), "healthy");
    assert_ne!(inspect(&container, "{{.State.StartedAt}}"), before);

    // The same three through the API, each answering its final result.
    let serve = Serve::start(&cell);
    let post = |verb: &str| serve.send("POST", &format!("/api/services/{id}/{verb}"), "{}");
    let answer = post("stop");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(inspect(&container, "{{.State.Running}}"), "false");
    assert_eq!(cell.state()["services"][id]["stopped"], json!(true));
    let answer = post("start");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(health(&container), "healthy");
    assert!(cell.state()["services"][id].get("stopped").is_none());
    let before = inspect(&container, "{{.State.StartedAt}}");
    let answer = post("restart");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(health(&container), "healthy");
    assert_ne!(inspect(&container, "{{.State.StartedAt}}"), before);
    let answer = serve.send("POST", "/api/services/op-none/stop", "{}");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    drop(serve);
    ok(&cell.run(&["remove", id]));
}

// --- settings -------------------------------------------------------------------

/// A service whose healthcheck passes while `GREETING` is `ok` or `fine`
/// (the command touches `/GREETING`), with a generated and a required
/// secret, all three in its environment.
const SETTINGS_TEMPLATE: &str = r#"services:
  web:
    image: ${IMAGE}
    container_name: ${CONTAINER_NAME}
    command: ["sh", "-c", "touch /${GREETING}; exec httpd -f -p 8080"]
    environment:
      GREETING: "${GREETING}"
      ADMIN_PASSWORD: "${ADMIN_PASSWORD}"
      API_KEY: "${API_KEY}"
    healthcheck:
      test: ["CMD", "sh", "-c", "test -f /ok || test -f /fine"]
      interval: 1s
      timeout: 1s
      retries: 2
    networks:
      - ${NETWORK}
networks:
  ${NETWORK}:
    external: true
"#;

fn settings_manifest(id: &str, digest: &str) -> Value {
    let mut m = manifest(id, "1.0", digest);
    m["settings"] = json!([
        {"name": "GREETING", "label": "Greeting", "type": "string", "default": "ok"},
        {"name": "ADMIN_PASSWORD", "label": "Admin password", "type": "secret", "generate": 24},
        {"name": "API_KEY", "label": "API key", "type": "secret", "required": true},
    ]);
    m
}

fn env_of(container: &str) -> Vec<String> {
    let text = inspect(container, "{{json .Config.Env}}");
    serde_json::from_str(&text).unwrap_or_default()
}

fn env_value(container: &str, name: &str) -> Option<String> {
    env_of(container)
        .iter()
        .find_map(|e| e.strip_prefix(&format!("{name}=")).map(str::to_string))
}

/// `pic-store serve` on the host, its firewall and routes in `ns`.
struct Serve {
    child: std::process::Child,
    addr: String,
    token: String,
    log: std::path::PathBuf,
}

impl Serve {
    fn start(cell: &Cell) -> Serve {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let mut env: Vec<(String, String)> = cell.env.clone();
        env.extend(cell.ns.program_overrides(&cell.dir.join("bin")));
        env.push(("PIC_LISTEN".into(), addr.clone()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let log = cell.dir.join(format!("serve-{port}.log"));
        let child = pic_command(&cell.dir, &env, &["serve"])
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let token_file = cell.dir.state_dir().join("api-token");
        let mut s = Serve {
            child,
            addr,
            token: String::new(),
            log,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !s.get("/healthz").starts_with("HTTP/1.1 200") {
            assert!(std::time::Instant::now() < deadline, "{}", s.log_text());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        s.token = fs::read_to_string(token_file).unwrap().trim().to_string();
        s
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn send(&self, method: &str, path: &str, body: &str) -> String {
        use std::io::{Read, Write};
        let Ok(mut c) = std::net::TcpStream::connect(&self.addr) else {
            return String::new();
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            self.token,
            body.len()
        );
        let _ = c.write_all(req.as_bytes());
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    }

    fn get(&self, path: &str) -> String {
        self.send("GET", path, "")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn settings_are_required_generated_kept_secret_and_configured_with_rollback() {
    if !require_rig() {
        return;
    }
    let digest = web_digest();
    let mut cell = cell("172.20.0.190-172.20.0.194");
    let id = "op-set";
    let project = Project::new(id);
    let container = format!("pt-{id}");
    cell.store
        .add(id, settings_manifest(id, &digest), SETTINGS_TEMPLATE);

    // A required setting without a value refuses the install, naming it.
    let out = cell.run(&["install", id]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("API_KEY (API key)"), "{err}");
    assert!(err.contains("required"), "{err}");
    assert!(compose_project_containers(&project.0).is_empty());
    // An unknown one too.
    let out = cell.run(&["install", id, "API_KEY=k", "NOPE=1"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOPE"));

    ok(&cell.run(&["install", id, "API_KEY=key4711given"]));
    let password = env_value(&container, "ADMIN_PASSWORD").expect("generated secret in env");
    assert_eq!(password.len(), 24, "{password}");
    assert!(
        password.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{password}"
    );
    assert_eq!(
        env_value(&container, "API_KEY").as_deref(),
        Some("key4711given")
    );
    assert_eq!(env_value(&container, "GREETING").as_deref(), Some("ok"));

    // The API shows that secrets are set, never their values.
    let serve = Serve::start(&cell);
    for path in ["/api/services", &format!("/api/services/{id}")] {
        let answer = serve.get(path);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("\"set\""), "{answer}");
        assert!(!answer.contains(&password) && !answer.contains("key4711given"));
    }
    // Configure through the API: the environment changes; an empty secret
    // keeps the current one.
    let answer = serve.send(
        "POST",
        &format!("/api/services/{id}/configure"),
        &json!({"settings": {"GREETING": "fine", "API_KEY": ""}}).to_string(),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(env_value(&container, "GREETING").as_deref(), Some("fine"));
    assert_eq!(
        env_value(&container, "API_KEY").as_deref(),
        Some("key4711given")
    );
    assert_eq!(
        env_value(&container, "ADMIN_PASSWORD"),
        Some(password.clone())
    );
    assert_eq!(health(&container), "healthy");
    let log = serve.log_text();
    drop(serve);
    assert!(
        !log.contains(&password) && !log.contains("key4711given"),
        "{log}"
    );

    // A value that makes the healthcheck fail is rolled back.
    let out = cell.run(&["configure", id, "GREETING=sick"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("health check"));
    assert_eq!(env_value(&container, "GREETING").as_deref(), Some("fine"));
    assert_eq!(
        cell.state()["services"][id]["settings"]["GREETING"],
        json!("fine")
    );
    become_healthy(&container, "the old value");
    ok(&cell.run(&["remove", id]));
}

#[test]
fn a_forced_remove_with_a_failing_compose_down_leaves_no_container() {
    if !require_rig() {
        return;
    }
    let digest = web_digest();
    let id = "op-force";
    let (mut cell, project) = installed("172.20.0.195-172.20.0.199", id, &digest);
    assert!(!compose_project_containers(&project.0).is_empty());

    // docker as usual, except that every `compose ... down` fails.
    let wrapper = cell.dir.join("docker-no-down");
    write_script(
        &wrapper,
        &format!(
            "#!/bin/sh\nfor a in \"$@\"; do\n  if [ \"$a\" = down ]; then echo 'injected: down fails' >&2; exit 1; fi\ndone\nexec {} \"$@\"\n",
            which("docker")
        ),
    );
    cell.env
        .push(("PIC_DOCKER".into(), wrapper.display().to_string()));
    let out = cell.run(&["remove", id]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("injected: down fails"));
    assert!(
        cell.state()["services"].get(id).is_some(),
        "the record stays"
    );

    let out = ok(&cell.run(&["remove", id, "--force"]));
    assert!(out.contains("removed"), "{out}");
    assert!(
        compose_project_containers(&project.0).is_empty(),
        "containers left: {:?}",
        compose_project_containers(&project.0)
    );
    assert!(cell.state()["services"].get(id).is_none());
}

#[test]
fn update_all_updates_a_bumped_service_and_leaves_the_others() {
    if !require_rig() {
        return;
    }
    let digest = web_digest();
    let mut cell = cell("172.20.0.185-172.20.0.189");
    let (a, b) = ("op-all-a", "op-all-b");
    let _pa = Project::new(a);
    let _pb = Project::new(b);
    cell.store
        .add(a, manifest(a, "1.0", &digest), &template("touch /ok"));
    cell.store
        .add(b, manifest(b, "1.0", &digest), &template("touch /ok"));
    ok(&cell.run(&["install", a]));
    ok(&cell.run(&["install", b]));
    cell.store.add(
        a,
        manifest(a, "2.0", &digest),
        &template("touch /ok; echo two"),
    );
    let out = ok(&cell.run(&["update", "--all"]));
    assert!(
        out.contains(&format!("updated {a} from 1.0 to 2.0")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{b} is already at version 1.0")),
        "{out}"
    );
    let state = cell.state();
    assert_eq!(state["services"][a]["manifest"]["version"], json!("2.0"));
    assert_eq!(state["services"][b]["manifest"]["version"], json!("1.0"));
    let cmd = inspect(&format!("pt-{a}"), "{{json .Config.Cmd}}");
    assert!(cmd.contains("echo two"), "{cmd}");
    ok(&cell.run(&["remove", a]));
    ok(&cell.run(&["remove", b]));
}

#[test]
fn settings_are_shown_and_changed_from_the_cli() {
    let dir = TempDir::with_prefix("pic-op-settings");
    let out = ok(&pic(&dir, &[], &["settings"]));
    assert_eq!(out.trim(), "image_verification_mode=warn");
    ok(&pic(
        &dir,
        &[],
        &["settings", "image_verification_mode=enforce"],
    ));
    let out = ok(&pic(&dir, &[], &["settings"]));
    assert_eq!(out.trim(), "image_verification_mode=enforce");
    let state: Value =
        serde_json::from_slice(&fs::read(dir.state_dir().join("state.json")).unwrap()).unwrap();
    assert_eq!(state["settings"]["image_verification_mode"], "enforce");
    let bad = pic(&dir, &[], &["settings", "image_verification_mode=strict"]);
    assert_eq!(bad.status.code(), Some(1), "{}", show(&bad));
    let bad = pic(&dir, &[], &["settings", "colour=blue"]);
    assert_eq!(bad.status.code(), Some(2), "{}", show(&bad));
    let out = ok(&pic(&dir, &[], &["settings"]));
    assert_eq!(out.trim(), "image_verification_mode=enforce");
}

#[test]
fn an_instanceable_service_update_recreates_its_instances_with_the_new_image() {
    if !require_rig() {
        return;
    }
    let v1 = web_digest();
    let v2 = image("web", "2", &["httpd", "-f", "-p", "8080"]);
    let mut cell = cell("172.20.0.180-172.20.0.184");
    let (id, conn) = ("op-px", "opc1");
    let instance = Project::new(&format!("{id}-{conn}"));
    let _service = Project::new(id);
    let proxy = |version: &str, image: String| {
        json!({
            "id": id, "name": "Proxy", "version": version, "author": "tests",
            "kind": "connectivity", "instanceable": true, "connectivity": {"mode": "redirect"},
            "image": image, "container_name": id, "cap_add": ["NET_ADMIN"],
            "env": [{"name": "UPSTREAM", "value": "none"}]
        })
    };
    cell.store
        .add(id, proxy("1", image_ref("web", "1", &v1)), PROXY_TEMPLATE);
    ok(&cell.run(&["install", id]));
    ok(&cell.run(&["connection", "add", id, conn]));
    let name = compose_project_containers(&instance.0)
        .pop()
        .expect("the instance's container");
    assert!(inspect(&name, "{{.Config.Image}}").contains("web:1"));

    cell.store
        .add(id, proxy("2", image_ref("web", "2", &v2)), PROXY_TEMPLATE);
    let out = ok(&cell.run(&["update", id]));
    assert!(out.contains("from 1 to 2"), "{out}");
    let image = inspect(&name, "{{.Config.Image}}");
    assert!(image.contains("web:2"), "the instance still runs {image}");
    assert_eq!(inspect(&name, "{{.State.Running}}"), "true");
    ok(&cell.run(&["connection", "remove", conn]));
    ok(&cell.run(&["remove", id]));
}
