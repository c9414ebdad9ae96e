//! Service manifests (spec §6): their types and the validator. No I/O.
//! A [`ValidManifest`] can only come from [`validate`], which reports every
//! error and warning at once, each naming the field and the value.

use crate::ids::{is_slug, truncate, ServiceId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Service,
    Connectivity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectivityMode {
    /// Transparent proxy: peers' TCP is redirected to the instance's port.
    Redirect,
    /// Tunnel: peers' traffic is policy-routed to the instance.
    Route,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub mount: String,
    pub target: String,
    /// Mounted `:ro` (rule 4).
    #[serde(default)]
    pub read_only: bool,
}

/// The type of an install-time setting (rule 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SettingType {
    String,
    Secret,
    Number,
    Boolean,
    Choice,
}

/// One install-time setting (rule 15); a `${NAME}` placeholder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    pub name: String,
    pub label: String,
    #[serde(rename = "type")]
    pub kind: SettingType,
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub choices: Vec<String>,
    /// Length of a generated secret, 16–64.
    #[serde(default)]
    pub generate: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// One manifest firewall rule; `dest_ip` is always the service IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRule {
    pub dest_port: u16,
    pub proto: Proto,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connectivity {
    pub mode: ConnectivityMode,
}

/// A manifest after validation: every field checked, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub id: ServiceId,
    pub name: String,
    pub version: String,
    pub author: String,
    pub kind: Kind,
    pub image: String,
    pub container_name: String,
    pub requires: Vec<ServiceId>,
    pub volumes: Vec<Volume>,
    pub env: Vec<EnvVar>,
    pub iptables_rules: Vec<PortRule>,
    /// Every routed subdomain with its backend, the main one first: the
    /// `subdomain`/`backend` pair, the legacy `caddy_route`, each of
    /// `extra_subdomains` (to the main backend) and `extra_backends`.
    pub routes: Vec<(String, String)>,
    /// Normalised, upper case, no `CAP_` prefix.
    pub cap_add: Vec<String>,
    pub provision_hook: Option<Vec<String>>,
    pub instanceable: bool,
    pub connectivity: Option<Connectivity>,
    /// Images the template's other services may run, by key; each is the
    /// placeholder `${IMAGE_<KEY>}` (rule 14).
    #[serde(default)]
    pub helper_images: BTreeMap<String, String>,
    /// What the owner supplies at install time (rule 15).
    #[serde(default)]
    pub settings: Vec<Setting>,
    /// Descriptive fields that are passed through (`description`, `icon`...).
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A manifest that passed [`validate`]; the only way to make one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ValidManifest(Manifest);

impl ValidManifest {
    pub fn get(&self) -> &Manifest {
        &self.0
    }
}

impl std::ops::Deref for ValidManifest {
    type Target = Manifest;
    fn deref(&self) -> &Manifest {
        &self.0
    }
}

/// `image_verification_mode` of the settings (spec §4, §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VerificationMode {
    Off,
    #[default]
    Warn,
    Enforce,
}

/// Names another installed service already holds (rules 3 and 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub id: String,
    pub container_name: String,
    pub subdomains: Vec<String>,
}

/// The cell's side of the rules: what the validator checks against.
#[derive(Debug, Clone)]
pub struct Rules<'a> {
    pub image_registry: &'a str,
    pub cell_dir: &'a Path,
    pub state_dir: &'a Path,
    /// `PIC_HOST_MOUNT_ROOTS`: the host folders a manifest may mount.
    pub mount_roots: &'a [PathBuf],
    pub verification: VerificationMode,
    /// The other installed services (the one being validated excluded).
    pub taken: Vec<Taken>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Report {
    /// Whether the manifest was refused.
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    fn error(&mut self, field: &str, msg: impl fmt::Display) {
        self.errors.push(format!("{field}: {msg}"));
    }

    fn warn(&mut self, field: &str, msg: impl fmt::Display) {
        self.warnings.push(format!("{field}: {msg}"));
    }
}

/// The cell's own containers: never a service's name or backend (rules 3, 7).
pub const CORE_CONTAINERS: &[&str] = &[
    "cell-api",
    "cell-caddy",
    "cell-dns",
    "cell-wireguard",
    "cell-mail",
    "cell-webui",
    "pic-store",
];

/// Images allowed from outside the store's registry (rule 2).
pub const TRUSTED_VENDOR_IMAGES: &[&str] = &[
    "mailserver/docker-mailserver",
    "tomsquest/docker-radicale",
    "bytemark/webdav",
    "filegator/filegator",
    "hardware/rainloop",
];

/// Subdomains the cell keeps for itself (rule 6).
pub const RESERVED_SUBDOMAINS: &[&str] = &[
    "api", "admin", "www", "mail", "smtp", "imap", "webmail", "dns", "vpn", "wg", "store", "cell",
    "caddy", "auth", "login", "static",
];

/// The template placeholders of spec §7 that an `env[].name` would shadow.
pub const PLACEHOLDERS: &[&str] = &[
    "SERVICE_ID",
    "SERVICE_IP",
    "CONTAINER_NAME",
    "IMAGE",
    "DATA_DIR",
    "NETWORK",
    "CELL_DOMAIN",
    "INSTANCE_ID",
    "REDIRECT_PORT",
    "FWMARK",
    "ROUTE_TABLE",
];

/// Capabilities any service may add (rule 9).
const SERVICE_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "SETUID",
    "SETGID",
    "NET_BIND_SERVICE",
];

/// Capabilities only `kind: connectivity` may add on top (rule 9).
const CONNECTIVITY_CAPS: &[&str] = &["NET_ADMIN", "NET_RAW"];

/// The only host files outside `PIC_HOST_MOUNT_ROOTS` a service may
/// mount, and only read-only (rule 4).
pub const TIME_FILES: &[&str] = &["/etc/localtime", "/etc/timezone"];

/// Top-level fields the validator checks.
const CHECKED_FIELDS: &[&str] = &[
    "id",
    "name",
    "version",
    "author",
    "kind",
    "image",
    "container_name",
    "requires",
    "volumes",
    "env",
    "iptables_rules",
    "subdomain",
    "backend",
    "caddy_route",
    "extra_subdomains",
    "extra_backends",
    "cap_add",
    "provision_hook",
    "instanceable",
    "connectivity",
    "helper_images",
    "settings",
];

/// Descriptive top-level fields, passed through into [`Manifest::extra`].
const DESCRIPTIVE_FIELDS: &[&str] = &[
    "description",
    "icon",
    "homepage",
    "category",
    "license",
    "screenshots",
    "tags",
    "min_cell_version",
];

/// Longest `name`, `version` or `author`, in characters: they end up in
/// the admin page and in logs.
const MAX_TEXT_CHARS: usize = 128;
const MAX_ENV_VALUE_BYTES: usize = 1024;
const MAX_HOOK_ARGS: usize = 32;
const MAX_HOOK_ARG_BYTES: usize = 1024;
const MAX_PATH_BYTES: usize = 4096;
/// Docker's own limit on a repository name.
const MAX_REPO_BYTES: usize = 255;
const MAX_HOST_BYTES: usize = 253;
/// Rule 14: at most this many helper images.
const MAX_HELPER_IMAGES: usize = 8;
/// Rule 15: at most this many settings, and choices per setting.
const MAX_SETTINGS: usize = 32;
const MAX_CHOICES: usize = 32;
/// Rule 15: the length of a generated secret.
const GENERATE_RANGE: std::ops::RangeInclusive<u64> = 16..=64;
/// How much of an offending value an error message quotes: enough for
/// the longest image reference docker takes, so none is cut mid-digest.
const QUOTE_BYTES: usize = 460;

/// Validates a manifest given as JSON. The manifest comes back only when
/// there is no error; the report always lists every problem found.
pub fn validate(value: &serde_json::Value, rules: &Rules) -> (Option<ValidManifest>, Report) {
    let mut report = Report::default();
    let manifest = match value.as_object() {
        Some(obj) => Some(check_manifest(obj, rules, &mut report)),
        None => {
            report.error(
                "manifest",
                format!("expected a JSON object, found {}", kind_of(value)),
            );
            None
        }
    };
    let valid = manifest.filter(|_| !report.has_errors()).map(ValidManifest);
    (valid, report)
}

/// The manifest as far as it can be read, with sample values where a field
/// is missing or wrong: what `validate` renders a template with when the
/// manifest has errors (spec §7 item 6), so one run lists the errors of
/// both files. `None` when the value is not a JSON object.
pub fn best_effort(value: &Value, rules: &Rules, folder_id: Option<&str>) -> Option<Manifest> {
    let obj = value.as_object()?;
    let mut scratch = Report::default();
    let mut m = check_manifest(obj, rules, &mut scratch);
    if field(obj, "id")
        .and_then(Value::as_str)
        .and_then(|s| ServiceId::parse(s).ok())
        .is_none()
    {
        if let Some(id) = folder_id.and_then(|f| ServiceId::parse(f).ok()) {
            m.id = id;
        }
    }
    Some(m)
}

/// Validates a manifest given as bytes; text that is not JSON is one error.
pub fn validate_bytes(bytes: &[u8], rules: &Rules) -> (Option<ValidManifest>, Report) {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value) => validate(&value, rules),
        Err(e) => (
            None,
            Report {
                errors: vec![format!("not JSON: {e}")],
                warnings: vec![],
            },
        ),
    }
}

/// Every rule of spec §6, each field checked on its own so that one bad
/// field never hides the problems of another. A field that is missing or
/// wrong gets a sample value (see [`best_effort`]); the manifest is only
/// ever used as valid when the report has no error.
fn check_manifest(obj: &Map<String, Value>, rules: &Rules, r: &mut Report) -> Manifest {
    let id = check_id(obj, r);
    let name = check_text(obj, "name", r);
    let version = check_text(obj, "version", r);
    let author = check_text(obj, "author", r);
    let kind = check_kind(obj, r);
    // A bad `kind` is one error; the checks that depend on it then assume
    // the more permissive kind rather than pile up follow-on errors.
    let lenient_kind = kind.unwrap_or(Kind::Connectivity);
    let image = check_image(obj, rules, r);
    let container_name = check_container_name(obj, rules, r);
    let requires = check_requires(obj, id.as_ref(), r);
    let volumes = check_volumes(obj, rules, r);
    let env = check_env(obj, r);
    let iptables_rules = check_port_rules(obj, r);
    let sample_container = sample_text(obj, "container_name", "sample");
    let routes = check_routes(
        obj,
        container_name.as_deref().unwrap_or(&sample_container),
        rules,
        r,
    );
    let cap_add = check_caps(obj, lenient_kind, r);
    let provision_hook = check_provision_hook(obj, r);
    let (instanceable, connectivity) = check_connectivity(obj, lenient_kind, r);
    let helper_images = check_helper_images(obj, rules, r);
    let settings = check_settings(obj, r);
    check_placeholder_clashes(&env, &helper_images, &settings, r);
    let extra = check_other_fields(obj, r);
    Manifest {
        id: id.unwrap_or_else(ServiceId::sample),
        name: name.unwrap_or_else(|| "sample".into()),
        version: version.unwrap_or_else(|| "0".into()),
        author: author.unwrap_or_else(|| "sample".into()),
        kind: kind.unwrap_or(lenient_kind),
        image: image.unwrap_or_else(|| sample_text(obj, "image", "sample.invalid/image:0")),
        container_name: container_name.unwrap_or(sample_container),
        requires,
        volumes,
        env,
        iptables_rules,
        routes,
        cap_add,
        provision_hook,
        instanceable,
        connectivity,
        helper_images,
        settings,
        extra,
    }
}

/// A field's text when it is a plain name a template may hold, else
/// `fallback`: the sample [`best_effort`] renders a template with.
fn sample_text(obj: &Map<String, Value>, key: &str, fallback: &str) -> String {
    let plain = |s: &&str| {
        !s.is_empty()
            && s.len() <= 300
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._@:/-".contains(c))
    };
    match field(obj, key).and_then(Value::as_str).filter(plain) {
        Some(s) => s.to_string(),
        None => fallback.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Reading JSON by hand: each helper reports a wrong type and moves on.

/// "a string", "an array"...: the JSON type of a value, for messages.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value quoted for a message: escaped, and cut if long.
fn q(s: &str) -> String {
    format!("{:?}", truncate(s, QUOTE_BYTES))
}

/// An object key as part of a field path: bare when plain, else quoted.
fn key_label(key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        key.to_string()
    } else {
        q(key)
    }
}

/// A field's value; `null` counts as absent, as in the spec's example.
fn field<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn as_str<'v>(v: &'v Value, label: &str, r: &mut Report) -> Option<&'v str> {
    match v {
        Value::String(s) => Some(s),
        other => {
            r.error(
                label,
                format!("expected a string, found {}", kind_of(other)),
            );
            None
        }
    }
}

fn as_array<'v>(v: &'v Value, label: &str, r: &mut Report) -> Option<&'v Vec<Value>> {
    match v {
        Value::Array(a) => Some(a),
        other => {
            r.error(
                label,
                format!("expected an array, found {}", kind_of(other)),
            );
            None
        }
    }
}

fn as_object<'v>(v: &'v Value, label: &str, r: &mut Report) -> Option<&'v Map<String, Value>> {
    match v {
        Value::Object(o) => Some(o),
        other => {
            r.error(
                label,
                format!("expected an object, found {}", kind_of(other)),
            );
            None
        }
    }
}

/// A string field that must be there and must not be empty.
fn required_str<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
    label: &str,
    r: &mut Report,
) -> Option<&'v str> {
    let Some(v) = field(obj, key) else {
        r.error(label, "is required");
        return None;
    };
    let s = as_str(v, label, r)?;
    if s.is_empty() {
        r.error(label, "must not be empty");
        return None;
    }
    Some(s)
}

fn optional_str<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
    label: &str,
    r: &mut Report,
) -> Option<&'v str> {
    field(obj, key).and_then(|v| as_str(v, label, r))
}

fn optional_array<'v>(obj: &'v Map<String, Value>, key: &str, r: &mut Report) -> &'v [Value] {
    field(obj, key)
        .and_then(|v| as_array(v, key, r))
        .map_or(&[], Vec::as_slice)
}

/// Keys of a nested object the validator does not know: ignored, with a
/// warning so that a typo does not go unnoticed.
fn warn_unknown_keys(obj: &Map<String, Value>, known: &[&str], label: &str, r: &mut Report) {
    for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
        r.warn(
            &format!("{label}.{}", key_label(key)),
            "unknown field, ignored",
        );
    }
}

// ---------------------------------------------------------------------------
// Rule 1: identity and descriptive text.

fn check_id(obj: &Map<String, Value>, r: &mut Report) -> Option<ServiceId> {
    let s = required_str(obj, "id", "id", r)?;
    if !is_slug(s) {
        r.error(
            "id",
            format!(
                "{} is not a valid id (a lower-case letter, then up to 30 of a-z, 0-9, -)",
                q(s)
            ),
        );
        return None;
    }
    ServiceId::parse(s).ok()
}

/// `name`, `version`, `author`: short, printable text.
fn check_text(obj: &Map<String, Value>, key: &str, r: &mut Report) -> Option<String> {
    let s = required_str(obj, key, key, r)?;
    let chars = s.chars().count();
    if chars > MAX_TEXT_CHARS {
        r.error(
            key,
            format!(
                "{} is {chars} characters long, at most {MAX_TEXT_CHARS} are allowed",
                q(s)
            ),
        );
        return None;
    }
    if s.chars().any(is_unprintable) {
        r.error(key, format!("{} holds a control character", q(s)));
        return None;
    }
    Some(s.to_string())
}

