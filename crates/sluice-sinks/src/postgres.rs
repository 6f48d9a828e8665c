//! The PostgreSQL sink: another PostgreSQL database kept equal to the source, table by
//! table (`type = "postgres"`).
//!
//! Each captured table has a target table of the same name (in `schema`, or the source's
//! own schema), created from the source's columns when missing: their types, NOT NULL and
//! the primary key. Inserts and updates are upserts by the primary key, deletes delete by
//! it, truncates truncate; snapshot rows are copied with binary COPY into a staging table
//! and upserted from there. A position table (`sluice_positions`) holds, per pipeline,
//! sink and source table, the last change applied.
//!
//! Invariants:
//! - One target transaction per batch: its changes in log order, then the position rows of
//!   the tables it touched, then COMMIT. The target holds a batch whole or not at all, and
//!   its positions always say exactly which changes it holds.
//! - Replays skip by position: a change at or below its table's stored position
//!   (`(commit LSN, log offset)`, see `plan.rs`) is never applied again, so after a crash
//!   or a retried batch an older change never overwrites a newer one. After any error
//!   the session is dropped and the next attempt reads the target's tables and positions
//!   again (a COMMIT may have been applied without its answer arriving).
//! - Unchanged TOAST values are never written as null: an update that lacks them updates
//!   only the columns it carries (and a key change moves the row), so the target keeps
//!   its value.
//! - Schema changes follow the source: a column a record carries that the target lacks is
//!   added with the type the source's catalog gives it now; a column the sink knows came
//!   from the source, that records stopped carrying (beyond their unchanged TOAST
//!   columns) and that the source's catalog no longer lists, is dropped. A record alone
//!   never drops a column; columns the target has of its own are never touched.
//! - Logs and faults name tables, columns and SQLSTATEs, never row values: a data error's
//!   server message (SQLSTATE classes 22 and 23, which quote the value) is not repeated.
//!   The password is never logged: the target is named as `user@host:port/db`.

mod check;
mod copy;
mod plan;
mod schema;
mod setup;
mod sql;
mod target;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sluice_core::{key_columns, Catalog, Fault, Finding, Op};
use sluice_log::RecordBatch;
use sluice_pgwire::{ConnInfo, Connection, PgError, INSUFFICIENT_PRIVILEGE};
use tracing::warn;

use crate::{finding_for, Built, Capabilities, Context, Secret, Sink, SinkSpec};
use copy::CopyData;
use plan::{Change, Group, Kind, Parsed, Position};
use sql::{Column, Shape};

/// `type = "postgres"`: the captured tables kept equal in another PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Unique name of the sink within the pipeline.
    pub name: String,
    /// The target database: `postgres://user@host:port/db?sslmode=require` (or
    /// `key=value` pairs). `PG*` environment variables are not read (they are the
    /// source's); give the password in `password`.
    pub url: String,
    /// The target user's password (used instead of one in `url`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Tables this sink takes (`schema.table` or `schema.*`; default: all); each needs a
    /// primary key.
    #[serde(default)]
    pub tables: Vec<String>,
    /// The target schema of every table (default: the source table's own schema). The
    /// positions table `sluice_positions` is created here too (without it: in the first
    /// target schema, in alphabetical order).
    #[serde(default)]
    pub schema: Option<String>,
    /// Create missing target tables (and schemas) from the source's columns.
    #[serde(default = "default_create_tables")]
    pub create_tables: bool,
    /// Records per batch: one target transaction each.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
}

fn default_create_tables() -> bool {
    true
}

fn default_max_records() -> usize {
    5000
}

/// A batch that takes longer than this is abandoned (a connection that went silent) and
/// retried from the sink's cursor.
const BATCH_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a health check waits for the target to answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// A question to the source's catalog is not asked again sooner for the same answer.
const RECHECK: Duration = Duration::from_secs(30);

/// Statements queued before they are sent (within the batch's transaction).
const FLUSH_BYTES: usize = 8 << 20;

/// The positions table's name.
const POSITIONS: &str = "sluice_positions";

/// A source table and its target table, each as (schema, name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMap {
    pub source: (String, String),
    pub target: (String, String),
}

impl TableMap {
    fn source_name(&self) -> String {
        format!("{}.{}", self.source.0, self.source.1)
    }

    fn target_name(&self) -> String {
        format!("{}.{}", self.target.0, self.target.1)
    }
}

