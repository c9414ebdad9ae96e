//! What installed services and connection instances are doing right now
//! (spec §13 "Runtime state"): one `docker ps -a` over every compose
//! project's containers, read into a [`Runtime`] per project. Pure but for
//! [`inventory`]; the parsing and the "worst of its containers" rule are
//! tested with plain text below.

use crate::config::Config;
use crate::error::Result;
use crate::host::{Cmd, Host};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// A project's or a container's state, in the order of spec §13: the
/// derived `Ord` puts the worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Missing,
    Exited,
    Restarting,
    Unhealthy,
    Starting,
    Running,
    Healthy,
    /// The owner stopped it (`pic-store stop`); never a container's own.
    Stopped,
}

impl RunState {
    /// The container is running (whatever its health): docker's state
    /// word was `running` (or `paused`).
    pub fn is_up(self) -> bool {
        matches!(
            self,
            RunState::Running | RunState::Healthy | RunState::Starting | RunState::Unhealthy
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Missing => "missing",
            RunState::Exited => "exited",
            RunState::Restarting => "restarting",
            RunState::Unhealthy => "unhealthy",
            RunState::Starting => "starting",
            RunState::Running => "running",
            RunState::Healthy => "healthy",
            RunState::Stopped => "stopped",
        }
    }
}

/// One container of a project, as `docker ps` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerRuntime {
    pub name: String,
    /// The compose service name.
    pub service: String,
    pub state: RunState,
    pub exit_code: Option<i32>,
}

/// A project's runtime: the worst of its containers' states (spec §13).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Runtime {
    pub state: RunState,
    pub exit_code: Option<i32>,
    pub containers: Vec<ContainerRuntime>,
}

impl Runtime {
    /// The runtime of a project with these containers; `stopped` when its
    /// owner stopped it, whatever its containers do.
    pub fn of(containers: Vec<ContainerRuntime>, owner_stopped: bool) -> Runtime {
        let worst = containers.iter().min_by_key(|c| c.state);
        let (state, exit_code) = match worst {
            _ if owner_stopped => (RunState::Stopped, None),
            Some(c) => (c.state, c.exit_code),
            None => (RunState::Missing, None),
        };
        Runtime {
            state,
            exit_code,
            containers,
        }
    }
}

/// The `--format` of the one `docker ps -a`: project, service, name, the
/// container's state word and its status text (which carries the health
/// and the exit code).
const PS_FORMAT: &str = "{{.Label \"com.docker.compose.project\"}}\t\
{{.Label \"com.docker.compose.service\"}}\t{{.Names}}\t{{.State}}\t{{.Status}}";

/// Every compose project's containers, by project name, in one call. The
/// page and the API wait for it (behind [`cached_inventory`]), so a hung
/// docker costs them at most 10 s, then an unknown runtime.
pub fn inventory(
    host: &dyn Host,
    config: &Config,
) -> Result<BTreeMap<String, Vec<ContainerRuntime>>> {
    let out = host.run(&ps_cmd(config, "label=com.docker.compose.project"))?;
    Ok(parse_ps(&out.stdout))
}

/// `docker ps -a --filter FILTER --format PS_FORMAT`, bounded to 10 s.
fn ps_cmd(config: &Config, filter: &str) -> Cmd {
    Cmd::new(&config.docker)
        .timeout(Duration::from_secs(10))
        .args(["ps", "-a", "--filter", filter, "--format", PS_FORMAT])
}

/// Reads the lines of [`PS_FORMAT`]; lines of another shape are skipped.
pub fn parse_ps(text: &str) -> BTreeMap<String, Vec<ContainerRuntime>> {
    let mut map: BTreeMap<String, Vec<ContainerRuntime>> = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split('\t');
        let (Some(project), Some(service), Some(name), Some(state), Some(status)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if project.is_empty() {
            continue;
        }
        let (state, exit_code) = container_state(state.trim(), status.trim());
        map.entry(project.to_string())
            .or_default()
            .push(ContainerRuntime {
                name: name.to_string(),
                service: service.to_string(),
                state,
                exit_code,
            });
    }
    for containers in map.values_mut() {
        containers.sort_by(|a, b| a.service.cmp(&b.service).then(a.name.cmp(&b.name)));
    }
    map
}

/// A container's state from docker's state word (`running`, `exited`,
/// `restarting`, `created`, `paused`, `dead`, `removing`) and status text
/// (`Up 3 minutes (healthy)`, `Exited (137) 5 seconds ago`, ...).
fn container_state(state: &str, status: &str) -> (RunState, Option<i32>) {
    match state {
        "running" | "paused" => {
            let s = if status.contains("(unhealthy)") {
                RunState::Unhealthy
            } else if status.contains("(healthy)") {
                RunState::Healthy
            } else if status.contains("(health: starting)") {
                RunState::Starting
            } else {
                RunState::Running
            };
            (s, None)
        }
        "restarting" => (RunState::Restarting, exit_code(status)),
        "exited" | "dead" | "created" => (RunState::Exited, exit_code(status)),
        _ => (RunState::Missing, None),
    }
}

