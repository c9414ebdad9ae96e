//! `pic-store serve` (spec §12): a blocking `tiny_http` server answered by
//! a fixed pool of worker threads, with one more thread that runs the
//! mutations in order ([`jobs`]). A long install never blocks a read.
//!
//! tiny_http never faces the network: it reads request heads without
//! limits, so it listens on a private Unix socket and [`front`] accepts
//! on `PIC_LISTEN`, checks each request's head under hard limits and
//! relays it, one request per connection, with the client's address in
//! `X-Pic-Peer` (trusted only from the Unix socket, see [`to_req`]).
//!
//! The front reader passes a request on only once it has been admitted on
//! its head and its whole body has arrived, so no slow client ever holds
//! a worker. tiny_http reads the head on a thread of its own; a body of
//! up to 1 KiB arrives with it, a longer one (at most 64 KiB, already on
//! the Unix socket) is read on a thread of its own. The request is routed
//! ([`router`]) inside `catch_unwind`. At most half the workers wait for
//! a job's result at once (see `api::run_and_wait`), so reads always have
//! one.

mod api;
pub mod auth;
pub mod forms;
pub mod front;
pub mod jobs;
pub mod msg;
mod page;
pub mod router;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::host::RealHost;
use crate::ops::{Ctx, Session};
use crate::store::StoreClient;
use msg::{Req, Resp};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Worker threads answering requests.
pub(crate) const WORKERS: usize = 8;
/// The largest request body (spec §12).
pub const MAX_BODY: usize = 64 * 1024;
/// Requests whose body is still arriving, each read on its own thread.
const MAX_BODY_READERS: usize = 64;
/// Oversized bodies announced this large are not drained (tiny_http would
/// allocate the announced size); their connection is left to the client.
const MAX_DRAIN: usize = 64 << 20;
/// At most this many threads draining refused bodies at once.
const MAX_DRAINERS: usize = 32;

/// What every request handler shares.
pub struct App {
    pub config: Arc<Config>,
    pub store: Arc<StoreClient>,
    pub token: String,
    pub allowed_hosts: Vec<String>,
    pub sessions: auth::Sessions,
    pub throttle: auth::Throttle,
    pub jobs: Arc<jobs::Jobs>,
    pub load: Load,
}

/// What the server keeps between requests besides its configuration: the
/// bounded counts of threads that wait (for a job's outcome, a body still
/// arriving, a refused body's drain) and the last `GET /api/services`
/// answer. It belongs to one server, not to the process.
#[derive(Default)]
pub struct Load {
    /// Workers waiting for a job's outcome (`api::run_and_wait`).
    pub(crate) waiting: Slots,
    body_readers: Slots,
    drainers: Slots,
    pub(crate) services: api::ServicesCache,
}

/// A count of threads doing one kind of waiting, bounded by its taker.
#[derive(Default)]
pub struct Slots(AtomicUsize);

