//! A reader of the whole log: an ordered consumer on every partition's subject, messages
//! gathered into whole groups on a task of the reader's own, records returned in
//! position order.
//!
//! Invariants:
//! - Only whole groups are returned; a short group (a writer that stopped mid-group) is
//!   dropped when the next group starts, and its records come again in that group.
//! - Records are returned in position order and only below the durable end the writer
//!   published, as the embedded log's readers do.
//! - `read` returns what has been received (it never waits); a read that moves nothing
//!   while the durable end is ahead means records on their way, and the consumer waits
//!   (`wait`) rather than asking again. `log_end` is the durable end, as for the embedded
//!   log: a drain runs until the reader reaches it.
//! - A server that is down or electing a leader is waited out (the consumer is made
//!   again from the next group); only a damaged message ends the reader with an error.
//! - No message is skipped: the consumer acknowledges nothing, so one lost on its way
//!   would be passed over; a gap in its consumer sequence makes the reader start again
//!   from its last whole group.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use sluice_core::{Backoff, Fault, Op};
use sluice_log::frame::{self, FRAME_HEADER};
use sluice_log::{End, LogError, LogRead, RecordBatch, Waiting};
use tokio::sync::{mpsc, watch};

use crate::group::{self, GroupHead, GROUP_HEADER, PART_HEADER};
use crate::log::Shared;

/// Whole groups read ahead of the consumer of this reader.
const READ_AHEAD: usize = 16;
/// Bytes one pull asks the server for (a message may be larger: it still comes).
const READ_BYTES: usize = 8 << 20;

/// A whole group, its frames in position order.
struct Group {
    head: GroupHead,
    frames: Vec<Bytes>,
}

pub(crate) struct JsReader {
    next: u64,
    end: watch::Receiver<End>,
    groups: mpsc::Receiver<Result<Group, LogError>>,
    current: Option<(Group, usize)>,
    ahead: VecDeque<Group>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JsReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JsReader {
    pub fn start(shared: Arc<Shared>, from: u64) -> JsReader {
        let (tx, groups) = mpsc::channel(READ_AHEAD);
        let end = shared.end.subscribe();
        let task = tokio::spawn(fetch(shared, from, tx));
        JsReader {
            next: from,
            end,
            groups,
            current: None,
            ahead: VecDeque::new(),
            task,
        }
    }

    /// Moves to the next group with a record at or after `next`, if one was received.
    fn advance(&mut self) -> Result<bool, LogError> {
        loop {
            if let Some((g, i)) = &self.current {
                if *i < g.frames.len() {
                    return Ok(true);
                }
                self.current = None;
            }
            let g = match self.ahead.pop_front() {
                Some(g) => g,
                None => match self.groups.try_recv() {
                    Ok(g) => g?,
                    Err(_) => return Ok(false),
                },
            };
            if g.head.end_offset() <= self.next {
                continue;
            }
            if g.head.first_offset > self.next {
                // Positions are dense: a gap is records purged under this reader.
                return Err(LogError::Expired {
                    from: self.next,
                    first: g.head.first_offset,
                });
            }
            let skip = self.next.saturating_sub(g.head.first_offset) as usize;
            self.next = self.next.max(g.head.first_offset);
            self.current = Some((g, skip));
        }
    }

    fn readable(&self) -> bool {
        self.next < self.end.borrow().next
    }
}

impl LogRead for JsReader {
    fn position(&self) -> u64 {
        self.next
    }

    fn log_end(&self) -> u64 {
        self.end.borrow().next
    }

    fn wait(&mut self) -> Waiting<'_> {
        Box::pin(async move {
            loop {
                if self.advance()? && self.readable() {
                    return Ok(());
                }
                if self.current.is_some() {
                    // Received, not yet durable by the writer's account.
                    let next = self.next;
                    self.end
                        .wait_for(|e| e.next > next)
                        .await
                        .map_err(|_| LogError::Closed)?;
                    continue;
                }
                match self.groups.recv().await {
                    Some(g) => {
                        let g = g?;
                        self.ahead.push_back(g);
                    }
                    None => return Err(LogError::Closed),
                }
            }
        })
    }

    fn read(
        &mut self,
        batch: &mut RecordBatch,
        max_records: usize,
        max_bytes: usize,
        keep: &mut dyn FnMut(Op, &str, &str) -> bool,
    ) -> Result<(), LogError> {
        let end = self.end.borrow().next;
        let mut read = 0;
        while read < max_records
            && batch.byte_len() < max_bytes
            && self.next < end
            && self.advance()?
        {
            let (g, i) = self.current.as_mut().expect("advance found one");
            let f = &g.frames[*i];
            let (head, json_at) = frame::parse_body(&f[FRAME_HEADER..]).map_err(|e| {
                LogError::Corrupt(format!("jetstream log, position {}: {e}", self.next))
            })?;
            if keep(head.op, head.schema, head.table) {
                batch.push(self.next, &head, &f[FRAME_HEADER + json_at..]);
            }
            *i += 1;
            self.next += 1;
            read += 1;
        }
        batch.next = self.next;
        Ok(())
    }
}

