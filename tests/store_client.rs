//! The store client against a real HTTP server on loopback: a tiny
//! hand-written HTTP/1.1 responder each test scripts, which records the
//! requests it receives. Covers the limits, the caches and the failure
//! modes of spec §5.

use pic_store::error::Error;
use pic_store::ids::ServiceId;
use pic_store::store::{StoreClient, MAX_BODY};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

// ---- the scripted server ----

/// What the server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Script = dyn Fn(&Seen, &mut TcpStream, &Shared) + Send + Sync;

/// What the server's threads share with the test.
#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
    /// Set when a write to the client failed (it hung up early).
    write_failed: AtomicBool,
    bytes_written: AtomicUsize,
}

struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts a server on 127.0.0.1:0 whose answers `script` writes.
    fn start(script: impl Fn(&Seen, &mut TcpStream, &Shared) + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let script: Arc<Script> = Arc::new(script);
        let acceptor = {
            let shared = shared.clone();
            thread::spawn(move || accept_loop(listener, shared, script))
        };
        Server {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Stops accepting and closes the listening socket.
    fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, script: Arc<Script>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = shared.clone();
                let script = script.clone();
                thread::spawn(move || serve_one(stream, &shared, &*script));
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve_one(mut stream: TcpStream, shared: &Shared, script: &Script) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let Some(seen) = read_head(&mut stream) else {
        return;
    };
    shared.seen.lock().unwrap().push(seen.clone());
    script(&seen, &mut stream, shared);
}

/// Reads a request head (GET: no body) up to the blank line.
fn read_head(stream: &mut TcpStream) -> Option<Seen> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Seen { path, headers })
}

/// Writes a whole response with a Content-Length.
fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.write_all(body);
}

fn respond_json(stream: &mut TcpStream, body: &str) {
    respond(
        stream,
        "200 OK",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
}

/// Writes `body` in pieces after a head without Content-Length (the body
/// ends when the server closes), recording how far it got.
fn stream_body(stream: &mut TcpStream, shared: &Shared, total: Option<usize>) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        shared.write_failed.store(true, Ordering::SeqCst);
        return;
    }
    let piece = vec![b' '; 16 * 1024];
    let mut sent = 0;
    while total.is_none_or(|t| sent < t) && !shared.stop.load(Ordering::SeqCst) {
        if stream.write_all(&piece).is_err() {
            shared.write_failed.store(true, Ordering::SeqCst);
            return;
        }
        sent += piece.len();
        shared.bytes_written.store(sent, Ordering::SeqCst);
    }
}

// ---- helpers ----

const ARRAY_INDEX: &str = r#"[
  {"id": "radicale", "name": "Radicale", "version": "3.1.8", "category": "calendar"},
  {"id": "webdav", "name": "WebDAV", "version": "1.0"}
]"#;

const OBJECT_INDEX: &str = r#"{"schema": 1, "services": [
  {"id": "radicale", "name": "Radicale", "version": "3.1.8"},
  {"id": "Bad_Id", "name": "Bad", "version": "1"},
  {"id": "proxy", "name": "Proxy", "version": "2.0", "instanceable": true}
]}"#;

/// A unique, empty temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("pic-store-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn cache(&self) -> PathBuf {
        self.0.join("cache")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn id(s: &str) -> ServiceId {
    ServiceId::parse(s).unwrap()
}

fn ids(index: &pic_store::store::Index) -> Vec<String> {
    index.services.iter().map(|e| e.id.to_string()).collect()
}

fn store_reason(e: &Error) -> String {
    match e {
        Error::Store { .. } => e.to_string(),
        other => panic!("expected a store error, got {other:?}"),
    }
}

// ---- the index over http ----