impl Slots {
    /// Takes one of `max` slots; `false` (and nothing taken) when all are.
    pub(crate) fn take(&self, max: usize) -> bool {
        if self.0.fetch_add(1, Ordering::SeqCst) >= max {
            self.0.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Gives back a slot [`Slots::take`] took.
    pub(crate) fn give_back(&self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs the server until it cannot accept connections any more.
pub fn serve(config: &Config) -> Result<i32> {
    let token = crate::token::load_or_create(&config.state_dir)?;
    let store = Arc::new(StoreClient::from_config(config));
    settle_pending(config, &store)?;
    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|e| Error::failed(format!("listen on {}", config.listen), e))?;
    let (server, socket) = front::bind_backend(&config.state_dir)?;
    let config = Arc::new(config.clone());
    let jobs = jobs::Jobs::start(config.clone(), store.clone())?;
    // First in the queue, but not in the way of the first answer.
    jobs.submit(crate::ops::Command::Reconcile)?;
    let app = Arc::new(App {
        allowed_hosts: allowed_hosts(&config),
        config: config.clone(),
        store,
        token,
        sessions: auth::Sessions::default(),
        throttle: auth::Throttle::default(),
        jobs,
        load: Load::default(),
    });
    let front = Arc::new(front::Front::new(listener, socket, app.clone()));
    log::info!("pic-store serve: listening on http://{}", config.listen);
    log::info!(
        "admin page: run `pic-store token` for the login URL (http://{}/login?token=...)",
        config.listen
    );
    run_workers(app, Arc::new(server), front)
}

/// Settles an operation a dead process left pending, before answering.
fn settle_pending(config: &Config, store: &StoreClient) -> Result<()> {
    let mut progress = |line: &str| log::info!("settle: {line}");
    let mut ctx = Ctx {
        config,
        host: &RealHost,
        store,
        progress: &mut progress,
    };
    Session::open(&mut ctx, jobs::OP_LOCK_WAIT).map(drop)
}

/// `PIC_ALLOWED_HOSTS` plus the listen address, with and without its port.
fn allowed_hosts(config: &Config) -> Vec<String> {
    let mut hosts = config.allowed_hosts.clone();
    let listen = config.listen;
    let name = match listen.ip() {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        std::net::IpAddr::V4(ip) => ip.to_string(),
    };
    hosts.push(format!("{name}:{}", listen.port()));
    if !listen.ip().is_unspecified() {
        hosts.push(name);
    }
    hosts
}

fn run_workers(
    app: Arc<App>,
    server: Arc<tiny_http::Server>,
    front: Arc<front::Front>,
) -> Result<i32> {
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<String>();
    let front_stop = stop_tx.clone();
    std::thread::Builder::new()
        .name("http-front".into())
        .spawn(move || {
            front.run();
            let _ = front_stop.send("the listener stopped".into());
        })
        .map_err(|e| Error::failed("start the HTTP listener", e))?;
    for n in 0..WORKERS {
        let (app, server, stop_tx) = (app.clone(), server.clone(), stop_tx.clone());
        std::thread::Builder::new()
            .name(format!("http-{n}"))
            .spawn(move || loop {
                match server.recv() {
                    Ok(rq) => serve_one(&app, rq),
                    Err(e) => {
                        // tiny_http stops accepting after an accept error:
                        // exit so the supervisor starts a fresh server.
                        let _ = stop_tx.send(e.to_string());
                        return;
                    }
                }
            })
            .map_err(|e| Error::failed("start the HTTP workers", e))?;
    }
    drop(stop_tx);
    let reason = stop_rx
        .recv()
        .unwrap_or_else(|_| "every worker stopped".to_string());
    Err(Error::failed(
        "serve",
        format!("the server stopped: {reason}"),
    ))
}

/// How a request's body arrives.
enum BodyPlan {
    /// Already in memory, or none.
    Ready,
    /// Still on the socket: read it within the deadline.
    Stream,
    /// Announced larger than [`MAX_BODY`].
    TooLarge(usize),
}

fn body_plan(rq: &tiny_http::Request) -> BodyPlan {
    let header = |name: &'static str| {
        rq.headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().to_string())
    };
    if header("Transfer-Encoding").is_some() {
        return BodyPlan::Stream;
    }
    match header("Content-Length").and_then(|v| v.trim().parse::<usize>().ok()) {
        Some(n) if n > MAX_BODY => BodyPlan::TooLarge(n),
        // tiny_http has read bodies up to 1 KiB already.
        Some(n) if n > 1024 => BodyPlan::Stream,
        _ => BodyPlan::Ready,
    }
}

fn serve_one(app: &Arc<App>, mut rq: tiny_http::Request) {
    match body_plan(&rq) {
        BodyPlan::TooLarge(n) => refuse_large(app, rq, n),
        BodyPlan::Ready => match read_body(&mut rq) {
            Ok(body) => answer(app, rq, body),
            Err(r) => respond(rq, r),
        },
        BodyPlan::Stream => read_body_elsewhere(app, rq),
    }
}

/// Routes a request whose body is read, catching panics, and answers.
fn answer(app: &App, rq: tiny_http::Request, body: Vec<u8>) {
    let started = Instant::now();
    let req = to_req(&rq, body);
    let resp = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| router::handle(app, &req)))
        .unwrap_or_else(|_| {
            log::error!("panic while answering {} {}", req.method, req.path);
            Resp::error(500, "internal error (see the server log)", vec![])
        });
    log::debug!(
        "{} {} {} {} ms",
        req.method,
        crate::ids::truncate(&req.path, 120),
        resp.status,
        started.elapsed().as_millis()
    );
    respond(rq, resp);
}

