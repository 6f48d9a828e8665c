//! The Redis cache sink: each row under its own key, kept exactly as the table.
//!
//! Keys follow a template, by default `{prefix}{db}.{schema}.{table}.{pk}` (composite keys
//! joined by `.`). A row is a JSON string (default) or a hash with one field per column
//! (NULL columns absent). Deletes remove the key, a truncate every key of its table.
//!
//! Invariants:
//! - Never backwards, one write per batch: every batch is one `MULTI`/`EXEC` that ends by
//!   setting the sink's high-water mark (`{prefix}sluice:applied:{db}.{pipeline}.{sink}`)
//!   to the id and log offset of its last record. Redis applies a transaction whole or
//!   not at all, so the mark always says exactly what the cache holds. A record the mark
//!   covers (an older commit, or the same commit at or before its offset: the log's own
//!   order) is skipped, so a replay after a crash, a retried batch or a repeated backfill
//!   row never writes an older value over a newer one, not even for a moment. After any
//!   error the mark is read again before the next attempt (an `EXEC` may have been applied
//!   without its answer reaching the sink).
//! - The sink is the only writer of its tables' keys (one active instance per pipeline,
//!   rule 6); the mark fences its own replays, not another program's writes.
//! - A truncate commits what comes before it, removes every key of its table (found with
//!   `SCAN` by the template's text around `{pk}`; a key that a longer pattern of another
//!   of the sink's tables matches is that table's), then records itself in the mark; a
//!   crash in between repeats it. A shed sink clears its tables the same way before its
//!   backfill arrives.
//! - Unchanged TOAST columns are merged into the cached row (a hash keeps its other
//!   fields through a small script inside the transaction; a JSON row is read after what
//!   is queued is committed, merged and written). When the row is not cached there is
//!   nothing to merge with: the key is left absent (readers fall back to the database)
//!   and the sink counts it in `sluice_redis_incomplete_rows_total`; it is never cached
//!   with columns missing.
//! - Per-row id hashes of earlier versions (`{prefix}sluice:ids:...`) are honoured until
//!   the stream passes the newest commit they know (records of that commit are checked
//!   row by row), then removed in the transaction that passes it.

use std::fmt::Write as _;

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{ErrorKind, RedisError, ServerErrorKind};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use sluice_core::{metric, Fault, Finding, Op};
use sluice_log::{Record, RecordBatch};
use tracing::{info, warn};

use crate::{finding_for, Built, Capabilities, Context, InFlight, Sink, SinkSpec};

mod applied;
mod clear;
mod script;
mod template;
mod writer;

use applied::{Applied, Legacy};
use clear::KeyPattern;
use script::HMERGE;
pub use template::{check_template, TemplateError, DEFAULT_KEY_TEMPLATE};
use writer::{Reply, Writer};

/// `type = "redis"`: rows cached in Redis, one key per row, fenced by the sink's high-water mark.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Unique name of the sink within the pipeline.
    pub name: String,
    /// `redis://[user:password@]host:port[/db]` or `rediss://` for TLS.
    pub url: String,
    /// Tables this sink takes (default: all); each needs a primary key.
    #[serde(default)]
    pub tables: Vec<String>,
    /// `"json"` (default: the row as a JSON string) or `"hash"` (a field per column).
    #[serde(default)]
    pub format: Format,
    /// `{prefix}` in the key template.
    #[serde(default)]
    pub prefix: String,
    /// Key of a row; placeholders {prefix} {db} {schema} {table} {pk} (composite keys
    /// joined by `.`; `{pk}` exactly once: a truncate finds a table's keys by the text
    /// around it).
    #[serde(default = "default_key_template")]
    pub key_template: String,
    /// Seconds until a cached row expires (default: never).
    #[serde(default)]
    pub ttl_secs: u64,
    /// Records per pipelined batch.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// For `rediss://`: a PEM file of the certificate authorities to trust instead of
    /// the system's (a private CA, or the server's own self-signed certificate).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub ca_file: Option<std::path::PathBuf>,
}

fn default_key_template() -> String {
    DEFAULT_KEY_TEMPLATE.into()
}

