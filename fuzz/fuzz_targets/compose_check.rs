//! Fuzzes the compose side of spec §7 with arbitrary text: placeholder
//! rendering, the textual refusals, and — when the input is JSON, the shape
//! `docker compose config` prints — the allow-list check and the cell
//! network rewrite. None may panic; rendered text keeps no `$` but the `$$`
//! escape; a document the check accepts stays accepted once finalised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pic_store::compose::{self, CheckContext, InstanceCtx, Vars};
use pic_store::config::Config;
use pic_store::ids::ServiceId;
use pic_store::manifest::{EnvVar, Kind, Manifest, Volume};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::LazyLock;

const IMAGE: &str = "git.pic.ngo/roof/web:1@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const DB_IMAGE: &str = "git.pic.ngo/roof/postgres:16@sha256:60e3e4c1d9a1c2b7c9d4e3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a392";
const IP: Ipv4Addr = Ipv4Addr::new(172, 20, 0, 42);
const INSTANCE: &str = "home";
const REDIRECT_PORT: u16 = 12001;

/// The defaults of spec §2; nothing of this machine's environment.
static CONFIG: LazyLock<Config> =
    LazyLock::new(|| Config::from_lookup(|_| None).expect("the default configuration"));
static SERVICE: LazyLock<Manifest> = LazyLock::new(|| manifest(Kind::Service));
static CONNECTIVITY: LazyLock<Manifest> = LazyLock::new(|| manifest(Kind::Connectivity));

/// The manifest of `tests/compose_check.rs`: a volume, two env vars, and
/// for a connectivity service the two capabilities §6 rule 9 allows it.
fn manifest(kind: Kind) -> Manifest {
    let mut cap_add = vec!["CHOWN".to_string(), "NET_BIND_SERVICE".to_string()];
    if kind == Kind::Connectivity {
        cap_add.extend(["NET_ADMIN".to_string(), "NET_RAW".to_string()]);
    }
    Manifest {
        id: ServiceId::parse("web").expect("a service id"),
        name: "Web".into(),
        version: "1".into(),
        author: "roof".into(),
        kind,
        image: IMAGE.into(),
        container_name: "cell-web".into(),
        requires: vec![],
        volumes: vec![
            Volume {
                mount: "/srv/media".into(),
                target: "/media".into(),
                read_only: false,
            },
            Volume {
                mount: "/mnt/music".into(),
                target: "/music".into(),
                read_only: true,
            },
        ],
        env: vec![
            EnvVar {
                name: "TZ".into(),
                value: "UTC".into(),
            },
            EnvVar {
                name: "UPSTREAM".into(),
                value: "socks5://10.0.0.1:1080".into(),
            },
        ],
        iptables_rules: vec![],
        routes: vec![],
        cap_add,
        provision_hook: None,
        instanceable: kind == Kind::Connectivity,
        connectivity: None,
        helper_images: [("db".to_string(), DB_IMAGE.to_string())].into(),
        settings: vec![],
        extra: BTreeMap::new(),
    }
}

fn service_ctx() -> CheckContext<'static> {
    CheckContext {
        manifest: &SERVICE,
        config: &CONFIG,
        data_dir: compose::data_dir(&CONFIG, "web", None),
        service_ip: IP,
        instance: None,
    }
}

fn connectivity_ctx() -> CheckContext<'static> {
    CheckContext {
        manifest: &CONNECTIVITY,
        ..service_ctx()
    }
}

fn instance_ctx() -> CheckContext<'static> {
    CheckContext {
        manifest: &CONNECTIVITY,
        config: &CONFIG,
        data_dir: compose::data_dir(&CONFIG, "web", Some(INSTANCE)),
        service_ip: IP,
        instance: Some(InstanceCtx {
            id: INSTANCE.into(),
            redirect_port: REDIRECT_PORT,
        }),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let service_vars = Vars::for_service(&SERVICE, IP, &CONFIG);
    let instance_vars = Vars::for_instance(
        &CONNECTIVITY,
        INSTANCE,
        IP,
        REDIRECT_PORT,
        0x101,
        101,
        &BTreeMap::new(),
        &CONFIG,
    );
    let mut rendered = None;
    for vars in [&service_vars, &instance_vars] {
        if let Ok(r) = compose::render(text, vars) {
            only_escaped_dollars(&r);
            rendered = Some(r);
        }
    }
    // The textual check is the slow part (it compiles its patterns on each
    // call), so it reads one text per input: what `prepare` would read.
    let _ = compose::textual_refusals(rendered.as_deref().unwrap_or(text));

    if let Ok(doc) = serde_json::from_str::<Value>(text) {
        for ctx in [service_ctx(), connectivity_ctx(), instance_ctx()] {
            let _ = compose::bind_sources(&doc);
            if compose::check(&doc, &ctx).is_empty() {
                let done = compose::finalize(doc.clone(), &ctx);
                let errors = compose::check(&done, &ctx);
                assert!(
                    errors.is_empty(),
                    "an accepted document is refused once finalised: {errors:?}"
                );
            }
        }
    }
});

/// Spec §7: after substitution any `$` other than the escape `$$` is an
/// error, so rendered text holds `$` only in pairs (and never a NUL).
fn only_escaped_dollars(rendered: &str) {
    assert!(!rendered.contains('\0'), "rendered text holds a NUL");
    let b = rendered.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            assert!(
                b.get(i + 1) == Some(&b'$'),
                "a lone `$` survived rendering at byte {i}: {:?}",
                pic_store::ids::truncate(&rendered[i..], 40)
            );
            i += 2;
        } else {
            i += 1;
        }
    }
}
