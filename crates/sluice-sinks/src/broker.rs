//! What the broker sinks (NATS JetStream, Kafka) share: the encodings (one JSON record
//! per message, or a package of one table's records), compression, and the encoder that
//! turns a batch read from the log into the messages to publish, in order.
//!
//! Invariants:
//! - The messages of a batch are produced in log order per table: a key's records keep
//!   their order inside a package and across packages, also when the route changes
//!   between them (`{op}`, or a column an update changes): a table has one open package
//!   at a time, sealed before a record goes to another route.
//! - A package never mixes tables (nor routes).
//! - A package is cut before it passes `package_max_records` records or
//!   `package_max_bytes` bytes (a single record larger than the limit is sent alone).
//! - Every message says how it is encoded (`Sluice-Encoding`, `Sluice-Compression`) and
//!   carries its idempotency key: the record's id, or a package's first and last id.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use sluice_core::{ChangeId, Columns, Fault, Finding, Op};
use sluice_log::{Record, RecordBatch};

use crate::package::{self, EventWriter, Kinds};
use crate::route::Route;

/// How records are put in messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// One message per record: the record's JSON, as every JSON sink has it.
    #[default]
    Json,
    /// One message per table and window: a protobuf `sluice.v1.Package`
    /// (`proto/sluice/v1/package.proto`).
    Package,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Package => "package",
        }
    }
}

/// Compression of each message's bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    /// One zstd frame per message.
    Zstd,
}

/// A package's limits.
#[derive(Debug, Clone, Copy)]
pub struct Packing {
    pub max_records: usize,
    pub max_bytes: usize,
    /// How long a read waits for more records when fewer than a full package are there.
    pub max_wait: Duration,
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The subject or topic.
    pub route: String,
    /// The idempotency key: the record's id, or `first..last` for a package.
    pub id: String,
    /// A Kafka message key: the record's key (its JSON), or `schema.table` for a package,
    /// so one key's messages share a partition.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub key: Vec<u8>,
    /// The record's op (`None` for a package).
    pub op: Option<Op>,
    pub schema: String,
    pub table: String,
    /// Commit LSN of the (last) record.
    pub commit_lsn: String,
    /// Records in the message.
    pub records: usize,
    pub payload: Vec<u8>,
}

/// Turns batches into messages.
pub struct Encoder {
    pipeline: String,
    route: Route,
    encoding: Encoding,
    compression: Compression,
    packing: Packing,
    /// Kafka needs each record's key; NATS does not.
    keyed: bool,
    kinds: HashMap<String, Kinds>,
    events: EventWriter,
}

/// The part of an envelope a JSON message needs beyond the record's head.
#[derive(Deserialize)]
struct KeyOnly<'a> {
    #[serde(borrow)]
    key: Option<&'a RawValue>,
}

/// An open package.
struct Group {
    schema: String,
    table: String,
    /// `schema.table`, the key of its column kinds.
    qualified: String,
    route: String,
    /// Its events, written.
    events: Vec<u8>,
    records: usize,
    first: ChangeId,
    last: ChangeId,
}

/// The settings an [`Encoder`] is made from.
pub struct EncoderSettings<'a> {
    pub pipeline: &'a str,
    pub route: Route,
    pub encoding: Encoding,
    pub compression: Compression,
    pub packing: Packing,
    pub keyed: bool,
    pub columns: &'a Columns,
}

impl Encoder {
    pub fn new(s: EncoderSettings<'_>) -> Encoder {
        Encoder {
            pipeline: s.pipeline.to_owned(),
            route: s.route,
            encoding: s.encoding,
            compression: s.compression,
            packing: s.packing,
            keyed: s.keyed,
            kinds: s
                .columns
                .iter()
                .map(|(t, cols)| (t.clone(), package::kinds_of(cols)))
                .collect(),
            events: EventWriter::default(),
        }
    }

