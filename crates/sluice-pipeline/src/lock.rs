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
