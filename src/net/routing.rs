//! Policy routing of connection instances (spec §9): per connection an
//! `ip rule` in the priority band 10000–10999 sending its fwmark to its
//! table, and in that table a default route via the instance plus a
//! blackhole behind it (the kill-switch when the instance is gone).
//! [`plan`] and [`batch`] are pure; [`apply`] spawns `ip` at most twice:
//! one read (rules and routes through one `ip -batch`) and one
//! `ip -force -batch -` when something differs.
//! Tests: golden text below; `tests/net_apply.rs` against real iproute2.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::host::{Cmd, Host};
use crate::state::State;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::time::Duration;

/// The `ip rule` priorities pic-store owns: anything here the state does
/// not hold is deleted.
pub const BAND: RangeInclusive<u32> = 10000..=10999;
/// Connection fwmarks and routing tables (spec §9, allocation).
pub const MARKS: RangeInclusive<u32> = 0x100..=0x1ff;
pub const TABLES: RangeInclusive<u32> = 100..=199;
/// The blackhole's metric: the largest, so any real default wins.
pub const BLACKHOLE_METRIC: u32 = u32::MAX;

/// What the read asks `ip -batch` for: IPv4 rules, then IPv4 routes of
/// every table, numbers instead of names (`-N`).
const READ_BATCH: &str = "rule show\nroute show table all\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedRule {
    pub priority: u32,
    pub fwmark: u32,
    pub table: u32,
}

impl PlannedRule {
    /// The rule as `ip rule show` prints it after the priority.
    pub fn selector(&self) -> String {
        format!("from all fwmark {:#x} lookup {}", self.fwmark, self.table)
    }
}

/// A table pic-store fills: default via the instance, then the blackhole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedTable {
    pub table: u32,
    pub via: Ipv4Addr,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingPlan {
    pub rules: Vec<PlannedRule>,
    pub tables: Vec<PlannedTable>,
    pub warnings: Vec<String>,
}

/// One line of `ip rule show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRule {
    pub priority: u32,
    /// The mark, whatever its mask.
    pub fwmark: Option<u32>,
    /// The table by number (`local`, `main`, `default` are known by name).
    pub table: Option<u32>,
    /// Everything after `PRIORITY:`, as shown.
    pub selector: String,
}

/// One route of a numbered table, from `ip route show table all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRoute {
    pub table: u32,
    pub text: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The `ip -batch` input that was run; empty when all was in place.
    pub batch: String,
    pub warnings: Vec<String>,
}

/// The rule priority of a connection's mark: unique because marks are.
pub fn priority_for(fwmark: u32) -> Option<u32> {
    MARKS
        .contains(&fwmark)
        .then(|| BAND.start() + (fwmark - MARKS.start()))
}

pub fn plan(state: &State) -> RoutingPlan {
    let mut p = RoutingPlan::default();
    let mut marks = BTreeSet::new();
    let mut tables = BTreeSet::new();
    for (id, conn) in &state.connections {
        let Some(priority) = priority_for(conn.fwmark) else {
            p.warnings.push(format!(
                "routing: connection {id} skipped: fwmark {:#x} is outside 0x100-0x1ff",
                conn.fwmark
            ));
            continue;
        };
        if !TABLES.contains(&conn.table) {
            p.warnings.push(format!(
                "routing: connection {id} skipped: table {} is outside 100-199",
                conn.table
            ));
            continue;
        }
        if !marks.insert(conn.fwmark) || !tables.insert(conn.table) {
            p.warnings.push(format!(
                "routing: connection {id} skipped: fwmark {:#x} or table {} is used by another connection",
                conn.fwmark, conn.table
            ));
            continue;
        }
        p.rules.push(PlannedRule {
            priority,
            fwmark: conn.fwmark,
            table: conn.table,
        });
        p.tables.push(PlannedTable {
            table: conn.table,
            via: conn.ip,
        });
    }
    p
}

/// Parses `ip rule show` lines (`10000:\tfrom all fwmark 0x100 lookup 100`);
/// other lines are skipped, so the combined read output can be given.
pub fn parse_rules(ip_rule_show: &str) -> Vec<LiveRule> {
    ip_rule_show.lines().filter_map(parse_rule).collect()
}

fn parse_rule(line: &str) -> Option<LiveRule> {
    let (prio, rest) = line.split_once(':')?;
    if prio.is_empty() || !prio.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let priority = prio.parse().ok()?;
    let selector = rest.trim().to_string();
    let words: Vec<&str> = selector.split_whitespace().collect();
    let after = |key: &str| {
        words
            .windows(2)
            .find(|w| w[0] == key)
            .map(|w| w[1].to_string())
    };
    let fwmark = after("fwmark").and_then(|m| {
        let value = m.split('/').next().unwrap_or("");
        u32::from_str_radix(value.trim_start_matches("0x"), 16).ok()
    });
    let table = after("lookup")
        .or_else(|| after("table"))
        .and_then(|t| match t.as_str() {
            "local" => Some(255),
            "main" => Some(254),
            "default" => Some(253),
            n => n.parse().ok(),
        });
    Some(LiveRule {
        priority,
        fwmark,
        table,
        selector,
    })
}

