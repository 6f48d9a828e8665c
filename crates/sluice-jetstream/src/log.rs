//! The log as its consumers see it ([`LogBackend`]), and opening it: the stream found or
//! created, the last whole group read back, the position and LSNs the writer goes on from.
//!
//! Invariants:
//! - The stream is created with `discard = new`: at its `max_bytes` a publish is refused
//!   (the source waits, as at the embedded log's budget with `pause_source`), never an
//!   unread record dropped.
//! - Messages are removed (purged) only below the group of the lowest persisted cursor,
//!   only once older than the retention, and never the last group: the next open reads
//!   the log's state from it.
//! - The partition count is fixed when the stream is created (its metadata keeps it): a
//!   key's partition must not change under records already written.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use sluice_core::{ChangeId, Fault, Lsn};
use sluice_log::{CursorStore, Cursors, End, LogBackend, LogError, LogRead};
use tokio::sync::watch;

use crate::group::{self, GroupHead, GROUP_HEADER};
use crate::reader::JsReader;
use crate::writer::{JsWriter, Tail};

/// The metadata key that keeps the stream's partition count.
const PARTITIONS_KEY: &str = "sluice.partitions";
/// How often old messages are purged and the stream's size read.
const HOUSEKEEPING: Duration = Duration::from_secs(2);
/// Groups whose start positions are kept in memory (readers start from them without
/// searching the stream).
const INDEX_GROUPS: usize = 65_536;

/// Where and how the log is kept.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The stream's name.
    pub stream: String,
    /// Subjects are `{subject_prefix}.{partition}`.
    pub subject_prefix: String,
    /// Partitions of a stream created now (an existing stream keeps its own).
    pub partitions: u32,
    /// Replicas of a stream created now.
    pub replicas: usize,
    /// File storage (else memory) for a stream created now.
    pub file_storage: bool,
    /// The stream's byte limit (0: none).
    pub max_bytes: u64,
    /// How long records every cursor has passed stay readable (SSE clients resume).
    pub retention: Duration,
    /// Where the cursors and the delivery state are kept (`cursors.redb`).
    pub state_dir: PathBuf,
}

/// What a reader, the writer and the gauges share.
pub(crate) struct Shared {
    pub settings: Settings,
    pub js: jetstream::Context,
    pub stream: stream::Stream,
    pub end: watch::Sender<End>,
    pub first: AtomicU64,
    pub bytes: AtomicU64,
    pub paused: AtomicBool,
    /// Set at shutdown: a writer waiting out a failed publish gives up.
    pub closing: AtomicBool,
    /// The largest message body the writer makes.
    pub max_message: usize,
    /// Recent groups: first position → (first sequence, when stored).
    index: Mutex<BTreeMap<u64, (u64, Instant)>>,
}

impl Shared {
    /// Records a stored group (its start, for readers and the purge).
    pub fn stored(&self, head: &GroupHead) {
        let mut index = self.index.lock().expect("index lock");
        index.insert(head.first_offset, (head.first_seq, Instant::now()));
        while index.len() > INDEX_GROUPS {
            index.pop_first();
        }
    }

    /// The stream's last sequence, asked of its leader.
    pub async fn last_sequence(&self) -> Result<u64, Fault> {
        Ok(info(&self.stream).await?.state.last_sequence)
    }

    /// The message at `seq` and its group header.
    pub async fn message(&self, seq: u64) -> Result<(GroupHead, Bytes), Fault> {
        let (head, body, _) = self.message_parts(seq).await?;
        Ok((head, body))
    }

    /// The message at `seq`, its group header and, for a part of a large record, which.
    pub async fn message_parts(
        &self,
        seq: u64,
    ) -> Result<(GroupHead, Bytes, Option<group::Part>), Fault> {
        let m = self.stream.get_raw_message(seq).await.map_err(|e| {
            Fault::transient(format!("jetstream log: message {seq} could not be read")).caused_by(e)
        })?;
        let head = m
            .headers
            .get(GROUP_HEADER)
            .and_then(|v| GroupHead::parse(v.as_str()))
            .ok_or_else(|| {
                Fault::definite(
                    format!("jetstream log: message {seq} of stream {:?} is not Sluice's", self.settings.stream),
                    "give the pipeline a stream of its own ([log.jetstream] stream): only Sluice may publish to its log",
                )
            })?;
        let part = m
            .headers
            .get(group::PART_HEADER)
            .and_then(|v| group::Part::parse(v.as_str()));
        Ok((head, m.payload, part))
    }