/// The number in the first parentheses of `Exited (N) ...`.
fn exit_code(status: &str) -> Option<i32> {
    let open = status.find('(')?;
    let close = open + status[open..].find(')')?;
    status[open + 1..close].trim().parse().ok()
}

/// What the health wait (spec §13) makes of a project's containers.
#[derive(Debug, PartialEq, Eq)]
pub enum Health {
    /// Every container is running, and healthy where it has a healthcheck.
    Ready,
    /// A healthcheck has not passed yet, or no container is there yet.
    Waiting,
    /// This container is unhealthy, restarting or exited.
    Failed(ContainerRuntime),
}

/// Judges one look at a project's containers.
pub fn judge(containers: &[ContainerRuntime]) -> Health {
    if let Some(bad) = containers.iter().find(|c| {
        matches!(
            c.state,
            RunState::Unhealthy | RunState::Restarting | RunState::Exited
        )
    }) {
        return Health::Failed(bad.clone());
    }
    if containers.is_empty()
        || containers
            .iter()
            .any(|c| matches!(c.state, RunState::Starting | RunState::Missing))
    {
        return Health::Waiting;
    }
    Health::Ready
}

/// One project's containers, in one `docker ps -a`.
pub fn project(host: &dyn Host, config: &Config, project: &str) -> Result<Vec<ContainerRuntime>> {
    let filter = format!("label=com.docker.compose.project={project}");
    let out = host.run(&ps_cmd(config, &filter))?;
    Ok(parse_ps(&out.stdout).remove(project).unwrap_or_default())
}

/// How many log lines of a failing container an error carries.
const FAILURE_LOG_LINES: usize = 20;

