//! PostgreSQL columns as ClickHouse columns: the type mapping, the DDL Sluice issues and the
//! query that reads a table's current state. Pure: no I/O, so every statement can be
//! checked against a current engine in the tests.
//!
//! Invariants:
//! - A mapping is a function of the PostgreSQL type text (`format_type`), the enum flag and
//!   the server's [`Profile`]: the same source column always gets the same target type on
//!   the same server, so a restart never sees its own tables as changed.
//! - Key columns are never `Nullable` (ClickHouse sorts by them); every other column is
//!   (arrays excepted: ClickHouse has no NULL array, a NULL one is stored empty), so a
//!   column dropped in PostgreSQL keeps its place and reads `NULL` from then on.
//! - Identifiers are always quoted with backquotes ([`quote`]), whatever their spelling.

use std::fmt::Write as _;

use sluice_core::ColumnInfo;

/// The version column: the commit LSN of the change a row came from.
pub const VERSION: &str = "_sluice_version";
/// 1 for a row that records a delete.
pub const DELETED: &str = "_sluice_deleted";

/// What the server can store natively, by release. Older releases get the nearest type
/// that keeps every value exactly (text), never one that rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// `DateTime64` over 1900-2299 (22.8; from 20.1 it exists but spans 1925-2283, and a
    /// value outside would be stored wrong, so those releases get text).
    pub datetime64: bool,
    /// `Date32` over 1900-2299 (22.8; from 21.9 it spans 1925-2283).
    pub date32: bool,
    /// `Bool` (21.12).
    pub bool: bool,
    /// Largest `Decimal` precision: 76 from 20.8 (`Decimal256`), 38 before.
    pub max_decimal: u32,
}

impl Profile {
    /// A current release's profile.
    pub const CURRENT: Profile = Profile {
        datetime64: true,
        date32: true,
        bool: true,
        max_decimal: 76,
    };

    /// The profile of a server by its `version()` (`18.16.1`, `24.8.4.13`).
    pub fn of_version(version: &str) -> Profile {
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let v = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        Profile {
            datetime64: v >= (22, 8),
            date32: v >= (22, 8),
            bool: v >= (21, 12),
            max_decimal: if v >= (20, 8) { 76 } else { 38 },
        }
    }
}

/// How a `String` column's value is read from the record's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    /// A JSON string's contents (anything else: its JSON text).
    Plain,
    /// `bytea`: base64 in the record, raw bytes in ClickHouse.
    Base64,
    /// `json`, `jsonb`: the JSON text itself.
    Json,
}

/// A ClickHouse column type Sluice writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChType {
    Int16,
    Int32,
    Int64,
    UInt32,
    /// `UInt8`, Sluice's own flag or a boolean on a server without `Bool`.
    UInt8,
    Float32,
    Float64,
    Decimal(u32, u32),
    String(Text),
    Uuid,
    Bool,
    Date32,
    /// `DateTime64(6, 'UTC')`; a timestamp without time zone is stored as its wall-clock
    /// time read as UTC.
    DateTime64,
    Array(Box<ChType>),
    Nullable(Box<ChType>),
}

impl ChType {
    /// The type as ClickHouse spells it (`Nullable(Decimal(12, 2))`).
    pub fn sql(&self) -> String {
        match self {
            ChType::Int16 => "Int16".into(),
            ChType::Int32 => "Int32".into(),
            ChType::Int64 => "Int64".into(),
            ChType::UInt32 => "UInt32".into(),
            ChType::UInt8 => "UInt8".into(),
            ChType::Float32 => "Float32".into(),
            ChType::Float64 => "Float64".into(),
            ChType::Decimal(p, s) => format!("Decimal({p}, {s})"),
            ChType::String(_) => "String".into(),
            ChType::Uuid => "UUID".into(),
            ChType::Bool => "Bool".into(),
            ChType::Date32 => "Date32".into(),
            ChType::DateTime64 => "DateTime64(6, 'UTC')".into(),
            ChType::Array(t) => format!("Array({})", t.sql()),
            ChType::Nullable(t) => format!("Nullable({})", t.sql()),
        }
    }