/// Parses `ip route show table all`; keeps routes of numbered tables only
/// (the main table's routes carry no `table` word).
pub fn parse_routes(ip_route_show: &str) -> Vec<LiveRoute> {
    ip_route_show
        .lines()
        .filter(|l| parse_rule(l).is_none())
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let table = words
                .windows(2)
                .find(|w| w[0] == "table")
                .and_then(|w| w[1].parse().ok())?;
            Some(LiveRoute {
                table,
                text: words.join(" "),
            })
        })
        .collect()
}

fn metric(words: &[&str]) -> u32 {
    words
        .windows(2)
        .find(|w| w[0] == "metric")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(0)
}

fn is_default_via(route: &LiveRoute, via: Ipv4Addr) -> bool {
    let words: Vec<&str> = route.text.split_whitespace().collect();
    let via = via.to_string();
    words.len() >= 3
        && words[0] == "default"
        && words[1] == "via"
        && words[2] == via
        && metric(&words) == 0
}

/// Our blackhole; `-N` prints the route type as its number (6).
fn is_our_blackhole(route: &LiveRoute) -> bool {
    let words: Vec<&str> = route.text.split_whitespace().collect();
    words.len() >= 2
        && (words[0] == "blackhole" || words[0] == "6")
        && words[1] == "default"
        && metric(&words) == BLACKHOLE_METRIC
}

