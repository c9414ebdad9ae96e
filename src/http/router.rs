//! One request in, one answer out: the Host and repeated-header checks,
//! and the one route table — method, path pattern and handler together —
//! which also gives 404, and 405 with `Allow`. `/api/*` needs the Bearer
//! token (checked here, by [`auth`]); page routes check their session
//! themselves. Changes are parsed into an [`ops::Command`] right in the
//! table and run as jobs ([`api::run_and_wait`], [`page::submit`]).

use super::msg::{Req, Resp};
use super::{api, auth, forms, page, App};
use crate::error::Result;
use crate::ids::ServiceId;
use crate::ops::{self, Command, Peer};
use serde_json::{Map, Value};

/// The body's fields, as JSON or a form.
type Fields = Map<String, Value>;

/// What answers a route. `args` are the path segments the pattern's `*`
/// matched, in order.
#[derive(Clone, Copy)]
enum Handler {
    /// A page route; checks its session itself where it needs one.
    Page(fn(&App, &Req, &[&str]) -> Resp),
    /// An API read.
    Read(fn(&App, &[&str]) -> Result<Resp>),
    /// An API change: the command it asks for, run as a job and waited for.
    Api(fn(&Req, &[&str], &Fields) -> Result<Command>),
    /// An admin-page form: the command it asks for, run as a job after the
    /// session and CSRF checks; the answer is 303 to the job's page.
    Form(fn(&[&str], &Fields) -> Result<Command>),
    /// An API read that takes the query string.
    ReadQuery(fn(&App, &Req, &[&str]) -> Result<Resp>),
}

struct Route {
    method: &'static str,
    /// `/`-separated segments; `*` matches any one segment.
    path: &'static str,
    handler: Handler,
}

const fn route(method: &'static str, path: &'static str, handler: Handler) -> Route {
    Route {
        method,
        path,
        handler,
    }
}

use Handler::{Api, Form, Page, Read, ReadQuery};

