//! The front door of `serve`: the only code that reads from the network.
//! tiny_http reads a request's head with no limit on its size or on how
//! long it takes, so it listens on a private Unix socket instead, and this
//! module accepts on `PIC_LISTEN`, reads each request — head and body —
//! under hard limits, and relays it to tiny_http whole. Tests:
//! `tests/http_api.rs` (the relay's limits and leaks) and
//! `tests/hostile_http.rs` (spec §12's v2 hardening).
//!
//! Per connection, a relay thread:
//!
//! 1. reads the head — at most [`MAX_HEAD`] bytes and [`MAX_HEADER_LINES`]
//!    header lines, within [`HEAD_DEADLINE`] of the accept, shaped
//!    `METHOD SP TARGET SP HTTP/1.x` — or answers 4xx and closes;
//! 2. refuses bodies whose framing two readers could disagree on, and
//!    `Expect` values other than `100-continue` (417);
//! 3. admits the request on its head alone ([`super::router::admit`]: the
//!    Host, the route and the method, the Bearer token or the session),
//!    which also says how large a body it may have — before a single body
//!    byte is read and before any `100 Continue`;
//! 4. answers `100 Continue` itself when asked (tiny_http never sees the
//!    `Expect` header), and reads the whole body within [`BODY_DEADLINE`]:
//!    a body that ends early (a half-close before its declared length or
//!    its last chunk) is a 400 and never reaches tiny_http;
//! 5. writes the head to the Unix socket — `HEAD` as `GET`, every
//!    client-sent `X-Pic-Peer`, `Connection`, `Expect`,
//!    `Transfer-Encoding` and `Content-Length` removed, and
//!    `Content-Length` of the decoded body, `Connection: close` and
//!    `X-Pic-Peer: <client address>` added (the router trusts that header
//!    only from the Unix socket) — followed by the body;
//! 6. copies the answer back (for `HEAD` its head only), with no time
//!    limit on waiting for it but [`WRITE_IDLE`] for a client that stops
//!    reading it, while a second thread watches the client: a reset ends
//!    the relay, while a client that only closes its sending side still
//!    gets its answer.
//!
//! So a worker only ever sees a complete request: no client that stalls,
//! with or without `Expect: 100-continue`, holds one.
//!
//! One request per connection: the answer carries `Connection: close` and
//! the connection closes after it, because a second request on the same
//! connection would reach tiny_http without its head being checked.
//! Browsers and HTTP clients open a new connection for the next request.
//!
//! Bounds: [`Limits`] caps the connections (one thread and one descriptor
//! each while the request arrives) and, within them, the relayed requests
//! (two threads, four descriptors and a tiny_http thread each), sized to
//! the process's open-file limit. One client address holds at most a
//! quarter of the connections still being read (head or body), so another
//! address is always served. Over any cap the client gets 503.

use super::msg::{Req, Resp};
use super::App;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The largest request head (request line and headers), in bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header lines a request may have.
pub const MAX_HEADER_LINES: usize = 100;
/// The whole head must arrive within this time of the accept (slowloris).
pub const HEAD_DEADLINE: Duration = Duration::from_secs(10);
/// A body must arrive whole within this time of its head, however it
/// trickles.
pub const BODY_DEADLINE: Duration = Duration::from_secs(30);
/// A client that takes none of an answer (or a refusal) for this long is
/// dropped.
pub const WRITE_IDLE: Duration = Duration::from_secs(30);
/// The most connections at once, whatever their phase.
pub const MAX_CONNECTIONS: usize = 512;
/// The most requests relayed to tiny_http at once.
pub const MAX_RELAYED: usize = 128;
/// The header that carries the client's address over the Unix socket.
pub const PEER_HEADER: &str = "X-Pic-Peer";

/// Raw bytes of a chunked body read at most: far more than the 64 KiB
/// of data it may hold, even in tiny chunks.
const MAX_CHUNKED_RAW: u64 = 1 << 20;
/// After an answer or a refusal, what a client is still sending is read
/// and thrown away for this long (at most [`LINGER_BYTES`]), so that
/// closing does not reset the connection before the client has read it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;
/// How often the watching thread looks whether the answer is done.
const POLL: Duration = Duration::from_secs(1);
/// Relay threads copy through small buffers; they need little stack.
const RELAY_STACK: usize = 128 * 1024;
/// Descriptors kept for everything else: logs, state, docker's pipes.
const FD_RESERVE: u64 = 64;
const MAX_ANSWER_HEAD: usize = 16 * 1024;

/// How many connections, and relayed requests among them, at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub connections: usize,
    pub relayed: usize,
}

impl Limits {
    /// How many connections one client address may hold while their
    /// requests are being read: a quarter of them.
    pub fn per_address(&self) -> usize {
        (self.connections / 4).max(1)
    }

    /// The caps that fit `open_files` descriptors: a connection waiting
    /// for its head holds one, a relayed request four (its TCP socket, the
    /// relay's end of the Unix socket and tiny_http's two).
    pub fn for_open_files(open_files: u64) -> Limits {
        let budget = open_files.saturating_sub(FD_RESERVE) as usize;
        let relayed = MAX_RELAYED.min(budget / 8).max(1);
        let connections = MAX_CONNECTIONS
            .min(budget.saturating_sub(3 * relayed))
            .max(relayed);
        Limits {
            connections,
            relayed,
        }
    }
}

/// The soft open-file limit of this process (1024 when unreadable).
fn open_file_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Max open files"))?;
            let soft = line
                .trim_start_matches("Max open files")
                .split_whitespace()
                .next()?;
            match soft {
                "unlimited" => Some(u64::MAX),
                n => n.parse().ok(),
            }
        })
        .unwrap_or(1024)
}

/// The socket tiny_http listens on: `$PIC_STATE_DIR/http/serve.sock`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("http").join("serve.sock")
}

/// Starts tiny_http on the private Unix socket: its folder mode 0700, the
/// socket 0600. A socket left by a dead `serve` is removed; one that a
/// live `serve` answers on is an error.
pub fn bind_backend(state_dir: &Path) -> Result<(tiny_http::Server, PathBuf)> {
    let path = socket_path(state_dir);
    let dir = state_dir.join("http");
    crate::files::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("restrict", &dir, e))?;
    if path.exists() {
        if UnixStream::connect(&path).is_ok() {
            return Err(Error::failed(
                "serve",
                format!(
                    "another `pic-store serve` answers on {} (same PIC_STATE_DIR)",
                    path.display()
                ),
            ));
        }
        crate::files::remove_file_if_exists(&path)?;
    }
    let server = tiny_http::Server::http_unix(&path)
        .map_err(|e| Error::failed(format!("listen on {}", path.display()), e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("restrict", &path, e))?;
    Ok((server, path))
}

