//! Every path, address and program pic-store uses, read from the
//! environment once (spec §2), checked, and passed explicitly from then on.
//! A malformed value is a startup error that names the variable.

use crate::error::{Error, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

pub const DEFAULT_INDEX_URL: &str =
    "https://git.pic.ngo/roof/pic-services/raw/branch/main/index.json";

/// An inclusive range of IPv4 addresses (`PIC_SERVICE_POOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Pool {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl Ipv4Pool {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(self.first) <= u32::from(ip) && u32::from(ip) <= u32::from(self.last)
    }

    pub fn iter(&self) -> impl Iterator<Item = Ipv4Addr> {
        (u32::from(self.first)..=u32::from(self.last)).map(Ipv4Addr::from)
    }
}

impl std::fmt::Display for Ipv4Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// An IPv4 subnet in canonical form (`10.8.0.0/24`: no host bits set,
/// prefix 1–32), printed the way `iptables-save` prints a `-d` match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ipv4Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Subnet {
    /// Parses `A.B.C.D/P`; `why` says what is wrong otherwise.
    pub fn parse(v: &str) -> std::result::Result<Ipv4Subnet, String> {
        let (a, p) = v
            .split_once('/')
            .ok_or_else(|| format!("{v:?} is not a subnet such as 10.8.0.0/24"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{v:?}: {a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| (1..=32).contains(p))
            .ok_or_else(|| format!("{v:?}: the prefix must be 1 to 32"))?;
        let net = Ipv4Subnet { addr, prefix }.network();
        if net.addr != addr {
            return Err(format!("{v:?} has host bits set; did you mean {net}?"));
        }
        Ok(net)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// The same prefix with the host bits cleared.
    pub fn network(&self) -> Ipv4Subnet {
        Ipv4Subnet {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix: self.prefix,
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether the two share any address.
    pub fn overlaps(&self, other: &Ipv4Subnet) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The cell network, `172.20.0.0/24`.
    pub fn cell() -> Ipv4Subnet {
        let (addr, prefix) = NETWORK_SUBNET;
        Ipv4Subnet { addr, prefix }
    }
}

impl std::fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A program pic-store runs: the name or path given, and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The configuration variable it came from, for error messages.
    pub var: &'static str,
    /// An absolute path when it was found; otherwise the name as given.
    pub path: PathBuf,
    pub found: bool,
}

impl Program {
    pub fn display(&self) -> String {
        self.path.display().to_string()
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub index_url: String,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub allowed_hosts: Vec<String>,
    pub cell_domain: String,
    pub cell_dir: PathBuf,
    pub image_registry: String,
    pub network: String,
    pub service_pool: Ipv4Pool,
    pub caddyfile: PathBuf,
    /// argv run after the Caddy routes change; empty: none.
    pub caddy_reload: Vec<String>,
    pub wan_iface: String,
    pub cosign_key: Option<PathBuf>,
    pub docker: Program,
    pub iptables: Program,
    pub iptables_restore: Program,
    pub iptables_save: Program,
    pub ip: Program,
    pub cosign: Program,
    pub log_level: log::LevelFilter,
    /// Host folders a manifest may mount (`PIC_HOST_MOUNT_ROOTS`),
    /// normalised, absolute.
    pub host_mount_roots: Vec<PathBuf>,
    /// Subnets routed peers and services with egress reach directly,
    /// never through an instance (spec §9 "The cell stays reachable").
    pub direct_subnets: Vec<Ipv4Subnet>,
    /// How many compose projects `reapply` brings up at once (1–16).
    pub parallel: usize,
    /// How long an install, update, configure or start waits for its
    /// containers to be healthy (`PIC_HEALTH_TIMEOUT`, spec §13).
    pub health_timeout: std::time::Duration,
    /// MiB the docker root and the state folder keep free after a pull
    /// (`PIC_MIN_FREE_MB`, spec §13).
    pub min_free_mb: u64,
}

/// The subnet of the cell network; the pool must lie inside it.
pub const NETWORK_SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(172, 20, 0, 0), 24);

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads configuration through `get`, so tests can pass a map.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let var = |name: &'static str, default: &str| -> String {
            get(name).unwrap_or_else(|| default.to_string())
        };
        let path_env = get("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());

        let index_url = parse_index_url(&var("PIC_STORE_INDEX_URL", DEFAULT_INDEX_URL))?;
        let state_dir =
            absolute_path("PIC_STATE_DIR", &var("PIC_STATE_DIR", "/var/lib/pic-store"))?;
        let listen = var("PIC_LISTEN", "127.0.0.1:8420")
            .parse::<SocketAddr>()
            .map_err(|e| config_err("PIC_LISTEN", format!("not an address:port ({e})")))?;
        let allowed_hosts = parse_hosts(&var("PIC_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]"))?;
        let cell_domain = parse_domain(&var("PIC_CELL_DOMAIN", "cell.local"))?;
        let cell_dir = absolute_path("PIC_CELL_DIR", &var("PIC_CELL_DIR", "/home/roof/pic"))?;
        let image_registry = parse_registry(&var("PIC_IMAGE_REGISTRY", "git.pic.ngo/roof/"))?;
        let network = parse_name("PIC_NETWORK", &var("PIC_NETWORK", "cell-network"))?;
        let service_pool = parse_pool(&var("PIC_SERVICE_POOL", "172.20.0.20-172.20.0.254"))?;
        let caddyfile = match get("PIC_CADDYFILE") {
            Some(v) => absolute_path("PIC_CADDYFILE", &v)?,
            None => state_dir.join("services.caddy"),
        };
        let caddy_reload = parse_argv(
            "PIC_CADDY_RELOAD",
            &var(
                "PIC_CADDY_RELOAD",
                "docker exec cell-caddy caddy reload --config /etc/caddy/Caddyfile",
            ),
        )?;
        let wan_iface = parse_iface(&var("PIC_WAN_IFACE", "eth0"))?;
        let cosign_key = match get("PIC_COSIGN_KEY") {
            Some(v) if !v.is_empty() => Some(absolute_path("PIC_COSIGN_KEY", &v)?),
            _ => None,
        };
        let program = |name: &'static str, default: &str| -> Result<Program> {
            resolve_program(name, &var(name, default), &path_env)
        };
        let docker = program("PIC_DOCKER", "docker")?;
        let iptables = program("PIC_IPTABLES", "iptables")?;
        let iptables_restore = program("PIC_IPTABLES_RESTORE", "iptables-restore")?;
        let iptables_save = program("PIC_IPTABLES_SAVE", "iptables-save")?;
        let ip = program("PIC_IP", "ip")?;
        let cosign = program("PIC_COSIGN", "cosign")?;
        let mut caddy_reload = caddy_reload;
        if let Some(first) = caddy_reload.first_mut() {
            let p = resolve_program("PIC_CADDY_RELOAD", first, &path_env)?;
            *first = p.display();
        }
        let log_level = var("PIC_LOG", "info")
            .parse::<log::LevelFilter>()
            .map_err(|_| {
                config_err(
                    "PIC_LOG",
                    "expected one of error, warn, info, debug, trace, off",
                )
            })?;
        let host_mount_roots =
            parse_mount_roots(&var("PIC_HOST_MOUNT_ROOTS", DEFAULT_HOST_MOUNT_ROOTS))?;

        let direct_subnets = parse_subnets("PIC_DIRECT_SUBNETS", &var("PIC_DIRECT_SUBNETS", ""))?;
        let parallel = parse_parallel(&var("PIC_PARALLEL", "4"))?;

        let health_timeout = std::time::Duration::from_secs(parse_count(
            "PIC_HEALTH_TIMEOUT",
            &var("PIC_HEALTH_TIMEOUT", "300"),
        )?);
        let min_free_mb = parse_count("PIC_MIN_FREE_MB", &var("PIC_MIN_FREE_MB", "1024"))?;

        Ok(Config {
            index_url,
            state_dir,
            listen,
            allowed_hosts,
            cell_domain,
            cell_dir,
            image_registry,
            network,
            service_pool,
            caddyfile,
            caddy_reload,
            wan_iface,
            cosign_key,
            docker,
            iptables,
            iptables_restore,
            iptables_save,
            ip,
            cosign,
            log_level,
            host_mount_roots,
            direct_subnets,
            parallel,
            health_timeout,
            min_free_mb,
        })
    }

    /// The effective values as `NAME=value` lines (`pic-store config`).
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let opt = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let prog = |p: &Program| {
            if p.found {
                p.display()
            } else {
                format!("{} (not found)", p.display())
            }
        };
        vec![
            ("PIC_STORE_INDEX_URL", self.index_url.clone()),
            ("PIC_STATE_DIR", self.state_dir.display().to_string()),
            ("PIC_LISTEN", self.listen.to_string()),
            ("PIC_ALLOWED_HOSTS", self.allowed_hosts.join(",")),
            ("PIC_CELL_DOMAIN", self.cell_domain.clone()),
            ("PIC_CELL_DIR", self.cell_dir.display().to_string()),
            ("PIC_IMAGE_REGISTRY", self.image_registry.clone()),
            ("PIC_NETWORK", self.network.clone()),
            ("PIC_SERVICE_POOL", self.service_pool.to_string()),
            ("PIC_CADDYFILE", self.caddyfile.display().to_string()),
            ("PIC_CADDY_RELOAD", self.caddy_reload.join(" ")),
            ("PIC_WAN_IFACE", self.wan_iface.clone()),
            ("PIC_COSIGN_KEY", opt(&self.cosign_key).unwrap_or_default()),
            ("PIC_DOCKER", prog(&self.docker)),
            ("PIC_IPTABLES", prog(&self.iptables)),
            ("PIC_IPTABLES_RESTORE", prog(&self.iptables_restore)),
            ("PIC_IPTABLES_SAVE", prog(&self.iptables_save)),
            ("PIC_IP", prog(&self.ip)),
            ("PIC_COSIGN", prog(&self.cosign)),
            ("PIC_LOG", self.log_level.to_string().to_lowercase()),
            ("PIC_HOST_MOUNT_ROOTS", self.host_mount_roots_text()),
            (
                "PIC_DIRECT_SUBNETS",
                self.direct_subnets
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("PIC_PARALLEL", self.parallel.to_string()),
            (
                "PIC_HEALTH_TIMEOUT",
                self.health_timeout.as_secs().to_string(),
            ),
            ("PIC_MIN_FREE_MB", self.min_free_mb.to_string()),
        ]
    }

    /// `PIC_HOST_MOUNT_ROOTS` as it would be written (`/srv:/mnt:/media`).
    pub fn host_mount_roots_text(&self) -> String {
        let roots: Vec<String> = self
            .host_mount_roots
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        roots.join(":")
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.state_dir.join("cache")
    }
    pub fn compose_dir(&self) -> PathBuf {
        self.state_dir.join("compose")
    }
    pub fn data_root(&self) -> PathBuf {
        self.state_dir.join("data")
    }
}