    /// The messages for `batch`, in order, appended to `out`.
    pub fn encode(&mut self, batch: &RecordBatch, out: &mut Vec<Outgoing>) -> Result<(), Fault> {
        match self.encoding {
            Encoding::Json => batch.iter().try_for_each(|r| {
                let m = self.json_message(&r)?;
                out.push(m);
                Ok(())
            }),
            Encoding::Package => self.packages(batch, out),
        }
    }

    fn json_message(&self, r: &Record<'_>) -> Result<Outgoing, Fault> {
        let row: Option<serde_json::Value> = if self.route.needs_row() {
            Some(serde_json::from_slice(r.json).map_err(|e| unreadable(r, e))?)
        } else {
            None
        };
        let mut route = String::new();
        self.route
            .render(&self.pipeline, r, row.as_ref(), &mut route);
        // The key from the envelope already read for the route, else from a read of the
        // key alone (no second full parse of a record).
        let key = match (&row, self.keyed) {
            (_, false) => Vec::new(),
            (Some(row), true) => match &row["key"] {
                serde_json::Value::Null => Vec::new(),
                k => serde_json::to_vec(k).map_err(|e| unreadable(r, e))?,
            },
            (None, true) => {
                let k: KeyOnly<'_> =
                    serde_json::from_slice(r.json).map_err(|e| unreadable(r, e))?;
                k.key
                    .map(|k| k.get().as_bytes().to_vec())
                    .unwrap_or_default()
            }
        };
        Ok(Outgoing {
            route,
            id: r.id.to_string(),
            key,
            op: Some(r.op),
            schema: r.schema.to_owned(),
            table: r.table.to_owned(),
            commit_lsn: r.id.commit_lsn.to_string(),
            records: 1,
            payload: self.compress(r.json.to_vec())?,
        })
    }

    fn packages(&mut self, batch: &RecordBatch, out: &mut Vec<Outgoing>) -> Result<(), Fault> {
        let mut groups: Vec<Group> = Vec::new();
        let mut route = String::new();
        for r in batch.iter() {
            let row = if self.route.needs_row() {
                Some(serde_json::from_slice(r.json).map_err(|e| unreadable(&r, e))?)
            } else {
                None
            };
            self.route
                .render(&self.pipeline, &r, row.as_ref(), &mut route);
            // One open package per table: a record routed elsewhere than its table's open
            // package (`{op}`, a column) seals it first, so a table's packages leave in
            // log order and a key's records keep their order across routes.
            let at = match groups
                .iter()
                .position(|g| g.schema == r.schema && g.table == r.table)
            {
                Some(i) => {
                    if groups[i].route != route {
                        if groups[i].records > 0 {
                            out.push(self.seal(&mut groups[i])?);
                        }
                        groups[i].route.clone_from(&route);
                    }
                    i
                }
                None => {
                    groups.push(Group {
                        schema: r.schema.to_owned(),
                        table: r.table.to_owned(),
                        qualified: format!("{}.{}", r.schema, r.table),
                        route: route.clone(),
                        events: Vec::new(),
                        records: 0,
                        first: r.id,
                        last: r.id,
                    });
                    groups.len() - 1
                }
            };
            let g = &mut groups[at];
            let before = g.events.len();
            let kinds = self.kinds.get(&g.qualified);
            self.events
                .write(&r, kinds, &mut g.events)
                .map_err(|e| Fault::fatal("a record in the log cannot be encoded").caused_by(e))?;
            let full = g.records >= self.packing.max_records
                || (g.records > 0 && g.events.len() > self.packing.max_bytes);
            if full {
                // The record just written starts the next package.
                let tail = g.events.split_off(before);
                out.push(self.seal(g)?);
                g.events = tail;
            }
            if g.records == 0 {
                g.first = r.id;
            }
            g.last = r.id;
            g.records += 1;
        }
        for g in groups.iter_mut().filter(|g| g.records > 0) {
            out.push(self.seal(g)?);
        }
        Ok(())
    }

