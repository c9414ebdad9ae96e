//! Service manifests (spec §6): their types and the validator. No I/O.
//! A [`ValidManifest`] can only come from [`validate`], which reports every
//! error and warning at once, each naming the field and the value.

use crate::ids::ServiceId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

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

    /// Re-wraps a manifest read back from the state file, which only ever
    /// holds manifests that passed validation when they were installed.
    pub fn from_state(m: Manifest) -> ValidManifest {
        ValidManifest(m)
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
    pub verification: VerificationMode,
    /// The other installed services (the one being validated excluded).
    pub taken: Vec<Taken>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Validates a manifest given as JSON. The manifest comes back only when
/// there is no error; the report always lists every problem found.
pub fn validate(_value: &serde_json::Value, _rules: &Rules) -> (Option<ValidManifest>, Report) {
    (
        None,
        Report {
            errors: vec!["manifest validation is not built yet".into()],
            warnings: vec![],
        },
    )
}