    /// The sequence of the group that holds position `offset` (or the next group, for
    /// the end): from the index, else by halving the stream's sequences.
    pub async fn locate(&self, offset: u64) -> Result<u64, Fault> {
        if let Some((_, &(seq, _))) = self
            .index
            .lock()
            .expect("index lock")
            .range(..=offset)
            .next_back()
        {
            return Ok(seq);
        }
        let state = info(&self.stream).await?.state;
        if state.messages == 0 {
            return Ok(state.last_sequence + 1);
        }
        let (mut lo, mut hi) = (state.first_sequence, state.last_sequence);
        // The last message whose group starts at or before `offset`.
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            let (head, _) = self.message(mid).await?;
            if head.first_offset <= offset {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let (head, _) = self.message(lo).await?;
        if head.end_offset() <= offset {
            // Past the last group: the next one starts after the stream's end.
            return Ok(state.last_sequence + 1);
        }
        Ok(head.first_seq.max(state.first_sequence))
    }
}

/// The stream's configuration and state, asked of its leader (bounded: a cluster without
/// a leader does not answer).
async fn info(stream: &stream::Stream) -> Result<stream::Info, Fault> {
    let mut s = stream.clone();
    match tokio::time::timeout(Duration::from_secs(5), s.info()).await {
        Ok(Ok(info)) => Ok(info.clone()),
        Ok(Err(e)) => {
            Err(Fault::transient("jetstream log: the stream did not answer").caused_by(e))
        }
        Err(_) => Err(Fault::transient(
            "jetstream log: the stream did not answer in time",
        )),
    }
}

/// The pipeline's log in JetStream.
pub struct JetStreamLog {
    pub(crate) shared: Arc<Shared>,
    cursors: Arc<CursorStore>,
}

/// An opened log: the log, its writer, and where the source goes on from.
pub struct Opened {
    pub log: JetStreamLog,
    pub writer: JsWriter,
    /// Commit LSN of the log's last record.
    pub last: Lsn,
    /// The last change (not a read) in the log.
    pub last_change: Option<ChangeId>,
    /// The cursors' store, whose database also keeps the delivery state.
    pub cursors: Arc<CursorStore>,
}

impl Opened {
    /// Whether anything of this log is still alive (the writer's thread, a reader, the
    /// cursors' file): a restart of the pipeline waits for it to be gone.
    pub fn held(&self) -> Box<dyn Fn() -> bool + Send + Sync> {
        let shared = Arc::downgrade(&self.log.shared);
        let cursors = Arc::downgrade(&self.cursors);
        Box::new(move || shared.strong_count() > 0 || cursors.strong_count() > 0)
    }
}

/// Opens (or creates) the log's stream and reads where it ends.
pub async fn open(client: async_nats::Client, settings: Settings) -> Result<Opened, Fault> {
    let max_message = client
        .server_info()
        .max_payload
        .saturating_sub(4096)
        .max(1024);
    let js = jetstream::ContextBuilder::new()
        .max_ack_inflight(16_384)
        .build(client);
    let stream = ensure_stream(&js, &settings).await?;
    std::fs::create_dir_all(&settings.state_dir).map_err(|e| {
        Fault::from(e).within(format_args!(
            "cannot create {}",
            settings.state_dir.display()
        ))
    })?;
    let cursors = Arc::new(CursorStore::open(&settings.state_dir.join("cursors.redb"))?);
    let mut partitions = settings.partitions;
    let info = info(&stream).await?;
    if let Some(p) = info
        .config
        .metadata
        .get(PARTITIONS_KEY)
        .and_then(|p| p.parse::<u32>().ok())
        .map(|p| p.clamp(1, 1024))
    {
        partitions = p;
    }
    let shared = Arc::new(Shared {
        settings: Settings {
            partitions,
            ..settings
        },
        js,
        stream,
        end: watch::channel(End {
            next: 0,
            durable_lsn: Lsn::ZERO,
        })
        .0,
        first: AtomicU64::new(0),
        bytes: AtomicU64::new(info.state.bytes),
        paused: AtomicBool::new(false),
        closing: AtomicBool::new(false),
        max_message,
        index: Mutex::new(BTreeMap::new()),
    });
    let (tail, first) = read_tail(&shared, &info.state, cursors.max_position()).await?;
    shared.first.store(first, Ordering::Release);
    shared.end.send_replace(End {
        next: tail.next_offset,
        durable_lsn: tail.durable_lsn,
    });
    tokio::spawn(housekeeping(
        Arc::downgrade(&shared),
        Arc::downgrade(&cursors),
    ));
    tracing::info!(stream = %shared.settings.stream, partitions, next = tail.next_offset, "jetstream log opened");
    Ok(Opened {
        log: JetStreamLog {
            shared: shared.clone(),
            cursors: cursors.clone(),
        },
        last: tail.last_lsn,
        last_change: tail.last_change,
        writer: JsWriter {
            shared,
            tail,
            epoch: fastrand::u64(..),
            stored_through: info.state.last_sequence,
        },
        cursors,
    })
}

/// What `sluice check` finds of the log's stream: it exists and takes the log's subjects,
/// or it is missing (the start creates it). Creates nothing.
pub async fn check(client: async_nats::Client, settings: &Settings) -> Result<String, Fault> {
    let js = jetstream::new(client);
    Ok(match existing(&js, settings).await? {
        Some(_) => format!("the log's stream {:?} takes its subjects", settings.stream),
        None => format!(
            "the log's stream {:?} does not exist yet: the start creates it ({} replicas)",
            settings.stream, settings.replicas
        ),
    })
}

/// The stream if it exists; it must take the log's subjects.
async fn existing(js: &jetstream::Context, s: &Settings) -> Result<Option<stream::Stream>, Fault> {
    let subjects = format!("{}.*", s.subject_prefix);
    match js.get_stream(&s.stream).await {
        Ok(st) => {
            let config = info(&st).await?.config;
            if !config.subjects.contains(&subjects) {
                return Err(Fault::definite(
                    format!("jetstream log: stream {:?} takes {:?}, not {subjects:?}", s.stream, config.subjects),
                    "give the pipeline a stream of its own: set [log.jetstream] stream to a name no other stream has, or subject_prefix to this stream's",
                ));
            }
            if let Some(why) = drops_records(&config) {
                return Err(Fault::definite(
                    format!("jetstream log: stream {:?} {why}: it could drop records no sink has read", s.stream),
                    "let Sluice create the log's stream (drop this one, or name another in [log.jetstream] stream), or set it to discard = new without max_age or per-subject limits",
                ));
            }
            Ok(Some(st))
        }
        Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {
            Ok(None)
        }
        Err(e) => Err(Fault::transient(format!(
            "jetstream log: stream {:?} could not be looked up",
            s.stream
        ))
        .caused_by(e)),
    }
}

/// Why an existing stream's limits could delete unread records, if they could.
fn drops_records(c: &stream::Config) -> Option<&'static str> {
    let limited = c.max_bytes > 0 || c.max_messages > 0;
    if c.max_age > Duration::ZERO {
        Some("expires messages by age (max_age)")
    } else if c.max_messages_per_subject > 0 {
        Some("keeps a limited number of messages per subject")
    } else if limited && c.discard == stream::DiscardPolicy::Old {
        Some("discards old messages at its limits (discard = old)")
    } else {
        None
    }
}