/// Control characters and the bidirectional overrides that can make a
/// log line or a page read differently from what it holds.
fn is_unprintable(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn check_kind(obj: &Map<String, Value>, r: &mut Report) -> Option<Kind> {
    let Some(s) = optional_str(obj, "kind", "kind", r) else {
        // Absent (or null) is the default; a wrong type was just reported.
        return field(obj, "kind").map_or(Some(Kind::Service), |_| None);
    };
    match s {
        "service" => Some(Kind::Service),
        "connectivity" => Some(Kind::Connectivity),
        other => {
            r.error(
                "kind",
                format!("{} is not \"service\" or \"connectivity\"", q(other)),
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------
// Rule 2: the image.

/// An image reference split into `REPO[:TAG][@DIGEST]`.
#[derive(Debug, PartialEq, Eq)]
struct ImageRef<'a> {
    repo: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

/// Splits an image reference. The tag is after the last `:` that follows
/// the last `/`, so a registry port (`host:5000/x`) is never taken for one.
fn split_image(image: &str) -> ImageRef<'_> {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last_part = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_part..].rfind(':') {
        Some(i) => ImageRef {
            repo: &name[..last_part + i],
            tag: Some(&name[last_part + i + 1..]),
            digest,
        },
        None => ImageRef {
            repo: name,
            tag: None,
            digest,
        },
    }
}

fn check_image(obj: &Map<String, Value>, rules: &Rules, r: &mut Report) -> Option<String> {
    let image = required_str(obj, "image", "image", r)?;
    let problems = image_problems(image, rules.image_registry);
    for problem in &problems {
        r.error("image", format!("{} {problem}", q(image)));
    }
    let pinned = split_image(image).digest.is_some();
    if !pinned {
        let msg = format!(
            "{} has no @sha256 digest, so the pulled image cannot be checked",
            q(image)
        );
        match rules.verification {
            VerificationMode::Enforce => r.error("image", msg),
            VerificationMode::Warn | VerificationMode::Off => r.warn("image", msg),
        }
    }
    problems.is_empty().then(|| image.to_string())
}

/// What is wrong with an image reference, apart from a missing digest.
fn image_problems(image: &str, registry: &str) -> Vec<String> {
    let parts = split_image(image);
    let mut problems = Vec::new();
    if !is_valid_repo(parts.repo) {
        problems.push(format!(
            "has an invalid repository name {} (lower-case path components, an optional registry host first)",
            q(parts.repo)
        ));
    } else if !is_allowed_repo(parts.repo, registry) {
        problems.push(format!(
            "is neither from the store's registry {} nor a trusted vendor image ({})",
            q(registry),
            TRUSTED_VENDOR_IMAGES.join(", ")
        ));
    }
    if let Some(tag) = parts.tag.filter(|t| !is_valid_tag(t)) {
        problems.push(format!(
            "has an invalid tag {} (A-Z, a-z, 0-9, _ . -; at most 128, not starting with . or -)",
            q(tag)
        ));
    }
    if let Some(digest) = parts.digest.filter(|d| !is_valid_digest(d)) {
        problems.push(format!(
            "has an invalid digest {} (sha256: and 64 lower-case hex digits)",
            q(digest)
        ));
    }
    problems
}

/// `[HOST[:PORT]/]PATH` of docker's reference grammar, path lower case.
fn is_valid_repo(repo: &str) -> bool {
    if repo.is_empty() || repo.len() > MAX_REPO_BYTES {
        return false;
    }
    let parts: Vec<&str> = repo.split('/').collect();
    let path = match parts.split_first() {
        Some((first, rest)) if !rest.is_empty() && is_registry_host_like(first) => {
            if !is_valid_registry(first) {
                return false;
            }
            rest
        }
        _ => parts.as_slice(),
    };
    path.iter().all(|c| is_valid_path_component(c))
}

/// Docker reads a first component as a registry when it has a `.` or a
/// `:`, or is `localhost`.
fn is_registry_host_like(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// `HOST[:PORT]`: dot-separated labels of letters, digits and inner `-`.
fn is_valid_registry(registry: &str) -> bool {
    let (host, port) = match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let port_ok = port.is_none_or(|p| is_digits(p) && p.len() <= 5);
    let host_ok = host.split('.').all(|label| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    port_ok && host_ok
}

/// `[a-z0-9]+(?:[._-][a-z0-9]+)*`
fn is_valid_path_component(c: &str) -> bool {
    let lower_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let separator = |b: u8| matches!(b, b'.' | b'_' | b'-');
    let bytes = c.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    let no_double_separator = bytes
        .windows(2)
        .all(|w| !(separator(w[0]) && separator(w[1])));
    lower_alnum(first)
        && lower_alnum(last)
        && no_double_separator
        && bytes.iter().all(|&b| lower_alnum(b) || separator(b))
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn is_valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    match tag.as_bytes().split_first() {
        Some((&first, rest)) => {
            word(first)
                && rest.len() <= 127
                && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-')
        }
        None => false,
    }
}

/// `sha256:` and 64 lower-case hex digits.
fn is_valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The store's registry (as a whole path prefix) or a trusted vendor.
fn is_allowed_repo(repo: &str, registry: &str) -> bool {
    TRUSTED_VENDOR_IMAGES.contains(&repo) || is_under_registry(repo, registry)
}

/// Whether `repo` lies under the registry prefix. The prefix ends at a
/// path boundary whether or not it is configured with a trailing `/`, so
/// `git.pic.ngo/roof` never admits `git.pic.ngo/roofx/y`.
fn is_under_registry(repo: &str, registry: &str) -> bool {
    let base = registry.trim_end_matches('/');
    !base.is_empty()
        && repo
            .strip_prefix(base)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty())
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

// ---------------------------------------------------------------------------
// Rule 3: the container name.

fn check_container_name(obj: &Map<String, Value>, rules: &Rules, r: &mut Report) -> Option<String> {
    let name = required_str(obj, "container_name", "container_name", r)?;
    let problem = container_name_problem(name, &rules.taken);
    if let Some(problem) = &problem {
        r.error("container_name", format!("{} {problem}", q(name)));
    }
    problem.is_none().then(|| name.to_string())
}

fn container_name_problem(name: &str, taken: &[Taken]) -> Option<String> {
    if !is_valid_container_name(name) {
        return Some(
            "is not a valid container name (a-z or 0-9, then up to 62 of a-z, 0-9, _ . -)".into(),
        );
    }
    if CORE_CONTAINERS.contains(&name) {
        return Some("is a core container of the cell".into());
    }
    taken
        .iter()
        .find(|t| names_collide(name, &t.container_name))
        .map(|t| {
            format!(
                "collides with {}, the container of the installed service {} (connection instances are named <container_name>-<instance>)",
                q(&t.container_name),
                q(&t.id)
            )
        })
}

/// `^[a-z0-9][a-z0-9_.-]{0,62}$`
fn is_valid_container_name(name: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match name.as_bytes().split_first() {
        Some((&first, rest)) => {
            allowed(first)
                && rest.len() <= 62
                && rest
                    .iter()
                    .all(|&b| allowed(b) || matches!(b, b'_' | b'.' | b'-'))
        }
        None => false,
    }
}

/// Equal, or one is the other plus `-...`: an instance of one would take
/// the other's name.
fn names_collide(a: &str, b: &str) -> bool {
    let extends = |long: &str, short: &str| {
        long.strip_prefix(short)
            .is_some_and(|rest| rest.starts_with('-'))
    };
    a == b || extends(a, b) || extends(b, a)
}

// ---------------------------------------------------------------------------
// Rule 4: volumes, and the host-path rules the compose checker shares.

fn check_volumes(obj: &Map<String, Value>, rules: &Rules, r: &mut Report) -> Vec<Volume> {
    let mut volumes: Vec<Volume> = Vec::new();
    for (i, item) in optional_array(obj, "volumes", r).iter().enumerate() {
        let label = format!("volumes[{i}]");
        let Some(volume) = check_volume(&label, item, rules, r) else {
            continue;
        };
        let target = normalize_path(&volume.target);
        if let Some(j) = volumes
            .iter()
            .position(|v| normalize_path(&v.target) == target)
        {
            r.error(
                &format!("{label}.target"),
                format!(
                    "{} is already the target of volumes[{j}]",
                    q(&volume.target)
                ),
            );
            continue;
        }
        volumes.push(volume);
    }
    volumes
}

fn check_volume(label: &str, item: &Value, rules: &Rules, r: &mut Report) -> Option<Volume> {
    let obj = as_object(item, label, r)?;
    warn_unknown_keys(obj, &["mount", "target", "read_only"], label, r);
    let mount_label = format!("{label}.mount");
    let target_label = format!("{label}.target");
    let mount = required_str(obj, "mount", &mount_label, r);
    let target = required_str(obj, "target", &target_label, r);
    let access = match field(obj, "read_only") {
        None | Some(Value::Bool(false)) => Access::ReadWrite,
        Some(Value::Bool(true)) => Access::ReadOnly,
        Some(other) => {
            r.error(
                &format!("{label}.read_only"),
                format!("expected a boolean, found {}", kind_of(other)),
            );
            return None;
        }
    };
    let mount_problem = mount.and_then(|m| mount_problem(m, access, rules));
    let target_problem = target.and_then(target_problem);
    if let (Some(m), Some(problem)) = (mount, &mount_problem) {
        r.error(&mount_label, format!("{} {problem}", q(m)));
    }
    if let (Some(t), Some(problem)) = (target, &target_problem) {
        r.error(&target_label, format!("{} {problem}", q(t)));
    }
    if mount_problem.is_some() || target_problem.is_some() {
        return None;
    }
    Some(Volume {
        mount: mount?.to_string(),
        target: target?.to_string(),
        read_only: access == Access::ReadOnly,
    })
}

/// How a host path is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// A volume source: a name under the data dir, or an allowed host path.
fn mount_problem(mount: &str, access: Access, rules: &Rules) -> Option<String> {
    if let Some(problem) = path_text_problem(mount) {
        return Some(problem);
    }
    if mount.starts_with('/') {
        let places = HostPlaces {
            roots: rules.mount_roots,
            cell_dir: rules.cell_dir,
            state_dir: rules.state_dir,
        };
        host_path_problem(mount, access, &places)
    } else {
        relative_mount_problem(mount)
    }
}

/// A relative mount lives under the service's data dir and stays there.
fn relative_mount_problem(mount: &str) -> Option<String> {
    if mount.split('/').any(|c| c == "..") {
        return Some("climbs out of the data dir with ..".into());
    }
    if mentions_docker_sock(mount) {
        return Some("names docker.sock, which is never mountable".into());
    }
    if mount.starts_with('~') {
        return Some("starts with ~, which would be read as a home directory".into());
    }
    None
}

/// A container path: absolute, without `..`, not the container's root.
fn target_problem(target: &str) -> Option<String> {
    if let Some(problem) = path_text_problem(target) {
        return Some(problem);
    }
    if !target.starts_with('/') {
        return Some("is not an absolute path in the container".into());
    }
    if target.split('/').any(|c| c == "..") {
        return Some("holds a .. component".into());
    }
    if normalize_path(target) == "/" {
        return Some("is the container's root".into());
    }
    None
}

/// Characters that would break the short volume syntax (`SRC:DST`), a
/// line-based file, or be read as a variable.
fn path_text_problem(path: &str) -> Option<String> {
    if path.len() > MAX_PATH_BYTES {
        return Some(format!("is longer than {MAX_PATH_BYTES} bytes"));
    }
    if path.chars().any(char::is_control) {
        return Some("holds a control character (NUL, newline...)".into());
    }
    if path.contains(':') {
        return Some("holds a :, which would break the volume syntax".into());
    }
    if path.contains('$') {
        return Some("holds a $, which would be read as a variable".into());
    }
    // Paths are only ever plain names: nothing that a YAML, shell or
    // compose parser could read as syntax.
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+@".contains(c);
    if let Some(bad) = path.chars().find(|&c| !plain(c)) {
        return Some(format!(
            "holds {bad:?}; paths may only use letters, digits and / . _ - + @"
        ));
    }
    None
}

/// Normalises a path lexically: drops `.` and empty components, resolves
/// `..` against the component before it (at the root it stays at the
/// root) and drops a trailing `/`. An absolute path stays absolute; a
/// relative one keeps the `..` it cannot resolve, and is `.` when empty.
pub fn normalize_path(p: &str) -> String {
    let absolute = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for component in p.split('/') {
        match component {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if absolute => {}
                _ => parts.push(".."),
            },
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// Where host paths may and may not come from (rule 4).
#[derive(Debug, Clone, Copy)]
pub struct HostPlaces<'a> {
    /// `PIC_HOST_MOUNT_ROOTS`, normalised.
    pub roots: &'a [PathBuf],
    pub cell_dir: &'a Path,
    pub state_dir: &'a Path,
}

impl HostPlaces<'_> {
    /// `/srv, /mnt, /media`: the roots, for messages.
    pub fn roots_text(&self) -> String {
        if self.roots.is_empty() {
            return "none".into();
        }
        let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
        roots.join(", ")
    }
}

/// Why a host path may not be mounted into a service, or `None` when it
/// may (rule 4, an allow-list). The path is normalised first and compared
/// by whole components (`/srvx` is not under `/srv`): it must be one of
/// the roots or under one, and neither be, lie under nor hold the cell's
/// directory or the state directory; `/etc/localtime` and `/etc/timezone`
/// are allowed read-only. `docker.sock` anywhere is refused. The
/// service's own data dir is under `state_dir`: a caller that allows it
/// checks it first.
pub fn host_path_problem(p: &str, access: Access, places: &HostPlaces) -> Option<String> {
    let normal = normalize_path(p);
    if mentions_docker_sock(p) || mentions_docker_sock(&normal) {
        return Some("names docker.sock, which is never mountable".into());
    }
    if !p.starts_with('/') {
        return Some("is not an absolute host path".into());
    }
    if TIME_FILES.contains(&normal.as_str()) {
        return match access {
            Access::ReadOnly => None,
            Access::ReadWrite => Some(format!(
                "is {normal}, which may only be mounted read-only (\"read_only\": true)"
            )),
        };
    }
    let under_root = places
        .roots
        .iter()
        .any(|root| is_within(&normal, &normalize_path(&root.to_string_lossy())));
    if under_root {
        let cell = normalize_path(&places.cell_dir.to_string_lossy());
        let state = normalize_path(&places.state_dir.to_string_lossy());
        return [
            (cell, "the cell's directory "),
            (state, "pic-store's state directory "),
        ]
        .iter()
        .find_map(|(tree, what)| tree_conflict(&normal, tree, what));
    }
    let shown = if normal == p {
        String::new()
    } else {
        format!(" (it is {normal})")
    };
    Some(format!(
        "is not a host folder services may mount{shown}: allowed are {} and what is under them \
         (PIC_HOST_MOUNT_ROOTS), and {} read-only",
        places.roots_text(),
        TIME_FILES.join(" and ")
    ))
}

/// How `path` meets a never-mountable `tree`: it is the tree, lies under
/// it, or holds it.
fn tree_conflict(path: &str, tree: &str, what: &str) -> Option<String> {
    if path == tree {
        Some(format!("is {what}{tree}, which is never mountable"))
    } else if is_within(path, tree) {
        Some(format!("is under {what}{tree}, which is never mountable"))
    } else if is_within(tree, path) {
        Some(format!("holds {what}{tree}, which is never mountable"))
    } else {
        None
    }
}

/// Whether normalised absolute `path` is `dir` or below it, by components.
fn is_within(path: &str, dir: &str) -> bool {
    dir == "/"
        || path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn mentions_docker_sock(p: &str) -> bool {
    p.to_ascii_lowercase().contains("docker.sock")
}

// ---------------------------------------------------------------------------
// Rule 5: firewall rules.

const PORT_RULE_KEYS: &[&str] = &["type", "dest_ip", "dest_port", "proto"];

fn check_port_rules(obj: &Map<String, Value>, r: &mut Report) -> Vec<PortRule> {
    optional_array(obj, "iptables_rules", r)
        .iter()
        .enumerate()
        .filter_map(|(i, item)| check_port_rule(&format!("iptables_rules[{i}]"), item, r))
        .collect()
}

fn check_port_rule(label: &str, item: &Value, r: &mut Report) -> Option<PortRule> {
    let obj = as_object(item, label, r)?;
    let errors_before = r.errors.len();
    // An unknown key could be meant as a match option the cell would then
    // silently leave out, so it is an error, not a warning.
    for key in obj.keys().filter(|k| !PORT_RULE_KEYS.contains(&k.as_str())) {
        r.error(
            &format!("{label}.{}", key_label(key)),
            "unknown key (a rule has only type, dest_ip, dest_port and proto)",
        );
    }
    expect_exact(obj, "type", "ACCEPT", label, r);
    expect_exact(obj, "dest_ip", "${SERVICE_IP}", label, r);
    let dest_port = check_dest_port(obj, label, r);
    let proto = check_proto(obj, label, r);
    if r.errors.len() > errors_before {
        return None;
    }
    Some(PortRule {
        dest_port: dest_port?,
        proto: proto?,
    })
}

/// A key whose only allowed value is one fixed text.
fn expect_exact(obj: &Map<String, Value>, key: &str, want: &str, label: &str, r: &mut Report) {
    let label = format!("{label}.{key}");
    if let Some(s) = required_str(obj, key, &label, r) {
        if s != want {
            r.error(&label, format!("{} must be exactly {}", q(s), q(want)));
        }
    }
}

fn check_dest_port(obj: &Map<String, Value>, label: &str, r: &mut Report) -> Option<u16> {
    let label = format!("{label}.dest_port");
    let Some(v) = field(obj, "dest_port") else {
        r.error(&label, "is required");
        return None;
    };
    match port_number(v) {
        Ok(port) => Some(port),
        Err(problem) => {
            r.error(&label, problem);
            None
        }
    }
}

/// A JSON integer 1–65535 (not a string, not a fraction).
fn port_number(v: &Value) -> Result<u16, String> {
    let Value::Number(n) = v else {
        return Err(format!("expected an integer, found {}", kind_of(v)));
    };
    if n.as_u64().is_none() && n.as_i64().is_none() {
        return Err(format!("{n} is not an integer"));
    }
    n.as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("{n} is outside 1-65535"))
}

fn check_proto(obj: &Map<String, Value>, label: &str, r: &mut Report) -> Option<Proto> {
    let label = format!("{label}.proto");
    match field(obj, "proto") {
        None => Some(Proto::Tcp),
        Some(v) => match as_str(v, &label, r)? {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            other => {
                r.error(&label, format!("{} is not \"tcp\" or \"udp\"", q(other)));
                None
            }
        },
    }
}

// ---------------------------------------------------------------------------
// Rules 6 and 7: subdomains and their backends.

/// The routes found so far, and what has to be unique among them.
struct RouteBook<'a> {
    taken: &'a [Taken],
    routes: Vec<(String, String)>,
    seen: Vec<String>,
}

impl RouteBook<'_> {
    /// Checks one subdomain and records its route when it has a backend.
    fn add(&mut self, label: &str, subdomain: &str, backend: Option<&str>, r: &mut Report) {
        if let Some(problem) = subdomain_problem(subdomain, self.taken, &self.seen) {
            r.error(label, format!("{} {problem}", q(subdomain)));
        }
        self.seen.push(subdomain.to_string());
        match backend {
            Some(b) => self.routes.push((subdomain.to_string(), b.to_string())),
            None => r.error(
                label,
                format!(
                    "{} has no backend to route to (set \"backend\": \"HOST:PORT\")",
                    q(subdomain)
                ),
            ),
        }
    }
}

fn subdomain_problem(subdomain: &str, taken: &[Taken], seen: &[String]) -> Option<String> {
    if !is_slug(subdomain) {
        return Some(
            "is not a valid subdomain (a lower-case letter, then up to 30 of a-z, 0-9, -)".into(),
        );
    }
    if RESERVED_SUBDOMAINS.contains(&subdomain) {
        return Some("is reserved for the cell".into());
    }
    if seen.iter().any(|s| s == subdomain) {
        return Some("is routed twice in this manifest".into());
    }
    taken
        .iter()
        .find(|t| t.subdomains.iter().any(|s| s == subdomain))
        .map(|t| format!("is already routed by the installed service {}", q(&t.id)))
}

/// The legacy `caddy_route` object: `{"subdomain", "backend"}`, or
/// `{"subdomain", "port"}` routed to `container_name:port` (rule 16).
struct LegacyRoute<'v> {
    subdomain: Option<&'v str>,
    backend: Option<String>,
}

fn legacy_route<'v>(
    obj: &'v Map<String, Value>,
    container_name: &str,
    r: &mut Report,
) -> Option<LegacyRoute<'v>> {
    let route = as_object(field(obj, "caddy_route")?, "caddy_route", r)?;
    r.warn(
        "caddy_route",
        "is the legacy form; use \"subdomain\" and \"backend\"",
    );
    warn_unknown_keys(route, &["subdomain", "backend", "port"], "caddy_route", r);
    let subdomain = required_str(route, "subdomain", "caddy_route.subdomain", r);
    let backend = optional_str(route, "backend", "caddy_route.backend", r);
    if let Some(b) = backend {
        check_backend("caddy_route.backend", b, r);
    }
    let port = field(route, "port").and_then(|v| {
        let port = match v {
            Value::String(s) if is_digits(s) && s.len() <= 5 => s
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("{s} is outside 1-65535")),
            other => port_number(other),
        };
        port.map_err(|problem| r.error("caddy_route.port", problem))
            .ok()
    });
    if let (Some(_), Some(_)) = (backend, port) {
        r.warn("caddy_route.port", "is ignored: the route has a backend");
    }
    let backend = backend
        .map(str::to_string)
        .or_else(|| port.map(|p| format!("{container_name}:{p}")));
    Some(LegacyRoute { subdomain, backend })
}

