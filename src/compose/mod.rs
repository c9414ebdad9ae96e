//! Compose rendering and checking (spec §7): a store template becomes a
//! compose file pic-store is willing to bring up.
//!
//! The pipeline is [`render`] (full-line comments emptied, textual `${NAME}`
//! substitution, any other `$` refused) → [`textual_refusals`] (keys that
//! make compose read host files) → [`convert`] (`docker compose config`, the only YAML parser involved)
//! → [`check`] (the allow-list, every problem listed, with what is allowed
//! instead) → [`finalize`] (the cell-network attachment is pic-store's,
//! whatever the template said; read-only manifest volumes mounted `:ro`).
//! [`prepare`] runs the whole chain; [`write_checked`] stores the result
//! where every later compose call ([`compose_cmd`]) reads it.
//!
//! Three files, one job each: this one renders ([`Vars`], [`render`],
//! [`textual_refusals`]) and runs the chain ([`prepare`], [`write_checked`]);
//! `allow_list.rs` checks ([`check`], [`finalize`]), pure; `run.rs` is the
//! only one that talks to docker ([`Project`], [`compose_cmd`], [`convert`]).
//!
//! Everything here is pure except [`convert`] (one `docker compose config`
//! through [`Host`]) and [`write_checked`]. Unit tests are at the bottom;
//! `tests/compose_check.rs` runs the real compose over `tests/compose_corpus/`,
//! and `tests/cli.rs` runs `pic-store validate` over `tests/compose_corpus/apps/`.

use crate::config::Config;
use crate::error::{stderr_tail, Error, Result};
use crate::files;
use crate::host::{Cmd, Env, Host, SAFE_PATH};
use crate::ids::truncate;
use crate::manifest::{Kind, Manifest};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod allow_list;
mod run;
pub use allow_list::*;
pub use run::*;

/// Templates larger than this are refused before anything else happens.
pub const MAX_TEMPLATE: usize = 256 * 1024;

/// `HOME` of every compose call: `~` in a template must not reach the
/// caller's home, and docker must not pick up its `config.json` either.
pub const COMPOSE_HOME: &str = "/nonexistent";

/// How long `docker compose config` may take.
const CONVERT_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Placeholder values
// ---------------------------------------------------------------------------

/// The values a template's `${NAME}` placeholders are replaced with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vars {
    values: BTreeMap<String, String>,
    container_name: String,
    data_dir: PathBuf,
}

/// The data folder of a service, `<state_dir>/data/<id>`, or of one of its
/// connection instances, `<state_dir>/data/<id>/<instance>`.
pub fn data_dir(config: &Config, service_id: &str, instance: Option<&str>) -> PathBuf {
    let dir = config.data_root().join(service_id);
    match instance {
        Some(i) => dir.join(i),
        None => dir,
    }
}

/// `pic-<id>` for a service, `pic-<id>-<instance>` for a connection instance.
pub fn project_name(service_id: &str, instance: Option<&str>) -> String {
    match instance {
        Some(i) => format!("pic-{service_id}-{i}"),
        None => format!("pic-{service_id}"),
    }
}

impl Vars {
    /// The values for an installed service. `DATA_DIR` is
    /// `<state_dir>/data/<id>`.
    pub fn for_service(manifest: &Manifest, ip: Ipv4Addr, config: &Config) -> Vars {
        let data_dir = data_dir(config, manifest.id.as_str(), None);
        let mut values: BTreeMap<String, String> = manifest
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        // A setting's default stands until the owner's value is given
        // (`with_settings`); one without a default stays unfilled, so a
        // template that needs it is refused rather than given "".
        for setting in &manifest.settings {
            if let Some(d) = &setting.default {
                values.insert(setting.name.clone(), d.clone());
            }
        }
        for (key, image) in &manifest.helper_images {
            values.insert(crate::manifest::helper_placeholder(key), image.clone());
        }
        // The built-in names win over a manifest env var of the same name.
        let builtins = [
            ("SERVICE_ID", manifest.id.to_string()),
            ("SERVICE_IP", ip.to_string()),
            ("CONTAINER_NAME", manifest.container_name.clone()),
            ("IMAGE", manifest.image.clone()),
            ("DATA_DIR", data_dir.display().to_string()),
            ("NETWORK", config.network.clone()),
            ("CELL_DOMAIN", config.cell_domain.clone()),
        ];
        for (k, v) in builtins {
            values.insert(k.to_string(), v);
        }
        Vars {
            values,
            container_name: manifest.container_name.clone(),
            data_dir,
        }
    }

    /// The values for one connection instance. `CONTAINER_NAME` is
    /// `<container_name>-<instance_id>` and `DATA_DIR` is
    /// `<state_dir>/data/<id>/<instance_id>`, so instances never share a
    /// folder. `env_overrides` replace the manifest's env values; the caller
    /// has checked them (names the manifest declares, values of §6 rule 8),
    /// and names the manifest does not declare are ignored.
    #[allow(clippy::too_many_arguments)]
    pub fn for_instance(
        manifest: &Manifest,
        instance_id: &str,
        ip: Ipv4Addr,
        redirect_port: u16,
        fwmark: u32,
        table: u32,
        env_overrides: &BTreeMap<String, String>,
        config: &Config,
    ) -> Vars {
        let mut vars = Vars::for_service(manifest, ip, config);
        for e in &manifest.env {
            if let Some(v) = env_overrides.get(&e.name) {
                if !is_builtin(&e.name) {
                    vars.values.insert(e.name.clone(), v.clone());
                }
            }
        }
        let container_name = format!("{}-{instance_id}", manifest.container_name);
        let data_dir = data_dir(config, manifest.id.as_str(), Some(instance_id));
        let instance_values = [
            ("CONTAINER_NAME", container_name.clone()),
            ("DATA_DIR", data_dir.display().to_string()),
            ("INSTANCE_ID", instance_id.to_string()),
            ("REDIRECT_PORT", redirect_port.to_string()),
            ("FWMARK", format!("{fwmark:#x}")),
            ("ROUTE_TABLE", table.to_string()),
        ];
        for (k, v) in instance_values {
            vars.values.insert(k.to_string(), v);
        }
        vars.container_name = container_name;
        vars.data_dir = data_dir;
        vars
    }

    /// Fills the settings' placeholders with `values` (spec §6 rule 15);
    /// names that are not settings of `manifest` are ignored. The caller
    /// has checked the values.
    pub fn with_settings(mut self, manifest: &Manifest, values: &BTreeMap<String, String>) -> Vars {
        for setting in &manifest.settings {
            if let Some(v) = values.get(&setting.name) {
                self.values.insert(setting.name.clone(), v.clone());
            }
        }
        self
    }

