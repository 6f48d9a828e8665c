//! The registry: every pipeline a server runs, one JSON file each under
//! `<data_dir>/registry/`, whether it came from the API or from a TOML file of the
//! configuration directory. Both kinds are the same entry and run the same way.
//!
//! Invariants:
//! - An entry is written whole or not at all (a temporary file, fsync'd, renamed over the
//!   old one, the directory fsync'd), so a crash leaves the old entry or the new one.
//! - A pipeline's local data lives in `<data_dir>/pipelines/<name>`: the server chooses it,
//!   so a configuration may not name a `data_dir`, nor a `[server]` (the server's own).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_pipeline::Config;

use crate::files::write_whole;
use crate::sealed::{SealError, SecretKeys};

/// Where an entry came from: the API, or a file of the configuration directory (which
/// then owns it: the file's changes apply, and the API may not change or delete it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Origin {
    Api,
    File {
        #[schema(value_type = String)]
        path: PathBuf,
    },
}

/// One registered pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub origin: Origin,
    /// Paused by an operator: not run until resumed (kept across restarts).
    #[serde(default)]
    pub paused: bool,
    /// The configuration as given (the TOML file's or the API's), without `data_dir`.
    pub config: Value,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
    pub updated_ms: i64,
}

pub use sluice_core::time::now_ms;

/// The registry directory of a server's data dir.
pub struct Registry {
    root: PathBuf,
    dir: PathBuf,
    /// Seal the secrets of what is written, open those of what is read.
    keys: SecretKeys,
}

impl Registry {
    /// Opens (creating if needed) the registry of the server data dir `root`.
    pub fn open(root: &Path, keys: SecretKeys) -> std::io::Result<Registry> {
        let dir = root.join("registry");
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(root.join("pipelines"))?;
        Ok(Registry {
            root: root.to_owned(),
            dir,
            keys,
        })
    }

    /// Where pipeline `name` keeps its local data.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.root.join("pipelines").join(name)
    }

    /// Every entry; an unreadable one is reported by name and skipped, never guessed.
    /// Entries whose secrets were sealed with the previous key are sealed again under
    /// the current one (the step of a key rotation).
    pub fn load(&self) -> std::io::Result<(Vec<Entry>, Vec<String>)> {
        let (mut entries, mut bad) = (Vec::new(), Vec::new());
        for f in std::fs::read_dir(&self.dir)? {
            let path = f?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match self.read_entry(&path) {
                Ok((e, old)) => {
                    if old {
                        self.put(&e)?;
                    }
                    entries.push(e)
                }
                Err(e) => bad.push(format!("{}: {e}", path.display())),
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((entries, bad))
    }

    /// The entry in `path`, secrets opened; the flag says the previous key opened them.
    fn read_entry(&self, path: &Path) -> Result<(Entry, bool), EntryError> {
        let mut e: Entry = serde_json::from_slice(&std::fs::read(path)?)?;
        let (config, old) = self.keys.open(&e.config)?;
        e.config = config;
        Ok((e, old))
    }

    /// Writes `entry` whole, replacing the one of the same name.
    pub fn put(&self, entry: &Entry) -> std::io::Result<()> {
        let sealed = Entry {
            config: self
                .keys
                .seal(&entry.config)
                .map_err(std::io::Error::other)?,
            ..entry.clone()
        };
        let bytes = serde_json::to_vec_pretty(&sealed).map_err(std::io::Error::other)?;
        write_whole(
            &self.dir.join(format!("{}.json", entry.name)),
            &bytes,
            0o644,
        )
    }

    /// One entry, secrets opened; `None` if there is none (or it cannot be read).
    pub fn get(&self, name: &str) -> Option<Entry> {
        let bytes = std::fs::read(self.dir.join(format!("{name}.json"))).ok()?;
        let mut e: Entry = serde_json::from_slice(&bytes).ok()?;
        e.config = self.keys.open(&e.config).ok()?.0;
        Some(e)
    }

    /// Removes a pipeline's entry (its data is the caller's to remove).
    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir.join(format!("{name}.json"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => std::fs::File::open(&self.dir)?.sync_all(),
        }
    }

    /// The runnable configuration of `value`: parsed, its data dir set to the server's
    /// choice, validated. The error lists every problem with what to change.
    pub fn config(&self, value: &Value) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        if value.pointer("/pipeline/data_dir").is_some() {
            problems.push(
                "pipeline.data_dir: the server keeps each pipeline's data in its own data dir; remove the key".to_string(),
            );
        }
        if value.get("server").is_some() {
            problems.push(
                "server: the server's listener, tokens and allow-lists serve every pipeline; remove the [server] section (tokens are managed at /v1/tokens)".to_string(),
            );
        }
        let mut config: Config = match serde_json::from_value(value.clone()) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("configuration: {e}"));
                return Err(problems);
            }
        };
        config.pipeline.data_dir = self.data_dir(&config.pipeline.name);
        if let Err(errs) = config.validate_managed() {
            problems.extend(errs);
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }
}

/// Why a registry entry, or a file of the configuration directory, could not be read:
/// the file, its JSON or TOML, or its sealed secrets. Reported with the file's name; the
/// texts never hold a secret.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("{0}")]
    Read(#[from] std::io::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("{0}")]
    Sealed(#[from] SealError),
}

/// A TOML configuration file as the JSON value the registry keeps.
pub fn toml_to_value(text: &str) -> Result<Value, EntryError> {
    let t: toml::Value = toml::from_str(text)?;
    Ok(serde_json::to_value(t)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refuses_data_dir_and_server_and_names_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path(), SecretKeys::new([3; 32], None)).unwrap();
        let v = json!({
            "pipeline": {"name": "Bad Name", "data_dir": "/x"},
            "source": {"url": "postgres://u@h/db", "tables": ["public.t"]},
            "server": {"listen": "127.0.0.1:1"},
            "sinks": [{"name": "out", "type": "stdout"}]
        });
        let problems = reg.config(&v).unwrap_err();
        let text = problems.join("\n");
        assert!(text.contains("pipeline.data_dir"), "{text}");
        assert!(text.contains("[server]"), "{text}");
    }

    #[test]
    fn entries_round_trip_and_the_data_dir_is_the_servers() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path(), SecretKeys::new([3; 32], None)).unwrap();
        let v = toml_to_value(
            "[pipeline]\nname = \"orders\"\n[source]\nurl = \"postgres://u@h/db\"\ntables = [\"public.t\"]\n[[sinks]]\nname = \"out\"\ntype = \"stdout\"\n",
        )
        .unwrap();
        let config = reg.config(&v).unwrap();
        assert_eq!(
            config.pipeline.data_dir,
            dir.path().join("pipelines/orders")
        );
        let e = Entry {
            name: "orders".into(),
            origin: Origin::File {
                path: "/etc/sluice/orders.toml".into(),
            },
            paused: true,
            config: v,
            created_ms: 1,
            updated_ms: 2,
        };
        reg.put(&e).unwrap();
        let (all, bad) = reg.load().unwrap();
        assert_eq!((all, bad.len()), (vec![e], 0));
        reg.remove("orders").unwrap();
        assert!(reg.load().unwrap().0.is_empty());
    }
}
