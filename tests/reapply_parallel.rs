//! `reapply` brings independent services up at the same time, level by
//! level of `requires`, at most `PIC_PARALLEL` at once (spec §11 v2): a
//! `requires` chain still comes up in its order, the independent ones
//! overlap in time (seen in the containers' start times), and the report
//! keeps one fixed order whatever order the projects finished in.
//!
//! Docker is the real one, run through a wrapper that waits before each
//! `compose up` (longer for one project) — the slow start of a Raspberry Pi,
//! which makes one-after-another and side-by-side starts tell apart on any
//! machine, and makes the projects finish in another order than the report's.

mod common;

use common::*;
use serde_json::json;

const TEMPLATE: &str = r#"services:
  web:
    image: ${IMAGE}
    container_name: ${CONTAINER_NAME}
    command: ["httpd", "-f", "-p", "8080"]
    networks: [${NETWORK}]
"#;

/// Seconds every `compose up` waits before it starts; the first
/// independent one also waits `EXTRA` after, so it finishes last of its
/// level.
const DELAY: f64 = 2.0;
const EXTRA: f64 = 2.0;

/// Seconds since the epoch of a docker `StartedAt` (RFC 3339, UTC).
fn started_at(container: &str) -> f64 {
    let out = docker(&["inspect", "-f", "{{.State.StartedAt}}", container]);
    let text = ok(&out);
    let t = text.trim();
    let (date, time) = t.split_once('T').unwrap_or_else(|| panic!("{t}"));
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let time = time.trim_end_matches('Z');
    let hms: Vec<f64> = time.split(':').map(|p| p.parse().unwrap()).collect();
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m, day) = (if d[1] <= 2 { d[0] - 1 } else { d[0] }, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    days as f64 * 86400.0 + hms[0] * 3600.0 + hms[1] * 60.0 + hms[2]
}

/// The `service ID` items of a reapply's output, in the order printed.
fn reported(stdout: &str, ids: &[String]) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| {
            ids.iter()
                .find(|id| l.contains(&format!("service {id}:")))
                .cloned()
        })
        .collect()
}

/// Removes the test's compose projects however the test ends.
struct Projects(Vec<String>);

impl Drop for Projects {
    fn drop(&mut self) {
        for p in &self.0 {
            remove_compose_project(p);
        }
    }
}

fn spread(times: &[f64]) -> f64 {
    let max = times.iter().cloned().fold(f64::MIN, f64::max);
    let min = times.iter().cloned().fold(f64::MAX, f64::min);
    max - min
}

#[test]
fn independent_services_come_up_together_and_a_chain_in_order() {
    if !require_rig() {
        return;
    }
    let digest = image("web", "1", &["httpd", "-f", "-p", "8080"]);
    let img = image_ref("web", "1", &digest);
    let dir = TempDir::with_prefix("pic-parallel");
    let mut store = Store::new(&dir);
    let u = unique("pp");
    // Ids sort as: chain1 chain2 chain3 free1 free2 free3.
    let chain: Vec<String> = (1..=3).map(|i| format!("{u}-chain{i}")).collect();
    let free: Vec<String> = (1..=3).map(|i| format!("{u}-free{i}")).collect();
    let all: Vec<String> = chain.iter().chain(free.iter()).cloned().collect();
    for id in &all {
        remove_compose_project(&format!("pic-{id}"));
        let requires: Vec<&String> = match chain.iter().position(|c| c == id) {
            Some(i) if i > 0 => vec![&chain[i - 1]],
            _ => vec![],
        };
        store.add(
            id,
            json!({
                "id": id, "name": id, "version": "1", "author": "tests", "image": img,
                "container_name": format!("c-{id}"), "requires": requires,
            }),
            TEMPLATE,
        );
    }
    let _cleanup = Projects(all.iter().map(|id| format!("pic-{id}")).collect());
    let ns = Netns::new();
    let env = [("PIC_SERVICE_POOL", "172.20.0.100-172.20.0.119")];
    for id in &all {
        ok(&pic_in(&ns, &dir, &env, &["install", id]));
    }

    let slow_docker = dir.join("slow-docker");
    write_script(
        &slow_docker,
        &format!(
            "#!/bin/sh\ncase \" $* \" in *\" up \"*) sleep {DELAY} ;; esac\n{} \"$@\"\nrc=$?\ncase \" $* \" in *\" pic-{} \"*\" up \"*) sleep {EXTRA} ;; esac\nexit $rc\n",
            which("docker"),
            free[0]
        ),
    );
    let boot = |parallel: &str| -> (Vec<f64>, Vec<f64>, Vec<String>) {
        for id in &all {
            ok(&docker(&["kill", &format!("c-{id}")]));
        }
        let out = pic_in(
            &ns,
            &dir,
            &[
                env[0],
                ("PIC_DOCKER", slow_docker.to_str().unwrap()),
                ("PIC_PARALLEL", parallel),
            ],
            &["reapply"],
        );
        let stdout = ok(&out);
        let times = |ids: &[String]| -> Vec<f64> {
            ids.iter()
                .map(|id| started_at(&format!("c-{id}")))
                .collect()
        };
        (times(&chain), times(&free), reported(&stdout, &all))
    };
    // The report's order: level by level, ids in order within a level.
    let expected: Vec<String> = [
        &chain[0], &free[0], &free[1], &free[2], &chain[1], &chain[2],
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    // One at a time: the free ones at least one wait apart each.
    let (chain_t, free_t, order) = boot("1");
    eprintln!("PIC_PARALLEL=1: chain {chain_t:?}, free {free_t:?}");
    assert_eq!(order, expected, "report order at PIC_PARALLEL=1");
    assert!(
        spread(&free_t) >= 2.0 * DELAY,
        "one at a time, yet the free services started within {:.2} s: {free_t:?}",
        spread(&free_t)
    );
    assert!(
        chain_t[0] < chain_t[1] && chain_t[1] < chain_t[2],
        "{chain_t:?}"
    );

    // The default (4): chain1 and the free ones form the first level and
    // start together; chain2 and chain3 after it, in order.
    let (chain_t, free_t, order) = boot("4");
    eprintln!("PIC_PARALLEL=4: chain {chain_t:?}, free {free_t:?}");
    let first_level: Vec<f64> = free_t.iter().chain([&chain_t[0]]).cloned().collect();
    assert!(
        spread(&first_level) < 2.0 * DELAY,
        "the first level's four services should start together, but spread over {:.2} s: {first_level:?}",
        spread(&first_level)
    );
    let level_end = first_level.iter().cloned().fold(f64::MIN, f64::max);
    assert!(
        chain_t[1] > level_end && chain_t[2] > chain_t[1],
        "the chain starts in its order, after its first level: chain {chain_t:?}, first level {first_level:?}"
    );
    assert!(
        chain_t[1] - free_t[0] >= EXTRA,
        "chain2 waited for the slowest project of the level before it: chain {chain_t:?}, free {free_t:?}"
    );
    assert_eq!(order, expected, "report order at PIC_PARALLEL=4");

    for id in all.iter().rev() {
        ok(&pic_in(&ns, &dir, &env, &["remove", id]));
    }
}