/// The accept loop and what its relays share.
pub struct Front {
    listener: TcpListener,
    backend: PathBuf,
    limits: Limits,
    connections: Arc<AtomicUsize>,
    relayed: Arc<AtomicUsize>,
    /// Per client address: its connections whose request is still being
    /// read.
    reading: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Who decides on a request's head whether it may go on.
    app: Arc<App>,
}

impl Front {
    pub fn new(listener: TcpListener, backend: PathBuf, app: Arc<App>) -> Front {
        let limits = Limits::for_open_files(open_file_limit());
        log::debug!(
            "front: at most {} connections, {} relayed at once, {} being read per address",
            limits.connections,
            limits.relayed,
            limits.per_address()
        );
        Front {
            listener,
            backend,
            limits,
            connections: Arc::default(),
            relayed: Arc::default(),
            reading: Arc::default(),
            app,
        }
    }

    /// Accepts forever, one relay thread per connection.
    pub fn run(self: Arc<Self>) {
        loop {
            match self.listener.accept() {
                Ok((client, peer)) => self.dispatch(client, peer),
                Err(e) => {
                    // Out of descriptors or memory for a moment; the
                    // backlog keeps the clients meanwhile.
                    log::warn!("accept on the HTTP listener: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn dispatch(self: &Arc<Self>, client: TcpStream, peer: SocketAddr) {
        let peer = peer.ip().to_canonical();
        let Some(slot) = Slot::take(&self.connections, self.limits.connections) else {
            busy_warning(self.limits.connections, "connections");
            return refuse_at_once(client, &busy());
        };
        let Some(reading) = Reading::take(&self.reading, peer, self.limits.per_address()) else {
            busy_warning(
                self.limits.per_address(),
                "requests being read from one address",
            );
            return refuse_at_once(client, &busy());
        };
        let front = self.clone();
        let spawned = std::thread::Builder::new()
            .name("http-relay".into())
            .stack_size(RELAY_STACK)
            .spawn(move || {
                let _slot = slot;
                front.relay(client, peer, reading);
            });
        if let Err(e) = spawned {
            log::error!("cannot start a thread for a connection: {e}");
        }
    }

    /// One connection, from its head to the end of its answer.
    fn relay(&self, client: TcpStream, peer: IpAddr, reading: Reading) {
        let _ = client.set_nodelay(true);
        let _ = client.set_write_timeout(Some(WRITE_IDLE));
        let (buf, end) = match read_head(&client, Instant::now() + HEAD_DEADLINE) {
            Ok(read) => read,
            Err(None) => return,
            Err(Some(refusal)) => return refuse(&client, peer, &refusal, false),
        };
        let request = match Request::parse(&buf[..end]) {
            Ok(r) => r,
            Err(refusal) => return refuse(&client, peer, &refusal, false),
        };
        let head_only = request.head_only;
        let limit = match super::router::admit(&self.app, &request.to_req(peer)) {
            Ok(limit) => limit,
            Err(refusal) => return refuse(&client, peer, &refusal, head_only),
        };
        let mut body = match BodyReader::new(request.framing, limit) {
            Ok(b) => b,
            Err(refusal) => return refuse(&client, peer, &refusal, head_only),
        };
        if let Err(refusal) = body.feed(&buf[end..]) {
            return refuse(&client, peer, &refusal, head_only);
        }
        if request.expect_continue && !body.complete() {
            // Admitted: now, and only now, the client may send its body.
            if (&client).write_all(CONTINUE).is_err() {
                return;
            }
        }
        match read_body(&client, &mut body, Instant::now() + BODY_DEADLINE) {
            Ok(()) => {}
            Err(None) => return,
            Err(Some(refusal)) => return refuse(&client, peer, &refusal, head_only),
        }
        // Read whole: the address's reading slot is free again.
        drop(reading);
        let Some(_slot) = Slot::take(&self.relayed, self.limits.relayed) else {
            busy_warning(self.limits.relayed, "relayed requests");
            return refuse(&client, peer, &busy(), head_only);
        };
        let mut first = request.head.forwarded(peer, head_only, body.framed());
        first.extend_from_slice(&body.data);
        drop(buf);
        let backend = match self.open_backend(&first) {
            Ok(b) => b,
            Err(e) => {
                log::error!("relay to {}: {e}", self.backend.display());
                let r = Resp::error(503, "the server is not answering; retry", vec![]);
                return refuse(&client, peer, &r, head_only);
            }
        };
        drop(first);
        if let Err(r) = exchange(&client, &backend, head_only) {
            log::debug!("relay from {peer}: answered {} itself", r.status);
        }
    }

    /// A connection to tiny_http with the whole request written.
    fn open_backend(&self, first: &[u8]) -> std::io::Result<UnixStream> {
        let backend = UnixStream::connect(&self.backend)?;
        backend.set_write_timeout(Some(WRITE_IDLE))?;
        (&backend).write_all(first)?;
        Ok(backend)
    }
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Relays tiny_http's answer back (for `HEAD` its head only), then
/// closes both ends. `Err`: the relay answered itself, with that.
fn exchange(
    client: &TcpStream,
    backend: &UnixStream,
    head_only: bool,
) -> std::result::Result<(), Resp> {
    let shared = Shared::default();
    std::thread::scope(|s| {
        let watch = std::thread::Builder::new()
            .name("http-watch".into())
            .stack_size(RELAY_STACK)
            .spawn_scoped(s, || watch_client(client, backend, &shared));
        let outcome = match watch {
            Err(e) => {
                log::error!("cannot start a thread to watch a connection: {e}");
                Err(busy())
            }
            Ok(_) => match copy_answer(backend, client, head_only) {
                // tiny_http closed without a word: the request ended early.
                Ok(0) if !shared.aborted.load(Ordering::SeqCst) => {
                    Err(Resp::error(400, "the request could not be read", vec![]))
                }
                _ => Ok(()),
            },
        };
        if let Err(r) = &outcome {
            let _ = (&*client).write_all(&answer_bytes(r, head_only));
        }
        let _ = client.shutdown(Shutdown::Write);
        shared.answered.store(true, Ordering::SeqCst);
        let _ = backend.shutdown(Shutdown::Both);
        outcome
    })
}

/// Counts one connection (or relayed request) while it lives.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        if count.fetch_add(1, Ordering::SeqCst) >= max {
            count.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts one connection of a client address while its request is being
/// read. The table holds only addresses with such a connection, so it is
/// never larger than the connection cap.
struct Reading {
    table: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl Reading {
    fn take(
        table: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        peer: IpAddr,
        max: usize,
    ) -> Option<Reading> {
        let key = address_key(peer);
        let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
        let n = t.entry(key).or_insert(0);
        if *n >= max {
            if *n == 0 {
                t.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(Reading {
            table: table.clone(),
            key,
        })
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.remove(&self.key);
            }
        }
    }
}

/// The "client address" caps and throttles count: an IPv4 address, or
/// the /64 network of an IPv6 one (one host usually has a whole /64).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

fn busy() -> Resp {
    Resp::error(503, "too many connections at once; retry", vec![]).with("Retry-After", "5")
}

/// Logs a full house at most once a minute: a flood must not fill the log.
fn busy_warning(limit: usize, what: &str) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = crate::files::now_unix();
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 60
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        log::warn!("at the limit of {limit} {what}: answering 503 (logged once a minute)");
    }
}

/// What the two threads of a relayed request tell each other.
#[derive(Default)]
struct Shared {
    /// The answer is complete (or given up): the watching thread lingers,
    /// then ends.
    answered: AtomicBool,
    /// The client reset the connection: nobody wants an answer.
    aborted: AtomicBool,
}

// --- reading the head ----------------------------------------------------------

/// Reads until the end of the head: the bytes read (the head and perhaps
/// the start of the body) and where the head ends. `Err(None)`: the client
/// went away; `Err(Some(answer))`: refuse it with that answer.
fn read_head(
    client: &TcpStream,
    deadline: Instant,
) -> std::result::Result<(Vec<u8>, usize), Option<Resp>> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let mut scan = HeadScan::default();
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Err(Some(head_timeout()));
        };
        let _ = client.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        let n = match (&*client).read(&mut chunk) {
            Ok(0) => return Err(None),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(Some(head_timeout()))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Err(None),
        };
        buf.extend_from_slice(&chunk[..n]);
        match scan.feed(&buf) {
            Scan::More => {}
            Scan::Done(end) => return Ok((buf, end)),
            Scan::Refuse(r) => return Err(Some(r)),
        }
    }
}

fn head_timeout() -> Resp {
    Resp::error(
        408,
        &format!(
            "the request headers did not arrive within {} s",
            HEAD_DEADLINE.as_secs()
        ),
        vec![],
    )
}

/// Where a head being read stands.
#[derive(Debug)]
enum Scan {
    More,
    /// The head ends (after its blank line) at this offset.
    Done(usize),
    Refuse(Resp),
}

/// Finds the end of a head as its bytes arrive, looking at each byte once.
#[derive(Default)]
struct HeadScan {
    scanned: usize,
    line_ends: usize,
}

impl HeadScan {
    /// `buf` is everything read so far (it only grows).
    fn feed(&mut self, buf: &[u8]) -> Scan {
        let limit = buf.len().min(MAX_HEAD);
        while self.scanned < limit {
            let i = self.scanned;
            self.scanned += 1;
            if i >= 1 && buf[i - 1] == b'\r' && buf[i] == b'\n' {
                if i >= 3 && buf[i - 3] == b'\r' && buf[i - 2] == b'\n' {
                    return Scan::Done(i + 1);
                }
                self.line_ends += 1;
                // The request line and the headers each end in one.
                if self.line_ends > MAX_HEADER_LINES + 1 {
                    return Scan::Refuse(too_many_lines());
                }
            }
        }
        if buf.len() < MAX_HEAD {
            Scan::More
        } else if self.line_ends == 0 {
            Scan::Refuse(Resp::error(
                414,
                &format!("request line longer than {} KiB", MAX_HEAD / 1024),
                vec![],
            ))
        } else {
            Scan::Refuse(Resp::error(
                431,
                &format!("request headers larger than {} KiB", MAX_HEAD / 1024),
                vec![],
            ))
        }
    }
}

fn too_many_lines() -> Resp {
    Resp::error(
        431,
        &format!("more than {MAX_HEADER_LINES} request headers"),
        vec![],
    )
}

// --- checking and rewriting the head --------------------------------------------

/// A complete, well-formed head: the request line and the header lines.
#[derive(Debug)]
struct Head<'a> {
    request_line: &'a [u8],
    /// `(name, whole line)`.
    headers: Vec<(&'a [u8], &'a [u8])>,
}

