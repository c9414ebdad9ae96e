//! pic-store's own iptables chains (spec §9). [`plan`] turns the state into
//! the rules of five chains, written exactly as `iptables-save` prints them
//! so the live chains compare as text; [`apply`] reads `iptables-save`
//! once and runs one `iptables-restore --noflush` per table that differs.
//! In `--noflush` mode `:CHAIN - [0:0]` creates or flushes only that chain,
//! so the host's other rules (docker's among them) are never touched.
//! The filter chains are jumped from the top of `DOCKER-USER`, which docker
//! keeps first in `FORWARD` whatever networks it creates; the marking and
//! redirecting chains start with `RETURN`s for the cell itself, the cell
//! network and `PIC_DIRECT_SUBNETS` (spec §9 v2).
//! Tests: golden text below; `tests/net_apply.rs` against real iptables;
//! `tests/packets.rs` with real packets through namespaces.

use crate::config::{Config, Ipv4Subnet};
use crate::error::{Error, Result};
use crate::host::{Cmd, Host};
use crate::manifest::{ConnectivityMode, Proto};
use crate::state::{Connection, State};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

pub const FILTER: &str = "filter";
pub const MANGLE: &str = "mangle";
pub const NAT: &str = "nat";
pub const SERVICES: &str = "PIC_SERVICES";
pub const KILLSWITCH: &str = "PIC_KILLSWITCH";
pub const CONNECTIVITY: &str = "PIC_CONNECTIVITY";
pub const EGRESS: &str = "PIC_EGRESS";
/// Docker's chain for the host's own filter rules: docker creates it, keeps
/// its jump first in `FORWARD` and never changes what is in it.
pub const DOCKER_USER: &str = "DOCKER-USER";
/// Where docker's `DOCKER-USER` is jumped from.
pub const FORWARD: &str = "FORWARD";

/// Targets in `FORWARD` that never let a packet through, so they may come
/// before the jump to `DOCKER-USER` (docker's isolation chains only drop).
const NEVER_ACCEPTS: &[&str] = &[
    "DROP",
    "REJECT",
    "LOG",
    "NFLOG",
    "DOCKER-ISOLATION-STAGE-1",
    "DOCKER-ISOLATION-STAGE-2",
    DOCKER_USER,
];

/// What the plan needs besides the state: the configuration and what
/// docker says about the networks of services with an egress choice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Surroundings {
    /// The interface the kill-switch guards (`PIC_WAN_IFACE`).
    pub wan_iface: String,
    /// `PIC_DIRECT_SUBNETS`.
    pub direct_subnets: Vec<Ipv4Subnet>,
    /// Service id → the subnets of its own compose networks (its helpers).
    pub helper_subnets: BTreeMap<String, Vec<Ipv4Subnet>>,
    /// The bridge of the cell network, the way from a helper's network to
    /// its instance.
    pub cell_bridge: Option<String>,
    /// What could not be found out (docker unreadable), for the report.
    pub warnings: Vec<String>,
}

impl Surroundings {
    pub fn new(wan_iface: &str) -> Surroundings {
        Surroundings {
            wan_iface: wan_iface.to_string(),
            ..Surroundings::default()
        }
    }
}

/// Where a table's jumps to our chains sit in the chain they come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// In the planned order among themselves; other rules may come first.
    InOrder,
    /// The first rules of the chain, in the planned order.
    OnTop,
}

/// One of our chains and its rules, each without the `-A CHAIN ` prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainPlan {
    pub name: &'static str,
    pub rules: Vec<String>,
}

/// Our chains in one table, in the order their jumps should have in
/// `builtin` (the kill-switch drops marked traffic before anything accepts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePlan {
    pub table: &'static str,
    /// The chain our jumps are in: a built-in one, or `DOCKER-USER`.
    pub builtin: &'static str,
    pub placement: Placement,
    /// For `DOCKER-USER`: the built-in chain that must jump to it before
    /// anything there may accept, and must hold no jump to our chains.
    pub entry: Option<&'static str>,
    pub chains: Vec<ChainPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallPlan {
    pub tables: Vec<TablePlan>,
    /// State entries that were left out (a peer route to a missing
    /// connection, ...).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JumpAction {
    Insert,
    Delete,
}

/// A change to the jumps from a built-in chain to one of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpChange {
    pub table: &'static str,
    pub builtin: &'static str,
    pub chain: &'static str,
    pub action: JumpAction,
}

impl JumpChange {
    /// The `iptables-restore` line.
    pub fn line(&self) -> String {
        match self.action {
            JumpAction::Insert => format!("-I {} 1 -j {}", self.builtin, self.chain),
            JumpAction::Delete => format!("-D {} -j {}", self.builtin, self.chain),
        }
    }
}

/// The restore text one table needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableChange {
    pub table: &'static str,
    pub text: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Tables an `iptables-restore` was run for.
    pub restored: Vec<&'static str>,
    /// Tables whose chains and jumps already matched the state.
    pub unchanged: Vec<&'static str>,
    pub warnings: Vec<String>,
}

/// (table, chain) → the chain's rules as `iptables-save` prints them,
/// without `-A CHAIN `. Declared chains without rules map to an empty list.
pub type LiveChains = BTreeMap<(String, String), Vec<String>>;

/// The five chains rebuilt from `state`, without direct subnets or helper
/// networks. `wan_iface` is the interface the kill-switch guards.
pub fn plan(state: &State, wan_iface: &str) -> FirewallPlan {
    plan_with(state, &Surroundings::new(wan_iface))
}

/// The `RETURN`s that start each marking or redirecting chain: the cell
/// itself (any local address), the cell network, the direct subnets.
fn direct_returns(around: &Surroundings) -> Vec<String> {
    let mut out = vec!["-m addrtype --dst-type LOCAL -j RETURN".to_string()];
    let cell = Ipv4Subnet::cell();
    for net in std::iter::once(&cell).chain(&around.direct_subnets) {
        let line = format!("-d {net} -j RETURN");
        if !out.contains(&line) {
            out.push(line);
        }
    }
    out
}

