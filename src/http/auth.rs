//! Who may ask: the Host allow-list, the API token (Bearer, checked for
//! every `/api/*` request), admin-page login, sessions with their CSRF
//! tokens and the form checks, and the per-address throttle on wrong
//! tokens. Everything is in memory; a restart logs everyone out.

use super::msg::{Req, Resp};
use super::page::{login_form, refused};
use super::App;
use crate::token::{constant_time_eq, random_hex};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE: &str = "pic_session";
/// A session unused this long is forgotten.
const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions; the least recently used goes first.
const MAX_SESSIONS: usize = 256;
/// Wrong tokens allowed before each further one costs a wait.
const FREE_FAILURES: u32 = 5;
/// The longest wait imposed after a wrong token.
const MAX_LOCKOUT: Duration = Duration::from_secs(8);
/// An address with no wrong token for this long starts afresh.
const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
const MAX_TRACKED_ADDRESSES: usize = 4096;
/// Wrong-token warnings are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Whether `host` (a Host header value) names one of `allowed`. Names
/// compare case-insensitively; an allowed entry without a port allows
/// any port, one with a port only that port.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let Some((name, port)) = split_host(host) else {
        return false;
    };
    allowed.iter().any(|a| match split_host(a) {
        Some((an, ap)) => an.eq_ignore_ascii_case(name) && (ap.is_none() || ap == port),
        None => false,
    })
}

