//! The pipeline configuration file (TOML). Unknown keys are errors that name the key;
//! `validate` is pure (no I/O) and reports every problem with what to change. A sink's
//! own settings are its module's ([`sluice_sinks::SinkConfig`]); this file checks what
//! spans sinks (unique names, tables among the captured ones).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_core::TablePatterns;
pub use sluice_sinks::SinkConfig;

/// Why a config file cannot be used. All of it is the operator's to change (the file,
/// its permissions, its settings), so it is definite.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// Every problem found, each naming the setting and what to change.
    #[error("config {} is not valid:\n  - {}", path.display(), problems.join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl ConfigError {
    /// The problems of a file that parsed but is not valid (each with its fix).
    pub fn problems(&self) -> &[String] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

impl sluice_core::Classify for ConfigError {
    fn class(&self) -> sluice_core::ErrorClass {
        sluice_core::ErrorClass::Definite
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The pipeline's identity and state.
    pub pipeline: PipelineConfig,
    /// The PostgreSQL database to capture.
    pub source: SourceSection,
    /// Where changes go; at least one.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// The embedded log between the source and the sinks.
    #[serde(default)]
    pub log: LogSection,
    /// The HTTP server (health, metrics, SSE); off unless configured or an SSE sink needs it.
    #[serde(default)]
    pub server: Option<ServerSection>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `embedded` (default): segments in the data_dir; `jetstream`: a NATS JetStream
    /// stream, set in `[log.jetstream]`.
    #[serde(default)]
    pub backend: LogBackendKind,
    /// The stream and the NATS connection of `backend = "jetstream"`.
    #[serde(default)]
    pub jetstream: Option<crate::jetstream_log::JetStreamSection>,
    /// Budget of the log in bytes (default: unbounded): the embedded log's disk, a
    /// JetStream stream's `max_bytes`.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// When the budget is reached: `"pause_source"` (default: stop reading the slot until
    /// sinks catch up; the slot's WAL grows) or `"shed_sink"` (detach the slowest sink,
    /// which is backfilled when the pipeline restarts).
    #[serde(default)]
    pub on_full: OnFull,
    /// Segment size in bytes.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Seconds to keep records every sink has passed (SSE clients resume within it).
    #[serde(default = "default_retention")]
    pub retention_secs: u64,
    /// `shed_sink`: seconds over the budget (the source waiting) before the slowest sink
    /// is shed.
    #[serde(default = "default_shed_after")]
    pub shed_after_secs: u64,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            backend: LogBackendKind::Embedded,
            jetstream: None,
            max_bytes: None,
            on_full: OnFull::PauseSource,
            segment_bytes: default_segment_bytes(),
            retention_secs: default_retention(),
            shed_after_secs: default_shed_after(),
        }
    }
}

fn default_segment_bytes() -> u64 {
    64 << 20
}

fn default_retention() -> u64 {
    3600
}

fn default_shed_after() -> u64 {
    5
}

/// Which log a pipeline keeps its changes in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogBackendKind {
    #[default]
    Embedded,
    Jetstream,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    #[default]
    PauseSource,
    ShedSink,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address to listen on (port 0: any free port, logged at start).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// `"token"` (default): endpoints with row data need `Authorization: Bearer <token>`;
    /// `"none"`: no authentication, allowed only on a loopback address.
    #[serde(default)]
    pub auth: Auth,
    /// Accepted tokens, stored hashed: `"sha256:<hex>"` (`sluice token` makes one).
    #[serde(default)]
    pub tokens: Vec<String>,
    /// HTTPS: the server's certificate chain and private key (PEM files, both or
    /// neither), reloaded when they change.
    #[serde(default)]
    pub tls_cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub tls_key: Option<std::path::PathBuf>,
}

