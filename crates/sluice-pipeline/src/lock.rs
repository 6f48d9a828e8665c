//! Only one instance uses a data_dir at a time: an exclusive lock on `data_dir/lock`
//! (`File::try_lock`, flock on Linux). A standby on
//! the same machine waits there, touching nothing, and takes over when the lock is freed.

use std::path::Path;
use std::time::Duration;

use sluice_core::Fault;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Holds `data_dir/lock` while alive.
pub struct DataDirLock(#[allow(dead_code)] std::fs::File);

impl DataDirLock {
    /// Waits for the lock; `None` when cancelled first.
    pub async fn acquire(dir: &Path, cancel: &CancellationToken) -> Result<Option<Self>, Fault> {
        let path = dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Fault::from(e).within(format_args!("cannot open {}", path.display())))?;
        let mut announced = false;
        loop {
            match file.try_lock() {
                Ok(()) => {
                    if announced {
                        info!("took over the data_dir from the instance that held it");
                    }
                    return Ok(Some(DataDirLock(file)));
                }
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(
                        Fault::from(e).within(format_args!("cannot lock {}", path.display()))
                    )
                }
            }
            if !announced {
                info!(data_dir = %dir.display(), "another instance is active on this data_dir; waiting as a standby");
                announced = true;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

/// The pipeline's PostgreSQL advisory lock held by the run itself, for a log shared
/// between machines (JetStream): instances on other machines have data_dirs of their own,
/// so the data_dir lock does not keep them apart, and a standby's sinks must not deliver
/// from the shared log before it is the active instance. The source then takes no lock of
/// its own.
///
/// Invariants:
/// - Waiting for the lock outlasts a database that restarts (connection failures are
///   retried); only cancellation ends the wait.
/// - While the run goes on, the lock is held. When its session ends (the database
///   restarted, the network failed), the lock is taken again at once if it is free; if
///   another instance holds it by then, the run stops, so two instances never deliver
///   from the shared log together. (The stream itself refuses a second writer.)
pub struct PipelineLock {
    conn: sluice_pg::Connection,
    conninfo: sluice_pg::ConnInfo,
    pipeline: String,
}

/// Waits after a failed attempt to reach the database.
const RETRY: sluice_core::Backoff =
    sluice_core::Backoff::doubling(Duration::from_millis(100), Duration::from_secs(5));

impl PipelineLock {
    /// Waits as a standby until the lock is free; `None` when cancelled first.
    pub async fn acquire(
        conninfo: &sluice_pg::ConnInfo,
        pipeline: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<PipelineLock>, Fault> {
        let mut retry = RETRY.start();
        loop {
            let attempt = async {
                let mut conn = sluice_pg::Connection::connect(conninfo, false).await?;
                let held = sluice_pg::source::acquire_lock(&mut conn, pipeline, cancel).await?;
                Ok::<_, sluice_pg::PgError>((conn, held))
            };
            match attempt.await {
                Ok((conn, true)) => {
                    return Ok(Some(PipelineLock {
                        conn,
                        conninfo: conninfo.clone(),
                        pipeline: pipeline.to_owned(),
                    }))
                }
                Ok((conn, false)) => {
                    conn.close().await;
                    return Ok(None);
                }
                Err(e) if e.class() == sluice_core::ErrorClass::Transient => {
                    tracing::warn!(error = %e, "the pipeline's lock: the database cannot be reached; trying again");
                }
                Err(e) => return Err(e.into()),
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(None),
                _ = tokio::time::sleep(retry.next_delay()) => {}
            }
        }
    }

    /// Keeps the lock until `cancel`; if it cannot be kept (another instance took it, or
    /// a definite error), records why in `failure` and cancels the run.
    pub fn hold(
        mut self,
        failure: crate::sinks::FailureSlot,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                if self.conn.query("SELECT 1").await.is_ok() {
                    continue;
                }
                tracing::warn!("the pipeline's lock: its session ended; taking the lock again");
                match self.take_again(&cancel).await {
                    Ok(true) => tracing::info!("the pipeline's lock: held again"),
                    Ok(false) => return,
                    Err(fault) => {
                        failure.lock().expect("failure lock").get_or_insert(fault);
                        cancel.cancel();
                        return;
                    }
                }
            }
            self.conn.close().await;
        })
    }

    /// A new session with the lock: `Ok(false)` when cancelled first, an error when
    /// another instance holds the lock.
    async fn take_again(&mut self, cancel: &CancellationToken) -> Result<bool, Fault> {
        let mut retry = RETRY.start();
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(false),
                _ = tokio::time::sleep(retry.next_delay()) => {}
            }
            let Ok(mut conn) = sluice_pg::Connection::connect(&self.conninfo, false).await else {
                continue;
            };
            match sluice_pg::source::try_lock(&mut conn, &self.pipeline).await {
                Ok(true) => {
                    self.conn = conn;
                    return Ok(true);
                }
                Ok(false) => {
                    conn.close().await;
                    return Err(Fault::transient("another instance of the pipeline took its lock while this one's database session was down: stopped, so that no two instances deliver from the shared log; start it again to wait as a standby"));
                }
                Err(_) => continue,
            }
        }
    }
}
