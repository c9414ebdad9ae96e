//! The OS-image files (`image/`) and `scripts/install-image`: the exact tree
//! and modes it installs into a root file system folder, the enabling
//! symlinks, `systemd-analyze verify` and `systemd-tmpfiles` on the installed
//! files, and `/etc/default/pic-store` documenting every variable of spec §2
//! with the default the binary really uses.
//!
//! Needs no rig: only bash, coreutils and (for two tests) systemd's tools.

mod common;

use common::{show, TempDir};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Every configuration variable: spec §2, plus `PIC_IPTABLES_SAVE`, which
/// the binary reads beside `PIC_IPTABLES_RESTORE`.
const VARIABLES: &[&str] = &[
    "PIC_STORE_INDEX_URL",
    "PIC_STATE_DIR",
    "PIC_LISTEN",
    "PIC_ALLOWED_HOSTS",
    "PIC_CELL_DOMAIN",
    "PIC_CELL_DIR",
    "PIC_HOST_MOUNT_ROOTS",
    "PIC_IMAGE_REGISTRY",
    "PIC_NETWORK",
    "PIC_SERVICE_POOL",
    "PIC_CADDYFILE",
    "PIC_CADDY_RELOAD",
    "PIC_WAN_IFACE",
    "PIC_COSIGN_KEY",
    "PIC_DOCKER",
    "PIC_IPTABLES",
    "PIC_IPTABLES_RESTORE",
    "PIC_IPTABLES_SAVE",
    "PIC_IP",
    "PIC_COSIGN",
    "PIC_LOG",
    "PIC_DIRECT_SUBNETS",
    "PIC_PARALLEL",
    "PIC_HEALTH_TIMEOUT",
    "PIC_MIN_FREE_MB",
];

/// Variables the image sets (uncommented in `/etc/default/pic-store`):
/// only the cell's WireGuard subnet (spec §2); for the rest the binary's
/// defaults are the image's values.
const SET_BY_IMAGE: &[&str] = &["PIC_DIRECT_SUBNETS"];

const UNITS: &[&str] = &["pic-store.service", "pic-store-reapply.service"];

/// What one path in the installed tree is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Entry {
    Dir(u32),
    File(u32),
    Link(String),
}

use Entry::{Dir, File, Link};