#[test]
fn index_in_array_form_is_fetched_and_kept_in_memory() {
    let server = Server::start(|_, s, _| respond_json(s, ARRAY_INDEX));
    let dir = TempDir::new("array");
    let client = StoreClient::new(&server.url("/store/index.json"), &dir.cache());

    let index = client.index().unwrap();
    assert_eq!(ids(&index), ["radicale", "webdav"]);
    assert!(!index.stale);
    assert!(index.fetched_at > 0);
    assert_eq!(index.services[0].extra["category"], "calendar");

    // Within the memory TTL the store is not asked again.
    assert_eq!(client.index().unwrap(), index);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/store/index.json");
    let agent = seen[0].header("User-Agent").unwrap();
    assert!(agent.starts_with("pic-store/"), "{agent}");
    assert_eq!(seen[0].header("If-None-Match"), None);

    // The raw body went to the disk cache.
    let cached = std::fs::read_to_string(dir.cache().join("index.json")).unwrap();
    assert_eq!(cached, ARRAY_INDEX);
    assert!(dir.cache().join("index.meta.json").exists());
}

#[test]
fn index_in_object_form_skips_bad_entries_and_passes_fields_through() {
    let server = Server::start(|_, s, _| respond_json(s, OBJECT_INDEX));
    let dir = TempDir::new("object");
    let client = StoreClient::new(&server.url("/index.json"), &dir.cache());

    let index = client.refresh_index().unwrap();
    assert_eq!(ids(&index), ["radicale", "proxy"]);
    let proxy = serde_json::to_value(&index.services[1]).unwrap();
    assert_eq!(
        proxy,
        serde_json::json!({"id": "proxy", "name": "Proxy", "version": "2.0", "instanceable": true})
    );
    // refresh_index always asks the store.
    client.refresh_index().unwrap();
    assert_eq!(server.seen().len(), 2);
}

// ---- limits ----

#[test]
fn oversize_body_with_content_length_is_refused_before_reading() {
    let server = Server::start(|_, s, shared| {
        let body = vec![b' '; 300 * 1024];
        respond(s, "200 OK", &[], &body);
        shared.bytes_written.store(body.len(), Ordering::SeqCst);
    });
    let dir = TempDir::new("big-cl");
    let client = StoreClient::new(&server.url("/index.json"), &dir.cache());

    let err = client.index().unwrap_err();
    let msg = store_reason(&err);
    assert!(msg.contains("larger than 256 KiB"), "{msg}");
    assert!(msg.contains(&server.url("/index.json")), "{msg}");
    assert!(!dir.cache().join("index.json").exists());
}

