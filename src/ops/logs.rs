//! Logs of an installed service or connection instance (spec §13 "Logs"):
//! `docker compose logs --no-color --tail N [SERVICE]` on its project, a
//! read like `list` (no job, no lock). The compose service name is checked
//! against the project's own compose file before it reaches the argv.

use super::project;
use crate::compose::Project;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::files;
use crate::host::Host;
use crate::ids::ServiceId;
use crate::state::State;

/// Lines when none are asked for.
pub const DEFAULT_TAIL: usize = 200;
/// The most lines given; a larger ask is given this many, not refused.
pub const MAX_TAIL: usize = 5000;
/// The most bytes given: the end of the output is kept.
pub const MAX_BYTES: usize = 1 << 20;

/// Whose logs: a service, a connection instance, or either (the CLI's ID).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LogsOf {
    Service,
    Connection,
    Either,
}

/// `--tail N` / `tail=N`: absent is [`DEFAULT_TAIL`], anything above
/// [`MAX_TAIL`] (however many digits) is [`MAX_TAIL`]; not a number is a
/// usage error.
pub fn parse_tail(text: Option<&str>) -> Result<usize> {
    let Some(t) = text else {
        return Ok(DEFAULT_TAIL);
    };
    let t = t.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Usage(format!(
            "tail must be a number of lines, not {:?}",
            crate::ids::truncate(t, 20)
        )));
    }
    Ok(t.parse::<usize>().unwrap_or(MAX_TAIL).min(MAX_TAIL))
}

/// The logs of `id`'s project (of its compose service `service` when
/// given), at most `tail` lines and [`MAX_BYTES`].
pub fn logs(
    host: &dyn Host,
    config: &Config,
    state: &State,
    id: &ServiceId,
    of: LogsOf,
    tail: usize,
    service: Option<&str>,
) -> Result<String> {
    let project = which_project(config, state, id, of)?;
    if let Some(name) = service {
        check_service(&project, name)?;
    }
    let out = host.run(&project::logs_cmd(
        config,
        &project,
        tail.min(MAX_TAIL),
        service,
    ))?;
    Ok(keep_end(&out.stdout, MAX_BYTES))
}

fn which_project(config: &Config, state: &State, id: &ServiceId, of: LogsOf) -> Result<Project> {
    let id = id.as_str();
    if of != LogsOf::Connection {
        if let Some(s) = state.services.get(id) {
            if s.manifest.instanceable {
                return Err(Error::Conflict(format!(
                    "{id} runs only as connection instances; ask for a connection's logs"
                )));
            }
            return Ok(project::service(config, id));
        }
    }
    if of != LogsOf::Service {
        if let Some(c) = state.connections.get(id) {
            return Ok(project::instance(config, &c.service, id));
        }
    }
    Err(Error::NotFound(match of {
        LogsOf::Service => format!("{id} is not installed"),
        LogsOf::Connection => format!("no connection {id}"),
        LogsOf::Either => format!("{id} is neither an installed service nor a connection"),
    }))
}

/// `name` must be a service of the project's compose file.
fn check_service(project: &Project, name: &str) -> Result<()> {
    let bytes = files::read(&project.file)?;
    let doc: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::failed(format!("read {}", project.file.display()), e))?;
    let names: Vec<&str> = doc["services"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    if names.contains(&name) {
        return Ok(());
    }
    Err(Error::invalid(
        "service",
        vec![format!(
            "{:?} is not a compose service of {} (it has: {})",
            crate::ids::truncate(name, 40),
            project.name,
            names.join(", ")
        )],
    ))
}

/// The last `max` bytes of `text` (cut at a line start where one is near),
/// after a line saying that earlier output was left out.
fn keep_end(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = text.len() - max;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    if let Some(nl) = text[cut..].find('\n') {
        cut += nl + 1;
    }
    format!(
        "[pic-store: earlier output left out; at most {} KiB is shown]\n{}",
        max / 1024,
        &text[cut..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_defaults_caps_and_refuses_words() {
        assert_eq!(parse_tail(None).unwrap(), DEFAULT_TAIL);
        assert_eq!(parse_tail(Some("10")).unwrap(), 10);
        assert_eq!(parse_tail(Some("5000")).unwrap(), 5000);
        assert_eq!(parse_tail(Some("5001")).unwrap(), MAX_TAIL);
        assert_eq!(
            parse_tail(Some("99999999999999999999999999")).unwrap(),
            MAX_TAIL
        );
        for bad in ["", "-1", "ten", "1e3", "all"] {
            let e = parse_tail(Some(bad)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn output_keeps_its_end_within_the_cap() {
        assert_eq!(keep_end("a\nb\n", 10), "a\nb\n");
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let kept = keep_end(&text, 100);
        let body = kept.split_once('\n').unwrap().1;
        assert!(body.len() <= 100, "{}", body.len());
        assert!(body.starts_with("line "), "{body}");
        assert!(body.ends_with("line 999\n"));
        assert!(kept.starts_with("[pic-store: earlier output left out"));
        // Never cut inside a character.
        let wide = "é".repeat(100);
        assert!(keep_end(&wide, 51).len() <= 51 + 80);
    }
}