/// Every route of the manifest, main first: `subdomain`, `caddy_route`,
/// `extra_subdomains` (to the main backend), `extra_backends`.
fn check_routes(
    obj: &Map<String, Value>,
    container_name: &str,
    rules: &Rules,
    r: &mut Report,
) -> Vec<(String, String)> {
    let backend = optional_str(obj, "backend", "backend", r);
    if let Some(b) = backend {
        check_backend("backend", b, r);
    }
    let subdomain = optional_str(obj, "subdomain", "subdomain", r);
    let legacy = legacy_route(obj, container_name, r);
    let main_backend = backend.or(legacy.as_ref().and_then(|l| l.backend.as_deref()));
    let mut book = RouteBook {
        taken: &rules.taken,
        routes: Vec::new(),
        seen: Vec::new(),
    };
    if let Some(s) = subdomain {
        book.add("subdomain", s, backend, r);
    }
    let mut backend_used = subdomain.is_some();
    if let Some(LegacyRoute {
        subdomain: Some(s),
        backend: own,
    }) = &legacy
    {
        let target = own.as_deref().or(backend);
        backend_used |= own.is_none();
        // The same route given both ways keeps a manifest readable by
        // older cells; it is one route, not a duplicate.
        if !(subdomain == Some(s) && target == backend) {
            book.add("caddy_route.subdomain", s, target, r);
        }
    }
    let extra_subdomains = optional_array(obj, "extra_subdomains", r);
    backend_used |= !extra_subdomains.is_empty();
    for (i, item) in extra_subdomains.iter().enumerate() {
        let label = format!("extra_subdomains[{i}]");
        if let Some(s) = as_str(item, &label, r) {
            book.add(&label, s, main_backend, r);
        }
    }
    add_extra_backends(obj, &mut book, r);
    if let (Some(b), false) = (backend, backend_used) {
        r.warn(
            "backend",
            format!("{} is set but no subdomain routes to it", q(b)),
        );
    }
    book.routes
}

fn add_extra_backends(obj: &Map<String, Value>, book: &mut RouteBook, r: &mut Report) {
    let Some(map) = field(obj, "extra_backends").and_then(|v| as_object(v, "extra_backends", r))
    else {
        return;
    };
    for (subdomain, value) in map {
        let label = format!("extra_backends.{}", key_label(subdomain));
        if let Some(backend) = as_str(value, &label, r) {
            check_backend(&label, backend, r);
            book.add(&label, subdomain, Some(backend), r);
        }
    }
}

fn check_backend(label: &str, backend: &str, r: &mut Report) {
    if let Some(problem) = backend_problem(backend) {
        r.error(label, format!("{} {problem}", q(backend)));
    }
}

/// `HOST:PORT` with a port 1–65535 and a host that is not the cell itself.
fn backend_problem(backend: &str) -> Option<String> {
    let not_host_port = || Some("is not HOST:PORT (letters, digits, . _ -, then :1-65535)".into());
    let Some((host, port)) = backend.rsplit_once(':') else {
        return not_host_port();
    };
    let host_ok = !host.is_empty()
        && host.len() <= MAX_HOST_BYTES
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !host_ok || !is_digits(port) || port.len() > 5 {
        return not_host_port();
    }
    match port.parse::<u32>() {
        Ok(1..=65535) => forbidden_backend_host(host),
        _ => Some(format!("has port {port}, outside 1-65535")),
    }
}

/// Hosts that reach the cell's own containers or the host itself.
fn forbidden_backend_host(host: &str) -> Option<String> {
    let lower = host.to_ascii_lowercase();
    let name = lower.trim_end_matches('.');
    if CORE_CONTAINERS.contains(&name) {
        return Some(format!(
            "points at {}, a core container of the cell",
            q(name)
        ));
    }
    if name == "localhost" || name.ends_with(".localhost") {
        return Some("points at localhost".into());
    }
    if name == "host.docker.internal" || name.ends_with(".docker.internal") {
        return Some("points at the docker host".into());
    }
    if looks_numeric(name) {
        return match plain_ipv4(name) {
            Some(ip) => forbidden_ipv4(ip),
            None => Some(format!(
                "has the numeric host {}, which is not a plain dotted quad",
                q(host)
            )),
        };
    }
    None
}

