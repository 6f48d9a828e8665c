//! The SQL text the PostgreSQL sink sends, built without I/O: the statements that apply a
//! batch's rows (their JSON images turned into the target's types by `json_to_recordset`),
//! the staging of snapshot rows for binary COPY, the DDL of target tables and the
//! positions table.
//!
//! Invariants:
//! - Every identifier is quoted, and row values only ever travel inside one quoted literal
//!   (the JSON array of the rows) or as COPY data: no text of a row becomes SQL.
//! - How a value becomes the target column's type is decided once, by the column's type
//!   ([`Conv`]): `bytea` travels as base64 and is decoded in SQL, everything else goes
//!   through the type's own input function (or, staged, a cast from text).

use sluice_pgwire::wire::{quote_ident, quote_literal};

/// How values of a target column are converted from the change record's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Conv {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Bool,
    /// base64 text in JSON.
    Bytea,
    /// A JSON array of base64 texts.
    ByteaArray,
    /// json, jsonb: the JSON value itself.
    Json,
    /// Arrays of json or jsonb: each element is JSON.
    JsonArray,
    /// Other arrays: JSON arrays, one level per dimension.
    Array,
    /// Anything else: the value's text goes through the type's input function.
    Plain,
}

impl Conv {
    /// The conversion for a column of type `ty`, as `format_type` spells it.
    pub fn of(ty: &str) -> Conv {
        if let Some(element) = ty.strip_suffix("[]") {
            return match element.trim_end_matches("[]") {
                "bytea" => Conv::ByteaArray,
                "json" | "jsonb" => Conv::JsonArray,
                _ => Conv::Array,
            };
        }
        match ty {
            "smallint" => Conv::Int2,
            "integer" => Conv::Int4,
            "bigint" => Conv::Int8,
            "real" => Conv::Float4,
            "double precision" => Conv::Float8,
            "boolean" => Conv::Bool,
            "bytea" => Conv::Bytea,
            "json" | "jsonb" => Conv::Json,
            _ => Conv::Plain,
        }
    }

    /// Staged in its own binary form (no cast on the way to the target).
    fn native(self) -> Option<&'static str> {
        Some(match self {
            Conv::Int2 => "int2",
            Conv::Int4 => "int4",
            Conv::Int8 => "int8",
            Conv::Float4 => "float4",
            Conv::Float8 => "float8",
            Conv::Bool => "bool",
            Conv::Bytea => "bytea",
            _ => return None,
        })
    }
}

/// A column of a target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Column {
    pub name: String,
    /// `format_type` of the column, with its modifier.
    pub ty: String,
    pub conv: Conv,
}

impl Column {
    pub fn new(name: impl Into<String>, ty: impl Into<String>) -> Column {
        let ty = ty.into();
        Column {
            name: name.into(),
            conv: Conv::of(&ty),
            ty,
        }
    }

    /// Its type in a `json_to_recordset` column definition list.
    fn json_type(&self) -> &str {
        match self.conv {
            Conv::Bytea => "text",
            Conv::ByteaArray => "text[]",
            _ => &self.ty,
        }
    }

    /// The value of `alias`'s column as the target type.
    fn json_expr(&self, alias: &str) -> String {
        let v = format!("{alias}.{}", quote_ident(&self.name));
        match self.conv {
            Conv::Bytea => format!("decode({v}, 'base64')"),
            Conv::ByteaArray => format!(
                "CASE WHEN {v} IS NULL THEN NULL ELSE ARRAY(SELECT decode(u.e, 'base64') \
                 FROM unnest({v}) WITH ORDINALITY AS u(e, n) ORDER BY u.n) END"
            ),
            _ => v,
        }
    }

    /// Its type in a staging table: its own binary form, or text.
    pub fn stage_type(&self) -> &'static str {
        self.conv.native().unwrap_or("text")
    }

    /// The value of staged column `staged` as the target type.
    fn stage_expr(&self, staged: &str) -> String {
        match self.conv.native() {
            Some(_) => staged.to_owned(),
            None => format!("{staged}::{}", without_length(&self.ty)),
        }
    }
}

