//! Catalog work outside the replication stream: resolving the configured table list,
//! keeping the pipeline's publication equal to it, preflight checks, and teardown.
//!
//! Invariants: a publication Sluice did not create (`publication = "name"` in the config)
//! is never altered or dropped; teardown drops only the pipeline's own slot and
//! publication.

use std::collections::BTreeSet;

use crate::changes::Exclusions;

use crate::conninfo::ConnInfo;
use crate::error::PgError;
use crate::wire::{quote_ident, quote_literal, Connection};

/// A table, by schema and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRef {
    pub schema: String,
    pub name: String,
}

impl TableRef {
    /// Parses `schema.table` (a bare `table` means `public.table`).
    pub fn parse(s: &str) -> TableRef {
        match s.split_once('.') {
            Some((schema, name)) => TableRef {
                schema: schema.into(),
                name: name.into(),
            },
            None => TableRef {
                schema: "public".into(),
                name: s.into(),
            },
        }
    }

    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// `t`'s oid as an SQL expression. Unlike a `::regclass` cast it needs no USAGE on the
/// schema, so preflight can report a missing grant instead of aborting on it.
fn oid_of(t: &TableRef) -> String {
    format!(
        "(SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = {} AND c.relname = {})",
        quote_literal(&t.schema),
        quote_literal(&t.name)
    )
}

fn cell(row: &[Option<String>], i: usize) -> String {
    row.get(i).cloned().flatten().unwrap_or_default()
}

/// Expands `schema.table` and `schema.*` patterns into existing tables. Patterns that match
/// nothing are returned separately.
pub async fn expand_tables(
    conn: &mut Connection,
    patterns: &[String],
) -> Result<(Vec<TableRef>, Vec<String>), PgError> {
    let mut found = BTreeSet::new();
    let mut missing = Vec::new();
    for p in patterns {
        let t = TableRef::parse(p);
        let sql = if t.name == "*" {
            format!(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = {} AND c.relkind IN ('r','p') AND NOT c.relispartition ORDER BY 2",
                quote_literal(&t.schema)
            )
        } else {
            format!(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = {} AND c.relname = {} AND c.relkind IN ('r','p')",
                quote_literal(&t.schema),
                quote_literal(&t.name)
            )
        };
        let rows = conn.query(&sql).await?;
        if rows.is_empty() {
            missing.push(p.clone());
        }
        for r in rows {
            found.insert(TableRef {
                schema: cell(&r, 0),
                name: cell(&r, 1),
            });
        }
    }
    Ok((found.into_iter().collect(), missing))
}

/// Creates the pipeline's publication, or makes an existing one list exactly `tables`.
///
/// Excluded columns are removed by the assembler, not by a publication column list:
/// PostgreSQL refuses UPDATE and DELETE on a table whose column list does not cover its
/// replica identity, so a column list plus `REPLICA IDENTITY FULL` (set now or later)
/// would break the application's own writes.
pub async fn ensure_publication(
    conn: &mut Connection,
    name: &str,
    tables: &[TableRef],
) -> Result<(), PgError> {
    if tables.is_empty() {
        return Err(PgError::Definite(
            "no table to publish: list existing tables in [source] tables".into(),
        ));
    }
    let items: Vec<String> = tables.iter().map(TableRef::qualified).collect();
    let exists = !conn
        .query(&format!(
            "SELECT 1 FROM pg_publication WHERE pubname = {}",
            quote_literal(name)
        ))
        .await?
        .is_empty();
    let verb = if exists {
        format!(
            "ALTER PUBLICATION {} SET TABLE {}",
            quote_ident(name),
            items.join(", ")
        )
    } else {
        format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            quote_ident(name),
            items.join(", ")
        )
    };
    conn.execute(&verb).await.map_err(|e| match e {
        PgError::Server(s) if s.code == "42501" => PgError::Definite(format!(
            "cannot {} publication {name:?}: {}. Creating a publication needs ownership of the \
             tables; ask a DBA to run `CREATE PUBLICATION {} FOR TABLE {};` and set \
             publication = \"{name}\" under [source]",
            if exists { "alter" } else { "create" },
            s.message,
            quote_ident(name),
            items.join(", ")
        )),
        other => other,
    })
}

