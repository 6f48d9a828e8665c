//! Following the source's columns: a column records carry that the target lacks is
//! added with the type the source's catalog gives it now; a column the sink knows came
//! from the source, that records stopped carrying and that the catalog no longer lists,
//! is dropped.
//!
//! Invariants:
//! - A record alone never drops a column: unchanged TOAST columns and excluded columns
//!   are absent from records too, so the catalog decides.
//! - The catalog is asked once per batch at most per table, and not again within
//!   `RECHECK` for the same question.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use sluice_core::{ColumnInfo, Fault};
use tracing::{info, warn};

use super::plan::Change;
use super::sql::{self, Column};
use super::{classify, target, PostgresSink, RECHECK};

impl PostgresSink {
    /// Columns the batch's records carry that the target lacks, and columns of the
    /// source that they stopped carrying: the DDL that follows the source's catalog.
    pub(super) async fn reconcile(&mut self, changes: &[Change<'_>]) -> Result<Vec<String>, Fault> {
        let now = Instant::now();
        let mut unknown: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
        let mut missing: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
        for c in changes {
            let Some((_, after)) = &c.parsed.after else {
                continue;
            };
            let t = &self.tables[c.table];
            for n in after.names() {
                let recent = t.ignored.get(n).is_some_and(|at| now - *at < RECHECK);
                if t.shape.column(n).is_none() && !recent {
                    unknown.entry(c.table).or_default().insert(n.to_owned());
                }
            }
            for col in &t.shape.columns {
                if t.known.contains(&col.name)
                    && !after.has(&col.name)
                    && !c.parsed.toast.iter().any(|x| *x == col.name)
                {
                    missing.entry(c.table).or_default().insert(col.name.clone());
                }
            }
        }
        let mut ddl = Vec::new();
        let touched: BTreeSet<usize> = unknown.keys().chain(missing.keys()).copied().collect();
        for i in touched {
            let unknown = unknown.remove(&i).unwrap_or_default();
            let missing = missing.remove(&i).unwrap_or_default();
            let asked = self.tables[i]
                .asked
                .as_ref()
                .is_some_and(|(set, at)| *set == missing && now - *at < RECHECK);
            if unknown.is_empty() && (missing.is_empty() || asked) {
                continue;
            }
            let listed = self.source_columns(i, true).await?;
            ddl.extend(self.follow(i, &unknown, &missing, listed, now).await?);
        }
        Ok(ddl)
    }

    /// The DDL for table `i` given what the source's catalog lists now (`None`: not known).
    async fn follow(
        &mut self,
        i: usize,
        unknown: &BTreeSet<String>,
        missing: &BTreeSet<String>,
        listed: Option<Vec<ColumnInfo>>,
        now: Instant,
    ) -> Result<Vec<String>, Fault> {
        let mut ddl = Vec::new();
        let listed = listed.unwrap_or_default();
        let adds: Vec<&ColumnInfo> = listed
            .iter()
            .filter(|c| unknown.contains(&c.name))
            .collect();
        let types: BTreeSet<&str> = adds
            .iter()
            .map(|c| c.pg_type.as_str())
            .filter(|t| !t.is_empty())
            .collect();
        let unknown_types = match (&mut self.session, types.is_empty()) {
            (Some(s), false) => target::unknown_types(&mut s.conn, &types)
                .await
                .map_err(|e| classify(e, &self.target))?,
            _ => BTreeSet::new(),
        };
        let t = &mut self.tables[i];
        let (schema, table) = (t.map.target.0.clone(), t.map.target.1.clone());
        if !missing.is_empty() {
            t.asked = Some((missing.clone(), now));
        }
        for c in adds {
            let ty = target::target_type(c, &unknown_types);
            ddl.push(sql::add_column(&t.shape.qualified, &c.name, &ty));
            info!(%schema, %table, column = %c.name, r#type = %ty, "postgres: adding a column the source added");
            t.shape.columns.push(Column::new(c.name.clone(), ty));
            t.known.insert(c.name.clone());
        }
        for u in unknown
            .iter()
            .filter(|u| !listed.iter().any(|c| &c.name == *u))
        {
            if t.ignored.insert(u.clone(), now).is_none() {
                warn!(%schema, %table, column = %u, "postgres: records carry a column the source's catalog does not list (dropped since); its values are not applied");
            }
        }
        if listed.is_empty() {
            // Nothing known of the source table now: nothing is dropped on a guess.
            return Ok(ddl);
        }
        for m in missing
            .iter()
            .filter(|m| !listed.iter().any(|c| &c.name == *m))
        {
            ddl.push(sql::drop_column(&t.shape.qualified, m));
            info!(%schema, %table, column = %m, "postgres: dropping a column the source dropped");
            t.shape.columns.retain(|c| &c.name != m);
            t.known.remove(m);
        }
        Ok(ddl)
    }
}