    /// The type that also holds NULL; an array cannot be `Nullable` in ClickHouse, so a
    /// NULL array is stored as an empty one.
    pub fn nullable(self) -> ChType {
        match self {
            ChType::Nullable(_) | ChType::Array(_) => self,
            t => ChType::Nullable(Box::new(t)),
        }
    }

    /// The type inside `Nullable`.
    pub fn inner(&self) -> &ChType {
        match self {
            ChType::Nullable(t) => t,
            t => t,
        }
    }
}

/// A column's mapping, and whether it fell back to `String` for a type the mapping does
/// not know (said once in the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub ty: ChType,
    pub fallback: bool,
}

/// The ClickHouse type of a PostgreSQL column (see the module doc); `as_string` forces
/// `String` (the operator's choice for a column whose values a native type cannot hold).
pub fn map_column(col: &ColumnInfo, profile: Profile, as_string: bool) -> Mapped {
    let (mut ty, fallback) = if as_string || col.is_enum {
        (ChType::String(Text::Plain), false)
    } else {
        map_type(&col.pg_type, profile)
    };
    if col.key.is_none() {
        ty = ty.nullable();
    }
    Mapped { ty, fallback }
}

/// The type of a `format_type` text; `true` when it fell back to `String`.
fn map_type(pg: &str, profile: Profile) -> (ChType, bool) {
    if let Some(element) = pg.strip_suffix("[]") {
        let (inner, fallback) = map_type(element, profile);
        return (ChType::Array(Box::new(inner.nullable())), fallback);
    }
    let base = pg.split('(').next().unwrap_or(pg).trim();
    let text = (ChType::String(Text::Plain), false);
    let ty = match base {
        "smallint" => ChType::Int16,
        "integer" => ChType::Int32,
        "bigint" => ChType::Int64,
        "oid" => ChType::UInt32,
        "real" => ChType::Float32,
        "double precision" => ChType::Float64,
        "numeric" => return (numeric(pg, profile), false),
        "boolean" if profile.bool => ChType::Bool,
        "boolean" => ChType::UInt8,
        "text" | "character varying" | "character" | "name" | "\"char\"" | "citext" => return text,
        "json" | "jsonb" => ChType::String(Text::Json),
        "bytea" => ChType::String(Text::Base64),
        "uuid" => ChType::Uuid,
        "date" if profile.date32 => ChType::Date32,
        "timestamp" | "timestamp without time zone" | "timestamp with time zone"
            if profile.datetime64 =>
        {
            ChType::DateTime64
        }
        // Timestamps and dates on a release without DateTime64/Date32 keep their text:
        // `DateTime` and `Date` would drop the microseconds or the years outside
        // 1970-2105.
        "date" | "timestamp" | "timestamp without time zone" | "timestamp with time zone" => {
            return text
        }
        // Precision modifiers come in the middle: `timestamp(3) with time zone`.
        _ if pg.starts_with("timestamp(") => {
            return map_type(
                if pg.ends_with("with time zone") && !pg.ends_with("without time zone") {
                    "timestamp with time zone"
                } else {
                    "timestamp without time zone"
                },
                profile,
            )
        }
        _ => return (ChType::String(Text::Plain), true),
    };
    (ty, false)
}

/// `numeric(p,s)` as `Decimal(p, s)` where the server's precision reaches; otherwise (and
/// for `numeric` without a precision, whose scale is unbounded) the decimal text.
fn numeric(pg: &str, profile: Profile) -> ChType {
    let args = pg
        .strip_prefix("numeric(")
        .and_then(|r| r.strip_suffix(')'))
        .map(|a| {
            a.split(',')
                .map(|n| n.trim().parse::<i64>().ok())
                .collect::<Vec<_>>()
        });
    match args.as_deref() {
        Some([Some(p), Some(s)])
            if *p >= 1 && *p <= i64::from(profile.max_decimal) && (0..=*p).contains(s) =>
        {
            ChType::Decimal(*p as u32, *s as u32)
        }
        Some([Some(p)]) if *p >= 1 && *p <= i64::from(profile.max_decimal) => {
            ChType::Decimal(*p as u32, 0)
        }
        _ => ChType::String(Text::Plain),
    }
}

