//! The command line (spec §3): argv parsing, help text, and one function
//! per command. Each returns the exit code on success or an [`Error`] whose
//! `exit_code` the shim uses.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::host::RealHost;
use crate::ids::ServiceId;
use crate::ops::{self, Ctx};
use crate::state::{StateStore, CLI_LOCK_WAIT};
use crate::store::StoreClient;
use serde_json::json;

pub const USAGE: &str = "\
pic-store — the service store manager of a Personal Internet Cell

Usage:
  pic-store serve                      HTTP API and admin page
  pic-store reapply [--dry-run]        make the system match the state file
  pic-store list [--json]              available and installed services
  pic-store install ID                 install a service from the store
  pic-store update ID                  update an installed service
  pic-store remove ID [--purge]        remove a service (--purge: and its data)
  pic-store connection add SERVICE NAME [KEY=VALUE...]
  pic-store connection remove NAME
  pic-store connection list [--json]
  pic-store peer route PEER_IP CONNECTION
  pic-store peer unroute PEER_IP
  pic-store peer list [--json]
  pic-store egress set SERVICE CONNECTION
  pic-store egress clear SERVICE
  pic-store validate PATH...           check manifests or service folders
  pic-store status [--json]            version, counts, store and tools
  pic-store config                     effective configuration
  pic-store token                      print the API token (made if missing)
  pic-store --help | --version

Configuration comes from PIC_* environment variables; see `pic-store config`.
Exit codes: 0 success, 1 refused or failed, 2 usage, configuration or state error.
";

/// Runs the command in `args` (without the program name).
pub fn run(args: &[String]) -> Result<i32> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        [] => Err(Error::Usage("no command given".into())),
        ["--help"] | ["-h"] | ["help"] => {
            print!("{USAGE}");
            Ok(0)
        }
        ["--version"] | ["-V"] => {
            println!("pic-store {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        [cmd, rest @ ..] => {
            let config = Config::from_env()?;
            start_logger(&config);
            dispatch(&config, cmd, rest)
        }
    }
}

fn start_logger(config: &Config) {
    // A second init (tests calling `run` twice) is harmless.
    let _ = simple_logger::SimpleLogger::new()
        .with_level(config.log_level)
        .init();
}

/// The words after a command: flags it knows, and positional arguments.
struct Words<'a> {
    positional: Vec<&'a str>,
    flags: Vec<&'a str>,
}

