//! The state file (spec §4): its types, and the lock → load → commit cycle.
//! `state.json` is only ever replaced whole (temporary file, fsync, rename,
//! fsync of the folder), the previous generation kept as `state.json.bak`,
//! and every read-modify-write holds an exclusive `flock` on `state.lock`.
//! This is the only module that writes the state.

use crate::error::{Error, Result};
use crate::files;
use crate::manifest::{Manifest, VerificationMode};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const SCHEMA: u32 = 1;

/// How long a command-line mutator waits for the lock (spec §3).
pub const CLI_LOCK_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub schema: u32,
    #[serde(default)]
    pub services: BTreeMap<String, InstalledService>,
    #[serde(default)]
    pub connections: BTreeMap<String, Connection>,
    /// Peer IPv4 address → connection id.
    #[serde(default)]
    pub peer_routes: BTreeMap<String, String>,
    /// Service id → connection id its outbound traffic goes through.
    #[serde(default)]
    pub egress: BTreeMap<String, String>,
    #[serde(default)]
    pub settings: Settings,
    #[serde(default)]
    pub pending: Option<Pending>,
    /// Top-level fields this version does not know are kept as they are.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for State {
    fn default() -> State {
        State {
            schema: SCHEMA,
            services: BTreeMap::new(),
            connections: BTreeMap::new(),
            peer_routes: BTreeMap::new(),
            egress: BTreeMap::new(),
            settings: Settings::default(),
            pending: None,
            extra: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstalledService {
    pub manifest: Manifest,
    /// The service IP; none for instanceable services (their instances
    /// have one each).
    pub ip: Option<Ipv4Addr>,
    pub installed_at: u64,
    /// The repo digest of the pulled image, `sha256:...`.
    pub image_digest: Option<String>,
    /// The compose template, kept for instanceable services.
    #[serde(default)]
    pub template: Option<String>,
    /// Its owner stopped it: reapply and boot leave it down (spec §13).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// The values of its settings that are not secrets (spec §6 rule 15).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
    /// The values of its secret settings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, Secret>,
}

impl InstalledService {
    /// Every setting's value, secrets included, to render the template.
    pub fn setting_values(&self) -> BTreeMap<String, String> {
        let mut all = self.settings.clone();
        for (k, v) in &self.secrets {
            all.insert(k.clone(), v.0.clone());
        }
        all
    }
}

/// A secret setting's value (spec §13). It serialises as `"set"` except
/// while the state file itself is written, so no API answer, page or log
/// line made from a record can carry it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(set)")
    }
}

thread_local! {
    static WRITING_STATE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if WRITING_STATE.with(std::cell::Cell::get) {
            s.serialize_str(&self.0)
        } else {
            s.serialize_str("set")
        }
    }
}

/// A pending update's or configure's old compose file: it holds the
/// settings' values, so only the state file itself carries it.
fn shown_doc(doc: Option<serde_json::Value>) -> Option<serde_json::Value> {
    if WRITING_STATE.with(std::cell::Cell::get) {
        doc
    } else {
        doc.map(|_| serde_json::Value::String("kept in the state file".into()))
    }
}

/// The state file's bytes, secrets included.
fn state_bytes(state: &State) -> serde_json::Result<Vec<u8>> {
    WRITING_STATE.with(|w| w.set(true));
    let bytes = serde_json::to_vec_pretty(state);
    WRITING_STATE.with(|w| w.set(false));
    bytes
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub service: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub fwmark: u32,
    pub table: u32,
    pub port: u16,
    pub ip: Ipv4Addr,
    pub created_at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    #[serde(default)]
    pub image_verification_mode: VerificationMode,
}

/// An operation that changes the system, written before its first side
/// effect and cleared with its final state write (spec §4). What a later
/// process needs to settle it is typed here; on disk it keeps the v1
/// shape (`op`, `target`, `started_at`, `pid`, `detail`) through
/// [`PendingRecord`], so state files of either version load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "PendingRecord", into = "PendingRecord")]
pub struct Pending {
    pub op: PendingOp,
    /// The service or connection id.
    pub target: String,
    pub started_at: u64,
    pub pid: u32,
}

