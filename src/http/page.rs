//! The admin page: server-rendered HTML with plain forms and no script.
//! Every text that comes from the store, the state or the request goes
//! through [`esc`]. Forms need the session cookie and carry its CSRF
//! token; a post becomes a job and answers 303 to the job's page, which
//! refreshes itself until the job ends.

use super::api::{self, read_state};
use super::auth::{self, COOKIE};
use super::jobs::{mode_name, Job, Mutation, Outcome, Phase};
use super::router::{check_token, session, Req, Resp, TokenCheck};
use super::App;
use crate::error::{Error, Result};
use crate::ids::ServiceId;
use crate::manifest::VerificationMode;
use crate::state::State;
use crate::store::Index;
use serde_json::{Map, Value};
use std::fmt::Write as _;

const STYLE: &str = include_str!("style.css");

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Answers a page path whose method fits it.
pub fn handle(app: &App, req: &Req, segs: &[&str]) -> Resp {
    match (req.method.as_str(), segs) {
        ("GET", ["healthz"]) => Resp::text(200, "ok"),
        ("GET", ["style.css"]) => Resp::new(200, "text/css; charset=utf-8", STYLE),
        ("GET", ["login"]) => login_get(app, req),
        ("POST", ["login"]) => login_post(app, req),
        ("POST", ["logout"]) => logout(app, req),
        ("GET", [""]) => match session(app, req) {
            Some((_, csrf)) => home(app, &csrf),
            None => Resp::see_other("/login"),
        },
        ("GET", ["jobs", id]) => match session(app, req) {
            Some(_) => job_page(app, id),
            None => Resp::see_other("/login"),
        },
        ("POST", ["ui", rest @ ..]) => ui_post(app, req, rest),
        _ => Resp::text(404, "not found"),
    }
}

// --- login ------------------------------------------------------------------

fn login_get(app: &App, req: &Req) -> Resp {
    match req.query_param("token") {
        Some(token) => log_in(app, req, &token),
        None if session(app, req).is_some() => Resp::see_other("/"),
        None => login_form(200, ""),
    }
}

