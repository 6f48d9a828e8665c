//! The append side: each hand-off of framed records becomes a group of messages
//! (`group.rs`), published in order on one connection.
//!
//! Invariants:
//! - Every message is published with the stream sequence it must follow
//!   (`Nats-Expected-Last-Sequence`): this writer is the stream's only producer (the
//!   pipeline's advisory lock), so it knows the sequence each message gets, and the server
//!   stores a message only right after its predecessor. What the stream holds is
//!   therefore always a prefix of what was published.
//! - Each `Nats-Msg-Id` carries this writer's random epoch and the sequence: a repeat of
//!   its own publish is dropped by the server, and a message at a sequence this writer
//!   did not see acknowledged counts as stored only once its id is checked to be this
//!   writer's. Another writer's message there (a second producer, a killed process whose
//!   last publish landed late) stops the run: nothing is counted that is not there.
//! - At most `MESSAGES_IN_FLIGHT` messages await acknowledgement (each holds one of the
//!   client's permits, and only the oldest group's are polled); a failed publish's
//!   futures are dropped before anything is sent again.
//! - A stream that ends below what it acknowledged (memory storage restarted, a purge by
//!   hand) is a definite failure, never waited out.
//! - The durable end (the position to read below, the LSN PostgreSQL may be told) moves
//!   only when every message of a group, and of every group before it, is acknowledged.
//! - A publish that fails for a passing reason (a server restarting, a leader election, a
//!   full stream) is not an error of the run: the writer asks the stream how far it got and
//!   publishes the rest again with the same ids and sequences, until it is stored. A
//!   message that can never be stored (larger than `max_payload`, no permission) stops
//!   the run with its fix.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::{self, publish::PublishAck};
use async_nats::HeaderMap;
use bytes::Bytes;
use sluice_core::{Backoff, ChangeId, Fault, Framing, Lsn};
use sluice_log::frame::Frames;
use sluice_log::{Append, End, LogError, LogWriter};
use tokio::sync::{mpsc, oneshot};

use crate::group::{self, Body, GroupHead, GROUP_HEADER, PART_HEADER};
use crate::log::Shared;

/// Groups published and not yet acknowledged before the writer waits for the oldest.
const GROUPS_IN_FLIGHT: usize = 64;
/// Messages published and not yet acknowledged before the writer waits: each holds one
/// of the client's acknowledgement permits (`log.rs` allows twice as many), and only the
/// oldest group's are polled.
const MESSAGES_IN_FLIGHT: usize = 4096;
/// How long an acknowledgement may take before the writer looks at the stream.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

type AckFuture =
    Pin<Box<dyn Future<Output = Result<PublishAck, jetstream::context::PublishError>> + Send>>;

/// What goes to one partition: bodies of whole frames, or a frame too large for one
/// message, in parts.
enum Piece {
    Body(Body),
    Parts(u32, Bytes),
}

/// One message as published, kept until it is acknowledged (to publish it again).
struct Message {
    seq: u64,
    subject: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A group on its way: its messages, the acknowledgement each still awaits (`None`:
/// stored), and what its storage makes true.
struct Group {
    messages: Vec<Message>,
    acks: Vec<Option<AckFuture>>,
    end: End,
    head: Option<GroupHead>,
    done: Option<oneshot::Sender<()>>,
}

/// What the stream holds, as far as this writer has published.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tail {
    /// The sequence the next message gets.
    pub next_seq: u64,
    /// The position of the next record.
    pub next_offset: u64,
    pub durable_lsn: Lsn,
    pub last_lsn: Lsn,
    pub last_change: Option<ChangeId>,
}

/// The log's writer (see the module doc).
pub struct JsWriter {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tail: Tail,
    /// This writer's own mark in every `Nats-Msg-Id`, so a message is known to be its
    /// own (another writer's at the same sequence is not).
    pub(crate) epoch: u64,
    /// Every message up to this sequence was acknowledged to this writer.
    pub(crate) stored_through: u64,
}

impl LogWriter for JsWriter {
    fn framing(&self) -> Arc<dyn Framing> {
        Arc::new(Frames)
    }

