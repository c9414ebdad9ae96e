//! Install, remove and update on the real docker engine, Compose plugin and
//! registry (spec §7, §8). pic-store runs inside its own network namespace
//! so the firewall it programs never touches the host's.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const WEB_TEMPLATE: &str = r#"# a plain web server
services:
  web:
    image: ${IMAGE}
    container_name: ${CONTAINER_NAME}
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
    volumes:
      - ${DATA_DIR}:/www
    networks:
      - ${NETWORK}
    restart: unless-stopped
networks:
  ${NETWORK}:
    external: true
"#;

/// A manifest of a busybox web service pinned to `digest`.
fn manifest(id: &str, version: &str, digest: &str) -> Value {
    json!({
        "id": id, "name": format!("Test {id}"), "version": version, "author": "tests",
        "image": image_ref("web", "1", digest),
        "container_name": format!("pt-{id}"),
        "iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 8080}],
        "subdomain": id, "backend": format!("pt-{id}:8080"),
        "description": "a test service"
    })
}

impl Cell {
    fn compose_file(&self, id: &str) -> std::path::PathBuf {
        self.dir.state_dir().join(format!("compose/pic-{id}.json"))
    }
}

fn web_digest() -> String {
    image("web", "1", &["httpd", "-f", "-p", "8080"])
}