    /// The message for `g`'s events; `g` is left empty.
    fn seal(&self, g: &mut Group) -> Result<Outgoing, Fault> {
        let records = std::mem::take(&mut g.records);
        // The head after the events (protobuf fields may come in any order): the events
        // are not copied.
        let mut package = std::mem::take(&mut g.events);
        package::write_head(&mut package, &self.pipeline, &g.schema, &g.table);
        Ok(Outgoing {
            route: g.route.clone(),
            id: format!("{}..{}", g.first, g.last),
            key: format!("{}.{}", g.schema, g.table).into_bytes(),
            op: None,
            schema: g.schema.clone(),
            table: g.table.clone(),
            commit_lsn: g.last.commit_lsn.to_string(),
            records,
            payload: self.compress(package)?,
        })
    }

    fn compress(&self, bytes: Vec<u8>) -> Result<Vec<u8>, Fault> {
        match self.compression {
            Compression::None => Ok(bytes),
            // Level 3, zstd's default: most of the ratio at a fraction of the CPU.
            Compression::Zstd => zstd::bulk::compress(&bytes, 3)
                .map_err(|e| Fault::fatal("zstd could not compress a message").caused_by(e)),
        }
    }

    /// The headers every message carries, as (name, value).
    pub fn headers<'a>(&self, m: &'a Outgoing) -> Vec<(&'static str, std::borrow::Cow<'a, str>)> {
        let mut h: Vec<(&'static str, std::borrow::Cow<'a, str>)> = vec![
            ("Sluice-Id", m.id.as_str().into()),
            ("Sluice-Schema", m.schema.as_str().into()),
            ("Sluice-Table", m.table.as_str().into()),
            ("Sluice-Commit-Lsn", m.commit_lsn.as_str().into()),
            ("Sluice-Encoding", self.encoding.as_str().into()),
        ];
        if let Some(op) = m.op {
            h.push(("Sluice-Op", op.as_str().into()));
        } else {
            h.push(("Sluice-Records", m.records.to_string().into()));
        }
        if self.compression == Compression::Zstd {
            h.push(("Sluice-Compression", "zstd".into()));
        }
        h
    }
}

/// A failed check as a finding: a server that is down is waited out (a warning); what
/// only the operator can fix blocks the start, with its fix.
pub fn fault_finding(name: &str, what: &str, f: &Fault) -> Finding {
    if f.is_transient() {
        Finding::warn(
            crate::finding_for(name, format_args!("{what}: {f}")),
            "start the server or correct the sink's url; the sink retries until it answers",
        )
    } else {
        Finding::fail(
            crate::finding_for(name, format_args!("{what}: {}", f.message)),
            f.fix.clone().unwrap_or_default(),
        )
    }
}

/// The template's columns against each table the sink takes: a table that lacks one
/// would route every record to `_`, so `sluice check` refuses it.
pub fn column_findings(
    name: &str,
    route: Option<&Route>,
    ctx: &crate::Context<'_>,
) -> Vec<Finding> {
    let Some(route) = route else {
        return Vec::new();
    };
    let wanted: Vec<&str> = route.columns().collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for table in ctx.tables {
        let Some(cols) = ctx.columns.get(table) else {
            continue;
        };
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|w| !cols.iter().any(|c| c.name == *w))
            .collect();
        if !missing.is_empty() {
            out.push(Finding::fail(
                crate::finding_for(
                    name,
                    format_args!("the route uses column {missing:?}, which table {table} does not have"),
                ),
                "use columns every table of the sink has, or list in the sink's tables only those that have them",
            ));
        }
    }
    out
}

fn unreadable(r: &Record<'_>, e: serde_json::Error) -> Fault {
    Fault::fatal(format!(
        "record {} in the log is not a change envelope",
        r.id
    ))
    .caused_by(e)
}

