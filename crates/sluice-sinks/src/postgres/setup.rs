//! Setting the target up for a session: connect, create the missing tables (and
//! schemas) from the source's columns, empty a shed sink's tables, create the positions
//! table, and read the target's tables and the positions.
//!
//! Invariant: what the sink believes of the target (columns, keys, positions) is read
//! again with every session, so a session that ended in an error leaves no belief behind.

use std::collections::BTreeSet;

use sluice_core::{ColumnInfo, Fault};
use sluice_pgwire::Connection;
use tracing::info;

use super::plan::Position;
use super::{source_key, sql, target, PostgresSink, Session, POSITIONS};

impl PostgresSink {
    /// Connects and sets the target up: missing tables created, a shed sink's tables
    /// emptied, the positions table created; reads the tables and the positions.
    pub(super) async fn open(&mut self) -> Result<Session, Fault> {
        let mut conn = Connection::connect(&self.options.conninfo, false)
            .await
            .map_err(|e| self.classify(e))?;
        let result = self.set_up(&mut conn).await;
        match result {
            Ok(positions) => {
                info!(target = %self.target, tables = self.tables.len(), "postgres: connected to the target");
                Ok(Session {
                    conn,
                    positions,
                    staged: Vec::new(),
                })
            }
            Err(e) => {
                conn.close().await;
                Err(e)
            }
        }
    }

    async fn set_up(&mut self, conn: &mut Connection) -> Result<Vec<Option<Position>>, Fault> {
        let ids: Vec<(String, String)> = self.tables.iter().map(|t| t.map.target.clone()).collect();
        let mut described = target::describe(conn, &ids)
            .await
            .map_err(|e| self.classify(e))?;
        let missing: Vec<usize> = (0..ids.len())
            .filter(|i| !described.contains_key(&ids[*i]))
            .collect();
        if !missing.is_empty() {
            self.create(conn, &missing).await?;
            described = target::describe(conn, &ids)
                .await
                .map_err(|e| self.classify(e))?;
        }
        self.create_positions(conn).await?;
        if self.options.reset {
            let all: Vec<&str> = self
                .tables
                .iter()
                .map(|t| t.shape.qualified.as_str())
                .collect();
            if !all.is_empty() {
                conn.execute(&format!("TRUNCATE {}", all.join(", ")))
                    .await
                    .map_err(|e| self.classify(e))?;
            }
            info!(
                tables = all.len(),
                "postgres: emptied the tables of a shed sink before its backfill"
            );
            self.options.reset = false;
        }
        let stored = target::read_positions(
            conn,
            &self.positions,
            &self.options.pipeline,
            &self.options.sink,
        )
        .await
        .map_err(|e| self.classify(e))?;
        let mut positions = Vec::new();
        for (i, t) in self.tables.iter_mut().enumerate() {
            let d = described.remove(&ids[i]).ok_or_else(|| {
                Fault::transient(format!(
                    "postgres: target table {} vanished while the sink set it up",
                    t.map.target_name()
                ))
            })?;
            let source_key = source_key(&self.options.columns, &t.map);
            if d.key.is_empty()
                || source_key
                    .as_ref()
                    .is_some_and(|k| !k.is_empty() && *k != d.key)
            {
                return Err(Fault::definite(
                    format!(
                        "postgres: target table {} has primary key ({}) but the source's is ({})",
                        t.map.target_name(),
                        d.key.join(", "),
                        source_key.unwrap_or_default().join(", ")
                    ),
                    "give the target table the source's primary key, or drop it and let the sink create it",
                ));
            }
            t.shape.columns = d.columns;
            t.shape.key = d.key;
            let s = stored.get(&t.map.source);
            positions.push(s.map(|s| s.position));
            t.known = s
                .map(|s| s.source_columns.iter().cloned().collect())
                .unwrap_or_default();
            if let Some(cols) = self.options.columns.get(&t.map.source_name()) {
                t.known.extend(cols.iter().map(|c| c.name.clone()));
            }
        }
        Ok(positions)
    }

