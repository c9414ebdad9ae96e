//! Hostile input through every manifest field (issue 8, case 5): each
//! payload is refused with a message naming the field, or, where a field
//! is free text that never reaches generated text, accepted without any
//! generated iptables, Caddy or compose text changing shape.

use pic_store::compose::{self, Vars};
use pic_store::config::Config;
use pic_store::manifest::{self, Report, Rules, VerificationMode};
use pic_store::net;
use pic_store::state::{InstalledService, State};
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::path::Path;

const DIGEST: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn base() -> Value {
    json!({
        "id": "radicale", "name": "Radicale", "version": "3.1.8", "author": "roof",
        "image": format!("git.pic.ngo/roof/radicale:3.1.8@{DIGEST}"),
        "container_name": "cell-radicale",
        "requires": ["db"],
        "volumes": [{"mount": "collections", "target": "/data"}],
        "env": [{"name": "TZ", "value": "UTC"}],
        "iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 5232, "proto": "tcp"}],
        "subdomain": "calendar", "backend": "cell-radicale:5232",
        "extra_subdomains": ["cal"], "extra_backends": {"dav": "cell-radicale:5233"},
        "cap_add": ["CHOWN"], "provision_hook": ["/usr/bin/setup", "--quiet"]
    })
}

const TEMPLATE: &str = "services:\n  app:\n    image: ${IMAGE}\n    container_name: ${CONTAINER_NAME}\n    environment:\n      TZ: ${TZ}\n      ID: ${SERVICE_ID}\n    volumes:\n      - ${DATA_DIR}:/data\n    networks: [${NETWORK}]\n";

/// Sets one field of a manifest to a value.
type Setter = fn(&mut Value, &str);

/// Every path to a string in the manifest, and how to set it.
fn setters() -> Vec<(&'static str, Setter)> {
    vec![
        ("id", |m, v| m["id"] = json!(v)),
        ("name", |m, v| m["name"] = json!(v)),
        ("version", |m, v| m["version"] = json!(v)),
        ("author", |m, v| m["author"] = json!(v)),
        ("image", |m, v| {
            m["image"] = json!(format!("git.pic.ngo/roof/radicale{v}"))
        }),
        ("image tag", |m, v| {
            m["image"] = json!(format!("git.pic.ngo/roof/radicale:1{v}@{DIGEST}"))
        }),
        ("container_name", |m, v| {
            m["container_name"] = json!(format!("cell-radicale{v}"))
        }),
        ("requires", |m, v| m["requires"][0] = json!(v)),
        ("volumes.mount", |m, v| {
            m["volumes"][0]["mount"] = json!(format!("collections{v}"))
        }),
        ("volumes.target", |m, v| {
            m["volumes"][0]["target"] = json!(format!("/data{v}"))
        }),
        ("env.name", |m, v| {
            m["env"][0]["name"] = json!(format!("TZ{v}"))
        }),
        ("env.value", |m, v| {
            m["env"][0]["value"] = json!(format!("UTC{v}"))
        }),
        ("dest_port", |m, v| {
            m["iptables_rules"][0]["dest_port"] = json!(format!("5232{v}"))
        }),
        ("dest_ip", |m, v| {
            m["iptables_rules"][0]["dest_ip"] = json!(format!("${{SERVICE_IP}}{v}"))
        }),
        ("proto", |m, v| {
            m["iptables_rules"][0]["proto"] = json!(format!("tcp{v}"))
        }),
        ("type", |m, v| {
            m["iptables_rules"][0]["type"] = json!(format!("ACCEPT{v}"))
        }),
        ("subdomain", |m, v| {
            m["subdomain"] = json!(format!("calendar{v}"))
        }),
        ("backend", |m, v| {
            m["backend"] = json!(format!("cell-radicale:5232{v}"))
        }),
        ("backend host", |m, v| {
            m["backend"] = json!(format!("cell-radicale{v}:5232"))
        }),
        ("extra_subdomains", |m, v| {
            m["extra_subdomains"][0] = json!(format!("cal{v}"))
        }),
        ("extra_backends key", |m, v| {
            m["extra_backends"] = json!({format!("dav{v}"): "cell-radicale:5233"})
        }),
        ("extra_backends value", |m, v| {
            m["extra_backends"] = json!({"dav": format!("cell-radicale:5233{v}")})
        }),
        ("cap_add", |m, v| {
            m["cap_add"][0] = json!(format!("CHOWN{v}"))
        }),
        ("provision_hook", |m, v| {
            m["provision_hook"][0] = json!(format!("/usr/bin/setup{v}"))
        }),
        ("connectivity.mode", |m, v| {
            m["kind"] = json!("connectivity");
            m["instanceable"] = json!(true);
            m["connectivity"] = json!({"mode": format!("redirect{v}")});
        }),
    ]
}

