//! Helpers shared by the integration tests (`mod common;` in tests/*.rs).
//!
//! Tests drive the real programs: the pic-store binary, docker with the
//! Compose v2 plugin, a registry on 127.0.0.1:5000, iptables and ip inside a
//! throw-away network namespace. `scripts/test` brings the rig up and sets
//! `PIC_TEST_RIG=1`; a test that needs it starts with
//! `if !common::require_rig() { return; }`.
//!
//! Not every test file uses every helper.
#![allow(dead_code)]

pub mod http;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Registry address the rig serves images from.
pub const REGISTRY: &str = "127.0.0.1:5000";
/// `PIC_IMAGE_REGISTRY` value matching the images `image()` builds.
pub const IMAGE_PREFIX: &str = "127.0.0.1:5000/roof/";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique within this machine for this run: `<prefix>-<pid>-<n>`.
/// The pid part lets a later run recognise leftovers of a crashed one.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

// --- the rig ------------------------------------------------------------------

/// Whether the rig (docker, compose, registry, root) is up: `PIC_TEST_RIG=1`.
pub fn rig() -> bool {
    std::env::var("PIC_TEST_RIG").is_ok_and(|v| v == "1")
}

/// For tests that need the rig: `if !require_rig() { return; }`.
/// Without the rig the test is skipped loudly; under `CI=true` a skip is a
/// failure, so CI can never pass by skipping.
#[must_use]
pub fn require_rig() -> bool {
    if rig() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed>")
        .to_string();
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: PIC_TEST_RIG is not set under CI=true; run the tests with scripts/test");
    }
    // Straight to the process's stderr: eprintln! would be captured by the
    // test harness and never shown for a test that "passes".
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED {test}: needs the test rig (docker, registry, root). \
         Run scripts/test, or scripts/rig up and PIC_TEST_RIG=1 cargo test. ***"
    );
    false
}

/// Registry address from `PIC_TEST_REGISTRY` (default 127.0.0.1:5000).
pub fn registry() -> String {
    std::env::var("PIC_TEST_REGISTRY").unwrap_or_else(|_| REGISTRY.to_string())
}

// --- temporary folders --------------------------------------------------------

/// A fresh folder under the system temp dir, removed with everything in it
/// on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        Self::with_prefix("pic-test")
    }

    pub fn with_prefix(prefix: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{}-{nanos}", unique(prefix)));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// `<dir>/state`, the `PIC_STATE_DIR` that `pic()` passes.
    pub fn state_dir(&self) -> PathBuf {
        self.path.join("state")
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// --- the binary under test ----------------------------------------------------

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pic-store"))
}

/// The environment `pic()` gives the binary: only these, then `envs`
/// overriding (an empty value stays set, as the empty string).
pub fn pic_env(dir: &TempDir, envs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = vec![
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        (
            "PIC_STATE_DIR".into(),
            dir.state_dir().display().to_string(),
        ),
        ("PIC_CADDY_RELOAD".into(), String::new()),
        (
            "PIC_STORE_INDEX_URL".into(),
            format!("file://{}", dir.join("store/index.json").display()),
        ),
        ("PIC_IMAGE_REGISTRY".into(), IMAGE_PREFIX.into()),
        ("PIC_LOG".into(), "debug".into()),
    ];
    for (k, v) in envs {
        match vars.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => vars.push((k.to_string(), v.to_string())),
        }
    }
    vars
}

/// The pic-store command with a scrubbed environment (see `pic_env`) and
/// stdin from /dev/null, ready to run or adjust.
pub fn pic_command(dir: &TempDir, envs: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.env_clear()
        .envs(pic_env(dir, envs))
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// Runs the real binary and waits for it.
pub fn pic(dir: &TempDir, envs: &[(&str, &str)], args: &[&str]) -> Output {
    pic_command(dir, envs, args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin().display()))
}

/// Runs the real binary inside a network namespace (`ip netns exec`).
pub fn pic_in(ns: &Netns, dir: &TempDir, envs: &[(&str, &str)], args: &[&str]) -> Output {
    let bin = bin();
    let mut full: Vec<&str> = vec![
        "netns",
        "exec",
        ns.name(),
        bin.to_str().expect("utf-8 path"),
    ];
    full.extend_from_slice(args);
    Command::new("ip")
        .env_clear()
        .envs(pic_env(dir, envs))
        .args(&full)
        .stdin(Stdio::null())
        .output()
        .expect("run ip netns exec")
}

