//! From records to statements: each record's envelope read (borrowing from the batch), what
//! it does to its target table, and consecutive changes of one table and kind grouped into
//! multi-row statements. Pure: no I/O.
//!
//! Invariants:
//! - Groups keep the records' log order; a group never holds one key twice where that
//!   would make one statement change a row twice (upserts, patches): the group is split
//!   there.
//! - An update that changed the key deletes the old key first (or, when it lacks unchanged
//!   TOAST values, moves the row, so the target keeps them).
//! - A change is skipped when its table's position covers it: `(commit LSN, log offset)`
//!   orders records as the log does, also where ordinals do not (a snapshot's workers take
//!   ordinals in blocks and their batches interleave); an older commit is covered whatever
//!   its offset (a log started over).

use std::borrow::Cow;
use std::collections::HashSet;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use sluice_core::{Lsn, Op};
use sluice_log::Record;

use super::sql::Shape;

/// Rows per statement at most (a batch is bounded too; this bounds one statement's text).
const MAX_ROWS: usize = 5000;
/// Bytes of row values per statement at most: wide rows would otherwise make one
/// statement larger than the server takes (1 GB), which no retry could fix.
const MAX_BYTES: usize = 16 << 20;

/// Where a change is in the log: what a table's stored position holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    pub commit_lsn: Lsn,
    pub ordinal: u64,
    pub offset: u64,
}

impl Position {
    pub fn of(r: &Record<'_>) -> Position {
        Position {
            commit_lsn: r.id.commit_lsn,
            ordinal: r.id.ordinal,
            offset: r.offset,
        }
    }

    /// Whether `r` is this change or one before it.
    pub fn covers(&self, r: &Record<'_>) -> bool {
        (r.id.commit_lsn, r.offset) <= (self.commit_lsn, self.offset)
    }
}

/// A column name, borrowed from the record unless it has escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Name<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// A JSON object's members in document order, values as their JSON text.
#[derive(Default)]
pub(super) struct Members<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Members<'a>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<Name<'a>, &'de RawValue>()? {
                    out.push((k.0, v as &'a RawValue));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'a> Members<'a> {
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_ref())
    }

    /// A JSON object of the named members (`None` if one is absent).
    fn object(&self, names: &[String]) -> Option<String> {
        let mut out = String::from("{");
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(n).ok()?);
            out.push(':');
            out.push_str(self.get(n)?.get());
        }
        out.push('}');
        Some(out)
    }

    /// The named members' JSON texts joined: equal for equal values.
    fn identity(&self, names: &[String]) -> Option<String> {
        let mut out = String::new();
        for n in names {
            out.push_str(self.get(n)?.get());
            out.push('\u{1}');
        }
        Some(out)
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    key: Option<&'a RawValue>,
    #[serde(borrow)]
    before: Option<&'a RawValue>,
    #[serde(borrow)]
    after: Option<&'a RawValue>,
    #[serde(default, borrow)]
    unchanged_toast: Vec<Name<'a>>,
}

/// The parts of a record's envelope the sink uses.
pub(super) struct Parsed<'a> {
    pub op: Op,
    pub key: Option<Members<'a>>,
    pub before: Option<Members<'a>>,
    /// The new row: its JSON object's text, and its members.
    pub after: Option<(&'a str, Members<'a>)>,
    pub toast: Vec<Cow<'a, str>>,
}