fn bad(message: &str) -> Resp {
    Resp::error(400, message, vec![])
}

/// `tchar` of RFC 9110: what a method or a header name is made of.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks a head (ending in its blank line) as strictly as tiny_http reads
/// it or more, so both always agree on what the request says.
fn parse_head(head: &[u8]) -> std::result::Result<Head<'_>, Resp> {
    let text = head.strip_suffix(b"\r\n\r\n").unwrap_or(head);
    let mut lines = split_crlf(text);
    let request_line = lines.next().unwrap_or_default();
    check_request_line(request_line)?;
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == MAX_HEADER_LINES {
            return Err(too_many_lines());
        }
        headers.push((check_header(line)?, line));
    }
    Ok(Head {
        request_line,
        headers,
    })
}

/// The lines of `text` between CRLFs. A lone CR or LF stays in its line,
/// where the checks refuse it.
fn split_crlf(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let t = rest?;
        match find(t, b"\r\n") {
            Some(at) => {
                rest = Some(&t[at + 2..]);
                Some(&t[..at])
            }
            None => {
                rest = None;
                Some(t)
            }
        }
    })
}

fn check_request_line(line: &[u8]) -> std::result::Result<(), Resp> {
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(bad("the request line is not METHOD SP TARGET SP HTTP/1.x"));
    };
    if method.is_empty() || method.len() > 32 || !method.iter().all(|&b| is_token(b)) {
        return Err(bad("the request method is not a token"));
    }
    if target.is_empty() || !target.iter().all(|&b| b.is_ascii_graphic()) {
        return Err(bad(
            "the request target is empty or has control or non-ASCII bytes",
        ));
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Err(bad("only HTTP/1.0 and HTTP/1.1 are served"));
    }
    Ok(())
}

