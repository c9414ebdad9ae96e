//! Networking of the cell (spec §9): the firewall chains, the policy
//! routing of connection instances and the Caddy route file, each a pure
//! plan from the [`State`] and a thin apply through [`Host`].
//! Invariant: the planners do no I/O; only the `apply`/`read_live`
//! functions spawn, and only through `host`. This module never writes the
//! state. Tests: each file's unit tests (golden text), `tests/net_apply.rs`
//! (real iptables, ip and caddy in a network namespace).

pub mod caddy;
pub mod firewall;
pub mod routing;

use crate::config::Config;
use crate::error::Result;
use crate::files;
use crate::host::Host;
use crate::state::State;

/// What [`apply_all`] did, part by part; a failing part does not stop the
/// others.
#[derive(Debug)]
pub struct NetReport {
    pub firewall: Result<firewall::ApplyReport>,
    pub routing: Result<routing::ApplyReport>,
    pub caddy: Result<caddy::CaddyOutcome>,
}

impl NetReport {
    /// Whether every part applied (a failed Caddy reload counts as failed).
    pub fn ok(&self) -> bool {
        self.firewall.is_ok()
            && self.routing.is_ok()
            && matches!(&self.caddy, Ok(c) if c.reload_error.is_none())
    }

    /// State entries the plans left out.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Ok(r) = &self.firewall {
            w.extend(r.warnings.iter().cloned());
        }
        if let Ok(r) = &self.routing {
            w.extend(r.warnings.iter().cloned());
        }
        if let Ok(r) = &self.caddy {
            w.extend(r.warnings.iter().cloned());
        }
        w
    }

    /// Failure of the parts an operation cannot do without: firewall and
    /// policy routing. A Caddy problem is reported, not fatal (spec §8).
    pub fn fatal(&self) -> Result<()> {
        match (&self.firewall, &self.routing) {
            (Err(e), _) => Err(crate::error::Error::failed("firewall", e)),
            (_, Err(e)) => Err(crate::error::Error::failed("policy routing", e)),
            _ => Ok(()),
        }
    }

    /// Lines worth telling the person: failures, reload errors, warnings.
    pub fn problems(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.contains("FAILED") || l.starts_with("warning:"))
            .collect()
    }

    /// Each part as a reapply item: its name and what happened.
    pub fn parts(&self) -> Vec<(String, std::result::Result<String, String>)> {
        let lines = self.lines();
        let outcome = |ok: bool, i: usize| {
            let line = lines.get(i).cloned().unwrap_or_default();
            let detail = line
                .split_once(": ")
                .map(|(_, d)| d.to_string())
                .unwrap_or(line);
            if ok {
                Ok(detail)
            } else {
                Err(detail)
            }
        };
        let caddy_ok = matches!(&self.caddy, Ok(c) if c.reload_error.is_none());
        vec![
            ("firewall".to_string(), outcome(self.firewall.is_ok(), 0)),
            (
                "policy routing".to_string(),
                outcome(self.routing.is_ok(), 1),
            ),
            ("caddy".to_string(), outcome(caddy_ok, 2)),
        ]
    }

    /// One line per part, for the reapply report.
    pub fn lines(&self) -> Vec<String> {
        let firewall = match &self.firewall {
            Ok(r) if r.restored.is_empty() => "firewall: in place".to_string(),
            Ok(r) => format!("firewall: rebuilt {}", r.restored.join(", ")),
            Err(e) => format!("firewall: FAILED: {e}"),
        };
        let routing = match &self.routing {
            Ok(r) if r.batch.is_empty() => "policy routing: in place".to_string(),
            Ok(r) => format!("policy routing: {} change(s)", r.batch.lines().count()),
            Err(e) => format!("policy routing: FAILED: {e}"),
        };
        let caddy = match &self.caddy {
            Ok(c) => match (&c.reload_error, c.changed) {
                (Some(e), _) => format!("caddy: routes written, reload FAILED: {e}"),
                (None, _) if c.reloaded => "caddy: routes written and reloaded".to_string(),
                (None, true) => "caddy: routes written (no reload command)".to_string(),
                (None, false) => "caddy: in place".to_string(),
            },
            Err(e) => format!("caddy: FAILED: {e}"),
        };
        let mut lines = vec![firewall, routing, caddy];
        lines.extend(self.warnings().into_iter().map(|w| format!("warning: {w}")));
        lines
    }
}