impl<'a> Parsed<'a> {
    pub fn parse(op: Op, json: &'a [u8]) -> Result<Parsed<'a>, serde_json::Error> {
        let env: Envelope<'a> = serde_json::from_slice(json)?;
        let members =
            |raw: Option<&'a RawValue>| -> Result<Option<Members<'a>>, serde_json::Error> {
                raw.map(|r| serde_json::from_str::<Members<'a>>(r.get()))
                    .transpose()
            };
        let after = match env.after {
            Some(raw) => Some((raw.get(), serde_json::from_str::<Members<'a>>(raw.get())?)),
            None => None,
        };
        Ok(Parsed {
            op,
            key: members(env.key)?,
            before: members(env.before)?,
            after,
            toast: env.unchanged_toast.into_iter().map(|n| n.0).collect(),
        })
    }
}

/// A change to apply to table `table` (an index into the sink's tables).
pub(super) struct Change<'a> {
    pub table: usize,
    pub pos: Position,
    pub parsed: Parsed<'a>,
}

/// What a group of rows does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Insert, or update the row the key names.
    Upsert,
    /// Update the given columns only (the others are unchanged TOAST values).
    Patch,
    Delete,
    /// Snapshot rows: binary COPY into a staging table, then upserted.
    Stage,
    /// A key change that lacks unchanged TOAST values: the row moves to its new key.
    Move,
    Truncate,
}

/// Consecutive changes of one table and kind, applied by one statement.
#[derive(Debug)]
pub(super) struct Group<'a> {
    pub table: usize,
    pub kind: Kind,
    /// The columns written (matched, for a delete), in the rows' order.
    pub cols: Vec<String>,
    /// Each row as a JSON object.
    pub rows: Vec<Cow<'a, str>>,
    /// Stage: each row's values, aligned with `cols`.
    pub values: Vec<Vec<&'a RawValue>>,
    /// Move: the columns that find the row, and their old values as a JSON object.
    pub old: Option<(Vec<String>, String)>,
    /// The rows' keys (checked for upserts and patches).
    keys: HashSet<String>,
    /// Bytes of the rows' values so far.
    bytes: usize,
}

/// Why a record cannot be applied (names no value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum PlanError {
    #[error("a {0} record without its row")]
    NoRow(&'static str),
    #[error("a {0} record without the columns of the table's primary key or replica identity")]
    NoKey(&'static str),
}

/// The columns that find a row of `shape` in `image`: the primary key if the image holds
/// it, else the record's replica identity (a unique index other than the key).
fn identity_columns(
    image: &Members<'_>,
    key: Option<&Members<'_>>,
    shape: &Shape,
) -> Option<Vec<String>> {
    if !shape.key.is_empty() && shape.key.iter().all(|k| image.has(k)) {
        return Some(shape.key.clone());
    }
    let key = key?;
    let names: Vec<String> = key.names().map(str::to_owned).collect();
    (!names.is_empty()
        && names
            .iter()
            .all(|k| image.has(k) && shape.column(k).is_some()))
    .then_some(names)
}

/// Plans `changes` (in log order) into groups; `shape` gives each table's target shape.
pub(super) fn plan<'a, 's>(
    changes: &'a [Change<'a>],
    shape: &dyn Fn(usize) -> &'s Shape,
) -> Result<Vec<Group<'a>>, PlanError> {
    let mut groups = Groups(Vec::new());
    for c in changes {
        let s = shape(c.table);
        let p = &c.parsed;
        let what = p.op.as_str();
        let entry = |kind, cols| Entry {
            table: c.table,
            kind,
            cols,
            row: None,
            values: None,
            key: None,
        };
        match p.op {
            Op::Message => {}
            Op::Truncate => groups.single(entry(Kind::Truncate, Vec::new()), None),
            Op::Delete => {
                let image = p
                    .before
                    .as_ref()
                    .or(p.key.as_ref())
                    .ok_or(PlanError::NoKey(what))?;
                let cols =
                    identity_columns(image, p.key.as_ref(), s).ok_or(PlanError::NoKey(what))?;
                let row = image.object(&cols).ok_or(PlanError::NoKey(what))?;
                groups.add(Entry {
                    row: Some(Cow::Owned(row)),
                    ..entry(Kind::Delete, cols)
                });
            }
            Op::Insert | Op::Read | Op::Update => {
                let (raw, after) = p.after.as_ref().ok_or(PlanError::NoRow(what))?;
                let cols: Vec<String> = after
                    .names()
                    .filter(|n| s.column(n).is_some())
                    .map(str::to_owned)
                    .collect();
                let moved_from = match (&p.before, p.op) {
                    (Some(before), Op::Update) => identity_columns(before, p.key.as_ref(), s)
                        .filter(|m| before.identity(m) != after.identity(m))
                        .and_then(|m| before.object(&m).map(|o| (m, o))),
                    _ => None,
                };
                let row = |kind, cols| Entry {
                    row: Some(Cow::Borrowed(*raw)),
                    key: after.identity(&s.key),
                    ..entry(kind, cols)
                };
                let toast = !p.toast.is_empty();
                match (p.op, moved_from, toast) {
                    (Op::Read, _, _) => {
                        let values = cols.iter().filter_map(|n| after.get(n)).collect();
                        groups.add(Entry {
                            values: Some(values),
                            ..row(Kind::Stage, cols)
                        });
                    }
                    (_, None, false) => groups.add(row(Kind::Upsert, cols)),
                    (_, Some((m, old)), false) => {
                        groups.add(Entry {
                            row: Some(Cow::Owned(old)),
                            ..entry(Kind::Delete, m)
                        });
                        groups.add(row(Kind::Upsert, cols));
                    }
                    (_, None, true) => groups.add(row(Kind::Patch, cols)),
                    (_, Some(old), true) => groups.single(row(Kind::Move, cols), Some(old)),
                }
            }
        }
    }
    Ok(groups.0)
}