/// The settings every broker sink's configuration has for its encoding, checked alike.
pub fn validate_packing(name: &str, encoding: Encoding, packing: &Packing, errs: &mut Vec<String>) {
    if encoding != Encoding::Package {
        return;
    }
    if packing.max_records == 0 {
        errs.push(crate::finding_for(
            name,
            "package_max_records must be at least 1",
        ));
    }
    if packing.max_bytes < 1024 {
        errs.push(crate::finding_for(
            name,
            "package_max_bytes must be at least 1024",
        ));
    }
    if packing.max_wait > Duration::from_secs(60) {
        errs.push(crate::finding_for(
            name,
            "package_max_wait_ms is over a minute: records would wait that long before they leave",
        ));
    }
}

/// The read window for a broker sink: packages wait up to `max_wait` for more records.
pub fn window(encoding: Encoding, packing: &Packing) -> (usize, Option<crate::Window>) {
    match encoding {
        Encoding::Json => (1000, None),
        Encoding::Package => (
            packing.max_records.max(1),
            Some(crate::Window {
                max_bytes: packing.max_bytes,
                linger: packing.max_wait,
            }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::Package;
    use crate::route::Flavor;
    use prost::Message as _;

    /// A batch read back from a real log holding `records`.
    fn batch(records: &[sluice_core::ChangeRecord]) -> ((), RecordBatch) {
        let mut b = RecordBatch::default();
        for (i, r) in records.iter().enumerate() {
            b.push(
                i as u64,
                &sluice_core::RecordHead::of(r),
                r.to_json().as_bytes(),
            );
        }
        ((), b)
    }

    fn rec(lsn: u64, ord: u64, table: &str, id: i64) -> sluice_core::ChangeRecord {
        sluice_core::ChangeRecord {
            id: ChangeId {
                commit_lsn: sluice_core::Lsn(lsn),
                ordinal: ord,
            },
            op: Op::Insert,
            schema: "public".into(),
            table: table.into(),
            key: Some(format!("{{\"id\":{id}}}")),
            before: None,
            after: Some(format!(
                "{{\"id\":{id},\"amount\":\"1.50\",\"at\":\"2026-01-01T00:00:00Z\"}}"
            )),
            unchanged_toast: Vec::new(),
            lsn: sluice_core::Lsn(lsn),
            commit_lsn: sluice_core::Lsn(lsn),
            commit_ts_micros: 0,
            xid: 1,
            message: None,
            old_key: None,
        }
    }

    fn encoder(encoding: Encoding, packing: Packing, columns: &Columns) -> Encoder {
        Encoder::new(EncoderSettings {
            pipeline: "p",
            route: Route::parse("s.{table}", Flavor::Nats).unwrap(),
            encoding,
            compression: Compression::Zstd,
            packing,
            keyed: true,
            columns,
        })
    }

    #[test]
    fn packages_keep_tables_apart_and_are_cut_at_the_limit() {
        let records = vec![
            rec(10, 0, "a", 1),
            rec(10, 1, "b", 2),
            rec(10, 2, "a", 3),
            rec(20, 0, "a", 4),
        ];
        let (_dir, b) = batch(&records);
        let mut columns = Columns::new();
        columns.insert(
            "public.a".into(),
            vec![
                sluice_core::ColumnInfo {
                    name: "id".into(),
                    kind: sluice_core::ValueKind::Int,
                    ..Default::default()
                },
                sluice_core::ColumnInfo {
                    name: "amount".into(),
                    kind: sluice_core::ValueKind::Decimal,
                    ..Default::default()
                },
                sluice_core::ColumnInfo {
                    name: "at".into(),
                    kind: sluice_core::ValueKind::Timestamp,
                    ..Default::default()
                },
            ],
        );
        let packing = Packing {
            max_records: 2,
            max_bytes: 1 << 20,
            max_wait: Duration::ZERO,
        };
        let mut enc = encoder(Encoding::Package, packing, &columns);
        let mut out = Vec::new();
        enc.encode(&b, &mut out).unwrap();
        let tables: Vec<(&str, usize)> =
            out.iter().map(|m| (m.route.as_str(), m.records)).collect();
        assert_eq!(tables, [("s.a", 2), ("s.a", 1), ("s.b", 1)]);
        assert_eq!(
            out[0].id,
            "000000000000000A-000000..000000000000000A-000002"
        );
        let bytes = zstd::bulk::decompress(&out[0].payload, 1 << 20).unwrap();
        let p = Package::decode(bytes.as_slice()).unwrap();
        assert_eq!((p.table.as_str(), p.events.len()), ("a", 2));
        let ids: Vec<i64> = p
            .events
            .iter()
            .map(|e| match e.after[0].value.as_ref().unwrap().kind {
                Some(package::Kind::Int(i)) => i,
                ref other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, [1, 3]);
        assert_eq!(
            p.events[0].after[1].value.as_ref().unwrap().kind,
            Some(package::Kind::Decimal("1.50".into()))
        );
        assert_eq!(
            p.events[0].after[2].value.as_ref().unwrap().kind,
            Some(package::Kind::TimestampMicros(1_767_225_600_000_000))
        );
        let h = enc.headers(&out[0]);
        assert!(h.contains(&("Sluice-Encoding", "package".into())));
        assert!(h.contains(&("Sluice-Compression", "zstd".into())));
    }

    #[test]
    fn a_keys_records_keep_their_order_when_the_route_changes_between_them() {
        let mut records = vec![rec(10, 0, "a", 1), rec(10, 1, "a", 1), rec(10, 2, "a", 1)];
        records[1].op = Op::Delete;
        let (_dir, b) = batch(&records);
        let packing = Packing {
            max_records: 100,
            max_bytes: 1 << 20,
            max_wait: Duration::ZERO,
        };
        let mut enc = Encoder::new(EncoderSettings {
            pipeline: "p",
            route: Route::parse("s.{table}.{op}", Flavor::Nats).unwrap(),
            encoding: Encoding::Package,
            compression: Compression::None,
            packing,
            keyed: false,
            columns: &Columns::new(),
        });
        let mut out = Vec::new();
        enc.encode(&b, &mut out).unwrap();
        let routes: Vec<(&str, usize)> =
            out.iter().map(|m| (m.route.as_str(), m.records)).collect();
        assert_eq!(
            routes,
            [("s.a.insert", 1), ("s.a.delete", 1), ("s.a.insert", 1)]
        );
    }

    #[test]
    fn json_messages_carry_the_record_and_its_key() {
        let records = vec![rec(10, 0, "a", 1)];
        let (_dir, b) = batch(&records);
        let packing = Packing {
            max_records: 2,
            max_bytes: 1 << 20,
            max_wait: Duration::ZERO,
        };
        let mut enc = encoder(Encoding::Json, packing, &Columns::new());
        let mut out = Vec::new();
        enc.encode(&b, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key, b"{\"id\":1}");
        assert_eq!(out[0].id, "000000000000000A-000000");
        let json = zstd::bulk::decompress(&out[0].payload, 1 << 20).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["after"]["amount"], "1.50");
        // A route that reads the row takes the key from that same read: the same bytes.
        let mut by_column = Encoder::new(EncoderSettings {
            pipeline: "p",
            route: Route::parse("s.{id}", Flavor::Kafka).unwrap(),
            encoding: Encoding::Json,
            compression: Compression::None,
            packing,
            keyed: true,
            columns: &Columns::new(),
        });
        let mut again = Vec::new();
        by_column.encode(&b, &mut again).unwrap();
        assert_eq!(
            (again[0].route.as_str(), &again[0].key),
            ("s.1", &out[0].key)
        );
    }
}
