//! ClickHouse: each captured table kept current in a ReplacingMergeTree table over
//! ClickHouse's HTTP interface, created from the source's schema and changed with it.
//!
//! Layout: `types` (the type mapping and every statement, pure), `rowbinary` (values as
//! RowBinary), `rows` (a change as its table's rows), `http` (the client and its error
//! classes), `schema` (existing tables and parked changes), `sink` (the running sink).
//!
//! Invariants:
//! - The cursor moves only over changes ClickHouse holds: inserted into their table, or
//!   parked in `sluice_parked` when their table cannot take them.
//! - A row's version is its change's commit LSN (`_sluice_version`) and a delete is a row
//!   with `_sluice_deleted = 1`, so `SELECT ... FROM t FINAL WHERE _sluice_deleted = 0`
//!   is the table's current state, and a replay after a crash collapses into it.
//! - One table's trouble (a type that cannot be converted, a changed primary key, data
//!   ClickHouse refuses) parks that table with an error naming the fix; the others go on.
//!   Its changes are applied at a later start, once the table takes them.
//! - A wrong password, an untrusted certificate or a missing database stops the pipeline
//!   at once with the fix; a server that is down or busy is waited out.

mod http;
mod rowbinary;
mod rows;
mod schema;
mod sink;
pub mod types;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sluice_core::{Fault, Finding};

use crate::{finding_for, Built, Capabilities, Context, Secret, SinkSpec, Window};
use http::{ChError, Http};
use sink::{ClickHouseSink, Settings};
use types::Profile;

pub use schema::park_tables;

/// `type = "clickhouse"`: every table kept current in ClickHouse (ReplacingMergeTree, one
/// row version per change), created from the source's schema and changed with it.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// Unique name of the sink within the pipeline.
    pub name: String,
    /// The server's HTTP interface: `http://host:8123`, or `https://host:8443`.
    pub url: String,
    /// The database the tables are created in (it must exist).
    #[serde(default = "default_database")]
    #[schema(default = "default")]
    pub database: String,
    /// Name of each table in ClickHouse: `{schema}` and `{table}` are the source's.
    #[serde(default = "default_table_name")]
    #[schema(default = "{table}")]
    pub table_name: String,
    /// Tables this sink takes (default: all).
    #[serde(default)]
    pub tables: Vec<String>,
    /// User to sign in as (default: the server's `default` user).
    #[serde(default)]
    pub user: Option<String>,
    /// Password of `user`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// PEM file of the CA that signed the server's certificate (relative to the
    /// configuration's directory); default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Columns stored as `String` whatever their type (`schema.table.column`): for values
    /// a native type cannot hold (a date before 1900, a `numeric` NaN).
    #[serde(default)]
    pub as_string: Vec<String>,
    /// Changes per insert at most (the initial copy goes in inserts this large).
    #[serde(default = "default_batch_rows")]
    #[schema(default = 100000)]
    pub batch_max_rows: usize,
    /// Bytes of changes (as read from the log) per insert at most.
    #[serde(default = "default_batch_bytes")]
    #[schema(default = 67108864)]
    pub batch_max_bytes: usize,
    /// How long a streamed batch waits for more changes when fewer than a full one are
    /// there (milliseconds): fewer, larger inserts, as ClickHouse prefers.
    #[serde(default = "default_batch_wait")]
    #[schema(default = 1000)]
    pub batch_max_wait_ms: u64,
}

fn default_database() -> String {
    "default".into()
}
fn default_table_name() -> String {
    "{table}".into()
}
fn default_batch_rows() -> usize {
    100_000
}
fn default_batch_bytes() -> usize {
    64 << 20
}
fn default_batch_wait() -> u64 {
    1000
}

impl ClickHouseConfig {
    fn http(&self, ctx: &Context<'_>) -> Result<Http, Fault> {
        let ca = self.ca_file.as_ref().map(|c| ctx.base_dir.join(c));
        Http::new(
            &self.url,
            self.user.clone(),
            self.password.clone(),
            ca.as_deref(),
        )
        .map_err(|e| Fault::definite(finding_for(&self.name, &e), e.fix()))
    }

    /// The server's release, which decides the types it can store.
    async fn profile(&self, http: &Http) -> Result<(String, Profile), ChError> {
        let v = http.query("SELECT version()").await?;
        let version = String::from_utf8_lossy(&v).trim().to_owned();
        Ok((version.clone(), Profile::of_version(&version)))
    }

    fn target_names(&self, tables: &[String]) -> Vec<(String, String)> {
        tables
            .iter()
            .map(|t| {
                let (schema, table) = t.split_once('.').unwrap_or(("public", t));
                let name = self
                    .table_name
                    .replace("{schema}", schema)
                    .replace("{table}", table);
                (t.clone(), name)
            })
            .collect()
    }
}

