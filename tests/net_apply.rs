//! The networking plans reach the real kernel: real `iptables-restore`,
//! `iptables-save` and `ip` run inside a network namespace each test makes
//! (and deletes, even on panic), through wrapper programs that count their
//! spawns; the Caddy file is checked with the real `caddy adapt`.
//! Needs root, iptables, iproute2 and caddy (see TESTING.md).

use pic_store::config::Config;
use pic_store::host::RealHost;
use pic_store::ids::ServiceId;
use pic_store::manifest::{Connectivity, ConnectivityMode, Kind, Manifest, PortRule, Proto};
use pic_store::net::{self, firewall, routing};
use pic_store::state::{Connection, InstalledService, State};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

const IP: &str = "/usr/sbin/ip";
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace with loopback and a 172.20.0.1/24 interface, a
/// temp folder with counting wrappers, and a `Config` pointing at them.
struct Netns {
    name: String,
    dir: PathBuf,
}

fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes namespaces an earlier, killed run left behind.
fn remove_leftovers() {
    let list = run(&[IP, "netns", "list"]);
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix("pic-net-") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if pid != std::process::id().to_string() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new(IP).args(["netns", "del", name]).status();
        }
    }
}

impl Netns {
    fn new() -> Netns {
        remove_leftovers();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("pic-net-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run(&[IP, "netns", "add", &name]);
        let ns = Netns { name, dir };
        ns.exec(&[IP, "link", "set", "lo", "up"]);
        // A dummy interface where the kernel has the module, else a bridge
        // without ports: either carries 172.20.0.1/24 for the gateways.
        let dummy = Command::new(IP)
            .args(["-n", &ns.name, "link", "add", "pic0", "type", "dummy"])
            .output()
            .unwrap();
        if !dummy.status.success() {
            ns.exec(&[IP, "link", "add", "pic0", "type", "bridge"]);
        }
        ns.exec(&[IP, "addr", "add", "172.20.0.1/24", "dev", "pic0"]);
        ns.exec(&[IP, "link", "set", "pic0", "up"]);
        for (wrapper, target) in [
            ("iptables-save", "/usr/sbin/iptables-save"),
            ("iptables-restore", "/usr/sbin/iptables-restore"),
            ("ip", IP),
        ] {
            ns.wrapper(
                wrapper,
                &format!("exec {IP} netns exec {} {target} \"$@\"", ns.name),
            );
        }
        ns.wrapper("caddy-reload", "exit 0");
        ns
    }

    fn wrapper(&self, name: &str, body: &str) {
        let path = self.dir.join(name);
        let count = self.dir.join(format!("count-{name}"));
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho \"$*\" >> {}\n{body}\n", count.display()),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// How often the wrapper `name` ran since the last [`Netns::reset`].
    fn count(&self, name: &str) -> usize {
        std::fs::read_to_string(self.dir.join(format!("count-{name}")))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn reset(&self) {
        for name in ["iptables-save", "iptables-restore", "ip", "caddy-reload"] {
            let _ = std::fs::remove_file(self.dir.join(format!("count-{name}")));
        }
    }

    fn config(&self) -> Config {
        let path = |name: &str| self.dir.join(name).display().to_string();
        let vars = [
            ("PIC_IPTABLES_SAVE", path("iptables-save")),
            ("PIC_IPTABLES_RESTORE", path("iptables-restore")),
            ("PIC_IP", path("ip")),
            ("PIC_CADDY_RELOAD", path("caddy-reload")),
            ("PIC_CADDYFILE", path("services.caddy")),
            ("PIC_STATE_DIR", path("state")),
            ("PIC_CELL_DOMAIN", "cell.test".to_string()),
            ("PIC_WAN_IFACE", "eth0".to_string()),
        ];
        Config::from_lookup(|k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.clone())
        })
        .unwrap()
    }

