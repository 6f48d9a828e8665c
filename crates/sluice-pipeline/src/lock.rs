//! Only one instance uses a data_dir at a time: an flock on `data_dir/lock`. A standby on
//! the same machine waits there, touching nothing, and takes over when the lock is freed.

use std::path::Path;
use std::time::Duration;

use sluice_core::Fault;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Holds `data_dir/lock` (flock) while alive.
pub struct DataDirLock(#[allow(dead_code)] std::fs::File);

impl DataDirLock {
    /// Waits for the lock; `None` when cancelled first.
    pub async fn acquire(dir: &Path, cancel: &CancellationToken) -> Result<Option<Self>, Fault> {
        use std::os::fd::AsRawFd;
        let path = dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Fault::from(e).within(format_args!("cannot open {}", path.display())))?;
        let mut announced = false;
        loop {
            // SAFETY: flock on a descriptor this function owns; no memory is involved.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                if announced {
                    info!("took over the data_dir from the instance that held it");
                }
                return Ok(Some(DataDirLock(file)));
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(Fault::from(e).within(format_args!("cannot lock {}", path.display())));
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
