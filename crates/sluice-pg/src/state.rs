//! The pipeline's durable state: snapshot and backfill plans with their chunk progress,
//! and the tables the pipeline has already captured. Values are JSON documents under
//! string keys, in a [`StateStore`]: one `redb` file in the data directory, or (with the
//! log in JetStream) a key-value bucket a standby on another machine reads too.
//!
//! Invariants:
//! - Every `put`/`remove` is durable (fsync'd, or acknowledged by JetStream) before it
//!   returns: progress recorded here is never ahead of what is stored.
//! - Only the instance holding the pipeline's advisory lock opens the state (redb also
//!   refuses a second opener), so a standby never reads half-written progress.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};
use sluice_core::{StateStore, StoreError};

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

/// What the operator does with a state file that cannot be used.
const STATE_FIX: &str = "the file is in the pipeline's data_dir (with the JetStream log: the bucket named); if it is damaged, move it away to start the snapshot over";

/// A failure of the state: definite for the file (retrying reads the same file) and for a
/// document that does not decode; a bucket's server that does not answer is transient.
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
    /// The store (the file's database, a bucket), with its class.
    #[error("{0}")]
    Store(StoreError),
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
        match &self.source {
            StateCause::Store(e) => e.class,
            _ => sluice_core::ErrorClass::Definite,
        }
    }
}

/// The pipeline's state, over a [`StateStore`]: the file (`state.redb`) by default.
pub struct PipelineState {
    store: Arc<dyn StateStore>,
}

impl PipelineState {
    /// Opens (or creates) the state file.
    pub fn open(path: &Path) -> Result<PipelineState, StateError> {
        Ok(PipelineState {
            store: Arc::new(FileStore::open(path)?),
        })
    }

    /// The state kept in `store` (a JetStream log's bucket).
    pub fn with_store(store: Arc<dyn StateStore>) -> PipelineState {
        PipelineState { store }
    }

    fn failed(&self, source: StateCause) -> StateError {
        StateError {
            path: self.store.location(),
            source,
        }
    }

    fn stored(&self, e: StoreError) -> StateError {
        self.failed(StateCause::Store(e))
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<T, StateError> {
        serde_json::from_slice(bytes).map_err(|source| {
            self.failed(StateCause::Decode {
                key: key.to_owned(),
                source,
            })
        })
    }

    /// The document under `key`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StateError> {
        match self.store.get(key).map_err(|e| self.stored(e))? {
            Some(v) => self.decode(key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Stores `value` under `key`, durably.
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(value).map_err(|e| self.failed(StateCause::Encode(e)))?;
        self.store.put(key, &bytes).map_err(|e| self.stored(e))
    }

    /// Removes `key`, durably.
    pub fn remove(&self, key: &str) -> Result<(), StateError> {
        self.store.remove(key).map_err(|e| self.stored(e))
    }

    /// Every document whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>, StateError> {
        let rows = self.store.scan(prefix).map_err(|e| self.stored(e))?;
        rows.into_iter()
            .map(|(k, v)| Ok((k.clone(), self.decode(&k, &v)?)))
            .collect()
    }
}

/// The state file: one redb table of documents.
struct FileStore {
    db: Database,
    path: String,
}

impl FileStore {
    fn open(path: &Path) -> Result<FileStore, StateError> {
        let shown = path.display().to_string();
        let failed = |e: StoreError| StateError {
            path: shown.clone(),
            source: StateCause::Store(e),
        };
        let db = Database::create(path).map_err(|e| failed(definite(e)))?;
        // Created up front so readers never meet a missing table.
        let tx = db.begin_write().map_err(|e| failed(definite(e)))?;
        tx.open_table(STATE).map_err(|e| failed(definite(e)))?;
        tx.commit().map_err(|e| failed(definite(e)))?;
        Ok(FileStore { db, path: shown })
    }
}

/// A local file's failure: retrying reads the same file.
fn definite(e: impl Into<redb::Error>) -> StoreError {
    StoreError {
        class: sluice_core::ErrorClass::Definite,
        source: Box::new(e.into()),
    }
}

impl StateStore for FileStore {
    fn location(&self) -> String {
        self.path.clone()
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(definite)?;
        let table = tx.open_table(STATE).map_err(definite)?;
        Ok(table
            .get(key)
            .map_err(definite)?
            .map(|v| v.value().to_vec()))
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(definite)?;
        {
            let mut table = tx.open_table(STATE).map_err(definite)?;
            table.insert(key, value).map_err(definite)?;
        }
        tx.commit().map_err(definite)
    }

    fn remove(&self, key: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(definite)?;
        {
            let mut table = tx.open_table(STATE).map_err(definite)?;
            table.remove(key).map_err(definite)?;
        }
        tx.commit().map_err(definite)
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(definite)?;
        let table = tx.open_table(STATE).map_err(definite)?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(definite)? {
            let (k, v) = entry.map_err(definite)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_owned(), v.value().to_vec()));
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
