//! The allow-list of spec §7.3 ([`check`]: every problem listed, with
//! what is allowed instead) and [`finalize`] (the cell-network attachment
//! is pic-store's; read-only manifest volumes mounted `:ro`). Pure.

use super::*;

// ---------------------------------------------------------------------------
// The allow-list
// ---------------------------------------------------------------------------

/// What a compose file is checked against.
#[derive(Debug, Clone)]
pub struct CheckContext<'a> {
    pub manifest: &'a Manifest,
    pub config: &'a Config,
    /// `DATA_DIR` (see [`data_dir`]).
    pub data_dir: PathBuf,
    pub service_ip: Ipv4Addr,
    /// Set for a connection instance.
    pub instance: Option<InstanceCtx>,
}

/// The parts of a connection instance the check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceCtx {
    /// The instance (connection) id: the main container is
    /// `<container_name>-<id>`.
    pub id: String,
    pub redirect_port: u16,
}

impl CheckContext<'_> {
    /// The main container's name (`CONTAINER_NAME`).
    pub fn container_name(&self) -> String {
        match &self.instance {
            Some(i) => format!("{}-{}", self.manifest.container_name, i.id),
            None => self.manifest.container_name.clone(),
        }
    }
}

/// Service keys allowed whatever their value (their values are checked by
/// compose's schema); the keys with rules of their own are handled in
/// [`check_service`].
pub(super) const FREE_SERVICE_KEYS: &[&str] = &[
    "command",
    "entrypoint",
    "tmpfs",
    "depends_on",
    "healthcheck",
    "restart",
    "user",
    "working_dir",
    "labels",
    "ulimits",
    "read_only",
    "init",
    "stop_signal",
    "stop_grace_period",
    "cap_drop",
    "mem_limit",
    "cpus",
    "shm_size",
    "expose",
    "hostname",
    "profiles",
    // v2: what real apps use harmlessly (values checked by compose's schema).
    "dns_search",
    "dns_opt",
    "domainname",
    "tty",
    "stdin_open",
    "cpu_shares",
    "cpu_quota",
    "cpu_period",
    "cpuset",
    "mem_reservation",
    "memswap_limit",
    "mem_swappiness",
    "pids_limit",
];

/// Sysctls live in the container's own network namespace: `net.ipv4.*`,
/// `net.ipv6.*` and `net.core.somaxconn` only.
pub(super) const SYSCTL_PREFIXES: &[&str] = &["net.ipv4.", "net.ipv6."];
pub(super) const SYSCTL_NAMES: &[&str] = &["net.core.somaxconn"];
/// Log drivers that write on the host; others (syslog, gelf, fluentd...)
/// make the daemon connect where the template says.
pub(super) const LOG_DRIVERS: &[&str] = &["json-file", "local", "journald", "none"];
pub(super) const LOG_OPTIONS: &[&str] = &[
    "max-size",
    "max-file",
    "compress",
    "mode",
    "max-buffer-size",
    "tag",
    "labels",
    "env",
    "env-regex",
];
/// `pull_policy` values that never reach a registry for a present image:
/// images are pinned, and `always` would break an offline boot.
pub(super) const PULL_POLICIES: &[&str] = &["missing", "if_not_present", "never"];
pub(super) const TUN: &str = "/dev/net/tun";
pub(super) const RESERVED_NETWORKS: &[&str] = &["host", "none", "bridge"];

/// Checks a converted compose file against the allow-list of spec §7.3 and
/// returns every problem, each naming the service and the key.
pub fn check(doc: &Value, ctx: &CheckContext) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(top) = doc.as_object() else {
        return vec!["the compose file is not a mapping".into()];
    };
    let project = top.get("name").and_then(Value::as_str).unwrap_or_default();
    for (key, value) in top {
        match key.as_str() {
            "name" | "services" | "networks" | "volumes" => {}
            k if k.starts_with("x-") => {}
            k => errors.push(format!(
                "top-level key {k:?} is not allowed ({})",
                show(value)
            )),
        }
    }
    let empty = Map::new();
    let services = match top.get("services").and_then(Value::as_object) {
        Some(s) if !s.is_empty() => s,
        _ => {
            errors.push("the compose file has no services".into());
            &empty
        }
    };
    let volumes = top
        .get("volumes")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let networks = top
        .get("networks")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    check_top_volumes(volumes, project, &mut errors);
    let cell_keys = cell_network_keys(networks, ctx);
    check_top_networks(networks, &cell_keys, project, ctx, &mut errors);

    let main_name = ctx.container_name();
    let mains: Vec<&String> = services
        .iter()
        .filter(|(_, s)| s.get("container_name").and_then(Value::as_str) == Some(&main_name))
        .map(|(name, _)| name)
        .collect();
    match mains.as_slice() {
        [] if !services.is_empty() => errors.push(format!(
            "no service has container_name {main_name:?} (write container_name: ${{CONTAINER_NAME}} \
             on the main service)"
        )),
        [] | [_] => {}
        many => errors.push(format!(
            "services {} all have container_name {main_name:?}; only the main service may",
            quoted_list(many.iter().map(|s| s.as_str()))
        )),
    }
    let main = mains.first().map(|s| s.as_str());
    let whole = Whole {
        services,
        volumes,
        networks,
        cell_keys: &cell_keys,
    };
    for (name, svc) in services {
        let role = if Some(name.as_str()) == main {
            Role::Main
        } else {
            Role::Helper
        };
        check_service(name, svc, role, &whole, ctx, &mut errors);
    }
    errors
}