fn default_listen() -> String {
    "127.0.0.1:7878".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    #[default]
    Token,
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Unique per database: names the replication slot and publication (`sluice_<name>`).
    pub name: String,
    /// Directory for the pipeline's local state (spill files of large transactions).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./sluice-data")
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// libpq URL or key=value string; `PG*` environment variables fill the gaps.
    pub url: String,
    /// Tables to capture, as `schema.table` or `schema.*`.
    pub tables: Vec<String>,
    /// Columns that never reach a record, a sink or a log, per `schema.table`. They are
    /// dropped as changes are decoded (a publication column list would make PostgreSQL
    /// refuse UPDATE/DELETE on tables with REPLICA IDENTITY FULL).
    #[serde(default)]
    pub exclude_columns: BTreeMap<String, Vec<String>>,
    /// Use this existing publication (created by a DBA) instead of managing one.
    #[serde(default)]
    pub publication: Option<String>,
    /// Deliver logical decoding messages (`pg_logical_emit_message`) as `op = "message"`.
    /// Off by default. When on, in-progress transactions are not streamed: PostgreSQL
    /// tags a streamed message with the top-level transaction, so a message written in a
    /// savepoint that was rolled back could not be told apart and would be delivered.
    #[serde(default)]
    pub messages: bool,
    /// pgoutput protocol version: 1, or 2 (default on PostgreSQL 14+) to stream large
    /// transactions before they commit instead of waiting for them whole.
    #[serde(default)]
    pub protocol_version: Option<u32>,
    /// Seconds between standby status updates when nothing else triggers one.
    #[serde(default = "default_status_interval")]
    pub status_interval_secs: u64,
    /// Seconds between heartbeats written to the source database (0: none): turn it on
    /// when the captured tables can stay idle while the server's other databases write,
    /// so the slot keeps advancing and freshness is measured end to end.
    #[serde(default)]
    pub heartbeat_secs: u64,
    /// After a lost connection or a server error that can pass, keep reconnecting (with
    /// backoff) for this many seconds, then stop with the error so an orchestrator can
    /// act (0, the default: keep reconnecting; each attempt is logged and counted).
    #[serde(default)]
    pub reconnect_for_secs: u64,
    /// What to do when the pipeline's slot was dropped or invalidated while it was away
    /// (changes in between are gone): `"stop"` (default) or `"resnapshot"` (make the
    /// slot again, reset the sinks' tables and copy every table again).
    #[serde(default)]
    pub on_slot_lost: SlotLost,
    /// What to do with an existing slot this data dir has no record of (a standby with an
    /// empty data dir, a slot made by hand): `"stop"` (default: the slot may have been
    /// read past changes that never reached this instance's sinks) or `"adopt"` (accept
    /// that gap and stream from the slot's position).
    #[serde(default)]
    pub on_unknown_slot: UnknownSlot,
    /// Drop the slot to protect the database when the WAL it retains passes this many
    /// bytes while the pipeline cannot make progress (its log is full and waits); the
    /// next start then resnapshots or stops per `on_slot_lost`. 0 (default): never.
    #[serde(default)]
    pub max_slot_lag_bytes: u64,
    /// Write heartbeats into this table (`schema.table` with `pipeline text PRIMARY KEY,
    /// at timestamptz`) instead of as logical messages, where the server needs a table
    /// write (e.g. a managed server that denies `pg_logical_emit_message`).
    #[serde(default)]
    pub heartbeat_table: Option<String>,
    /// `"initial"` (default): copy the tables' existing rows when the pipeline starts for
    /// the first time, and backfill a table added later while the others stream.
    /// `"never"`: stream changes only.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Connections copying in parallel during the initial snapshot (default: the number
    /// of CPU cores).
    #[serde(default)]
    pub snapshot_workers: Option<usize>,
    /// Rows per chunk of a snapshot or backfill (progress is saved per chunk; a backfill
    /// holds one chunk in memory).
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: u64,
    /// Per-table settings, by `schema.table`.
    #[serde(default)]
    pub table: BTreeMap<String, TableOptions>,
}

pub use sluice_pg::source::{SlotLost, UnknownSlot};

/// Whether a table's existing rows are copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    #[default]
    Initial,
    Never,
}

/// Settings of one table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableOptions {
    /// Overrides `source.snapshot` for this table.
    #[serde(default)]
    pub snapshot: Option<SnapshotMode>,
}

fn default_chunk_rows() -> u64 {
    sluice_pg::backfill::DEFAULT_CHUNK_ROWS
}

fn default_status_interval() -> u64 {
    10
}