/// Reads whole groups from the group holding `from` on, into `tx`, until the reader is
/// dropped.
async fn fetch(shared: Arc<Shared>, from: u64, tx: mpsc::Sender<Result<Group, LogError>>) {
    let mut resume = from;
    let mut backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(5)).start();
    loop {
        match follow(&shared, resume, &tx).await {
            Ok(Some(next)) => {
                resume = next;
                backoff.reset();
            }
            Ok(None) => return,
            Err(Stop::Damaged(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Err(Stop::Passing(e, next)) => {
                resume = next;
                tracing::debug!(error = %e, "jetstream log: reading paused; starting again");
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

enum Stop {
    /// A damaged message: the reader ends with it.
    Damaged(LogError),
    /// A passing failure; read again from the position given.
    Passing(Fault, u64),
}

/// One consumer's life: `Ok(None)` when the reader is gone, `Ok(Some(next))` when the
/// consumer ended (made again from `next`).
async fn follow(
    shared: &Shared,
    from: u64,
    tx: &mpsc::Sender<Result<Group, LogError>>,
) -> Result<Option<u64>, Stop> {
    let seq = shared
        .locate(from)
        .await
        .map_err(|e| Stop::Passing(e, from))?;
    let passing = |e: Box<dyn std::error::Error + Send + Sync>, at| {
        Stop::Passing(
            Fault::transient("jetstream log: the consumer failed").caused_by(e),
            at,
        )
    };
    // A plain consumer, made again by this reader from where it got to after any failure
    // (an ordered consumer makes itself again from the stream's start when it had
    // delivered nothing yet: a whole re-read for a reader waiting at the end).
    let consumer = shared
        .stream
        .create_consumer(pull::Config {
            filter_subject: format!("{}.*", shared.settings.subject_prefix),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: seq,
            },
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| passing(e.into(), from))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(64)
        .max_bytes_per_batch(READ_BYTES)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| passing(e.into(), from))?;
    let mut next = from;
    let mut building: Option<(GroupHead, Vec<(u32, Bytes)>)> = None;
    let mut large: Option<(u32, BytesMut)> = None;
    let mut delivered = 0u64;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| passing(e.into(), next))?;
        let (seq, consumer_seq) = m
            .info()
            .map(|i| (i.stream_sequence, i.consumer_sequence))
            .unwrap_or((0, 0));
        // A consumer that acknowledges nothing moves on over a message lost on its way
        // (a connection dropped mid-pull): its sequence shows the gap, and the reader
        // starts again from its last whole group rather than skip records.
        delivered += 1;
        if consumer_seq != delivered {
            return Err(Stop::Passing(
                Fault::transient(format!(
                    "jetstream log: the reader missed a message (consumer sequence {consumer_seq}, expected {delivered})"
                )),
                next,
            ));
        }
        let head = m
            .headers
            .as_ref()
            .and_then(|h| h.get(GROUP_HEADER))
            .and_then(|v| GroupHead::parse(v.as_str()))
            .ok_or_else(|| {
                Stop::Damaged(LogError::Corrupt(
                    group::GroupError::Header(seq).to_string(),
                ))
            })?;
        let (h, mut got) = match building.take() {
            Some((h, got)) if h.first_seq == head.first_seq => (h, got),
            Some((h, _)) => {
                tracing::warn!(
                    first_seq = h.first_seq,
                    "jetstream log: skipped an incomplete group (its records follow again)"
                );
                large = None;
                (head, Vec::new())
            }
            None => (head, Vec::new()),
        };
        let part = m
            .headers
            .as_ref()
            .and_then(|h| h.get(PART_HEADER))
            .map(|v| v.as_str().to_owned());
        let damaged = |e: group::GroupError| Stop::Damaged(LogError::Corrupt(e.to_string()));
        match part {
            None => got.extend(group::records(seq, &m.payload).map_err(damaged)?),
            Some(part) => {
                let part = group::Part::parse(&part).ok_or_else(|| {
                    damaged(group::GroupError::Body {
                        seq,
                        what: "bad part header",
                    })
                })?;
                if let Some(frame) = gather(&mut large, part, &m.payload)
                    .map_err(|what| damaged(group::GroupError::Body { seq, what }))?
                {
                    got.push((part.index, frame));
                }
            }
        }
        if got.len() < h.records as usize {
            building = Some((h, got));
            continue;
        }
        got.sort_unstable_by_key(|(i, _)| *i);
        if got.iter().enumerate().any(|(n, (i, _))| *i as usize != n) {
            return Err(Stop::Damaged(LogError::Corrupt(format!(
                "jetstream log: group at message {} has wrong record indexes",
                h.first_seq
            ))));
        }
        next = h.end_offset();
        let g = Group {
            head: h,
            frames: got.into_iter().map(|(_, f)| f).collect(),
        };
        if tx.send(Ok(g)).await.is_err() {
            return Ok(None);
        }
    }
    Ok(Some(next))
}

/// Adds a part of a large frame; the frame once its last part is there.
fn gather(
    large: &mut Option<(u32, BytesMut)>,
    part: group::Part,
    bytes: &[u8],
) -> Result<Option<Bytes>, &'static str> {
    if part.part == 0 {
        *large = Some((part.index, BytesMut::new()));
    }
    let Some((index, buf)) = large.as_mut() else {
        return Err("a part without its beginning");
    };
    if *index != part.index {
        return Err("parts of two records interleaved");
    }
    buf.extend_from_slice(bytes);
    if part.part + 1 < part.parts {
        return Ok(None);
    }
    let frame = large.take().expect("checked above").1.freeze();
    match frame::check(&frame) {
        frame::Decoded::Frame { len } if len == frame.len() => Ok(Some(frame)),
        _ => Err("a large record's parts do not make a whole frame"),
    }
}
