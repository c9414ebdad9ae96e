//! The transactions at their own layer, against the fake host: each step of
//! install, update, remove, connection create and delete is made to fail in
//! turn, and the calls and the state show that exactly the steps before it
//! were undone; a process killed between two steps (its `pending` and
//! partial work left behind) is settled by the next lock holder (spec §4).

use super::connection::{create_checked, ConnectionOutcome, CreateChecked};
use super::project::Volumes;
use super::service::{
    install_checked, update_checked, Checked, InstallOutcome, RemoveOutcome, UpdateOutcome,
};
use super::*;
use crate::error::Result;
use crate::host::FakeHost;
use crate::ids::ServiceId;
use crate::manifest::{self, Manifest, ValidManifest, VerificationMode};
use crate::state::{Connection, InstalledService, Pending, PendingOp, State, StateStore};
use serde_json::json;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);
const DOCKER: &str = "/fake/docker";
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A state folder of its own, and a configuration whose programs are all
/// fakes (nothing here could touch the host even by mistake).
struct Cell {
    dir: PathBuf,
    config: Config,
    store: StoreClient,
}

impl Cell {
    fn new(name: &str) -> Cell {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pic-ops-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display().to_string();
        let config = Config::from_lookup(|k| match k {
            "PIC_STATE_DIR" => Some(format!("{d}/state")),
            "PIC_CELL_DIR" => Some(format!("{d}/cell")),
            "PIC_STORE_INDEX_URL" => Some(format!("file://{d}/store/index.json")),
            "PIC_CADDYFILE" => Some(format!("{d}/services.caddy")),
            "PIC_CADDY_RELOAD" => Some(String::new()),
            "PIC_DOCKER" => Some(DOCKER.into()),
            "PIC_IPTABLES" => Some("/fake/iptables".into()),
            "PIC_IPTABLES_SAVE" => Some("/fake/iptables-save".into()),
            "PIC_IPTABLES_RESTORE" => Some("/fake/iptables-restore".into()),
            "PIC_IP" => Some("/fake/ip".into()),
            "PIC_COSIGN" => Some("/fake/cosign".into()),
            "PIC_MIN_FREE_MB" => Some("0".into()),
            "PIC_HEALTH_TIMEOUT" => Some("0".into()),
            _ => None,
        })
        .unwrap();
        let store = StoreClient::from_config(&config);
        Cell { dir, config, store }
    }

    fn run<T>(&self, host: &FakeHost, f: impl FnOnce(&mut Ctx) -> T) -> T {
        let mut progress = |_: &str| {};
        let mut ctx = Ctx {
            config: &self.config,
            host,
            store: &self.store,
            progress: &mut progress,
        };
        f(&mut ctx)
    }

    fn state(&self) -> State {
        StateStore::new(&self.config.state_dir).read().unwrap()
    }

