//! The command line (spec §3): argv parsing, help text, and one function
//! per command. Each returns the exit code on success or an [`Error`] whose
//! `exit_code` the shim uses.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::host::RealHost;
use crate::ids::ServiceId;
use crate::ops::{self, Command, Ctx, Peer, Purge};
use crate::out::{out, outln};
use crate::state::{StateStore, CLI_LOCK_WAIT};
use crate::store::StoreClient;
use serde_json::json;

pub const USAGE: &str = "\
pic-store — the service store manager of a Personal Internet Cell

Usage:
  pic-store serve                      HTTP API and admin page
  pic-store reapply [--dry-run]        make the system match the state file
  pic-store list [--json]              available and installed services
  pic-store install ID [NAME=VALUE...] install a service from the store
  pic-store configure ID NAME=VALUE... change a service's settings
  pic-store update ID | --all          update an installed service, or every one
  pic-store remove ID [--purge] [--force]
                                       remove a service (--purge: and its data;
                                       --force: by label when compose down fails)
  pic-store start|stop|restart ID      start, stop or restart a service
  pic-store connection add SERVICE NAME [KEY=VALUE...]
  pic-store connection remove NAME
  pic-store connection list [--json]
  pic-store peer route PEER_IP CONNECTION
  pic-store peer unroute PEER_IP
  pic-store peer list [--json]
  pic-store egress set SERVICE CONNECTION
  pic-store egress clear SERVICE
  pic-store settings [NAME=VALUE...]   show or change image_verification_mode
  pic-store validate PATH...           check manifests or service folders
  pic-store status [--json]            version, counts, store and tools
  pic-store logs ID [--tail N] [--service NAME]
                                       a service's or connection's logs
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
            out!("{USAGE}");
            Ok(0)
        }
        ["--version"] | ["-V"] => {
            outln!("pic-store {}", env!("CARGO_PKG_VERSION"));
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
    if let Some((command, print)) = parse_command(cmd, rest)? {
        return run_command(config, &command, print);
    }
    match cmd {
        "config" => {
            Words::parse(cmd, rest, &[])?.exactly(cmd, &[])?;
            for (name, value) in config.describe() {
                outln!("{name}={value}");
            }
            Ok(0)
        }
        "token" => {
            Words::parse(cmd, rest, &[])?.exactly(cmd, &[])?;
            let token = crate::token::load_or_create(&config.state_dir)?;
            outln!("{token}");
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
            // Without --dry-run it is a command (above).
            let w = Words::parse(cmd, rest, &["--dry-run", "--json"])?;
            w.exactly(cmd, &[])?;
            with_ctx(config, |ctx| {
                let d = ops::dry_run(ctx)?;
                print_dry_run(&d, w.has("--json"));
                Ok(if d.drift.is_empty() { 0 } else { 1 })
            })
        }
        "connection" => match rest {
            ["list", args @ ..] => connection_list(config, args),
            _ => Err(Error::Usage("connection takes add, remove or list".into())),
        },
        "peer" => match rest {
            ["list", args @ ..] => peer_list(config, args),
            _ => Err(Error::Usage("peer takes route, unroute or list".into())),
        },
        "egress" => Err(Error::Usage("egress takes set or clear".into())),
        "logs" => logs(config, rest),
        "settings" => {
            // With NAME=VALUE words it is a command (above).
            let state = StateStore::new(&config.state_dir).read()?;
            let mode = state.settings.image_verification_mode;
            outln!("image_verification_mode={}", ops::mode_name(mode));
            Ok(0)
        }
        "serve" => {
            Words::parse(cmd, rest, &[])?.exactly(cmd, &[])?;
            crate::http::serve(config)
        }
        _ => Err(Error::Usage(format!("unknown command {cmd:?}"))),
    }
}

/// How the CLI prints an outcome.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Print {
    Text,
    Json,
}

