//! The controller: runs the registry's pipelines under one [`Supervisor`], applies the
//! management API's requests and the configuration directory's changes, and keeps what
//! each pipeline is doing (running, paused, failed and why) for the API to show.
//!
//! The supervisor is owned by one loop ([`Controller::run`]) on the pipelines' runtime;
//! requests reach it over a channel from the HTTP server's runtime ([`Handle`]). Work
//! that talks to PostgreSQL (preflight, dropping a slot) runs in the caller, outside the
//! loop, so a slow database never holds up other pipelines' requests.
//!
//! Invariants:
//! - The registry is written before the supervisor acts on a change, so a crash between
//!   the two starts the new state at the next start (never the old one again).
//! - A pipeline a file of the configuration directory defines is changed through its file
//!   only; pause and resume apply to every pipeline, and a pause outlives restarts.
//! - Deleting drops the slot and publication first: if that fails the pipeline stays
//!   registered (paused), so a retry can finish it; nothing is left half-deleted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use sluice_core::Finding;
use sluice_pg::{catalog, ConnInfo, Connection, PgError};
use sluice_pipeline::{
    preflight, Config, Directory, Ended, Outcome, PipelineStatus, RunContext, Supervisor,
    Undelivered, SHUTDOWN_DEADLINE,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::access::Access;
use crate::audit::Audit;
use crate::registry::{now_ms, toml_to_value, Entry, EntryError, Origin, Registry};
use crate::sealed::SecretKeys;
use crate::secrets::{redact, restore_secrets, Declared};
use crate::tokens::Tokens;

/// Why a request was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    #[error("no pipeline named {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The configuration is not valid: every problem, with what to change.
    #[error("the configuration is not valid: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The source or a sink failed a check that must pass: the findings, with fixes.
    #[error("the checks against the source and the sinks failed")]
    Refused(Vec<FindingView>),
    /// A server the request needs could not be reached or answered with an error.
    #[error("{0}")]
    Upstream(String),
    /// A delete stopped the pipeline but PostgreSQL did not drop its slot; the slot
    /// still holds WAL until someone drops it.
    #[error(
        "the pipeline is stopped (and paused), but its slot could not be dropped: {source}; {}",
        slot_fix(slot)
    )]
    SlotNotDropped {
        slot: String,
        #[source]
        source: Arc<PgError>,
    },
    #[error("{0}")]
    Internal(String),
}

impl ControlError {
    /// What the operator can do, where the error says.
    pub fn fix(&self) -> Option<String> {
        match self {
            ControlError::SlotNotDropped { slot, .. } => Some(slot_fix(slot)),
            _ => None,
        }
    }
}

fn slot_fix(slot: &str) -> String {
    format!("retry the delete, or delete with keep_slot=true and drop slot {slot} yourself")
}

/// A check's result, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FindingView {
    pub ok: bool,
    pub what: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// Whether it stops the pipeline from starting.
    pub blocking: bool,
}

impl From<&Finding> for FindingView {
    fn from(f: &Finding) -> FindingView {
        FindingView {
            ok: f.ok,
            what: f.what.clone(),
            fix: f.fix.clone(),
            blocking: f.blocking,
        }
    }
}

/// What a pipeline is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    Running,
    Paused,
    /// Its run ended with an error that needs an operator (the error says what to do).
    Failed {
        error: String,
    },
    /// Its checks failed at start; nothing was started.
    Refused {
        findings: Vec<FindingView>,
    },
    /// Its run ended by itself (e.g. `until` reached).
    Stopped,
}

/// The name of a [`RunState`], as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    Running,
    Paused,
    Failed,
    Refused,
    Stopped,
}

impl RunState {
    pub fn name(&self) -> StateName {
        match self {
            RunState::Running => StateName::Running,
            RunState::Paused => StateName::Paused,
            RunState::Failed { .. } => StateName::Failed,
            RunState::Refused { .. } => StateName::Refused,
            RunState::Stopped => StateName::Stopped,
        }
    }
}

/// A pipeline as the API lists it. One plain object (no union), so that client
/// generators give it one typed model: `state` names what it is doing, `error` and
/// `findings` say why when it failed or was refused.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PipelineView {
    pub name: String,
    pub origin: Origin,
    pub state: StateName,
    /// Why it failed (`state` = `failed`), with what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The checks that refused it (`state` = `refused`), with their fixes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub findings: Option<Vec<FindingView>>,
    /// What its sinks had not delivered when it last stopped (paused, stopped): it is in
    /// the log and goes out when the pipeline runs again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub undelivered: Vec<Undelivered>,
    pub slot: String,
    pub publication: String,
    pub tables: Vec<String>,
    /// Each sink's name and type.
    pub sinks: Vec<SinkView>,
    /// Present while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<PipelineStatus>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// The configuration with every secret redacted (in a single pipeline's view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SinkView {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