/// A type without its length modifier: an explicit cast to `varchar(10)` (or `char(n)`,
/// `bit(n)`) cuts a longer value silently, where the INSERT's assignment to the column
/// refuses it, as the streamed path does.
fn without_length(ty: &str) -> String {
    let (base, array) = match ty.strip_suffix("[]") {
        Some(b) => (b, "[]"),
        None => (ty, ""),
    };
    let bare = if base.starts_with("character varying") {
        "character varying"
    } else if base.starts_with("character") {
        "bpchar"
    } else if base.starts_with("bit varying") {
        "bit varying"
    } else if base.starts_with("bit") {
        "varbit"
    } else {
        return ty.to_owned();
    };
    format!("{bare}{array}")
}

/// A target table as the statements need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Shape {
    /// `"schema"."name"`.
    pub qualified: String,
    pub columns: Vec<Column>,
    /// The primary key's columns, in key order.
    pub key: Vec<String>,
}

impl Shape {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The named columns (each one the table has).
    fn columns_of<'a>(&'a self, names: &[String]) -> Vec<&'a Column> {
        names.iter().filter_map(|n| self.column(n)).collect()
    }

    fn is_key(&self, name: &str) -> bool {
        self.key.iter().any(|k| k == name)
    }

    fn key_list(&self) -> String {
        list(self.key.iter().map(|k| quote_ident(k)))
    }
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    items.into_iter().collect::<Vec<_>>().join(", ")
}

/// `SELECT <values as the target types> FROM json_to_recordset(<rows>) AS <alias>(<defs>)`.
fn select_rows(cols: &[&Column], rows: &str, alias: &str) -> String {
    format!(
        "SELECT {} FROM json_to_recordset({}::json) AS {alias}({})",
        list(
            cols.iter()
                .map(|c| format!("{} AS {}", c.json_expr(alias), quote_ident(&c.name)))
        ),
        quote_literal(rows),
        list(
            cols.iter()
                .map(|c| format!("{} {}", quote_ident(&c.name), c.json_type()))
        ),
    )
}