impl<'a> Words<'a> {
    /// Splits `rest` into `--flags` (only those in `known`) and positionals.
    fn parse(cmd: &str, rest: &[&'a str], known: &[&str]) -> Result<Words<'a>> {
        let mut w = Words {
            positional: Vec::new(),
            flags: Vec::new(),
        };
        for word in rest {
            if word.starts_with("--") {
                if !known.contains(word) {
                    return Err(Error::Usage(format!("{cmd}: unknown option {word}")));
                }
                w.flags.push(word);
            } else {
                w.positional.push(word);
            }
        }
        Ok(w)
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.contains(&flag)
    }

    /// Exactly `n` positionals, else a usage error naming them.
    fn exactly(&self, cmd: &str, names: &[&str]) -> Result<()> {
        if self.positional.len() != names.len() {
            return Err(Error::Usage(format!(
                "{cmd} takes {}",
                if names.is_empty() {
                    "no arguments".to_string()
                } else {
                    names.join(" ")
                }
            )));
        }
        Ok(())
    }
}

fn dispatch(config: &Config, cmd: &str, rest: &[&str]) -> Result<i32> {
    match cmd {
        "config" => {
            Words::parse(cmd, rest, &[])?.exactly(cmd, &[])?;
            for (name, value) in config.describe() {
                println!("{name}={value}");
            }
            Ok(0)
        }
        "token" => {
            Words::parse(cmd, rest, &[])?.exactly(cmd, &[])?;
            let token = crate::token::load_or_create(&config.state_dir)?;
            println!("{token}");
            eprintln!(
                "admin page login: http://{}/login?token={token}",
                config.listen
            );
            Ok(0)
        }
        "validate" => {
            let w = Words::parse(cmd, rest, &[])?;
            if w.positional.is_empty() {
                return Err(Error::Usage("validate takes one or more PATHs".into()));
            }
            crate::validate::run(config, &w.positional)
        }
        "install" | "update" => {
            let w = Words::parse(cmd, rest, &[])?;
            w.exactly(cmd, &["ID"])?;
            let id = ServiceId::parse(w.positional[0])?;
            with_ctx(config, |ctx| {
                if cmd == "install" {
                    let out = ops::install(ctx, &id, CLI_LOCK_WAIT)?;
                    print_install(&out);
                } else {
                    let out = ops::update(ctx, &id, CLI_LOCK_WAIT)?;
                    if out.updated {
                        println!(
                            "updated {} from {} to {}",
                            out.id, out.from_version, out.to_version
                        );
                    } else {
                        println!("{} is already at version {}", out.id, out.to_version);
                    }
                }
                Ok(0)
            })
        }
        "remove" => {
            let w = Words::parse(cmd, rest, &["--purge"])?;
            w.exactly(cmd, &["ID"])?;
            let id = ServiceId::parse(w.positional[0])?;
            let purge = w.has("--purge");
            with_ctx(config, |ctx| {
                let out = ops::remove(ctx, &id, purge, CLI_LOCK_WAIT)?;
                let how = if out.purged {
                    " and its data deleted"
                } else {
                    ""
                };
                println!("removed {}{how}", out.id);
                Ok(0)
            })
        }
        "list" => {
            let w = Words::parse(cmd, rest, &["--json"])?;
            w.exactly(cmd, &[])?;
            crate::report::list(config, w.has("--json"))
        }
        "status" => {
            let w = Words::parse(cmd, rest, &["--json"])?;
            w.exactly(cmd, &[])?;
            crate::report::status(config, &RealHost, w.has("--json"))
        }
        "reapply" => {
            let w = Words::parse(cmd, rest, &["--dry-run", "--json"])?;
            w.exactly(cmd, &[])?;
            let as_json = w.has("--json");
            if w.has("--dry-run") {
                return with_ctx(config, |ctx| {
                    let d = ops::dry_run(ctx)?;
                    print_dry_run(&d, as_json);
                    Ok(if d.drift.is_empty() { 0 } else { 1 })
                });
            }
            with_ctx(config, |ctx| {
                let r = ops::reapply(ctx, REAPPLY_LOCK_WAIT)?;
                if as_json {
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                } else {
                    if let Some(msg) = &r.recovered {
                        println!("recovered: {msg}");
                    }
                    for i in &r.items {
                        let mark = if i.ok { "ok  " } else { "FAIL" };
                        println!("{mark} {}: {}", i.item, i.detail);
                    }
                    println!("{}", r.summary());
                }
                Ok(if r.failed == 0 { 0 } else { 1 })
            })
        }
        "connection" => connection(config, rest),
        "peer" => peer(config, rest),
        "egress" => egress(config, rest),
        "serve" => {
            Words::parse(cmd, rest, &[])?.exactly(cmd, &[])?;
            crate::http::serve(config)
        }
        _ => Err(Error::Usage(format!("unknown command {cmd:?}"))),
    }
}

/// Runs an operation with the real host, the store, and progress lines
/// printed on stderr.
fn with_ctx(config: &Config, op: impl FnOnce(&mut Ctx) -> Result<i32>) -> Result<i32> {
    let store = StoreClient::from_config(config);
    let mut progress = |line: &str| eprintln!("  {line}");
    let mut ctx = Ctx {
        config,
        host: &RealHost,
        store: &store,
        progress: &mut progress,
    };
    op(&mut ctx)
}

fn connection(config: &Config, rest: &[&str]) -> Result<i32> {
    match rest {
        ["add", args @ ..] => {
            let w = Words::parse("connection add", args, &[])?;
            let [service, name, settings @ ..] = w.positional.as_slice() else {
                return Err(Error::Usage(
                    "connection add takes SERVICE NAME [KEY=VALUE...]".into(),
                ));
            };
            let service = ServiceId::parse(service)?;
            let name = ServiceId::parse(name)?;
            let env = parse_settings(settings)?;
            with_ctx(config, |ctx| {
                let c = ops::connection_add(ctx, &service, &name, env, CLI_LOCK_WAIT)?;
                println!(
                    "connection {} of {} is up: mark {:#x}, table {}, port {}, address {}",
                    c.id, c.service, c.fwmark, c.table, c.port, c.ip
                );
                Ok(0)
            })
        }
        ["remove", args @ ..] => {
            let w = Words::parse("connection remove", args, &[])?;
            w.exactly("connection remove", &["NAME"])?;
            let id = ServiceId::parse(w.positional[0])?;
            with_ctx(config, |ctx| {
                ops::connection_remove(ctx, &id, CLI_LOCK_WAIT)?;
                println!("connection {id} deleted");
                Ok(0)
            })
        }
        ["list", args @ ..] => {
            let w = Words::parse("connection list", args, &["--json"])?;
            w.exactly("connection list", &[])?;
            let state = StateStore::new(&config.state_dir).read()?;
            if w.has("--json") {
                println!("{}", json!(state.connections));
                return Ok(0);
            }
            println!(
                "{:<24} {:<20} {:<7} {:<6} {:<6} ADDRESS",
                "NAME", "SERVICE", "MARK", "TABLE", "PORT"
            );
            for (id, c) in &state.connections {
                println!(
                    "{id:<24} {:<20} {:<7} {:<6} {:<6} {}",
                    c.service,
                    format!("{:#x}", c.fwmark),
                    c.table,
                    c.port,
                    c.ip
                );
            }
            Ok(0)
        }
        _ => Err(Error::Usage("connection takes add, remove or list".into())),
    }
}

fn peer(config: &Config, rest: &[&str]) -> Result<i32> {
    match rest {
        ["route", args @ ..] => {
            let w = Words::parse("peer route", args, &[])?;
            w.exactly("peer route", &["PEER_IP", "CONNECTION"])?;
            let peer = ops::parse_peer(w.positional[0])?;
            let conn = ServiceId::parse(w.positional[1])?;
            with_ctx(config, |ctx| {
                ops::peer_route(ctx, peer, &conn, CLI_LOCK_WAIT)?;
                println!("peer {peer} routed through {conn}");
                Ok(0)
            })
        }
        ["unroute", args @ ..] => {
            let w = Words::parse("peer unroute", args, &[])?;
            w.exactly("peer unroute", &["PEER_IP"])?;
            let peer = ops::parse_peer(w.positional[0])?;
            with_ctx(config, |ctx| {
                let had = ops::peer_unroute(ctx, peer, CLI_LOCK_WAIT)?;
                if had {
                    println!("peer {peer} is back on the default route");
                } else {
                    println!("peer {peer} had no route");
                }
                Ok(0)
            })
        }
        ["list", args @ ..] => {
            let w = Words::parse("peer list", args, &["--json"])?;
            w.exactly("peer list", &[])?;
            let state = StateStore::new(&config.state_dir).read()?;
            if w.has("--json") {
                println!("{}", json!(state.peer_routes));
                return Ok(0);
            }
            println!("{:<18} CONNECTION", "PEER");
            for (p, c) in &state.peer_routes {
                println!("{p:<18} {c}");
            }
            Ok(0)
        }
        _ => Err(Error::Usage("peer takes route, unroute or list".into())),
    }
}

fn egress(config: &Config, rest: &[&str]) -> Result<i32> {
    match rest {
        ["set", args @ ..] => {
            let w = Words::parse("egress set", args, &[])?;
            w.exactly("egress set", &["SERVICE", "CONNECTION"])?;
            let service = ServiceId::parse(w.positional[0])?;
            let conn = ServiceId::parse(w.positional[1])?;
            with_ctx(config, |ctx| {
                ops::egress_set(ctx, &service, &conn, CLI_LOCK_WAIT)?;
                println!("{service}: outbound traffic goes through {conn}");
                Ok(0)
            })
        }
        ["clear", args @ ..] => {
            let w = Words::parse("egress clear", args, &[])?;
            w.exactly("egress clear", &["SERVICE"])?;
            let service = ServiceId::parse(w.positional[0])?;
            with_ctx(config, |ctx| {
                ops::egress_clear(ctx, &service, CLI_LOCK_WAIT)?;
                println!("{service}: outbound traffic on the default route");
                Ok(0)
            })
        }
        _ => Err(Error::Usage("egress takes set or clear".into())),
    }
}

/// `KEY=VALUE` words of `connection add`; the values are checked against
/// the manifest by the operation.
fn parse_settings(words: &[&str]) -> Result<std::collections::BTreeMap<String, String>> {
    let mut env = std::collections::BTreeMap::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(Error::Usage(format!("{w:?} is not KEY=VALUE")));
        };
        if env.insert(k.to_string(), v.to_string()).is_some() {
            return Err(Error::Usage(format!("{k} is given twice")));
        }
    }
    Ok(env)
}

/// Boot may find `serve` settling a pending operation: wait longer.
const REAPPLY_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

fn print_dry_run(d: &ops::DryRun, as_json: bool) {
    if as_json {
        println!("{}", serde_json::to_string(d).unwrap_or_default());
        return;
    }
    println!("# iptables-restore input (per table)\n{}", d.ruleset);
    println!("# ip -batch input\n{}", d.ip_batch);
    println!("# Caddy routes\n{}", d.caddyfile);
    if d.drift.is_empty() {
        println!("in sync: reapply would change nothing");
    } else {
        println!("drift ({}):", d.drift.len());
        for line in &d.drift {
            println!("  {line}");
        }
    }
}

fn print_install(out: &ops::InstallOutcome) {
    if out.already_installed {
        println!("{} is already installed (version {})", out.id, out.version);
        return;
    }
    match out.ip {
        Some(ip) => println!("installed {} {} at {ip}", out.id, out.version),
        None => println!(
            "installed {} {} (instanceable: add connections to run it)",
            out.id, out.version
        ),
    }
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
}