type Reply<T> = oneshot::Sender<Result<T, ControlError>>;

enum Request {
    /// Registers and starts (or replaces, for an update) a checked configuration.
    Put {
        entry: Entry,
        update: bool,
        reply: Reply<PipelineView>,
    },
    SetPaused {
        name: String,
        paused: bool,
        reply: Reply<PipelineView>,
    },
    /// Stops a pipeline ahead of its deletion and marks it paused; answers its config.
    Retire { name: String, reply: Reply<Config> },
    /// Removes a retired pipeline's entry and local data.
    Forget { name: String, reply: Reply<()> },
    View {
        name: Option<String>,
        reply: oneshot::Sender<Vec<PipelineView>>,
    },
}

/// How the API reaches the controller; cheap to clone.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Request>,
    registry: Arc<Registry>,
    pub tokens: Arc<Tokens>,
    pub access: Arc<Access>,
    pub audit: Arc<Audit>,
}

impl Handle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| ControlError::Internal("the server is shutting down".into()))?;
        rx.await
            .map_err(|_| ControlError::Internal("the server is shutting down".into()))
    }

    /// Checks `value` (validation, then the preflight of `sluice check`) and runs it as a
    /// new pipeline (`update`: in place of the one of the same name).
    pub async fn put(
        &self,
        value: Value,
        update: Option<&str>,
    ) -> Result<PipelineView, ControlError> {
        // An update may carry the redacted secrets a read gave: keep the stored ones.
        let value = match update.and_then(|n| self.registry.get(n)) {
            Some(stored) => restore_secrets(&value, &stored.config, Declared::current()),
            None => value,
        };
        let config = self
            .registry
            .config(&value)
            .map_err(ControlError::Invalid)?;
        if let Some(name) = update {
            if config.pipeline.name != name {
                return Err(ControlError::Invalid(vec![format!(
                    "pipeline.name {:?} differs from the pipeline being updated ({name:?}): a pipeline cannot be renamed (create a new one and delete this one)",
                    config.pipeline.name
                )]));
            }
        }
        let base = self.registry.data_dir(&config.pipeline.name);
        let findings = preflight::check_all(&config, &base)
            .await
            .map_err(|e| ControlError::Upstream(format!("cannot check the source: {e}")))?;
        if findings.iter().any(|f| !f.ok && f.blocking) {
            return Err(ControlError::Refused(
                findings.iter().map(FindingView::from).collect(),
            ));
        }
        let now = now_ms();
        let entry = Entry {
            name: config.pipeline.name.clone(),
            origin: Origin::Api,
            paused: false,
            config: value,
            created_ms: now,
            updated_ms: now,
        };
        self.ask(|reply| Request::Put {
            entry,
            update: update.is_some(),
            reply,
        })
        .await?
    }

    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<PipelineView, ControlError> {
        let name = name.to_string();
        self.ask(|reply| Request::SetPaused {
            name,
            paused,
            reply,
        })
        .await?
    }

    /// Stops and removes a pipeline: its slot and publication (unless `keep_slot`), its
    /// local data, its consume tokens. Returns what was dropped in PostgreSQL.
    pub async fn delete(&self, name: &str, keep_slot: bool) -> Result<Vec<String>, ControlError> {
        let n = name.to_string();
        let config = self
            .ask(|reply| Request::Retire { name: n, reply })
            .await??;
        let mut dropped = Vec::new();
        if !keep_slot {
            dropped = drop_slot(&config)
                .await
                .map_err(|e| ControlError::SlotNotDropped {
                    slot: config.slot(),
                    source: Arc::new(e),
                })?;
        }
        let n = name.to_string();
        self.ask(|reply| Request::Forget { name: n, reply })
            .await??;
        self.tokens
            .forget_pipeline(name)
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        Ok(dropped)
    }

    /// The stored source URL of pipeline `name`, secrets and all: for server-side use
    /// only (discovering its tables), never for an answer.
    pub fn source_url(&self, name: &str) -> Option<String> {
        let e = self.registry.get(name)?;
        e.config.pointer("/source/url")?.as_str().map(str::to_owned)
    }

    pub async fn list(&self) -> Result<Vec<PipelineView>, ControlError> {
        self.ask(|reply| Request::View { name: None, reply }).await
    }

    pub async fn get(&self, name: &str) -> Result<PipelineView, ControlError> {
        let n = name.to_string();
        self.ask(|reply| Request::View {
            name: Some(n),
            reply,
        })
        .await?
        .pop()
        .ok_or_else(|| ControlError::NotFound(name.to_string()))
    }

    /// The registry (for the data dir of a pipeline).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// Drops the slot and (when the pipeline made it) the publication of `config`.
