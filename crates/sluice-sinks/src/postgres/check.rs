//! `sluice check` for the PostgreSQL sink: the target's schemas, tables, keys and
//! privileges against what the sink will do, each problem with its fix.
//!
//! Invariant: a finding names schemas, tables, columns and the user, never a password.

use std::collections::{BTreeMap, BTreeSet};

use sluice_core::Finding;
use sluice_pgwire::{ConnInfo, Connection, PgError};

use super::{source_key, sql, target, PostgresConfig, TableMap, POSITIONS};
use crate::{finding_for, Context};

impl PostgresConfig {
    /// The target's schemas, tables and privileges, against what the sink will do.
    pub(super) async fn check_target(
        &self,
        conn: &mut Connection,
        ctx: &Context<'_>,
        at: &str,
    ) -> Result<Vec<Finding>, PgError> {
        let name = &self.name;
        let user = conn_user(&self.url);
        let mut out = Vec::new();
        let maps = self.maps(ctx.tables);
        let positions_schema = self.positions_schema(&maps);
        let targets: Vec<(String, String)> = maps.iter().map(|m| m.target.clone()).collect();
        let positions = (positions_schema.clone(), POSITIONS.to_owned());
        let mut wanted = targets.clone();
        wanted.push(positions.clone());
        let described = target::describe(conn, &wanted).await?;
        out.extend(self.collisions(&maps));
        let wanted = Wanted {
            maps: &maps,
            targets: &targets,
            positions: &positions,
            described: &described,
        };
        self.schema_findings(conn, &wanted, &user, &mut out).await?;
        let mut existing = 0;
        for m in &maps {
            let Some(d) = described.get(&m.target) else {
                if !self.create_tables {
                    out.push(Finding::fail(
                        finding_for(name, format_args!("target table {} does not exist", m.target_name())),
                        "create it with the source's columns and primary key, or set create_tables = true",
                    ));
                }
                continue;
            };
            existing += 1;
            self.table_findings(conn, ctx, m, d, &user, &mut out)
                .await?;
        }
        if described.contains_key(&positions) {
            positions_findings(conn, name, &positions, &user, &mut out).await?;
        }
        if out.iter().all(|f| f.ok) {
            out.push(Finding::pass(finding_for(
                name,
                format_args!(
                    "postgres at {at}: authenticated; {existing} of {} target tables exist{}",
                    maps.len(),
                    if self.create_tables {
                        ", the others are created"
                    } else {
                        ""
                    }
                ),
            )));
        }
        Ok(out)
    }
}

/// What the check looks at: the tables mapped, their targets, the positions table, and
/// what of them exists in the target.
struct Wanted<'a> {
    maps: &'a [TableMap],
    targets: &'a [(String, String)],
    positions: &'a (String, String),
    described: &'a BTreeMap<(String, String), target::Described>,
}

impl PostgresConfig {
    /// Two source tables written to one target table.
    fn collisions(&self, maps: &[TableMap]) -> Vec<Finding> {
        let name = &self.name;
        let mut out = Vec::new();
        let mut seen: BTreeMap<&(String, String), &TableMap> = BTreeMap::new();
        for m in maps {
            if let Some(other) = seen.insert(&m.target, m) {
                out.push(Finding::fail(
                finding_for(
                    name,
                    format_args!(
                        "{} and {} would both be written to {}",
                        other.source_name(),
                        m.source_name(),
                        m.target_name()
                    ),
                ),
                "leave schema out (each table keeps its own schema), or give the tables to two sinks with different schemas",
            ));
            }
        }
        out
    }