/// The parts of the document a service's keys are checked against.
pub(super) struct Whole<'a> {
    services: &'a Map<String, Value>,
    volumes: &'a Map<String, Value>,
    networks: &'a Map<String, Value>,
    /// The top-level keys that stand for the cell network.
    cell_keys: &'a [String],
}

/// The main service (the manifest's container) or one beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Main,
    Helper,
}

/// The top-level network keys that are the cell network: the one keyed
/// `PIC_NETWORK` and any whose `name` is `PIC_NETWORK` (the docker idiom
/// `cell: {name: cell-network, external: true}`).
pub(super) fn cell_network_keys(networks: &Map<String, Value>, ctx: &CheckContext) -> Vec<String> {
    let cell = ctx.config.network.as_str();
    let mut keys = vec![cell.to_string()];
    for (key, net) in networks {
        if key != cell && net.get("name").and_then(Value::as_str) == Some(cell) {
            keys.push(key.clone());
        }
    }
    keys
}

pub(super) fn check_service(
    name: &str,
    svc: &Value,
    role: Role,
    whole: &Whole,
    ctx: &CheckContext,
    errors: &mut Vec<String>,
) {
    let Some(svc) = svc.as_object() else {
        errors.push(format!("service {name:?} is not a mapping"));
        return;
    };
    let mut err =
        |key: &str, msg: String| errors.push(format!("service {name:?}: key {key:?} {msg}"));
    let connectivity = ctx.manifest.kind == Kind::Connectivity;
    let is_main = role == Role::Main;
    if !svc.contains_key("image") {
        err(
            "image",
            format!("is missing (it must be {:?})", ctx.manifest.image),
        );
    }
    for (key, value) in svc {
        let k = key.as_str();
        if FREE_SERVICE_KEYS.contains(&k) || k.starts_with("x-") {
            continue;
        }
        match k {
            "image" => {
                if let Some(problem) = image_problem(value, role, ctx) {
                    err(k, problem);
                }
            }
            "container_name" => {
                let main = ctx.container_name();
                let ok = value
                    .as_str()
                    .is_some_and(|c| c == main || c.starts_with(&format!("{main}-")));
                if !ok {
                    err(
                        k,
                        format!(
                            "must be {main:?} or start with \"{main}-\" ({})",
                            show(value)
                        ),
                    );
                }
            }
            "environment" => check_environment(value, &mut err),
            "volumes" => check_service_volumes(value, whole.volumes, ctx, &mut err),
            "networks" => check_service_networks(value, role, whole, ctx, &mut err),
            "network_mode" if is_main => err(
                k,
                format!(
                    "is not allowed on the main service: it joins the cell network with its own \
                     address; open its ports with the manifest's iptables_rules on ${{SERVICE_IP}} \
                     instead of the host's network ({})",
                    show(value)
                ),
            ),
            "network_mode" | "pid" => {
                let ok = value
                    .as_str()
                    .and_then(|v| v.strip_prefix("service:"))
                    .is_some_and(|other| other != name && whole.services.contains_key(other));
                if !ok {
                    err(
                        k,
                        format!(
                            "may only be \"service:<another service of this file>\" ({})",
                            show(value)
                        ),
                    );
                }
            }
            "privileged" => {
                if !is_false(value) {
                    err(k, format!("is only allowed as false ({})", show(value)));
                }
            }
            "security_opt" => {
                for opt in items(value) {
                    let ok = matches!(
                        opt.as_str(),
                        Some(
                            "no-new-privileges"
                                | "no-new-privileges:true"
                                | "no-new-privileges=true"
                        )
                    );
                    if !ok {
                        err(
                            k,
                            format!("may only hold no-new-privileges ({})", show(opt)),
                        );
                    }
                }
            }
            "cap_add" => {
                for cap in items(value) {
                    let norm = cap.as_str().map(normalize_cap);
                    let ok = norm.as_ref().is_some_and(|c| {
                        ctx.manifest.cap_add.iter().any(|m| normalize_cap(m) == *c)
                    });
                    if !ok {
                        err(
                            k,
                            format!(
                                "{} is not in the manifest's cap_add [{}]",
                                show(cap),
                                ctx.manifest.cap_add.join(", ")
                            ),
                        );
                    }
                }
            }
            "ports" => match &ctx.instance {
                None => err(
                    k,
                    format!(
                        "is only allowed in a connection instance, for its redirect port ({}); \
                         a service is reached on its own address: list the port under expose and \
                         open it with the manifest's iptables_rules on ${{SERVICE_IP}}",
                        show_ports(value)
                    ),
                ),
                Some(inst) => {
                    for port in items(value) {
                        if !is_redirect_port(port, inst.redirect_port) {
                            err(
                                k,
                                format!(
                                    "may only publish the redirect port {} as {0}:{0} ({})",
                                    inst.redirect_port,
                                    show_ports(port)
                                ),
                            );
                        }
                    }
                }
            },
            "devices" if connectivity => {
                for dev in items(value) {
                    if !is_tun_device(dev) {
                        err(k, format!("may only hold {TUN} ({})", show(dev)));
                    }
                }
            }
            "sysctls" => {
                for name in sysctl_names(value) {
                    if !sysctl_allowed(&name) {
                        err(
                            k,
                            format!(
                                "{name:?} is not allowed (only net.ipv4.*, net.ipv6.* and \
                                 net.core.somaxconn, which live in the container's own network)"
                            ),
                        );
                    }
                }
            }
            "logging" => check_logging(value, &mut err),
            "deploy" => check_deploy(value, &mut err),
            "dns" => {
                for server in items(value) {
                    if !server.as_str().is_some_and(is_ip_literal) {
                        err(k, format!("may only hold IP addresses ({})", show(server)));
                    }
                }
            }
            "extra_hosts" => check_extra_hosts(value, &mut err),
            "oom_score_adj" => {
                if value.as_i64().is_none_or(|n| n < 0) {
                    err(
                        k,
                        format!(
                            "may only be 0 or more: a negative value shields the container \
                             from the kernel's out-of-memory killer ({})",
                            show(value)
                        ),
                    );
                }
            }
            "links" => {
                for link in items(value) {
                    let target = link.as_str().map(|l| l.split(':').next().unwrap_or(l));
                    if !target.is_some_and(|t| t != name && whole.services.contains_key(t)) {
                        err(
                            k,
                            format!(
                                "may only name another service of this file ({})",
                                show(link)
                            ),
                        );
                    }
                }
            }
            "pull_policy" => {
                if !value.as_str().is_some_and(|p| PULL_POLICIES.contains(&p)) {
                    err(
                        k,
                        format!(
                            "may only be missing, if_not_present or never: images are pinned, \
                             and pulling on every start would break an offline boot ({})",
                            show(value)
                        ),
                    );
                }
            }
            _ => err(k, format!("is not allowed ({})", show(value))),
        }
    }
}