    fn run(
        self: Box<Self>,
        rx: mpsc::Receiver<Append>,
        spare: mpsc::Sender<Vec<u8>>,
    ) -> Result<(), LogError> {
        // The writer has a thread of its own (the seam's contract); the client's
        // connection lives on the pipeline's runtime and is reached through channels.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LogError::io("the JetStream writer's runtime", e))?;
        let mut w = *self;
        rt.block_on(w.run_loop(rx, spare))
            .map_err(LogError::Backend)
    }
}

impl JsWriter {
    async fn run_loop(
        &mut self,
        mut rx: mpsc::Receiver<Append>,
        spare: mpsc::Sender<Vec<u8>>,
    ) -> Result<(), Fault> {
        let mut flight: VecDeque<Group> = VecDeque::new();
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                stored = acknowledged(flight.front_mut()), if !flight.is_empty() => {
                    match stored {
                        Ok(()) => self.complete(flight.pop_front().expect("not empty")),
                        Err(e) => self.recover(&mut flight, e).await?,
                    }
                }
                append = rx.recv(), if open && room(&flight) => match append {
                    Some(mut a) => {
                        let mut g = self.group(&mut a)?;
                        a.bytes.clear();
                        let _ = spare.try_send(a.bytes);
                        if let Err(e) = self.send(&mut g, 0).await {
                            flight.push_back(g);
                            self.recover(&mut flight, e).await?;
                        } else {
                            flight.push_back(g);
                        }
                    }
                    None => open = false,
                },
                else => return Ok(()),
            }
        }
    }

    /// The messages of one hand-off: its frames by partition, cut at the message size.
    fn group(&mut self, a: &mut Append) -> Result<Group, Fault> {
        let shared = &self.shared;
        let partitions = shared.settings.partitions;
        let mut pieces: Vec<Vec<Piece>> = (0..partitions).map(|_| Vec::new()).collect();
        let mut at = 0;
        let mut index = 0u32;
        let mut last_change = self.tail.last_change;
        let mut last_lsn = self.tail.last_lsn;
        while at < a.bytes.len() {
            let Some(r) = group::route(&a.bytes[at..], partitions) else {
                return Err(Fault::fatal(
                    "the JetStream log was handed a damaged frame (a bug: report it)",
                ));
            };
            let len = r.len;
            let f = &a.bytes[at..at + len];
            last_lsn = r.id.commit_lsn;
            if r.change {
                last_change = Some(r.id);
            }
            let p = &mut pieces[r.partition as usize];
            if len + 8 > shared.max_message {
                // Larger than a message may be: it goes in parts of its own.
                p.push(Piece::Parts(index, Bytes::copy_from_slice(f)));
            } else {
                match p.last_mut() {
                    Some(Piece::Body(b))
                        if b.is_empty() || b.len() + len + 4 <= shared.max_message =>
                    {
                        b.push(index, f)
                    }
                    _ => {
                        let mut b = Body::new();
                        b.push(index, f);
                        p.push(Piece::Body(b));
                    }
                }
            }
            index += 1;
            at += len;
        }
        let durable_lsn = a
            .commit
            .unwrap_or(self.tail.durable_lsn)
            .max(self.tail.durable_lsn);
        let head = GroupHead {
            first_seq: self.tail.next_seq,
            first_offset: self.tail.next_offset,
            records: index,
            durable_lsn,
            last_lsn,
            last_change,
        };
        let value = head.encode();
        let mut messages = Vec::new();
        for (p, pieces) in pieces.iter_mut().enumerate() {
            let subject = format!("{}.{p}", shared.settings.subject_prefix);
            for piece in pieces.iter_mut() {
                let mut publish = |body: Bytes, part: Option<String>| {
                    let mut headers = HeaderMap::new();
                    headers.insert(GROUP_HEADER, value.as_str());
                    if let Some(part) = part {
                        headers.insert(PART_HEADER, part.as_str());
                    }
                    messages.push(Message {
                        seq: self.tail.next_seq + messages.len() as u64,
                        subject: subject.clone(),
                        headers,
                        body,
                    });
                };
                match piece {
                    Piece::Body(b) => publish(b.take(), None),
                    Piece::Parts(index, frame) => {
                        let size = shared.max_message;
                        let n = frame.len().div_ceil(size);
                        for i in 0..n {
                            let part = frame.slice(i * size..((i + 1) * size).min(frame.len()));
                            publish(
                                part,
                                Some(
                                    group::Part {
                                        index: *index,
                                        part: i as u32,
                                        parts: n as u32,
                                    }
                                    .encode(),
                                ),
                            );
                        }
                    }
                }
            }
        }
        self.tail = Tail {
            next_seq: self.tail.next_seq + messages.len() as u64,
            next_offset: head.end_offset(),
            durable_lsn,
            last_lsn,
            last_change,
        };
        Ok(Group {
            acks: (0..messages.len()).map(|_| None).collect(),
            messages,
            end: End {
                next: head.end_offset(),
                durable_lsn,
            },
            head: (index > 0).then_some(head),
            done: a.ack.take(),
        })
    }

    /// Publishes the messages of `g` after stream sequence `after` (0: all of them).
    async fn send(&self, g: &mut Group, after: u64) -> Result<(), Fault> {
        for (m, ack) in g.messages.iter().zip(g.acks.iter_mut()) {
            if m.seq <= after {
                continue;
            }
            let publish = Publish::build()
                .payload(m.body.clone())
                .headers(m.headers.clone())
                .message_id(self.message_id(m.seq))
                .expected_last_sequence(m.seq - 1);
            let future = self
                .shared
                .js
                .send_publish(m.subject.clone(), publish)
                .await
                .map_err(classify)?;
            let seq = m.seq;
            let wait = future.into_future();
            *ack = Some(Box::pin(async move {
                let a = wait.await?;
                if a.sequence != seq {
                    return Err(jetstream::context::PublishError::new(
                        PublishErrorKind::WrongLastSequence,
                    ));
                }
                Ok(a)
            }));
        }
        Ok(())
    }

    /// The `Nats-Msg-Id` of this writer's message at `seq`.
    fn message_id(&self, seq: u64) -> String {
        format!("{}/{:016x}/{seq}", self.shared.settings.stream, self.epoch)
    }

    /// A group is stored: its end is durable.
    fn complete(&mut self, g: Group) {
        if let Some(m) = g.messages.last() {
            self.stored_through = self.stored_through.max(m.seq);
        }
        if let Some(head) = g.head {
            self.shared.stored(&head);
        }
        self.shared.end.send_modify(|e| {
            e.next = e.next.max(g.end.next);
            e.durable_lsn = e.durable_lsn.max(g.end.durable_lsn);
        });
        self.shared.paused.store(false, Ordering::Release);
        if let Some(done) = g.done {
            let _ = done.send(());
        }
    }

    /// After a failed publish: waits the failure out, then publishes what the stream does
    /// not hold again, oldest first. Returns only once every group in flight is sent
    /// again, or with a failure no retry fixes: another writer's messages where this
    /// one's should be, or a stream that lost messages it had acknowledged.
    async fn recover(&mut self, flight: &mut VecDeque<Group>, first: Fault) -> Result<(), Fault> {
        if first.class == sluice_core::ErrorClass::Definite {
            return Err(first);
        }
        if first.message == FULL {
            self.shared.paused.store(true, Ordering::Release);
        }
        tracing::warn!(stream = %self.shared.settings.stream, error = %first, "jetstream log: a publish failed; publishing again from what the stream holds");
        let mut backoff =
            Backoff::doubling(Duration::from_millis(100), Duration::from_secs(5)).start();
        loop {
            if self.shared.closing.load(Ordering::Acquire) {
                return Err(Fault::transient(
                    "jetstream log: stopped while the stream did not take records (they are sent again at the next start)",
                ));
            }
            tokio::time::sleep(backoff.next_delay()).await;
            let last = match self.shared.last_sequence().await {
                Ok(last) => last,
                Err(e) => {
                    tracing::debug!(error = %e, "jetstream log: the stream did not answer yet");
                    continue;
                }
            };
            if last < self.stored_through {
                return Err(Fault::definite(
                    format!("jetstream log: stream {:?} no longer holds messages it acknowledged (it ends at {last}, {} were stored)", self.shared.settings.stream, self.stored_through),
                    "the stream lost data (memory storage or a single replica restarted, or it was purged by hand): records past the sinks' cursors may be gone; re-snapshot the pipeline (sluice backfill) after checking the stream's storage and replicas",
                ));
            }
            match self.resend(flight, last).await {
                Ok(()) => return Ok(()),
                Err(e) if e.class == sluice_core::ErrorClass::Definite => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "jetstream log: publishing again failed; waiting")
                }
            }
        }
    }

    /// Publishes again every message in flight past `last`, once the ones at or below it
    /// are checked to be this writer's.
    async fn resend(&self, flight: &mut VecDeque<Group>, last: u64) -> Result<(), Fault> {
        for g in flight.iter_mut() {
            for (m, ack) in g.messages.iter().zip(g.acks.iter_mut()) {
                // Dropped before anything is sent again: each holds a client permit.
                let unanswered = ack.take().is_some();
                if m.seq <= last && unanswered {
                    self.check_own(m.seq).await?;
                }
            }
        }
        for g in flight.iter_mut() {
            self.send(g, last).await?;
        }
        Ok(())
    }

    /// The message stored at `seq` must be this writer's.
    async fn check_own(&self, seq: u64) -> Result<(), Fault> {
        let m = self.shared.stream.get_raw_message(seq).await.map_err(|e| {
            Fault::transient(format!("jetstream log: message {seq} could not be read")).caused_by(e)
        })?;
        let id = m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned());
        if id.as_deref() == Some(self.message_id(seq).as_str()) {
            return Ok(());
        }
        Err(Fault::definite(
            format!("jetstream log: another writer's message is at sequence {seq} of stream {:?}", self.shared.settings.stream),
            "run one producer per pipeline (a second `sluice run` of it on another machine waits as a standby), and let nothing else publish to the log's subjects",
        ))
    }
}

