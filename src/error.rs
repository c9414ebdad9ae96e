//! The one error type of pic-store. Every variant carries what failed, on
//! what, and why; `Display` is the sentence a person reads, and
//! [`Error::exit_code`] maps it to the exit codes of the spec (§3).

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    /// Wrong command line: exit 2.
    Usage(String),
    /// A malformed environment variable: exit 2.
    Config { var: &'static str, reason: String },
    /// `state.json` (and, where tried, its backup) cannot be read: exit 2.
    StateUnreadable { path: PathBuf, reason: String },
    /// A file operation failed.
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A child process could not start, timed out or exited non-zero.
    Command {
        program: String,
        args: Vec<String>,
        reason: String,
        stderr: String,
    },
    /// The store could not be reached or answered badly (HTTP 502).
    Store { url: String, reason: String },
    /// The input was checked and refused; every problem is listed (HTTP 400).
    Invalid { what: String, errors: Vec<String> },
    /// The thing asked for does not exist (HTTP 404).
    NotFound(String),
    /// The operation conflicts with the current state (HTTP 409).
    Conflict(String),
    /// Another mutation held the lock for too long.
    Busy(String),
    /// An operation failed at a named step (the system was put back).
    Failed { step: String, reason: String },
    /// A program pic-store needs is not installed (docker, its Compose
    /// plugin): exit 2, HTTP 503 (spec §13 "Missing tools").
    ToolMissing(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub fn invalid(what: impl Into<String>, errors: Vec<String>) -> Error {
        Error::Invalid {
            what: what.into(),
            errors,
        }
    }

    pub fn failed(step: impl Into<String>, reason: impl fmt::Display) -> Error {
        Error::Failed {
            step: step.into(),
            reason: reason.to_string(),
        }
    }

    /// The process exit code of spec §3.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Config { .. } | Error::StateUnreadable { .. } => 2,
            Error::ToolMissing(_) => 2,
            _ => 1,
        }
    }

    /// The HTTP status of spec §12.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::Usage(_) | Error::Invalid { .. } => 400,
            Error::NotFound(_) => 404,
            Error::Conflict(_) | Error::Busy(_) => 409,
            Error::Store { .. } => 502,
            Error::ToolMissing(_) => 503,
            _ => 500,
        }
    }

    /// Individual problems, for the `errors` array of a JSON error.
    pub fn details(&self) -> Vec<String> {
        match self {
            Error::Invalid { errors, .. } => errors.clone(),
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) => write!(f, "{msg} (see `pic-store --help`)"),
            Error::Config { var, reason } => write!(f, "configuration: {var}: {reason}"),
            Error::StateUnreadable { path, reason } => {
                write!(f, "state file {} cannot be read: {reason}", path.display())
            }
            Error::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
            Error::Command {
                program,
                args,
                reason,
                stderr,
            } => {
                write!(f, "{program}")?;
                for a in args.iter().take(8) {
                    write!(f, " {a}")?;
                }
                if args.len() > 8 {
                    write!(f, " ...")?;
                }
                write!(f, ": {reason}")?;
                let tail = stderr_tail(stderr);
                if !tail.is_empty() {
                    write!(f, ": {tail}")?;
                }
                Ok(())
            }
            Error::Store { url, reason } => write!(f, "store {url}: {reason}"),
            Error::Invalid { what, errors } => {
                write!(f, "{what}: ")?;
                match errors.as_slice() {
                    [] => write!(f, "invalid"),
                    [one] => write!(f, "{one}"),
                    many => write!(f, "{} errors: {}", many.len(), many.join("; ")),
                }
            }
            Error::NotFound(msg) | Error::Conflict(msg) | Error::Busy(msg) => write!(f, "{msg}"),
            Error::Failed { step, reason } => write!(f, "{step} failed: {reason}"),
            Error::ToolMissing(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for Error {}

/// The last few lines of a child's stderr, trimmed, so an error message
/// shows the cause without pages of output.
pub fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(4);
    let mut out = lines[start..].join(" | ");
    if out.len() > 800 {
        let mut cut = out.len() - 800;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = format!("...{}", &out[cut..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_spec() {
        assert_eq!(Error::Usage("x".into()).exit_code(), 2);
        assert_eq!(
            Error::Config {
                var: "PIC_LISTEN",
                reason: "x".into()
            }
            .exit_code(),
            2
        );
        assert_eq!(Error::Conflict("x".into()).exit_code(), 1);
        assert_eq!(Error::invalid("m", vec![]).exit_code(), 1);
    }

    #[test]
    fn command_error_shows_the_tail_of_stderr() {
        let e = Error::Command {
            program: "docker".into(),
            args: vec!["compose".into(), "up".into()],
            reason: "exit status 1".into(),
            stderr: "line1\nline2\n\nline3\nline4\nline5\n".into(),
        };
        assert_eq!(
            e.to_string(),
            "docker compose up: exit status 1: line2 | line3 | line4 | line5"
        );
    }
}