#[test]
fn oversize_body_without_length_stops_reading_early() {
    // An endless body: a client that read it all would never finish.
    let server = Server::start(|_, s, shared| stream_body(s, shared, None));
    let dir = TempDir::new("big-stream");
    let client = StoreClient::new(&server.url("/index.json"), &dir.cache());

    let started = Instant::now();
    let msg = store_reason(&client.index().unwrap_err());
    assert!(msg.contains("larger than 256 KiB"), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // The server notices the client hung up: its writes start failing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.shared.write_failed.load(Ordering::SeqCst) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(server.shared.write_failed.load(Ordering::SeqCst));
    let written = server.shared.bytes_written.load(Ordering::SeqCst);
    assert!(written < 64 * 1024 * 1024, "server wrote {written} bytes");
}

#[test]
fn finite_oversize_body_without_length_is_refused() {
    let server = Server::start(|_, s, shared| stream_body(s, shared, Some(300 * 1024)));
    let dir = TempDir::new("big-finite");
    let client = StoreClient::new(&server.url("/index.json"), &dir.cache());
    let msg = store_reason(&client.index().unwrap_err());
    assert!(msg.contains("larger than 256 KiB"), "{msg}");
}

#[test]
fn body_at_the_cap_is_accepted() {
    let mut body = String::from("[");
    body.push_str(&" ".repeat(MAX_BODY - 2));
    body.push(']');
    assert_eq!(body.len(), MAX_BODY);
    let server = Server::start(move |_, s, _| respond_json(s, &body));
    let dir = TempDir::new("at-cap");
    let client = StoreClient::new(&server.url("/index.json"), &dir.cache());
    assert!(client.index().unwrap().services.is_empty());
}

#[test]
fn server_that_never_answers_times_out() {
    let server = Server::start(|_, _, shared| {
        // Accept, read the request, then say nothing.
        let until = Instant::now() + Duration::from_secs(20);
        while !shared.stop.load(Ordering::SeqCst) && Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
        }
    });
    let dir = TempDir::new("silent");
    let client = StoreClient::new(&server.url("/index.json"), &dir.cache());

    let started = Instant::now();
    let msg = store_reason(&client.index().unwrap_err());
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    assert!(msg.contains("timed out"), "{msg}");
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn status_500_without_cache_is_an_error_naming_it() {
    let server = Server::start(|_, s, _| respond(s, "500 Internal Server Error", &[], b"oops"));
    let dir = TempDir::new("500");
    let client = StoreClient::new(&server.url("/index.json"), &dir.cache());
    let err = client.index().unwrap_err();
    assert_eq!(err.http_status(), 502);
    let msg = store_reason(&err);
    assert!(msg.contains("500"), "{msg}");
}

#[test]
fn missing_template_names_the_status() {
    let server = Server::start(|_, s, _| respond(s, "404 Not Found", &[], b"no"));
    let client = StoreClient::new(&server.url("/index.json"), Path::new("/nonexistent"));
    let msg = store_reason(&client.template(&id("radicale")).unwrap_err());
    assert!(msg.contains("404"), "{msg}");
    assert!(
        msg.contains("/services/radicale/compose-template.yml"),
        "{msg}"
    );
}

// ---- caching ----

#[test]
fn etag_is_revalidated_by_a_new_process() {
    let server = Server::start(|seen, s, _| {
        if seen.header("If-None-Match") == Some("\"v1\"") {
            respond(s, "304 Not Modified", &[("ETag", "\"v1\"")], b"");
        } else {
            respond(s, "200 OK", &[("ETag", "\"v1\"")], ARRAY_INDEX.as_bytes());
        }
    });
    let dir = TempDir::new("etag");
    let url = server.url("/index.json");

    let first = StoreClient::new(&url, &dir.cache()).index().unwrap();
    assert_eq!(first.etag.as_deref(), Some("\"v1\""));

    // A new client on the same cache folder is a restarted process.
    let second = StoreClient::new(&url, &dir.cache()).index().unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("If-None-Match"), Some("\"v1\""));
    assert!(!second.stale);
    assert_eq!(second.services, first.services);
    assert!(second.fetched_at >= first.fetched_at);
    assert_eq!(second.etag.as_deref(), Some("\"v1\""));
}

#[test]
fn unreachable_store_serves_the_disk_cache_as_stale() {
    let server = Server::start(|_, s, _| {
        respond(s, "200 OK", &[("ETag", "\"e\"")], OBJECT_INDEX.as_bytes())
    });
    let dir = TempDir::new("offline");
    let url = server.url("/index.json");
    let warm = StoreClient::new(&url, &dir.cache()).index().unwrap();
    server.stop();

    // After a reboot: a new process, nothing listening any more.
    let cold = StoreClient::new(&url, &dir.cache());
    let index = cold.index().unwrap();
    assert!(index.stale);
    assert_eq!(ids(&index), ["radicale", "proxy"]);
    assert_eq!(index.fetched_at, warm.fetched_at);
    // The stale answer is remembered briefly rather than retried each time.
    assert!(cold.index().unwrap().stale);
}

#[test]
fn failing_store_serves_the_memory_copy_as_stale_then_recovers() {
    let failing = Arc::new(AtomicBool::new(false));
    let server = {
        let failing = failing.clone();
        Server::start(move |_, s, _| {
            if failing.load(Ordering::SeqCst) {
                respond(s, "503 Service Unavailable", &[], b"");
            } else {
                respond_json(s, ARRAY_INDEX);
            }
        })
    };
    let dir = TempDir::new("flaky");
    let client = StoreClient::new(&server.url("/index.json"), &dir.cache());
    assert!(!client.index().unwrap().stale);

    failing.store(true, Ordering::SeqCst);
    let stale = client.refresh_index().unwrap();
    assert!(stale.stale);
    assert_eq!(ids(&stale), ["radicale", "webdav"]);

    failing.store(false, Ordering::SeqCst);
    assert!(!client.refresh_index().unwrap().stale);
}

