//! The data plane proven with real packets (spec §9 v2). Network namespaces
//! stand in for two VPN peers, the internet, two connection instances (each
//! with a "tunnel" of its own to the internet), two services on the cell
//! network, a helper on a service's own compose network, a container of
//! another project and the home LAN. They hang off a router namespace by
//! veth pairs and bridges named the way docker names them; there `FORWARD`
//! is laid out the way docker 20.10 lays it out (TESTING.md) before the real
//! pic-store binary (`ip netns exec`) programs its chains.
//!
//! Docker is stubbed: no engine and no containers are involved. The stub
//! answers `network ls` / `network inspect` with the lab's networks (so
//! pic-store finds the helper's subnet and the cell bridge as it would on a
//! cell) and succeeds on everything else; docker's own `FORWARD` rules are
//! written and replayed by the test, the way the engine writes them.
//!
//! Listeners answer with their name and the source address they saw, so a
//! reply tells which way a packet went ("wan 10.99.1.2": through instance 1's
//! tunnel; "wan 10.8.0.3": straight out of the router's WAN link).
//! Counters in the internet namespace count what arrives from the router's
//! WAN link, by source. Needs root, iproute2 and iptables.

mod common;

use common::{show, write_script, TempDir};
use serde_json::{json, Value};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The internet's address that every test talks to.
const INTERNET: &str = "203.0.113.10";
/// What the router's WAN link is called (`PIC_WAN_IFACE`).
const WAN: &str = "picwan";
/// Docker's ids of the lab's networks; a bridge is `br-` and 12 digits.
const CELL_ID: &str = "00000000ce11aaaabbbb";
const CELL_ID_RECREATED: &str = "00000000ce12aaaabbbb";
const FILES_ID: &str = "00000000f11eaaaabbbb";
const OTHER_ID: &str = "00000000a7e2aaaabbbb";
const NEW_ID: &str = "00000000ad0daaaabbbb";

fn bridge(id: &str) -> String {
    format!("br-{}", &id[..12])
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn must(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {} failed\n{}",
        args.join(" "),
        show(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread that has entered network namespace `ns`; sockets it
/// opens live in that namespace.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A TCP listener in `ns` that answers every connection with
/// `NAME SOURCE-ADDRESS` and closes it.
fn listen(ns: &str, port: u16, name: &'static str) {
    let l = in_ns(ns, move || TcpListener::bind(("0.0.0.0", port)))
        .unwrap_or_else(|e| panic!("listen {name} on {port}: {e}"));
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let peer = s
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let _ = writeln!(s, "{name} {peer}");
        }
    });
}

/// Who answers a TCP connection from `ns` to `to` (`None`: nobody within
/// the timeout).
fn ask(ns: &str, to: &str) -> Option<String> {
    let addr: SocketAddr = to.parse().unwrap();
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(700)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        Some(answer.trim().to_string())
    })
}

/// Sends `n` UDP datagrams from `ns` to the internet's discard port.
fn udp_burst(ns: &str, n: usize) {
    in_ns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
        for _ in 0..n {
            let _ = s.send_to(b"x", (INTERNET, 9));
        }
    });
    thread::sleep(Duration::from_millis(100));
}

/// The lab: its namespaces (deleted on drop), the state folder and the
/// docker stub's answers.
struct Lab {
    prefix: String,
    roles: Vec<&'static str>,
    dir: TempDir,
    cell_bridge: String,
}

const ROLES: &[&str] = &[
    "r", "p2", "p3", "wan", "i0", "i1", "s1", "s2", "h", "f", "lan",
];

