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
/// Invariant: while the run goes on, the lock's session is alive; a session lost (the
/// database restarted, the network failed) stops the run at once, since another instance
/// may hold the lock by then.
pub struct PipelineLock {
    conn: sluice_pg::Connection,
}

impl PipelineLock {
    /// Waits as a standby until the lock is free; `None` when cancelled first.
    pub async fn acquire(
        conninfo: &sluice_pg::ConnInfo,
        pipeline: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<PipelineLock>, Fault> {
        let mut conn = sluice_pg::Connection::connect(conninfo, false).await?;
        if !sluice_pg::source::acquire_lock(&mut conn, pipeline, cancel).await? {
            conn.close().await;
            return Ok(None);
        }
        Ok(Some(PipelineLock { conn }))
    }

    /// Keeps the lock's session alive until `cancel`; if it is lost, records why in
    /// `failure` and cancels the run.
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
                if let Err(e) = self.conn.query("SELECT 1").await {
                    let fault = Fault::transient("lost the pipeline's lock (its database session ended): stopped, so that no two instances deliver from the shared log; start it again to wait as a standby").caused_by(e);
                    failure.lock().expect("failure lock").get_or_insert(fault);
                    cancel.cancel();
                    return;
                }
            }
            self.conn.close().await;
        })
    }
}