/// Every path the server answers (spec §12).
#[rustfmt::skip]
static ROUTES: &[Route] = &[
    // The admin page.
    route("GET", "/", Page(page::home)),
    route("GET", "/healthz", Page(page::healthz)),
    route("GET", "/style.css", Page(page::style)),
    route("GET", "/jobs/*", Page(page::job)),
    route("GET", "/login", Page(auth::login_get)),
    route("POST", "/login", Page(auth::login_post)),
    route("POST", "/logout", Page(auth::logout)),
    route("GET", "/services/*/install", Page(page::install_page)),
    route("POST", "/ui/services/*/install", Form(install)),
    route("POST", "/ui/services/*/update", Form(|a, _| Ok(Command::Update(id(a)?)))),
    route("POST", "/ui/services/*/remove", Form(|a, f| remove(a, forms::flag(f, "purge"), forms::flag(f, "force")))),
    route("POST", "/ui/connections", Form(|_, f| forms::connection_add(f))),
    route("POST", "/ui/connections/*/delete", Form(|a, _| Ok(Command::ConnectionRemove(id(a)?)))),
    route("POST", "/ui/peers", Form(|_, f| peer_route(forms::text(f, "peer")?, f))),
    route("POST", "/ui/peers/*/unroute", Form(|a, _| Ok(Command::PeerUnroute(peer(a)?)))),
    route("POST", "/ui/egress", Form(|_, f| egress_set(forms::text(f, "service")?, f))),
    route("POST", "/ui/egress/*/clear", Form(|a, _| Ok(Command::EgressClear(id(a)?)))),
    route("POST", "/ui/settings", Form(|_, f| forms::settings(f))),
    route("POST", "/ui/reapply", Form(|_, _| Ok(Command::Reapply))),
    route("POST", "/ui/services/*/start", Form(|a, _| operate(a, ops::Action::Start))),
    route("POST", "/ui/services/*/stop", Form(|a, _| operate(a, ops::Action::Stop))),
    route("POST", "/ui/services/*/restart", Form(|a, _| operate(a, ops::Action::Restart))),
    route("POST", "/ui/services/*/configure", Form(configure)),
    route("POST", "/ui/update-all", Form(|_, _| Ok(Command::UpdateAll))),
    // The JSON API.
    route("GET", "/api/status", Read(api::status)),
    route("GET", "/api/services", Read(api::services)),
    route("GET", "/api/services/*", Read(api::service)),
    route("GET", "/api/jobs/*", Read(api::job)),
    route("GET", "/api/connections", Read(api::connections)),
    route("GET", "/api/connections/*", Read(api::connection)),
    route("GET", "/api/peers", Read(api::peers)),
    route("GET", "/api/settings", Read(api::settings)),
    route("POST", "/api/services/*/install", Api(|_, a, f| install(a, f))),
    route("POST", "/api/services/*/update", Api(|_, a, _| Ok(Command::Update(id(a)?)))),
    route("POST", "/api/services/*/remove", Api(|r, a, f| remove(a, api_purge(r, f), forms::flag(f, "force")))),
    route("PUT", "/api/services/*/egress", Api(|_, a, f| egress_set(a[0], f))),
    route("DELETE", "/api/services/*/egress", Api(|_, a, _| Ok(Command::EgressClear(id(a)?)))),
    route("POST", "/api/connections", Api(|_, _, f| forms::connection_add(f))),
    route("DELETE", "/api/connections/*", Api(|_, a, _| Ok(Command::ConnectionRemove(id(a)?)))),
    route("PUT", "/api/peers/*/route", Api(|_, a, f| peer_route(a[0], f))),
    route("DELETE", "/api/peers/*/route", Api(|_, a, _| Ok(Command::PeerUnroute(peer(a)?)))),
    route("PUT", "/api/settings", Api(|_, _, f| forms::settings(f))),
    route("POST", "/api/reapply", Api(|_, _, _| Ok(Command::Reapply))),
    route("POST", "/api/services/*/start", Api(|_, a, _| operate(a, ops::Action::Start))),
    route("POST", "/api/services/*/stop", Api(|_, a, _| operate(a, ops::Action::Stop))),
    route("POST", "/api/services/*/restart", Api(|_, a, _| operate(a, ops::Action::Restart))),
    route("POST", "/api/services/*/configure", Api(|_, a, f| configure(a, f))),
    route("POST", "/api/update-all", Api(|_, _, _| Ok(Command::UpdateAll))),
    // Logs (spec §13): reads, on the page and the API.
    route("GET", "/services/*/logs", Page(page::service_logs)),
    route("GET", "/connections/*/logs", Page(page::connection_logs)),
    route("GET", "/api/services/*/logs", ReadQuery(api::service_logs)),
    route("GET", "/api/connections/*/logs", ReadQuery(api::connection_logs)),
];

/// The id in a path's first `*`.
fn id(args: &[&str]) -> Result<ServiceId> {
    ServiceId::parse(args.first().copied().unwrap_or(""))
}

/// The peer address in a path's first `*`.
fn peer(args: &[&str]) -> Result<Peer> {
    Peer::parse(args.first().copied().unwrap_or(""))
}

fn remove(args: &[&str], purge: bool, force: bool) -> Result<Command> {
    Ok(Command::Remove {
        id: id(args)?,
        purge: ops::Purge::from_flag(purge),
        force,
    })
}

fn install(args: &[&str], fields: &Fields) -> Result<Command> {
    Ok(Command::Install {
        id: id(args)?,
        settings: forms::setting_values(fields)?,
    })
}

fn configure(args: &[&str], fields: &Fields) -> Result<Command> {
    Ok(Command::Configure {
        id: id(args)?,
        settings: forms::setting_values(fields)?,
    })
}

fn operate(args: &[&str], action: ops::Action) -> Result<Command> {
    Ok(Command::Operate {
        id: id(args)?,
        action,
    })
}