/// A header line's name, when the line is `name: value` with printable
/// ASCII (and tabs) only.
fn check_header(line: &[u8]) -> std::result::Result<&[u8], Resp> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| bad("a header line without a colon"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
        return Err(bad("a header name is empty or not a token"));
    }
    if !value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(bad("a header value has control or non-ASCII bytes"));
    }
    Ok(name)
}

/// Where a request's body stands as its bytes arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    /// Exactly this many bytes more (`Content-Length`).
    Exact(u64),
    /// A chunked body: at most `left` more raw bytes, ending where its
    /// framing says.
    Chunked {
        left: u64,
        framing: Chunks,
    },
    /// Chunked framing that broke (400) or ran past the cap of raw bytes
    /// (413): nothing more is taken.
    Cut(u16),
}

impl Body {
    fn chunked() -> Body {
        Body::Chunked {
            left: MAX_CHUNKED_RAW,
            framing: Chunks::Size {
                size: 0,
                digits: 0,
                ext: false,
            },
        }
    }

    /// How many of `bytes` (the next ones from the client) belong to the
    /// body; the body's data among them is added to `data`. What follows
    /// the body is not taken.
    fn take(&mut self, bytes: &[u8], data: &mut Vec<u8>) -> usize {
        match self {
            Body::None | Body::Cut(_) => 0,
            Body::Exact(left) => {
                let n = (*left).min(bytes.len() as u64) as usize;
                *left -= n as u64;
                data.extend_from_slice(&bytes[..n]);
                n
            }
            Body::Chunked { left, framing } => {
                let allowed = &bytes[..bytes.len().min(*left as usize)];
                let n = framing.feed(allowed, data);
                *left -= n as u64;
                if *framing == Chunks::Bad {
                    *self = Body::Cut(400);
                } else if *left == 0 && *framing != Chunks::Done {
                    *self = Body::Cut(413);
                }
                n
            }
        }
    }

    /// Whether the whole body has been taken (or never will be).
    fn complete(&self) -> bool {
        matches!(
            self,
            Body::None
                | Body::Cut(_)
                | Body::Exact(0)
                | Body::Chunked {
                    framing: Chunks::Done,
                    ..
                }
        )
    }
}

/// Where a chunked body's framing stands (RFC 9112 §7.1): chunk-size
/// line, data, CRLF, ..., a last chunk of size 0, trailer lines, CRLF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunks {
    /// In a chunk-size line: the size so far, its hex digits, and whether
    /// past them (extensions, to the line's end).
    Size {
        size: u64,
        digits: u8,
        ext: bool,
    },
    /// The LF ending a chunk-size line; the chunk's size.
    SizeLf(u64),
    /// Data bytes left of the chunk.
    Data(u64),
    /// The CRLF after a chunk's data: how many of its two bytes seen.
    DataEnd(u8),
    /// In the trailer section: bytes of the current line, and whether
    /// its CR has been seen.
    Trailer {
        len: usize,
        cr: bool,
    },
    Done,
    Bad,
}

/// How long a chunk-size line and a trailer line may be.
const MAX_CHUNK_LINE: usize = 4096;

impl Chunks {
    /// Follows `bytes`; returns how many belong to the body (all of them
    /// until its end), and adds the chunks' data among them to `data`.
    fn feed(&mut self, bytes: &[u8], data: &mut Vec<u8>) -> usize {
        if matches!(*self, Chunks::Done | Chunks::Bad) {
            return 0;
        }
        let mut i = 0;
        while i < bytes.len() {
            if let Chunks::Data(left) = *self {
                let n = left.min((bytes.len() - i) as u64);
                data.extend_from_slice(&bytes[i..i + n as usize]);
                i += n as usize;
                *self = if n == left {
                    Chunks::DataEnd(0)
                } else {
                    Chunks::Data(left - n)
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            *self = match *self {
                Chunks::Size {
                    size,
                    digits,
                    ext: false,
                } if b.is_ascii_hexdigit() => {
                    if digits >= 15 {
                        Chunks::Bad
                    } else {
                        Chunks::Size {
                            size: size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0)),
                            digits: digits + 1,
                            ext: false,
                        }
                    }
                }
                Chunks::Size { size, digits, .. } if digits > 0 && b == b'\r' => {
                    Chunks::SizeLf(size)
                }
                Chunks::Size { size, digits, .. } if digits > 0 && b != b'\n' => Chunks::Size {
                    size,
                    digits,
                    ext: true,
                },
                Chunks::SizeLf(0) if b == b'\n' => Chunks::Trailer { len: 0, cr: false },
                Chunks::SizeLf(n) if b == b'\n' => Chunks::Data(n),
                Chunks::DataEnd(0) if b == b'\r' => Chunks::DataEnd(1),
                Chunks::DataEnd(1) if b == b'\n' => Chunks::Size {
                    size: 0,
                    digits: 0,
                    ext: false,
                },
                Chunks::Trailer { len: 0, cr: true } if b == b'\n' => Chunks::Done,
                Chunks::Trailer { cr: true, .. } if b == b'\n' => {
                    Chunks::Trailer { len: 0, cr: false }
                }
                Chunks::Trailer { len, cr: false } if b == b'\r' => {
                    Chunks::Trailer { len, cr: true }
                }
                Chunks::Trailer { len, cr: false } if b != b'\n' && len < MAX_CHUNK_LINE => {
                    Chunks::Trailer {
                        len: len + 1,
                        cr: false,
                    }
                }
                _ => Chunks::Bad,
            };
            if matches!(*self, Chunks::Done | Chunks::Bad) {
                return i;
            }
        }
        i
    }
}