/// What the firewall plan needs besides the state: the configuration and,
/// when some service has an egress choice, its compose networks and the
/// cell network's bridge as docker has them now (so `reapply` follows
/// networks docker re-created). When docker cannot be read, the helpers
/// are left unmarked and a warning says so.
pub fn surroundings(host: &dyn Host, config: &Config, state: &State) -> firewall::Surroundings {
    let mut around = firewall::Surroundings::new(&config.wan_iface);
    around.direct_subnets = config.direct_subnets.clone();
    if state.egress.is_empty() {
        return around;
    }
    let projects: std::collections::BTreeSet<String> = state
        .egress
        .keys()
        .map(|id| crate::compose::project_name(id, None))
        .collect();
    match crate::docker::project_networks(host, config, &projects) {
        Ok(found) => {
            for id in state.egress.keys() {
                let project = crate::compose::project_name(id, None);
                if let Some(nets) = found.subnets.get(&project) {
                    around.helper_subnets.insert(id.clone(), nets.clone());
                }
            }
            around.cell_bridge = found.cell_bridge;
        }
        Err(e) => around.warnings.push(format!(
            "firewall: helpers of services with egress left unmarked: their networks are unknown: {e}"
        )),
    }
    around
}

/// Makes the firewall, the policy routing and the Caddy file match
/// `state`. Always `Ok`: each part's failure is in the report.
pub fn apply_all(host: &dyn Host, config: &Config, state: &State) -> Result<NetReport> {
    let fw_plan = firewall::plan_with(state, &surroundings(host, config, state));
    let firewall = firewall::apply(host, config, &fw_plan);
    let rt_plan = routing::plan(state);
    let routing = routing::apply(host, config, &rt_plan);
    let caddy = caddy::apply(host, config, state);
    for (part, failed) in [
        ("firewall", firewall.as_ref().err()),
        ("policy routing", routing.as_ref().err()),
        ("caddy", caddy.as_ref().err()),
    ] {
        if let Some(e) = failed {
            log::error!("{part}: {e}");
        }
    }
    Ok(NetReport {
        firewall,
        routing,
        caddy,
    })
}

/// What [`apply_all`] would change, found by reading the live system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DryRun {
    /// The `iptables-restore` input that would run (tables that differ).
    pub ruleset: String,
    /// The `ip -batch` input that would run.
    pub ip_batch: String,
    /// The Caddy file the state gives.
    pub caddyfile: String,
    /// One line per difference; empty when the system matches the state.
    /// A part that could not be read is a line too.
    pub drift: Vec<String>,
    pub warnings: Vec<String>,
}