impl PostgresConfig {
    /// The target's connection parameters (the `password` setting wins over the url's).
    fn conninfo(&self) -> Result<ConnInfo, sluice_pgwire::conninfo::ConnInfoError> {
        let mut info = ConnInfo::parse_with_env(&self.url, |_| None)?;
        if let Some(p) = &self.password {
            info.password = Some(p.expose().to_owned());
        }
        Ok(info)
    }

    fn maps(&self, tables: &[String]) -> Vec<TableMap> {
        tables
            .iter()
            .map(|t| {
                let (s, n) = t.split_once('.').unwrap_or(("public", t));
                let schema = self.schema.clone().unwrap_or_else(|| s.to_owned());
                TableMap {
                    source: (s.to_owned(), n.to_owned()),
                    target: (schema, n.to_owned()),
                }
            })
            .collect()
    }

    fn positions_schema(&self, maps: &[TableMap]) -> String {
        self.schema
            .clone()
            .or_else(|| maps.iter().map(|m| m.target.0.clone()).min())
            .unwrap_or_else(|| "public".into())
    }
}

/// The source's primary key of a table, if its columns are known.
fn source_key(columns: &sluice_core::Columns, map: &TableMap) -> Option<Vec<String>> {
    columns.get(&map.source_name()).map(|cols| {
        key_columns(cols)
            .into_iter()
            .map(|c| c.name.clone())
            .collect()
    })
}

impl SinkSpec for PostgresConfig {
    const DESCRIPTION: &'static str = "Keeps tables equal in another PostgreSQL database: upserts and deletes by primary key, one transaction per batch with its positions, snapshots by binary COPY, columns added and dropped as the source's are.";
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
        if self.max_records == 0 {
            errs.push(finding_for(name, "max_records must be at least 1"));
        }
        if self.schema.as_deref().is_some_and(|s| s.trim().is_empty()) {
            errs.push(finding_for(
                name,
                "schema is empty: name the target schema, or leave it out to keep the source's",
            ));
        }
        match ConnInfo::parse_with_env(&self.url, |_| None) {
            // The url is not repeated: it may hold a password.
            Err(e) => errs.push(finding_for(name, format_args!("url is not valid: {e}"))),
            Ok(info) if info.password.is_some() && self.password.is_some() => {
                errs.push(finding_for(
                    name,
                    "the password is given twice: keep it in password and take it out of url",
                ))
            }
            Ok(_) => {}
        }
    }

    async fn check(&self, ctx: &Context<'_>) -> Vec<Finding> {
        let name = &self.name;
        let mut out = Vec::new();
        let no_key: Vec<&str> = ctx
            .tables
            .iter()
            .filter(|t| {
                ctx.columns
                    .get(*t)
                    .is_some_and(|c| key_columns(c).is_empty())
            })
            .map(String::as_str)
            .collect();
        if let Some(first) = no_key.first() {
            out.push(Finding::fail(
                finding_for(
                    name,
                    format_args!(
                        "{} without a primary key: the postgres sink upserts and deletes target rows by it",
                        no_key.join(", ")
                    ),
                ),
                format!("add a primary key (ALTER TABLE {first} ADD PRIMARY KEY (...)), or leave the table out of the sink's tables"),
            ));
        }
        let info = match self.conninfo() {
            Ok(i) => i,
            Err(e) => {
                out.push(Finding::fail(
                    finding_for(name, format_args!("url: {e}")),
                    "write url as postgres://user@host:port/db",
                ));
                return out;
            }
        };
        let at = info.to_string();
        let connect = tokio::time::timeout(CHECK_TIMEOUT, Connection::connect(&info, false));
        let connected = connect.await.unwrap_or_else(|_| {
            Err(PgError::Connect {
                target: at.clone(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
            })
        });
        let mut conn = match connected {
            Ok(c) => c,
            Err(e) => {
                let f = classify(e, &at);
                out.push(if f.is_transient() {
                    Finding::warn(
                        finding_for(name, format_args!("cannot reach the target: {f}")),
                        "start the target database or correct the sink's url; the sink retries until it answers",
                    )
                } else {
                    Finding::fail(finding_for(name, f.message), f.fix.unwrap_or_default())
                });
                return out;
            }
        };
        let checked = tokio::time::timeout(CHECK_TIMEOUT, self.check_target(&mut conn, ctx, &at))
            .await
            .unwrap_or_else(|_| {
                Err(PgError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer in time",
                )))
            });
        conn.close().await;
        match checked {
            Ok(findings) => out.extend(findings),
            Err(e) => {
                let f = classify(e, &at);
                out.push(Finding::warn(
                    finding_for(name, format_args!("cannot check the target: {f}")),
                    f.fix.unwrap_or_else(|| "run sluice check again".into()),
                ))
            }
        }
        out
    }

    async fn build(&self, ctx: &Context<'_>) -> Result<Built, Fault> {
        let conninfo = self.conninfo().map_err(|e| {
            Fault::definite(
                format!("url: {e}"),
                "write url as postgres://user@host:port/db",
            )
        })?;
        let maps = self.maps(ctx.tables);
        let mut sink = PostgresSink::new(PostgresOptions {
            conninfo,
            pipeline: ctx.pipeline.to_owned(),
            sink: self.name.clone(),
            positions_schema: self.positions_schema(&maps),
            tables: maps,
            create_tables: self.create_tables,
            columns: ctx.columns.clone(),
            catalog: ctx.catalog.cloned(),
            reset: ctx.reset.is_some(),
        });
        // The target is set up now (tables, positions); a target that is down is
        // waited out by the delivery, which sets it up when it answers.
        match sink.open().await {
            Ok(session) => session.conn.close().await,
            Err(e) if e.is_transient() => {
                warn!(sink = %self.name, error = %e, "postgres: the target is not ready; the sink sets it up once it answers")
            }
            Err(e) => return Err(e),
        }
        Ok(Built::Batches {
            sink: Box::new(sink),
            max_records: self.max_records,
            window: None,
        })
    }
}