/// One row on its way into a group.
struct Entry<'a> {
    table: usize,
    kind: Kind,
    cols: Vec<String>,
    row: Option<Cow<'a, str>>,
    /// Stage: the row's values, aligned with `cols`.
    values: Option<Vec<&'a RawValue>>,
    /// The row's key values (upserts and patches).
    key: Option<String>,
}

impl Entry<'_> {
    /// Bytes of the row's values (its JSON, or its staged values).
    fn len(&self) -> usize {
        let row = self.row.as_ref().map_or(0, |r| r.len());
        let staged: usize = self.values.iter().flatten().map(|v| v.get().len()).sum();
        row + staged
    }
}

struct Groups<'a>(Vec<Group<'a>>);

impl<'a> Groups<'a> {
    /// A group of its own (moves, truncates).
    fn single(&mut self, e: Entry<'a>, old: Option<(Vec<String>, String)>) {
        let bytes = e.len();
        self.0.push(Group {
            bytes,
            table: e.table,
            kind: e.kind,
            cols: e.cols,
            rows: e.row.into_iter().collect(),
            values: e.values.into_iter().collect(),
            old,
            keys: e.key.into_iter().collect(),
        });
    }

    /// Adds a row to the last group if it can take it, else starts a group.
    fn add(&mut self, e: Entry<'a>) {
        let unique = matches!(e.kind, Kind::Upsert | Kind::Patch);
        let fits = self.0.last().is_some_and(|g| {
            g.table == e.table
                && g.kind == e.kind
                && g.cols == e.cols
                && g.rows.len() < MAX_ROWS
                && g.bytes + e.len() <= MAX_BYTES
                && !(unique && e.key.as_ref().is_some_and(|k| g.keys.contains(k)))
        });
        match self.0.last_mut() {
            Some(g) if fits => {
                g.bytes += e.len();
                g.rows.extend(e.row);
                g.values.extend(e.values);
                g.keys.extend(e.key);
            }
            _ => self.single(e, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::sql::Column;
    use super::*;

    fn shape() -> Shape {
        Shape {
            qualified: "\"public\".\"t\"".into(),
            columns: vec![
                Column::new("id", "integer"),
                Column::new("v", "text"),
                Column::new("big", "text"),
            ],
            key: vec!["id".into()],
        }
    }

    fn change(op: Op, json: &str) -> Change<'_> {
        Change {
            table: 0,
            pos: Position {
                commit_lsn: Lsn(1),
                ordinal: 1,
                offset: 0,
            },
            parsed: Parsed::parse(op, json.as_bytes()).unwrap(),
        }
    }

    fn summary(groups: &[Group<'_>]) -> Vec<(Kind, Vec<String>, Vec<String>)> {
        groups
            .iter()
            .map(|g| {
                (
                    g.kind,
                    g.cols.clone(),
                    g.rows.iter().map(|r| r.to_string()).collect(),
                )
            })
            .collect()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn consecutive_changes_group_and_a_repeated_key_splits() {
        let json = [
            r#"{"key":{"id":1},"after":{"id":1,"v":"a","big":"x"}}"#,
            r#"{"key":{"id":2},"after":{"id":2,"v":"b","big":"y"}}"#,
            r#"{"key":{"id":1},"after":{"id":1,"v":"c","big":"x"}}"#,
            r#"{"key":{"id":3},"before":{"id":3},"after":null}"#,
            r#"{"key":{"id":4},"before":{"id":4},"after":null}"#,
        ];
        let ops = [Op::Insert, Op::Insert, Op::Update, Op::Delete, Op::Delete];
        let changes: Vec<Change> = ops.iter().zip(json).map(|(op, j)| change(*op, j)).collect();
        let sh = shape();
        let groups = plan(&changes, &|_| &sh).unwrap();
        assert_eq!(
            summary(&groups),
            vec![
                (
                    Kind::Upsert,
                    s(&["id", "v", "big"]),
                    s(&[
                        r#"{"id":1,"v":"a","big":"x"}"#,
                        r#"{"id":2,"v":"b","big":"y"}"#
                    ])
                ),
                (
                    Kind::Upsert,
                    s(&["id", "v", "big"]),
                    s(&[r#"{"id":1,"v":"c","big":"x"}"#])
                ),
                (Kind::Delete, s(&["id"]), s(&[r#"{"id":3}"#, r#"{"id":4}"#])),
            ]
        );
        assert_eq!(
            groups[0].rows[0], r#"{"id":1,"v":"a","big":"x"}"#,
            "the row image as the record carries it"
        );
    }

    #[test]
    fn wide_rows_split_a_statement_at_its_byte_budget() {
        let wide = "x".repeat(6 << 20);
        let json: Vec<String> = (1..=3)
            .map(|i| {
                format!(r#"{{"key":{{"id":{i}}},"after":{{"id":{i},"v":"{wide}","big":null}}}}"#)
            })
            .collect();
        let changes: Vec<Change> = json.iter().map(|j| change(Op::Insert, j)).collect();
        let sh = shape();
        let groups = plan(&changes, &|_| &sh).unwrap();
        let sizes: Vec<usize> = groups.iter().map(|g| g.rows.len()).collect();
        assert_eq!(sizes, vec![2, 1]);
    }

    #[test]
    fn key_changes_delete_the_old_key_or_move_the_row() {
        let sh = shape();
        let changes = [
            change(
                Op::Update,
                r#"{"key":{"id":2},"before":{"id":1},"after":{"id":2,"v":"a","big":"x"}}"#,
            ),
            change(
                Op::Update,
                r#"{"key":{"id":3},"before":{"id":2},"after":{"id":3,"v":"b"},"unchanged_toast":["big"]}"#,
            ),
            change(
                Op::Update,
                r#"{"key":{"id":3},"after":{"id":3,"v":"c"},"unchanged_toast":["big"]}"#,
            ),
            // REPLICA IDENTITY FULL: a before image on every update, same key.
            change(
                Op::Update,
                r#"{"key":{"id":3,"v":"c","big":"z"},"before":{"id":3,"v":"c","big":"z"},"after":{"id":3,"v":"d","big":"z"}}"#,
            ),
        ];
        let groups = plan(&changes, &|_| &sh).unwrap();
        let kinds: Vec<Kind> = groups.iter().map(|g| g.kind).collect();
        assert_eq!(
            kinds,
            vec![
                Kind::Delete,
                Kind::Upsert,
                Kind::Move,
                Kind::Patch,
                Kind::Upsert
            ]
        );
        assert_eq!(groups[0].rows[0], r#"{"id":1}"#);
        assert_eq!(groups[2].old, Some((s(&["id"]), r#"{"id":2}"#.to_owned())));
        assert_eq!(groups[2].cols, s(&["id", "v"]));
        assert_eq!(groups[3].cols, s(&["id", "v"]));
    }

    #[test]
    fn snapshot_rows_stage_with_their_values_and_unknown_columns_are_left_out() {
        let sh = shape();
        let changes = [
            change(
                Op::Read,
                r#"{"key":{"id":1},"after":{"id":1,"gone":true,"v":"a","big":null}}"#,
            ),
            change(
                Op::Read,
                r#"{"key":{"id":1},"after":{"id":1,"gone":false,"v":"b","big":null}}"#,
            ),
            change(Op::Truncate, r#"{"key":null,"after":null}"#),
        ];
        let groups = plan(&changes, &|_| &sh).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].kind, Kind::Stage);
        assert_eq!(groups[0].cols, s(&["id", "v", "big"]));
        let vals: Vec<Vec<&str>> = groups[0]
            .values
            .iter()
            .map(|v| v.iter().map(|r| r.get()).collect())
            .collect();
        assert_eq!(
            vals,
            vec![vec!["1", "\"a\"", "null"], vec!["1", "\"b\"", "null"]]
        );
        assert_eq!(groups[1].kind, Kind::Truncate);
    }

    #[test]
    fn a_delete_without_its_key_is_an_error_without_values() {
        let sh = shape();
        let changes = [change(
            Op::Delete,
            r#"{"key":{"other":1},"before":{"other":1}}"#,
        )];
        let err = plan(&changes, &|_| &sh).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a delete record without the columns of the table's primary key or replica identity"
        );
    }

    #[test]
    fn names_with_escapes_are_read() {
        let p = Parsed::parse(
            Op::Insert,
            br#"{"after":{"a\"b":1},"unchanged_toast":["x\\y"]}"#,
        )
        .unwrap();
        let (_, after) = p.after.unwrap();
        assert_eq!(after.names().collect::<Vec<_>>(), vec!["a\"b"]);
        assert_eq!(p.toast, vec!["x\\y"]);
    }
}
