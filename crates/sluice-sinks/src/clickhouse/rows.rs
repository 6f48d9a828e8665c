//! A change as RowBinary rows of its table: the envelope read, the key checked, values
//! encoded in the insert's column order, unchanged TOAST values taken from what the table
//! knows, and what stands in the way (new columns, a value that does not fit) said.
//!
//! Invariants:
//! - On `Err`, the table's pending rows are as they were: a change is written whole or
//!   not at all.
//! - A delete is a row of its key with every other column NULL and the deleted flag; an
//!   update that moved its key is a delete of the old key, then the new row.
//! - Errors name columns and types, never values.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use sluice_core::Op;
use tracing::warn;

use super::rowbinary::{self, Unfit};
use super::sink::{Item, Table};
use super::types::{self, ChType};

/// A change without a value for a key column (the key is never NULL).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a change lacks a value for a key column")]
struct MissingKey;

/// The envelope's parts a row is made of.
#[derive(Deserialize)]
pub(super) struct Envelope<'a> {
    #[serde(borrow)]
    pub key: Option<Image<'a>>,
    #[serde(borrow)]
    pub before: Option<Image<'a>>,
    #[serde(borrow)]
    pub after: Option<Image<'a>>,
    #[serde(borrow, default)]
    pub unchanged_toast: Vec<Cow<'a, str>>,
}

/// A row image's columns in order, values still JSON text (the packages' reader: names
/// are borrowed, not copied, per row).
pub(super) type Image<'a> = crate::package::Row<'a>;

/// Why a row could not be written as it is.
pub(super) enum RowError {
    /// Columns the target does not have yet.
    NewColumns(Vec<String>),
    /// A value the column's type cannot hold.
    Unfit { column: String, unfit: Unfit },
    /// The table cannot take this change (its reason and fix).
    Park(String),
}

/// A key value as a SQL literal: numbers as they are, anything else as a string.
pub(super) fn sql_literal(json: &str) -> String {
    if json.starts_with('"') {
        let s: String = serde_json::from_str(json).unwrap_or_default();
        types::literal(&s)
    } else if json
        .bytes()
        .all(|c| c.is_ascii_digit() || b"-+.eE".contains(&c))
        && !json.is_empty()
    {
        json.to_owned()
    } else {
        types::literal(json)
    }
}

/// Writes a change as one row (two for an update that moved its key) into the table's
/// pending rows, or says what stands in the way.
pub(super) fn encode_change(table: &mut Table, item: &Item<'_>) -> Result<(), RowError> {
    let env: Envelope<'_> = serde_json::from_slice(item.json)
        .map_err(|_| RowError::Park("a record in the log is not a change envelope".into()))?;
    let version = item.id.commit_lsn.0;
    if let Some(key) = &env.key {
        // The record's key comes in column order, the table's in primary-key order.
        let mut names: Vec<&str> = key.0.iter().map(|(n, _)| n.as_ref()).collect();
        let mut ours: Vec<&str> = table.key.iter().map(String::as_str).collect();
        names.sort_unstable();
        ours.sort_unstable();
        if names != ours {
            return Err(RowError::Park(format!(
                "the primary key changed from ({}) to ({}); ClickHouse orders the table by it, so drop the ClickHouse table {} and run `sluice backfill --table {}.{}`, then restart the pipeline",
                table.key.join(", "), names.join(", "), table.target, item.schema, item.table
            )));
        }
    }
    let mark = table.pending.len();
    let res = match item.op {
        Op::Delete => {
            let image = env
                .key
                .as_ref()
                .or(env.before.as_ref())
                .ok_or_else(|| RowError::Park("a delete without its key".into()))?;
            write_row(table, image, None, &[], version, true)
        }
        _ => {
            let after = env
                .after
                .as_ref()
                .ok_or_else(|| RowError::Park("a change without its row".into()))?;
            let mut old = None;
            if item.op == Op::Update {
                if let Some(before) = &env.before {
                    let moved = table.key.iter().any(|k| {
                        before.get(k).map(RawValue::get) != after.get(k).map(RawValue::get)
                    });
                    old = Some(before);
                    if moved {
                        write_row(table, before, None, &[], version, true)?;
                    }
                }
            }
            write_row(table, after, old, &env.unchanged_toast, version, false)
        }
    };
    if res.is_err() {
        table.pending.truncate(mark);
    }
    res
}

