//! Preflight: everything checked before a pipeline starts, and what `sluice check` prints.
//! The source's checks (wal_level, privileges, slot, publication), the tables that need a
//! primary key, the outbox tables whose rows are deleted, every sink's health check and
//! a JetStream log's.
//!
//! Invariant: a blocking finding is one only the operator can fix (a wrong password, a
//! missing privilege); a start refuses on one and names its fix. Non-blocking ones (a
//! busy slot, a sink server that is down) are waited out by the running pipeline.

use std::path::Path;

use sluice_core::Finding;
use sluice_pg::catalog::{self, CheckSpec};
use sluice_pg::{ConnInfo, Connection, PgError};
use sluice_sinks::Context;

use crate::config::{Config, LogBackendKind};

/// What the source's checks run against.
pub fn spec(config: &Config) -> Result<CheckSpec, PgError> {
    Ok(CheckSpec {
        conninfo: ConnInfo::parse(&config.source.url)?,
        tables: config.source.tables.clone(),
        exclusions: config.exclusions(),
        slot: config.slot(),
        publication: config.publication(),
        external_publication: config.source.publication.is_some(),
        lock_keys: sluice_pg::source::lock_keys(&config.pipeline.name),
    })
}

/// Tables that need a primary key (cache sinks' tables, outbox tables whose delivered
/// rows are deleted) and the DELETE grant, as findings.
pub async fn key_findings(
    config: &Config,
    conn: &mut Connection,
    captured: &[String],
) -> Result<Vec<Finding>, PgError> {
    let mut out = Vec::new();
    for s in config.sinks.iter().filter(|s| s.needs_primary_key()) {
        let name = s.name();
        let missing = catalog::tables_without_primary_key(conn, &s.takes(captured)).await?;
        out.push(if missing.is_empty() {
            Finding::pass(format!("sink {name:?}: every table has a primary key"))
        } else {
            Finding::fail(
                format!(
                    "sink {name:?}: {} without a primary key: a cache key needs one",
                    missing.join(", ")
                ),
                format!(
                    "add a primary key (ALTER TABLE {} ADD PRIMARY KEY (...)), or leave the table out of the sink's tables",
                    missing[0]
                ),
            )
        });
    }
    out.extend(crate::outbox_clean::findings(config, conn).await?);
    Ok(out)
}

/// Every sink's health check (reachable, authenticated, writable), and the JetStream
/// log's when the pipeline has one.
pub async fn sink_findings(
    config: &Config,
    base_dir: &Path,
    captured: &[String],
    columns: &sluice_core::Columns,
) -> Vec<Finding> {
    let db = ConnInfo::parse(&config.source.url)
        .map(|c| c.dbname)
        .unwrap_or_default();
    let mut out = Vec::new();
    for s in &config.sinks {
        let tables = s.takes(captured);
        let ctx = Context {
            base_dir,
            db: &db,
            pipeline: &config.pipeline.name,
            tables: &tables,
            columns,
            catalog: None,
            reset: None,
        };
        out.extend(s.check(&ctx).await);
    }
    if let (LogBackendKind::Jetstream, Some(js)) = (config.log.backend, &config.log.jetstream) {
        let max_bytes = config.log.max_bytes.unwrap_or(0);
        out.push(js.finding(&config.pipeline.name, max_bytes, base_dir).await);
    }
    out
}

/// Everything `sluice check` reports: the source's checks, the key findings, and the
/// sinks' health checks.
pub async fn check_all(config: &Config, base_dir: &Path) -> Result<Vec<Finding>, PgError> {
    let spec = spec(config)?;
    let mut findings = catalog::check(&spec).await;
    let mut captured = Vec::new();
    let mut columns = sluice_core::Columns::new();
    if let Ok(mut conn) = Connection::connect(&spec.conninfo, false).await {
        if let Ok((tables, _)) = catalog::expand_tables(&mut conn, &config.source.tables).await {
            captured = tables.iter().map(|t| t.to_string()).collect();
            findings.extend(key_findings(config, &mut conn, &captured).await?);
            columns = catalog::columns(&mut conn, &captured).await?;
            catalog::without_excluded(&mut columns, &spec.exclusions);
        }
        conn.close().await;
    }
    findings.extend(sink_findings(config, base_dir, &captured, &columns).await);
    Ok(findings)
}

/// The findings as `ok`/`FAIL` lines with their fixes.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        if f.ok {
            out.push_str(&format!("ok    {}\n", f.what));
        } else {
            out.push_str(&format!("FAIL  {}\n", f.what));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("      fix: {fix}\n"));
            }
        }
    }
    out
}
