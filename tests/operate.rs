//! Reading what is installed (spec §13) on the real docker engine, Compose
//! plugin and registry: each service's and connection instance's runtime
//! in `status`, `list`, `GET /api/services` and the admin page, while the
//! tests stop, kill and remove containers behind pic-store's back; update
//! badges; logs of a service, one of its containers and a connection
//! instance; the installed services with the store down and nothing
//! cached; and a missing Compose plugin or docker named as such.
//! pic-store's changes run inside its own network namespace, as in
//! `lifecycle.rs`; `serve` only reads here.

mod common;

use common::http::{request, Answer, Serve};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

// --- the server under test (the client is `common::http`) ------------------------

impl Serve {
    fn api(&self, method: &str, path: &str) -> Answer {
        let auth = format!("Bearer {}", self.token);
        request(self.addr, method, path, &[("Authorization", &auth)], b"")
    }

    fn login(&self) -> String {
        let a = request(
            self.addr,
            "GET",
            &format!("/login?token={}", self.token),
            &[],
            b"",
        );
        assert_eq!(a.status, 303, "{a:?}");
        let cookie = a.header("Set-Cookie").expect("a session cookie");
        cookie.split(';').next().unwrap().to_string()
    }

    fn page(&self, path: &str, cookie: &str) -> Answer {
        request(self.addr, "GET", path, &[("Cookie", cookie)], b"")
    }
}

// --- the cell ---------------------------------------------------------------------