fn default_batch() -> usize {
    500
}

/// How long a health check waits for Redis.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

impl RedisConfig {
    /// Where the server is, without the credentials.
    fn target(&self) -> String {
        redis::Client::open(self.url.as_str())
            .map(|c| c.get_connection_info().addr().to_string())
            .unwrap_or_else(|_| "the configured server".into())
    }

    /// Connects, authenticates, and proves the user may write keys and run scripts.
    async fn probe(&self) -> Result<(), Fault> {
        let client = client(&self.url, self.ca_file.as_deref())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CHECK_TIMEOUT))
            .set_response_timeout(Some(CHECK_TIMEOUT));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(classify)?;
        let key = format!("{}sluice:check:{}", self.prefix, self.name);
        redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg("1")
            .arg("PX")
            .arg(10_000)
            .ignore()
            .cmd("EVAL")
            .arg("return redis.call('DEL', KEYS[1])")
            .arg(1)
            .arg(&key)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(classify)
    }
}

impl SinkSpec for RedisConfig {
    const DESCRIPTION: &'static str = "One key per row in Redis, kept identical to the table (JSON or a hash); deletes remove keys, truncates clear the table's keys.";
    const CAPABILITIES: Capabilities = Capabilities {
        needs_primary_key: true,
        ..Capabilities::NONE
    };

    fn name(&self) -> &str {
        &self.name
    }

    fn tables(&self) -> &[String] {
        &self.tables
    }

    fn validate(&self, errs: &mut Vec<String>) {
        let name = &self.name;
        if let Err(e) = check_template(&self.key_template) {
            errs.push(finding_for(name, e));
        }
        if self.batch == 0 {
            errs.push(finding_for(name, "batch must be at least 1"));
        }
        let url = &self.url;
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("unix://"))
        {
            // The URL is not repeated: it may hold a password.
            errs.push(finding_for(
                name,
                "url must start with redis://, rediss:// or unix://",
            ));
        }
        if self.ca_file.is_some() && !url.starts_with("rediss://") {
            errs.push(finding_for(
                name,
                "ca_file is for TLS: use a rediss:// url, or leave ca_file out",
            ));
        }
    }

    async fn check(&self, _ctx: &Context<'_>) -> Vec<Finding> {
        let at = self.target();
        vec![match self.probe().await {
            Ok(()) => Finding::pass(finding_for(
                &self.name,
                format_args!("redis at {at}: authenticated, keys and scripts writable"),
            )),
            Err(f) if f.is_transient() => Finding::warn(
                finding_for(&self.name, format_args!("cannot reach redis at {at}: {f}")),
                "start Redis or correct the sink's url; the sink retries until it answers",
            ),
            Err(f) => Finding::fail(
                finding_for(&self.name, format_args!("redis at {at}: {}", f.message)),
                f.fix.unwrap_or_default(),
            ),
        }]
    }

    async fn build(&self, ctx: &Context<'_>) -> Result<Built, Fault> {
        Ok(Built::Batches {
            sink: Box::new(RedisSink::new(RedisOptions {
                url: self.url.clone(),
                ca_file: self.ca_file.clone(),
                prefix: self.prefix.clone(),
                key_template: self.key_template.clone(),
                format: self.format,
                ttl_secs: self.ttl_secs,
                db: ctx.db.to_owned(),
                pipeline: ctx.pipeline.to_owned(),
                sink: self.name.clone(),
                tables: ctx
                    .tables
                    .iter()
                    .map(|t| {
                        let (s, n) = t.split_once('.').unwrap_or(("public", t));
                        (s.to_owned(), n.to_owned())
                    })
                    .collect(),
                // A shed cache starts over: its tables are cleared, then backfilled.
                reset: ctx.reset.is_some(),
            })),
            // A Redis batch is one pipeline.
            max_records: self.batch,
            window: None,
        })
    }
}