fn config_err(var: &'static str, reason: impl Into<String>) -> Error {
    Error::Config {
        var,
        reason: reason.into(),
    }
}

fn parse_parallel(v: &str) -> Result<usize> {
    match v.parse::<usize>() {
        Ok(n) if (1..=16).contains(&n) => Ok(n),
        _ => Err(config_err(
            "PIC_PARALLEL",
            format!("{v:?} is not a whole number from 1 to 16"),
        )),
    }
}

fn parse_index_url(v: &str) -> Result<String> {
    let ok_scheme = ["http://", "https://", "file://"]
        .iter()
        .any(|s| v.starts_with(s) && v.len() > s.len());
    if !ok_scheme {
        return Err(config_err(
            "PIC_STORE_INDEX_URL",
            format!("{v:?} is not an http://, https:// or file:// URL"),
        ));
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(config_err("PIC_STORE_INDEX_URL", "contains white space"));
    }
    if v.ends_with('/') {
        return Err(config_err(
            "PIC_STORE_INDEX_URL",
            "must name the index file, not a folder",
        ));
    }
    if let Some(path) = v.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(config_err(
                "PIC_STORE_INDEX_URL",
                "a file:// URL needs an absolute path (file:///...)",
            ));
        }
    }
    Ok(v.to_string())
}

