//! The only place pic-store spawns processes. A [`Cmd`] is an argv (never a
//! shell line) with an absolute program path, an explicit environment and a
//! time limit; its stderr is captured into the error when it fails.
//! [`Host`] is the seam: [`RealHost`] runs programs; unit tests use
//! `FakeHost` (test builds only), which expects each call exactly, in order.

use crate::config::Program;
use crate::error::{Error, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the child's environment is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Env {
    /// Exactly these variables and nothing else.
    Only(Vec<(String, String)>),
    /// Only `PATH` (a fixed, safe one), plus these.
    Minimal(Vec<(String, String)>),
}

#[derive(Debug, Clone)]
pub struct Cmd {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Env,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    /// Whether a non-zero exit is returned as an `Output` rather than an
    /// error (for commands whose exit code is an answer, like `ip rule del`).
    pub allow_failure: bool,
}

pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Cmd {
    pub fn new(program: &Program) -> Cmd {
        Cmd {
            program: program.path.clone(),
            args: Vec::new(),
            env: Env::Minimal(Vec::new()),
            stdin: None,
            timeout: Duration::from_secs(60),
            allow_failure: false,
        }
    }

    /// For argv taken from configuration (`PIC_CADDY_RELOAD`).
    pub fn from_argv(argv: &[String]) -> Option<Cmd> {
        let (first, rest) = argv.split_first()?;
        Some(Cmd {
            program: PathBuf::from(first),
            args: rest.to_vec(),
            env: Env::Minimal(Vec::new()),
            stdin: None,
            timeout: Duration::from_secs(60),
            allow_failure: false,
        })
    }

    pub fn arg(mut self, a: impl Into<String>) -> Cmd {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, env: Env) -> Cmd {
        self.env = env;
        self
    }

    pub fn stdin(mut self, bytes: Vec<u8>) -> Cmd {
        self.stdin = Some(bytes);
        self
    }

    pub fn timeout(mut self, t: Duration) -> Cmd {
        self.timeout = t;
        self
    }

    pub fn allow_failure(mut self) -> Cmd {
        self.allow_failure = true;
        self
    }

    /// The command as a person would type it, for logs and errors.
    pub fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }

    fn error(&self, reason: impl Into<String>, stderr: &str) -> Error {
        Error::Command {
            program: self.program.display().to_string(),
            args: self.args.clone(),
            reason: reason.into(),
            stderr: stderr.to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

pub trait Host: Send + Sync {
    /// Runs `cmd`; each line the child writes to stderr is passed to
    /// `progress` as it arrives (image pull progress, for instance).
    fn run_with_progress(&self, cmd: &Cmd, progress: &mut dyn FnMut(&str)) -> Result<Output>;

    fn run(&self, cmd: &Cmd) -> Result<Output> {
        self.run_with_progress(cmd, &mut |_| {})
    }
}

/// Runs real programs.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealHost;

/// Output beyond this is dropped (the child keeps running and is drained).
const MAX_CAPTURE: usize = 4 << 20;

impl Host for RealHost {
    fn run_with_progress(&self, cmd: &Cmd, progress: &mut dyn FnMut(&str)) -> Result<Output> {
        log::debug!("run: {}", cmd.display());
        let mut c = Command::new(&cmd.program);
        c.args(&cmd.args)
            .env_clear()
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Never a caller's folder: docker compose would look there for a
            // compose file and a .env.
            .current_dir("/")
            // Its own process group, so a timeout kills its children too.
            .process_group(0);
        match &cmd.env {
            Env::Only(vars) => {
                c.envs(vars.iter().map(|(k, v)| (k, v)));
            }
            Env::Minimal(vars) => {
                c.env("PATH", SAFE_PATH);
                c.envs(vars.iter().map(|(k, v)| (k, v)));
            }
        }
        let mut child = c.spawn().map_err(|e| {
            let reason = if e.kind() == std::io::ErrorKind::NotFound {
                "program not found".to_string()
            } else {
                format!("cannot start: {e}")
            };
            cmd.error(reason, "")
        })?;
        let pid = child.id() as i32;

        let stdin_thread = match (child.stdin.take(), cmd.stdin.clone()) {
            (Some(mut pipe), Some(bytes)) => Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            })),
            _ => None,
        };
        let stdout_thread = child.stdout.take().map(|mut out| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = (&mut out).take(MAX_CAPTURE as u64).read_to_end(&mut buf);
                let _ = std::io::copy(&mut out, &mut std::io::sink());
                buf
            })
        });
        let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
        let stderr_thread = child.stderr.take().map(|err| {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(err);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let text = String::from_utf8_lossy(&line);
                            // Pull progress redraws lines with \r.
                            for part in text.split('\r') {
                                let part = part.trim_end();
                                if !part.is_empty() && line_tx.send(part.to_string()).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            })
        });

        let deadline = Instant::now() + cmd.timeout;
        let mut stderr = String::new();
        let mut timed_out = false;
        let status = loop {
            while let Ok(line) = line_rx.try_recv() {
                collect_line(&mut stderr, &line);
                progress(&line);
            }
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => {}
                Err(e) => return Err(cmd.error(format!("wait failed: {e}"), &stderr)),
            }
            if Instant::now() >= deadline {
                timed_out = true;
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = child.wait();
                break None;
            }
            if let Ok(line) = line_rx.recv_timeout(Duration::from_millis(20)) {
                collect_line(&mut stderr, &line);
                progress(&line);
            }
        };
        if let Some(t) = stdin_thread {
            let _ = t.join();
        }
        let stdout = stdout_thread
            .and_then(|t| t.join().ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if let Some(t) = stderr_thread {
            let _ = t.join();
        }
        while let Ok(line) = line_rx.try_recv() {
            collect_line(&mut stderr, &line);
            progress(&line);
        }
        if timed_out {
            return Err(cmd.error(
                format!("timed out after {} s and was killed", cmd.timeout.as_secs()),
                &stderr,
            ));
        }
        let code = status.and_then(|s| s.code());
        let out = Output {
            code,
            stdout,
            stderr,
        };
        if !out.success() && !cmd.allow_failure {
            let reason = match code {
                Some(c) => format!("exit status {c}"),
                None => "killed by a signal".to_string(),
            };
            return Err(cmd.error(reason, &out.stderr));
        }
        Ok(out)
    }
}

