//! The admin page: server-rendered HTML with plain forms and no script.
//! Every text that comes from the store, the state or the request goes
//! through [`esc`]. Forms need the session cookie and carry its CSRF
//! token; a post becomes a job and answers 303 to the job's page, which
//! refreshes itself until the job ends.

use super::api::read_state;
use super::auth::{check_form, session};
use super::jobs::{Job, Outcome, Phase};
use super::msg::{Req, Resp};
use super::App;
use crate::error::Result;
use crate::manifest::VerificationMode;
use crate::ops::{mode_name, Command};
use crate::state::{InstalledService, State};
use crate::store::Index;
use serde_json::{Map, Value};

/// The body's fields, as JSON or a form.
type Fields = Map<String, Value>;
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

/// `GET /healthz`.
pub fn healthz(_: &App, _: &Req, _: &[&str]) -> Resp {
    Resp::text(200, "ok")
}

/// `GET /style.css`.
pub fn style(_: &App, _: &Req, _: &[&str]) -> Resp {
    Resp::new(200, "text/css; charset=utf-8", STYLE)
}

/// `GET /`: the admin page, or the way to the login.
pub fn home(app: &App, req: &Req, _: &[&str]) -> Resp {
    match session(app, req) {
        Some((_, csrf)) => home_page(app, &csrf),
        None => Resp::see_other("/login"),
    }
}

/// `GET /jobs/<id>`.
pub fn job(app: &App, req: &Req, args: &[&str]) -> Resp {
    match session(app, req) {
        Some(_) => job_page(app, args.first().copied().unwrap_or("")),
        None => Resp::see_other("/login"),
    }
}