/// The main service runs the manifest's image; any other service that
/// image or one of `helper_images`, exactly as written there.
pub(super) fn image_problem(value: &Value, role: Role, ctx: &CheckContext) -> Option<String> {
    let m = ctx.manifest;
    let image = value.as_str();
    match role {
        Role::Main if image == Some(m.image.as_str()) => None,
        Role::Main => Some(format!(
            "must be the manifest's image {:?} on the main service ({}); write image: ${{IMAGE}}",
            m.image,
            show(value)
        )),
        Role::Helper
            if image.is_some_and(|i| i == m.image || m.helper_images.values().any(|h| h == i)) =>
        {
            None
        }
        Role::Helper => {
            let declared = if m.helper_images.is_empty() {
                "none are declared".to_string()
            } else {
                let keys: Vec<String> = m
                    .helper_images
                    .keys()
                    .map(|k| format!("${{{}}}", crate::manifest::helper_placeholder(k)))
                    .collect();
                format!("declared: {}", keys.join(", "))
            };
            Some(format!(
                "runs {}, which is neither the manifest's image nor one of its helper_images \
                 ({declared}); declare it in the manifest's \"helper_images\" with its @sha256 \
                 digest and write image: ${{IMAGE_<KEY>}}",
                show(value)
            ))
        }
    }
}