    /// Sample values for every setting, as `validate` checks a template
    /// with: the default, else a value of the setting's type.
    pub fn sample_settings(manifest: &Manifest) -> BTreeMap<String, String> {
        use crate::manifest::SettingType;
        manifest
            .settings
            .iter()
            .map(|s| {
                let sample = match (&s.default, s.kind) {
                    (Some(d), _) => d.clone(),
                    (None, SettingType::Number) => "1".into(),
                    (None, SettingType::Boolean) => "true".into(),
                    (None, SettingType::Choice) => s.choices.first().cloned().unwrap_or_default(),
                    (None, SettingType::Secret) => {
                        "s".repeat(usize::from(s.generate.unwrap_or(16)))
                    }
                    (None, SettingType::String) => "sample".into(),
                };
                (s.name.clone(), sample)
            })
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The main container's name (`CONTAINER_NAME`).
    pub fn container_name(&self) -> &str {
        &self.container_name
    }

    /// The data folder (`DATA_DIR`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

fn is_builtin(name: &str) -> bool {
    matches!(
        name,
        "SERVICE_ID"
            | "SERVICE_IP"
            | "CONTAINER_NAME"
            | "IMAGE"
            | "DATA_DIR"
            | "NETWORK"
            | "CELL_DOMAIN"
            | "INSTANCE_ID"
            | "REDIRECT_PORT"
            | "FWMARK"
            | "ROUTE_TABLE"
    )
}

// ---------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------

/// Empties full-line comments (lines whose first non-blank character is
/// `#`), then replaces every `${NAME}` placeholder with its value. A `#`
/// after a value is left to compose.
/// `$$` (compose's escape for a literal `$`) is kept as `$$`. Every other
/// `$` — bare `$VAR`, `${VAR:-default}`, an unknown `${VAR}`, a lone `$` —
/// is an error naming its line: compose would fill it from the host.
pub fn render(template: &str, vars: &Vars) -> Result<String> {
    let what = "compose template";
    if template.len() > MAX_TEMPLATE {
        return Err(Error::invalid(
            what,
            vec![format!(
                "is {} bytes, more than the limit of {} KiB",
                template.len(),
                MAX_TEMPLATE / 1024
            )],
        ));
    }
    let mut errors = Vec::new();
    if template.contains('\0') {
        errors.push("contains a NUL character".to_string());
    }
    let mut out = String::with_capacity(template.len() + 256);
    for (n, line) in template.split_inclusive('\n').enumerate() {
        if is_comment_line(line) {
            // An empty line keeps the line numbers of later messages.
            let ending = if line.ends_with("\r\n") { "\r\n" } else { "\n" };
            if line.ends_with('\n') {
                out.push_str(ending);
            }
            continue;
        }
        render_line(line, n + 1, vars, &mut out, &mut errors);
    }
    if errors.is_empty() {
        // Values never hold `$` (checked above), so this only guards the
        // guard: nothing but `$$` may reach compose.
        errors.extend(leftover_dollars(&out));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(Error::invalid(what, errors))
    }
}

/// A line whose first non-blank character is `#` (spec §7): dropped before
/// rendering, so a `$` in a comment is never an error.
fn is_comment_line(line: &str) -> bool {
    line.trim_start_matches([' ', '\t']).starts_with('#')
}

fn render_line(line: &str, n: usize, vars: &Vars, out: &mut String, errors: &mut Vec<String>) {
    let mut rest = line;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push_str("$$");
            rest = tail;
            continue;
        }
        if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                errors.push(format!(
                    "line {n}: {:?} has no closing }}",
                    truncate(rest[pos..].trim_end(), 40)
                ));
                out.push_str(&rest[pos..]);
                rest = "";
                continue;
            };
            let name = &body[..end];
            let whole = &rest[pos..pos + end + 3];
            if !is_var_name(name) {
                errors.push(format!(
                    "line {n}: {}: only plain ${{NAME}} placeholders are allowed, \
                     without defaults or modifiers (write $$ for a literal $)",
                    truncate(whole, 60)
                ));
                out.push_str(whole);
            } else {
                match vars.get(name) {
                    Some(v) => match unsafe_value(v) {
                        None => out.push_str(v),
                        Some(why) => {
                            errors.push(format!("line {n}: the value of ${{{name}}} {why}"));
                            out.push_str(whole);
                        }
                    },
                    None => {
                        errors.push(format!(
                            "line {n}: {} is not a placeholder pic-store fills",
                            truncate(whole, 60)
                        ));
                        out.push_str(whole);
                    }
                }
            }
            rest = &body[end + 1..];
            continue;
        }
        errors.push(dollar_error(n, after));
        out.push('$');
        rest = after;
    }
    out.push_str(rest);
}

fn dollar_error(n: usize, after: &str) -> String {
    let word: String = after
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(40)
        .collect();
    if word.is_empty() {
        format!("line {n}: a lone $ (write $$ for a literal $)")
    } else {
        format!(
            "line {n}: ${word}: a bare variable would be read from the host \
             (write ${{NAME}} for a placeholder, $$ for a literal $)"
        )
    }
}

/// Every `$` of `text` that is not half of a `$$` escape, by line.
fn leftover_dollars(text: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                rest = tail;
            } else {
                errors.push(dollar_error(n + 1, after));
                rest = after;
            }
        }
    }
    errors
}

fn is_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why a placeholder value could change the YAML around it, if it could.
/// Every legitimate value (ids, addresses, image references, paths, env
/// values of §6 rule 8) passes.
fn unsafe_value(v: &str) -> Option<&'static str> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "._@:/+-= ~".contains(c);
    if v.chars().all(ok) {
        None
    } else {
        Some("holds a character that is not allowed in a template value")
    }
}

// ---------------------------------------------------------------------------
// Textual refusals
// ---------------------------------------------------------------------------

