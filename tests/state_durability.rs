//! The state file's promises under real faults (spec §4): a SIGKILL at any
//! instant leaves one whole generation, two writers never lose an update,
//! and an unreadable file is never replaced.
//!
//! The writers are this test binary run again as a child process (the
//! `child_*` tests do nothing unless `PIC_CHILD_DIR` is set).

use pic_store::state::{State, StateStore};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pic-durability-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs one `child_*` test of this binary with `PIC_CHILD_DIR=dir`.
fn child(test: &str, dir: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("PIC_CHILD_DIR", dir)
        .stdin(Stdio::null());
    c
}

/// The state of generation `g`: large enough that a kill often lands in
/// the middle of writing it, and every byte derived from `g`.
fn generation(g: u64) -> State {
    let mut s = State::default();
    s.extra.insert("generation".into(), json!(g));
    s.extra
        .insert("payload".into(), json!(format!("{g:08}").repeat(8 * 1024)));
    s
}

fn generation_of(s: &State) -> Option<u64> {
    s.extra.get("generation")?.as_u64()
}

#[test]
fn child_commit_loop() {
    let Some(dir) = std::env::var_os("PIC_CHILD_DIR") else {
        return;
    };
    let store = StateStore::new(Path::new(&dir));
    let lock = store.lock(WAIT).unwrap();
    let start = generation_of(&lock.load().unwrap()).unwrap_or(0);
    for g in start + 1.. {
        lock.commit(&generation(g)).unwrap();
        println!("committed {g}");
    }
}

#[test]
fn sigkill_at_random_moments_leaves_a_whole_generation() {
    let dir = temp_dir("kill");
    let store = StateStore::new(&dir);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut last_seen = 0;
    for round in 0..200 {
        let mut proc = child("child_commit_loop", &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until it commits at least once, then kill after a random
        // number of further commits' worth of time.
        let mut out = BufReader::new(proc.stdout.take().unwrap());
        let mut committed = Vec::new();
        let mut line = String::new();
        while committed.is_empty() {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!("round {round}: child exited before committing");
            }
            if let Some(n) = line.trim().strip_prefix("committed ") {
                committed.push(n.parse::<u64>().unwrap());
            }
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 4000));
        proc.kill().unwrap();
        proc.wait().unwrap();
        // Drain what it reported before dying.
        for l in out.lines().map_while(Result::ok) {
            if let Some(n) = l.trim().strip_prefix("committed ") {
                committed.push(n.parse().unwrap());
            }
        }
        let last_committed = *committed.iter().max().unwrap();

        let state = store
            .read()
            .unwrap_or_else(|e| panic!("round {round}: state unreadable after kill: {e}"));
        let g = generation_of(&state).expect("generation field");
        assert_eq!(state, generation(g), "round {round}: a mixed generation");
        // The file holds the last reported commit, or the one in flight.
        assert!(
            g == last_committed || g == last_committed + 1,
            "round {round}: found generation {g}, last committed {last_committed}"
        );
        assert!(g >= last_seen, "round {round}: went back in time");
        last_seen = g;

        let temps: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(
            temps.len() <= 1,
            "round {round}: temp files left: {temps:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn child_increment_100() {
    let Some(dir) = std::env::var_os("PIC_CHILD_DIR") else {
        return;
    };
    let store = StateStore::new(Path::new(&dir));
    for _ in 0..100 {
        let lock = store.lock(WAIT).unwrap();
        lock.update(|s| {
            let n = s.extra.get("counter").and_then(|v| v.as_u64()).unwrap_or(0);
            s.extra.insert("counter".into(), json!(n + 1));
            Ok(())
        })
        .unwrap();
    }
}

#[test]
fn two_processes_lose_no_update() {
    let dir = temp_dir("counter");
    let a = child("child_increment_100", &dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let b = child("child_increment_100", &dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    for mut p in [a, b] {
        assert!(p.wait().unwrap().success());
    }
    let state = StateStore::new(&dir).read().unwrap();
    assert_eq!(state.extra.get("counter"), Some(&json!(200)));
    std::fs::remove_dir_all(&dir).unwrap();
}