/// `logging`: a driver that writes on the host, and its own options.
pub(super) fn check_logging(value: &Value, err: &mut impl FnMut(&str, String)) {
    let Some(map) = value.as_object() else {
        err("logging", format!("is not a mapping ({})", show(value)));
        return;
    };
    for (k, v) in map {
        match k.as_str() {
            "driver" => {
                if !v.as_str().is_some_and(|d| LOG_DRIVERS.contains(&d)) {
                    err(
                        "logging",
                        format!(
                            "driver {} is not allowed (allowed: {}; others make the docker \
                             daemon send logs where the template says)",
                            show(v),
                            LOG_DRIVERS.join(", ")
                        ),
                    );
                }
            }
            "options" => {
                for opt in v.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !LOG_OPTIONS.contains(&opt.as_str()) {
                        err(
                            "logging",
                            format!(
                                "option {opt:?} is not allowed (allowed: {})",
                                LOG_OPTIONS.join(", ")
                            ),
                        );
                    }
                }
                if !v.is_object() && !v.is_null() {
                    err("logging", format!("options is not a mapping ({})", show(v)));
                }
            }
            other => err("logging", format!("{other:?} is not allowed ({})", show(v))),
        }
    }
}

/// `deploy`: `resources.limits` (cpus, memory, pids) and
/// `resources.reservations` (cpus, memory) only.
pub(super) fn check_deploy(value: &Value, err: &mut impl FnMut(&str, String)) {
    let hint = "limit a service with deploy.resources.limits (cpus, memory, pids), \
                deploy.resources.reservations (cpus, memory), or mem_limit and cpus";
    let Some(map) = value.as_object() else {
        err("deploy", format!("is not a mapping ({})", show(value)));
        return;
    };
    for (k, v) in map {
        if k.starts_with("x-") {
            continue;
        }
        if k != "resources" {
            err(
                "deploy",
                format!("deploy.{k} is not allowed ({}); {hint}", show(v)),
            );
            continue;
        }
        for (part, limits) in v.as_object().into_iter().flatten() {
            let allowed: &[&str] = match part.as_str() {
                "limits" => &["cpus", "memory", "pids"],
                "reservations" => &["cpus", "memory"],
                _ => &[],
            };
            if allowed.is_empty() {
                err(
                    "deploy",
                    format!(
                        "deploy.resources.{part} is not allowed ({}); {hint}",
                        show(limits)
                    ),
                );
                continue;
            }
            for (key, inner) in limits.as_object().into_iter().flatten() {
                if !allowed.contains(&key.as_str()) {
                    let what = if key == "devices" || key == "generic_resources" {
                        " (devices and GPUs are not given to services)"
                    } else {
                        ""
                    };
                    err(
                        "deploy",
                        format!(
                            "deploy.resources.{part}.{key} is not allowed{what} ({}); {hint}",
                            show(inner)
                        ),
                    );
                }
            }
        }
    }
}

/// `extra_hosts` as `host:ip`, `host=ip` or a mapping: IP literals only
/// (`host-gateway` would reach the host itself).
pub(super) fn check_extra_hosts(value: &Value, err: &mut impl FnMut(&str, String)) {
    let mut entries: Vec<(String, Vec<String>)> = Vec::new();
    match value {
        Value::Object(map) => {
            for (host, ips) in map {
                let ips = items(ips)
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| show(v), str::to_string))
                    .collect();
                entries.push((host.clone(), ips));
            }
        }
        other => {
            for entry in items(other) {
                let text = entry.as_str().map_or_else(|| show(entry), str::to_string);
                let split = text
                    .split_once('=')
                    .or_else(|| text.split_once(':'))
                    .map(|(h, ip)| (h.to_string(), vec![ip.to_string()]));
                entries.push(split.unwrap_or((text, Vec::new())));
            }
        }
    }
    for (host, ips) in entries {
        if ips.is_empty() {
            err("extra_hosts", format!("{host:?} is not host:address"));
        }
        for ip in ips {
            if ip == "host-gateway" {
                err(
                    "extra_hosts",
                    format!("\"{host}:host-gateway\" is not allowed: it points at the host itself"),
                );
            } else if !is_ip_literal(&ip) {
                err(
                    "extra_hosts",
                    format!("\"{host}:{ip}\" may only point at an IP address"),
                );
            }
        }
    }
}

/// An IPv4 or IPv6 address, IPv6 optionally in brackets.
pub(super) fn is_ip_literal(s: &str) -> bool {
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse::<std::net::IpAddr>().is_ok()
}

