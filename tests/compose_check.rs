//! The compose check against the real `docker compose config`: every
//! template of `tests/compose_corpus/` (styles of real app stores) must be
//! accepted (`ok-*`) or refused (`bad-*`), and nothing of the host — an
//! environment variable, a file — may reach a checked compose file by any
//! route compose offers. Needs the Compose plugin, not a docker engine.

use pic_store::compose::{self, CheckContext, InstanceCtx, Project, Vars};
use pic_store::config::Config;
use pic_store::error::Error;
use pic_store::host::{Cmd, Host, RealHost};
use pic_store::ids::ServiceId;
use pic_store::manifest::{EnvVar, Kind, Manifest, Volume};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

const IMAGE: &str = "127.0.0.1:5000/roof/web:1@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const IP: Ipv4Addr = Ipv4Addr::new(172, 20, 0, 42);
const INSTANCE: &str = "home";
const REDIRECT_PORT: u16 = 12001;

/// How a corpus file is checked, from its first line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Context {
    /// `kind: service` (the default).
    Service,
    /// `# context: connectivity`: a connectivity service itself.
    Connectivity,
    /// `# context: instance`: connection instance `home` of a connectivity
    /// service, redirect port 12001.
    Instance,
}

fn context_of(text: &str) -> Context {
    match text.lines().next().map(str::trim) {
        Some("# context: instance") => Context::Instance,
        Some("# context: connectivity") => Context::Connectivity,
        _ => Context::Service,
    }
}

/// The shared test manifest. Connectivity contexts also get the two
/// capabilities §6 rule 9 allows them.
fn manifest(context: Context) -> Manifest {
    let connectivity = context != Context::Service;
    let mut cap_add = vec!["CHOWN".to_string(), "NET_BIND_SERVICE".to_string()];
    if connectivity {
        cap_add.extend(["NET_ADMIN".to_string(), "NET_RAW".to_string()]);
    }
    Manifest {
        id: ServiceId::parse("web").unwrap(),
        name: "Web".into(),
        version: "1".into(),
        author: "roof".into(),
        kind: if connectivity {
            Kind::Connectivity
        } else {
            Kind::Service
        },
        image: IMAGE.into(),
        container_name: "cell-web".into(),
        requires: vec![],
        volumes: vec![Volume {
            mount: "/srv/media".into(),
            target: "/media".into(),
            read_only: false,
        }],
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
        instanceable: connectivity,
        connectivity: None,
        helper_images: BTreeMap::new(),
        settings: vec![],
        extra: BTreeMap::new(),
    }
}

fn temp_state(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pic-compose-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(state: &Path) -> Config {
    let state = state.display().to_string();
    Config::from_lookup(|k| match k {
        "PIC_STATE_DIR" => Some(state.clone()),
        "PATH" => std::env::var("PATH").ok(),
        _ => None,
    })
    .unwrap()
}

/// Whether `docker compose` can run here. Under `CI=true` its absence is a
/// failure; elsewhere the test is skipped, loudly.
fn compose_available(config: &Config) -> bool {
    let ok = RealHost
        .run(&Cmd::new(&config.docker).args(["compose", "version"]))
        .is_ok();
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("`docker compose version` failed and CI=true: the Compose plugin is required");
        }
        eprintln!("\n*** SKIPPED: `docker compose version` failed; install the Compose plugin to run the compose corpus ***\n");
    }
    ok
}

struct Case<'a> {
    manifest: &'a Manifest,
    config: &'a Config,
    context: Context,
}

impl Case<'_> {
    fn vars(&self) -> Vars {
        match self.context {
            Context::Instance => Vars::for_instance(
                self.manifest,
                INSTANCE,
                IP,
                REDIRECT_PORT,
                0x101,
                101,
                &BTreeMap::new(),
                self.config,
            ),
            _ => Vars::for_service(self.manifest, IP, self.config),
        }
    }

    fn check_context(&self) -> CheckContext<'_> {
        let instance = (self.context == Context::Instance).then(|| InstanceCtx {
            id: INSTANCE.into(),
            redirect_port: REDIRECT_PORT,
        });
        CheckContext {
            manifest: self.manifest,
            config: self.config,
            data_dir: compose::data_dir(
                self.config,
                "web",
                instance.as_ref().map(|i| i.id.as_str()),
            ),
            service_ip: IP,
            instance,
        }
    }

    fn project(&self) -> String {
        match self.context {
            Context::Instance => compose::project_name("web", Some(INSTANCE)),
            _ => compose::project_name("web", None),
        }
    }

    /// render → prepare.
    fn run(&self, template: &str) -> Result<Value, Error> {
        let rendered = compose::render(template, &self.vars())?;
        compose::prepare(
            &RealHost,
            self.config,
            &self.project(),
            &rendered,
            &self.check_context(),
        )
    }
}