/// The RowBinary of `image`'s key columns (the key of [`Table::known`]).
fn key_bytes(table: &Table, image: &Image<'_>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for k in &table.key {
        let ty = &table.columns[*table.index.get(k)?].ty;
        rowbinary::encode(ty, image.get(k)?.get(), &mut out).ok()?;
    }
    Some(out)
}

/// One RowBinary row: every column of the insert, then the version and the deleted flag.
/// A column the update left unchanged (TOAST) takes its latest known value (`old`: the
/// image its key was read from, for an update that moved its key).
fn write_row(
    table: &mut Table,
    image: &Image<'_>,
    old: Option<&Image<'_>>,
    unchanged: &[Cow<'_, str>],
    version: u64,
    deleted: bool,
) -> Result<(), RowError> {
    let mut values: Vec<Option<&RawValue>> = vec![None; table.columns.len()];
    let mut new = Vec::new();
    for (pos, (name, value)) in image.0.iter().enumerate() {
        let i = match table.columns.get(pos) {
            Some(c) if c.name == *name => pos,
            _ => match table.index.get(name.as_ref()) {
                Some(&i) => i,
                None => {
                    new.push(name.to_string());
                    continue;
                }
            },
        };
        values[i] = Some(value);
    }
    if !new.is_empty() {
        return Err(RowError::NewColumns(new));
    }
    // The key's bytes are only needed where TOAST values are tracked in this batch.
    let key = if table.toast_cols.is_empty() {
        None
    } else {
        key_bytes(table, image)
    };
    let prior = if unchanged.is_empty() || deleted {
        None
    } else {
        let found = [old.and_then(|o| key_bytes(table, o)), key.clone()]
            .into_iter()
            .flatten()
            .find_map(|k| table.known.get(&k).cloned());
        if found.is_none() {
            warn!(table = %table.target, "an update left a TOASTed value unchanged but the row is not in ClickHouse: written as NULL");
        }
        Some(found.unwrap_or_default())
    };
    let mut remembered = HashMap::new();
    let out = &mut table.pending;
    for (col, value) in table.columns.iter().zip(&values) {
        let start = out.len();
        match value {
            Some(v) if !deleted || table.key.contains(&col.name) => {
                rowbinary::encode(&col.ty, v.get(), out).map_err(|unfit| RowError::Unfit {
                    column: col.name.clone(),
                    unfit,
                })?
            }
            _ => match prior.as_ref().and_then(|p| p.get(&col.name)) {
                Some(bytes) if unchanged.iter().any(|u| *u == col.name) => {
                    out.extend_from_slice(bytes)
                }
                _ => write_default(&col.ty, out).map_err(|e| RowError::Park(e.to_string()))?,
            },
        }
        if table.toast_cols.contains(&col.name) {
            remembered.insert(col.name.clone(), out[start..].to_vec());
        }
    }
    out.extend_from_slice(&version.to_le_bytes());
    out.push(u8::from(deleted));
    // A delete keeps its key's known values: an update that moved its key deletes the old
    // key first and then reads them for the new row.
    if let (Some(k), false) = (key, deleted || table.toast_cols.is_empty()) {
        table.known.insert(k, remembered);
    }
    Ok(())
}

/// A column with no value in the change (dropped in the source, or a delete's non-key
/// column): `NULL`.
fn write_default(ty: &ChType, out: &mut Vec<u8>) -> Result<(), MissingKey> {
    match ty {
        ChType::Nullable(_) => {
            out.push(1);
            Ok(())
        }
        // No NULL array in ClickHouse: an empty one.
        ChType::Array(_) => {
            out.push(0);
            Ok(())
        }
        _ => Err(MissingKey),
    }
}
