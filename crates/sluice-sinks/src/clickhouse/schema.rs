//! What is already in ClickHouse: an existing target table read and reconciled with the
//! source's columns, and the changes of parked tables (`sluice_parked`) with the marks of
//! those applied since (`sluice_resumed`).
//!
//! Invariants:
//! - An existing table is accepted when it is ordered by the source's primary key and has
//!   Sluice's two columns; extra columns are left alone, missing ones are added, and a
//!   column of another type is accepted when it holds every value (text, or a wider
//!   type), widened when Sluice's type is wider, and refused otherwise.
//! - A parked change is applied again until a `sluice_resumed` mark covers it, so a crash
//!   between applying and marking repeats the suffix (harmless), never skips it.

use std::collections::{BTreeMap, HashMap};

use sluice_core::ChangeId;

use super::http::{ChError, Http};
use super::rowbinary;
use super::types::{self, ChType, Column, Text};

/// A target table as the server describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Name and type text of each column.
    pub columns: Vec<(String, String)>,
    /// The columns of `ORDER BY`.
    pub order_by: Vec<String>,
}

/// What it takes to write into an existing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The columns Sluice writes, with the type it writes each as.
    pub columns: Vec<Column>,
    pub add: Vec<Column>,
    pub widen: Vec<Column>,
}

/// The table `name` in database `db` (both unquoted), if it exists.
pub async fn read_target(http: &Http, db: &str, name: &str) -> Result<Option<Target>, ChError> {
    let sql = format!(
        "SELECT name, type FROM system.columns WHERE database = {} AND table = {} FORMAT TabSeparatedRaw",
        types::literal(db),
        types::literal(name)
    );
    let body = http.query(&sql).await?;
    let text = String::from_utf8_lossy(&body);
    let columns: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect();
    if columns.is_empty() {
        return Ok(None);
    }
    let show = format!(
        "SHOW CREATE TABLE {}.{} FORMAT TabSeparatedRaw",
        types::quote(db),
        types::quote(name)
    );
    let create = String::from_utf8_lossy(&http.query(&show).await?).into_owned();
    Ok(Some(Target {
        columns,
        order_by: order_by(&create),
    }))
}

/// The `ORDER BY` columns of a `CREATE TABLE` statement.
fn order_by(create: &str) -> Vec<String> {
    let flat = create.replace('\n', " ");
    let Some(at) = flat.find(" ORDER BY ") else {
        return Vec::new();
    };
    let rest = &flat[at + 10..];
    let end = [" SETTINGS ", " PRIMARY KEY ", " SAMPLE BY ", " TTL "]
        .iter()
        .filter_map(|w| rest.find(w))
        .min()
        .unwrap_or(rest.len());
    let clause = rest[..end].trim();
    let inner = clause
        .strip_prefix('(')
        .and_then(|c| c.strip_suffix(')'))
        .unwrap_or(clause);
    inner
        .split(',')
        .map(|c| c.trim().trim_matches('`').to_owned())
        .filter(|c| !c.is_empty())
        .collect()
}

/// A type text as Sluice's type, for the types Sluice writes.
fn parse_type(t: &str) -> Option<ChType> {
    let t = t.trim();
    if let Some(inner) = t
        .strip_prefix("Nullable(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return parse_type(inner).map(ChType::nullable);
    }
    if let Some(inner) = t.strip_prefix("Array(").and_then(|r| r.strip_suffix(')')) {
        return parse_type(inner).map(|e| ChType::Array(Box::new(e)));
    }
    if let Some(args) = t.strip_prefix("Decimal(").and_then(|r| r.strip_suffix(')')) {
        let (p, s) = args.split_once(',')?;
        return Some(ChType::Decimal(
            p.trim().parse().ok()?,
            s.trim().parse().ok()?,
        ));
    }
    Some(match t {
        "Int16" => ChType::Int16,
        "Int32" => ChType::Int32,
        "Int64" => ChType::Int64,
        "UInt32" => ChType::UInt32,
        "UInt8" => ChType::UInt8,
        "Float32" => ChType::Float32,
        "Float64" => ChType::Float64,
        "String" => ChType::String(Text::Plain),
        "UUID" => ChType::Uuid,
        "Bool" => ChType::Bool,
        "Date32" => ChType::Date32,
        _ if t.starts_with("DateTime64(6") => ChType::DateTime64,
        _ => return None,
    })
}