fn absolute_path(var: &'static str, v: &str) -> Result<PathBuf> {
    let p = Path::new(v);
    if v.is_empty() || !p.is_absolute() {
        return Err(config_err(var, format!("{v:?} is not an absolute path")));
    }
    if v.contains('\n') || v.contains('\0') {
        return Err(config_err(var, "contains a newline or NUL"));
    }
    Ok(p.to_path_buf())
}

/// A whole number (`PIC_HEALTH_TIMEOUT`, `PIC_MIN_FREE_MB`).
fn parse_count(var: &'static str, v: &str) -> Result<u64> {
    v.trim()
        .parse::<u64>()
        .map_err(|_| config_err(var, format!("{v:?} is not a whole number")))
}

/// The default of `PIC_HOST_MOUNT_ROOTS` (spec §2).
pub const DEFAULT_HOST_MOUNT_ROOTS: &str = "/srv:/mnt:/media";

/// `:`-separated absolute folders, normalised; `/` alone is refused (it
/// would make every host path mountable), and so is an empty list entry.
fn parse_mount_roots(v: &str) -> Result<Vec<PathBuf>> {
    let var = "PIC_HOST_MOUNT_ROOTS";
    let mut out: Vec<PathBuf> = Vec::new();
    if v.is_empty() {
        return Ok(out);
    }
    for root in v.split(':') {
        let plain = root
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+@".contains(c));
        if !root.starts_with('/') || !plain {
            return Err(config_err(
                var,
                format!("{root:?} is not an absolute path of letters, digits and / . _ - + @ (write /srv:/mnt:/media)"),
            ));
        }
        let normal = crate::manifest::normalize_path(root);
        if normal == "/" {
            return Err(config_err(
                var,
                format!("{root:?} is the root folder; name the folders that may be mounted"),
            ));
        }
        let normal = PathBuf::from(normal);
        if !out.contains(&normal) {
            out.push(normal);
        }
    }
    Ok(out)
}