/// Whether a resolver could read the host as a number (`127.1`,
/// `2130706433`, `0x7f.1`, `0177.0.0.1`): every dot-separated part is
/// decimal or `0x` hex, or the host is nothing but digits and dots.
fn looks_numeric(host: &str) -> bool {
    let numeric_part = |p: &str| {
        is_digits(p)
            || p.strip_prefix("0x")
                .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    host.bytes().all(|b| b.is_ascii_digit() || b == b'.') || host.split('.').all(numeric_part)
}

/// `a.b.c.d` with each part 0–255 in plain decimal, no leading zeros.
fn plain_ipv4(host: &str) -> Option<[u8; 4]> {
    let parts: Vec<&str> = host.split('.').collect();
    let mut octets = [0u8; 4];
    if parts.len() != 4 {
        return None;
    }
    for (octet, part) in octets.iter_mut().zip(&parts) {
        let plain = is_digits(part) && (part.len() == 1 || !part.starts_with('0'));
        *octet = part.parse().ok().filter(|_| plain)?;
    }
    Some(octets)
}

fn forbidden_ipv4(ip: [u8; 4]) -> Option<String> {
    let shown = format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]);
    match ip {
        [127, ..] => Some(format!("points at {shown}, a loopback address")),
        [0, ..] => Some(format!("points at {shown}, which means this host")),
        [169, 254, ..] => Some(format!("points at {shown}, a link-local address")),
        // The cell network's gateway is the host itself.
        [172, 20, 0, 1] => Some(format!(
            "points at {shown}, the cell network's gateway (the host)"
        )),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Rule 8: environment.

fn check_env(obj: &Map<String, Value>, r: &mut Report) -> Vec<EnvVar> {
    let mut env: Vec<EnvVar> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (i, item) in optional_array(obj, "env", r).iter().enumerate() {
        let label = format!("env[{i}]");
        let Some(var) = check_env_var(&label, item, r) else {
            continue;
        };
        if names.contains(&var.name) {
            r.error(
                &format!("{label}.name"),
                format!("{} is set twice", q(&var.name)),
            );
            continue;
        }
        names.push(var.name.clone());
        env.push(var);
    }
    env
}

fn check_env_var(label: &str, item: &Value, r: &mut Report) -> Option<EnvVar> {
    let obj = as_object(item, label, r)?;
    warn_unknown_keys(obj, &["name", "value"], label, r);
    let name_label = format!("{label}.name");
    let value_label = format!("{label}.value");
    let name = required_str(obj, "name", &name_label, r).filter(|n| {
        let problem = env_name_problem(n);
        if let Some(problem) = &problem {
            r.error(&name_label, format!("{} {problem}", q(n)));
        }
        problem.is_none()
    });
    let value = check_env_value(obj, &value_label, r);
    Some(EnvVar {
        name: name?.to_string(),
        value: value?,
    })
}

fn env_name_problem(name: &str) -> Option<String> {
    let head = |b: u8| b.is_ascii_uppercase() || b == b'_';
    let valid = match name.as_bytes().split_first() {
        Some((&first, rest)) => {
            head(first) && rest.len() <= 63 && rest.iter().all(|&b| head(b) || b.is_ascii_digit())
        }
        None => false,
    };
    if !valid {
        return Some("is not a valid name (A-Z or _, then up to 63 of A-Z, 0-9, _)".into());
    }
    if PLACEHOLDERS.contains(&name) {
        return Some("would shadow the template placeholder of the same name".into());
    }
    None
}

/// A value is kept to characters that need no quoting anywhere it is
/// written. As in the seed, a number or boolean is taken as its text and a
/// missing value is the empty string.
fn check_env_value(obj: &Map<String, Value>, label: &str, r: &mut Report) -> Option<String> {
    let value = scalar_text(field(obj, "value"), label, r)?;
    if let Some(problem) = env_value_problem(&value) {
        r.error(label, problem);
        return None;
    }
    Some(value)
}

/// A string, number or boolean as text; absent (or null) is `""`.
fn scalar_text(v: Option<&Value>, label: &str, r: &mut Report) -> Option<String> {
    match v {
        None => Some(String::new()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        Some(other) => {
            r.error(
                label,
                format!(
                    "expected a string, number or boolean, found {}",
                    kind_of(other)
                ),
            );
            None
        }
    }
}

/// Why `value` is not a safe env value (rule 8), or `None`. Also used for
/// the values a person gives a connection.
pub fn env_value_problem(value: &str) -> Option<String> {
    if value.len() > MAX_ENV_VALUE_BYTES {
        return Some(format!(
            "{} is longer than {MAX_ENV_VALUE_BYTES} bytes",
            q(value)
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._@:/+-= ".contains(c);
    value.chars().find(|&c| !allowed(c)).map(|bad| {
        format!(
            "{} holds {bad:?}; only letters, digits, space and . _ @ : / + - = are allowed",
            q(value)
        )
    })
}

// ---------------------------------------------------------------------------
// Rule 9: capabilities.

/// `cap_chown` → `CHOWN`: upper case, no `CAP_` prefix.
pub fn normalize_cap(cap: &str) -> String {
    let upper = cap.to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).to_string()
}

fn check_caps(obj: &Map<String, Value>, kind: Kind, r: &mut Report) -> Vec<String> {
    let mut caps: Vec<String> = Vec::new();
    for (i, item) in optional_array(obj, "cap_add", r).iter().enumerate() {
        let label = format!("cap_add[{i}]");
        let Some(raw) = as_str(item, &label, r) else {
            continue;
        };
        let cap = normalize_cap(raw);
        match cap_problem(&cap, kind) {
            Some(problem) => r.error(&label, format!("{} {problem}", q(raw))),
            None if caps.contains(&cap) => r.warn(&label, format!("{} is listed twice", q(raw))),
            None => caps.push(cap),
        }
    }
    caps
}

fn cap_problem(cap: &str, kind: Kind) -> Option<String> {
    if SERVICE_CAPS.contains(&cap) {
        return None;
    }
    if CONNECTIVITY_CAPS.contains(&cap) {
        return match kind {
            Kind::Connectivity => None,
            Kind::Service => Some("is only allowed for kind \"connectivity\"".into()),
        };
    }
    Some(format!(
        "is not allowed (allowed: {}; for kind \"connectivity\" also {})",
        SERVICE_CAPS.join(", "),
        CONNECTIVITY_CAPS.join(", ")
    ))
}

// ---------------------------------------------------------------------------
// Rule 10: dependencies.

fn check_requires(
    obj: &Map<String, Value>,
    own_id: Option<&ServiceId>,
    r: &mut Report,
) -> Vec<ServiceId> {
    let mut requires: Vec<ServiceId> = Vec::new();
    for (i, item) in optional_array(obj, "requires", r).iter().enumerate() {
        let label = format!("requires[{i}]");
        let Some(s) = as_str(item, &label, r) else {
            continue;
        };
        let Ok(id) = ServiceId::parse(s) else {
            r.error(
                &label,
                format!(
                    "{} is not a valid service id (a lower-case letter, then up to 30 of a-z, 0-9, -)",
                    q(s)
                ),
            );
            continue;
        };
        if own_id == Some(&id) {
            r.error(&label, format!("{} is the service itself", q(s)));
        } else if requires.contains(&id) {
            r.error(&label, format!("{} is listed twice", q(s)));
        } else {
            requires.push(id);
        }
    }
    requires
}

// ---------------------------------------------------------------------------
// Rule 11: the provision hook.

fn check_provision_hook(obj: &Map<String, Value>, r: &mut Report) -> Option<Vec<String>> {
    let args = as_array(field(obj, "provision_hook")?, "provision_hook", r)?;
    if args.is_empty() || args.len() > MAX_HOOK_ARGS {
        r.error(
            "provision_hook",
            format!(
                "has {} arguments; 1 to {MAX_HOOK_ARGS} are allowed",
                args.len()
            ),
        );
    }
    let checked: Vec<String> = args
        .iter()
        .enumerate()
        .filter_map(|(i, arg)| check_hook_arg(i, arg, r))
        .collect();
    Some(checked)
}

fn check_hook_arg(i: usize, arg: &Value, r: &mut Report) -> Option<String> {
    let label = format!("provision_hook[{i}]");
    let s = as_str(arg, &label, r)?;
    let problem = if s.len() > MAX_HOOK_ARG_BYTES {
        Some(format!("is longer than {MAX_HOOK_ARG_BYTES} bytes"))
    } else if s.contains(['\0', '\n', '\r']) {
        Some("holds a NUL or a newline".into())
    } else if i == 0 && !s.starts_with('/') {
        Some("is not an absolute path (the program to run)".into())
    } else {
        None
    };
    match problem {
        Some(problem) => {
            r.error(&label, format!("{} {problem}", q(s)));
            None
        }
        None => Some(s.to_string()),
    }
}

// ---------------------------------------------------------------------------
// Rule 12: instances and connectivity.

fn check_connectivity(
    obj: &Map<String, Value>,
    kind: Kind,
    r: &mut Report,
) -> (bool, Option<Connectivity>) {
    let instanceable = check_instanceable(obj, r);
    let given = field(obj, "connectivity");
    if instanceable && kind != Kind::Connectivity {
        r.error(
            "instanceable",
            "true is only allowed with kind \"connectivity\"",
        );
    }
    if given.is_some() && kind != Kind::Connectivity {
        r.error("connectivity", "is only allowed with kind \"connectivity\"");
    }
    if instanceable && kind == Kind::Connectivity && given.is_none() {
        r.error(
            "connectivity.mode",
            "is required for an instanceable service (\"redirect\" or \"route\")",
        );
    }
    let connectivity = given.and_then(|v| parse_connectivity(v, r));
    (instanceable, connectivity)
}

fn check_instanceable(obj: &Map<String, Value>, r: &mut Report) -> bool {
    match field(obj, "instanceable") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            r.error(
                "instanceable",
                format!("expected a boolean, found {}", kind_of(other)),
            );
            false
        }
    }
}

fn parse_connectivity(v: &Value, r: &mut Report) -> Option<Connectivity> {
    let obj = as_object(v, "connectivity", r)?;
    warn_unknown_keys(obj, &["mode"], "connectivity", r);
    let mode = match required_str(obj, "mode", "connectivity.mode", r)? {
        "redirect" => ConnectivityMode::Redirect,
        "route" => ConnectivityMode::Route,
        other => {
            r.error(
                "connectivity.mode",
                format!("{} is not \"redirect\" or \"route\"", q(other)),
            );
            return None;
        }
    };
    Some(Connectivity { mode })
}

// ---------------------------------------------------------------------------
// Rule 14: helper images.

/// `db` → `IMAGE_DB`: the placeholder a helper image is known by.
pub fn helper_placeholder(key: &str) -> String {
    format!("IMAGE_{}", key.to_ascii_uppercase())
}

/// `^[a-z][a-z0-9_]{0,15}$`
fn is_helper_key(key: &str) -> bool {
    match key.as_bytes().split_first() {
        Some((&first, rest)) => {
            first.is_ascii_lowercase()
                && rest.len() <= 15
                && rest
                    .iter()
                    .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }
        None => false,
    }
}

fn check_helper_images(
    obj: &Map<String, Value>,
    rules: &Rules,
    r: &mut Report,
) -> BTreeMap<String, String> {
    let mut helpers = BTreeMap::new();
    let Some(map) = field(obj, "helper_images").and_then(|v| as_object(v, "helper_images", r))
    else {
        return helpers;
    };
    if map.len() > MAX_HELPER_IMAGES {
        r.error(
            "helper_images",
            format!(
                "has {} entries; at most {MAX_HELPER_IMAGES} are allowed",
                map.len()
            ),
        );
    }
    for (key, value) in map {
        let label = format!("helper_images.{}", key_label(key));
        let key_ok = is_helper_key(key);
        if !key_ok {
            r.error(
                &label,
                format!(
                    "{} is not a valid key (a lower-case letter, then up to 15 of a-z, 0-9, _)",
                    q(key)
                ),
            );
        }
        let Some(image) = as_str(value, &label, r) else {
            continue;
        };
        if image_ok(image, &label, rules, r) && key_ok {
            helpers.insert(key.clone(), image.to_string());
        }
    }
    helpers
}

/// Rule 2 for one image: errors for its form and origin, a missing digest
/// a warning (an error under `enforce`). Whether it is usable.
fn image_ok(image: &str, label: &str, rules: &Rules, r: &mut Report) -> bool {
    let problems = image_problems(image, rules.image_registry);
    for problem in &problems {
        r.error(label, format!("{} {problem}", q(image)));
    }
    if split_image(image).digest.is_none() {
        let msg = format!(
            "{} has no @sha256 digest, so the pulled image cannot be checked",
            q(image)
        );
        match rules.verification {
            VerificationMode::Enforce => r.error(label, msg),
            VerificationMode::Warn | VerificationMode::Off => r.warn(label, msg),
        }
    }
    problems.is_empty()
}

// ---------------------------------------------------------------------------
// Rule 15: settings (their schema; values are taken at install).

const SETTING_KEYS: &[&str] = &[
    "name", "label", "type", "default", "required", "choices", "generate",
];

fn check_settings(obj: &Map<String, Value>, r: &mut Report) -> Vec<Setting> {
    let items = optional_array(obj, "settings", r);
    if items.len() > MAX_SETTINGS {
        r.error(
            "settings",
            format!(
                "has {} entries; at most {MAX_SETTINGS} are allowed",
                items.len()
            ),
        );
    }
    let mut settings: Vec<Setting> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let label = format!("settings[{i}]");
        let Some(setting) = check_setting(&label, item, r) else {
            continue;
        };
        if settings.iter().any(|s| s.name == setting.name) {
            r.error(
                &format!("{label}.name"),
                format!("{} is declared twice", q(&setting.name)),
            );
            continue;
        }
        settings.push(setting);
    }
    settings
}

fn check_setting(label: &str, item: &Value, r: &mut Report) -> Option<Setting> {
    let obj = as_object(item, label, r)?;
    warn_unknown_keys(obj, SETTING_KEYS, label, r);
    let errors_before = r.errors.len();
    let name_label = format!("{label}.name");
    let name = required_str(obj, "name", &name_label, r);
    if let Some(problem) = name.and_then(env_name_problem) {
        r.error(
            &name_label,
            format!("{} {problem}", q(name.unwrap_or_default())),
        );
    }
    let label_text = check_text_in(obj, "label", &format!("{label}.label"), r);
    let kind = check_setting_type(obj, label, r);
    let required = match field(obj, "required") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            r.error(
                &format!("{label}.required"),
                format!("expected a boolean, found {}", kind_of(other)),
            );
            false
        }
    };
    let choices = check_choices(obj, kind, label, r);
    let generate = check_generate(obj, kind, label, r);
    let default =
        field(obj, "default").and_then(|v| scalar_text(Some(v), &format!("{label}.default"), r));
    if let (Some(d), Some(kind)) = (&default, kind) {
        if let Some(problem) = setting_value_problem(d, kind, &choices) {
            r.error(&format!("{label}.default"), problem);
        }
    }
    if r.errors.len() > errors_before {
        return None;
    }
    Some(Setting {
        name: name?.to_string(),
        label: label_text?,
        kind: kind?,
        default,
        required,
        choices,
        generate,
    })
}

/// A required short printable text inside an object (`settings[i].label`).
fn check_text_in(
    obj: &Map<String, Value>,
    key: &str,
    label: &str,
    r: &mut Report,
) -> Option<String> {
    let s = required_str(obj, key, label, r)?;
    if s.chars().count() > MAX_TEXT_CHARS || s.chars().any(is_unprintable) {
        r.error(
            label,
            format!(
                "{} is longer than {MAX_TEXT_CHARS} characters or holds a control character",
                q(s)
            ),
        );
        return None;
    }
    Some(s.to_string())
}

fn check_setting_type(
    obj: &Map<String, Value>,
    label: &str,
    r: &mut Report,
) -> Option<SettingType> {
    let type_label = format!("{label}.type");
    match required_str(obj, "type", &type_label, r)? {
        "string" => Some(SettingType::String),
        "secret" => Some(SettingType::Secret),
        "number" => Some(SettingType::Number),
        "boolean" => Some(SettingType::Boolean),
        "choice" => Some(SettingType::Choice),
        other => {
            r.error(
                &type_label,
                format!(
                    "{} is not one of string, secret, number, boolean, choice",
                    q(other)
                ),
            );
            None
        }
    }
}

fn check_choices(
    obj: &Map<String, Value>,
    kind: Option<SettingType>,
    label: &str,
    r: &mut Report,
) -> Vec<String> {
    let choices_label = format!("{label}.choices");
    let given = field(obj, "choices");
    if kind.is_some_and(|k| k != SettingType::Choice) && given.is_some() {
        r.error(&choices_label, "is only allowed with type \"choice\"");
        return Vec::new();
    }
    let Some(list) = given.and_then(|v| as_array(v, &choices_label, r)) else {
        if kind == Some(SettingType::Choice) {
            r.error(
                &choices_label,
                "is required for type \"choice\" (1-32 values)",
            );
        }
        return Vec::new();
    };
    if list.is_empty() || list.len() > MAX_CHOICES {
        r.error(
            &choices_label,
            format!("has {} values; 1 to {MAX_CHOICES} are allowed", list.len()),
        );
    }
    let mut choices: Vec<String> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let item_label = format!("{choices_label}[{i}]");
        let Some(text) = scalar_text(Some(v), &item_label, r) else {
            continue;
        };
        if let Some(problem) = env_value_problem(&text) {
            r.error(&item_label, problem);
        } else if choices.contains(&text) {
            r.error(&item_label, format!("{} is listed twice", q(&text)));
        } else {
            choices.push(text);
        }
    }
    choices
}

fn check_generate(
    obj: &Map<String, Value>,
    kind: Option<SettingType>,
    label: &str,
    r: &mut Report,
) -> Option<u8> {
    let gen_label = format!("{label}.generate");
    let v = field(obj, "generate")?;
    if kind.is_some_and(|k| k != SettingType::Secret) {
        r.error(&gen_label, "is only allowed with type \"secret\"");
        return None;
    }
    match v.as_u64().filter(|n| GENERATE_RANGE.contains(n)) {
        Some(n) => u8::try_from(n).ok(),
        None => {
            r.error(
                &gen_label,
                format!(
                    "{} is not a length of {}-{} characters",
                    show_json(v),
                    GENERATE_RANGE.start(),
                    GENERATE_RANGE.end()
                ),
            );
            None
        }
    }
}

/// Why `value` cannot be the value of a setting of type `kind` (rule 15:
/// the env value rule, and the type's own), or `None`. Also for the values
/// an owner gives at install time.
pub fn setting_value_problem(value: &str, kind: SettingType, choices: &[String]) -> Option<String> {
    if let Some(problem) = env_value_problem(value) {
        return Some(problem);
    }
    match kind {
        SettingType::String | SettingType::Secret => None,
        SettingType::Number => {
            let digits = value.strip_prefix('-').unwrap_or(value);
            let (whole, frac) = digits.split_once('.').unwrap_or((digits, "0"));
            (!(is_digits(whole) && is_digits(frac)))
                .then(|| format!("{} is not a number", q(value)))
        }
        SettingType::Boolean => (!matches!(value, "true" | "false"))
            .then(|| format!("{} is not true or false", q(value))),
        SettingType::Choice => (!choices.iter().any(|c| c == value)).then(|| {
            format!(
                "{} is not one of the choices ({})",
                q(value),
                choices.join(", ")
            )
        }),
    }
}

fn show_json(v: &Value) -> String {
    truncate(&v.to_string(), QUOTE_BYTES)
}