/// Each operation that can be left pending, with what settling it needs.
#[derive(Debug, Clone, PartialEq)]
pub enum PendingOp {
    /// Rolled back: the project taken down, its file removed, and the
    /// data folder too when the install made it.
    Install { made_data_dir: bool },
    /// Finished.
    Remove { purge: bool },
    /// Rolled back to the compose file of the old version (none when the
    /// service had none, as an instanceable one).
    Update { old_doc: Option<serde_json::Value> },
    /// Rolled back. `service` is `None` only in a damaged record.
    ConnectionCreate {
        service: Option<String>,
        made_data_dir: bool,
    },
    /// Finished.
    ConnectionDelete { service: Option<String> },
    /// Rolled back to the compose file as it was before (spec §13).
    Configure { old_doc: Option<serde_json::Value> },
}

impl std::fmt::Display for PendingOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PendingOp::Install { .. } => "Install",
            PendingOp::Remove { .. } => "Remove",
            PendingOp::Update { .. } => "Update",
            PendingOp::ConnectionCreate { .. } => "ConnectionCreate",
            PendingOp::ConnectionDelete { .. } => "ConnectionDelete",
            PendingOp::Configure { .. } => "Configure",
        })
    }
}

impl Pending {
    /// A record of `op` on `target` by this process, started now.
    pub fn now(op: PendingOp, target: &str) -> Pending {
        Pending {
            op,
            target: target.to_string(),
            started_at: files::now_unix(),
            pid: std::process::id(),
        }
    }
}