async fn drop_slot(config: &Config) -> Result<Vec<String>, PgError> {
    let info = ConnInfo::parse(&config.source.url)?;
    let mut conn = Connection::connect(&info, false).await?;
    let own_publication = config
        .source
        .publication
        .is_none()
        .then(|| config.publication());
    let r = catalog::teardown(&mut conn, &config.slot(), own_publication.as_deref()).await;
    conn.close().await;
    r
}

/// The controller's state, owned by its loop.
pub struct Controller {
    registry: Arc<Registry>,
    directory: Arc<Directory>,
    supervisor: Supervisor,
    entries: BTreeMap<String, Entry>,
    states: HashMap<String, RunState>,
    /// What each stopped pipeline's sinks left in its log.
    left: HashMap<String, Vec<Undelivered>>,
    /// Pipelines being stopped on purpose (their end is not a failure).
    stopping: HashMap<String, Stopping>,
    config_dir: Option<PathBuf>,
    rx: mpsc::Receiver<Request>,
}

/// A pipeline being stopped on purpose. The loop does not wait for the stop (a sink that
/// cannot make progress would hold every other request up): who asked waits here, and
/// later requests for the same pipeline queue behind it, to be handled in order once it
/// has stopped.
#[derive(Default)]
struct Stopping {
    waiters: Vec<Waiter>,
    queued: VecDeque<Request>,
}

/// Who waits for a pipeline's stop, and what they are answered once it has stopped (and,
/// unless paused, started again).
enum Waiter {
    View {
        reply: Reply<PipelineView>,
        with_config: bool,
    },
    Retired {
        reply: Reply<Config>,
        config: Box<Config>,
    },
}

impl Controller {
    /// Opens the registry under `data_dir`; returns the controller, to run on the
    /// pipelines' runtime, and its handle for the API.
    pub fn open(
        data_dir: &Path,
        config_dir: Option<PathBuf>,
        directory: Arc<Directory>,
        tokens: Arc<Tokens>,
        access: Arc<Access>,
        keys: SecretKeys,
    ) -> std::io::Result<(Controller, Handle)> {
        let registry = Arc::new(Registry::open(data_dir, keys)?);
        let (tx, rx) = mpsc::channel(64);
        let (entries, bad) = registry.load()?;
        for b in bad {
            error!(entry = %b, "registry: an entry cannot be read; it is not run (fix or remove the file)");
        }
        let controller = Controller {
            registry: registry.clone(),
            supervisor: Supervisor::new(directory.clone()),
            directory,
            entries: entries.into_iter().map(|e| (e.name.clone(), e)).collect(),
            states: HashMap::new(),
            left: HashMap::new(),
            stopping: HashMap::new(),
            config_dir,
            rx,
        };
        Ok((
            controller,
            Handle {
                tx,
                registry,
                tokens,
                access,
                audit: Arc::new(Audit::open(data_dir)?),
            },
        ))
    }

    fn context(&self, entry: &Entry) -> RunContext {
        let base_dir = match &entry.origin {
            Origin::File { path } => path
                .parent()
                .map(Path::to_owned)
                .unwrap_or_else(|| PathBuf::from(".")),
            Origin::Api => self.registry.data_dir(&entry.name),
        };
        RunContext {
            base_dir,
            until: None,
            directory: self.directory.clone(),
        }
    }