/// The stream, created if missing.
async fn ensure_stream(js: &jetstream::Context, s: &Settings) -> Result<stream::Stream, Fault> {
    if let Some(st) = existing(js, s).await? {
        return Ok(st);
    }
    let config = stream::Config {
        name: s.stream.clone(),
        subjects: vec![format!("{}.*", s.subject_prefix)],
        storage: if s.file_storage {
            stream::StorageType::File
        } else {
            stream::StorageType::Memory
        },
        num_replicas: s.replicas,
        max_bytes: if s.max_bytes == 0 {
            -1
        } else {
            s.max_bytes.min(i64::MAX as u64) as i64
        },
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        metadata: [(PARTITIONS_KEY.to_owned(), s.partitions.to_string())].into(),
        ..Default::default()
    };
    js.create_stream(config).await.map_err(|e| {
        use jetstream::context::CreateStreamErrorKind as K;
        let what = format!("jetstream log: stream {:?} could not be created", s.stream);
        match e.kind() {
            K::TimedOut | K::JetStreamUnavailable => Fault::transient(what),
            _ => Fault::definite(what, "check [log.jetstream]: replicas at most the cluster's servers, the user's JetStream permissions, the account's storage limits"),
        }
        .caused_by(e)
    })
}

/// Where the writer goes on from (the last whole group), and the oldest position held.
/// `floor`: the furthest cursor, where an empty stream's positions start (a stream that
/// was emptied or replaced must not hand out positions the cursors have passed).
async fn read_tail(
    shared: &Shared,
    state: &stream::State,
    floor: u64,
) -> Result<(Tail, u64), Fault> {
    let empty = Tail {
        next_seq: state.last_sequence + 1,
        next_offset: floor,
        durable_lsn: Lsn::ZERO,
        last_lsn: Lsn::ZERO,
        last_change: None,
    };
    if state.messages == 0 {
        return Ok((empty, floor));
    }
    // The last whole group: a crash loop can leave several short groups in a row (each
    // run dying in its first group), and none of them counts.
    let mut end_seq = state.last_sequence;
    let head = loop {
        let (head, _) = shared.message(end_seq).await?;
        if whole(shared, &head, end_seq).await? {
            break head;
        }
        tracing::warn!(stream = %shared.settings.stream, first_seq = head.first_seq, "jetstream log: a group is incomplete (the writer stopped mid-group); its records are written again");
        if head.first_seq <= state.first_sequence {
            let at = head.first_offset.max(floor);
            return Ok((
                Tail {
                    next_offset: at,
                    ..empty
                },
                at,
            ));
        }
        end_seq = head.first_seq - 1;
    };
    let (first_head, _) = shared.message(state.first_sequence).await?;
    let first = if first_head.first_seq == state.first_sequence {
        first_head.first_offset
    } else {
        first_head.end_offset()
    };
    shared.stored(&head);
    Ok((
        Tail {
            next_seq: state.last_sequence + 1,
            next_offset: head.end_offset().max(floor),
            durable_lsn: head.durable_lsn,
            last_lsn: head.last_lsn,
            last_change: head.last_change,
        },
        first,
    ))
}

