//! Fuzzes the manifest validator (spec §6) with arbitrary bytes: it must
//! never panic, must hand back a manifest exactly when it reports no error,
//! and every manifest it accepts must keep the promises of §6 that later
//! become iptables, Caddy and compose text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pic_store::manifest::{self, Kind, Manifest, Rules, Taken, VerificationMode};
use std::path::{Path, PathBuf};

const REGISTRY: &str = "git.pic.ngo/roof/";
const CELL_DIR: &str = "/home/roof/pic";
const STATE_DIR: &str = "/var/lib/pic-store";

/// `PIC_HOST_MOUNT_ROOTS`'s default.
fn mount_roots() -> Vec<PathBuf> {
    ["/srv", "/mnt", "/media"].map(PathBuf::from).to_vec()
}

/// Another installed service, so rules 3 and 6 have something to collide with.
fn taken() -> Taken {
    Taken {
        id: "radicale".into(),
        container_name: "cell-radicale".into(),
        subdomains: vec!["calendar".into()],
    }
}

fuzz_target!(|data: &[u8]| {
    // The length picks the mode, so one input always meets the same rules.
    let verification = match data.len() % 3 {
        0 => VerificationMode::Off,
        1 => VerificationMode::Warn,
        _ => VerificationMode::Enforce,
    };
    let roots = mount_roots();
    let rules = Rules {
        image_registry: REGISTRY,
        cell_dir: Path::new(CELL_DIR),
        state_dir: Path::new(STATE_DIR),
        mount_roots: &roots,
        verification,
        taken: vec![taken()],
    };
    let (valid, report) = manifest::validate_bytes(data, &rules);
    assert_eq!(
        valid.is_some(),
        !report.has_errors(),
        "a manifest comes back exactly when there is no error: {report:?}"
    );
    for line in report.errors.iter().chain(&report.warnings) {
        assert!(
            !line.contains(['\n', '\r', '\0']),
            "a report line holds a raw line break or NUL: {line:?}"
        );
    }
    if let Some(m) = valid {
        keeps_the_rules(&m, verification);
    }
});

/// The rules of spec §6 whose breach would reach generated text.
fn keeps_the_rules(m: &Manifest, verification: VerificationMode) {
    let connectivity = m.kind == Kind::Connectivity;
    assert!(
        is_container_name(&m.container_name),
        "{:?}",
        m.container_name
    );
    assert!(!manifest::CORE_CONTAINERS.contains(&m.container_name.as_str()));
    let other = taken().container_name;
    assert!(
        m.container_name != other
            && !m.container_name.starts_with(&format!("{other}-"))
            && !other.starts_with(&format!("{}-", m.container_name)),
        "container name {:?} collides with {other:?}",
        m.container_name
    );
    image_is_allowed(&m.image, verification);
    for v in &m.volumes {
        assert!(!v.mount.contains("docker.sock"), "{:?}", v.mount);
        if v.mount.starts_with('/') {
            let p = manifest::normalize_path(&v.mount);
            let roots = mount_roots();
            let places = manifest::HostPlaces {
                roots: &roots,
                cell_dir: Path::new(CELL_DIR),
                state_dir: Path::new(STATE_DIR),
            };
            let access = if v.read_only {
                manifest::Access::ReadOnly
            } else {
                manifest::Access::ReadWrite
            };
            assert!(
                manifest::host_path_problem(&p, access, &places).is_none(),
                "forbidden mount {:?} accepted",
                v.mount
            );
            // The allow-list: under a root by whole components, or a
            // time file read-only.
            let under_root = roots.iter().any(|r| Path::new(&p).starts_with(r));
            let time_file = manifest::TIME_FILES.contains(&p.as_str()) && v.read_only;
            assert!(
                under_root || time_file,
                "mount {:?} is outside the roots",
                v.mount
            );
        } else {
            // `..` as a path component: `st..e` is a plain name.
            assert!(
                !v.mount.split('/').any(|c| c == ".."),
                "relative mount {:?} climbs out",
                v.mount
            );
        }
    }
    for (subdomain, backend) in &m.routes {
        assert!(is_subdomain(subdomain), "subdomain {subdomain:?}");
        assert!(!manifest::RESERVED_SUBDOMAINS.contains(&subdomain.as_str()));
        assert!(
            !taken().subdomains.contains(subdomain),
            "{subdomain:?} is taken"
        );
        assert!(is_backend(backend), "backend {backend:?}");
        assert!(
            !reaches_the_cell(backend),
            "backend {backend:?} reaches the cell"
        );
    }
    assert!(
        m.helper_images.len() <= 8,
        "{} helper images",
        m.helper_images.len()
    );
    for (key, image) in &m.helper_images {
        assert!(
            key.len() <= 16 && key.starts_with(|c: char| c.is_ascii_lowercase()),
            "helper key {key:?}"
        );
        image_is_allowed(image, verification);
    }
    assert!(m.settings.len() <= 32, "{} settings", m.settings.len());
    for s in &m.settings {
        assert!(is_env_name(&s.name), "setting name {:?}", s.name);
        assert!(
            !m.env.iter().any(|e| e.name == s.name),
            "setting {:?} is an env name",
            s.name
        );
        if let Some(d) = &s.default {
            assert!(is_env_value(d), "setting default {d:?}");
        }
        if let Some(n) = s.generate {
            assert!((16..=64).contains(&n), "generate {n}");
        }
    }
    for e in &m.env {
        assert!(is_env_name(&e.name), "env name {:?}", e.name);
        assert!(is_env_value(&e.value), "env value {:?}", e.value);
    }
    for cap in &m.cap_add {
        let allowed = [
            "CHOWN",
            "DAC_OVERRIDE",
            "FOWNER",
            "SETUID",
            "SETGID",
            "NET_BIND_SERVICE",
        ]
        .contains(&cap.as_str())
            || (connectivity && ["NET_ADMIN", "NET_RAW"].contains(&cap.as_str()));
        assert!(allowed, "capability {cap:?} accepted for {:?}", m.kind);
    }
    if let Some(hook) = &m.provision_hook {
        assert!(
            (1..=32).contains(&hook.len()),
            "hook of {} args",
            hook.len()
        );
        assert!(hook[0].starts_with('/'), "hook program {:?}", hook[0]);
        for arg in hook {
            assert!(
                arg.len() <= 1024 && !arg.contains(['\0', '\n']),
                "hook arg {arg:?}"
            );
        }
    }
    if m.instanceable {
        assert!(
            connectivity && m.connectivity.is_some(),
            "instanceable {:?}",
            m.kind
        );
    }
    for p in &m.iptables_rules {
        assert!(p.dest_port >= 1);
    }
}