/// The API takes `purge` in the body or the query.
fn api_purge(req: &Req, fields: &Fields) -> bool {
    forms::flag(fields, "purge")
        || req
            .query_param("purge")
            .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "on" | "yes"))
}

fn peer_route(peer: &str, fields: &Fields) -> Result<Command> {
    Ok(Command::PeerRoute {
        peer: Peer::parse(peer)?,
        connection: forms::id_field(fields, "connection")?,
    })
}

fn egress_set(service: &str, fields: &Fields) -> Result<Command> {
    Ok(Command::EgressSet {
        service: ServiceId::parse(service)?,
        connection: forms::id_field(fields, "connection")?,
    })
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
    let segs = segments(&req.path);
    let side = if segs.first() == Some(&"api") {
        Side::Api
    } else {
        Side::Page
    };
    let matching: Vec<(&Route, Vec<&str>)> = ROUTES
        .iter()
        .filter_map(|r| Some((r, matches(r.path, &segs)?)))
        .collect();
    if matching.is_empty() {
        return not_found(side);
    }
    let Some((found, args)) = matching.iter().find(|(r, _)| r.method == req.method) else {
        let allowed: Vec<&str> = matching.iter().map(|(r, _)| r.method).collect();
        return method_not_allowed(side, &allowed);
    };
    if side == Side::Api {
        if let Err(r) = auth::api_auth(app, req) {
            return r;
        }
    }
    match found.handler {
        Page(answer) => answer(app, req, args),
        Read(read) => read(app, args).unwrap_or_else(|e| Resp::from_error(&e)),
        Api(parse) => match req.fields().and_then(|f| parse(req, args, &f)) {
            Ok(command) => api::run_and_wait(app, command),
            Err(e) => Resp::from_error(&e),
        },
        Form(parse) => page::submit(app, req, |f| parse(args, f)),
        ReadQuery(read) => read(app, req, args).unwrap_or_else(|e| Resp::from_error(&e)),
    }
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_start_matches('/').split('/').collect()
}

/// The segments `*` matched, when `segs` fits `pattern`.
fn matches<'a>(pattern: &str, segs: &[&'a str]) -> Option<Vec<&'a str>> {
    let want = segments(pattern);
    if want.len() != segs.len() {
        return None;
    }
    let mut args = Vec::new();
    for (w, s) in want.iter().zip(segs) {
        match *w {
            "*" => args.push(*s),
            w if w == *s => {}
            _ => return None,
        }
    }
    Some(args)
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
pub fn admit(app: &App, req: &Req) -> std::result::Result<usize, Resp> {
    if let Some(r) = check_host(app, req).or_else(|| check_repeats(req)) {
        return Err(r);
    }
    let segs = segments(&req.path);
    let side = if segs.first() == Some(&"api") {
        Side::Api
    } else {
        Side::Page
    };
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|r| matches(r.path, &segs).is_some())
        .map(|r| r.method)
        .collect();
    if allowed.is_empty() {
        return Err(not_found(side));
    }
    if !allowed.contains(&req.method.as_str()) {
        return Err(method_not_allowed(side, &allowed));
    }
    let signed_in = || auth::session(app, req).is_some();
    match (side, req.method.as_str(), &segs[..]) {
        (Side::Api, ..) => auth::api_auth(app, req).map(|()| super::MAX_BODY),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_segments_and_capture_stars() {
        assert_eq!(matches("/", &segments("/")), Some(vec![]));
        assert_eq!(
            matches(
                "/api/services/*/install",
                &segments("/api/services/x/install")
            ),
            Some(vec!["x"])
        );
        assert_eq!(matches("/api/services/*", &segments("/api/services")), None);
        assert_eq!(matches("/api/services", &segments("/api/services/")), None);
        assert_eq!(matches("/jobs/*", &segments("/job/1")), None);
    }

    #[test]
    fn each_method_and_path_is_routed_once() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {} twice",
                    a.method,
                    a.path
                );
            }
        }
    }
}
