//! `pic-store serve` over real TCP (spec §12): every API row with and
//! without the token, request hygiene (Host, 405, 413, bodies), the admin
//! page's login, CSRF and escaping, token throttling, idle and slow
//! clients, and installs through the API and the forms on the real rig.
//! The HTTP client is a few lines over `TcpStream`, so the tests see the
//! bytes the server sends.

mod common;

use common::http::{build, read_answer, request, send_raw, Answer, Serve};
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

// --- the server under test -------------------------------------------------------

impl Serve {
    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// An authenticated API call with an optional JSON body.
    fn api(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let auth = self.bearer();
        let text = body.map(|b| b.to_string()).unwrap_or_default();
        let mut h = vec![("Authorization", auth.as_str())];
        if !text.is_empty() {
            h.push(("Content-Type", "application/json"));
        }
        request(self.addr, method, path, &h, text.as_bytes())
    }

    fn api_form(&self, method: &str, path: &str, form: &str) -> Answer {
        let auth = self.bearer();
        request(
            self.addr,
            method,
            path,
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            form.as_bytes(),
        )
    }

    /// Logs in with the token URL; returns the session cookie.
    fn login(&self) -> String {
        let a = request(
            self.addr,
            "GET",
            &format!("/login?token={}", self.token),
            &[],
            b"",
        );
        assert_eq!(a.status, 303, "{a:?}");
        assert_eq!(a.header("Location"), Some("/"));
        let cookie = a
            .header("Set-Cookie")
            .expect("a session cookie")
            .to_string();
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(cookie.contains(attr), "{cookie}");
        }
        cookie.split(';').next().unwrap().to_string()
    }

    fn page(&self, path: &str, cookie: &str) -> Answer {
        request(self.addr, "GET", path, &[("Cookie", cookie)], b"")
    }

    fn post_form(&self, path: &str, cookie: &str, form: &str) -> Answer {
        request(
            self.addr,
            "POST",
            path,
            &[
                ("Cookie", cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            form.as_bytes(),
        )
    }

    /// Follows a job until it ends; returns its JSON.
    fn wait_job(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let j = self.api("GET", &format!("/api/jobs/{id}"), None).json();
            if j["state"] == "done" {
                return j;
            }
            assert!(Instant::now() < deadline, "job {id} did not end: {j}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The CSRF token of the admin page's forms.
fn csrf_of(html: &str) -> String {
    let key = r#"name="csrf" value=""#;
    let start = html.find(key).expect("a CSRF field") + key.len();
    html[start..].split('"').next().unwrap().to_string()
}

fn state_file(dir: &TempDir) -> Option<Vec<u8>> {
    std::fs::read(dir.state_dir().join("state.json")).ok()
}

// --- without the rig: routing, auth, hygiene --------------------------------------

const XSS_NAME: &str = "<script>alert(1)</script>";

/// A store with one harmless-looking entry whose name is markup.
fn xss_store(dir: &TempDir) -> Store {
    let mut store = Store::new(dir);
    store.add(
        "xss",
        json!({
            "id": "xss", "name": XSS_NAME, "version": "1\"><b>",
            "description": "<img src=x onerror=alert(2)>",
            "settings": [{"name": "X", "label": "<script>alert(3)</script>", "type": "string", "default": "\"><i>"}]
        }),
        "services: {}\n",
    );
    store
}

/// Every row of spec §12's table, as (method, path).
const API_ROWS: &[(&str, &str)] = &[
    ("GET", "/api/status"),
    ("GET", "/api/services"),
    ("GET", "/api/services/xss"),
    ("POST", "/api/services/xss/install"),
    ("POST", "/api/services/xss/remove"),
    ("POST", "/api/services/xss/update"),
    ("GET", "/api/jobs/0123"),
    ("GET", "/api/connections"),
    ("POST", "/api/connections"),
    ("DELETE", "/api/connections/vpn"),
    ("PUT", "/api/peers/10.0.0.2/route"),
    ("DELETE", "/api/peers/10.0.0.2/route"),
    ("GET", "/api/peers"),
    ("PUT", "/api/services/xss/egress"),
    ("DELETE", "/api/services/xss/egress"),
    ("GET", "/api/settings"),
    ("PUT", "/api/settings"),
    ("POST", "/api/reapply"),
];

#[test]
fn every_api_row_needs_the_token() {
    let dir = TempDir::with_prefix("pic-http");
    let _store = xss_store(&dir);
    let s = Serve::start(&dir, &[]);
    let health = request(s.addr, "GET", "/healthz", &[], b"");
    assert_eq!((health.status, health.body.trim()), (200, "ok"));
    for (method, path) in API_ROWS {
        for auth in [None, Some("Bearer nope"), Some("Basic abc")] {
            let h: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
            let a = request(s.addr, method, path, &h, b"");
            // Wrong tokens are throttled after a few: 429 is also a refusal.
            assert!(
                a.status == 401 || a.status == 429,
                "{method} {path} with {auth:?}: {a:?}"
            );
            let j = a.json();
            assert_eq!(j["ok"], json!(false));
            assert!(j["error"].is_string() && j["errors"].is_array(), "{j}");
        }
    }
    assert!(s.log_text().contains("wrong API token"));
    assert_eq!(
        state_file(&dir),
        None,
        "a refused request changed the state"
    );
}

#[test]
fn reads_answer_with_the_token() {
    let dir = TempDir::with_prefix("pic-http");
    let _store = xss_store(&dir);
    let s = Serve::start(&dir, &[]);

    let st = s.api("GET", "/api/status", None);
    assert_eq!(st.status, 200, "{st:?}");
    let j = st.json();
    assert_eq!(j["version"], json!(env!("CARGO_PKG_VERSION")));
    assert!(j["pending"].is_null() && j["services"] == json!(0), "{j}");

    let sv = s.api("GET", "/api/services", None).json();
    assert_eq!(sv["available"][0]["id"], json!("xss"));
    assert_eq!(sv["available"][0]["name"], json!(XSS_NAME));
    assert_eq!(sv["installed"], json!({}));
    assert_eq!(sv["stale"], json!(false));
    // The index has been fetched: status now dates it.
    let j = s.api("GET", "/api/status", None).json();
    assert_eq!(j["index"]["stale"], json!(false), "{j}");

    let a = s.api("GET", "/api/services/xss", None);
    assert_eq!(a.status, 404, "{a:?}");
    let a = s.api("GET", "/api/services/Bad..Id", None);
    assert_eq!(a.status, 400, "{a:?}");
    assert!(!a.json()["errors"].as_array().unwrap().is_empty());
    assert_eq!(s.api("GET", "/api/jobs/nope", None).status, 404);
    assert_eq!(
        s.api("GET", "/api/connections", None).json(),
        json!({"connections": {}})
    );
    assert_eq!(s.api("GET", "/api/connections/none", None).status, 404);
    assert_eq!(
        s.api("GET", "/api/peers", None).json(),
        json!({"routes": {}})
    );
    assert_eq!(
        s.api("GET", "/api/settings", None).json(),
        json!({"image_verification_mode": "warn"})
    );
    let nf = s.api("GET", "/api/nothing/here", None);
    assert_eq!(nf.status, 404);
    assert_eq!(nf.json()["ok"], json!(false));
}

#[test]
fn methods_bodies_and_refusals() {
    let dir = TempDir::with_prefix("pic-http");
    let _store = xss_store(&dir);
    let s = Serve::start(&dir, &[]);

    // 405 names the methods the path has.
    for (method, path, allow) in [
        ("DELETE", "/api/services", "GET"),
        ("GET", "/api/services/xss/install", "POST"),
        ("PATCH", "/api/settings", "GET, PUT"),
        ("GET", "/api/peers/10.0.0.2/route", "PUT, DELETE"),
        ("POST", "/api/jobs/x", "GET"),
        ("GET", "/ui/reapply", "POST"),
        ("GET", "/logout", "POST"),
    ] {
        let a = s.api(method, path, None);
        assert_eq!(a.status, 405, "{method} {path}: {a:?}");
        assert_eq!(a.header("Allow"), Some(allow), "{method} {path}");
    }

    // Invalid ids and addresses are 400 with every problem listed, in
    // JSON and in form bodies alike.
    for (method, path, body) in [
        ("POST", "/api/services/UPPER/install", json!({})),
        (
            "PUT",
            "/api/peers/10.0.0.300/route",
            json!({"connection": "vpn"}),
        ),
        ("PUT", "/api/peers/10.0.0.2/route", json!({})),
        (
            "PUT",
            "/api/peers/10.0.0.2/route",
            json!({"connection": "../x"}),
        ),
        ("PUT", "/api/services/xss/egress", json!({"connection": 7})),
        (
            "PUT",
            "/api/settings",
            json!({"image_verification_mode": "sometimes"}),
        ),
        ("POST", "/api/connections", json!({"service": "proxy"})),
        (
            "POST",
            "/api/connections",
            json!({"service": "proxy", "name": "a", "env": {"K": 1}}),
        ),
    ] {
        let a = s.api(method, path, Some(body.clone()));
        assert_eq!(a.status, 400, "{method} {path} {body}: {a:?}");
        let j = a.json();
        assert_eq!(j["ok"], json!(false));
        assert!(!j["errors"].as_array().unwrap().is_empty(), "{j}");
    }
    for (method, path, form) in [
        ("PUT", "/api/settings", "image_verification_mode=sometimes"),
        ("PUT", "/api/peers/10.0.0.2/route", "connection=Bad%20Name"),
        (
            "POST",
            "/api/connections",
            "service=proxy&name=a&env=NOEQUALS",
        ),
        ("PUT", "/api/settings", "image_verification_mode=%zz"),
    ] {
        let a = s.api_form(method, path, form);
        assert_eq!(a.status, 400, "{method} {path} {form}: {a:?}");
        assert!(!a.json()["errors"].as_array().unwrap().is_empty());
    }
    // Bodies must be JSON or a form.
    let auth = s.bearer();
    let a = request(
        s.addr,
        "PUT",
        "/api/settings",
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        b"image_verification_mode=off",
    );
    assert_eq!(a.status, 400, "{a:?}");
    let a = request(
        s.addr,
        "PUT",
        "/api/settings",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        b"{not json",
    );
    assert_eq!(a.status, 400, "{a:?}");

    // An id the store does not list: 404; removing what is not installed: 404.
    let a = s.api("POST", "/api/services/nosuch/install", None);
    assert_eq!(a.status, 404, "{a:?}");
    assert!(a.json()["job"].is_string());
    let a = s.api_form("POST", "/api/services/xss/remove", "purge=1");
    assert_eq!(a.status, 404, "{a:?}");

    // Host allow-list: 403 for another name, and without a Host; 400 for two.
    let a = request(s.addr, "GET", "/healthz", &[("Host", "evil.example")], b"");
    assert_eq!(a.status, 403, "{a:?}");
    let a = request(
        s.addr,
        "GET",
        "/healthz",
        &[("Host", "LOCALHOST:8420")],
        b"",
    );
    assert_eq!(a.status, 200, "{a:?}");
    let a = send_raw(s.addr, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(a.status, 403, "{a:?}");
    let a = request(
        s.addr,
        "GET",
        "/healthz",
        &[("Host", "localhost"), ("Host", "evil.example")],
        b"",
    );
    assert_eq!(a.status, 400, "{a:?}");

    // 413: one byte over 64 KiB, read and refused...
    let big = vec![b'a'; 64 * 1024 + 1];
    let a = request(
        s.addr,
        "PUT",
        "/api/settings",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &big,
    );
    assert_eq!(a.status, 413, "{a:?}");
    // ...exactly 64 KiB is read (and is bad JSON, so 400).
    let a = request(
        s.addr,
        "PUT",
        "/api/settings",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &big[..64 * 1024],
    );
    assert_eq!(a.status, 400, "{a:?}");
    // ...a chunked body over the limit too...
    let mut chunked = format!(
        "PUT /api/settings HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        s.addr
    )
    .into_bytes();
    for _ in 0..17 {
        chunked.extend_from_slice(b"1000\r\n");
        chunked.extend_from_slice(&[b' '; 4096]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(send_raw(s.addr, &chunked).status, 413);
    // ...and a declared 10 MB body is refused without being sent.
    let t = Instant::now();
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        c,
        "POST /api/reapply HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 10485760\r\n\r\n",
        s.addr
    )
    .unwrap();
    let a = read_answer(&mut c);
    assert_eq!(a.status, 413, "{a:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop(c);

    assert_eq!(
        state_file(&dir),
        None,
        "a refused request changed the state"
    );
}

#[test]
fn admin_page_escapes_store_text_and_refuses_cross_site_posts() {
    let dir = TempDir::with_prefix("pic-http");
    let _store = xss_store(&dir);
    let s = Serve::start(&dir, &[]);

    // Not logged in: to the login form.
    let a = request(s.addr, "GET", "/", &[], b"");
    assert_eq!((a.status, a.header("Location")), (303, Some("/login")));
    let form = request(s.addr, "GET", "/login", &[], b"");
    assert_eq!(form.status, 200);
    assert!(form.body.contains(r#"name="token""#));
    let wrong = request(
        s.addr,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"token=nope",
    );
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("Set-Cookie").is_none());
    let ok = request(
        s.addr,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("token={}", s.token).as_bytes(),
    );
    assert_eq!(ok.status, 303, "{ok:?}");
    assert!(ok.header("Set-Cookie").is_some());

    let cookie = s.login();
    let home = s.page("/", &cookie);
    assert_eq!(home.status, 200, "{home:?}");
    for (name, value) in [
        (
            "Content-Security-Policy",
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "same-origin"),
        ("Cache-Control", "no-store"),
    ] {
        assert_eq!(home.header(name), Some(value), "{name}");
    }
    assert!(home.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(home.body.contains("&lt;img src=x onerror=alert(2)&gt;"));
    assert!(home.body.contains("1&quot;&gt;&lt;b&gt;"));
    assert!(!home.body.contains("<script"), "unescaped markup");
    assert!(!home.body.contains("<img"), "unescaped markup");
    // The install page shows the store's text, escaped too.
    let install = s.page("/services/xss/install", &cookie);
    assert_eq!(install.status, 200, "{}", install.body);
    for escaped in [
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "&lt;img src=x onerror=alert(2)&gt;",
        "&lt;script&gt;alert(3)&lt;/script&gt;",
        "1&quot;&gt;&lt;b&gt;",
        "&quot;&gt;&lt;i&gt;",
    ] {
        assert!(
            install.body.contains(escaped),
            "{escaped}: {}",
            install.body
        );
    }
    for markup in ["<script", "<img", "<b>", "<i>"] {
        assert!(!install.body.contains(markup), "unescaped {markup}");
    }
    let css = request(s.addr, "GET", "/style.css", &[], b"");
    assert_eq!(css.status, 200);
    assert!(css.header("Content-Type").unwrap().starts_with("text/css"));

    // A page on another origin posting with the victim's cookie: no
    // CSRF token, or a wrong one, or another Origin: 403, nothing queued.
    let csrf = csrf_of(&home.body);
    let before = state_file(&dir);
    for (form, origin) in [
        ("".to_string(), None),
        ("csrf=0000".to_string(), None),
        (format!("csrf={csrf}"), Some("http://evil.example")),
        (format!("csrf={csrf}"), Some("null")),
    ] {
        let mut h = vec![
            ("Cookie", cookie.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        if let Some(o) = origin {
            h.push(("Origin", o));
        }
        for path in [
            "/ui/services/xss/install",
            "/ui/settings",
            "/ui/reapply",
            "/logout",
        ] {
            let a = request(s.addr, "POST", path, &h, form.as_bytes());
            assert_eq!(a.status, 403, "{path} {form} {origin:?}: {a:?}");
        }
    }
    // Without the cookie a form post is refused too.
    let a = request(
        s.addr,
        "POST",
        "/ui/reapply",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("csrf={csrf}").as_bytes(),
    );
    assert_eq!(a.status, 403);
    assert_eq!(state_file(&dir), before, "a refused form changed the state");
    let st = s.api("GET", "/api/status", None).json();
    assert_eq!(st["jobs"], json!([]), "a refused form queued a job");
    assert!(s.log_text().contains("CSRF"));

    // With the token, a form post becomes a job with a page of its own.
    let a = s.post_form("/ui/services/xss/install", &cookie, &format!("csrf={csrf}"));
    assert_eq!(a.status, 303, "{a:?}");
    let location = a.header("Location").unwrap().to_string();
    let job = location.strip_prefix("/jobs/").expect("a job page");
    let j = s.wait_job(job);
    assert_eq!(j["ok"], json!(false), "{j}");
    assert!(j["error"].as_str().unwrap().contains("xss"), "{j}");
    let page = s.page(&location, &cookie);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("failed"), "{}", page.body);
    assert!(!page.body.contains("http-equiv=\"refresh\""));
    assert_eq!(s.page(&location, "pic_session=forged").status, 303);

    // Log out: the cookie stops working.
    let a = s.post_form("/logout", &cookie, &format!("csrf={csrf}"));
    assert_eq!(a.status, 303);
    assert!(a.header("Set-Cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(s.page("/", &cookie).status, 303);
}

/// What a browser sends with the page's own forms: its Origin, which must
/// be accepted. (Under `Referrer-Policy: no-referrer` a browser sends
/// `Origin: null` instead, and every form of the page was refused; the
/// browser test found it.)
#[test]
fn form_posts_from_the_page_itself_are_accepted() {
    let dir = TempDir::with_prefix("pic-http");
    let _store = xss_store(&dir);
    let s = Serve::start(&dir, &[]);
    let cookie = s.login();
    let home = s.page("/", &cookie);
    assert_eq!(home.header("Referrer-Policy"), Some("same-origin"));
    let csrf = csrf_of(&home.body);
    let own = format!("http://{}", s.addr);
    let a = request(
        s.addr,
        "POST",
        "/ui/settings",
        &[
            ("Cookie", cookie.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", own.as_str()),
        ],
        format!("csrf={csrf}&image_verification_mode=off").as_bytes(),
    );
    assert_eq!(a.status, 303, "{a:?}");
    let job = a.header("Location").unwrap().trim_start_matches("/jobs/");
    assert_eq!(s.wait_job(job)["ok"], json!(true));
    assert_eq!(
        s.api("GET", "/api/settings", None).json(),
        json!({"image_verification_mode": "off"})
    );
}

/// A peer address is checked by the one parser every entry point uses: the
/// API and the forms refuse what the CLI refuses, with 400, before a job
/// is queued (no job id in the answer, no redirect to a job page).
#[test]
fn peer_addresses_the_cli_refuses_are_refused_before_any_job() {
    let dir = TempDir::with_prefix("pic-http");
    let _store = xss_store(&dir);
    let s = Serve::start(&dir, &[]);
    let cookie = s.login();
    let csrf = csrf_of(&s.page("/", &cookie).body);
    for bad in [
        "0.0.0.0",
        "127.0.0.1",
        "255.255.255.255",
        "224.0.0.1",
        "169.254.1.1",
    ] {
        let route = format!("/api/peers/{bad}/route");
        let a = s.api("PUT", &route, Some(json!({"connection": "c1"})));
        assert_refused(&a, 400, "unicast");
        assert!(a.json().get("job").is_none(), "{bad}: a job ran: {a:?}");
        let a = s.api("DELETE", &route, None);
        assert_refused(&a, 400, "unicast");
        assert!(a.json().get("job").is_none(), "{bad}: a job ran: {a:?}");

        let form = format!("csrf={csrf}&peer={bad}&connection=c1");
        let a = s.post_form("/ui/peers", &cookie, &form);
        assert_eq!(a.status, 400, "{bad}: {a:?}");
        assert!(a.body.contains("unicast"), "{bad}: {a:?}");
        let a = s.post_form(
            &format!("/ui/peers/{bad}/unroute"),
            &cookie,
            &format!("csrf={csrf}"),
        );
        assert_eq!(a.status, 400, "{bad}: {a:?}");
        assert!(a.body.contains("unicast"), "{bad}: {a:?}");
    }
    // And the CLI, for the same addresses.
    for bad in ["0.0.0.0", "169.254.1.1"] {
        let out = pic(&dir, &[], &["peer", "route", bad, "c1"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unicast"),
            "{out:?}"
        );
    }
}

#[test]
fn wrong_tokens_are_throttled_and_logged_then_the_right_one_works() {
    let dir = TempDir::with_prefix("pic-http");
    let _store = xss_store(&dir);
    let s = Serve::start(&dir, &[]);
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    let mut retry_after = 0u64;
    let t = Instant::now();
    for i in 0..1000 {
        let auth = format!("Bearer wrong{i}");
        let a = request(
            s.addr,
            "GET",
            "/api/status",
            &[("Authorization", &auth)],
            b"",
        );
        *counts.entry(a.status).or_default() += 1;
        if a.status == 429 {
            retry_after = a.header("Retry-After").unwrap().parse().unwrap();
        }
    }
    eprintln!("1000 wrong tokens in {:?}: {counts:?}", t.elapsed());
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), vec![401, 429]);
    assert!(counts[&429] > 900, "{counts:?}");
    // The login form is throttled the same way.
    let a = request(s.addr, "GET", "/login?token=wrong", &[], b"");
    assert_eq!(a.status, 429);
    assert!((1..=9).contains(&retry_after), "{retry_after}");
    // Logged, but rate-limited: a flood does not fill the log.
    let log = s.log_text();
    let warnings = log.matches("wrong API token").count();
    assert!((1..=20).contains(&warnings), "{warnings} warnings: {log}");
    // The right token is never refused, not even during the lock-out.
    let a = s.api("GET", "/api/status", None);
    assert_eq!(a.status, 200, "{a:?}");
}

#[test]
fn idle_and_slow_clients_do_not_stop_new_ones() {
    let dir = TempDir::with_prefix("pic-http");
    let _store = xss_store(&dir);
    let s = Serve::start(&dir, &[]);
    let mut idle = Vec::new();
    for i in 0..200 {
        // From other addresses: one address holds at most a quarter of
        // the connections still being read (spec §12).
        let from = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % 2) as u8);
        let mut c = connect_from(from, s.addr).expect("open an idle connection");
        if i % 2 == 0 {
            // Half send part of a request line and stop.
            let _ = c.write_all(b"GET /api/sta");
        }
        idle.push(c);
    }
    // More clients than workers announce a body and send it slowly.
    let auth = s.bearer();
    for _ in 0..12 {
        let mut c = TcpStream::connect(s.addr).unwrap();
        write!(
            c,
            "PUT /api/settings HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{{",
            s.addr
        )
        .unwrap();
        idle.push(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    for path in ["/healthz", "/api/services", "/healthz"] {
        let t = Instant::now();
        let a = request(s.addr, "GET", path, &[("Authorization", &auth)], b"");
        assert_eq!(a.status, 200, "{path}: {a:?}");
        worst = worst.max(t.elapsed());
    }
    eprintln!("with 200 idle and 12 slow-body connections open, worst answer took {worst:?}");
    assert!(worst < Duration::from_secs(1), "{worst:?}");
    drop(idle);
}

// --- the front relay: head limits, deadlines, spoofing, leaks ----------------------

/// What the server process holds, from `/proc`.
#[derive(Debug, Clone, Copy)]
struct Usage {
    threads: usize,
    fds: usize,
    rss_kib: u64,
}

impl Serve {
    fn usage(&self) -> Usage {
        let pid = self.child.id();
        let count = |what: &str| {
            std::fs::read_dir(format!("/proc/{pid}/{what}"))
                .map(|d| d.count())
                .unwrap_or(0)
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Usage {
            threads: count("task"),
            fds: count("fd"),
            rss_kib,
        }
    }

    /// A few requests, so that lazily made threads and caches exist, then
    /// what the server holds at rest.
    fn warm_baseline(&self) -> Usage {
        for _ in 0..20 {
            let a = request(self.addr, "GET", "/healthz", &[], b"");
            assert_eq!(a.status, 200);
        }
        // tiny_http's idle connection threads end after 5 s.
        std::thread::sleep(Duration::from_secs(6));
        self.usage()
    }

    /// Waits until threads and descriptors are back within `slack` of
    /// `base` (idle helper threads take a few seconds to end).
    fn assert_settles(&self, base: Usage, slack: usize, what: &str) -> Usage {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.usage();
            if now.threads <= base.threads + slack && now.fds <= base.fds + slack {
                eprintln!("{what}: settled at {now:?} (base {base:?})");
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: threads or descriptors leaked: {now:?}, base {base:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Reads until the server closes (or 20 s pass): everything it sent.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

fn status_of(raw: &[u8]) -> Option<u16> {
    String::from_utf8_lossy(raw)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Sends a head that never ends: `prefix`, then `filler` bytes of one
/// endless header line; returns what came back.
fn send_endless(addr: SocketAddr, prefix: &str, filler: usize) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut raw = prefix.as_bytes().to_vec();
    raw.resize(prefix.len() + filler, b'x');
    // The server refuses long before the end: the write fails part way.
    let _ = c.write_all(&raw);
    read_to_close(&mut c)
}

#[test]
fn endless_header_lines_and_header_floods_get_431_in_bounded_memory() {
    let dir = TempDir::with_prefix("pic-http");
    let s = Serve::start(&dir, &[]);
    let base = s.warm_baseline();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, pid) = (peak.clone(), sampling.clone(), s.child.id());
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::SeqCst) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let rss: u64 = status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                peak.fetch_max(rss, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let t = Instant::now();
    let prefix = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Big: ", s.addr);
    // 50 clients at once, each with 1 MB of one header line.
    let endless: Vec<_> = (0..50)
        .map(|_| {
            let (addr, prefix) = (s.addr, prefix.clone());
            std::thread::spawn(move || send_endless(addr, &prefix, 1 << 20))
        })
        .collect();
    for h in endless {
        let answer = h.join().unwrap();
        assert_eq!(
            status_of(&answer),
            Some(431),
            "{:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
        let text = String::from_utf8_lossy(&answer);
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(text.contains("\"ok\": false"), "{text}");
    }
    // 10,000 short headers, and 10,000 header lines of nothing but a colon.
    for line in ["X-H: v\r\n", ":\r\n"] {
        let mut c = TcpStream::connect(s.addr).unwrap();
        let mut raw = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n", s.addr);
        raw.push_str(&line.repeat(10_000));
        raw.push_str("\r\n");
        let _ = c.write_all(raw.as_bytes());
        let answer = read_to_close(&mut c);
        assert!(
            matches!(status_of(&answer), Some(431) | Some(400)),
            "{line:?}: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    // 100 headers are fine; the head limit is 16 KiB, 101 lines is not.
    let most: String = (0..99).map(|i| format!("X-H{i}: v\r\n")).collect();
    let a = send_raw(
        s.addr,
        format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n{most}\r\n", s.addr).as_bytes(),
    );
    assert_eq!(a.status, 200, "{a:?}");
    let too_many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let a = send_raw(
        s.addr,
        format!(
            "GET /healthz HTTP/1.1\r\nHost: {}\r\n{too_many}\r\n",
            s.addr
        )
        .as_bytes(),
    );
    assert_eq!(a.status, 431, "{a:?}");
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    sampler.join().unwrap();
    let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
    let after = s.assert_settles(base, 4, "after 50 endless headers");
    eprintln!(
        "50 × 1 MB header lines and 10,000 headers refused in {:?}: RSS {} KiB at rest, peak {peak} KiB, after {} KiB",
        t.elapsed(),
        base.rss_kib,
        after.rss_kib
    );
    assert!(
        peak < base.rss_kib + 16 * 1024,
        "RSS peaked at {peak} KiB from {} KiB",
        base.rss_kib
    );
    assert_eq!(request(s.addr, "GET", "/healthz", &[], b"").status, 200);
}

#[test]
fn slow_heads_and_stalled_bodies_are_cut_off() {
    let dir = TempDir::with_prefix("pic-http");
    let s = Serve::start(&dir, &[]);
    let base = s.warm_baseline();
    let auth = s.bearer();
    // A head that trickles one byte a second never ends: 408 at 10 s.
    let trickle = {
        let addr = s.addr;
        std::thread::spawn(move || {
            let t = Instant::now();
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ").unwrap();
            let mut reader = c.try_clone().unwrap();
            reader
                .set_read_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while t.elapsed() < Duration::from_secs(20) {
                if c.write_all(b"a").is_err() {
                    break;
                }
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            (t.elapsed(), got)
        })
    };
    // A body that stops part way: 408 once it has been idle 30 s.
    let stalled = {
        let (addr, auth) = (s.addr, auth.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            let mut c = TcpStream::connect(addr).unwrap();
            write!(
                c,
                "PUT /api/settings HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{{\"image_"
            )
            .unwrap();
            let mut c2 = c.try_clone().unwrap();
            let answer = read_to_close_within(&mut c2, Duration::from_secs(45));
            (t.elapsed(), answer)
        })
    };
    let small_stalled = {
        let addr = s.addr;
        std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            write!(
                c,
                "POST /login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntoken="
            )
            .unwrap();
            read_to_close_within(&mut c, Duration::from_secs(45))
        })
    };
    // Meanwhile others are answered at once.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    assert_eq!(request(s.addr, "GET", "/healthz", &[], b"").status, 200);
    assert!(t.elapsed() < Duration::from_secs(1));

    let (took, got) = trickle.join().unwrap();
    eprintln!("a trickling head was answered and closed after {took:?}");
    assert_eq!(
        status_of(&got),
        Some(408),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(14),
        "{took:?}"
    );
    let (took, got) = stalled.join().unwrap();
    eprintln!("a stalled body was answered and closed after {took:?}");
    assert_eq!(
        status_of(&got),
        Some(408),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        took >= Duration::from_secs(29) && took < Duration::from_secs(40),
        "{took:?}"
    );
    let got = small_stalled.join().unwrap();
    assert_eq!(
        status_of(&got),
        Some(408),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        s.api("GET", "/api/settings", None).json(),
        json!({"image_verification_mode": "warn"})
    );
    s.assert_settles(base, 4, "after slow heads and stalled bodies");
}

fn read_to_close_within(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while t.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    out
}

#[test]
fn a_client_sent_peer_header_does_not_change_the_throttle_key() {
    let dir = TempDir::with_prefix("pic-http");
    let _store = xss_store(&dir);
    let s = Serve::start(&dir, &[]);
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..40 {
        let auth = format!("Bearer wrong{i}");
        let spoof = format!("10.9.{}.{}", i / 200, i % 200 + 1);
        // Every spelling: one header, the name in other case, two of them.
        let mut h = vec![("Authorization", auth.as_str())];
        match i % 3 {
            0 => h.push(("X-Pic-Peer", spoof.as_str())),
            1 => h.push(("x-pic-peer", spoof.as_str())),
            _ => {
                h.push(("X-PIC-PEER", spoof.as_str()));
                h.push(("X-Pic-Peer", "::1"));
            }
        }
        let a = request(s.addr, "GET", "/api/status", &h, b"");
        *counts.entry(a.status).or_default() += 1;
    }
    eprintln!("40 wrong tokens from 40 claimed peers: {counts:?}");
    // Five free failures, then every one is throttled: one address.
    assert_eq!(counts.get(&401), Some(&5), "{counts:?}");
    assert_eq!(counts.get(&429), Some(&35), "{counts:?}");
    let log = s.log_text();
    assert!(log.contains("wrong API token from 127.0.0.1"), "{log}");
    assert!(
        !log.contains("10.9."),
        "a claimed peer reached the log:\n{log}"
    );
    assert!(!log.contains("::1 "), "{log}");
}

#[test]
fn every_answer_closes_its_connection_and_a_second_request_is_not_served() {
    let dir = TempDir::with_prefix("pic-http");
    let s = Serve::start(&dir, &[]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    // Two requests in one write, the first asking to keep the connection.
    write!(
        c,
        "GET /healthz HTTP/1.1\r\nHost: {0}\r\nConnection: keep-alive\r\n\r\nGET /healthz HTTP/1.1\r\nHost: {0}\r\n\r\n",
        s.addr
    )
    .unwrap();
    let raw = read_to_close(&mut c);
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 1, "{text}");
    assert_eq!(text.matches("Connection: close\r\n").count(), 1, "{text}");
    assert!(!text.to_ascii_lowercase().contains("keep-alive"), "{text}");
    assert!(text.ends_with("ok\n"), "{text}");
    // Expect: 100-continue passes through, and the final answer still closes.
    let mut c = TcpStream::connect(s.addr).unwrap();
    write!(
        c,
        "POST /login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n",
        s.addr
    )
    .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        c.read_exact(&mut byte).expect("an interim answer");
        interim.push(byte[0]);
    }
    let interim = String::from_utf8_lossy(&interim);
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    c.write_all(b"token=nope").unwrap();
    let text = String::from_utf8_lossy(&read_to_close(&mut c)).into_owned();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(text.contains("Connection: close\r\n"), "{text}");
    // A chunked body in pieces, with nothing after it while the answer is
    // made: relayed to its end, and the client waits for the answer.
    let mut c = TcpStream::connect(s.addr).unwrap();
    write!(
        c,
        "PUT /api/settings HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        s.addr,
        s.bearer()
    )
    .unwrap();
    let json = br#"{"image_verification_mode": "enforce"}"#;
    for piece in json.chunks(10) {
        std::thread::sleep(Duration::from_millis(100));
        write!(c, "{:x}\r\n", piece.len()).unwrap();
        c.write_all(piece).unwrap();
        c.write_all(b"\r\n").unwrap();
    }
    c.write_all(b"0\r\n\r\n").unwrap();
    let a = read_answer(&mut c);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        s.api("GET", "/api/settings", None).json(),
        json!({"image_verification_mode": "enforce"})
    );
}

#[test]
fn hundreds_of_idle_connections_leave_room_for_new_clients() {
    let dir = TempDir::with_prefix("pic-http");
    let _store = xss_store(&dir);
    let s = Serve::start(&dir, &[]);
    let base = s.warm_baseline();
    // Idle connections from four other addresses, each within its
    // quarter of the connections still being read (spec §12).
    let from = |i: usize| std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % 4) as u8);
    let mut idle = Vec::new();
    for i in 0..300 {
        let mut c = connect_from(from(i), s.addr).expect("open an idle connection");
        if i % 2 == 0 {
            let _ = c.write_all(b"GET /api/sta");
        }
        idle.push(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    let held = s.usage();
    let t = Instant::now();
    for path in ["/healthz", "/api/services", "/healthz"] {
        let a = request(s.addr, "GET", path, &[("Authorization", &s.bearer())], b"");
        assert_eq!(a.status, 200, "{path}: {a:?}");
    }
    eprintln!(
        "300 idle connections: {held:?} (base {base:?}); new clients answered in {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    // Past the documented limit of 512 connections: 503, at once.
    while idle.len() < 512 {
        idle.push(connect_from(from(idle.len()), s.addr).unwrap());
    }
    std::thread::sleep(Duration::from_millis(300));
    let full = s.usage();
    let t = Instant::now();
    let mut c = TcpStream::connect(s.addr).unwrap();
    let _ = c.write_all(&build(s.addr, "GET", "/healthz", &[], b""));
    let raw = read_to_close(&mut c);
    let text = String::from_utf8_lossy(&raw);
    eprintln!(
        "512 idle connections: {full:?}; the next one: {:?}",
        t.elapsed()
    );
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("Retry-After: 5\r\n"), "{text}");
    assert!(text.contains("Connection: close\r\n"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(idle);
    let a = request(s.addr, "GET", "/healthz", &[], b"");
    assert_eq!(a.status, 200, "{a:?}");
    s.assert_settles(base, 4, "after 512 idle connections closed");
}

#[test]
fn clients_that_leave_early_leave_no_threads_or_descriptors_behind() {
    let dir = TempDir::with_prefix("pic-http");
    let _store = xss_store(&dir);
    let s = Serve::start(&dir, &[]);
    let base = s.warm_baseline();
    let auth = s.bearer();
    let addr = s.addr;
    let body_head = |len: usize| {
        format!(
            "PUT /api/settings HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    let chunked_head = format!(
        "PUT /api/settings HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let big = vec![b' '; 60_000];
    let t = Instant::now();
    for round in 0..40 {
        // Gone before a byte, in the middle of the head, of the body.
        drop(TcpStream::connect(addr).unwrap());
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
        drop(c);
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(body_head(5000).as_bytes()).unwrap();
        c.write_all(b"{\"image").unwrap();
        drop(c);
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(body_head(60_000).as_bytes()).unwrap();
        c.write_all(&big[..30_000]).unwrap();
        drop(c);
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(chunked_head.as_bytes()).unwrap();
        c.write_all(b"1000\r\n").unwrap();
        c.write_all(&big[..100]).unwrap();
        drop(c);
        // A whole request, gone before the answer (read or not).
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&build(
            addr,
            "GET",
            "/api/services",
            &[("Authorization", &auth)],
            b"",
        ))
        .unwrap();
        drop(c);
        // Half-closed after the request: still answered.
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&build(addr, "GET", "/healthz", &[], b""))
            .unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let raw = read_to_close(&mut c);
        assert_eq!(status_of(&raw), Some(200), "round {round}");
        // Refused heads, bodies announced too large, answered or not.
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(body_head(10 << 20).as_bytes()).unwrap();
        if round % 2 == 0 {
            assert_eq!(status_of(&read_to_close(&mut c)), Some(413));
        }
        drop(c);
        let mut c = TcpStream::connect(addr).unwrap();
        let _ = c.write_all(format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(20_000)).as_bytes());
        drop(c);
    }
    // A reset in the middle of a long answer: clients that read a little.
    for _ in 0..20 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&build(addr, "GET", "/style.css", &[], b""))
            .unwrap();
        let mut some = [0u8; 10];
        c.read_exact(&mut some).unwrap();
        drop(c);
    }
    eprintln!("360 early leavers in {:?}", t.elapsed());
    let a = s.api("GET", "/api/status", None);
    assert_eq!(a.status, 200, "{a:?}");
    let after = s.assert_settles(base, 4, "after 360 clients left early");
    assert!(
        after.rss_kib < base.rss_kib + 16 * 1024,
        "RSS grew from {} KiB to {} KiB",
        base.rss_kib,
        after.rss_kib
    );
    assert_eq!(
        s.api("GET", "/api/settings", None).json(),
        json!({"image_verification_mode": "warn"})
    );
}

// --- on the rig: real installs -------------------------------------------------------

fn web_manifest(id: &str, digest: &str, requires: &[&str]) -> Value {
    json!({
        "id": id, "name": format!("Web {id}"), "version": "1.0", "author": "tests",
        "image": image_ref("web", "1", digest),
        "container_name": format!("pt-{id}"),
        "requires": requires,
        "iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 8080}],
        "subdomain": id, "backend": format!("pt-{id}:8080"),
        "description": "a busybox web page"
    })
}

/// `PIC_*` program overrides that run iptables and ip inside `ns` (so
/// `serve` can listen on the host's loopback while its rules stay in the
/// namespace) and a docker whose `compose pull` first sleeps
/// `pull_delay` seconds. The delay is a stand-in for a slow registry,
/// for timing only; the real docker does the work.
fn wrapped_programs(dir: &TempDir, ns: &Netns, pull_delay: u32) -> Vec<(String, String)> {
    let bin = dir.join("bin");
    let mut envs = ns.program_overrides(&bin);
    let docker = bin.join("docker");
    write_script(
        &docker,
        &format!(
            "#!/bin/sh\ncase \" $* \" in *\" compose \"*\" pull \"*) sleep {pull_delay};; esac\nexec {} \"$@\"\n",
            which("docker")
        ),
    );
    envs.push(("PIC_DOCKER".into(), docker.display().to_string()));
    envs
}

#[test]
fn installs_through_forms_and_the_api_while_reads_stay_fast() {
    if !require_rig() {
        return;
    }
    let digest = image("web", "1", &["httpd", "-f", "-p", "8080"]);
    let dir = TempDir::with_prefix("pic-http-rig");
    let ns = Netns::new();
    let mut store = Store::new(&dir);
    let (web, needy) = ("ht-web", "ht-needy");
    remove_compose_project(&format!("pic-{web}"));
    store.add(web, web_manifest(web, &digest, &[]), WEB_TEMPLATE);
    store.add(
        needy,
        web_manifest(needy, &digest, &["ht-missing"]),
        WEB_TEMPLATE,
    );
    let programs = wrapped_programs(&dir, &ns, 4);
    let mut envs: Vec<(&str, &str)> = programs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    envs.push(("PIC_SERVICE_POOL", "172.20.0.200-172.20.0.209"));
    let s = Serve::start(&dir, &envs);

    // Install from the admin page: 303 to the job page.
    let cookie = s.login();
    let home = s.page("/", &cookie);
    assert!(home
        .body
        .contains(&format!(r#"action="/services/{web}/install""#)));
    // The store's Install button opens the install page, whose form posts.
    let install = s.page(&format!("/services/{web}/install"), &cookie);
    assert!(
        install
            .body
            .contains(&format!(r#"action="/ui/services/{web}/install""#)),
        "{}",
        install.body
    );
    let csrf = csrf_of(&install.body);
    let a = s.post_form(
        &format!("/ui/services/{web}/install"),
        &cookie,
        &format!("csrf={csrf}"),
    );
    assert_eq!(a.status, 303, "{a:?}");
    let location = a.header("Location").unwrap().to_string();
    let job = location.trim_start_matches("/jobs/").to_string();
    let running = s.page(&location, &cookie);
    assert!(running
        .body
        .contains("http-equiv=\"refresh\" content=\"1\""));

    // While the pull is held, reads answer at once.
    let t = Instant::now();
    let mut worst = Duration::ZERO;
    let auth = s.bearer();
    for _ in 0..100 {
        for path in ["/api/services", "/healthz"] {
            let t = Instant::now();
            let a = request(s.addr, "GET", path, &[("Authorization", &auth)], b"");
            assert_eq!(a.status, 200);
            worst = worst.max(t.elapsed());
        }
    }
    let during = s.api("GET", &format!("/api/jobs/{job}"), None).json();
    eprintln!(
        "200 reads during a held pull: worst {worst:?}, all in {:?}; job then {}",
        t.elapsed(),
        during["state"]
    );
    assert_ne!(
        during["state"],
        json!("done"),
        "the pull was not held long enough"
    );
    assert!(worst < Duration::from_secs(1), "{worst:?}");

    let j = s.wait_job(&job);
    assert_eq!(j["ok"], json!(true), "{j}\n{}", s.log_text());
    assert!(!j["lines"].as_array().unwrap().is_empty(), "{j}");
    let done = s.page(&location, &cookie);
    assert!(done.body.contains("succeeded"));
    assert!(!done.body.contains("http-equiv=\"refresh\""));
    let rec = s.api("GET", &format!("/api/services/{web}"), None);
    assert_eq!(rec.status, 200);
    assert_eq!(rec.json()["ip"], json!("172.20.0.200"));
    let rule = "-A PIC_SERVICES -d 172.20.0.200/32 -p tcp -m tcp --dport 8080 -j ACCEPT";
    assert_eq!(ns.iptables_save().matches(rule).count(), 1);
    assert!(s
        .page("/", &cookie)
        .body
        .contains(&format!("id=\"svc-{web}\"")));

    // The JSON API waits and answers the result with the job's id.
    let again = s.api("POST", &format!("/api/services/{web}/install"), None);
    assert_eq!(again.status, 200, "{again:?}");
    let j = again.json();
    assert_eq!(
        (j["ok"].clone(), j["already_installed"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(
        s.api(
            "GET",
            &format!("/api/jobs/{}", j["job"].as_str().unwrap()),
            None
        )
        .json()["state"],
        json!("done")
    );
    let conflict = s.api("POST", &format!("/api/services/{needy}/install"), None);
    assert_eq!(conflict.status, 409, "{conflict:?}");
    assert!(conflict.json()["error"]
        .as_str()
        .unwrap()
        .contains("ht-missing"));
    let up = s.api("POST", &format!("/api/services/{web}/update"), None);
    assert_eq!(up.status, 200, "{up:?}");
    assert_eq!(up.json()["updated"], json!(false));
    let re = s.api("POST", "/api/reapply", None);
    assert_eq!(re.status, 200, "{re:?}");
    assert_eq!(re.json()["failed"], json!(0), "{}", re.body);
    assert_eq!(ns.iptables_save().matches(rule).count(), 1);

    let rm = s.api(
        "POST",
        &format!("/api/services/{web}/remove"),
        Some(json!({"purge": true})),
    );
    assert_eq!(rm.status, 200, "{rm:?}");
    assert_eq!(rm.json()["purged"], json!(true));
    assert_eq!(
        s.api("GET", &format!("/api/services/{web}"), None).status,
        404
    );
    assert_eq!(
        s.api("POST", &format!("/api/services/{web}/remove"), None)
            .status,
        404
    );
    assert!(compose_project_containers(&format!("pic-{web}")).is_empty());
    assert_eq!(ns.iptables_save().matches(rule).count(), 0);
}

// --- on the rig: connections, peers, egress, settings and reapply ---------------

/// An instanceable redirect proxy: busybox httpd listening on the port the
/// connection is given, published on the host as spec §9 wants.
fn proxy_manifest(id: &str, digest: &str) -> Value {
    json!({
        "id": id, "name": "Redirect proxy", "version": "1.0", "author": "tests",
        "kind": "connectivity", "instanceable": true, "connectivity": {"mode": "redirect"},
        "image": image_ref("web", "1", digest), "container_name": id,
        "cap_add": ["NET_ADMIN"],
        "env": [{"name": "UPSTREAM", "value": "none"}],
        "description": "sends a peer's traffic through an upstream proxy"
    })
}

fn container_env(name: &str) -> String {
    let out = docker(&["inspect", "--format", "{{json .Config.Env}}", name]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lines_with(haystack: &str, needle: &str) -> usize {
    haystack.lines().filter(|l| l.contains(needle)).count()
}

/// Asserts a refusal: the status, the JSON error shape, and that the
/// message (or one of the listed problems) mentions `needle`.
fn assert_refused(a: &Answer, status: u16, needle: &str) {
    assert_eq!(a.status, status, "{a:?}");
    let j = a.json();
    assert_eq!(j["ok"], json!(false), "{j}");
    let text = format!("{} {}", j["error"], j["errors"]);
    assert!(text.contains(needle), "expected {needle:?} in {j}");
}

/// Connection instances publish host ports (12000+): this is the only
/// test in this file that creates them.
#[test]
fn connections_peers_egress_settings_and_reapply_through_the_api() {
    if !require_rig() {
        return;
    }
    let digest = image("web", "1", &["httpd", "-f", "-p", "8080"]);
    let dir = TempDir::with_prefix("pic-http-conn");
    let ns = Netns::new();
    let (proxy, web) = ("hb-proxy", "hb-web");
    for p in ["pic-hb-web", "pic-hb-proxy-c1", "pic-hb-proxy-c2"] {
        remove_compose_project(p);
    }
    let mut store = Store::new(&dir);
    store.add(proxy, proxy_manifest(proxy, &digest), PROXY_TEMPLATE);
    store.add(web, web_manifest(web, &digest, &[]), WEB_TEMPLATE);
    let programs = wrapped_programs(&dir, &ns, 0);
    let mut envs: Vec<(&str, &str)> = programs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    envs.push(("PIC_SERVICE_POOL", "172.20.0.110-172.20.0.119"));
    envs.push(("PIC_WAN_IFACE", "picdummy"));
    let s = Serve::start(&dir, &envs);
    let t0 = Instant::now();

    for id in [proxy, web] {
        let a = s.api("POST", &format!("/api/services/{id}/install"), None);
        assert_eq!(a.status, 200, "install {id}: {a:?}\n{}", s.log_text());
    }
    // An instanceable service starts nothing until a connection asks.
    assert!(compose_project_containers("pic-hb-proxy").is_empty());

    // Create: JSON body, then a form body with KEY=VALUE lines.
    let c1 = s.api(
        "POST",
        "/api/connections",
        Some(
            json!({"service": proxy, "name": "c1", "env": {"UPSTREAM": "socks5://10.1.1.1:1080"}}),
        ),
    );
    assert_eq!(c1.status, 200, "{c1:?}\n{}", s.log_text());
    let j1 = c1.json();
    assert_eq!(
        (j1["ok"].clone(), j1["id"].clone(), j1["service"].clone()),
        (json!(true), json!("c1"), json!(proxy)),
        "{j1}"
    );
    let (mark1, table1, port1) = (
        j1["fwmark"].as_u64().expect("a mark"),
        j1["table"].as_u64().expect("a table"),
        j1["port"].as_u64().expect("a port"),
    );
    assert!((0x100..=0x1ff).contains(&mark1), "{j1}");
    assert!((100..=199).contains(&table1), "{j1}");
    assert!((12000..=12999).contains(&port1), "{j1}");
    assert!(j1["job"].is_string(), "{j1}");
    let c2 = s.api_form(
        "POST",
        "/api/connections",
        &format!("service={proxy}&name=c2&env=UPSTREAM%3Dhttp%3A%2F%2F10.1.1.2%3A3128%0A"),
    );
    assert_eq!(c2.status, 200, "{c2:?}");
    let j2 = c2.json();
    assert_ne!(j2["fwmark"], j1["fwmark"]);
    assert_ne!(j2["port"], j1["port"]);
    assert!(container_env("hb-proxy-c1").contains("UPSTREAM=socks5://10.1.1.1:1080"));
    assert!(container_env("hb-proxy-c2").contains("UPSTREAM=http://10.1.1.2:3128"));
    let rules = ns.ip_rules();
    assert_eq!(
        lines_with(&rules, &format!("fwmark {mark1:#x} lookup {table1}")),
        1,
        "{rules}"
    );
    let listed = s.api("GET", "/api/connections", None).json();
    assert_eq!(
        listed["connections"]["c1"]["port"],
        json!(port1),
        "{listed}"
    );
    assert_eq!(listed["connections"]["c2"]["service"], json!(proxy));
    let one = s.api("GET", "/api/connections/c1", None);
    assert_eq!(
        (one.status, one.json()["fwmark"].as_u64()),
        (200, Some(mark1))
    );

    // Refusals: a taken name, a service that is not installed, one that is
    // not instanceable, a setting the manifest does not declare.
    let dup = s.api(
        "POST",
        "/api/connections",
        Some(json!({"service": proxy, "name": "c1"})),
    );
    assert_refused(&dup, 409, "c1");
    let a = s.api(
        "POST",
        "/api/connections",
        Some(json!({"service": "hb-nosuch", "name": "c3"})),
    );
    assert_refused(&a, 404, "hb-nosuch");
    let a = s.api(
        "POST",
        "/api/connections",
        Some(json!({"service": web, "name": "c3"})),
    );
    assert_refused(&a, 400, "instanceable");
    let a = s.api(
        "POST",
        "/api/connections",
        Some(json!({"service": proxy, "name": "c3", "env": {"PASSWORD": "x"}})),
    );
    assert_refused(&a, 400, "PASSWORD");
    assert!(!a.json()["errors"].as_array().unwrap().is_empty());
    assert!(compose_project_containers("pic-hb-proxy-c3").is_empty());
    assert_eq!(
        s.api("GET", "/api/connections", None).json()["connections"]
            .as_object()
            .map(|m| m.len()),
        Some(2)
    );

    // Route a peer through c1: in the state and in the namespace's rules.
    let r = s.api(
        "PUT",
        "/api/peers/10.8.0.2/route",
        Some(json!({"connection": "c1"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        s.api("GET", "/api/peers", None).json(),
        json!({"routes": {"10.8.0.2": "c1"}})
    );
    let saved = ns.iptables_save();
    assert_eq!(
        lines_with(
            &saved,
            &format!("-A PIC_CONNECTIVITY -s 10.8.0.2/32 -p tcp -j REDIRECT --to-ports {port1}")
        ),
        1,
        "{saved}"
    );
    for bad in ["10.8.0.300", "not-an-ip", "fe80::1"] {
        let a = s.api(
            "PUT",
            &format!("/api/peers/{bad}/route"),
            Some(json!({"connection": "c1"})),
        );
        assert_refused(&a, 400, "IPv4");
    }
    let a = s.api_form("PUT", "/api/peers/10.8.0.3/route", "connection=nosuch");
    assert_refused(&a, 404, "nosuch");

    // The web service's outbound traffic through c1.
    let e = s.api(
        "PUT",
        &format!("/api/services/{web}/egress"),
        Some(json!({"connection": "c1"})),
    );
    assert_eq!(e.status, 200, "{e:?}");
    let web_ip = s.api("GET", &format!("/api/services/{web}"), None).json()["ip"]
        .as_str()
        .expect("the web service's IP")
        .to_string();
    let saved = ns.iptables_save();
    assert_eq!(
        lines_with(
            &saved,
            &format!("-A PIC_EGRESS -s {web_ip}/32 -j MARK --set-xmark {mark1:#x}/0xffffffff")
        ),
        1,
        "{saved}"
    );
    let a = s.api(
        "PUT",
        "/api/services/hb-nosuch/egress",
        Some(json!({"connection": "c1"})),
    );
    assert_refused(&a, 404, "hb-nosuch");

    // c1 is in use: 409 naming both users, and nothing torn down.
    let busy = s.api("DELETE", "/api/connections/c1", None);
    assert_refused(&busy, 409, "10.8.0.2");
    assert_refused(&busy, 409, web);
    assert_eq!(compose_project_containers("pic-hb-proxy-c1").len(), 1);

    // Move the users off, then c1 goes: container, ip rule and marks.
    let a = s.api("DELETE", "/api/peers/10.8.0.2/route", None);
    assert_eq!(
        (a.status, a.json()["had_route"].clone()),
        (200, json!(true))
    );
    assert_eq!(
        s.api("GET", "/api/peers", None).json(),
        json!({"routes": {}})
    );
    let a = s.api("DELETE", &format!("/api/services/{web}/egress"), None);
    assert_eq!(a.status, 200, "{a:?}");
    let a = s.api("DELETE", "/api/connections/c1", None);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["removed"], json!(true));
    assert!(compose_project_containers("pic-hb-proxy-c1").is_empty());
    assert_eq!(lines_with(&ns.ip_rules(), &format!("{mark1:#x}")), 0);
    let saved = ns.iptables_save();
    assert_eq!(lines_with(&saved, "10.8.0.2"), 0, "{saved}");
    assert_eq!(lines_with(&saved, &format!("-s {web_ip}/32 -j MARK")), 0);
    let a = s.api("DELETE", "/api/connections/c1", None);
    assert_refused(&a, 404, "c1");

    // Settings: JSON and form bodies; a bad value changes nothing.
    let a = s.api(
        "PUT",
        "/api/settings",
        Some(json!({"image_verification_mode": "enforce"})),
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        s.api("GET", "/api/settings", None).json(),
        json!({"image_verification_mode": "enforce"})
    );
    let a = s.api(
        "PUT",
        "/api/settings",
        Some(json!({"image_verification_mode": "always"})),
    );
    assert_refused(&a, 400, "always");
    assert_eq!(
        s.api("GET", "/api/settings", None).json()["image_verification_mode"],
        json!("enforce")
    );
    let a = s.api_form("PUT", "/api/settings", "image_verification_mode=warn");
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        s.api("GET", "/api/settings", None).json()["image_verification_mode"],
        json!("warn")
    );

    // Reapply with c2 still up: a report, nothing failed, nothing doubled.
    let before = ns.iptables_save();
    let re = s.api("POST", "/api/reapply", None);
    assert_eq!(re.status, 200, "{re:?}");
    let report = re.json();
    assert_eq!(report["failed"], json!(0), "{report}");
    assert!(report["job"].is_string(), "{report}");
    assert_eq!(ns.iptables_save(), before);

    // Clean up through the API as an owner would.
    assert_eq!(s.api("DELETE", "/api/connections/c2", None).status, 200);
    let rm = s.api(
        "POST",
        &format!("/api/services/{web}/remove"),
        Some(json!({"purge": true})),
    );
    assert_eq!(rm.status, 200, "{rm:?}");
    let rm = s.api("POST", &format!("/api/services/{proxy}/remove"), None);
    assert_eq!(rm.status, 200, "{rm:?}");
    for p in ["pic-hb-web", "pic-hb-proxy-c1", "pic-hb-proxy-c2"] {
        assert!(compose_project_containers(p).is_empty(), "{p} left behind");
    }
    eprintln!(
        "connections, peers, egress, settings and reapply over the API: {:?}",
        t0.elapsed()
    );
}