pub(super) fn check_environment(value: &Value, err: &mut impl FnMut(&str, String)) {
    match value {
        Value::Object(map) => {
            for (name, v) in map {
                if v.is_null() {
                    err(
                        "environment",
                        format!("{name:?} has no value (it would be copied from the host)"),
                    );
                }
            }
        }
        Value::Array(list) => {
            for entry in list {
                match entry.as_str() {
                    Some(s) if s.contains('=') => {}
                    _ => err(
                        "environment",
                        format!(
                            "{} has no value (write NAME=value; a bare name is copied from the host)",
                            show(entry)
                        ),
                    ),
                }
            }
        }
        Value::Null => {}
        other => err(
            "environment",
            format!("is not a list or mapping ({})", show(other)),
        ),
    }
}

pub(super) fn check_service_volumes(
    value: &Value,
    top_volumes: &Map<String, Value>,
    ctx: &CheckContext,
    err: &mut impl FnMut(&str, String),
) {
    let roots = allowed_roots(ctx);
    for vol in items(value) {
        let Some(v) = vol.as_object() else {
            err(
                "volumes",
                format!("entry is not in compose's long form ({})", show(vol)),
            );
            continue;
        };
        let source = v.get("source").and_then(Value::as_str);
        match v.get("type").and_then(Value::as_str) {
            Some("bind") => {
                let Some(src) = source else {
                    err("volumes", format!("bind has no source ({})", show(vol)));
                    continue;
                };
                let read_only = v
                    .get("read_only")
                    .is_some_and(|r| !is_false(r) && !r.is_null());
                if let Some(why) = bind_problem(src, read_only, &roots, ctx) {
                    err("volumes", format!("bind source {src:?} {why}"));
                }
            }
            Some("volume") => {
                if let Some(src) = source {
                    if !top_volumes.contains_key(src) {
                        err(
                            "volumes",
                            format!(
                                "named volume {src:?} is not declared under the top-level volumes"
                            ),
                        );
                    }
                }
            }
            Some("tmpfs") => {}
            Some(t) => err(
                "volumes",
                format!("type {t:?} is not allowed ({})", show(vol)),
            ),
            None => err("volumes", format!("entry has no type ({})", show(vol))),
        }
    }
}

/// The folders bind mounts may come from: the data dir and the manifest's
/// absolute `volumes` mounts (relative mounts live inside the data dir).
pub(super) fn allowed_roots(ctx: &CheckContext) -> Vec<String> {
    let mut roots = vec![normalize_path_lexical(&ctx.data_dir.display().to_string())];
    for v in &ctx.manifest.volumes {
        if v.mount.starts_with('/') {
            roots.push(normalize_path_lexical(&v.mount));
        } else {
            roots.push(normalize_path_lexical(
                &ctx.data_dir.join(&v.mount).display().to_string(),
            ));
        }
    }
    roots
}

/// Why a bind source may not be mounted: it must lie in the data dir or a
/// manifest `volumes` mount, or be `/etc/localtime` or `/etc/timezone`
/// mounted read-only (spec §7.3).
pub(super) fn bind_problem(
    src: &str,
    read_only: bool,
    roots: &[String],
    ctx: &CheckContext,
) -> Option<String> {
    if src.to_ascii_lowercase().contains("docker.sock") {
        return Some("is not allowed (docker.sock)".into());
    }
    if !src.starts_with('/') {
        return Some("is not an absolute path (write ${DATA_DIR}/...)".into());
    }
    let norm = normalize_path_lexical(src);
    if crate::manifest::TIME_FILES.contains(&norm.as_str()) {
        return (!read_only)
            .then(|| format!("may only be mounted read-only (write {src}:{src}:ro)"));
    }
    let inside = roots
        .iter()
        .any(|root| Path::new(&norm).starts_with(Path::new(root)));
    if inside {
        return None;
    }
    if norm == TUN && ctx.manifest.kind == Kind::Connectivity {
        return Some(format!(
            "is not a bind a service may use; give the device with devices: [{TUN}]"
        ));
    }
    let shown = if norm == src {
        String::new()
    } else {
        format!(" (it is {norm:?})")
    };
    Some(format!(
        "is outside the data dir and the manifest's volumes{shown}; allowed: {}. A host folder \
         must be declared in the manifest's volumes, and lie under PIC_HOST_MOUNT_ROOTS ({})",
        quoted_list(roots.iter().map(String::as_str)),
        ctx.config.host_mount_roots_text()
    ))
}