pub(super) fn login_form(status: u16, message: &str) -> Resp {
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

/// A form post: needs the session and its CSRF token; the command `parse`
/// makes of the fields is queued as a job, and the answer is 303 to the
/// job's page.
pub fn submit(app: &App, req: &Req, parse: impl FnOnce(&Fields) -> Result<Command>) -> Resp {
    let Some((_, csrf)) = session(app, req) else {
        return refused(403, "log in first", &[]);
    };
    let fields = match check_form(app, req, &csrf) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let command = match parse(&fields) {
        Ok(c) => c,
        Err(e) => return refused(e.http_status(), &e.to_string(), &e.details()),
    };
    match app.jobs.submit(command) {
        Ok(job) => Resp::see_other(&format!("/jobs/{}", job.id)),
        Err(e) => refused(500, &e.to_string(), &[]),
    }
}

pub(super) fn refused(status: u16, message: &str, errors: &[String]) -> Resp {
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

fn home_page(app: &App, csrf: &str) -> Resp {
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
    let runtimes = crate::report::runtimes(&crate::host::RealHost, &app.config, &state);
    let op = Operate {
        runtimes: runtimes.as_ref().ok(),
        index: index.as_ref().ok(),
        cell_domain: &app.config.cell_domain,
    };
    if let Err(e) = &runtimes {
        let _ = write!(
            b,
            r#"<p class="banner warn">The containers' state is unknown: {}</p>"#,
            esc(e)
        );
    }
    installed(&mut b, &state, csrf, &op);
    store_list(&mut b, index.as_ref().ok(), &state);
    connections(&mut b, &state, csrf, &op);
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

fn installed(b: &mut String, state: &State, csrf: &str, op: &Operate) {
    b.push_str(r#"<section class="card"><h2>Installed services</h2>"#);
    if state.services.is_empty() {
        b.push_str(
            r#"<p class="muted">Nothing installed yet; pick a service from the store below.</p>"#,
        );
    }
    if !state.services.is_empty() {
        b.push_str(&button("/ui/update-all", csrf, "Update all", "secondary"));
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
        operate(b, id, s, op);
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
        if !m.instanceable {
            operate_buttons(b, id, s.stopped, csrf);
        }
        b.push_str("</div>");
        if !m.instanceable && !m.settings.is_empty() {
            settings_form(b, &format!("/ui/services/{id}/configure"), s, csrf);
        }
        if !m.instanceable {
            egress_form(b, id, state.egress.get(id), &conns, csrf);
        }
        b.push_str("</div>");
    }
    b.push_str("</section>");
}

/// A form of the manifest's settings (spec §13): labels, types, choices
/// as a select, required marks; a secret is a password field shown empty
/// (left empty, it keeps or generates its value).
fn settings_form(b: &mut String, action: &str, rec: &InstalledService, csrf: &str) {
    let _ = write!(
        b,
        r#"<form method="post" action="{}" class="settings">{}"#,
        esc(action),
        csrf_field(csrf)
    );
    setting_fields(b, &rec.manifest.settings, &rec.settings, When::Configure);
    b.push_str(r#"<button class="secondary">Save settings</button></form>"#);
}

/// Which form the settings' fields are for: a secret left empty is
/// generated at install and kept at configure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum When {
    Install,
    Configure,
}

/// One labelled field per setting, holding `current` (else the default).
fn setting_fields(
    b: &mut String,
    settings: &[crate::manifest::Setting],
    current: &std::collections::BTreeMap<String, String>,
    when: When,
) {
    use crate::manifest::SettingType;
    for st in settings {
        let name = esc(&st.name);
        let mark = if st.required { " *" } else { "" };
        let _ = write!(b, r#"<label>{}{mark} "#, esc(&st.label));
        let current = current.get(&st.name).or(st.default.as_ref());
        let value = esc(current.map(String::as_str).unwrap_or(""));
        // At install, a required field without a value to fall back on
        // must be filled (at configure, the installed value is kept).
        let fallback = current.is_some() || st.generate.is_some();
        let must = if when == When::Install && st.required && !fallback {
            " required"
        } else {
            ""
        };
        match st.kind {
            SettingType::Secret => {
                let hint = match (when, st.generate) {
                    (When::Configure, _) => "unchanged",
                    (When::Install, Some(_)) => "generated if left empty",
                    (When::Install, None) => "",
                };
                let _ = write!(
                    b,
                    r#"<input type="password" name="{name}" value="" placeholder="{hint}" autocomplete="new-password"{must}>"#
                );
            }
            SettingType::Choice => {
                let _ = write!(b, r#"<select name="{name}">"#);
                for c in &st.choices {
                    let sel = if Some(c) == current { " selected" } else { "" };
                    let _ = write!(b, r#"<option{sel}>{}</option>"#, esc(c));
                }
                b.push_str("</select>");
            }
            SettingType::Boolean => {
                let _ = write!(b, r#"<select name="{name}">"#);
                for c in ["true", "false"] {
                    let sel = if current.map(String::as_str) == Some(c) {
                        " selected"
                    } else {
                        ""
                    };
                    let _ = write!(b, r#"<option{sel}>{c}</option>"#);
                }
                b.push_str("</select>");
            }
            SettingType::Number => {
                let _ = write!(
                    b,
                    r#"<input type="number" step="any" name="{name}" value="{value}"{must}>"#
                );
            }
            SettingType::String => {
                let _ = write!(
                    b,
                    r#"<input type="text" name="{name}" value="{value}"{must}>"#
                );
            }
        }
        b.push_str("</label>");
    }
}

/// Start (when its owner stopped it) or stop, and restart (spec §13).
fn operate_buttons(b: &mut String, id: &str, stopped: bool, csrf: &str) {
    let (verb, label) = if stopped {
        ("start", "Start")
    } else {
        ("stop", "Stop")
    };
    b.push_str(&button(
        &format!("/ui/services/{id}/{verb}"),
        csrf,
        label,
        "secondary",
    ));
    b.push_str(&button(
        &format!("/ui/services/{id}/restart"),
        csrf,
        "Restart",
        "secondary",
    ));
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

fn store_list(b: &mut String, index: Option<&Index>, state: &State) {
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
            // To the install page, which asks for the settings first.
            None => {
                let _ = write!(
                    b,
                    r#"<form method="get" action="/services/{}/install" class="inline"><button class="primary">Install</button></form>"#,
                    esc(id)
                );
            }
        }
        b.push_str("</div>");
    }
    b.push_str("</div></section>");
}

fn connections(b: &mut String, state: &State, csrf: &str, op: &Operate) {
    b.push_str(r#"<section class="card"><h2>Connections</h2>"#);
    if state.connections.is_empty() {
        b.push_str(r#"<p class="muted">No connections.</p>"#);
    } else {
        b.push_str(r#"<div class="scroll"><table><thead><tr><th>Name</th><th>Service</th><th>Mark</th><th>Table</th><th>Port</th><th>IP</th><th></th></tr></thead><tbody>"#);
        for (id, c) in &state.connections {
            let _ = write!(
                b,
                r#"<tr><td data-label="Name">{}{}</td><td data-label="Service">{}</td><td data-label="Mark"><code>{:#x}</code></td><td data-label="Table">{}</td><td data-label="Port">{}</td><td data-label="IP">{}</td><td class="end">{}</td></tr>"#,
                esc(id),
                connection_runtime(id, op),
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

// --- runtime, updates, open links and logs (spec §13) ---------------------------

/// What the page shows of what is installed beyond the state file.
struct Operate<'a> {
    runtimes: Option<&'a crate::runtime::Runtimes>,
    index: Option<&'a Index>,
    cell_domain: &'a str,
}

/// A runtime state as a badge; `data-state` carries the word for tests
/// and styles.
fn state_badge(state: crate::runtime::RunState, exit_code: Option<i32>) -> String {
    use crate::runtime::RunState::*;
    let class = match state {
        Healthy | Running => "ok",
        Starting | Stopped => "info",
        Missing | Exited | Restarting | Unhealthy => "bad",
    };
    let word = match (state, exit_code) {
        (Exited, Some(code)) => format!("exited ({code})"),
        _ => state.as_str().to_string(),
    };
    format!(
        r#"<span class="badge {class} runtime" data-state="{}">{}</span>"#,
        state.as_str(),
        esc(&word)
    )
}

/// A service's runtime (each container's for several), its update badge,
/// its open links and its logs link.
fn operate(b: &mut String, id: &str, s: &crate::state::InstalledService, op: &Operate) {
    let m = &s.manifest;
    b.push_str(r#"<div class="small operate">"#);
    match op.runtimes.and_then(|r| r.services.get(id)) {
        Some(rt) => b.push_str(&state_badge(rt.state, rt.exit_code)),
        None if m.instanceable => b.push_str(r#"<span class="muted">runs as connections</span>"#),
        None => {}
    }
    if let Some(e) = op.index.and_then(|i| {
        i.services
            .iter()
            .find(|e| e.id.as_str() == id)
            .filter(|_| crate::report::update_available(s, i))
    }) {
        let _ = write!(
            b,
            r#" <span class="badge info update" data-update="{}">Update available: {}</span>"#,
            esc(&e.version),
            esc(&e.version)
        );
    }
    for (sub, _) in &m.routes {
        let url = format!("https://{sub}.{}/", op.cell_domain);
        let _ = write!(
            b,
            r#" <a class="open" href="{}" rel="noopener">open {}</a>"#,
            esc(&url),
            esc(sub)
        );
    }
    if !m.instanceable {
        let _ = write!(
            b,
            r#" <a class="logs" href="/services/{}/logs">logs</a>"#,
            esc(id)
        );
    }
    b.push_str("</div>");
    if let Some(rt) = op.runtimes.and_then(|r| r.services.get(id)) {
        if rt.containers.len() > 1 {
            b.push_str(r#"<ul class="small containers">"#);
            for c in &rt.containers {
                let _ = write!(
                    b,
                    r#"<li data-container="{}">{} ({}) {} <a href="/services/{}/logs?service={}">logs</a></li>"#,
                    esc(&c.name),
                    esc(&c.name),
                    esc(&c.service),
                    state_badge(c.state, c.exit_code),
                    esc(id),
                    esc(&c.service)
                );
            }
            b.push_str("</ul>");
        }
    }
}

/// A connection instance's runtime badge and logs link, after its name.
fn connection_runtime(id: &str, op: &Operate) -> String {
    let badge = op
        .runtimes
        .and_then(|r| r.connections.get(id))
        .map(|rt| state_badge(rt.state, rt.exit_code))
        .unwrap_or_default();
    format!(
        r#" {badge} <a class="logs small" href="/connections/{}/logs">logs</a>"#,
        esc(id)
    )
}

/// `GET /services/<id>/install`: the store's manifest of `id` — name,
/// version, description — and a form of its settings (spec §13) that
/// posts the install. A service already installed goes back to its row.
pub fn install_page(app: &App, req: &Req, args: &[&str]) -> Resp {
    let Some((_, csrf)) = session(app, req) else {
        return Resp::see_other("/login");
    };
    let id = match crate::ids::ServiceId::parse(args.first().copied().unwrap_or("")) {
        Ok(id) => id,
        Err(e) => return refused(e.http_status(), &e.to_string(), &e.details()),
    };
    if read_state(app).is_ok_and(|s| s.services.contains_key(id.as_str())) {
        return Resp::see_other(&format!("/#svc-{id}"));
    }
    let raw = match app.store.manifest(&id) {
        Ok(raw) => raw,
        Err(e) => return refused(e.http_status(), &e.to_string(), &e.details()),
    };
    let text = |key: &str| raw.get(key).and_then(Value::as_str).unwrap_or("");
    // Only for the form: the install itself validates the whole manifest
    // and refuses it, with every reason, if it is wrong.
    let settings: Vec<crate::manifest::Setting> = raw
        .get("settings")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let title = format!("Install {}", text("name"));
    let mut b = format!(
        r#"<section class="card"><h2>{} <span class="tag">{}</span></h2><p class="small">{}</p><form method="post" action="/ui/services/{}/install" class="settings install">{}"#,
        esc(&title),
        esc(text("version")),
        esc(text("description")),
        esc(id.as_str()),
        csrf_field(&csrf)
    );
    if settings.is_empty() {
        b.push_str(r#"<p class="muted">This service has no settings.</p>"#);
    }
    setting_fields(&mut b, &settings, &Default::default(), When::Install);
    b.push_str(r#"<button class="primary">Install</button></form><p><a href="/">Back to the admin page</a></p></section>"#);
    Resp::html(200, layout(&title, &csrf, &b, false))
}

/// `GET /services/<id>/logs[?service=NAME&tail=N]`: the logs view.
pub fn service_logs(app: &App, req: &Req, args: &[&str]) -> Resp {
    logs_page(app, req, args, crate::ops::LogsOf::Service)
}

/// `GET /connections/<id>/logs[?tail=N]`.
pub fn connection_logs(app: &App, req: &Req, args: &[&str]) -> Resp {
    logs_page(app, req, args, crate::ops::LogsOf::Connection)
}

fn logs_page(app: &App, req: &Req, args: &[&str], of: crate::ops::LogsOf) -> Resp {
    if session(app, req).is_none() {
        return Resp::see_other("/login");
    }
    let id = args.first().copied().unwrap_or("");
    let text = match super::api::logs_text(app, req, args, of) {
        Ok(t) => t,
        Err(e) => return refused(e.http_status(), &e.to_string(), &e.details()),
    };
    let service = req.query_param("service").unwrap_or_default();
    let title = if service.is_empty() {
        format!("Logs of {id}")
    } else {
        format!("Logs of {id} / {service}")
    };
    let tail = req.query_param("tail").unwrap_or_default();
    let mut b = format!(
        r#"<section class="card"><h2>{}</h2><form method="get" class="row-form"><input type="hidden" name="service" value="{}"><label>Lines <input name="tail" inputmode="numeric" value="{}" placeholder="200"></label><button class="secondary">Show</button></form>"#,
        esc(&title),
        esc(&service),
        esc(&tail)
    );
    if text.is_empty() {
        b.push_str(r#"<p class="muted">No log lines.</p>"#);
    } else {
        let _ = write!(b, r#"<pre class="logs">{}</pre>"#, esc(&text));
    }
    b.push_str(r#"<p><a href="/">Back to the admin page</a></p></section>"#);
    Resp::html(200, layout(&title, "", &b, false))
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
    fn the_settings_form_has_every_kind_and_never_a_secret() {
        let mut m = crate::net::tests::manifest("app");
        m.settings = serde_json::from_value(serde_json::json!([
            {"name": "GREETING", "label": "Greeting <b>", "type": "string", "default": "hi"},
            {"name": "PASSWORD", "label": "Password", "type": "secret", "required": true},
            {"name": "SIZE", "label": "Size", "type": "choice", "choices": ["s", "m"]},
            {"name": "FAST", "label": "Fast", "type": "boolean"},
            {"name": "PORT", "label": "Port", "type": "number"},
        ]))
        .unwrap();
        let mut rec: InstalledService = serde_json::from_value(serde_json::json!({
            "manifest": serde_json::to_value(&m).unwrap(),
            "ip": null, "installed_at": 1, "image_digest": null
        }))
        .unwrap();
        rec.settings.insert("SIZE".into(), "m".into());
        rec.secrets.insert(
            "PASSWORD".into(),
            crate::state::Secret("hunter2secret".into()),
        );
        let mut b = String::new();
        settings_form(&mut b, "/ui/services/app/configure", &rec, "tok");
        assert!(!b.contains("hunter2secret"), "{b}");
        assert!(
            b.contains(r#"<input type="password" name="PASSWORD" value="""#),
            "{b}"
        );
        assert!(b.contains("Password *"), "the required mark: {b}");
        assert!(b.contains("<option selected>m</option>"), "{b}");
        assert!(b.contains(r#"name="GREETING" value="hi""#), "{b}");
        assert!(b.contains(r#"type="number""#) && b.contains(r#"name="FAST""#));
        assert!(b.contains("Greeting &lt;b&gt;"), "labels are escaped: {b}");
    }

    #[test]
    fn install_fields_mark_what_must_be_filled_and_what_is_generated() {
        let settings: Vec<crate::manifest::Setting> = serde_json::from_value(serde_json::json!([
            {"name": "ADMIN", "label": "Admin", "type": "string", "required": true},
            {"name": "TOKEN", "label": "Token", "type": "secret", "required": true, "generate": 24},
            {"name": "KEY", "label": "Key", "type": "secret", "required": true},
            {"name": "PORT", "label": "Port", "type": "number", "required": true, "default": "80"},
        ]))
        .unwrap();
        let mut b = String::new();
        setting_fields(&mut b, &settings, &Default::default(), When::Install);
        assert!(b.contains(r#"name="ADMIN" value="" required>"#), "{b}");
        assert!(
            b.contains(r#"name="TOKEN" value="" placeholder="generated if left empty" autocomplete="new-password">"#),
            "{b}"
        );
        assert!(
            b.contains(
                r#"name="KEY" value="" placeholder="" autocomplete="new-password" required>"#
            ),
            "{b}"
        );
        assert!(b.contains(r#"name="PORT" value="80">"#), "{b}");
        // At configure nothing is required: the installed values stay.
        let mut b = String::new();
        setting_fields(&mut b, &settings, &Default::default(), When::Configure);
        assert!(!b.contains("required"), "{b}");
    }

    #[test]
    fn layout_refreshes_only_when_asked() {
        assert!(layout("t", "", "", true).contains("http-equiv=\"refresh\""));
        assert!(!layout("t", "", "", false).contains("refresh"));
        assert!(layout("<b>", "c", "", false).contains("&lt;b&gt;"));
    }
}
