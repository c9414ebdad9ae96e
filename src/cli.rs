//! The command line (spec §3): argv parsing, help text, and one function
//! per command. Each returns the exit code on success or an [`Error`] whose
//! `exit_code` the shim uses.

use crate::config::Config;
use crate::error::{Error, Result};

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

fn dispatch(config: &Config, cmd: &str, rest: &[&str]) -> Result<i32> {
    match (cmd, rest) {
        ("config", []) => {
            for (name, value) in config.describe() {
                println!("{name}={value}");
            }
            Ok(0)
        }
        ("token", []) => Err(not_yet("token")),
        (
            "serve" | "reapply" | "list" | "install" | "update" | "remove" | "connection" | "peer"
            | "egress" | "validate" | "status" | "config" | "token",
            _,
        ) => Err(not_yet(cmd)),
        _ => Err(Error::Usage(format!("unknown command {cmd:?}"))),
    }
}

fn not_yet(cmd: &str) -> Error {
    Error::failed(cmd, "not available in this build")
}
