//! The supervisor: the registry of the pipelines one process runs. Each pipeline runs as
//! a named task in one `JoinSet`, under a child of the supervisor's cancellation token,
//! so it can be started, stopped and reconfigured on its own; one failing stops only
//! itself. The HTTP server is not a pipeline's: it reads the shared [`Directory`] and
//! outlives them all.
//!
//! Invariants:
//! - At most one run per pipeline name; a reconfigure stops the old run (its drain
//!   included) before the new one starts, so two runs never share a slot or data_dir.
//! - Stopping is bounded: a run that does not end within the deadline is aborted (its
//!   unconfirmed work is sent again by the slot next time).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::Fault;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::directory::Directory;
use crate::run::{run, Outcome, RunContext, SHUTDOWN_DEADLINE};

/// How one pipeline's run ended.
pub type Ended = (String, Result<Outcome, Fault>);

struct Running {
    cancel: CancellationToken,
    abort: AbortHandle,
    config: Config,
    /// Once asked to stop: when it is aborted if it has not ended.
    stop_by: Option<tokio::time::Instant>,
}

/// Runs pipelines until told to stop.
pub struct Supervisor {
    directory: Arc<Directory>,
    root: CancellationToken,
    tasks: JoinSet<Ended>,
    running: HashMap<String, Running>,
}

impl Supervisor {
    pub fn new(directory: Arc<Directory>) -> Supervisor {
        Supervisor {
            directory,
            root: CancellationToken::new(),
            tasks: JoinSet::new(),
            running: HashMap::new(),
        }
    }

    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    /// Whether a pipeline of that name is running.
    pub fn is_running(&self, name: &str) -> bool {
        self.running.contains_key(name)
    }

    /// The configuration a pipeline runs with.
    pub fn config(&self, name: &str) -> Option<&Config> {
        self.running.get(name).map(|r| &r.config)
    }

    /// Starts `config` (it must be valid). Fails if a pipeline of that name runs.
    pub fn start(&mut self, config: Config, ctx: RunContext) -> Result<(), Fault> {
        let name = config.pipeline.name.clone();
        if self.running.contains_key(&name) {
            return Err(Fault::definite(
                format!("pipeline {name:?} is already running"),
                "stop it first, or reconfigure it",
            ));
        }
        let cancel = self.root.child_token();
        self.directory.configure(&name);
        let (task_cancel, task_config, task_name) = (cancel.clone(), config.clone(), name.clone());
        let abort = self.tasks.spawn(async move {
            let r = run(&task_config, &ctx, task_cancel).await;
            (task_name, r)
        });
        self.running.insert(
            name,
            Running {
                cancel,
                abort,
                config,
                stop_by: None,
            },
        );
        Ok(())
    }

    /// Asks a pipeline to stop and returns at once; its end comes through [`Self::next`]
    /// like any other. `false` if it does not run.
    pub fn cancel(&mut self, name: &str) -> bool {
        let Some(r) = self.running.get_mut(name) else {
            return false;
        };
        self.directory.unconfigure(name);
        r.cancel.cancel();
        // The run's own deadlines cover the source and the drain; this one is the last
        // word, for a run stuck elsewhere.
        r.stop_by
            .get_or_insert_with(|| tokio::time::Instant::now() + SHUTDOWN_DEADLINE * 3);
        true
    }

    /// Aborts the runs asked to stop that are past their deadline; their ends come
    /// through [`Self::next`] as abandoned.
    pub fn abort_overdue(&mut self) {
        let now = tokio::time::Instant::now();
        for (name, r) in &self.running {
            if r.stop_by.is_some_and(|t| t <= now) && !r.abort.is_finished() {
                error!(pipeline = %name, "pipeline did not stop within its deadline; aborting it");
                r.abort.abort();
            }
        }
    }

    /// Stops a pipeline and waits (bounded) for its run to end. Other pipelines' ends
    /// met while waiting are returned too, so none is lost.
    pub async fn stop(&mut self, name: &str) -> Vec<Ended> {
        let Some(r) = self.running.get(name) else {
            return Vec::new();
        };
        self.directory.unconfigure(name);
        r.cancel.cancel();
        let mut ended = Vec::new();
        // The run's own deadlines cover the source and the drain; this one is the last
        // word, for a run stuck elsewhere.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_DEADLINE * 3;
        while self.running.contains_key(name) {
            match tokio::time::timeout_at(deadline, self.next()).await {
                Ok(Some(e)) => ended.push(e),
                Ok(None) => break,
                Err(_) => {
                    error!(pipeline = %name, "pipeline did not stop within its deadline; aborting it");
                    if let Some(r) = self.running.remove(name) {
                        r.abort.abort();
                    }
                    self.directory.withdraw(name);
                }
            }
        }
        ended
    }

    /// Runs `config` in place of the running pipeline of the same name.
    pub async fn reconfigure(
        &mut self,
        config: Config,
        ctx: RunContext,
    ) -> Result<Vec<Ended>, Fault> {
        let name = config.pipeline.name.clone();
        info!(pipeline = %name, "configuration changed; restarting the pipeline with it");
        let ended = self.stop(&name).await;
        self.start(config, ctx)?;
        Ok(ended)
    }

    /// The next pipeline whose run ended; `None` when none runs.
    pub async fn next(&mut self) -> Option<Ended> {
        loop {
            let joined = self.tasks.join_next().await?;
            match joined {
                Ok((name, result)) => {
                    self.running.remove(&name);
                    self.directory.unconfigure(&name);
                    self.directory.withdraw(&name);
                    return Some((name, result));
                }
                // Aborted (by `stop`, already removed, or past its deadline) or panicked.
                Err(e) => {
                    let name = self
                        .running
                        .iter()
                        .find(|(_, r)| r.abort.id() == e.id())
                        .map(|(n, _)| n.clone());
                    if let Some(name) = name {
                        self.running.remove(&name);
                        self.directory.unconfigure(&name);
                        self.directory.withdraw(&name);
                        let result = if e.is_panic() {
                            Err(Fault::fatal("the pipeline task panicked"))
                        } else {
                            Ok(Outcome::Abandoned)
                        };
                        return Some((name, result));
                    }
                }
            }
        }
    }

    /// Stops every pipeline, bounded by the deadline; returns how each ended.
    pub async fn shutdown(mut self, deadline: Duration) -> Vec<Ended> {
        self.root.cancel();
        let mut ended = Vec::new();
        let until = tokio::time::Instant::now() + deadline;
        while !self.running.is_empty() {
            match tokio::time::timeout_at(until, self.next()).await {
                Ok(Some(e)) => ended.push(e),
                Ok(None) => break,
                Err(_) => {
                    warn!(
                        left = self.running.len(),
                        "pipelines did not stop within the deadline; aborting them"
                    );
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        ended
    }
}
