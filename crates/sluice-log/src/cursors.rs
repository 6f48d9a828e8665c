//! Durable sink cursors, in `cursors.redb` beside the segments.
//!
//! A cursor is the offset of the next record its sink has not acknowledged. Invariants:
//! - `acked` moves only forward, and only over a contiguous prefix of acknowledged
//!   records (the sink loop acknowledges whole batches in order).
//! - `persisted` is what a crash would come back to; segments are deleted by it, never by
//!   `acked`, so a restarted sink always finds its records.
//! - A shed cursor no longer holds the log; the shed mark is durable, so the next start
//!   knows the sink missed records and must be backfilled.
//! - A follower (the outbox cleaner) holds the log like any cursor, but at the disk budget
//!   it is shed only when no other cursor holds the oldest segment: it trails the others,
//!   so shedding the one it waits for is what frees it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableTable, TableDefinition};

use crate::LogError;

const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
/// Sinks shed at the disk budget, with the offset where they were.
const SHED: TableDefinition<&str, u64> = TableDefinition::new("shed");

/// One sink's position.
#[derive(Debug)]
pub struct Cursor {
    pub name: String,
    acked: AtomicU64,
    persisted: AtomicU64,
    shed: AtomicBool,
    follower: AtomicBool,
}

impl Cursor {
    /// Offset of the next record to deliver.
    pub fn position(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Everything below `next` is acknowledged.
    pub fn ack(&self, next: u64) {
        self.acked.fetch_max(next, Ordering::AcqRel);
    }

    pub fn persisted(&self) -> u64 {
        self.persisted.load(Ordering::Acquire)
    }

    /// Whether the disk budget detached this sink.
    pub fn is_shed(&self) -> bool {
        self.shed.load(Ordering::Acquire)
    }

    /// Marks this cursor as one that trails other cursors: at the disk budget one of those
    /// is shed first, which lets it catch up.
    pub fn set_follower(&self) {
        self.follower.store(true, Ordering::Release);
    }

    fn is_follower(&self) -> bool {
        self.follower.load(Ordering::Acquire)
    }
}

/// Every cursor of the pipeline.
pub struct CursorStore {
    db: Database,
    path: String,
    cursors: Mutex<BTreeMap<String, Arc<Cursor>>>,
}

impl CursorStore {
    /// Opens (or creates) the cursors' database at `path`.
    pub fn open(path: &Path) -> Result<CursorStore, LogError> {
        let shown = path.display().to_string();
        let db = Database::create(path).map_err(|e| LogError::state(shown.clone(), e))?;
        let store = CursorStore {
            db,
            path: shown,
            cursors: Mutex::new(BTreeMap::new()),
        };
        let tx = store.db.begin_write().map_err(|e| store.err(e))?;
        tx.open_table(CURSORS).map_err(|e| store.err(e))?;
        tx.open_table(SHED).map_err(|e| store.err(e))?;
        tx.commit().map_err(|e| store.err(e))?;
        Ok(store)
    }

    /// The database the cursors live in. Sink state that must survive with them (the
    /// delivery engine's waiting room and dead letters) keeps its own tables here, so
    /// the pipeline has one state file for its sinks.
    pub fn database(&self) -> &Database {
        &self.db
    }

    fn err(&self, e: impl Into<redb::Error>) -> LogError {
        LogError::state(self.path.clone(), e)
    }

