//! Connection instances, peer routes and service egress on real containers,
//! iptables and ip rules in a network namespace (spec §9, §10; issue 5).
//! One test walks the whole story because instances publish host ports.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::process::Stdio;

const PROXY_TEMPLATE: &str = r#"services:
  proxy:
    image: ${IMAGE}
    container_name: ${CONTAINER_NAME}
    command: ["httpd", "-f", "-p", "${REDIRECT_PORT}"]
    cap_add: [NET_ADMIN]
    ports:
      - "${REDIRECT_PORT}:${REDIRECT_PORT}"
    environment:
      UPSTREAM: "${UPSTREAM}"
      MARK: "${FWMARK}"
      TABLE: "${ROUTE_TABLE}"
    networks: [${NETWORK}]
"#;

const WEB_TEMPLATE: &str = r#"services:
  web:
    image: ${IMAGE}
    container_name: ${CONTAINER_NAME}
    command: ["httpd", "-f", "-p", "8080"]
    networks: [${NETWORK}]
"#;

struct Cell {
    dir: TempDir,
    ns: Netns,
    store: Store,
}

impl Cell {
    fn run(&self, args: &[&str]) -> std::process::Output {
        pic_in(
            &self.ns,
            &self.dir,
            &[
                ("PIC_SERVICE_POOL", "172.20.0.70-172.20.0.79"),
                ("PIC_WAN_IFACE", "picdummy"),
            ],
            args,
        )
    }

    fn state(&self) -> Value {
        serde_json::from_slice(&fs::read(self.dir.state_dir().join("state.json")).unwrap()).unwrap()
    }

    fn ns_sh(&self, args: &[&str]) -> String {
        ok(&self.ns.exec(args))
    }

    /// The lines of our chains in `iptables-save`, sorted, and the band rules.
    fn snapshot(&self) -> (Vec<String>, String, String, String) {
        let mut rules: Vec<String> = self
            .ns
            .iptables_save()
            .lines()
            .filter(|l| l.contains("PIC_"))
            .map(str::to_string)
            .collect();
        rules.sort();
        (
            rules,
            band_rules(&self.ns.ip_rules()),
            self.ns.ip_route_table(100),
            self.ns.ip_route_table(101),
        )
    }
}

