//! The https client's crypto (rustls with ring, installed by pic-store as
//! the process's provider): against a local TLS server (`openssl s_server`,
//! TLS 1.3 and TLS 1.2) the handshake runs through key exchange and
//! encrypted records up to certificate verification, which refuses the
//! server's self-signed certificate because it chains to none of the
//! built-in roots. A missing or broken provider shows as a panic or a
//! handshake failure instead.
//!
//! A fetch that succeeds needs a server whose certificate chains to a public
//! root (webpki-roots), which no test here can reach.

mod common;

use common::*;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl() -> Option<String> {
    let found = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found && std::env::var("CI").as_deref() == Ok("true") {
        panic!("openssl (the command) is needed for the TLS test and CI=true");
    }
    found.then(|| which("openssl"))
}

/// `openssl s_server` on a free loopback port with a fresh self-signed
/// certificate for 127.0.0.1, speaking only `version`.
fn server(dir: &TempDir, version: &str) -> (Server, u16) {
    let openssl = openssl().expect("openssl");
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    if !cert.exists() {
        ok(&Command::new(&openssl)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdin(Stdio::null())
            .output()
            .unwrap());
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let child = Command::new(&openssl)
        .args(["s_server", "-quiet", "-www", version, "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-key")
        .arg(&key)
        .arg("-cert")
        .arg(&cert)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

#[test]
fn https_handshake_runs_up_to_the_certificate_check() {
    if openssl().is_none() {
        eprintln!("\n*** SKIPPED: no openssl command ***\n");
        return;
    }
    let dir = TempDir::with_prefix("pic-tls");
    for version in ["-tls1_3", "-tls1_2"] {
        let (_server, port) = server(&dir, version);
        let url = format!("https://127.0.0.1:{port}/index.json");
        let out = pic(&dir, &[("PIC_STORE_INDEX_URL", &url)], &["list", "--json"]);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !all.contains("panicked") && !all.contains("CryptoProvider"),
            "{version}: {}",
            show(&out)
        );
        assert!(
            all.contains("invalid peer certificate") && all.contains("UnknownIssuer"),
            "{version}: the handshake should reach the certificate check\n{}",
            show(&out)
        );
    }
}
