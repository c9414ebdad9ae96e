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

struct Cell {
    dir: TempDir,
    ns: Netns,
    store: Store,
    env: Vec<(String, String)>,
}

impl Cell {
    fn new(pool: &str) -> Cell {
        let dir = TempDir::with_prefix("pic-op");
        let store = Store::new(&dir);
        Cell {
            ns: Netns::new(),
            store,
            env: vec![
                ("PIC_SERVICE_POOL".into(), pool.into()),
                ("PIC_HEALTH_TIMEOUT".into(), "60".into()),
                ("PIC_MIN_FREE_MB".into(), "1".into()),
            ],
            dir,
        }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        pic_in(&self.ns, &self.dir, &env, args)
    }

    fn state(&self) -> Value {
        let p = self.dir.state_dir().join("state.json");
        serde_json::from_slice(&fs::read(&p).unwrap_or_else(|_| b"{}".to_vec())).unwrap()
    }
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
    let mut cell = Cell::new("172.20.0.240-172.20.0.243");
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
    let mut cell = Cell::new("172.20.0.244-172.20.0.247");
    let id = "op-upd";
    let _project = Project::new(id);
    let container = format!("pt-{id}");
    cell.store
        .add(id, manifest(id, "1.0", &digest), &template("touch /ok"));
    ok(&cell.run(&["install", id]));
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while health(&container) != "healthy" {
        assert!(
            std::time::Instant::now() < deadline,
            "old version not healthy: {}",
            health(&container)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    ok(&cell.run(&["remove", id]));
}

#[test]
fn too_little_free_space_refuses_the_install_before_any_pull() {
    if !require_rig() {
        return;
    }
    let mut cell = Cell::new("172.20.0.248-172.20.0.251");
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