impl Config {
    /// Reads and parses a config file (no validation).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads, parses and validates a config file; the error lists every problem.
    pub fn load_valid(path: &Path) -> Result<Config, ConfigError> {
        let config = Self::load(path)?;
        config.validate().map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })?;
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks everything that can be checked without I/O; returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        self.validate_with(true)
    }

    /// As [`Config::validate`], for a pipeline of `sluice server`: the server's listener
    /// and tokens are not the pipeline's, so `[server]` is not checked here.
    pub fn validate_managed(&self) -> Result<(), Vec<String>> {
        self.validate_with(false)
    }

    fn validate_with(&self, own_server: bool) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        self.validate_source(&mut errs);
        self.validate_sinks(&mut errs);
        self.validate_log(&mut errs);
        if own_server {
            self.validate_server(&mut errs);
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// The pipeline's name and `[source]`.
    fn validate_source(&self, errs: &mut Vec<String>) {
        let name = &self.pipeline.name;
        if name.is_empty()
            || name.len() > 50
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            errs.push(format!(
                "pipeline.name {name:?} must be 1-50 characters of a-z, 0-9 and _ (it names the slot)"
            ));
        }
        if let Err(e) = sluice_pg::ConnInfo::parse(&self.source.url) {
            errs.push(format!("source.url: {e}"));
        }
        if self.source.tables.is_empty() {
            errs.push(
                "source.tables is empty: list the tables to capture, e.g. [\"public.orders\"]"
                    .into(),
            );
        }
        for t in &self.source.tables {
            if !TablePatterns::is_valid_entry(t) {
                errs.push(format!(
                    "source.tables: {t:?} is not schema.table or schema.*"
                ));
            }
        }
        for table in self.source.exclude_columns.keys() {
            if !self.covers(table) {
                errs.push(format!(
                    "source.exclude_columns: {table:?} is not among source.tables"
                ));
            }
        }
        if let Some(v) = self.source.protocol_version {
            if !(1..=2).contains(&v) {
                errs.push(format!("source.protocol_version = {v}: use 1 or 2"));
            }
        }
        if self.source.chunk_rows == 0 {
            errs.push("source.chunk_rows must be at least 1".into());
        }
        if self.source.snapshot_workers == Some(0) {
            errs.push("source.snapshot_workers must be at least 1".into());
        }
        for table in self.source.table.keys() {
            if !self.covers(table) {
                errs.push(format!("source.table.{table:?} is not among source.tables"));
            }
        }
        if !(1..=3600).contains(&self.source.status_interval_secs) {
            errs.push("source.status_interval_secs must be 1 to 3600".into());
        }
        if self.source.heartbeat_table.is_some() && self.source.heartbeat_secs == 0 {
            errs.push(
                "source.heartbeat_table needs source.heartbeat_secs: how often to write it".into(),
            );
        }
    }

    /// Every `[[sinks]]` entry, and the names and files they must not share.
    fn validate_sinks(&self, errs: &mut Vec<String>) {
        if self.sinks.is_empty() {
            errs.push("no [[sinks]]: add one, e.g. [[sinks]] name = \"changes\" type = \"file\" path = \"changes.jsonl\"".into());
        }
        let mut names = BTreeSet::new();
        let mut paths = BTreeSet::new();
        for s in &self.sinks {
            if !names.insert(s.name()) {
                errs.push(format!("sink name {:?} is used twice", s.name()));
            }
            // A sink's name names its thread, its cursor and its URL path.
            if s.name().is_empty() || s.name().len() > 100 || s.name().chars().any(char::is_control)
            {
                errs.push(format!(
                    "sink name {:?} must be 1 to 100 characters without control characters",
                    s.name()
                ));
            }
            for t in s.tables() {
                if !self.covers(t) && !t.ends_with(".*") {
                    errs.push(format!(
                        "sink {:?}: table {t:?} is not among source.tables",
                        s.name()
                    ));
                }
            }
            if s.name() == sluice_delivery::CLEANER_CURSOR {
                errs.push(format!("sink name {:?} is reserved", s.name()));
            }
            s.validate(errs);
            if let Some(events) = s.events() {
                if events.outbox_tables.is_empty() && events.delete_delivered {
                    errs.push(format!(
                        "sink {:?}: delete_delivered needs outbox_tables (the Debezium-layout tables whose rows are deleted)",
                        s.name()
                    ));
                }
                for t in events.outbox_tables {
                    if !self.covers(t) {
                        errs.push(format!(
                            "sink {:?}: outbox table {t:?} is not among source.tables",
                            s.name()
                        ));
                    }
                }
            }
            if let Some(path) = s.exclusive_path() {
                if !paths.insert(path) {
                    errs.push(format!(
                        "sink {:?}: file {} is used by another sink",
                        s.name(),
                        path.display()
                    ));
                }
            }
        }
    }

    /// `[log]`.
    fn validate_log(&self, errs: &mut Vec<String>) {
        match (self.log.backend, &self.log.jetstream) {
            (LogBackendKind::Jetstream, None) => errs.push(
                "log.backend = \"jetstream\" needs a [log.jetstream] section with the NATS url".into(),
            ),
            (LogBackendKind::Embedded, Some(_)) => errs.push(
                "[log.jetstream] is set but log.backend is \"embedded\": set log.backend = \"jetstream\", or remove the section".into(),
            ),
            (LogBackendKind::Jetstream, Some(js)) => {
                js.validate(errs);
                if self.log.on_full == OnFull::ShedSink {
                    errs.push("log.on_full = \"shed_sink\" is not available with the jetstream log: use \"pause_source\" (a full stream refuses new records until sinks catch up)".into());
                }
            }
            (LogBackendKind::Embedded, None) => {}
        }
        if self.log.segment_bytes < 4096 {
            errs.push("log.segment_bytes must be at least 4096".into());
        }
        if let Some(max) = self.log.max_bytes {
            if max < self.log.segment_bytes.saturating_mul(2) {
                errs.push(format!(
                    "log.max_bytes = {max} must be at least two segments (2 x log.segment_bytes = {})",
                    self.log.segment_bytes.saturating_mul(2)
                ));
            }
        }
    }

    /// `[server]` of `sluice run`.
    fn validate_server(&self, errs: &mut Vec<String>) {
        if let Some(server) = self.server_section() {
            match server.listen.parse::<std::net::SocketAddr>() {
                Err(_) => errs.push(format!(
                    "server.listen {:?} is not an address like 127.0.0.1:7878",
                    server.listen
                )),
                Ok(addr) => {
                    if server.auth == Auth::None && !addr.ip().is_loopback() {
                        errs.push(format!("server.auth = \"none\" is allowed only on a loopback address, not {addr}: set tokens instead"));
                    }
                }
            }
            if server.auth == Auth::Token && server.tokens.is_empty() {
                errs.push("server: no tokens: add tokens = [\"sha256:...\"] (run `sluice token` to make one), or auth = \"none\" on a loopback address".into());
            }
            for t in &server.tokens {
                let ok = t
                    .strip_prefix("sha256:")
                    .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
                if !ok {
                    errs.push("server.tokens: each must be \"sha256:<64 hex digits>\" (the hash, never the token; `sluice token` prints both)".into());
                }
            }
        }
    }

    /// Whether `schema.table` (or `schema.*`) is among the captured tables.
    fn covers(&self, table: &str) -> bool {
        TablePatterns::new(&self.source.tables).covers(table)
    }

    /// The server's settings: as configured, or the defaults when an SSE sink needs it.
    pub fn server_section(&self) -> Option<ServerSection> {
        self.server.clone().or_else(|| {
            self.sinks
                .iter()
                .any(SinkConfig::needs_server)
                .then(|| ServerSection {
                    listen: default_listen(),
                    auth: Auth::Token,
                    tokens: Vec::new(),
                    tls_cert: None,
                    tls_key: None,
                })
        })
    }

    /// The replication slot's name.
    pub fn slot(&self) -> String {
        format!("sluice_{}", self.pipeline.name)
    }

    /// The publication: the configured one, or the pipeline's own.
    pub fn publication(&self) -> String {
        self.source
            .publication
            .clone()
            .unwrap_or_else(|| format!("sluice_{}", self.pipeline.name))
    }

    /// Whether `schema.table`'s existing rows are copied.
    pub fn snapshots(&self, qualified: &str) -> bool {
        self.source
            .table
            .get(qualified)
            .and_then(|t| t.snapshot)
            .unwrap_or(self.source.snapshot)
            == SnapshotMode::Initial
    }

    pub fn exclusions(&self) -> sluice_pg::changes::Exclusions {
        self.source
            .exclude_columns
            .iter()
            .map(|(t, cols)| (t.clone(), cols.iter().cloned().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[pipeline]
name = "shop"
data_dir = "./sluice-data"
[source]
url = "postgres://sluice@127.0.0.1:5432/shop"
tables = ["public.orders", "public.customers"]
exclude_columns = { "public.customers" = ["password_hash"] }
[[sinks]]
name = "changes"
type = "file"
path = "changes.jsonl"
"#;

    #[test]
    fn the_documented_example_is_valid() {
        let c = Config::parse(EXAMPLE).unwrap();
        c.validate().unwrap();
        assert_eq!(c.slot(), "sluice_shop");
        assert_eq!(c.publication(), "sluice_shop");
        assert!(c.exclusions()["public.customers"].contains("password_hash"));
        assert_eq!(c.sinks[0].kind(), "file");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse(&EXAMPLE.replace("data_dir", "datadir"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("datadir"), "{e}");
        let e = Config::parse(&EXAMPLE.replace("path = ", "pth = "))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pth"), "{e}");
        let e = Config::parse(&EXAMPLE.replace("\"file\"", "\"ftp\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ftp"), "{e}");
    }

    #[test]
    fn validation_reports_every_problem() {
        let bad = EXAMPLE
            .replace("\"shop\"", "\"Shop!\"")
            .replace("\"public.orders\", ", "\"orders\", ")
            .replace("5432/shop", "5432/shop?sslmode=sometimes")
            .replace("\"public.customers\" =", "\"public.other\" =");
        let errs = Config::parse(&bad).unwrap().validate().unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:#?}");
        // From a file, the problems stay data and the text lists them, one a line.
        let path = std::env::temp_dir().join(format!("sluice-bad-{}.toml", std::process::id()));
        std::fs::write(&path, &bad).unwrap();
        let e = Config::load_valid(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(e.problems(), &errs[..]);
        assert_eq!(
            e.to_string(),
            format!(
                "config {} is not valid:\n  - {}",
                path.display(),
                errs.join("\n  - ")
            )
        );
        let e = Config::load(&path).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        assert!(e.to_string().starts_with("cannot read config "), "{e}");
    }

    #[test]
    fn delete_delivered_needs_outbox_tables() {
        let hook = |extra: &str| {
            format!("{EXAMPLE}[[sinks]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://h/\"\n{extra}\n")
        };
        let c = Config::parse(&hook("delete_delivered = true")).unwrap();
        let errs = c.validate().unwrap_err();
        assert!(errs[0].contains("needs outbox_tables"), "{errs:?}");
        let c = Config::parse(&hook(
            "outbox_tables = [\"public.orders\"]\ndelete_delivered = true",
        ))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.sinks[1].deletes_delivered(), ["public.orders"]);
        let c = Config::parse(&hook("outbox_tables = [\"public.orders\"]")).unwrap();
        assert!(c.sinks[1].deletes_delivered().is_empty());
    }

    #[test]
    fn a_jetstream_log_needs_its_section_and_pauses_the_source_when_full() {
        let with = |log: &str| {
            Config::parse(&format!("{EXAMPLE}\n{log}"))
                .unwrap()
                .validate()
        };
        let ok = "[log]\nbackend = \"jetstream\"\n[log.jetstream]\nurl = \"nats://a:4222,nats://b:4222\"\nreplicas = 3\n";
        with(ok).unwrap();
        let errs = with("[log]\nbackend = \"jetstream\"\n").unwrap_err();
        assert!(errs[0].contains("[log.jetstream]"), "{errs:?}");
        let errs = with("[log.jetstream]\nurl = \"nats://a:4222\"\n").unwrap_err();
        assert!(errs[0].contains("backend"), "{errs:?}");
        let errs = with(&ok.replace("[log]\n", "[log]\non_full = \"shed_sink\"\n")).unwrap_err();
        assert!(errs[0].contains("pause_source"), "{errs:?}");
        let errs = with(&ok.replace(
            "replicas = 3",
            "replicas = 7\npartitions = 0\nstream = \"a.b\"",
        ))
        .unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
    }
}