fn parse_hosts(v: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for h in v.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let ok = h
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c));
        if !ok {
            return Err(config_err(
                "PIC_ALLOWED_HOSTS",
                format!("{h:?} is not a host name or address"),
            ));
        }
        out.push(h.to_ascii_lowercase());
    }
    Ok(out)
}

fn parse_domain(v: &str) -> Result<String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if v.is_empty() || v.len() > 200 || !v.split('.').all(label_ok) {
        return Err(config_err(
            "PIC_CELL_DOMAIN",
            format!("{v:?} is not a domain name"),
        ));
    }
    Ok(v.to_ascii_lowercase())
}

fn parse_registry(v: &str) -> Result<String> {
    let ok = !v.is_empty()
        && v.len() <= 255
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c));
    if !ok {
        return Err(config_err(
            "PIC_IMAGE_REGISTRY",
            format!("{v:?} is not an image registry prefix such as git.pic.ngo/roof/"),
        ));
    }
    Ok(v.to_string())
}

fn parse_name(var: &'static str, v: &str) -> Result<String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        return Err(config_err(
            var,
            format!("{v:?} is not a docker network name"),
        ));
    }
    Ok(v.to_string())
}

fn parse_iface(v: &str) -> Result<String> {
    let ok = !v.is_empty()
        && v.len() <= 15
        && !v.starts_with('-')
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        return Err(config_err(
            "PIC_WAN_IFACE",
            format!("{v:?} is not a network interface name"),
        ));
    }
    Ok(v.to_string())
}

fn parse_pool(v: &str) -> Result<Ipv4Pool> {
    let bad = |why: &str| config_err("PIC_SERVICE_POOL", format!("{v:?}: {why}"));
    let (a, b) = v
        .split_once('-')
        .ok_or_else(|| bad("expected FIRST-LAST, two IPv4 addresses"))?;
    let first: Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|_| bad("first address is not IPv4"))?;
    let last: Ipv4Addr = b
        .trim()
        .parse()
        .map_err(|_| bad("last address is not IPv4"))?;
    if u32::from(first) > u32::from(last) {
        return Err(bad("first address is after the last"));
    }
    let (net, prefix) = NETWORK_SUBNET;
    let mask = u32::MAX << (32 - prefix);
    let inside = |ip: Ipv4Addr| u32::from(ip) & mask == u32::from(net);
    if !inside(first) || !inside(last) {
        return Err(bad("must lie inside the cell network 172.20.0.0/24"));
    }
    let host = |ip: Ipv4Addr| u32::from(ip) & !mask;
    if host(first) < 2 || host(last) == !mask {
        return Err(bad(
            "must not hold the network, gateway (.1) or broadcast address",
        ));
    }
    Ok(Ipv4Pool { first, last })
}

