//! The small HTTP client scripts/bench needs where curl or wrk would
//! measure themselves rather than the server:
//!
//!   probe requests ADDR TOKEN N CONNS
//!       N requests, cycling GET /api/services, /healthz and /api/status,
//!       spread over CONNS keep-alive connections; fails on any non-200.
//!   probe coldstart ADDR RUNS -- PROGRAM ARGS...
//!       RUNS times: start PROGRAM, poll GET /healthz on ADDR until it
//!       answers 200, stop the program (SIGKILL) and wait until the port is
//!       free again. Prints each time from exec to the first 200 and the
//!       best and median, in milliseconds.
//!
//! Every loop is bounded in count and in time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one cold start may take before the run is given up.
const START_LIMIT: Duration = Duration::from_secs(5);
/// How long the whole request run may take.
const REQUESTS_LIMIT: Duration = Duration::from_secs(300);
/// Pause between connection attempts while the server is starting.
const POLL_PAUSE: Duration = Duration::from_micros(200);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["requests", addr, token, n, conns] => requests(addr, token, num(n), num(conns)),
        ["coldstart", addr, runs, "--", program, rest @ ..] => {
            coldstart(addr, num(runs), program, rest)
        }
        _ => Err("usage: probe requests ADDR TOKEN N CONNS | probe coldstart ADDR RUNS -- PROGRAM ARGS...".into()),
    };
    if let Err(e) = result {
        eprintln!("probe: {e}");
        std::process::exit(1);
    }
}

fn num(s: &str) -> usize {
    s.parse().unwrap_or_else(|_| {
        eprintln!("probe: not a number: {s}");
        std::process::exit(2)
    })
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    reader: BufReader<TcpStream>,
    host: String,
}

impl Conn {
    fn open(addr: &str) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            reader: BufReader::new(stream),
            host: addr.to_string(),
        })
    }

    /// Sends GET `path` and reads the whole answer; returns the status.
    fn get(&mut self, path: &str, token: &str) -> Result<u16, String> {
        let auth = if token.is_empty() {
            String::new()
        } else {
            format!("Authorization: Bearer {token}\r\n")
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n{auth}\r\n", self.host);
        self.reader
            .get_mut()
            .write_all(request.as_bytes())
            .map_err(|e| format!("send GET {path}: {e}"))?;
        let mut line = String::new();
        let read = |r: &mut BufReader<TcpStream>, line: &mut String| {
            line.clear();
            r.read_line(line)
                .map_err(|e| format!("read answer to GET {path}: {e}"))
        };
        if read(&mut self.reader, &mut line)? == 0 {
            return Err(format!("connection closed before answering GET {path}"));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP status line: {line:?}"))?;
        let (mut length, mut chunked) = (0usize, false);
        loop {
            if read(&mut self.reader, &mut line)? == 0 {
                return Err("connection closed in the headers".into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value
                    .parse()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
        if chunked {
            loop {
                read(&mut self.reader, &mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| format!("bad chunk size {line:?}"))?;
                self.skip(size + 2)?;
                if size == 0 {
                    break;
                }
            }
        } else {
            self.skip(length)?;
        }
        Ok(status)
    }

    fn skip(&mut self, n: usize) -> Result<(), String> {
        let copied = std::io::copy(&mut (&mut self.reader).take(n as u64), &mut std::io::sink())
            .map_err(|e| format!("read body: {e}"))?;
        if copied as usize != n {
            return Err("connection closed in the body".into());
        }
        Ok(())
    }
}

fn requests(addr: &str, token: &str, n: usize, conns: usize) -> Result<(), String> {
    const PATHS: [&str; 3] = ["/api/services", "/healthz", "/api/status"];
    let conns = conns.clamp(1, 64);
    let started = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|w| {
            let (addr, token) = (addr.to_string(), token.to_string());
            let count = n / conns + usize::from(w < n % conns);
            std::thread::spawn(move || -> Result<usize, String> {
                let mut conn = Conn::open(&addr).map_err(|e| format!("connect {addr}: {e}"))?;
                for i in 0..count {
                    if started.elapsed() > REQUESTS_LIMIT {
                        return Err(format!("gave up after {REQUESTS_LIMIT:?}"));
                    }
                    let path = PATHS[(i + w) % PATHS.len()];
                    let status = match conn.get(path, &token) {
                        Ok(s) => s,
                        // The server may close a keep-alive connection: once more on a new one.
                        Err(_) => {
                            conn = Conn::open(&addr).map_err(|e| format!("connect {addr}: {e}"))?;
                            conn.get(path, &token)?
                        }
                    };
                    if status != 200 {
                        return Err(format!("GET {path} answered {status}"));
                    }
                }
                Ok(count)
            })
        })
        .collect();
    let mut done = 0;
    for w in workers {
        done += w
            .join()
            .map_err(|_| "a client thread panicked".to_string())??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{done} requests in {secs:.2} s ({:.0}/s)",
        done as f64 / secs
    );
    Ok(())
}

fn coldstart(addr: &str, runs: usize, program: &str, args: &[&str]) -> Result<(), String> {
    let mut times = Vec::new();
    for run in 1..=runs.clamp(1, 100) {
        wait_port_free(addr)?;
        let t0 = Instant::now();
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {program}: {e}"))?;
        let answered = loop {
            if let Ok(mut c) = Conn::open(addr) {
                if let Ok(200) = c.get("/healthz", "") {
                    break Some(t0.elapsed());
                }
            }
            if t0.elapsed() > START_LIMIT {
                break None;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{program} exited ({status}) before answering"));
            }
            std::thread::sleep(POLL_PAUSE);
        };
        let _ = child.kill();
        let _ = child.wait();
        let t = answered.ok_or_else(|| format!("no 200 from /healthz within {START_LIMIT:?}"))?;
        let ms = t.as_secs_f64() * 1000.0;
        println!("run {run}: {ms:.2} ms");
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "best {:.2} ms, median {:.2} ms",
        times[0],
        times[times.len() / 2]
    );
    Ok(())
}

/// Waits (bounded) until nothing accepts on `addr`.
fn wait_port_free(addr: &str) -> Result<(), String> {
    let t0 = Instant::now();
    while TcpStream::connect(addr).is_ok() {
        if t0.elapsed() > START_LIMIT {
            return Err(format!("{addr} is still taken"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
