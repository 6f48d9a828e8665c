//! The source worker: holds the pipeline's advisory lock, streams from the slot, assembles
//! committed transactions, hands records to an [`Output`], and reports progress.
//!
//! Invariants (docs/GUARANTEES.md, rule 1):
//! - The flush LSN confirmed to PostgreSQL is the end of a transaction the output has made
//!   durable, or, when nothing received is still in flight, the server's WAL end from a
//!   keepalive; it never moves backwards.
//! - After a lost connection the worker reconnects with backoff and resumes from the
//!   slot's confirmed position; the transaction in flight is received again whole.
//! - A clean stop that comes while part of a transaction is already in the output first
//!   receives the rest of it (bounded), so nothing is sent again after a clean stop.
//! - A pipeline without its slot creates it with an exported snapshot and copies its
//!   tables under it before streaming (`source_copies.rs`, `initial.rs`); backfills run
//!   beside the stream on their own thread (`backfill.rs`).
//! - Only the holder of the pipeline's advisory lock streams; another instance waits, and
//!   touches nothing shared with the active one (the spill directory is emptied only once
//!   the lock is held).

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{Backoff, ChangeRecord, ErrorClass, Lsn};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backfill::{self, BackfillRequest, BackfillWorker, Watermarks};
use crate::changes::{Assembler, Exclusions, Handled};
use crate::conninfo::ConnInfo;
use crate::error::PgError;
pub use crate::output::{Batch, Output, SourceStatus};
use crate::replication::{self, StartOptions, StreamMessage};
use crate::snapshot::Progress;
pub use crate::source_error::SourceError;
use crate::state::PipelineState;
use crate::types::resolve_types;
use crate::wire::{quote_literal, Connection};

#[path = "source_copies.rs"]
mod copies;
use copies::{clear_plans, route, META_CREATING, META_KNOWN};

/// Waits between reconnects.
const RECONNECT: Backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(30));

/// How long a stop waits for the rest of a transaction that is partly in the output.
const FINISH_TRANSACTION: Duration = Duration::from_secs(5);

/// A state store shared with the source.
#[derive(Clone)]
pub struct SharedStore(pub Arc<dyn sluice_core::StateStore>);

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedStore({})", self.0.location())
    }
}

/// What the source needs to know.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub conninfo: ConnInfo,
    pub pipeline: String,
    pub slot: String,
    pub publication: String,
    pub exclusions: Exclusions,
    pub spill_dir: std::path::PathBuf,
    /// Deliver logical decoding messages (`pg_logical_emit_message`).
    pub messages: bool,
    /// Force protocol version 1 (no streaming of in-progress transactions).
    pub proto_version: Option<u32>,
    pub status_interval: Duration,
    /// Every table the pipeline captures, as (schema, table).
    pub tables: Vec<(String, String)>,
    /// Tables copied before streaming when the slot is created, and added tables
    /// backfilled when they first appear.
    pub snapshot_tables: Vec<(String, String)>,
    /// Snapshot workers (connections copying in parallel).
    pub snapshot_workers: usize,
    /// Rows per page range of a snapshot or backfill.
    pub chunk_rows: u64,
    /// The pipeline state file (snapshot and backfill progress).
    pub state_path: std::path::PathBuf,
    /// Where the state is kept instead of `state_path` (a JetStream log's bucket).
    pub state_store: Option<SharedStore>,
    /// The run holds the pipeline's advisory lock itself (a JetStream log: its sinks must
    /// not deliver before it is the active instance), so sessions do not take it.
    pub lock_held: bool,
    pub progress: Arc<Progress>,
    /// This pipeline's heartbeats as they come through the stream.
    pub arrivals: Arc<crate::heartbeat::Arrivals>,
    /// How long to keep reconnecting after transient errors before giving up with the
    /// last one (`None`: for ever).
    pub reconnect_for: Option<Duration>,
    pub on_slot_lost: SlotLost,
    pub on_unknown_slot: UnknownSlot,
}

