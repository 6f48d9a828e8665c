//! The Redis cache sink: each row under its own key, kept exactly as the table.
//!
//! Keys follow a template, by default `{prefix}{db}.{schema}.{table}.{pk}` (composite keys
//! joined by `.`). A row is a JSON string (default) or a hash with one field per column
//! (NULL columns absent). Deletes remove the key, a truncate every key of its table.
//!
//! Invariants:
//! - Never backwards: every write runs in a Lua script that compares the change's id with
//!   the id stored for that key (in the table's id hash, `{prefix}sluice:ids:{db}.{schema}.{table}`,
//!   field = the row's key) and with the table's last truncate; an older or equal id is
//!   ignored. So redelivery after a crash, a retried batch or a backfill row older than
//!   the cache cannot overwrite newer data. Deleted rows leave their id as a tombstone.
//! - Unchanged TOAST columns are merged into the cached row (a hash keeps its other
//!   fields; a JSON row is read, merged and written). When the row is not cached there is
//!   nothing to merge with: the key is left absent (readers fall back to the database)
//!   and the sink counts it in `sluice_redis_incomplete_rows_total`; it is never cached
//!   with columns missing.
//! - The id hash also keeps `\0max`, the newest id written to the table by any writer
//!   (every write path raises it, a truncate sets it). A write whose id is newer than
//!   `\0max` cannot be older than anything cached for the table, so it needs no per-row
//!   read: the fast path writes its id and its row as plain commands. Everything else
//!   (snapshot rows older than what streaming wrote, replays after a crash, TOAST merges,
//!   key changes) goes through the fenced script, which compares per row.
//! - A batch is one `MULTI`/`EXEC` under `WATCH` of its tables' id hashes, so the fast
//!   path's decision (taken from `\0max` as read before) holds when it is applied; if
//!   another writer touched a table meanwhile, the batch runs again fenced. A batch that
//!   needs a read between its writes (a TOAST merge of a JSON row) runs fenced, as
//!   several calls in order. Any error retries the whole batch (idempotent through the
//!   fence), so a Redis restart is back-pressure, never loss.
//! - An id hash written before `\0max` existed is fenced row by row until its maximum is
//!   found (one `HSCAN` pass) and recorded.

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

use crate::{finding_for, Built, Context, Sink, SinkSpec};

mod fence;
mod script;

use fence::Fences;
use script::{Pending, TRUNCATE, WRITE};

/// `type = "redis"`: rows cached in Redis, one key per row, fenced by change id.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// joined by `.`).
    #[serde(default = "default_key_template")]
    pub key_template: String,
    /// Seconds until a cached row expires (default: never).
    #[serde(default)]
    pub ttl_secs: u64,
    /// Records per pipelined batch.
    #[serde(default = "default_batch")]
    pub batch: usize,
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
        let client = redis::Client::open(self.url.as_str()).map_err(classify)?;
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
                prefix: self.prefix.clone(),
                key_template: self.key_template.clone(),
                format: self.format,
                ttl_secs: self.ttl_secs,
                db: ctx.db.to_owned(),
                // A shed cache starts over: its tables are cleared, then backfilled.
                reset: ctx.reset.map(|lsn| {
                    let tables = ctx
                        .tables
                        .iter()
                        .map(|t| {
                            let (s, n) = t.split_once('.').unwrap_or(("public", t));
                            (s.to_owned(), n.to_owned())
                        })
                        .collect();
                    (tables, lsn)
                }),
            })),
            // A Redis batch is one pipeline.
            max_records: self.batch,
        })
    }

    fn needs_primary_key(&self) -> bool {
        true
    }
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
            "the user may not run a command the sink needs (SET, DEL, HSET, EVALSHA, SCRIPT LOAD)",
            "grant them, e.g. ACL SETUSER <user> +@read +@write +@scripting ~*",
        ),
        ErrorKind::InvalidClientConfig => definite(
            "the url is not valid",
            "write it as redis://[user:password@]host:port[/db]",
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
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
    pub prefix: String,
    pub key_template: String,
    pub format: Format,
    /// Seconds; 0: keys do not expire.
    pub ttl_secs: u64,
    /// The source database's name (`{db}` in the template).
    pub db: String,
    /// Tables to clear before the first delivery, as if truncated at this commit LSN: a
    /// sink that missed records (shed by the disk budget) starts over from a backfill, and
    /// rows deleted meanwhile must not stay cached.
    pub reset: Option<(Vec<(String, String)>, sluice_core::Lsn)>,
}