/// The whole tree `install-image` makes in an empty folder, every path with
/// its mode (or link target); the root folder itself is not listed.
fn expected_tree() -> BTreeMap<String, Entry> {
    let wants = "/usr/lib/systemd/system";
    [
        ("etc", Dir(0o755)),
        ("etc/default", Dir(0o755)),
        ("etc/default/pic-store", File(0o644)),
        ("etc/systemd", Dir(0o755)),
        ("etc/systemd/system", Dir(0o755)),
        ("etc/systemd/system/multi-user.target.wants", Dir(0o755)),
        (
            "etc/systemd/system/multi-user.target.wants/pic-store.service",
            Link(format!("{wants}/pic-store.service")),
        ),
        (
            "etc/systemd/system/multi-user.target.wants/pic-store-reapply.service",
            Link(format!("{wants}/pic-store-reapply.service")),
        ),
        ("usr", Dir(0o755)),
        ("usr/bin", Dir(0o755)),
        ("usr/bin/pic-store", File(0o755)),
        ("usr/lib", Dir(0o755)),
        ("usr/lib/systemd", Dir(0o755)),
        ("usr/lib/systemd/system", Dir(0o755)),
        ("usr/lib/systemd/system/pic-store.service", File(0o644)),
        (
            "usr/lib/systemd/system/pic-store-reapply.service",
            File(0o644),
        ),
        ("usr/lib/tmpfiles.d", Dir(0o755)),
        ("usr/lib/tmpfiles.d/pic-store.conf", File(0o644)),
        ("var", Dir(0o755)),
        ("var/lib", Dir(0o755)),
        ("var/lib/pic-store", Dir(0o700)),
    ]
    .into_iter()
    .map(|(p, e)| (p.to_string(), e))
    .collect()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A small stand-in for the binary: installing 40 MB of debug build in
/// every test would only make them slow.
fn fake_binary(dir: &TempDir) -> PathBuf {
    let path = dir.join("pic-store-fake");
    fs::write(&path, "#!/bin/sh\nexit 0\n").expect("write fake binary");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod fake binary");
    path
}

fn install_image(args: &[&Path]) -> Output {
    Command::new(repo().join("scripts/install-image"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/install-image")
}

/// Installs into a fresh `rootfs` folder under `dir` and returns its path.
fn installed(dir: &TempDir) -> PathBuf {
    let rootfs = dir.join("rootfs");
    fs::create_dir(&rootfs).expect("create rootfs");
    let out = install_image(&[&rootfs, &fake_binary(dir)]);
    assert!(out.status.success(), "install-image failed\n{}", show(&out));
    rootfs
}

/// Every path under `root` (relative, `/`-separated) with what it is.
fn tree(root: &Path) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("read dir entry").path();
            let meta = fs::symlink_metadata(&path).expect("stat");
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let mode = meta.mode() & 0o7777;
            let kind = if meta.file_type().is_symlink() {
                Link(
                    fs::read_link(&path)
                        .expect("readlink")
                        .to_string_lossy()
                        .into(),
                )
            } else if meta.is_dir() {
                walk(root, &path, out);
                Dir(mode)
            } else {
                File(mode)
            };
            out.insert(rel, kind);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn assert_tree(rootfs: &Path) {
    let expected = expected_tree();
    let actual = tree(rootfs);
    let missing: Vec<_> = expected
        .iter()
        .filter(|(p, e)| actual.get(*p) != Some(*e))
        .map(|(p, e)| format!("{p}: expected {e:?}, found {:?}", actual.get(p)))
        .collect();
    let unexpected: Vec<_> = actual
        .iter()
        .filter(|(p, _)| !expected.contains_key(*p))
        .map(|(p, e)| format!("{p}: {e:?}"))
        .collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "installed tree differs\nwrong or missing:\n  {}\nunexpected:\n  {}",
        missing.join("\n  "),
        unexpected.join("\n  ")
    );
}

/// The image/ files arrive unchanged.
fn assert_contents(rootfs: &Path, binary: &Path) {
    let same = |installed: &str, source: &Path| {
        let a = fs::read(rootfs.join(installed)).expect("read installed file");
        let b = fs::read(source).expect("read source file");
        assert!(a == b, "{installed} differs from {}", source.display());
    };
    same("usr/bin/pic-store", binary);
    for (path, entry) in expected_tree() {
        if entry == File(0o644) {
            same(&path, &repo().join("image").join(&path));
        }
    }
}

#[test]
fn install_lays_out_the_tree_with_exact_modes_and_is_idempotent() {
    let dir = TempDir::with_prefix("pic-image");
    let rootfs = installed(&dir);
    assert_tree(&rootfs);
    assert_contents(&rootfs, &dir.join("pic-store-fake"));

    // A second run over the first (the image build re-run) gives the same
    // tree, and puts a loosened state folder back to 0700.
    fs::set_permissions(
        rootfs.join("var/lib/pic-store"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let out = install_image(&[&rootfs, &dir.join("pic-store-fake")]);
    assert!(
        out.status.success(),
        "second install failed\n{}",
        show(&out)
    );
    assert_tree(&rootfs);
}

#[test]
fn install_leaves_existing_folders_modes_alone() {
    let dir = TempDir::with_prefix("pic-image");
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("etc/default")).expect("mkdir");
    fs::set_permissions(rootfs.join("etc"), fs::Permissions::from_mode(0o750)).expect("chmod");
    let out = install_image(&[&rootfs, &fake_binary(&dir)]);
    assert!(out.status.success(), "install failed\n{}", show(&out));
    let mode = fs::metadata(rootfs.join("etc")).expect("stat").mode() & 0o7777;
    assert_eq!(
        mode, 0o750,
        "install-image changed the mode of an existing folder"
    );
}

#[test]
fn install_refuses_the_running_system_without_allow_root_fs() {
    let dir = TempDir::with_prefix("pic-image");
    // A binary that does not exist: were the refusal ever to break, the
    // script still stops before writing anything into /.
    let out = install_image(&[Path::new("/"), &dir.join("no-such-binary")]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allow-root-fs"), "{}", show(&out));
}

#[test]
fn install_never_writes_through_a_symlink_out_of_rootfs() {
    let dir = TempDir::with_prefix("pic-image");
    let outside = dir.join("outside");
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(&outside).expect("mkdir outside");
    fs::create_dir_all(&rootfs).expect("mkdir rootfs");
    std::os::unix::fs::symlink(&outside, rootfs.join("usr")).expect("symlink");
    let out = install_image(&[&rootfs, &fake_binary(&dir)]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("leads outside ROOTFS"),
        "{}",
        show(&out)
    );
    let written: Vec<_> = fs::read_dir(&outside).expect("read outside").collect();
    assert!(written.is_empty(), "wrote outside ROOTFS: {written:?}");
}

#[test]
fn install_rejects_wrong_arguments() {
    let out = install_image(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let dir = TempDir::with_prefix("pic-image");
    let out = install_image(&[&dir.join("no-such-rootfs"), &fake_binary(&dir)]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
}

// --- systemd's own checks -------------------------------------------------------

/// Whether systemd's `tool` can run. Missing: a loud skip, or a failure
/// under `CI=true`, so CI never passes by skipping.
#[must_use]
fn require_tool(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed>")
        .to_string();
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {tool} is missing under CI=true (apt-get install systemd)");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED {test}: {tool} is missing (apt-get install systemd) ***"
    );
    false
}

/// Units the pic-store units name but the image provides (the engine, the
/// targets of the default dependencies), as empty stand-ins, so `verify
/// --root` checks pic-store's units and not the build machine's.
fn add_stub_units(rootfs: &Path) {
    let dir = rootfs.join("usr/lib/systemd/system");
    for target in [
        "sysinit.target",
        "basic.target",
        "shutdown.target",
        "multi-user.target",
        "network.target",
        "network-online.target",
    ] {
        fs::write(dir.join(target), "[Unit]\nDescription=stub\n").expect("write stub target");
    }
    fs::write(
        dir.join("docker.service"),
        "[Unit]\nDescription=stub\n[Service]\nExecStart=/usr/bin/pic-store\n",
    )
    .expect("write stub docker.service");
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if !require_tool("systemd-analyze") {
        return;
    }
    let dir = TempDir::with_prefix("pic-image");
    let rootfs = installed(&dir);
    add_stub_units(&rootfs);
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify")
        .arg(format!("--root={}", rootfs.display()))
        // Documentation= man pages are not in the image; nothing to look up.
        .arg("--man=no");
    for unit in UNITS {
        cmd.arg(format!("/usr/lib/systemd/system/{unit}"));
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze");
    // verify exits 0 on unknown keys and bad values, only warning about
    // them, so any line about pic-store's files counts as a failure too.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<_> = stderr.lines().filter(|l| l.contains("pic-store")).collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify rejected the units\n{}",
        show(&out)
    );
}

#[test]
fn verify_check_catches_a_missing_binary() {
    // Proves the test above would notice: without /usr/bin/pic-store in the
    // root, verify fails.
    if !require_tool("systemd-analyze") {
        return;
    }
    let dir = TempDir::with_prefix("pic-image");
    let rootfs = installed(&dir);
    add_stub_units(&rootfs);
    fs::remove_file(rootfs.join("usr/bin/pic-store")).expect("remove binary");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", rootfs.display()))
        .arg("--man=no")
        .arg("/usr/lib/systemd/system/pic-store.service")
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze");
    assert!(!out.status.success(), "{}", show(&out));
}

#[test]
fn tmpfiles_line_creates_the_state_folder_root_only() {
    if !require_tool("systemd-tmpfiles") {
        return;
    }
    let dir = TempDir::with_prefix("pic-image");
    let rootfs = dir.join("rootfs");
    let conf = rootfs.join("usr/lib/tmpfiles.d");
    fs::create_dir_all(&conf).expect("mkdir");
    fs::copy(
        repo().join("image/usr/lib/tmpfiles.d/pic-store.conf"),
        conf.join("pic-store.conf"),
    )
    .expect("copy tmpfiles line");
    let out = Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", rootfs.display()))
        .args(["--create", "pic-store.conf"])
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-tmpfiles");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        show(&out)
    );
    let meta = fs::metadata(rootfs.join("var/lib/pic-store")).expect("state folder created");
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700);
}

// --- /etc/default/pic-store ------------------------------------------------------

/// The `KEY=VALUE` lines of the environment file, commented (`#KEY=...`) or
/// not: name → (value, set).
fn environment_file() -> BTreeMap<String, (String, bool)> {
    let path = repo().join("image/etc/default/pic-store");
    let text = fs::read_to_string(&path).expect("read image/etc/default/pic-store");
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        let (set, rest) = match line.strip_prefix('#') {
            Some(rest) => (false, rest),
            None => (true, line),
        };
        let Some((name, value)) = rest.split_once('=') else {
            assert!(!set || line.trim().is_empty(), "not KEY=VALUE: {line:?}");
            continue;
        };
        if !name.starts_with("PIC_") || !name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            assert!(!set, "not a PIC_ variable: {line:?}");
            continue;
        }
        let old = vars.insert(name.to_string(), (value.to_string(), set));
        assert!(old.is_none(), "{name} appears twice");
    }
    vars
}

#[test]
fn environment_file_names_every_variable_once() {
    let vars = environment_file();
    let documented: BTreeSet<&str> = vars.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = VARIABLES.iter().copied().collect();
    assert_eq!(documented, expected);
    let set: BTreeSet<&str> = vars
        .iter()
        .filter(|(_, (_, set))| *set)
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(set, SET_BY_IMAGE.iter().copied().collect::<BTreeSet<_>>());
}

#[test]
fn environment_file_shows_the_defaults_the_binary_uses() {
    // `pic-store config` with nothing set and an empty PATH prints each
    // default; programs it cannot find print as "NAME (not found)".
    let dir = TempDir::with_prefix("pic-image");
    let out = Command::new(common::bin())
        .arg("config")
        .env_clear()
        .env("PATH", dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run pic-store config");
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let effective: BTreeMap<&str, &str> = stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k, v.strip_suffix(" (not found)").unwrap_or(v)))
        .collect();
    for (name, (value, set)) in environment_file() {
        if set {
            // What the image sets is a value the binary takes.
            let out = Command::new(common::bin())
                .arg("config")
                .env_clear()
                .env("PATH", dir.path())
                .env(&name, &value)
                .stdin(Stdio::null())
                .output()
                .expect("run pic-store config");
            assert!(out.status.success(), "{name}={value}: {}", show(&out));
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(&format!("{name}={value}\n")),
                "{name}={value}: {}",
                show(&out)
            );
            continue;
        }
        assert_eq!(
            effective.get(name.as_str()).copied(),
            Some(value.as_str()),
            "{name}: the environment file shows a default the binary does not use"
        );
    }
}
