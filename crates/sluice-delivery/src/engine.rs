//! The engine's loop: one task per sink owns every key's queue, the timers and the
//! cursor; deliveries run as tasks beside it and report back.
//!
//! A key is in one of these conditions:
//! - flowing: its records are in memory, the head in flight, queued to go, or waiting
//!   for its retry timer (`busy`), the rest behind it;
//! - held (parked or delayed): its records are in the store; records of the key read
//!   from the log are added to the store, so the cursor moves on;
//! - draining (redriven, or its delay is over): held for new records, while the stored
//!   records are loaded a page at a time and delivered in order; when the store has none
//!   left the key flows again.
//!
//! Records finished past the cursor (it moves over a contiguous prefix only, so one key
//! in retry holds it back) are saved as ranges about once a second; after a crash the
//! log's replay skips them, so a restart repeats only what was in flight or finished in
//! that last second.
//!
//! Time: timers use Tokio's clock, wall-clock times (`deliver_at`, TTL) are read through
//! [`Clock`], which follows Tokio's clock too, so tests can pause time.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{Op, SinkStats};
use sluice_log::{Consumer, Cursor, LogError, RecordBatch, Until};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{error, info, warn};

mod commands;

use crate::state::{Change, KeyRow, KeyState, Store, Stored};
use crate::{
    Command, DeliveryError, Failure, Item, ItemOptions, OnExhausted, Parsed, Policy, Selection,
    Target, Topics,
};

/// The longest wait before a retry, however it was asked for.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Records loaded from the waiting room at a time when a key drains.
const PAGE: usize = 1000;

/// What an engine runs with.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The pipeline's name (a label of the sink's metrics).
    pub pipeline: String,
    pub name: String,
    pub policy: Policy,
    pub items: ItemOptions,
    /// Outbox topics the sink takes (empty: all it reads).
    pub topics: Topics,
}

/// Wall-clock time that follows Tokio's clock (paused in tests).
#[derive(Debug, Clone, Copy)]
struct Clock {
    wall0: i64,
    inst0: Instant,
}

impl Clock {
    fn new() -> Clock {
        let wall0 = sluice_core::time::now_micros();
        Clock {
            wall0,
            inst0: Instant::now(),
        }
    }

    fn micros(&self) -> i64 {
        self.wall0 + self.inst0.elapsed().as_micros() as i64
    }