/// What to do when the slot this pipeline used is gone or invalidated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotLost {
    /// Stop with the error: nothing is guessed.
    #[default]
    Stop,
    /// Make the slot again and copy every table again, the sinks' tables reset first.
    Resnapshot,
}

/// What to do with an existing slot the pipeline's state has no record of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSlot {
    #[default]
    Stop,
    /// Accept the gap: stream from the slot's confirmed position.
    Adopt,
}

/// Frames read in one turn before the status update and the stop check get a turn.
const FRAMES_PER_TURN: usize = 8192;

/// The slot a session streams from, as decided at its start.
struct OpenSlot {
    /// The configuration, with every table to copy again after a resnapshot.
    cfg: SourceConfig,
    /// Its confirmed position.
    confirmed: Lsn,
    /// It existed before this session (rather than made now): the log was filled from it.
    existed: bool,
}

/// Where one session's stream is.
struct Stream {
    /// The furthest WAL position received.
    received: Lsn,
    /// The server's WAL end from its last keepalive.
    server_end: Lsn,
    /// The end of a transaction received whole and not yet handed to the log.
    pending_commit: Option<Lsn>,
    /// The end of the last transaction handed to the log.
    handed: Lsn,
    /// The position last confirmed to the server.
    confirmed: Lsn,
    /// The server asked for a status update, or the interval passed.
    send_status: bool,
    /// Once a stop is asked for: when to stop even inside a transaction.
    stop_by: Option<tokio::time::Instant>,
    tick: tokio::time::Interval,
}

impl Stream {
    fn new(from: Lsn, status_interval: Duration) -> Stream {
        let mut tick = tokio::time::interval(status_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Stream {
            received: from,
            server_end: Lsn::ZERO,
            pending_commit: None,
            handed: Lsn::ZERO,
            confirmed: from,
            send_status: false,
            stop_by: None,
            tick,
        }
    }
}

/// The refusal of an existing slot this data dir has no record of.
fn unknown_slot(slot: &str) -> PgError {
    PgError::Definite(format!(
        "replication slot {slot:?} exists, but this data dir has no record of it: another \
         instance may have read it past changes that never reached this one's sinks, \
         and those would be lost. Choose one: run this instance on the data dir the \
         slot was used with; or drop the slot (`sluice teardown`) and start again with \
         a full snapshot; or accept the gap with [source] on_unknown_slot = \"adopt\""
    ))
}

/// The worker that owns the replication connection.
pub struct SourceWorker<O: Output> {
    config: SourceConfig,
    output: O,
    /// Created once the lock is first held: creating it empties the spill directory, which
    /// the active instance is using while this one is a standby.
    assembler: Option<Assembler>,
    /// Records of a transaction whose commit has not arrived are in the output.
    uncommitted: bool,
    status: watch::Sender<SourceStatus>,
    /// Opened under the lock, like the assembler.
    state: Option<Arc<PipelineState>>,
    marks: Arc<Watermarks>,
    backfill: Option<(std::thread::JoinHandle<()>, CancellationToken)>,
    /// Backfill requests seen in the stream, handled after the message that carried them.
    requests: Vec<BackfillRequest>,
}

/// 64-bit advisory lock key of a pipeline: a fixed class id plus a hash of its name.
pub fn lock_keys(pipeline: &str) -> (i32, i32) {
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in pipeline.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (0x534c_4345, h as i32) // "SLCE"
}

impl<O: Output> SourceWorker<O> {
    pub fn new(
        config: SourceConfig,
        output: O,
    ) -> std::io::Result<(Self, watch::Receiver<SourceStatus>)> {
        // Fail early if the spill directory cannot exist; it is emptied only under the lock.
        std::fs::create_dir_all(&config.spill_dir)?;
        let (status, rx) = watch::channel(SourceStatus::default());
        let marks =
            Arc::new(Watermarks::new(&config.pipeline).with_arrivals(config.arrivals.clone()));
        Ok((
            SourceWorker {
                config,
                output,
                assembler: None,
                uncommitted: false,
                status,
                state: None,
                marks,
                backfill: None,
                requests: Vec::new(),
            },
            rx,
        ))
    }

