//! The pipeline's durable local state: snapshot and backfill plans with their chunk
//! progress, and the tables the pipeline has already captured. One `redb` file in the
//! data directory; values are JSON documents under string keys.
//!
//! Invariants:
//! - Every `put`/`remove` is committed (fsync'd) before it returns: progress recorded here
//!   is never ahead of what is on disk.
//! - Only the instance holding the pipeline's advisory lock opens the file (redb also
//!   refuses a second opener), so a standby never reads half-written progress.

use std::path::Path;

use redb::{Database, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

/// What the operator does with a state file that cannot be used.
const STATE_FIX: &str = "the file is in the pipeline's data_dir; if it is damaged, move it away to start the snapshot over";

/// A failure of the state file. Local disk, so definite: retrying reads the same file.
#[derive(Debug, thiserror::Error)]
#[error("pipeline state {path}: {source} ({STATE_FIX})")]
pub struct StateError {
    path: String,
    #[source]
    source: StateCause,
}

/// What failed underneath a [`StateError`].
#[derive(Debug, thiserror::Error)]
pub enum StateCause {
    /// The database (opening, a transaction, a table, the commit). Boxed: redb's error
    /// is large.
    #[error("{0}")]
    Db(Box<redb::Error>),
    /// A document that does not encode.
    #[error("{0}")]
    Encode(serde_json::Error),
    /// The document under `key` does not decode (a damaged file, or another version's).
    #[error("{key}: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl StateError {
    /// What the operator can do about it.
    pub fn fix(&self) -> &'static str {
        STATE_FIX
    }
}

impl sluice_core::Classify for StateError {
    fn class(&self) -> sluice_core::ErrorClass {
        sluice_core::ErrorClass::Definite
    }
}

/// The state file.
pub struct PipelineState {
    db: Database,
    path: String,
}

impl PipelineState {
    /// Opens (or creates) the state file.
    pub fn open(path: &Path) -> Result<PipelineState, StateError> {
        let shown = path.display().to_string();
        let db = Database::create(path).map_err(|e| StateError {
            path: shown.clone(),
            source: StateCause::Db(Box::new(e.into())),
        })?;
        let state = PipelineState { db, path: shown };
        // Created up front so readers never meet a missing table.
        let tx = state.db.begin_write().map_err(|e| state.err(e))?;
        tx.open_table(STATE).map_err(|e| state.err(e))?;
        tx.commit().map_err(|e| state.err(e))?;
        Ok(state)
    }

    fn err(&self, e: impl Into<redb::Error>) -> StateError {
        self.failed(StateCause::Db(Box::new(e.into())))
    }

    fn failed(&self, source: StateCause) -> StateError {
        StateError {
            path: self.path.clone(),
            source,
        }
    }

    fn undecoded(&self, key: &str, source: serde_json::Error) -> StateError {
        self.failed(StateCause::Decode {
            key: key.to_owned(),
            source,
        })
    }

    /// The document under `key`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StateError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(STATE).map_err(|e| self.err(e))?;
        let Some(v) = table.get(key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| self.undecoded(key, e))
    }

    /// Stores `value` under `key`, durably.
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(value).map_err(|e| self.failed(StateCause::Encode(e)))?;
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = tx.open_table(STATE).map_err(|e| self.err(e))?;
            table
                .insert(key, bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Removes `key`, durably.
    pub fn remove(&self, key: &str) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = tx.open_table(STATE).map_err(|e| self.err(e))?;
            table.remove(key).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Every document whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>, StateError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(STATE).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(|e| self.err(e))? {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            let doc = serde_json::from_slice(v.value()).map_err(|e| self.undecoded(key, e))?;
            out.push((key.to_owned(), doc));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_survive_a_reopen_and_scan_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let s = PipelineState::open(&path).unwrap();
            s.put("plan/public.a", &vec![1, 2]).unwrap();
            s.put("plan/public.b", &vec![3]).unwrap();
            s.put("meta/x", &"y").unwrap();
            s.remove("plan/public.a").unwrap();
        }
        let s = PipelineState::open(&path).unwrap();
        let plans: Vec<(String, Vec<i32>)> = s.scan("plan/").unwrap();
        assert_eq!(plans, vec![("plan/public.b".to_string(), vec![3])]);
        assert_eq!(s.get::<String>("meta/x").unwrap().as_deref(), Some("y"));
        assert_eq!(s.get::<String>("meta/none").unwrap(), None);
    }

    #[test]
    fn a_document_that_does_not_decode_names_its_key_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let s = PipelineState::open(&dir.path().join("state.redb")).unwrap();
        s.put("meta/x", &"y").unwrap();
        let e = s.get::<u64>("meta/x").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("state.redb: meta/x: invalid type"), "{text}");
        assert!(text.ends_with(&format!("({})", e.fix())), "{text}");
        assert!(matches!(
            std::error::Error::source(&e).and_then(|c| c.downcast_ref::<StateCause>()),
            Some(StateCause::Decode { .. })
        ));
        let stop = crate::SourceError::from(e);
        assert_eq!(stop.class(), sluice_core::ErrorClass::Definite);
    }
}