/// The one classification of the target's errors. Credentials, a missing database, a
/// refused privilege and a refused value cannot pass by themselves: the sink stops with
/// the fix. A connection lost, a server restarting, a table changed under the sink are
/// retried.
pub fn classify(e: PgError, target: &str) -> Fault {
    let definite =
        |what: String, fix: &str| Fault::definite(format!("postgres at {target}: {what}"), fix);
    if let PgError::Auth(m) = &e {
        return definite(
            format!("authentication failed: {m}"),
            "set the sink's password to the target user's password",
        );
    }
    if let PgError::Server(s) = &e {
        let code = s.code.as_str();
        match code {
            "28P01" | "28000" => {
                return definite(
                    format!("authentication failed ({})", s.message),
                    "set the sink's password to the target user's password (and check the user in its url)",
                )
            }
            "3D000" => {
                return definite(
                    s.message.clone(),
                    "create the database (CREATE DATABASE ...) or correct the database in the sink's url",
                )
            }
            INSUFFICIENT_PRIVILEGE => {
                return definite(
                    format!("permission denied ({})", s.message),
                    "grant the sink's user CREATE on the target schema and SELECT, INSERT, UPDATE, DELETE, TRUNCATE on its tables (sluice check lists what is missing)",
                )
            }
            // A trigger's RAISE on the target: its text is the trigger's and may quote
            // the row, so only the condition is said.
            _ if code.starts_with("P0") => {
                return definite(
                    format!("a trigger on the target raised an error (SQLSTATE {code})"),
                    "disable or fix the target tables' triggers: the sink writes rows as the source has them",
                );
            }
            _ if code.starts_with("22") || code.starts_with("23") => {
                // The server's text quotes the value: only the condition is said.
                return definite(
                    format!("the target refused a value (SQLSTATE {code})"),
                    "make the target columns' types and constraints those of the source (as the sink creates them), then start again",
                );
            }
            // A table or column dropped or added under the sink, or a race with another
            // creator: the next attempt reads the target again.
            "42P01" | "42703" | "42P07" | "42701" | "42P06" => {
                return Fault::transient(format!(
                    "postgres at {target}: the target's tables changed while the sink wrote (SQLSTATE {code}); reading them again"
                ))
            }
            _ => {}
        }
    }
    Fault::of(format!("postgres at {target}"), e)
}

/// What the sink needs (from the `[[sinks]]` entry and its pipeline).
pub struct PostgresOptions {
    pub conninfo: ConnInfo,
    pub pipeline: String,
    pub sink: String,
    pub tables: Vec<TableMap>,
    /// Where the positions table is.
    pub positions_schema: String,
    pub create_tables: bool,
    /// The source's columns when the pipeline started (`schema.table`).
    pub columns: sluice_core::Columns,
    /// The source's catalog now, for columns that appear or disappear mid-stream.
    pub catalog: Option<Arc<dyn Catalog>>,
    /// Empty the tables before the first delivery: a shed sink starts over from a
    /// backfill, and rows deleted meanwhile must not stay.
    pub reset: bool,
}