impl Head<'_> {
    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(n, line)| line[n.len() + 1..].trim_ascii())
            .collect()
    }

    /// The body's framing; refuses what tiny_http could read otherwise
    /// than a proxy in front of it would, and bodies over the limit.
    fn body(&self) -> std::result::Result<Body, Resp> {
        let lengths = self.values("Content-Length");
        let encodings = self.values("Transfer-Encoding");
        match (&lengths[..], &encodings[..]) {
            ([], []) => Ok(Body::None),
            ([_, _, ..], _) => Err(bad("more than one Content-Length header")),
            (_, [_, _, ..]) => Err(bad("more than one Transfer-Encoding header")),
            ([_], [_]) => Err(bad("both Content-Length and Transfer-Encoding")),
            ([], [coding]) if coding.eq_ignore_ascii_case(b"chunked") => Ok(Body::chunked()),
            ([], [_]) => Err(Resp::error(
                501,
                "only the chunked transfer coding is understood",
                vec![],
            )),
            ([length], []) => {
                let n = std::str::from_utf8(length)
                    .ok()
                    .filter(|s| {
                        !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit())
                    })
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| bad("Content-Length is not a number"))?;
                if n > super::MAX_BODY as u64 {
                    return Err(super::too_large());
                }
                Ok(Body::Exact(n))
            }
        }
    }

    /// The head as tiny_http gets it: `HEAD` as `GET` when `as_get`; the
    /// client's `X-Pic-Peer`, `Connection`, `Expect` and body framing
    /// headers replaced by the relay's own (`Content-Length` of the body
    /// read, when `body_len` is given).
    fn forwarded(&self, peer: IpAddr, as_get: bool, body_len: Option<usize>) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_HEAD / 4);
        match self.request_line.strip_prefix(b"HEAD ") {
            Some(rest) if as_get => {
                out.extend_from_slice(b"GET ");
                out.extend_from_slice(rest);
            }
            _ => out.extend_from_slice(self.request_line),
        }
        out.extend_from_slice(b"\r\n");
        for (name, line) in &self.headers {
            let replaced = [
                PEER_HEADER.as_bytes(),
                b"Connection",
                b"Expect",
                b"Transfer-Encoding",
                b"Content-Length",
            ];
            if replaced.iter().any(|r| name.eq_ignore_ascii_case(r)) {
                continue;
            }
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(n) = body_len {
            out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes());
        }
        out.extend_from_slice(
            format!("Connection: close\r\n{PEER_HEADER}: {peer}\r\n\r\n").as_bytes(),
        );
        out
    }
}

/// A checked head with what the relay needs to know of it.
#[derive(Debug)]
struct Request<'a> {
    head: Head<'a>,
    framing: Body,
    /// `Expect: 100-continue` (the only expectation understood).
    expect_continue: bool,
    /// A `HEAD` request: answered as `GET`, without the body.
    head_only: bool,
}

impl<'a> Request<'a> {
    fn parse(bytes: &'a [u8]) -> std::result::Result<Request<'a>, Resp> {
        let head = parse_head(bytes)?;
        let framing = head.body()?;
        let expect_continue = match &head.values("Expect")[..] {
            [] => false,
            [v] if v.eq_ignore_ascii_case(b"100-continue") => true,
            _ => {
                return Err(Resp::error(
                    417,
                    "only Expect: 100-continue is understood",
                    vec![],
                ))
            }
        };
        let head_only = head.request_line.starts_with(b"HEAD ");
        Ok(Request {
            head,
            framing,
            expect_continue,
            head_only,
        })
    }

    /// The request as the router's admission check sees it: no body yet,
    /// and `HEAD` as `GET`. (The head is ASCII: [`parse_head`] checked.)
    fn to_req(&self, peer: IpAddr) -> Req {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let mut words = self.head.request_line.split(|&b| b == b' ');
        let method = words.next().unwrap_or_default();
        let target = text(words.next().unwrap_or_default());
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        Req {
            method: if self.head_only {
                "GET".into()
            } else {
                text(method)
            },
            path: path.to_string(),
            query: query.to_string(),
            headers: self
                .head
                .headers
                .iter()
                .filter(|(name, _)| !name.eq_ignore_ascii_case(PEER_HEADER.as_bytes()))
                .map(|(name, line)| (text(name), text(line[name.len() + 1..].trim_ascii())))
                .collect(),
            body: Vec::new(),
            remote: Some(peer),
        }
    }
}

/// A body being read: its framing, its data so far, and the most data
/// the admitted request may have.
struct BodyReader {
    framing: Body,
    had_body: bool,
    data: Vec<u8>,
    limit: usize,
}

impl BodyReader {
    /// Refuses at once a `Content-Length` over `limit`.
    fn new(framing: Body, limit: usize) -> std::result::Result<BodyReader, Resp> {
        if let Body::Exact(n) = framing {
            if n > limit as u64 {
                return Err(too_large(limit));
            }
        }
        Ok(BodyReader {
            framing,
            had_body: framing != Body::None,
            data: Vec::new(),
            limit,
        })
    }

    /// Takes the next bytes from the client (what follows the body is
    /// thrown away).
    fn feed(&mut self, bytes: &[u8]) -> std::result::Result<(), Resp> {
        self.framing.take(bytes, &mut self.data);
        match self.framing {
            Body::Cut(413) => Err(too_large(self.limit)),
            Body::Cut(_) => Err(bad("the chunked body is malformed")),
            _ if self.data.len() > self.limit => Err(too_large(self.limit)),
            _ => Ok(()),
        }
    }

    fn complete(&self) -> bool {
        self.framing.complete()
    }

    /// The client stopped sending before the body was whole.
    fn ended_early(&self) -> Resp {
        match self.framing {
            Body::Chunked { .. } => bad("the request body ended before its last chunk"),
            _ => bad("the request body ended before its declared length"),
        }
    }

    /// The `Content-Length` to forward: the data's, if there was a body.
    fn framed(&self) -> Option<usize> {
        self.had_body.then_some(self.data.len())
    }
}

fn too_large(limit: usize) -> Resp {
    if limit == 0 {
        return Resp::error(413, "this request takes no body", vec![]);
    }
    Resp::error(
        413,
        &format!("request body larger than {} KiB", limit.div_ceil(1024)),
        vec![],
    )
}

/// Reads the rest of a body until it is whole. `Err(None)`: the client
/// went away; `Err(Some(answer))`: refuse it with that.
fn read_body(
    client: &TcpStream,
    body: &mut BodyReader,
    deadline: Instant,
) -> std::result::Result<(), Option<Resp>> {
    let mut chunk = [0u8; 8192];
    while !body.complete() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Err(Some(body_timeout()));
        };
        let _ = client.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match (&*client).read(&mut chunk) {
            Ok(0) => return Err(Some(body.ended_early())),
            Ok(n) => body.feed(&chunk[..n]).map_err(Some)?,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(Some(body_timeout()))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(None),
        }
    }
    Ok(())
}

fn body_timeout() -> Resp {
    Resp::error(
        408,
        &format!(
            "the request body did not arrive within {} s",
            BODY_DEADLINE.as_secs()
        ),
        vec![],
    )
}