    /// Streams until `cancel`, reconnecting after transient errors. Returns the output
    /// (drained) so the caller can close it.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<O, SourceError> {
        let result = self.run_sessions(&cancel).await;
        if let Some((thread, stop)) = self.backfill.take() {
            stop.cancel();
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result.map(|()| self.output)
    }

    async fn run_sessions(&mut self, cancel: &CancellationToken) -> Result<(), SourceError> {
        let cancel = cancel.clone();
        let mut backoff = RECONNECT.start();
        // When the current run of failed attempts began.
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            match self.session(&cancel).await {
                Ok(()) => return Ok(()),
                Err(e) if e.class() == ErrorClass::Transient && !cancel.is_cancelled() => {
                    // A session that got as far as streaming was a success that ended: the
                    // next attempt starts from the shortest wait again.
                    if self.status.borrow().streaming {
                        backoff.reset();
                        failing_since = None;
                    }
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if let Some(limit) = self.config.reconnect_for {
                        if since.elapsed() >= limit {
                            self.status.send_modify(|s| s.streaming = false);
                            return Err(PgError::Definite(format!(
                                "gave up after {} s of reconnecting ([source] reconnect_for_secs); the last error: {e}",
                                limit.as_secs()
                            ))
                            .into());
                        }
                    }
                    self.status.send_modify(|s| {
                        s.streaming = false;
                        s.reconnects += 1;
                        s.last_error = Some(e.to_string());
                    });
                    if let Some(a) = self.assembler.as_mut() {
                        a.reset();
                    }
                    self.output.discard_pending();
                    self.uncommitted = false;
                    let wait = backoff.next_delay();
                    warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "source: connection problem, reconnecting");
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(e) => {
                    self.status.send_modify(|s| {
                        s.streaming = false;
                        s.last_error = Some(e.to_string());
                    });
                    if cancel.is_cancelled() {
                        return Ok(());
                    }
                    return Err(e);
                }
            }
        }
    }