/// The `ip -batch` input that makes the host match `plan`: band rules the
/// state does not hold are deleted (as shown) and their tables flushed
/// when they are in 100–199 and no longer held; missing routes are put in
/// (`route replace`) before the rules pointing at them are added, so a
/// rule never leads to an empty table. Empty when all is in place.
pub fn batch(plan: &RoutingPlan, live_rules: &[LiveRule], live_routes: &[LiveRoute]) -> String {
    let held_table = |t: u32| plan.tables.iter().any(|p| p.table == t);
    let is_planned = |r: &LiveRule| {
        plan.rules
            .iter()
            .any(|p| p.priority == r.priority && p.selector() == r.selector)
    };
    let mut lines = Vec::new();
    let mut stale_tables = BTreeSet::new();

    for r in live_rules.iter().filter(|r| BAND.contains(&r.priority)) {
        if is_planned(r) {
            continue;
        }
        lines.push(format!(
            "rule del priority {} {}",
            r.priority,
            deletable(&r.selector)
        ));
        if let Some(t) = r.table.filter(|t| TABLES.contains(t) && !held_table(*t)) {
            stale_tables.insert(t);
        }
    }
    for route in live_routes {
        if TABLES.contains(&route.table) && !held_table(route.table) && is_our_blackhole(route) {
            stale_tables.insert(route.table);
        }
    }
    for t in stale_tables {
        if live_routes.iter().any(|r| r.table == t) {
            lines.push(format!("route flush table {t}"));
        }
    }
    for pt in &plan.tables {
        let in_table: Vec<&LiveRoute> =
            live_routes.iter().filter(|r| r.table == pt.table).collect();
        if !in_table.iter().any(|r| is_default_via(r, pt.via)) {
            lines.push(format!(
                "route replace default via {} table {}",
                pt.via, pt.table
            ));
        }
        if !in_table.iter().any(|r| is_our_blackhole(r)) {
            lines.push(format!(
                "route replace blackhole default metric {BLACKHOLE_METRIC} table {}",
                pt.table
            ));
        }
    }
    for p in &plan.rules {
        let present = live_rules
            .iter()
            .any(|r| r.priority == p.priority && r.selector == p.selector());
        if !present {
            lines.push(format!(
                "rule add fwmark {:#x} lookup {} priority {}",
                p.fwmark, p.table, p.priority
            ));
        }
    }
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

/// A shown selector made fit for `ip rule del`: flags such as `[detached]`
/// are state, not part of the rule.
fn deletable(selector: &str) -> String {
    selector
        .split_whitespace()
        .filter(|w| !w.starts_with('['))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every fwmark and table any `ip rule` uses, at any priority, so a new
/// connection gets values the host does not use either.
pub fn used_marks_and_tables(ip_rule_show: &str) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let rules = parse_rules(ip_rule_show);
    (
        rules.iter().filter_map(|r| r.fwmark).collect(),
        rules.iter().filter_map(|r| r.table).collect(),
    )
}

/// One line per change the batch would make, for `reapply --dry-run`.
pub fn drift(
    plan: &RoutingPlan,
    live_rules: &[LiveRule],
    live_routes: &[LiveRoute],
) -> Vec<String> {
    batch(plan, live_rules, live_routes)
        .lines()
        .map(|l| format!("ip: would run `{l}`"))
        .collect()
}

/// The live rules and routes, read with one `ip` spawn.
pub fn read_live(host: &dyn Host, config: &Config) -> Result<(Vec<LiveRule>, Vec<LiveRoute>)> {
    let out = host.run(
        &Cmd::new(&config.ip)
            .args(["-4", "-N", "-batch", "-"])
            .stdin(READ_BATCH.as_bytes().to_vec())
            .timeout(Duration::from_secs(30)),
    )?;
    Ok((parse_rules(&out.stdout), parse_routes(&out.stdout)))
}

/// Makes the rules and routes match `plan`. `-force` lets every line run
/// even when one fails (a gateway not reachable yet); the failing lines
/// are named in the error.
pub fn apply(host: &dyn Host, config: &Config, plan: &RoutingPlan) -> Result<ApplyReport> {
    let (rules, routes) = read_live(host, config)?;
    let text = batch(plan, &rules, &routes);
    let report = ApplyReport {
        batch: text.clone(),
        warnings: plan.warnings.clone(),
    };
    if text.is_empty() {
        return Ok(report);
    }
    let out = host.run(
        &Cmd::new(&config.ip)
            .args(["-force", "-batch", "-"])
            .stdin(text.clone().into_bytes())
            .timeout(Duration::from_secs(30))
            .allow_failure(),
    )?;
    if out.success() {
        return Ok(report);
    }
    Err(Error::failed(
        "policy routing",
        describe_failures(&text, &out.stderr),
    ))
}

/// Pairs `ip -batch`'s "Command failed -:N" lines with the batch line and
/// the error printed before it.
fn describe_failures(text: &str, stderr: &str) -> String {
    let batch: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut last_error = "";
    for line in stderr.lines() {
        if let Some(n) = line.trim().strip_prefix("Command failed -:") {
            let cmd = n
                .trim()
                .parse::<usize>()
                .ok()
                .and_then(|n| batch.get(n.wrapping_sub(1)))
                .copied()
                .unwrap_or("?");
            out.push(format!("`{cmd}`: {}", last_error.trim()));
            last_error = "";
        } else if !line.trim().is_empty() {
            last_error = line;
        }
    }
    if out.is_empty() {
        format!("ip -batch failed: {}", crate::error::stderr_tail(stderr))
    } else {
        out.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;
    use crate::net::tests::golden_state;

    /// `ip -4 -N -batch -` output on a host holding the golden state,
    /// plus someone else's rule at 9000 and a stale one at 10500.
    const LIVE: &str = "0:\tfrom all lookup 255\n\
9000:\tfrom 10.1.1.1 lookup 254\n\
10000:\tfrom all fwmark 0x100 lookup 100\n\
10001:\tfrom all fwmark 0x101 lookup 101\n\
10500:\tfrom all fwmark 0x1f4 lookup 150\n\
32766:\tfrom all lookup 254\n\
32767:\tfrom all lookup 253\n\
default via 172.20.0.30 dev b0 table 100 \n\
6 default table 100 metric 4294967295 \n\
default via 172.20.0.31 dev b0 table 101 \n\
6 default table 101 metric 4294967295 \n\
6 default table 150 metric 4294967295 \n\
172.20.0.0/24 dev b0 proto 2 scope 253 src 172.20.0.1 \n\
2 172.20.0.1 dev b0 table 255 proto 2 scope 254 src 172.20.0.1 \n";

    #[test]
    fn golden_batch_on_a_fresh_host() {
        let p = plan(&golden_state());
        assert!(p.warnings.is_empty());
        assert_eq!(
            batch(&p, &[], &[]),
            "route replace default via 172.20.0.30 table 100\n\
             route replace blackhole default metric 4294967295 table 100\n\
             route replace default via 172.20.0.31 table 101\n\
             route replace blackhole default metric 4294967295 table 101\n\
             rule add fwmark 0x100 lookup 100 priority 10000\n\
             rule add fwmark 0x101 lookup 101 priority 10001\n"
        );
    }

    #[test]
    fn stale_band_rule_goes_with_its_table_others_stay() {
        let p = plan(&golden_state());
        let rules = parse_rules(LIVE);
        let routes = parse_routes(LIVE);
        assert_eq!(
            batch(&p, &rules, &routes),
            "rule del priority 10500 from all fwmark 0x1f4 lookup 150\n\
             route flush table 150\n"
        );
        let in_sync = LIVE
            .replace("10500:\tfrom all fwmark 0x1f4 lookup 150\n", "")
            .replace("6 default table 150 metric 4294967295 \n", "");
        assert_eq!(
            batch(&p, &parse_rules(&in_sync), &parse_routes(&in_sync)),
            ""
        );
    }

    #[test]
    fn a_moved_instance_gets_its_default_replaced() {
        let mut st = golden_state();
        st.connections.get_mut("home-proxy").unwrap().ip = "172.20.0.40".parse().unwrap();
        let live = LIVE.replace("10500:\tfrom all fwmark 0x1f4 lookup 150\n", "");
        let b = batch(&plan(&st), &parse_rules(&live), &parse_routes(&live));
        assert_eq!(
            b,
            "route flush table 150\nroute replace default via 172.20.0.40 table 100\n"
        );
    }

    #[test]
    fn parses_real_rule_lines() {
        let rules = parse_rules(
            "0:\tfrom all lookup local\n\
             10000:\tfrom all fwmark 0x100 lookup 100\n\
             10500:\tfrom all fwmark 0x101/0xff lookup 150\n\
             9000:\tfrom 10.1.1.1 lookup main\n\
             32767:\tfrom all lookup default\n",
        );
        assert_eq!(
            rules[1],
            LiveRule {
                priority: 10000,
                fwmark: Some(0x100),
                table: Some(100),
                selector: "from all fwmark 0x100 lookup 100".into()
            }
        );
        assert_eq!(rules[0].table, Some(255));
        assert_eq!(rules[2].fwmark, Some(0x101));
        assert_eq!(rules[2].table, Some(150));
        assert_eq!(rules[3].fwmark, None);
        assert_eq!(rules[3].table, Some(254));
        assert_eq!(rules.len(), 5);
    }

    #[test]
    fn route_lines_are_not_rules_and_vice_versa() {
        assert_eq!(parse_rules(LIVE).len(), 7);
        let routes = parse_routes(LIVE);
        assert_eq!(routes.len(), 6, "{routes:?}");
        assert_eq!(routes[0].text, "default via 172.20.0.30 dev b0 table 100");
    }

    #[test]
    fn detached_flag_is_not_part_of_the_delete() {
        let rules = parse_rules("10600:\tfrom all iif veth9 [detached] lookup 120\n");
        let b = batch(&RoutingPlan::default(), &rules, &[]);
        assert_eq!(b, "rule del priority 10600 from all iif veth9 lookup 120\n");
    }

    #[test]
    fn used_marks_and_tables_cover_every_priority() {
        let (marks, tables) = used_marks_and_tables(LIVE);
        assert_eq!(marks.into_iter().collect::<Vec<_>>(), [0x100, 0x101, 0x1f4]);
        assert_eq!(
            tables.into_iter().collect::<Vec<_>>(),
            [100, 101, 150, 253, 254, 255]
        );
    }

    #[test]
    fn out_of_range_or_shared_allocations_are_skipped() {
        let mut st = golden_state();
        st.connections.get_mut("office-vpn").unwrap().fwmark = 0x100;
        let p = plan(&st);
        assert_eq!(p.rules.len(), 1);
        assert_eq!(p.warnings.len(), 1);
        st.connections.get_mut("office-vpn").unwrap().fwmark = 0x200;
        assert_eq!(plan(&st).rules.len(), 1);
        st.connections.get_mut("office-vpn").unwrap().fwmark = 0x101;
        st.connections.get_mut("office-vpn").unwrap().table = 254;
        assert_eq!(plan(&st).rules.len(), 1);
        assert_eq!(priority_for(0x1ff), Some(10255));
        assert_eq!(priority_for(0xff), None);
    }

    #[test]
    fn apply_spawns_only_the_read_when_in_sync_and_names_failed_lines() {
        let config = Config::from_lookup(|k| match k {
            "PIC_IP" => Some("/sbin/ip".into()),
            _ => None,
        })
        .unwrap();
        let p = plan(&golden_state());
        let in_sync = LIVE
            .replace("10500:\tfrom all fwmark 0x1f4 lookup 150\n", "")
            .replace("6 default table 150 metric 4294967295 \n", "");
        let host = FakeHost::new().answer("/sbin/ip -4 -N -batch -", 0, &in_sync);
        let r = apply(&host, &config, &p).unwrap();
        assert_eq!(r.batch, "");
        assert_eq!(host.calls(), ["/sbin/ip -4 -N -batch -"]);

        let host = FakeHost::new()
            .answer("/sbin/ip -4 -N -batch -", 0, "")
            .fail(
                "/sbin/ip -force -batch -",
                1,
                "Error: Nexthop has invalid gateway.\nCommand failed -:1\n",
            );
        let err = apply(&host, &config, &p).unwrap_err().to_string();
        assert_eq!(
            err,
            "policy routing failed: `route replace default via 172.20.0.30 table 100`: \
             Error: Nexthop has invalid gateway."
        );
    }
}