/// A checked file must load the way `up` will load it (interpolation on),
/// and keep the cell network pic-store's.
fn reload_checked(config: &Config, project: &str, doc: &Value, main: &str) -> Result<(), String> {
    let path = compose::write_checked(config, project, doc).map_err(|e| e.to_string())?;
    let cmd = compose::compose_cmd(
        config,
        &Project {
            name: project.into(),
            file: path,
        },
    )
    .args(["config", "--format", "json"]);
    let out = RealHost.run(&cmd).map_err(|e| e.to_string())?;
    let back: Value = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
    let services = back["services"].as_object().ok_or("no services")?;
    let (_, svc) = services
        .iter()
        .find(|(_, s)| s["container_name"] == main)
        .ok_or("main service lost")?;
    let ip = &svc["networks"]["cell-network"]["ipv4_address"];
    if ip != &Value::from(IP.to_string()) {
        return Err(format!("main service has cell-network address {ip}"));
    }
    if back["networks"]["cell-network"]["external"] != Value::Bool(true) {
        return Err("cell-network is not external".into());
    }
    Ok(())
}

#[test]
fn corpus_templates_are_accepted_or_refused_as_named() {
    let state = temp_state("corpus");
    let config = config(&state);
    if !compose_available(&config) {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compose_corpus");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yml"))
        .collect();
    names.sort();
    let (ok_count, bad_count) = (
        names.iter().filter(|n| n.starts_with("ok-")).count(),
        names.iter().filter(|n| n.starts_with("bad-")).count(),
    );
    assert!(
        ok_count + bad_count == names.len(),
        "every file is ok-* or bad-*"
    );
    assert!(names.len() >= 45, "the corpus has {} files", names.len());

    let mut failures = Vec::new();
    for name in &names {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let context = context_of(&text);
        let manifest = manifest(context);
        let case = Case {
            manifest: &manifest,
            config: &config,
            context,
        };
        let result = case.run(&text);
        match (name.starts_with("ok-"), result) {
            (true, Ok(doc)) => {
                let main = case.vars().container_name().to_string();
                if let Err(e) = reload_checked(&config, &case.project(), &doc, &main) {
                    failures.push(format!(
                        "{name}: accepted, but the checked file is wrong: {e}"
                    ));
                }
            }
            (true, Err(e)) => {
                failures.push(format!("{name}: should be accepted, was refused: {e}"))
            }
            (false, Ok(doc)) => failures.push(format!(
                "{name}: should be refused, was accepted as {}",
                serde_json::to_string(&doc).unwrap_or_default()
            )),
            (false, Err(Error::Invalid { errors, .. })) => {
                assert!(!errors.is_empty(), "{name}: a refusal lists its reasons");
                eprintln!("{name}: refused: {}", errors.join(" | "));
            }
            (false, Err(e)) => failures.push(format!(
                "{name}: should be refused as invalid, failed with: {e}"
            )),
        }
    }
    let _ = std::fs::remove_dir_all(&state);
    assert!(
        failures.is_empty(),
        "{} of {} corpus files misjudged:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
}

const SECRET_VALUE: &str = "pic-secret-env-5d1f0c7e";
const SECRET_FILE: &str = "pic-secret-file-93b2a4e1";
const SECRET_DOTENV: &str = "pic-secret-dotenv-07c4d9aa";

fn assert_no_secret(label: &str, text: &str) {
    for s in [SECRET_VALUE, SECRET_FILE, SECRET_DOTENV] {
        assert!(!text.contains(s), "{label}: the secret {s} reached: {text}");
    }
}