/// The five chains rebuilt from `state` and what is `around` it.
pub fn plan_with(state: &State, around: &Surroundings) -> FirewallPlan {
    let wan_iface = around.wan_iface.as_str();
    let mut warnings = around.warnings.clone();

    let mut services = Vec::new();
    for svc in state.services.values() {
        let Some(ip) = svc.ip else { continue };
        for rule in &svc.manifest.iptables_rules {
            let proto = proto_name(rule.proto);
            services.push(format!(
                "-d {ip}/32 -p {proto} -m {proto} --dport {} -j ACCEPT",
                rule.dest_port
            ));
        }
    }

    let mut killswitch = Vec::new();
    if is_iface(wan_iface) {
        for conn in state.connections.values() {
            killswitch.push(format!(
                "-o {wan_iface} -m mark --mark {} -j DROP",
                mark(conn.fwmark)
            ));
        }
    } else {
        warnings.push(format!(
            "firewall: kill-switch left empty: {wan_iface:?} is not an interface name"
        ));
    }

    let mut peer_marks = Vec::new();
    let mut redirects = Vec::new();
    for (peer, conn_id) in &state.peer_routes {
        let Ok(peer_ip) = peer.parse::<Ipv4Addr>() else {
            warnings.push(format!(
                "firewall: peer route {peer:?} skipped: not an IPv4 address"
            ));
            continue;
        };
        let Some(conn) = state.connections.get(conn_id) else {
            warnings.push(format!(
                "firewall: peer {peer_ip} skipped: connection {conn_id} does not exist"
            ));
            continue;
        };
        peer_marks.push(set_mark(peer_ip, conn.fwmark));
        match connection_mode(state, conn_id, conn) {
            Ok(ConnectivityMode::Redirect) => redirects.push(format!(
                "-s {peer_ip}/32 -p tcp -j REDIRECT --to-ports {}",
                conn.port
            )),
            Ok(ConnectivityMode::Route) => {}
            Err(why) => warnings.push(format!("firewall: peer {peer_ip}: no TCP redirect: {why}")),
        }
    }

    let mut egress = Vec::new();
    let mut helper_passes = Vec::new();
    let cell_bridge = around.cell_bridge.as_deref().filter(|b| is_iface(b));
    for (service, conn_id) in &state.egress {
        let Some(conn) = state.connections.get(conn_id) else {
            warnings.push(format!(
                "firewall: egress of {service} skipped: connection {conn_id} does not exist"
            ));
            continue;
        };
        match state.services.get(service).map(|s| s.ip) {
            Some(Some(ip)) => egress.push(set_mark(ip, conn.fwmark)),
            Some(None) => {
                warnings.push(format!(
                    "firewall: egress of {service} skipped: the service has no IP"
                ));
                continue;
            }
            None => {
                warnings.push(format!(
                    "firewall: egress of {service} skipped: the service is not installed"
                ));
                continue;
            }
        }
        let helpers = around.helper_subnets.get(service).into_iter().flatten();
        for net in helpers {
            if net.overlaps(&Ipv4Subnet::cell()) {
                warnings.push(format!(
                    "firewall: egress of {service}: network {net} overlaps the cell network; not marked"
                ));
                continue;
            }
            egress.push(format!(
                "-s {net} -j MARK --set-xmark {}/0xffffffff",
                mark(conn.fwmark)
            ));
            // Docker's isolation drops traffic between two of its bridges:
            // let the helpers' marked traffic (the kill-switch above has
            // dropped what heads for the WAN) through to the instance on
            // the cell network, and its answers back. Nothing else from
            // another project's network gets in.
            match cell_bridge {
                Some(br) => {
                    helper_passes.push(format!(
                        "-s {net} -o {br} -m mark --mark {} -j ACCEPT",
                        mark(conn.fwmark)
                    ));
                    helper_passes.push(format!(
                        "-d {net} -i {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
                    ));
                }
                None => warnings.push(format!(
                    "firewall: egress of {service}: the cell network's bridge is unknown; \
                     its helpers' traffic is marked but cannot reach the instance"
                )),
            }
        }
    }
    killswitch.extend(helper_passes);

    let returns = direct_returns(around);
    let with_returns = |rules: Vec<String>| {
        if rules.is_empty() {
            rules
        } else {
            returns.iter().cloned().chain(rules).collect()
        }
    };
    let chain = |name, rules| ChainPlan { name, rules };
    FirewallPlan {
        tables: vec![
            TablePlan {
                table: FILTER,
                builtin: DOCKER_USER,
                placement: Placement::OnTop,
                entry: Some(FORWARD),
                chains: vec![chain(KILLSWITCH, killswitch), chain(SERVICES, services)],
            },
            TablePlan {
                table: MANGLE,
                builtin: "PREROUTING",
                placement: Placement::InOrder,
                entry: None,
                chains: vec![
                    chain(CONNECTIVITY, with_returns(peer_marks)),
                    chain(EGRESS, with_returns(egress)),
                ],
            },
            TablePlan {
                table: NAT,
                builtin: "PREROUTING",
                placement: Placement::InOrder,
                entry: None,
                chains: vec![chain(CONNECTIVITY, with_returns(redirects))],
            },
        ],
        warnings,
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

/// How `iptables-save` prints a mark: lower-case hex with `0x`.
fn mark(fwmark: u32) -> String {
    format!("{fwmark:#x}")
}

/// `-j MARK --set-mark M` as `iptables-save` prints it.
fn set_mark(source: Ipv4Addr, fwmark: u32) -> String {
    format!(
        "-s {source}/32 -j MARK --set-xmark {}/0xffffffff",
        mark(fwmark)
    )
}

fn connection_mode(
    state: &State,
    conn_id: &str,
    conn: &Connection,
) -> std::result::Result<ConnectivityMode, String> {
    let svc = state.services.get(&conn.service).ok_or_else(|| {
        format!(
            "connection {conn_id}: service {} is not installed",
            conn.service
        )
    })?;
    svc.manifest
        .connectivity
        .as_ref()
        .map(|c| c.mode)
        .ok_or_else(|| {
            format!(
                "connection {conn_id}: service {} has no connectivity mode",
                conn.service
            )
        })
}

/// The configuration checks this too; the planner does not trust a `&str`
/// that ends up inside restore text.
fn is_iface(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

impl TablePlan {
    /// The `iptables-restore --noflush` input that rebuilds this table's
    /// chains and makes `jumps` (those of this table) in one transaction.
    /// `DOCKER-USER` is declared (which would flush it) only when `live`
    /// does not have it.
    pub fn restore_text(&self, jumps: &[JumpChange], live: &LiveChains) -> String {
        let mut t = format!("*{}\n", self.table);
        if self.entry.is_some() && !self.builtin_exists(live) {
            t.push_str(&format!(":{} - [0:0]\n", self.builtin));
        }
        for c in &self.chains {
            t.push_str(&format!(":{} - [0:0]\n", c.name));
        }
        for c in &self.chains {
            for r in &c.rules {
                t.push_str(&format!("-A {} {r}\n", c.name));
            }
        }
        for j in jumps.iter().filter(|j| j.table == self.table) {
            t.push_str(&j.line());
            t.push('\n');
        }
        t.push_str("COMMIT\n");
        t
    }

    fn builtin_exists(&self, live: &LiveChains) -> bool {
        live.contains_key(&(self.table.to_string(), self.builtin.to_string()))
    }

    fn chains_match(&self, live: &LiveChains) -> bool {
        self.chains.iter().all(|c| {
            live.get(&(self.table.to_string(), c.name.to_string()))
                .is_some_and(|rules| *rules == c.rules)
        })
    }
}

/// Parses `iptables-save` output (all tables).
pub fn live_chains(save: &str) -> LiveChains {
    let mut out = LiveChains::new();
    let mut table = String::new();
    for line in save.lines() {
        let line = line.trim_end();
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next() {
                out.entry((table.clone(), name.to_string())).or_default();
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
            out.entry((table.clone(), chain.to_string()))
                .or_default()
                .push(rule.to_string());
        }
    }
    out
}

/// The jump changes that leave exactly one jump to each of our chains in
/// its built-in chain, in the planned order: missing ones are inserted at
/// position 1, duplicates deleted. When that alone cannot give the right
/// order, every jump is deleted and inserted again (inside the same
/// transaction, so traffic never sees the chain without them).
pub fn missing_jumps(plan: &FirewallPlan, iptables_save_output: &str) -> Vec<JumpChange> {
    jump_changes(plan, &live_chains(iptables_save_output))
}

fn jump_changes(plan: &FirewallPlan, live: &LiveChains) -> Vec<JumpChange> {
    plan.tables
        .iter()
        .flat_map(|t| table_jump_changes(t, live))
        .collect()
}

fn table_jump_changes(t: &TablePlan, live: &LiveChains) -> Vec<JumpChange> {
    let mut out = match t.entry {
        Some(entry) => entry_changes(t, entry, live),
        None => Vec::new(),
    };
    out.extend(match t.placement {
        Placement::InOrder => in_order_jump_changes(t, live),
        Placement::OnTop => on_top_jump_changes(t, live),
    });
    out
}

/// The rules of `chain` in `t`'s table (none when it does not exist).
fn rules_of<'a>(t: &TablePlan, chain: &str, live: &'a LiveChains) -> &'a [String] {
    live.get(&(t.table.to_string(), chain.to_string()))
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The target of a rule as `iptables-save` prints it (`-j X` or `-g X`).
fn target(rule: &str) -> Option<&str> {
    let words: Vec<&str> = rule.split_whitespace().collect();
    words
        .windows(2)
        .rev()
        .find(|w| w[0] == "-j" || w[0] == "-g")
        .map(|w| w[1])
}

/// `FORWARD` must reach `DOCKER-USER` before any rule there may accept
/// (docker keeps it so; a host script might not) and must not jump to our
/// chains itself (where version 1 put them, and where docker demotes them).
fn entry_changes(t: &TablePlan, entry: &'static str, live: &LiveChains) -> Vec<JumpChange> {
    let rules = rules_of(t, entry, live);
    let ours = |r: &str| t.chains.iter().any(|c| r == format!("-j {}", c.name));
    let change = |chain, action| JumpChange {
        table: t.table,
        builtin: entry,
        chain,
        action,
    };
    let mut out = Vec::new();
    for c in &t.chains {
        for _ in rules.iter().filter(|r| **r == format!("-j {}", c.name)) {
            out.push(change(c.name, JumpAction::Delete));
        }
    }
    let jump = format!("-j {}", t.builtin);
    let first_jump = rules.iter().position(|r| *r == jump);
    let first_open = rules
        .iter()
        .position(|r| !ours(r) && target(r).is_some_and(|x| !NEVER_ACCEPTS.contains(&x)));
    let in_time = match (first_jump, first_open) {
        (Some(j), Some(o)) => j < o,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if !in_time {
        for _ in rules.iter().filter(|r| **r == jump) {
            out.push(change(t.builtin, JumpAction::Delete));
        }
        out.push(change(t.builtin, JumpAction::Insert));
    }
    out
}

/// Our jumps must be the first rules of the chain, each once: otherwise
/// every copy goes and they are inserted on top again (one transaction).
fn on_top_jump_changes(t: &TablePlan, live: &LiveChains) -> Vec<JumpChange> {
    let rules = rules_of(t, t.builtin, live);
    let jumps: Vec<String> = t.chains.iter().map(|c| format!("-j {}", c.name)).collect();
    let copies = |j: &String| rules.iter().filter(|r| *r == j).count();
    if rules.starts_with(&jumps) && jumps.iter().all(|j| copies(j) == 1) {
        return Vec::new();
    }
    let change = |chain, action| JumpChange {
        table: t.table,
        builtin: t.builtin,
        chain,
        action,
    };
    let mut out = Vec::new();
    for (c, j) in t.chains.iter().zip(&jumps) {
        for _ in 0..copies(j) {
            out.push(change(c.name, JumpAction::Delete));
        }
    }
    for c in t.chains.iter().rev() {
        out.push(change(c.name, JumpAction::Insert));
    }
    out
}

fn in_order_jump_changes(t: &TablePlan, live: &LiveChains) -> Vec<JumpChange> {
    let desired: Vec<&'static str> = t.chains.iter().map(|c| c.name).collect();
    let empty = Vec::new();
    let builtin_rules = live
        .get(&(t.table.to_string(), t.builtin.to_string()))
        .unwrap_or(&empty);
    let seen: Vec<&'static str> = builtin_rules
        .iter()
        .filter_map(|r| r.strip_prefix("-j "))
        .filter_map(|target| desired.iter().copied().find(|d| *d == target))
        .collect();
    if seen == desired {
        return Vec::new();
    }
    let change = |chain, action| JumpChange {
        table: t.table,
        builtin: t.builtin,
        chain,
        action,
    };
    let count = |chain: &str| seen.iter().filter(|s| **s == chain).count();

    // The small fix: `-D` removes the first of the duplicates, `-I 1`
    // puts a missing jump on top. Simulate it; use it if the order is right.
    let mut small = Vec::new();
    let mut after = seen.clone();
    for &chain in &desired {
        for _ in 1..count(chain) {
            small.push(change(chain, JumpAction::Delete));
            if let Some(pos) = after.iter().position(|s| *s == chain) {
                after.remove(pos);
            }
        }
    }
    for &chain in desired.iter().rev() {
        if count(chain) == 0 {
            small.push(change(chain, JumpAction::Insert));
            after.insert(0, chain);
        }
    }
    if after == desired {
        return small;
    }

    let mut full = Vec::new();
    for &chain in &desired {
        for _ in 0..count(chain) {
            full.push(change(chain, JumpAction::Delete));
        }
    }
    for &chain in desired.iter().rev() {
        full.push(change(chain, JumpAction::Insert));
    }
    full
}

/// The restore texts of the tables whose chains or jumps differ from the
/// plan, given the live `iptables-save` output.
pub fn changes(plan: &FirewallPlan, iptables_save_output: &str) -> Vec<TableChange> {
    let live = live_chains(iptables_save_output);
    let jumps = jump_changes(plan, &live);
    plan.tables
        .iter()
        .filter(|t| !t.chains_match(&live) || jumps.iter().any(|j| j.table == t.table))
        .map(|t| TableChange {
            table: t.table,
            text: t.restore_text(&jumps, &live),
        })
        .collect()
}

/// One line per difference between the plan and the live chains, for
/// `reapply --dry-run`.
pub fn drift(plan: &FirewallPlan, iptables_save_output: &str) -> Vec<String> {
    let live = live_chains(iptables_save_output);
    let mut out = Vec::new();
    for t in &plan.tables {
        if t.entry.is_some() && !t.builtin_exists(&live) {
            out.push(format!("iptables {} {}: chain missing", t.table, t.builtin));
        }
        for c in &t.chains {
            let key = (t.table.to_string(), c.name.to_string());
            let Some(rules) = live.get(&key) else {
                out.push(format!("iptables {} {}: chain missing", t.table, c.name));
                continue;
            };
            for r in c.rules.iter().filter(|r| !rules.contains(r)) {
                out.push(format!("iptables {} {}: missing rule {r}", t.table, c.name));
            }
            for r in rules.iter().filter(|r| !c.rules.contains(r)) {
                out.push(format!("iptables {} {}: extra rule {r}", t.table, c.name));
            }
            let same_set = c.rules.iter().all(|r| rules.contains(r))
                && rules.iter().all(|r| c.rules.contains(r));
            if same_set && *rules != c.rules {
                out.push(format!(
                    "iptables {} {}: rules out of order or duplicated",
                    t.table, c.name
                ));
            }
        }
    }
    for j in jump_changes(plan, &live) {
        let what = match j.action {
            JumpAction::Insert => "would insert",
            JumpAction::Delete => "would delete",
        };
        out.push(format!(
            "iptables {} {}: {what} jump to {}",
            j.table, j.builtin, j.chain
        ));
    }
    out
}

/// Reads `iptables-save` (all tables) once.
pub fn read_live(host: &dyn Host, config: &Config) -> Result<String> {
    let out = host.run(&Cmd::new(&config.iptables_save).timeout(Duration::from_secs(30)))?;
    Ok(out.stdout)
}

/// Makes the live chains match `plan`: one `iptables-save`, then one
/// `iptables-restore -w 5 --noflush` per table that differs (none when
/// all match). Carries on past a failing table and reports them all.
pub fn apply(host: &dyn Host, config: &Config, plan: &FirewallPlan) -> Result<ApplyReport> {
    let save = read_live(host, config)?;
    let todo = changes(plan, &save);
    let mut report = ApplyReport {
        warnings: plan.warnings.clone(),
        ..ApplyReport::default()
    };
    let mut failures = Vec::new();
    for t in &plan.tables {
        let Some(change) = todo.iter().find(|c| c.table == t.table) else {
            report.unchanged.push(t.table);
            continue;
        };
        let cmd = Cmd::new(&config.iptables_restore)
            .args(["-w", "5", "--noflush"])
            .stdin(change.text.clone().into_bytes())
            .timeout(Duration::from_secs(30));
        match host.run(&cmd) {
            Ok(_) => report.restored.push(t.table),
            Err(e) => failures.push(format!("table {}: {e}", t.table)),
        }
    }
    if failures.is_empty() {
        Ok(report)
    } else {
        let done = if report.restored.is_empty() {
            String::new()
        } else {
            format!(" (restored: {})", report.restored.join(", "))
        };
        Err(Error::failed(
            "firewall",
            format!("{}{done}", failures.join("; ")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;
    use crate::net::tests::golden_state;

    /// The golden state with a direct subnet, the helper network of
    /// radicale (egress through office-vpn, mark 0x101) and the cell bridge.
    fn around() -> Surroundings {
        let mut a = Surroundings::new("eth0");
        a.direct_subnets = vec![Ipv4Subnet::parse("10.8.0.0/24").unwrap()];
        a.helper_subnets.insert(
            "radicale".into(),
            vec![Ipv4Subnet::parse("172.21.0.0/16").unwrap()],
        );
        a.cell_bridge = Some("br-0123456789ab".into());
        a
    }

    fn golden_plan() -> FirewallPlan {
        plan_with(&golden_state(), &around())
    }

    const FILTER_TEXT: &str = "*filter\n\
:DOCKER-USER - [0:0]\n\
:PIC_KILLSWITCH - [0:0]\n\
:PIC_SERVICES - [0:0]\n\
-A PIC_KILLSWITCH -o eth0 -m mark --mark 0x100 -j DROP\n\
-A PIC_KILLSWITCH -o eth0 -m mark --mark 0x101 -j DROP\n\
-A PIC_KILLSWITCH -s 172.21.0.0/16 -o br-0123456789ab -m mark --mark 0x101 -j ACCEPT\n\
-A PIC_KILLSWITCH -d 172.21.0.0/16 -i br-0123456789ab -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
-A PIC_SERVICES -d 172.20.0.21/32 -p tcp -m tcp --dport 80 -j ACCEPT\n\
-A PIC_SERVICES -d 172.20.0.21/32 -p udp -m udp --dport 69 -j ACCEPT\n\
-A PIC_SERVICES -d 172.20.0.20/32 -p tcp -m tcp --dport 5232 -j ACCEPT\n\
-I FORWARD 1 -j DOCKER-USER\n\
-I DOCKER-USER 1 -j PIC_SERVICES\n\
-I DOCKER-USER 1 -j PIC_KILLSWITCH\n\
COMMIT\n";

    const MANGLE_TEXT: &str = "*mangle\n\
:PIC_CONNECTIVITY - [0:0]\n\
:PIC_EGRESS - [0:0]\n\
-A PIC_CONNECTIVITY -m addrtype --dst-type LOCAL -j RETURN\n\
-A PIC_CONNECTIVITY -d 172.20.0.0/24 -j RETURN\n\
-A PIC_CONNECTIVITY -d 10.8.0.0/24 -j RETURN\n\
-A PIC_CONNECTIVITY -s 10.8.0.2/32 -j MARK --set-xmark 0x100/0xffffffff\n\
-A PIC_CONNECTIVITY -s 10.8.0.3/32 -j MARK --set-xmark 0x101/0xffffffff\n\
-A PIC_EGRESS -m addrtype --dst-type LOCAL -j RETURN\n\
-A PIC_EGRESS -d 172.20.0.0/24 -j RETURN\n\
-A PIC_EGRESS -d 10.8.0.0/24 -j RETURN\n\
-A PIC_EGRESS -s 172.20.0.20/32 -j MARK --set-xmark 0x101/0xffffffff\n\
-A PIC_EGRESS -s 172.21.0.0/16 -j MARK --set-xmark 0x101/0xffffffff\n\
-I PREROUTING 1 -j PIC_EGRESS\n\
-I PREROUTING 1 -j PIC_CONNECTIVITY\n\
COMMIT\n";

    const NAT_TEXT: &str = "*nat\n\
:PIC_CONNECTIVITY - [0:0]\n\
-A PIC_CONNECTIVITY -m addrtype --dst-type LOCAL -j RETURN\n\
-A PIC_CONNECTIVITY -d 172.20.0.0/24 -j RETURN\n\
-A PIC_CONNECTIVITY -d 10.8.0.0/24 -j RETURN\n\
-A PIC_CONNECTIVITY -s 10.8.0.2/32 -p tcp -j REDIRECT --to-ports 12000\n\
-I PREROUTING 1 -j PIC_CONNECTIVITY\n\
COMMIT\n";

    #[test]
    fn golden_restore_text_on_a_fresh_host() {
        let p = golden_plan();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let ch = changes(&p, "");
        let texts: Vec<(&str, &str)> = ch.iter().map(|c| (c.table, c.text.as_str())).collect();
        assert_eq!(
            texts,
            [
                (FILTER, FILTER_TEXT),
                (MANGLE, MANGLE_TEXT),
                (NAT, NAT_TEXT)
            ]
        );
    }

    #[test]
    fn chains_with_nothing_to_mark_have_no_returns() {
        let p = plan_with(&State::default(), &around());
        assert!(p
            .tables
            .iter()
            .all(|t| t.chains.iter().all(|c| c.rules.is_empty())));
    }

    #[test]
    fn the_cell_network_is_never_marked_wholesale() {
        let mut a = around();
        a.helper_subnets.insert(
            "radicale".into(),
            vec![
                Ipv4Subnet::parse("172.16.0.0/12").unwrap(),
                Ipv4Subnet::parse("172.20.0.0/24").unwrap(),
            ],
        );
        let p = plan_with(&golden_state(), &a);
        let text: String = changes(&p, "").into_iter().map(|c| c.text).collect();
        assert!(!text.contains("172.16.0.0/12"), "{text}");
        assert!(!text.contains("-s 172.20.0.0/24"), "{text}");
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
    }

    #[test]
    fn helpers_stay_marked_but_blocked_when_the_cell_bridge_is_unknown() {
        let mut a = around();
        a.cell_bridge = Some("br-x -j ACCEPT".into());
        let p = plan_with(&golden_state(), &a);
        assert_eq!(
            p.tables[0].chains[0].rules,
            [
                "-o eth0 -m mark --mark 0x100 -j DROP",
                "-o eth0 -m mark --mark 0x101 -j DROP"
            ]
        );
        assert!(p.tables[1].chains[1]
            .rules
            .contains(&"-s 172.21.0.0/16 -j MARK --set-xmark 0x101/0xffffffff".to_string()));
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    }

    /// What `iptables-save` printed after the golden texts were restored
    /// into a namespace laid out the way docker lays out `FORWARD`
    /// (iptables 1.8.9, nf_tables), plus the host's own rules.
    fn saved_after_apply() -> String {
        "# Generated by iptables-save v1.8.9 (nf_tables) on Tue Dec  1 17:40:12 2026\n\
*mangle\n\
:PREROUTING ACCEPT [0:0]\n\
:INPUT ACCEPT [0:0]\n\
:PIC_CONNECTIVITY - [0:0]\n\
:PIC_EGRESS - [0:0]\n\
-A PREROUTING -j PIC_CONNECTIVITY\n\
-A PREROUTING -j PIC_EGRESS\n\
-A PIC_CONNECTIVITY -m addrtype --dst-type LOCAL -j RETURN\n\
-A PIC_CONNECTIVITY -d 172.20.0.0/24 -j RETURN\n\
-A PIC_CONNECTIVITY -d 10.8.0.0/24 -j RETURN\n\
-A PIC_CONNECTIVITY -s 10.8.0.2/32 -j MARK --set-xmark 0x100/0xffffffff\n\
-A PIC_CONNECTIVITY -s 10.8.0.3/32 -j MARK --set-xmark 0x101/0xffffffff\n\
-A PIC_EGRESS -m addrtype --dst-type LOCAL -j RETURN\n\
-A PIC_EGRESS -d 172.20.0.0/24 -j RETURN\n\
-A PIC_EGRESS -d 10.8.0.0/24 -j RETURN\n\
-A PIC_EGRESS -s 172.20.0.20/32 -j MARK --set-xmark 0x101/0xffffffff\n\
-A PIC_EGRESS -s 172.21.0.0/16 -j MARK --set-xmark 0x101/0xffffffff\n\
COMMIT\n\
# Completed on Tue Dec  1 17:40:12 2026\n\
*filter\n\
:INPUT ACCEPT [0:0]\n\
:FORWARD DROP [0:0]\n\
:OUTPUT ACCEPT [0:0]\n\
:DOCKER-ISOLATION-STAGE-1 - [0:0]\n\
:DOCKER-USER - [0:0]\n\
:PIC_KILLSWITCH - [0:0]\n\
:PIC_SERVICES - [0:0]\n\
-A FORWARD -j DOCKER-USER\n\
-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n\
-A FORWARD -o br-0123456789ab -j ACCEPT\n\
-A FORWARD -s 10.9.9.9/32 -j ACCEPT\n\
-A DOCKER-USER -j PIC_KILLSWITCH\n\
-A DOCKER-USER -j PIC_SERVICES\n\
-A PIC_KILLSWITCH -o eth0 -m mark --mark 0x100 -j DROP\n\
-A PIC_KILLSWITCH -o eth0 -m mark --mark 0x101 -j DROP\n\
-A PIC_KILLSWITCH -s 172.21.0.0/16 -o br-0123456789ab -m mark --mark 0x101 -j ACCEPT\n\
-A PIC_KILLSWITCH -d 172.21.0.0/16 -i br-0123456789ab -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
-A PIC_SERVICES -d 172.20.0.21/32 -p tcp -m tcp --dport 80 -j ACCEPT\n\
-A PIC_SERVICES -d 172.20.0.21/32 -p udp -m udp --dport 69 -j ACCEPT\n\
-A PIC_SERVICES -d 172.20.0.20/32 -p tcp -m tcp --dport 5232 -j ACCEPT\n\
COMMIT\n\
*nat\n\
:PREROUTING ACCEPT [0:0]\n\
:PIC_CONNECTIVITY - [0:0]\n\
-A PREROUTING -j PIC_CONNECTIVITY\n\
-A PIC_CONNECTIVITY -m addrtype --dst-type LOCAL -j RETURN\n\
-A PIC_CONNECTIVITY -d 172.20.0.0/24 -j RETURN\n\
-A PIC_CONNECTIVITY -d 10.8.0.0/24 -j RETURN\n\
-A PIC_CONNECTIVITY -s 10.8.0.2/32 -p tcp -j REDIRECT --to-ports 12000\n\
COMMIT\n"
            .to_string()
    }

    #[test]
    fn in_sync_host_needs_nothing() {
        let p = golden_plan();
        let save = saved_after_apply();
        assert_eq!(changes(&p, &save), []);
        assert_eq!(missing_jumps(&p, &save), []);
        assert_eq!(drift(&p, &save), Vec::<String>::new());
    }

    #[test]
    fn only_the_drifted_table_is_restored() {
        let p = golden_plan();
        let save = saved_after_apply().replace(
            "-A PIC_SERVICES -d 172.20.0.21/32 -p udp -m udp --dport 69 -j ACCEPT\n",
            "",
        );
        let ch = changes(&p, &save);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].table, FILTER);
        // Jumps are in place: the text only rebuilds the chains, and
        // never declares (flushes) docker's chain.
        assert!(!ch[0].text.contains("-I "));
        assert!(!ch[0].text.contains(":DOCKER-USER"));
        assert_eq!(
            drift(&p, &save),
            ["iptables filter PIC_SERVICES: missing rule -d 172.20.0.21/32 -p udp -m udp --dport 69 -j ACCEPT"]
        );
    }

    /// A filter table laid out the way docker lays it out (DOCKER-USER,
    /// then isolation, then one network's rules), with `forward` rules
    /// put first in FORWARD and `user` the rules of DOCKER-USER.
    fn docker_layout(forward: &[&str], user: &[&str]) -> String {
        let mut s = "*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n".to_string();
        for r in forward {
            s.push_str(&format!("-A FORWARD {r}\n"));
        }
        s.push_str(
            "-A FORWARD -j DOCKER-USER\n\
             -A FORWARD -j DOCKER-ISOLATION-STAGE-1\n\
             -A FORWARD -o br-cell -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             -A FORWARD -o br-cell -j DOCKER\n\
             -A FORWARD -i br-cell ! -o br-cell -j ACCEPT\n\
             -A FORWARD -i br-cell -o br-cell -j ACCEPT\n",
        );
        for r in user {
            s.push_str(&format!("-A DOCKER-USER {r}\n"));
        }
        s.push_str("COMMIT\n");
        s
    }

    fn filter_jumps(save: &str) -> Vec<String> {
        let p = plan(&State::default(), "eth0");
        missing_jumps(&p, save)
            .into_iter()
            .filter(|j| j.table == FILTER)
            .map(|j| j.line())
            .collect()
    }

    const BOTH_ON_TOP: [&str; 2] = [
        "-I DOCKER-USER 1 -j PIC_SERVICES",
        "-I DOCKER-USER 1 -j PIC_KILLSWITCH",
    ];

    #[test]
    fn jumps_go_on_top_of_docker_user() {
        assert_eq!(filter_jumps(&docker_layout(&[], &[])), BOTH_ON_TOP);
        assert_eq!(
            filter_jumps(&docker_layout(
                &[],
                &["-j PIC_KILLSWITCH", "-j PIC_SERVICES", "-j RETURN"]
            )),
            Vec::<String>::new()
        );
        // Docker's own RETURN above them, or a host rule: both go back on top.
        assert_eq!(
            filter_jumps(&docker_layout(
                &[],
                &["-j RETURN", "-j PIC_KILLSWITCH", "-j PIC_SERVICES"]
            )),
            [
                "-D DOCKER-USER -j PIC_KILLSWITCH",
                "-D DOCKER-USER -j PIC_SERVICES",
                BOTH_ON_TOP[0],
                BOTH_ON_TOP[1]
            ]
        );
        // Wrong order or a duplicate: every copy goes, one of each comes back.
        assert_eq!(
            filter_jumps(&docker_layout(
                &[],
                &["-j PIC_SERVICES", "-j PIC_KILLSWITCH"]
            )),
            [
                "-D DOCKER-USER -j PIC_KILLSWITCH",
                "-D DOCKER-USER -j PIC_SERVICES",
                BOTH_ON_TOP[0],
                BOTH_ON_TOP[1]
            ]
        );
        assert_eq!(
            filter_jumps(&docker_layout(
                &[],
                &["-j PIC_KILLSWITCH", "-j PIC_SERVICES", "-j PIC_SERVICES"]
            )),
            [
                "-D DOCKER-USER -j PIC_KILLSWITCH",
                "-D DOCKER-USER -j PIC_SERVICES",
                "-D DOCKER-USER -j PIC_SERVICES",
                BOTH_ON_TOP[0],
                BOTH_ON_TOP[1]
            ]
        );
    }

    #[test]
    fn version_one_jumps_in_forward_move_to_docker_user() {
        // Docker demoted them below a network's ACCEPTs (issue seen on
        // engine 20.10), or they are still first: either way they leave
        // FORWARD, in the same transaction that puts them in DOCKER-USER.
        let demoted = "*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n\
             -A FORWARD -j DOCKER-USER\n\
             -A FORWARD -j DOCKER-ISOLATION-STAGE-1\n\
             -A FORWARD -i br-new ! -o br-new -j ACCEPT\n\
             -A FORWARD -j PIC_KILLSWITCH\n\
             -A FORWARD -j PIC_SERVICES\n\
             -A DOCKER-USER -j RETURN\n\
             COMMIT\n";
        let expected = [
            "-D FORWARD -j PIC_KILLSWITCH",
            "-D FORWARD -j PIC_SERVICES",
            BOTH_ON_TOP[0],
            BOTH_ON_TOP[1],
        ];
        assert_eq!(filter_jumps(demoted), expected);
        assert_eq!(
            filter_jumps(&docker_layout(
                &["-j PIC_KILLSWITCH", "-j PIC_SERVICES"],
                &[]
            )),
            expected
        );
        let p = plan(&State::default(), "eth0");
        let d = drift(&p, demoted);
        assert!(
            d.contains(&"iptables filter FORWARD: would delete jump to PIC_KILLSWITCH".to_string()),
            "{d:?}"
        );
        assert!(
            d.contains(
                &"iptables filter DOCKER-USER: would insert jump to PIC_KILLSWITCH".to_string()
            ),
            "{d:?}"
        );
    }

    #[test]
    fn forward_must_reach_docker_user_before_anything_accepts() {
        // No docker at all: the chain is made and jumped from FORWARD.
        let p = plan(&State::default(), "eth0");
        let bare = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -s 10.9.9.9/32 -j ACCEPT\nCOMMIT\n";
        assert_eq!(
            filter_jumps(bare),
            [
                "-I FORWARD 1 -j DOCKER-USER",
                BOTH_ON_TOP[0],
                BOTH_ON_TOP[1]
            ]
        );
        let text = &changes(&p, bare)[0].text;
        assert!(
            text.starts_with("*filter\n:DOCKER-USER - [0:0]\n"),
            "{text}"
        );
        assert!(drift(&p, bare).contains(&"iptables filter DOCKER-USER: chain missing".to_string()));
        // A host's DROP or docker's isolation may come first; an ACCEPT
        // or docker's DOCKER chain may not.
        let user = ["-j PIC_KILLSWITCH", "-j PIC_SERVICES"];
        assert_eq!(
            filter_jumps(&docker_layout(&["-s 10.66.0.0/16 -j DROP"], &user)),
            Vec::<String>::new()
        );
        assert_eq!(
            filter_jumps(&docker_layout(
                &["-i eth1 -j ACCEPT", "-j DOCKER-USER"],
                &user
            )),
            [
                "-D FORWARD -j DOCKER-USER",
                "-D FORWARD -j DOCKER-USER",
                "-I FORWARD 1 -j DOCKER-USER"
            ]
        );
        assert_eq!(
            filter_jumps(&docker_layout(&["-o br-x -j DOCKER"], &user)),
            ["-D FORWARD -j DOCKER-USER", "-I FORWARD 1 -j DOCKER-USER"]
        );
    }

    #[test]
    fn docker_recreating_a_network_changes_nothing() {
        // Docker moves its two jumps back on top and puts the new rules
        // under them: DOCKER-USER still comes first, nothing to do.
        let user = ["-j PIC_KILLSWITCH", "-j PIC_SERVICES", "-j RETURN"];
        let save = docker_layout(&[], &user).replace(
            "-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n",
            "-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n\
             -A FORWARD -o br-new -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             -A FORWARD -o br-new -j DOCKER\n\
             -A FORWARD -i br-new ! -o br-new -j ACCEPT\n\
             -A FORWARD -i br-new -o br-new -j ACCEPT\n",
        );
        assert_eq!(filter_jumps(&save), Vec::<String>::new());
    }

    #[test]
    fn prerouting_jumps_keep_their_order_among_other_rules() {
        let p = plan(&State::default(), "eth0");
        let mangle = |jumps: &[&str]| {
            let mut s =
                "*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -s 10.9.9.9/32 -j ACCEPT\n"
                    .to_string();
            for j in jumps {
                s.push_str(&format!("-A PREROUTING -j {j}\n"));
            }
            s.push_str("COMMIT\n");
            missing_jumps(&p, &s)
                .into_iter()
                .filter(|j| j.table == MANGLE)
                .map(|j| j.line())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            mangle(&["PIC_CONNECTIVITY", "PIC_EGRESS"]),
            Vec::<String>::new()
        );
        assert_eq!(
            mangle(&["PIC_EGRESS"]),
            ["-I PREROUTING 1 -j PIC_CONNECTIVITY"]
        );
        assert_eq!(
            mangle(&["PIC_EGRESS", "PIC_CONNECTIVITY"]),
            [
                "-D PREROUTING -j PIC_CONNECTIVITY",
                "-D PREROUTING -j PIC_EGRESS",
                "-I PREROUTING 1 -j PIC_EGRESS",
                "-I PREROUTING 1 -j PIC_CONNECTIVITY"
            ]
        );
    }

    #[test]
    fn jumps_with_extra_matches_are_not_ours() {
        // A host rule that jumps to our chain with matches of its own is
        // left alone (and, as it may accept, DOCKER-USER goes above it).
        let save = "*filter\n-A FORWARD -i eth1 -j PIC_SERVICES\nCOMMIT\n";
        assert_eq!(
            filter_jumps(save),
            [
                "-I FORWARD 1 -j DOCKER-USER",
                BOTH_ON_TOP[0],
                BOTH_ON_TOP[1]
            ]
        );
    }

    #[test]
    fn dangling_references_are_skipped_with_warnings() {
        let mut st = golden_state();
        st.peer_routes.insert("10.8.0.9".into(), "gone".into());
        st.peer_routes
            .insert("not-an-ip".into(), "home-proxy".into());
        st.egress.insert("nosuch".into(), "home-proxy".into());
        st.egress.insert("files".into(), "gone".into());
        let p = plan(&st, "eth0");
        assert_eq!(p.warnings.len(), 4, "{:?}", p.warnings);
        assert_eq!(p, {
            let mut q = plan(&golden_state(), "eth0");
            q.warnings = p.warnings.clone();
            q
        });
    }

    #[test]
    fn services_without_ip_have_no_rules() {
        let mut st = golden_state();
        st.services.get_mut("files").unwrap().ip = None;
        let p = plan(&st, "eth0");
        assert_eq!(
            p.tables[0].chains[1].rules,
            ["-d 172.20.0.20/32 -p tcp -m tcp --dport 5232 -j ACCEPT"]
        );
    }

    #[test]
    fn a_bad_interface_never_reaches_the_text() {
        let p = plan(&golden_state(), "eth0 -j ACCEPT");
        assert!(p.tables[0].chains[0].rules.is_empty());
        assert_eq!(p.warnings.len(), 1);
    }

    #[test]
    fn live_chains_parses_every_table() {
        let live = live_chains(&saved_after_apply());
        assert_eq!(
            live[&("filter".to_string(), "FORWARD".to_string())],
            [
                "-j DOCKER-USER",
                "-j DOCKER-ISOLATION-STAGE-1",
                "-o br-0123456789ab -j ACCEPT",
                "-s 10.9.9.9/32 -j ACCEPT"
            ]
        );
        assert_eq!(
            live[&("filter".to_string(), "DOCKER-USER".to_string())],
            ["-j PIC_KILLSWITCH", "-j PIC_SERVICES"]
        );
        assert_eq!(live[&("filter".to_string(), "INPUT".to_string())].len(), 0);
        assert_eq!(
            live[&("nat".to_string(), "PIC_CONNECTIVITY".to_string())].len(),
            4
        );
    }

    #[test]
    fn apply_reads_once_and_restores_only_what_differs() {
        let config = Config::from_lookup(|k| match k {
            "PIC_IPTABLES_SAVE" => Some("/sbin/iptables-save".into()),
            "PIC_IPTABLES_RESTORE" => Some("/sbin/iptables-restore".into()),
            _ => None,
        })
        .unwrap();
        let p = golden_plan();
        let save = saved_after_apply().replace(
            "-A PREROUTING -j PIC_CONNECTIVITY\n-A PIC_CONNECTIVITY -m addrtype",
            "-A PIC_CONNECTIVITY -m addrtype",
        );
        let host = FakeHost::new()
            .answer("/sbin/iptables-save", 0, &save)
            .answer("/sbin/iptables-restore -w 5 --noflush", 0, "");
        let r = apply(&host, &config, &p).unwrap();
        assert_eq!(r.restored, [NAT]);
        assert_eq!(r.unchanged, [FILTER, MANGLE]);
        assert_eq!(
            host.calls(),
            [
                "/sbin/iptables-save",
                "/sbin/iptables-restore -w 5 --noflush"
            ]
        );
    }
}