/// The pending record as the state file holds it (v1).
#[derive(Serialize, Deserialize)]
struct PendingRecord {
    op: OpName,
    target: String,
    started_at: u64,
    pid: u32,
    #[serde(default)]
    detail: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OpName {
    Install,
    Remove,
    Update,
    ConnectionCreate,
    ConnectionDelete,
    Configure,
}

impl From<PendingRecord> for Pending {
    fn from(r: PendingRecord) -> Pending {
        let d = &r.detail;
        let flag = |k: &str| d[k].as_bool() == Some(true);
        let service = d["service"].as_str().map(str::to_string);
        let op = match r.op {
            OpName::Install => PendingOp::Install {
                made_data_dir: flag("made_data_dir"),
            },
            OpName::Remove => PendingOp::Remove {
                purge: flag("purge"),
            },
            OpName::Update => PendingOp::Update {
                old_doc: d.get("old_doc").filter(|v| !v.is_null()).cloned(),
            },
            OpName::ConnectionCreate => PendingOp::ConnectionCreate {
                service,
                made_data_dir: flag("made_data_dir"),
            },
            OpName::ConnectionDelete => PendingOp::ConnectionDelete { service },
            OpName::Configure => PendingOp::Configure {
                old_doc: d.get("old_doc").filter(|v| !v.is_null()).cloned(),
            },
        };
        Pending {
            op,
            target: r.target,
            started_at: r.started_at,
            pid: r.pid,
        }
    }
}

impl From<Pending> for PendingRecord {
    fn from(p: Pending) -> PendingRecord {
        let project = format!("pic-{}", p.target);
        let (op, detail) = match p.op {
            PendingOp::Install { made_data_dir } => (
                OpName::Install,
                serde_json::json!({"project": project, "made_data_dir": made_data_dir}),
            ),
            PendingOp::Remove { purge } => (OpName::Remove, serde_json::json!({"purge": purge})),
            PendingOp::Update { old_doc } => (
                OpName::Update,
                serde_json::json!({"project": project, "old_doc": shown_doc(old_doc)}),
            ),
            PendingOp::ConnectionCreate {
                service,
                made_data_dir,
            } => (
                OpName::ConnectionCreate,
                serde_json::json!({"service": service, "made_data_dir": made_data_dir}),
            ),
            PendingOp::ConnectionDelete { service } => (
                OpName::ConnectionDelete,
                serde_json::json!({"service": service}),
            ),
            PendingOp::Configure { old_doc } => (
                OpName::Configure,
                serde_json::json!({"project": project, "old_doc": shown_doc(old_doc)}),
            ),
        };
        PendingRecord {
            op,
            target: p.target,
            started_at: p.started_at,
            pid: p.pid,
            detail,
        }
    }
}

impl State {
    /// The names the other installed services hold, for the validator's
    /// uniqueness rules (spec §6 rules 3 and 6).
    pub fn taken_names(&self, except: &str) -> Vec<crate::manifest::Taken> {
        self.services
            .iter()
            .filter(|(id, _)| id.as_str() != except)
            .map(|(id, s)| crate::manifest::Taken {
                id: id.clone(),
                container_name: s.manifest.container_name.clone(),
                subdomains: s
                    .manifest
                    .routes
                    .iter()
                    .map(|(sub, _)| sub.clone())
                    .collect(),
            })
            .collect()
    }
}

/// The state folder and its files.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

/// The exclusive lock on `state.lock`; released when dropped.
pub struct StateLock {
    store: StateStore,
    _flock: Flock<File>,
}

impl StateStore {
    pub fn new(dir: &Path) -> StateStore {
        StateStore {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn file(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn backup(&self) -> PathBuf {
        self.dir.join("state.json.bak")
    }
    fn lock_path(&self) -> PathBuf {
        self.dir.join("state.lock")
    }

    /// Takes the exclusive lock, waiting up to `wait`. Logs once when it
    /// has to wait; past `wait` it is [`Error::Busy`].
    pub fn lock(&self, wait: Duration) -> Result<StateLock> {
        files::create_dir_all(&self.dir)?;
        // It holds the settings' secrets: only its owner may list or enter.
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("restrict", &self.dir, e))?;
        let path = self.lock_path();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("open lock", &path, e))?;
        let deadline = Instant::now() + wait;
        let mut told = false;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(flock) => {
                    return Ok(StateLock {
                        store: self.clone(),
                        _flock: flock,
                    })
                }
                Err((f, nix::errno::Errno::EWOULDBLOCK)) | Err((f, nix::errno::Errno::EINTR)) => {
                    file = f;
                }
                Err((_, e)) => {
                    return Err(Error::io("lock", &path, std::io::Error::from(e)));
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Busy(format!(
                    "busy: another pic-store operation holds {} (waited {} s)",
                    path.display(),
                    wait.as_secs()
                )));
            }
            if !told {
                log::info!("waiting for lock on {}", path.display());
                told = true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Reads the state without the lock, for read-only commands: the file
    /// is only ever replaced whole, so a reader sees one generation.
    /// An unreadable file is [`Error::StateUnreadable`], never an empty state.
    pub fn read(&self) -> Result<State> {
        let path = self.file();
        match files::read_optional(&path)? {
            Some(bytes) => parse(&path, &bytes),
            None => {
                if self.backup().exists() {
                    return Err(Error::StateUnreadable {
                        path,
                        reason: "it is missing but state.json.bak exists; \
                                 run `pic-store reapply` to restore it"
                            .into(),
                    });
                }
                Ok(State::default())
            }
        }
    }
}

impl StateLock {
    /// Loads the state; an unreadable file is an error (exit 2).
    pub fn load(&self) -> Result<State> {
        self.store.read()
    }

    /// Loads the state for `reapply`: when `state.json` is unreadable and
    /// `state.json.bak` parses, the bad file is moved aside as
    /// `state.json.corrupt-<unix time>` and the backup restored. Returns
    /// the state and, when it recovered, a sentence saying what it did.
    pub fn load_or_recover(&self) -> Result<(State, Option<String>)> {
        let first_err = match self.store.read() {
            Ok(s) => return Ok((s, None)),
            Err(e @ Error::StateUnreadable { .. }) => e,
            Err(e) => return Err(e),
        };
        let file = self.store.file();
        let bak = self.store.backup();
        let bak_bytes = match files::read_optional(&bak)? {
            Some(b) => b,
            None => return Err(first_err),
        };
        let state = match parse(&bak, &bak_bytes) {
            Ok(s) => s,
            Err(_) => {
                return Err(Error::StateUnreadable {
                    path: file,
                    reason: format!("{first_err}; and {} is unreadable too", bak.display()),
                })
            }
        };
        let mut moved = String::new();
        if file.exists() {
            let aside = self
                .store
                .dir
                .join(format!("state.json.corrupt-{}", files::now_unix()));
            files::rename(&file, &aside)?;
            moved = format!(" (the unreadable file is kept as {})", aside.display());
        }
        files::write_atomic(&file, &bak_bytes, 0o600)?;
        let msg = format!("{first_err}; restored it from {}{moved}", bak.display());
        log::warn!("{msg}");
        Ok((state, Some(msg)))
    }

    /// Replaces the state with `state`. The old file becomes
    /// `state.json.bak` first, by a hard link, so at every instant
    /// `state.json` holds one whole generation and at most one temporary
    /// file exists. A failure leaves the old `state.json` in place.
    pub fn commit(&self, state: &State) -> Result<()> {
        let file = self.store.file();
        let mut bytes = state_bytes(state).map_err(|e| {
            Error::io(
                "serialise",
                &file,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        bytes.push(b'\n');
        if file.exists() {
            let bak = self.store.backup();
            let bak_tmp = files::temp_path(&bak);
            files::remove_file_if_exists(&bak_tmp)?;
            std::fs::hard_link(&file, &bak_tmp)
                .map_err(|e| Error::io("link backup", &bak_tmp, e))?;
            files::rename(&bak_tmp, &bak)?;
        }
        files::write_atomic(&file, &bytes, 0o600)
    }

    /// Loads, applies `change`, and commits when it returns `Ok`.
    pub fn update<T>(&self, change: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut state = self.load()?;
        let out = change(&mut state)?;
        self.commit(&state)?;
        Ok(out)
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<State> {
    let unreadable = |reason: String| Error::StateUnreadable {
        path: path.to_path_buf(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| unreadable(format!("not JSON: {e}")))?;
    match value.get("schema").and_then(|s| s.as_u64()) {
        Some(n) if n == u64::from(SCHEMA) => {}
        Some(n) => {
            return Err(unreadable(format!(
                "schema {n} is not supported by this version (it reads schema {SCHEMA})"
            )))
        }
        None => return Err(unreadable("no \"schema\" field".into())),
    }
    serde_json::from_value(value).map_err(|e| unreadable(format!("malformed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state file written by version 1, with each kind of pending
    /// record, loads into the typed record and is written back unchanged.
    #[test]
    fn v1_pending_records_load_and_round_trip() {
        let cases = [
            (
                r#"{"op": "install", "target": "radicale", "started_at": 1700000000, "pid": 42,
                    "detail": {"project": "pic-radicale", "made_data_dir": true}}"#,
                PendingOp::Install {
                    made_data_dir: true,
                },
            ),
            (
                r#"{"op": "remove", "target": "radicale", "started_at": 1700000000, "pid": 42,
                    "detail": {"purge": false}}"#,
                PendingOp::Remove { purge: false },
            ),
            (
                r#"{"op": "update", "target": "radicale", "started_at": 1700000000, "pid": 42,
                    "detail": {"project": "pic-radicale", "old_doc": {"services": {}}}}"#,
                PendingOp::Update {
                    old_doc: Some(serde_json::json!({"services": {}})),
                },
            ),
            (
                r#"{"op": "connection_create", "target": "c1", "started_at": 1700000000,
                    "pid": 42, "detail": {"service": "proxy", "made_data_dir": false}}"#,
                PendingOp::ConnectionCreate {
                    service: Some("proxy".into()),
                    made_data_dir: false,
                },
            ),
            (
                r#"{"op": "connection_delete", "target": "c1", "started_at": 1700000000,
                    "pid": 42, "detail": {"service": "proxy"}}"#,
                PendingOp::ConnectionDelete {
                    service: Some("proxy".into()),
                },
            ),
        ];
        for (record, op) in cases {
            let file = format!(r#"{{"schema": 1, "services": {{}}, "pending": {record}}}"#);
            let state: State = serde_json::from_str(&file).unwrap();
            let p = state.pending.clone().unwrap();
            assert_eq!(p.op, op, "{record}");
            assert_eq!((p.started_at, p.pid), (1700000000, 42));
            // The state file round-trips it whole.
            let written: serde_json::Value =
                serde_json::from_slice(&state_bytes(&state).unwrap()).unwrap();
            let want: serde_json::Value = serde_json::from_str(record).unwrap();
            assert_eq!(written["pending"], want, "{record}");
            // Anywhere else (`GET /api/status`) an old compose file, which
            // holds the settings' values, is not shown.
            let shown = serde_json::to_value(&state).unwrap();
            if !want["detail"]["old_doc"].is_null() {
                assert_eq!(
                    shown["pending"]["detail"]["old_doc"],
                    "kept in the state file"
                );
            }
        }
        // A record without its detail (an older or damaged file) still loads.
        let bare = r#"{"schema": 1, "pending": {"op": "update", "target": "x",
            "started_at": 1, "pid": 2}}"#;
        let state: State = serde_json::from_str(bare).unwrap();
        assert_eq!(
            state.pending.unwrap().op,
            PendingOp::Update { old_doc: None }
        );
    }

    fn store(name: &str) -> StateStore {
        let d = std::env::temp_dir().join(format!("pic-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        StateStore::new(&d)
    }

    #[test]
    fn missing_file_is_an_empty_state() {
        let s = store("missing");
        assert_eq!(s.read().unwrap(), State::default());
    }

    #[test]
    fn the_state_folder_is_0700_its_file_0600_and_secrets_stay_in_it() {
        use std::os::unix::fs::PermissionsExt;
        let s = store("modes");
        std::fs::create_dir_all(s.dir()).unwrap();
        std::fs::set_permissions(s.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let lock = s.lock(Duration::from_secs(1)).unwrap();
        let mut st = State::default();
        let mut rec: InstalledService = serde_json::from_value(serde_json::json!({
            "manifest": serde_json::to_value(crate::net::tests::manifest("app")).unwrap(),
            "ip": null, "installed_at": 1, "image_digest": null
        }))
        .unwrap();
        assert!(!rec.stopped && rec.settings.is_empty(), "old records load");
        rec.secrets
            .insert("PASSWORD".into(), Secret("hunter2xyz".into()));
        st.services.insert("app".into(), rec);
        lock.commit(&st).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(s.dir()), 0o700);
        assert_eq!(mode(&s.file()), 0o600);
        let text = std::fs::read_to_string(s.file()).unwrap();
        assert!(
            text.contains("hunter2xyz"),
            "the state file keeps the secret"
        );
        assert_eq!(lock.load().unwrap(), st);
        let shown = serde_json::to_string(&st.services["app"]).unwrap();
        assert!(
            !shown.contains("hunter2xyz") && shown.contains("\"set\""),
            "{shown}"
        );
        let _ = std::fs::remove_dir_all(s.dir());
    }

    #[test]
    fn commit_keeps_previous_generation_as_backup() {
        let s = store("bak");
        let lock = s.lock(Duration::from_secs(1)).unwrap();
        let mut st = State::default();
        lock.commit(&st).unwrap();
        st.settings.image_verification_mode = VerificationMode::Enforce;
        lock.commit(&st).unwrap();
        assert_eq!(lock.load().unwrap(), st);
        let bak: State = serde_json::from_slice(&std::fs::read(s.backup()).unwrap()).unwrap();
        assert_eq!(bak.settings.image_verification_mode, VerificationMode::Warn);
        let _ = std::fs::remove_dir_all(s.dir());
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let s = store("extra");
        std::fs::create_dir_all(s.dir()).unwrap();
        std::fs::write(s.file(), r#"{"schema":1,"future":{"a":1}}"#).unwrap();
        let lock = s.lock(Duration::from_secs(1)).unwrap();
        lock.update(|_| Ok(())).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(s.file()).unwrap()).unwrap();
        assert_eq!(v["future"]["a"], 1);
        let _ = std::fs::remove_dir_all(s.dir());
    }

    #[test]
    fn wrong_schema_and_garbage_are_unreadable() {
        let s = store("garbage");
        std::fs::create_dir_all(s.dir()).unwrap();
        for text in [
            "{",
            r#"{"schema":2}"#,
            r#"{"services":{}}"#,
            r#"{"schema":1,"services":7}"#,
        ] {
            std::fs::write(s.file(), text).unwrap();
            assert!(
                matches!(s.read(), Err(Error::StateUnreadable { .. })),
                "{text}"
            );
        }
        let _ = std::fs::remove_dir_all(s.dir());
    }

    #[test]
    fn recovery_uses_the_backup_and_keeps_the_bad_file() {
        let s = store("recover");
        let lock = s.lock(Duration::from_secs(1)).unwrap();
        let mut st = State::default();
        st.settings.image_verification_mode = VerificationMode::Off;
        lock.commit(&st).unwrap();
        lock.commit(&st).unwrap();
        std::fs::write(s.file(), "garbage").unwrap();
        let (got, msg) = lock.load_or_recover().unwrap();
        assert_eq!(got, st);
        assert!(msg.unwrap().contains("restored"));
        assert_eq!(lock.load().unwrap(), st);
        let corrupt: Vec<_> = std::fs::read_dir(s.dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("state.json.corrupt-")
            })
            .collect();
        assert_eq!(corrupt.len(), 1);
        assert_eq!(std::fs::read(corrupt[0].path()).unwrap(), b"garbage");
        let _ = std::fs::remove_dir_all(s.dir());
    }

    #[test]
    fn second_locker_waits_then_is_busy() {
        let s = store("busy");
        let _held = s.lock(Duration::from_secs(1)).unwrap();
        let start = Instant::now();
        let r = s.lock(Duration::from_millis(200));
        assert!(matches!(r, Err(Error::Busy(_))));
        assert!(start.elapsed() >= Duration::from_millis(200));
        let _ = std::fs::remove_dir_all(s.dir());
    }
}