/// A client for `url`; over TLS, trusting the CAs of `ca_file` if given (read now, so a
/// renewed CA file is taken at the next connection).
fn client(url: &str, ca_file: Option<&std::path::Path>) -> Result<redis::Client, Fault> {
    let Some(ca) = ca_file else {
        return redis::Client::open(url).map_err(classify);
    };
    let root_cert = std::fs::read(ca).map_err(|e| {
        Fault::definite(
            format!("redis: cannot read ca_file {}: {e}", ca.display()),
            "point ca_file at a readable PEM file of the CA that signed the server's certificate",
        )
    })?;
    let certs = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    };
    redis::Client::build_with_tls(url, certs).map_err(classify)
}

/// The one classification of Redis errors. Credentials, permissions and a bad URL cannot
/// pass by themselves: the sink stops with the fix. Everything else (a server down or
/// restarting, a timeout, a failover) is retried.
pub fn classify(e: RedisError) -> Fault {
    let definite = |what: &str, fix: &str| Fault::definite(format!("redis: {what}"), fix);
    let code = e.code().unwrap_or_default().to_owned();
    let fault = match e.kind() {
        ErrorKind::AuthenticationFailed => definite(
            "authentication failed (wrong user name or password)",
            "put the right credentials in the sink's url: redis://user:password@host:port",
        ),
        _ if code == "WRONGPASS" => definite(
            "authentication failed (wrong user name or password)",
            "put the right credentials in the sink's url: redis://user:password@host:port",
        ),
        _ if code == "NOAUTH" => definite(
            "the server requires a password and the url gives none",
            "put the credentials in the sink's url: redis://user:password@host:port",
        ),
        ErrorKind::Server(ServerErrorKind::NoPerm) => definite(
            "the user may not run a command the sink needs (GET, SET, DEL, UNLINK, HSET, SCAN, MULTI, EVAL)",
            "grant them, e.g. ACL SETUSER <user> +@read +@write +@scripting ~*",
        ),
        ErrorKind::InvalidClientConfig => definite(
            "the url is not valid",
            "write it as redis://[user:password@]host:port[/db]",
        ),
        // rustls's verdict on the server's certificate: no retry changes it.
        _ if e.to_string().contains("invalid peer certificate") => definite(
            "the server's TLS certificate is not trusted (or not for this host name)",
            "give the CA that signed it as the sink's ca_file, or connect by a name the certificate holds",
        ),
        _ => {
            // A failed pipeline lists every command's error: the first says enough.
            let mut text = e.to_string();
            if text.len() > 300 {
                let mut cut = 300;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push_str("...");
            }
            return Fault::transient(format!("redis: {text}"));
        }
    };
    fault.caused_by(e)
}

/// How rows are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The row as a JSON object in a string.
    #[default]
    Json,
    /// A hash, one field per non-NULL column, values as text.
    Hash,
}

/// What the sink needs (from the `[[sinks]]` entry).
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub url: String,
    /// The CAs to trust for `rediss://` (default: the system's).
    pub ca_file: Option<std::path::PathBuf>,
    pub prefix: String,
    pub key_template: String,
    pub format: Format,
    /// Seconds; 0: keys do not expire.
    pub ttl_secs: u64,
    /// The source database's name (`{db}` in the template).
    pub db: String,
    /// The pipeline's and the sink's names (the high-water mark's key).
    pub pipeline: String,
    pub sink: String,
    /// The captured tables the sink takes, as (schema, table).
    pub tables: Vec<(String, String)>,
    /// Clear the tables before the first delivery: a sink that missed records (shed by
    /// the disk budget) starts over from a backfill, and rows deleted meanwhile must not
    /// stay cached.
    pub reset: bool,
}

/// The Redis sink.
pub struct RedisSink {
    options: RedisOptions,
    conn: Option<ConnectionManager>,
    /// The high-water mark as the sink last read or wrote it; `None` until read (again
    /// after any error: a transaction may have been applied without its answer).
    applied: Option<Option<Applied>>,
    /// `{prefix}sluice:applied:{db}.{pipeline}.{sink}`.
    applied_key: String,
    /// Id hashes of an earlier version, checked until the stream is past them.
    legacy: Option<Legacy>,
    /// Applies the transactions in order (started with the connection).
    writer: Option<Writer>,
    /// The key pattern of each of the sink's tables, by (schema, table).
    patterns: Vec<(String, String, KeyPattern)>,
    incomplete: metrics::Counter,
}

