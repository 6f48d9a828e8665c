//! What the API checks before a pipeline exists: the preflight checks of `sluice check`
//! for a source connection (each with its fix); the tables a role could capture, with
//! their columns, keys and whether the role may read them; and a sink's health check
//! (reachable, authenticated, writable), the one every start runs.
//!
//! Invariants: only catalog metadata leaves here (names, types, estimates), never a row;
//! the connection string's password is never echoed (connection texts use the form that
//! drops it).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_pg::catalog::{self, CheckSpec};
use sluice_pg::{ConnInfo, Connection};
use sluice_pipeline::config::SinkConfig;

use crate::control::{ControlError, FindingView};

/// A source to test or discover.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceRequest {
    /// A PostgreSQL URL or key-value connection string.
    pub url: String,
    /// Tables to check (`schema.table` or `schema.*`); none: the connection and the
    /// server's settings only.
    #[serde(default)]
    pub tables: Vec<String>,
    /// The pipeline name the slot checks use (default `new`).
    #[serde(default)]
    pub pipeline: Option<String>,
}

fn conninfo(url: &str) -> Result<ConnInfo, ControlError> {
    ConnInfo::parse(url).map_err(|e| ControlError::Invalid(vec![format!("url: {e}")]))
}

/// The checks `sluice check` runs on the source, as findings with fixes.
pub async fn test(req: &SourceRequest) -> Result<Vec<FindingView>, ControlError> {
    let name = req.pipeline.clone().unwrap_or_else(|| "new".into());
    let spec = CheckSpec {
        conninfo: conninfo(&req.url)?,
        tables: req.tables.clone(),
        exclusions: Default::default(),
        slot: format!("sluice_{name}"),
        publication: format!("sluice_{name}"),
        external_publication: false,
        lock_keys: sluice_pg::source::lock_keys(&name),
    };
    Ok(catalog::check(&spec)
        .await
        .iter()
        .map(FindingView::from)
        .collect())
}

/// A table a pipeline could capture.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TableInfo {
    pub schema: String,
    pub table: String,
    pub columns: Vec<ColumnInfo>,
    /// Whether it has a primary key (a Redis sink needs one).
    pub primary_key: bool,
    /// `default`, `full`, `index` or `nothing`: what a delete or update carries of the
    /// old row.
    pub replica_identity: String,
    /// The planner's estimate; -1 when never analysed.
    pub estimated_rows: i64,
    /// Whether the role may SELECT it (the snapshot needs to).
    pub readable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ColumnInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub nullable: bool,
    pub primary_key: bool,
}

const DISCOVER: &str = "SELECT n.nspname, c.relname, c.relreplident, c.reltuples::bigint, \
     has_table_privilege(c.oid, 'SELECT'), i.indrelid IS NOT NULL, \
     (SELECT coalesce(json_agg(json_build_object('name', a.attname, \
         'type', format_type(a.atttypid, a.atttypmod), 'nullable', NOT a.attnotnull, \
         'primary_key', coalesce(a.attnum = ANY(i.indkey), false)) ORDER BY a.attnum), '[]') \
      FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) \
   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
   LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary \
   WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
   ORDER BY 1, 2";

/// Every ordinary and partitioned table of the database (partitions are captured through
/// their parent).
pub async fn discover(url: &str) -> Result<Vec<TableInfo>, ControlError> {
    let info = conninfo(url)?;
    let mut conn = Connection::connect(&info, false)
        .await
        .map_err(|e| ControlError::Upstream(format!("cannot connect to {info}: {e}")))?;
    let rows = conn.query(DISCOVER).await;
    conn.close().await;
    let rows = rows.map_err(|e| ControlError::Upstream(format!("cannot read the catalog: {e}")))?;
    let cell = |r: &[Option<String>], i: usize| r.get(i).cloned().flatten().unwrap_or_default();
    rows.iter()
        .map(|r| {
            let columns: Vec<ColumnInfo> = serde_json::from_str(&cell(r, 6))
                .map_err(|e| ControlError::Internal(format!("unexpected catalog answer: {e}")))?;
            Ok(TableInfo {
                schema: cell(r, 0),
                table: cell(r, 1),
                replica_identity: match cell(r, 2).as_str() {
                    "d" => "default",
                    "f" => "full",
                    "i" => "index",
                    _ => "nothing",
                }
                .into(),
                estimated_rows: cell(r, 3).parse().unwrap_or(-1),
                readable: cell(r, 4) == "t",
                primary_key: cell(r, 5) == "t",
                columns,
            })
        })
        .collect()
}

/// A sink of a pipeline to be: `name`, `type` and its settings, checked as a start
/// checks it (`tables`: the `schema.table`s it would take; `database`: the source's
/// database name, part of Redis keys).
pub async fn verify_sink(
    sink: Value,
    tables: &[String],
    database: &str,
    base_dir: &Path,
) -> Result<Vec<FindingView>, ControlError> {
    let sink: SinkConfig = serde_json::from_value(sink)
        .map_err(|e| ControlError::Invalid(vec![format!("sink: {e}")]))?;
    let mut problems = Vec::new();
    sink.validate(&mut problems);
    if !problems.is_empty() {
        return Err(ControlError::Invalid(problems));
    }
    let ctx = sluice_sinks::Context {
        base_dir,
        db: database,
        pipeline: "verify",
        tables,
        // Not read here: a routing template's columns are checked when the pipeline
        // is checked or started, against the source's catalog.
        columns: &Default::default(),
        catalog: None,
        reset: None,
    };
    Ok(sink
        .check(&ctx)
        .await
        .iter()
        .map(FindingView::from)
        .collect())
}