pub const DEFAULT_KEY_TEMPLATE: &str = "{prefix}{db}.{schema}.{table}.{pk}";

/// Checks a key template; returns the problem, if any.
pub fn check_template(template: &str) -> Result<(), String> {
    if !template.contains("{pk}") {
        return Err(format!(
            "key_template {template:?} must contain {{pk}}, or rows of a table would share one key"
        ));
    }
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        let end = rest[i..]
            .find('}')
            .ok_or("key_template has an unclosed {")?;
        let name = &rest[i + 1..i + end];
        if !["prefix", "db", "schema", "table", "pk"].contains(&name) {
            return Err(format!(
                "key_template: unknown placeholder {{{name}}} (use prefix, db, schema, table, pk)"
            ));
        }
        rest = &rest[i + end + 1..];
    }
    Ok(())
}

/// The Redis sink.
pub struct RedisSink {
    options: RedisOptions,
    conn: Option<ConnectionManager>,
    /// Whether the scripts are loaded (a restarted Redis has forgotten them).
    loaded: bool,
    write: redis::Script,
    truncate: redis::Script,
    incomplete: metrics::Counter,
    /// Id hash keys by (schema, table).
    ids_keys: std::sync::Mutex<Vec<(String, String, std::sync::Arc<str>)>>,
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

/// The fixed-width, comparable form of an id (ordinals can widen in the text form).
fn version(r: &Record<'_>) -> String {
    fence(r.id.commit_lsn.0, r.id.ordinal)
}

/// What the scripts compare: commit LSN and ordinal, each as 16 hex digits.
fn fence(commit_lsn: u64, ordinal: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(32);
    for n in [commit_lsn, ordinal] {
        for shift in (0..16).rev() {
            out.push(HEX[((n >> (shift * 4)) & 0xf) as usize] as char);
        }
    }
    out
}

impl RedisSink {
    pub fn new(options: RedisOptions) -> RedisSink {
        RedisSink {
            options,
            conn: None,
            loaded: false,
            write: redis::Script::new(WRITE),
            truncate: redis::Script::new(TRUNCATE),
            incomplete: metrics::counter!(metric::REDIS_INCOMPLETE_ROWS.name),
            ids_keys: Default::default(),
        }
    }