fn band_rules(ip_rules: &str) -> String {
    ip_rules
        .lines()
        .filter(|l| {
            l.split(':')
                .next()
                .and_then(|p| p.trim().parse::<u32>().ok())
                .is_some_and(|p| (10000..=10999).contains(&p))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn running(name: &str) -> bool {
    String::from_utf8_lossy(&docker(&["inspect", "--format", "{{.State.Running}}", name]).stdout)
        .trim()
        == "true"
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn connections_peers_and_egress_end_to_end() {
    if !require_rig() {
        return;
    }
    let digest = image("web", "1", &["httpd", "-f", "-p", "8080"]);
    let dir = TempDir::with_prefix("pic-conn");
    let mut store = Store::new(&dir);
    for p in ["pic-cx-proxy-c1", "pic-cx-proxy-c2", "pic-cx-web"] {
        remove_compose_project(p);
    }
    // A published image written name:tag@sha256:<digest>.
    let proxy_image = image_ref("web", "1", &digest);
    store.add(
        "cx-proxy",
        json!({
            "id": "cx-proxy", "name": "Proxy", "version": "1", "author": "tests",
            "kind": "connectivity", "instanceable": true, "connectivity": {"mode": "redirect"},
            "image": proxy_image, "container_name": "cx-proxy", "cap_add": ["NET_ADMIN"],
            "env": [{"name": "UPSTREAM", "value": "none"}]
        }),
        PROXY_TEMPLATE,
    );
    store.add(
        "cx-web",
        json!({
            "id": "cx-web", "name": "Web", "version": "1", "author": "tests",
            "image": image_ref("web", "1", &digest), "container_name": "cx-web",
            "iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 8080}]
        }),
        WEB_TEMPLATE,
    );
    let cell = Cell {
        ns: Netns::new(),
        dir,
        store,
    };
    let validate = cell.run(&[
        "validate",
        cell.store
            .root()
            .join("services/cx-proxy")
            .to_str()
            .unwrap(),
    ]);
    ok(&validate);

    // Installing an instanceable service starts nothing from its template.
    ok(&cell.run(&["install", "cx-proxy"]));
    assert!(compose_project_containers("pic-cx-proxy").is_empty());
    assert!(cell.state()["services"]["cx-proxy"]["template"].is_string());

    // Something on the host already uses mark 0x100 and port 12000.
    cell.ns_sh(&[
        "ip", "rule", "add", "fwmark", "0x100", "lookup", "250", "priority", "5000",
    ]);
    let mut listener = cell
        .ns
        .command("python3")
        .args(["-c", "import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',12000))\ns.listen()\nprint('up',flush=True)\ntime.sleep(900)"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(listener.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "up");
    }

    let out = ok(&cell.run(&[
        "connection",
        "add",
        "cx-proxy",
        "c1",
        "UPSTREAM=socks5://10.1.1.1:1080",
    ]));
    assert!(out.contains("mark 0x101"), "{out}");
    ok(&cell.run(&["connection", "add", "cx-proxy", "c2"]));
    let state = cell.state();
    let (c1, c2) = (&state["connections"]["c1"], &state["connections"]["c2"]);
    assert_eq!(
        (
            c1["fwmark"].as_u64(),
            c1["port"].as_u64(),
            c1["table"].as_u64()
        ),
        (Some(0x101), Some(12001), Some(100))
    );
    assert_eq!(
        (
            c2["fwmark"].as_u64(),
            c2["port"].as_u64(),
            c2["table"].as_u64()
        ),
        (Some(0x102), Some(12002), Some(101))
    );
    assert_ne!(c1["ip"], c2["ip"]);
    assert!(running("cx-proxy-c1") && running("cx-proxy-c2"));
    let env = docker(&["inspect", "--format", "{{json .Config.Env}}", "cx-proxy-c1"]);
    assert!(String::from_utf8_lossy(&env.stdout).contains("UPSTREAM=socks5://10.1.1.1:1080"));
    let bands = band_rules(&cell.ns.ip_rules());
    assert_eq!(count(&bands, "fwmark 0x101 lookup 100"), 1, "{bands}");
    assert_eq!(count(&bands, "fwmark 0x102 lookup 101"), 1, "{bands}");

    // Two peers through the two connections; then one moves.
    ok(&cell.run(&["peer", "route", "10.8.0.2", "c1"]));
    ok(&cell.run(&["peer", "route", "10.8.0.3", "c2"]));
    let rules = cell.ns.iptables_save();
    assert_eq!(
        count(
            &rules,
            "-A PIC_CONNECTIVITY -s 10.8.0.2/32 -j MARK --set-xmark 0x101/0xffffffff"
        ),
        1,
        "{rules}"
    );
    assert_eq!(
        count(
            &rules,
            "-A PIC_CONNECTIVITY -s 10.8.0.2/32 -p tcp -j REDIRECT --to-ports 12001"
        ),
        1,
        "{rules}"
    );
    assert_eq!(
        count(
            &rules,
            "-A PIC_CONNECTIVITY -s 10.8.0.3/32 -p tcp -j REDIRECT --to-ports 12002"
        ),
        1,
        "{rules}"
    );
    ok(&cell.run(&["peer", "route", "10.8.0.2", "c2"]));
    let rules = cell.ns.iptables_save();
    assert_eq!(
        count(&rules, "-s 10.8.0.2/32"),
        2,
        "one MARK and one REDIRECT\n{rules}"
    );
    assert_eq!(
        count(
            &rules,
            "-s 10.8.0.2/32 -j MARK --set-xmark 0x102/0xffffffff"
        ),
        1,
        "{rules}"
    );
    assert_eq!(count(&rules, "--to-ports 12001"), 0, "{rules}");

    // Egress of a service through c1, cleared when the service goes.
    ok(&cell.run(&["install", "cx-web"]));
    ok(&cell.run(&["egress", "set", "cx-web", "c1"]));
    let web_ip = cell.state()["services"]["cx-web"]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let rules = cell.ns.iptables_save();
    assert_eq!(
        count(
            &rules,
            &format!("-A PIC_EGRESS -s {web_ip}/32 -j MARK --set-xmark 0x101/0xffffffff")
        ),
        1,
        "{rules}"
    );

    // A used connection cannot be deleted; the error names its users.
    let out = cell.run(&["connection", "remove", "c2"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("10.8.0.3"),
        "{}",
        show(&out)
    );
    let out = cell.run(&["connection", "remove", "c1"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cx-web"),
        "{}",
        show(&out)
    );
    let out = cell.run(&["remove", "cx-proxy"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("c1"),
        "{}",
        show(&out)
    );

    ok(&cell.run(&["remove", "cx-web"]));
    assert!(cell.state()["egress"].get("cx-web").is_none());
    assert_eq!(count(&cell.ns.iptables_save(), "PIC_EGRESS -s"), 0);

    // Deleting c2 leaves c1 byte for byte as it was.
    ok(&cell.run(&["peer", "unroute", "10.8.0.2"]));
    ok(&cell.run(&["peer", "unroute", "10.8.0.3"]));
    ok(&cell.run(&["peer", "unroute", "10.8.0.3"])); // no route: still a success
    let c1_lines = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.contains("0x101") || l.contains("12001"))
            .map(str::to_string)
            .collect()
    };
    let before = c1_lines(&cell.ns.iptables_save());
    let table100 = cell.ns.ip_route_table(100);
    ok(&cell.run(&["connection", "remove", "c2"]));
    assert!(compose_project_containers("pic-cx-proxy-c2").is_empty());
    assert_eq!(count(&cell.ns.ip_rules(), "0x102"), 0);
    assert_eq!(cell.ns.ip_route_table(101), "");
    assert_eq!(
        count(&cell.ns.iptables_save(), "--mark 0x102"),
        0,
        "kill-switch line gone"
    );
    assert_eq!(c1_lines(&cell.ns.iptables_save()), before);
    assert_eq!(cell.ns.ip_route_table(100), table100);
    assert!(!table100.is_empty());

    // A reboot-like reset: chains flushed, band rules deleted, container
    // stopped. reapply restores all of it, identical.
    ok(&cell.run(&["peer", "route", "10.8.0.9", "c1"]));
    let snap = cell.snapshot();
    for (table, chain) in [
        ("filter", "PIC_KILLSWITCH"),
        ("mangle", "PIC_CONNECTIVITY"),
        ("nat", "PIC_CONNECTIVITY"),
    ] {
        cell.ns_sh(&["iptables", "-t", table, "-F", chain]);
    }
    cell.ns_sh(&["ip", "rule", "del", "priority", "10001"]);
    cell.ns_sh(&["ip", "route", "flush", "table", "100"]);
    ok(&docker(&["stop", "-t", "1", "cx-proxy-c1"]));
    let out = cell.run(&["reapply", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "drift found\n{}", show(&out));
    ok(&cell.run(&["reapply"]));
    assert_eq!(cell.snapshot(), snap);
    assert!(running("cx-proxy-c1"));
    let out = cell.run(&["reapply", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "in sync\n{}", show(&out));

    ok(&cell.run(&["peer", "unroute", "10.8.0.9"]));
    ok(&cell.run(&["connection", "remove", "c1"]));
    ok(&cell.run(&["remove", "cx-proxy"]));
    let _ = listener.kill();
    let _ = listener.wait();
}

#[test]
fn status_reports_a_missing_compose_plugin() {
    let dir = TempDir::with_prefix("pic-status");
    // A docker without the Compose plugin (a stand-in for that fault).
    let fake = dir.join("docker");
    fs::write(
        &fake,
        "#!/bin/sh\necho \"docker: 'compose' is not a docker command.\" >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let out = pic(&dir, &[("PIC_DOCKER", fake.to_str().unwrap())], &["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("compose") && text.contains("MISSING"),
        "{text}"
    );
    assert!(text.contains("plugin is missing"), "{text}");
}