/// Why an existing table cannot take the source's rows; each says the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("the ClickHouse table is ordered by ({there}) but the source's primary key is ({key}); drop the ClickHouse table (Sluice creates it again) and run `sluice backfill --table` for it, then restart")]
    OrderBy { there: String, key: String },
    #[error("the ClickHouse table lacks {column}: it is not one Sluice created; drop it or set the sink's table_name to another name")]
    NotOurs { column: &'static str },
    #[error("column {column} is {there} in ClickHouse, which cannot hold NULL; make it Nullable (ALTER TABLE ... MODIFY COLUMN {quoted} Nullable(...)) or drop the ClickHouse table, then restart")]
    NotNullable {
        column: String,
        quoted: String,
        there: String,
    },
    #[error("column {column} is {there} in ClickHouse but Sluice writes {ours} there; change it (ALTER TABLE ... MODIFY COLUMN {quoted} {ours}) or drop the ClickHouse table, then restart")]
    Type {
        column: String,
        quoted: String,
        there: String,
        ours: String,
    },
}

/// How Sluice writes into `there`, or why it cannot.
pub fn reconcile(there: &Target, wanted: &[Column], key: &[String]) -> Result<Plan, Mismatch> {
    if there.order_by != key {
        return Err(Mismatch::OrderBy {
            there: there.order_by.join(", "),
            key: key.join(", "),
        });
    }
    let types: HashMap<&str, &str> = there
        .columns
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    for own in [types::VERSION, types::DELETED] {
        if !types.contains_key(own) {
            return Err(Mismatch::NotOurs { column: own });
        }
    }
    let mut plan = Plan {
        columns: Vec::new(),
        add: Vec::new(),
        widen: Vec::new(),
    };
    for c in wanted {
        let Some(text) = types.get(c.name.as_str()) else {
            plan.add.push(c.clone());
            plan.columns.push(c.clone());
            continue;
        };
        let existing = parse_type(text);
        let is_key = key.contains(&c.name);
        // A NULL needs a Nullable column (a key is never NULL).
        let holds_null = |t: &ChType| is_key || matches!(t, ChType::Nullable(_) | ChType::Array(_));
        let ty = match existing {
            Some(t) if t == c.ty => c.ty.clone(),
            Some(t) if !holds_null(&t) => {
                return Err(Mismatch::NotNullable {
                    column: c.name.clone(),
                    quoted: types::quote(&c.name),
                    there: text.to_string(),
                })
            }
            // Text holds anything: the value is written as its text.
            Some(t) if matches!(t.inner(), ChType::String(_)) => match c.ty.inner() {
                ChType::String(_) => c.ty.clone(),
                _ => t,
            },
            Some(t) if types::widens(&c.ty, &t) => t,
            // ClickHouse cannot change a sorting key column's type.
            Some(t) if !is_key && types::widens(&t, &c.ty) => {
                plan.widen.push(c.clone());
                c.ty.clone()
            }
            _ => {
                return Err(Mismatch::Type {
                    column: c.name.clone(),
                    quoted: types::quote(&c.name),
                    there: text.to_string(),
                    ours: c.ty.sql(),
                })
            }
        };
        plan.columns.push(Column {
            name: c.name.clone(),
            ty,
        });
    }
    Ok(plan)
}

/// `CREATE TABLE` statements of the parking tables.
pub fn park_tables(db: &str) -> [String; 2] {
    [
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.sluice_parked (pipeline String, sink String, source_table String, id String, record String) \
             ENGINE = MergeTree ORDER BY (pipeline, sink, source_table, id)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.sluice_resumed (pipeline String, sink String, source_table String, upto String) \
             ENGINE = MergeTree ORDER BY (pipeline, sink, source_table)"
        ),
    ]
}

/// The insert parked changes are sent with (five strings per row).
pub fn park_insert(db: &str) -> String {
    format!("INSERT INTO {db}.sluice_parked (pipeline, sink, source_table, id, record) FORMAT RowBinary")
}