/// stdout, stderr and exit status, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panics with the output unless the command succeeded; returns stdout.
pub fn ok(out: &Output) -> String {
    assert!(out.status.success(), "command failed\n{}", show(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// --- images -------------------------------------------------------------------

/// Builds (or reuses) the busybox-based image `127.0.0.1:5000/roof/NAME:TAG`
/// with `cmd` as its CMD (none when empty), pushes it and returns its
/// `sha256:...` repo digest. Same name, tag and cmd: same digest.
pub fn image(name: &str, tag: &str, cmd: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rig");
    let out = Command::new(&script)
        .arg("image")
        .arg(name)
        .arg(tag)
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    let digest = ok(&out).trim().to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "scripts/rig image printed no digest\n{}",
        show(&out)
    );
    digest
}

/// `127.0.0.1:5000/roof/NAME:TAG@sha256:...`, the form manifests pin.
pub fn image_ref(name: &str, tag: &str, digest: &str) -> String {
    format!("{IMAGE_PREFIX}{name}:{tag}@{digest}")
}

// --- stores -------------------------------------------------------------------

/// A store folder: `index.json` plus `services/<id>/{manifest.json,
/// compose-template.yml}`.
pub struct Store {
    root: PathBuf,
    entries: Vec<Value>,
}

impl Store {
    /// The store at `<dir>/store`, where `pic()` points `PIC_STORE_INDEX_URL`.
    pub fn new(dir: &TempDir) -> Store {
        Self::at(dir.join("store"))
    }

    /// A store in any folder.
    pub fn at(root: impl Into<PathBuf>) -> Store {
        let store = Store {
            root: root.into(),
            entries: Vec::new(),
        };
        fs::create_dir_all(store.root.join("services")).expect("create store folder");
        store.write_index();
        store
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `file://<root>/index.json`.
    pub fn url(&self) -> String {
        format!("file://{}", self.root.join("index.json").display())
    }

    /// Writes the service's manifest and template and (re)lists it in the
    /// index with the manifest's `name`, `version` and `description`.
    pub fn add(&mut self, id: &str, manifest: Value, template: &str) -> &mut Store {
        let dir = self.root.join("services").join(id);
        fs::create_dir_all(&dir).expect("create service folder");
        fs::write(
            dir.join("manifest.json"),
            serde_json::to_vec_pretty(&manifest).unwrap(),
        )
        .expect("write manifest.json");
        fs::write(dir.join("compose-template.yml"), template).expect("write template");
        let field = |k: &str| manifest.get(k).cloned().unwrap_or_else(|| json!(""));
        let entry = json!({
            "id": id,
            "name": field("name"),
            "version": field("version"),
            "description": field("description"),
        });
        match self.entries.iter_mut().find(|e| e["id"] == id) {
            Some(e) => *e = entry,
            None => self.entries.push(entry),
        }
        self.write_index();
        self
    }

    /// Writes any file in the store as is (broken manifests, odd indexes).
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create folder");
        }
        fs::write(&path, contents).expect("write store file");
    }

    fn write_index(&self) {
        let tmp = self.root.join(".index.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(&self.entries).unwrap())
            .expect("write index.json");
        fs::rename(&tmp, self.root.join("index.json")).expect("rename index.json");
    }
}

pub const CORPUS_IMAGE: &str = "127.0.0.1:5000/roof/web:1@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// The manifest a template of `tests/compose_corpus` is checked with (see
/// its first line).
pub fn corpus_manifest(id: &str, template: &str) -> Value {
    let first = template.lines().next().unwrap_or("").trim();
    let mut m = json!({
        "id": id, "name": "Web", "version": "1", "author": "roof", "image": CORPUS_IMAGE,
        "container_name": format!("cell-{id}"),
        "volumes": [{"mount": "/srv/media", "target": "/media"}],
        "env": [{"name": "TZ", "value": "UTC"}, {"name": "UPSTREAM", "value": "socks5://10.0.0.1:1080"}],
        "cap_add": ["CHOWN", "NET_BIND_SERVICE"]
    });
    if first == "# context: connectivity" || first == "# context: instance" {
        m["kind"] = json!("connectivity");
        m["cap_add"] = json!(["CHOWN", "NET_BIND_SERVICE", "NET_ADMIN", "NET_RAW"]);
    }
    if first == "# context: instance" {
        m["instanceable"] = json!(true);
        m["connectivity"] = json!({"mode": "redirect"});
    }
    m
}

// --- docker -------------------------------------------------------------------

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker")
}

/// Names of all containers (running or not) of a compose project.
pub fn compose_project_containers(project: &str) -> Vec<String> {
    let filter = format!("label=com.docker.compose.project={project}");
    let out = docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]);
    ok(&out)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Removes a compose project's containers and networks, for cleaning up
