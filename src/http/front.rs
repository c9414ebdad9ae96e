//! The front door of `serve`: the only code that reads from the network.
//! tiny_http reads a request's head with no limit on its size or on how
//! long it takes, so it listens on a private Unix socket instead, and this
//! module accepts on `PIC_LISTEN`, reads each request's head under hard
//! limits, and relays the request to tiny_http. Tests: `tests/http_api.rs`
//! (the relay's limits and leaks) and `tests/hostile_http.rs`.
//!
//! Per connection, a relay thread reads the head — at most [`MAX_HEAD`]
//! bytes and [`MAX_HEADER_LINES`] header lines, within [`HEAD_DEADLINE`]
//! of the accept, shaped `METHOD SP TARGET SP HTTP/1.x` — or answers 4xx
//! and closes. It refuses an announced body over [`super::MAX_BODY`] (413)
//! and bodies whose framing two readers could disagree on. Then it opens
//! the Unix socket and writes the head with every client-sent
//! `X-Pic-Peer` removed and `X-Pic-Peer: <client address>` added (the
//! router trusts that header only from the Unix socket), and with
//! `Connection: close`. A second thread copies the body (idle limit
//! [`BODY_IDLE`], total [`BODY_DEADLINE`]) and afterwards watches the
//! client: a reset ends the relay, while a client that only closes its
//! sending side still gets its answer. The relay thread copies the
//! answer back, with no time limit on waiting for it (an install through
//! the JSON API answers when it ends) but [`WRITE_IDLE`] for a client
//! that stops reading it.
//!
//! One request per connection: the answer carries `Connection: close` and
//! the connection closes after it, because a second request on the same
//! connection would reach tiny_http without its head being checked.
//! Browsers and HTTP clients open a new connection for the next request.
//!
//! Bounds: [`Limits`] caps the connections (one thread and one descriptor
//! each while the head arrives) and, within them, the relayed requests
//! (two threads, four descriptors and a tiny_http thread each), sized to
//! the process's open-file limit. Over either cap the client gets 503.

use super::router::Resp;
use crate::error::{Error, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest request head (request line and headers), in bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header lines a request may have.
pub const MAX_HEADER_LINES: usize = 100;
/// The whole head must arrive within this time of the accept (slowloris).
pub const HEAD_DEADLINE: Duration = Duration::from_secs(10);
/// A body that stops arriving for this long is given up.
pub const BODY_IDLE: Duration = Duration::from_secs(30);
/// A body must arrive within this time of its head, however it trickles.
pub const BODY_DEADLINE: Duration = Duration::from_secs(120);
/// A client that takes none of an answer (or a refusal) for this long is
/// dropped.
pub const WRITE_IDLE: Duration = Duration::from_secs(30);
/// The most connections at once, whatever their phase.
pub const MAX_CONNECTIONS: usize = 512;
/// The most requests relayed to tiny_http at once.
pub const MAX_RELAYED: usize = 128;
/// The header that carries the client's address over the Unix socket.
pub const PEER_HEADER: &str = "X-Pic-Peer";

/// Raw bytes of a chunked body relayed at most: far more than the
/// 64 KiB tiny_http reads before answering 413, even in tiny chunks.
const MAX_CHUNKED_RAW: u64 = 1 << 20;
/// After an answer or a refusal, what a client is still sending is read
/// and thrown away for this long (at most [`LINGER_BYTES`]), so that
/// closing does not reset the connection before the client has read it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;
/// How often the body thread looks whether the answer is done.
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
}