/// Tables a publication lists.
pub async fn publication_tables(
    conn: &mut Connection,
    name: &str,
) -> Result<Option<Vec<TableRef>>, PgError> {
    let exists = conn
        .query(&format!(
            "SELECT 1 FROM pg_publication WHERE pubname = {}",
            quote_literal(name)
        ))
        .await?;
    if exists.is_empty() {
        return Ok(None);
    }
    let rows = conn
        .query(&format!(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = {}",
            quote_literal(name)
        ))
        .await?;
    Ok(Some(
        rows.iter()
            .map(|r| TableRef {
                schema: cell(r, 0),
                name: cell(r, 1),
            })
            .collect(),
    ))
}

/// Drops the slot (waiting briefly for a dying walsender to release it) and, when given,
/// the publication. Returns what was dropped.
pub async fn teardown(
    conn: &mut Connection,
    slot: &str,
    publication: Option<&str>,
) -> Result<Vec<String>, PgError> {
    let mut dropped = Vec::new();
    // The walsender of a pipeline that just died (killed, crashed) notices only a moment
    // later and keeps the slot active until then.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let row = loop {
        let row = conn
            .query(&format!(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = {}",
                quote_literal(slot)
            ))
            .await?;
        let active = row
            .first()
            .is_some_and(|r| r.first().is_some_and(Option::is_some));
        if !active || tokio::time::Instant::now() >= deadline {
            break row;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    if let Some(r) = row.first() {
        if let Some(pid) = r.first().cloned().flatten() {
            return Err(PgError::Definite(format!(
                "slot {slot:?} is in use by process {pid}: stop the running pipeline first \
                 (if no instance runs any more, end that session with \
                 SELECT pg_terminate_backend({pid});)"
            )));
        }
        conn.execute(&format!(
            "SELECT pg_drop_replication_slot({})",
            quote_literal(slot)
        ))
        .await?;
        dropped.push(format!("replication slot {slot}"));
    }
    if let Some(p) = publication {
        let exists = conn
            .query(&format!(
                "SELECT 1 FROM pg_publication WHERE pubname = {}",
                quote_literal(p)
            ))
            .await?;
        if !exists.is_empty() {
            conn.execute(&format!("DROP PUBLICATION {}", quote_ident(p)))
                .await?;
            dropped.push(format!("publication {p}"));
        }
    }
    Ok(dropped)
}

pub use sluice_core::Finding;

fn pass(what: impl Into<String>) -> Finding {
    Finding::pass(what)
}

fn fail(what: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding::fail(what, fix)
}

/// A failure that may pass by itself (a busy slot or wal sender).
fn busy(what: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding::warn(what, fix)
}

/// What preflight checks against.
#[derive(Debug, Clone)]
pub struct CheckSpec {
    pub conninfo: ConnInfo,
    pub tables: Vec<String>,
    pub exclusions: Exclusions,
    pub slot: String,
    pub publication: String,
    /// True when the publication is the operator's (`publication = "..."`).
    pub external_publication: bool,
    /// Advisory lock of the pipeline, to tell our own standby from a stranger.
    pub lock_keys: (i32, i32),
}

/// Runs every preflight check; stops early only when no connection can be made.
pub async fn check(spec: &CheckSpec) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut conn = match Connection::connect(&spec.conninfo, false).await {
        Ok(c) => {
            out.push(pass(format!("connected to {}", spec.conninfo)));
            c
        }
        Err(e) => {
            out.push(fail(
                format!("cannot connect to {}: {e}", spec.conninfo),
                "check [source] url: host, port, user, password and database, and that pg_hba.conf allows this client",
            ));
            return out;
        }
    };
    if let Err(e) = check_with(&mut conn, spec, &mut out).await {
        out.push(fail(format!("check aborted: {e}"), "see the error above"));
    }
    conn.close().await;
    out
}

async fn one(conn: &mut Connection, sql: &str) -> Result<String, PgError> {
    Ok(conn
        .query(sql)
        .await?
        .first()
        .map(|r| cell(r, 0))
        .unwrap_or_default())
}