/// Reads at most [`MAX_BODY`] + 1 bytes: one more means too large.
fn read_body(rq: &mut tiny_http::Request) -> std::result::Result<Vec<u8>, Resp> {
    let mut body = Vec::new();
    match rq
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
    {
        Ok(_) if body.len() > MAX_BODY => Err(too_large()),
        Ok(_) => Ok(body),
        Err(e) => Err(Resp::error(400, &format!("reading the body: {e}"), vec![])),
    }
}

/// A body still on the socket is read, and its request answered, on a
/// thread of its own: a client that sends slowly (or never) costs that
/// thread, never a worker. Past [`MAX_BODY_READERS`] of them: 503.
fn read_body_elsewhere(app: &Arc<App>, mut rq: tiny_http::Request) {
    if !app.load.body_readers.take(MAX_BODY_READERS) {
        log::warn!("too many request bodies being read; answered 503");
        return respond(
            rq,
            Resp::error(503, "too many uploads at once; retry", vec![]).with("Retry-After", "5"),
        );
    }
    let own = app.clone();
    let spawned = std::thread::Builder::new()
        .name("http-body".into())
        .spawn(move || {
            match read_body(&mut rq) {
                Ok(body) => answer(&own, rq, body),
                Err(r) => respond(rq, r),
            }
            own.load.body_readers.give_back();
        });
    if let Err(e) = spawned {
        app.load.body_readers.give_back();
        log::error!("cannot start a thread to read a request body: {e}");
    }
}

fn too_large() -> Resp {
    Resp::error(
        413,
        &format!("request body larger than {} KiB", MAX_BODY / 1024),
        vec![],
    )
}

/// Answers 413 without reading the announced body. tiny_http drains the
/// rest of a body when a request is dropped, so the answer is sent from
/// a helper thread and a worker never waits on the client. (The relay
/// refuses these before tiny_http sees them; this is the second line.)
fn refuse_large(app: &Arc<App>, rq: tiny_http::Request, announced: usize) {
    log::warn!("refused a {announced}-byte request body");
    if announced > MAX_DRAIN || !app.load.drainers.take(MAX_DRAINERS) {
        // Dropping it would make tiny_http allocate the announced size.
        std::mem::forget(rq);
        return;
    }
    let own = app.clone();
    let spawned = std::thread::Builder::new()
        .name("http-drain".into())
        .spawn(move || {
            respond(rq, too_large());
            own.load.drainers.give_back();
        });
    if spawned.is_err() {
        app.load.drainers.give_back();
    }
}

/// The request as the handlers see it. Its client address is the TCP
/// peer's or, for a request relayed over the Unix socket (no peer
/// address), the relay's `X-Pic-Peer`; the header is never believed from
/// TCP, and the handlers never see it.
fn to_req(rq: &tiny_http::Request, body: Vec<u8>) -> Req {
    let url = rq.url();
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let is_peer = |h: &&tiny_http::Header| h.field.equiv(front::PEER_HEADER);
    let remote = match rq.remote_addr() {
        Some(a) => Some(a.ip()),
        None => front::relayed_peer(
            rq.headers()
                .iter()
                .filter(is_peer)
                .map(|h| h.value.as_str()),
        ),
    };
    Req {
        // Case-sensitive (spec §12): `get` is not `GET`.
        method: rq.method().as_str().to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers: rq
            .headers()
            .iter()
            .filter(|h| !is_peer(h))
            .map(|h| (h.field.as_str().to_string(), h.value.as_str().to_string()))
            .collect(),
        body,
        remote,
    }
}

fn respond(rq: tiny_http::Request, resp: Resp) {
    // Always a Content-Length: tiny_http would send larger bodies chunked,
    // in many small writes.
    let mut out = tiny_http::Response::from_data(resp.body)
        .with_status_code(resp.status)
        .with_chunked_threshold(usize::MAX);
    for (k, v) in &resp.headers {
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            out.add_header(h);
        }
    }
    if let Err(e) = rq.respond(out) {
        log::debug!("could not send an answer: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::Slots;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let slots = Slots::default();
        assert!(slots.take(2) && slots.take(2));
        assert!(!slots.take(2), "a third of two");
        slots.give_back();
        assert!(slots.take(2), "a slot given back is free again");
        // Two servers count apart: another `Slots` is empty.
        assert!(Slots::default().take(1));
    }
}