/// Reads `iptables-save`, the `ip` rules and routes and the Caddy file,
/// and reports how they differ from `state`. Changes nothing.
pub fn dry_run(host: &dyn Host, config: &Config, state: &State) -> DryRun {
    let mut out = DryRun::default();

    let fw_plan = firewall::plan_with(state, &surroundings(host, config, state));
    out.warnings.extend(fw_plan.warnings.iter().cloned());
    match firewall::read_live(host, config) {
        Ok(save) => {
            out.ruleset = firewall::changes(&fw_plan, &save)
                .into_iter()
                .map(|c| c.text)
                .collect();
            out.drift.extend(firewall::drift(&fw_plan, &save));
        }
        Err(e) => out.drift.push(format!("iptables: cannot read: {e}")),
    }

    let rt_plan = routing::plan(state);
    out.warnings.extend(rt_plan.warnings.iter().cloned());
    match routing::read_live(host, config) {
        Ok((rules, routes)) => {
            out.ip_batch = routing::batch(&rt_plan, &rules, &routes);
            out.drift.extend(routing::drift(&rt_plan, &rules, &routes));
        }
        Err(e) => out.drift.push(format!("ip: cannot read: {e}")),
    }

    let caddy_plan = caddy::plan(state, &config.cell_domain);
    out.warnings.extend(caddy_plan.warnings.iter().cloned());
    let path = config.caddyfile.display();
    match files::read_optional(&config.caddyfile) {
        Ok(Some(bytes)) if bytes == caddy_plan.text.as_bytes() => {}
        Ok(Some(_)) => out
            .drift
            .push(format!("caddy: {path} differs from the state")),
        Ok(None) => out.drift.push(format!("caddy: {path} is missing")),
        Err(e) => out.drift.push(format!("caddy: cannot read: {e}")),
    }
    out.caddyfile = caddy_plan.text;
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::host::FakeHost;
    use crate::ids::ServiceId;
    use crate::manifest::{Connectivity, ConnectivityMode, Kind, Manifest, PortRule, Proto};
    use crate::state::{Connection, InstalledService};

    pub(crate) fn manifest(id: &str) -> Manifest {
        Manifest {
            id: ServiceId::parse(id).unwrap(),
            name: id.into(),
            version: "1".into(),
            author: "roof".into(),
            kind: Kind::Service,
            image: format!("git.pic.ngo/roof/{id}:1"),
            container_name: format!("cell-{id}"),
            requires: vec![],
            volumes: vec![],
            env: vec![],
            iptables_rules: vec![],
            routes: vec![],
            cap_add: vec![],
            provision_hook: None,
            instanceable: false,
            connectivity: None,
            helper_images: Default::default(),
            settings: vec![],
            extra: Default::default(),
        }
    }

    fn service(m: Manifest, ip: Option<&str>) -> InstalledService {
        InstalledService {
            manifest: m,
            ip: ip.map(|i| i.parse().unwrap()),
            installed_at: 1,
            image_digest: None,
            template: None,
            stopped: false,
            settings: Default::default(),
            secrets: Default::default(),
        }
    }

    fn connectivity(id: &str, mode: ConnectivityMode) -> InstalledService {
        let mut m = manifest(id);
        m.kind = Kind::Connectivity;
        m.instanceable = true;
        m.connectivity = Some(Connectivity { mode });
        service(m, None)
    }

    fn connection(service: &str, n: u32) -> Connection {
        Connection {
            service: service.into(),
            env: Default::default(),
            fwmark: 0x100 + n,
            table: 100 + n,
            port: 12000 + n as u16,
            ip: format!("172.20.0.{}", 30 + n).parse().unwrap(),
            created_at: 1,
        }
    }

    /// Two services (three rules, tcp and udp), two connections (one
    /// redirect, one route), two peers, one egress.
    pub(crate) fn golden_state() -> State {
        let mut st = State::default();
        let mut radicale = manifest("radicale");
        radicale.iptables_rules = vec![PortRule {
            dest_port: 5232,
            proto: Proto::Tcp,
        }];
        radicale.routes = vec![("calendar".into(), "cell-radicale:5232".into())];
        let mut files = manifest("files");
        files.iptables_rules = vec![
            PortRule {
                dest_port: 80,
                proto: Proto::Tcp,
            },
            PortRule {
                dest_port: 69,
                proto: Proto::Udp,
            },
        ];
        files.routes = vec![
            ("files".into(), "cell-files:80".into()),
            ("dav".into(), "cell-files:8080".into()),
        ];
        st.services
            .insert("radicale".into(), service(radicale, Some("172.20.0.20")));
        st.services
            .insert("files".into(), service(files, Some("172.20.0.21")));
        st.services.insert(
            "proxy".into(),
            connectivity("proxy", ConnectivityMode::Redirect),
        );
        st.services.insert(
            "wg-ext".into(),
            connectivity("wg-ext", ConnectivityMode::Route),
        );
        st.connections
            .insert("home-proxy".into(), connection("proxy", 0));
        st.connections
            .insert("office-vpn".into(), connection("wg-ext", 1));
        st.peer_routes
            .insert("10.8.0.2".into(), "home-proxy".into());
        st.peer_routes
            .insert("10.8.0.3".into(), "office-vpn".into());
        st.egress.insert("radicale".into(), "office-vpn".into());
        st
    }

    fn config(dir: &std::path::Path) -> Config {
        let caddyfile = dir.join("services.caddy").display().to_string();
        Config::from_lookup(|k| match k {
            "PIC_CADDYFILE" => Some(caddyfile.clone()),
            "PIC_CADDY_RELOAD" => Some(String::new()),
            "PIC_IPTABLES_SAVE" => Some("/sbin/iptables-save".into()),
            "PIC_IPTABLES_RESTORE" => Some("/sbin/iptables-restore".into()),
            "PIC_IP" => Some("/sbin/ip".into()),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn a_failing_part_does_not_stop_the_others() {
        let dir = std::env::temp_dir().join(format!("pic-net-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The golden state has an egress: docker is asked for the
        // service's compose networks and the cell network first.
        let host = FakeHost::new()
            .answer("", 0, "")
            .answer("", 0, "")
            .answer("/sbin/iptables-save", 1, "")
            .answer("/sbin/ip -4 -N -batch -", 0, "")
            .answer("/sbin/ip -force -batch -", 0, "");
        let report = apply_all(&host, &config(&dir), &golden_state()).unwrap();
        assert!(report.firewall.is_err());
        assert!(report.routing.is_ok());
        assert!(report.caddy.as_ref().unwrap().changed);
        assert!(!report.ok());
        assert!(report.lines()[0].starts_with("firewall: FAILED"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dry_run_reports_everything_on_a_bare_host_and_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("pic-net-dry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let host = FakeHost::new()
            .answer("", 0, "")
            .answer("", 0, "")
            .answer("/sbin/iptables-save", 0, "")
            .answer("/sbin/ip -4 -N -batch -", 0, "");
        let d = dry_run(&host, &config(&dir), &golden_state());
        // The golden state has an egress: docker is asked for the
        // service's compose networks and the cell network's bridge.
        let calls = host.calls();
        assert_eq!(calls.len(), 4, "{calls:?}");
        assert!(calls[0].contains(" network ls --filter label=com.docker.compose.project "));
        assert!(calls[1].contains(" network inspect ") && calls[1].ends_with(" cell-network"));
        assert_eq!(
            calls[2..],
            ["/sbin/iptables-save", "/sbin/ip -4 -N -batch -"]
        );
        assert!(d.ruleset.starts_with("*filter\n"));
        assert!(d
            .ip_batch
            .contains("rule add fwmark 0x100 lookup 100 priority 10000"));
        assert!(d.drift.iter().any(|l| l.contains("is missing")));
        assert!(d
            .drift
            .iter()
            .any(|l| l == "iptables filter PIC_SERVICES: chain missing"));
        assert!(!dir.join("services.caddy").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn surroundings_read_the_egress_services_networks_from_docker() {
        let dir = std::env::temp_dir().join(format!("pic-net-around-{}", std::process::id()));
        let mut cfg = config(&dir);
        cfg.docker.path = "/bin/docker".into();
        cfg.direct_subnets = vec![crate::config::Ipv4Subnet::parse("10.8.0.0/24").unwrap()];
        let host = FakeHost::default()
            .answer(
                "",
                0,
                "aaa111\tpic-radicale\nbbb222\tpic-files\nccc333\tpic-radicale\n",
            )
            .answer(
                "",
                0,
                "cell-network\t0123456789abcdef00\t<no value>\t<no value>\t172.20.0.0/24 \n\
                 pic-radicale_default\taaa111\t\tpic-radicale\t172.21.0.0/16 \n\
                 pic-radicale_db\tccc333\t\tpic-radicale\t172.22.0.0/16 \n",
            );
        let around = surroundings(&host, &cfg, &golden_state());
        assert_eq!(
            host.calls()[0],
            "/bin/docker network ls --filter label=com.docker.compose.project --format {{.ID}}\t{{.Label \"com.docker.compose.project\"}}"
        );
        assert_eq!(
            host.calls()[1],
            "/bin/docker network inspect --format {{.Name}}\t{{.Id}}\t{{index .Options \"com.docker.network.bridge.name\"}}\t{{index .Labels \"com.docker.compose.project\"}}\t{{range .IPAM.Config}}{{.Subnet}} {{end}} cell-network aaa111 ccc333"
        );
        let nets: Vec<String> = around.helper_subnets["radicale"]
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["172.21.0.0/16", "172.22.0.0/16"]);
        assert_eq!(around.cell_bridge.as_deref(), Some("br-0123456789ab"));
        assert_eq!(around.direct_subnets, cfg.direct_subnets);

        // Without an egress docker is not asked; when it cannot answer,
        // the plan says so.
        let host = FakeHost::default();
        let mut st = golden_state();
        st.egress.clear();
        let around = surroundings(&host, &cfg, &st);
        assert!(host.calls().is_empty());
        assert!(around.helper_subnets.is_empty());
        let host = FakeHost::default().answer("", 1, "");
        let around = surroundings(&host, &cfg, &golden_state());
        assert_eq!(around.warnings.len(), 1, "{:?}", around.warnings);
    }
}