/// What the relay makes of the bytes a client sends.
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    /// Refused with this status; nothing reached tiny_http.
    Refused(u16),
    /// The head was complete but the client stopped sending (a half-close
    /// after these bytes) before the end of the head or the body.
    Incomplete(u16),
    /// The request tiny_http gets, and whether `100 Continue` was sent
    /// first.
    Forwarded { continued: bool, bytes: Vec<u8> },
}

/// The relay's reading of one request, without sockets, for the fuzz
/// target and the unit tests: `input` arrives in pieces of `piece` bytes
/// and then the client half-closes; `admit` stands in for the router's
/// admission (`Ok(body limit)` or a refusal's status). The live relay
/// runs the same steps over a socket.
pub fn relay_bytes(
    input: &[u8],
    piece: usize,
    peer: IpAddr,
    admit: impl FnOnce(&Req) -> std::result::Result<usize, u16>,
) -> Relayed {
    let piece = piece.max(1);
    let mut scan = HeadScan::default();
    let mut end = None;
    let mut seen = 0;
    while seen < input.len() {
        seen = (seen + piece).min(input.len());
        match scan.feed(&input[..seen]) {
            Scan::More => {}
            Scan::Done(e) => {
                end = Some(e);
                break;
            }
            Scan::Refuse(r) => return Relayed::Refused(r.status),
        }
    }
    let Some(end) = end else {
        // The client closed before its head ended: nothing is answered.
        return Relayed::Incomplete(0);
    };
    let request = match Request::parse(&input[..end]) {
        Ok(r) => r,
        Err(r) => return Relayed::Refused(r.status),
    };
    let limit = match admit(&request.to_req(peer)) {
        Ok(limit) => limit,
        Err(status) => return Relayed::Refused(status),
    };
    let mut body = match BodyReader::new(request.framing, limit) {
        Ok(b) => b,
        Err(r) => return Relayed::Refused(r.status),
    };
    // What arrived with the head, then the rest piece by piece.
    let mut at = seen;
    if let Err(r) = body.feed(&input[end..at]) {
        return Relayed::Refused(r.status);
    }
    let continued = request.expect_continue && !body.complete();
    while !body.complete() {
        if at == input.len() {
            return Relayed::Incomplete(body.ended_early().status);
        }
        let next = (at + piece).min(input.len());
        if let Err(r) = body.feed(&input[at..next]) {
            return Relayed::Refused(r.status);
        }
        at = next;
    }
    let mut bytes = request
        .head
        .forwarded(peer, request.head_only, body.framed());
    bytes.extend_from_slice(&body.data);
    Relayed::Forwarded { continued, bytes }
}

/// The client address a relayed request carries: the one `X-Pic-Peer`
/// header the relay wrote. Only for requests that came over the Unix
/// socket — from TCP the header is the client's own invention.
pub fn relayed_peer<'a>(mut values: impl Iterator<Item = &'a str>) -> Option<IpAddr> {
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.trim().parse().ok()
}

// --- relaying ------------------------------------------------------------------

/// Watches the client until the answer is done, then lingers: a reset
/// cuts the backend off (nobody wants the answer); a half-close does not
/// (the client may still read it). What a client sends beyond its request
/// is thrown away.
fn watch_client(client: &TcpStream, backend: &UnixStream, shared: &Shared) {
    let mut buf = [0u8; 8192];
    let mut linger: Option<Instant> = None;
    let mut thrown = 0;
    loop {
        if linger.is_none() && shared.answered.load(Ordering::SeqCst) {
            linger = Some(Instant::now() + LINGER);
        }
        let timeout = match linger {
            Some(until) => match until.checked_duration_since(Instant::now()) {
                Some(left) => left.max(Duration::from_millis(1)),
                None => return,
            },
            None => POLL,
        };
        let _ = client.set_read_timeout(Some(timeout));
        match (&*client).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                thrown += n;
                if thrown > LINGER_BYTES {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if linger.is_some() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                if !shared.answered.load(Ordering::SeqCst) {
                    shared.aborted.store(true, Ordering::SeqCst);
                    let _ = backend.shutdown(Shutdown::Both);
                }
                return;
            }
        }
    }
}