    /// The target schemas: there, or creatable where the sink creates something; and the
    /// temporary tables snapshot rows are staged in.
    async fn schema_findings(
        &self,
        conn: &mut Connection,
        wanted: &Wanted<'_>,
        user: &str,
        out: &mut Vec<Finding>,
    ) -> Result<(), PgError> {
        let name = &self.name;
        let (maps, targets, positions, described) = (
            wanted.maps,
            wanted.targets,
            wanted.positions,
            wanted.described,
        );
        let positions_schema = &positions.0;
        let db = self.conninfo().map(|i| i.dbname).unwrap_or_default();
        let mut schemas: BTreeSet<&str> = targets.iter().map(|(s, _)| s.as_str()).collect();
        schemas.insert(positions_schema);
        for schema in schemas {
            let exists = target::schema_exists(conn, schema).await?;
            let (may, _) = target::may_create(conn, schema, exists).await?;
            let tables_here = maps.iter().any(|m| m.target.0 == schema);
            // What the sink would create here: missing tables (with create_tables), and
            // the positions table, which it always creates.
            let creates = (self.create_tables
                && targets
                    .iter()
                    .any(|t| t.0 == schema && !described.contains_key(t)))
                || (schema == positions_schema && !described.contains_key(positions));
            if !exists && tables_here && !self.create_tables {
                out.push(Finding::fail(
                    finding_for(
                        name,
                        format_args!("schema {schema} does not exist in the target"),
                    ),
                    format!("create it (CREATE SCHEMA {schema}), or set create_tables = true"),
                ));
            } else if creates && !may {
                let (what, fix) = if exists {
                    (
                        format!("may not create tables in schema {schema}"),
                        format!("GRANT CREATE ON SCHEMA {schema} TO {user}"),
                    )
                } else {
                    (
                    format!("may not create schema {schema}"),
                    format!("create it (CREATE SCHEMA {schema} AUTHORIZATION {user}), or GRANT CREATE ON DATABASE {db} TO {user}"),
                )
                };
                out.push(Finding::fail(
                    finding_for(name, format_args!("user {user} {what}")),
                    fix,
                ));
            }
        }
        // The TEMP privilege is the database's; the schema may not exist yet (the start
        // creates it), and asking about a missing schema's privileges is an error.
        let exists = target::schema_exists(conn, positions_schema).await?;
        let (_, temp) = target::may_create(conn, positions_schema, exists).await?;
        if !temp {
            out.push(Finding::fail(
                finding_for(
                    name,
                    format_args!(
                    "user {user} may not create temporary tables (snapshot rows are staged in one)"
                ),
                ),
                format!("GRANT TEMPORARY ON DATABASE {db} TO {user}"),
            ));
        }
        Ok(())
    }

    /// One existing target table: its key against the source's, the user's privileges
    /// on it and whether the user owns it (columns can then follow the source).
    async fn table_findings(
        &self,
        conn: &mut Connection,
        ctx: &Context<'_>,
        m: &TableMap,
        d: &target::Described,
        user: &str,
        out: &mut Vec<Finding>,
    ) -> Result<(), PgError> {
        let name = &self.name;
        let qualified = sql::qualified(&m.target.0, &m.target.1);
        if let Some(key) = source_key(ctx.columns, m).filter(|k| !k.is_empty()) {
            if d.key != key {
                out.push(Finding::fail(
                finding_for(
                    name,
                    format_args!(
                        "target table {} has primary key ({}) but the source's is ({})",
                        m.target_name(),
                        d.key.join(", "),
                        key.join(", ")
                    ),
                ),
                format!(
                    "give {} the source's primary key (ALTER TABLE ... ADD PRIMARY KEY ({})), or drop it and let the sink create it",
                    m.target_name(),
                    key.join(", ")
                ),
            ));
            }
        }
        let (missing, owner) = target::table_privileges(conn, &qualified).await?;
        if !missing.is_empty() {
            out.push(Finding::fail(
                finding_for(
                    name,
                    format_args!(
                        "user {user} lacks {} on {}",
                        missing.join(", "),
                        m.target_name()
                    ),
                ),
                format!(
                    "GRANT {} ON {} TO {user}",
                    missing.join(", "),
                    m.target_name()
                ),
            ));
        }
        if !owner {
            out.push(Finding::warn(
            finding_for(
                name,
                format_args!("user {user} does not own {}: columns added or dropped at the source cannot be applied to it", m.target_name()),
            ),
            format!("ALTER TABLE {} OWNER TO {user}", m.target_name()),
        ));
        }
        Ok(())
    }
}

/// The positions table: the user may read and write it.
async fn positions_findings(
    conn: &mut Connection,
    name: &str,
    positions: &(String, String),
    user: &str,
    out: &mut Vec<Finding>,
) -> Result<(), PgError> {
    let qualified = sql::qualified(&positions.0, &positions.1);
    let (missing, _) = target::table_privileges(conn, &qualified).await?;
    let missing: Vec<&str> = missing
        .iter()
        .map(String::as_str)
        .filter(|p| ["SELECT", "INSERT", "UPDATE"].contains(p))
        .collect();
    if !missing.is_empty() {
        let table = format!("{}.{}", positions.0, positions.1);
        out.push(Finding::fail(
            finding_for(
                name,
                format_args!("user {user} lacks {} on {table}", missing.join(", ")),
            ),
            format!("GRANT {} ON {table} TO {user}", missing.join(", ")),
        ));
    }
    Ok(())
}

/// The url's user, for fixes (`<user>` when the url gives none).
fn conn_user(url: &str) -> String {
    ConnInfo::parse_with_env(url, |_| None)
        .map(|i| i.user)
        .unwrap_or_else(|_| "<user>".into())
}
