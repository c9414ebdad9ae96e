//! The Raspberry Pi binary (aarch64 musl) run here under
//! `qemu-aarch64-static` (spec §14): `--version`, `validate` of the compose
//! corpus with the same verdicts as the native binary, `serve` answering
//! `/healthz`, and `reapply --dry-run` inside a network namespace with the
//! same plan as the native binary. The programs it runs (docker, iptables,
//! ip) are the host's own.
//!
//! `scripts/check-aarch64` builds the binary and runs these with
//! `PIC_AARCH64_BIN` set (`cargo test --test aarch64 -- --ignored`); a plain
//! `cargo test` leaves them out, since they need that build.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The aarch64 binary and the emulator, from the environment.
fn arm() -> (PathBuf, PathBuf) {
    let bin = std::env::var_os("PIC_AARCH64_BIN")
        .map(PathBuf::from)
        .expect("PIC_AARCH64_BIN names the aarch64 binary (scripts/check-aarch64 sets it)");
    let qemu = std::env::var_os("PIC_QEMU_AARCH64")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(which("qemu-aarch64-static")));
    let header = Command::new("readelf")
        .arg("-h")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&header.stdout).contains("AArch64"),
        "{} is not an aarch64 binary\n{}",
        bin.display(),
        show(&header)
    );
    (qemu, bin)
}

/// The aarch64 binary under qemu, with the environment `pic()` gives the
/// native one; `prefix` runs it through another program first
/// (`ip netns exec NS`).
fn arm_command(dir: &TempDir, envs: &[(&str, &str)], prefix: &[&str], args: &[&str]) -> Command {
    let (qemu, bin) = arm();
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&qemu);
            c
        }
        None => Command::new(&qemu),
    };
    cmd.env_clear()
        .envs(pic_env(dir, envs))
        .arg(&bin)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn arm_run(dir: &TempDir, envs: &[(&str, &str)], args: &[&str]) -> Output {
    arm_command(dir, envs, &[], args)
        .output()
        .expect("run qemu-aarch64-static")
}

/// stdout with what differs from one process to the next made equal: the
/// pid and counter in the names of temporary compose files.
fn stable(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    regex_lite::Regex::new(r"compose-[0-9]+-[0-9]+")
        .unwrap()
        .replace_all(&text, "compose-PID-N")
        .into_owned()
}

/// Same exit status and stdout from both binaries.
fn assert_same(native: &Output, arm: &Output) {
    assert_eq!(
        native.status.code(),
        arm.status.code(),
        "exit status differs\nnative:\n{}\naarch64:\n{}",
        show(native),
        show(arm)
    );
    assert_eq!(
        stable(native),
        stable(arm),
        "output differs\nnative:\n{}\naarch64:\n{}",
        show(native),
        show(arm)
    );
}

#[test]
#[ignore = "needs the aarch64 build: scripts/check-aarch64"]
fn version_under_emulation() {
    let dir = TempDir::with_prefix("pic-arm-version");
    let arm = arm_run(&dir, &[], &["--version"]);
    let native = pic(&dir, &[], &["--version"]);
    assert!(arm.status.success(), "{}", show(&arm));
    assert!(
        String::from_utf8_lossy(&arm.stdout).starts_with("pic-store "),
        "{}",
        show(&arm)
    );
    assert_same(&native, &arm);
}

#[test]
#[ignore = "needs the aarch64 build: scripts/check-aarch64"]
fn validate_gives_the_native_verdicts_on_the_corpus() {
    if !require_rig() {
        return;
    }
    let dir = TempDir::with_prefix("pic-arm-validate");
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compose_corpus");
    let mut names: Vec<String> = fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yml"))
        .collect();
    names.sort();
    assert!(names.len() >= 40);
    let mut store = Store::new(&dir);
    let mut by_id = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let id = format!("t{i}");
        let template = fs::read_to_string(corpus.join(name)).unwrap();
        store.add(&id, corpus_manifest(&id, &template), &template);
        by_id.insert(id, name.clone());
    }
    let root = store.root().to_str().unwrap();
    let native = pic(&dir, &[], &["validate", root]);
    let arm = arm_run(&dir, &[], &["validate", root]);
    assert_eq!(arm.status.code(), Some(1), "{}", show(&arm));
    assert_same(&native, &arm);
    // And the verdicts are the corpus's own, not merely equal.
    let stdout = String::from_utf8_lossy(&arm.stdout);
    for (id, name) in &by_id {
        let marker = format!("/services/{id}/");
        let refused = stdout
            .lines()
            .any(|l| l.contains(&marker) && l.contains(": error: "));
        assert_eq!(refused, name.starts_with("bad-"), "{name}\n{stdout}");
    }
}

/// One GET of `/healthz`; the status code, when there was an answer.
fn healthz(addr: &str) -> Option<u16> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).ok()?;
    let mut answer = String::new();
    c.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

#[test]
#[ignore = "needs the aarch64 build: scripts/check-aarch64"]
fn serve_answers_healthz_under_emulation() {
    let dir = TempDir::with_prefix("pic-arm-serve");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let log = dir.join("serve.log");
    let mut child = arm_command(&dir, &[("PIC_LISTEN", &addr)], &[], &["serve"])
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("start serve under qemu");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(code) = healthz(&addr) {
            break code;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "serve exited ({st}):\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "serve did not answer within 60 s:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        status,
        200,
        "{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
#[ignore = "needs the aarch64 build: scripts/check-aarch64"]
fn reapply_dry_run_in_a_namespace_plans_what_native_plans() {
    if !require_rig() {
        return;
    }
    let dir = TempDir::with_prefix("pic-arm-dry");
    let ns = Netns::new();
    // One installed service (by the native binary), its filter chain then
    // flushed, so the plan has its rules to restore and its Caddy site.
    let digest = image("web", "1", &["httpd", "-f", "-p", "8080"]);
    let id = unique("armdry");
    let mut store = Store::new(&dir);
    store.add(
        &id,
        serde_json::json!({
            "id": id, "name": "Arm", "version": "1", "author": "tests",
            "image": image_ref("web", "1", &digest),
            "container_name": format!("cell-{id}"),
            "subdomain": "arm", "backend": format!("cell-{id}:8080"),
            "iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 8080}]
        }),
        WEB_TEMPLATE,
    );
    let env = [("PIC_SERVICE_POOL", "172.20.0.90-172.20.0.99")];
    ok(&pic_in(&ns, &dir, &env, &["install", &id]));
    // Something changed behind pic-store's back, for the plan to show.
    ok(&ns.exec(&["iptables", "-F", "PIC_SERVICES"]));
    let native = pic_in(&ns, &dir, &env, &["reapply", "--dry-run"]);
    let arm = arm_command(
        &dir,
        &env,
        &["ip", "netns", "exec", ns.name()],
        &["reapply", "--dry-run"],
    )
    .output()
    .expect("run qemu-aarch64-static in the namespace");
    let plan = String::from_utf8_lossy(&arm.stdout).into_owned();
    remove_compose_project(&format!("pic-{id}"));
    assert_eq!(arm.status.code(), Some(1), "drift\n{}", show(&arm));
    assert!(
        plan.contains("--dport 8080") && plan.contains("arm.cell.local") && plan.contains("drift"),
        "the plan holds the service's rule, its route and the drift\n{}",
        show(&arm)
    );
    assert_same(&native, &arm);
}