/// One table as the sink knows it.
struct TableState {
    map: TableMap,
    /// As the target has it (read at each session's start, changed by the sink's DDL).
    shape: Shape,
    /// The source columns the sink knows the table has had (stored with its position).
    known: BTreeSet<String>,
    /// Columns records carry that the source's catalog did not list, and when it said so.
    ignored: BTreeMap<String, Instant>,
    /// Columns records lacked when the catalog was last asked about them, and when.
    asked: Option<(BTreeSet<String>, Instant)>,
}

/// A connection with what the sink read through it.
struct Session {
    conn: Connection,
    /// Per table, the last change the target holds.
    positions: Vec<Option<Position>>,
    /// Staging tables of this session: table, columns, name.
    staged: Vec<(usize, Vec<String>, String)>,
}

impl Session {
    /// The staging table for `cols` of `table`, and whether it must be created first.
    fn stage_table(&mut self, table: usize, cols: &[String]) -> (String, bool) {
        if let Some((_, _, name)) = self
            .staged
            .iter()
            .find(|(t, c, _)| *t == table && c == cols)
        {
            return (name.clone(), false);
        }
        let name = format!("sluice_stage_{}", self.staged.len() + 1);
        self.staged.push((table, cols.to_vec(), name.clone()));
        (name, true)
    }
}

/// The PostgreSQL sink.
pub struct PostgresSink {
    options: PostgresOptions,
    /// `user@host:port/db`: how the target is named (no password).
    target: String,
    tables: Vec<TableState>,
    positions: Shape,
    session: Option<Session>,
}

/// Statements queued for one round trip, with the row counts some must reach.
#[derive(Default)]
struct Script {
    sql: String,
    /// Per statement: the table and rows an update must find (patches, moves).
    expects: Vec<Option<(usize, usize)>>,
}

impl Script {
    fn push(&mut self, stmt: String, expect: Option<(usize, usize)>) {
        if !self.sql.is_empty() {
            self.sql.push_str(";\n");
        }
        self.sql.push_str(&stmt);
        self.expects.push(expect);
    }

    /// Sends what is queued; says which updates found fewer rows than they carried.
    async fn run(
        &mut self,
        conn: &mut Connection,
        target: &str,
        tables: &[TableState],
    ) -> Result<(), Fault> {
        if self.sql.is_empty() {
            return Ok(());
        }
        let results = conn
            .simple_query(&self.sql)
            .await
            .map_err(|e| classify(e, target))?;
        for (r, e) in results.iter().zip(&self.expects) {
            let Some((t, rows)) = *e else { continue };
            let found: usize = r
                .tag
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if found < rows {
                let m = &tables[t].map;
                warn!(
                    schema = %m.target.0,
                    table = %m.target.1,
                    rows = rows - found,
                    "postgres: updates without their unchanged TOAST columns found no row in the target; those rows stay missing until they change again or the table is backfilled"
                );
            }
        }
        self.sql.clear();
        self.expects.clear();
        Ok(())
    }
}

impl PostgresSink {
    pub fn new(options: PostgresOptions) -> PostgresSink {
        let tables = options
            .tables
            .iter()
            .map(|m| TableState {
                map: m.clone(),
                shape: Shape {
                    qualified: sql::qualified(&m.target.0, &m.target.1),
                    ..Shape::default()
                },
                known: BTreeSet::new(),
                ignored: BTreeMap::new(),
                asked: None,
            })
            .collect();
        PostgresSink {
            target: options.conninfo.to_string(),
            positions: Shape {
                qualified: sql::qualified(&options.positions_schema, POSITIONS),
                ..Shape::default()
            },
            options,
            tables,
            session: None,
        }
    }

    fn table_of(&self, schema: &str, table: &str) -> Option<usize> {
        self.tables
            .iter()
            .position(|t| t.map.source.0 == schema && t.map.source.1 == table)
    }

    fn classify(&self, e: PgError) -> Fault {
        classify(e, &self.target)
    }