    /// Starts `name` unless paused; records why it could not start.
    fn launch(&mut self, name: &str) {
        let Some(entry) = self.entries.get(name).cloned() else {
            return;
        };
        if entry.paused {
            self.states.insert(name.to_string(), RunState::Paused);
            return;
        }
        let config = match self.registry.config(&entry.config) {
            Ok(c) => c,
            Err(problems) => {
                let error = format!("the configuration is not valid: {}", problems.join("; "));
                error!(pipeline = %name, %error, "pipeline not started");
                self.states
                    .insert(name.to_string(), RunState::Failed { error });
                return;
            }
        };
        if let Err(e) = std::fs::create_dir_all(&config.pipeline.data_dir) {
            let error = format!("cannot create {}: {e}", config.pipeline.data_dir.display());
            self.states
                .insert(name.to_string(), RunState::Failed { error });
            return;
        }
        let ctx = self.context(&entry);
        match self.supervisor.start(config, ctx) {
            Ok(()) => {
                info!(pipeline = %name, "pipeline started");
                self.states.insert(name.to_string(), RunState::Running);
            }
            Err(e) => {
                self.states.insert(
                    name.to_string(),
                    RunState::Failed {
                        error: e.to_string(),
                    },
                );
            }
        }
    }

    /// Stops `name` if it runs and starts it again (unless paused, or gone) once it has
    /// stopped; `waiter` is answered then. Returns at once: the stop's end arrives in
    /// [`Self::ended`].
    fn restart(&mut self, name: &str, waiter: Option<Waiter>) {
        if self.supervisor.cancel(name) {
            let stopping = self.stopping.entry(name.to_string()).or_default();
            stopping.waiters.extend(waiter);
            return;
        }
        self.launch(name);
        if let Some(w) = waiter {
            self.answer(name, w);
        }
    }

    fn answer(&self, name: &str, waiter: Waiter) {
        match waiter {
            Waiter::View { reply, with_config } => {
                let view = self
                    .view(name, with_config)
                    .ok_or_else(|| ControlError::NotFound(name.to_string()));
                let _ = reply.send(view);
            }
            Waiter::Retired { reply, config } => {
                let _ = reply.send(Ok(*config));
            }
        }
    }

    fn ended(&mut self, (name, result): Ended) {
        if let Some(stopping) = self.stopping.remove(&name) {
            match result {
                Ok(Outcome::Done(left)) => {
                    self.left.insert(name.clone(), left);
                }
                Ok(_) => {}
                Err(e) => warn!(pipeline = %name, error = %e, "pipeline stopped with an error"),
            }
            self.launch(&name);
            for w in stopping.waiters {
                self.answer(&name, w);
            }
            // Requests that came during the stop, in order; one that stops the pipeline
            // again queues the rest behind its own stop.
            for req in stopping.queued {
                self.handle(req);
            }
            return;
        }
        let state = match result {
            Ok(Outcome::Done(left)) => {
                self.left.insert(name.clone(), left);
                RunState::Stopped
            }
            Ok(Outcome::Refused(findings)) => {
                warn!(pipeline = %name, "pipeline refused by its checks");
                RunState::Refused {
                    findings: findings.iter().map(FindingView::from).collect(),
                }
            }
            Ok(Outcome::Abandoned) => RunState::Failed {
                error: "the pipeline did not stop within its deadline; its unconfirmed work is sent again when it starts".into(),
            },
            Err(e) => {
                error!(pipeline = %name, error = %e, "pipeline stopped");
                RunState::Failed { error: e.to_string() }
            }
        };
        self.states.insert(name, state);
    }