/// Whether another group may be sent: few enough groups and messages in flight.
fn room(flight: &VecDeque<Group>) -> bool {
    let messages: usize = flight.iter().map(|g| g.messages.len()).sum();
    flight.is_empty() || (flight.len() < GROUPS_IN_FLIGHT && messages < MESSAGES_IN_FLIGHT)
}

/// Waits until every message of `g` is acknowledged. Cancel-safe: an acknowledgement
/// received is recorded before the next is awaited.
async fn acknowledged(g: Option<&mut Group>) -> Result<(), Fault> {
    let Some(g) = g else {
        return std::future::pending().await;
    };
    for ack in g.acks.iter_mut() {
        if let Some(f) = ack.as_mut() {
            match tokio::time::timeout(ACK_TIMEOUT, f).await {
                Ok(Ok(_)) => *ack = None,
                Ok(Err(e)) => return Err(classify(e)),
                Err(_) => {
                    return Err(Fault::transient(
                        "jetstream log: a publish was not acknowledged in time",
                    ))
                }
            }
        }
    }
    Ok(())
}

/// A publish failure: what no retry fixes stops the run with its fix.
fn classify(e: jetstream::context::PublishError) -> Fault {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => Fault::definite(
            "jetstream log: a record is larger than the NATS server's max_payload",
            "raise max_payload in the NATS servers' configuration (up to 64 MB) and start the pipeline again",
        )
        .caused_by(e),
        _ if full(&e) => Fault::transient(FULL).caused_by(e),
        _ => Fault::transient("jetstream log: a publish was not stored").caused_by(e),
    }
}

/// The message of a publish refused by a full stream.
const FULL: &str = "jetstream log: the stream is at its max_bytes; the source waits for the sinks";

/// Whether the stream refused a publish for its limits (`discard = new`).
fn full(e: &jetstream::context::PublishError) -> bool {
    let text = e.to_string();
    text.contains("maximum bytes")
        || text.contains("maximum messages")
        || text.contains("insufficient resources")
}