/// `(t."a", t."b") = (j."a", j."b")` as a conjunction.
fn key_match(cols: &[&str], left: &str, right: &str) -> String {
    cols.iter()
        .map(|c| {
            let c = quote_ident(c);
            format!("{left}.{c} = {right}.{c}")
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `ON CONFLICT (key) DO UPDATE SET` every non-key column of `cols` (or `DO NOTHING`).
fn on_conflict(shape: &Shape, cols: &[&Column]) -> String {
    let set: Vec<String> = cols
        .iter()
        .filter(|c| !shape.is_key(&c.name))
        .map(|c| {
            let c = quote_ident(&c.name);
            format!("{c} = EXCLUDED.{c}")
        })
        .collect();
    if set.is_empty() {
        format!("ON CONFLICT ({}) DO NOTHING", shape.key_list())
    } else {
        format!(
            "ON CONFLICT ({}) DO UPDATE SET {}",
            shape.key_list(),
            set.join(", ")
        )
    }
}

/// A JSON array of the rows' objects.
pub(super) fn json_array<'a>(rows: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (i, r) in rows.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r);
    }
    out.push(']');
    out
}

/// Inserts the rows, or updates the rows their keys already name. No key may appear twice
/// in `rows` (one statement cannot change a row twice).
pub(super) fn upsert(shape: &Shape, cols: &[String], rows: &str) -> String {
    let cols = shape.columns_of(cols);
    format!(
        "INSERT INTO {} ({}) {} {}",
        shape.qualified,
        list(cols.iter().map(|c| quote_ident(&c.name))),
        select_rows(&cols, rows, "j"),
        on_conflict(shape, &cols)
    )
}

/// Deletes the rows whose `matched` columns equal a row's of `rows`.
pub(super) fn delete(shape: &Shape, matched: &[String], rows: &str) -> String {
    let cols = shape.columns_of(matched);
    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
    format!(
        "DELETE FROM {} AS t USING ({}) AS j WHERE {}",
        shape.qualified,
        select_rows(&cols, rows, "j"),
        key_match(&names, "t", "j")
    )
}

/// Updates the columns `cols` of the rows their keys name and leaves the table's other
/// columns (unchanged TOAST values) as they are; `None` when only key columns are given.
pub(super) fn patch(shape: &Shape, cols: &[String], rows: &str) -> Option<String> {
    let cols = shape.columns_of(cols);
    let set: Vec<String> = cols
        .iter()
        .filter(|c| !shape.is_key(&c.name))
        .map(|c| {
            let c = quote_ident(&c.name);
            format!("{c} = j.{c}")
        })
        .collect();
    if set.is_empty() {
        return None;
    }
    let key: Vec<&str> = shape.key.iter().map(String::as_str).collect();
    Some(format!(
        "UPDATE {} AS t SET {} FROM ({}) AS j WHERE {}",
        shape.qualified,
        set.join(", "),
        select_rows(&cols, rows, "j"),
        key_match(&key, "t", "j")
    ))
}

/// Moves one row from its old key (`matched` columns of `old`) to the values of `row`,
/// keeping the columns `cols` does not name (unchanged TOAST values).
pub(super) fn moved(
    shape: &Shape,
    cols: &[String],
    row: &str,
    matched: &[String],
    old: &str,
) -> String {
    let cols = shape.columns_of(cols);
    let matched = shape.columns_of(matched);
    let set = list(cols.iter().map(|c| {
        let c = quote_ident(&c.name);
        format!("{c} = j.{c}")
    }));
    let left = list(
        matched
            .iter()
            .map(|c| format!("t.{}", quote_ident(&c.name))),
    );
    let old_select = select_rows(&matched, old, "o");
    format!(
        "UPDATE {} AS t SET {set} FROM ({}) AS j WHERE ({left}) = ({old_select})",
        shape.qualified,
        select_rows(&cols, row, "j"),
    )
}

pub(super) fn truncate(shape: &Shape) -> String {
    format!("TRUNCATE {}", shape.qualified)
}

/// A session's staging table for snapshot rows of `cols`: `seq` (the row's place in its
/// batch), then one column per target column, in its staging type.
pub(super) fn stage_create(name: &str, cols: &[&Column]) -> String {
    let mut defs = vec!["seq int8".to_owned()];
    defs.extend(
        cols.iter()
            .enumerate()
            .map(|(i, c)| format!("c{i} {}", c.stage_type())),
    );
    format!(
        "CREATE TEMP TABLE {} ({}) ON COMMIT DELETE ROWS",
        quote_ident(name),
        defs.join(", ")
    )
}

pub(super) fn stage_copy(name: &str) -> String {
    format!(
        "COPY pg_temp.{} FROM STDIN (FORMAT binary)",
        quote_ident(name)
    )
}

pub(super) fn stage_truncate(name: &str) -> String {
    format!("TRUNCATE pg_temp.{}", quote_ident(name))
}

/// Upserts the staged rows into the table; a key staged twice keeps its last row.
pub(super) fn stage_merge(shape: &Shape, cols: &[&Column], name: &str) -> String {
    let exprs: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| c.stage_expr(&format!("s.c{i}")))
        .collect();
    let key_exprs: Vec<&str> = shape
        .key
        .iter()
        .filter_map(|k| cols.iter().position(|c| &c.name == k))
        .map(|i| exprs[i].as_str())
        .collect();
    let key_exprs = key_exprs.join(", ");
    format!(
        "INSERT INTO {} ({}) SELECT DISTINCT ON ({key_exprs}) {} FROM pg_temp.{} AS s \
         ORDER BY {key_exprs}, s.seq DESC {}",
        shape.qualified,
        list(cols.iter().map(|c| quote_ident(&c.name))),
        exprs.join(", "),
        quote_ident(name),
        on_conflict(shape, cols)
    )
}

