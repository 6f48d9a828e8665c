//! `delete_delivered`: the PostgreSQL side of the outbox cleaner (the DELETEs and the
//! preflight findings). When a row may go is decided by `sluice_delivery::clean`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sluice_core::{Fault, Finding};
use sluice_delivery::{Deletion, RowDeleter};
use sluice_pg::catalog;
use sluice_pg::wire::{quote_ident, quote_literal, Connection};
use sluice_pg::{ConnInfo, PgError, INSUFFICIENT_PRIVILEGE};

use crate::config::Config;

/// Deletes rows over an ordinary connection, opened on first use and again after an error.
pub struct PgDeleter {
    info: ConnInfo,
    conn: Option<Connection>,
}

impl PgDeleter {
    pub fn new(info: ConnInfo) -> PgDeleter {
        PgDeleter { info, conn: None }
    }
}

impl RowDeleter for PgDeleter {
    fn delete<'a>(
        &'a mut self,
        schema: &'a str,
        table: &'a str,
        keys: &'a [String],
    ) -> Deletion<'a> {
        Box::pin(async move {
            let sql = delete_sql(schema, table, keys)?;
            if self.conn.is_none() {
                let c = Connection::connect(&self.info, false)
                    .await
                    .map_err(|e| Fault::from(e).within("cannot connect to the source"))?;
                self.conn = Some(c);
            }
            let conn = self.conn.as_mut().expect("connected above");
            match conn.simple_query(&sql).await {
                Ok(results) => Ok(results
                    .iter()
                    .filter_map(|r| r.tag.strip_prefix("DELETE ")?.parse::<u64>().ok())
                    .sum()),
                Err(e) => {
                    self.conn = None;
                    Err(deletion_fault(e, schema, table, &self.info.user))
                }
            }
        })
    }
}

/// A failed DELETE, classified by its SQLSTATE; a missing privilege carries the GRANT.
/// The cleaner retries either kind for a while, then sets the rows aside.
fn deletion_fault(e: PgError, schema: &str, table: &str, user: &str) -> Fault {
    if e.code() == Some(INSUFFICIENT_PRIVILEGE) {
        return Fault::definite(
            "the source user may not delete delivered outbox rows",
            format!(
                "GRANT DELETE ON {}.{} TO {}",
                quote_ident(schema),
                quote_ident(table),
                quote_ident(user)
            ),
        )
        .caused_by(e);
    }
    Fault::from(e)
}

/// A key the outbox cleaner cannot delete by: the record's key is not the JSON object of
/// key columns the cleaner expects. Definite: the same record gives the same key.
#[derive(Debug, thiserror::Error)]
pub enum OutboxKeyError {
    /// The key's values are not shown: they are a row's.
    #[error("an outbox row's key is not a JSON object: {source}")]
    NotObject {
        #[source]
        source: serde_json::Error,
    },
    #[error("an outbox row's key has no columns")]
    NoColumns,
}

/// Definite, with the parse error kept as the cause.
impl From<OutboxKeyError> for Fault {
    fn from(e: OutboxKeyError) -> Fault {
        match e {
            OutboxKeyError::NotObject { source } => {
                Fault::fatal("an outbox row's key is not a JSON object").caused_by(source)
            }
            e @ OutboxKeyError::NoColumns => Fault::fatal(e.to_string()),
        }
    }
}

/// One DELETE per set of key columns. The keys travel as one JSON array that PostgreSQL
/// turns into rows of the table's own type (`jsonb_populate_recordset`), so each value is
/// read by its column's input function, whatever the type.
pub fn delete_sql(schema: &str, table: &str, keys: &[String]) -> Result<String, OutboxKeyError> {
    let mut groups: BTreeMap<Vec<String>, Vec<Value>> = BTreeMap::new();
    for k in keys {
        let m: Map<String, Value> =
            serde_json::from_str(k).map_err(|source| OutboxKeyError::NotObject { source })?;
        if m.is_empty() {
            return Err(OutboxKeyError::NoColumns);
        }
        groups
            .entry(m.keys().cloned().collect())
            .or_default()
            .push(Value::Object(m));
    }
    let t = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let statements: Vec<String> = groups
        .into_iter()
        .map(|(cols, rows)| {
            let on: Vec<String> = cols
                .iter()
                .map(|c| format!("t.{q} = k.{q}", q = quote_ident(c)))
                .collect();
            format!(
                "DELETE FROM {t} AS t USING jsonb_populate_recordset(NULL::{t}, {}::jsonb) AS k WHERE {}",
                quote_literal(&Value::Array(rows).to_string()),
                on.join(" AND ")
            )
        })
        .collect();
    Ok(statements.join("; "))
}

/// The outbox tables of sinks with `delete_delivered`, each once, as `schema.table`.
pub fn tables(config: &Config) -> Vec<String> {
    let mut out: Vec<String> = config
        .sinks
        .iter()
        .flat_map(|s| s.deletes_delivered().iter().cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Rows can be deleted only by key, and only with the DELETE privilege.
pub async fn findings(config: &Config, conn: &mut Connection) -> Result<Vec<Finding>, PgError> {
    let tables = tables(config);
    let mut out = Vec::new();
    if tables.is_empty() {
        return Ok(out);
    }
    let keyless = catalog::tables_without_primary_key(conn, &tables).await?;
    let user = quote_ident(
        conn.parameter("session_authorization")
            .unwrap_or("<the source user>"),
    );
    for t in &tables {
        let r = catalog::TableRef::parse(t);
        let q = r.qualified();
        let rows = conn
            .query(&format!(
                "SELECT has_table_privilege({}, 'DELETE')",
                quote_literal(&q)
            ))
            .await?;
        let may_delete = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .is_some_and(|v| v == "t");
        let has_key = !keyless.contains(t);
        out.push(Finding {
            ok: may_delete && has_key,
            blocking: true,
            what: match (has_key, may_delete) {
                (true, true) => format!("outbox table {t}: delivered rows can be deleted"),
                (false, _) => format!(
                    "outbox table {t} has no primary key: delete_delivered deletes rows by key"
                ),
                (true, false) => format!(
                    "outbox table {t}: the source user may not DELETE from it (delete_delivered)"
                ),
            },
            fix: match (has_key, may_delete) {
                (true, true) => None,
                (false, _) => Some(format!("ALTER TABLE {q} ADD PRIMARY KEY (id)")),
                (true, false) => Some(format!("GRANT DELETE ON {q} TO {user}")),
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletes_by_key_columns_grouped_by_shape() {
        let sql = delete_sql(
            "public",
            "out\"box",
            &[
                r#"{"id":1}"#.into(),
                r#"{"id":"it's"}"#.into(),
                r#"{"a":1,"b":"x"}"#.into(),
            ],
        )
        .unwrap();
        assert_eq!(
            sql,
            "DELETE FROM \"public\".\"out\"\"box\" AS t USING jsonb_populate_recordset(NULL::\"public\".\"out\"\"box\", E'[{\"a\":1,\"b\":\"x\"}]'::jsonb) AS k WHERE t.\"a\" = k.\"a\" AND t.\"b\" = k.\"b\"; \
             DELETE FROM \"public\".\"out\"\"box\" AS t USING jsonb_populate_recordset(NULL::\"public\".\"out\"\"box\", E'[{\"id\":1},{\"id\":\"it''s\"}]'::jsonb) AS k WHERE t.\"id\" = k.\"id\""
        );
        assert!(delete_sql("public", "t", &["[1]".into()]).is_err());
        assert!(delete_sql("public", "t", &["{}".into()]).is_err());
    }
}