    fn view(&self, name: &str, with_config: bool) -> Option<PipelineView> {
        let entry = self.entries.get(name)?;
        let parsed = self.registry.config(&entry.config).ok();
        let status = self
            .directory
            .running()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, e)| (e.status)());
        let (slot, publication, tables, sinks) = match &parsed {
            Some(c) => (
                c.slot(),
                c.publication(),
                c.source.tables.clone(),
                c.sinks
                    .iter()
                    .map(|s| SinkView {
                        name: s.name().to_string(),
                        kind: s.kind().to_string(),
                    })
                    .collect(),
            ),
            None => Default::default(),
        };
        let state = self.states.get(name).cloned().unwrap_or(RunState::Stopped);
        let (error, findings) = match &state {
            RunState::Failed { error } => (Some(error.clone()), None),
            RunState::Refused { findings } => (None, Some(findings.clone())),
            _ => (None, None),
        };
        Some(PipelineView {
            name: name.to_string(),
            origin: entry.origin.clone(),
            state: state.name(),
            error,
            findings,
            undelivered: match state {
                RunState::Running => Vec::new(),
                _ => self.left.get(name).cloned().unwrap_or_default(),
            },
            slot,
            publication,
            tables,
            sinks,
            status,
            created_ms: entry.created_ms,
            updated_ms: entry.updated_ms,
            config: with_config.then(|| redact(&entry.config, Declared::current())),
        })
    }

    fn save(&self, entry: &Entry) -> Result<(), ControlError> {
        self.registry.put(entry).map_err(|e| {
            ControlError::Internal(format!(
                "cannot write the registry ({e}): check the data dir's permissions and free space"
            ))
        })
    }

    fn file_owned(entry: &Entry) -> Option<ControlError> {
        match &entry.origin {
            Origin::File { path } => Some(ControlError::Conflict(format!(
                "pipeline {:?} is defined by {}: change or remove that file instead",
                entry.name,
                path.display()
            ))),
            Origin::Api => None,
        }
    }

    /// The pipeline a changing request is about.
    fn target(req: &Request) -> Option<&str> {
        match req {
            Request::Put { entry, .. } => Some(&entry.name),
            Request::SetPaused { name, .. }
            | Request::Retire { name, .. }
            | Request::Forget { name, .. } => Some(name),
            Request::View { .. } => None,
        }
    }

    fn handle(&mut self, req: Request) {
        if let Some(stopping) = Self::target(&req).and_then(|n| self.stopping.get_mut(n)) {
            stopping.queued.push_back(req);
            return;
        }
        match req {
            Request::Put {
                entry,
                update,
                reply,
            } => self.put(entry, update, reply),
            Request::SetPaused {
                name,
                paused,
                reply,
            } => match self.set_paused(&name, paused) {
                Ok(()) => self.restart(
                    &name,
                    Some(Waiter::View {
                        reply,
                        with_config: false,
                    }),
                ),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Request::Retire { name, reply } => match self.retire(&name) {
                Ok(config) => self.restart(
                    &name,
                    Some(Waiter::Retired {
                        reply,
                        config: Box::new(config),
                    }),
                ),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Request::Forget { name, reply } => {
                let r = self.forget(&name);
                let _ = reply.send(r);
            }
            Request::View { name, reply } => {
                let views = match name {
                    Some(n) => self.view(&n, true).into_iter().collect(),
                    None => self
                        .entries
                        .keys()
                        .filter_map(|n| self.view(n, false))
                        .collect(),
                };
                let _ = reply.send(views);
            }
        }
    }

    /// Registers `entry` (new, or in place of the one of its name) and restarts it.
    fn put(&mut self, mut entry: Entry, update: bool, reply: Reply<PipelineView>) {
        let name = entry.name.clone();
        let refused = match (self.entries.get(&name), update) {
            (Some(_), false) => Some(ControlError::Conflict(format!(
                "a pipeline named {name:?} exists: update it (PUT /v1/pipelines/{name}) or choose another name"
            ))),
            (None, true) => Some(ControlError::NotFound(name.clone())),
            (Some(old), true) => Self::file_owned(old),
            (None, false) => None,
        };
        if let Some(e) = refused {
            let _ = reply.send(Err(e));
            return;
        }
        if let Some(old) = self.entries.get(&name) {
            entry.created_ms = old.created_ms;
            entry.paused = old.paused;
        }
        if let Err(e) = self.save(&entry) {
            let _ = reply.send(Err(e));
            return;
        }
        self.entries.insert(name.clone(), entry);
        self.restart(
            &name,
            Some(Waiter::View {
                reply,
                with_config: true,
            }),
        );
    }

    /// Records `paused` in the registry; the caller restarts the pipeline.
    fn set_paused(&mut self, name: &str, paused: bool) -> Result<(), ControlError> {
        let mut entry = self
            .entries
            .get(name)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(name.to_string()))?;
        entry.paused = paused;
        entry.updated_ms = now_ms();
        self.save(&entry)?;
        self.entries.insert(name.to_string(), entry);
        Ok(())
    }

    /// Marks a pipeline paused ahead of its deletion; answers its configuration. The
    /// caller stops it.
    fn retire(&mut self, name: &str) -> Result<Config, ControlError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| ControlError::NotFound(name.to_string()))?;
        if let Some(e) = Self::file_owned(entry) {
            return Err(e);
        }
        let config = self
            .registry
            .config(&entry.config)
            .map_err(ControlError::Invalid)?;
        self.set_paused(name, true)?;
        Ok(config)
    }

    fn forget(&mut self, name: &str) -> Result<(), ControlError> {
        self.registry.remove(name).map_err(|e| {
            ControlError::Internal(format!("cannot remove the registry entry: {e}"))
        })?;
        self.entries.remove(name);
        self.states.remove(name);
        self.left.remove(name);
        let dir = self.registry.data_dir(name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(pipeline = %name, dir = %dir.display(), error = %e, "cannot remove the pipeline's data; remove it by hand");
            }
        }
        info!(pipeline = %name, "pipeline deleted");
        Ok(())
    }

    /// Brings the file-defined pipelines in line with the configuration directory: new
    /// files start, changed ones restart with their change, removed ones stop (their slot
    /// and data are kept; `sluice teardown` drops the slot).
    fn sync_files(&mut self) {
        let Some(dir) = self.config_dir.clone() else {
            return;
        };
        let files = match read_config_dir(&dir) {
            Ok(f) => f,
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "cannot read the configuration directory");
                return;
            }
        };
        let mut seen = std::collections::HashSet::new();
        for (path, value) in files {
            let value = match value {
                Ok(v) => v,
                Err(e) => {
                    // Keeps whatever runs from the file's last good version.
                    if let Some(e2) = self
                        .entries
                        .values()
                        .find(|e| e.origin == (Origin::File { path: path.clone() }))
                    {
                        seen.insert(e2.name.clone());
                    }
                    warn!(file = %path.display(), error = %e, "config file is not valid; keeping what runs");
                    continue;
                }
            };
            let Some(name) = value
                .pointer("/pipeline/name")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                warn!(file = %path.display(), "config file has no pipeline.name; ignored");
                continue;
            };
            let origin = Origin::File { path: path.clone() };
            match self.entries.get(&name) {
                Some(e) if e.origin != origin => {
                    warn!(file = %path.display(), pipeline = %name, "a pipeline of that name exists already (from the API or another file); this file is ignored");
                    continue;
                }
                Some(e) if e.config == value => {
                    seen.insert(name);
                    continue;
                }
                _ => {}
            }
            seen.insert(name.clone());
            if let Err(problems) = self.registry.config(&value) {
                warn!(file = %path.display(), problems = %problems.join("; "), "config file is not valid; keeping what runs");
                continue;
            }
            let now = now_ms();
            let old = self.entries.get(&name);
            let entry = Entry {
                name: name.clone(),
                origin,
                paused: old.is_some_and(|o| o.paused),
                config: value,
                created_ms: old.map_or(now, |o| o.created_ms),
                updated_ms: now,
            };
            if let Err(e) = self.save(&entry) {
                error!(pipeline = %name, error = %e, "cannot register the file's pipeline");
                continue;
            }
            info!(file = %path.display(), pipeline = %name, "config file applied");
            self.entries.insert(name.clone(), entry);
            self.restart(&name, None);
        }
        let gone: Vec<String> = self
            .entries
            .values()
            .filter(|e| matches!(e.origin, Origin::File { .. }) && !seen.contains(&e.name))
            .map(|e| e.name.clone())
            .collect();
        for name in gone {
            info!(pipeline = %name, "its config file is gone: stopping it (its slot and data are kept; `sluice teardown` drops the slot)");
            // Stopped without a start after it: the entry is gone by then.
            if self.supervisor.cancel(&name) {
                self.stopping.entry(name.clone()).or_default();
            }
            if let Err(e) = self.registry.remove(&name) {
                error!(pipeline = %name, error = %e, "cannot remove the registry entry");
                continue;
            }
            self.entries.remove(&name);
            self.states.remove(&name);
        }
    }

    /// Runs until `stop`: starts every registered pipeline that is not paused, then
    /// serves requests, watches the configuration directory and records how runs end.
    pub async fn run(mut self, stop: CancellationToken) {
        self.sync_files();
        for name in self.entries.keys().cloned().collect::<Vec<_>>() {
            if !self.supervisor.is_running(&name) {
                self.launch(&name);
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(req) = self.rx.recv() => self.handle(req),
                Some(ended) = self.supervisor.next() => self.ended(ended),
                _ = tick.tick() => {
                    self.supervisor.abort_overdue();
                    self.sync_files();
                }
            }
        }
        for (name, result) in self.supervisor.shutdown(SHUTDOWN_DEADLINE * 2).await {
            if let Err(e) = result {
                error!(pipeline = %name, error = %e, "pipeline stopped with an error");
            }
        }
    }
}

/// Every `*.toml` of `dir`, each as the registry's JSON value or why it is not one.
fn read_config_dir(dir: &Path) -> std::io::Result<Vec<(PathBuf, Result<Value, EntryError>)>> {
    let mut out = Vec::new();
    for f in std::fs::read_dir(dir)? {
        let path = f?.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let value = std::fs::read_to_string(&path)
            .map_err(EntryError::from)
            .and_then(|t| toml_to_value(&t));
        out.push((path, value));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