/// Comma-separated IPv4 subnets (`PIC_DIRECT_SUBNETS`), in the order
/// given, each once; empty: none.
fn parse_subnets(var: &'static str, v: &str) -> Result<Vec<Ipv4Subnet>> {
    let mut out = Vec::new();
    for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let net = Ipv4Subnet::parse(item).map_err(|why| config_err(var, why))?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

/// Splits an argv written as words separated by spaces. No quoting: the
/// value is never given to a shell, and a word with a space has no place in
/// these commands.
fn parse_argv(var: &'static str, v: &str) -> Result<Vec<String>> {
    if v.chars().any(|c| c.is_control() && c != ' ' && c != '\t') {
        return Err(config_err(var, "contains control characters"));
    }
    Ok(v.split_whitespace().map(str::to_string).collect())
}

/// A program named by path must be absolute; a bare name is looked up on
/// `PATH` once, here, so every later spawn uses an absolute path. A program
/// that is not found is only an error when it is run.
fn resolve_program(var: &'static str, v: &str, path_env: &str) -> Result<Program> {
    if v.is_empty() {
        return Err(config_err(var, "is empty"));
    }
    if v.contains('/') {
        let p = absolute_path(var, v)?;
        let found = p.is_file();
        return Ok(Program {
            var,
            path: p,
            found,
        });
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(config_err(var, format!("{v:?} is not a program name")));
    }
    for dir in path_env.split(':').filter(|d| d.starts_with('/')) {
        let candidate = Path::new(dir).join(v);
        if is_executable(&candidate) {
            return Ok(Program {
                var,
                path: candidate,
                found: true,
            });
        }
    }
    Ok(Program {
        var,
        path: PathBuf::from(v),
        found: false,
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn health_timeout_and_free_space_default_and_parse() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.health_timeout, std::time::Duration::from_secs(300));
        assert_eq!(c.min_free_mb, 1024);
        let c = cfg(&[("PIC_HEALTH_TIMEOUT", "5"), ("PIC_MIN_FREE_MB", "0")]).unwrap();
        assert_eq!(c.health_timeout, std::time::Duration::from_secs(5));
        assert_eq!(c.min_free_mb, 0);
        assert_eq!(
            err_var(cfg(&[("PIC_HEALTH_TIMEOUT", "5s")])),
            "PIC_HEALTH_TIMEOUT"
        );
        assert_eq!(
            err_var(cfg(&[("PIC_MIN_FREE_MB", "-1")])),
            "PIC_MIN_FREE_MB"
        );
    }

    fn err_var(r: Result<Config>) -> &'static str {
        match r {
            Err(Error::Config { var, .. }) => var,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_spec_defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.index_url, DEFAULT_INDEX_URL);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/pic-store"));
        assert_eq!(c.listen.to_string(), "127.0.0.1:8420");
        assert_eq!(c.allowed_hosts, vec!["localhost", "127.0.0.1", "[::1]"]);
        assert_eq!(
            c.caddyfile,
            PathBuf::from("/var/lib/pic-store/services.caddy")
        );
        assert_eq!(c.service_pool.to_string(), "172.20.0.20-172.20.0.254");
        assert_eq!(c.caddy_reload.len(), 7);
        assert_eq!(c.cosign_key, None);
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert_eq!(c.host_mount_roots_text(), "/srv:/mnt:/media");
        assert_eq!(c.parallel, 4);
    }

    #[test]
    fn host_mount_roots_are_absolute_and_normalised() {
        let c = cfg(&[("PIC_HOST_MOUNT_ROOTS", "/data//x/:/srv")]).unwrap();
        assert_eq!(c.host_mount_roots_text(), "/data/x:/srv");
        let c = cfg(&[("PIC_HOST_MOUNT_ROOTS", "")]).unwrap();
        assert!(c.host_mount_roots.is_empty());
        for bad in [
            "srv",
            "/srv::/mnt",
            "/",
            "/srv:/..",
            "/srv:/m nt",
            "/srv,/mnt",
        ] {
            assert_eq!(
                err_var(cfg(&[("PIC_HOST_MOUNT_ROOTS", bad)])),
                "PIC_HOST_MOUNT_ROOTS",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn malformed_values_name_their_variable() {
        for (var, value) in [
            ("PIC_STORE_INDEX_URL", "ftp://x/index.json"),
            ("PIC_STORE_INDEX_URL", "file://relative/index.json"),
            ("PIC_STATE_DIR", "relative/dir"),
            ("PIC_LISTEN", "localhost"),
            ("PIC_ALLOWED_HOSTS", "a b"),
            ("PIC_CELL_DOMAIN", "bad_domain!"),
            ("PIC_CELL_DIR", ""),
            ("PIC_IMAGE_REGISTRY", "reg istry/"),
            ("PIC_NETWORK", "-net"),
            ("PIC_SERVICE_POOL", "172.20.0.30-172.20.0.20"),
            ("PIC_SERVICE_POOL", "10.0.0.2-10.0.0.9"),
            ("PIC_SERVICE_POOL", "172.20.0.1-172.20.0.9"),
            ("PIC_SERVICE_POOL", "nonsense"),
            ("PIC_CADDYFILE", "services.caddy"),
            ("PIC_WAN_IFACE", "-o eth0"),
            ("PIC_COSIGN_KEY", "key.pub"),
            ("PIC_DOCKER", "bin/docker"),
            ("PIC_DOCKER", "docker ps"),
            ("PIC_LOG", "loud"),
            ("PIC_DIRECT_SUBNETS", "10.8.0.1/24"),
            ("PIC_DIRECT_SUBNETS", "10.8.0.0"),
            ("PIC_DIRECT_SUBNETS", "10.8.0.0/0"),
            ("PIC_DIRECT_SUBNETS", "10.8.0.0/33"),
            ("PIC_DIRECT_SUBNETS", "10.8.0.0/24 -j ACCEPT"),
            ("PIC_DIRECT_SUBNETS", "fd00::/64"),
            ("PIC_PARALLEL", "0"),
            ("PIC_PARALLEL", "17"),
            ("PIC_PARALLEL", "four"),
            ("PIC_PARALLEL", ""),
        ] {
            assert_eq!(err_var(cfg(&[(var, value)])), var, "{var}={value}");
        }
    }

    #[test]
    fn programs_resolve_to_absolute_paths() {
        let dir = std::env::temp_dir().join(format!("pic-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let prog = dir.join("ip");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("relative:{}", dir.display());
        let c = cfg(&[("PATH", &path), ("PIC_DOCKER", "no-such-program")]).unwrap();
        assert_eq!(c.ip.path, prog);
        assert!(c.ip.found);
        assert!(!c.docker.found);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn direct_subnets_are_canonical_and_deduplicated() {
        assert!(cfg(&[]).unwrap().direct_subnets.is_empty());
        let c = cfg(&[(
            "PIC_DIRECT_SUBNETS",
            " 10.8.0.0/24, 192.168.1.0/24,,10.8.0.0/24,10.0.0.7/32 ",
        )])
        .unwrap();
        let all: Vec<String> = c.direct_subnets.iter().map(|n| n.to_string()).collect();
        assert_eq!(all, ["10.8.0.0/24", "192.168.1.0/24", "10.0.0.7/32"]);
        let described = c.describe();
        let line = described
            .iter()
            .find(|(k, _)| *k == "PIC_DIRECT_SUBNETS")
            .unwrap();
        assert_eq!(line.1, "10.8.0.0/24,192.168.1.0/24,10.0.0.7/32");
        let net = Ipv4Subnet::parse("172.21.0.0/16").unwrap();
        assert!(!net.overlaps(&Ipv4Subnet::cell()));
        assert!(Ipv4Subnet::parse("172.0.0.0/8")
            .unwrap()
            .overlaps(&Ipv4Subnet::cell()));
    }

    #[test]
    fn empty_reload_means_none() {
        let c = cfg(&[("PIC_CADDY_RELOAD", "")]).unwrap();
        assert!(c.caddy_reload.is_empty());
    }

    #[test]
    fn pool_iterates_in_order() {
        let c = cfg(&[("PIC_SERVICE_POOL", "172.20.0.20-172.20.0.22")]).unwrap();
        let all: Vec<String> = c.service_pool.iter().map(|i| i.to_string()).collect();
        assert_eq!(all, ["172.20.0.20", "172.20.0.21", "172.20.0.22"]);
    }
}
