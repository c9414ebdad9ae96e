//! Real faults the state must survive (issue 8): a full disk under the
//! state folder. The mutation fails with a clear error, the old state and
//! the kernel's rules stay as they were, reads keep working, and the same
//! mutation succeeds once there is room again.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `size` mounted on `path`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {}", show(&out));
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` until a write fails.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

fn state_with_a_connection() -> Value {
    json!({
        "schema": 1,
        "services": {"proxy": {
            "manifest": {
                "id": "proxy", "name": "p", "version": "1", "author": "t", "kind": "connectivity",
                "image": "127.0.0.1:5000/roof/web:1", "container_name": "proxy",
                "requires": [], "volumes": [], "env": [], "iptables_rules": [], "routes": [],
                "cap_add": [], "provision_hook": null, "instanceable": true,
                "connectivity": {"mode": "route"}
            },
            "ip": null, "installed_at": 0, "image_digest": null, "template": "services: {}\n"
        }},
        "connections": {"home": {"service": "proxy", "fwmark": 256, "table": 100, "port": 12000,
                                 "ip": "172.20.0.200", "created_at": 0}}
    })
}

#[test]
fn a_full_disk_fails_the_mutation_cleanly_and_keeps_the_old_state() {
    let dir = TempDir::with_prefix("pic-diskfull");
    let _tmpfs = Tmpfs::mount(&dir.state_dir(), "256k");
    let ns = Netns::new();
    let env = [("PIC_DOCKER", "/bin/true"), ("PIC_WAN_IFACE", "picdummy")];
    fs::write(
        dir.state_dir().join("state.json"),
        state_with_a_connection().to_string(),
    )
    .unwrap();
    fs::create_dir_all(dir.state_dir().join("compose")).unwrap();
    fs::write(dir.state_dir().join("compose/pic-proxy-home.json"), "{}").unwrap();
    ok(&pic_in(&ns, &dir, &env, &["reapply"]));
    let before = fs::read(dir.state_dir().join("state.json")).unwrap();
    let rules_before = ns.iptables_save();

    let filler = fill(&dir.state_dir());
    let out = pic_in(&ns, &dir, &env, &["peer", "route", "10.8.0.2", "home"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No space left"), "{stderr}");
    assert!(
        stderr.contains("state.json"),
        "the error names the file: {stderr}"
    );
    assert_eq!(
        fs::read(dir.state_dir().join("state.json")).unwrap(),
        before
    );
    assert_eq!(ns.iptables_save(), rules_before, "the route was taken back");
    // Reads still work.
    let list = ok(&pic_in(&ns, &dir, &env, &["peer", "list", "--json"]));
    assert_eq!(list.trim(), "{}");
    ok(&pic_in(&ns, &dir, &env, &["connection", "list"]));

    fs::remove_file(filler).unwrap();
    ok(&pic_in(
        &ns,
        &dir,
        &env,
        &["peer", "route", "10.8.0.2", "home"],
    ));
    let list: Value =
        serde_json::from_str(&ok(&pic_in(&ns, &dir, &env, &["peer", "list", "--json"]))).unwrap();
    assert_eq!(list["10.8.0.2"], json!("home"));
    assert!(ns
        .iptables_save()
        .contains("-A PIC_CONNECTIVITY -s 10.8.0.2/32 -j MARK --set-xmark 0x100/0xffffffff"));
}