/// A column of a table to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NewColumn {
    pub name: String,
    pub ty: String,
    pub not_null: bool,
}

pub(super) fn create_table(qualified: &str, cols: &[NewColumn], key: &[String]) -> String {
    let mut defs: Vec<String> = cols
        .iter()
        .map(|c| {
            let null = if c.not_null { " NOT NULL" } else { "" };
            format!("{} {}{null}", quote_ident(&c.name), c.ty)
        })
        .collect();
    defs.push(format!(
        "PRIMARY KEY ({})",
        list(key.iter().map(|k| quote_ident(k)))
    ));
    format!(
        "CREATE TABLE IF NOT EXISTS {qualified} ({})",
        defs.join(", ")
    )
}

/// A column added to the source: nullable (the table's other rows have no value for it).
pub(super) fn add_column(qualified: &str, name: &str, ty: &str) -> String {
    format!(
        "ALTER TABLE {qualified} ADD COLUMN IF NOT EXISTS {} {ty}",
        quote_ident(name)
    )
}

pub(super) fn drop_column(qualified: &str, name: &str) -> String {
    format!(
        "ALTER TABLE {qualified} DROP COLUMN IF EXISTS {}",
        quote_ident(name)
    )
}

/// `"schema"."name"`.
pub(super) fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// The positions table: per pipeline, sink and source table, the last change applied
/// (its commit LSN, ordinal and offset in the log) and the source columns the sink knows.
pub(super) fn positions_table(qualified: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {qualified} (\
         pipeline text NOT NULL, sink text NOT NULL, \
         source_schema text NOT NULL, source_table text NOT NULL, \
         commit_lsn pg_lsn NOT NULL, ordinal bigint NOT NULL, log_offset bigint NOT NULL, \
         source_columns text[] NOT NULL DEFAULT '{{}}', \
         updated_at timestamptz NOT NULL DEFAULT now(), \
         PRIMARY KEY (pipeline, sink, source_schema, source_table))"
    )
}

/// One table's row of the positions table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PositionRow<'a> {
    pub schema: &'a str,
    pub table: &'a str,
    pub commit_lsn: sluice_core::Lsn,
    pub ordinal: u64,
    pub offset: u64,
    pub source_columns: Vec<&'a str>,
}