/// after (or before) a test whatever state it is in.
pub fn remove_compose_project(project: &str) {
    for name in compose_project_containers(project) {
        docker(&["rm", "-f", "-v", &name]);
    }
    let filter = format!("label=com.docker.compose.project={project}");
    let out = docker(&["network", "ls", "-q", "--filter", &filter]);
    for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        docker(&["network", "rm", id]);
    }
}

// --- network namespaces -------------------------------------------------------

/// A named network namespace (`pic-test-<pid>-<n>`) with `lo` up and a dummy
/// interface `picdummy` holding 172.20.0.1/24 (a veth pair `picdummy` /
/// `picpeer` where the kernel has no dummy driver), deleted on drop. Firewall and
/// routing tests run pic-store in here so the host is never touched.
pub struct Netns {
    name: String,
}

fn run_ok(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed\n{}",
        args.join(" "),
        show(&out)
    );
    out
}

impl Netns {
    pub fn new() -> Netns {
        Self::remove_stale();
        let ns = Netns {
            name: unique("pic-test"),
        };
        let n = ns.name.as_str();
        run_ok("ip", &["netns", "add", n]);
        run_ok("ip", &["-n", n, "link", "set", "lo", "up"]);
        let dummy = Command::new("ip")
            .args(["-n", n, "link", "add", "picdummy", "type", "dummy"])
            .output()
            .expect("run ip");
        if !dummy.status.success() {
            // Kernels without the dummy driver (no modules at all on some
            // CI VMs): a veth pair whose both ends stay in here behaves the
            // same for addresses and routes.
            run_ok(
                "ip",
                &[
                    "-n", n, "link", "add", "picdummy", "type", "veth", "peer", "name", "picpeer",
                ],
            );
            run_ok("ip", &["-n", n, "link", "set", "picpeer", "up"]);
        }
        run_ok(
            "ip",
            &["-n", n, "addr", "add", "172.20.0.1/24", "dev", "picdummy"],
        );
        run_ok("ip", &["-n", n, "link", "set", "picdummy", "up"]);
        ns
    }

    /// Deletes `pic-test-<pid>-*` namespaces whose test process is gone.
    fn remove_stale() {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix("pic-test-") else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or("");
            if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("ip").args(["netns", "delete", name]).output();
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `args` inside the namespace (`ip netns exec NAME args...`).
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        Command::new("ip")
            .args(&full)
            .stdin(Stdio::null())
            .output()
            .expect("run ip netns exec")
    }

    /// A command prefixed with `ip netns exec NAME`, to add env, args, stdin.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name.as_str(), program]);
        cmd
    }

    /// `iptables-save` of the namespace without `#` lines and with chain
    /// counters (`[0:0]`) removed, so it compares stably. With the nft
    /// backend a fresh namespace has no tables at all: "" until a rule or
    /// policy is written. (`iptables-save -t TABLE` would create TABLE, so
    /// this never passes `-t`.)
    pub fn iptables_save(&self) -> String {
        let out = ok(&self.exec(&["iptables-save"]));
        out.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
                (true, Some(i)) if l.ends_with(']') => &l[..i],
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// `ip rule show` in the namespace.
    pub fn ip_rules(&self) -> String {
        ok(&self.exec(&["ip", "rule", "show"]))
    }

    /// `ip route show table N` in the namespace (empty when the table is).
    pub fn ip_route_table(&self, table: u32) -> String {
        let t = table.to_string();
        let out = self.exec(&["ip", "route", "show", "table", &t]);
        // An unused table is "empty", not an error, for assertions.
        if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("does not exist")
        {
            return String::new();
        }
        ok(&out)
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

// --- programs and templates shared by the server tests ---------------------------

/// The absolute path of a program on `PATH`.
pub fn which(program: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .expect("run sh");
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!p.is_empty(), "{program} not found");
    p
}

/// Writes an executable shell script.
pub fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text).expect("write script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod script");
}