    /// Writes `state` as the committed state.
    fn commit(&self, state: &State) {
        let lock = StateStore::new(&self.config.state_dir).lock(WAIT).unwrap();
        lock.commit(state).unwrap();
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `docker compose` with the project's fixed flags, as the fake sees it.
fn compose(p: &crate::compose::Project) -> String {
    format!(
        "{DOCKER} compose -p {} -f {} --env-file /dev/null",
        p.name,
        p.file.display()
    )
}

fn up(p: &crate::compose::Project) -> String {
    format!("{} up -d --remove-orphans --pull missing", compose(p))
}

fn down(p: &crate::compose::Project, volumes: Volumes) -> String {
    let also = if volumes == Volumes::Remove {
        " --volumes"
    } else {
        ""
    };
    format!("{} --profile * down --remove-orphans{also}", compose(p))
}

/// The health wait's look at a project (spec §13).
fn ps(project: &str) -> String {
    format!(
        "{DOCKER} ps -a --filter label=com.docker.compose.project={project} --format \
         {{{{.Label \"com.docker.compose.project\"}}}}\t\
         {{{{.Label \"com.docker.compose.service\"}}}}\t{{{{.Names}}}}\t{{{{.State}}}}\t{{{{.Status}}}}"
    )
}

/// The health wait finding the project's one container healthy, or
/// unhealthy (then its last log lines are read for the error).
fn health(host: &FakeHost, project: &str, healthy: bool) {
    let status = if healthy { "healthy" } else { "unhealthy" };
    host.push(
        &ps(project),
        0,
        &format!("{project}\tapp\t{project}-app\trunning\tUp 1 second ({status})\n"),
        "",
    );
    if !healthy {
        host.push(
            &format!("{DOCKER} logs --tail 20 {project}-app"),
            0,
            "the last words\n",
            "",
        );
    }
}

/// The free-space check: `docker info` names the docker root (its failure
/// stands for any failure of the check).
fn disk(host: &FakeHost, fails: bool) {
    let line = format!("{DOCKER} info --format {{{{.DockerRootDir}}}}");
    if fails {
        fail(host, &line);
    } else {
        host.push(&line, 0, "/\n", "");
    }
}

/// A project without its compose file goes by its label.
fn removed_by_label(host: &FakeHost, project: &str) {
    let label = format!("label=com.docker.compose.project={project}");
    ok(host, &format!("{DOCKER} ps -aq --filter {label}"));
    ok(host, &format!("{DOCKER} network ls -q --filter {label}"));
}

/// Takes the lock as the next process would, settling what is pending;
/// then checks every expected call was made.
fn next_lock_holder(cell: &Cell, host: FakeHost) {
    cell.run(&host, |ctx| Session::open(ctx, WAIT).map(drop))
        .unwrap();
    drop(host);
}

fn ok(host: &FakeHost, line: &str) {
    host.push(line, 0, "", "");
}

fn fail(host: &FakeHost, line: &str) {
    host.push(line, 1, "", "injected failure");
}

/// The calls `net::apply_all` makes on a bare host: read the firewall,
/// restore its three tables, read the policy routing and, when there are
/// connections, apply their rules and routes (no Caddy reload here).
fn network(host: &FakeHost, connections: bool) {
    ok(host, "/fake/iptables-save");
    for _ in 0..3 {
        ok(host, "/fake/iptables-restore -w 5 --noflush");
    }
    ok(host, "/fake/ip -4 -N -batch -");
    if connections {
        ok(host, "/fake/ip -force -batch -");
    }
}

/// The same, with the firewall read failing: the other parts still run.
fn network_failing(host: &FakeHost, connections: bool) {
    fail(host, "/fake/iptables-save");
    ok(host, "/fake/ip -4 -N -batch -");
    if connections {
        ok(host, "/fake/ip -force -batch -");
    }
}

fn image() -> String {
    format!("git.pic.ngo/roof/web:1@{DIGEST}")
}

fn web_manifest() -> Manifest {
    let mut m = crate::net::tests::manifest("web");
    m.image = image();
    m
}

fn valid(cell: &Cell, m: &Manifest) -> ValidManifest {
    let rules = manifest::Rules {
        image_registry: &cell.config.image_registry,
        cell_dir: &cell.config.cell_dir,
        state_dir: &cell.config.state_dir,
        mount_roots: &cell.config.host_mount_roots,
        verification: VerificationMode::Warn,
        taken: Vec::new(),
    };
    let (valid, report) = manifest::validate(&serde_json::to_value(m).unwrap(), &rules);
    valid.unwrap_or_else(|| panic!("{:?}", report.errors))
}

const WEB_IP: Ipv4Addr = Ipv4Addr::new(172, 20, 0, 20);

fn installed(m: Manifest) -> InstalledService {
    InstalledService {
        manifest: m,
        ip: Some(WEB_IP),
        installed_at: 1,
        image_digest: Some(DIGEST.into()),
        template: None,
        stopped: false,
        settings: Default::default(),
        secrets: Default::default(),
    }
}

// --- install ------------------------------------------------------------------

/// The steps of installing `web`, in order: each pushes its calls; the
/// one made to fail pushes its failing calls instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InstallStep {
    Network,
    Disk,
    Pull,
    ImageCheck,
    Up,
    Health,
    Rules,
}

const INSTALL_STEPS: [InstallStep; 7] = [
    InstallStep::Network,
    InstallStep::Disk,
    InstallStep::Pull,
    InstallStep::ImageCheck,
    InstallStep::Up,
    InstallStep::Health,
    InstallStep::Rules,
];

fn install_calls(host: &FakeHost, p: &crate::compose::Project, step: InstallStep, fails: bool) {
    let inspect = format!("{DOCKER} network inspect --format {{{{.Name}}}} cell-network");
    match (step, fails) {
        (InstallStep::Network, false) => ok(host, &inspect),
        (InstallStep::Network, true) => {
            fail(host, &inspect);
            fail(
                host,
                &format!(
                    "{DOCKER} network create --driver bridge --subnet 172.20.0.0/24 cell-network"
                ),
            );
            for _ in 0..20 {
                fail(host, &inspect);
            }
        }
        (InstallStep::Disk, fails) => disk(host, fails),
        (InstallStep::Health, fails) => health(host, &p.name, !fails),
        (InstallStep::Pull, false) => ok(host, &format!("{} --profile * pull", compose(p))),
        (InstallStep::Pull, true) => fail(host, &format!("{} --profile * pull", compose(p))),
        (InstallStep::ImageCheck, fails) => {
            let digest = if fails { "sha256:0000" } else { DIGEST };
            host.push(
                &format!(
                    "{DOCKER} image inspect --format {{{{json .RepoDigests}}}} {}",
                    image()
                ),
                0,
                &format!("[\"git.pic.ngo/roof/web@{digest}\"]"),
                "",
            );
        }
        (InstallStep::Up, false) => ok(host, &up(p)),
        (InstallStep::Up, true) => fail(host, &up(p)),
        (InstallStep::Rules, false) => network(host, false),
        (InstallStep::Rules, true) => network_failing(host, false),
    }
}

fn install_web(cell: &Cell, host: &FakeHost) -> Result<InstallOutcome> {
    let m = valid(cell, &web_manifest());
    cell.run(host, |ctx| {
        let mut session = Session::open(ctx, WAIT)?;
        let checked = Checked {
            m,
            template: String::new(),
            ip: Some(WEB_IP),
            doc: json!({"name": "pic-web", "services": {}}),
            warnings: Vec::new(),
            values: Default::default(),
        };
        install_checked(ctx, &mut session, checked)
    })
}

#[test]
fn install_undoes_exactly_the_steps_before_the_failing_one() {
    for (k, failing) in INSTALL_STEPS.iter().enumerate() {
        let cell = Cell::new("install");
        let p = project::service(&cell.config, "web");
        let data = project::data_dir(&cell.config, "web");
        let host = FakeHost::new();
        for step in &INSTALL_STEPS[..k] {
            install_calls(&host, &p, *step, false);
        }
        install_calls(&host, &p, *failing, true);
        // The undo, in reverse: only of what was done.
        if k > InstallStep::Health as usize {
            network(&host, false);
        }
        if k >= InstallStep::Up as usize {
            ok(&host, &down(&p, Volumes::Remove));
        }
        let err = install_web(&cell, &host).unwrap_err();
        drop(host); // every expected call was made
        let state = cell.state();
        assert!(state.services.is_empty(), "{failing:?}: {err}");
        if *failing == InstallStep::Health {
            assert!(err.to_string().contains("the last words"), "{err}");
        }
        assert_eq!(state.pending, None, "{failing:?}");
        assert!(!p.file.exists(), "{failing:?}: compose file left");
        assert!(!data.exists(), "{failing:?}: data folder left");
    }
}

#[test]
fn install_commits_after_every_step() {
    let cell = Cell::new("install-ok");
    let p = project::service(&cell.config, "web");
    let host = FakeHost::new();
    for step in INSTALL_STEPS {
        install_calls(&host, &p, step, false);
    }
    let out = install_web(&cell, &host).unwrap();
    drop(host);
    assert_eq!(out.image_digest.as_deref(), Some(DIGEST));
    let state = cell.state();
    assert_eq!(state.services["web"].ip, Some(WEB_IP));
    assert_eq!(state.pending, None);
    assert!(p.file.exists());
    assert!(project::data_dir(&cell.config, "web").exists());
}

/// A process killed after `pending` was written (or later) leaves its
/// partial work; the next lock holder rolls the install back.
#[test]
fn an_install_killed_between_steps_is_rolled_back_by_the_next_lock_holder() {
    for files_made in [false, true] {
        let cell = Cell::new("install-kill");
        let p = project::service(&cell.config, "web");
        let data = project::data_dir(&cell.config, "web");
        let st = State {
            pending: Some(Pending::now(
                PendingOp::Install {
                    made_data_dir: true,
                },
                "web",
            )),
            ..State::default()
        };
        cell.commit(&st);
        let host = FakeHost::new();
        if files_made {
            std::fs::create_dir_all(&data).unwrap();
            crate::compose::write_checked(&cell.config, &p.name, &json!({})).unwrap();
            ok(&host, &down(&p, Volumes::Remove));
        } else {
            removed_by_label(&host, "pic-web");
        }
        network(&host, false);
        next_lock_holder(&cell, host);
        let state = cell.state();
        assert_eq!(state.pending, None);
        assert!(state.services.is_empty());
        assert!(
            !p.file.exists() && !data.exists(),
            "files_made {files_made}"
        );
    }
}

// --- remove -------------------------------------------------------------------

/// `web` installed, with its compose file and data folder.
fn cell_with_web(name: &str) -> Cell {
    let cell = Cell::new(name);
    let mut st = State::default();
    st.services.insert("web".into(), installed(web_manifest()));
    cell.commit(&st);
    let p = project::service(&cell.config, "web");
    crate::compose::write_checked(&cell.config, &p.name, &json!({})).unwrap();
    std::fs::create_dir_all(project::data_dir(&cell.config, "web")).unwrap();
    cell
}

fn remove_web(cell: &Cell, host: &FakeHost, purge: Purge) -> Result<RemoveOutcome> {
    let id = ServiceId::parse("web").unwrap();
    cell.run(host, |ctx| remove(ctx, &id, purge, WAIT))
}

/// A remove is not undone: a failed one keeps the record (the service is
/// still installed, and the next reapply brings back what was stopped).
#[test]
fn a_failed_remove_keeps_the_record_and_stops_at_the_failing_step() {
    // Compose down fails: nothing else happens.
    let cell = cell_with_web("remove-down");
    let p = project::service(&cell.config, "web");
    let host = FakeHost::new();
    fail(&host, &down(&p, Volumes::Keep));
    remove_web(&cell, &host, Purge::KeepData).unwrap_err();
    drop(host);
    let state = cell.state();
    assert!(state.services.contains_key("web") && state.pending.is_none());
    assert!(p.file.exists());

    // The network step fails: the record stays, the data is kept.
    let cell = cell_with_web("remove-net");
    let p = project::service(&cell.config, "web");
    let host = FakeHost::new();
    ok(&host, &down(&p, Volumes::Keep));
    network_failing(&host, false);
    remove_web(&cell, &host, Purge::KeepData).unwrap_err();
    drop(host);
    let state = cell.state();
    assert!(state.services.contains_key("web") && state.pending.is_none());
    assert!(project::data_dir(&cell.config, "web").exists());
}

/// A forced remove whose compose down fails removes by label what it
/// can, drops the record and lists what it could not remove.
#[test]
fn a_forced_remove_goes_by_label_when_down_fails() {
    let cell = cell_with_web("remove-force");
    let p = project::service(&cell.config, "web");
    let host = FakeHost::new();
    let label = "label=com.docker.compose.project=pic-web";
    fail(&host, &down(&p, Volumes::Keep));
    host.push(
        &format!("{DOCKER} ps -aq --filter {label}"),
        0,
        "c1\nc2\n",
        "",
    );
    ok(&host, &format!("{DOCKER} rm -f -v c1"));
    fail(&host, &format!("{DOCKER} rm -f -v c2"));
    host.push(
        &format!("{DOCKER} network ls -q --filter {label}"),
        0,
        "n1\n",
        "",
    );
    ok(&host, &format!("{DOCKER} network rm n1"));
    network(&host, false);
    let id = ServiceId::parse("web").unwrap();
    let out = cell
        .run(&host, |ctx| {
            remove_forcing(ctx, &id, Purge::KeepData, true, WAIT)
        })
        .unwrap();
    drop(host);
    assert_eq!(out.not_removed.len(), 1, "{:?}", out.not_removed);
    assert!(out.not_removed[0].starts_with("container c2"));
    let state = cell.state();
    assert!(state.services.is_empty() && state.pending.is_none());
    assert!(!p.file.exists());
}

#[test]
fn remove_with_purge_deletes_the_data_and_the_record() {
    let cell = cell_with_web("remove-ok");
    let p = project::service(&cell.config, "web");
    let host = FakeHost::new();
    ok(&host, &down(&p, Volumes::Remove));
    network(&host, false);
    let out = remove_web(&cell, &host, Purge::DeleteData).unwrap();
    drop(host);
    assert!(out.purged);
    let state = cell.state();
    assert!(state.services.is_empty() && state.pending.is_none());
    assert!(!p.file.exists() && !project::data_dir(&cell.config, "web").exists());
}

/// A remove killed before or after its compose down is finished by the
/// next lock holder.
#[test]
fn a_remove_killed_between_steps_is_finished_by_the_next_lock_holder() {
    for down_done in [false, true] {
        let cell = cell_with_web("remove-kill");
        let p = project::service(&cell.config, "web");
        let mut st = cell.state();
        st.pending = Some(Pending::now(PendingOp::Remove { purge: false }, "web"));
        cell.commit(&st);
        let host = FakeHost::new();
        if down_done {
            std::fs::remove_file(&p.file).unwrap();
            removed_by_label(&host, "pic-web");
        } else {
            ok(&host, &down(&p, Volumes::Keep));
        }
        network(&host, false); // the remove's own step
        network(&host, false); // and the settle's final apply
        next_lock_holder(&cell, host);
        let state = cell.state();
        assert!(state.services.is_empty() && state.pending.is_none());
        assert!(!p.file.exists());
        assert!(
            project::data_dir(&cell.config, "web").exists(),
            "no purge: the data stays"
        );
    }
}

// --- connection delete --------------------------------------------------------

fn proxy_manifest() -> Manifest {
    let mut m = crate::net::tests::manifest("proxy");
    m.kind = manifest::Kind::Connectivity;
    m.instanceable = true;
    m.connectivity = Some(manifest::Connectivity {
        mode: manifest::ConnectivityMode::Redirect,
    });
    m
}

fn c1() -> Connection {
    Connection {
        service: "proxy".into(),
        env: Default::default(),
        fwmark: 0x100,
        table: 100,
        port: 12000,
        ip: Ipv4Addr::new(172, 20, 0, 21),
        created_at: 1,
    }
}

/// `proxy` installed with connection `c1`, its compose file and data.
fn cell_with_c1(name: &str) -> Cell {
    let cell = Cell::new(name);
    let mut st = State::default();
    let mut svc = installed(proxy_manifest());
    svc.ip = None;
    svc.template = Some("services: {}\n".into());
    st.services.insert("proxy".into(), svc);
    st.connections.insert("c1".into(), c1());
    cell.commit(&st);
    let p = project::instance(&cell.config, "proxy", "c1");
    crate::compose::write_checked(&cell.config, &p.name, &json!({})).unwrap();
    std::fs::create_dir_all(crate::compose::data_dir(&cell.config, "proxy", Some("c1"))).unwrap();
    cell
}

#[test]
fn a_failed_connection_delete_keeps_the_connection() {
    for down_fails in [true, false] {
        let cell = cell_with_c1("conn-del");
        let p = project::instance(&cell.config, "proxy", "c1");
        let host = FakeHost::new();
        let down = down(&p, Volumes::Remove);
        if down_fails {
            fail(&host, &down);
        } else {
            ok(&host, &down);
            network_failing(&host, false);
        }
        let id = ServiceId::parse("c1").unwrap();
        cell.run(&host, |ctx| connection_remove(ctx, &id, WAIT))
            .unwrap_err();
        drop(host);
        let state = cell.state();
        assert!(state.connections.contains_key("c1") && state.pending.is_none());
        assert_eq!(p.file.exists(), down_fails);
    }
}

#[test]
fn a_connection_delete_killed_between_steps_is_finished_by_the_next_lock_holder() {
    let cell = cell_with_c1("conn-del-kill");
    let p = project::instance(&cell.config, "proxy", "c1");
    let mut st = cell.state();
    st.pending = Some(Pending::now(
        PendingOp::ConnectionDelete {
            service: Some("proxy".into()),
        },
        "c1",
    ));
    cell.commit(&st);
    let host = FakeHost::new();
    ok(&host, &down(&p, Volumes::Remove));
    network(&host, false); // the delete's own step
    network(&host, false); // and the settle's final apply
    next_lock_holder(&cell, host);
    let state = cell.state();
    assert!(state.connections.is_empty() && state.pending.is_none());
    assert!(!p.file.exists());
    assert!(!crate::compose::data_dir(&cell.config, "proxy", Some("c1")).exists());
}

// --- update -------------------------------------------------------------------

const DIGEST2: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpdateStep {
    Disk,
    Pull,
    ImageCheck,
    Up,
    Health,
    Rules,
}

const UPDATE_STEPS: [UpdateStep; 6] = [
    UpdateStep::Disk,
    UpdateStep::Pull,
    UpdateStep::ImageCheck,
    UpdateStep::Up,
    UpdateStep::Health,
    UpdateStep::Rules,
];

fn image2() -> String {
    format!("git.pic.ngo/roof/web:2@{DIGEST2}")
}

fn update_calls(host: &FakeHost, staged: &crate::compose::Project, step: UpdateStep, fails: bool) {
    let push = |line: String| {
        if fails {
            fail(host, &line)
        } else {
            ok(host, &line)
        }
    };
    match step {
        UpdateStep::Disk => disk(host, fails),
        UpdateStep::Health => health(host, &staged.name, !fails),
        UpdateStep::Pull => push(format!("{} --profile * pull", compose(staged))),
        UpdateStep::ImageCheck => {
            let digest = if fails { "sha256:0000" } else { DIGEST2 };
            host.push(
                &format!(
                    "{DOCKER} image inspect --format {{{{json .RepoDigests}}}} {}",
                    image2()
                ),
                0,
                &format!("[\"git.pic.ngo/roof/web@{digest}\"]"),
                "",
            );
        }
        UpdateStep::Up => push(up(staged)),
        UpdateStep::Rules if fails => network_failing(host, false),
        UpdateStep::Rules => network(host, false),
    }
}

/// `web` 1 installed, with a compose file that tells the old one apart.
fn cell_for_update(name: &str) -> Cell {
    let cell = cell_with_web(name);
    let p = project::service(&cell.config, "web");
    crate::compose::write_checked(&cell.config, &p.name, &json!({"old": true})).unwrap();
    cell
}

fn update_web(cell: &Cell, host: &FakeHost) -> Result<UpdateOutcome> {
    let mut m = web_manifest();
    m.version = "2".into();
    m.image = image2();
    let m = valid(cell, &m);
    cell.run(host, |ctx| {
        let mut session = Session::open(ctx, WAIT)?;
        let old = session.state.services["web"].clone();
        let checked = Checked {
            m,
            template: String::new(),
            ip: old.ip,
            doc: json!({"new": true}),
            warnings: Vec::new(),
            values: Default::default(),
        };
        update_checked(ctx, &mut session, &old, checked)
    })
}

fn compose_doc(p: &crate::compose::Project) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(&p.file).unwrap()).unwrap()
}

