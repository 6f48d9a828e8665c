//! The registry: every pipeline a server runs, one JSON file each under
//! `<data_dir>/registry/`, whether it came from the API or from a TOML file of the
//! configuration directory. Both kinds are the same entry and run the same way.
//!
//! Invariants:
//! - An entry is written whole or not at all (a temporary file, fsync'd, renamed over the
//!   old one, the directory fsync'd), so a crash leaves the old entry or the new one.
//! - A pipeline's local data lives in `<data_dir>/pipelines/<name>`: the server chooses it,
//!   so a configuration may not name a `data_dir`, nor a `[server]` (the server's own).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_pipeline::Config;

use crate::sealed::SecretKeys;

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

/// Writes `path` whole or not at all: a temporary file beside it (with `mode`), fsync'd,
/// renamed over it, the directory fsync'd.
pub(crate) fn write_whole(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".tmp");
    let tmp = dir.join(name);
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
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
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| e.to_string()))
                .and_then(|mut e| {
                    let (config, old) = self.keys.open(&e.config)?;
                    e.config = config;
                    Ok((e, old))
                }) {
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

/// A TOML configuration file as the JSON value the registry keeps.
pub fn toml_to_value(text: &str) -> Result<Value, String> {
    let t: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
    serde_json::to_value(t).map_err(|e| e.to_string())
}

/// The keys whose values are secrets, wherever they appear in a configuration.
const SECRET_KEYS: &[&str] = &["password", "secret", "token", "tokens", "auth_token"];

/// Whether the value of key `k` is a secret, wherever it appears.
pub(crate) fn is_secret_key(k: &str) -> bool {
    SECRET_KEYS.contains(&k) || k.ends_with("_secret") || k.ends_with("_password") || k == "headers"
}

/// Whether `s` holds a password (`scheme://user:password@`, `password=`).
pub(crate) fn holds_password(s: &str) -> bool {
    redact_url(s) != s
}

/// `value` with every secret replaced by `"<redacted>"`: passwords inside URLs (any
/// string holding `scheme://user:password@`), and the values of secret keys.
pub fn redact(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if is_secret_key(k) && !v.is_null() {
                        Value::String("<redacted>".into())
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        Value::String(s) => Value::String(redact_url(s)),
        v => v.clone(),
    }
}

/// `new` with every value that is `old`'s redacted form (as an API answer showed it)
/// put back to `old`'s: an update sent back with `"<redacted>"` keeps the stored
/// secrets, and a secret given anew replaces them.
pub fn restore_secrets(new: &Value, old: &Value) -> Value {
    if &redact(old) == new {
        return old.clone();
    }
    match (new, old) {
        (Value::Object(n), Value::Object(o)) => Value::Object(
            n.iter()
                .map(|(k, v)| {
                    let v = match o.get(k) {
                        Some(ov) if is_secret_key(k) && v == "<redacted>" => ov.clone(),
                        Some(ov) => restore_secrets(v, ov),
                        None => v.clone(),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        (Value::Array(n), Value::Array(o)) => Value::Array(
            n.iter()
                .enumerate()
                .map(|(i, v)| {
                    o.get(i)
                        .map_or_else(|| v.clone(), |ov| restore_secrets(v, ov))
                })
                .collect(),
        ),
        _ => new.clone(),
    }
}

/// A URL's password (`scheme://user:password@host`) and `password=` parameters replaced.
fn redact_url(s: &str) -> String {
    let mut out = s.to_string();
    if let Some(scheme) = out.find("://") {
        let rest = scheme + 3;
        let end = out[rest..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..end].rfind('@') {
            let userinfo = &out[rest..rest + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest + colon + 1..rest + at, "<redacted>");
            }
        }
    }
    // Key-value connection strings and query parameters.
    for key in ["password=", "sslpassword="] {
        let mut from = 0;
        while let Some(i) = out[from..].find(key) {
            let start = from + i + key.len();
            let end = out[start..]
                .find([' ', '&'])
                .map_or(out.len(), |j| start + j);
            out.replace_range(start..end, "<redacted>");
            from = start + "<redacted>".len();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redacts_passwords_in_urls_and_secret_keys() {
        let v = json!({
            "source": {"url": "postgres://app:s3cret@db:5432/app?sslmode=require"},
            "sinks": [
                {"type": "redis", "url": "rediss://:pw@cache:6380"},
                {"type": "webhook", "url": "https://hooks.example/x", "secret": "abc", "headers": {"X-Key": "k"}},
                {"type": "x", "url": "host=db password=hunter2 user=app"}
            ]
        });
        let r = redact(&v).to_string();
        for secret in ["s3cret", "pw@", "abc", "\"k\"", "hunter2"] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        assert!(
            r.contains("postgres://app:<redacted>@db:5432/app?sslmode=require"),
            "{r}"
        );
        assert!(r.contains("https://hooks.example/x"), "{r}");
        assert!(r.contains("user=app"), "{r}");
    }

    #[test]
    fn an_update_with_redacted_secrets_keeps_the_stored_ones() {
        let old = json!({
            "source": {"url": "postgres://app:s3cret@db/app", "tables": ["public.a"]},
            "sinks": [{"name": "w", "type": "webhook", "url": "https://x/", "secret": "abc"}]
        });
        let mut sent = redact(&old);
        sent["source"]["tables"] = json!(["public.a", "public.b"]);
        let back = restore_secrets(&sent, &old);
        assert_eq!(back["source"]["url"], "postgres://app:s3cret@db/app");
        assert_eq!(back["sinks"][0]["secret"], "abc");
        assert_eq!(back["source"]["tables"], json!(["public.a", "public.b"]));
        // A new secret replaces the old one.
        sent["sinks"][0]["secret"] = json!("new");
        assert_eq!(restore_secrets(&sent, &old)["sinks"][0]["secret"], "new");
    }

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
