//! pic-store's own iptables chains (spec §9). [`plan`] turns the state into
//! the rules of five chains, written exactly as `iptables-save` prints them
//! so the live chains compare as text; [`apply`] reads `iptables-save`
//! once and runs one `iptables-restore --noflush` per table that differs.
//! In `--noflush` mode `:CHAIN - [0:0]` creates or flushes only that chain,
//! so the host's other rules (docker's among them) are never touched.
//! Tests: golden text below; `tests/net_apply.rs` against real iptables.

use crate::config::Config;
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
    pub builtin: &'static str,
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

/// The five chains rebuilt from `state`. `wan_iface` is the interface the
/// kill-switch guards.
pub fn plan(state: &State, wan_iface: &str) -> FirewallPlan {
    let mut warnings = Vec::new();

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
    for (service, conn_id) in &state.egress {
        let Some(conn) = state.connections.get(conn_id) else {
            warnings.push(format!(
                "firewall: egress of {service} skipped: connection {conn_id} does not exist"
            ));
            continue;
        };
        match state.services.get(service).map(|s| s.ip) {
            Some(Some(ip)) => egress.push(set_mark(ip, conn.fwmark)),
            Some(None) => warnings.push(format!(
                "firewall: egress of {service} skipped: the service has no IP"
            )),
            None => warnings.push(format!(
                "firewall: egress of {service} skipped: the service is not installed"
            )),
        }
    }

    let chain = |name, rules| ChainPlan { name, rules };
    FirewallPlan {
        tables: vec![
            TablePlan {
                table: FILTER,
                builtin: "FORWARD",
                chains: vec![chain(KILLSWITCH, killswitch), chain(SERVICES, services)],
            },
            TablePlan {
                table: MANGLE,
                builtin: "PREROUTING",
                chains: vec![chain(CONNECTIVITY, peer_marks), chain(EGRESS, egress)],
            },
            TablePlan {
                table: NAT,
                builtin: "PREROUTING",
                chains: vec![chain(CONNECTIVITY, redirects)],
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
    pub fn restore_text(&self, jumps: &[JumpChange]) -> String {
        let mut t = format!("*{}\n", self.table);
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
            text: t.restore_text(&jumps),
        })
        .collect()
}

/// One line per difference between the plan and the live chains, for
/// `reapply --dry-run`.
pub fn drift(plan: &FirewallPlan, iptables_save_output: &str) -> Vec<String> {
    let live = live_chains(iptables_save_output);
    let mut out = Vec::new();
    for t in &plan.tables {
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

    const FILTER_TEXT: &str = "*filter\n\
:PIC_KILLSWITCH - [0:0]\n\
:PIC_SERVICES - [0:0]\n\
-A PIC_KILLSWITCH -o eth0 -m mark --mark 0x100 -j DROP\n\
-A PIC_KILLSWITCH -o eth0 -m mark --mark 0x101 -j DROP\n\
-A PIC_SERVICES -d 172.20.0.21/32 -p tcp -m tcp --dport 80 -j ACCEPT\n\
-A PIC_SERVICES -d 172.20.0.21/32 -p udp -m udp --dport 69 -j ACCEPT\n\
-A PIC_SERVICES -d 172.20.0.20/32 -p tcp -m tcp --dport 5232 -j ACCEPT\n\
-I FORWARD 1 -j PIC_SERVICES\n\
-I FORWARD 1 -j PIC_KILLSWITCH\n\
COMMIT\n";

    const MANGLE_TEXT: &str = "*mangle\n\
:PIC_CONNECTIVITY - [0:0]\n\
:PIC_EGRESS - [0:0]\n\
-A PIC_CONNECTIVITY -s 10.8.0.2/32 -j MARK --set-xmark 0x100/0xffffffff\n\
-A PIC_CONNECTIVITY -s 10.8.0.3/32 -j MARK --set-xmark 0x101/0xffffffff\n\
-A PIC_EGRESS -s 172.20.0.20/32 -j MARK --set-xmark 0x101/0xffffffff\n\
-I PREROUTING 1 -j PIC_EGRESS\n\
-I PREROUTING 1 -j PIC_CONNECTIVITY\n\
COMMIT\n";

    const NAT_TEXT: &str = "*nat\n\
:PIC_CONNECTIVITY - [0:0]\n\
-A PIC_CONNECTIVITY -s 10.8.0.2/32 -p tcp -j REDIRECT --to-ports 12000\n\
-I PREROUTING 1 -j PIC_CONNECTIVITY\n\
COMMIT\n";

    #[test]
    fn golden_restore_text_on_a_fresh_host() {
        let p = plan(&golden_state(), "eth0");
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

    /// What `iptables-save` printed after the golden texts were restored
    /// into an empty namespace (iptables 1.8.9, nf_tables), plus the
    /// host's own rules.
    fn saved_after_apply() -> String {
        "# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 29 21:31:12 2026\n\
*mangle\n\
:PREROUTING ACCEPT [0:0]\n\
:INPUT ACCEPT [0:0]\n\
:PIC_CONNECTIVITY - [0:0]\n\
:PIC_EGRESS - [0:0]\n\
-A PREROUTING -j PIC_CONNECTIVITY\n\
-A PREROUTING -j PIC_EGRESS\n\
-A PIC_CONNECTIVITY -s 10.8.0.2/32 -j MARK --set-xmark 0x100/0xffffffff\n\
-A PIC_CONNECTIVITY -s 10.8.0.3/32 -j MARK --set-xmark 0x101/0xffffffff\n\
-A PIC_EGRESS -s 172.20.0.20/32 -j MARK --set-xmark 0x101/0xffffffff\n\
COMMIT\n\
# Completed on Sun Nov 29 21:31:12 2026\n\
*filter\n\
:INPUT ACCEPT [0:0]\n\
:FORWARD DROP [0:0]\n\
:OTHER - [0:0]\n\
:PIC_KILLSWITCH - [0:0]\n\
:PIC_SERVICES - [0:0]\n\
-A FORWARD -j PIC_KILLSWITCH\n\
-A FORWARD -j PIC_SERVICES\n\
-A FORWARD -s 10.9.9.9/32 -j ACCEPT\n\
-A OTHER -j RETURN\n\
-A PIC_KILLSWITCH -o eth0 -m mark --mark 0x100 -j DROP\n\
-A PIC_KILLSWITCH -o eth0 -m mark --mark 0x101 -j DROP\n\
-A PIC_SERVICES -d 172.20.0.21/32 -p tcp -m tcp --dport 80 -j ACCEPT\n\
-A PIC_SERVICES -d 172.20.0.21/32 -p udp -m udp --dport 69 -j ACCEPT\n\
-A PIC_SERVICES -d 172.20.0.20/32 -p tcp -m tcp --dport 5232 -j ACCEPT\n\
COMMIT\n\
*nat\n\
:PREROUTING ACCEPT [0:0]\n\
:PIC_CONNECTIVITY - [0:0]\n\
-A PREROUTING -j PIC_CONNECTIVITY\n\
-A PIC_CONNECTIVITY -s 10.8.0.2/32 -p tcp -j REDIRECT --to-ports 12000\n\
COMMIT\n"
            .to_string()
    }

    #[test]
    fn in_sync_host_needs_nothing() {
        let p = plan(&golden_state(), "eth0");
        let save = saved_after_apply();
        assert_eq!(changes(&p, &save), []);
        assert_eq!(missing_jumps(&p, &save), []);
        assert_eq!(drift(&p, &save), Vec::<String>::new());
    }

    #[test]
    fn only_the_drifted_table_is_restored() {
        let p = plan(&golden_state(), "eth0");
        let save = saved_after_apply().replace(
            "-A PIC_SERVICES -d 172.20.0.21/32 -p udp -m udp --dport 69 -j ACCEPT\n",
            "",
        );
        let ch = changes(&p, &save);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].table, FILTER);
        // Jumps are in place: the text only rebuilds the chains.
        assert!(!ch[0].text.contains("-I FORWARD"));
        assert_eq!(
            drift(&p, &save),
            ["iptables filter PIC_SERVICES: missing rule -d 172.20.0.21/32 -p udp -m udp --dport 69 -j ACCEPT"]
        );
    }

    fn forward(jumps: &[&str]) -> String {
        let mut s =
            "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -s 10.9.9.9/32 -j ACCEPT\n".to_string();
        for j in jumps {
            s.push_str(&format!("-A FORWARD -j {j}\n"));
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

    #[test]
    fn jumps_with_none_existing_are_both_inserted_kill_switch_on_top() {
        assert_eq!(
            filter_jumps(&forward(&[])),
            [
                "-I FORWARD 1 -j PIC_SERVICES",
                "-I FORWARD 1 -j PIC_KILLSWITCH"
            ]
        );
    }

    #[test]
    fn jumps_with_one_existing() {
        // The kill-switch can go on top of the accept jump...
        assert_eq!(
            filter_jumps(&forward(&["PIC_SERVICES"])),
            ["-I FORWARD 1 -j PIC_KILLSWITCH"]
        );
        // ...but the accept jump cannot go on top of the kill-switch.
        assert_eq!(
            filter_jumps(&forward(&["PIC_KILLSWITCH"])),
            [
                "-D FORWARD -j PIC_KILLSWITCH",
                "-I FORWARD 1 -j PIC_SERVICES",
                "-I FORWARD 1 -j PIC_KILLSWITCH"
            ]
        );
    }

    #[test]
    fn jumps_with_two_existing() {
        assert_eq!(
            filter_jumps(&forward(&["PIC_KILLSWITCH", "PIC_SERVICES"])),
            Vec::<String>::new()
        );
        // Wrong order: both go and come back in order.
        assert_eq!(
            filter_jumps(&forward(&["PIC_SERVICES", "PIC_KILLSWITCH"])),
            [
                "-D FORWARD -j PIC_KILLSWITCH",
                "-D FORWARD -j PIC_SERVICES",
                "-I FORWARD 1 -j PIC_SERVICES",
                "-I FORWARD 1 -j PIC_KILLSWITCH"
            ]
        );
        // A duplicate: the first copy is deleted.
        assert_eq!(
            filter_jumps(&forward(&[
                "PIC_SERVICES",
                "PIC_KILLSWITCH",
                "PIC_SERVICES"
            ])),
            ["-D FORWARD -j PIC_SERVICES"]
        );
        assert_eq!(
            filter_jumps(&forward(&["PIC_SERVICES", "PIC_SERVICES"])),
            [
                "-D FORWARD -j PIC_SERVICES",
                "-I FORWARD 1 -j PIC_KILLSWITCH"
            ]
        );
    }

    #[test]
    fn jumps_with_extra_matches_are_not_ours() {
        let save = "*filter\n-A FORWARD -i eth1 -j PIC_SERVICES\nCOMMIT\n";
        assert_eq!(filter_jumps(save).len(), 2);
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
                "-j PIC_KILLSWITCH",
                "-j PIC_SERVICES",
                "-s 10.9.9.9/32 -j ACCEPT"
            ]
        );
        assert_eq!(live[&("filter".to_string(), "INPUT".to_string())].len(), 0);
        assert_eq!(
            live[&("nat".to_string(), "PIC_CONNECTIVITY".to_string())].len(),
            1
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
        let p = plan(&golden_state(), "eth0");
        let save = saved_after_apply().replace(
            "-A PREROUTING -j PIC_CONNECTIVITY\n-A PIC_CONNECTIVITY -s 10.8.0.2/32 -p tcp",
            "-A PIC_CONNECTIVITY -s 10.8.0.2/32 -p tcp",
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