/// The patterns of [`textual_refusals`], compiled once.
static TEXT_CHECKS: std::sync::LazyLock<Option<Vec<(regex_lite::Regex, &'static str)>>> =
    std::sync::LazyLock::new(|| {
        let checks: [(&str, &str); 7] = [
            (
                r#"(?i)\b(include|extends|env_file|label_file)\b["']?[ \t]*:"#,
                "key",
            ),
            (
                r#"(^|[\s{,\[])\*[^\s,\[\]{}:]+[ \t]*:([ \t]|$|[,\]}])"#,
                "alias",
            ),
            (r#"(^|[\s{,\[])\?([ \t]|$)"#, "explicit"),
            (r#"\\[xuU]"#, "escape"),
            (r#"!!|!<"#, "tag"),
            (r#"^%"#, "directive"),
            ("[\u{017f}\u{212a}]", "fold"),
        ];
        let compiled: Vec<(regex_lite::Regex, &'static str)> = checks
            .iter()
            .filter_map(|(p, kind)| regex_lite::Regex::new(p).ok().map(|re| (re, *kind)))
            .collect();
        (compiled.len() == checks.len()).then_some(compiled)
    });

/// Problems found by reading the rendered text itself, before compose sees
/// it: the keys `include`, `extends`, `env_file` and `label_file` make
/// compose read host files at `config` time whatever flags it is given, so
/// any spelling of them that YAML allows is refused. Deliberately
/// conservative: the word followed by an optional quote and `:` anywhere,
/// an alias or an explicit `?` used as a key, escapes that can spell a key
/// (`\x`, `\u`, `\U`), `!!`/verbatim tags and `%` directives all count.
pub fn textual_refusals(rendered: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Some(compiled) = TEXT_CHECKS.as_ref() else {
        // A pattern that does not compile is a bug; refuse rather than pass.
        return vec!["the textual check is broken; nothing is accepted".into()];
    };
    for (n, line) in rendered.lines().enumerate() {
        let n = n + 1;
        for (re, kind) in compiled {
            let Some(m) = re.find(line) else { continue };
            let found = truncate(m.as_str().trim(), 40);
            out.push(match *kind {
                "key" => format!(
                    "line {n}: {found:?}: the keys include, extends, env_file and label_file \
                     are not allowed (compose would read files of the host)"
                ),
                "alias" => format!("line {n}: {found:?}: an alias may not be used as a key"),
                "explicit" => format!("line {n}: explicit \"? \" keys are not allowed"),
                "escape" => format!(
                    "line {n}: {found:?}: \\x, \\u and \\U escapes are not allowed \
                     (they can spell a refused key)"
                ),
                "tag" => format!(
                    "line {n}: {found:?}: YAML tags other than !reset/!override are not allowed"
                ),
                "directive" => format!("line {n}: YAML directives (%) are not allowed"),
                _ => format!(
                    "line {n}: holds a character that case-folds to a letter of a refused key"
                ),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The whole chain
// ---------------------------------------------------------------------------

static WORK_COUNTER: AtomicU64 = AtomicU64::new(0);

/// textual refusals → `docker compose config` → allow-list → cell network:
/// the compose document pic-store will bring up, or every reason it won't.
/// Conversion happens in a fresh folder under `<state_dir>/tmp/`, removed
/// afterwards.
pub fn prepare(
    host: &dyn Host,
    config: &Config,
    project_name: &str,
    rendered: &str,
    ctx: &CheckContext,
) -> Result<Value> {
    let what = format!("compose template of {}", ctx.manifest.id);
    let refusals = textual_refusals(rendered);
    if !refusals.is_empty() {
        return Err(Error::invalid(what, refusals));
    }
    let parent = config.state_dir.join("tmp");
    files::create_dir_all(&parent)?;
    let work = parent.join(format!(
        "compose-{}-{}",
        std::process::id(),
        WORK_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    files::remove_dir_all_if_exists(&work)?;
    std::fs::create_dir(&work).map_err(|e| Error::io("create folder", &work, e))?;
    let converted = convert(host, config, project_name, rendered, &work);
    let cleaned = files::remove_dir_all_if_exists(&work);
    let doc = match converted {
        Ok(doc) => doc,
        Err(Error::Invalid { what: step, errors }) => {
            let errors = errors.into_iter().map(|e| format!("{step}: {e}")).collect();
            return Err(Error::invalid(what, errors));
        }
        Err(e) => return Err(e),
    };
    cleaned?;
    let errors = check(&doc, ctx);
    if !errors.is_empty() {
        return Err(Error::invalid(what, errors));
    }
    Ok(finalize(doc, ctx))
}

/// Writes a checked document to `<state_dir>/compose/<project>.json`
/// atomically and returns its path. That folder only ever holds these
/// files (never a `.env`).
pub fn write_checked(config: &Config, project: &str, doc: &Value) -> Result<PathBuf> {
    if !is_project_name(project) {
        return Err(Error::invalid(
            "compose project",
            vec![format!("{project:?} is not a project name")],
        ));
    }
    let dir = config.compose_dir();
    files::create_dir_all(&dir)?;
    let path = dir.join(format!("{project}.json"));
    let mut bytes = serde_json::to_vec_pretty(doc)
        .map_err(|e| Error::invalid("compose file", vec![format!("cannot be serialised: {e}")]))?;
    bytes.push(b'\n');
    files::write_atomic(&path, &bytes, 0o600)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ServiceId;
    use crate::manifest::{EnvVar, Volume};
    use serde_json::json;

    const IMAGE: &str = "127.0.0.1:5000/roof/web:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const DB_IMAGE: &str = "127.0.0.1:5000/roof/postgres:16@sha256:1123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const IP: Ipv4Addr = Ipv4Addr::new(172, 20, 0, 30);
    const DATA: &str = "/var/lib/pic-store/data/web";

    fn config() -> Config {
        Config::from_lookup(|k| match k {
            "PIC_STATE_DIR" => Some("/var/lib/pic-store".into()),
            _ => None,
        })
        .unwrap()
    }

    fn manifest(kind: Kind) -> Manifest {
        Manifest {
            id: ServiceId::parse("web").unwrap(),
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
                    mount: "files".into(),
                    target: "/files".into(),
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
                    name: "IMAGE".into(),
                    value: "sneaky".into(),
                },
            ],
            iptables_rules: vec![],
            routes: vec![],
            cap_add: vec!["CHOWN".into(), "NET_BIND_SERVICE".into()],
            provision_hook: None,
            instanceable: kind == Kind::Connectivity,
            connectivity: None,
            helper_images: [("db".to_string(), DB_IMAGE.to_string())].into(),
            settings: vec![],
            extra: BTreeMap::new(),
        }
    }

    fn ctx<'a>(m: &'a Manifest, c: &'a Config, instance: Option<InstanceCtx>) -> CheckContext<'a> {
        let data_dir = data_dir(c, m.id.as_str(), instance.as_ref().map(|i| i.id.as_str()));
        CheckContext {
            manifest: m,
            config: c,
            data_dir,
            service_ip: IP,
            instance,
        }
    }

    fn inst() -> Option<InstanceCtx> {
        Some(InstanceCtx {
            id: "home".into(),
            redirect_port: 12001,
        })
    }

    /// A minimal accepted document with `extra` merged into the main service.
    fn doc_with(extra: Value) -> Value {
        let mut web = json!({
            "image": IMAGE,
            "container_name": "cell-web",
            "networks": {"cell-network": null},
        });
        if let (Some(w), Some(e)) = (web.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                w.insert(k.clone(), v.clone());
            }
        }
        json!({
            "name": "pic-web",
            "services": {"web": web},
            "networks": {"cell-network": {"external": true, "name": "cell-network"}},
        })
    }

    fn errors_of(extra: Value) -> Vec<String> {
        let (m, c) = (manifest(Kind::Service), config());
        check(&doc_with(extra), &ctx(&m, &c, None))
    }

    fn assert_refused(extra: Value, needle: &str) {
        let errs = errors_of(extra.clone());
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "{extra} should be refused with {needle:?}, got {errs:?}"
        );
    }

    fn assert_accepted(extra: Value) {
        let errs = errors_of(extra.clone());
        assert!(errs.is_empty(), "{extra} should be accepted, got {errs:?}");
    }

    // --- render --------------------------------------------------------

    #[test]
    fn every_placeholder_is_filled() {
        let (m, c) = (manifest(Kind::Service), config());
        let v = Vars::for_service(&m, IP, &c);
        let t = "a ${SERVICE_ID} ${SERVICE_IP} ${CONTAINER_NAME} ${IMAGE} ${DATA_DIR} ${NETWORK} ${CELL_DOMAIN} ${TZ}\n";
        assert_eq!(
            render(t, &v).unwrap(),
            format!("a web 172.20.0.30 cell-web {IMAGE} {DATA} cell-network cell.local UTC\n")
        );
        // Built-in names win over a manifest env var of the same name.
        assert_eq!(v.get("IMAGE"), Some(IMAGE));
    }

    #[test]
    fn instance_placeholders() {
        let (m, c) = (manifest(Kind::Connectivity), config());
        let mut over = BTreeMap::new();
        over.insert("TZ".to_string(), "Europe/Paris".to_string());
        over.insert("UNDECLARED".to_string(), "x".to_string());
        let v = Vars::for_instance(&m, "home", IP, 12001, 0x105, 105, &over, &c);
        let t = "${CONTAINER_NAME} ${INSTANCE_ID} ${REDIRECT_PORT} ${FWMARK} ${ROUTE_TABLE} ${DATA_DIR} ${TZ}";
        assert_eq!(
            render(t, &v).unwrap(),
            format!("cell-web-home home 12001 0x105 105 {DATA}/home Europe/Paris")
        );
        assert_eq!(v.get("UNDECLARED"), None);
        assert_eq!(v.container_name(), "cell-web-home");
        // A service has no instance values.
        let s = Vars::for_service(&m, IP, &c);
        assert!(render("${FWMARK}", &s).is_err());
    }

    #[test]
    fn comments_are_dropped_and_escapes_kept() {
        let (m, c) = (manifest(Kind::Service), config());
        let v = Vars::for_service(&m, IP, &c);
        assert_eq!(
            render("# ${SERVICE_ID}\ncommand: echo $$HOME $${IMAGE} $$$$\n", &v).unwrap(),
            "\ncommand: echo $$HOME $${IMAGE} $$$$\n"
        );
        // A `$` in a full-line comment is never an error; the line stays,
        // empty, so later messages keep their line numbers.
        let t = "  # set $PUID, ${PGID:-1000} and $\r\n\t# ${UNKNOWN}\nimage: ${IMAGE} # $tail\n";
        assert_eq!(
            render(t, &v).unwrap_err().details(),
            vec![
                "line 3: $tail: a bare variable would be read from the host \
                  (write ${NAME} for a placeholder, $$ for a literal $)"
                    .to_string()
            ]
        );
        assert_eq!(
            render("# $HOME\nimage: ${IMAGE}\n", &v).unwrap(),
            format!("\nimage: {IMAGE}\n")
        );
    }

    fn render_errors(t: &str) -> Vec<String> {
        let (m, c) = (manifest(Kind::Service), config());
        match render(t, &Vars::for_service(&m, IP, &c)) {
            Err(Error::Invalid { errors, .. }) => errors,
            other => panic!("{t:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn every_leftover_dollar_is_an_error_with_its_line() {
        let t = "a: ok\nb: $HOME\nc: ${HOME:-x}\nd: ${NOPE}\ne: $$$X\nf: x $\ng: ${UNCLOSED\nh: ${A${B}}\ni: ${}\n";
        let errs = render_errors(t);
        let expect = [
            ("line 2:", "$HOME"),
            ("line 3:", "${HOME:-x}"),
            ("line 4:", "${NOPE}"),
            ("line 5:", "$X"),
            ("line 6:", "lone $"),
            ("line 7:", "no closing"),
            ("line 8:", "${A${B}"),
            ("line 9:", "${}"),
        ];
        for (line, what) in expect {
            assert!(
                errs.iter().any(|e| e.starts_with(line) && e.contains(what)),
                "{line} {what} missing from {errs:?}"
            );
        }
        assert_eq!(errs.len(), expect.len(), "{errs:?}");
        assert!(render_errors("x: $").iter().any(|e| e.contains("lone $")));
    }

    #[test]
    fn nul_and_size_are_refused() {
        assert!(render_errors("a\0b").iter().any(|e| e.contains("NUL")));
        let big = "#".repeat(MAX_TEMPLATE + 1);
        assert!(render_errors(&big).iter().any(|e| e.contains("256 KiB")));
    }

    #[test]
    fn values_that_could_change_the_yaml_are_refused() {
        let (mut m, c) = (manifest(Kind::Service), config());
        m.env[0].value = "x\nprivileged: true".into();
        let v = Vars::for_service(&m, IP, &c);
        assert!(render("TZ: ${TZ}", &v).is_err());
        assert!(render("other: 1", &v).is_ok());
    }

    // --- textual refusals ------------------------------------------------

    #[test]
    fn refused_keys_in_every_spelling() {
        for t in [
            "include:\n  - other.yml",
            "  extends:\n    file: x.yml",
            "    env_file: /etc/os-release",
            "    - label_file: x",
            "\"include\": [a.yml]",
            "  'extends' : {service: a}",
            "services: {web: {extends: {file: a}}}",
            "    ENV_FILE: x",
            "x: &k include\n*k : [a.yml]",
            "? include\n: [a.yml]",
            "\"\\x69nclude\": [a.yml]",
            "\"incl\\u0075de\": [a.yml]",
            "!!binary aW5jbHVkZQ==: [a.yml]",
            "%TAG !e! tag:yaml.org,2002:\n---\n!e!binary aW5jbHVkZQ==: x",
            "!<tag:yaml.org,2002:str> include: x",
            "extend\u{17f}: x",
        ] {
            assert!(!textual_refusals(t).is_empty(), "{t:?} should be refused");
        }
    }

    #[test]
    fn ordinary_templates_pass_the_textual_check() {
        let t = "x-common: &common\n  restart: unless-stopped\nservices:\n  web:\n    <<: [*common]\n    image: img\n    command: [\"sh\", \"-c\", \"echo '*/5 * * * *' $$X\"]\n    environment:\n      MY_ENV_FILE_PATH: /data/env\n      INCLUDED: \"yes\"\n    labels:\n      a: \"b:c\"\n    command2: \"what? no\"\n";
        assert_eq!(textual_refusals(t), Vec::<String>::new());
    }

    #[test]
    fn textual_refusals_name_the_line() {
        let r = textual_refusals("a: 1\nb: 2\n    env_file: x\n");
        assert_eq!(r.len(), 1);
        assert!(r[0].starts_with("line 3:"), "{r:?}");
    }

    // --- compose_cmd -------------------------------------------------------

    #[test]
    fn compose_command_has_the_fixed_flags_and_environment() {
        let c = config();
        let cmd = compose_cmd(
            &c,
            &Project {
                name: "pic-web".into(),
                file: PathBuf::from("/var/lib/pic-store/compose/pic-web.json"),
            },
        );
        assert_eq!(
            cmd.args,
            [
                "compose",
                "-p",
                "pic-web",
                "-f",
                "/var/lib/pic-store/compose/pic-web.json",
                "--env-file",
                "/dev/null"
            ]
        );
        let Env::Only(env) = &cmd.env else {
            panic!("compose must run with Env::Only")
        };
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "PATH",
                "HOME",
                "COMPOSE_EXPERIMENTAL_GIT_REMOTE",
                "COMPOSE_EXPERIMENTAL_OCI_REMOTE"
            ]
        );
        assert!(env.iter().all(|(k, v)| k != "HOME" || v == COMPOSE_HOME));
    }

    #[test]
    fn project_names() {
        assert_eq!(project_name("proxy", None), "pic-proxy");
        assert_eq!(project_name("proxy", Some("home")), "pic-proxy-home");
    }

    #[test]
    fn convert_runs_config_with_every_safety_flag() {
        let c = config();
        let dir = std::env::temp_dir().join(format!("pic-compose-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let host = crate::host::FakeHost::default().answer("", 0, "{\"name\":\"pic-web\"}");
        let doc = convert(&host, &c, "pic-web", "services: {}\n", &dir).unwrap();
        assert_eq!(doc["name"], "pic-web");
        let calls = host.calls();
        assert_eq!(calls.len(), 1);
        assert!(
            calls[0].ends_with(&format!(
                "compose -p pic-web -f {}/pic-web.yml --env-file /dev/null --profile * config --format json --no-interpolate --no-env-resolution --no-path-resolution",
                dir.display()
            )),
            "{}",
            calls[0]
        );
        assert!(
            !dir.join("pic-web.yml").exists(),
            "the template file is removed"
        );
        let failing = crate::host::FakeHost::default().answer("", 1, "");
        let err = convert(&failing, &c, "pic-web", "x", &dir).unwrap_err();
        assert!(err.to_string().contains("docker compose config"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // --- check: service keys -------------------------------------------

    #[test]
    fn minimal_document_is_accepted() {
        assert_accepted(json!({}));
    }

    #[test]
    fn allowed_keys_are_accepted() {
        assert_accepted(json!({
            "command": ["sh"], "entrypoint": "/init", "tmpfs": ["/run"],
            "depends_on": {}, "healthcheck": {"test": ["CMD", "true"]},
            "restart": "always", "user": "1000", "working_dir": "/app",
            "labels": {"a": "b"}, "logging": {"driver": "json-file"},
            "ulimits": {"nofile": 1024}, "read_only": true, "init": true,
            "stop_signal": "SIGTERM", "stop_grace_period": "10s",
            "cap_add": ["chown", "CAP_NET_BIND_SERVICE", "Cap_Chown"], "cap_drop": ["ALL"],
            "mem_limit": "1g", "cpus": 0.5, "shm_size": "64m", "expose": [80],
            "hostname": "web", "profiles": ["x"], "privileged": false,
            "security_opt": ["no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"],
            "environment": {"A": "1", "B": "", "C": 3}, "x-note": {"anything": true},
        }));
        assert_accepted(json!({"privileged": "no"}));
        assert_accepted(json!({"environment": ["A=1", "B="]}));
    }

    #[test]
    fn refused_keys_name_service_and_key() {
        for (extra, needle) in [
            (
                json!({"privileged": true}),
                r#"service "web": key "privileged" is only allowed as false (true)"#,
            ),
            (json!({"privileged": "yes"}), r#"key "privileged""#),
            (
                json!({"devices": [{"source": "/dev/net/tun", "target": "/dev/net/tun"}]}),
                r#"key "devices" is not allowed"#,
            ),
            (
                json!({"sysctls": {"kernel.shmmax": 1}}),
                r#"key "sysctls" "kernel.shmmax" is not allowed"#,
            ),
            (
                json!({"security_opt": ["seccomp:unconfined"]}),
                r#"key "security_opt""#,
            ),
            (
                json!({"security_opt": ["no-new-privileges:false"]}),
                r#"key "security_opt""#,
            ),
            (
                json!({"userns_mode": "host"}),
                r#"key "userns_mode" is not allowed"#,
            ),
            (json!({"ipc": "host"}), r#"key "ipc""#),
            (json!({"cgroup_parent": "x"}), r#"key "cgroup_parent""#),
            (json!({"build": {"context": "."}}), r#"key "build""#),
            (json!({"volumes_from": ["x"]}), r#"key "volumes_from""#),
            (json!({"use_api_socket": true}), r#"key "use_api_socket""#),
            (
                json!({"post_start": [{"command": ["sh"]}]}),
                r#"key "post_start""#,
            ),
            (
                json!({"pre_stop": [{"command": ["sh"]}]}),
                r#"key "pre_stop""#,
            ),
            (json!({"provider": {"type": "x"}}), r#"key "provider""#),
            (json!({"secrets": [{"source": "s"}]}), r#"key "secrets""#),
            (
                json!({"network_mode": "host"}),
                r#"key "network_mode" is not allowed on the main service"#,
            ),
            (json!({"pid": "host"}), r#"key "pid""#),
            (
                json!({"cap_add": ["SYS_ADMIN"]}),
                r#""SYS_ADMIN" is not in the manifest's cap_add"#,
            ),
            (json!({"cap_add": ["cap_net_admin"]}), "cap_net_admin"),
            (
                json!({"image": "other:1"}),
                r#"key "image" must be the manifest's image"#,
            ),
            (
                json!({"container_name": "cell-webx"}),
                "no service has container_name",
            ),
            (
                json!({"environment": ["HOME"]}),
                r#"key "environment" "HOME" has no value"#,
            ),
            (
                json!({"environment": {"HOME": null}}),
                r#""HOME" has no value"#,
            ),
            (
                json!({"ports": ["80:80"]}),
                r#"key "ports" is only allowed in a connection instance"#,
            ),
            (
                json!({"ports": [{"target": 12001, "published": "12001"}]}),
                r#"key "ports""#,
            ),
        ] {
            assert_refused(extra, needle);
        }
    }

    #[test]
    fn every_problem_is_listed() {
        let errs = errors_of(
            json!({"privileged": true, "ipc": "host", "cap_add": ["SYS_ADMIN", "NET_RAW"]}),
        );
        assert_eq!(errs.len(), 4, "{errs:?}");
    }

    #[test]
    fn missing_image_is_refused() {
        let (m, c) = (manifest(Kind::Service), config());
        let mut d = doc_with(json!({}));
        d["services"]["web"]
            .as_object_mut()
            .unwrap()
            .remove("image");
        let errs = check(&d, &ctx(&m, &c, None));
        assert!(errs.iter().any(|e| e.contains("is missing")), "{errs:?}");
    }

    #[test]
    fn helpers_share_the_image_and_the_name_prefix() {
        let (m, c) = (manifest(Kind::Service), config());
        let mut d = doc_with(json!({}));
        d["services"]["db"] = json!({"image": IMAGE, "container_name": "cell-web-db", "network_mode": "service:web", "pid": "service:web"});
        d["services"]["cache"] = json!({"image": IMAGE});
        assert_eq!(check(&d, &ctx(&m, &c, None)), Vec::<String>::new());
        d["services"]["db"]["container_name"] = json!("cell-api");
        d["services"]["cache"]["image"] = json!("redis:7");
        d["services"]["cache"]["network_mode"] = json!("service:nope");
        let errs = check(&d, &ctx(&m, &c, None));
        assert!(
            errs.iter()
                .any(|e| e.contains(r#"service "db": key "container_name""#)),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains(r#"service "cache": key "image""#)),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains(r#"service "cache": key "network_mode""#)),
            "{errs:?}"
        );
    }

    #[test]
    fn two_main_services_are_refused() {
        let (m, c) = (manifest(Kind::Service), config());
        let mut d = doc_with(json!({}));
        d["services"]["web2"] = json!({"image": IMAGE, "container_name": "cell-web"});
        let errs = check(&d, &ctx(&m, &c, None));
        assert!(
            errs.iter().any(|e| e.contains("all have container_name")),
            "{errs:?}"
        );
    }

    // --- check: connectivity and instances -------------------------------

    fn instance_errors(extra: Value) -> Vec<String> {
        let (m, c) = (manifest(Kind::Connectivity), config());
        let mut d = doc_with(extra);
        d["name"] = json!("pic-web-home");
        d["services"]["web"]["container_name"] = json!("cell-web-home");
        check(&d, &ctx(&m, &c, inst()))
    }

    #[test]
    fn ports_only_the_redirect_port_of_an_instance() {
        for ok in [
            json!({"ports": [{"mode": "ingress", "target": 12001, "published": "12001", "protocol": "tcp"}]}),
            json!({"ports": [{"host_ip": "127.0.0.1", "target": 12001, "published": 12001}]}),
        ] {
            assert_eq!(instance_errors(ok.clone()), Vec::<String>::new(), "{ok}");
        }
        for bad in [
            json!({"ports": [{"target": 12001}]}),
            json!({"ports": [{"target": 80, "published": "12001"}]}),
            json!({"ports": [{"target": 12001, "published": "12002"}]}),
            json!({"ports": [{"target": 12001, "published": "12001-12002"}]}),
            json!({"ports": [{"target": 12001, "published": "12001", "protocol": "sctp"}]}),
            json!({"ports": ["12001:12001"]}),
        ] {
            let errs = instance_errors(bad.clone());
            assert!(
                errs.iter().any(|e| e.contains(r#"key "ports""#)),
                "{bad}: {errs:?}"
            );
        }
    }

    #[test]
    fn connectivity_devices_and_sysctls() {
        assert_eq!(
            instance_errors(json!({
                "devices": [{"source": "/dev/net/tun", "target": "/dev/net/tun", "permissions": "rwm"}, "/dev/net/tun"],
                "sysctls": {"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.src_valid_mark": "1", "net.ipv6.conf.all.disable_ipv6": 0},
                "cap_add": ["CHOWN"],
            })),
            Vec::<String>::new()
        );
        assert_eq!(
            instance_errors(json!({"sysctls": ["net.ipv6.conf.all.forwarding=1"]})),
            Vec::<String>::new()
        );
        for bad in [
            json!({"devices": [{"source": "/dev/sda", "target": "/dev/sda"}]}),
            json!({"devices": [{"source": "/dev/net/tun", "target": "/dev/mem"}]}),
            json!({"devices": ["/dev/net/tun:/dev/net/tun:rwx"]}),
            json!({"sysctls": {"kernel.shmmax": 1}}),
            json!({"sysctls": ["net.core.rmem_max=1"]}),
            json!({"sysctls": {"net.ipv6": 1}}),
        ] {
            assert!(!instance_errors(bad.clone()).is_empty(), "{bad}");
        }
    }

    #[test]
    fn instance_container_names() {
        let (m, c) = (manifest(Kind::Connectivity), config());
        let mut d = doc_with(json!({}));
        d["services"]["web"]["container_name"] = json!("cell-web-home");
        d["services"]["side"] = json!({"image": IMAGE, "container_name": "cell-web-other"});
        let errs = check(&d, &ctx(&m, &c, inst()));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains(r#"service "side": key "container_name""#),
            "{errs:?}"
        );
    }

    // --- check: volumes --------------------------------------------------

    fn bind(src: &str) -> Value {
        json!({"volumes": [{"type": "bind", "source": src, "target": "/x"}]})
    }

    #[test]
    fn bind_sources_inside_the_data_dir_or_a_manifest_mount() {
        for ok in [
            DATA.to_string(),
            format!("{DATA}/config"),
            format!("{DATA}//a/./b/"),
            format!("{DATA}/a/../b"),
            "/srv/media".into(),
            "/srv/media/music".into(),
            "/srv/x/../media/".into(),
        ] {
            assert_accepted(bind(&ok));
        }
        for bad in [
            format!("{DATA}-x"),
            format!("{DATA}/../../etc"),
            format!("{DATA}/../web2"),
            "/srv/../etc".into(),
            "/srv/media-other".into(),
            "/srv".into(),
            "/etc".into(),
            "/".into(),
            "./data".into(),
            "data".into(),
            "~/x".into(),
            format!("{DATA}/docker.sock"),
            "/var/run/docker.sock".into(),
        ] {
            assert_refused(bind(&bad), "bind source");
        }
    }

    #[test]
    fn volume_types_and_named_volumes() {
        assert_accepted(
            json!({"volumes": [{"type": "tmpfs", "target": "/t"}, {"type": "volume", "target": "/anon"}]}),
        );
        for t in ["image", "npipe", "cluster", "weird"] {
            assert_refused(
                json!({"volumes": [{"type": t, "source": "x", "target": "/x"}]}),
                &format!("type {t:?}"),
            );
        }
        assert_refused(
            json!({"volumes": [{"type": "volume", "source": "undeclared", "target": "/x"}]}),
            "not declared",
        );
        let (m, c) = (manifest(Kind::Service), config());
        let mut d =
            doc_with(json!({"volumes": [{"type": "volume", "source": "db", "target": "/db"}]}));
        d["volumes"] = json!({"db": {"name": "pic-web_db", "labels": {"a": "b"}}});
        assert_eq!(check(&d, &ctx(&m, &c, None)), Vec::<String>::new());
        for bad in [
            json!({"driver": "local"}),
            json!({"driver_opts": {"type": "none", "o": "bind", "device": "/etc"}}),
            json!({"external": true}),
            json!({"name": "cell-api_data"}),
        ] {
            d["volumes"]["db"] = bad.clone();
            let errs = check(&d, &ctx(&m, &c, None));
            assert!(
                errs.iter().any(|e| e.starts_with("volume \"db\"")),
                "{bad}: {errs:?}"
            );
        }
    }

    // --- check: top level and networks ------------------------------------

    #[test]
    fn top_level_keys() {
        let (m, c) = (manifest(Kind::Service), config());
        let mut d = doc_with(json!({}));
        d["x-anything"] = json!({"privileged": true});
        assert_eq!(check(&d, &ctx(&m, &c, None)), Vec::<String>::new());
        d["secrets"] = json!({"s": {"file": "/etc/shadow"}});
        d["configs"] = json!({"c": {"content": "x"}});
        d["include"] = json!([]);
        let errs = check(&d, &ctx(&m, &c, None));
        for k in ["secrets", "configs", "include"] {
            assert!(
                errs.iter()
                    .any(|e| e.contains(&format!("top-level key {k:?}"))),
                "{errs:?}"
            );
        }
    }

    fn with_helper_network(net: Value, helper_nets: Value) -> Vec<String> {
        let (m, c) = (manifest(Kind::Service), config());
        let mut d = doc_with(json!({}));
        d["networks"]["inner"] = net;
        d["services"]["db"] = json!({"image": IMAGE, "networks": helper_nets});
        check(&d, &ctx(&m, &c, None))
    }

    #[test]
    fn project_networks() {
        assert_eq!(
            with_helper_network(
                json!({"name": "pic-web_inner", "driver": "bridge", "internal": true}),
                json!({"inner": null, "default": {}})
            ),
            Vec::<String>::new()
        );
        for (net, helper, needle) in [
            (
                json!({"external": true}),
                json!({"inner": null}),
                "\"external\"",
            ),
            (
                json!({"name": "host"}),
                json!({"inner": null}),
                "named \"host\"",
            ),
            (
                json!({"name": "cell-network"}),
                json!({"inner": null}),
                "only the main service may join the cell network",
            ),
            (
                json!({"name": "pic-other_default"}),
                json!({"inner": null}),
                "outside this project",
            ),
            (
                json!({"driver": "macvlan"}),
                json!({"inner": null}),
                "driver",
            ),
            (json!({"ipam": {}}), json!({"inner": null}), "\"ipam\""),
            (json!({}), json!({"inner": {"aliases": ["db"]}}), "aliases"),
            (
                json!({}),
                json!({"inner": {"gw_priority": 10}}),
                "gw_priority",
            ),
            (
                json!({}),
                json!({"cell-network": null}),
                "only the main service may join the cell network",
            ),
        ] {
            let errs = with_helper_network(net.clone(), helper.clone());
            assert!(
                errs.iter().any(|e| e.contains(needle)),
                "{net} {helper}: {errs:?}"
            );
        }
        let (m, c) = (manifest(Kind::Service), config());
        let mut d = doc_with(json!({}));
        d["networks"]["host"] = json!({"name": "pic-web_host"});
        let errs = check(&d, &ctx(&m, &c, None));
        assert!(
            errs.iter().any(|e| e.contains("\"host\" is not allowed")),
            "{errs:?}"
        );
    }

    #[test]
    fn main_service_keeps_the_cell_network_as_gateway() {
        let (m, _) = (manifest(Kind::Service), config());
        let c = Config::from_lookup(|k| match k {
            "PIC_NETWORK" => Some("zz-net".into()),
            _ => None,
        })
        .unwrap();
        let mut d = doc_with(json!({}));
        d["services"]["web"]["networks"] = json!({"zz-net": null, "inner": null, "quiet": null});
        d["networks"] = json!({
            "zz-net": {"external": true},
            "inner": {"name": "pic-web_inner"},
            "quiet": {"name": "pic-web_quiet", "internal": true},
        });
        let errs = check(&d, &ctx(&m, &c, None));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("\"inner\"") && errs[0].contains("gateway"),
            "{errs:?}"
        );
    }

    // --- v2 ------------------------------------------------------------

    #[test]
    fn v2_keys_real_apps_use_are_accepted() {
        assert_accepted(json!({
            "deploy": {"resources": {"limits": {"cpus": "0.5", "memory": "512M", "pids": 100},
                                     "reservations": {"cpus": "0.25", "memory": "128M"}}},
            "dns": ["1.1.1.1", "2606:4700:4700::1111"], "dns_search": "lan", "dns_opt": ["use-vc"],
            "domainname": "example.org", "tty": true, "stdin_open": true,
            "cpu_shares": 512, "cpu_quota": 50000, "cpu_period": 100000, "cpuset": "0,1",
            "mem_reservation": "64m", "memswap_limit": "1g", "mem_swappiness": 10,
            "pids_limit": 100, "oom_score_adj": 0,
            "extra_hosts": ["nas.lan:192.168.1.10", "v6=::1", "b:[fe80::1]"],
            "pull_policy": "missing",
            "sysctls": {"net.core.somaxconn": 1024, "net.ipv4.tcp_keepalive_time": 600,
                        "net.ipv6.conf.all.disable_ipv6": 1},
            "logging": {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3", "tag": "x"}},
            "volumes": [{"type": "bind", "source": "/etc/localtime", "target": "/etc/localtime", "read_only": true},
                        {"type": "bind", "source": "/etc/timezone", "target": "/etc/timezone", "read_only": true}],
        }));
        assert_accepted(json!({"extra_hosts": {"nas": "10.0.0.2"}}));
        assert_accepted(json!({"logging": {"driver": "journald"}, "pull_policy": "never"}));
        assert_accepted(json!({"logging": {"options": {"max-size": "1m"}}}));
        for driver in ["local", "none"] {
            assert_accepted(json!({"logging": {"driver": driver}}));
        }
    }

    #[test]
    fn v2_keys_are_refused_beyond_their_limits() {
        for (extra, needle) in [
            (json!({"deploy": {"resources": {"reservations": {"devices": [{"capabilities": ["gpu"]}]}}}}),
             "deploy.resources.reservations.devices is not allowed (devices and GPUs are not given to services)"),
            (json!({"deploy": {"resources": {"reservations": {"devices": [{"capabilities": ["gpu"]}]}}}}),
             "mem_limit and cpus"),
            (json!({"deploy": {"resources": {"reservations": {"generic_resources": []}}}}), "generic_resources"),
            (json!({"deploy": {"resources": {"limits": {"devices": []}}}}), "deploy.resources.limits.devices"),
            (json!({"deploy": {"placement": {"constraints": ["node.role==manager"]}}}), "deploy.placement is not allowed"),
            (json!({"deploy": {"replicas": 2}}), "deploy.replicas"),
            (json!({"deploy": {"resources": {"reservations": {"pids": 5}}}}), "deploy.resources.reservations.pids"),
            (json!({"dns": ["dns.google"]}), r#"key "dns" may only hold IP addresses ("dns.google")"#),
            (json!({"extra_hosts": ["host.docker.internal:host-gateway"]}),
             r#"key "extra_hosts" "host.docker.internal:host-gateway" is not allowed: it points at the host itself"#),
            (json!({"extra_hosts": {"gw": "host-gateway"}}), "host-gateway"),
            (json!({"extra_hosts": ["a:b.example"]}), r#""a:b.example" may only point at an IP address"#),
            (json!({"oom_score_adj": -500}), r#"key "oom_score_adj" may only be 0 or more"#),
            (json!({"links": ["other"]}), r#"key "links" may only name another service of this file ("other")"#),
            (json!({"pull_policy": "always"}), r#"key "pull_policy" may only be missing, if_not_present or never"#),
            (json!({"pull_policy": "build"}), "pull_policy"),
            (json!({"sysctls": {"kernel.msgmax": 1}}), "net.ipv4.*, net.ipv6.* and net.core.somaxconn"),
            (json!({"sysctls": ["net.core.rmem_max=1"]}), "\"net.core.rmem_max\" is not allowed"),
            (json!({"logging": {"driver": "syslog", "options": {"syslog-address": "udp://1.2.3.4:514"}}}),
             r#"key "logging" driver "syslog" is not allowed"#),
            (json!({"logging": {"driver": "syslog", "options": {"syslog-address": "udp://1.2.3.4:514"}}}),
             r#"option "syslog-address" is not allowed"#),
            (json!({"logging": {"driver": "gelf"}}), "\"gelf\""),
            (json!({"logging": {"driver": "fluentd"}}), "\"fluentd\""),
            (json!({"logging": {"driver": "awslogs"}}), "\"awslogs\""),
            (json!({"logging": {"driver": "splunk"}}), "\"splunk\""),
            (json!({"logging": {"driver": "json-file", "options": {"labels-regex": "x"}}}), "labels-regex"),
            (json!({"cpu_rt_runtime": 100}), r#"key "cpu_rt_runtime" is not allowed"#),
            (json!({"volumes": [{"type": "bind", "source": "/etc/localtime", "target": "/etc/localtime"}]}),
             "bind source \"/etc/localtime\" may only be mounted read-only"),
            (json!({"volumes": [{"type": "bind", "source": "/etc/timezone", "target": "/etc/timezone", "read_only": false}]}),
             "may only be mounted read-only"),
            (json!({"volumes": [{"type": "bind", "source": "/etc/localtime/../shadow", "target": "/x", "read_only": true}]}),
             "(it is \"/etc/shadow\")"),
            (bind("/home/roof/.ssh"), "PIC_HOST_MOUNT_ROOTS (/srv:/mnt:/media)"),
        ] {
            assert_refused(extra, needle);
        }
    }

    #[test]
    fn messages_say_what_is_allowed_instead() {
        for (extra, needle) in [
            (
                json!({"ports": [{"target": 80, "published": "8080", "protocol": "tcp"}]}),
                r#"("8080:80"); a service is reached on its own address: list the port under expose and open it with the manifest's iptables_rules on ${SERVICE_IP}"#,
            ),
            (
                json!({"network_mode": "host"}),
                "iptables_rules on ${SERVICE_IP}",
            ),
            (json!({"deploy": {"mode": "global"}}), "mem_limit and cpus"),
            (
                json!({"image": "127.0.0.1:5000/roof/postgres:16"}),
                "on the main service",
            ),
        ] {
            assert_refused(extra, needle);
        }
        // A long value is cut at a boundary, an image reference never.
        let long: Vec<String> = (0..40)
            .map(|i| format!("/srv/a-long-folder-name-{i}"))
            .collect();
        let errs = errors_of(json!({"volumes_from": long}));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].ends_with("-13\", ...)"), "{}", errs[0]);
        assert!(errs[0].len() < 600, "{}", errs[0]);
        let (m, c) = (manifest(Kind::Service), config());
        let mut d = doc_with(json!({}));
        let other = format!(
            "127.0.0.1:5000/roof/{}:1@sha256:{}",
            "x".repeat(200),
            "0".repeat(64)
        );
        d["services"]["db"] = json!({"image": other});
        let errs = check(&d, &ctx(&m, &c, None));
        assert!(errs.iter().any(|e| e.contains(&other)), "{errs:?}");
    }

    #[test]
    fn helpers_run_declared_helper_images_exactly() {
        let (m, c) = (manifest(Kind::Service), config());
        let mut d = doc_with(json!({}));
        d["services"]["db"] = json!({"image": DB_IMAGE});
        d["services"]["cache"] = json!({"image": IMAGE});
        assert_eq!(check(&d, &ctx(&m, &c, None)), Vec::<String>::new());
        for other in [
            "127.0.0.1:5000/roof/postgres:16",
            "127.0.0.1:5000/roof/postgres:17@sha256:1123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "postgres:16",
            "redis:7-alpine",
        ] {
            d["services"]["db"] = json!({"image": other});
            let errs = check(&d, &ctx(&m, &c, None));
            assert!(
                errs.iter().any(|e| e.contains(r#"service "db": key "image""#)
                    && e.contains("helper_images")
                    && e.contains("declared: ${IMAGE_DB}")),
                "{other}: {errs:?}"
            );
        }
        // The main service never runs a helper image.
        let d = doc_with(json!({"image": DB_IMAGE}));
        let errs = check(&d, &ctx(&m, &c, None));
        assert!(
            errs.iter()
                .any(|e| e.contains("must be the manifest's image")),
            "{errs:?}"
        );
        // The placeholder is filled from the manifest.
        let v = Vars::for_service(&m, IP, &c);
        assert_eq!(render("${IMAGE_DB}", &v).unwrap(), DB_IMAGE);
    }

    #[test]
    fn settings_are_placeholders() {
        let (mut m, c) = (manifest(Kind::Service), config());
        m.settings = vec![
            crate::manifest::Setting {
                name: "ADMIN_PASSWORD".into(),
                label: "Admin password".into(),
                kind: crate::manifest::SettingType::Secret,
                default: None,
                required: true,
                choices: vec![],
                generate: Some(24),
            },
            crate::manifest::Setting {
                name: "SIZE".into(),
                label: "Size".into(),
                kind: crate::manifest::SettingType::Choice,
                default: Some("m".into()),
                required: false,
                choices: vec!["s".into(), "m".into()],
                generate: None,
            },
        ];
        let v = Vars::for_service(&m, IP, &c);
        // A default stands; a setting without a value is never filled with "".
        assert_eq!(render("${SIZE}", &v).unwrap(), "m");
        assert!(render("${ADMIN_PASSWORD}", &v).is_err());
        let given = [("ADMIN_PASSWORD".to_string(), "s3cret".to_string())].into();
        let v = v.with_settings(&m, &given);
        assert_eq!(render("${ADMIN_PASSWORD}/${SIZE}", &v).unwrap(), "s3cret/m");
        let samples = Vars::sample_settings(&m);
        assert_eq!(samples["ADMIN_PASSWORD"].len(), 24);
        assert_eq!(samples["SIZE"], "m");
    }

    #[test]
    fn the_docker_network_idiom_is_the_cell_network() {
        let (m, c) = (manifest(Kind::Service), config());
        let mut d = doc_with(json!({}));
        d["services"]["web"]["networks"] = json!({"cell": {"aliases": ["web"]}, "default": null});
        d["services"]["db"] = json!({"image": DB_IMAGE, "networks": {"default": null}});
        d["networks"] = json!({"cell": {"name": "cell-network", "external": true},
                               "default": {"name": "pic-web_default"}});
        assert_eq!(check(&d, &ctx(&m, &c, None)), Vec::<String>::new());
        let f = finalize(d.clone(), &ctx(&m, &c, None));
        assert_eq!(
            f["networks"],
            json!({"cell-network": {"name": "cell-network", "external": true},
                   "default": {"name": "pic-web_default"}})
        );
        assert_eq!(
            f["services"]["web"]["networks"],
            json!({"cell-network": {"ipv4_address": "172.20.0.30"}, "default": null})
        );
        // A helper may not join it under that key either.
        d["services"]["db"]["networks"] = json!({"cell": null});
        let errs = check(&d, &ctx(&m, &c, None));
        assert!(
            errs.iter().any(|e| e.contains(
                r#"service "db": key "networks" only the main service may join the cell network"#
            )),
            "{errs:?}"
        );
    }

    #[test]
    fn read_only_manifest_volumes_are_mounted_read_only() {
        let (m, c) = (manifest(Kind::Service), config());
        let d = doc_with(json!({"volumes": [
            {"type": "bind", "source": "/mnt/music/albums", "target": "/music"},
            {"type": "bind", "source": "/srv/media", "target": "/media"},
        ]}));
        assert_eq!(check(&d, &ctx(&m, &c, None)), Vec::<String>::new());
        let f = finalize(d, &ctx(&m, &c, None));
        assert_eq!(f["services"]["web"]["volumes"][0]["read_only"], true);
        assert!(f["services"]["web"]["volumes"][1]
            .get("read_only")
            .is_none());
    }

    #[test]
    fn tun_bind_on_connectivity_suggests_devices() {
        let errs = instance_errors(
            json!({"volumes": [{"type": "bind", "source": "/dev/net/tun", "target": "/dev/net/tun"}]}),
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("give the device with devices: [/dev/net/tun]")),
            "{errs:?}"
        );
    }

    #[test]
    fn finalize_owns_the_cell_network() {
        let (m, c) = (manifest(Kind::Service), config());
        let mut d = doc_with(json!({}));
        d["services"]["web"]["networks"] = json!({"cell-network": {"aliases": ["x"], "ipv4_address": "172.20.0.99"}, "default": null});
        d["networks"]["cell-network"] = json!({"name": "cell-network", "driver": "bridge"});
        d["networks"]["default"] = json!({"name": "pic-web_default"});
        assert_eq!(check(&d, &ctx(&m, &c, None)), Vec::<String>::new());
        let f = finalize(d, &ctx(&m, &c, None));
        assert_eq!(
            f["networks"]["cell-network"],
            json!({"name": "cell-network", "external": true})
        );
        assert_eq!(
            f["services"]["web"]["networks"],
            json!({"cell-network": {"ipv4_address": "172.20.0.30"}, "default": null})
        );
        // A main service that said nothing about networks gets the attachment too.
        let mut d = doc_with(json!({}));
        d["services"]["web"]
            .as_object_mut()
            .unwrap()
            .remove("networks");
        d.as_object_mut().unwrap().remove("networks");
        let f = finalize(d, &ctx(&m, &c, None));
        assert_eq!(
            f["services"]["web"]["networks"]["cell-network"]["ipv4_address"],
            "172.20.0.30"
        );
        assert_eq!(f["networks"]["cell-network"]["external"], true);
    }

    #[test]
    fn bind_sources_are_listed() {
        let d = doc_with(json!({"volumes": [
            {"type": "bind", "source": "/srv/media", "target": "/m"},
            {"type": "volume", "source": "v", "target": "/v"},
        ]}));
        assert_eq!(bind_sources(&d), [PathBuf::from("/srv/media")]);
    }

    #[test]
    fn lexical_normalisation() {
        for (i, o) in [
            ("/", "/"),
            ("/..", "/"),
            ("/../etc", "/etc"),
            ("//a//b/", "/a/b"),
            ("/a/./b/../c", "/a/c"),
            ("/a/b/../../..", "/"),
        ] {
            assert_eq!(normalize_path_lexical(i), o, "{i}");
        }
    }

    #[test]
    fn write_checked_writes_atomically_in_the_compose_dir() {
        let dir = std::env::temp_dir().join(format!("pic-compose-write-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let c = Config::from_lookup(|k| match k {
            "PIC_STATE_DIR" => Some(dir.display().to_string()),
            _ => None,
        })
        .unwrap();
        let p = write_checked(&c, "pic-web", &json!({"name": "pic-web"})).unwrap();
        assert_eq!(p, dir.join("compose/pic-web.json"));
        let back: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back["name"], "pic-web");
        assert!(write_checked(&c, "../evil", &json!({})).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_docker_or_plugin_is_named_and_other_failures_kept() {
        let failed = |reason: &str, stderr: &str| Error::Command {
            program: "/usr/bin/docker".into(),
            args: vec!["compose".into()],
            reason: reason.into(),
            stderr: stderr.into(),
        };
        for stderr in [
            "docker: 'compose' is not a docker command.\nSee 'docker --help'",
            "docker: unknown command: docker compose\n\nRun 'docker --help' for more information",
        ] {
            let e = missing_tool(failed("exit status 1", stderr));
            assert!(matches!(e, Error::ToolMissing(_)), "{e:?}");
            assert!(e.to_string().starts_with("docker compose plugin not found"));
            assert_eq!((e.exit_code(), e.http_status()), (2, 503));
        }
        let e = missing_tool(failed("program not found", ""));
        assert_eq!(e.to_string(), "docker not found: /usr/bin/docker");
        // A template compose refuses stays the template's fault.
        let e = missing_tool(failed(
            "exit status 15",
            "services.web Additional property foo",
        ));
        assert!(matches!(e, Error::Command { .. }), "{e:?}");
        let e = missing_tool(failed("timed out after 60 s and was killed", ""));
        assert!(matches!(e, Error::Command { .. }), "{e:?}");
    }
}