fn fault_finding(name: &str, f: &Fault) -> Finding {
    let what = finding_for(name, f);
    match (f.is_transient(), f.fix.as_deref()) {
        (false, Some(fix)) => Finding::fail(what, fix),
        (false, None) => Finding::fail(what, "see the message"),
        (true, _) => Finding::warn(what, "the server did not answer: it is waited for at start"),
    }
}

impl SinkSpec for ClickHouseConfig {
    const DESCRIPTION: &'static str =
        "Keeps each table current in ClickHouse (ReplacingMergeTree), created and altered with the source's schema";
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
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            errs.push(finding_for(name, "url must start with http:// or https://"));
        }
        // Credentials in the URL would reach error messages; they have their own settings.
        if self
            .url
            .split_once("://")
            .is_some_and(|(_, rest)| rest.split('/').next().unwrap_or("").contains('@'))
        {
            errs.push(finding_for(
                name,
                "url must not hold credentials: set user and password instead",
            ));
        }
        if !self.table_name.contains("{table}") {
            errs.push(finding_for(name, "table_name must contain {table}"));
        }
        if self.database.is_empty() {
            errs.push(finding_for(name, "database must not be empty"));
        }
        if self.batch_max_rows == 0 || self.batch_max_bytes == 0 {
            errs.push(finding_for(
                name,
                "batch_max_rows and batch_max_bytes must be above 0",
            ));
        }
        for c in &self.as_string {
            if c.split('.').count() != 3 {
                errs.push(finding_for(
                    name,
                    format_args!("as_string entry {c:?} must be schema.table.column"),
                ));
            }
        }
        if self.password.is_some() && self.user.is_none() {
            errs.push(finding_for(name, "a password needs its user"));
        }
    }

    async fn check(&self, ctx: &Context<'_>) -> Vec<Finding> {
        let name = &self.name;
        let mut out = Vec::new();
        let http = match self.http(ctx) {
            Ok(h) => h,
            Err(f) => return vec![fault_finding(name, &f)],
        };
        let version = match self.profile(&http).await {
            Ok((v, _)) => v,
            Err(e) => return vec![fault_finding(name, &e.fault(name))],
        };
        out.push(Finding::pass(finding_for(
            name,
            format_args!("ClickHouse {version} answers"),
        )));
        let db = types::literal(&self.database);
        match http
            .query(&format!(
                "SELECT count() FROM system.databases WHERE name = {db}"
            ))
            .await
        {
            Ok(b) if String::from_utf8_lossy(&b).trim() == "0" => out.push(Finding::fail(
                finding_for(
                    name,
                    format_args!("database {:?} does not exist", self.database),
                ),
                format!(
                    "CREATE DATABASE {} on the server, or set the sink's database",
                    types::quote(&self.database)
                ),
            )),
            Ok(_) => {}
            Err(e) => out.push(fault_finding(name, &e.fault(name))),
        }
        let mut seen: std::collections::HashMap<String, String> = Default::default();
        for (source, target) in self.target_names(ctx.tables) {
            if let Some(other) = seen.insert(target.clone(), source.clone()) {
                out.push(Finding::fail(
                    finding_for(
                        name,
                        format_args!(
                            "{other} and {source} would both be ClickHouse table {target:?}"
                        ),
                    ),
                    "set table_name to \"{schema}_{table}\"",
                ));
            }
        }
        out
    }

    async fn build(&self, ctx: &Context<'_>) -> Result<Built, Fault> {
        let http = self.http(ctx)?;
        let (version, profile) = self.profile(&http).await.map_err(|e| e.fault(&self.name))?;
        let database = types::quote(&self.database);
        for sql in park_tables(&database) {
            http.query(&sql).await.map_err(|e| e.fault(&self.name))?;
        }
        tracing::info!(sink = %self.name, %version, "ClickHouse sink connected");
        let settings = Arc::new(Settings {
            sink: self.name.clone(),
            pipeline: ctx.pipeline.to_owned(),
            db: self.database.clone(),
            database,
            table_name: self.table_name.clone(),
            as_string: self.as_string.iter().cloned().collect::<BTreeSet<_>>(),
            profile,
        });
        let mut sink = ClickHouseSink::new(http, settings, ctx.catalog.cloned());
        for table in ctx.tables {
            if let Some(cols) = ctx.columns.get(table) {
                sink.open_table(table, cols).await?;
            }
        }
        sink.resume_parked().await?;
        Ok(Built::Batches {
            sink: Box::new(sink),
            max_records: self.batch_max_rows,
            window: Some(Window {
                max_bytes: self.batch_max_bytes,
                linger: Duration::from_millis(self.batch_max_wait_ms),
            }),
        })
    }
}