/// Waits, looking once a second, until every container of `project` is
/// running (healthy where it has a healthcheck). Unhealthy, restarting,
/// exited or `timeout` is an error naming the container, its state and its
/// last log lines.
pub fn wait_healthy(
    host: &dyn Host,
    config: &Config,
    project: &str,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let mut told = false;
    loop {
        let containers = self::project(host, config, project)?;
        let waiting_on = match judge(&containers) {
            Health::Ready => return Ok(()),
            Health::Failed(c) => {
                let why = match c.exit_code {
                    Some(code) => format!("{} ({code})", c.state.as_str()),
                    None => c.state.as_str().to_string(),
                };
                return Err(failure(host, config, &c.name, &why));
            }
            Health::Waiting => containers
                .iter()
                .find(|c| c.state == RunState::Starting)
                .map(|c| c.name.clone())
                .unwrap_or_else(|| project.to_string()),
        };
        if std::time::Instant::now() >= deadline {
            let why = format!("not healthy within {} s", timeout.as_secs());
            return Err(failure(host, config, &waiting_on, &why));
        }
        if !told {
            progress(&format!("waiting for {waiting_on} to be healthy"));
            told = true;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The health-wait error: the container, why, and its last log lines.
fn failure(host: &dyn Host, config: &Config, container: &str, why: &str) -> crate::error::Error {
    let logs = host
        .run(
            &Cmd::new(&config.docker)
                .timeout(Duration::from_secs(10))
                .args(["logs", "--tail"])
                .arg(FAILURE_LOG_LINES.to_string())
                .arg(container)
                .allow_failure(),
        )
        .map(|o| format!("{}{}", o.stdout, o.stderr))
        .unwrap_or_default();
    let logs = logs.trim();
    let reason = if logs.is_empty() {
        format!("{container} is {why}")
    } else {
        format!("{container} is {why}; its last log lines:\n{logs}")
    };
    crate::error::Error::failed("health check", reason)
}

/// Every compose project's containers, by project name.
pub type Inventory = BTreeMap<String, Vec<ContainerRuntime>>;

/// How long one `docker ps -a` answers for every reader (spec §13
/// performance: at most one per 2 s however many requests arrive).
pub const INVENTORY_TTL: Duration = Duration::from_secs(2);

/// The last inventory and when it was taken; a failed `docker ps` is
/// cached for as long, so a missing docker is not asked per request.
type CachedInventory = (
    std::time::Instant,
    u64,
    std::sync::Arc<std::result::Result<Inventory, String>>,
);

static INVENTORY: std::sync::Mutex<Option<CachedInventory>> = std::sync::Mutex::new(None);

/// The inventory of at most [`INVENTORY_TTL`] ago, and its generation (a
/// number that changes whenever a new one is taken, for callers that cache
/// answers built from it). Concurrent callers wait for the one `docker ps`.
pub fn cached_inventory(
    host: &dyn Host,
    config: &Config,
) -> (u64, std::sync::Arc<std::result::Result<Inventory, String>>) {
    let mut cache = INVENTORY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((at, gen, inv)) = cache.as_ref() {
        if at.elapsed() < INVENTORY_TTL {
            return (*gen, inv.clone());
        }
    }
    let gen = cache.as_ref().map_or(1, |(_, g, _)| g + 1);
    let inv = std::sync::Arc::new(inventory(host, config).map_err(|e| e.to_string()));
    *cache = Some((std::time::Instant::now(), gen, inv.clone()));
    (gen, inv)
}

/// Forgets the cached inventory (unit tests).
#[cfg(test)]
pub fn forget_inventory() {
    *INVENTORY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
}

/// Whether the owner stopped this service (spec §13 "stop"). The one place
/// the service record's flag is read.
pub fn owner_stopped(service: &crate::state::InstalledService) -> bool {
    service.stopped
}

/// The runtime of every installed service and connection instance, by id.
#[derive(Debug, Default)]
pub struct Runtimes {
    pub services: BTreeMap<String, Runtime>,
    pub connections: BTreeMap<String, Runtime>,
}

impl Runtimes {
    /// Each project of `state` looked up in `inventory`: service `pic-<id>`,
    /// instance `pic-<service>-<instance>`. An instanceable service has no
    /// project of its own, so no runtime.
    pub fn of(state: &crate::state::State, inventory: &Inventory) -> Runtimes {
        let containers = |name: &str| inventory.get(name).cloned().unwrap_or_default();
        let mut r = Runtimes::default();
        for (id, s) in &state.services {
            if s.manifest.instanceable {
                continue;
            }
            let project = crate::compose::project_name(id, None);
            r.services.insert(
                id.clone(),
                Runtime::of(containers(&project), owner_stopped(s)),
            );
        }
        for (id, c) in &state.connections {
            let project = crate::compose::project_name(&c.service, Some(id));
            r.connections
                .insert(id.clone(), Runtime::of(containers(&project), false));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(project: &str, service: &str, name: &str, state: &str, status: &str) -> String {
        format!("{project}\t{service}\t{name}\t{state}\t{status}\n")
    }

    #[test]
    fn states_are_read_from_state_and_status() {
        let cases = [
            ("running", "Up 3 minutes", RunState::Running, None),
            ("running", "Up 3 minutes (healthy)", RunState::Healthy, None),
            (
                "running",
                "Up 1 second (health: starting)",
                RunState::Starting,
                None,
            ),
            (
                "running",
                "Up 9 minutes (unhealthy)",
                RunState::Unhealthy,
                None,
            ),
            (
                "exited",
                "Exited (137) 5 seconds ago",
                RunState::Exited,
                Some(137),
            ),
            (
                "exited",
                "Exited (0) 2 hours ago",
                RunState::Exited,
                Some(0),
            ),
            (
                "restarting",
                "Restarting (1) 2 seconds ago",
                RunState::Restarting,
                Some(1),
            ),
            ("created", "Created", RunState::Exited, None),
            ("removing", "Removal In Progress", RunState::Missing, None),
        ];
        for (state, status, want, code) in cases {
            assert_eq!(
                container_state(state, status),
                (want, code),
                "{state} / {status}"
            );
        }
    }

    #[test]
    fn containers_are_grouped_by_project_and_sorted_by_service() {
        let text = line(
            "pic-web",
            "web",
            "cell-web",
            "running",
            "Up 1 minute (healthy)",
        ) + &line("pic-web", "db", "cell-web-db", "running", "Up 1 minute")
            + &line("other", "x", "x-1", "exited", "Exited (0) 1 day ago")
            + "not a ps line\n"
            + &line("", "x", "loose", "running", "Up");
        let map = parse_ps(&text);
        assert_eq!(map.len(), 2);
        let web = &map["pic-web"];
        assert_eq!(web[0].service, "db");
        assert_eq!(web[1].name, "cell-web");
        assert_eq!(web[1].state, RunState::Healthy);
    }

    #[test]
    fn a_project_is_the_worst_of_its_containers() {
        let c = |state, exit_code| ContainerRuntime {
            name: "n".into(),
            service: "s".into(),
            state,
            exit_code,
        };
        let r = Runtime::of(
            vec![c(RunState::Healthy, None), c(RunState::Running, None)],
            false,
        );
        assert_eq!(r.state, RunState::Running);
        let r = Runtime::of(
            vec![c(RunState::Healthy, None), c(RunState::Exited, Some(3))],
            false,
        );
        assert_eq!((r.state, r.exit_code), (RunState::Exited, Some(3)));
        let r = Runtime::of(
            vec![
                c(RunState::Unhealthy, None),
                c(RunState::Restarting, Some(1)),
            ],
            false,
        );
        assert_eq!(r.state, RunState::Restarting);
        assert_eq!(Runtime::of(vec![], false).state, RunState::Missing);
        let stopped = Runtime::of(vec![c(RunState::Exited, Some(0))], true);
        assert_eq!(
            (stopped.state, stopped.exit_code),
            (RunState::Stopped, None)
        );
    }

    #[test]
    fn json_form_is_the_specs() {
        let r = Runtime::of(
            vec![ContainerRuntime {
                name: "cell-web".into(),
                service: "web".into(),
                state: RunState::Exited,
                exit_code: Some(2),
            }],
            false,
        );
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"state": "exited", "exit_code": 2, "containers": [
                {"name": "cell-web", "service": "web", "state": "exited", "exit_code": 2}]})
        );
    }

    #[test]
    fn health_is_judged_on_every_container() {
        let c = |name: &str, state| ContainerRuntime {
            name: name.into(),
            service: name.into(),
            state,
            exit_code: None,
        };
        assert_eq!(
            judge(&[c("a", RunState::Running), c("b", RunState::Healthy)]),
            Health::Ready
        );
        assert_eq!(
            judge(&[c("a", RunState::Running), c("b", RunState::Starting)]),
            Health::Waiting
        );
        assert_eq!(judge(&[]), Health::Waiting);
        for bad in [RunState::Unhealthy, RunState::Exited, RunState::Restarting] {
            match judge(&[c("a", RunState::Starting), c("b", bad)]) {
                Health::Failed(f) => assert_eq!(f.name, "b"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    /// Also the test of `report::status_json`: both share the cache.
    #[test]
    fn one_docker_ps_answers_every_reader_for_two_seconds_and_status_runs_two_programs() {
        let config = Config::from_lookup(|k| match k {
            "PIC_STATE_DIR" => Some("/nonexistent/pic-runtime-test".into()),
            _ => None,
        })
        .unwrap();
        forget_inventory();
        let ps = line("pic-a", "web", "pt-a", "running", "Up 1 second");
        let host = crate::host::FakeHost::new().answer("", 0, &ps);
        let (gen, first) = cached_inventory(&host, &config);
        for _ in 0..50 {
            let (g, again) = cached_inventory(&host, &config);
            assert_eq!(g, gen);
            assert_eq!(again, first);
        }
        assert_eq!(host.calls().len(), 1);
        assert_eq!(
            first.as_ref().as_ref().unwrap()["pic-a"][0].state,
            RunState::Running
        );

        // `status`: the Compose plugin check and one `docker ps`, no more
        // (the fake refuses a third call).
        forget_inventory();
        let host = crate::host::FakeHost::new()
            .answer("", 0, "2.40.3\n")
            .answer("", 0, &ps);
        let store = crate::store::StoreClient::from_config(&config);
        let v = crate::report::status_json(&config, &host, &crate::state::State::default(), &store);
        assert_eq!(host.calls().len(), 2, "{:?}", host.calls());
        assert!(v["runtime"]["services"].is_object(), "{v}");
        forget_inventory();
    }

    /// The health wait looks once a second, one `docker ps` a look: three
    /// looks (starting, starting, healthy) take at least two seconds and
    /// exactly three calls (the fake refuses a fourth).
    #[test]
    fn the_health_wait_looks_once_a_second() {
        let config = Config::from_lookup(|k| match k {
            "PIC_STATE_DIR" => Some("/nonexistent/pic-runtime-test".into()),
            _ => None,
        })
        .unwrap();
        let starting = line(
            "pic-h",
            "web",
            "pt-h",
            "running",
            "Up 1 second (health: starting)",
        );
        let healthy = line("pic-h", "web", "pt-h", "running", "Up 3 seconds (healthy)");
        let host = crate::host::FakeHost::new()
            .answer("", 0, &starting)
            .answer("", 0, &starting)
            .answer("", 0, &healthy);
        let t0 = std::time::Instant::now();
        let mut said = Vec::new();
        wait_healthy(&host, &config, "pic-h", Duration::from_secs(30), &mut |l| {
            said.push(l.to_string())
        })
        .unwrap();
        assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
        assert_eq!(host.calls().len(), 3);
        assert!(host.calls()[0].contains(" ps -a --filter label=com.docker.compose.project=pic-h "));
        assert_eq!(said, ["waiting for pt-h to be healthy"]);
    }
}
