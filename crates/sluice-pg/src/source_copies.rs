//! The source's part in snapshots and backfills: the initial snapshot when the slot is
//! created, backfill plans for tables captured for the first time or requested through
//! the WAL, and the routing of records past the watermarks.
//!
//! Invariants: see `initial.rs` and `backfill.rs`; here, the snapshot's plans and the
//! tables already captured are recorded in the pipeline state before the copy starts, and
//! a record is either delivered, replaced by a range's rows (a high watermark), or
//! internal and never delivered.

use std::sync::Arc;

use sluice_core::{ChangeRecord, ErrorClass, Lsn};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Output, SourceConfig, SourceError, SourceWorker};
use crate::backfill::{self, BackfillRequest, Seen, Watermarks};
use crate::error::PgError;
use crate::initial::{InitialSnapshot, SnapshotTable};
use crate::replication;
use crate::snapshot::{describe, PlanKind, TablePlan};
use crate::state::PipelineState;
use crate::values::TypeRegistry;
use crate::wire::Connection;

/// Where the initial snapshot stands, in the pipeline state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct InitialMeta {
    slot: String,
    consistent_point: String,
    complete: bool,
}

pub(super) const META_INITIAL: &str = "meta/initial";
pub(super) const META_KNOWN: &str = "meta/known_tables";
/// The slot this data dir is making (written before the slot is created).
pub(super) const META_CREATING: &str = "meta/creating_slot";

impl<O: Output> SourceWorker<O> {
    /// Creates the slot with an exported snapshot and copies the snapshot tables under
    /// it; returns the consistent point, or `None` if cancelled before the copy finished.
    pub(super) async fn initial_snapshot(
        &mut self,
        cfg: &SourceConfig,
        state: &Arc<PipelineState>,
        catalog: &mut Connection,
        repl: &mut Connection,
        cancel: &CancellationToken,
    ) -> Result<Option<Lsn>, SourceError> {
        // Recorded first: a crash right after the slot is made must not leave a slot this
        // data dir has no record of.
        state.put(META_CREATING, &cfg.slot)?;
        let (at, snapshot_name) = replication::create_slot_exporting(repl, &cfg.slot).await?;
        info!(slot = %cfg.slot, consistent_point = %at, "source: created replication slot");
        // Plans of an earlier slot mean nothing for this one.
        clear_plans(state)?;
        let meta = InitialMeta {
            slot: cfg.slot.clone(),
            consistent_point: at.to_string(),
            complete: false,
        };
        state.put(META_INITIAL, &meta)?;
        let mut types = TypeRegistry::new();
        let mut tables = Vec::new();
        for (schema, table) in &cfg.snapshot_tables {
            let excluded = cfg.exclusions.get(&format!("{schema}.{table}"));
            let shape = describe(catalog, schema, table, excluded, &mut types).await?;
            let plan = TablePlan::new(&shape, PlanKind::Initial, None, cfg.chunk_rows);
            state.put(&TablePlan::key(schema, table), &plan)?;
            tables.push(SnapshotTable {
                shape: Arc::new(shape),
                plan,
            });
        }
        state.put(META_KNOWN, &cfg.tables)?;
        let snapshot = InitialSnapshot {
            conninfo: cfg.conninfo.clone(),
            snapshot_name,
            consistent_point: at,
            snapshot_ts_micros: sluice_core::pg_epoch_to_unix_micros(replication::pg_now_micros()),
            workers: cfg.snapshot_workers,
            tables,
            batches: self.output.batches(),
            framing: self.output.framing(),
            state: state.clone(),
            progress: cfg.progress.clone(),
        };
        let started = std::time::Instant::now();
        if !snapshot.run(cancel).await? {
            return Ok(None);
        }
        clear_plans(state)?;
        state.put(
            META_INITIAL,
            &InitialMeta {
                complete: true,
                ..meta
            },
        )?;
        info!(
            seconds = started.elapsed().as_secs_f64(),
            "snapshot: complete; streaming from the slot"
        );
        Ok(Some(at))
    }

    /// Plans a backfill for each table captured for the first time, and drops the plans
    /// of tables no longer captured.
    pub(super) async fn added_tables(
        &mut self,
        cfg: &SourceConfig,
        state: &PipelineState,
        catalog: &mut Connection,
    ) -> Result<(), SourceError> {
        for (key, plan) in state.scan::<TablePlan>("plan/")? {
            if !cfg
                .tables
                .contains(&(plan.schema.clone(), plan.table.clone()))
            {
                info!(table = %plan.qualified(), "source: table no longer captured; its unfinished copy is dropped");
                state.remove(&key)?;
            }
        }
        let Some(known) = state.get::<Vec<(String, String)>>(META_KNOWN)? else {
            // A slot without state (a data_dir moved away): nothing to compare with.
            state.put(META_KNOWN, &cfg.tables)?;
            return Ok(());
        };
        for t in &cfg.tables {
            if known.contains(t) || !cfg.snapshot_tables.contains(t) {
                continue;
            }
            let req = BackfillRequest {
                schema: t.0.clone(),
                table: t.1.clone(),
                filter: None,
            };
            match backfill::plan_backfill(
                catalog,
                state,
                &req,
                &cfg.exclusions,
                cfg.chunk_rows,
                PlanKind::Backfill,
            )
            .await
            {
                Ok(plan) => {
                    info!(table = %plan.qualified(), ranges = plan.ranges.len(), "source: new table; backfilling it while streaming")
                }
                Err(e) => {
                    error!(table = %format!("{}.{}", t.0, t.1), error = %e, "source: new table streams without a backfill")
                }
            }
        }
        state.put(META_KNOWN, &cfg.tables)?;
        Ok(())
    }

