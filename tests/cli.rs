//! The command line as a publisher and an owner meet it: `validate` of
//! files, service folders and whole stores; refusal of an unreadable state
//! file; `list` from a cold process when the store is down; usage errors.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

const IMAGE: &str = "127.0.0.1:5000/roof/web:1@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// Every corpus template becomes a service folder of one store; one run of
/// `pic-store validate STORE` must refuse exactly the `bad-*` ones.
#[test]
fn validate_classifies_the_whole_corpus_in_one_run() {
    if !require_rig() {
        return;
    }
    let dir = TempDir::with_prefix("pic-validate");
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compose_corpus");
    let mut names: Vec<String> = fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yml"))
        .collect();
    names.sort();
    assert!(names.len() >= 40);
    let mut store = Store::new(&dir);
    let mut by_id = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let id = format!("t{i}");
        let template = fs::read_to_string(corpus.join(name)).unwrap();
        store.add(&id, corpus_manifest(&id, &template), &template);
        by_id.insert(id, name.clone());
    }
    let out = pic(&dir, &[], &["validate", store.root().to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "bad templates are errors\n{}",
        show(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (id, name) in &by_id {
        let marker = format!("/services/{id}/");
        let errors: Vec<&str> = stdout
            .lines()
            .filter(|l| l.contains(&marker) && l.contains(": error: "))
            .collect();
        if name.starts_with("bad-") {
            assert!(!errors.is_empty(), "{name} was accepted\n{stdout}");
        } else {
            assert!(errors.is_empty(), "{name} was refused: {errors:?}");
        }
    }
    // Nothing was ever started.
    assert!(compose_project_containers("pic-t0").is_empty());
}

#[test]
fn validate_reports_every_problem_as_file_level_message() {
    let dir = TempDir::with_prefix("pic-validate-files");
    let missing = dir.join("missing.json");
    let garbage = dir.join("garbage.json");
    fs::write(&garbage, "{ not json").unwrap();
    let faulty = dir.join("faulty.json");
    fs::write(
        &faulty,
        json!({
            "id": "Bad Id", "name": "x", "version": "1", "author": "a",
            "image": "evil.example/x:1", "container_name": "cell-api",
            "volumes": [{"mount": "/etc/../etc/shadow", "target": "/x"}],
            "cap_add": ["SYS_ADMIN"], "surprise": 1
        })
        .to_string(),
    )
    .unwrap();
    let good = dir.join("good.json");
    fs::write(
        &good,
        json!({"id": "ok", "name": "Ok", "version": "1", "author": "a", "image": IMAGE, "container_name": "ok"})
            .to_string(),
    )
    .unwrap();
    let out = pic(
        &dir,
        &[],
        &[
            "validate",
            missing.to_str().unwrap(),
            garbage.to_str().unwrap(),
            faulty.to_str().unwrap(),
            good.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines_for = |f: &Path, level: &str| {
        stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{}: {level}: ", f.display())))
            .count()
    };
    assert_eq!(lines_for(&missing, "error"), 1, "{stdout}");
    assert_eq!(lines_for(&garbage, "error"), 1, "{stdout}");
    assert_eq!(lines_for(&faulty, "error"), 5, "{stdout}");
    assert_eq!(
        lines_for(&faulty, "warning"),
        2,
        "no digest, unknown field\n{stdout}"
    );
    assert_eq!(lines_for(&good, "error"), 0, "{stdout}");
    let only_good = pic(&dir, &[], &["validate", good.to_str().unwrap()]);
    assert_eq!(only_good.status.code(), Some(0), "{}", show(&only_good));
}

#[test]
fn an_unreadable_state_file_is_refused_and_left_as_it_was() {
    let dir = TempDir::with_prefix("pic-corrupt");
    let state = dir.state_dir();
    fs::create_dir_all(&state).unwrap();
    let bytes = b"{\"schema\": 1, \"services\": {tr".to_vec();
    fs::write(state.join("state.json"), &bytes).unwrap();
    for args in [
        vec!["install", "radicale"],
        vec!["remove", "radicale"],
        vec!["update", "radicale"],
        vec!["connection", "add", "proxy", "home"],
        vec!["connection", "remove", "home"],
        vec!["peer", "route", "10.8.0.2", "home"],
        vec!["egress", "set", "radicale", "home"],
        vec!["list"],
        vec!["status"],
        vec!["reapply", "--dry-run"],
    ] {
        let out = pic(&dir, &[], &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}\n{}", show(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&state.join("state.json").display().to_string()),
            "{args:?}: {stderr}"
        );
        assert_eq!(
            fs::read(state.join("state.json")).unwrap(),
            bytes,
            "{args:?} changed the file"
        );
    }
}

#[test]
fn reapply_restores_an_unreadable_state_from_its_backup() {
    let dir = TempDir::with_prefix("pic-recover");
    let state = dir.state_dir();
    fs::create_dir_all(&state).unwrap();
    let good = json!({"schema": 1, "settings": {"image_verification_mode": "enforce"}});
    fs::write(state.join("state.json.bak"), good.to_string()).unwrap();
    fs::write(state.join("state.json"), "garbage").unwrap();
    // No network programs are needed to prove the recovery: an empty state
    // has nothing to apply but the chains, which run in a namespace.
    let ns = Netns::new();
    let out = pic_in(&ns, &dir, &[("PIC_DOCKER", "/bin/true")], &["reapply"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("restored"), "{}", show(&out));
    let now: Value = serde_json::from_slice(&fs::read(state.join("state.json")).unwrap()).unwrap();
    assert_eq!(now["settings"]["image_verification_mode"], "enforce");
    let aside: Vec<_> = fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(fs::read(aside[0].path()).unwrap(), b"garbage");
}

/// A cold process (a reboot) with the store down shows the cached index
/// marked stale.
#[test]
fn list_serves_the_cached_index_as_stale_when_the_store_is_gone() {
    let dir = TempDir::with_prefix("pic-list");
    let mut store = Store::new(&dir);
    store.add(
        "notes",
        json!({"id": "notes", "name": "Notes", "version": "2.1", "author": "a", "image": IMAGE, "container_name": "notes"}),
        "services: {}\n",
    );
    let out = ok(&pic(&dir, &[], &["list", "--json"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["stale"], json!(false));
    assert_eq!(v["available"][0]["id"], json!("notes"));
    fs::remove_dir_all(store.root()).unwrap();
    let out = ok(&pic(&dir, &[], &["list", "--json"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["stale"], json!(true));
    assert_eq!(v["available"][0]["version"], json!("2.1"));
    let text = pic(&dir, &[], &["list"]);
    assert!(
        String::from_utf8_lossy(&text.stderr).contains("unreachable"),
        "{}",
        show(&text)
    );
    // With no cache at all the catalogue is empty and says why (spec
    // §13): what is installed is still listed, and it is not a failure.
    let fresh = TempDir::with_prefix("pic-list-cold");
    let out = pic(&fresh, &[], &["list"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be read"),
        "{}",
        show(&out)
    );
    let v: Value = serde_json::from_str(&ok(&pic(&fresh, &[], &["list", "--json"]))).unwrap();
    assert_eq!(v["available"], json!([]));
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("store")),
        "{v}"
    );
}

#[test]
fn usage_errors_exit_2_and_refusals_exit_1() {
    let dir = TempDir::with_prefix("pic-usage");
    for (args, code) in [
        (vec![], 2),
        (vec!["frobnicate"], 2),
        (vec!["install"], 2),
        (vec!["install", "a", "b"], 2),
        // `--force` is a flag of remove now (spec §8); an unknown one is not.
        (vec!["remove", "x", "--forcefully"], 2),
        (vec!["update", "--all", "x"], 2),
        (vec!["peer", "route", "10.0.0.1"], 2),
        (vec!["install", "../../etc"], 1),
        (vec!["peer", "unroute", "10.0.0.300"], 1),
        (vec!["peer", "route", "10.8.0.2", "Bad_Name"], 1),
        (vec!["--help"], 0),
        (vec!["--version"], 0),
    ] {
        let out = pic(&dir, &[], &args);
        assert_eq!(out.status.code(), Some(code), "{args:?}\n{}", show(&out));
    }
    let out = pic(&dir, &[("PIC_LISTEN", "nonsense")], &["config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PIC_LISTEN"));
}

#[test]
fn token_is_made_once_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::with_prefix("pic-token");
    let a = ok(&pic(&dir, &[], &["token"]));
    let b = ok(&pic(&dir, &[], &["token"]));
    assert_eq!(a, b);
    assert_eq!(a.trim().len(), 64);
    let mode = fs::metadata(dir.state_dir().join("api-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

const DIGEST: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// A corpus case of `tests/compose_corpus/apps/`: `# expect: ok` or one or
/// more `# expect: refused: TEXT` lines, an optional `# manifest: {JSON}`
/// patch over the default manifest (`<R>` the registry, `<D>` a digest,
/// `<C>` the container name), then the template.
struct AppCase {
    name: String,
    refusals: Vec<String>,
    accepted: bool,
    manifest: Value,
    template: String,
}

fn app_case(name: &str, text: &str) -> AppCase {
    let id = name.trim_end_matches(".yml").to_string();
    let container = format!("{id}-app");
    let mut manifest = json!({
        "id": id, "name": "App", "version": "1.0", "author": "tests",
        "image": format!("{IMAGE_PREFIX}{id}:1.0@{DIGEST}"),
        "container_name": container,
    });
    let (mut refusals, mut accepted) = (Vec::new(), false);
    for line in text.lines().take_while(|l| l.starts_with("# ")) {
        if let Some(e) = line.strip_prefix("# expect: ") {
            match e.strip_prefix("refused: ") {
                Some(text) => refusals.push(text.to_string()),
                None => accepted = e == "ok",
            }
        } else if let Some(patch) = line.strip_prefix("# manifest: ") {
            let patch = patch
                .replace("<R>", IMAGE_PREFIX)
                .replace("<D>", DIGEST.trim_start_matches("sha256:"))
                .replace("<C>", &container);
            let patch: Value = serde_json::from_str(&patch)
                .unwrap_or_else(|e| panic!("{name}: bad manifest patch: {e}"));
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    manifest.as_object_mut().unwrap().remove(k);
                } else {
                    manifest[k] = v.clone();
                }
            }
        }
    }
    assert!(
        accepted == refusals.is_empty(),
        "{name}: needs exactly one of `# expect: ok` and `# expect: refused: ...`"
    );
    AppCase {
        name: name.to_string(),
        refusals,
        accepted,
        manifest,
        template: text.to_string(),
    }
}

/// Templates in the styles of real app stores (an app with its database or
/// cache, CasaOS `deploy` and `x-casaos`, Umbrel's proxy glue turned into
/// routes, Runtipi's `dns`, comments holding variables, ...), each a service
/// folder of one store, checked by one run of `pic-store validate`: every
/// harmless one passes, every dangerous one is refused for its reason.
#[test]
fn validate_judges_the_app_store_corpus_by_its_reasons() {
    if !require_rig() {
        return;
    }
    let dir = TempDir::with_prefix("pic-validate-apps");
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compose_corpus/apps");
    let mut names: Vec<String> = fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yml"))
        .collect();
    names.sort();
    let cases: Vec<AppCase> = names
        .iter()
        .map(|n| app_case(n, &fs::read_to_string(corpus.join(n)).unwrap()))
        .collect();
    let accepted = cases.iter().filter(|c| c.accepted).count();
    assert!(cases.len() >= 60, "the corpus has {} cases", cases.len());
    assert!(accepted >= 20 && cases.len() - accepted >= 20);
    let mut store = Store::new(&dir);
    for c in &cases {
        let id = c.manifest["id"].as_str().unwrap().to_string();
        store.add(&id, c.manifest.clone(), &c.template);
    }
    let out = pic(&dir, &[], &["validate", store.root().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut failures = Vec::new();
    for c in &cases {
        let marker = format!("/services/{}/", c.manifest["id"].as_str().unwrap());
        let errors: Vec<&str> = stdout
            .lines()
            .filter(|l| l.contains(&marker) && l.contains(": error: "))
            .collect();
        if c.accepted {
            if !errors.is_empty() {
                failures.push(format!("{}: should pass, got {errors:#?}", c.name));
            }
            continue;
        }
        for want in &c.refusals {
            if !errors.iter().any(|e| e.contains(want.as_str())) {
                failures.push(format!(
                    "{}: should be refused with {want:?}, got {errors:#?}",
                    c.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases misjudged:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Spec §7 item 6: a manifest error does not hide the template's errors;
/// one run lists both files' problems.
#[test]
fn validate_reports_manifest_and_template_errors_in_one_run() {
    if !require_rig() {
        return;
    }
    let dir = TempDir::with_prefix("pic-validate-both");
    let mut store = Store::new(&dir);
    let manifest = json!({
        "id": "both", "name": "Both", "version": "1", "author": "a",
        "image": "docker.io/library/nginx:1", "container_name": "both",
        "volumes": [{"mount": "/home/roof/.ssh", "target": "/keys"}],
    });
    let template = "services:\n  web:\n    image: ${IMAGE}\n    container_name: ${CONTAINER_NAME}\n    privileged: true\n    networks: [${NETWORK}]\nnetworks:\n  ${NETWORK}:\n    external: true\n";
    store.add("both", manifest, template);
    let folder = store.root().join("services/both");
    let out = pic(&dir, &[], &["validate", folder.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let manifest_file = format!("{}: error: ", folder.join("manifest.json").display());
    let template_file = format!("{}: error: ", folder.join("compose-template.yml").display());
    let has = |prefix: &str, text: &str| {
        stdout
            .lines()
            .any(|l| l.starts_with(prefix) && l.contains(text))
    };
    assert!(
        has(
            &manifest_file,
            "image: \"docker.io/library/nginx:1\" is neither from the store's registry"
        ),
        "{stdout}"
    );
    assert!(has(&manifest_file, "PIC_HOST_MOUNT_ROOTS"), "{stdout}");
    assert!(
        has(
            &template_file,
            "service \"web\": key \"privileged\" is only allowed as false (true)"
        ),
        "{stdout}"
    );
    // The manifest's own (refused) image is what the template was checked
    // against, so the template is not blamed for the manifest's error.
    assert!(!has(&template_file, "key \"image\""), "{stdout}");
}

/// `pic-store config | head -1`: a reader that goes away before the
/// output ends stops the program quietly with status 0, not with a panic
/// about a broken pipe. The pipe's reading end is closed before the
/// program starts, so every write fails.
#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    let dir = TempDir::with_prefix("pic-pipe");
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compose_corpus");
    let corpus = corpus.to_str().unwrap();
    for args in [
        &["config"][..],
        &["--help"],
        &["--version"],
        &["validate", corpus],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = pic_command(&dir, &[], args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}
