//! A service with a helper image (spec §6 rule 14, §8) on the real docker
//! engine, Compose plugin and registry: both images pinned by digest, both
//! containers up, and nothing left after remove or after a failed install.
//! pic-store runs inside its own network namespace, as in `lifecycle.rs`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;

/// The app on the cell network, its database on the project's internal
/// network only (a helper never joins the cell network).
const APP_WITH_DB: &str = r#"# an app and its database
# (upstream: POSTGRES_PASSWORD=$DB_PASSWORD; a comment, never rendered)
services:
  web:
    image: ${IMAGE}
    container_name: ${CONTAINER_NAME}
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
    depends_on: [db]
    volumes:
      - ${DATA_DIR}/www:/www
    networks:
      - ${NETWORK}
      - backend
    restart: unless-stopped
  db:
    image: ${IMAGE_DB}
    container_name: ${CONTAINER_NAME}-db
    command: ["sleep", "3600"]
    volumes:
      - ${DATA_DIR}/db:/var/lib/db
    networks:
      - backend
    restart: unless-stopped
  admin:
    image: ${IMAGE_ADMIN}
    container_name: ${CONTAINER_NAME}-admin
    command: ["sleep", "3600"]
    profiles: [debug]
    networks:
      - backend
networks:
  ${NETWORK}:
    external: true
  backend:
    internal: true
"#;

/// `admin` runs only under a profile that is off by default: its image is
/// still pulled and checked at install, and its container never started.
fn manifest(id: &str, web: &str, db: &str) -> Value {
    json!({
        "id": id, "name": format!("Test {id}"), "version": "1.0", "author": "tests",
        "image": web,
        "container_name": format!("pt-{id}"),
        "helper_images": {"db": db, "admin": admin_image()},
        "iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 8080}],
        "subdomain": id, "backend": format!("pt-{id}:8080")
    })
}

fn admin_image() -> String {
    image_ref(
        "helperadmin",
        "1",
        &image("helperadmin", "1", &["sleep", "3600"]),
    )
}

struct Cell {
    dir: TempDir,
    ns: Netns,
    store: Store,
    env: Vec<(String, String)>,
}