impl Cell {
    fn json(&self, args: &[&str]) -> Value {
        let out = ok(&self.run(args));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A web service with a healthcheck that passes until `/www/sick` exists,
/// and a helper container; both print a line when they start.
const WEB_AND_SIDE: &str = r#"services:
  web:
    image: ${IMAGE}
    container_name: ${CONTAINER_NAME}
    command: ["sh", "-c", "echo web-said-hello; exec httpd -f -p 8080 -h /www"]
    volumes:
      - ${DATA_DIR}:/www
    healthcheck:
      test: ["CMD-SHELL", "test ! -f /www/sick"]
      interval: 1s
      timeout: 2s
      retries: 1
    networks:
      - ${NETWORK}
      - backend
  side:
    image: ${IMAGE_SIDE}
    container_name: ${CONTAINER_NAME}-side
    command: ["sh", "-c", "for i in $$(seq 1 6000); do echo n$$i; done; echo side-said-hello; echo '<script>alert(7)</script>'; exec sleep 3600"]
    networks:
      - backend
networks:
  ${NETWORK}:
    external: true
  backend:
    internal: true
"#;

fn web_manifest(id: &str, version: &str, web: &str, side: &str) -> Value {
    json!({
        "id": id, "name": format!("Test {id}"), "version": version, "author": "tests",
        "image": web,
        "container_name": format!("pt-{id}"),
        "helper_images": {"side": side},
        "iptables_rules": [{"type": "ACCEPT", "dest_ip": "${SERVICE_IP}", "dest_port": 8080}],
        "subdomain": id, "backend": format!("pt-{id}:8080")
    })
}

fn images() -> (String, String) {
    let web = image_ref(
        "web",
        "1",
        &image("web", "1", &["httpd", "-f", "-p", "8080"]),
    );
    let side = image_ref("opside", "1", &image("opside", "1", &["sleep", "3600"]));
    (web, side)
}

/// Polls `look` (up to 60 s) until it returns the runtime state `want`;
/// returns that runtime's JSON.
fn wait_state(what: &str, want: &str, mut look: impl FnMut() -> Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rt = look();
        if rt["state"] == json!(want) {
            return rt;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: runtime never became {want}: {rt}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn container<'a>(rt: &'a Value, service: &str) -> &'a Value {
    rt["containers"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["service"] == json!(service)))
        .unwrap_or_else(|| panic!("no container of {service} in {rt}"))
}

/// The runtime of `id` as `status --json`, `list --json`,
/// `GET /api/services` and the page show it, once all four agree on
/// `want` (each is polled: the API caches `docker ps` for 2 s).
fn expect_everywhere(cell: &Cell, s: &Serve, cookie: &str, id: &str, want: &str) -> Value {
    let st = wait_state("status --json", want, || {
        cell.json(&["status", "--json"])["runtime"]["services"][id].clone()
    });
    let li = wait_state("list --json", want, || {
        cell.json(&["list", "--json"])["installed"][id]["runtime"].clone()
    });
    let api = wait_state("GET /api/services", want, || {
        let a = s.api("GET", "/api/services");
        assert_eq!(a.status, 200, "{a:?}");
        a.json()["installed"][id]["runtime"].clone()
    });
    assert_eq!(st["containers"], li["containers"]);
    assert_eq!(
        st["containers"].as_array().map(Vec::len),
        api["containers"].as_array().map(Vec::len)
    );
    let mark = format!(r#"data-state="{want}""#);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = s.page("/", cookie);
        assert_eq!(page.status, 200);
        let at = page
            .body
            .find(&format!(r#"id="svc-{id}""#))
            .expect("the service's row");
        let row = &page.body[at..];
        let row = &row[..row.find("</section>").unwrap_or(row.len())];
        // The project's badge is the first; its containers' follow.
        let first = row.find("data-state=").map(|i| &row[i..]);
        if first.is_some_and(|f| f.starts_with(&mark)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {want}:\n{row}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    st
}

#[test]
fn runtime_and_updates_are_shown_in_status_list_api_and_page() {
    if !require_rig() {
        return;
    }
    let (web, side) = images();
    let mut cell = Cell::new("pic-operate", "172.20.0.210-172.20.0.219");
    let id = "op-rt";
    remove_compose_project(&format!("pic-{id}"));
    cell.store
        .add(id, web_manifest(id, "1.0", &web, &side), WEB_AND_SIDE);
    ok(&cell.run(&["install", id]));
    let envs = [("PIC_SERVICE_POOL", "172.20.0.210-172.20.0.219")];
    let s = Serve::start(&cell.dir, &envs);
    let cookie = s.login();

    // The web container passes its healthcheck (healthy), the helper has
    // none (running): the project is the worst of both, running, and each
    // container is listed with its own state.
    let rt = expect_everywhere(&cell, &s, &cookie, id, "running");
    assert_eq!(container(&rt, "web")["state"], json!("healthy"), "{rt}");
    assert_eq!(container(&rt, "side")["state"], json!("running"), "{rt}");
    assert_eq!(
        container(&rt, "side")["name"],
        json!(format!("pt-{id}-side"))
    );
    let api = s.api("GET", "/api/services").json();
    assert_eq!(
        container(&api["installed"][id]["runtime"], "web")["state"],
        json!("healthy"),
        "{api}"
    );
    let page = s.page("/", &cookie).body;
    assert!(
        page.contains(&format!(r#"<li data-container="pt-{id}">pt-{id} (web) <span class="badge ok runtime" data-state="healthy">"#)),
        "the page does not show the web container healthy"
    );
    let li = cell.json(&["list", "--json"]);
    assert_eq!(
        li["installed"][id]["update_available"],
        json!(false),
        "{li}"
    );
    let page = s.page("/", &cookie).body;
    assert!(
        page.contains(&format!(r#"href="https://{id}.cell.local/""#)),
        "no open link"
    );
    assert!(page.contains(&format!(r#"href="/services/{id}/logs?service=side""#)));
    assert!(
        !page.contains("Update available"),
        "an update badge without an update"
    );
    let st = s.api("GET", "/api/status").json();
    assert_eq!(
        st["runtime"]["services"][id]["state"],
        json!("running"),
        "{st}"
    );
    let status_text = text(&cell.run(&["status"]));
    assert!(
        status_text.contains(&format!("service {id}: running")),
        "{status_text}"
    );

    // Unhealthy: its healthcheck starts failing behind pic-store's back.
    let web_name = format!("pt-{id}");
    ok(&docker(&["exec", &web_name, "touch", "/www/sick"]));
    let rt = expect_everywhere(&cell, &s, &cookie, id, "unhealthy");
    assert_eq!(container(&rt, "side")["state"], json!("running"), "{rt}");
    assert_eq!(container(&rt, "web")["state"], json!("unhealthy"), "{rt}");
    ok(&docker(&["exec", &web_name, "rm", "/www/sick"]));
    expect_everywhere(&cell, &s, &cookie, id, "running");

    // Exited: the helper is killed; the project shows its exit code.
    let side_name = format!("pt-{id}-side");
    ok(&docker(&["kill", &side_name]));
    let rt = expect_everywhere(&cell, &s, &cookie, id, "exited");
    assert_eq!(rt["exit_code"], json!(137), "{rt}");
    assert_eq!(container(&rt, "side")["exit_code"], json!(137), "{rt}");
    assert_eq!(container(&rt, "web")["state"], json!("healthy"), "{rt}");
    let list_text = text(&cell.run(&["list"]));
    assert!(list_text.contains("exited (137)"), "{list_text}");

    // A newer version in the store: update_available everywhere.
    cell.store
        .add(id, web_manifest(id, "2.0", &web, &side), WEB_AND_SIDE);
    let li = cell.json(&["list", "--json"]);
    assert_eq!(li["installed"][id]["update_available"], json!(true), "{li}");
    let st = cell.json(&["status", "--json"]);
    assert_eq!(st["updates_available"], json!([id]), "{st}");
    // `serve` keeps the index in memory for 5 minutes: a fresh one reads
    // the new index.
    drop(s);
    let s = Serve::start(&cell.dir, &envs);
    let cookie = s.login();
    let v = s.api("GET", "/api/services").json();
    assert_eq!(v["installed"][id]["update_available"], json!(true), "{v}");
    let page = s.page("/", &cookie).body;
    assert!(page.contains(r#"data-update="2.0""#), "no update badge");
    assert!(page.contains(&format!(r#"action="/ui/services/{id}/update""#)));

    // Missing: every container removed behind pic-store's back.
    remove_compose_project(&format!("pic-{id}"));
    let rt = expect_everywhere(&cell, &s, &cookie, id, "missing");
    assert_eq!(rt["containers"], json!([]), "{rt}");

    // The store gone and nothing cached: what is installed is still
    // listed, with its runtime (CLI exit 0, API 200).
    drop(s);
    std::fs::remove_dir_all(cell.store.root()).unwrap();
    std::fs::remove_dir_all(cell.dir.state_dir().join("cache")).unwrap();
    let out = cell.run(&["list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let li: Value = serde_json::from_str(&text(&out)).unwrap();
    assert_eq!(li["available"], json!([]), "{li}");
    assert!(li["error"].as_str().is_some_and(|e| !e.is_empty()), "{li}");
    assert_eq!(
        li["installed"][id]["runtime"]["state"],
        json!("missing"),
        "{li}"
    );
    let out = cell.run(&["list"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(text(&out).contains(id), "{}", show(&out));
    let s = Serve::start(&cell.dir, &envs);
    let a = s.api("GET", "/api/services");
    assert_eq!(a.status, 200, "{a:?}");
    let v = a.json();
    assert_eq!(v["available"], json!([]), "{v}");
    assert!(v["error"].is_string(), "{v}");
    assert_eq!(
        v["installed"][id]["runtime"]["state"],
        json!("missing"),
        "{v}"
    );
    let cookie = s.login();
    let page = s.page("/", &cookie);
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"data-state="missing""#));
    drop(s);

    ok(&cell.run(&["remove", id]));
}

/// A "connection" that prints a line and serves its redirect port.
const PROXY: &str = r#"services:
  proxy:
    image: ${IMAGE}
    container_name: ${CONTAINER_NAME}
    command: ["sh", "-c", "echo proxy-said-hello; exec httpd -f -p ${REDIRECT_PORT}"]
    cap_add: [NET_ADMIN]
    networks: [${NETWORK}]
"#;

#[test]
fn logs_of_a_service_its_helper_and_a_connection() {
    if !require_rig() {
        return;
    }
    let (web, side) = images();
    let mut cell = Cell::new("pic-operate", "172.20.0.220-172.20.0.229");
    let (id, proxy, conn) = ("op-lg", "op-lp", "oplc1");
    for p in [format!("pic-{id}"), format!("pic-{proxy}-{conn}")] {
        remove_compose_project(&p);
    }
    cell.store
        .add(id, web_manifest(id, "1.0", &web, &side), WEB_AND_SIDE);
    cell.store.add(
        proxy,
        json!({
            "id": proxy, "name": "Proxy", "version": "1", "author": "tests",
            "kind": "connectivity", "instanceable": true, "connectivity": {"mode": "redirect"},
            "image": web, "container_name": format!("pt-{proxy}"), "cap_add": ["NET_ADMIN"]
        }),
        PROXY,
    );
    ok(&cell.run(&["install", id]));
    ok(&cell.run(&["install", proxy]));
    ok(&cell.run(&["connection", "add", proxy, conn]));
    // The helper prints 6002 lines; wait for its last.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !text(&cell.run(&["logs", id, "--service", "side", "--tail", "3"])).contains("alert(7)") {
        assert!(
            Instant::now() < deadline,
            "the helper never printed its lines"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // The whole project: both containers' lines.
    let all = ok(&cell.run(&["logs", id]));
    assert!(all.contains("web-said-hello"), "{all}");
    assert!(all.contains("side-said-hello"), "{all}");
    // One compose service: only its lines.
    let side_only = ok(&cell.run(&["logs", id, "--service", "side", "--tail", "5"]));
    assert!(side_only.contains("side-said-hello"), "{side_only}");
    assert!(!side_only.contains("web-said-hello"), "{side_only}");
    assert_eq!(side_only.lines().count(), 5, "{side_only}");
    let web_only = ok(&cell.run(&["logs", id, "--service=web"]));
    assert!(
        web_only.contains("web-said-hello") && !web_only.contains("side-said"),
        "{web_only}"
    );
    // The tail is capped at 5000 lines; a larger one is not an error.
    let capped = ok(&cell.run(&["logs", id, "--service", "side", "--tail", "999999"]));
    assert_eq!(
        capped.lines().count(),
        5000,
        "{}",
        &capped[..200.min(capped.len())]
    );
    assert!(capped.contains("| n6000"));
    assert!(!capped.contains("| n1000\n"));
    // The connection instance's runtime, next to the services'.
    let st = cell.json(&["status", "--json"]);
    assert_eq!(
        st["runtime"]["connections"][conn]["state"],
        json!("running"),
        "{st}"
    );
    let li = cell.json(&["list", "--json"]);
    assert_eq!(
        li["connections"][conn]["runtime"]["state"],
        json!("running"),
        "{li}"
    );
    assert_eq!(li["installed"][proxy]["runtime"], json!(null), "{li}");
    // A connection instance by its name.
    let c = ok(&cell.run(&["logs", conn]));
    assert!(c.contains("proxy-said-hello"), "{c}");
    // A name that is not a compose service of the project is refused,
    // and so are an unknown ID and a tail that is not a number.
    let out = cell.run(&["logs", id, "--service", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope"),
        "{}",
        show(&out)
    );
    let out = cell.run(&["logs", "op-none"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let out = cell.run(&["logs", id, "--tail", "ten"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));

    // The API: text/plain, the same choices.
    let envs = cell.envs();
    let s = Serve::start(&cell.dir, &envs);
    let a = s.api(
        "GET",
        &format!("/api/services/{id}/logs?service=side&tail=3"),
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        a.header("Content-Type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{a:?}"
    );
    assert!(a.body.contains("side-said-hello"), "{}", a.body);
    assert_eq!(a.body.lines().count(), 3, "{}", a.body);
    let a = s.api("GET", &format!("/api/services/{id}/logs"));
    assert_eq!(a.status, 200);
    assert!(a.body.contains("web-said-hello"), "{}", a.body);
    assert_eq!(
        s.api("HEAD", &format!("/api/services/{id}/logs")).status,
        200
    );
    let v = s.api("GET", "/api/services").json();
    assert_eq!(
        v["connections"][conn]["runtime"]["state"],
        json!("running"),
        "{v}"
    );
    let a = s.api("GET", &format!("/api/connections/{conn}/logs?tail=50"));
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.body.contains("proxy-said-hello"), "{}", a.body);
    let a = s.api("GET", &format!("/api/services/{id}/logs?service=..%2Fx"));
    assert_eq!(a.status, 400, "{a:?}");
    let a = s.api("GET", &format!("/api/services/{id}/logs?tail=-1"));
    assert_eq!(a.status, 400, "{a:?}");
    assert_eq!(
        s.api("GET", &format!("/api/connections/{id}/logs")).status,
        404
    );
    let no_token = request(s.addr, "GET", &format!("/api/services/{id}/logs"), &[], b"");
    assert_eq!(no_token.status, 401, "{no_token:?}");

    // The page's logs view escapes what the container printed.
    let cookie = s.login();
    let p = s.page(
        &format!("/services/{id}/logs?service=side&tail=20"),
        &cookie,
    );
    assert_eq!(p.status, 200);
    assert!(
        p.body.contains("&lt;script&gt;alert(7)&lt;/script&gt;"),
        "{}",
        p.body
    );
    assert!(!p.body.contains("<script>alert(7)"), "unescaped log text");
    let p = s.page(&format!("/connections/{conn}/logs"), &cookie);
    assert_eq!(p.status, 200);
    assert!(p.body.contains("proxy-said-hello"));
    let anon = request(s.addr, "GET", &format!("/services/{id}/logs"), &[], b"");
    assert_eq!(anon.status, 303, "the logs view needs a session");
    let home = s.page("/", &cookie).body;
    assert!(home.contains(&format!(r#"href="/connections/{conn}/logs""#)));
    drop(s);

    ok(&cell.run(&["connection", "remove", conn]));
    ok(&cell.run(&["remove", proxy]));
    ok(&cell.run(&["remove", id]));
}

/// A minimal service folder for `validate` and a store for `install`.
fn simple_manifest(id: &str, web: &str) -> Value {
    json!({
        "id": id, "name": "Simple", "version": "1", "author": "tests",
        "image": web, "container_name": format!("pt-{id}")
    })
}

#[test]
fn a_missing_compose_plugin_or_docker_is_named_not_blamed_on_the_template() {
    if !require_rig() {
        return;
    }
    let (web, _) = images();
    let mut cell = Cell::new("pic-operate", "172.20.0.240-172.20.0.241");
    let id = "op-tools";
    cell.store.add(id, simple_manifest(id, &web), WEB_TEMPLATE);
    // docker without its Compose plugin: every other command works.
    let real = which("docker");
    let bin = cell.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let no_plugin = bin.join("docker");
    write_script(
        &no_plugin,
        &format!(
            "#!/bin/sh\nif [ \"$1\" = compose ]; then\n  echo \"docker: unknown command: docker compose\" >&2\n  echo >&2\n  echo \"Run 'docker --help' for more information\" >&2\n  exit 1\nfi\nexec {real} \"$@\"\n"
        ),
    );
    let folder = cell.store.root().join("services").join(id);
    let folder = folder.to_str().unwrap();
    // With the real docker the folder is valid.
    ok(&pic(&cell.dir, &[], &["validate", folder]));

    for (docker, says) in [
        (
            no_plugin.to_str().unwrap(),
            "docker compose plugin not found",
        ),
        ("/nonexistent/bin/docker", "docker not found"),
    ] {
        let env = [("PIC_DOCKER", docker)];
        let out = pic(&cell.dir, &env, &["validate", folder]);
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{}", show(&out));
        assert!(
            !text(&out).contains("compose-template.yml"),
            "blamed the template: {}",
            show(&out)
        );

        let mut envs = cell.envs();
        envs.push(("PIC_DOCKER", docker));
        let out = pic_in(&cell.ns, &cell.dir, &envs, &["install", id]);
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{}",
            show(&out)
        );
        let state: Value = std::fs::read(cell.dir.state_dir().join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(json!({}));
        assert!(state["services"].get(id).is_none(), "{state}");

        let overrides = cell.ns.program_overrides(&cell.dir.join("nsbin"));
        let mut envs: Vec<(&str, &str)> = overrides
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        envs.push(("PIC_DOCKER", docker));
        envs.push(("PIC_SERVICE_POOL", "172.20.0.240-172.20.0.241"));
        let s = Serve::start(&cell.dir, &envs);
        let a = s.api("POST", &format!("/api/services/{id}/install"));
        assert_eq!(a.status, 503, "{a:?}\n{}", s.log_text());
        assert!(
            a.json()["error"].as_str().is_some_and(|e| e.contains(says)),
            "{a:?}"
        );
    }
}