/// A JSON object's members in document order (key columns keep the primary key's order).
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    key: Option<Members>,
    #[serde(default, borrow)]
    after: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    before: Option<Members>,
    #[serde(default)]
    unchanged_toast: Vec<String>,
}

/// A column value as text: strings as they are, everything else as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Keys in one `MSET`: far below Redis's limit of arguments per command, and large
/// enough that a run costs Redis one dispatch per thousands of rows.
const MSET_PAIRS: usize = 4096;

/// The writes of a batch not yet sent: one `MULTI`/`EXEC`, ended by the high-water mark.
///
/// Consecutive whole-row writes without a TTL are gathered into one `MSET`: each command
/// costs Redis its parsing and dispatch and costs redis-rs its encoding, and a backlog
/// drains 13-15% faster this way (BENCHMARKS.md). Order is kept: any other command
/// closes the run first, and within a run a repeated key ends with its last value, as
/// with `SET`s in turn. A run holds at most [`MSET_PAIRS`] keys, so no `batch` setting
/// makes a command longer than Redis accepts (1,048,576 arguments).
struct Tx {
    pipe: redis::Pipeline,
    /// The open `MSET` run, if any, and the keys in it.
    mset: Option<(redis::Cmd, usize)>,
    /// The last record whose writes are queued.
    last: Option<Applied>,
}

impl Tx {
    fn new() -> Tx {
        let mut pipe = redis::pipe();
        pipe.atomic();
        Tx {
            pipe,
            mset: None,
            last: None,
        }
    }

    /// The pipeline, for a command that is not part of an `MSET` run (the run so far is
    /// queued first).
    fn pipe(&mut self) -> &mut redis::Pipeline {
        if let Some((run, _)) = self.mset.take() {
            self.pipe.add_command(run).ignore();
        }
        &mut self.pipe
    }

    fn mset(&mut self, key: &str, value: &str) {
        if self.mset.as_ref().is_some_and(|(_, n)| *n >= MSET_PAIRS) {
            self.pipe();
        }
        let (run, n) = self.mset.get_or_insert_with(|| (redis::cmd("MSET"), 0));
        run.arg(key).arg(value);
        *n += 1;
    }

    /// Everything queued, as one pipeline.
    fn into_pipe(mut self) -> redis::Pipeline {
        self.pipe();
        self.pipe
    }
}

impl RedisSink {
    pub fn new(options: RedisOptions) -> RedisSink {
        let applied_key = format!(
            "{}sluice:applied:{}.{}.{}",
            options.prefix, options.db, options.pipeline, options.sink
        );
        let incomplete = metrics::counter!(
            metric::REDIS_INCOMPLETE_ROWS.name,
            "pipeline" => options.pipeline.clone(),
            "sink" => options.sink.clone()
        );
        let mut sink = RedisSink {
            options,
            conn: None,
            applied: None,
            applied_key,
            legacy: None,
            writer: None,
            patterns: Vec::new(),
            incomplete,
        };
        for (schema, table) in sink.options.tables.clone() {
            sink.pattern(&schema, &table);
        }
        sink
    }

    /// Where a table's key pattern is in `patterns` (added when the table first
    /// appears; looked up for every record, so nothing is allocated when it is known).
    fn pattern(&mut self, schema: &str, table: &str) -> usize {
        if let Some(i) = self
            .patterns
            .iter()
            .position(|(s, t, _)| s == schema && t == table)
        {
            return i;
        }
        let o = &self.options;
        let p = KeyPattern::new(&o.key_template, |name| match name {
            "prefix" => o.prefix.clone(),
            "db" => o.db.clone(),
            "schema" => schema.to_owned(),
            "table" => table.to_owned(),
            other => format!("{{{other}}}"),
        });
        self.patterns.push((schema.to_owned(), table.to_owned(), p));
        self.patterns.len() - 1
    }

