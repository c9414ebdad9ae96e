//! `pic-store reapply` (spec §9, §11; issue 4): idempotent, repairs what
//! was changed behind its back, leaves foreign rules alone, boots offline,
//! and spawns each tool a bounded number of times. Firewall and routing
//! run in a network namespace.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TEMPLATE: &str = r#"services:
  web:
    image: ${IMAGE}
    container_name: ${CONTAINER_NAME}
    command: ["httpd", "-f", "-p", "8080"]
    networks: [${NETWORK}]
"#;

fn write_script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn lines(path: &Path) -> usize {
    fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn manifest(id: &str, image: &str, port: u16, subs: &[&str]) -> Value {
    let mut m = json!({
        "id": id, "name": id, "version": "1", "author": "tests", "image": image,
        "container_name": format!("rp-{id}"),
        "iptables_rules": [
            {"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": port},
            {"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": port + 1, "proto": "udp"}
        ]
    });
    if let Some((first, rest)) = subs.split_first() {
        m["subdomain"] = json!(first);
        m["backend"] = json!(format!("rp-{id}:8080"));
        m["extra_subdomains"] = json!(rest);
    }
    m
}

#[test]
fn reapply_changes_nothing_twice_and_repairs_what_was_changed() {
    if !require_rig() {
        return;
    }
    let digest = image("web", "1", &["httpd", "-f", "-p", "8080"]);
    let img = image_ref("web", "1", &digest);
    let dir = TempDir::with_prefix("pic-reapply");
    let mut store = Store::new(&dir);
    for id in ["rp-a", "rp-b"] {
        remove_compose_project(&format!("pic-{id}"));
    }
    store.add(
        "rp-a",
        manifest("rp-a", &img, 8080, &["alpha", "alpha2"]),
        TEMPLATE,
    );
    store.add("rp-b", manifest("rp-b", &img, 9090, &["beta"]), TEMPLATE);
    let reloads = dir.join("reloads");
    let reload = dir.join("reload");
    write_script(&reload, &format!("echo reload >> {}", reloads.display()));
    let caddyfile = dir.join("services.caddy");
    let env = [
        ("PIC_SERVICE_POOL", "172.20.0.80-172.20.0.89"),
        ("PIC_CADDY_RELOAD", reload.to_str().unwrap()),
        ("PIC_CADDYFILE", caddyfile.to_str().unwrap()),
        ("PIC_CELL_DOMAIN", "cell.test"),
    ];
    let ns = Netns::new();
    let run = |args: &[&str]| pic_in(&ns, &dir, &env, args);

    // Somebody else's rules, there before pic-store.
    ok(&ns.exec(&["iptables", "-N", "OTHER"]));
    ok(&ns.exec(&["iptables", "-A", "OTHER", "-j", "RETURN"]));
    ok(&ns.exec(&[
        "iptables",
        "-A",
        "FORWARD",
        "-s",
        "10.9.9.9/32",
        "-j",
        "ACCEPT",
    ]));
    ok(&ns.exec(&[
        "ip", "rule", "add", "fwmark", "0x7", "lookup", "77", "priority", "9000",
    ]));

    ok(&run(&["install", "rp-a"]));
    ok(&run(&["install", "rp-b"]));
    let state: Value =
        serde_json::from_slice(&fs::read(dir.state_dir().join("state.json")).unwrap()).unwrap();
    let ip_a = state["services"]["rp-a"]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let ip_b = state["services"]["rp-b"]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let save = ns.iptables_save();
    for rule in [
        format!("-A PIC_SERVICES -d {ip_a}/32 -p tcp -m tcp --dport 8080 -j ACCEPT"),
        format!("-A PIC_SERVICES -d {ip_a}/32 -p udp -m udp --dport 8081 -j ACCEPT"),
        format!("-A PIC_SERVICES -d {ip_b}/32 -p tcp -m tcp --dport 9090 -j ACCEPT"),
        format!("-A PIC_SERVICES -d {ip_b}/32 -p udp -m udp --dport 9091 -j ACCEPT"),
    ] {
        assert_eq!(
            save.matches(&format!("{rule}\n")).count(),
            1,
            "{rule}\n{save}"
        );
    }
    assert_eq!(
        save.matches("-A DOCKER-USER -j PIC_SERVICES\n").count(),
        1,
        "{save}"
    );
    assert!(!save.contains("-A FORWARD -j PIC_"), "{save}");
    assert!(save.contains("-A FORWARD -s 10.9.9.9/32 -j ACCEPT\n"));
    assert!(save.contains("-A OTHER -j RETURN\n"));

    // The routes: three subdomains, sorted, accepted by the real Caddy.
    let text = fs::read_to_string(&caddyfile).unwrap();
    let order: Vec<&str> = text.lines().filter(|l| l.ends_with('{')).collect();
    assert_eq!(
        order,
        [
            "alpha.cell.test {",
            "alpha2.cell.test {",
            "beta.cell.test {"
        ],
        "{text}"
    );
    let adapt = Command::new("caddy")
        .args(["adapt", "--adapter", "caddyfile", "--config"])
        .arg(&caddyfile)
        .output()
        .unwrap();
    assert!(adapt.status.success(), "{}", show(&adapt));
    let reloads_after_install = lines(&reloads);
    assert_eq!(
        reloads_after_install, 2,
        "one reload per change of the file"
    );

    // Twice in a row: nothing changes, nothing reloads.
    ok(&run(&["reapply"]));
    let (save1, rules1) = (ns.iptables_save(), ns.ip_rules());
    ok(&run(&["reapply"]));
    assert_eq!(ns.iptables_save(), save1);
    assert_eq!(ns.ip_rules(), rules1);
    assert_eq!(
        lines(&reloads),
        reloads_after_install,
        "no reload when nothing changed"
    );
    assert_eq!(run(&["reapply", "--dry-run"]).status.code(), Some(0));

    // Flushed chain and a stale rule in our band: repaired, the rule at
    // 9000 (not ours) kept.
    ok(&ns.exec(&["iptables", "-F", "PIC_SERVICES"]));
    ok(&ns.exec(&[
        "ip", "rule", "add", "fwmark", "0x1f0", "lookup", "190", "priority", "10500",
    ]));
    let dry = run(&["reapply", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(1), "{}", show(&dry));
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("10500"),
        "{}",
        show(&dry)
    );
    assert_eq!(
        ns.ip_rules().matches("10500").count(),
        1,
        "dry run changed nothing"
    );
    ok(&run(&["reapply"]));
    assert_eq!(ns.iptables_save(), save1);
    assert!(!ns.ip_rules().contains("10500:"));
    assert!(ns.ip_rules().contains("9000:"));

    // Remove clears exactly that service's rules and route.
    ok(&run(&["remove", "rp-b"]));
    let save = ns.iptables_save();
    assert!(!save.contains(&ip_b), "{save}");
    assert_eq!(save.matches(&format!("-d {ip_a}/32")).count(), 2, "{save}");
    assert!(!fs::read_to_string(&caddyfile).unwrap().contains("beta"));
    ok(&run(&["remove", "rp-a"]));
}

/// A registry of the test's own, so it can be stopped without disturbing
/// the rig's.
struct Registry {
    child: Child,
    addr: String,
    _dir: TempDir,
}

impl Registry {
    fn start(port: u16) -> Registry {
        let dir = TempDir::with_prefix("pic-registry");
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry on {addr} did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Registry {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Pushes a local image here as `roof/NAME:TAG`; returns the reference
    /// pinned by digest.
    fn push(&self, local: &str, name: &str) -> String {
        let target = format!("{}/roof/{name}:1", self.addr);
        ok(&docker(&["tag", local, &target]));
        let out = ok(&docker(&["push", &target]));
        let digest = out
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .unwrap_or_else(|| panic!("no digest in push output: {out}"))
            .to_string();
        format!("{target}@{digest}")
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn boot_without_the_registry_starts_what_is_present() {
    if !require_rig() {
        return;
    }
    image("web", "1", &["httpd", "-f", "-p", "8080"]);
    image("webb", "1", &["httpd", "-f", "-p", "8081"]);
    let mut registry = Registry::start(5077);
    let img_a = registry.push("127.0.0.1:5000/roof/web:1", "boot-a");
    let img_b = registry.push("127.0.0.1:5000/roof/webb:1", "boot-b");
    let dir = TempDir::with_prefix("pic-boot");
    let mut store = Store::new(&dir);
    for id in ["bt-a", "bt-b"] {
        remove_compose_project(&format!("pic-{id}"));
    }
    store.add("bt-a", manifest("bt-a", &img_a, 8080, &[]), TEMPLATE);
    store.add("bt-b", manifest("bt-b", &img_b, 8080, &[]), TEMPLATE);
    let env = [
        ("PIC_SERVICE_POOL", "172.20.0.90-172.20.0.99"),
        ("PIC_IMAGE_REGISTRY", "127.0.0.1:5077/roof/"),
    ];
    let ns = Netns::new();
    let run = |args: &[&str]| pic_in(&ns, &dir, &env, args);
    ok(&run(&["install", "bt-a"]));
    ok(&run(&["install", "bt-b"]));

    // Power cut: containers gone, registry gone, images still here.
    registry.stop();
    for c in ["rp-bt-a", "rp-bt-b"] {
        ok(&docker(&["rm", "-f", c]));
    }
    let out = run(&["reapply"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    for c in ["rp-bt-a", "rp-bt-b"] {
        let r = docker(&["inspect", "--format", "{{.State.Running}}", c]);
        assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "true", "{c}");
    }

    // One image lost as well: the other still starts; exit 1 names it.
    ok(&docker(&["rm", "-f", "rp-bt-b"]));
    ok(&docker(&["rmi", "-f", img_b.split('@').next().unwrap()]));
    let _ = docker(&["rmi", "-f", &img_b]);
    ok(&docker(&["rm", "-f", "rp-bt-a"]));
    let out = run(&["reapply"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fail_line = stdout.lines().find(|l| l.starts_with("FAIL")).unwrap_or("");
    assert!(
        fail_line.contains("bt-b") && fail_line.contains("boot-b"),
        "{stdout}"
    );
    let r = docker(&["inspect", "--format", "{{.State.Running}}", "rp-bt-a"]);
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "true");
    for id in ["bt-a", "bt-b"] {
        remove_compose_project(&format!("pic-{id}"));
    }
}

/// A state of many services, connections and peers, written directly.
fn big_state(services: usize, connections: usize, peers: usize) -> Value {
    let mut svcs = serde_json::Map::new();
    for i in 0..services {
        let id = format!("s{i}");
        svcs.insert(
            id.clone(),
            json!({
                "manifest": {
                    "id": id, "name": id, "version": "1", "author": "t", "kind": "service",
                    "image": "127.0.0.1:5000/roof/web:1", "container_name": format!("c-{id}"),
                    "requires": [], "volumes": [], "env": [],
                    "iptables_rules": [
                        {"dest_port": 80, "proto": "tcp"}, {"dest_port": 443, "proto": "tcp"},
                        {"dest_port": 53, "proto": "udp"}
                    ],
                    "routes": [[format!("sub{i}"), format!("c-{id}:80")]],
                    "cap_add": [], "provision_hook": null, "instanceable": false, "connectivity": null
                },
                "ip": format!("172.20.0.{}", 20 + i), "installed_at": 0, "image_digest": null
            }),
        );
    }
    svcs.insert(
        "proxy".into(),
        json!({
            "manifest": {
                "id": "proxy", "name": "p", "version": "1", "author": "t", "kind": "connectivity",
                "image": "127.0.0.1:5000/roof/web:1", "container_name": "proxy",
                "requires": [], "volumes": [], "env": [], "iptables_rules": [], "routes": [],
                "cap_add": [], "provision_hook": null, "instanceable": true,
                "connectivity": {"mode": "redirect"}
            },
            "ip": null, "installed_at": 0, "image_digest": null, "template": "services: {}\n"
        }),
    );
    let mut conns = serde_json::Map::new();
    for i in 0..connections {
        conns.insert(
            format!("k{i}"),
            json!({"service": "proxy", "fwmark": 0x100 + i, "table": 100 + i, "port": 12000 + i,
                   "ip": format!("172.20.0.{}", 200 + i), "created_at": 0}),
        );
    }
    let mut routes = serde_json::Map::new();
    for i in 0..peers {
        routes.insert(
            format!("10.8.0.{}", 2 + i),
            json!(format!("k{}", i % connections)),
        );
    }
    json!({"schema": 1, "services": svcs, "connections": conns, "peer_routes": routes,
           "egress": {"s0": "k0"}})
}

#[test]
fn reapply_spawns_each_tool_a_bounded_number_of_times() {
    let dir = TempDir::with_prefix("pic-spawns");
    let ns = Netns::new();
    let state_dir = dir.state_dir();
    fs::create_dir_all(state_dir.join("compose")).unwrap();
    let state = big_state(40, 8, 20);
    fs::write(state_dir.join("state.json"), state.to_string()).unwrap();
    for id in state["services"].as_object().unwrap().keys() {
        fs::write(state_dir.join(format!("compose/pic-{id}.json")), "{}").unwrap();
    }
    for k in state["connections"].as_object().unwrap().keys() {
        fs::write(state_dir.join(format!("compose/pic-proxy-{k}.json")), "{}").unwrap();
    }
    // Wrappers that count their runs and run the real tool in the
    // namespace; docker is answered by a stub (no engine is involved).
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let count = |name: &str| -> PathBuf { dir.join(format!("count-{name}")) };
    for (name, real) in [
        ("iptables-restore", "iptables-restore"),
        ("iptables-save", "iptables-save"),
        ("iptables", "iptables"),
        ("ip", "ip"),
    ] {
        write_script(
            &bin.join(name),
            &format!(
                "echo run >> {}\nexec ip netns exec {} {real} \"$@\"",
                count(name).display(),
                ns.name()
            ),
        );
    }
    write_script(
        &bin.join("docker"),
        &format!("echo run >> {}\nexit 0", count("docker").display()),
    );
    let p = |n: &str| bin.join(n).display().to_string();
    let env = [
        ("PIC_IPTABLES_RESTORE", p("iptables-restore")),
        ("PIC_IPTABLES_SAVE", p("iptables-save")),
        ("PIC_IPTABLES", p("iptables")),
        ("PIC_IP", p("ip")),
        ("PIC_DOCKER", p("docker")),
        ("PIC_WAN_IFACE", "picdummy".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = || {
        for name in [
            "iptables-restore",
            "iptables-save",
            "iptables",
            "ip",
            "docker",
        ] {
            let _ = fs::remove_file(count(name));
        }
        let out = pic(&dir, &env, &["reapply"]);
        (
            out,
            lines(&count("iptables-restore")),
            lines(&count("ip")),
            lines(&count("iptables-save")),
        )
    };
    let (out, restores, ips, saves) = run();
    assert!(out.status.success(), "{}", show(&out));
    assert!(restores <= 3, "iptables-restore ran {restores} times");
    assert!(ips <= 2, "ip ran {ips} times");
    assert_eq!(saves, 1);
    let save = ns.iptables_save();
    assert_eq!(save.matches("-A PIC_SERVICES ").count(), 120, "{save}");
    assert_eq!(ns.ip_rules().matches("lookup 10").count(), 8);
    let (out, restores, ips, _) = run();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(restores, 0, "nothing to restore the second time");
    assert!(ips <= 2, "ip ran {ips} times");
}
