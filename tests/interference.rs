//! Foreign interference (issue 8, case 4): the docker daemon restarted, our
//! chains flushed, a band rule deleted and a container removed by hand.
//! `reapply` converges to the state and says what it repaired. This file
//! holds one test because it restarts the shared docker daemon.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::path::Path;
use std::process::Command;

const WEB: &str = "services:\n  web:\n    image: ${IMAGE}\n    container_name: ${CONTAINER_NAME}\n    command: [\"httpd\", \"-f\", \"-p\", \"8080\"]\n    networks: [${NETWORK}]\n";
const PROXY: &str = "services:\n  proxy:\n    image: ${IMAGE}\n    container_name: ${CONTAINER_NAME}\n    command: [\"httpd\", \"-f\", \"-p\", \"${REDIRECT_PORT}\"]\n    networks: [${NETWORK}]\n";

fn running(name: &str) -> bool {
    String::from_utf8_lossy(&docker(&["inspect", "--format", "{{.State.Running}}", name]).stdout)
        .trim()
        == "true"
}

#[test]
fn reapply_converges_after_foreign_interference() {
    if !require_rig() {
        return;
    }
    let digest = image("web", "1", &["httpd", "-f", "-p", "8080"]);
    let img = image_ref("web", "1", &digest);
    let dir = TempDir::with_prefix("pic-interfere");
    let mut store = Store::new(&dir);
    for p in ["pic-if-web", "pic-if-proxy-route1"] {
        remove_compose_project(p);
    }
    store.add(
        "if-web",
        json!({"id": "if-web", "name": "w", "version": "1", "author": "t", "image": img,
               "container_name": "if-web",
               "iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 8080}]}),
        WEB,
    );
    store.add(
        "if-proxy",
        json!({"id": "if-proxy", "name": "p", "version": "1", "author": "t", "image": img,
               "container_name": "if-proxy", "kind": "connectivity", "instanceable": true,
               "connectivity": {"mode": "route"}}),
        PROXY,
    );
    let ns = Netns::new();
    let env = [
        ("PIC_SERVICE_POOL", "172.20.0.100-172.20.0.109"),
        ("PIC_WAN_IFACE", "picdummy"),
    ];
    let run = |args: &[&str]| pic_in(&ns, &dir, &env, args);
    ok(&run(&["install", "if-web"]));
    ok(&run(&["install", "if-proxy"]));
    ok(&run(&["connection", "add", "if-proxy", "route1"]));
    ok(&run(&["peer", "route", "10.8.0.7", "route1"]));
    ok(&run(&["egress", "set", "if-web", "route1"]));
    let snapshot = || (ns.iptables_save(), ns.ip_rules(), ns.ip_route_table(100));
    let before = snapshot();
    let state: Value =
        serde_json::from_slice(&fs::read(dir.state_dir().join("state.json")).unwrap()).unwrap();

    // Everything at once, behind pic-store's back.
    for (table, chain) in [
        ("filter", "PIC_SERVICES"),
        ("filter", "PIC_KILLSWITCH"),
        ("mangle", "PIC_CONNECTIVITY"),
        ("mangle", "PIC_EGRESS"),
    ] {
        ok(&ns.exec(&["iptables", "-t", table, "-F", chain]));
    }
    ok(&ns.exec(&["ip", "rule", "del", "priority", "10000"]));
    ok(&docker(&["rm", "-f", "if-web"]));
    let restart = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rig"))
        .arg("restart-dockerd")
        .output()
        .unwrap();
    assert!(restart.status.success(), "{}", show(&restart));
    assert!(!running("if-proxy-route1"), "the daemon restart stopped it");

    let out = run(&["reapply"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    let line = |what: &str| {
        report
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or("")
            .to_string()
    };
    assert!(
        line("service if-web").contains("repaired: created if-web"),
        "{report}"
    );
    assert!(
        line("connection route1").contains("repaired: started if-proxy-route1"),
        "{report}"
    );
    assert!(line("firewall").contains("rebuilt"), "{report}");
    assert!(line("policy routing").contains("change"), "{report}");
    assert_eq!(snapshot(), before);
    assert!(running("if-web") && running("if-proxy-route1"));
    let ip = docker(&[
        "inspect",
        "--format",
        "{{(index .NetworkSettings.Networks \"cell-network\").IPAddress}}",
        "if-web",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&ip.stdout).trim(),
        state["services"]["if-web"]["ip"].as_str().unwrap()
    );

    // Converged: a second run repairs nothing.
    let again = String::from_utf8_lossy(&ok_out(run(&["reapply"]))).to_string();
    assert!(!again.contains("repaired"), "{again}");

    ok(&run(&["egress", "clear", "if-web"]));
    ok(&run(&["peer", "unroute", "10.8.0.7"]));
    ok(&run(&["connection", "remove", "route1"]));
    ok(&run(&["remove", "if-proxy"]));
    ok(&run(&["remove", "if-web"]));
}

fn ok_out(out: std::process::Output) -> Vec<u8> {
    assert!(out.status.success(), "{}", show(&out));
    out.stdout
}