fn login_post(app: &App, req: &Req) -> Resp {
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

fn logout(app: &App, req: &Req) -> Resp {
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

fn login_form(status: u16, message: &str) -> Resp {
    let mut b = String::new();
    if !message.is_empty() {
        let _ = write!(b, r#"<p class="banner bad">{}</p>"#, esc(message));
    }
    b.push_str(
        r#"<section class="card narrow"><h2>Log in</h2>
<p class="muted">Run <code>pic-store token</code> on the cell for the token, or open the login URL it prints.</p>
<form method="post" action="/login">
<label>Token <input type="password" name="token" autocomplete="current-password" required autofocus></label>
<button type="submit">Log in</button>
</form></section>"#,
    );
    Resp::html(status, layout("Log in", "", &b, false))
}

// --- forms --------------------------------------------------------------------

/// The session's CSRF token must be in the form, and an `Origin`, when the
/// browser sends one, must be this server.
fn check_form(app: &App, req: &Req, csrf: &str) -> std::result::Result<Map<String, Value>, Resp> {
    if !same_origin(app, req) {
        log::warn!("refused a cross-site form post to {}", req.path);
        return Err(refused(403, "cross-site form post refused", &[]));
    }
    let fields = req
        .fields()
        .map_err(|e| refused(400, &e.to_string(), &e.details()))?;
    if !auth::csrf_ok(fields.get("csrf").and_then(Value::as_str), csrf) {
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
            .is_some_and(|host| auth::host_allowed(host, &app.allowed_hosts)),
    }
}

fn ui_post(app: &App, req: &Req, rest: &[&str]) -> Resp {
    let Some((_, csrf)) = session(app, req) else {
        return refused(403, "log in first", &[]);
    };
    let fields = match check_form(app, req, &csrf) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let m = match ui_mutation(rest, &fields) {
        Ok(m) => m,
        Err(e) => return refused(e.http_status(), &e.to_string(), &e.details()),
    };
    match app.jobs.submit(m) {
        Ok(job) => Resp::see_other(&format!("/jobs/{}", job.id)),
        Err(e) => refused(500, &e.to_string(), &[]),
    }
}

fn ui_mutation(rest: &[&str], f: &Map<String, Value>) -> Result<Mutation> {
    Ok(match rest {
        ["services", id, "install"] => Mutation::Install(ServiceId::parse(id)?),
        ["services", id, "update"] => Mutation::Update(ServiceId::parse(id)?),
        ["services", id, "remove"] => Mutation::Remove {
            id: ServiceId::parse(id)?,
            purge: super::forms::flag(f, "purge"),
        },
        ["connections"] => api::connection_add(f)?,
        ["connections", id, "delete"] => Mutation::ConnectionRemove(ServiceId::parse(id)?),
        ["peers"] => api::peer_route(super::forms::text(f, "peer")?, f)?,
        ["peers", ip, "unroute"] => Mutation::PeerUnroute(api::peer_ip(ip)?),
        ["egress"] => api::egress_set(super::forms::text(f, "service")?, f)?,
        ["egress", id, "clear"] => Mutation::EgressClear(ServiceId::parse(id)?),
        ["settings"] => api::settings(f)?,
        ["reapply"] => Mutation::Reapply,
        _ => return Err(Error::NotFound("no such form".into())),
    })
}

pub fn refused(status: u16, message: &str, errors: &[String]) -> Resp {
    let mut b = format!(
        r#"<section class="card"><h2>Refused</h2><p class="banner bad">{}</p>"#,
        esc(message)
    );
    push_list(&mut b, errors);
    b.push_str(r#"<p><a href="/">Back to the admin page</a></p></section>"#);
    Resp::html(status, layout("Refused", "", &b, false))
}

fn push_list(b: &mut String, items: &[String]) {
    if items.is_empty() {
        return;
    }
    b.push_str("<ul class=\"errors\">");
    for e in items {
        let _ = write!(b, "<li>{}</li>", esc(e));
    }
    b.push_str("</ul>");
}

// --- layout -------------------------------------------------------------------

fn layout(title: &str, csrf: &str, body: &str, refresh: bool) -> String {
    let refresh = if refresh {
        r#"<meta http-equiv="refresh" content="1">"#
    } else {
        ""
    };
    let logout = if csrf.is_empty() {
        String::new()
    } else {
        format!(
            r#"<form method="post" action="/logout" class="inline">{}<button class="link">Log out</button></form>"#,
            csrf_field(csrf)
        )
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{refresh}<title>{} · pic-store</title>
<link rel="stylesheet" href="/style.css"></head>
<body><header class="top"><div class="wrap"><a class="brand" href="/">pic-store</a><span class="muted">service store of this cell</span>{logout}</div></header>
<main class="wrap">{body}</main>
<footer class="wrap muted">pic-store {}</footer></body></html>
"#,
        esc(title),
        env!("CARGO_PKG_VERSION")
    )
}

fn csrf_field(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf))
}

/// A one-button form posting to `action`.
fn button(action: &str, csrf: &str, label: &str, class: &str) -> String {
    format!(
        r#"<form method="post" action="{}" class="inline">{}<button class="{class}">{}</button></form>"#,
        esc(action),
        csrf_field(csrf),
        esc(label)
    )
}

// --- the main page ------------------------------------------------------------

fn home(app: &App, csrf: &str) -> Resp {
    let state = match read_state(app) {
        Ok(s) => s,
        Err(e) => return refused(500, &e.to_string(), &[]),
    };
    let index = app.store.index();
    let mut b = String::new();
    active_jobs(&mut b, app);
    match &index {
        Ok(i) if i.stale => {
            let _ = write!(
                b,
                r#"<p class="banner warn">The store is unreachable. This is the catalogue fetched {}.</p>"#,
                esc(&crate::report::age(i.fetched_at))
            );
        }
        Ok(_) => {}
        Err(e) => {
            let _ = write!(
                b,
                r#"<p class="banner bad">The store cannot be read: {}</p>"#,
                esc(&e.to_string())
            );
        }
    }
    installed(&mut b, &state, csrf);
    store_list(&mut b, index.as_ref().ok(), &state, csrf);
    connections(&mut b, &state, csrf);
    peers(&mut b, &state, csrf);
    settings(&mut b, &state, csrf);
    Resp::html(200, layout("Admin", csrf, &b, false))
}

fn active_jobs(b: &mut String, app: &App) {
    for j in app.jobs.active() {
        let _ = write!(
            b,
            r#"<p class="banner info">Running: <a href="/jobs/{}">{}</a></p>"#,
            esc(&j.id),
            esc(&j.title)
        );
    }
}

fn installed(b: &mut String, state: &State, csrf: &str) {
    b.push_str(r#"<section class="card"><h2>Installed services</h2>"#);
    if state.services.is_empty() {
        b.push_str(
            r#"<p class="muted">Nothing installed yet; pick a service from the store below.</p>"#,
        );
    }
    let conns: Vec<&String> = state.connections.keys().collect();
    for (id, s) in &state.services {
        let m = &s.manifest;
        let ip =
            s.ip.map(|ip| ip.to_string())
                .unwrap_or_else(|| "per connection".into());
        let _ = write!(
            b,
            r#"<div class="row" id="svc-{}"><div class="grow"><strong>{}</strong> <span class="tag">{}</span><div class="muted small">{} · IP {}</div>"#,
            esc(id),
            esc(&m.name),
            esc(&m.version),
            esc(id),
            esc(&ip)
        );
        if let Some(d) = m.extra.get("description").and_then(Value::as_str) {
            let _ = write!(b, r#"<div class="small">{}</div>"#, esc(d));
        }
        b.push_str("</div><div class=\"actions\">");
        b.push_str(&button(
            &format!("/ui/services/{id}/update"),
            csrf,
            "Update",
            "secondary",
        ));
        let _ = write!(
            b,
            r#"<form method="post" action="/ui/services/{}/remove" class="inline">{}<label class="check"><input type="checkbox" name="purge" value="1"> delete data</label><button class="danger">Remove</button></form>"#,
            esc(id),
            csrf_field(csrf)
        );
        b.push_str("</div>");
        if !m.instanceable {
            egress_form(b, id, state.egress.get(id), &conns, csrf);
        }
        b.push_str("</div>");
    }
    b.push_str("</section>");
}

fn egress_form(b: &mut String, id: &str, current: Option<&String>, conns: &[&String], csrf: &str) {
    b.push_str(r#"<div class="sub small">Outbound traffic: "#);
    match current {
        Some(c) => {
            let _ = write!(b, "via <strong>{}</strong> ", esc(c));
            b.push_str(&button(
                &format!("/ui/egress/{id}/clear"),
                csrf,
                "Use the default",
                "secondary",
            ));
        }
        None if conns.is_empty() => b.push_str("default (no connections to choose)"),
        None => {
            let _ = write!(
                b,
                r#"default <form method="post" action="/ui/egress" class="inline">{}<input type="hidden" name="service" value="{}"><select name="connection">"#,
                csrf_field(csrf),
                esc(id)
            );
            for c in conns {
                let _ = write!(b, r#"<option value="{0}">{0}</option>"#, esc(c));
            }
            b.push_str(r#"</select><button class="secondary">Send via</button></form>"#);
        }
    }
    b.push_str("</div>");
}

fn store_list(b: &mut String, index: Option<&Index>, state: &State, csrf: &str) {
    b.push_str(r#"<section class="card"><h2>Store</h2>"#);
    let Some(index) = index else {
        b.push_str(r#"<p class="muted">No catalogue available.</p></section>"#);
        return;
    };
    if index.services.is_empty() {
        b.push_str(r#"<p class="muted">The store lists no services.</p>"#);
    }
    b.push_str(r#"<div class="grid">"#);
    for e in &index.services {
        let id = e.id.as_str();
        let desc = e
            .extra
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("");
        let _ = write!(
            b,
            r#"<div class="tile" id="store-{}"><div><strong>{}</strong> <span class="tag">{}</span></div><div class="small muted">{}</div><p class="small">{}</p>"#,
            esc(id),
            esc(&e.name),
            esc(&e.version),
            esc(id),
            esc(desc)
        );
        match state.services.get(id) {
            Some(s) => {
                let _ = write!(
                    b,
                    r#"<span class="badge ok">Installed {}</span>"#,
                    esc(&s.manifest.version)
                );
            }
            None => b.push_str(&button(
                &format!("/ui/services/{id}/install"),
                csrf,
                "Install",
                "primary",
            )),
        }
        b.push_str("</div>");
    }
    b.push_str("</div></section>");
}

fn connections(b: &mut String, state: &State, csrf: &str) {
    b.push_str(r#"<section class="card"><h2>Connections</h2>"#);
    if state.connections.is_empty() {
        b.push_str(r#"<p class="muted">No connections.</p>"#);
    } else {
        b.push_str(r#"<div class="scroll"><table><thead><tr><th>Name</th><th>Service</th><th>Mark</th><th>Table</th><th>Port</th><th>IP</th><th></th></tr></thead><tbody>"#);
        for (id, c) in &state.connections {
            let _ = write!(
                b,
                r#"<tr><td data-label="Name">{}</td><td data-label="Service">{}</td><td data-label="Mark"><code>{:#x}</code></td><td data-label="Table">{}</td><td data-label="Port">{}</td><td data-label="IP">{}</td><td class="end">{}</td></tr>"#,
                esc(id),
                esc(&c.service),
                c.fwmark,
                c.table,
                c.port,
                c.ip,
                button(
                    &format!("/ui/connections/{id}/delete"),
                    csrf,
                    "Delete",
                    "danger"
                )
            );
        }
        b.push_str("</tbody></table></div>");
    }
    let services: Vec<&String> = state
        .services
        .iter()
        .filter(|(_, s)| s.manifest.instanceable)
        .map(|(id, _)| id)
        .collect();
    if services.is_empty() {
        b.push_str(r#"<p class="muted small">Install a connectivity service (a proxy or VPN client) to add connections.</p>"#);
    } else {
        let _ = write!(
            b,
            r#"<h3>Add a connection</h3><form method="post" action="/ui/connections" class="stack">{}<label>Service <select name="service">"#,
            csrf_field(csrf)
        );
        for s in services {
            let _ = write!(b, r#"<option value="{0}">{0}</option>"#, esc(s));
        }
        b.push_str(r#"</select></label><label>Name <input name="name" required pattern="[a-z][a-z0-9\-]{0,30}" placeholder="home-proxy"></label><label>Settings <textarea name="env" rows="3" placeholder="KEY=VALUE, one per line"></textarea></label><button class="primary">Create connection</button></form>"#);
    }
    b.push_str("</section>");
}

fn peers(b: &mut String, state: &State, csrf: &str) {
    b.push_str(r#"<section class="card"><h2>Peer routes</h2>"#);
    if state.peer_routes.is_empty() {
        b.push_str(r#"<p class="muted">Every VPN peer uses the default route.</p>"#);
    } else {
        b.push_str(r#"<div class="scroll"><table><thead><tr><th>Peer</th><th>Connection</th><th></th></tr></thead><tbody>"#);
        for (peer, conn) in &state.peer_routes {
            let _ = write!(
                b,
                r#"<tr><td data-label="Peer">{}</td><td data-label="Connection">{}</td><td class="end">{}</td></tr>"#,
                esc(peer),
                esc(conn),
                button(
                    &format!("/ui/peers/{peer}/unroute"),
                    csrf,
                    "Unroute",
                    "secondary"
                )
            );
        }
        b.push_str("</tbody></table></div>");
    }
    if !state.connections.is_empty() {
        let _ = write!(
            b,
            r#"<h3>Route a peer</h3><form method="post" action="/ui/peers" class="stack">{}<label>Peer address <input name="peer" required placeholder="10.0.0.2" inputmode="decimal"></label><label>Connection <select name="connection">"#,
            csrf_field(csrf)
        );
        for c in state.connections.keys() {
            let _ = write!(b, r#"<option value="{0}">{0}</option>"#, esc(c));
        }
        b.push_str(r#"</select></label><button class="primary">Route</button></form>"#);
    }
    b.push_str("</section>");
}

fn settings(b: &mut String, state: &State, csrf: &str) {
    let current = state.settings.image_verification_mode;
    let _ = write!(
        b,
        r#"<section class="card"><h2>Settings</h2><form method="post" action="/ui/settings" class="row-form">{}<label>Image verification <select name="image_verification_mode">"#,
        csrf_field(csrf)
    );
    for m in [
        VerificationMode::Off,
        VerificationMode::Warn,
        VerificationMode::Enforce,
    ] {
        let sel = if m == current { " selected" } else { "" };
        let _ = write!(b, r#"<option value="{0}"{sel}>{0}</option>"#, mode_name(m));
    }
    b.push_str(r#"</select></label><button class="secondary">Save</button></form>"#);
    b.push_str(r#"<p class="small muted">Reapply makes the containers, firewall and routes match the saved state again (as at boot).</p>"#);
    b.push_str(&button("/ui/reapply", csrf, "Reapply", "secondary"));
    b.push_str("</section>");
}

// --- job page -----------------------------------------------------------------

fn job_page(app: &App, id: &str) -> Resp {
    let Some(job) = app.jobs.get(id) else {
        return refused(
            404,
            "no such job (jobs are kept until the server restarts)",
            &[],
        );
    };
    let s = job.snapshot();
    let running = s.phase != Phase::Done;
    let mut b = format!(r#"<section class="card"><h2>{}</h2>"#, esc(&job.title));
    b.push_str(&job_badge(&job, &s.outcome, s.phase));
    b.push_str(r#"<pre class="log">"#);
    if s.dropped > 0 {
        let _ = writeln!(b, "[{} earlier lines not kept]", s.dropped);
    }
    for l in &s.lines {
        b.push_str(&esc(l));
        b.push('\n');
    }
    b.push_str("</pre>");
    match &s.outcome {
        Some(Outcome::Ok(v)) => {
            let _ = write!(
                b,
                r#"<details><summary>Result</summary><pre>{}</pre></details>"#,
                esc(&serde_json::to_string_pretty(v).unwrap_or_default())
            );
        }
        Some(Outcome::Failed { body, .. }) => {
            let _ = write!(
                b,
                r#"<p class="banner bad">{}</p>"#,
                esc(body["error"].as_str().unwrap_or("failed"))
            );
            let errors: Vec<String> = body["errors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            push_list(&mut b, &errors);
        }
        None => b.push_str(
            r#"<p class="muted small">This page refreshes itself until the job ends.</p>"#,
        ),
    }
    b.push_str(r#"<p><a href="/">Back to the admin page</a></p></section>"#);
    Resp::html(200, layout(&job.title, "", &b, running))
}

fn job_badge(job: &Job, outcome: &Option<Outcome>, phase: Phase) -> String {
    let (class, text) = match (phase, outcome) {
        (Phase::Queued, _) => ("info", "queued".to_string()),
        (Phase::Running, _) => ("info", "running".to_string()),
        (Phase::Done, Some(Outcome::Ok(_))) => ("ok", "succeeded".to_string()),
        (Phase::Done, _) => ("bad", "failed".to_string()),
    };
    format!(
        r#"<p><span class="badge {class}" id="job-state">{}</span> <span class="muted small">job {}</span></p>"#,
        esc(&text),
        esc(&job.id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esc_escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(esc("plain é"), "plain é");
    }

    #[test]
    fn layout_refreshes_only_when_asked() {
        assert!(layout("t", "", "", true).contains("http-equiv=\"refresh\""));
        assert!(!layout("t", "", "", false).contains("refresh"));
        assert!(layout("<b>", "c", "", false).contains("&lt;b&gt;"));
    }
}