/// The type of a column the catalog did not list (added and dropped again before Sluice
/// asked), from one value's JSON form.
pub fn guess_type(json: &str, profile: Profile) -> ChType {
    let t = json.trim_start();
    let ty = match t.as_bytes().first() {
        Some(b't' | b'f') if profile.bool => ChType::Bool,
        Some(b't' | b'f') => ChType::UInt8,
        Some(b'-' | b'0'..=b'9') if t.parse::<i64>().is_ok() => ChType::Int64,
        Some(b'-' | b'0'..=b'9') => ChType::Float64,
        Some(b'{' | b'[') => ChType::String(Text::Json),
        _ => ChType::String(Text::Plain),
    };
    ty.nullable()
}

/// Whether a column of type `from` can become `to` in place (`ALTER TABLE ... MODIFY
/// COLUMN`) with every stored value kept: wider integers and floats, more decimal digits,
/// anything to text.
pub fn widens(from: &ChType, to: &ChType) -> bool {
    use ChType::*;
    let rank = |t: &ChType| match t {
        Int16 => Some(1),
        Int32 => Some(2),
        Int64 => Some(3),
        _ => None,
    };
    match (from.inner(), to.inner()) {
        (a, b) if a == b => true,
        (_, String(_)) => !matches!(from.inner(), Array(_)),
        (Float32, Float64) => true,
        (a, b) if rank(a).is_some() && rank(b).is_some() => rank(a) < rank(b),
        (Int16 | Int32, Float64) => true,
        (Decimal(p1, s1), Decimal(p2, s2)) => s2 >= s1 && p2 - s2 >= p1 - s1,
        (Array(a), Array(b)) => widens(a, b),
        _ => false,
    }
}

/// `name` as a ClickHouse identifier.
pub fn quote(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for c in name.chars() {
        if c == '`' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('`');
    out
}

/// A SQL string literal.
pub fn literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A target column: its name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ChType,
}