/// Every `${NAME}` a template can hold is filled from one source only: an
/// env var, a helper image or a setting may not take another's name (the
/// built-in placeholders are refused by the name rule itself).
fn check_placeholder_clashes(
    env: &[EnvVar],
    helpers: &BTreeMap<String, String>,
    settings: &[Setting],
    r: &mut Report,
) {
    let helper_names: Vec<String> = helpers.keys().map(|k| helper_placeholder(k)).collect();
    for (i, e) in env.iter().enumerate() {
        if helper_names.contains(&e.name) {
            r.error(
                &format!("env[{i}].name"),
                format!("{} would shadow the helper image placeholder", q(&e.name)),
            );
        }
    }
    for (i, s) in settings.iter().enumerate() {
        let label = format!("settings[{i}].name");
        if env.iter().any(|e| e.name == s.name) {
            r.error(&label, format!("{} is also an env name", q(&s.name)));
        }
        if helper_names.contains(&s.name) {
            r.error(
                &label,
                format!("{} would shadow the helper image placeholder", q(&s.name)),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Rule 13: everything else.

/// Descriptive fields come back to be passed through; unknown ones are
/// warned about and dropped.
fn check_other_fields(obj: &Map<String, Value>, r: &mut Report) -> BTreeMap<String, Value> {
    let mut extra = BTreeMap::new();
    for (key, value) in obj {
        if CHECKED_FIELDS.contains(&key.as_str()) {
            continue;
        }
        if DESCRIPTIVE_FIELDS.contains(&key.as_str()) {
            extra.insert(key.clone(), value.clone());
        } else {
            r.warn(&key_label(key), "unknown field, ignored");
        }
    }
    extra
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// The example of spec §6.
    fn service_base() -> Value {
        json!({
            "id": "radicale", "name": "Radicale", "version": "3.1.8", "author": "roof",
            "kind": "service",
            "image": format!("git.pic.ngo/roof/radicale:3.1.8@sha256:{DIGEST}"),
            "container_name": "cell-radicale",
            "requires": [],
            "volumes": [{"mount": "collections", "target": "/data"}],
            "env": [{"name": "TZ", "value": "UTC"}],
            "iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 5232, "proto": "tcp"}],
            "subdomain": "calendar", "backend": "cell-radicale:5232",
            "extra_subdomains": [], "extra_backends": {},
            "cap_add": [], "provision_hook": null,
            "instanceable": false, "connectivity": null
        })
    }

    fn connectivity_base() -> Value {
        json!({
            "id": "proxy", "name": "Proxy", "version": "1.0", "author": "roof",
            "kind": "connectivity",
            "image": format!("git.pic.ngo/roof/proxy:1.0@sha256:{DIGEST}"),
            "container_name": "cell-proxy",
            "env": [{"name": "UPSTREAM", "value": "socks5://example.org:1080"}],
            "cap_add": ["NET_ADMIN"],
            "instanceable": true, "connectivity": {"mode": "redirect"}
        })
    }

    struct Env {
        cell_dir: PathBuf,
        state_dir: PathBuf,
        roots: Vec<PathBuf>,
    }

    fn env() -> Env {
        Env {
            cell_dir: PathBuf::from("/home/roof/pic"),
            state_dir: PathBuf::from("/var/lib/pic-store"),
            roots: ["/srv", "/mnt", "/media"].map(PathBuf::from).to_vec(),
        }
    }

    fn rules(env: &Env) -> Rules<'_> {
        Rules {
            image_registry: "git.pic.ngo/roof/",
            cell_dir: &env.cell_dir,
            state_dir: &env.state_dir,
            mount_roots: &env.roots,
            verification: VerificationMode::Warn,
            taken: vec![Taken {
                id: "filegator".into(),
                container_name: "cell-files".into(),
                subdomains: vec!["files".into()],
            }],
        }
    }

    /// Applies a top-level patch: each key replaces the base's; `null`
    /// removes it. `<D>` in strings stands for a valid digest.
    fn patched(mut base: Value, patch: &str) -> Value {
        let patch: Value = serde_json::from_str(&patch.replace("<D>", DIGEST))
            .unwrap_or_else(|e| panic!("bad test patch {patch}: {e}"));
        let (Some(obj), Some(patch)) = (base.as_object_mut(), patch.as_object()) else {
            panic!("base and patch must be objects");
        };
        for (k, v) in patch {
            if v.is_null() {
                obj.remove(k);
            } else {
                obj.insert(k.clone(), v.clone());
            }
        }
        base
    }

    #[derive(Debug, Clone, Copy)]
    enum Base {
        Svc,
        Conn,
    }

    #[derive(Debug, Clone, Copy)]
    enum Tweak {
        None,
        LocalRegistry,
        Enforce,
        RegistryWithoutSlash,
    }

    #[derive(Debug, Clone, Copy)]
    enum Expect {
        /// No error and no warning.
        Ok,
        /// No error; a warning containing the text.
        Warn(&'static str),
        /// An error containing the text.
        Err(&'static str),
    }
    use Base::{Conn, Svc};
    use Expect::{Err, Ok, Warn};

    fn run_case(name: &str, base: Base, patch: &str, tweak: Tweak, expect: Expect) {
        let env = env();
        let mut rules = rules(&env);
        match tweak {
            Tweak::None => {}
            Tweak::LocalRegistry => rules.image_registry = "127.0.0.1:5000/roof/",
            Tweak::Enforce => rules.verification = VerificationMode::Enforce,
            Tweak::RegistryWithoutSlash => rules.image_registry = "git.pic.ngo/roof",
        }
        let base = match base {
            Svc => service_base(),
            Conn => connectivity_base(),
        };
        let (valid, report) = validate(&patched(base, patch), &rules);
        let errors = &report.errors;
        let warnings = &report.warnings;
        let context = format!("case {name:?}: errors {errors:#?}, warnings {warnings:#?}");
        match expect {
            Ok => {
                assert!(errors.is_empty() && warnings.is_empty(), "{context}");
                assert!(valid.is_some(), "{context}");
            }
            Warn(text) => {
                assert!(errors.is_empty(), "{context}");
                assert!(valid.is_some(), "{context}");
                assert!(warnings.iter().any(|w| w.contains(text)), "{context}");
            }
            Err(text) => {
                assert!(valid.is_none(), "{context}");
                assert!(errors.iter().any(|e| e.contains(text)), "{context}");
            }
        }
    }

    /// (case, base, patch, expected outcome), checked with the default rules.
    #[rustfmt::skip]
    const CASES: &[(&str, Base, &str, Expect)] = &[
        // The bases themselves.
        ("spec example", Svc, "{}", Ok),
        ("connectivity example", Conn, "{}", Ok),
        // Rule 1: required fields and text.
        ("id missing", Svc, r#"{"id": null}"#, Err("id: is required")),
        ("id empty", Svc, r#"{"id": ""}"#, Err("id: must not be empty")),
        ("id not a slug", Svc, r#"{"id": "Radicale"}"#, Err("id: \"Radicale\" is not a valid id")),
        ("id path", Svc, r#"{"id": "../etc"}"#, Err("is not a valid id")),
        ("id a number", Svc, r#"{"id": 5}"#, Err("id: expected a string, found a number")),
        ("name missing", Svc, r#"{"name": null}"#, Err("name: is required")),
        ("version empty", Svc, r#"{"version": ""}"#, Err("version: must not be empty")),
        ("author missing", Svc, r#"{"author": null}"#, Err("author: is required")),
        ("image missing", Svc, r#"{"image": null}"#, Err("image: is required")),
        ("container_name missing", Svc, r#"{"container_name": null}"#, Err("container_name: is required")),
        ("name with newline", Svc, r#"{"name": "Radi\ncale"}"#, Err("name: \"Radi\\ncale\" holds a control character")),
        ("name with bidi override", Svc, r#"{"name": "Radi\u202ecale"}"#, Err("holds a control character")),
        ("name 128 chars", Svc, r#"{"name": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#, Ok),
        ("name 129 chars", Svc, r#"{"name": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#, Err("129 characters long")),
        ("name unicode", Svc, r#"{"name": "Radicale – Kalender"}"#, Ok),
        ("kind default", Svc, r#"{"kind": null}"#, Ok),
        ("kind unknown", Svc, r#"{"kind": "daemon"}"#, Err("kind: \"daemon\" is not \"service\" or \"connectivity\"")),
        ("kind wrong type", Svc, r#"{"kind": true}"#, Err("kind: expected a string, found a boolean")),
        // Rule 2: the image.
        ("trusted vendor image", Svc, r#"{"image": "tomsquest/docker-radicale:3.1.8@sha256:<D>"}"#, Ok),
        ("vendor image no tag", Svc, r#"{"image": "bytemark/webdav@sha256:<D>"}"#, Ok),
        ("untrusted docker hub image", Svc, r#"{"image": "evil/radicale:1@sha256:<D>"}"#, Err("is neither from the store's registry")),
        ("vendor image under another registry", Svc, r#"{"image": "docker.io/bytemark/webdav:1@sha256:<D>"}"#, Err("is neither from the store's registry")),
        ("registry nested in path", Svc, r#"{"image": "evil.com/git.pic.ngo/roof/x:1@sha256:<D>"}"#, Err("is neither from the store's registry")),
        ("registry prefix not at boundary", Svc, r#"{"image": "git.pic.ngo/roofx/y:1@sha256:<D>"}"#, Err("is neither from the store's registry")),
        ("registry prefix alone", Svc, r#"{"image": "git.pic.ngo/roof:1@sha256:<D>"}"#, Err("is neither from the store's registry")),
        ("no digest", Svc, r#"{"image": "git.pic.ngo/roof/radicale:3.1.8"}"#, Warn("has no @sha256 digest")),
        ("uppercase digest", Svc, r#"{"image": "git.pic.ngo/roof/radicale:3.1.8@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"}"#, Err("has an invalid digest")),
        ("short digest", Svc, r#"{"image": "git.pic.ngo/roof/radicale:3.1.8@sha256:0123456789abcdef"}"#, Err("has an invalid digest")),
        ("sha512 digest", Svc, r#"{"image": "git.pic.ngo/roof/radicale@sha512:<D>"}"#, Err("has an invalid digest")),
        ("uppercase repo", Svc, r#"{"image": "git.pic.ngo/roof/Radicale:1@sha256:<D>"}"#, Err("has an invalid repository name")),
        ("bad tag", Svc, r#"{"image": "git.pic.ngo/roof/radicale:.1@sha256:<D>"}"#, Err("has an invalid tag")),
        ("empty tag", Svc, r#"{"image": "git.pic.ngo/roof/radicale:@sha256:<D>"}"#, Err("has an invalid tag")),
        ("space in image", Svc, r#"{"image": "git.pic.ngo/roof/radi cale:1@sha256:<D>"}"#, Err("has an invalid repository name")),
        ("double separator", Svc, r#"{"image": "git.pic.ngo/roof/radi..cale:1@sha256:<D>"}"#, Err("has an invalid repository name")),
        // Rule 3: the container name.
        ("container name invalid", Svc, r#"{"container_name": "Cell_Radicale"}"#, Err("is not a valid container name")),
        ("container name leading dash", Svc, r#"{"container_name": "-radicale"}"#, Err("is not a valid container name")),
        ("container name core", Svc, r#"{"container_name": "cell-api"}"#, Err("container_name: \"cell-api\" is a core container")),
        ("container name pic-store", Svc, r#"{"container_name": "pic-store"}"#, Err("is a core container")),
        ("container name taken", Svc, r#"{"container_name": "cell-files"}"#, Err("collides with \"cell-files\"")),
        ("container name extends taken", Svc, r#"{"container_name": "cell-files-2"}"#, Err("collides with \"cell-files\"")),
        ("container name extended by taken", Svc, r#"{"container_name": "cell"}"#, Err("collides with \"cell-files\"")),
        ("container name shares a prefix only", Svc, r#"{"container_name": "cell-filesx"}"#, Ok),
        // Rule 4: volumes, an allow-list (PIC_HOST_MOUNT_ROOTS /srv:/mnt:/media).
        ("mount //etc", Svc, r#"{"volumes": [{"mount": "//etc", "target": "/data"}]}"#, Err("is not a host folder services may mount (it is /etc)")),
        ("mount /etc/", Svc, r#"{"volumes": [{"mount": "/etc/", "target": "/data"}]}"#, Err("is not a host folder services may mount")),
        ("mount /srv/../etc", Svc, r#"{"volumes": [{"mount": "/srv/../etc", "target": "/data"}]}"#, Err("(it is /etc)")),
        ("mount /etc/../etc/shadow", Svc, r#"{"volumes": [{"mount": "/etc/../etc/shadow", "target": "/data"}]}"#, Err("volumes[0].mount: \"/etc/../etc/shadow\" is not a host folder services may mount (it is /etc/shadow)")),
        ("mount /../../etc", Svc, r#"{"volumes": [{"mount": "/../../etc/passwd", "target": "/data"}]}"#, Err("PIC_HOST_MOUNT_ROOTS")),
        ("mount docker.sock", Svc, r#"{"volumes": [{"mount": "/var/run/docker.sock", "target": "/sock"}]}"#, Err("names docker.sock")),
        ("mount docker.sock under a root", Svc, r#"{"volumes": [{"mount": "/srv/docker.sock", "target": "/sock"}]}"#, Err("names docker.sock")),
        ("mount Docker.Sock under a root", Svc, r#"{"volumes": [{"mount": "/mnt/x/Docker.Sock", "target": "/sock"}]}"#, Err("names docker.sock")),
        ("mount /etcetera", Svc, r#"{"volumes": [{"mount": "/etcetera", "target": "/data"}]}"#, Err("allowed are /srv, /mnt, /media")),
        ("mount /var", Svc, r#"{"volumes": [{"mount": "/var", "target": "/data"}]}"#, Err("is not a host folder services may mount")),
        ("mount /var/lib/docker/volumes", Svc, r#"{"volumes": [{"mount": "/var/lib/docker/volumes", "target": "/data"}]}"#, Err("is not a host folder services may mount")),
        ("mount /var/lib/other", Svc, r#"{"volumes": [{"mount": "/var/lib/other", "target": "/data"}]}"#, Err("is not a host folder services may mount")),
        ("mount /home/roof/.ssh", Svc, r#"{"volumes": [{"mount": "/home/roof/.ssh", "target": "/keys"}]}"#, Err("volumes[0].mount: \"/home/roof/.ssh\" is not a host folder services may mount: allowed are /srv, /mnt, /media and what is under them (PIC_HOST_MOUNT_ROOTS)")),
        ("mount /var/spool/cron", Svc, r#"{"volumes": [{"mount": "/var/spool/cron", "target": "/cron"}]}"#, Err("PIC_HOST_MOUNT_ROOTS")),
        ("mount /var/lib/containerd", Svc, r#"{"volumes": [{"mount": "/var/lib/containerd", "target": "/c"}]}"#, Err("PIC_HOST_MOUNT_ROOTS")),
        ("mount /var/log/auth.log", Svc, r#"{"volumes": [{"mount": "/var/log/auth.log", "target": "/log", "read_only": true}]}"#, Err("PIC_HOST_MOUNT_ROOTS")),
        ("mount /var/lib/zerotier-one", Svc, r#"{"volumes": [{"mount": "/var/lib/zerotier-one", "target": "/zt"}]}"#, Err("PIC_HOST_MOUNT_ROOTS")),
        ("mount /tmp", Svc, r#"{"volumes": [{"mount": "/tmp", "target": "/tmp"}]}"#, Err("PIC_HOST_MOUNT_ROOTS")),
        ("mount /home", Svc, r#"{"volumes": [{"mount": "/home", "target": "/data"}]}"#, Err("is not a host folder services may mount")),
        ("mount /home/user/media", Svc, r#"{"volumes": [{"mount": "/home/user/media", "target": "/media"}]}"#, Err("is not a host folder services may mount")),
        ("mount /srv/media", Svc, r#"{"volumes": [{"mount": "/srv/media", "target": "/media"}]}"#, Ok),
        ("mount /mnt/usb", Svc, r#"{"volumes": [{"mount": "/mnt/usb", "target": "/usb"}]}"#, Ok),
        ("mount /media itself", Svc, r#"{"volumes": [{"mount": "/media/", "target": "/media"}]}"#, Ok),
        ("mount /srv/./a//b/", Svc, r#"{"volumes": [{"mount": "/srv/./a//b/", "target": "/b"}]}"#, Ok),
        ("mount /srvx is not under /srv", Svc, r#"{"volumes": [{"mount": "/srvx/a", "target": "/a"}]}"#, Err("is not a host folder services may mount")),
        ("mount /srv/../mntx", Svc, r#"{"volumes": [{"mount": "/srv/../mntx", "target": "/a"}]}"#, Err("(it is /mntx)")),
        ("mount /mnt/../.. climbs to /", Svc, r#"{"volumes": [{"mount": "/mnt/../..", "target": "/a"}]}"#, Err("(it is /)")),
        ("mount / itself", Svc, r#"{"volumes": [{"mount": "/", "target": "/data"}]}"#, Err("is not a host folder services may mount")),
        ("mount /etc/localtime read-only", Svc, r#"{"volumes": [{"mount": "/etc/localtime", "target": "/etc/localtime", "read_only": true}]}"#, Ok),
        ("mount /etc/timezone read-only", Svc, r#"{"volumes": [{"mount": "/etc/timezone", "target": "/etc/timezone", "read_only": true}]}"#, Ok),
        ("mount /etc/localtime writable", Svc, r#"{"volumes": [{"mount": "/etc/localtime", "target": "/etc/localtime"}]}"#, Err("is /etc/localtime, which may only be mounted read-only")),
        ("mount /etc/localtime read_only false", Svc, r#"{"volumes": [{"mount": "/etc/localtime", "target": "/etc/localtime", "read_only": false}]}"#, Err("may only be mounted read-only")),
        ("mount /etc/localtime/../shadow", Svc, r#"{"volumes": [{"mount": "/etc/localtime/../shadow", "target": "/x", "read_only": true}]}"#, Err("(it is /etc/shadow)")),
        ("read_only a string", Svc, r#"{"volumes": [{"mount": "/srv/a", "target": "/a", "read_only": "yes"}]}"#, Err("volumes[0].read_only: expected a boolean, found a string")),
        ("read_only on a data dir mount", Svc, r#"{"volumes": [{"mount": "config", "target": "/config", "read_only": true}]}"#, Ok),
        ("mount under cell dir", Svc, r#"{"volumes": [{"mount": "/home/roof/pic/config", "target": "/data"}]}"#, Err("PIC_HOST_MOUNT_ROOTS")),
        ("mount holding cell dir", Svc, r#"{"volumes": [{"mount": "/home/roof", "target": "/data"}]}"#, Err("PIC_HOST_MOUNT_ROOTS")),
        ("mount under state dir", Svc, r#"{"volumes": [{"mount": "/var/lib/pic-store/data/other", "target": "/data"}]}"#, Err("PIC_HOST_MOUNT_ROOTS")),
        ("mount /proc/1", Svc, r#"{"volumes": [{"mount": "/proc/1/root", "target": "/data"}]}"#, Err("is not a host folder services may mount")),
        ("mount /run", Svc, r#"{"volumes": [{"mount": "/run", "target": "/data"}]}"#, Err("is not a host folder services may mount")),
        ("mount relative ..", Svc, r#"{"volumes": [{"mount": "../x", "target": "/data"}]}"#, Err("climbs out of the data dir")),
        ("mount relative a/../../b", Svc, r#"{"volumes": [{"mount": "a/../../b", "target": "/data"}]}"#, Err("climbs out of the data dir")),
        ("mount relative nested", Svc, r#"{"volumes": [{"mount": "db/main", "target": "/data"}]}"#, Ok),
        ("mount with colon", Svc, r#"{"volumes": [{"mount": "a:/etc", "target": "/data"}]}"#, Err("holds a :")),
        ("mount with newline", Svc, r#"{"volumes": [{"mount": "a\nb", "target": "/data"}]}"#, Err("holds a control character")),
        ("mount empty", Svc, r#"{"volumes": [{"mount": "", "target": "/data"}]}"#, Err("volumes[0].mount: must not be empty")),
        ("target relative", Svc, r#"{"volumes": [{"mount": "x", "target": "data"}]}"#, Err("is not an absolute path in the container")),
        ("target with ..", Svc, r#"{"volumes": [{"mount": "x", "target": "/data/../etc"}]}"#, Err("holds a .. component")),
        ("target with colon", Svc, r#"{"volumes": [{"mount": "x", "target": "/data:ro"}]}"#, Err("holds a :")),
        ("target missing", Svc, r#"{"volumes": [{"mount": "x"}]}"#, Err("volumes[0].target: is required")),
        ("target twice", Svc, r#"{"volumes": [{"mount": "x", "target": "/data"}, {"mount": "y", "target": "/data/"}]}"#, Err("is already the target of volumes[0]")),
        ("volume not an object", Svc, r#"{"volumes": ["x:/data"]}"#, Err("volumes[0]: expected an object, found a string")),
        ("volumes not an array", Svc, r#"{"volumes": {"mount": "x"}}"#, Err("volumes: expected an array, found an object")),
        ("volume unknown key", Svc, r#"{"volumes": [{"mount": "x", "target": "/data", "mode": "ro"}]}"#, Warn("volumes[0].mode: unknown field")),
        // Rule 5: firewall rules.
        ("rule udp", Svc, r#"{"iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 53, "proto": "udp"}]}"#, Ok),
        ("rule proto default", Svc, r#"{"iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 65535}]}"#, Ok),
        ("rule port 0", Svc, r#"{"iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 0}]}"#, Err("iptables_rules[0].dest_port: 0 is outside 1-65535")),
        ("rule port 65536", Svc, r#"{"iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 65536}]}"#, Err("65536 is outside 1-65535")),
        ("rule port 70000", Svc, r#"{"iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 70000}]}"#, Err("70000 is outside 1-65535")),
        ("rule port negative", Svc, r#"{"iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": -80}]}"#, Err("-80 is outside 1-65535")),
        ("rule port string", Svc, r#"{"iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": "80"}]}"#, Err("dest_port: expected an integer, found a string")),
        ("rule port fraction", Svc, r#"{"iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 1.5}]}"#, Err("dest_port: 1.5 is not an integer")),
        ("rule port missing", Svc, r#"{"iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}"}]}"#, Err("dest_port: is required")),
        ("rule proto icmp", Svc, r#"{"iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 80, "proto": "icmp"}]}"#, Err("proto: \"icmp\" is not \"tcp\" or \"udp\"")),
        ("rule type DROP", Svc, r#"{"iptables_rules": [{"type": "DROP", "dest_ip": "${SERVICE_IP}", "dest_port": 80}]}"#, Err("type: \"DROP\" must be exactly \"ACCEPT\"")),
        ("rule type lowercase", Svc, r#"{"iptables_rules": [{"type": "accept", "dest_ip": "${SERVICE_IP}", "dest_port": 80}]}"#, Err("must be exactly \"ACCEPT\"")),
        ("rule dest_ip literal", Svc, r#"{"iptables_rules": [{"type": "ACCEPT", "dest_ip": "10.0.0.1", "dest_port": 80}]}"#, Err("dest_ip: \"10.0.0.1\" must be exactly \"${SERVICE_IP}\"")),
        ("rule unknown key", Svc, r#"{"iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 80, "source": "0.0.0.0/0"}]}"#, Err("iptables_rules[0].source: unknown key")),
        // Rule 6: subdomains.
        ("subdomain reserved", Svc, r#"{"subdomain": "admin"}"#, Err("subdomain: \"admin\" is reserved")),
        ("subdomain taken", Svc, r#"{"subdomain": "files"}"#, Err("subdomain: \"files\" is already routed by the installed service \"filegator\"")),
        ("subdomain invalid", Svc, r#"{"subdomain": "Cal.endar"}"#, Err("is not a valid subdomain")),
        ("subdomain starts with digit", Svc, r#"{"subdomain": "1cal"}"#, Err("is not a valid subdomain")),
        ("subdomain without backend", Svc, r#"{"backend": null}"#, Err("subdomain: \"calendar\" has no backend")),
        ("backend without subdomain", Svc, r#"{"subdomain": null}"#, Warn("backend: \"cell-radicale:5232\" is set but no subdomain routes to it")),
        ("no route at all", Svc, r#"{"subdomain": null, "backend": null}"#, Ok),
        ("extra subdomain", Svc, r#"{"extra_subdomains": ["dav"]}"#, Ok),
        ("extra subdomain reserved", Svc, r#"{"extra_subdomains": ["www"]}"#, Err("extra_subdomains[0]: \"www\" is reserved")),
        ("extra subdomain duplicate", Svc, r#"{"extra_subdomains": ["calendar"]}"#, Err("extra_subdomains[0]: \"calendar\" is routed twice")),
        ("extra subdomain without backend", Svc, r#"{"subdomain": null, "backend": null, "extra_subdomains": ["dav"]}"#, Err("has no backend")),
        ("extra backend", Svc, r#"{"extra_backends": {"dav": "cell-radicale-dav:8080"}}"#, Ok),
        ("extra backend taken", Svc, r#"{"extra_backends": {"files": "cell-radicale:80"}}"#, Err("extra_backends.files: \"files\" is already routed")),
        ("extra backend bad key", Svc, r#"{"extra_backends": {"Da v": "cell-radicale:80"}}"#, Err("extra_backends.\"Da v\": \"Da v\" is not a valid subdomain")),
        ("extra backends not an object", Svc, r#"{"extra_backends": ["dav"]}"#, Err("extra_backends: expected an object, found an array")),
        ("legacy caddy_route", Svc, r#"{"subdomain": null, "backend": null, "caddy_route": {"subdomain": "calendar", "backend": "cell-radicale:5232"}}"#, Warn("caddy_route: is the legacy form")),
        ("legacy caddy_route falls back", Svc, r#"{"subdomain": null, "caddy_route": {"subdomain": "calendar"}}"#, Warn("caddy_route: is the legacy form")),
        ("legacy caddy_route same as subdomain", Svc, r#"{"caddy_route": {"subdomain": "calendar"}}"#, Warn("caddy_route: is the legacy form")),
        ("legacy caddy_route reserved", Svc, r#"{"subdomain": null, "caddy_route": {"subdomain": "api"}}"#, Err("caddy_route.subdomain: \"api\" is reserved")),
        ("legacy caddy_route with port", Svc, r#"{"subdomain": null, "backend": null, "caddy_route": {"subdomain": "calendar", "port": 5232}}"#, Warn("caddy_route: is the legacy form")),
        ("legacy caddy_route port as text", Svc, r#"{"subdomain": null, "backend": null, "caddy_route": {"subdomain": "calendar", "port": "5232"}}"#, Warn("caddy_route: is the legacy form")),
        ("legacy caddy_route port 0", Svc, r#"{"subdomain": null, "backend": null, "caddy_route": {"subdomain": "calendar", "port": 0}}"#, Err("caddy_route.port: 0 is outside 1-65535")),
        ("legacy caddy_route port 70000", Svc, r#"{"subdomain": null, "backend": null, "caddy_route": {"subdomain": "calendar", "port": 70000}}"#, Err("caddy_route.port: 70000 is outside 1-65535")),
        ("legacy caddy_route port text", Svc, r#"{"subdomain": null, "backend": null, "caddy_route": {"subdomain": "calendar", "port": "http"}}"#, Err("caddy_route.port: expected an integer, found a string")),
        ("legacy caddy_route port and backend", Svc, r#"{"subdomain": null, "backend": null, "caddy_route": {"subdomain": "calendar", "backend": "cell-radicale:1", "port": 2}}"#, Warn("caddy_route.port: is ignored")),
        ("legacy caddy_route not an object", Svc, r#"{"caddy_route": "calendar"}"#, Err("caddy_route: expected an object, found a string")),
        // Rule 7: backends.
        ("backend localhost", Svc, r#"{"backend": "localhost:80"}"#, Err("backend: \"localhost:80\" points at localhost")),
        ("backend LOCALHOST", Svc, r#"{"backend": "LocalHost.:80"}"#, Err("points at localhost")),
        ("backend 127.0.0.5", Svc, r#"{"backend": "127.0.0.5:80"}"#, Err("points at 127.0.0.5, a loopback address")),
        ("backend 127.1", Svc, r#"{"backend": "127.1:80"}"#, Err("not a plain dotted quad")),
        ("backend decimal loopback", Svc, r#"{"backend": "2130706433:80"}"#, Err("not a plain dotted quad")),
        ("backend hex loopback", Svc, r#"{"backend": "0x7f.1:80"}"#, Err("not a plain dotted quad")),
        ("backend octal loopback", Svc, r#"{"backend": "0177.0.0.1:80"}"#, Err("not a plain dotted quad")),
        ("backend 0", Svc, r#"{"backend": "0:80"}"#, Err("not a plain dotted quad")),
        ("backend 0.0.0.0", Svc, r#"{"backend": "0.0.0.0:1"}"#, Err("points at 0.0.0.0")),
        ("backend link-local", Svc, r#"{"backend": "169.254.1.1:80"}"#, Err("points at 169.254.1.1, a link-local address")),
        ("backend cell gateway", Svc, r#"{"backend": "172.20.0.1:80"}"#, Err("the cell network's gateway")),
        ("backend another service ip", Svc, r#"{"backend": "172.20.0.30:80"}"#, Ok),
        ("backend docker host", Svc, r#"{"backend": "host.docker.internal:80"}"#, Err("points at the docker host")),
        ("backend docker host upper", Svc, r#"{"backend": "Host.Docker.Internal:80"}"#, Err("points at the docker host")),
        ("backend core", Svc, r#"{"backend": "cell-api:80"}"#, Err("points at \"cell-api\", a core container")),
        ("backend port 0", Svc, r#"{"backend": "x:0"}"#, Err("backend: \"x:0\" has port 0, outside 1-65535")),
        ("backend port 99999", Svc, r#"{"backend": "x:99999"}"#, Err("has port 99999")),
        ("backend no port", Svc, r#"{"backend": "x"}"#, Err("backend: \"x\" is not HOST:PORT")),
        ("backend with scheme", Svc, r#"{"backend": "http://x:80"}"#, Err("is not HOST:PORT")),
        ("backend public ip", Svc, r#"{"backend": "172.20.0.30:8080"}"#, Ok),
        ("extra backend localhost", Svc, r#"{"extra_backends": {"dav": "localhost:80"}}"#, Err("extra_backends.dav: \"localhost:80\" points at localhost")),
        ("legacy backend loopback", Svc, r#"{"subdomain": null, "backend": null, "caddy_route": {"subdomain": "calendar", "backend": "127.0.0.1:80"}}"#, Err("caddy_route.backend: \"127.0.0.1:80\" points at 127.0.0.1")),
        // Rule 8: environment.
        ("env value with $", Svc, r#"{"env": [{"name": "TZ", "value": "$HOME"}]}"#, Err("env[0].value: \"$HOME\" holds '$'")),
        ("env value with backtick", Svc, r#"{"env": [{"name": "TZ", "value": "`id`"}]}"#, Err("holds '`'")),
        ("env value with quote", Svc, r#"{"env": [{"name": "TZ", "value": "a\"b"}]}"#, Err("holds '\"'")),
        ("env value with newline", Svc, r#"{"env": [{"name": "TZ", "value": "a\nb"}]}"#, Err("holds '\\n'")),
        ("env value allowed punctuation", Svc, r#"{"env": [{"name": "URL", "value": "https://a.b/c?"}]}"#, Err("holds '?'")),
        ("env value rich but fine", Svc, r#"{"env": [{"name": "URL", "value": "https://user@a.b:80/c+d-e=f g_h"}]}"#, Ok),
        ("env value empty", Svc, r#"{"env": [{"name": "TZ", "value": ""}]}"#, Ok),
        ("env value a number", Svc, r#"{"env": [{"name": "PORT", "value": 8080}]}"#, Ok),
        ("env value a boolean", Svc, r#"{"env": [{"name": "DEBUG", "value": true}]}"#, Ok),
        ("env value a fraction", Svc, r#"{"env": [{"name": "RATIO", "value": 0.5}]}"#, Ok),
        ("env value missing", Svc, r#"{"env": [{"name": "TZ"}]}"#, Ok),
        ("env value null", Svc, r#"{"env": [{"name": "TZ", "value": null}]}"#, Ok),
        ("env value an array", Svc, r#"{"env": [{"name": "TZ", "value": ["UTC"]}]}"#, Err("env[0].value: expected a string, number or boolean, found an array")),
        ("env value an object", Svc, r#"{"env": [{"name": "TZ", "value": {}}]}"#, Err("expected a string, number or boolean")),
        ("env name shadows a helper image", Svc, r#"{"helper_images": {"db": "git.pic.ngo/roof/postgres:16@sha256:<D>"}, "env": [{"name": "IMAGE_DB", "value": "x"}]}"#, Err("env[0].name: \"IMAGE_DB\" would shadow the helper image placeholder")),
        ("env name lowercase", Svc, r#"{"env": [{"name": "tz", "value": "UTC"}]}"#, Err("env[0].name: \"tz\" is not a valid name")),
        ("env name placeholder", Svc, r#"{"env": [{"name": "SERVICE_IP", "value": "1.2.3.4"}]}"#, Err("would shadow the template placeholder")),
        ("env name duplicate", Svc, r#"{"env": [{"name": "TZ", "value": "UTC"}, {"name": "TZ", "value": "CET"}]}"#, Err("env[1].name: \"TZ\" is set twice")),
        // Rule 9: capabilities.
        ("cap chown", Svc, r#"{"cap_add": ["CHOWN", "NET_BIND_SERVICE"]}"#, Ok),
        ("cap_chown normalised", Svc, r#"{"cap_add": ["cap_chown"]}"#, Ok),
        ("cap SYS_ADMIN", Svc, r#"{"cap_add": ["SYS_ADMIN"]}"#, Err("cap_add[0]: \"SYS_ADMIN\" is not allowed")),
        ("cap ALL", Svc, r#"{"cap_add": ["ALL"]}"#, Err("\"ALL\" is not allowed")),
        ("cap NET_ADMIN on service", Svc, r#"{"cap_add": ["NET_ADMIN"]}"#, Err("cap_add[0]: \"NET_ADMIN\" is only allowed for kind \"connectivity\"")),
        ("cap NET_RAW on connectivity", Conn, r#"{"cap_add": ["NET_ADMIN", "cap_net_raw"]}"#, Ok),
        ("cap twice", Svc, r#"{"cap_add": ["CHOWN", "CAP_CHOWN"]}"#, Warn("cap_add[1]: \"CAP_CHOWN\" is listed twice")),
        ("cap not a string", Svc, r#"{"cap_add": [1]}"#, Err("cap_add[0]: expected a string, found a number")),
        // Rule 10: requires.
        ("requires ok", Svc, r#"{"requires": ["mail", "dns-helper"]}"#, Ok),
        ("requires invalid", Svc, r#"{"requires": ["../x"]}"#, Err("requires[0]: \"../x\" is not a valid service id")),
        ("requires itself", Svc, r#"{"requires": ["radicale"]}"#, Err("requires[0]: \"radicale\" is the service itself")),
        ("requires duplicate", Svc, r#"{"requires": ["mail", "mail"]}"#, Err("requires[1]: \"mail\" is listed twice")),
        // Rule 11: the provision hook.
        ("hook ok", Svc, r#"{"provision_hook": ["/usr/local/bin/setup", "--user", "roof"]}"#, Ok),
        ("hook relative", Svc, r#"{"provision_hook": ["setup.sh"]}"#, Err("provision_hook[0]: \"setup.sh\" is not an absolute path")),
        ("hook empty", Svc, r#"{"provision_hook": []}"#, Err("provision_hook: has 0 arguments")),
        ("hook 33 args", Svc, r#"{"provision_hook": ["/x","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a"]}"#, Err("provision_hook: has 33 arguments")),
        ("hook 32 args", Svc, r#"{"provision_hook": ["/x","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a"]}"#, Ok),
        ("hook arg with newline", Svc, r#"{"provision_hook": ["/x", "a\nb"]}"#, Err("provision_hook[1]: \"a\\nb\" holds a NUL or a newline")),
        ("hook arg with NUL", Svc, r#"{"provision_hook": ["/x", "a\u0000b"]}"#, Err("holds a NUL or a newline")),
        ("hook a string", Svc, r#"{"provision_hook": "/x"}"#, Err("provision_hook: expected an array, found a string")),
        // Rule 12: instances and connectivity.
        ("instanceable on service", Svc, r#"{"instanceable": true}"#, Err("instanceable: true is only allowed with kind \"connectivity\"")),
        ("instanceable not a bool", Conn, r#"{"instanceable": "yes"}"#, Err("instanceable: expected a boolean, found a string")),
        ("connectivity on service", Svc, r#"{"connectivity": {"mode": "route"}}"#, Err("connectivity: is only allowed with kind \"connectivity\"")),
        ("connectivity without mode", Conn, r#"{"connectivity": {}}"#, Err("connectivity.mode: is required")),
        ("connectivity missing", Conn, r#"{"connectivity": null}"#, Err("connectivity.mode: is required for an instanceable service")),
        ("connectivity mode bad", Conn, r#"{"connectivity": {"mode": "tunnel"}}"#, Err("connectivity.mode: \"tunnel\" is not \"redirect\" or \"route\"")),
        ("connectivity route", Conn, r#"{"connectivity": {"mode": "route"}}"#, Ok),
        ("connectivity not instanceable", Conn, r#"{"instanceable": false, "connectivity": null}"#, Ok),
        // Rule 14: helper images.
        ("helper image", Svc, r#"{"helper_images": {"db": "git.pic.ngo/roof/postgres:16.4@sha256:<D>", "cache_2": "git.pic.ngo/roof/redis:7@sha256:<D>"}}"#, Ok),
        ("helper image vendor", Svc, r#"{"helper_images": {"mail": "mailserver/docker-mailserver:13@sha256:<D>"}}"#, Ok),
        ("helper image empty object", Svc, r#"{"helper_images": {}}"#, Ok),
        ("helper image docker hub", Svc, r#"{"helper_images": {"db": "postgres:16@sha256:<D>"}}"#, Err("helper_images.db: \"postgres:16@sha256:")),
        ("helper image untrusted", Svc, r#"{"helper_images": {"db": "evil/postgres:16@sha256:<D>"}}"#, Err("is neither from the store's registry")),
        ("helper image no digest", Svc, r#"{"helper_images": {"db": "git.pic.ngo/roof/postgres:16"}}"#, Warn("helper_images.db: \"git.pic.ngo/roof/postgres:16\" has no @sha256 digest")),
        ("helper image bad digest", Svc, r#"{"helper_images": {"db": "git.pic.ngo/roof/postgres:16@sha256:abc"}}"#, Err("has an invalid digest")),
        ("helper key upper case", Svc, r#"{"helper_images": {"DB": "git.pic.ngo/roof/postgres:16@sha256:<D>"}}"#, Err("helper_images.DB: \"DB\" is not a valid key")),
        ("helper key with dash", Svc, r#"{"helper_images": {"my-db": "git.pic.ngo/roof/postgres:16@sha256:<D>"}}"#, Err("is not a valid key")),
        ("helper key starts with digit", Svc, r#"{"helper_images": {"1db": "git.pic.ngo/roof/postgres:16@sha256:<D>"}}"#, Err("is not a valid key")),
        ("helper key 16 chars", Svc, r#"{"helper_images": {"abcdefghijklmnop": "git.pic.ngo/roof/postgres:16@sha256:<D>"}}"#, Ok),
        ("helper key 17 chars", Svc, r#"{"helper_images": {"abcdefghijklmnopq": "git.pic.ngo/roof/postgres:16@sha256:<D>"}}"#, Err("is not a valid key")),
        ("helper images nine", Svc, r#"{"helper_images": {"a": "git.pic.ngo/roof/a@sha256:<D>", "b": "git.pic.ngo/roof/a@sha256:<D>", "c": "git.pic.ngo/roof/a@sha256:<D>", "d": "git.pic.ngo/roof/a@sha256:<D>", "e": "git.pic.ngo/roof/a@sha256:<D>", "f": "git.pic.ngo/roof/a@sha256:<D>", "g": "git.pic.ngo/roof/a@sha256:<D>", "h": "git.pic.ngo/roof/a@sha256:<D>", "i": "git.pic.ngo/roof/a@sha256:<D>"}}"#, Err("helper_images: has 9 entries; at most 8")),
        ("helper images an array", Svc, r#"{"helper_images": ["git.pic.ngo/roof/a@sha256:<D>"]}"#, Err("helper_images: expected an object, found an array")),
        ("helper image a number", Svc, r#"{"helper_images": {"db": 5}}"#, Err("helper_images.db: expected a string, found a number")),
        // Rule 15: settings.
        ("setting secret generated", Svc, r#"{"settings": [{"name": "ADMIN_PASSWORD", "label": "Admin password", "type": "secret", "generate": 32}]}"#, Ok),
        ("setting every type", Svc, r#"{"settings": [{"name": "A", "label": "a", "type": "string", "default": "x y"}, {"name": "B", "label": "b", "type": "number", "default": 8080}, {"name": "C", "label": "c", "type": "boolean", "default": false}, {"name": "D", "label": "d", "type": "choice", "choices": ["s", "m"], "default": "m"}, {"name": "E", "label": "e", "type": "secret", "required": true}]}"#, Ok),
        ("setting name lower case", Svc, r#"{"settings": [{"name": "admin", "label": "a", "type": "string"}]}"#, Err("settings[0].name: \"admin\" is not a valid name")),
        ("setting name a placeholder", Svc, r#"{"settings": [{"name": "DATA_DIR", "label": "a", "type": "string"}]}"#, Err("settings[0].name: \"DATA_DIR\" would shadow the template placeholder")),
        ("setting name an env name", Svc, r#"{"settings": [{"name": "TZ", "label": "a", "type": "string"}]}"#, Err("settings[0].name: \"TZ\" is also an env name")),
        ("setting name a helper image", Svc, r#"{"helper_images": {"db": "git.pic.ngo/roof/postgres:16@sha256:<D>"}, "settings": [{"name": "IMAGE_DB", "label": "a", "type": "string"}]}"#, Err("would shadow the helper image placeholder")),
        ("setting twice", Svc, r#"{"settings": [{"name": "A", "label": "a", "type": "string"}, {"name": "A", "label": "b", "type": "string"}]}"#, Err("settings[1].name: \"A\" is declared twice")),
        ("setting type unknown", Svc, r#"{"settings": [{"name": "A", "label": "a", "type": "file"}]}"#, Err("settings[0].type: \"file\" is not one of string, secret, number, boolean, choice")),
        ("setting label missing", Svc, r#"{"settings": [{"name": "A", "type": "string"}]}"#, Err("settings[0].label: is required")),
        ("setting choice without choices", Svc, r#"{"settings": [{"name": "A", "label": "a", "type": "choice"}]}"#, Err("settings[0].choices: is required for type \"choice\"")),
        ("setting choices empty", Svc, r#"{"settings": [{"name": "A", "label": "a", "type": "choice", "choices": []}]}"#, Err("settings[0].choices: has 0 values; 1 to 32")),
        ("setting choices on a string", Svc, r#"{"settings": [{"name": "A", "label": "a", "type": "string", "choices": ["x"]}]}"#, Err("settings[0].choices: is only allowed with type \"choice\"")),
        ("setting choice with $", Svc, r#"{"settings": [{"name": "A", "label": "a", "type": "choice", "choices": ["$HOME"]}]}"#, Err("settings[0].choices[0]: \"$HOME\" holds '$'")),
        ("setting default not a choice", Svc, r#"{"settings": [{"name": "A", "label": "a", "type": "choice", "choices": ["s"], "default": "l"}]}"#, Err("settings[0].default: \"l\" is not one of the choices (s)")),
        ("setting default not a number", Svc, r#"{"settings": [{"name": "A", "label": "a", "type": "number", "default": "ten"}]}"#, Err("settings[0].default: \"ten\" is not a number")),
        ("setting default not a boolean", Svc, r#"{"settings": [{"name": "A", "label": "a", "type": "boolean", "default": "yes"}]}"#, Err("settings[0].default: \"yes\" is not true or false")),
        ("setting default with backtick", Svc, r#"{"settings": [{"name": "A", "label": "a", "type": "string", "default": "`id`"}]}"#, Err("settings[0].default: \"`id`\" holds '`'")),
        ("setting generate on a string", Svc, r#"{"settings": [{"name": "A", "label": "a", "type": "string", "generate": 32}]}"#, Err("settings[0].generate: is only allowed with type \"secret\"")),
        ("setting generate 15", Svc, r#"{"settings": [{"name": "A", "label": "a", "type": "secret", "generate": 15}]}"#, Err("settings[0].generate: 15 is not a length of 16-64")),
        ("setting generate 65", Svc, r#"{"settings": [{"name": "A", "label": "a", "type": "secret", "generate": 65}]}"#, Err("65 is not a length of 16-64")),
        ("setting generate 16 and 64", Svc, r#"{"settings": [{"name": "A", "label": "a", "type": "secret", "generate": 16}, {"name": "B", "label": "b", "type": "secret", "generate": 64}]}"#, Ok),
        ("setting required not a boolean", Svc, r#"{"settings": [{"name": "A", "label": "a", "type": "string", "required": "yes"}]}"#, Err("settings[0].required: expected a boolean")),
        ("setting unknown key", Svc, r#"{"settings": [{"name": "A", "label": "a", "type": "string", "hint": "x"}]}"#, Warn("settings[0].hint: unknown field")),
        ("settings not an array", Svc, r#"{"settings": {"A": "x"}}"#, Err("settings: expected an array, found an object")),
        // Rule 13: other fields.
        ("unknown field", Svc, r#"{"privileged": true}"#, Warn("privileged: unknown field, ignored")),
        ("odd unknown field", Svc, r#"{"a b\n": 1}"#, Warn("\"a b\\n\": unknown field")),
        ("descriptive fields", Svc, r#"{"description": "CalDAV", "icon": "cal.svg", "tags": ["pim"], "min_cell_version": "1.2"}"#, Ok),
    ];

    #[test]
    fn table() {
        for &(name, base, patch, expect) in CASES {
            run_case(name, base, patch, Tweak::None, expect);
        }
    }

    /// (case, patch, rules tweak, expected outcome), on the service base.
    #[rustfmt::skip]
    const OTHER_RULE_CASES: &[(&str, &str, Tweak, Expect)] = &[
        ("registry with port", r#"{"image": "127.0.0.1:5000/roof/x:1@sha256:<D>"}"#, Tweak::LocalRegistry, Ok),
        ("registry with port, no tag", r#"{"image": "127.0.0.1:5000/roof/x@sha256:<D>"}"#, Tweak::LocalRegistry, Ok),
        ("registry with port, other path", r#"{"image": "127.0.0.1:5000/roofx/x:1@sha256:<D>"}"#, Tweak::LocalRegistry, Err("is neither from the store's registry")),
        ("store image with local registry", r#"{}"#, Tweak::LocalRegistry, Err("is neither from the store's registry")),
        ("no digest under enforce", r#"{"image": "git.pic.ngo/roof/radicale:3.1.8"}"#, Tweak::Enforce, Err("image: \"git.pic.ngo/roof/radicale:3.1.8\" has no @sha256 digest")),
        ("digest under enforce", r#"{}"#, Tweak::Enforce, Ok),
        ("prefix without slash", r#"{}"#, Tweak::RegistryWithoutSlash, Ok),
        ("prefix without slash is a boundary", r#"{"image": "git.pic.ngo/roofx/y:1@sha256:<D>"}"#, Tweak::RegistryWithoutSlash, Err("is neither from the store's registry")),
    ];

    #[test]
    fn table_with_other_rules() {
        for &(name, patch, tweak, expect) in OTHER_RULE_CASES {
            run_case(name, Svc, patch, tweak, expect);
        }
    }

    #[test]
    fn there_are_enough_cases() {
        let total = CASES.len() + OTHER_RULE_CASES.len();
        assert!(total >= 90, "{total} cases");
    }

    #[test]
    fn five_independent_faults_are_all_reported() {
        let env = env();
        let manifest = patched(
            service_base(),
            r#"{
                "container_name": "cell-api",
                "volumes": [{"mount": "/etc", "target": "/data"}],
                "iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 0}],
                "backend": "localhost:5232",
                "cap_add": ["SYS_ADMIN"]
            }"#,
        );
        let (valid, report) = validate(&manifest, &rules(&env));
        assert!(valid.is_none());
        assert_eq!(report.errors.len(), 5, "{:#?}", report.errors);
        for expected in [
            "container_name: \"cell-api\" is a core container",
            "volumes[0].mount: \"/etc\" is not a host folder services may mount: allowed are /srv, /mnt, /media and what is under them (PIC_HOST_MOUNT_ROOTS), and /etc/localtime and /etc/timezone read-only",
            "iptables_rules[0].dest_port: 0 is outside 1-65535",
            "backend: \"localhost:5232\" points at localhost",
            "cap_add[0]: \"SYS_ADMIN\" is not allowed",
        ] {
            assert!(
                report.errors.iter().any(|e| e.starts_with(expected)),
                "{expected:?} missing from {:#?}",
                report.errors
            );
        }
    }

    #[test]
    fn valid_manifest_carries_checked_values() {
        let env = env();
        let manifest = patched(
            service_base(),
            r#"{
                "cap_add": ["cap_chown", "Setuid"],
                "caddy_route": {"subdomain": "cal", "backend": "cell-radicale:80"},
                "extra_subdomains": ["dav"],
                "extra_backends": {"web": "cell-radicale-web:8080"},
                "iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 53, "proto": "udp"}],
                "requires": ["mail"],
                "description": "CalDAV and CardDAV"
            }"#,
        );
        let (valid, report) = validate(&manifest, &rules(&env));
        let Some(m) = valid else {
            panic!("refused: {report:#?}");
        };
        assert_eq!(m.id.as_str(), "radicale");
        assert_eq!(m.kind, Kind::Service);
        assert_eq!(m.cap_add, ["CHOWN", "SETUID"]);
        let routes: Vec<(&str, &str)> = m
            .routes
            .iter()
            .map(|(s, b)| (s.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            routes,
            [
                ("calendar", "cell-radicale:5232"),
                ("cal", "cell-radicale:80"),
                ("dav", "cell-radicale:5232"),
                ("web", "cell-radicale-web:8080"),
            ]
        );
        assert_eq!(
            m.iptables_rules,
            [PortRule {
                dest_port: 53,
                proto: Proto::Udp
            }]
        );
        assert_eq!(m.requires.len(), 1);
        assert_eq!(m.extra.len(), 1);
        assert_eq!(m.extra["description"], json!("CalDAV and CardDAV"));
        assert_eq!(m.volumes[0].mount, "collections");
        assert_eq!(m.env[0].name, "TZ");
    }

    #[test]
    fn connectivity_manifest_keeps_its_mode() {
        let env = env();
        let (valid, report) = validate(&connectivity_base(), &rules(&env));
        let Some(m) = valid else {
            panic!("refused: {report:#?}");
        };
        assert!(m.instanceable);
        assert_eq!(
            m.connectivity,
            Some(Connectivity {
                mode: ConnectivityMode::Redirect
            })
        );
        assert_eq!(m.cap_add, ["NET_ADMIN"]);
        assert!(m.routes.is_empty());
    }

    #[test]
    fn same_legacy_route_is_one_route() {
        let env = env();
        let manifest = patched(
            service_base(),
            r#"{"caddy_route": {"subdomain": "calendar"}}"#,
        );
        let (valid, _) = validate(&manifest, &rules(&env));
        let routes = valid.map(|m| m.routes.clone()).unwrap_or_default();
        assert_eq!(routes.len(), 1);
    }

    #[test]
    fn non_objects_are_one_error() {
        let env = env();
        for (value, found) in [
            (json!([]), "an array"),
            (json!(null), "null"),
            (json!("radicale"), "a string"),
            (json!(3), "a number"),
            (json!(true), "a boolean"),
        ] {
            let (valid, report) = validate(&value, &rules(&env));
            assert!(valid.is_none());
            assert_eq!(
                report.errors,
                [format!("manifest: expected a JSON object, found {found}")]
            );
        }
    }

    #[test]
    fn empty_object_reports_every_required_field() {
        let env = env();
        let (valid, report) = validate(&json!({}), &rules(&env));
        assert!(valid.is_none());
        for key in ["id", "name", "version", "author", "image", "container_name"] {
            let expected = format!("{key}: is required");
            assert!(report.errors.contains(&expected), "{:#?}", report.errors);
        }
        assert_eq!(report.errors.len(), 6, "{:#?}", report.errors);
    }

    #[test]
    fn weird_inputs_never_panic() {
        let env = env();
        let rules = rules(&env);
        let mut deep = json!("bottom");
        for _ in 0..500 {
            deep = json!([deep]);
        }
        let huge = "x".repeat(1 << 20);
        let inputs = [
            json!({"id": deep.clone(), "volumes": [deep.clone()], "env": deep.clone()}),
            json!({"id": huge, "name": huge, "image": huge, "container_name": huge,
                   "volumes": [{"mount": huge, "target": huge}], "backend": huge,
                   "subdomain": huge, "env": [{"name": huge, "value": huge}],
                   "provision_hook": [huge], huge.clone(): 1}),
            json!({"image": "@@@:::///", "backend": ":", "volumes": [{"mount": "/..", "target": "/.."}]}),
            json!({"image": "é/ü:ä@sha256:é", "backend": "é:8é", "subdomain": "ç",
                   "env": [{"name": "É", "value": "é"}], "cap_add": ["ǆ"]}),
            json!({"extra_backends": {"": ""}, "caddy_route": {}, "connectivity": [],
                   "iptables_rules": [{}, [], null, 1e308]}),
        ];
        for input in &inputs {
            let (valid, report) = validate(input, &rules);
            assert!(valid.is_none());
            assert!(report.has_errors());
            assert!(report.errors.iter().all(|e| e.len() < 1536), "{report:#?}");
        }
    }

    #[test]
    fn validate_bytes_reports_bad_json_once() {
        let env = env();
        let rules = rules(&env);
        for bytes in [&b""[..], b"{", b"\xff\xfe", b"{\"id\": }", b"[[[[[["] {
            let (valid, report) = validate_bytes(bytes, &rules);
            assert!(valid.is_none());
            assert_eq!(report.errors.len(), 1, "{report:#?}");
            assert!(report.errors[0].starts_with("not JSON: "), "{report:#?}");
        }
        let nested = "[".repeat(100_000);
        let (_, report) = validate_bytes(nested.as_bytes(), &rules);
        assert!(report.errors[0].starts_with("not JSON: "));
        let text = serde_json::to_vec(&service_base()).unwrap_or_default();
        assert!(validate_bytes(&text, &rules).0.is_some());
    }

    #[test]
    fn normalizes_paths() {
        for (input, want) in [
            ("/", "/"),
            ("//etc", "/etc"),
            ("/etc/", "/etc"),
            ("/srv/../etc", "/etc"),
            ("/../..", "/"),
            ("/a/./b//c/..", "/a/b"),
            ("a/../../b", "../b"),
            ("./x/", "x"),
            ("", "."),
            ("a/..", "."),
        ] {
            assert_eq!(normalize_path(input), want, "{input:?}");
        }
    }

    #[test]
    fn host_paths_are_an_allow_list() {
        let roots = ["/srv", "/mnt", "/media"].map(PathBuf::from);
        let places = HostPlaces {
            roots: &roots,
            cell_dir: Path::new("/home/roof/pic/"),
            state_dir: Path::new("/srv/pic-store"),
        };
        let rw = |p: &str| host_path_problem(p, Access::ReadWrite, &places);
        let ro = |p: &str| host_path_problem(p, Access::ReadOnly, &places);
        for bad in [
            "/",
            "/etc",
            "/etc/../etc/shadow",
            "/var/run/docker.sock",
            "/srv/Docker.Sock",
            "/home/roof/.ssh",
            "/var/spool/cron",
            "/var/lib/containerd",
            "/var/log/auth.log",
            "/var/lib/zerotier-one",
            "/tmp",
            "/srvx",
            "/srv/../tmp",
            "/home/roof/pic",
            "/srv/pic-store",
            "/srv/pic-store/data/x",
            "/srv",
            "relative",
        ] {
            assert!(rw(bad).is_some(), "{bad:?} should be refused");
            assert!(ro(bad).is_some(), "{bad:?} should be refused read-only too");
        }
        assert!(rw("/srv").is_some_and(|m| m.contains("holds pic-store's state directory")));
        for good in [
            "/srv/media",
            "/mnt/usb",
            "/media",
            "/mnt/./usb//x/",
            "/srv/pic-storex",
        ] {
            assert_eq!(rw(good), None, "{good:?}");
        }
        for time in ["/etc/localtime", "/etc/timezone", "/etc//localtime"] {
            assert_eq!(ro(time), None, "{time:?}");
            assert!(rw(time).is_some(), "{time:?} writable");
        }
        let no_roots = HostPlaces {
            roots: &[],
            ..places
        };
        let msg = host_path_problem("/srv/a", Access::ReadWrite, &no_roots);
        assert!(msg.is_some_and(|m| m.contains("allowed are none")));
    }

    #[test]
    fn long_image_references_are_quoted_whole() {
        let env = env();
        let image = format!(
            "evil.example/{}:{}@sha256:{DIGEST}",
            "a".repeat(240),
            "t".repeat(120)
        );
        let m = patched(service_base(), &json!({"image": image}).to_string());
        let (_, report) = validate(&m, &rules(&env));
        assert!(
            report
                .errors
                .iter()
                .any(|e| e.contains(&format!("{image:?}"))),
            "{report:#?}"
        );
    }

    #[test]
    fn at_most_32_settings() {
        let settings: Vec<Value> = (0..33)
            .map(|i| json!({"name": format!("S{i}"), "label": "s", "type": "string"}))
            .collect();
        let mut m = service_base();
        m["settings"] = Value::Array(settings.clone());
        let env = env();
        let (valid, report) = validate(&m, &rules(&env));
        assert!(valid.is_none());
        assert!(
            report
                .errors
                .iter()
                .any(|e| e.contains("settings: has 33 entries; at most 32")),
            "{report:?}"
        );
        m["settings"] = Value::Array(settings[..32].to_vec());
        let (valid, report) = validate(&m, &rules(&env));
        assert!(valid.is_some(), "{report:?}");
        assert_eq!(valid.unwrap().settings.len(), 32);
    }

    #[test]
    fn legacy_port_routes_to_the_container() {
        let env = env();
        let m = patched(
            service_base(),
            r#"{"subdomain": null, "backend": null, "caddy_route": {"subdomain": "calendar", "port": 5232}}"#,
        );
        let (valid, report) = validate(&m, &rules(&env));
        let valid = valid.unwrap_or_else(|| panic!("{report:?}"));
        assert_eq!(
            valid.routes,
            vec![("calendar".to_string(), "cell-radicale:5232".to_string())]
        );
    }

    #[test]
    fn env_values_of_the_seed_are_taken_as_text() {
        let env = env();
        let m = patched(
            service_base(),
            r#"{"env": [{"name": "PORT", "value": 8080}, {"name": "DEBUG", "value": false}, {"name": "EMPTY"}]}"#,
        );
        let (valid, report) = validate(&m, &rules(&env));
        let valid = valid.unwrap_or_else(|| panic!("{report:?}"));
        let values: Vec<(&str, &str)> = valid
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            values,
            vec![("PORT", "8080"), ("DEBUG", "false"), ("EMPTY", "")]
        );
    }

    #[test]
    fn helper_images_and_read_only_volumes_are_kept() {
        let env = env();
        let m = patched(
            service_base(),
            r#"{"helper_images": {"db": "git.pic.ngo/roof/postgres:16@sha256:<D>"},
                "volumes": [{"mount": "/mnt/music", "target": "/music", "read_only": true}]}"#,
        );
        let (valid, report) = validate(&m, &rules(&env));
        let valid = valid.unwrap_or_else(|| panic!("{report:?}"));
        assert_eq!(
            valid.helper_images["db"],
            format!("git.pic.ngo/roof/postgres:16@sha256:{DIGEST}")
        );
        assert!(valid.volumes[0].read_only);
        assert_eq!(helper_placeholder("cache_2"), "IMAGE_CACHE_2");
    }

    #[test]
    fn best_effort_fills_what_the_manifest_cannot_give() {
        let env = env();
        let m = patched(
            service_base(),
            r#"{"id": "Bad Id", "image": "evil/x:1", "container_name": "cell-api", "name": null,
                "volumes": [{"mount": "/etc", "target": "/data"}, {"mount": "ok", "target": "/ok"}],
                "env": [{"name": "TZ", "value": "UTC"}]}"#,
        );
        let (valid, report) = validate(&m, &rules(&env));
        assert!(valid.is_none() && report.errors.len() >= 4, "{report:?}");
        let sample = best_effort(&m, &rules(&env), Some("radicale")).unwrap();
        assert_eq!(sample.id.as_str(), "radicale");
        // What the author wrote is kept where a template can hold it, so
        // the template is not blamed for the manifest's error.
        assert_eq!(sample.image, "evil/x:1");
        assert_eq!(sample.container_name, "cell-api");
        assert_eq!(sample.volumes.len(), 1);
        assert_eq!(sample.env.len(), 1);
        let none = best_effort(&json!({}), &rules(&env), None).unwrap();
        assert_eq!(none.id.as_str(), "sample");
        assert!(best_effort(&json!([]), &rules(&env), None).is_none());
    }

    #[test]
    fn splits_image_references() {
        let digest = format!("sha256:{DIGEST}");
        let image = format!("127.0.0.1:5000/roof/x:1@{digest}");
        assert_eq!(
            split_image(&image),
            ImageRef {
                repo: "127.0.0.1:5000/roof/x",
                tag: Some("1"),
                digest: Some(&digest),
            }
        );
        assert_eq!(
            split_image("localhost:5000/x"),
            ImageRef {
                repo: "localhost:5000/x",
                tag: None,
                digest: None,
            }
        );
    }
}