    /// The source's columns of table `i`: as the pipeline started, else from its catalog.
    pub(super) async fn source_columns(
        &mut self,
        i: usize,
        now: bool,
    ) -> Result<Option<Vec<ColumnInfo>>, Fault> {
        let name = self.tables[i].map.source_name();
        if !now {
            if let Some(c) = self.options.columns.get(&name) {
                return Ok(Some(c.clone()));
            }
        }
        let Some(catalog) = &self.options.catalog else {
            return Ok(None);
        };
        let mut cols = catalog
            .columns(std::slice::from_ref(&name))
            .await
            .map_err(|e| e.within("postgres"))?;
        Ok(cols.remove(&name))
    }

    /// Creates the missing tables `missing` (and their schemas) in one transaction.
    async fn create(&mut self, conn: &mut Connection, missing: &[usize]) -> Result<(), Fault> {
        if !self.options.create_tables {
            let t = &self.tables[missing[0]].map;
            return Err(Fault::definite(
                format!("postgres: target table {} does not exist", t.target_name()),
                "create it with the source's columns and primary key, or set create_tables = true",
            ));
        }
        let mut sources = Vec::new();
        for &i in missing {
            let cols = self.source_columns(i, false).await?.ok_or_else(|| {
                Fault::transient(format!(
                    "postgres: the source's columns of {} are not known yet; the table is created once they are",
                    self.tables[i].map.source_name()
                ))
            })?;
            sources.push((i, cols));
        }
        let types: BTreeSet<&str> = sources
            .iter()
            .flat_map(|(_, cols)| cols.iter().map(|c| c.pg_type.as_str()))
            .filter(|t| !t.is_empty())
            .collect();
        let unknown = target::unknown_types(conn, &types)
            .await
            .map_err(|e| self.classify(e))?;
        let mut script = vec!["BEGIN".to_owned()];
        let mut schemas = BTreeSet::new();
        for (i, cols) in &sources {
            let m = &self.tables[*i].map;
            if schemas.insert(m.target.0.clone())
                && !target::schema_exists(conn, &m.target.0)
                    .await
                    .map_err(|e| self.classify(e))?
            {
                script.push(format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    sluice_pgwire::wire::quote_ident(&m.target.0)
                ));
            }
            let create = target::create_sql(&self.tables[*i].shape.qualified, cols, &unknown)
                .ok_or_else(|| {
                    Fault::definite(
                        format!("postgres: {} has no primary key", m.source_name()),
                        "add a primary key to the source table, or leave it out of the sink's tables",
                    )
                })?;
            script.push(create);
            for c in cols.iter().filter(|c| unknown.contains(&c.pg_type)) {
                info!(table = %m.target_name(), column = %c.name, source_type = %c.pg_type, "postgres: the target has no such type; the column is created as text");
            }
            info!(table = %m.target_name(), "postgres: creating the target table");
        }
        script.push("COMMIT".into());
        conn.execute(&script.join(";\n"))
            .await
            .map_err(|e| self.classify(e))
    }

    async fn create_positions(&mut self, conn: &mut Connection) -> Result<(), Fault> {
        let schema = &self.options.positions_schema;
        let mut script = Vec::new();
        if !target::schema_exists(conn, schema)
            .await
            .map_err(|e| self.classify(e))?
        {
            script.push(format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                sluice_pgwire::wire::quote_ident(schema)
            ));
        }
        let exists = target::describe(conn, &[(schema.clone(), POSITIONS.to_owned())])
            .await
            .map_err(|e| self.classify(e))?;
        if exists.is_empty() {
            script.push(sql::positions_table(&self.positions.qualified));
        }
        if script.is_empty() {
            return Ok(());
        }
        conn.execute(&script.join(";\n"))
            .await
            .map_err(|e| self.classify(e))
    }
}