    /// Prefix of the keys Sluice keeps beside the rows.
    fn reserved(&self) -> String {
        format!("{}sluice:", self.options.prefix)
    }

    /// An earlier version's id hash of a table.
    fn legacy_hash(&self, schema: &str, table: &str) -> String {
        format!(
            "{}sluice:ids:{}.{schema}.{table}",
            self.options.prefix, self.options.db
        )
    }

    fn row_key(&self, schema: &str, table: &str, key: &Members) -> String {
        let mut pk = String::new();
        for (i, (_, v)) in key.0.iter().enumerate() {
            if i > 0 {
                pk.push('.');
            }
            pk.push_str(&text(v));
        }
        let mut out = String::with_capacity(64);
        let mut rest = self.options.key_template.as_str();
        while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            let end = rest[i..].find('}').map_or(rest.len(), |e| i + e);
            match &rest[i + 1..end] {
                "prefix" => out.push_str(&self.options.prefix),
                "db" => out.push_str(&self.options.db),
                "schema" => out.push_str(schema),
                "table" => out.push_str(table),
                "pk" => out.push_str(&pk),
                other => {
                    let _ = write!(out, "{{{other}}}");
                }
            }
            rest = rest.get(end + 1..).unwrap_or("");
        }
        out.push_str(rest);
        out
    }

    async fn connection(&mut self) -> Result<ConnectionManager, Fault> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let client = client(&self.options.url, self.options.ca_file.as_deref())?;
        // The batch loop retries with its own backoff and sees a stop between attempts;
        // the manager's own retries would hold one attempt for ten seconds or more.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
            .set_response_timeout(Some(std::time::Duration::from_secs(30)));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| classify(e).within("cannot connect"))?;
        info!("redis: connected");
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Before the first batch (and after an error): a shed sink's tables are cleared, the
    /// high-water mark and any earlier version's id hashes are read.
    async fn prepare(&mut self, conn: &mut ConnectionManager) -> Result<(), Fault> {
        let tables: Vec<(String, String)> = self.options.tables.clone();
        if self.options.reset {
            let reserved = self.reserved();
            let all: Vec<KeyPattern> = self.patterns.iter().map(|(_, _, p)| p.clone()).collect();
            let mut removed = 0;
            for p in &all {
                removed += clear::clear(conn, p, &all, &reserved).await?;
            }
            let hashes: Vec<String> = tables.iter().map(|(s, t)| self.legacy_hash(s, t)).collect();
            if !hashes.is_empty() {
                redis::cmd("UNLINK")
                    .arg(&hashes)
                    .query_async::<()>(conn)
                    .await
                    .map_err(classify)?;
            }
            info!(
                tables = tables.len(),
                keys = removed,
                "redis: cleared the tables of a shed sink before its backfill"
            );
            self.options.reset = false;
        }
        let candidates: Vec<String> = tables.iter().map(|(s, t)| self.legacy_hash(s, t)).collect();
        self.legacy = applied::legacy(conn, &candidates).await?;
        self.applied = Some(applied::read(conn, &self.applied_key).await?);
        Ok(())
    }

    /// Submits the queued writes with the high-water mark as one transaction (and, once
    /// the stream is past them, the removal of an earlier version's id hashes). The mark
    /// is taken as written: if the transaction fails, the writer applies nothing after it
    /// and the mark is read again before the next batch.
    fn submit(&mut self, tx: &mut Tx) -> Option<Reply> {
        let last = tx.last.take()?;
        let mut pipe = std::mem::replace(tx, Tx::new()).into_pipe();
        pipe.cmd("SET")
            .arg(&self.applied_key)
            .arg(last.encode())
            .ignore();
        if let Some(l) = self.legacy.take_if(|l| last.id.commit_lsn > l.floor.0) {
            info!("redis: the stream is past the earlier version's id hashes; they are removed");
            pipe.cmd("UNLINK").arg(&l.hashes).ignore();
        }
        self.applied = Some(Some(last));
        Some(self.writer.as_ref().expect("started").submit(pipe))
    }

    /// Submits the queued writes and waits until they and everything submitted before
    /// (an earlier batch still in flight, too) are applied: before the sink reads a row
    /// or removes a table's keys itself.
    async fn commit(&mut self, tx: &mut Tx) -> Result<(), Fault> {
        let reply = match self.submit(tx) {
            Some(reply) => reply,
            None => self.writer.as_ref().expect("started").barrier(),
        };
        let merges = writer::answer(reply).await?;
        count_incomplete(&self.incomplete, merges);
        Ok(())
    }

    /// Queues `r`'s writes, or applies what it needs at once (a truncate, a merge that
    /// reads the cached row).
    async fn add(
        &mut self,
        conn: &mut ConnectionManager,
        tx: &mut Tx,
        r: &Record<'_>,
    ) -> Result<(), Fault> {
        let bad = |e: serde_json::Error| {
            Fault::fatal(format!("record {} is not a change envelope", r.id)).caused_by(e)
        };
        if r.op == Op::Truncate {
            // Everything before it first; the truncate is applied once its mark is
            // written (a crash in between repeats it).
            self.commit(tx).await?;
            let i = self.pattern(r.schema, r.table);
            let table = self.patterns[i].2.clone();
            let all: Vec<KeyPattern> = self.patterns.iter().map(|(_, _, p)| p.clone()).collect();
            let removed = clear::clear(conn, &table, &all, &self.reserved()).await?;
            info!(
                schema = r.schema,
                table = r.table,
                keys = removed,
                "redis: truncate"
            );
            tx.last = Some(Applied::of(r));
            return self.commit(tx).await;
        }
        let env: Envelope = serde_json::from_slice(r.json).map_err(bad)?;
        let Some(key) = env.key.as_ref() else {
            return Ok(());
        };
        self.pattern(r.schema, r.table);
        let row = self.row_key(r.schema, r.table, key);
        if let Some(l) = &self.legacy {
            if (r.id.commit_lsn, r.id.ordinal) <= l.floor
                && (r.id.commit_lsn < l.floor.0
                    || applied::legacy_applied(conn, &self.legacy_hash(r.schema, r.table), &row, r)
                        .await?)
            {
                return Ok(());
            }
        }
        // An update that changed the key: the row leaves its old key.
        let moved_from = match (r.op, &env.before) {
            (Op::Update, Some(before)) => {
                let old = Members(
                    key.0
                        .iter()
                        .map(|(k, _)| {
                            let v = before
                                .0
                                .iter()
                                .find(|(b, _)| b == k)
                                .map(|(_, v)| v.clone());
                            (k.clone(), v.unwrap_or(Value::Null))
                        })
                        .collect(),
                );
                let old = self.row_key(r.schema, r.table, &old);
                (old != row).then_some(old)
            }
            _ => None,
        };
        let toast = !env.unchanged_toast.is_empty();
        let after = match (r.op, env.after) {
            (Op::Delete, _) | (_, None) => None,
            (_, Some(after)) => Some(after),
        };
        match after {
            None => {
                if let Some(old) = &moved_from {
                    tx.pipe().cmd("DEL").arg(old).ignore();
                }
                tx.pipe().cmd("DEL").arg(&row).ignore();
            }
            Some(after) if !toast => {
                if let Some(old) = &moved_from {
                    tx.pipe().cmd("DEL").arg(old).ignore();
                }
                match self.options.format {
                    // The row's JSON as the record carries it, columns in table order.
                    Format::Json => self.set_json(tx, &row, after.get()),
                    Format::Hash => {
                        let columns: Members = serde_json::from_str(after.get()).map_err(bad)?;
                        self.set_hash(tx, &row, columns.0);
                    }
                }
            }
            Some(after) if self.options.format == Format::Hash && moved_from.is_none() => {
                // A hash keeps the fields the update did not send.
                let after: Members = serde_json::from_str(after.get()).map_err(bad)?;
                let (set, null): (Vec<_>, Vec<_>) =
                    after.0.into_iter().partition(|(_, v)| !v.is_null());
                let cmd = tx.pipe().cmd("EVAL").arg(HMERGE).arg(1).arg(&row);
                cmd.arg(self.options.ttl_secs).arg(set.len());
                for (k, v) in set {
                    cmd.arg(k).arg(text(&v));
                }
                for (k, _) in null {
                    cmd.arg(k);
                }
            }
            Some(after) => {
                // Merge with the cached row (under the old key if the key changed): what
                // is queued goes first, so the row read is the one this update follows.
                let after: Members = serde_json::from_str(after.get()).map_err(bad)?;
                self.commit(tx).await?;
                let from = moved_from.as_deref().unwrap_or(&row);
                let cached = self.cached(conn, from).await?;
                if let Some(old) = &moved_from {
                    tx.pipe().cmd("DEL").arg(old).ignore();
                }
                match cached {
                    Some(mut merged) => {
                        for (k, v) in after.0 {
                            match merged.iter_mut().find(|(m, _)| *m == k) {
                                Some(slot) => slot.1 = v,
                                None => merged.push((k, v)),
                            }
                        }
                        match self.options.format {
                            Format::Json => {
                                let map: serde_json::Map<String, Value> =
                                    merged.into_iter().collect();
                                self.set_json(tx, &row, &Value::Object(map).to_string());
                            }
                            Format::Hash => self.set_hash(tx, &row, merged),
                        }
                    }
                    None => {
                        self.incomplete.increment(1);
                        warn!(schema = r.schema, table = r.table, id = %r.id, "redis: an update without its unchanged TOAST columns found no cached row to merge with; the key is left absent");
                        tx.pipe().cmd("DEL").arg(&row).ignore();
                    }
                }
            }
        }
        tx.last = Some(Applied::of(r));
        Ok(())
    }

    fn set_json(&self, tx: &mut Tx, row: &str, json: &str) {
        if self.options.ttl_secs > 0 {
            tx.pipe()
                .cmd("SET")
                .arg(row)
                .arg(json)
                .arg("EX")
                .arg(self.options.ttl_secs)
                .ignore();
        } else {
            tx.mset(row, json);
        }
    }

    /// A whole row as a hash: its non-NULL columns.
    fn set_hash(&self, tx: &mut Tx, row: &str, columns: Vec<(String, Value)>) {
        tx.pipe().cmd("DEL").arg(row).ignore();
        let fields: Vec<_> = columns.iter().filter(|(_, v)| !v.is_null()).collect();
        if !fields.is_empty() {
            let hset = tx.pipe().cmd("HSET").arg(row);
            for (k, v) in fields {
                hset.arg(k).arg(text(v));
            }
            hset.ignore();
            if self.options.ttl_secs > 0 {
                tx.pipe()
                    .cmd("EXPIRE")
                    .arg(row)
                    .arg(self.options.ttl_secs)
                    .ignore();
            }
        }
    }

    /// The cached row under `key`, as columns (hash values come back as text).
    async fn cached(
        &self,
        conn: &mut ConnectionManager,
        key: &str,
    ) -> Result<Option<Vec<(String, Value)>>, Fault> {
        match self.options.format {
            Format::Json => {
                let text: Option<String> = redis::cmd("GET")
                    .arg(key)
                    .query_async(conn)
                    .await
                    .map_err(classify)?;
                Ok(text
                    .and_then(|t| serde_json::from_str::<Members>(&t).ok())
                    .map(|m| m.0))
            }
            Format::Hash => {
                let fields: Vec<(String, String)> = redis::cmd("HGETALL")
                    .arg(key)
                    .query_async(conn)
                    .await
                    .map_err(classify)?;
                Ok((!fields.is_empty()).then(|| {
                    fields
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect()
                }))
            }
        }
    }

    /// Starts the batch's records past the high-water mark, as few transactions as its
    /// reads and truncates allow (one, usually); returns the last one's answer.
    async fn start_batch(
        &mut self,
        conn: &mut ConnectionManager,
        batch: &RecordBatch,
    ) -> Result<Option<Reply>, Fault> {
        let mut tx = Tx::new();
        for r in batch.iter() {
            if r.op == Op::Message {
                continue;
            }
            let applied = self.applied.flatten().or(tx.last);
            if applied.is_some_and(|a| a.covers(&r)) {
                continue;
            }
            self.add(conn, &mut tx, &r).await?;
        }
        Ok(self.submit(&mut tx))
    }
}

