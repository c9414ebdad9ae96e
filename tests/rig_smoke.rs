//! Proves the test rig and the helpers in tests/common work, so a failure
//! elsewhere is about pic-store and not about the rig.

mod common;

use common::*;
use serde_json::json;

#[test]
fn registry_answers() {
    if !require_rig() {
        return;
    }
    let out = std::process::Command::new("curl")
        .args(["-fsS", &format!("http://{}/v2/", registry())])
        .output()
        .expect("run curl");
    ok(&out);
}

#[test]
fn image_is_pushed_pullable_by_digest_and_runs() {
    if !require_rig() {
        return;
    }
    let digest = image("smoke", "1", &["echo", "hi from cmd"]);
    assert_eq!(
        digest,
        image("smoke", "1", &["echo", "hi from cmd"]),
        "same image asked twice must keep its digest"
    );

    let by_digest = format!("{IMAGE_PREFIX}smoke@{digest}");
    ok(&docker(&["pull", &by_digest]));

    let name = unique("pic-smoke");
    let out = docker(&["run", "--rm", "--name", &name, &by_digest]);
    assert_eq!(ok(&out).trim(), "hi from cmd");

    let out = docker(&["run", "--rm", "--name", &name, &by_digest, "echo", "hi"]);
    assert_eq!(ok(&out).trim(), "hi");
}

#[test]
fn base_image_by_digest_runs_echo() {
    if !require_rig() {
        return;
    }
    let digest = image("busybox", "1", &[]);
    let by_digest = format!("{IMAGE_PREFIX}busybox@{digest}");
    ok(&docker(&["pull", &by_digest]));
    let out = docker(&["run", "--rm", &by_digest, "sh", "-c", "echo hi"]);
    assert_eq!(ok(&out), "hi\n");
}

#[test]
fn compose_plugin_is_v2() {
    if !require_rig() {
        return;
    }
    let out = docker(&["compose", "version", "--short"]);
    assert!(ok(&out).trim().trim_start_matches('v').starts_with("2."));
    assert!(compose_project_containers(&unique("pic-none")).is_empty());
}

#[test]
fn netns_has_dummy_interface_and_empty_filter_table() {
    if !require_rig() {
        return;
    }
    let ns = Netns::new();
    let addr = ok(&ns.exec(&["ip", "-4", "-o", "addr", "show", "dev", "picdummy"]));
    assert!(addr.contains("172.20.0.1/24"), "{addr}");
    let lo = ok(&ns.exec(&["ip", "-o", "link", "show", "lo"]));
    assert!(lo.contains("UP"), "{lo}");

    // A fresh namespace has no tables (nft backend: not even listing makes
    // one); writing a policy creates an empty filter table.
    assert_eq!(ns.iptables_save(), "");
    ok(&ns.exec(&["iptables", "-P", "INPUT", "ACCEPT"]));
    let save = ns.iptables_save();
    assert!(save.contains("*filter\n"), "{save}");
    assert!(save.contains(":INPUT ACCEPT\n"), "{save}");
    assert!(save.contains("COMMIT\n"), "{save}");
    assert!(!save.contains("-A "), "{save}");
    assert!(!save.contains('#') && !save.contains("[0:0]"), "{save}");

    // A rule added inside shows up inside, once, and not on the host.
    ok(&ns.exec(&[
        "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "65431", "-j", "ACCEPT",
    ]));
    let save = ns.iptables_save();
    assert_eq!(
        save.matches("-A INPUT -p tcp -m tcp --dport 65431 -j ACCEPT")
            .count(),
        1,
        "{save}"
    );
    let host = std::process::Command::new("iptables")
        .args(["-S", "INPUT"])
        .output()
        .expect("run iptables");
    assert!(!String::from_utf8_lossy(&host.stdout).contains("65431"));

    assert!(ns.ip_rules().contains("lookup main"));
    assert_eq!(ns.ip_route_table(100), "");
    ok(&ns.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "172.20.0.2",
        "table",
        "100",
    ]));
    assert!(ns.ip_route_table(100).contains("default via 172.20.0.2"));

    let name = ns.name().to_string();
    drop(ns);
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&name));
}

#[test]
fn store_and_tempdir_helpers() {
    let dir = TempDir::new();
    let mut store = Store::new(&dir);
    store.add(
        "hello",
        json!({"id": "hello", "name": "Hello", "version": "1.0", "description": "says hi"}),
        "services:\n  hello:\n    image: ${IMAGE}\n",
    );
    store.add(
        "other",
        json!({"id": "other", "name": "Other", "version": "2"}),
        "",
    );
    store.add(
        "hello",
        json!({"id": "hello", "name": "Hello", "version": "1.1"}),
        "x",
    );
    assert_eq!(
        store.url(),
        format!("file://{}", dir.join("store/index.json").display())
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("store/index.json")).unwrap()).unwrap();
    assert_eq!(
        index,
        json!([
            {"id": "hello", "name": "Hello", "version": "1.1", "description": ""},
            {"id": "other", "name": "Other", "version": "2", "description": ""}
        ])
    );
    assert!(dir.join("store/services/hello/manifest.json").is_file());
    assert_eq!(
        std::fs::read_to_string(dir.join("store/services/hello/compose-template.yml")).unwrap(),
        "x"
    );

    let env = pic_env(&dir, &[("PIC_LOG", "trace"), ("PIC_NETWORK", "n")]);
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("PIC_LOG"), Some("trace"));
    assert_eq!(get("PIC_NETWORK"), Some("n"));
    assert_eq!(get("PIC_CADDY_RELOAD"), Some(""));
    assert_eq!(get("PIC_STORE_INDEX_URL"), Some(store.url().as_str()));
    assert_eq!(get("HOME"), None);

    let path = dir.path().to_path_buf();
    drop(dir);
    assert!(!path.exists());
}