    /// One session: under the lock, decide the slot's life, start the stream where the
    /// log ends, then stream until cancelled or the connection fails.
    async fn session(&mut self, cancel: &CancellationToken) -> Result<(), SourceError> {
        let cfg = self.config.clone();
        let mut catalog = Connection::connect(&cfg.conninfo, false).await?;
        if !cfg.lock_held && !acquire_lock(&mut catalog, &cfg.pipeline, cancel).await? {
            return Ok(());
        }
        let state = self.prepare(&cfg)?;
        let mut repl = Connection::connect(&cfg.conninfo, true).await?;
        let Some(slot) = self
            .open_slot(cfg, &state, &mut catalog, &mut repl, cancel)
            .await?
        else {
            // Cancelled during the initial copy: what was not copied is backfilled later.
            return Ok(());
        };
        self.start_backfills(&slot.cfg, &state, cancel)?;
        let from = self.start_stream(&mut repl, &slot).await?;
        let mut stream = Stream::new(from, slot.cfg.status_interval);
        loop {
            let busy = self
                .read_frames(&mut repl, &mut catalog, &mut stream)
                .await?;
            self.hand_off_ready(&mut stream, busy).await?;
            self.confirm(&mut repl, &mut stream).await?;
            if cancel.is_cancelled() && self.ready_to_stop(&mut stream) {
                return self
                    .drain(&mut repl, stream.received, stream.confirmed, stream.handed)
                    .await;
            }
            if busy {
                continue;
            }
            let stop_by = stream.stop_by;
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if stop_by.is_none() => {}
                _ = tokio::time::sleep_until(stop_by.unwrap_or_else(tokio::time::Instant::now)),
                    if stop_by.is_some() => {}
                _ = self.output.durable().changed() => {}
                _ = stream.tick.tick() => stream.send_status = true,
                r = repl.fill_buffer() => r?,
            }
        }
    }

    /// Set-up once the lock is held: the assembler (which empties the spill directory)
    /// and the pipeline state.
    fn prepare(&mut self, cfg: &SourceConfig) -> Result<Arc<PipelineState>, SourceError> {
        if self.assembler.is_none() {
            let mut asm =
                Assembler::new(cfg.exclusions.clone(), cfg.spill_dir.clone()).map_err(|e| {
                    PgError::Definite(format!(
                        "cannot prepare the spill directory {}: {e}",
                        cfg.spill_dir.display()
                    ))
                })?;
            if !cfg.messages {
                asm.keep_messages_only(vec![
                    backfill::watermark_prefix(&cfg.pipeline),
                    backfill::command_prefix(&cfg.pipeline),
                    crate::heartbeat::PREFIX.to_owned(),
                ]);
            }
            self.assembler = Some(asm);
        }
        if self.state.is_none() {
            let state = match &cfg.state_store {
                Some(store) => PipelineState::with_store(store.0.clone()),
                None => PipelineState::open(&cfg.state_path)?,
            };
            self.state = Some(Arc::new(state));
        }
        Ok(self.state.clone().expect("opened above"))
    }

    /// The slot's life, decided here and only here: the state's record of the slot
    /// against what PostgreSQL shows. Creates it (copying the tables first where asked),
    /// acts on a lost or unknown slot, or checks the existing one. `None`: cancelled
    /// during the initial copy.
    async fn open_slot(
        &mut self,
        mut cfg: SourceConfig,
        state: &Arc<PipelineState>,
        catalog: &mut Connection,
        repl: &mut Connection,
        cancel: &CancellationToken,
    ) -> Result<Option<OpenSlot>, SourceError> {
        let mut slot_row = catalog
            .query(&format!(
                "SELECT plugin, database, active_pid, confirmed_flush_lsn, to_jsonb(s) ->> 'wal_status' \
                 FROM pg_replication_slots s WHERE slot_name = {}",
                quote_literal(&cfg.slot)
            ))
            .await?;
        // The slot this data dir streamed from, or was making when it stopped.
        let used = state.get::<Vec<(String, String)>>(META_KNOWN)?.is_some();
        let known = used
            || state
                .get::<String>(META_CREATING)?
                .is_some_and(|s| s == cfg.slot);
        let lost = match slot_row.first() {
            None => used,
            Some(row) => row.get(4).cloned().flatten().as_deref() == Some("lost"),
        };
        if lost {
            self.slot_lost(&cfg, state, catalog, !slot_row.is_empty())
                .await?;
            // Resnapshot: the slot is gone now and every table is copied again.
            cfg.snapshot_tables = cfg.tables.clone();
            slot_row.clear();
        }
        let Some(row) = slot_row.first() else {
            let confirmed = if cfg.snapshot_tables.is_empty() {
                state.put(META_CREATING, &cfg.slot)?;
                let at = replication::create_slot(repl, &cfg.slot).await?;
                info!(slot = %cfg.slot, consistent_point = %at, "source: created replication slot");
                clear_plans(state)?;
                state.put(META_KNOWN, &cfg.tables)?;
                at
            } else {
                match self
                    .initial_snapshot(&cfg, state, catalog, repl, cancel)
                    .await?
                {
                    Some(at) => at,
                    None => return Ok(None),
                }
            };
            return Ok(Some(OpenSlot {
                cfg,
                confirmed,
                existed: false,
            }));
        };
        if !known && cfg.on_unknown_slot == UnknownSlot::Stop {
            return Err(unknown_slot(&cfg.slot).into());
        }
        let plugin = row.first().cloned().flatten().unwrap_or_default();
        let db = row.get(1).cloned().flatten().unwrap_or_default();
        if plugin != "pgoutput" || db != cfg.conninfo.dbname {
            return Err(PgError::Definite(format!(
                "replication slot {:?} exists for plugin {plugin:?} in database {db:?}; Sluice \
                 needs pgoutput in {:?}: drop it (SELECT pg_drop_replication_slot('{}')) or \
                 rename the pipeline",
                cfg.slot, cfg.conninfo.dbname, cfg.slot
            ))
            .into());
        }
        let confirmed = row
            .get(3)
            .cloned()
            .flatten()
            .and_then(|l| l.parse().ok())
            .unwrap_or_default();
        self.added_tables(&cfg, state, catalog).await?;
        Ok(Some(OpenSlot {
            cfg,
            confirmed,
            existed: true,
        }))
    }

    /// Starts the backfill worker once per run.
    fn start_backfills(
        &mut self,
        cfg: &SourceConfig,
        state: &Arc<PipelineState>,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        if self.backfill.is_none() {
            let stop = cancel.child_token();
            let worker = BackfillWorker {
                conninfo: cfg.conninfo.clone(),
                pipeline: cfg.pipeline.clone(),
                state: state.clone(),
                marks: self.marks.clone(),
                status: self.status.subscribe(),
                exclusions: cfg.exclusions.clone(),
                progress: cfg.progress.clone(),
            };
            self.backfill = Some((worker.spawn(stop.clone())?, stop));
        }
        Ok(())
    }

    /// Sends START_REPLICATION from where the log ends. Returns the position confirmed
    /// from the start: the slot's, or the log's durable end when that is later.
    async fn start_stream(
        &mut self,
        repl: &mut Connection,
        slot: &OpenSlot,
    ) -> Result<Lsn, SourceError> {
        let cfg = &slot.cfg;
        // The server resends from the slot's confirmed position, which it persists lazily
        // (a restart can move it back): asking for the log's end keeps what the log holds
        // from coming again. Only for the slot the log was filled from.
        let from = if slot.existed {
            slot.confirmed.max(*self.output.durable().borrow())
        } else {
            slot.confirmed
        };
        let version = repl.server_version_num();
        let proto_version = cfg
            .proto_version
            .unwrap_or(if version >= 140000 { 2 } else { 1 });
        let opts = StartOptions {
            slot: cfg.slot.clone(),
            publication: cfg.publication.clone(),
            proto_version,
            // Watermarks and backfill requests travel as messages; other messages are
            // dropped unless the pipeline delivers them.
            messages: cfg.messages || version >= 140000,
            // A streamed message carries the top-level xid, so one written in a rolled-back
            // savepoint could not be dropped: with messages on, PostgreSQL assembles
            // transactions itself (spilling to its disk) and sends them at commit.
            streaming: !cfg.messages,
            from,
        };
        replication::start_replication(repl, &opts).await?;
        let streaming = proto_version >= 2 && opts.streaming;
        info!(slot = %cfg.slot, from = %from, proto_version, streaming, "source: streaming");
        self.status.send_modify(|s| {
            s.streaming = true;
            s.confirmed = from;
        });
        Ok(from)
    }

    /// Works through what is buffered, in bounded batches so that status updates still
    /// go out while the stream is saturated. Returns whether the bound was reached.
    async fn read_frames(
        &mut self,
        repl: &mut Connection,
        catalog: &mut Connection,
        stream: &mut Stream,
    ) -> Result<bool, SourceError> {
        let mut frames = 0;
        while frames < FRAMES_PER_TURN {
            let Some(m) = repl.try_read_copy()? else {
                // Buffer exhausted: only when the socket has nothing either is the stream
                // idle, the moment to hand off a commit (group commit); in a backlog,
                // hand-offs happen by size instead.
                if repl.fill_buffer_now()? {
                    continue;
                }
                break;
            };
            frames += 1;
            match replication::parse_stream_message(m)? {
                StreamMessage::XLogData {
                    wal_start,
                    wal_end,
                    data,
                } => {
                    stream.received = stream.received.max(wal_end);
                    if let Some(c) = self.message(catalog, wal_start, &data).await? {
                        stream.pending_commit = Some(c);
                    }
                    if self.output.wants_hand_off() {
                        self.hand_off(stream).await?;
                    }
                }
                StreamMessage::Keepalive { wal_end, reply } => {
                    stream.received = stream.received.max(wal_end);
                    stream.server_end = stream.server_end.max(wal_end);
                    stream.send_status |= reply;
                }
                StreamMessage::Unknown(tag) => {
                    warn!(tag = %(tag as char), "source: skipping unknown replication message");
                }
                StreamMessage::End => {
                    return Err(
                        PgError::Protocol("the server ended the replication stream".into()).into(),
                    )
                }
            }
        }
        Ok(frames == FRAMES_PER_TURN)
    }

    /// Hands the output's buffer to the log with the commit it completes, if any.
    async fn hand_off(&mut self, stream: &mut Stream) -> Result<(), SourceError> {
        let c = stream.pending_commit.take();
        self.output.hand_off(c).await.map_err(SourceError::Output)?;
        stream.handed = stream.handed.max(c.unwrap_or_default());
        Ok(())
    }

    /// After a turn of reading: a commit goes to the log now; records of a transaction
    /// still arriving wait for more (or for the size limit); a record outside any (a
    /// non-transactional message) goes at once.
    async fn hand_off_ready(&mut self, stream: &mut Stream, busy: bool) -> Result<(), SourceError> {
        let loose = !busy && self.output.has_pending() && !self.assembler().in_transaction();
        if stream.pending_commit.is_some() || loose {
            self.hand_off(stream).await?;
        }
        Ok(())
    }

    /// The status update: the durable position, or the server's end when nothing
    /// received is in flight (so idle or filtered streams do not hold WAL back).
    async fn confirm(
        &mut self,
        repl: &mut Connection,
        stream: &mut Stream,
    ) -> Result<(), SourceError> {
        let durable = *self.output.durable().borrow_and_update();
        let mut next = stream.confirmed.max(durable);
        let quiet = !self.assembler().in_transaction()
            && !self.output.has_pending()
            && durable >= stream.handed;
        if quiet {
            next = next.max(stream.server_end);
        }
        if next > stream.confirmed || stream.send_status {
            stream.confirmed = next;
            replication::send_status(repl, stream.received, next, next, false).await?;
            self.status.send_modify(|s| s.confirmed = next);
            debug!(confirmed = %next, "source: status update");
            stream.send_status = false;
        }
        Ok(())
    }

    /// On a stop: part of a transaction already in the output would be sent again after
    /// the restart, so the rest of it is received first, within a bound.
    fn ready_to_stop(&self, stream: &mut Stream) -> bool {
        let deadline = *stream.stop_by.get_or_insert_with(|| {
            if self.uncommitted {
                info!("source: stopping after the transaction in flight");
            }
            tokio::time::Instant::now() + FINISH_TRANSACTION
        });
        if !self.uncommitted {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!("source: stopping inside a transaction; it will be sent again");
            return true;
        }
        false
    }

    fn assembler(&self) -> &Assembler {
        self.assembler.as_ref().expect("created under the lock")
    }

    /// Handles one pgoutput message; returns the end LSN when a transaction committed.
    async fn message(
        &mut self,
        catalog: &mut Connection,
        wal_start: Lsn,
        data: &[u8],
    ) -> Result<Option<Lsn>, SourceError> {
        let output = &mut self.output;
        let assembler = self.assembler.as_mut().expect("created under the lock");
        let (marks, messages, requests) = (&*self.marks, self.config.messages, &mut self.requests);
        let mut emitted = false;
        let mut emit = |r: ChangeRecord| {
            emitted |= route(output, marks, messages, requests, r);
        };
        let mut handled = assembler.handle(wal_start, data, &mut emit)?;
        if let Handled::NeedCatalog {
            types,
            primary_key_of,
        } = handled
        {
            resolve_catalog(catalog, assembler, types, primary_key_of).await?;
            let mut emit = |r: ChangeRecord| {
                emitted |= route(output, marks, messages, requests, r);
            };
            handled = assembler.handle(wal_start, data, &mut emit)?;
        }
        let result = match handled {
            Handled::Done => {
                // (A record emitted outside any transaction is whole by itself.)
                self.uncommitted |= emitted && assembler.in_transaction();
                Ok(None)
            }
            Handled::Commit { end_lsn } => {
                self.uncommitted = false;
                Ok(Some(end_lsn))
            }
            Handled::NeedCatalog { .. } => {
                Err(PgError::Protocol("catalog facts still missing after lookup".into()).into())
            }
            Handled::Replay {
                mut replay,
                end_lsn,
            } => {
                while let Some(r) = replay.next_record()? {
                    route(
                        &mut self.output,
                        &self.marks,
                        self.config.messages,
                        &mut self.requests,
                        r,
                    );
                    if self.output.wants_hand_off() {
                        self.output
                            .hand_off(None)
                            .await
                            .map_err(SourceError::Output)?;
                    }
                }
                self.uncommitted = false;
                Ok(Some(end_lsn))
            }
        };
        for req in std::mem::take(&mut self.requests) {
            self.request(catalog, req).await?;
        }
        result
    }

    /// Shutdown: hand off what is buffered, wait (bounded) until it is durable, send the
    /// final status update, and end the stream.
    async fn drain(
        &mut self,
        repl: &mut Connection,
        received: Lsn,
        mut confirmed: Lsn,
        handed: Lsn,
    ) -> Result<(), SourceError> {
        if self.output.has_pending() {
            self.output
                .hand_off(None)
                .await
                .map_err(SourceError::Output)?;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let durable = *self.output.durable().borrow_and_update();
            confirmed = confirmed.max(durable);
            if durable >= handed {
                break;
            }
            if tokio::time::timeout_at(deadline, self.output.durable().changed())
                .await
                .is_err()
            {
                warn!("source: output did not confirm everything before the shutdown deadline");
                break;
            }
        }
        let _ = replication::send_status(repl, received, confirmed, confirmed, false).await;
        self.status.send_modify(|s| {
            s.confirmed = confirmed;
            s.streaming = false;
        });
        info!(confirmed = %confirmed, "source: stopped");
        Ok(())
    }
}