/// Copies tiny_http's answer to the client until tiny_http closes, with
/// `Connection: close` in its head; with `head_only` (a `HEAD` request)
/// its head only. The bytes sent, or an error when the client stopped
/// taking them.
fn copy_answer(
    backend: &UnixStream,
    client: &TcpStream,
    head_only: bool,
) -> std::io::Result<usize> {
    let mut buf = [0u8; 8192];
    let mut head: Vec<u8> = Vec::new();
    let mut in_head = true;
    let mut sent = 0;
    let mut send = |bytes: &[u8]| -> std::io::Result<()> {
        (&*client).write_all(bytes)?;
        sent += bytes.len();
        Ok(())
    };
    loop {
        let n = match (&*backend).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !in_head {
            send(&buf[..n])?;
            continue;
        }
        head.extend_from_slice(&buf[..n]);
        // Interim answers (100 Continue) come before the final one.
        while in_head {
            match find(&head, b"\r\n\r\n") {
                Some(at) => {
                    let rest = head.split_off(at + 4);
                    let interim = head.get(9) == Some(&b'1');
                    if interim {
                        send(&head)?;
                    } else {
                        send(&close_answer_head(&head))?;
                        if head_only {
                            return Ok(sent);
                        }
                        in_head = false;
                    }
                    head = rest;
                }
                None if head.len() > MAX_ANSWER_HEAD => in_head = false,
                None => break,
            }
        }
        if !in_head && !head.is_empty() {
            send(&head)?;
            head.clear();
        }
    }
    if !head.is_empty() {
        send(&head)?;
    }
    Ok(sent)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An answer head (ending in its blank line) with its `Connection`
/// headers replaced by `Connection: close`.
fn close_answer_head(head: &[u8]) -> Vec<u8> {
    let text = head.strip_suffix(b"\r\n\r\n").unwrap_or(head);
    let mut out = Vec::with_capacity(head.len() + 19);
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let is_connection = line.len() > 11 && line[..11].eq_ignore_ascii_case(b"connection:");
        if i > 0 && is_connection {
            continue;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

/// A whole answer written by the relay itself (its head only for `HEAD`).
fn answer_bytes(r: &Resp, head_only: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
    for (k, v) in &r.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        r.body.len()
    ));
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(&r.body);
    }
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Answers and closes, reading (and throwing away) what the client still
/// sends for a moment so that the answer is not lost to a reset.
fn refuse(client: &TcpStream, peer: IpAddr, r: &Resp, head_only: bool) {
    log::debug!("refused a request from {peer}: {}", r.status);
    if (&*client).write_all(&answer_bytes(r, head_only)).is_err() {
        return;
    }
    let _ = client.shutdown(Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut thrown = 0;
    let mut buf = [0u8; 8192];
    while thrown <= LINGER_BYTES {
        let Some(left) = until.checked_duration_since(Instant::now()) else {
            return;
        };
        let _ = client.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match (&*client).read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => thrown += n,
        }
    }
}

/// A refusal from the accept loop, which must never wait on a client.
fn refuse_at_once(client: TcpStream, r: &Resp) {
    let _ = client.set_nonblocking(true);
    let _ = (&client).write(&answer_bytes(r, false));
    let _ = client.shutdown(Shutdown::Write);
    // Take what already arrived, so that closing does not reset.
    let _ = (&client).read(&mut [0u8; 4096]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(bytes: &[u8]) -> Scan {
        let mut s = HeadScan::default();
        let mut buf = Vec::new();
        // One byte at a time: the scan must not depend on read sizes.
        for &b in bytes {
            buf.push(b);
            match s.feed(&buf) {
                Scan::More => {}
                other => return other,
            }
        }
        Scan::More
    }

    fn status(s: Scan) -> u16 {
        match s {
            Scan::Refuse(r) => r.status,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn the_scan_finds_the_end_and_refuses_what_is_too_big() {
        let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        assert!(matches!(scan_all(req), Scan::Done(27)));
        assert!(matches!(
            scan_all(b"GET / HTTP/1.1\r\n\r\n"),
            Scan::Done(18)
        ));
        assert!(matches!(
            scan_all(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Scan::More
        ));
        let long_line = format!("GET /{} HTTP/1.1", "a".repeat(MAX_HEAD));
        assert_eq!(status(scan_all(long_line.as_bytes())), 414);
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(status(scan_all(big.as_bytes())), 431);
        let many: String = (0..=MAX_HEADER_LINES)
            .map(|i| format!("X{i}: v\r\n"))
            .collect();
        let many = format!("GET / HTTP/1.1\r\n{many}");
        assert_eq!(status(scan_all(many.as_bytes())), 431);
        // Exactly the limit of lines is a head.
        let most: String = (0..MAX_HEADER_LINES)
            .map(|i| format!("X{i}: v\r\n"))
            .collect();
        let most = format!("GET / HTTP/1.1\r\n{most}\r\n");
        assert!(matches!(scan_all(most.as_bytes()), Scan::Done(n) if n == most.len()));
        assert_eq!(
            parse_head(most.as_bytes()).unwrap().headers.len(),
            MAX_HEADER_LINES
        );
        // A head of exactly MAX_HEAD bytes is accepted, one more is not.
        let pad = MAX_HEAD - "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
        let exact = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(pad));
        assert!(matches!(scan_all(exact.as_bytes()), Scan::Done(MAX_HEAD)));
        let over = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(pad + 1));
        assert_eq!(status(scan_all(over.as_bytes())), 431);
    }

    fn parse_status(head: &str) -> u16 {
        match parse_head(head.as_bytes()).and_then(|h| h.body()) {
            Ok(_) => 0,
            Err(r) => r.status,
        }
    }

    #[test]
    fn heads_must_be_well_formed() {
        for ok in [
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "BREW /x?y=%zz HTTP/1.0\r\n\r\n",
            "PUT /a HTTP/1.1\r\nContent-Length: 65536\r\nX-T:\tv \r\n\r\n",
            "PUT /a HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n",
        ] {
            assert_eq!(parse_status(ok), 0, "{ok:?}");
        }
        for (bad, status) in [
            ("GET /  HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1 x\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\n\r\n", 400),
            (" GET / HTTP/1.1\r\n\r\n", 400),
            ("G(T / HTTP/1.1\r\n\r\n", 400),
            ("GET /\u{0}x HTTP/1.1\r\n\r\n", 400),
            ("GET /é HTTP/1.1\r\n\r\n", 400),
            ("\u{16}\u{3}garbage\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nX-Pic-Peer : 1.2.3.4\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n folded: x\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nX: a\nY: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nX: caf\u{e9}\r\n\r\n", 400),
            (
                "PUT / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n",
                400,
            ),
            ("PUT / HTTP/1.1\r\nContent-Length: +2\r\n\r\n", 400),
            (
                "PUT / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            ("PUT / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            ("PUT / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n", 413),
            (
                "PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                400,
            ),
        ] {
            assert_eq!(parse_status(bad), status, "{bad:?}");
        }
    }

    #[test]
    fn the_forwarded_head_carries_the_relays_peer_and_close() {
        let raw = "POST /api/x HTTP/1.1\r\nHost: a\r\nX-Pic-Peer: 1.2.3.4\r\nconnection: keep-alive\r\nx-pic-peer: 5.6.7.8\r\nContent-Length: 2\r\n\r\n";
        let head = parse_head(raw.as_bytes()).unwrap();
        assert_eq!(head.body().unwrap(), Body::Exact(2));
        let out =
            String::from_utf8(head.forwarded("10.0.0.7".parse().unwrap(), true, Some(2))).unwrap();
        assert_eq!(
            out,
            "POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\nX-Pic-Peer: 10.0.0.7\r\n\r\n"
        );
        assert_eq!(
            relayed_peer(["10.0.0.7"].into_iter()),
            Some("10.0.0.7".parse().unwrap())
        );
        assert_eq!(relayed_peer(["1.1.1.1", "2.2.2.2"].into_iter()), None);
        assert_eq!(relayed_peer(["nope"].into_iter()), None);
        assert_eq!(relayed_peer([].into_iter()), None);
    }

    #[test]
    fn bodies_end_where_their_framing_says() {
        let mut data = Vec::new();
        let mut b = Body::Exact(10);
        assert_eq!(b.take(b"abcd", &mut data), 4);
        assert!(!b.complete());
        assert_eq!(b.take(b"efghijGET / HTTP/1.1", &mut data), 6);
        assert!(b.complete());
        assert_eq!(data, b"abcdefghij");
        assert_eq!(Body::None.take(b"x", &mut data), 0);

        let whole = b"5\r\nhello\r\n1A;ext=1\r\n01234567890123456789012345\r\n0\r\nX-T: 1\r\n\r\n";
        for split in [1, 3, 7, 20, whole.len()] {
            let mut b = Body::chunked();
            let mut taken = 0;
            let mut data = Vec::new();
            // What follows the body is not taken.
            let then = [&whole[..], b"GET / HTTP/1.1\r\n\r\n"].concat();
            for piece in then.chunks(split) {
                taken += b.take(piece, &mut data);
            }
            assert_eq!(taken, whole.len(), "split {split}");
            assert!(b.complete(), "split {split}: {b:?}");
            assert_eq!(data, b"hello01234567890123456789012345", "split {split}");
        }
        let mut b = Body::chunked();
        assert_eq!(b.take(b"0\r\n\r\nGET / HTTP/1.1\r\n", &mut data), 5);
        assert!(b.complete());
        for broken in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"1\n",
            b"11111111111111111\r\n",
        ] {
            let mut b = Body::chunked();
            b.take(broken, &mut data);
            assert_eq!(b, Body::Cut(400), "{:?}", String::from_utf8_lossy(broken));
        }
        // Past the cap of raw bytes, the rest is cut off.
        let mut b = Body::chunked();
        let mut sent = 0;
        let chunk = [b"8000\r\n".as_slice(), &[b' '; 0x8000], b"\r\n"].concat();
        while b != Body::Cut(413) {
            sent += b.take(&chunk, &mut data);
            data.clear();
        }
        assert_eq!(sent as u64, MAX_CHUNKED_RAW);
    }

    #[test]
    fn answers_close_the_connection() {
        let head = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(
            close_answer_head(head),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n".to_vec()
        );
        let own = String::from_utf8(answer_bytes(&too_many_lines(), false)).unwrap();
        assert!(
            own.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{own}"
        );
        assert!(own.contains("\r\nConnection: close\r\n\r\n{"), "{own}");
        let (head, body) = own.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }

    fn peer() -> IpAddr {
        "10.0.0.7".parse().unwrap()
    }

    /// The relay of `input` with an admission that takes bodies up to
    /// 64 bytes, except on `/refused` (401).
    fn relay_of(input: &str, piece: usize) -> Relayed {
        relay_bytes(input.as_bytes(), piece, peer(), |req| {
            if req.path == "/refused" {
                Err(401)
            } else {
                Ok(64)
            }
        })
    }

    #[test]
    fn bodies_are_read_whole_after_admission_and_forwarded_with_their_length() {
        for piece in [1, 2, 5, 1000] {
            let chunked = relay_of(
                "PUT /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nextra",
                piece,
            );
            assert_eq!(
                chunked,
                Relayed::Forwarded {
                    // Not when the whole body came with the head.
                    continued: piece < 100,
                    bytes: b"PUT /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\nX-Pic-Peer: 10.0.0.7\r\n\r\nabcde".to_vec()
                },
                "piece {piece}"
            );
            // Short bodies and a missing last chunk, then a half-close: 400.
            for short in [
                "PUT /a HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
                "PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
                "PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
            ] {
                assert_eq!(
                    relay_of(short, piece),
                    Relayed::Incomplete(400),
                    "{short:?}"
                );
            }
        }
        // Refused on the head: no 100 Continue, no body byte looked at.
        assert_eq!(
            relay_of(
                "PUT /refused HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
                1
            ),
            Relayed::Refused(401)
        );
        // Over the admitted limit: announced, or as chunks arrive.
        assert_eq!(
            relay_of("PUT /a HTTP/1.1\r\nContent-Length: 65\r\n\r\n", 1),
            Relayed::Refused(413)
        );
        let big = format!(
            "PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n{}\r\n0\r\n\r\n",
            "x".repeat(65)
        );
        assert_eq!(relay_of(&big, 7), Relayed::Refused(413));
        assert_eq!(
            relay_of("PUT /a HTTP/1.1\r\nExpect: later\r\n\r\n", 1),
            Relayed::Refused(417)
        );
        // HEAD goes on as GET; no body is no Content-Length.
        assert_eq!(
            relay_of("HEAD /a?b HTTP/1.1\r\nHost: a\r\n\r\n", 3),
            Relayed::Forwarded {
                continued: false,
                bytes: b"GET /a?b HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Pic-Peer: 10.0.0.7\r\n\r\n".to_vec()
            }
        );
        assert_eq!(relay_of("GET / HTTP/1.1\r\n", 1), Relayed::Incomplete(0));
    }

    #[test]
    fn admission_sees_the_method_as_sent_and_head_as_get() {
        let mut seen = Vec::new();
        for input in [
            "get /a HTTP/1.1\r\n\r\n",
            "HEAD /a?x=1 HTTP/1.1\r\nX-Pic-Peer: 1.1.1.1\r\nHost:  h \r\n\r\n",
        ] {
            relay_bytes(input.as_bytes(), 100, peer(), |req| {
                seen.push(req.clone());
                Err(405)
            });
        }
        assert_eq!(seen[0].method, "get");
        assert_eq!(seen[1].method, "GET");
        assert_eq!(seen[1].query, "x=1");
        assert_eq!(seen[1].headers, vec![("Host".to_string(), "h".to_string())]);
        assert_eq!(seen[1].remote, Some(peer()));
    }

    #[test]
    fn one_address_holds_a_quarter_of_the_reading_slots() {
        let table = Arc::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let held: Vec<Reading> = (0..3).filter_map(|_| Reading::take(&table, a, 3)).collect();
        assert_eq!(held.len(), 3);
        assert!(Reading::take(&table, a, 3).is_none());
        assert!(Reading::take(&table, "127.0.0.1".parse().unwrap(), 3).is_some());
        drop(held);
        assert!(table.lock().unwrap().is_empty());
        assert_eq!(Limits::for_open_files(1024).per_address(), 128);
        // An IPv6 host is its /64.
        assert_eq!(
            address_key("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            address_key("::ffff:10.1.2.3".parse().unwrap()),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn limits_fit_the_descriptors() {
        let l = Limits::for_open_files(1024);
        assert_eq!(
            l,
            Limits {
                connections: 512,
                relayed: 120
            }
        );
        // Heads waiting hold one descriptor, relayed requests four.
        assert!((l.connections - l.relayed) + 4 * l.relayed + FD_RESERVE as usize <= 1024);
        assert_eq!(
            Limits::for_open_files(1 << 20),
            Limits {
                connections: MAX_CONNECTIONS,
                relayed: MAX_RELAYED
            }
        );
        let tiny = Limits::for_open_files(100);
        assert!(tiny.relayed >= 1 && tiny.connections >= tiny.relayed);
    }
}