    /// A backfill request seen in the stream.
    pub(super) async fn request(
        &mut self,
        catalog: &mut Connection,
        req: BackfillRequest,
    ) -> Result<(), SourceError> {
        let name = format!("{}.{}", req.schema, req.table);
        if !self
            .config
            .tables
            .iter()
            .any(|(s, t)| *s == req.schema && *t == req.table)
        {
            warn!(table = %name, "source: backfill requested for a table this pipeline does not capture; add it to source.tables");
            return Ok(());
        }
        let state = self.state.clone().expect("opened under the lock");
        match backfill::plan_backfill(
            catalog,
            &state,
            &req,
            &self.config.exclusions,
            self.config.chunk_rows,
            PlanKind::Backfill,
        )
        .await
        {
            Ok(plan) => {
                info!(table = %name, ranges = plan.ranges.len(), filter = plan.filter.is_some(), "source: backfill requested");
                self.marks.wake.notify_one();
            }
            Err(e) if e.class() == ErrorClass::Definite => {
                error!(table = %name, error = %e, "source: backfill refused")
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// Hands a record to the output unless it is internal (watermarks, requests, messages the
/// pipeline does not deliver); a high watermark becomes its range's rows. Returns whether
/// anything went to the output.
pub(super) fn route<O: Output>(
    output: &mut O,
    marks: &Watermarks,
    messages: bool,
    requests: &mut Vec<BackfillRequest>,
    r: ChangeRecord,
) -> bool {
    marks.delivered(r.xid);
    if !marks.interested(&r) {
        output.push(&r);
        return true;
    }
    match marks.observe(&r) {
        Seen::Pass if r.op == sluice_core::Op::Message && !messages => false,
        Seen::Pass => {
            output.push(&r);
            true
        }
        Seen::Drop => false,
        Seen::Emit(rows) => {
            for row in &rows {
                output.push(row);
            }
            !rows.is_empty()
        }
        Seen::Command(req) => {
            requests.push(req);
            false
        }
    }
}

impl<O: Output> SourceWorker<O> {
    /// The pipeline's slot is gone (dropped) or invalidated (`exists`, wal_status lost):
    /// changes since it was last read are lost. Stops with that, or (`resnapshot`) drops
    /// what is left of the slot, forgets the state's plans, and puts a truncate of every
    /// table in the log, so sinks that keep state (a cache) start empty before the tables
    /// are copied again.
    pub(super) async fn slot_lost(
        &mut self,
        cfg: &SourceConfig,
        state: &PipelineState,
        catalog: &mut Connection,
        exists: bool,
    ) -> Result<(), SourceError> {
        let what = if exists {
            "was invalidated (wal_status lost: PostgreSQL removed WAL it still needed, \
             e.g. past max_slot_wal_keep_size)"
        } else {
            "was dropped (by someone, or by this pipeline's max_slot_lag_bytes)"
        };
        if cfg.on_slot_lost == super::SlotLost::Stop {
            return Err(PgError::Definite(format!(
                "replication slot {:?} {what}: the changes since this pipeline last read it are \
                 gone, and its sinks miss them. Choose one: [source] on_slot_lost = \"resnapshot\" \
                 (copy every table again, the sinks' tables reset first), or `sluice teardown` \
                 and start over",
                cfg.slot
            ))
            .into());
        }
        warn!(slot = %cfg.slot, "source: the replication slot {what}; resnapshotting: every table is reset in the sinks and copied again");
        if exists {
            catalog
                .execute(&format!(
                    "SELECT pg_drop_replication_slot({})",
                    crate::wire::quote_literal(&cfg.slot)
                ))
                .await?;
        }
        clear_plans(state)?;
        for key in [META_KNOWN, META_INITIAL, META_CREATING] {
            state.remove(key)?;
        }
        let now = catalog.query("SELECT pg_current_wal_lsn()").await?;
        let at: Lsn = now
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| PgError::Protocol("pg_current_wal_lsn() gave no LSN".into()))?;
        let ts = sluice_core::time::now_micros();
        for (n, (schema, table)) in cfg.tables.iter().enumerate() {
            self.output.push(&ChangeRecord {
                id: sluice_core::ChangeId {
                    commit_lsn: at,
                    ordinal: n as u64 + 1,
                },
                op: sluice_core::Op::Truncate,
                schema: schema.as_str().into(),
                table: table.as_str().into(),
                key: None,
                before: None,
                after: None,
                unchanged_toast: Vec::new(),
                lsn: at,
                commit_lsn: at,
                commit_ts_micros: ts,
                xid: 0,
                message: None,
                old_key: None,
            });
        }
        self.output
            .hand_off(Some(at))
            .await
            .map_err(SourceError::Output)?;
        Ok(())
    }
}

pub(super) fn clear_plans(state: &PipelineState) -> Result<(), SourceError> {
    for (key, _) in state.scan::<serde_json::Value>("plan/")? {
        state.remove(&key)?;
    }
    Ok(())
}