fn collect_line(buf: &mut String, line: &str) {
    if buf.len() < MAX_CAPTURE {
        buf.push_str(line);
        buf.push('\n');
    }
}

/// The fake host of unit tests (test builds only): every call must be the
/// next one expected, argv for argv; it gets that expectation's answer and
/// is recorded. An unexpected or unscripted call panics (failing the
/// test), and so does dropping the fake before every expected call came.
#[cfg(test)]
#[derive(Default)]
pub struct FakeHost {
    expected: std::sync::Mutex<std::collections::VecDeque<(String, Output)>>,
    calls: std::sync::Mutex<Vec<String>>,
}

#[cfg(test)]
impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost::default()
    }

    /// Expects `line` (the command's [`Cmd::display`]) next, answering it
    /// with `code` and `stdout`. An empty `line` stands for any one call,
    /// for a command whose argv holds a generated path (check it with
    /// [`FakeHost::calls`]).
    pub fn answer(self, line: &str, code: i32, stdout: &str) -> FakeHost {
        self.push(line, code, stdout, "");
        self
    }

    /// Like [`FakeHost::answer`], for a failure with this stderr.
    pub fn fail(self, line: &str, code: i32, stderr: &str) -> FakeHost {
        self.push(line, code, "", stderr);
        self
    }

    /// Adds an expectation to a fake already in use.
    pub fn push(&self, line: &str, code: i32, stdout: &str, stderr: &str) {
        let out = Output {
            code: Some(code),
            stdout: stdout.to_string(),
            stderr: stderr.to_string(),
        };
        lock(&self.expected).push_back((line.to_string(), out));
    }

    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }
}

#[cfg(test)]
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
impl Host for FakeHost {
    fn run_with_progress(&self, cmd: &Cmd, _progress: &mut dyn FnMut(&str)) -> Result<Output> {
        let line = cmd.display();
        lock(&self.calls).push(line.clone());
        let next = lock(&self.expected).pop_front();
        let out = match next {
            Some((want, out)) if want == line || want.is_empty() => out,
            Some((want, _)) => panic!("unexpected call\n  got:  {line}\n  want: {want}"),
            None => panic!("unscripted call: {line}"),
        };
        if !out.success() && !cmd.allow_failure {
            return Err(cmd.error("exit status 1", &out.stderr));
        }
        Ok(out)
    }
}

#[cfg(test)]
impl Drop for FakeHost {
    fn drop(&mut self) {
        let left = lock(&self.expected);
        if !left.is_empty() && !std::thread::panicking() {
            let lines: Vec<&str> = left.iter().map(|(l, _)| l.as_str()).collect();
            panic!("expected calls never made:\n  {}", lines.join("\n  "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh() -> Cmd {
        Cmd {
            program: PathBuf::from("/bin/sh"),
            args: vec![],
            env: Env::Minimal(vec![]),
            stdin: None,
            timeout: Duration::from_secs(10),
            allow_failure: false,
        }
    }

    #[test]
    fn captures_stdout_and_passes_stdin() {
        let out = RealHost
            .run(
                &sh()
                    .args(["-c", "cat; echo done"])
                    .stdin(b"hello\n".to_vec()),
            )
            .unwrap();
        assert_eq!(out.stdout, "hello\ndone\n");
    }

    #[test]
    fn failure_carries_stderr() {
        let err = RealHost
            .run(&sh().args(["-c", "echo boom >&2; exit 3"]))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exit status 3"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
    }

    #[test]
    fn environment_is_scrubbed() {
        std::env::set_var("PIC_HOST_TEST_SECRET", "leak");
        let out = RealHost
            .run(
                &sh()
                    .args(["-c", "env"])
                    .env(Env::Minimal(vec![("ONLY".into(), "this".into())])),
            )
            .unwrap();
        assert!(!out.stdout.contains("leak"));
        assert!(out.stdout.contains("ONLY=this"));
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let start = Instant::now();
        let err = RealHost
            .run(
                &sh()
                    .args(["-c", "sleep 30 & sleep 30"])
                    .timeout(Duration::from_millis(300)),
            )
            .unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn progress_sees_stderr_lines() {
        let mut lines = Vec::new();
        RealHost
            .run_with_progress(
                &sh().args(["-c", "echo a >&2; printf 'b\\rc\\n' >&2"]),
                &mut |l| lines.push(l.to_string()),
            )
            .unwrap();
        assert_eq!(lines, ["a", "b", "c"]);
    }

    #[test]
    fn missing_program_is_named() {
        let mut c = sh();
        c.program = PathBuf::from("/nonexistent/prog");
        let msg = RealHost.run(&c).unwrap_err().to_string();
        assert!(
            msg.contains("/nonexistent/prog: program not found"),
            "{msg}"
        );
    }
}