pub(super) fn check_service_networks(
    value: &Value,
    role: Role,
    whole: &Whole,
    ctx: &CheckContext,
    err: &mut impl FnMut(&str, String),
) {
    let cell = ctx.config.network.as_str();
    let is_main = role == Role::Main;
    let top_networks = whole.networks;
    let Some(map) = value.as_object() else {
        err("networks", format!("is not a mapping ({})", show(value)));
        return;
    };
    for (net, attachment) in map {
        if whole.cell_keys.contains(net) {
            if !is_main {
                err(
                    "networks",
                    format!("only the main service may join the cell network {cell:?}"),
                );
            }
            // The main service's attachment is replaced by `finalize`.
            continue;
        }
        match attachment {
            Value::Null => {}
            Value::Object(a) => {
                for (k, v) in a {
                    if k.starts_with("x-") {
                        continue;
                    }
                    let msg = if k == "aliases" {
                        format!("network {net:?}: aliases are not allowed ({})", show(v))
                    } else {
                        format!("network {net:?}: {k:?} is not allowed ({})", show(v))
                    };
                    err("networks", msg);
                }
            }
            other => err("networks", format!("network {net:?}: {}", show(other))),
        }
        if is_main {
            // Engine 20.10 gives a container the default route of the
            // network whose name sorts first (internal ones last); the cell
            // network must stay the main service's gateway, or egress marks
            // are bypassed.
            let top = top_networks.get(net);
            let internal = top
                .and_then(|t| t.get("internal"))
                .is_some_and(|v| !is_false(v) && !v.is_null());
            let real = top
                .and_then(|t| t.get("name"))
                .and_then(Value::as_str)
                .unwrap_or(net);
            if !internal && real <= cell {
                err(
                    "networks",
                    format!(
                        "network {net:?} (named {real:?}) sorts before the cell network {cell:?} \
                         and would become the main service's gateway; make it internal: true"
                    ),
                );
            }
        }
    }
}

pub(super) const TOP_VOLUME_KEYS: &[&str] = &["name", "labels"];
pub(super) const TOP_NETWORK_KEYS: &[&str] = &[
    "name",
    "driver",
    "internal",
    "labels",
    "external",
    "enable_ipv6",
];

pub(super) fn check_top_volumes(
    volumes: &Map<String, Value>,
    project: &str,
    errors: &mut Vec<String>,
) {
    for (key, vol) in volumes {
        let Some(v) = vol.as_object() else {
            continue;
        };
        for (k, value) in v {
            if k.starts_with("x-") || TOP_VOLUME_KEYS.contains(&k.as_str()) {
                continue;
            }
            errors.push(format!(
                "volume {key:?}: key {k:?} is not allowed ({})",
                show(value)
            ));
        }
        let default = format!("{project}_{key}");
        if let Some(name) = v.get("name") {
            if name.as_str() != Some(default.as_str()) {
                errors.push(format!(
                    "volume {key:?}: key \"name\" may not name a volume outside this project ({})",
                    show(name)
                ));
            }
        }
    }
}

pub(super) fn check_top_networks(
    networks: &Map<String, Value>,
    cell_keys: &[String],
    project: &str,
    ctx: &CheckContext,
    errors: &mut Vec<String>,
) {
    let cell = ctx.config.network.as_str();
    for (key, net) in networks {
        if cell_keys.contains(key) {
            continue; // replaced by `finalize`
        }
        let mut err = |msg: String| errors.push(format!("network {key:?}: {msg}"));
        if RESERVED_NETWORKS.contains(&key.as_str()) {
            err(format!("the network {key:?} is not allowed"));
        }
        let Some(n) = net.as_object() else {
            continue;
        };
        for (k, value) in n {
            if k.starts_with("x-") || TOP_NETWORK_KEYS.contains(&k.as_str()) {
                continue;
            }
            err(format!("key {k:?} is not allowed ({})", show(value)));
        }
        if let Some(ext) = n.get("external") {
            if !is_false(ext) {
                err(format!("key \"external\" is not allowed ({})", show(ext)));
            }
        }
        if let Some(driver) = n.get("driver") {
            if driver.as_str() != Some("bridge") {
                err(format!(
                    "key \"driver\" may only be bridge ({})",
                    show(driver)
                ));
            }
        }
        if let Some(name) = n.get("name") {
            let default = format!("{project}_{key}");
            match name.as_str() {
                Some(s) if RESERVED_NETWORKS.contains(&s) => {
                    err(format!("the network named {s:?} is not allowed"))
                }
                Some(s) if s == cell => err(format!(
                    "names the cell network {cell:?}; refer to it by the key ${{NETWORK}}"
                )),
                Some(s) if s == default => {}
                _ => err(format!(
                    "key \"name\" may not name a network outside this project ({})",
                    show(name)
                )),
            }
        }
    }
}