fn payloads() -> Vec<String> {
    let mut p: Vec<String> = [
        "\n",
        "\r\n-A FORWARD -j ACCEPT",
        "\"",
        "'",
        "$(id)",
        "${HOME}",
        "`id`",
        ";",
        "{",
        "}",
        " -j ACCEPT",
        "../",
        "/../../etc",
        "\0",
        "\u{202e}",
        " ",
        "\t",
        "#",
        "\\",
        "|",
        "&",
        "<",
        ">",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    p.push("x".repeat(100_000));
    p
}

/// Shape of everything generated from a state holding this manifest: line
/// counts of the firewall plan, the Caddy file and the rendered template.
fn shape(m: &manifest::ValidManifest, config: &Config) -> (usize, usize, usize, String) {
    let mut state = State::default();
    state.services.insert(
        m.id.to_string(),
        InstalledService {
            manifest: m.get().clone(),
            ip: Some(Ipv4Addr::new(172, 20, 0, 20)),
            installed_at: 0,
            image_digest: None,
            template: None,
            stopped: false,
            settings: Default::default(),
            secrets: Default::default(),
        },
    );
    let fw: String = net::firewall::plan(&state, "eth0")
        .tables
        .iter()
        .map(|t| t.restore_text(&[], &Default::default()))
        .collect();
    let caddy = net::caddy::render(&state, "cell.local");
    let vars = Vars::for_service(m, Ipv4Addr::new(172, 20, 0, 20), config);
    let rendered = compose::render(TEMPLATE, &vars).unwrap_or_else(|e| format!("refused: {e}"));
    (
        fw.lines().count(),
        caddy.lines().count(),
        rendered.lines().count(),
        fw + &caddy + &rendered,
    )
}

#[test]
fn every_field_refuses_or_contains_every_payload() {
    let config = Config::from_lookup(|_| None).unwrap();
    let roots = [
        std::path::PathBuf::from("/srv"),
        "/mnt".into(),
        "/media".into(),
    ];
    let rules = Rules {
        image_registry: "git.pic.ngo/roof/",
        cell_dir: Path::new("/home/roof/pic"),
        state_dir: Path::new("/var/lib/pic-store"),
        mount_roots: &roots,
        verification: VerificationMode::Warn,
        taken: vec![],
    };
    let (valid, report) = manifest::validate(&base(), &rules);
    assert!(report.errors.is_empty(), "{report:?}");
    let base_shape = shape(&valid.unwrap(), &config);
    let mut refused = 0;
    let mut accepted = Vec::new();
    for (field, set) in setters() {
        for p in payloads() {
            let mut m = base();
            set(&mut m, &p);
            let (valid, Report { errors, .. }) = manifest::validate(&m, &rules);
            match valid {
                None => {
                    refused += 1;
                    assert!(!errors.is_empty());
                    // Messages stay one readable line of bounded size.
                    for e in &errors {
                        assert!(
                            !e.contains('\n') && !e.contains('\0'),
                            "{field} {p:?}: {e:?}"
                        );
                        assert!(e.len() < 2000, "{field}: message of {} bytes", e.len());
                    }
                }
                Some(v) => {
                    let (fw, caddy, compose, text) = shape(&v, &config);
                    assert_eq!(
                        (fw, caddy, compose),
                        (base_shape.0, base_shape.1, base_shape.2),
                        "{field} accepted {p:?} and changed the generated text:\n{text}"
                    );
                    for marker in ["$(id)", "`id`", "-j ACCEPT\n-A", "${HOME}"] {
                        assert!(
                            !text.contains(marker) || base_shape.3.contains(marker),
                            "{field} {p:?}"
                        );
                    }
                    let plain = p
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "/._+@=-".contains(c));
                    // An env value of rule 8's characters is a value, never parsed.
                    let space_ok =
                        field == "env.value" && manifest::env_value_problem(&p).is_none();
                    if !plain && !space_ok {
                        accepted.push(format!("{field} {:?}", pic_store::ids::truncate(&p, 12)));
                    }
                }
            }
        }
    }
    // Only free text (name, author, version) and the provision hook (an
    // argv given to `docker exec`, never a shell) may hold characters
    // outside plain names; nothing that reaches a generated file may.
    for a in &accepted {
        assert!(
            ["name ", "author ", "version ", "provision_hook "]
                .iter()
                .any(|f| a.starts_with(f)),
            "accepted outside free text: {a}"
        );
    }
    assert!(refused > 400, "only {refused} refusals");
}

#[test]
fn non_utf8_and_deep_input_is_one_clear_error() {
    let roots = [
        std::path::PathBuf::from("/srv"),
        "/mnt".into(),
        "/media".into(),
    ];
    let rules = Rules {
        image_registry: "git.pic.ngo/roof/",
        cell_dir: Path::new("/home/roof/pic"),
        state_dir: Path::new("/var/lib/pic-store"),
        mount_roots: &roots,
        verification: VerificationMode::Warn,
        taken: vec![],
    };
    let mut bytes = base().to_string().into_bytes();
    let at = bytes.iter().position(|b| *b == b'R').unwrap();
    bytes[at] = 0xff;
    let (v, r) = manifest::validate_bytes(&bytes, &rules);
    assert!(v.is_none());
    assert_eq!(r.errors.len(), 1, "{r:?}");
    let deep = "[".repeat(100_000);
    let (v, r) = manifest::validate_bytes(deep.as_bytes(), &rules);
    assert!(v.is_none() && r.errors.len() == 1);
}