#[test]
fn update_restores_the_old_version_when_a_step_fails() {
    for (k, failing) in UPDATE_STEPS.iter().enumerate() {
        let cell = cell_for_update("update");
        let p = project::service(&cell.config, "web");
        let staged = project::staged(&cell.config, "web");
        let host = FakeHost::new();
        for step in &UPDATE_STEPS[..k] {
            update_calls(&host, &staged, *step, false);
        }
        update_calls(&host, &staged, *failing, true);
        if k > UpdateStep::Health as usize {
            network(&host, false);
        }
        if k >= UpdateStep::Up as usize {
            ok(
                &host,
                &format!("{} up -d --remove-orphans --pull missing", compose(&p)),
            );
        }
        let err = update_web(&cell, &host).unwrap_err();
        drop(host);
        let state = cell.state();
        assert_eq!(
            state.services["web"].manifest.version, "1",
            "{failing:?}: {err}"
        );
        assert_eq!(state.pending, None);
        assert!(!staged.file.exists(), "{failing:?}: staged file left");
        assert_eq!(compose_doc(&p), json!({"old": true}), "{failing:?}");
    }
}

#[test]
fn update_replaces_the_compose_file_after_every_step() {
    let cell = cell_for_update("update-ok");
    let p = project::service(&cell.config, "web");
    let staged = project::staged(&cell.config, "web");
    let host = FakeHost::new();
    for step in UPDATE_STEPS {
        update_calls(&host, &staged, step, false);
    }
    let out = update_web(&cell, &host).unwrap();
    drop(host);
    assert!(out.updated && out.to_version == "2");
    assert_eq!(cell.state().services["web"].manifest.version, "2");
    assert_eq!(compose_doc(&p), json!({"new": true}));
    assert!(!staged.file.exists());
}