/// The parked changes not yet applied, per table, in log order.
pub async fn read_parked(
    http: &Http,
    db: &str,
    pipeline: &str,
    sink: &str,
) -> Result<BTreeMap<String, Vec<(String, Vec<u8>)>>, ChError> {
    let whose = format!(
        "pipeline = {} AND sink = {}",
        types::literal(pipeline),
        types::literal(sink)
    );
    let marks = http
        .query(&format!(
            "SELECT source_table, upto FROM {db}.sluice_resumed WHERE {whose} FORMAT TabSeparatedRaw"
        ))
        .await?;
    let mut done: HashMap<String, ChangeId> = HashMap::new();
    for line in String::from_utf8_lossy(&marks).lines() {
        if let Some((t, upto)) = line.split_once('\t') {
            if let Ok(id) = upto.parse::<ChangeId>() {
                let e = done.entry(t.to_owned()).or_insert(id);
                *e = (*e).max(id);
            }
        }
    }
    let body = http
        .query_private(&format!(
            "SELECT source_table, id, record FROM {db}.sluice_parked WHERE {whose} FORMAT RowBinary"
        ))
        .await?;
    let mut out: BTreeMap<String, Vec<(ChangeId, Vec<u8>)>> = BTreeMap::new();
    let mut at = 0;
    while at < body.len() {
        let mut fields = Vec::with_capacity(3);
        for _ in 0..3 {
            let (field, len) = rowbinary::read_string(&body[at..])
                .ok_or_else(|| ChError::Network("a parked change was cut short".into()))?;
            fields.push(field.to_vec());
            at += len;
        }
        let table = String::from_utf8_lossy(&fields[0]).into_owned();
        let Ok(id) = String::from_utf8_lossy(&fields[1]).parse::<ChangeId>() else {
            continue;
        };
        if done.get(&table).is_some_and(|d| id <= *d) {
            continue;
        }
        let record = std::mem::take(&mut fields[2]);
        out.entry(table).or_default().push((id, record));
    }
    Ok(out
        .into_iter()
        .map(|(t, mut v)| {
            v.sort_by_key(|(id, _)| *id);
            (
                t,
                v.into_iter().map(|(id, r)| (id.to_string(), r)).collect(),
            )
        })
        .collect())
}

/// Marks a table's parked changes up to `upto` as applied, and drops them (the drop is a
/// background mutation; the mark is what counts).
pub async fn mark_resumed(
    http: &Http,
    db: &str,
    pipeline: &str,
    sink: &str,
    table: &str,
    upto: &str,
) -> Result<(), ChError> {
    let mut row = Vec::new();
    for f in [pipeline, sink, table, upto] {
        rowbinary::bytes(f.as_bytes(), &mut row);
    }
    http.insert(
        &format!(
            "INSERT INTO {db}.sluice_resumed (pipeline, sink, source_table, upto) FORMAT RowBinary"
        ),
        row,
    )
    .await?;
    let cleanup = format!(
        "ALTER TABLE {db}.sluice_parked DELETE WHERE pipeline = {} AND sink = {} AND source_table = {} AND id <= {}",
        types::literal(pipeline),
        types::literal(sink),
        types::literal(table),
        types::literal(upto)
    );
    if let Err(e) = http.query(&cleanup).await {
        tracing::warn!(error = %e, "applied parked changes could not be removed; they are skipped by their mark");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_order_by_of_both_generations() {
        assert_eq!(
            order_by("CREATE TABLE default.t (`id` Int64) ENGINE = ReplacingMergeTree(_v) ORDER BY id SETTINGS index_granularity = 8192"),
            vec!["id"]
        );
        assert_eq!(
            order_by("CREATE TABLE db.t\n(\n    `a` Int64\n)\nENGINE = ReplacingMergeTree(`_sluice_version`)\nORDER BY (a, `b c`)\nSETTINGS index_granularity = 8192"),
            vec!["a", "b c"]
        );
    }

    #[test]
    fn reconciles_an_altered_table() {
        let col = |n: &str, ty: ChType| Column { name: n.into(), ty };
        let there = Target {
            columns: vec![
                ("id".into(), "Int64".into()),
                ("n".into(), "Nullable(Int64)".into()),
                ("s".into(), "Nullable(Int16)".into()),
                ("extra".into(), "String".into()),
                (types::VERSION.into(), "UInt64".into()),
                (types::DELETED.into(), "UInt8".into()),
            ],
            order_by: vec!["id".into()],
        };
        let wanted = vec![
            col("id", ChType::Int64),
            col("n", ChType::Int32.nullable()),
            col("s", ChType::Int32.nullable()),
            col("new", ChType::Uuid.nullable()),
        ];
        let plan = reconcile(&there, &wanted, &["id".into()]).unwrap();
        assert_eq!(plan.columns[1].ty, ChType::Int64.nullable());
        assert_eq!(plan.widen, vec![col("s", ChType::Int32.nullable())]);
        assert_eq!(plan.add, vec![col("new", ChType::Uuid.nullable())]);
        assert!(reconcile(&there, &wanted, &["n".into()])
            .unwrap_err()
            .to_string()
            .contains("ordered by (id)"));
        let wrong = vec![col("id", ChType::Int64), col("n", ChType::Uuid.nullable())];
        assert!(reconcile(&there, &wrong, &["id".into()])
            .unwrap_err()
            .to_string()
            .contains("column n"));
    }
}
