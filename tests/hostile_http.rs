//! Oversized and malformed requests against a live `serve` (issue 8, case
//! 6): each is answered with a 4xx (or the connection is closed), the
//! server keeps answering, and its memory stays bounded.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Serve {
    child: Child,
    addr: SocketAddr,
    token: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &TempDir) -> Serve {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listen = addr.to_string();
    Store::new(dir);
    let child = pic_command(
        dir,
        &[("PIC_LISTEN", &listen), ("PIC_LOG", "warn")],
        &["serve"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status_of(&send(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )) != Some(200)
    {
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = std::fs::read_to_string(dir.state_dir().join("api-token"))
        .unwrap()
        .trim()
        .to_string();
    Serve { child, addr, token }
}

/// Sends raw bytes and reads whatever comes back (empty if the server
/// closed the connection); write errors are expected for refused bodies.
fn send(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return Vec::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > 1 << 20 {
            break;
        }
    }
    out
}

fn status_of(answer: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(answer);
    text.split_whitespace().nth(1)?.parse().ok()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn request(addr: SocketAddr, head: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n").into_bytes();
    raw.extend_from_slice(body);
    raw
}

#[test]
fn hostile_requests_get_4xx_and_the_server_stays_up_and_small() {
    let dir = TempDir::with_prefix("pic-hostile");
    let s = start(&dir);
    let auth = format!("Authorization: Bearer {}", s.token);
    let ten_mb = vec![b'a'; 10 << 20];
    let mut chunked = format!(
        "PUT /api/settings HTTP/1.1\r\nHost: {}\r\n{auth}\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n",
        s.addr
    )
    .into_bytes();
    for _ in 0..160 {
        chunked.extend_from_slice(b"10000\r\n");
        chunked.extend_from_slice(&[b' '; 0x10000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let deep = "[".repeat(60_000);
    let huge_header = "x".repeat(200_000);
    let many_headers: String = (0..20_000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "10 MB body",
            request(s.addr, &format!("PUT /api/settings HTTP/1.1\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: {}", ten_mb.len()), &ten_mb),
        ),
        ("10 MB chunked body", chunked),
        (
            "deep JSON",
            request(s.addr, &format!("PUT /api/settings HTTP/1.1\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: {}", deep.len()), deep.as_bytes()),
        ),
        (
            "invalid UTF-8 JSON",
            request(s.addr, &format!("PUT /api/settings HTTP/1.1\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: 7"), b"{\"\xff\":1}"),
        ),
        (
            "bad percent-encoding in a form",
            request(s.addr, &format!("PUT /api/settings HTTP/1.1\r\n{auth}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 28"), b"image_verification_mode=%zz%"),
        ),
        ("bad percent-encoding in a path", request(s.addr, &format!("POST /api/services/%ff%fe/install HTTP/1.1\r\n{auth}\r\nContent-Length: 0"), b"")),
        ("non-UTF-8 path", request(s.addr, &format!("GET /api/services/\u{0}x HTTP/1.1\r\n{auth}"), b"")),
        ("repeated Authorization", request(s.addr, &format!("GET /api/status HTTP/1.1\r\n{auth}\r\nAuthorization: Bearer wrong"), b"")),
        ("repeated Content-Length", request(s.addr, &format!("PUT /api/settings HTTP/1.1\r\n{auth}\r\nContent-Length: 2\r\nContent-Length: 40"), b"{}")),
        ("huge header", request(s.addr, &format!("GET /api/status HTTP/1.1\r\n{auth}\r\nX-Big: {huge_header}"), b"")),
        ("20,000 headers", request(s.addr, &format!("GET /api/status HTTP/1.1\r\n{auth}\r\n{many_headers}"), b"")),
        ("unknown method", request(s.addr, &format!("BREW /api/status HTTP/1.1\r\n{auth}"), b"")),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec()),
        ("a path of 100 KB", request(s.addr, &format!("GET /{} HTTP/1.1\r\n{auth}", "a/".repeat(50_000)), b"")),
    ];
    let baseline = rss_kib(s.child.id());
    for (name, raw) in &cases {
        for _ in 0..3 {
            let answer = send(s.addr, raw);
            match status_of(&answer) {
                Some(code) => assert!((400..500).contains(&code), "{name}: answered {code}"),
                None => assert!(
                    answer.is_empty(),
                    "{name}: not HTTP: {:?}",
                    String::from_utf8_lossy(&answer[..answer.len().min(200)])
                ),
            }
            let health = send(s.addr, &request(s.addr, "GET /healthz HTTP/1.1", b""));
            assert_eq!(
                status_of(&health),
                Some(200),
                "after {name} the server stopped answering"
            );
        }
    }
    // The settings were never changed by any of it.
    let st = send(
        s.addr,
        &request(
            s.addr,
            &format!("GET /api/settings HTTP/1.1\r\n{auth}"),
            b"",
        ),
    );
    assert!(String::from_utf8_lossy(&st).contains("\"warn\""));
    let after = rss_kib(s.child.id());
    assert!(
        after < baseline + 32 * 1024,
        "RSS grew from {baseline} KiB to {after} KiB"
    );
}