/// Killed after the new file took the old one's place (the latest point
/// before the commit): the next lock holder puts the old file back and
/// brings the old version up.
#[test]
fn an_update_killed_between_steps_is_rolled_back_by_the_next_lock_holder() {
    let cell = cell_for_update("update-kill");
    let p = project::service(&cell.config, "web");
    let staged = project::staged(&cell.config, "web");
    let mut st = cell.state();
    st.pending = Some(Pending::now(
        PendingOp::Update {
            old_doc: Some(json!({"old": true})),
        },
        "web",
    ));
    cell.commit(&st);
    crate::compose::write_checked(&cell.config, &p.name, &json!({"new": true})).unwrap();
    std::fs::write(&staged.file, b"{}").unwrap();
    let host = FakeHost::new();
    ok(
        &host,
        &format!("{} up -d --remove-orphans --pull missing", compose(&p)),
    );
    network(&host, false);
    next_lock_holder(&cell, host);
    let state = cell.state();
    assert_eq!(state.services["web"].manifest.version, "1");
    assert_eq!(state.pending, None);
    assert_eq!(compose_doc(&p), json!({"old": true}));
    assert!(!staged.file.exists());
}

// --- connection create --------------------------------------------------------

/// `proxy` installed (instanceable), no connection yet.
fn cell_with_proxy(name: &str) -> Cell {
    let cell = cell_with_c1(name);
    let mut st = cell.state();
    st.connections.clear();
    cell.commit(&st);
    let p = project::instance(&cell.config, "proxy", "c1");
    std::fs::remove_file(&p.file).unwrap();
    std::fs::remove_dir_all(crate::compose::data_dir(&cell.config, "proxy", Some("c1"))).unwrap();
    cell
}

