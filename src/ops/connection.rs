//! Connection instances of instanceable connectivity services, peer routes
//! and service egress (spec §9, §10).

use super::Ctx;
use crate::error::{Error, Result};
use crate::ids::ServiceId;
use crate::manifest::VerificationMode;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct ConnectionOutcome {
    pub id: String,
    pub service: String,
    pub fwmark: u32,
    pub table: u32,
    pub port: u16,
    pub ip: Ipv4Addr,
}

pub fn connection_add(
    _ctx: &mut Ctx,
    _service: &ServiceId,
    _name: &ServiceId,
    _env: BTreeMap<String, String>,
    _wait: Duration,
) -> Result<ConnectionOutcome> {
    Err(Error::failed(
        "connection add",
        "not available in this build",
    ))
}

pub fn connection_remove(_ctx: &mut Ctx, _id: &ServiceId, _wait: Duration) -> Result<()> {
    Err(Error::failed(
        "connection remove",
        "not available in this build",
    ))
}

/// Routes `peer` through connection `conn` (moving it if routed elsewhere).
pub fn peer_route(
    _ctx: &mut Ctx,
    _peer: Ipv4Addr,
    _conn: &ServiceId,
    _wait: Duration,
) -> Result<()> {
    Err(Error::failed("peer route", "not available in this build"))
}

/// Returns whether the peer had a route.
pub fn peer_unroute(_ctx: &mut Ctx, _peer: Ipv4Addr, _wait: Duration) -> Result<bool> {
    Err(Error::failed("peer unroute", "not available in this build"))
}

pub fn egress_set(
    _ctx: &mut Ctx,
    _service: &ServiceId,
    _conn: &ServiceId,
    _wait: Duration,
) -> Result<()> {
    Err(Error::failed("egress set", "not available in this build"))
}

pub fn egress_clear(_ctx: &mut Ctx, _service: &ServiceId, _wait: Duration) -> Result<()> {
    Err(Error::failed("egress clear", "not available in this build"))
}

pub fn set_verification_mode(
    _ctx: &mut Ctx,
    _mode: VerificationMode,
    _wait: Duration,
) -> Result<()> {
    Err(Error::failed("settings", "not available in this build"))
}