impl Cell {
    fn new() -> Cell {
        let dir = TempDir::with_prefix("pic-helpers");
        let store = Store::new(&dir);
        Cell {
            ns: Netns::new(),
            store,
            dir,
            env: vec![(
                "PIC_SERVICE_POOL".into(),
                "172.20.0.230-172.20.0.239".into(),
            )],
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
        serde_json::from_slice(&fs::read(p).unwrap_or_else(|_| b"{}".to_vec())).unwrap()
    }

    fn compose_file(&self, id: &str) -> std::path::PathBuf {
        self.dir.state_dir().join(format!("compose/pic-{id}.json"))
    }
}

fn running(name: &str) -> bool {
    let out = docker(&["inspect", "--format", "{{.State.Running}}", name]);
    String::from_utf8_lossy(&out.stdout).trim() == "true"
}

fn networks_of(name: &str) -> String {
    let out = docker(&[
        "inspect",
        "--format",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        name,
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn project_networks(project: &str) -> String {
    let out = docker(&[
        "network",
        "ls",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--format",
        "{{.Name}}",
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn an_app_with_a_database_helper_installs_runs_and_leaves_nothing() {
    if !require_rig() {
        return;
    }
    let web = image_ref(
        "web",
        "1",
        &image("web", "1", &["httpd", "-f", "-p", "8080"]),
    );
    let db = image_ref("helperdb", "1", &image("helperdb", "1", &["sleep", "3600"]));
    let mut cell = Cell::new();
    let id = "hp-app";
    let project = format!("pic-{id}");
    remove_compose_project(&project);
    cell.store.add(id, manifest(id, &web, &db), APP_WITH_DB);
    // The profiled helper's image is only in the registry: install must
    // pull it itself.
    let admin = admin_image();
    let image_id = docker(&["image", "inspect", "--format", "{{.Id}}", &admin]);
    let image_id = String::from_utf8_lossy(&image_id.stdout).trim().to_string();
    ok(&docker(&["image", "rm", "-f", &image_id]));
    // cosign is not packaged here: a stand-in that records what it was
    // asked to verify and accepts it.
    let cosign_log = cell.dir.join("cosign.log");
    let cosign = cell.dir.join("cosign");
    write_script(
        &cosign,
        &format!(
            "#!/bin/sh\necho \"$*\" >> {}\nexit 0\n",
            cosign_log.display()
        ),
    );
    let key = cell.dir.join("cosign.pub");
    fs::write(&key, "test key\n").unwrap();
    cell.env
        .push(("PIC_COSIGN".into(), cosign.display().to_string()));
    cell.env
        .push(("PIC_COSIGN_KEY".into(), key.display().to_string()));

    let out = ok(&cell.run(&["install", id]));
    let verified = fs::read_to_string(&cosign_log).unwrap_or_default();
    for image in [&web, &db, &admin] {
        assert!(
            verified.contains(&format!("verify --key {} {image}", key.display())),
            "cosign verified {image}\n{verified}"
        );
    }
    assert!(out.contains("installed"), "{out}");
    let (main, helper) = (format!("pt-{id}"), format!("pt-{id}-db"));
    assert!(running(&main), "the app runs");
    assert!(running(&helper), "the database helper runs");
    assert!(
        !compose_project_containers(&project)
            .iter()
            .any(|c| c.contains("admin")),
        "the profiled helper stays off"
    );
    // The helper stays on the project's own network.
    assert_eq!(networks_of(&helper), format!("{project}_backend"));
    assert!(networks_of(&main).contains("cell-network"));
    let state = cell.state();
    assert_eq!(
        state["services"][id]["manifest"]["helper_images"]["db"],
        json!(db)
    );
    let checked = fs::read_to_string(cell.compose_file(id)).unwrap();
    assert!(
        checked.contains(&db),
        "the checked file runs the pinned helper"
    );

    ok(&cell.run(&["remove", id]));
    assert!(
        compose_project_containers(&project).is_empty(),
        "containers left"
    );
    assert_eq!(project_networks(&project), "", "networks left");
    assert!(!cell.compose_file(id).exists(), "compose file left");
    assert!(
        cell.state()["services"].get(id).is_none(),
        "state record left"
    );
    assert!(cell.state()["pending"].is_null());
    assert!(
        !cell.ns.iptables_save().contains("--dport 8080"),
        "firewall rule left"
    );
}

#[test]
fn a_helper_that_does_not_match_its_pin_fails_the_install_and_leaves_nothing() {
    if !require_rig() {
        return;
    }
    let web_digest = image("web", "1", &["httpd", "-f", "-p", "8080"]);
    image("helperdb", "1", &["sleep", "3600"]);
    let web = image_ref("web", "1", &web_digest);
    // A digest that exists in the registry, but not for this repository.
    let wrong = image_ref("helperdb", "1", &web_digest);
    let mut cell = Cell::new();
    let id = "hp-bad-pin";
    let project = format!("pic-{id}");
    remove_compose_project(&project);
    cell.store.add(id, manifest(id, &web, &wrong), APP_WITH_DB);

    let out = cell.run(&["install", id]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pull failed") && stderr.contains(&format!("helperdb@{web_digest}")),
        "the error names the failed pull of the helper\n{stderr}"
    );
    assert!(
        compose_project_containers(&project).is_empty(),
        "containers left"
    );
    assert_eq!(project_networks(&project), "", "networks left");
    assert!(!cell.compose_file(id).exists(), "compose file left");
    assert!(
        !cell.dir.state_dir().join("data").join(id).exists(),
        "data dir left"
    );
    let state = cell.state();
    assert!(state["services"].get(id).is_none(), "state record left");
    assert!(state["pending"].is_null(), "pending operation left");
    assert!(!cell.ns.iptables_save().contains("--dport 8080"));
}