fn create_c1(cell: &Cell, host: &FakeHost) -> Result<ConnectionOutcome> {
    cell.run(host, |ctx| {
        let mut session = Session::open(ctx, WAIT)?;
        let checked = CreateChecked {
            name: ServiceId::parse("c1").unwrap(),
            conn: c1(),
            doc: json!({}),
            data: crate::compose::data_dir(&cell.config, "proxy", Some("c1")),
            container: "proxy-c1".into(),
        };
        create_checked(ctx, &mut session, checked)
    })
}

#[test]
fn connection_create_undoes_exactly_the_steps_before_the_failing_one() {
    for failing in ["up", "health", "rules"] {
        let cell = cell_with_proxy("conn-new");
        let p = project::instance(&cell.config, "proxy", "c1");
        let data = crate::compose::data_dir(&cell.config, "proxy", Some("c1"));
        let host = FakeHost::new();
        let up = format!("{} up -d --remove-orphans --pull missing", compose(&p));
        match failing {
            "up" => fail(&host, &up),
            "health" => {
                ok(&host, &up);
                health(&host, &p.name, false);
            }
            _ => {
                ok(&host, &up);
                health(&host, &p.name, true);
                network_failing(&host, true);
                network(&host, false); // the undo: the rules without c1
            }
        }
        ok(&host, &down(&p, Volumes::Remove));
        create_c1(&cell, &host).unwrap_err();
        drop(host);
        let state = cell.state();
        assert!(state.connections.is_empty() && state.pending.is_none());
        assert!(!p.file.exists() && !data.exists(), "{failing} fails");
    }
}