#[test]
fn corrupt_disk_cache_is_ignored() {
    let dir = TempDir::new("corrupt");
    std::fs::create_dir_all(dir.cache()).unwrap();
    std::fs::write(dir.cache().join("index.json"), b"{not json").unwrap();
    std::fs::write(dir.cache().join("index.meta.json"), b"\0\0").unwrap();

    // Store down: no usable copy, so the fetch error comes back.
    let nobody = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/index.json", nobody.local_addr().unwrap());
    drop(nobody);
    let err = StoreClient::new(&dead_url, &dir.cache())
        .index()
        .unwrap_err();
    assert!(store_reason(&err).contains("connection refused"), "{err}");

    // Store up: the fresh copy replaces the bad one.
    let server = Server::start(|_, s, _| respond_json(s, ARRAY_INDEX));
    let index = StoreClient::new(&server.url("/index.json"), &dir.cache())
        .index()
        .unwrap();
    assert_eq!(ids(&index), ["radicale", "webdav"]);
    assert_eq!(
        std::fs::read_to_string(dir.cache().join("index.json")).unwrap(),
        ARRAY_INDEX
    );
}

#[test]
fn meta_of_another_body_voids_the_etag() {
    let server = Server::start(|_, s, _| respond_json(s, ARRAY_INDEX));
    let dir = TempDir::new("meta-mismatch");
    std::fs::create_dir_all(dir.cache()).unwrap();
    std::fs::write(dir.cache().join("index.json"), OBJECT_INDEX).unwrap();
    std::fs::write(
        dir.cache().join("index.meta.json"),
        br#"{"etag":"\"old\"","fetched_at":5,"body_hash":"0000000000000000"}"#,
    )
    .unwrap();
    let index = StoreClient::new(&server.url("/index.json"), &dir.cache())
        .index()
        .unwrap();
    assert_eq!(ids(&index), ["radicale", "webdav"]);
    // Only a client that trusted the stray ETag would send it.
    assert_eq!(server.seen()[0].header("If-None-Match"), None);
}

// ---- redirects ----

#[test]
fn redirects_are_followed_within_the_scheme_only() {
    let server = Server::start(|seen, s, _| match seen.path.as_str() {
        "/old/index.json" => respond(s, "302 Found", &[("Location", "/new/index.json")], b""),
        "/new/index.json" => respond_json(s, ARRAY_INDEX),
        "/to-file" => respond(s, "301 Moved", &[("Location", "file:///etc/passwd")], b""),
        _ => respond(s, "307 Again", &[("Location", "/loop2")], b""),
    });
    let dir = TempDir::new("redirects");

    let index = StoreClient::new(&server.url("/old/index.json"), &dir.cache())
        .index()
        .unwrap();
    assert_eq!(ids(&index), ["radicale", "webdav"]);

    let msg = store_reason(
        &StoreClient::new(&server.url("/to-file"), &TempDir::new("to-file").cache())
            .refresh_index()
            .unwrap_err(),
    );
    assert!(msg.contains("not http://"), "{msg}");

    let msg = store_reason(
        &StoreClient::new(&server.url("/loop1"), &TempDir::new("loop").cache())
            .index()
            .unwrap_err(),
    );
    assert!(msg.contains("redirects"), "{msg}");
}

// ---- manifests and templates ----

#[test]
fn manifest_and_template_over_http() {
    let server = Server::start(|seen, s, _| match seen.path.as_str() {
        "/store/services/radicale/manifest.json" => respond_json(
            s,
            r#"{"id": "radicale", "name": "Radicale", "version": "3.1.8"}"#,
        ),
        "/store/services/radicale/compose-template.yml" => respond(
            s,
            "200 OK",
            &[],
            b"services:\n  radicale:\n    image: ${IMAGE}\n",
        ),
        _ => respond(s, "404 Not Found", &[], b""),
    });
    let client = StoreClient::new(&server.url("/store/index.json"), Path::new("/nonexistent"));
    let manifest = client.manifest(&id("radicale")).unwrap();
    assert_eq!(manifest["version"], "3.1.8");
    let template = client.template(&id("radicale")).unwrap();
    assert!(template.contains("${IMAGE}"));
    // Not cached: asking again asks the store again.
    client.manifest(&id("radicale")).unwrap();
    assert_eq!(server.seen().len(), 3);
}

