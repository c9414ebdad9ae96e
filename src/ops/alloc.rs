//! What a new service or connection gets, each the lowest free one: a
//! pool address (neither in the state nor on the cell network), and for a
//! connection a firewall mark, a routing table and a redirect port.

use super::Ctx;
use crate::docker;
use crate::error::{Error, Result};
use crate::host::Cmd;
use crate::state::{Connection, State};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

const FWMARKS: std::ops::RangeInclusive<u32> = 0x100..=0x1ff;
const TABLES: std::ops::RangeInclusive<u32> = 100..=199;
const PORTS: std::ops::RangeInclusive<u16> = 12000..=12999;

/// The values a new connection gets: each the lowest free one.
pub(super) struct Allocation {
    pub fwmark: u32,
    pub table: u32,
    pub port: u16,
    pub ip: Ipv4Addr,
}

/// Marks and tables in use on the host (any `ip rule`), read once.
fn host_marks_and_tables(ctx: &Ctx) -> Result<(BTreeSet<u32>, BTreeSet<u32>)> {
    let out = ctx.host.run(
        &Cmd::new(&ctx.config.ip)
            .args(["rule", "show"])
            .timeout(Duration::from_secs(30)),
    )?;
    Ok(crate::net::routing::used_marks_and_tables(&out.stdout))
}

/// Whether a TCP port can be bound here, i.e. nothing listens on it.
fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

pub(super) fn allocate(ctx: &mut Ctx, state: &State) -> Result<Allocation> {
    let (host_marks, host_tables) = host_marks_and_tables(ctx)?;
    let conns: Vec<&Connection> = state.connections.values().collect();
    let fwmark = FWMARKS
        .clone()
        .find(|m| !host_marks.contains(m) && !conns.iter().any(|c| c.fwmark == *m))
        .ok_or_else(|| Error::Conflict("no free firewall mark left (0x100-0x1ff)".into()))?;
    let table = TABLES
        .clone()
        .find(|t| !host_tables.contains(t) && !conns.iter().any(|c| c.table == *t))
        .ok_or_else(|| Error::Conflict("no free routing table left (100-199)".into()))?;
    let port = PORTS
        .clone()
        .find(|p| !conns.iter().any(|c| c.port == *p) && port_free(*p))
        .ok_or_else(|| Error::Conflict("no free redirect port left (12000-12999)".into()))?;
    let ip = allocate_ip(ctx, state)?;
    Ok(Allocation {
        fwmark,
        table,
        port,
        ip,
    })
}

/// The lowest pool address that neither the state nor a container on the
/// cell network holds.
pub(crate) fn allocate_ip(ctx: &mut Ctx, state: &State) -> Result<Ipv4Addr> {
    let on_network = docker::network_ips(ctx.host, ctx.config)?;
    let in_state: Vec<Ipv4Addr> = state
        .services
        .values()
        .filter_map(|s| s.ip)
        .chain(state.connections.values().map(|c| c.ip))
        .collect();
    ctx.config
        .service_pool
        .iter()
        .find(|ip| !in_state.contains(ip) && !on_network.contains(ip))
        .ok_or_else(|| {
            Error::Conflict(format!(
                "no free address left in the service pool {}",
                ctx.config.service_pool
            ))
        })
}