    /// Applies one batch in one transaction.
    async fn apply(&mut self, batch: &RecordBatch) -> Result<(), Fault> {
        if self.session.is_none() {
            let session = self.open().await?;
            self.session = Some(session);
        }
        let mut changes = Vec::new();
        {
            let session = self.session.as_ref().expect("opened");
            for r in batch.iter() {
                if r.op == Op::Message {
                    continue;
                }
                let Some(t) = self.table_of(r.schema, r.table) else {
                    continue;
                };
                if session.positions[t].is_some_and(|p| p.covers(&r)) {
                    continue;
                }
                // serde_json's message may quote the text it read: only the place is said.
                let parsed = Parsed::parse(r.op, r.json).map_err(|e| {
                    Fault::fatal(format!(
                        "record {} is not a change envelope (at byte column {})",
                        r.id,
                        e.column()
                    ))
                })?;
                changes.push(Change {
                    table: t,
                    pos: Position::of(&r),
                    parsed,
                });
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let ddl = self.reconcile(&changes).await?;
        let tables = &self.tables;
        let groups = plan::plan(&changes, &|t| &tables[t].shape).map_err(|e| {
            Fault::definite(
                format!("postgres: {e}"),
                "give the source table a primary key that its replica identity includes (REPLICA IDENTITY DEFAULT or FULL)",
            )
        })?;
        self.execute(ddl, &changes, &groups).await
    }

    /// Runs the batch's transaction: the DDL, the groups in order, the positions.
    async fn execute(
        &mut self,
        ddl: Vec<String>,
        changes: &[Change<'_>],
        groups: &[Group<'_>],
    ) -> Result<(), Fault> {
        let Self {
            session,
            tables,
            target,
            positions,
            options,
            ..
        } = self;
        let session = session.as_mut().expect("opened");
        let mut script = Script::default();
        script.push("BEGIN".into(), None);
        for d in ddl {
            script.push(d, None);
        }
        let mut staged_now: BTreeSet<String> = BTreeSet::new();
        for g in groups {
            let shape = &tables[g.table].shape;
            let rows = || sql::json_array(g.rows.iter().map(|r| r.as_ref()));
            match g.kind {
                Kind::Upsert => script.push(sql::upsert(shape, &g.cols, &rows()), None),
                Kind::Delete => script.push(sql::delete(shape, &g.cols, &rows()), None),
                Kind::Patch => {
                    if let Some(s) = sql::patch(shape, &g.cols, &rows()) {
                        script.push(s, Some((g.table, g.rows.len())));
                    }
                }
                Kind::Move => {
                    let (matched, old) = g.old.as_ref().expect("a move has its old key");
                    let old = format!("[{old}]");
                    script.push(
                        sql::moved(shape, &g.cols, &rows(), matched, &old),
                        Some((g.table, 1)),
                    );
                }
                Kind::Truncate => script.push(sql::truncate(shape), None),
                Kind::Stage => {
                    let cols: Vec<&Column> =
                        g.cols.iter().filter_map(|c| shape.column(c)).collect();
                    let (name, create) = session.stage_table(g.table, &g.cols);
                    if create {
                        script.push(sql::stage_create(&name, &cols), None);
                    } else if !staged_now.insert(name.clone()) {
                        script.push(sql::stage_truncate(&name), None);
                    }
                    staged_now.insert(name.clone());
                    script.run(&mut session.conn, target, tables).await?;
                    let mut data = CopyData::new();
                    for (seq, values) in g.values.iter().enumerate() {
                        data.row(seq as i64, &cols, values).map_err(|e| {
                            Fault::definite(
                                format!("postgres: {}: {e}", tables[g.table].map.target_name()),
                                "make the target column's type the source's (as the sink creates it)",
                            )
                        })?;
                    }
                    let cl = |e| classify(e, target);
                    session
                        .conn
                        .start_copy_in(&sql::stage_copy(&name))
                        .await
                        .map_err(cl)?;
                    session.conn.write_copy(&data.finish()).await.map_err(cl)?;
                    session.conn.finish_copy_in().await.map_err(cl)?;
                    script.push(sql::stage_merge(shape, &cols, &name), None);
                }
            }
            if script.sql.len() >= FLUSH_BYTES {
                script.run(&mut session.conn, target, tables).await?;
            }
        }
        let mut last: BTreeMap<usize, Position> = BTreeMap::new();
        for c in changes {
            last.insert(c.table, c.pos);
        }
        let rows: Vec<sql::PositionRow<'_>> = last
            .iter()
            .map(|(t, p)| {
                let t = &tables[*t];
                sql::PositionRow {
                    schema: &t.map.source.0,
                    table: &t.map.source.1,
                    commit_lsn: p.commit_lsn,
                    ordinal: p.ordinal,
                    offset: p.offset,
                    source_columns: t.known.iter().map(String::as_str).collect(),
                }
            })
            .collect();
        script.push(
            sql::positions_upsert(
                &positions.qualified,
                &options.pipeline,
                &options.sink,
                &rows,
            ),
            None,
        );
        script.push("COMMIT".into(), None);
        script.run(&mut session.conn, target, tables).await?;
        for (t, p) in last {
            session.positions[t] = Some(p);
        }
        Ok(())
    }
}

impl Sink for PostgresSink {
    async fn deliver(&mut self, batch: &RecordBatch) -> Result<(), Fault> {
        let result = match tokio::time::timeout(BATCH_TIMEOUT, self.apply(batch)).await {
            Ok(r) => r,
            Err(_) => Err(Fault::transient(format!(
                "postgres at {}: no answer within {} s",
                self.target,
                BATCH_TIMEOUT.as_secs()
            ))),
        };
        if result.is_err() {
            // The transaction is gone with the connection; what the target holds is read
            // again at the next attempt.
            if let Some(s) = self.session.take() {
                let _ = tokio::time::timeout(Duration::from_secs(5), s.conn.close()).await;
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: serde_json::Value) -> PostgresConfig {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn config_defaults_validation_and_table_mapping() {
        let c = config(
            serde_json::json!({"name": "replica", "url": "postgres://sluice@db:5433/replica"}),
        );
        assert!(c.create_tables);
        assert_eq!(c.max_records, 5000);
        let mut errs = Vec::new();
        c.validate(&mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let maps = c.maps(&["public.a".into(), "sales.b".into()]);
        assert_eq!(maps[1].target, ("sales".into(), "b".into()));
        assert_eq!(c.positions_schema(&maps), "public");
        let info = c.conninfo().unwrap();
        assert_eq!((info.port, info.dbname.as_str()), (5433, "replica"));

        let c = config(serde_json::json!({
            "name": "r", "url": "postgres://u:in-url@db/x", "password": "secret",
            "schema": "mirror", "max_records": 0
        }));
        let mut errs = Vec::new();
        c.validate(&mut errs);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs.iter()
                .all(|e| !e.contains("in-url") && !e.contains("secret")),
            "{errs:?}"
        );
        assert_eq!(c.conninfo().unwrap().password.as_deref(), Some("secret"));
        let maps = c.maps(&["public.a".into()]);
        assert_eq!(maps[0].target, ("mirror".into(), "a".into()));
        assert_eq!(c.positions_schema(&maps), "mirror");
        let unknown = serde_json::json!({"name": "r", "url": "x", "batch": 1});
        assert!(serde_json::from_value::<PostgresConfig>(unknown).is_err());
    }

    #[test]
    fn errors_are_classified_once_and_data_errors_hide_the_value() {
        let server = |code: &str, message: &str| {
            PgError::Server(sluice_pgwire::ServerError {
                severity: "ERROR".into(),
                code: code.into(),
                message: message.into(),
                detail: Some("Key (id)=(42) already exists.".into()),
                hint: None,
            })
        };
        let f = classify(
            server("28P01", "password authentication failed for user \"a\""),
            "a@h:1/d",
        );
        assert!(!f.is_transient());
        assert!(f.message.contains("authentication failed"), "{f}");
        let f = classify(
            server("22P02", "invalid input syntax for type integer: \"s3cr3t\""),
            "a@h:1/d",
        );
        assert!(!f.is_transient());
        assert!(
            !f.to_string().contains("s3cr3t") && !f.to_string().contains("42"),
            "{f}"
        );
        assert!(f.to_string().contains("SQLSTATE 22P02"), "{f}");
        let f = classify(server("P0001", "order s3cr3t is not allowed"), "a@h:1/d");
        assert!(!f.is_transient());
        assert!(!f.to_string().contains("s3cr3t"), "{f}");
        assert!(f.to_string().contains("trigger"), "{f}");
        assert!(classify(server("57P01", "terminating connection"), "x").is_transient());
        assert!(classify(server("42P01", "relation does not exist"), "x").is_transient());
        assert!(!classify(server("42501", "permission denied for table t"), "x").is_transient());
        let lost = PgError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed",
        ));
        assert!(classify(lost, "x").is_transient());
    }
}