impl Netns {
    /// `PIC_*` program overrides (wrappers written into `bin`) that run
    /// iptables and ip inside this namespace, so a `serve` listening on the
    /// host's loopback programs only the namespace's rules.
    pub fn program_overrides(&self, bin: &Path) -> Vec<(String, String)> {
        fs::create_dir_all(bin).expect("create bin folder");
        let ip = which("ip");
        [
            ("PIC_IPTABLES", "iptables"),
            ("PIC_IPTABLES_RESTORE", "iptables-restore"),
            ("PIC_IPTABLES_SAVE", "iptables-save"),
            ("PIC_IP", "ip"),
        ]
        .iter()
        .map(|(var, prog)| {
            let path = bin.join(prog);
            write_script(
                &path,
                &format!(
                    "#!/bin/sh\nexec {ip} netns exec {} {} \"$@\"\n",
                    self.name(),
                    which(prog)
                ),
            );
            (var.to_string(), path.display().to_string())
        })
        .collect()
    }
}

/// A busybox web service serving its data folder on port 8080.
pub const WEB_TEMPLATE: &str = r#"services:
  web:
    image: ${IMAGE}
    container_name: ${CONTAINER_NAME}
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
    volumes:
      - ${DATA_DIR}:/www
    networks:
      - ${NETWORK}
networks:
  ${NETWORK}:
    external: true
"#;

/// An instanceable redirect "proxy": busybox httpd on the instance's
/// redirect port, published on the host.
pub const PROXY_TEMPLATE: &str = r#"services:
  proxy:
    image: ${IMAGE}
    container_name: ${CONTAINER_NAME}
    command: ["httpd", "-f", "-p", "${REDIRECT_PORT}"]
    cap_add: [NET_ADMIN]
    ports:
      - "${REDIRECT_PORT}:${REDIRECT_PORT}"
    environment:
      UPSTREAM: "${UPSTREAM}"
    networks: [${NETWORK}]
"#;

/// A TCP connection from the loopback address `src` to `dst`.
pub fn connect_from(
    src: std::net::Ipv4Addr,
    dst: std::net::SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let [a, b, c, d] = src.octets();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(a, b, c, d, 0),
    )?;
    let std::net::SocketAddr::V4(dst) = dst else {
        panic!("IPv4 only")
    };
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(dst))?;
    Ok(std::net::TcpStream::from(fd))
}

/// A cell on the rig for the lifecycle tests: its own state folder, store
/// and network namespace, and a slice of the service pool, so tests run
/// side by side. `env` is what every `run` passes.
pub struct Cell {
    pub dir: TempDir,
    pub ns: Netns,
    pub store: Store,
    pub env: Vec<(String, String)>,
}

impl Cell {
    pub fn new(prefix: &str, pool: &str) -> Cell {
        let dir = TempDir::with_prefix(prefix);
        let store = Store::new(&dir);
        Cell {
            ns: Netns::new(),
            store,
            env: vec![("PIC_SERVICE_POOL".into(), pool.into())],
            dir,
        }
    }

    pub fn envs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// The binary inside the cell's namespace, with its environment.
    pub fn run(&self, args: &[&str]) -> Output {
        pic_in(&self.ns, &self.dir, &self.envs(), args)
    }

    /// The state file as JSON (`{}` when there is none).
    pub fn state(&self) -> Value {
        serde_json::from_slice(&self.state_bytes().unwrap_or_else(|| b"{}".to_vec())).unwrap()
    }

    pub fn state_bytes(&self) -> Option<Vec<u8>> {
        fs::read(self.dir.state_dir().join("state.json")).ok()
    }
}