/// `name[:port]`, where name may be a bracketed IPv6 address.
fn split_host(s: &str) -> Option<(&str, Option<u16>)> {
    let s = s.trim();
    if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
        return None;
    }
    if s.starts_with('[') {
        let end = s.find(']')?;
        let (name, rest) = s.split_at(end + 1);
        return match rest {
            "" => Some((name, None)),
            r => Some((name, Some(r.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match s.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => Some((name, Some(port.parse().ok()?))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

/// Whether `given` is the API token, in time independent of the text.
pub fn token_matches(given: &str, token: &str) -> bool {
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// `Bearer <token>` → the token.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, rest) = h.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// A cookie's value from a `Cookie` header.
pub fn cookie<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?.split(';').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// One logged-in browser.
#[derive(Clone)]
struct Session {
    csrf: String,
    last_seen: Instant,
}

/// The admin page's sessions.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session: `(session id, csrf token)`.
    pub fn create(&self) -> crate::error::Result<(String, String)> {
        let id = random_hex(32)?;
        let csrf = random_hex(32)?;
        let mut map = self.lock();
        map.retain(|_, s| s.last_seen.elapsed() < SESSION_IDLE);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                last_seen: Instant::now(),
            },
        );
        Ok((id, csrf))
    }

    /// The CSRF token of a live session, touching it.
    pub fn csrf(&self, id: &str) -> Option<String> {
        let mut map = self.lock();
        let s = map.get_mut(id)?;
        if s.last_seen.elapsed() >= SESSION_IDLE {
            map.remove(id);
            return None;
        }
        s.last_seen = Instant::now();
        Some(s.csrf.clone())
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic elsewhere while holding the lock leaves a usable map.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a form's CSRF field matches the session's token.
pub fn csrf_ok(given: Option<&str>, expected: &str) -> bool {
    given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes()))
}

/// Wrong tokens per client address (an IPv6 client's /64). Only
/// failures are recorded, and only after the right token was ruled out,
/// so a flood of wrong guesses never refuses the right token (spec §12).
#[derive(Default)]
pub struct Throttle {
    inner: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

impl Throttle {
    /// `Some(wait)` while `ip` must wait before a wrong token is even
    /// considered again.
    pub fn wait(&self, ip: IpAddr) -> Option<Duration> {
        let map = self.lock();
        let until = map.get(&key(ip))?.locked_until?;
        until.checked_duration_since(Instant::now())
    }

    /// Records a wrong token; returns how many `ip` has sent lately. The
    /// table never holds more than [`MAX_TRACKED_ADDRESSES`]: past it, the
    /// addresses quiet longest are forgotten first.
    pub fn failed(&self, ip: IpAddr) -> u32 {
        let ip = key(ip);
        let mut map = self.lock();
        let now = Instant::now();
        if map.len() >= MAX_TRACKED_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, f| f.last.elapsed() < FAILURE_MEMORY);
            if map.len() >= MAX_TRACKED_ADDRESSES {
                if let Some(oldest) = map.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let f = map.entry(ip).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: None,
        });
        if f.last.elapsed() >= FAILURE_MEMORY {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count >= FREE_FAILURES {
            f.locked_until = Some(now + lockout(f.count));
        }
        f.count
    }

    /// How many addresses the table holds.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn key(ip: IpAddr) -> IpAddr {
    super::front::address_key(ip)
}

/// Logs a wrong token at most once per [`WARN_EVERY`], with how many
/// were not logged since: guesses must not fill the log.
pub fn warn_wrong_token(ip: IpAddr, path: &str, what: &str) {
    static LOG: Mutex<(Option<Instant>, u64)> = Mutex::new((None, 0));
    let mut log = LOG.lock().unwrap_or_else(|p| p.into_inner());
    match log.0 {
        Some(at) if at.elapsed() < WARN_EVERY => log.1 += 1,
        _ => {
            let quiet = std::mem::take(&mut log.1);
            log.0 = Some(Instant::now());
            let path = crate::ids::truncate(path, 80);
            if quiet > 0 {
                log::warn!("{what} from {ip} on {path} ({quiet} more wrong tokens not logged)");
            } else {
                log::warn!("{what} from {ip} on {path}");
            }
        }
    }
}

/// The wait after the `count`th wrong token: doubling from 250 ms, capped.
fn lockout(count: u32) -> Duration {
    let steps = count.saturating_sub(FREE_FAILURES).min(10);
    (Duration::from_millis(250) * 2u32.pow(steps)).min(MAX_LOCKOUT)
}

// --- requests: the API token, the admin page's login, forms ------------------

/// Outcome of presenting the API token.
pub(super) enum TokenCheck {
    Right,
    Wrong,
    /// The address sent too many wrong ones; retry after this many seconds.
    Throttled(u64),
}

/// Checks a presented token against the API token. The right token is
/// compared first and never refused; only wrong ones are counted, and
/// throttled per address (spec §12), with rate-limited warnings.
pub(super) fn check_token(app: &App, req: &Req, given: &str) -> TokenCheck {
    if token_matches(given, &app.token) {
        return TokenCheck::Right;
    }
    let ip = req.client();
    if let Some(wait) = app.throttle.wait(ip) {
        warn_wrong_token(ip, &req.path, "wrong API token (throttled)");
        return TokenCheck::Throttled(wait.as_secs() + 1);
    }
    app.throttle.failed(ip);
    warn_wrong_token(ip, &req.path, "wrong API token");
    TokenCheck::Wrong
}

/// `Authorization: Bearer <token>` for every `/api/*` path.
pub(super) fn api_auth(app: &App, req: &Req) -> Result<(), Resp> {
    let Some(given) = bearer(req.header("Authorization")) else {
        return Err(
            Resp::error(401, "authorization required: Bearer <token>", vec![])
                .with("WWW-Authenticate", "Bearer"),
        );
    };
    match check_token(app, req, given) {
        TokenCheck::Right => Ok(()),
        TokenCheck::Wrong => Err(Resp::error(401, "wrong token", vec![])
            .with("WWW-Authenticate", "Bearer error=\"invalid_token\"")),
        TokenCheck::Throttled(secs) => Err(Resp::error(
            429,
            "too many wrong tokens from this address; wait and retry",
            vec![],
        )
        .with("Retry-After", &secs.to_string())),
    }
}

/// The session a request's cookie names, with its CSRF token.
pub(super) fn session(app: &App, req: &Req) -> Option<(String, String)> {
    let id = cookie(req.header("Cookie"), COOKIE)?;
    let csrf = app.sessions.csrf(id)?;
    Some((id.to_string(), csrf))
}

/// `GET /login`: `?token=` logs in; otherwise the form.
pub(super) fn login_get(app: &App, req: &Req, _: &[&str]) -> Resp {
    match req.query_param("token") {
        Some(token) => log_in(app, req, &token),
        None if session(app, req).is_some() => Resp::see_other("/"),
        None => login_form(200, ""),
    }
}

/// `POST /login`: the form's token.
pub(super) fn login_post(app: &App, req: &Req, _: &[&str]) -> Resp {
    if !same_origin(app, req) {
        return refused(403, "cross-site login refused", &[]);
    }
    match req.fields() {
        Ok(f) => match f.get("token").and_then(Value::as_str) {
            Some(t) => log_in(app, req, t),
            None => login_form(400, "Enter the token."),
        },
        Err(e) => login_form(400, &e.to_string()),
    }
}

fn log_in(app: &App, req: &Req, token: &str) -> Resp {
    match check_token(app, req, token) {
        TokenCheck::Right => match app.sessions.create() {
            Ok((id, _)) => {
                log::info!("admin page login from {}", req.client());
                Resp::see_other("/").with(
                    "Set-Cookie",
                    &format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/"),
                )
            }
            Err(e) => refused(500, &e.to_string(), &[]),
        },
        TokenCheck::Wrong => login_form(401, "That is not the token."),
        TokenCheck::Throttled(secs) => login_form(
            429,
            &format!("Too many wrong tokens from this address; try again in {secs} s."),
        )
        .with("Retry-After", &secs.to_string()),
    }
}

/// `POST /logout` (with the session's CSRF token).
pub(super) fn logout(app: &App, req: &Req, _: &[&str]) -> Resp {
    let Some((id, csrf)) = session(app, req) else {
        return Resp::see_other("/login");
    };
    if let Err(r) = check_form(app, req, &csrf) {
        return r;
    }
    app.sessions.remove(&id);
    Resp::see_other("/login").with(
        "Set-Cookie",
        &format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    )
}

/// The session's CSRF token must be in the form, and an `Origin`, when the
/// browser sends one, must be this server.
pub(super) fn check_form(
    app: &App,
    req: &Req,
    csrf: &str,
) -> std::result::Result<Map<String, Value>, Resp> {
    if !same_origin(app, req) {
        log::warn!("refused a cross-site form post to {}", req.path);
        return Err(refused(403, "cross-site form post refused", &[]));
    }
    let fields = req
        .fields()
        .map_err(|e| refused(400, &e.to_string(), &e.details()))?;
    if !csrf_ok(fields.get("csrf").and_then(Value::as_str), csrf) {
        log::warn!(
            "refused a form post without a valid CSRF token to {}",
            req.path
        );
        return Err(refused(
            403,
            "the form's security token is missing or stale; reload the page",
            &[],
        ));
    }
    Ok(fields)
}

fn same_origin(app: &App, req: &Req) -> bool {
    match req.header("Origin") {
        None => true,
        Some(o) => o
            .strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
            .is_some_and(|host| host_allowed(host, &app.allowed_hosts)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn host_allow_list() {
        let allowed = hosts(&[
            "localhost",
            "127.0.0.1",
            "[::1]",
            "127.0.0.1:8420",
            "Cell.Lan:80",
        ]);
        for ok in [
            "localhost",
            "LOCALHOST:8420",
            "127.0.0.1:8420",
            "127.0.0.1",
            "[::1]:8420",
            "[::1]",
            "cell.lan:80",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "evil.com",
            "localhost.evil.com",
            "cell.lan:8080",
            "cell.lan",
            "",
            "localhost:x",
            "user@localhost",
            "[::1",
            "::1",
        ] {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
        let only_port = hosts(&["10.0.0.2:8420"]);
        assert!(!host_allowed("10.0.0.2:9999", &only_port));
    }

    #[test]
    fn headers() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(None), None);
        assert_eq!(
            cookie(Some("a=1; pic_session=xyz; b=2"), COOKIE),
            Some("xyz")
        );
        assert_eq!(cookie(Some("xpic_session=1"), COOKIE), None);
        assert!(token_matches("abc\n", "abc"));
        assert!(!token_matches("abd", "abc"));
    }

    #[test]
    fn sessions_and_csrf() {
        let s = Sessions::default();
        let (id, csrf) = s.create().unwrap();
        assert_eq!(s.csrf(&id).as_deref(), Some(csrf.as_str()));
        assert!(csrf_ok(Some(&csrf), &csrf));
        assert!(!csrf_ok(None, &csrf));
        assert!(!csrf_ok(Some("x"), &csrf));
        s.remove(&id);
        assert_eq!(s.csrf(&id), None);
    }

    #[test]
    fn throttle_grows_and_clears() {
        let t = Throttle::default();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        for _ in 0..4 {
            t.failed(ip);
        }
        assert!(t.wait(ip).is_none());
        t.failed(ip);
        assert!(t.wait(ip).is_some());
        assert_eq!(lockout(5), Duration::from_millis(250));
        assert_eq!(lockout(6), Duration::from_millis(500));
        assert_eq!(lockout(1000), MAX_LOCKOUT);
    }

    #[test]
    fn the_throttle_table_stays_bounded() {
        let t = Throttle::default();
        for i in 0..(MAX_TRACKED_ADDRESSES as u32 + 1000) {
            t.failed(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
            assert!(t.tracked() <= MAX_TRACKED_ADDRESSES);
        }
        assert_eq!(t.tracked(), MAX_TRACKED_ADDRESSES);
        // One IPv6 host's /64 is one entry, however many addresses it uses.
        let t = Throttle::default();
        for i in 0..100u16 {
            t.failed(IpAddr::V6(std::net::Ipv6Addr::new(
                0xfd00, 0, 0, 1, 0, 0, 0, i,
            )));
        }
        assert_eq!(t.tracked(), 1);
    }
}