#[test]
fn connection_create_commits_after_every_step() {
    let cell = cell_with_proxy("conn-new-ok");
    let p = project::instance(&cell.config, "proxy", "c1");
    let host = FakeHost::new();
    ok(
        &host,
        &format!("{} up -d --remove-orphans --pull missing", compose(&p)),
    );
    health(&host, &p.name, true);
    network(&host, true);
    let out = create_c1(&cell, &host).unwrap();
    drop(host);
    assert_eq!((out.fwmark, out.table, out.port), (0x100, 100, 12000));
    assert_eq!(cell.state().connections["c1"], c1());
    assert!(p.file.exists());
}

#[test]
fn a_connection_create_killed_between_steps_is_rolled_back_by_the_next_lock_holder() {
    let cell = cell_with_c1("conn-new-kill");
    let p = project::instance(&cell.config, "proxy", "c1");
    let mut st = cell.state();
    st.connections.clear();
    st.pending = Some(Pending::now(
        PendingOp::ConnectionCreate {
            service: Some("proxy".into()),
            made_data_dir: true,
        },
        "c1",
    ));
    cell.commit(&st);
    let host = FakeHost::new();
    // The compose file goes first, so its containers go by their label.
    removed_by_label(&host, "pic-proxy-c1");
    network(&host, false);
    next_lock_holder(&cell, host);
    let state = cell.state();
    assert!(state.connections.is_empty() && state.pending.is_none());
    assert!(!p.file.exists());
    assert!(!crate::compose::data_dir(&cell.config, "proxy", Some("c1")).exists());
}