async fn check_with(
    conn: &mut Connection,
    spec: &CheckSpec,
    out: &mut Vec<Finding>,
) -> Result<(), PgError> {
    check_server(conn, out).await?;
    let role = check_role(conn, out).await?;
    check_slot(conn, spec, out).await?;
    check_senders(conn, out).await?;
    let (tables, missing) = expand_tables(conn, &spec.tables).await?;
    for m in &missing {
        out.push(fail(
            format!("table {m} does not exist"),
            "create it or remove it from [source] tables (names are case-sensitive: schema.table)",
        ));
    }
    for t in &tables {
        check_table(conn, spec, &role.user, t, out).await?;
    }
    check_publication(conn, spec, &role, &tables, out).await?;
    check_replication_connection(spec, out).await;
    Ok(())
}

/// Who Sluice connects as.
struct Role {
    user: String,
    /// It has REPLICATION (or is a superuser).
    can_replicate: bool,
}

/// The server's version and `wal_level`.
async fn check_server(conn: &mut Connection, out: &mut Vec<Finding>) -> Result<(), PgError> {
    let version = conn.server_version_num();
    if version < 100000 {
        out.push(fail(
            format!(
                "server version {} is too old",
                conn.parameter("server_version").unwrap_or("?")
            ),
            "Sluice needs PostgreSQL 10 or newer (14+ to stream large transactions)",
        ));
    } else {
        out.push(pass(format!(
            "server version {}",
            conn.parameter("server_version").unwrap_or("?")
        )));
    }
    let wal_level = one(conn, "SHOW wal_level").await?;
    if wal_level == "logical" {
        out.push(pass("wal_level = logical"));
    } else {
        out.push(fail(
            format!("wal_level is {wal_level:?}, logical replication needs \"logical\""),
            "run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL",
        ));
    }
    Ok(())
}