/// Whether the group `head` names holds all its records in `head.first_seq..=last`.
async fn whole(shared: &Shared, head: &GroupHead, last: u64) -> Result<bool, Fault> {
    let mut n = 0u64;
    for seq in head.first_seq..=last {
        let (_, body, part) = shared.message_parts(seq).await?;
        n += match part {
            // A large record counts once, at its last part.
            Some(p) => u64::from(p.part + 1 == p.parts),
            None => group::records(seq, &body)
                .map_err(|e| Fault::fatal("jetstream log: a message is damaged").caused_by(e))?
                .len() as u64,
        };
    }
    Ok(n == u64::from(head.records))
}

/// Purges what every cursor has passed (after the retention) and reads the stream's size,
/// until the log is dropped.
async fn housekeeping(shared: Weak<Shared>, cursors: Weak<CursorStore>) {
    loop {
        tokio::time::sleep(HOUSEKEEPING).await;
        // Neither is kept alive by this task: the cursors' file must close with the log.
        let (Some(shared), Some(cursors)) = (shared.upgrade(), cursors.upgrade()) else {
            return;
        };
        if let Err(e) = purge(&shared, &cursors).await {
            tracing::debug!(error = %e, "jetstream log: housekeeping failed; trying again");
        }
    }
}

async fn purge(shared: &Shared, cursors: &CursorStore) -> Result<(), Fault> {
    let state = info(&shared.stream).await?.state;
    shared.bytes.store(state.bytes, Ordering::Release);
    // The stored cursors, not only those registered so far: a sink still starting holds
    // the log as well.
    let Some(min) = cursors.min_stored()? else {
        return Ok(());
    };
    // The newest group that starts at or below every cursor, stored before the retention.
    let keep = {
        let index = shared.index.lock().expect("index lock");
        index
            .range(..=min)
            .rev()
            .find(|(_, (_, at))| at.elapsed() >= shared.settings.retention)
            .map(|(offset, (seq, _))| (*offset, *seq))
    };
    let Some((offset, seq)) = keep else {
        return Ok(());
    };
    let seq = seq.min(state.last_sequence);
    if seq <= state.first_sequence {
        return Ok(());
    }
    // Readers learn the new start before the records go: one that starts meanwhile gets
    // `Expired`, not a gap.
    shared.first.fetch_max(offset, Ordering::AcqRel);
    shared.stream.purge().sequence(seq).await.map_err(|e| {
        Fault::transient("jetstream log: purging read messages failed").caused_by(e)
    })?;
    shared
        .index
        .lock()
        .expect("index lock")
        .retain(|&o, _| o >= offset);
    Ok(())
}

impl LogBackend for JetStreamLog {
    fn reader(&self, from: u64) -> Result<Box<dyn LogRead>, LogError> {
        let first = self.first();
        if from < first {
            return Err(LogError::Expired { from, first });
        }
        Ok(Box::new(JsReader::start(self.shared.clone(), from)))
    }

    fn first(&self) -> u64 {
        self.shared.first.load(Ordering::Acquire)
    }

    fn durable_end(&self) -> u64 {
        self.shared.end.borrow().next
    }

    fn end(&self) -> watch::Receiver<End> {
        self.shared.end.subscribe()
    }

    fn cursors(&self) -> &dyn Cursors {
        self.cursors.as_ref()
    }

    fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Acquire)
    }

    fn paused(&self) -> bool {
        self.shared.paused.load(Ordering::Acquire)
    }

    fn closing(&self) {
        self.shared.closing.store(true, Ordering::Release);
    }

    fn describe(&self) -> String {
        let s = &self.shared.settings;
        format!(
            "JetStream stream {}, {} partitions, replicas: {}",
            s.stream, s.partitions, s.replicas
        )
    }
}