    fn instant_at(&self, micros: i64) -> Instant {
        let now = Instant::now();
        let ahead = micros - self.micros();
        if ahead <= 0 {
            now
        } else {
            now + Duration::from_micros(ahead as u64)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Read from the log: its offset counts for the cursor.
    Log,
    /// Loaded from the waiting room: deleted from it when finished.
    Waiting,
    /// Redriven from the dead letters: deleted from them when delivered.
    Dead,
}

struct Entry {
    item: Arc<Item>,
    failed: u32,
    first_try: Option<Instant>,
    last_error: String,
    origin: Origin,
}

impl Entry {
    fn new(item: Item, origin: Origin) -> Entry {
        Entry {
            item: Arc::new(item),
            failed: 0,
            first_try: None,
            last_error: String::new(),
            origin,
        }
    }

    fn stored(&self, reason: &str, now: i64) -> Stored {
        Stored {
            item: (*self.item).clone(),
            attempts: self.failed,
            last_error: self.last_error.clone(),
            reason: reason.to_owned(),
            at_micros: now,
        }
    }
}

#[derive(Default)]
struct Key {
    queue: VecDeque<Entry>,
    /// The head is queued to go, in flight, or waiting for its retry.
    busy: bool,
    /// Records read from the log go to the store.
    held: bool,
    /// Held, but delivering its stored records (redriven or due).
    draining: bool,
    /// Offset of the last record loaded while draining.
    loaded_upto: Option<u64>,
    /// The key's stored row, if any.
    row: Option<KeyState>,
    /// Records below this offset are in the store (or were skipped): a replay of them
    /// from the log is dropped.
    upto: u64,
    retry_at: Option<Instant>,
    release_at: Option<Instant>,
}

/// A finished delivery: its keys and how it went.
type Outcome = (Vec<Box<str>>, Result<(), Failure>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Retry,
    Release,
}

/// How often the records finished past the cursor are saved: a crash repeats at most
/// about this much of them.
const SAVE_FINISHED: Duration = Duration::from_secs(1);

struct Engine<T: Target> {
    name: String,
    target: Arc<T>,
    policy: Policy,
    items: ItemOptions,
    topics: Topics,
    store: Store,
    cursor: Arc<Cursor>,
    stats: Arc<SinkStats>,
    clock: Clock,
    keys: HashMap<Box<str>, Key>,
    ready: VecDeque<Box<str>>,
    timers: BinaryHeap<Reverse<(Instant, TimerKind, Box<str>)>>,
    /// Offsets read from the log and not finished.
    outstanding: BTreeSet<u64>,
    /// The offset after the last record read.
    read_next: u64,
    /// Ranges finished past the cursor in an earlier run, skipped when the log replays
    /// them (consumed as reading passes them).
    replayed: VecDeque<(u64, u64)>,
    /// The finished ranges as last saved.
    saved: Vec<(u64, u64)>,
    /// Records of held keys read in this batch, to store together.
    to_store: Vec<Entry>,
    in_flight: JoinSet<Outcome>,
    tokens: f64,
    refilled: Instant,
    rate_wait: Option<Instant>,
    /// The first state error met inside `consider`, returned by the loop.
    failed: Option<DeliveryError>,
    m: Metrics,
}

struct Metrics {
    latency: metrics::Histogram,
    delivered: metrics::Counter,
    failures: metrics::Counter,
    retries: metrics::Counter,
    parked: metrics::Gauge,
    in_flight: metrics::Gauge,
}

/// What the engine of one sink reads from and answers to.
pub struct EngineIo<T> {
    /// Where records go.
    pub target: Arc<T>,
    /// The sink's reader of the log, at its cursor.
    pub consumer: Consumer,
    /// Its waiting room and dead letters.
    pub store: Store,
    pub stats: Arc<SinkStats>,
    /// Operators' requests (redrive, skip).
    pub commands: mpsc::Receiver<Command>,
    pub until: Until,
}

/// Runs the engine for one sink until `drain` (then until nothing read can be delivered
/// at once) or `abort`.
pub async fn run<T: Target>(config: EngineConfig, io: EngineIo<T>) -> Result<(), DeliveryError> {
    let EngineIo {
        target,
        mut consumer,
        store,
        stats,
        mut commands,
        until,
    } = io;
    let labels = [
        ("pipeline", config.pipeline.clone()),
        ("sink", config.name.clone()),
    ];
    let m = Metrics {
        latency: metrics::histogram!(sluice_core::metric::SINK_LATENCY.name, &labels),
        delivered: metrics::counter!(sluice_core::metric::SINK_DELIVERED.name, &labels),
        failures: metrics::counter!(sluice_core::metric::SINK_FAILURES.name, &labels),
        retries: metrics::counter!(sluice_core::metric::DELIVERY_RETRIES.name, &labels),
        parked: metrics::gauge!(sluice_core::metric::DELIVERY_PARKED_KEYS.name, &labels),
        in_flight: metrics::gauge!(sluice_core::metric::DELIVERY_IN_FLIGHT.name, &labels),
    };
    let tokens = config.policy.rate_limit.map(|r| r.max(1.0)).unwrap_or(0.0);
    let mut e = Engine {
        name: config.name,
        target,
        policy: config.policy,
        items: config.items,
        topics: config.topics,
        store,
        read_next: consumer.cursor().position(),
        replayed: VecDeque::new(),
        saved: Vec::new(),
        cursor: consumer.cursor().clone(),
        stats,
        clock: Clock::new(),
        keys: HashMap::new(),
        ready: VecDeque::new(),
        timers: BinaryHeap::new(),
        outstanding: BTreeSet::new(),
        to_store: Vec::new(),
        in_flight: JoinSet::new(),
        tokens,
        refilled: Instant::now(),
        rate_wait: None,
        failed: None,
        m,
    };
    e.load()?;
    let Until { drain, abort } = until;
    let mut batch = RecordBatch::default();
    let mut prune = tokio::time::interval(Duration::from_secs(5));
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut save = tokio::time::interval(SAVE_FINISHED);
    save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut commands_open = true;
    loop {
        // A state error met where the caller could not take it (see `consider`).
        if let Some(err) = e.failed.take() {
            return Err(err);
        }
        if e.cursor.is_shed() {
            error!(sink = %e.name, position = e.cursor.position(), "sink: shed by the log's disk budget; it stops and is backfilled when the pipeline restarts");
            return Ok(());
        }
        e.fill(&mut consumer, &mut batch)?;
        e.dispatch();
        e.cursor.ack(e.position());
        let at_end = consumer.at_end();
        if drain.is_cancelled() && at_end && e.ready.is_empty() && e.in_flight.is_empty() {
            info!(sink = %e.name, position = e.position(), "sink: drained");
            return Ok(());
        }
        let room = e.outstanding.len() < e.policy.window;
        let next_timer = e.timers.peek().map(|Reverse((t, _, _))| *t);
        tokio::select! {
            biased;
            _ = abort.cancelled() => return Ok(()),
            cmd = commands.recv(), if commands_open => match cmd {
                Some(cmd) => e.command(cmd),
                None => commands_open = false,
            },
            Some(done) = e.in_flight.join_next(), if !e.in_flight.is_empty() => {
                let (keys, result) = done
                    .map_err(|j| DeliveryError::Stopped(sluice_core::Fault::fatal(format!("sink {:?}: a delivery task failed", e.name)).caused_by(j)))?;
                e.m.in_flight.set(e.in_flight.len() as f64);
                e.done(keys, result)?;
            }
            _ = sleep_until(next_timer), if next_timer.is_some() => e.fire_timers()?,
            _ = sleep_until(e.rate_wait), if e.rate_wait.is_some() => e.rate_wait = None,
            // Enabled whenever there is room, not only at the end seen above: records may
            // have arrived since, and `wait` returns at once for them.
            r = consumer.wait(), if room => match r {
                Ok(()) => {}
                Err(LogError::Closed) => return Ok(()),
                Err(err) => return Err(err.into()),
            },
            _ = drain.cancelled(), if !drain.is_cancelled() => {}
            _ = prune.tick() => e.prune()?,
            _ = save.tick() => e.save_finished()?,
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl<T: Target> Engine<T> {
    /// The cursor: the first unfinished offset, or the end of what was read.
    fn position(&self) -> u64 {
        self.outstanding.first().copied().unwrap_or(self.read_next)
    }

    /// Whether the record at `offset` was finished past the cursor before a restart.
    fn finished_before(&mut self, offset: u64) -> bool {
        while let Some(&(start, end)) = self.replayed.front() {
            if offset < start {
                return false;
            }
            if offset < end {
                return true;
            }
            self.replayed.pop_front();
        }
        false
    }

    /// The ranges of records read and finished past the persisted cursor.
    fn finished_ranges(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = self.position();
        // Acknowledged, not yet persisted (the cursors are committed a few times a second).
        let persisted = self.cursor.persisted();
        if persisted < at {
            out.push((persisted, at));
        }
        for &o in self.outstanding.range(at..) {
            if o > at {
                out.push((at, o));
            }
            at = o + 1;
        }
        if at < self.read_next {
            out.push((at, self.read_next));
        }
        out
    }

    /// Saves the finished ranges if they changed.
    fn save_finished(&mut self) -> Result<(), DeliveryError> {
        let ranges = self.finished_ranges();
        if ranges != self.saved {
            self.store.save_finished(&ranges)?;
            self.saved = ranges;
        }
        Ok(())
    }

    /// Restores held and draining keys from the store.
    fn load(&mut self) -> Result<(), DeliveryError> {
        let from = self.read_next;
        self.replayed = self
            .store
            .finished()?
            .into_iter()
            .filter(|&(_, end)| end > from)
            .collect();
        let mut parked = 0;
        for (k, row) in self.store.keys()? {
            let k: Box<str> = k.into();
            let key = self.keys.entry(k.clone()).or_default();
            key.upto = row.upto;
            key.row = Some(row.state);
            match row.state {
                KeyState::Parked => {
                    key.held = true;
                    parked += 1;
                }
                KeyState::Delayed => {
                    key.held = true;
                    let at = self
                        .clock
                        .instant_at(row.until_micros.unwrap_or_else(|| self.clock.micros()));
                    key.release_at = Some(at);
                    self.timers.push(Reverse((at, TimerKind::Release, k)));
                }
                KeyState::Released => {
                    key.held = true;
                    key.draining = true;
                    self.next_page(&k)?;
                }
                KeyState::Done => {}
            }
        }
        self.m.parked.set(parked as f64);
        let draining: Vec<Box<str>> = self
            .keys
            .iter()
            .filter(|(_, key)| key.draining)
            .map(|(k, _)| k.clone())
            .collect();
        for k in draining {
            self.consider(&k);
        }
        if parked > 0 {
            warn!(sink = %self.name, keys = parked, "sink: keys are parked in the waiting room; list them with `sluice parked list`");
        }
        Ok(())
    }

    /// Reads what the log holds, as far as the window allows.
    fn fill(
        &mut self,
        consumer: &mut Consumer,
        batch: &mut RecordBatch,
    ) -> Result<(), DeliveryError> {
        while self.outstanding.len() < self.policy.window && !consumer.at_end() {
            let room = (self.policy.window - self.outstanding.len()).min(1000);
            let before = consumer.position();
            consumer.read(batch, room)?;
            if batch.next <= before {
                // Nothing at hand yet (a remote log): the loop's wait takes it from here.
                break;
            }
            let mut dead = Vec::new();
            for r in batch.iter() {
                if self.finished_before(r.offset) {
                    continue;
                }
                let is_event = r.op == Op::Message
                    || (!self.items.outbox_tables.is_empty()
                        && self
                            .items
                            .outbox_tables
                            .contains(&format!("{}.{}", r.schema, r.table)));
                match Item::parse(&r, &self.items) {
                    Parsed::Ignore => {}
                    Parsed::Item(item) => {
                        if is_event && !self.topics.is_empty() && !self.topics.matches(&item.route)
                        {
                            continue;
                        }
                        self.record(item);
                    }
                    Parsed::Bad(item, why) => {
                        warn!(sink = %self.name, id = %item.id, reason = %why, "sink: record cannot be delivered; it goes to the dead letters");
                        let mut entry = Entry::new(item, Origin::Log);
                        entry.last_error = why;
                        dead.push(Change::PutDead(
                            entry.stored("malformed", self.clock.micros()),
                        ));
                    }
                }
            }
            self.read_next = batch.next;
            self.store.apply(&dead, true)?;
            self.flush_held()?;
        }
        Ok(())
    }

    /// Takes one record read from the log.
    fn record(&mut self, item: Item) {
        let k = item.key.clone();
        let key = self.keys.entry(k.clone()).or_default();
        if item.offset < key.upto {
            // Replayed after a restart: the waiting room has it, or it was skipped.
            return;
        }
        self.outstanding.insert(item.offset);
        let entry = Entry::new(item, Origin::Log);
        if key.held {
            key.upto = key.upto.max(entry.item.offset + 1);
            self.to_store.push(entry);
            return;
        }
        key.queue.push_back(entry);
        if key.queue.len() == 1 {
            self.consider(&k);
        }
    }

    /// Stores the records of held keys read in the last batch (one commit), then lets the
    /// cursor pass them.
    fn flush_held(&mut self) -> Result<(), DeliveryError> {
        if self.to_store.is_empty() {
            return Ok(());
        }
        let now = self.clock.micros();
        let mut changes: Vec<Change> = Vec::with_capacity(self.to_store.len() + 8);
        let mut rows: HashMap<Box<str>, ()> = HashMap::new();
        for e in &self.to_store {
            changes.push(Change::PutWaiting(e.stored("", now)));
            rows.insert(e.item.key.clone(), ());
        }
        for k in rows.keys() {
            if let Some(row) = self.row_of(k)? {
                changes.push(Change::PutKey(k.clone(), row));
            }
        }
        self.store.apply(&changes, true)?;
        for e in self.to_store.drain(..) {
            self.outstanding.remove(&e.item.offset);
        }
        Ok(())
    }

    /// The key's stored row with `upto` brought up to date.
    fn row_of(&self, k: &str) -> Result<Option<KeyRow>, DeliveryError> {
        let Some(key) = self.keys.get(k) else {
            return Ok(None);
        };
        let mut row = self.store.key(k)?.unwrap_or(KeyRow {
            state: key.row.unwrap_or(KeyState::Done),
            upto: 0,
            reason: String::new(),
            attempts: 0,
            last_error: String::new(),
            since_micros: 0,
            until_micros: None,
        });
        row.upto = row.upto.max(key.upto);
        Ok(Some(row))
    }

    /// Decides what the key's head does next: expire, wait for its time, or go.
    fn consider(&mut self, k: &str) {
        loop {
            let Some(key) = self.keys.get_mut(k) else {
                return;
            };
            if key.busy || (key.held && !key.draining) {
                return;
            }
            let Some(head) = key.queue.front() else {
                if key.draining {
                    if let Err(e) = self.next_page(k) {
                        self.fail(e);
                        return;
                    }
                    let more = self.keys.get(k).is_some_and(|key| !key.queue.is_empty());
                    if more {
                        continue;
                    }
                }
                self.forget_if_idle(k);
                return;
            };
            let now = self.clock.micros();
            if head.item.expires_at_micros.is_some_and(|t| t <= now) {
                if let Err(e) = self.dead_letter_head(k, "expired") {
                    self.fail(e);
                    return;
                }
                continue;
            }
            if let Some(at) = head.item.deliver_at_micros.filter(|&t| t > now) {
                if let Err(e) = self.hold(k, KeyState::Delayed, Some(at)) {
                    self.fail(e);
                }
                return;
            }
            key.busy = true;
            self.ready.push_back(k.into());
            return;
        }
    }

    /// Keeps the first state error for the loop, which stops the sink with it: the key it
    /// came from stays where it was (the cursor behind it), so nothing is lost.
    fn fail(&mut self, e: DeliveryError) {
        error!(sink = %self.name, error = %e, "sink: the waiting room failed; the sink stops");
        self.failed.get_or_insert(e);
    }

    fn forget_if_idle(&mut self, k: &str) {
        if let Some(key) = self.keys.get(k) {
            if key.queue.is_empty() && !key.busy && !key.held && key.row.is_none() {
                self.keys.remove(k);
            }
        }
    }

    /// Starts deliveries while the limits allow.
    fn dispatch(&mut self) {
        while self.in_flight.len() < self.policy.concurrency && !self.ready.is_empty() {
            if let Some(rate) = self.policy.rate_limit {
                let now = Instant::now();
                let burst = rate.max(1.0);
                self.tokens = (self.tokens
                    + now.duration_since(self.refilled).as_secs_f64() * rate)
                    .min(burst);
                self.refilled = now;
                if self.tokens < 1.0 {
                    let wait = Duration::from_secs_f64((1.0 - self.tokens) / rate);
                    self.rate_wait = Some(now + wait);
                    return;
                }
            }
            let first = self.ready.pop_front().expect("not empty");
            let mut keys = vec![first];
            let route = self.head(&keys[0]).map(|e| e.item.route.clone());
            let mut budget = self.policy.batch.saturating_sub(1);
            if let Some(rate) = self.policy.rate_limit {
                budget = budget
                    .min((self.tokens - 1.0).max(0.0) as usize)
                    .min(rate as usize);
            }
            if budget > 0 {
                // Same-route heads join the call; a bounded scan keeps this cheap.
                let mut i = 0;
                let scan = self.policy.batch.saturating_mul(4).min(self.ready.len());
                let mut scanned = 0;
                while i < self.ready.len() && budget > 0 && scanned < scan {
                    scanned += 1;
                    let same = self
                        .head(&self.ready[i])
                        .is_some_and(|e| Some(&e.item.route) == route.as_ref());
                    if same {
                        keys.push(self.ready.remove(i).expect("index checked"));
                        budget -= 1;
                    } else {
                        i += 1;
                    }
                }
            }
            let now = Instant::now();
            let mut items = Vec::with_capacity(keys.len());
            for k in &keys {
                if let Some(head) = self.keys.get_mut(k).and_then(|key| key.queue.front_mut()) {
                    head.first_try.get_or_insert(now);
                    items.push(head.item.clone());
                }
            }
            if self.policy.rate_limit.is_some() {
                self.tokens -= items.len() as f64;
            }
            let delivery = self.target.deliver(items);
            self.in_flight.spawn(async move { (keys, delivery.await) });
            self.m.in_flight.set(self.in_flight.len() as f64);
        }
    }

    fn head(&self, k: &str) -> Option<&Entry> {
        self.keys.get(k).and_then(|key| key.queue.front())
    }

    /// A delivery's outcome, for each of its keys.
    fn done(
        &mut self,
        keys: Vec<Box<str>>,
        result: Result<(), Failure>,
    ) -> Result<(), DeliveryError> {
        match result {
            Ok(()) => {
                for k in &keys {
                    self.complete_head(k)?;
                }
            }
            Err(Failure::Stop(why)) => {
                return Err(DeliveryError::Stopped(
                    why.within(format_args!("sink {:?}", self.name)),
                ))
            }
            Err(Failure::Reject(why)) => {
                self.m.failures.increment(keys.len() as u64);
                for k in &keys {
                    if let Some(head) = self.keys.get_mut(k).and_then(|key| key.queue.front_mut()) {
                        head.failed += 1;
                        head.last_error = why.clone();
                        warn!(sink = %self.name, id = %head.item.id, error = %why, "sink: the receiver refused the record; it goes to the dead letters");
                    }
                    self.dead_letter_head(k, "rejected")?;
                    self.unbusy(k);
                }
            }
            Err(Failure::Retry { error, after }) => {
                self.m.failures.increment(keys.len() as u64);
                self.stats
                    .failures
                    .fetch_add(keys.len() as u64, Ordering::Relaxed);
                let now = self.clock.micros();
                for k in &keys {
                    let retry = &self.policy.retry;
                    let Some(head) = self.keys.get_mut(k).and_then(|key| key.queue.front_mut())
                    else {
                        continue;
                    };
                    head.failed += 1;
                    head.last_error = error.clone();
                    let age = head.first_try.map(|t| t.elapsed()).unwrap_or_default();
                    // Bounded whatever asked for it (a consumer's delay, a server's
                    // Retry-After): a deadline must stay far from the clock's end.
                    let wait = after
                        .unwrap_or_else(|| retry.backoff(head.failed))
                        .min(MAX_RETRY_WAIT);
                    // A record that expires before it could be retried goes as `expired`.
                    let expires_first = head
                        .item
                        .expires_at_micros
                        .is_some_and(|t| t <= now + wait.as_micros() as i64);
                    if retry.exhausted(head.failed, age) && !expires_first {
                        warn!(sink = %self.name, id = %head.item.id, attempts = head.failed, error = %error, "sink: retries exhausted");
                        match self.policy.on_exhausted {
                            OnExhausted::DeadLetter => {
                                self.dead_letter_head(k, "exhausted")?;
                                self.unbusy(k);
                            }
                            OnExhausted::Park => self.park(k)?,
                        }
                        continue;
                    }
                    self.m.retries.increment(1);
                    let at = Instant::now() + wait;
                    if let Some(key) = self.keys.get_mut(k) {
                        key.retry_at = Some(at);
                    }
                    self.timers.push(Reverse((at, TimerKind::Retry, k.clone())));
                }
            }
        }
        Ok(())
    }

    fn unbusy(&mut self, k: &str) {
        if let Some(key) = self.keys.get_mut(k) {
            key.busy = false;
            key.retry_at = None;
        }
        self.consider(k);
    }

    /// The head was delivered.
    fn complete_head(&mut self, k: &str) -> Result<(), DeliveryError> {
        let Some(entry) = self.keys.get_mut(k).and_then(|key| key.queue.pop_front()) else {
            return Ok(());
        };
        match entry.origin {
            Origin::Log => {
                self.outstanding.remove(&entry.item.offset);
                let ts = entry.item.commit_ts_micros;
                if ts > 0 {
                    let now = self.clock.micros();
                    self.m.latency.record((now - ts).max(0) as f64 / 1e6);
                    self.stats.last_commit_ts.fetch_max(ts, Ordering::Relaxed);
                }
            }
            // Losing these removals in a crash only repeats a delivery: no fsync.
            Origin::Waiting => self.store.apply(
                &[Change::DelWaiting(
                    entry.item.key.clone(),
                    entry.item.offset,
                )],
                false,
            )?,
            Origin::Dead => self
                .store
                .apply(&[Change::DelDead(entry.item.offset)], false)?,
        }
        self.m.delivered.increment(1);
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        self.unbusy(k);
        Ok(())
    }

    /// Moves the key's head to the dead letters.
    fn dead_letter_head(&mut self, k: &str, reason: &str) -> Result<(), DeliveryError> {
        let Some(entry) = self.keys.get_mut(k).and_then(|key| key.queue.pop_front()) else {
            return Ok(());
        };
        let mut changes = vec![Change::PutDead(entry.stored(reason, self.clock.micros()))];
        if entry.origin == Origin::Waiting {
            changes.push(Change::DelWaiting(
                entry.item.key.clone(),
                entry.item.offset,
            ));
        }
        self.store.apply(&changes, true)?;
        if entry.origin == Origin::Log {
            self.outstanding.remove(&entry.item.offset);
        }
        metrics::counter!(sluice_core::metric::DELIVERY_DEAD_LETTERS.name, "sink" => self.name.clone(), "reason" => reason.to_owned())
            .increment(1);
        Ok(())
    }

    /// Retries ran out: the key and everything behind it go to the waiting room.
    fn park(&mut self, k: &str) -> Result<(), DeliveryError> {
        let (attempts, last_error) = self
            .head(k)
            .map(|h| (h.failed, h.last_error.clone()))
            .unwrap_or_default();
        self.hold_with(k, KeyState::Parked, None, "exhausted", attempts, last_error)?;
        self.m.parked.increment(1.0);
        Ok(())
    }

    fn hold(&mut self, k: &str, state: KeyState, until: Option<i64>) -> Result<(), DeliveryError> {
        self.hold_with(k, state, until, "", 0, String::new())
    }

    /// Stores the key's records in memory and holds the key.
    fn hold_with(
        &mut self,
        k: &str,
        state: KeyState,
        until: Option<i64>,
        reason: &str,
        attempts: u32,
        last_error: String,
    ) -> Result<(), DeliveryError> {
        let now = self.clock.micros();
        let Some(key) = self.keys.get_mut(k) else {
            return Ok(());
        };
        let mut changes = Vec::with_capacity(key.queue.len() + 1);
        for e in &key.queue {
            key.upto = key.upto.max(e.item.offset + 1);
            match e.origin {
                Origin::Log => changes.push(Change::PutWaiting(e.stored("", now))),
                Origin::Waiting => {}
                Origin::Dead => {
                    changes.push(Change::PutWaiting(e.stored("", now)));
                    changes.push(Change::DelDead(e.item.offset));
                }
            }
        }
        changes.push(Change::PutKey(
            k.into(),
            KeyRow {
                state,
                upto: key.upto,
                reason: reason.to_owned(),
                attempts,
                last_error,
                since_micros: now,
                until_micros: until,
            },
        ));
        self.store.apply(&changes, true)?;
        let key = self.keys.get_mut(k).expect("looked up above");
        for e in key.queue.drain(..) {
            if e.origin == Origin::Log {
                self.outstanding.remove(&e.item.offset);
            }
        }
        key.busy = false;
        key.retry_at = None;
        key.held = true;
        key.draining = false;
        key.loaded_upto = None;
        key.row = Some(state);
        if let Some(until) = until {
            let at = self.clock.instant_at(until);
            key.release_at = Some(at);
            self.timers
                .push(Reverse((at, TimerKind::Release, k.into())));
        }
        Ok(())
    }

    /// Starts delivering a held key's stored records.
    fn release(&mut self, k: &str) -> Result<(), DeliveryError> {
        let Some(key) = self.keys.get_mut(k) else {
            return Ok(());
        };
        if !key.held || key.draining {
            return Ok(());
        }
        if key.row == Some(KeyState::Parked) {
            self.m.parked.decrement(1.0);
        }
        key.draining = true;
        key.release_at = None;
        key.loaded_upto = None;
        key.row = Some(KeyState::Released);
        if let Some(row) = self.row_of(k)? {
            self.store.apply(
                &[Change::PutKey(
                    k.into(),
                    KeyRow {
                        state: KeyState::Released,
                        ..row
                    },
                )],
                true,
            )?;
        }
        self.consider(k);
        Ok(())
    }

    /// Loads the next stored records of a draining key; with none left, the key flows
    /// again and only its `upto` mark stays.
    fn next_page(&mut self, k: &str) -> Result<(), DeliveryError> {
        let from = self
            .keys
            .get(k)
            .and_then(|key| key.loaded_upto)
            .map_or(0, |o| o + 1);
        let page = self.store.waiting(k, from, PAGE)?;
        let Some(key) = self.keys.get_mut(k) else {
            return Ok(());
        };
        if page.is_empty() {
            key.held = false;
            key.draining = false;
            key.loaded_upto = None;
            key.row = Some(KeyState::Done);
            let row = self.row_of(k)?.map(|row| KeyRow {
                state: KeyState::Done,
                reason: String::new(),
                last_error: String::new(),
                attempts: 0,
                until_micros: None,
                ..row
            });
            if let Some(row) = row {
                self.store.apply(&[Change::PutKey(k.into(), row)], false)?;
            }
            return Ok(());
        }
        for s in page {
            key.loaded_upto = Some(s.item.offset);
            key.queue.push_back(Entry::new(s.item, Origin::Waiting));
        }
        Ok(())
    }

    fn fire_timers(&mut self) -> Result<(), DeliveryError> {
        let now = Instant::now();
        while let Some(Reverse((at, kind, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let (at, kind, k) = (*at, *kind, self.timers.pop().expect("peeked").0 .2);
            let Some(key) = self.keys.get_mut(&k) else {
                continue;
            };
            match kind {
                TimerKind::Retry if key.retry_at == Some(at) => self.unbusy(&k),
                TimerKind::Release if key.release_at == Some(at) => self.release(&k)?,
                _ => {} // superseded
            }
        }
        Ok(())
    }

    /// Drops `upto` marks the persisted cursor has passed: the log no longer replays them.
    fn prune(&mut self) -> Result<(), DeliveryError> {
        let persisted = self.cursor.persisted();
        let done: Vec<Box<str>> = self
            .keys
            .iter()
            .filter(|(_, key)| {
                key.row == Some(KeyState::Done) && !key.held && key.upto <= persisted
            })
            .map(|(k, _)| k.clone())
            .collect();
        if done.is_empty() {
            return Ok(());
        }
        let changes: Vec<Change> = done.iter().map(|k| Change::DelKey(k.clone())).collect();
        self.store.apply(&changes, false)?;
        for k in &done {
            if let Some(key) = self.keys.get_mut(k) {
                key.row = None;
                key.upto = 0;
            }
            self.forget_if_idle(k);
        }
        Ok(())
    }
}