#[test]
fn manifest_with_another_id_is_refused() {
    let server =
        Server::start(|_, s, _| respond_json(s, r#"{"id": "evil", "name": "E", "version": "1"}"#));
    let client = StoreClient::new(&server.url("/index.json"), Path::new("/nonexistent"));
    let msg = store_reason(&client.manifest(&id("radicale")).unwrap_err());
    assert!(msg.contains("radicale") && msg.contains("evil"), "{msg}");
}

#[test]
fn manifest_that_is_not_json_is_refused() {
    let server = Server::start(|_, s, _| respond(s, "200 OK", &[], b"<html>hi</html>"));
    let client = StoreClient::new(&server.url("/index.json"), Path::new("/nonexistent"));
    let msg = store_reason(&client.manifest(&id("radicale")).unwrap_err());
    assert!(msg.contains("not JSON"), "{msg}");
}

#[test]
fn traversal_id_is_refused_before_any_request() {
    let server = Server::start(|_, s, _| respond_json(s, "{}"));
    let _client = StoreClient::new(&server.url("/index.json"), Path::new("/nonexistent"));
    for bad in ["../../etc", "..", "a/../../b", "radicale?x=1", "%2e%2e"] {
        assert!(ServiceId::parse(bad).is_err(), "{bad}");
    }
    // Give a stray request time to arrive, then check none did.
    thread::sleep(Duration::from_millis(100));
    assert!(server.seen().is_empty());
}

// ---- file:// ----

#[test]
fn file_store_serves_index_manifest_and_template() {
    let dir = TempDir::new("file-store");
    let store = dir.path().join("store");
    let service = store.join("services/radicale");
    std::fs::create_dir_all(&service).unwrap();
    std::fs::write(store.join("index.json"), OBJECT_INDEX).unwrap();
    std::fs::write(
        service.join("manifest.json"),
        r#"{"id": "radicale", "name": "Radicale", "version": "3.1.8"}"#,
    )
    .unwrap();
    std::fs::write(service.join("compose-template.yml"), "services: {}\n").unwrap();

    let url = format!("file://{}/index.json", store.display());
    let client = StoreClient::new(&url, &dir.cache());
    let index = client.index().unwrap();
    assert_eq!(ids(&index), ["radicale", "proxy"]);
    assert!(!index.stale);
    assert_eq!(
        client.manifest_url(&id("radicale")),
        format!("file://{}/services/radicale/manifest.json", store.display())
    );
    assert_eq!(client.manifest(&id("radicale")).unwrap()["id"], "radicale");
    assert_eq!(client.template(&id("radicale")).unwrap(), "services: {}\n");

    // Missing file: an error naming the URL; too big: refused.
    let msg = store_reason(&client.template(&id("webdav")).unwrap_err());
    assert!(
        msg.contains("services/webdav/compose-template.yml"),
        "{msg}"
    );
    std::fs::write(store.join("index.json"), vec![b' '; MAX_BODY + 1]).unwrap();
    let stale = client.refresh_index().unwrap();
    assert!(
        stale.stale,
        "an oversize index falls back to the cached one"
    );
    let fresh_dir = TempDir::new("file-store-cold");
    let msg = store_reason(
        &StoreClient::new(&url, &fresh_dir.cache())
            .index()
            .unwrap_err(),
    );
    assert!(msg.contains("larger than 256 KiB"), "{msg}");
}

#[test]
fn file_store_refuses_what_is_not_a_regular_file() {
    let dir = TempDir::new("file-fifo");
    let fifo = dir.path().join("index.json");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    let url = format!("file://{}", fifo.display());
    if made.is_ok_and(|s| s.success()) {
        let msg = store_reason(&StoreClient::new(&url, &dir.cache()).index().unwrap_err());
        assert!(msg.contains("not a regular file"), "{msg}");
    }
    let url = format!("file://{}", dir.path().display());
    let msg = store_reason(&StoreClient::new(&url, &dir.cache()).index().unwrap_err());
    assert!(msg.contains("not a regular file"), "{msg}");
}