/// Deletes namespaces of earlier runs whose process is gone.
fn remove_leftovers() {
    let list = must("ip", &["netns", "list"]);
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix("pic-pk-") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if pid != std::process::id().to_string() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// `ip netns exec NS ARGS...`, which must succeed.
    fn x(&self, role: &str, args: &[&str]) -> String {
        let ns = self.ns(role);
        let mut full = vec!["netns", "exec", ns.as_str()];
        full.extend_from_slice(args);
        must("ip", &full)
    }

    fn r(&self, args: &[&str]) -> String {
        self.x("r", args)
    }

    /// A veth pair: `inner` in `role` with `addr`, `outer` in the router,
    /// enslaved to `master` or given `outer_addr`.
    fn wire(&self, role: &str, inner: &str, addr: &str, outer: &str, master: Option<&str>) {
        let (r, ns) = (self.ns("r"), self.ns(role));
        must(
            "ip",
            &[
                "-n", &r, "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", &ns,
            ],
        );
        if let Some(m) = master {
            must("ip", &["-n", &r, "link", "set", outer, "master", m]);
        }
        must("ip", &["-n", &r, "link", "set", outer, "up"]);
        must("ip", &["-n", &ns, "addr", "add", addr, "dev", inner]);
        must("ip", &["-n", &ns, "link", "set", inner, "up"]);
    }

    /// A veth pair between two non-router namespaces.
    fn wire_pair(&self, a: &str, a_if: &str, a_addr: &str, b: &str, b_if: &str, b_addr: &str) {
        let (na, nb) = (self.ns(a), self.ns(b));
        must(
            "ip",
            &[
                "-n", &na, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &nb,
            ],
        );
        for (n, i, addr) in [(&na, a_if, a_addr), (&nb, b_if, b_addr)] {
            must("ip", &["-n", n, "addr", "add", addr, "dev", i]);
            must("ip", &["-n", n, "link", "set", i, "up"]);
        }
    }

    fn add_bridge(&self, name: &str, addr: &str) {
        let r = self.ns("r");
        must("ip", &["-n", &r, "link", "add", name, "type", "bridge"]);
        must("ip", &["-n", &r, "addr", "add", addr, "dev", name]);
        must("ip", &["-n", &r, "link", "set", name, "up"]);
    }

    fn route(&self, role: &str, args: &[&str]) {
        let ns = self.ns(role);
        let mut full = vec!["-n", ns.as_str(), "route", "add"];
        full.extend_from_slice(args);
        must("ip", &full);
    }

    fn new() -> Lab {
        remove_leftovers();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let lab = Lab {
            prefix: format!("pic-pk-{}-{n}", std::process::id()),
            roles: ROLES.to_vec(),
            dir: TempDir::with_prefix("pic-packets"),
            cell_bridge: bridge(CELL_ID),
        };
        for role in ROLES {
            let ns = lab.ns(role);
            must("ip", &["netns", "add", &ns]);
            must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        for role in ["r", "i0", "i1"] {
            lab.x(role, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            lab.x(role, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
            lab.x(
                role,
                &["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"],
            );
        }

        // The router: the WireGuard side (a bridge here, so two peers can
        // hang off it), the cell network, the files service's own compose
        // network, another project's network, the LAN and the WAN.
        let cell = lab.cell_bridge.clone();
        lab.add_bridge("picwg", "10.8.0.1/24");
        lab.add_bridge(&cell, "172.20.0.1/24");
        lab.add_bridge(&bridge(FILES_ID), "172.21.0.1/24");
        lab.add_bridge(&bridge(OTHER_ID), "172.22.0.1/24");
        lab.wire("p2", "eth0", "10.8.0.2/24", "vp2", Some("picwg"));
        lab.wire("p3", "eth0", "10.8.0.3/24", "vp3", Some("picwg"));
        lab.wire("s1", "eth0", "172.20.0.20/24", "vs1", Some(&cell));
        lab.wire("s2", "eth0", "172.20.0.21/24", "vs2", Some(&cell));
        lab.wire("i0", "eth0", "172.20.0.30/24", "vi0", Some(&cell));
        lab.wire("i1", "eth0", "172.20.0.31/24", "vi1", Some(&cell));
        lab.wire("h", "eth0", "172.21.0.2/24", "vh", Some(&bridge(FILES_ID)));
        lab.wire(
            "f",
            "eth0",
            "172.22.0.2/24",
            "vforeign",
            Some(&bridge(OTHER_ID)),
        );
        lab.wire("lan", "eth0", "192.168.77.2/24", "piclan", None);
        lab.r(&["ip", "addr", "add", "192.168.77.1/24", "dev", "piclan"]);
        lab.wire("wan", "uplink", "198.51.100.2/24", WAN, None);
        lab.r(&["ip", "addr", "add", "198.51.100.1/24", "dev", WAN]);
        lab.route("r", &["default", "via", "198.51.100.2"]);
        for (role, gw) in [
            ("p2", "10.8.0.1"),
            ("p3", "10.8.0.1"),
            ("s1", "172.20.0.1"),
            ("s2", "172.20.0.1"),
            ("h", "172.21.0.1"),
            ("f", "172.22.0.1"),
            ("lan", "192.168.77.1"),
            ("wan", "198.51.100.1"),
        ] {
            lab.route(role, &["default", "via", gw]);
        }
        lab.x(
            "wan",
            &["ip", "addr", "add", &format!("{INTERNET}/32"), "dev", "lo"],
        );

        // Each instance sends what it is given into its own tunnel to the
        // internet (masqueraded, so the internet sees the tunnel's
        // address), and nowhere else.
        for (role, tun, far, near) in [
            ("i0", "t0", "10.99.0.1/30", "10.99.0.2/30"),
            ("i1", "t1", "10.99.1.1/30", "10.99.1.2/30"),
        ] {
            lab.wire_pair(role, "tun", near, "wan", tun, far);
            let via = far.split('/').next().unwrap();
            lab.route(role, &["default", "via", via]);
            for back in ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"] {
                lab.route(role, &[back, "via", "172.20.0.1"]);
            }
            lab.restore(
                role,
                "*filter\n:FORWARD DROP [0:0]\n\
                 -A FORWARD -o tun -j ACCEPT\n\
                 -A FORWARD -i tun -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
                 COMMIT\n*nat\n-A POSTROUTING -o tun -j MASQUERADE\nCOMMIT\n",
            );
        }

        // The internet counts what comes in from the router's WAN link,
        // by source, and what comes through each tunnel.
        lab.restore(
            "wan",
            "*raw\n\
             -A PREROUTING -i uplink -s 10.8.0.2/32\n\
             -A PREROUTING -i uplink -s 10.8.0.3/32\n\
             -A PREROUTING -i uplink -s 172.20.0.21/32\n\
             -A PREROUTING -i uplink -s 172.21.0.2/32\n\
             -A PREROUTING -i t0\n\
             -A PREROUTING -i t1\n\
             COMMIT\n",
        );

        lab.docker_layout();
        lab.write_state();
        lab.set_docker_networks(CELL_ID);

        listen(&lab.ns("wan"), 80, "wan");
        listen(&lab.ns("r"), 12000, "proxy");
        listen(&lab.ns("r"), 8443, "cell");
        listen(&lab.ns("s1"), 5232, "radicale");
        listen(&lab.ns("lan"), 80, "lan");
        listen(&lab.ns("h"), 5432, "helper");
        lab
    }

    fn restore(&self, role: &str, text: &str) {
        let ns = self.ns(role);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "iptables-restore", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("iptables-restore");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{text}\n{}", show(&out));
    }

    /// `FORWARD` as docker 20.10 leaves it with the cell network, the
    /// files project's network and another project's network, plus the
    /// cell's own rules for its WireGuard, LAN and WAN links at the end.
    fn docker_layout(&self) {
        let mut t = "*filter\n:FORWARD DROP [0:0]\n:DOCKER - [0:0]\n\
                     :DOCKER-ISOLATION-STAGE-1 - [0:0]\n:DOCKER-ISOLATION-STAGE-2 - [0:0]\n\
                     :DOCKER-USER - [0:0]\n\
                     -A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n"
            .to_string();
        let bridges = [bridge(CELL_ID), bridge(FILES_ID), bridge(OTHER_ID)];
        for br in &bridges {
            for rule in network_rules(br) {
                t.push_str(&format!("-A FORWARD {rule}\n"));
            }
        }
        t.push_str(
            "-A FORWARD -i picwg -j ACCEPT\n\
             -A FORWARD -o picwg -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             -A FORWARD -i piclan -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             -A FORWARD -i picwan -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
        );
        for br in &bridges {
            t.push_str(&format!(
                "-A DOCKER-ISOLATION-STAGE-1 -i {br} ! -o {br} -j DOCKER-ISOLATION-STAGE-2\n"
            ));
        }
        t.push_str("-A DOCKER-ISOLATION-STAGE-1 -j RETURN\n");
        for br in &bridges {
            t.push_str(&format!("-A DOCKER-ISOLATION-STAGE-2 -o {br} -j DROP\n"));
        }
        t.push_str("-A DOCKER-ISOLATION-STAGE-2 -j RETURN\n-A DOCKER-USER -j RETURN\nCOMMIT\n");
        self.restore("r", &t);
    }

    /// What docker does when it creates a network: its two jumps back on
    /// top of `FORWARD`, the network's rules right below them.
    fn replay_network_created(&self, br: &str) {
        for chain in ["DOCKER-ISOLATION-STAGE-1", "DOCKER-USER"] {
            self.r(&["iptables", "-D", "FORWARD", "-j", chain]);
            self.r(&["iptables", "-I", "FORWARD", "1", "-j", chain]);
        }
        for rule in network_rules(br).iter().rev() {
            let mut args = vec!["iptables", "-I", "FORWARD", "3"];
            args.extend(rule.split(' '));
            self.r(&args);
        }
        self.r(&[
            "iptables",
            "-I",
            "DOCKER-ISOLATION-STAGE-1",
            "1",
            "-i",
            br,
            "!",
            "-o",
            br,
            "-j",
            "DOCKER-ISOLATION-STAGE-2",
        ]);
        self.r(&[
            "iptables",
            "-I",
            "DOCKER-ISOLATION-STAGE-2",
            "1",
            "-o",
            br,
            "-j",
            "DROP",
        ]);
    }

    fn replay_network_removed(&self, br: &str) {
        for rule in network_rules(br) {
            let mut args = vec!["iptables", "-D", "FORWARD"];
            args.extend(rule.split(' '));
            self.r(&args);
        }
        self.r(&[
            "iptables",
            "-D",
            "DOCKER-ISOLATION-STAGE-1",
            "-i",
            br,
            "!",
            "-o",
            br,
            "-j",
            "DOCKER-ISOLATION-STAGE-2",
        ]);
        self.r(&[
            "iptables",
            "-D",
            "DOCKER-ISOLATION-STAGE-2",
            "-o",
            br,
            "-j",
            "DROP",
        ]);
    }

    /// Docker re-creating the cell network: the old bridge and its rules
    /// go, a new bridge (new id) takes the address and the containers.
    fn recreate_cell_network(&mut self) {
        let old = self.cell_bridge.clone();
        let new = bridge(CELL_ID_RECREATED);
        self.replay_network_removed(&old);
        self.r(&["ip", "link", "del", &old]);
        self.add_bridge(&new, "172.20.0.1/24");
        for port in ["vs1", "vs2", "vi0", "vi1"] {
            self.r(&["ip", "link", "set", port, "master", &new]);
        }
        self.replay_network_created(&new);
        self.cell_bridge = new;
        self.set_docker_networks(CELL_ID_RECREATED);
    }

    /// The docker stub: `network ls` and `network inspect` print the lab's
    /// networks (the cell network with id `cell_id`), anything else
    /// succeeds silently.
    fn set_docker_networks(&self, cell_id: &str) {
        let ls = format!(
            "{}\tpic-files\n{}\tpic-other\n",
            &FILES_ID[..12],
            &OTHER_ID[..12]
        );
        let inspect = format!(
            "cell-network\t{cell_id}\t<no value>\t<no value>\t172.20.0.0/24 \n\
             pic-files_default\t{FILES_ID}\t<no value>\tpic-files\t172.21.0.0/24 \n\
             pic-other_default\t{OTHER_ID}\t<no value>\tpic-other\t172.22.0.0/24 \n"
        );
        // Every project's container runs, so reapply leaves them alone.
        // (project, service, name, state, status: the one `docker ps` format)
        let ps = "pic-radicale\tapp\tr\trunning\tUp\npic-files\tapp\tf\trunning\tUp\n\
                  pic-proxy-home-proxy\tapp\tp\trunning\tUp\n\
                  pic-wg-ext-office-vpn\tapp\tw\trunning\tUp\n";
        fs::write(self.dir.join("docker-ls"), ls).unwrap();
        fs::write(self.dir.join("docker-inspect"), inspect).unwrap();
        fs::write(self.dir.join("docker-ps"), ps).unwrap();
        write_script(
            &self.dir.join("docker"),
            &format!(
                "#!/bin/sh\ncase \"$1 $2\" in\n\
                 'network ls') cat {} ;;\n\
                 'network inspect') cat {} ;;\n\
                 'ps -a') cat {} ;;\n\
                 esac\nexit 0\n",
                self.dir.join("docker-ls").display(),
                self.dir.join("docker-inspect").display(),
                self.dir.join("docker-ps").display()
            ),
        );
    }

    /// The state: radicale (172.20.0.20, tcp 5232 open), files
    /// (172.20.0.21, egress through office-vpn), a redirect instance
    /// home-proxy (172.20.0.30, port 12000) and a route instance office-vpn
    /// (172.20.0.31); peer 10.8.0.2 on home-proxy, 10.8.0.3 on office-vpn.
    fn write_state(&self) {
        let svc = |id: &str, ip: Value, rules: Value, conn: Value| {
            json!({
                "manifest": {
                    "id": id, "name": id, "version": "1", "author": "t",
                    "kind": if conn.is_null() { "service" } else { "connectivity" },
                    "image": "127.0.0.1:5000/roof/web:1", "container_name": format!("c-{id}"),
                    "requires": [], "volumes": [], "env": [], "iptables_rules": rules,
                    "routes": [], "cap_add": [], "provision_hook": null,
                    "instanceable": !conn.is_null(), "connectivity": conn
                },
                "ip": ip, "installed_at": 0, "image_digest": null,
                "template": if conn.is_null() { Value::Null } else { json!("services: {}\n") }
            })
        };
        let conn = |service: &str, n: u32| {
            json!({"service": service, "fwmark": 0x100 + n, "table": 100 + n,
                   "port": 12000 + n, "ip": format!("172.20.0.{}", 30 + n), "created_at": 0})
        };
        let state = json!({
            "schema": 1,
            "services": {
                "radicale": svc("radicale", json!("172.20.0.20"),
                                json!([{"dest_port": 5232, "proto": "tcp"}]), Value::Null),
                "files": svc("files", json!("172.20.0.21"), json!([]), Value::Null),
                "proxy": svc("proxy", Value::Null, json!([]), json!({"mode": "redirect"})),
                "wg-ext": svc("wg-ext", Value::Null, json!([]), json!({"mode": "route"})),
            },
            "connections": {"home-proxy": conn("proxy", 0), "office-vpn": conn("wg-ext", 1)},
            "peer_routes": {"10.8.0.2": "home-proxy", "10.8.0.3": "office-vpn"},
            "egress": {"files": "office-vpn"},
        });
        let state_dir = self.dir.state_dir();
        fs::create_dir_all(state_dir.join("compose")).unwrap();
        fs::write(state_dir.join("state.json"), state.to_string()).unwrap();
        for project in [
            "pic-radicale",
            "pic-files",
            "pic-proxy-home-proxy",
            "pic-wg-ext-office-vpn",
        ] {
            fs::write(state_dir.join(format!("compose/{project}.json")), "{}").unwrap();
        }
    }

    /// Runs the real binary in the router namespace.
    fn pic(&self, args: &[&str]) -> Output {
        let ns = self.ns("r");
        let docker = self.dir.join("docker").display().to_string();
        let envs = [
            ("PIC_DOCKER", docker.as_str()),
            ("PIC_WAN_IFACE", WAN),
            ("PIC_DIRECT_SUBNETS", "10.8.0.0/24,192.168.77.0/24"),
        ];
        let mut full = vec!["netns", "exec", ns.as_str()];
        let bin = common::bin();
        full.push(bin.to_str().unwrap());
        full.extend_from_slice(args);
        Command::new("ip")
            .env_clear()
            .envs(common::pic_env(&self.dir, &envs))
            .args(&full)
            .stdin(Stdio::null())
            .output()
            .expect("run pic-store")
    }

    fn pic_ok(&self, args: &[&str]) -> String {
        let out = self.pic(args);
        assert!(out.status.success(), "pic-store {args:?}\n{}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Packets the internet received from the router's WAN link with
    /// source `src`, or through tunnel `t0`/`t1`.
    fn wan_count(&self, what: &str) -> u64 {
        let save = self.x("wan", &["iptables-save", "-c", "-t", "raw"]);
        let needle = if what.starts_with('t') {
            format!("-A PREROUTING -i {what}")
        } else {
            format!("-A PREROUTING -s {what}/32 -i uplink")
        };
        let line = save
            .lines()
            .find(|l| l.ends_with(&needle))
            .unwrap_or_else(|| panic!("no counter {needle:?} in\n{save}"));
        let packets = line.trim_start_matches('[').split(':').next().unwrap();
        packets.parse().unwrap()
    }

    /// What leaked: packets from these sources out of the router's WAN.
    fn leaks(&self) -> Vec<(String, u64)> {
        ["10.8.0.2", "10.8.0.3", "172.20.0.21", "172.21.0.2"]
            .iter()
            .map(|s| (s.to_string(), self.wan_count(s)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    fn save(&self) -> String {
        self.r(&["iptables-save"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    fn chain(&self, chain: &str) -> Vec<String> {
        let prefix = format!("-A {chain} ");
        self.save()
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for role in &self.roles {
            let _ = run("ip", &["netns", "del", &self.ns(role)]);
        }
    }
}

/// The four rules docker 20.10 puts in `FORWARD` for a bridge network.
fn network_rules(br: &str) -> [String; 4] {
    [
        format!("-o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        format!("-o {br} -j DOCKER"),
        format!("-i {br} ! -o {br} -j ACCEPT"),
        format!("-i {br} -o {br} -j ACCEPT"),
    ]
}

fn says(answer: Option<String>, expected: &str, what: &str) {
    assert_eq!(answer.as_deref(), Some(expected), "{what}");
}

#[test]
fn routed_peers_and_egress_keep_the_cell_and_direct_subnets() {
    let lab = Lab::new();
    lab.pic_ok(&["reapply"]);
    let (p2, p3, s2) = (lab.ns("p2"), lab.ns("p3"), lab.ns("s2"));
    let internet = format!("{INTERNET}:80");

    // Through the instances: the redirect peer's TCP reaches the proxy
    // port, the route peer's and the egress service's reach the internet
    // through instance 1's tunnel.
    says(
        ask(&p2, &internet),
        "proxy 10.8.0.2",
        "redirect peer → proxy",
    );
    says(
        ask(&p3, &internet),
        "wan 10.99.1.2",
        "route peer → instance 1",
    );
    says(
        ask(&s2, &internet),
        "wan 10.99.1.2",
        "egress service → instance 1",
    );
    let t0 = lab.wan_count("t0");
    udp_burst(&p2, 5);
    assert!(
        lab.wan_count("t0") >= t0 + 5,
        "redirect peer's UDP → instance 0"
    );

    // And at the same time, directly: the cell itself, a service on the
    // cell network, a direct subnet.
    for (ns, me) in [(&p2, "10.8.0.2"), (&p3, "10.8.0.3")] {
        for cell in ["10.8.0.1:8443", "172.20.0.1:8443", "192.168.77.1:8443"] {
            says(
                ask(ns, cell),
                &format!("cell {me}"),
                &format!("{me} → {cell}"),
            );
        }
        says(
            ask(ns, "172.20.0.20:5232"),
            &format!("radicale {me}"),
            &format!("{me} → a service IP"),
        );
        says(
            ask(ns, "192.168.77.2:80"),
            &format!("lan {me}"),
            &format!("{me} → PIC_DIRECT_SUBNETS"),
        );
    }
    says(
        ask(&s2, "172.20.0.1:8443"),
        "cell 172.20.0.21",
        "egress → the cell",
    );
    says(
        ask(&s2, "172.20.0.20:5232"),
        "radicale 172.20.0.21",
        "egress → another service",
    );
    says(
        ask(&s2, "192.168.77.2:80"),
        "lan 172.20.0.21",
        "egress → direct subnet",
    );
    assert_eq!(lab.leaks(), [], "nothing went out of the WAN directly");
}

#[test]
fn docker_recreating_networks_never_opens_the_wan() {
    let mut lab = Lab::new();
    lab.pic_ok(&["reapply"]);
    let (p3, s2, h) = (lab.ns("p3"), lab.ns("s2"), lab.ns("h"));
    let internet = format!("{INTERNET}:80");
    says(ask(&s2, &internet), "wan 10.99.1.2", "egress → instance 1");

    // Docker re-creates the cell network and creates a new project's;
    // then the instances' tables are emptied (no route, no blackhole).
    lab.recreate_cell_network();
    lab.add_bridge(&bridge(NEW_ID), "172.23.0.1/24");
    lab.replay_network_created(&bridge(NEW_ID));
    for table in ["100", "101"] {
        lab.r(&["ip", "route", "flush", "table", table]);
    }
    for ns in [&s2, &p3, &h] {
        udp_burst(ns, 5);
        assert_eq!(ask(ns, &internet), None, "{ns} reached the internet");
    }
    assert_eq!(lab.leaks(), [], "kill-switch held");

    // The helpers' pass names the old cell bridge: drift until reapply.
    let dry = lab.pic(&["reapply", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(1), "{}", show(&dry));
    assert!(String::from_utf8_lossy(&dry.stdout).contains(&lab.cell_bridge));

    // A wrong order: a host rule on top of DOCKER-USER, and a version-1
    // jump that docker demoted in FORWARD. Found, and repaired.
    lab.r(&[
        "iptables",
        "-I",
        "DOCKER-USER",
        "1",
        "-i",
        "picwg",
        "-j",
        "ACCEPT",
    ]);
    lab.r(&["iptables", "-A", "FORWARD", "-j", "PIC_KILLSWITCH"]);
    let dry = lab.pic(&["reapply", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(1), "{}", show(&dry));
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(
        text.contains("DOCKER-USER: would insert jump to PIC_KILLSWITCH")
            && text.contains("FORWARD: would delete jump to PIC_KILLSWITCH"),
        "{}",
        show(&dry)
    );
    lab.pic_ok(&["reapply"]);
    let user = lab.chain("DOCKER-USER");
    assert_eq!(
        user[..2],
        ["-j PIC_KILLSWITCH", "-j PIC_SERVICES"],
        "{user:?}"
    );
    for jump in ["-j PIC_KILLSWITCH", "-j PIC_SERVICES"] {
        assert_eq!(user.iter().filter(|r| *r == jump).count(), 1, "{user:?}");
    }
    let forward = lab.chain("FORWARD");
    assert!(!forward.iter().any(|r| r.contains("PIC_")), "{forward:?}");
    assert_eq!(forward[0], "-j DOCKER-USER", "{forward:?}");
    let dry = lab.pic(&["reapply", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(0), "{}", show(&dry));

    // Back in service through the re-created network, still no leak.
    says(
        ask(&h, &internet),
        "wan 10.99.1.2",
        "helper → instance 1 again",
    );
    says(
        ask(&s2, &internet),
        "wan 10.99.1.2",
        "egress → instance 1 again",
    );
    says(
        ask(&p3, &internet),
        "wan 10.99.1.2",
        "peer → instance 1 again",
    );
    assert_eq!(lab.leaks(), []);
}

#[test]
fn helpers_follow_the_egress_and_its_kill_switch() {
    let lab = Lab::new();
    lab.pic_ok(&["reapply"]);
    let (h, f) = (lab.ns("h"), lab.ns("f"));
    let internet = format!("{INTERNET}:80");
    says(ask(&h, &internet), "wan 10.99.1.2", "helper → instance 1");

    // Another project's container still cannot reach the helper.
    assert_eq!(
        ask(&f, "172.21.0.2:5432"),
        None,
        "isolation between projects"
    );

    // The instance gone (its link down): nothing goes out at all; its
    // route gone: the blackhole holds.
    lab.x("i1", &["ip", "link", "set", "eth0", "down"]);
    udp_burst(&h, 5);
    assert_eq!(ask(&h, &internet), None);
    lab.r(&[
        "ip",
        "route",
        "del",
        "default",
        "via",
        "172.20.0.31",
        "table",
        "101",
    ]);
    udp_burst(&h, 5);
    assert_eq!(ask(&h, &internet), None);
    assert_eq!(lab.leaks(), []);

    // Egress cleared: the default route again, straight out of the WAN.
    lab.pic_ok(&["egress", "clear", "files"]);
    says(
        ask(&h, &internet),
        "wan 172.21.0.2",
        "helper → default route",
    );
    assert_eq!(
        ask(&f, "172.21.0.2:5432"),
        None,
        "isolation between projects"
    );
}

#[test]
fn moving_a_peer_while_it_sends_never_leaks() {
    let lab = Lab::new();
    lab.pic_ok(&["reapply"]);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let socket = in_ns(&lab.ns("p3"), || UdpSocket::bind("0.0.0.0:0")).unwrap();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if socket.send_to(b"x", (INTERNET, 9)).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_micros(300));
            }
        })
    };
    for _ in 0..4 {
        lab.pic_ok(&["peer", "route", "10.8.0.3", "home-proxy"]);
        lab.pic_ok(&["peer", "route", "10.8.0.3", "office-vpn"]);
    }
    lab.pic_ok(&["reapply"]);
    lab.pic_ok(&["reapply"]);
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    thread::sleep(Duration::from_millis(100));
    let (t0, t1) = (lab.wan_count("t0"), lab.wan_count("t1"));
    assert!(sent.load(Ordering::Relaxed) > 500, "the peer kept sending");
    assert!(t0 > 0 && t1 > 0, "through both instances: {t0} {t1}");
    assert_eq!(lab.leaks(), [], "sent {}", sent.load(Ordering::Relaxed));
}

/// Removes docker networks on drop.
struct DockerNetworks(Vec<String>);

impl Drop for DockerNetworks {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = common::docker(&["network", "rm", n]);
        }
    }
}

fn docker_inspect(network: &str, format: &str) -> String {
    common::ok(&common::docker(&[
        "network", "inspect", "--format", format, network,
    ]))
    .trim()
    .to_string()
}

/// The one part the lab stubs, against the real engine: the subnets of a
/// service's compose networks (found by compose's project label) and the
/// cell network's bridge reach the planned chains.
#[test]
fn helper_networks_come_from_the_real_docker() {
    if !common::require_rig() {
        return;
    }
    let id = common::unique("pkh");
    let (cell, own) = (common::unique("pkh-cell"), common::unique("pkh-own"));
    let label = format!("com.docker.compose.project=pic-{id}");
    let nets = DockerNetworks(vec![cell.clone(), own.clone()]);
    common::ok(&common::docker(&["network", "create", &cell]));
    common::ok(&common::docker(&[
        "network", "create", "--label", &label, &own,
    ]));
    let subnet = docker_inspect(&own, "{{range .IPAM.Config}}{{.Subnet}}{{end}}");
    let cell_id = docker_inspect(&cell, "{{.Id}}");

    let dir = TempDir::with_prefix("pic-packets-docker");
    let state_dir = dir.state_dir();
    fs::create_dir_all(&state_dir).unwrap();
    let svc = |id: &str, ip: Value, conn: Value| {
        json!({
            "manifest": {
                "id": id, "name": id, "version": "1", "author": "t",
                "kind": if conn.is_null() { "service" } else { "connectivity" },
                "image": "127.0.0.1:5000/roof/web:1", "container_name": format!("c-{id}"),
                "requires": [], "volumes": [], "env": [], "iptables_rules": [],
                "routes": [], "cap_add": [], "provision_hook": null,
                "instanceable": !conn.is_null(), "connectivity": conn
            },
            "ip": ip, "installed_at": 0, "image_digest": null,
            "template": if conn.is_null() { Value::Null } else { json!("services: {}\n") }
        })
    };
    let state = json!({
        "schema": 1,
        "services": {
            id.clone(): svc(&id, json!("172.20.0.21"), Value::Null),
            "wg-ext": svc("wg-ext", Value::Null, json!({"mode": "route"})),
        },
        "connections": {"office-vpn": {"service": "wg-ext", "fwmark": 0x101, "table": 101,
                         "port": 12001, "ip": "172.20.0.31", "created_at": 0}},
        "egress": {id.clone(): "office-vpn"},
    });
    fs::write(state_dir.join("state.json"), state.to_string()).unwrap();

    let ns = common::Netns::new();
    let out = common::pic_in(
        &ns,
        &dir,
        &[
            ("PIC_NETWORK", cell.as_str()),
            ("PIC_WAN_IFACE", "picdummy"),
        ],
        &["reapply", "--dry-run"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let br = format!("br-{}", &cell_id[..12]);
    for line in [
        format!("-A PIC_EGRESS -s {subnet} -j MARK --set-xmark 0x101/0xffffffff"),
        format!("-A PIC_KILLSWITCH -s {subnet} -o {br} -m mark --mark 0x101 -j ACCEPT"),
    ] {
        assert!(text.contains(&line), "{line}\n{}", show(&out));
    }
    drop(nets);
}