    fn exec(&self, argv: &[&str]) -> String {
        let mut full = vec![IP, "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run(&full)
    }

    /// `iptables-save` without its dated comment lines.
    fn save(&self) -> String {
        self.exec(&["iptables-save"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    fn rules(&self) -> String {
        self.exec(&[IP, "rule", "show"])
    }

    /// IPv4 routes of every table (the IPv6 link-local route appears a
    /// moment after the link, whenever duplicate address detection ends).
    fn routes(&self) -> String {
        self.exec(&[IP, "-4", "route", "show", "table", "all"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new(IP).args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn manifest(id: &str) -> Manifest {
    Manifest {
        id: ServiceId::parse(id).unwrap(),
        name: id.into(),
        version: "1".into(),
        author: "roof".into(),
        kind: Kind::Service,
        image: format!("git.pic.ngo/roof/{id}:1"),
        container_name: format!("cell-{id}"),
        requires: vec![],
        volumes: vec![],
        env: vec![],
        iptables_rules: vec![],
        routes: vec![],
        cap_add: vec![],
        provision_hook: None,
        instanceable: false,
        connectivity: None,
        helper_images: Default::default(),
        settings: vec![],
        extra: Default::default(),
    }
}

fn add_service(
    st: &mut State,
    id: &str,
    ip: &str,
    rules: &[(u16, Proto)],
    routes: &[(&str, &str)],
) {
    let mut m = manifest(id);
    m.iptables_rules = rules
        .iter()
        .map(|&(dest_port, proto)| PortRule { dest_port, proto })
        .collect();
    m.routes = routes
        .iter()
        .map(|(s, b)| (s.to_string(), b.to_string()))
        .collect();
    st.services.insert(
        id.into(),
        InstalledService {
            manifest: m,
            ip: Some(ip.parse().unwrap()),
            installed_at: 1,
            image_digest: None,
            template: None,
            stopped: false,
            settings: Default::default(),
            secrets: Default::default(),
        },
    );
}

fn add_connection(st: &mut State, id: &str, service: &str, mode: ConnectivityMode, n: u32) {
    let mut m = manifest(service);
    m.kind = Kind::Connectivity;
    m.instanceable = true;
    m.connectivity = Some(Connectivity { mode });
    st.services.insert(
        service.into(),
        InstalledService {
            manifest: m,
            ip: None,
            installed_at: 1,
            image_digest: None,
            template: None,
            stopped: false,
            settings: Default::default(),
            secrets: Default::default(),
        },
    );
    st.connections.insert(
        id.into(),
        Connection {
            service: service.into(),
            env: Default::default(),
            fwmark: 0x100 + n,
            table: 100 + n,
            port: 12000 + n as u16,
            ip: format!("172.20.0.{}", 30 + n).parse().unwrap(),
            created_at: 1,
        },
    );
}

/// Two services (three rules, tcp and udp), a redirect and a route
/// connection, two peers and one egress.
fn two_services() -> State {
    let mut st = State::default();
    add_service(
        &mut st,
        "radicale",
        "172.20.0.20",
        &[(5232, Proto::Tcp)],
        &[("calendar", "cell-radicale:5232")],
    );
    add_service(
        &mut st,
        "files",
        "172.20.0.21",
        &[(80, Proto::Tcp), (69, Proto::Udp)],
        &[("files", "cell-files:80")],
    );
    add_connection(
        &mut st,
        "home-proxy",
        "proxy",
        ConnectivityMode::Redirect,
        0,
    );
    add_connection(&mut st, "office-vpn", "wg-ext", ConnectivityMode::Route, 1);
    st.peer_routes
        .insert("10.8.0.2".into(), "home-proxy".into());
    st.peer_routes
        .insert("10.8.0.3".into(), "office-vpn".into());
    st.egress.insert("radicale".into(), "office-vpn".into());
    st
}

fn apply(ns: &Netns, st: &State) {
    let report = net::apply_all(&RealHost, &ns.config(), st).unwrap();
    assert!(report.ok(), "{:?}", report.lines());
}

fn count_lines(text: &str, line: &str) -> usize {
    text.lines().filter(|l| *l == line).count()
}

#[test]
fn two_services_apply_once_and_leave_other_rules_alone() {
    let ns = Netns::new();
    ns.exec(&[
        "iptables",
        "-A",
        "FORWARD",
        "-s",
        "10.9.9.9/32",
        "-j",
        "ACCEPT",
    ]);
    ns.exec(&["iptables", "-N", "OTHER"]);
    ns.exec(&["iptables", "-A", "OTHER", "-j", "RETURN"]);
    let st = two_services();
    apply(&ns, &st);

    let save = ns.save();
    for rule in [
        "-A PIC_SERVICES -d 172.20.0.20/32 -p tcp -m tcp --dport 5232 -j ACCEPT",
        "-A PIC_SERVICES -d 172.20.0.21/32 -p tcp -m tcp --dport 80 -j ACCEPT",
        "-A PIC_SERVICES -d 172.20.0.21/32 -p udp -m udp --dport 69 -j ACCEPT",
        "-A PIC_KILLSWITCH -o eth0 -m mark --mark 0x100 -j DROP",
        "-A PIC_KILLSWITCH -o eth0 -m mark --mark 0x101 -j DROP",
        "-A PIC_CONNECTIVITY -s 10.8.0.2/32 -j MARK --set-xmark 0x100/0xffffffff",
        "-A PIC_CONNECTIVITY -s 10.8.0.3/32 -j MARK --set-xmark 0x101/0xffffffff",
        "-A PIC_EGRESS -s 172.20.0.20/32 -j MARK --set-xmark 0x101/0xffffffff",
        "-A PIC_CONNECTIVITY -s 10.8.0.2/32 -p tcp -j REDIRECT --to-ports 12000",
        "-A FORWARD -j DOCKER-USER",
        "-A DOCKER-USER -j PIC_SERVICES",
        "-A DOCKER-USER -j PIC_KILLSWITCH",
        "-A FORWARD -s 10.9.9.9/32 -j ACCEPT",
        "-A OTHER -j RETURN",
    ] {
        assert_eq!(count_lines(&save, rule), 1, "{rule}\n{save}");
    }
    // Two tables have a PREROUTING jump to a PIC_CONNECTIVITY chain.
    assert_eq!(count_lines(&save, "-A PREROUTING -j PIC_CONNECTIVITY"), 2);
    assert_eq!(count_lines(&save, "-A PREROUTING -j PIC_EGRESS"), 1);
    // Each marking or redirecting chain starts with the cell's RETURNs.
    assert_eq!(
        count_lines(
            &save,
            "-A PIC_EGRESS -m addrtype --dst-type LOCAL -j RETURN"
        ),
        1
    );
    assert_eq!(
        count_lines(&save, "-A PIC_CONNECTIVITY -d 172.20.0.0/24 -j RETURN"),
        2
    );
    // No jump of ours straight from FORWARD; DOCKER-USER is reached
    // before the host's ACCEPT, and the kill-switch decides first there.
    assert!(!save.contains("-A FORWARD -j PIC_"), "{save}");
    let user = save.find("-A FORWARD -j DOCKER-USER").unwrap();
    let host = save.find("-A FORWARD -s 10.9.9.9/32 -j ACCEPT").unwrap();
    assert!(user < host, "DOCKER-USER first:\n{save}");
    let ks = save.find("-A DOCKER-USER -j PIC_KILLSWITCH").unwrap();
    let acc = save.find("-A DOCKER-USER -j PIC_SERVICES").unwrap();
    assert!(ks < acc, "kill-switch first:\n{save}");

    let rules = ns.rules();
    assert!(
        rules.contains("10000:\tfrom all fwmark 0x100 lookup 100\n"),
        "{rules}"
    );
    assert!(
        rules.contains("10001:\tfrom all fwmark 0x101 lookup 101\n"),
        "{rules}"
    );
    let t100 = ns.exec(&[IP, "route", "show", "table", "100"]);
    assert!(t100.contains("default via 172.20.0.30 dev pic0"), "{t100}");
    assert!(
        t100.contains("blackhole default metric 4294967295"),
        "{t100}"
    );

    // Twice in a row: nothing changes, and nothing is restored.
    let (routes, caddy) = (
        ns.routes(),
        std::fs::read(ns.dir.join("services.caddy")).unwrap(),
    );
    ns.reset();
    apply(&ns, &st);
    assert_eq!(ns.save(), save);
    assert_eq!(ns.rules(), rules);
    assert_eq!(ns.routes(), routes);
    assert_eq!(std::fs::read(ns.dir.join("services.caddy")).unwrap(), caddy);
    assert_eq!(ns.count("iptables-save"), 1);
    assert_eq!(ns.count("iptables-restore"), 0);
    assert_eq!(ns.count("ip"), 1, "only the read");
    assert_eq!(ns.count("caddy-reload"), 0);

    let dry = net::dry_run(&RealHost, &ns.config(), &st);
    assert_eq!(dry.drift, Vec::<String>::new());
    assert_eq!(dry.ruleset, "");
    assert_eq!(dry.ip_batch, "");
}

#[test]
fn drift_is_repaired_and_only_our_band_is_cleaned() {
    let ns = Netns::new();
    let st = two_services();
    apply(&ns, &st);
    let (save, rules, routes) = (ns.save(), ns.rules(), ns.routes());

    ns.exec(&["iptables", "-F", "PIC_SERVICES"]);
    ns.exec(&["iptables", "-I", "FORWARD", "1", "-j", "PIC_SERVICES"]);
    ns.exec(&[IP, "rule", "del", "priority", "10001"]);
    ns.exec(&[
        IP, "rule", "add", "fwmark", "0x1f4", "lookup", "150", "priority", "10500",
    ]);
    ns.exec(&[
        IP,
        "route",
        "add",
        "blackhole",
        "default",
        "metric",
        "4294967295",
        "table",
        "150",
    ]);
    ns.exec(&[
        IP, "rule", "add", "from", "10.1.1.1", "lookup", "main", "priority", "9000",
    ]);

    let dry = net::dry_run(&RealHost, &ns.config(), &st);
    assert!(!dry.drift.is_empty());
    assert!(dry.ruleset.starts_with("*filter\n"), "{}", dry.ruleset);
    assert!(
        dry.ip_batch.contains("rule del priority 10500"),
        "{}",
        dry.ip_batch
    );
    assert_ne!(ns.save(), save, "a dry run changes nothing");

    ns.reset();
    apply(&ns, &st);
    assert_eq!(ns.save(), save);
    assert_eq!(ns.count("iptables-restore"), 1, "only filter drifted");
    assert!(ns.count("ip") <= 2);
    let after = ns.rules();
    assert!(
        after.contains("9000:\tfrom 10.1.1.1 lookup main\n"),
        "{after}"
    );
    assert_eq!(
        after.replace("9000:\tfrom 10.1.1.1 lookup main\n", ""),
        rules
    );
    assert_eq!(ns.routes(), routes, "table 150 flushed");
}

#[test]
fn removing_a_service_clears_exactly_its_rules() {
    let ns = Netns::new();
    let mut st = two_services();
    apply(&ns, &st);
    let before = ns.save();
    st.services.remove("files");
    ns.reset();
    apply(&ns, &st);
    let after = ns.save();
    let gone: Vec<&str> = before.lines().filter(|l| !after.contains(l)).collect();
    assert_eq!(
        gone,
        [
            "-A PIC_SERVICES -d 172.20.0.21/32 -p tcp -m tcp --dport 80 -j ACCEPT",
            "-A PIC_SERVICES -d 172.20.0.21/32 -p udp -m udp --dport 69 -j ACCEPT",
        ]
    );
    assert_eq!(before.lines().count(), after.lines().count() + 2);
    assert_eq!(ns.count("iptables-restore"), 1);
    assert_eq!(ns.count("caddy-reload"), 1, "its route left the Caddy file");

    // And a connection going away takes its rule, routes and kill-switch.
    st.peer_routes.remove("10.8.0.3");
    st.egress.clear();
    st.connections.remove("office-vpn");
    apply(&ns, &st);
    assert!(!ns.rules().contains("lookup 101"));
    assert_eq!(ns.exec(&[IP, "route", "show", "table", "101"]), "");
    assert!(!ns.save().contains("0x101"));
}

#[test]
fn caddy_file_parses_and_reloads_only_on_change() {
    let ns = Netns::new();
    let mut st = two_services();
    add_service(
        &mut st,
        "notes",
        "172.20.0.22",
        &[(3000, Proto::Tcp)],
        &[("notes", "cell-notes:3000"), ("wiki", "cell-notes:3001")],
    );
    apply(&ns, &st);
    let file = ns.dir.join("services.caddy");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.matches("reverse_proxy").count(), 4, "{text}");
    let adapted = Command::new("/usr/bin/caddy")
        .args(["adapt", "--config"])
        .arg(&file)
        .args(["--adapter", "caddyfile"])
        .output()
        .unwrap();
    assert!(
        adapted.status.success(),
        "{}",
        String::from_utf8_lossy(&adapted.stderr)
    );
    let json = String::from_utf8_lossy(&adapted.stdout);
    assert!(json.contains("wiki.cell.test"), "{json}");
    assert!(json.contains("cell-notes:3001"), "{json}");
    assert_eq!(ns.count("caddy-reload"), 1);

    apply(&ns, &st);
    assert_eq!(ns.count("caddy-reload"), 1, "unchanged file, no reload");
    st.services.remove("notes");
    apply(&ns, &st);
    assert_eq!(ns.count("caddy-reload"), 2);
}

#[test]
fn fifty_services_spawn_counts() {
    let ns = Netns::new();
    let mut st = State::default();
    for i in 0..50u32 {
        add_service(
            &mut st,
            &format!("svc{i}"),
            &format!("172.20.0.{}", 100 + i),
            &[(8000 + i as u16, Proto::Tcp), (9000 + i as u16, Proto::Udp)],
            &[(&format!("s{i}"), &format!("cell-svc{i}:80"))],
        );
    }
    for i in 0..10u32 {
        let mode = if i % 2 == 0 {
            ConnectivityMode::Redirect
        } else {
            ConnectivityMode::Route
        };
        add_connection(&mut st, &format!("conn{i}"), &format!("kind{i}"), mode, i);
        st.peer_routes
            .insert(format!("10.8.0.{}", 10 + i), format!("conn{i}"));
        st.egress.insert(format!("svc{i}"), format!("conn{i}"));
    }
    let start = std::time::Instant::now();
    apply(&ns, &st);
    let first = (
        ns.count("iptables-save"),
        ns.count("iptables-restore"),
        ns.count("ip"),
        start.elapsed(),
    );
    assert_eq!(first.0, 1);
    assert!(first.1 <= 3, "{first:?}");
    assert!(first.2 <= 2, "{first:?}");
    assert_eq!(ns.save().matches("-A PIC_SERVICES ").count(), 100);

    ns.reset();
    let start = std::time::Instant::now();
    apply(&ns, &st);
    let second = (
        ns.count("iptables-save"),
        ns.count("iptables-restore"),
        ns.count("ip"),
        start.elapsed(),
    );
    assert_eq!((second.0, second.1, second.2), (1, 0, 1));
    eprintln!(
        "50 services, 10 connections: first apply save/restore/ip = {}/{}/{} in {:?}; \
         second {}/{}/{} in {:?}",
        first.0, first.1, first.2, first.3, second.0, second.1, second.2, second.3
    );
}

#[test]
fn an_unreachable_gateway_fails_only_its_line() {
    let ns = Netns::new();
    let mut st = two_services();
    st.connections.get_mut("office-vpn").unwrap().ip = "10.99.0.1".parse().unwrap();
    let report = net::apply_all(&RealHost, &ns.config(), &st).unwrap();
    assert!(report.firewall.is_ok());
    let err = report.routing.as_ref().unwrap_err().to_string();
    assert!(
        err.contains("route replace default via 10.99.0.1 table 101"),
        "{err}"
    );
    // Every other line ran: both rules and the blackholes are in.
    let rules = ns.rules();
    assert!(
        rules.contains("lookup 100") && rules.contains("lookup 101"),
        "{rules}"
    );
    assert!(ns
        .exec(&[IP, "route", "show", "table", "101"])
        .contains("blackhole default"));
    let plan = routing::plan(&st);
    assert_eq!(plan.rules.len(), 2);
    let fw = firewall::plan(&st, "eth0");
    assert!(fw.warnings.is_empty());
}