/// The [`Command`] that `cmd rest` asks for; `None` for the commands
/// that only read (and `reapply --dry-run`).
fn parse_command(cmd: &str, rest: &[&str]) -> Result<Option<(Command, Print)>> {
    let one_id = |name: &str, args: &[&str]| -> Result<ServiceId> {
        let w = Words::parse(name, args, &[])?;
        w.exactly(name, &["ID"])?;
        ServiceId::parse(w.positional[0])
    };
    let command = match (cmd, rest) {
        ("install", args) => {
            let w = Words::parse(cmd, args, &[])?;
            let [id, settings @ ..] = w.positional.as_slice() else {
                return Err(Error::Usage("install takes ID [NAME=VALUE...]".into()));
            };
            Command::Install {
                id: ServiceId::parse(id)?,
                settings: parse_settings(settings)?,
            }
        }
        ("configure", args) => {
            let w = Words::parse(cmd, args, &[])?;
            let [id, settings @ ..] = w.positional.as_slice() else {
                return Err(Error::Usage("configure takes ID NAME=VALUE...".into()));
            };
            Command::Configure {
                id: ServiceId::parse(id)?,
                settings: parse_settings(settings)?,
            }
        }
        ("settings", [_, ..]) => settings_command(rest)?,
        ("update", ["--all"]) => Command::UpdateAll,
        ("update", args) => Command::Update(one_id(cmd, args)?),
        ("remove", args) => {
            let w = Words::parse(cmd, args, &["--purge", "--force"])?;
            w.exactly(cmd, &["ID"])?;
            Command::Remove {
                id: ServiceId::parse(w.positional[0])?,
                purge: Purge::from_flag(w.has("--purge")),
                force: w.has("--force"),
            }
        }
        ("reapply", args) => {
            let w = Words::parse(cmd, args, &["--dry-run", "--json"])?;
            w.exactly(cmd, &[])?;
            if w.has("--dry-run") {
                return Ok(None);
            }
            let print = if w.has("--json") {
                Print::Json
            } else {
                Print::Text
            };
            return Ok(Some((Command::Reapply, print)));
        }
        ("connection", ["add", args @ ..]) => {
            let w = Words::parse("connection add", args, &[])?;
            let [service, name, settings @ ..] = w.positional.as_slice() else {
                return Err(Error::Usage(
                    "connection add takes SERVICE NAME [KEY=VALUE...]".into(),
                ));
            };
            Command::ConnectionAdd {
                service: ServiceId::parse(service)?,
                name: ServiceId::parse(name)?,
                env: parse_settings(settings)?,
            }
        }
        ("connection", ["remove", args @ ..]) => {
            let w = Words::parse("connection remove", args, &[])?;
            w.exactly("connection remove", &["NAME"])?;
            Command::ConnectionRemove(ServiceId::parse(w.positional[0])?)
        }
        ("peer", ["route", args @ ..]) => {
            let w = Words::parse("peer route", args, &[])?;
            w.exactly("peer route", &["PEER_IP", "CONNECTION"])?;
            Command::PeerRoute {
                peer: Peer::parse(w.positional[0])?,
                connection: ServiceId::parse(w.positional[1])?,
            }
        }
        ("peer", ["unroute", args @ ..]) => {
            let w = Words::parse("peer unroute", args, &[])?;
            w.exactly("peer unroute", &["PEER_IP"])?;
            Command::PeerUnroute(Peer::parse(w.positional[0])?)
        }
        ("egress", ["set", args @ ..]) => {
            let w = Words::parse("egress set", args, &[])?;
            w.exactly("egress set", &["SERVICE", "CONNECTION"])?;
            Command::EgressSet {
                service: ServiceId::parse(w.positional[0])?,
                connection: ServiceId::parse(w.positional[1])?,
            }
        }
        ("egress", ["clear", args @ ..]) => {
            let w = Words::parse("egress clear", args, &[])?;
            w.exactly("egress clear", &["SERVICE"])?;
            Command::EgressClear(ServiceId::parse(w.positional[0])?)
        }
        ("start" | "stop" | "restart", args) => operate_command(cmd, one_id(cmd, args)?),
        _ => return Ok(None),
    };
    Ok(Some((command, Print::Text)))
}

/// `settings NAME=VALUE...`: the settings of spec §4 (only
/// `image_verification_mode` so far).
fn settings_command(words: &[&str]) -> Result<Command> {
    let mut mode = None;
    for (name, value) in parse_settings(words)? {
        match name.as_str() {
            "image_verification_mode" => mode = Some(ops::parse_mode(&value)?),
            other => {
                return Err(Error::Usage(format!(
                    "{:?} is not a setting (image_verification_mode is)",
                    crate::ids::truncate(other, 40)
                )))
            }
        }
    }
    mode.map(Command::Settings)
        .ok_or_else(|| Error::Usage("settings takes [NAME=VALUE...]".into()))
}