/// `CREATE TABLE IF NOT EXISTS` for a table ordered by `key` (its primary key's columns).
pub fn create_table(table: &str, columns: &[Column], key: &[String]) -> String {
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {table} (");
    for c in columns {
        let _ = write!(sql, "{} {}, ", quote(&c.name), c.ty.sql());
    }
    let keys: Vec<String> = key.iter().map(|k| quote(k)).collect();
    let _ = write!(
        sql,
        "{} UInt64, {} UInt8) ENGINE = ReplacingMergeTree({}) ORDER BY ({})",
        quote(VERSION),
        quote(DELETED),
        quote(VERSION),
        keys.join(", ")
    );
    sql
}

/// `ALTER TABLE ... ADD COLUMN` for a column that appeared in the source (without `IF
/// NOT EXISTS`, which releases before 19 refuse; a column already there is an error the
/// caller accepts).
pub fn add_column(table: &str, column: &Column) -> String {
    format!(
        "ALTER TABLE {table} ADD COLUMN {} {}",
        quote(&column.name),
        column.ty.sql()
    )
}

/// `ALTER TABLE ... MODIFY COLUMN` for a column whose source type widened.
pub fn modify_column(table: &str, column: &Column) -> String {
    format!(
        "ALTER TABLE {table} MODIFY COLUMN {} {}",
        quote(&column.name),
        column.ty.sql()
    )
}

/// The insert a batch of rows is sent with (the rows follow as RowBinary).
pub fn insert(table: &str, columns: &[Column]) -> String {
    let mut names: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
    names.push(quote(VERSION));
    names.push(quote(DELETED));
    format!(
        "INSERT INTO {table} ({}) FORMAT RowBinary",
        names.join(", ")
    )
}

/// The query that reads a table's current state: the newest version of each key, without
/// the deleted ones (what the README shows users).
pub fn current_state(table: &str, columns: &[&str]) -> String {
    let names: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    format!(
        "SELECT {} FROM {table} FINAL WHERE {} = 0",
        names.join(", "),
        quote(DELETED)
    )
}

/// The query for the current values of `wanted` at `keys` (each a tuple of SQL literals,
/// in the order of `key`): the rows come back as the key's columns, then `wanted`, in
/// RowBinary (unchanged TOAST values).
pub fn lookup(table: &str, key: &[String], wanted: &[&str], keys: &[Vec<String>]) -> String {
    let mut names: Vec<String> = key.iter().map(|c| quote(c)).collect();
    names.extend(wanted.iter().map(|c| quote(c)));
    let tuple = |vals: &[String]| {
        if vals.len() == 1 {
            vals[0].clone()
        } else {
            format!("({})", vals.join(", "))
        }
    };
    let lhs = tuple(&key.iter().map(|c| quote(c)).collect::<Vec<_>>());
    let set: Vec<String> = keys.iter().map(|k| tuple(k)).collect();
    format!(
        "SELECT {} FROM {table} FINAL WHERE {lhs} IN ({}) AND {} = 0 FORMAT RowBinary",
        names.join(", "),
        set.join(", "),
        quote(DELETED)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(pg: &str, key: Option<u16>) -> ColumnInfo {
        ColumnInfo {
            name: "c".into(),
            pg_type: pg.into(),
            key,
            ..Default::default()
        }
    }

    #[test]
    fn maps_the_documented_types() {
        let cur = Profile::CURRENT;
        let t = |pg: &str| map_column(&col(pg, None), cur, false).ty.sql();
        assert_eq!(
            map_column(&col("bigint", Some(1)), cur, false).ty.sql(),
            "Int64"
        );
        assert_eq!(t("integer"), "Nullable(Int32)");
        assert_eq!(t("numeric(12,2)"), "Nullable(Decimal(12, 2))");
        assert_eq!(t("numeric(80,2)"), "Nullable(String)");
        assert_eq!(t("numeric"), "Nullable(String)");
        assert_eq!(
            t("timestamp with time zone"),
            "Nullable(DateTime64(6, 'UTC'))"
        );
        assert_eq!(
            t("timestamp(3) without time zone"),
            "Nullable(DateTime64(6, 'UTC'))"
        );
        assert_eq!(t("date"), "Nullable(Date32)");
        assert_eq!(t("integer[]"), "Array(Nullable(Int32))");
        assert_eq!(t("bytea"), "Nullable(String)");
        assert_eq!(t("uuid"), "Nullable(UUID)");
        assert_eq!(t("boolean"), "Nullable(Bool)");
        assert!(map_column(&col("interval", None), cur, false).fallback);
        let mut e = col("mood", None);
        e.is_enum = true;
        assert_eq!(map_column(&e, cur, false).ty.sql(), "Nullable(String)");
        let old = Profile::of_version("18.16.1");
        let o = |pg: &str| map_column(&col(pg, None), old, false).ty.sql();
        assert_eq!(o("timestamp with time zone"), "Nullable(String)");
        assert_eq!(o("date"), "Nullable(String)");
        assert_eq!(o("boolean"), "Nullable(UInt8)");
        assert_eq!(o("numeric(40,2)"), "Nullable(String)");
        assert_eq!(Profile::of_version("24.8.4.13"), Profile::CURRENT);
        let mid = Profile::of_version("21.12.4");
        assert_eq!(
            map_column(&col("date", None), mid, false).ty.sql(),
            "Nullable(String)"
        );
        assert_eq!(
            map_column(&col("boolean", None), mid, false).ty.sql(),
            "Nullable(Bool)"
        );
    }

    #[test]
    fn widening_keeps_values() {
        use ChType::*;
        assert!(widens(&Int32, &Int64));
        assert!(!widens(&Int64, &Int32));
        assert!(widens(&Int64.nullable(), &String(Text::Plain).nullable()));
        assert!(!widens(&String(Text::Plain), &Int64));
        assert!(widens(&Decimal(10, 2), &Decimal(12, 2)));
        assert!(!widens(&Decimal(10, 2), &Decimal(10, 3)));
        assert!(!widens(&Uuid, &Int64));
    }

    #[test]
    fn statements_quote_every_name() {
        let cols = vec![Column {
            name: "we`ird".into(),
            ty: ChType::Int64,
        }];
        assert_eq!(
            create_table("`db`.`t`", &cols, &["we`ird".into()]),
            "CREATE TABLE IF NOT EXISTS `db`.`t` (`we\\`ird` Int64, `_sluice_version` UInt64, \
             `_sluice_deleted` UInt8) ENGINE = ReplacingMergeTree(`_sluice_version`) ORDER BY (`we\\`ird`)"
        );
        assert_eq!(literal("it's"), "'it\\'s'");
    }
}