pub(super) fn is_redirect_port(port: &Value, redirect: u16) -> bool {
    let Some(p) = port.as_object() else {
        return false;
    };
    let as_port = |v: Option<&Value>| -> Option<u64> {
        match v? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    };
    let protocol_ok = matches!(
        p.get("protocol").and_then(Value::as_str),
        None | Some("tcp" | "udp")
    );
    as_port(p.get("target")) == Some(u64::from(redirect))
        && as_port(p.get("published")) == Some(u64::from(redirect))
        && protocol_ok
}

pub(super) fn is_tun_device(dev: &Value) -> bool {
    match dev {
        Value::Object(d) => {
            let perms_ok = d.get("permissions").is_none_or(|p| {
                p.as_str()
                    .is_some_and(|s| s.chars().all(|c| "rwm".contains(c)))
            });
            d.get("source").and_then(Value::as_str) == Some(TUN)
                && d.get("target")
                    .and_then(Value::as_str)
                    .is_none_or(|t| t == TUN)
                && perms_ok
                && d.keys()
                    .all(|k| matches!(k.as_str(), "source" | "target" | "permissions"))
        }
        Value::String(s) => {
            let mut parts = s.split(':');
            parts.next() == Some(TUN)
                && parts.next().is_none_or(|t| t == TUN)
                && parts
                    .next()
                    .is_none_or(|p| p.chars().all(|c| "rwm".contains(c)))
                && parts.next().is_none()
        }
        _ => false,
    }
}

pub(super) fn sysctl_names(value: &Value) -> Vec<String> {
    match value {
        Value::Object(m) => m.keys().cloned().collect(),
        Value::Array(l) => l
            .iter()
            .map(|e| match e.as_str() {
                Some(s) => s.split('=').next().unwrap_or_default().trim().to_string(),
                None => show(e),
            })
            .collect(),
        other => vec![show(other)],
    }
}

pub(super) fn sysctl_allowed(name: &str) -> bool {
    SYSCTL_NAMES.contains(&name)
        || SYSCTL_PREFIXES.iter().any(|prefix| {
            name.strip_prefix(prefix).is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c))
            })
        })
}

/// Upper case, without a `CAP_` prefix.
pub(super) fn normalize_cap(cap: &str) -> String {
    let up = cap.trim().to_ascii_uppercase();
    up.strip_prefix("CAP_").map(str::to_string).unwrap_or(up)
}

/// Whether a value means "false" to compose. `--no-interpolate` leaves
/// YAML 1.1 words such as `no` as strings, which compose reads as booleans
/// when it loads the checked file.
pub(super) fn is_false(v: &Value) -> bool {
    match v {
        Value::Bool(b) => !b,
        Value::String(s) => matches!(s.to_ascii_lowercase().as_str(), "false" | "no" | "off"),
        _ => false,
    }
}

/// The entries of a list, or the one value that is not a list.
pub(super) fn items(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    }
}

/// How long a shown value may be before it is cut.
pub(super) const SHOW_BYTES: usize = 400;

/// A value for a message: whole when short; when long, cut after a `,` or
/// a space, never inside an image reference or a path (they hold neither).
pub(super) fn show(v: &Value) -> String {
    let s = match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    cut_at_boundary(&s, SHOW_BYTES)
}

pub(super) fn cut_at_boundary(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let head = &s[..end];
    match head.rfind([',', ' ']) {
        Some(i) if i > 0 => format!("{} ...", &head[..=i]),
        _ => format!("{head}..."),
    }
}

/// Published ports as the author wrote them (`8080:80/udp`), not compose's
/// long form.
pub(super) fn show_ports(v: &Value) -> String {
    let one = |p: &Value| -> String {
        let Some(m) = p.as_object() else {
            return show(p);
        };
        let text = |k: &str| {
            m.get(k).map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        };
        let mut out = String::new();
        if let Some(ip) = text("host_ip") {
            out.push_str(&ip);
            out.push(':');
        }
        if let Some(published) = text("published") {
            out.push_str(&published);
            out.push(':');
        }
        out.push_str(&text("target").unwrap_or_default());
        if let Some(proto) = text("protocol").filter(|p| p != "tcp") {
            out.push('/');
            out.push_str(&proto);
        }
        format!("{out:?}")
    };
    let shown: Vec<String> = items(v).into_iter().map(one).collect();
    cut_at_boundary(&shown.join(", "), SHOW_BYTES)
}