/// `start`, `stop` or `restart` of a service (spec §13).
fn operate_command(cmd: &str, id: ServiceId) -> Command {
    let action = match cmd {
        "start" => ops::Action::Start,
        "stop" => ops::Action::Stop,
        _ => ops::Action::Restart,
    };
    Command::Operate { id, action }
}

/// Runs a command with the real host, printing its outcome.
fn run_command(config: &Config, command: &Command, print: Print) -> Result<i32> {
    // Boot may find `serve` settling a pending operation: wait longer.
    let wait = match command {
        Command::Reapply => REAPPLY_LOCK_WAIT,
        _ => CLI_LOCK_WAIT,
    };
    with_ctx(config, |ctx| {
        let outcome = command.run(ctx, wait)?;
        if print == Print::Json {
            outln!(
                "{}",
                serde_json::to_string(&outcome.to_json()).unwrap_or_default()
            );
        } else {
            let (out, err) = outcome.text();
            for line in out {
                outln!("{line}");
            }
            for line in err {
                eprintln!("{line}");
            }
        }
        Ok(outcome.exit_code())
    })
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

fn connection_list(config: &Config, args: &[&str]) -> Result<i32> {
    let w = Words::parse("connection list", args, &["--json"])?;
    w.exactly("connection list", &[])?;
    let state = StateStore::new(&config.state_dir).read()?;
    if w.has("--json") {
        outln!("{}", json!(state.connections));
        return Ok(0);
    }
    outln!(
        "{:<24} {:<20} {:<7} {:<6} {:<6} ADDRESS",
        "NAME",
        "SERVICE",
        "MARK",
        "TABLE",
        "PORT"
    );
    for (id, c) in &state.connections {
        outln!(
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

fn peer_list(config: &Config, args: &[&str]) -> Result<i32> {
    let w = Words::parse("peer list", args, &["--json"])?;
    w.exactly("peer list", &[])?;
    let state = StateStore::new(&config.state_dir).read()?;
    if w.has("--json") {
        outln!("{}", json!(state.peer_routes));
        return Ok(0);
    }
    outln!("{:<18} CONNECTION", "PEER");
    for (p, c) in &state.peer_routes {
        outln!("{p:<18} {c}");
    }
    Ok(0)
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

/// `logs ID [--tail N] [--service NAME]` (spec §13): printed as docker
/// compose gives them, at most 5000 lines and 1 MiB.
fn logs(config: &Config, rest: &[&str]) -> Result<i32> {
    let mut id = None;
    let mut tail = None;
    let mut service = None;
    let mut words = rest.iter();
    while let Some(w) = words.next() {
        let (flag, inline) = match w.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (*w, None),
        };
        let slot = match flag {
            "--tail" => &mut tail,
            "--service" => &mut service,
            f if f.starts_with("--") => {
                return Err(Error::Usage(format!("logs: unknown option {f}")))
            }
            _ if id.is_none() => {
                id = Some(*w);
                continue;
            }
            _ => return Err(Error::Usage("logs takes one ID".into())),
        };
        let value = match inline {
            Some(v) => v,
            None => words
                .next()
                .copied()
                .ok_or_else(|| Error::Usage(format!("logs: {flag} needs a value")))?,
        };
        *slot = Some(value);
    }
    let id = ServiceId::parse(id.ok_or_else(|| Error::Usage("logs takes an ID".into()))?)?;
    let tail = ops::parse_tail(tail)?;
    let state = StateStore::new(&config.state_dir).read()?;
    let text = ops::logs(
        &RealHost,
        config,
        &state,
        &id,
        ops::LogsOf::Either,
        tail,
        service,
    )?;
    out!("{text}");
    Ok(0)
}

const REAPPLY_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

fn print_dry_run(d: &ops::DryRun, as_json: bool) {
    if as_json {
        outln!("{}", serde_json::to_string(d).unwrap_or_default());
        return;
    }
    outln!("# iptables-restore input (per table)\n{}", d.ruleset);
    outln!("# ip -batch input\n{}", d.ip_batch);
    outln!("# Caddy routes\n{}", d.caddyfile);
    if d.drift.is_empty() {
        outln!("in sync: reapply would change nothing");
    } else {
        outln!("drift ({}):", d.drift.len());
        for line in &d.drift {
            outln!("  {line}");
        }
    }
}