/// Rule 2: the store's registry or a trusted vendor; pinned under enforce.
fn image_is_allowed(image: &str, verification: VerificationMode) {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let repo = match name[last_slash..].rfind(':') {
        Some(i) => &name[..last_slash + i],
        None => name,
    };
    assert!(
        repo.starts_with(REGISTRY) || manifest::TRUSTED_VENDOR_IMAGES.contains(&repo),
        "image {image:?} from an untrusted repository"
    );
    if let Some(d) = digest {
        let hex = d.strip_prefix("sha256:").unwrap_or("");
        assert!(
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "digest {d:?}"
        );
    } else {
        assert!(
            verification != VerificationMode::Enforce,
            "unpinned {image:?} under enforce"
        );
    }
}

/// `^[a-z0-9][a-z0-9_.-]{0,62}$`
fn is_container_name(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c))
}

/// `^[a-z][a-z0-9-]{0,30}$`
fn is_subdomain(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=31).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// `^[A-Za-z0-9._-]+:\d{1,5}$`, port 1–65535.
fn is_backend(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
        && (1..=5).contains(&port.len())
        && port.bytes().all(|c| c.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p))
}

/// Rule 7: a core container, localhost, the docker host, or a loopback,
/// unspecified or link-local address.
fn reaches_the_cell(backend: &str) -> bool {
    let host = backend.rsplit_once(':').map_or(backend, |(h, _)| h);
    let name = host.to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    let ip = name.parse::<std::net::Ipv4Addr>().ok();
    manifest::CORE_CONTAINERS.contains(&name)
        || name == "localhost"
        || name.ends_with(".localhost")
        || name.ends_with("docker.internal")
        || ip.is_some_and(|ip| ip.is_loopback() || ip.is_unspecified() || ip.is_link_local())
}

/// `^[A-Z_][A-Z0-9_]{0,63}$`
fn is_env_name(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=64).contains(&b.len())
        && (b[0].is_ascii_uppercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

/// `^[A-Za-z0-9._@:/+\-= ]*$`
fn is_env_value(s: &str) -> bool {
    s.bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"._@:/+-= ".contains(&c))
}