pub(super) fn quoted_list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Lexical normalisation of an absolute path: `.`, `..`, `//` and a
/// trailing `/` are resolved without looking at the disk; `..` at the root
/// stays at the root. (The manifest validator has its own; this one keeps
/// the compose check self-contained.)
pub(super) fn normalize_path_lexical(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Every bind source of a checked document, as written. The check is
/// lexical: a symlink that a container later plants inside its own data
/// dir would be followed by docker at the next `up`, so the step that
/// brings a project up should create these folders itself and refuse any
/// that is (or passes through) a symlink below the data dir.
pub fn bind_sources(doc: &Value) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Some(services) = doc.get("services").and_then(Value::as_object) else {
        return out;
    };
    for svc in services.values() {
        let Some(vols) = svc.get("volumes") else {
            continue;
        };
        for v in items(vols) {
            if v.get("type").and_then(Value::as_str) == Some("bind") {
                if let Some(src) = v.get("source").and_then(Value::as_str) {
                    out.push(PathBuf::from(src));
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The cell-network attachment
// ---------------------------------------------------------------------------

/// Makes the cell network pic-store's: its top-level entry becomes
/// `{"name": PIC_NETWORK, "external": true}` and the main service's
/// attachment `{"ipv4_address": SERVICE_IP}`, whatever the template said
/// (aliases given there are dropped). Run it on a document [`check`]
/// accepted.
pub fn finalize(mut doc: Value, ctx: &CheckContext) -> Value {
    let cell = ctx.config.network.clone();
    let main_name = ctx.container_name();
    let Some(top) = doc.as_object_mut() else {
        return doc;
    };
    let networks = top
        .entry("networks")
        .or_insert_with(|| Value::Object(Map::new()));
    let mut other_keys: Vec<String> = Vec::new();
    if let Some(n) = networks.as_object_mut() {
        other_keys = cell_network_keys(n, ctx)
            .into_iter()
            .filter(|k| *k != cell)
            .collect();
        for key in &other_keys {
            n.remove(key);
        }
        n.insert(
            cell.clone(),
            serde_json::json!({"name": cell, "external": true}),
        );
    }
    let read_only_roots = read_only_roots(ctx);
    if let Some(services) = top.get_mut("services").and_then(Value::as_object_mut) {
        for svc in services.values_mut() {
            let Some(s) = svc.as_object_mut() else {
                continue;
            };
            if let Some(vols) = s.get_mut("volumes").and_then(Value::as_array_mut) {
                force_read_only(vols, &read_only_roots);
            }
            // The docker idiom's key (`cell`) becomes the cell network's.
            if let Some(nets) = s.get_mut("networks").and_then(Value::as_object_mut) {
                for key in &other_keys {
                    if let Some(attachment) = nets.remove(key) {
                        nets.insert(cell.clone(), attachment);
                    }
                }
            }
            if s.get("container_name").and_then(Value::as_str) != Some(main_name.as_str()) {
                continue;
            }
            let nets = s
                .entry("networks")
                .or_insert_with(|| Value::Object(Map::new()));
            if !nets.is_object() {
                *nets = Value::Object(Map::new());
            }
            if let Some(n) = nets.as_object_mut() {
                n.insert(
                    cell.clone(),
                    serde_json::json!({"ipv4_address": ctx.service_ip.to_string()}),
                );
            }
        }
    }
    doc
}

/// The folders of the manifest's `"read_only": true` volumes.
pub(super) fn read_only_roots(ctx: &CheckContext) -> Vec<String> {
    ctx.manifest
        .volumes
        .iter()
        .filter(|v| v.read_only)
        .map(|v| {
            if v.mount.starts_with('/') {
                normalize_path_lexical(&v.mount)
            } else {
                normalize_path_lexical(&ctx.data_dir.join(&v.mount).display().to_string())
            }
        })
        .collect()
}

/// Binds from a read-only manifest volume are mounted read-only, whatever
/// the template says (spec §6 rule 4).
pub(super) fn force_read_only(volumes: &mut [Value], roots: &[String]) {
    for vol in volumes {
        let Some(v) = vol.as_object_mut() else {
            continue;
        };
        if v.get("type").and_then(Value::as_str) != Some("bind") {
            continue;
        }
        let Some(src) = v.get("source").and_then(Value::as_str) else {
            continue;
        };
        let norm = normalize_path_lexical(src);
        if roots
            .iter()
            .any(|r| Path::new(&norm).starts_with(Path::new(r)))
        {
            v.insert("read_only".into(), Value::Bool(true));
        }
    }
}