#[test]
fn nothing_of_the_host_reaches_a_checked_file() {
    let state = temp_state("secrets");
    let config = config(&state);
    if !compose_available(&config) {
        return;
    }
    std::env::set_var("SECRET_VAR", SECRET_VALUE);
    let host_dir = state.join("host");
    std::fs::create_dir_all(&host_dir).unwrap();
    let secret_file = host_dir.join("secret.env");
    std::fs::write(
        &secret_file,
        format!("SECRET_VAR={SECRET_FILE}\nOTHER={SECRET_FILE}\n"),
    )
    .unwrap();
    let other_compose = host_dir.join("other.yml");
    std::fs::write(
        &other_compose,
        format!(
            "services:\n  base:\n    image: x\n    environment:\n      LEAK: {SECRET_FILE}\n    labels:\n      leak: {SECRET_FILE}\n"
        ),
    )
    .unwrap();
    let f = secret_file.display().to_string();
    let o = other_compose.display().to_string();

    let head = "services:\n  web:\n    image: ${IMAGE}\n    container_name: ${CONTAINER_NAME}\n    networks: [${NETWORK}]\n";
    let tail = "networks:\n  ${NETWORK}:\n    external: true\n";
    let routes: Vec<(&str, String)> = vec![
        (
            "braced variable",
            format!("{head}    environment:\n      A: ${{SECRET_VAR}}\n{tail}"),
        ),
        (
            "bare variable",
            format!("{head}    environment:\n      A: $SECRET_VAR\n{tail}"),
        ),
        (
            "default",
            format!("{head}    environment:\n      A: ${{SECRET_VAR:-x}}\n{tail}"),
        ),
        (
            "copied variable (list)",
            format!("{head}    environment: [SECRET_VAR]\n{tail}"),
        ),
        (
            "copied variable (map)",
            format!("{head}    environment:\n      SECRET_VAR:\n{tail}"),
        ),
        ("env_file", format!("{head}    env_file: {f}\n{tail}")),
        (
            "env_file long",
            format!("{head}    env_file:\n      - path: {f}\n        format: raw\n{tail}"),
        ),
        ("label_file", format!("{head}    label_file: {f}\n{tail}")),
        (
            "extends",
            format!("{head}    extends:\n      file: {o}\n      service: base\n{tail}"),
        ),
        ("include", format!("include:\n  - {o}\n{head}{tail}")),
        (
            "escaped",
            format!("{head}    environment:\n      A: $$SECRET_VAR\n{tail}"),
        ),
        (
            "nothing referenced",
            format!("{head}    environment:\n      A: plain\n{tail}"),
        ),
        (
            "secret from ~",
            format!("{head}    volumes:\n      - ~/.env:/x\n{tail}"),
        ),
    ];

    let manifest = manifest(Context::Service);
    let case = Case {
        manifest: &manifest,
        config: &config,
        context: Context::Service,
    };
    // The whole pipeline: each route is refused, or the result is clean.
    for (label, template) in &routes {
        match case.run(template) {
            Ok(doc) => {
                let text = serde_json::to_string(&doc).unwrap();
                assert_no_secret(label, &text);
                let path = compose::write_checked(&config, "pic-web", &doc).unwrap();
                assert_no_secret(label, &std::fs::read_to_string(path).unwrap());
            }
            Err(e) => {
                assert_no_secret(label, &e.to_string());
                eprintln!("{label}: refused: {e}");
            }
        }
    }

    // The compose flags alone, without pic-store's textual guards: a work
    // folder holding a `.env`, host variables, env and label files.
    let work = state.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(
        work.join(".env"),
        format!("SECRET_VAR={SECRET_DOTENV}\nIMAGE={SECRET_DOTENV}\n"),
    )
    .unwrap();
    let raw = [
        "services:\n  web:\n    image: ${IMAGE}\n    environment:\n      A: ${SECRET_VAR}\n      B: $SECRET_VAR\n      C: ${SECRET_VAR:-x}\n".to_string(),
        "services:\n  web:\n    image: x\n    environment: [SECRET_VAR]\n".to_string(),
        format!("services:\n  web:\n    image: x\n    env_file: {f}\n    label_file: {f}\n"),
        "services:\n  web:\n    image: x\n    env_file: .env\n    label_file: .env\n".to_string(),
    ];
    for (i, text) in raw.iter().enumerate() {
        let doc = compose::convert(&RealHost, &config, "pic-raw", text, &work).unwrap();
        assert_no_secret(&format!("raw template {i}"), &doc.to_string());
    }
    assert!(
        !work.join("pic-raw.yml").exists(),
        "convert removes its file"
    );
    let _ = std::fs::remove_dir_all(&state);
}
