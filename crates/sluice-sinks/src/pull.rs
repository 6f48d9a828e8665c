//! HTTP pull consumers: the delivery engine offers records to a queue that consumers
//! `receive` from and `ack` or `nack` by id.
//!
//! Invariants:
//! - A record offered here is a delivery in flight: the engine offers one record per key
//!   at a time, so consumers sharing the sink (competing consumers) never hold two
//!   records of one key at once, and the per-key order holds.
//! - A received record is leased for its visibility timeout; unanswered by then, it is a
//!   failed attempt and the engine offers it again (with backoff, counting towards the
//!   sink's retry limit). A nack is a failed attempt too, retried after its delay.
//! - An ack for an id that is not leased (expired, or never received) changes nothing and
//!   is reported as such.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use sluice_core::{Fault, Finding};
use sluice_delivery::{Delivery, DeliveryConfig, Failure, Item, Target};
use tokio::sync::{oneshot, Notify};

use crate::{finding_for, Built, Capabilities, Context, Events, SinkSpec};

/// `type = "pull"`: records pulled over HTTP by consumers (`POST
/// /v1/sinks/<name>/receive`, `ack`, `nack`), with per-key order across competing
/// consumers.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullConfig {
    /// Unique name of the sink within the pipeline (the URL path).
    pub name: String,
    /// Tables this sink takes (default: all, unless `topics` is set).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Outbox topics this sink takes.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Debezium-layout outbox tables routed as events.
    #[serde(default)]
    pub outbox_tables: Vec<String>,
    /// Delete an `outbox_tables` row from the source once every sink that takes its
    /// table has finished it.
    #[serde(default)]
    pub delete_delivered: bool,
    /// Records on offer at once, retries, and the waiting room (`concurrency` is the
    /// number of records consumers may hold at once).
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

impl SinkSpec for PullConfig {
    const DESCRIPTION: &'static str = "An HTTP pull queue: consumers receive records, acknowledge or refuse them; a failing key waits in the waiting room.";
    const CAPABILITIES: Capabilities = Capabilities {
        waiting_room: true,
        served: true,
        outbox: true,
        ..Capabilities::NONE
    };

    fn name(&self) -> &str {
        &self.name
    }

    fn tables(&self) -> &[String] {
        &self.tables
    }

    fn validate(&self, errs: &mut Vec<String>) {
        self.delivery.validate(&self.name, errs);
    }

    async fn check(&self, _ctx: &Context<'_>) -> Vec<Finding> {
        vec![Finding::pass(finding_for(
            &self.name,
            "served by the HTTP server",
        ))]
    }

    async fn build(&self, _ctx: &Context<'_>) -> Result<Built, Fault> {
        let queue = PullQueue::new();
        Ok(Built::Engine {
            target: Arc::new(PullTarget(queue.clone())),
            batch: 1,
            pull: Some(queue),
        })
    }

    fn events(&self) -> Option<Events<'_>> {
        Some(Events {
            topics: &self.topics,
            outbox_tables: &self.outbox_tables,
            delete_delivered: self.delete_delivered,
            delivery: &self.delivery,
        })
    }
}

enum Answer {
    Ack,
    Nack(Option<Duration>),
    Expired,
}

struct Offer {
    item: Arc<Item>,
    tx: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Offer>,
    /// By record id: the offer and its lease's number (a newer lease supersedes a timer).
    leased: HashMap<String, (Offer, u64)>,
    leases: u64,
}

/// The records on offer to one pull sink's consumers.
#[derive(Default)]
pub struct PullQueue {
    state: Mutex<State>,
    offered: Notify,
}

impl PullQueue {
    pub fn new() -> Arc<PullQueue> {
        Arc::new(PullQueue::default())
    }

    /// Up to `max` records, waiting up to `wait` for the first; each is leased for
    /// `visibility`.
    pub async fn receive(
        self: &Arc<Self>,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Vec<Arc<Item>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let offered = self.offered.notified();
            tokio::pin!(offered);
            offered.as_mut().enable();
            let taken = self.take(max, visibility);
            if !taken.is_empty() || tokio::time::Instant::now() >= deadline {
                return taken;
            }
            if tokio::time::timeout_at(deadline, offered).await.is_err() {
                return self.take(max, visibility);
            }
        }
    }

    fn take(self: &Arc<Self>, max: usize, visibility: Duration) -> Vec<Arc<Item>> {
        let mut st = self.state.lock().expect("pull lock");
        let mut out = Vec::new();
        while out.len() < max {
            let Some(offer) = st.ready.pop_front() else {
                break;
            };
            if offer.tx.is_closed() {
                continue; // the engine stopped waiting (shutdown)
            }
            st.leases += 1;
            let lease = st.leases;
            let id = offer.item.id.to_string();
            out.push(offer.item.clone());
            st.leased.insert(id.clone(), (offer, lease));
            let queue = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(visibility).await;
                let mut st = queue.state.lock().expect("pull lock");
                if st.leased.get(&id).is_some_and(|(_, l)| *l == lease) {
                    let (offer, _) = st.leased.remove(&id).expect("checked");
                    let _ = offer.tx.send(Answer::Expired);
                }
            });
        }
        out
    }

    fn answer(&self, ids: &[String], answer: impl Fn() -> Answer) -> usize {
        let mut st = self.state.lock().expect("pull lock");
        let mut n = 0;
        for id in ids {
            if let Some((offer, _)) = st.leased.remove(id) {
                if offer.tx.send(answer()).is_ok() {
                    n += 1;
                }
            }
        }
        n
    }

    /// Acknowledges leased records; returns how many were leased.
    pub fn ack(&self, ids: &[String]) -> usize {
        self.answer(ids, || Answer::Ack)
    }

    /// Hands leased records back, to be offered again after `delay` (else the backoff).
    pub fn nack(&self, ids: &[String], delay: Option<Duration>) -> usize {
        self.answer(ids, || Answer::Nack(delay))
    }

    /// Records on offer and leased, for metrics.
    pub fn depth(&self) -> (usize, usize) {
        let st = self.state.lock().expect("pull lock");
        (st.ready.len(), st.leased.len())
    }
}

/// The engine's side of a pull sink.
pub struct PullTarget(pub Arc<PullQueue>);

impl Target for PullTarget {
    fn deliver(&self, items: Vec<Arc<Item>>) -> Delivery {
        let queue = self.0.clone();
        Box::pin(async move {
            let mut answers = Vec::with_capacity(items.len());
            {
                let mut st = queue.state.lock().expect("pull lock");
                for item in items {
                    let (tx, rx) = oneshot::channel();
                    st.ready.push_back(Offer { item, tx });
                    answers.push(rx);
                }
            }
            queue.offered.notify_waiters();
            let mut result = Ok(());
            for rx in answers {
                let r = match rx.await {
                    Ok(Answer::Ack) => Ok(()),
                    Ok(Answer::Nack(after)) => Err(Failure::Retry {
                        error: "nacked by a consumer".into(),
                        after,
                    }),
                    Ok(Answer::Expired) => Err(Failure::Retry {
                        error: "not acknowledged within the visibility timeout".into(),
                        after: Some(Duration::ZERO),
                    }),
                    Err(_) => Err(Failure::Retry {
                        error: "the offer was withdrawn".into(),
                        after: None,
                    }),
                };
                if result.is_ok() {
                    result = r;
                }
            }
            result
        })
    }
}