/// Takes the pipeline's session-level advisory lock if it is free, on `conn`'s session.
pub async fn try_lock(conn: &mut Connection, pipeline: &str) -> Result<bool, PgError> {
    let (a, b) = lock_keys(pipeline);
    let rows = conn
        .query(&format!("SELECT pg_try_advisory_lock({a}, {b})"))
        .await?;
    Ok(rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .as_deref()
        == Some("t"))
}

/// Takes the pipeline's session-level advisory lock, waiting as a standby while another
/// instance holds it. Returns false when cancelled first.
pub async fn acquire_lock(
    conn: &mut Connection,
    pipeline: &str,
    cancel: &CancellationToken,
) -> Result<bool, PgError> {
    let mut announced = false;
    loop {
        if try_lock(conn, pipeline).await? {
            if announced {
                info!(pipeline, "source: took over as the active instance");
            }
            return Ok(true);
        }
        if !announced {
            info!(
                pipeline,
                "source: another instance is active; waiting as a standby"
            );
            announced = true;
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(false),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Looks up type OIDs (following array elements and domain base types) and a primary key.
pub async fn resolve_catalog(
    conn: &mut Connection,
    asm: &mut Assembler,
    types: Vec<u32>,
    primary_key_of: Option<u32>,
) -> Result<(), PgError> {
    resolve_types(conn, asm.types_mut(), types).await?;
    if let Some(rel) = primary_key_of {
        let rows = conn
            .query(&format!(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
                 AND a.attnum = ANY(i.indkey) WHERE i.indrelid = {rel} AND i.indisprimary"
            ))
            .await?;
        asm.set_primary_key(
            rel,
            rows.into_iter()
                .filter_map(|r| r.into_iter().next().flatten())
                .collect(),
        );
    }
    Ok(())
}