/// Counts hash merges that found no row.
fn count_incomplete(counter: &metrics::Counter, rows: i64) {
    if rows > 0 {
        counter.increment(rows as u64);
        warn!(rows, "redis: hash updates without their unchanged TOAST columns found no cached row; those keys are left absent");
    }
}

impl Sink for RedisSink {
    async fn deliver(&mut self, batch: &RecordBatch) -> Result<(), Fault> {
        self.start(batch).await?.await
    }

    async fn start(&mut self, batch: &RecordBatch) -> Result<InFlight, Fault> {
        let mut conn = self.connection().await?;
        if self.writer.as_ref().is_some_and(Writer::failed) {
            // Nothing after the failed transaction applied, and this batch must not be
            // either: the failed one's records come first. The runner starts again from
            // its cursor; the mark then says where the cache is (the failed transaction
            // may have been applied without its answer).
            self.writer = None;
            self.applied = None;
            return Err(Fault::transient(
                "redis: a transaction failed; starting again from the sink's cursor",
            ));
        }
        if self.applied.is_none() {
            self.prepare(&mut conn)
                .await
                .inspect_err(|_| self.applied = None)?;
        }
        if self.writer.is_none() {
            self.writer = Some(Writer::start(conn.clone()));
        }
        match self.start_batch(&mut conn, batch).await {
            Ok(reply) => {
                let incomplete = self.incomplete.clone();
                Ok(Box::pin(async move {
                    if let Some(reply) = reply {
                        count_incomplete(&incomplete, writer::answer(reply).await?);
                    }
                    Ok(())
                }))
            }
            Err(e) => {
                self.applied = None;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_run_of_writes_is_split_into_bounded_msets_in_order() {
        let mut tx = Tx::new();
        let rows = 2 * MSET_PAIRS + 3;
        for i in 0..rows {
            tx.mset(&format!("k{i}"), "v");
        }
        tx.pipe().cmd("DEL").arg("k0").ignore();
        let pipe = tx.into_pipe();
        let cmds: Vec<_> = pipe.cmd_iter().collect();
        let sizes: Vec<usize> = cmds.iter().map(|c| c.args_iter().len()).collect();
        // Three MSETs (name + key/value pairs) in order, then the DEL.
        assert_eq!(
            sizes,
            vec![1 + 2 * MSET_PAIRS, 1 + 2 * MSET_PAIRS, 1 + 2 * 3, 2]
        );
        let first_key = |c: &redis::Cmd| match c.args_iter().nth(1) {
            Some(redis::Arg::Simple(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        assert_eq!(first_key(cmds[1]), format!("k{MSET_PAIRS}"));
        assert_eq!(first_key(cmds[2]), format!("k{}", 2 * MSET_PAIRS));
    }

    #[test]
    fn templates_are_checked_and_filled() {
        check_template(DEFAULT_KEY_TEMPLATE).unwrap();
        assert!(check_template("{prefix}{table}").is_err());
        assert!(check_template("{pk}{tabel}").is_err());
        assert!(check_template("{table}.{pk}.{pk}").is_err());
        let sink = RedisSink::new(RedisOptions {
            url: "redis://127.0.0.1/".into(),
            ca_file: None,
            prefix: "c:".into(),
            key_template: DEFAULT_KEY_TEMPLATE.into(),
            format: Format::Json,
            ttl_secs: 0,
            db: "shop".into(),
            pipeline: "p".into(),
            sink: "cache".into(),
            tables: vec![],
            reset: false,
        });
        let key: Members = serde_json::from_str(r#"{"b":"x y","a":7}"#).unwrap();
        assert_eq!(
            sink.row_key("public", "orders", &key),
            "c:shop.public.orders.x y.7",
            "columns in key order, not sorted"
        );
        assert_eq!(sink.applied_key, "c:sluice:applied:shop.p.cache");
    }
}