/// The role may replicate.
async fn check_role(conn: &mut Connection, out: &mut Vec<Finding>) -> Result<Role, PgError> {
    let user = one(conn, "SELECT current_user").await?;
    let can_replicate = one(
        conn,
        "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .await?;
    let can_replicate = can_replicate == "t";
    if can_replicate {
        out.push(pass(format!("role {user} may replicate")));
    } else {
        out.push(fail(
            format!("role {user} lacks the REPLICATION attribute"),
            format!(
                "run ALTER ROLE {} REPLICATION; as a superuser",
                quote_ident(&user)
            ),
        ));
    }

    Ok(Role {
        user,
        can_replicate,
    })
}

/// The pipeline's slot: free to create, or existing for pgoutput and not in use by a
/// stranger.
async fn check_slot(
    conn: &mut Connection,
    spec: &CheckSpec,
    out: &mut Vec<Finding>,
) -> Result<(), PgError> {
    let slot = conn
        .query(&format!(
            "SELECT plugin, database, active_pid, \
             (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = {}::oid AND objid = {}::oid \
              AND granted LIMIT 1) FROM pg_replication_slots WHERE slot_name = {}",
            spec.lock_keys.0 as u32, spec.lock_keys.1 as u32, quote_literal(&spec.slot)
        ))
        .await?;
    match slot.first() {
        None => {
            let max: i64 = one(conn, "SHOW max_replication_slots")
                .await?
                .parse()
                .unwrap_or(0);
            let used: i64 = one(conn, "SELECT count(*) FROM pg_replication_slots")
                .await?
                .parse()
                .unwrap_or(0);
            if used < max {
                out.push(pass(format!(
                    "a replication slot is free ({used} of {max} used); {} will be created",
                    spec.slot
                )));
            } else {
                out.push(fail(
                    format!("no free replication slot ({used} of max_replication_slots = {max} used)"),
                    "drop unused slots (SELECT slot_name FROM pg_replication_slots WHERE NOT active) or raise \
                     max_replication_slots and restart PostgreSQL",
                ));
            }
        }
        Some(r) => {
            let (plugin, db, active, holder) = (cell(r, 0), cell(r, 1), cell(r, 2), cell(r, 3));
            if plugin != "pgoutput" || db != spec.conninfo.dbname {
                out.push(fail(
                    format!("slot {} exists for plugin {plugin:?} in database {db:?}", spec.slot),
                    format!("drop it with SELECT pg_drop_replication_slot('{}'); or rename the pipeline", spec.slot),
                ));
            } else if !active.is_empty() {
                let ours = !holder.is_empty();
                out.push(busy(
                    format!(
                        "slot {} is in use by process {active}{}",
                        spec.slot,
                        if ours { " (a running instance of this pipeline)" } else { "" }
                    ),
                    if ours {
                        "another `sluice run` of this pipeline is active; a second one waits as a standby".to_string()
                    } else {
                        format!("stop the other consumer, or end it with SELECT pg_terminate_backend({active});")
                    },
                ));
            } else {
                out.push(pass(format!("slot {} exists and is free", spec.slot)));
            }
        }
    }
    Ok(())
}

/// A wal sender is free for the stream.
async fn check_senders(conn: &mut Connection, out: &mut Vec<Finding>) -> Result<(), PgError> {
    let max_senders: i64 = one(conn, "SHOW max_wal_senders")
        .await?
        .parse()
        .unwrap_or(0);
    let senders: i64 = one(conn, "SELECT count(*) FROM pg_stat_replication")
        .await?
        .parse()
        .unwrap_or(0);
    if senders < max_senders {
        out.push(pass(format!(
            "a wal sender is free ({senders} of {max_senders} in use)"
        )));
    } else {
        out.push(busy(
            format!("no free wal sender ({senders} of max_wal_senders = {max_senders} in use)"),
            "raise max_wal_senders and restart PostgreSQL, or stop another replication client",
        ));
    }
    Ok(())
}

/// One table: its schema usable, readable, a replica identity that carries updates and
/// deletes, and excluded columns that exist and are not part of the key.
async fn check_table(
    conn: &mut Connection,
    spec: &CheckSpec,
    user: &str,
    t: &TableRef,
    out: &mut Vec<Finding>,
) -> Result<(), PgError> {
    let rows = conn
        .query(&format!(
            "SELECT has_table_privilege(c.oid, 'SELECT'), c.relreplident, \
             EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
             (SELECT string_agg(a.attname, ',') FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
              AND a.attnum = ANY(i.indkey) WHERE i.indrelid = c.oid AND i.indisprimary), \
             has_schema_privilege(c.relnamespace, 'USAGE') \
             FROM pg_class c WHERE c.oid = {}",
            oid_of(t)
        ))
        .await?;
    let Some(r) = rows.first() else {
        return Ok(());
    };
    let (select, ident, has_pk, pk_cols) = (cell(r, 0), cell(r, 1), cell(r, 2), cell(r, 3));
    if cell(r, 4) != "t" {
        out.push(fail(
            format!(
                "{user} may not use schema {} (no USAGE), so it cannot read {t}",
                t.schema
            ),
            format!(
                "run GRANT USAGE ON SCHEMA {} TO {};",
                quote_ident(&t.schema),
                quote_ident(user)
            ),
        ));
    }
    if select != "t" {
        out.push(fail(
            format!("{user} may not SELECT from {t}"),
            format!(
                "run GRANT SELECT ON {} TO {};",
                t.qualified(),
                quote_ident(user)
            ),
        ));
    }
    match (ident.as_str(), has_pk.as_str()) {
        ("d", "f") => out.push(fail(
            format!("{t} has no primary key, so updates and deletes cannot be replicated"),
            format!(
                "add a primary key, or run ALTER TABLE {} REPLICA IDENTITY FULL;",
                t.qualified()
            ),
        )),
        ("n", _) => out.push(fail(
            format!(
                "{t} has REPLICA IDENTITY NOTHING, so updates and deletes cannot be replicated"
            ),
            format!(
                "run ALTER TABLE {} REPLICA IDENTITY DEFAULT; (with a primary key) or FULL",
                t.qualified()
            ),
        )),
        _ => out.push(pass(format!(
            "{t}: readable, replica identity {}",
            match ident.as_str() {
                "f" => "full",
                "i" => "index",
                _ => "primary key",
            }
        ))),
    }
    if let Some(ex) = spec.exclusions.get(&t.to_string()) {
        let cols = conn
            .query(&format!(
                "SELECT attname FROM pg_attribute WHERE attrelid = {} AND attnum > 0 AND NOT attisdropped",
                oid_of(t)
            ))
            .await?;
        let cols: BTreeSet<String> = cols.iter().map(|r| cell(r, 0)).collect();
        let keys: BTreeSet<&str> = pk_cols.split(',').filter(|c| !c.is_empty()).collect();
        for c in ex {
            if !cols.contains(c) {
                out.push(fail(
                    format!("{t} has no column {c} to exclude"),
                    "fix [source] exclude_columns",
                ));
            } else if keys.contains(c.as_str()) {
                out.push(fail(
                    format!("{t}.{c} is part of the primary key and cannot be excluded"),
                    "remove it from [source] exclude_columns: records need their key",
                ));
            }
        }
    }
    Ok(())
}

/// The publication: the operator's lists every table, or ours can be created.
async fn check_publication(
    conn: &mut Connection,
    spec: &CheckSpec,
    role: &Role,
    tables: &[TableRef],
    out: &mut Vec<Finding>,
) -> Result<(), PgError> {
    let user = &role.user;
    match publication_tables(conn, &spec.publication).await? {
        Some(listed) => {
            let listed: BTreeSet<_> = listed.into_iter().collect();
            let absent: Vec<String> = tables
                .iter()
                .filter(|t| !listed.contains(t))
                .map(|t| t.to_string())
                .collect();
            if spec.external_publication && !absent.is_empty() {
                out.push(fail(
                    format!(
                        "publication {} does not list {}",
                        spec.publication,
                        absent.join(", ")
                    ),
                    format!(
                        "ask its owner to run ALTER PUBLICATION {} ADD TABLE {};",
                        quote_ident(&spec.publication),
                        absent.join(", ")
                    ),
                ));
            } else {
                out.push(pass(format!("publication {} exists", spec.publication)));
            }
        }
        None if spec.external_publication => out.push(fail(
            format!("publication {} does not exist", spec.publication),
            format!(
                "create it: CREATE PUBLICATION {} FOR TABLE {};",
                quote_ident(&spec.publication),
                tables
                    .iter()
                    .map(|t| t.qualified())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        None => {
            let owner_ok = one(
                conn,
                &format!(
                    "SELECT bool_and(pg_has_role(c.relowner, 'USAGE')) AND has_database_privilege(current_database(), 'CREATE') \
                     FROM pg_class c WHERE c.oid IN ({})",
                    if tables.is_empty() {
                        "0".to_string()
                    } else {
                        tables.iter().map(oid_of).collect::<Vec<_>>().join(",")
                    }
                ),
            )
            .await?;
            if owner_ok == "t"
                || role.can_replicate
                    && one(
                        conn,
                        "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                    )
                    .await?
                        == "t"
            {
                out.push(pass(format!(
                    "publication {} will be created",
                    spec.publication
                )));
            } else {
                out.push(fail(
                    format!("{user} cannot create publication {} (it must own the tables)", spec.publication),
                    format!(
                        "ask a DBA to run CREATE PUBLICATION {} FOR TABLE {}; and set publication = \"{}\" under [source]",
                        quote_ident(&spec.publication),
                        tables.iter().map(|t| t.qualified()).collect::<Vec<_>>().join(", "),
                        spec.publication
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The replication connection itself (pg_hba may treat it differently).
async fn check_replication_connection(spec: &CheckSpec, out: &mut Vec<Finding>) {
    match Connection::connect(&spec.conninfo, true).await {
        Ok(mut repl) => {
            match crate::replication::identify_system(&mut repl).await {
                Ok(_) => out.push(pass("replication connection accepted")),
                Err(e) => out.push(fail(
                    format!("replication connection refused: {e}"),
                    "grant REPLICATION and allow the connection in pg_hba.conf",
                )),
            }
            repl.close().await;
        }
        Err(e) => out.push(fail(
            format!("replication connection refused: {e}"),
            "grant REPLICATION to the role and allow it in pg_hba.conf",
        )),
    }
}

/// Tables among `tables` that have no primary key.
pub async fn tables_without_primary_key(
    conn: &mut Connection,
    tables: &[String],
) -> Result<Vec<String>, PgError> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let rows = conn
        .query(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT EXISTS \
             (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)",
        )
        .await?;
    let keyless: std::collections::BTreeSet<String> = rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    Ok(tables
        .iter()
        .filter(|t| keyless.contains(*t))
        .cloned()
        .collect())
}

/// The columns of `tables` (`schema.table`), each with the kind of value its JSON form
/// holds: what a typed encoding (a sink's packages) and a routing template need to know
/// of a table before its first record arrives. Domains are taken as their base type;
/// anything not built in is text. Generated columns are left out: neither the stream nor
/// a snapshot carries them.
pub async fn columns(
    conn: &mut Connection,
    tables: &[String],
) -> Result<sluice_core::Columns, PgError> {
    let mut out = sluice_core::Columns::new();
    if tables.is_empty() {
        return Ok(out);
    }
    let wanted: BTreeSet<&str> = tables.iter().map(String::as_str).collect();
    // A domain is read as its base type (with the base's modifier); the key position
    // comes from the primary key's index.
    let rows = conn
        .query(
            "SELECT n.nspname || '.' || c.relname, a.attname, \
             (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END)::int8, \
             CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) \
                  ELSE format_type(a.atttypid, a.atttypmod) END, \
             (SELECT b.typtype = 'e' FROM pg_type b WHERE b.oid = \
                (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END)), \
             a.attnotnull, \
             (SELECT array_position(i.indkey::int2[], a.attnum) - array_lower(i.indkey::int2[], 1) + 1 FROM pg_index i \
                WHERE i.indrelid = c.oid AND i.indisprimary) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid \
             WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             ORDER BY 1, a.attnum",
        )
        .await?;
    for row in rows {
        let mut it = row.into_iter().map(Option::unwrap_or_default);
        let mut next = || it.next().unwrap_or_default();
        let (table, name, oid, pg_type, is_enum, not_null, key) =
            (next(), next(), next(), next(), next(), next(), next());
        if !wanted.contains(table.as_str()) {
            continue;
        }
        out.entry(table).or_default().push(sluice_core::ColumnInfo {
            name,
            kind: value_kind(oid.parse().unwrap_or(0)),
            pg_type,
            is_enum: is_enum == "t",
            not_null: not_null == "t",
            key: key.parse().ok(),
        });
    }
    Ok(out)
}

/// A type OID's kind of value, as [`columns`] reports it.
fn value_kind(oid: u32) -> sluice_core::ValueKind {
    use crate::values::{builtin_kind, TypeKind};
    use sluice_core::ValueKind as V;
    match builtin_kind(oid) {
        Some(TypeKind::Int) => V::Int,
        Some(TypeKind::Float) => V::Float,
        Some(TypeKind::Numeric) => V::Decimal,
        Some(TypeKind::Bool) => V::Bool,
        Some(TypeKind::Bytea) => V::Bytes,
        Some(TypeKind::Timestamp | TypeKind::TimestampTz) => V::Timestamp,
        Some(TypeKind::Json | TypeKind::Array { .. }) => V::Json,
        _ => V::Text,
    }
}

/// Removes the columns `exclude_columns` names: they never reach a sink, so a sink never
/// creates or expects them.
pub fn without_excluded(columns: &mut sluice_core::Columns, exclusions: &Exclusions) {
    for (table, cols) in columns.iter_mut() {
        if let Some(ex) = exclusions.get(table) {
            cols.retain(|c| !ex.contains(&c.name));
        }
    }
}

/// The source's catalog for sinks that type columns appearing mid-stream: one short
/// connection per question (rare: only when a record shows a column a sink does not know).
pub struct SourceCatalog {
    pub conninfo: ConnInfo,
    pub exclusions: Exclusions,
}

impl sluice_core::Catalog for SourceCatalog {
    fn columns<'a>(
        &'a self,
        tables: &'a [String],
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<sluice_core::Columns, sluice_core::Fault>>
                + Send
                + 'a,
        >,
    > {
        Box::pin(async move {
            let fault = |e| sluice_core::Fault::of("reading the source's catalog", e);
            let mut conn = Connection::connect(&self.conninfo, false)
                .await
                .map_err(fault)?;
            let read = columns(&mut conn, tables).await;
            conn.close().await;
            let mut out = read.map_err(fault)?;
            without_excluded(&mut out, &self.exclusions);
            Ok(out)
        })
    }
}
