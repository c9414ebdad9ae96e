//! A small HTTP/1.1 client for the tests of `pic-store serve`: one
//! request per connection (`Connection: close`), the answer read by its
//! `Content-Length` (none for `HEAD`); and the server under test,
//! `pic-store serve` on a free loopback port. Each test file adds the
//! calls it makes (`impl Serve` there).

use super::{pic_command, TempDir};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// Writes `raw` and reads one answer (by its Content-Length). The read
/// waits up to 5 minutes: a mutation answers when its job (a pull, a
/// health wait) is done.
pub fn send_raw(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    s.write_all(raw).expect("write request");
    read_answer_of(&mut s, raw.starts_with(b"HEAD "))
}

/// One answer with a body of its Content-Length.
pub fn read_answer(s: &mut TcpStream) -> Answer {
    read_answer_of(s, false)
}

/// One answer; `head_only`: the answer to a `HEAD`, without a body.
fn read_answer_of(s: &mut TcpStream, head_only: bool) -> Answer {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("read status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("read header");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; if head_only { 0 } else { len }];
    r.read_exact(&mut body).expect("read body");
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A request with `Host` (unless `headers` has one), `Content-Length` and
/// `Connection: close`.
pub fn build(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("Host")) {
        raw.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// `build` sent with `send_raw`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    send_raw(addr, &build(addr, method, path, headers, body))
}

/// `GET /healthz` answered 200, without panicking on the way.
pub fn healthz_ok(addr: SocketAddr) -> bool {
    let Ok(mut c) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let raw = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if c.write_all(raw.as_bytes()).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200 ")
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `pic-store serve` with its state in `dir`, killed when dropped.
pub struct Serve {
    pub child: Child,
    pub addr: SocketAddr,
    pub token: String,
    pub log: PathBuf,
}

impl Serve {
    /// Starts serve with `envs` and waits until `/healthz` answers 200: a
    /// connection refused or reset while serve starts is tried again; a
    /// serve that exits or never answers fails the test with its log.
    pub fn start(dir: &TempDir, envs: &[(&str, &str)]) -> Serve {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let listen = addr.to_string();
        let mut all: Vec<(&str, &str)> = vec![("PIC_LISTEN", &listen)];
        all.extend_from_slice(envs);
        let log = dir.join(format!("serve-{}.log", addr.port()));
        let file = std::fs::File::create(&log).expect("create log");
        let child = pic_command(dir, &all, &["serve"])
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start pic-store serve");
        let mut s = Serve {
            child,
            addr,
            token: String::new(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !healthz_ok(addr) {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("serve exited ({st}):\n{}", s.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "serve did not answer:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let token = std::fs::read_to_string(dir.state_dir().join("api-token")).expect("token file");
        s.token = token.trim().to_string();
        s
    }

    /// What serve logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
