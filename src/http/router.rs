//! One request in, one answer out: the request and response types, the
//! Host check, the path table (404, and 405 with `Allow`), and who may
//! call what (Bearer token for `/api/*`, a session and its CSRF token for
//! the admin page). Handlers live in `api.rs` and `page.rs`.

use super::auth::{self, COOKIE};
use super::forms;
use super::App;
use crate::error::Error;
use serde_json::{json, Map, Value};
use std::net::IpAddr;

/// A request as the handlers see it: the body is already read (bounded).
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub remote: Option<IpAddr>,
}

impl Req {
    /// The first header of that name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }

    /// The body (JSON or form) as an object; other media types are refused.
    pub fn fields(&self) -> crate::error::Result<Map<String, Value>> {
        forms::body_object(forms::body_kind(self.header("Content-Type")), &self.body)
    }

    /// A query parameter (decoded), if present and well formed.
    pub fn query_param(&self, name: &str) -> Option<String> {
        forms::parse_urlencoded(&self.query)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The address throttling is keyed on (unknown: the unspecified one).
    pub fn client(&self) -> IpAddr {
        self.remote
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Sent with every answer; the admin page needs no script, no frame and
/// no other origin. `same-origin`, not `no-referrer`: under `no-referrer`
/// browsers send `Origin: null` with the page's own form posts, which the
/// cross-site check must refuse.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
];

impl Resp {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Resp {
        let mut headers: Vec<(String, String)> = SECURITY_HEADERS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        headers.push(("Content-Type".into(), content_type.into()));
        Resp {
            status,
            headers,
            body: body.into(),
        }
    }

    pub fn json(status: u16, v: &Value) -> Resp {
        let mut body = serde_json::to_vec_pretty(v).unwrap_or_else(|_| b"{}".to_vec());
        body.push(b'\n');
        Resp::new(status, "application/json", body)
    }

    pub fn html(status: u16, body: String) -> Resp {
        Resp::new(status, "text/html; charset=utf-8", body)
    }

    pub fn text(status: u16, body: &str) -> Resp {
        Resp::new(status, "text/plain; charset=utf-8", format!("{body}\n"))
    }

    /// The JSON error shape of spec §12.
    pub fn error(status: u16, message: &str, errors: Vec<String>) -> Resp {
        Resp::json(
            status,
            &json!({"ok": false, "error": message, "errors": errors}),
        )
    }

    pub fn from_error(e: &Error) -> Resp {
        Resp::error(e.http_status(), &e.to_string(), e.details())
    }

    /// 303 See Other: where a form post goes next.
    pub fn see_other(location: &str) -> Resp {
        Resp::text(303, &format!("see {location}")).with("Location", location)
    }

    pub fn with(mut self, name: &str, value: &str) -> Resp {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// Which side of the server a path belongs to: it decides the error
/// format and the kind of authentication.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Api,
    Page,
}

/// Answers one request. Never panics on input; the caller still catches
/// panics so a bug costs one 500, not the server.
pub fn handle(app: &App, req: &Req) -> Resp {
    if let Some(r) = check_host(app, req) {
        return r;
    }
    if let Some(r) = check_repeats(req) {
        return r;
    }
    let segs: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let side = if segs.first() == Some(&"api") {
        Side::Api
    } else {
        Side::Page
    };
    let Some(allowed) = methods(&segs) else {
        return not_found(side);
    };
    if !allowed.contains(&req.method.as_str()) {
        return method_not_allowed(side, allowed);
    }
    match side {
        Side::Api => match api_auth(app, req) {
            Ok(()) => super::api::handle(app, req, &segs),
            Err(r) => r,
        },
        Side::Page => super::page::handle(app, req, &segs),
    }
}

/// The largest body `/login` takes (the only body read unauthenticated).
pub const LOGIN_BODY: usize = 4 * 1024;

/// What the front door decides on a request's head alone, before any
/// body byte is read or `100 Continue` sent (spec §12 v2): the Host, the
/// path and method, and who asks — the Bearer token for `/api/*`, the
/// session for the admin page's posts (their CSRF token is in the body,
/// checked once it is read). `Ok`: the most body the request may have;
/// only `/login` takes one without credentials, and at most
/// [`LOGIN_BODY`].
pub fn admit(app: &App, req: &Req) -> Result<usize, Resp> {
    if let Some(r) = check_host(app, req).or_else(|| check_repeats(req)) {
        return Err(r);
    }
    let segs: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let side = if segs.first() == Some(&"api") {
        Side::Api
    } else {
        Side::Page
    };
    let Some(allowed) = methods(&segs) else {
        return Err(not_found(side));
    };
    if !allowed.contains(&req.method.as_str()) {
        return Err(method_not_allowed(side, allowed));
    }
    let signed_in = || session(app, req).is_some();
    match (side, req.method.as_str(), &segs[..]) {
        (Side::Api, ..) => api_auth(app, req).map(|()| super::MAX_BODY),
        (Side::Page, "POST", ["login"]) => Ok(LOGIN_BODY),
        (Side::Page, "POST", ["logout"]) if !signed_in() => Err(Resp::see_other("/login")),
        (Side::Page, "POST", _) if !signed_in() => {
            Err(super::page::refused(403, "log in first", &[]))
        }
        (Side::Page, ..) if signed_in() => Ok(super::MAX_BODY),
        (Side::Page, ..) => Ok(0),
    }
}

/// 403 for a Host header that is not allowed (DNS rebinding), 400 for a
/// request with several.
fn check_host(app: &App, req: &Req) -> Option<Resp> {
    match req.header_count("Host") {
        0 => Some(Resp::error(403, "a Host header is required", vec![])),
        1 => {
            let host = req.header("Host").unwrap_or("");
            if auth::host_allowed(host, &app.allowed_hosts) {
                None
            } else {
                log::warn!(
                    "refused Host {:?} from {}",
                    crate::ids::truncate(host, 80),
                    req.client()
                );
                Some(Resp::error(
                    403,
                    "this Host is not allowed (PIC_ALLOWED_HOSTS)",
                    vec![],
                ))
            }
        }
        _ => Some(Resp::error(400, "more than one Host header", vec![])),
    }
}

/// Headers whose meaning a second copy would make ambiguous: one part of a
/// chain could read the first and another the last.
const SINGLE_HEADERS: &[&str] = &[
    "Authorization",
    "Cookie",
    "Content-Type",
    "Content-Length",
    "Origin",
    "Transfer-Encoding",
];

fn check_repeats(req: &Req) -> Option<Resp> {
    SINGLE_HEADERS
        .iter()
        .find(|h| req.header_count(h) > 1)
        .map(|h| Resp::error(400, &format!("more than one {h} header"), vec![]))
}

/// The methods a known path answers; `None` for an unknown path.
fn methods(segs: &[&str]) -> Option<&'static [&'static str]> {
    const GET: &[&str] = &["GET"];
    const POST: &[&str] = &["POST"];
    Some(match segs {
        [""] | ["healthz"] | ["style.css"] | ["jobs", _] => GET,
        ["login"] => &["GET", "POST"],
        ["logout"] => POST,
        ["ui", "services", _, "install" | "update" | "remove"]
        | ["ui", "connections"]
        | ["ui", "connections", _, "delete"]
        | ["ui", "peers"]
        | ["ui", "peers", _, "unroute"]
        | ["ui", "egress"]
        | ["ui", "egress", _, "clear"]
        | ["ui", "settings"]
        | ["ui", "reapply"] => POST,
        ["api", "status"]
        | ["api", "services"]
        | ["api", "services", _]
        | ["api", "jobs", _]
        | ["api", "peers"] => GET,
        ["api", "services", _, "install" | "remove" | "update"] | ["api", "reapply"] => POST,
        ["api", "services", _, "egress"] | ["api", "peers", _, "route"] => &["PUT", "DELETE"],
        ["api", "connections"] => &["GET", "POST"],
        ["api", "connections", _] => &["GET", "DELETE"],
        ["api", "settings"] => &["GET", "PUT"],
        _ => return None,
    })
}

fn not_found(side: Side) -> Resp {
    match side {
        Side::Api => Resp::error(404, "no such API path", vec![]),
        Side::Page => Resp::text(404, "not found"),
    }
}

fn method_not_allowed(side: Side, allowed: &[&str]) -> Resp {
    let allow = allowed.join(", ");
    let r = match side {
        Side::Api => Resp::error(
            405,
            &format!("method not allowed here (allowed: {allow})"),
            vec![],
        ),
        Side::Page => Resp::text(405, "method not allowed"),
    };
    r.with("Allow", &allow)
}

/// Outcome of presenting the API token.
pub enum TokenCheck {
    Right,
    Wrong,
    /// The address sent too many wrong ones; retry after this many seconds.
    Throttled(u64),
}

/// Checks a presented token against the API token. The right token is
/// compared first and never refused; only wrong ones are counted, and
/// throttled per address (spec §12), with rate-limited warnings.
pub fn check_token(app: &App, req: &Req, given: &str) -> TokenCheck {
    if auth::token_matches(given, &app.token) {
        return TokenCheck::Right;
    }
    let ip = req.client();
    if let Some(wait) = app.throttle.wait(ip) {
        auth::warn_wrong_token(ip, &req.path, "wrong API token (throttled)");
        return TokenCheck::Throttled(wait.as_secs() + 1);
    }
    app.throttle.failed(ip);
    auth::warn_wrong_token(ip, &req.path, "wrong API token");
    TokenCheck::Wrong
}

/// `Authorization: Bearer <token>` for every `/api/*` path.
fn api_auth(app: &App, req: &Req) -> Result<(), Resp> {
    let Some(given) = auth::bearer(req.header("Authorization")) else {
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
pub fn session(app: &App, req: &Req) -> Option<(String, String)> {
    let id = auth::cookie(req.header("Cookie"), COOKIE)?;
    let csrf = app.sessions.csrf(id)?;
    Some((id.to_string(), csrf))
}