pub(super) fn positions_upsert(
    qualified: &str,
    pipeline: &str,
    sink: &str,
    rows: &[PositionRow<'_>],
) -> String {
    let values = list(rows.iter().map(|r| {
        format!(
            "({}, {}, {}, {}, '{}', {}, {}, ARRAY[{}]::text[], now())",
            quote_literal(pipeline),
            quote_literal(sink),
            quote_literal(r.schema),
            quote_literal(r.table),
            r.commit_lsn,
            r.ordinal,
            r.offset,
            list(r.source_columns.iter().map(|c| quote_literal(c)))
        )
    }));
    format!(
        "INSERT INTO {qualified} (pipeline, sink, source_schema, source_table, commit_lsn, \
         ordinal, log_offset, source_columns, updated_at) VALUES {values} \
         ON CONFLICT (pipeline, sink, source_schema, source_table) DO UPDATE SET \
         commit_lsn = EXCLUDED.commit_lsn, ordinal = EXCLUDED.ordinal, \
         log_offset = EXCLUDED.log_offset, source_columns = EXCLUDED.source_columns, \
         updated_at = EXCLUDED.updated_at"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            qualified: qualified("app", "Orders"),
            columns: vec![
                Column::new("id", "bigint"),
                Column::new("region", "text"),
                Column::new("blob", "bytea"),
                Column::new("tags", "bytea[]"),
                Column::new("total", "numeric(12,2)"),
            ],
            key: vec!["id".into(), "region".into()],
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lengths_are_left_to_the_column() {
        assert_eq!(
            super::without_length("character varying(10)"),
            "character varying"
        );
        assert_eq!(super::without_length("character(3)[]"), "bpchar[]");
        assert_eq!(super::without_length("bit(4)"), "varbit");
        assert_eq!(super::without_length("numeric(12,2)"), "numeric(12,2)");
    }

    #[test]
    fn conversions_follow_the_target_type() {
        assert_eq!(Conv::of("bigint"), Conv::Int8);
        assert_eq!(Conv::of("double precision"), Conv::Float8);
        assert_eq!(Conv::of("bytea[]"), Conv::ByteaArray);
        assert_eq!(Conv::of("jsonb[][]"), Conv::JsonArray);
        assert_eq!(Conv::of("integer[]"), Conv::Array);
        assert_eq!(Conv::of("timestamp with time zone"), Conv::Plain);
        assert_eq!(Conv::of("numeric(12,2)"), Conv::Plain);
        assert_eq!(Conv::of("jsonb"), Conv::Json);
    }

    #[test]
    fn an_upsert_converts_each_column_and_updates_the_non_key_ones() {
        let sql = upsert(
            &shape(),
            &names(&["id", "region", "blob", "total"]),
            r#"[{"id":1,"region":"eu","blob":"AAE=","total":"1.50"}]"#,
        );
        assert_eq!(
            sql,
            "INSERT INTO \"app\".\"Orders\" (\"id\", \"region\", \"blob\", \"total\") \
             SELECT j.\"id\" AS \"id\", j.\"region\" AS \"region\", decode(j.\"blob\", 'base64') AS \"blob\", \
             j.\"total\" AS \"total\" FROM json_to_recordset(E'[{\"id\":1,\"region\":\"eu\",\"blob\":\"AAE=\",\"total\":\"1.50\"}]'::json) \
             AS j(\"id\" bigint, \"region\" text, \"blob\" text, \"total\" numeric(12,2)) \
             ON CONFLICT (\"id\", \"region\") DO UPDATE SET \"blob\" = EXCLUDED.\"blob\", \"total\" = EXCLUDED.\"total\""
        );
        // Only key columns: nothing to update.
        let sql = upsert(&shape(), &names(&["id", "region"]), "[]");
        assert!(
            sql.ends_with("ON CONFLICT (\"id\", \"region\") DO NOTHING"),
            "{sql}"
        );
    }

    #[test]
    fn values_are_one_escaped_literal() {
        let sql = upsert(
            &shape(),
            &names(&["id", "region"]),
            r#"[{"id":1,"region":"it's \"q\" \\ x"}]"#,
        );
        assert!(
            sql.contains(
                r#"json_to_recordset(E'[{"id":1,"region":"it''s \\"q\\" \\\\ x"}]'::json)"#
            ),
            "{sql}"
        );
    }

    #[test]
    fn deletes_patches_and_moves_match_by_key() {
        let s = shape();
        assert_eq!(
            delete(&s, &names(&["id", "region"]), r#"[{"id":1,"region":"eu"}]"#),
            "DELETE FROM \"app\".\"Orders\" AS t USING (SELECT j.\"id\" AS \"id\", j.\"region\" AS \"region\" \
             FROM json_to_recordset(E'[{\"id\":1,\"region\":\"eu\"}]'::json) AS j(\"id\" bigint, \"region\" text)) AS j \
             WHERE t.\"id\" = j.\"id\" AND t.\"region\" = j.\"region\""
        );
        let p = patch(&s, &names(&["id", "region", "total"]), "[]").unwrap();
        assert!(
            p.starts_with(
                "UPDATE \"app\".\"Orders\" AS t SET \"total\" = j.\"total\" FROM (SELECT"
            ),
            "{p}"
        );
        assert!(
            p.ends_with("WHERE t.\"id\" = j.\"id\" AND t.\"region\" = j.\"region\""),
            "{p}"
        );
        assert_eq!(patch(&s, &names(&["id", "region"]), "[]"), None);
        let m = moved(
            &s,
            &names(&["id", "region", "total"]),
            r#"[{"id":2,"region":"eu","total":"1"}]"#,
            &names(&["id", "region"]),
            r#"[{"id":1,"region":"eu"}]"#,
        );
        assert!(
            m.contains("SET \"id\" = j.\"id\", \"region\" = j.\"region\", \"total\" = j.\"total\""),
            "{m}"
        );
        assert!(
            m.ends_with(
                "WHERE (t.\"id\", t.\"region\") = (SELECT o.\"id\" AS \"id\", o.\"region\" AS \"region\" \
                 FROM json_to_recordset(E'[{\"id\":1,\"region\":\"eu\"}]'::json) AS o(\"id\" bigint, \"region\" text))"
            ),
            "{m}"
        );
    }

    #[test]
    fn bytea_arrays_are_decoded_element_by_element() {
        let sql = upsert(&shape(), &names(&["id", "region", "tags"]), "[]");
        assert!(sql.contains("ARRAY(SELECT decode(u.e, 'base64') FROM unnest(j.\"tags\") WITH ORDINALITY AS u(e, n) ORDER BY u.n)"), "{sql}");
        assert!(sql.contains("\"tags\" text[]"), "{sql}");
    }

    #[test]
    fn staged_rows_are_cast_and_deduplicated_by_key() {
        let s = shape();
        let cols: Vec<&Column> = s.columns.iter().collect();
        assert_eq!(
            stage_create("sluice_stage_1", &cols),
            "CREATE TEMP TABLE \"sluice_stage_1\" (seq int8, c0 int8, c1 text, c2 bytea, c3 text, c4 text) ON COMMIT DELETE ROWS"
        );
        assert_eq!(
            stage_merge(&s, &cols, "sluice_stage_1"),
            "INSERT INTO \"app\".\"Orders\" (\"id\", \"region\", \"blob\", \"tags\", \"total\") \
             SELECT DISTINCT ON (s.c0, s.c1::text) s.c0, s.c1::text, s.c2, s.c3::bytea[], s.c4::numeric(12,2) \
             FROM pg_temp.\"sluice_stage_1\" AS s ORDER BY s.c0, s.c1::text, s.seq DESC \
             ON CONFLICT (\"id\", \"region\") DO UPDATE SET \"blob\" = EXCLUDED.\"blob\", \
             \"tags\" = EXCLUDED.\"tags\", \"total\" = EXCLUDED.\"total\""
        );
    }

    #[test]
    fn tables_and_positions() {
        assert_eq!(
            create_table(
                &qualified("public", "t"),
                &[
                    NewColumn {
                        name: "id".into(),
                        ty: "integer".into(),
                        not_null: true
                    },
                    NewColumn {
                        name: "m".into(),
                        ty: "text".into(),
                        not_null: false
                    }
                ],
                &names(&["id"])
            ),
            "CREATE TABLE IF NOT EXISTS \"public\".\"t\" (\"id\" integer NOT NULL, \"m\" text, PRIMARY KEY (\"id\"))"
        );
        let sql = positions_upsert(
            "\"public\".\"sluice_positions\"",
            "p",
            "s",
            &[PositionRow {
                schema: "public",
                table: "t",
                commit_lsn: sluice_core::Lsn(0x1_0000_00A0),
                ordinal: 3,
                offset: 42,
                source_columns: vec!["id", "m"],
            }],
        );
        assert!(
            sql.contains("VALUES (E'p', E's', E'public', E't', '1/A0', 3, 42, ARRAY[E'id', E'm']::text[], now())"),
            "{sql}"
        );
    }
}
