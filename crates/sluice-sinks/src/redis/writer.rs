//! The sink's transactions, applied one at a time in the order they were submitted, on a
//! task of their own: the sink reads and prepares the next batch while Redis applies this
//! one.
//!
//! Invariant: once a transaction fails, none submitted after it is sent; they are
//! answered with an error. The sink then reads its high-water mark again and starts a new
//! writer, so what applies is always a prefix of what was submitted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redis::aio::ConnectionManager;
use sluice_core::Fault;
use tokio::sync::{mpsc, oneshot};

use super::classify;

/// The answer to one transaction: how many hash merges found no row.
pub(super) type Reply = oneshot::Receiver<Result<i64, Fault>>;

struct Job {
    /// `None`: a barrier, answered once everything before it is applied.
    pipe: Option<redis::Pipeline>,
    reply: oneshot::Sender<Result<i64, Fault>>,
}

pub(super) struct Writer {
    jobs: mpsc::UnboundedSender<Job>,
    failed: Arc<AtomicBool>,
}

impl Writer {
    pub fn start(mut conn: ConnectionManager) -> Writer {
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let result = if flag.load(Ordering::Acquire) {
                    Err(Fault::transient(
                        "redis: not applied, a transaction before it failed",
                    ))
                } else if let Some(pipe) = job.pipe {
                    match pipe.query_async::<Vec<i64>>(&mut conn).await {
                        Ok(merges) => Ok(merges.iter().sum()),
                        Err(e) => {
                            flag.store(true, Ordering::Release);
                            Err(classify(e))
                        }
                    }
                } else {
                    Ok(0)
                };
                let _ = job.reply.send(result);
            }
        });
        Writer { jobs, failed }
    }

    /// Queues `pipe` after everything submitted before.
    pub fn submit(&self, pipe: redis::Pipeline) -> Reply {
        self.queue(Some(pipe))
    }

    /// Answered once everything submitted before is applied (or has failed): before the
    /// sink reads or removes keys itself.
    pub fn barrier(&self) -> Reply {
        self.queue(None)
    }

    fn queue(&self, pipe: Option<redis::Pipeline>) -> Reply {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(Job { pipe, reply }) {
            let _ = job
                .reply
                .send(Err(Fault::transient("redis: the writer stopped")));
        }
        rx
    }

    /// Whether a transaction failed (nothing after it was applied).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// The answer to a submitted transaction.
pub(super) async fn answer(reply: Reply) -> Result<i64, Fault> {
    reply
        .await
        .unwrap_or_else(|_| Err(Fault::transient("redis: the writer stopped")))
}