    fn stored(&self) -> Result<BTreeMap<String, u64>, LogError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(CURSORS).map_err(|e| self.err(e))?;
        let mut out = BTreeMap::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.insert(k.value().to_owned(), v.value());
        }
        Ok(out)
    }

    /// The furthest stored position (a fresh log starts there).
    pub fn max_position(&self) -> u64 {
        self.stored()
            .ok()
            .and_then(|m| m.values().max().copied())
            .unwrap_or(0)
    }

    /// The cursor of sink `name`, starting at `first` if it has none yet. Also returns the
    /// offset where it was shed in an earlier run, if it was. The mark stays until
    /// [`Self::clear_shed`]: the caller clears it once the re-backfill is requested
    /// durably, so a crash in between requests it again instead of never.
    pub fn register(&self, name: &str, first: u64) -> Result<(Arc<Cursor>, Option<u64>), LogError> {
        let stored = self.stored()?.get(name).copied();
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let shed = {
            let t = tx.open_table(SHED).map_err(|e| self.err(e))?;
            let v = t.get(name).map_err(|e| self.err(e))?.map(|v| v.value());
            v
        };
        // A shed sink restarts from the present; one new to the log from its start.
        let at = match (shed, stored) {
            (Some(_), _) | (None, None) => first,
            (None, Some(p)) => p.max(first),
        };
        {
            let mut t = tx.open_table(CURSORS).map_err(|e| self.err(e))?;
            t.insert(name, at).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        let cursor = Arc::new(Cursor {
            name: name.to_owned(),
            acked: AtomicU64::new(at),
            persisted: AtomicU64::new(at),
            shed: AtomicBool::new(false),
            follower: AtomicBool::new(false),
        });
        self.cursors
            .lock()
            .expect("cursors lock")
            .insert(name.to_owned(), cursor.clone());
        Ok((cursor, shed))
    }

    /// Removes the shed mark of sink `name` (its re-backfill is requested).
    pub fn clear_shed(&self, name: &str) -> Result<(), LogError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(SHED).map_err(|e| self.err(e))?;
            t.remove(name).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Forgets cursors of sinks no longer configured, so they stop holding the log.
    pub fn retain(&self, names: &[&str]) -> Result<(), LogError> {
        let stale: Vec<String> = self
            .stored()?
            .into_keys()
            .filter(|k| !names.contains(&k.as_str()))
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(CURSORS).map_err(|e| self.err(e))?;
            for k in &stale {
                t.remove(k.as_str()).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Registered cursors.
    pub fn all(&self) -> Vec<Arc<Cursor>> {
        self.cursors
            .lock()
            .expect("cursors lock")
            .values()
            .cloned()
            .collect()
    }

    /// The lowest stored position of every cursor in the database (registered in this run
    /// or not yet), shed ones aside.
    pub fn min_stored(&self) -> Result<Option<u64>, LogError> {
        let shed: Vec<String> = {
            let tx = self.db.begin_read().map_err(|e| self.err(e))?;
            let t = tx.open_table(SHED).map_err(|e| self.err(e))?;
            let mut names = Vec::new();
            for row in t.iter().map_err(|e| self.err(e))? {
                names.push(row.map_err(|e| self.err(e))?.0.value().to_owned());
            }
            names
        };
        Ok(self
            .stored()?
            .into_iter()
            .filter(|(name, _)| !shed.contains(name))
            .map(|(_, at)| at)
            .min())
    }

    /// The lowest persisted position of a cursor that holds the log.
    pub(crate) fn min_persisted(&self) -> Option<u64> {
        self.all()
            .iter()
            .filter(|c| !c.is_shed())
            .map(|c| c.persisted())
            .min()
    }

    /// Writes every acknowledged position that moved (one fsync for all).
    pub fn commit(&self) -> Result<(), LogError> {
        let moved: Vec<(Arc<Cursor>, u64)> = self
            .all()
            .into_iter()
            .filter(|c| !c.is_shed())
            .filter_map(|c| {
                let a = c.position();
                (a > c.persisted()).then_some((c, a))
            })
            .collect();
        if moved.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(CURSORS).map_err(|e| self.err(e))?;
            for (c, a) in &moved {
                t.insert(c.name.as_str(), *a).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        for (c, a) in moved {
            c.persisted.fetch_max(a, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Detaches the cursor furthest behind among those below `below` (the end of the
    /// oldest held segment), a follower only if no other cursor is there: a follower there
    /// trails one of them, a follower alone is behind by its own doing. Durably marked;
    /// returns its name.
    pub(crate) fn shed_slowest(&self, below: u64) -> Option<String> {
        let slowest = self
            .all()
            .into_iter()
            .filter(|c| !c.is_shed() && c.persisted() < below)
            .min_by_key(|c| (c.is_follower(), c.persisted()))?;
        let at = slowest.persisted();
        let marked = (|| -> Result<(), LogError> {
            let tx = self.db.begin_write().map_err(|e| self.err(e))?;
            {
                let mut t = tx.open_table(SHED).map_err(|e| self.err(e))?;
                t.insert(slowest.name.as_str(), at)
                    .map_err(|e| self.err(e))?;
            }
            tx.commit().map_err(|e| self.err(e))
        })();
        if let Err(e) = marked {
            // Not shedding without the durable mark: a restart would not know to
            // backfill it. The log grows past its budget instead.
            tracing::error!(error = %e, "log: cannot record a shed sink; writing past the disk budget");
            return None;
        }
        slowest.shed.store(true, Ordering::Release);
        Some(slowest.name.clone())
    }
}