fn container_ip(name: &str) -> String {
    let out = docker(&[
        "inspect",
        "--format",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}",
        name,
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn running(name: &str) -> bool {
    let out = docker(&["inspect", "--format", "{{.State.Running}}", name]);
    String::from_utf8_lossy(&out.stdout).trim() == "true"
}

#[test]
fn install_runs_the_service_on_its_ip_and_remove_frees_it() {
    if !require_rig() {
        return;
    }
    let digest = web_digest();
    let mut cell = Cell::new("pic-life", "172.20.0.20-172.20.0.29");
    let id = "lc-basic";
    remove_compose_project(&format!("pic-{id}"));
    cell.store
        .add(id, manifest(id, "1.0", &digest), WEB_TEMPLATE);

    let out = cell.run(&["install", id]);
    ok(&out);
    let state = cell.state();
    let ip = state["services"][id]["ip"].as_str().unwrap().to_string();
    assert_eq!(ip, "172.20.0.20");
    assert!(running(&format!("pt-{id}")));
    assert_eq!(
        container_ip(&format!("pt-{id}")),
        format!("cell-network={ip}")
    );
    assert_eq!(state["services"][id]["image_digest"], json!(digest));
    assert!(state["pending"].is_null());
    assert!(cell.compose_file(id).exists());
    // The firewall rule is in place, once.
    let rules = cell.ns.iptables_save();
    let rule = format!("-A PIC_SERVICES -d {ip}/32 -p tcp -m tcp --dport 8080 -j ACCEPT");
    assert_eq!(rules.matches(&rule).count(), 1, "{rules}");

    // Installing again is a success that says so.
    let again = ok(&cell.run(&["install", id]));
    assert!(again.contains("already installed"), "{again}");

    ok(&cell.run(&["remove", id]));
    assert!(compose_project_containers(&format!("pic-{id}")).is_empty());
    assert!(!cell.compose_file(id).exists());
    assert!(cell.state()["services"].get(id).is_none());
    assert!(!cell.ns.iptables_save().contains(&rule));

    ok(&cell.run(&["install", id]));
    assert_eq!(
        cell.state()["services"][id]["ip"],
        json!(ip),
        "the IP is reused"
    );
    ok(&cell.run(&["remove", id, "--purge"]));
    assert!(!cell.dir.state_dir().join("data").join(id).exists());
}

/// Each injected failure leaves no container, no compose file, and the
/// state file byte for byte as it was; the error names the step.
#[test]
fn a_failure_at_any_step_leaves_nothing_behind() {
    if !require_rig() {
        return;
    }
    let digest = web_digest();
    let mut cell = Cell::new("pic-life", "172.20.0.30-172.20.0.39");
    // Something installed first, so there is a state file to compare.
    let base = "lc-fail-base";
    remove_compose_project(&format!("pic-{base}"));
    cell.store
        .add(base, manifest(base, "1.0", &digest), WEB_TEMPLATE);
    ok(&cell.run(&["install", base]));

    let zero = format!("sha256:{}", "0".repeat(64));
    let hook_fails = {
        let mut m = manifest("lc-f-hook", "1.0", &digest);
        m["provision_hook"] = json!(["/bin/false"]);
        m
    };
    let closed_registry = {
        let mut m = manifest("lc-f-reg", "1.0", &digest);
        m["image"] = json!(format!("127.0.0.1:5999/roof/web:1@{digest}"));
        m
    };
    let cases: Vec<(&str, Value, String, &str)> = vec![
        (
            "lc-f-digest",
            manifest("lc-f-digest", "1.0", &zero),
            WEB_TEMPLATE.into(),
            "pull",
        ),
        ("lc-f-reg", closed_registry, WEB_TEMPLATE.into(), "pull"),
        (
            "lc-f-yaml",
            manifest("lc-f-yaml", "1.0", &digest),
            "services:\n  web:\n    image: ${IMAGE}\n    image: ${IMAGE}\n".into(),
            "docker compose config",
        ),
        (
            "lc-f-priv",
            manifest("lc-f-priv", "1.0", &digest),
            WEB_TEMPLATE.replace("    restart:", "    privileged: true\n    restart:"),
            "privileged",
        ),
        (
            "lc-f-up",
            manifest("lc-f-up", "1.0", &digest),
            WEB_TEMPLATE.replace(
                r#"["httpd", "-f", "-p", "8080", "-h", "/www"]"#,
                r#"["/no/such/program"]"#,
            ),
            "docker compose up",
        ),
        (
            "lc-f-hook",
            hook_fails,
            WEB_TEMPLATE.into(),
            "provision hook",
        ),
    ];
    for (id, m, template, step) in cases {
        remove_compose_project(&format!("pic-{id}"));
        if id == "lc-f-reg" {
            cell.env
                .push(("PIC_IMAGE_REGISTRY".into(), "127.0.0.1:5999/roof/".into()));
        }
        cell.store.add(id, m, &template);
        let before = cell.state_bytes();
        let rules_before = cell.ns.iptables_save();
        let out = cell.run(&["install", id]);
        if id == "lc-f-reg" {
            cell.env.pop();
        }
        assert_eq!(out.status.code(), Some(1), "{id}\n{}", show(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(step),
            "{id}: the error should name {step:?}\n{stderr}"
        );
        assert!(
            compose_project_containers(&format!("pic-{id}")).is_empty(),
            "{id}: containers left behind"
        );
        assert!(
            !cell.compose_file(id).exists(),
            "{id}: compose file left behind"
        );
        assert!(
            !cell.dir.state_dir().join("data").join(id).exists(),
            "{id}: data dir left"
        );
        assert_eq!(cell.state_bytes(), before, "{id}: state.json changed");
        assert_eq!(
            cell.ns.iptables_save(),
            rules_before,
            "{id}: firewall changed"
        );
    }
    ok(&cell.run(&["remove", base]));
}

#[test]
fn sigkill_during_install_is_rolled_back_by_the_next_reapply() {
    if !require_rig() {
        return;
    }
    let digest = web_digest();
    let mut cell = Cell::new("pic-life", "172.20.0.40-172.20.0.49");
    let id = "lc-kill";
    let project = format!("pic-{id}");
    remove_compose_project(&project);
    cell.store
        .add(id, manifest(id, "1.0", &digest), WEB_TEMPLATE);
    let image = image_ref("web", "1", &digest);
    let mut seed = u64::from(std::process::id()) | 1;
    for round in 0..10 {
        // Without the image locally, the kill can land in the pull too.
        let _ = docker(&["rmi", "-f", &image]);
        let env: Vec<(&str, &str)> = cell
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut cmd = std::process::Command::new("ip");
        cmd.env_clear()
            .envs(pic_env(&cell.dir, &env))
            .args(["netns", "exec", cell.ns.name()])
            .arg(bin())
            .args(["install", id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(100 + seed % 1400));
        // `ip netns exec` execs pic-store in place, so this is pic-store.
        let _ = child.kill();
        let _ = child.wait();

        let out = cell.run(&["reapply"]);
        let state = cell.state();
        let installed = state["services"].get(id).is_some();
        assert!(
            state["pending"].is_null(),
            "round {round}: pending left\n{}",
            show(&out)
        );
        if installed {
            // The kill came after the final commit: a whole install.
            assert!(running(&format!("pt-{id}")), "round {round}");
            ok(&cell.run(&["remove", id]));
        } else {
            assert!(
                compose_project_containers(&project).is_empty(),
                "round {round}: containers left\n{}",
                show(&out)
            );
            assert!(
                !cell.compose_file(id).exists(),
                "round {round}: compose file left"
            );
        }
    }
}

#[test]
fn requires_and_dependents_are_refused_by_name() {
    if !require_rig() {
        return;
    }
    let digest = web_digest();
    let mut cell = Cell::new("pic-life", "172.20.0.50-172.20.0.59");
    let (db, app) = ("lc-db", "lc-app");
    for id in [db, app] {
        remove_compose_project(&format!("pic-{id}"));
    }
    cell.store
        .add(db, manifest(db, "1.0", &digest), WEB_TEMPLATE);
    let mut m = manifest(app, "1.0", &digest);
    m["requires"] = json!([db]);
    cell.store.add(app, m, WEB_TEMPLATE);

    let out = cell.run(&["install", app]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(db),
        "{}",
        show(&out)
    );
    assert!(compose_project_containers(&format!("pic-{app}")).is_empty());

    ok(&cell.run(&["install", db]));
    ok(&cell.run(&["install", app]));
    let out = cell.run(&["remove", db]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(app),
        "{}",
        show(&out)
    );
    assert!(running(&format!("pt-{db}")));

    ok(&cell.run(&["remove", app]));
    ok(&cell.run(&["remove", db]));
}

#[test]
fn update_replaces_the_version_and_a_failed_update_keeps_the_old_one() {
    if !require_rig() {
        return;
    }
    let v1 = web_digest();
    let v2 = image("web", "2", &["httpd", "-f", "-p", "8080"]);
    let mut cell = Cell::new("pic-life", "172.20.0.60-172.20.0.69");
    let id = "lc-upd";
    remove_compose_project(&format!("pic-{id}"));
    cell.store.add(id, manifest(id, "1.0", &v1), WEB_TEMPLATE);
    ok(&cell.run(&["install", id]));
    let ip = cell.state()["services"][id]["ip"].clone();

    let mut m2 = manifest(id, "2.0", &v2);
    m2["image"] = json!(image_ref("web", "2", &v2));
    cell.store.add(id, m2.clone(), WEB_TEMPLATE);
    let out = ok(&cell.run(&["update", id]));
    assert!(out.contains("from 1.0 to 2.0"), "{out}");
    let state = cell.state();
    assert_eq!(state["services"][id]["manifest"]["version"], json!("2.0"));
    assert_eq!(state["services"][id]["ip"], ip);
    let image = docker(&[
        "inspect",
        "--format",
        "{{.Config.Image}}",
        &format!("pt-{id}"),
    ]);
    assert!(String::from_utf8_lossy(&image.stdout).contains("web:2"));
    assert!(running(&format!("pt-{id}")));

    // Version 3's container cannot start: version 2 must keep running.
    let mut m3 = m2.clone();
    m3["version"] = json!("3.0");
    cell.store.add(
        id,
        m3,
        &WEB_TEMPLATE.replace(
            r#"["httpd", "-f", "-p", "8080", "-h", "/www"]"#,
            r#"["/no/such/program"]"#,
        ),
    );
    let before = cell.state_bytes();
    let out = cell.run(&["update", id]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(cell.state_bytes(), before);
    assert!(running(&format!("pt-{id}")), "version 2 is running again");
    let cmd = docker(&[
        "inspect",
        "--format",
        "{{json .Config.Cmd}}",
        &format!("pt-{id}"),
    ]);
    assert!(String::from_utf8_lossy(&cmd.stdout).contains("httpd"));
    assert!(!Path::new(
        &cell
            .dir
            .state_dir()
            .join(format!("compose/pic-{id}.new.json"))
    )
    .exists());
    ok(&cell.run(&["remove", id]));
}
