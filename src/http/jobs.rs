//! Jobs: every [`Command`] (API or form) is queued to the one mutation thread,
//! which runs the same operations as the CLI under the state lock, one at
//! a time. A job keeps its progress lines and its result in memory, so the
//! job page and `GET /api/jobs/<id>` can follow it; reads never wait for it.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::host::RealHost;
use crate::ops::{Command, Ctx};
use crate::store::StoreClient;
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Operations wait this long for the lock: the queue already serialises
/// the server's own, so only a CLI command or boot could hold it.
pub const OP_LOCK_WAIT: Duration = Duration::from_secs(10 * 60);
/// Progress lines kept per job (the last ones).
const MAX_LINES: usize = 500;
/// Jobs kept; the oldest finished ones are forgotten first.
const MAX_JOBS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Queued,
    Running,
    Done,
}

/// How a job ended: the outcome, or the HTTP status and the error body.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ok(Value),
    Failed { status: u16, body: Value },
}

/// The part of a job that changes while it runs.
#[derive(Debug, Clone)]
pub struct JobState {
    pub phase: Phase,
    pub lines: VecDeque<String>,
    /// Lines dropped from the front to keep [`MAX_LINES`].
    pub dropped: usize,
    pub outcome: Option<Outcome>,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
}

pub struct Job {
    pub id: String,
    pub title: String,
    pub created_at: u64,
    state: Mutex<JobState>,
    done: Condvar,
}

impl Job {
    pub fn snapshot(&self) -> JobState {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push_line(&self, line: &str) {
        let mut s = self.lock();
        s.lines.push_back(line.to_string());
        if s.lines.len() > MAX_LINES {
            s.lines.pop_front();
            s.dropped += 1;
        }
    }

    fn set_phase(&self, phase: Phase) {
        let mut s = self.lock();
        s.phase = phase;
        s.started_at = Some(crate::files::now_unix());
    }

    fn finish(&self, outcome: Outcome) {
        let mut s = self.lock();
        s.phase = Phase::Done;
        s.outcome = Some(outcome);
        s.finished_at = Some(crate::files::now_unix());
        self.done.notify_all();
    }

    /// Blocks until the job has ended.
    pub fn wait(&self) -> Outcome {
        let mut s = self.lock();
        loop {
            if let Some(o) = &s.outcome {
                return o.clone();
            }
            s = self.done.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// `GET /api/jobs/<id>`.
    pub fn to_json(&self) -> Value {
        let s = self.snapshot();
        let mut v = Map::new();
        v.insert("id".into(), json!(self.id));
        v.insert("title".into(), json!(self.title));
        v.insert(
            "state".into(),
            json!(match s.phase {
                Phase::Queued => "queued",
                Phase::Running => "running",
                Phase::Done => "done",
            }),
        );
        v.insert("created_at".into(), json!(self.created_at));
        v.insert("started_at".into(), json!(s.started_at));
        v.insert("finished_at".into(), json!(s.finished_at));
        v.insert("lines".into(), json!(s.lines));
        v.insert("lines_dropped".into(), json!(s.dropped));
        match &s.outcome {
            None => {
                v.insert("ok".into(), Value::Null);
            }
            Some(Outcome::Ok(r)) => {
                v.insert("ok".into(), json!(true));
                v.insert("result".into(), r.clone());
            }
            Some(Outcome::Failed { status, body }) => {
                v.insert("ok".into(), json!(false));
                v.insert("status".into(), json!(status));
                v.insert("error".into(), body["error"].clone());
                v.insert("errors".into(), body["errors"].clone());
            }
        }
        Value::Object(v)
    }
}

/// The job table and the queue to the mutation thread.
pub struct Jobs {
    table: Mutex<VecDeque<Arc<Job>>>,
    queue: Mutex<Sender<(Arc<Job>, Command)>>,
}

impl Jobs {
    /// Starts the mutation thread and returns the table that feeds it.
    pub fn start(config: Arc<Config>, store: Arc<StoreClient>) -> Result<Arc<Jobs>> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("mutations".into())
            .spawn(move || run_queue(&config, &store, rx))
            .map_err(|e| Error::failed("start the mutation thread", e))?;
        Ok(Arc::new(Jobs {
            table: Mutex::new(VecDeque::new()),
            queue: Mutex::new(tx),
        }))
    }

    /// Queues `m` as a new job.
    pub fn submit(&self, m: Command) -> Result<Arc<Job>> {
        let job = Arc::new(Job {
            id: crate::token::random_hex(12)?,
            title: m.title(),
            created_at: crate::files::now_unix(),
            state: Mutex::new(JobState {
                phase: Phase::Queued,
                lines: VecDeque::new(),
                dropped: 0,
                outcome: None,
                started_at: None,
                finished_at: None,
            }),
            done: Condvar::new(),
        });
        self.remember(job.clone());
        let sent = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((job.clone(), m));
        if sent.is_err() {
            let e = Error::failed("queue the operation", "the mutation thread has stopped");
            job.finish(failure(&e));
            return Err(e);
        }
        Ok(job)
    }

    fn remember(&self, job: Arc<Job>) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.push_back(job);
        while t.len() > MAX_JOBS {
            match t.iter().position(|j| j.snapshot().phase == Phase::Done) {
                Some(i) => {
                    t.remove(i);
                }
                None => break,
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.iter().find(|j| j.id == id).cloned()
    }

    /// Jobs not yet done, oldest first.
    pub fn active(&self) -> Vec<Arc<Job>> {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.iter()
            .filter(|j| j.snapshot().phase != Phase::Done)
            .cloned()
            .collect()
    }

    /// The last `n` jobs, newest first.
    pub fn recent(&self, n: usize) -> Vec<Arc<Job>> {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.iter().rev().take(n).cloned().collect()
    }
}

/// The error body of a failed job: the JSON error shape of spec §12.
pub fn failure(e: &Error) -> Outcome {
    Outcome::Failed {
        status: e.http_status(),
        body: json!({"ok": false, "error": e.to_string(), "errors": e.details()}),
    }
}

/// The mutation thread: one job at a time, in order. A panicking
/// operation fails its job and the thread carries on.
fn run_queue(config: &Config, store: &StoreClient, rx: Receiver<(Arc<Job>, Command)>) {
    for (job, m) in rx {
        job.set_phase(Phase::Running);
        log::info!("job {}: {}", job.id, job.title);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut progress = |line: &str| job.push_line(line);
            let mut ctx = Ctx {
                config,
                host: &RealHost,
                store,
                progress: &mut progress,
            };
            m.run(&mut ctx, OP_LOCK_WAIT).map(|o| o.to_json())
        }));
        let outcome = match result {
            Ok(Ok(v)) => Outcome::Ok(v),
            Ok(Err(e)) => {
                log::warn!("job {} ({}) failed: {e}", job.id, job.title);
                failure(&e)
            }
            Err(_) => {
                log::error!("job {} ({}) panicked", job.id, job.title);
                failure(&Error::failed(&job.title, "internal error (see the log)"))
            }
        };
        job.finish(outcome);
    }
}