    /// The table's id hash key (built once per table: it is needed for every record).
    fn ids_key(&self, schema: &str, table: &str) -> std::sync::Arc<str> {
        let mut known = self.ids_keys.lock().expect("ids keys lock");
        if let Some((_, _, k)) = known.iter().find(|(s, t, _)| s == schema && t == table) {
            return k.clone();
        }
        let k: std::sync::Arc<str> = format!(
            "{}sluice:ids:{}.{schema}.{table}",
            self.options.prefix, self.options.db
        )
        .into();
        known.push((schema.to_owned(), table.to_owned(), k.clone()));
        k
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
        let client = redis::Client::open(self.options.url.as_str()).map_err(classify)?;
        let config = redis::aio::ConnectionManagerConfig::new()
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

    /// Adds `r`'s write: with `fast` (a batch under `WATCH`), as plain commands in `pipe`
    /// when its id is newer than its table's `\0max`, else as a fenced write in `pending`
    /// (a truncate goes to `pipe` after what is pending). Without `fast`, a TOAST merge of
    /// a JSON row may first send what is queued and read the cached row, so it takes the
    /// connection; with `fast` that returns `false`: the batch must run fenced.
    async fn add(
        &self,
        conn: &mut ConnectionManager,
        pipe: &mut redis::Pipeline,
        pending: &mut Pending,
        r: &Record<'_>,
        mut fast: Option<&mut Fences>,
    ) -> Result<bool, Fault> {
        let bad = |e: serde_json::Error| {
            Fault::fatal(format!("record {} is not a change envelope", r.id)).caused_by(e)
        };
        let ids = self.ids_key(r.schema, r.table);
        let v = version(r);
        if r.op == Op::Truncate {
            pending.flush(&self.write, pipe);
            pipe.invoke_script(self.truncate.key(&*ids).arg(&v))
                .ignore();
            if let Some(f) = fast.as_deref_mut().and_then(|f| f.get_mut(&*ids)) {
                // The script leaves the hash with `\0max` = this id.
                f.tracked = true;
                f.raise(&v);
            }
            return Ok(true);
        }
        let env: Envelope = serde_json::from_slice(r.json).map_err(bad)?;
        let Some(key) = env.key.as_ref() else {
            return Ok(true);
        };
        let row = self.row_key(r.schema, r.table, key);
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
        let ttl = self.options.ttl_secs;
        if let Some(f) = fast.as_deref_mut().and_then(|f| f.get_mut(&*ids)) {
            let plain = moved_from.is_none() && env.unchanged_toast.is_empty();
            if plain && f.allows(&v) {
                f.raise(&v);
                pending.flush(&self.write, pipe);
                self.write_plain(pipe, &row, &ids, &v, r.op, env.after)
                    .map_err(bad)?;
                return Ok(true);
            }
            // Fenced, in order; whatever it applies raises `\0max` in the script too.
            f.raise(&v);
        }
        if let Some(old) = &moved_from {
            pending.begin(old, &ids, &v, "del", ttl);
            pending.end();
        }
        match (r.op, env.after) {
            (Op::Delete, _) | (_, None) => {
                pending.begin(&row, &ids, &v, "del", ttl);
            }
            (_, Some(after))
                if env.unchanged_toast.is_empty() && self.options.format == Format::Json =>
            {
                // The row's JSON as the record carries it, columns in table order.
                pending.begin(&row, &ids, &v, "set", ttl);
                pending.arg(after.get());
            }
            (_, Some(after)) => {
                let toast = !env.unchanged_toast.is_empty();
                let after: Members = serde_json::from_str(after.get()).map_err(bad)?;
                if toast && (self.options.format == Format::Json || moved_from.is_some()) {
                    if fast.is_some() {
                        // A read between the batch's writes: not in one MULTI.
                        return Ok(false);
                    }
                    // Merge with the cached row (under the old key if the key changed);
                    // what is queued before goes first, so the row read is the one this
                    // update follows.
                    let from = moved_from.as_deref().unwrap_or(&row);
                    // Not the move's delete: it is this update's, and goes after the read.
                    let moving = moved_from.is_some().then(|| pending.take_last());
                    pending.flush(&self.write, pipe);
                    if pipe.cmd_iter().next().is_some() {
                        let incomplete: Vec<i64> = std::mem::take(pipe)
                            .query_async(conn)
                            .await
                            .map_err(classify)?;
                        self.count_incomplete(&incomplete);
                    }
                    let cached = self.cached(conn, from).await?;
                    if let Some(m) = moving {
                        pending.put_back(m);
                    }
                    match cached {
                        Some(mut merged) => {
                            for (k, v) in after.0 {
                                match merged.iter_mut().find(|(m, _)| *m == k) {
                                    Some(slot) => slot.1 = v,
                                    None => merged.push((k, v)),
                                }
                            }
                            self.full_row(pending, &row, &ids, &v, merged);
                        }
                        None => {
                            self.incomplete.increment(1);
                            warn!(schema = r.schema, table = r.table, id = %r.id, "redis: an update without its unchanged TOAST columns found no cached row to merge with; the key is left absent");
                            pending.begin(&row, &ids, &v, "del", ttl);
                        }
                    }
                } else if toast {
                    // A hash keeps the fields the update did not send.
                    let (set, null): (Vec<_>, Vec<_>) =
                        after.0.into_iter().partition(|(_, v)| !v.is_null());
                    pending.begin(&row, &ids, &v, "hmerge", ttl);
                    pending.arg(set.len().to_string());
                    for (k, v) in set {
                        pending.arg(k);
                        pending.arg(text(&v));
                    }
                    for (k, _) in null {
                        pending.arg(k);
                    }
                } else {
                    self.full_row(pending, &row, &ids, &v, after.0);
                }
            }
        }
        pending.end();
        Ok(true)
    }

    /// The fast path: the row's id and the row as plain commands.
    fn write_plain(
        &self,
        pipe: &mut redis::Pipeline,
        row: &str,
        ids: &str,
        v: &str,
        op: Op,
        after: Option<&serde_json::value::RawValue>,
    ) -> Result<(), serde_json::Error> {
        let ttl = self.options.ttl_secs;
        pipe.cmd("HSET").arg(ids).arg(row).arg(v).ignore();
        let after = match (op, after) {
            (Op::Delete, _) | (_, None) => {
                pipe.cmd("DEL").arg(row).ignore();
                return Ok(());
            }
            (_, Some(after)) => after,
        };
        match self.options.format {
            Format::Json => {
                let set = pipe.cmd("SET").arg(row).arg(after.get());
                if ttl > 0 {
                    set.arg("EX").arg(ttl);
                }
                set.ignore();
            }
            Format::Hash => {
                let columns: Members = serde_json::from_str(after.get())?;
                pipe.cmd("DEL").arg(row).ignore();
                let fields: Vec<_> = columns.0.iter().filter(|(_, v)| !v.is_null()).collect();
                if !fields.is_empty() {
                    let hset = pipe.cmd("HSET").arg(row);
                    for (k, v) in fields {
                        hset.arg(k).arg(text(v));
                    }
                    hset.ignore();
                }
                if ttl > 0 {
                    pipe.cmd("EXPIRE").arg(row).arg(ttl).ignore();
                }
            }
        }
        Ok(())
    }

    fn count_incomplete(&self, results: &[i64]) {
        let incomplete: i64 = results.iter().sum();
        if incomplete > 0 {
            self.incomplete.increment(incomplete as u64);
            warn!(rows = incomplete, "redis: hash updates without their unchanged TOAST columns found no cached row; those keys are left absent");
        }
    }
}

impl RedisSink {
    /// A whole row: `set` with its JSON, or `hset` with its non-NULL columns (the write
    /// is begun here and ended by the caller).
    fn full_row(
        &self,
        pending: &mut Pending,
        row: &str,
        ids: &str,
        v: &str,
        columns: Vec<(String, Value)>,
    ) {
        let ttl = self.options.ttl_secs;
        match self.options.format {
            Format::Json => {
                let map: serde_json::Map<String, Value> = columns.into_iter().collect();
                pending.begin(row, ids, v, "set", ttl);
                pending.arg(Value::Object(map).to_string());
            }
            Format::Hash => {
                let set: Vec<_> = columns.into_iter().filter(|(_, v)| !v.is_null()).collect();
                pending.begin(row, ids, v, "hset", ttl);
                pending.arg(set.len().to_string());
                for (k, v) in set {
                    pending.arg(k);
                    pending.arg(text(&v));
                }
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
}

impl Sink for RedisSink {
    async fn deliver(&mut self, batch: &RecordBatch) -> Result<(), Fault> {
        let mut conn = self.connection().await?;
        if let Some((tables, below)) = self.options.reset.clone() {
            for (schema, table) in &tables {
                let ids = self.ids_key(schema, table);
                // After every change of the commit at `below`: all of the log so far.
                let v = fence(below.0, u64::MAX);
                self.truncate
                    .key(&*ids)
                    .arg(&v)
                    .invoke_async::<i64>(&mut conn)
                    .await
                    .map_err(classify)?;
            }
            info!(
                tables = tables.len(),
                "redis: cleared the tables of a shed sink before its backfill"
            );
            self.options.reset = None;
        }
        if !self.loaded {
            for script in [WRITE, TRUNCATE] {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(script)
                    .query_async::<String>(&mut conn)
                    .await
                    .map_err(classify)?;
            }
            self.loaded = true;
        }
        let result = self.deliver_loaded(&mut conn, batch).await;
        if result.is_err() {
            // Whatever failed, the server may have restarted without the scripts.
            self.loaded = false;
        }
        result
    }
}

impl RedisSink {
    /// One batch as one `MULTI`/`EXEC` under `WATCH` of its tables' id hashes, with the
    /// fast path; fenced throughout if that cannot be (a read between writes, or another
    /// writer touched a table meanwhile).
    async fn deliver_loaded(
        &mut self,
        conn: &mut ConnectionManager,
        batch: &RecordBatch,
    ) -> Result<(), Fault> {
        let mut keys: Vec<String> = Vec::new();
        for r in batch.iter() {
            if r.op != Op::Message {
                let k = self.ids_key(r.schema, r.table);
                if !keys.iter().any(|known| **known == *k) {
                    keys.push(k.to_string());
                }
            }
        }
        if keys.is_empty() {
            return Ok(());
        }
        let mut fences = fence::watch(conn, &keys).await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut pending = Pending::default();
        let mut whole = true;
        for r in batch.iter() {
            if r.op != Op::Message
                && !self
                    .add(conn, &mut pipe, &mut pending, &r, Some(&mut fences))
                    .await?
            {
                whole = false;
                break;
            }
        }
        if whole {
            pending.flush(&self.write, &mut pipe);
            for (k, f) in &fences {
                if let (true, Some(max)) = (f.raised, &f.max) {
                    pipe.cmd("HSET").arg(k).arg("\0max").arg(max).ignore();
                }
            }
            let results: Option<Vec<i64>> = pipe.query_async(conn).await.map_err(classify)?;
            if let Some(results) = results {
                self.count_incomplete(&results);
                return Ok(());
            }
            // Another writer changed a table since the fences were read.
        } else {
            redis::cmd("UNWATCH")
                .query_async::<()>(conn)
                .await
                .map_err(classify)?;
        }
        self.deliver_fenced(conn, batch).await
    }

    /// The batch with every write fenced, in as many calls as its reads need.
    async fn deliver_fenced(
        &mut self,
        conn: &mut ConnectionManager,
        batch: &RecordBatch,
    ) -> Result<(), Fault> {
        let mut pipe = redis::pipe();
        let mut pending = Pending::default();
        for r in batch.iter() {
            if r.op == Op::Message {
                continue;
            }
            self.add(conn, &mut pipe, &mut pending, &r, None).await?;
        }
        pending.flush(&self.write, &mut pipe);
        if pipe.cmd_iter().next().is_none() {
            return Ok(());
        }
        let results: Vec<i64> = pipe.query_async(conn).await.map_err(classify)?;
        self.count_incomplete(&results);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_are_fixed_width_uppercase_hex_that_sort_as_ids_do() {
        for (l, o) in [(0, 0), (0x1A, 3), (u64::MAX, 1 << 40)] {
            assert_eq!(fence(l, o), format!("{l:016X}{o:016X}"));
        }
        assert!(fence(9, u64::MAX) < fence(10, 0));
    }

    #[test]
    fn templates_are_checked_and_filled() {
        check_template(DEFAULT_KEY_TEMPLATE).unwrap();
        assert!(check_template("{prefix}{table}").is_err());
        assert!(check_template("{pk}{tabel}").is_err());
        let sink = RedisSink::new(RedisOptions {
            url: "redis://127.0.0.1/".into(),
            prefix: "c:".into(),
            key_template: DEFAULT_KEY_TEMPLATE.into(),
            format: Format::Json,
            ttl_secs: 0,
            db: "shop".into(),
            reset: None,
        });
        let key: Members = serde_json::from_str(r#"{"b":"x y","a":7}"#).unwrap();
        assert_eq!(
            sink.row_key("public", "orders", &key),
            "c:shop.public.orders.x y.7",
            "columns in key order, not sorted"
        );
    }
}