impl Front {
    pub fn new(listener: TcpListener, backend: PathBuf) -> Front {
        let limits = Limits::for_open_files(open_file_limit());
        log::debug!(
            "front: at most {} connections, {} relayed at once",
            limits.connections,
            limits.relayed
        );
        Front {
            listener,
            backend,
            limits,
            connections: Arc::default(),
            relayed: Arc::default(),
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
        let Some(slot) = Slot::take(&self.connections, self.limits.connections) else {
            busy_warning(self.limits.connections, "connections");
            return refuse_at_once(client, &busy());
        };
        let front = self.clone();
        let spawned = std::thread::Builder::new()
            .name("http-relay".into())
            .stack_size(RELAY_STACK)
            .spawn(move || {
                let _slot = slot;
                front.relay(client, peer.ip().to_canonical());
            });
        if let Err(e) = spawned {
            log::error!("cannot start a thread for a connection: {e}");
        }
    }

    /// One connection, from its head to the end of its answer.
    fn relay(&self, client: TcpStream, peer: IpAddr) {
        let _ = client.set_nodelay(true);
        let _ = client.set_write_timeout(Some(WRITE_IDLE));
        let (buf, end) = match read_head(&client, Instant::now() + HEAD_DEADLINE) {
            Ok(read) => read,
            Err(None) => return,
            Err(Some(refusal)) => return refuse(&client, peer, &refusal),
        };
        let (head, mut body) = match parse_head(&buf[..end]).and_then(|h| Ok((h.body()?, h))) {
            Ok((body, head)) => (head, body),
            Err(refusal) => return refuse(&client, peer, &refusal),
        };
        let Some(_slot) = Slot::take(&self.relayed, self.limits.relayed) else {
            busy_warning(self.limits.relayed, "relayed requests");
            return refuse(&client, peer, &busy());
        };
        let mut first = head.forwarded(peer);
        let early = body.take(&buf[end..]);
        first.extend_from_slice(&buf[end..end + early]);
        let backend = match self.open_backend(&first) {
            Ok(b) => b,
            Err(e) => {
                log::error!("relay to {}: {e}", self.backend.display());
                let r = Resp::error(503, "the server is not answering; retry", vec![]);
                return refuse(&client, peer, &r);
            }
        };
        if let Err(r) = exchange(&client, &backend, body) {
            log::debug!("relay from {peer}: answered {} itself", r.status);
        }
    }

    /// A connection to tiny_http with the request's head (and the start
    /// of its body) written.
    fn open_backend(&self, first: &[u8]) -> std::io::Result<UnixStream> {
        let backend = UnixStream::connect(&self.backend)?;
        backend.set_write_timeout(Some(BODY_IDLE))?;
        (&backend).write_all(first)?;
        Ok(backend)
    }
}

/// Relays the rest of the body to tiny_http and its answer back, then
/// closes both ends. `Err`: the relay answered itself, with that.
fn exchange(client: &TcpStream, backend: &UnixStream, body: Body) -> std::result::Result<(), Resp> {
    let shared = Shared::default();
    std::thread::scope(|s| {
        let pump = std::thread::Builder::new()
            .name("http-body".into())
            .stack_size(RELAY_STACK)
            .spawn_scoped(s, || pump_client(client, backend, body, &shared));
        let outcome = match pump {
            Err(e) => {
                log::error!("cannot start a thread for a request body: {e}");
                Err(busy())
            }
            Ok(_) => match copy_answer(backend, client) {
                Ok(0) if shared.timed_out.load(Ordering::SeqCst) => Err(Resp::error(
                    408,
                    "the request body stopped arriving",
                    vec![],
                )),
                // tiny_http closed without a word: the request ended early.
                Ok(0) if !shared.aborted.load(Ordering::SeqCst) => {
                    Err(Resp::error(400, "the request could not be read", vec![]))
                }
                _ => Ok(()),
            },
        };
        if let Err(r) = &outcome {
            let _ = (&*client).write_all(&answer_bytes(r));
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
    /// The answer is complete (or given up): the body thread lingers, then ends.
    answered: AtomicBool,
    /// The body stopped arriving: the answer is a 408.
    timed_out: AtomicBool,
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

/// How much of a request's body the relay passes on.
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
    /// Chunked framing that broke or ran past the cap: nothing more is
    /// passed on, and tiny_http sees the body end early (400).
    Cut,
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
    /// body; what follows the body is not passed on.
    fn take(&mut self, bytes: &[u8]) -> usize {
        match self {
            Body::None | Body::Cut => 0,
            Body::Exact(left) => {
                let n = (*left).min(bytes.len() as u64);
                *left -= n;
                n as usize
            }
            Body::Chunked { left, framing } => {
                let allowed = &bytes[..bytes.len().min(*left as usize)];
                let n = framing.feed(allowed);
                *left -= n as u64;
                if *framing == Chunks::Bad || (*left == 0 && *framing != Chunks::Done) {
                    *self = Body::Cut;
                }
                n
            }
        }
    }

    /// Whether the whole body has been passed on (or never will be).
    fn complete(&self) -> bool {
        matches!(
            self,
            Body::None
                | Body::Cut
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
    /// until its end).
    fn feed(&mut self, bytes: &[u8]) -> usize {
        if matches!(*self, Chunks::Done | Chunks::Bad) {
            return 0;
        }
        let mut i = 0;
        while i < bytes.len() {
            if let Chunks::Data(left) = *self {
                let n = left.min((bytes.len() - i) as u64);
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

    /// The head as tiny_http gets it: the client's `X-Pic-Peer` and
    /// `Connection` headers replaced by the relay's own.
    fn forwarded(&self, peer: IpAddr) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_HEAD / 4);
        out.extend_from_slice(self.request_line);
        out.extend_from_slice(b"\r\n");
        for (name, line) in &self.headers {
            if name.eq_ignore_ascii_case(PEER_HEADER.as_bytes())
                || name.eq_ignore_ascii_case(b"Connection")
            {
                continue;
            }
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            format!("Connection: close\r\n{PEER_HEADER}: {peer}\r\n\r\n").as_bytes(),
        );
        out
    }
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

/// Copies the body to the backend, then watches the client until the
/// answer is done, then lingers. Ends the backend's input when the
/// client's ends, and cuts the backend off when the client resets or the
/// body stalls.
fn pump_client(client: &TcpStream, backend: &UnixStream, mut body: Body, shared: &Shared) {
    let mut buf = [0u8; 8192];
    let started = Instant::now();
    let mut last_data = started;
    let mut linger: Option<(Instant, usize)> = None;
    loop {
        if linger.is_none() && shared.answered.load(Ordering::SeqCst) {
            linger = Some((Instant::now() + LINGER, 0));
        }
        let timeout = match linger {
            Some((until, _)) => match until.checked_duration_since(Instant::now()) {
                Some(left) => left.max(Duration::from_millis(1)),
                None => return,
            },
            None => POLL,
        };
        let _ = client.set_read_timeout(Some(timeout));
        match (&*client).read(&mut buf) {
            Ok(0) => {
                // The client is done sending; it may still read the answer.
                let _ = backend.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                last_data = Instant::now();
                if let Some((_, ref mut thrown)) = linger {
                    *thrown += n;
                    if *thrown > LINGER_BYTES {
                        return;
                    }
                    continue;
                }
                // Beyond the body (a second request) is thrown away.
                let take = body.take(&buf[..n]);
                if take > 0 && (&*backend).write_all(&buf[..take]).is_err() {
                    // tiny_http stopped reading: it answers (413, 503) or
                    // gave up; the answer side finishes the relay.
                    body = Body::None;
                }
                if body == Body::Cut {
                    let _ = backend.shutdown(Shutdown::Write);
                    body = Body::None;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if linger.is_some() {
                    return;
                }
                if !body.complete()
                    && (last_data.elapsed() >= BODY_IDLE || started.elapsed() >= BODY_DEADLINE)
                {
                    shared.timed_out.store(true, Ordering::SeqCst);
                    let _ = backend.shutdown(Shutdown::Both);
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
/// `Connection: close` in its head. The bytes sent, or an error when the
/// client stopped taking them.
fn copy_answer(backend: &UnixStream, client: &TcpStream) -> std::io::Result<usize> {
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

/// A whole answer written by the relay itself.
fn answer_bytes(r: &Resp) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
    for (k, v) in &r.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        r.body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(&r.body);
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Answers and closes, reading (and throwing away) what the client still
/// sends for a moment so that the answer is not lost to a reset.
fn refuse(client: &TcpStream, peer: IpAddr, r: &Resp) {
    log::debug!("refused a request from {peer}: {}", r.status);
    if (&*client).write_all(&answer_bytes(r)).is_err() {
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
    let _ = (&client).write(&answer_bytes(r));
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
        let out = String::from_utf8(head.forwarded("10.0.0.7".parse().unwrap())).unwrap();
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
        let mut b = Body::Exact(10);
        assert_eq!(b.take(b"abcd"), 4);
        assert!(!b.complete());
        assert_eq!(b.take(b"efghijGET / HTTP/1.1"), 6);
        assert!(b.complete());
        assert_eq!(Body::None.take(b"x"), 0);

        let whole = b"5\r\nhello\r\n1A;ext=1\r\n01234567890123456789012345\r\n0\r\nX-T: 1\r\n\r\n";
        for split in [1, 3, 7, 20, whole.len()] {
            let mut b = Body::chunked();
            let mut taken = 0;
            // What follows the body is not taken.
            let then = [&whole[..], b"GET / HTTP/1.1\r\n\r\n"].concat();
            for piece in then.chunks(split) {
                taken += b.take(piece);
            }
            assert_eq!(taken, whole.len(), "split {split}");
            assert!(b.complete(), "split {split}: {b:?}");
        }
        let mut b = Body::chunked();
        assert_eq!(b.take(b"0\r\n\r\nGET / HTTP/1.1\r\n"), 5);
        assert!(b.complete());
        for broken in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"1\n",
            b"11111111111111111\r\n",
        ] {
            let mut b = Body::chunked();
            b.take(broken);
            assert_eq!(b, Body::Cut, "{:?}", String::from_utf8_lossy(broken));
        }
        // Past the cap of raw bytes, the rest is cut off.
        let mut b = Body::chunked();
        let mut sent = 0;
        let chunk = [b"8000\r\n".as_slice(), &[b' '; 0x8000], b"\r\n"].concat();
        while b != Body::Cut {
            sent += b.take(&chunk);
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
        let own = String::from_utf8(answer_bytes(&too_many_lines())).unwrap();
        assert!(
            own.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{own}"
        );
        assert!(own.contains("\r\nConnection: close\r\n\r\n{"), "{own}");
        let (head, body) = own.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
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
