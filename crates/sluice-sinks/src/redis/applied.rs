//! The sink's high-water mark: the last record applied, written in the same `MULTI`/`EXEC`
//! as the writes it covers, and the one-time migration from the per-row id hashes of
//! earlier versions. See the parent module's invariants.

use std::str::FromStr;

use redis::aio::ConnectionManager;
use sluice_core::{ChangeId, Fault, Lsn};
use sluice_log::Record;
use tracing::info;

use super::classify;

/// Where the sink is: the id and log offset of the last record applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Applied {
    pub id: ChangeId,
    pub offset: u64,
}

impl Applied {
    pub fn of(r: &Record<'_>) -> Applied {
        Applied {
            id: r.id,
            offset: r.offset,
        }
    }

    /// Whether `r` is this record or one before it. Within one log, commit LSNs never
    /// decrease and offsets always increase, so `(commit LSN, offset)` orders records as
    /// the log does, also where ordinals do not (a snapshot's workers take ordinals in
    /// blocks, and their batches interleave). A record of an older commit is covered
    /// whatever its offset: after the log was started over, it is an old change.
    pub fn covers(&self, r: &Record<'_>) -> bool {
        (r.id.commit_lsn, r.offset) <= (self.id.commit_lsn, self.offset)
    }

    /// The stored form: `<id> <offset>`.
    pub fn encode(&self) -> String {
        format!("{} {}", self.id, self.offset)
    }

    pub fn decode(s: &str) -> Option<Applied> {
        let (id, offset) = s.trim().split_once(' ')?;
        Some(Applied {
            id: ChangeId::from_str(id).ok()?,
            offset: offset.parse().ok()?,
        })
    }
}

/// Reads the mark; `None` when the sink has applied nothing (or it is unreadable, which
/// only a person editing the key can cause: it is logged and the sink starts over from
/// its cursor).
pub(super) async fn read(
    conn: &mut ConnectionManager,
    key: &str,
) -> Result<Option<Applied>, Fault> {
    let text: Option<String> = redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(classify)?;
    let applied = text.as_deref().and_then(Applied::decode);
    if text.is_some() && applied.is_none() {
        tracing::warn!(
            key,
            "redis: the sink's high-water mark is unreadable; it is ignored and written again"
        );
    }
    Ok(applied)
}

/// Per-row id hashes left by an earlier version (`{prefix}sluice:ids:{db}.{schema}.{table}`,
/// field = row key, value = the 32-hex-digit id last written; `\0max` and `\0truncated`
/// for the table). While any of the sink's tables still has one, records of the newest
/// commit they know are checked row by row, so a replay across the upgrade never moves
/// a row back; older commits were applied, newer ones were not.
pub(super) struct Legacy {
    pub hashes: Vec<String>,
    /// The newest id any of them holds, as (commit LSN, ordinal).
    pub floor: (Lsn, u64),
}

/// The 32-hex-digit id form of the earlier versions.
fn parse_fence(s: &str) -> Option<(Lsn, u64)> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let lsn = u64::from_str_radix(&s[..16], 16).ok()?;
    let ordinal = u64::from_str_radix(&s[16..], 16).ok()?;
    Some((Lsn(lsn), ordinal))
}

/// Finds the id hashes of `candidates` that exist, and the newest id they hold.
pub(super) async fn legacy(
    conn: &mut ConnectionManager,
    candidates: &[String],
) -> Result<Option<Legacy>, Fault> {
    let mut hashes = Vec::new();
    let mut floor = None;
    for key in candidates {
        let exists: bool = redis::cmd("EXISTS")
            .arg(key)
            .query_async(conn)
            .await
            .map_err(classify)?;
        if !exists {
            continue;
        }
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<(Vec<u8>, String)>) = redis::cmd("HSCAN")
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(10_000)
                .query_async(conn)
                .await
                .map_err(classify)?;
            for (_, id) in page {
                if let Some(id) = parse_fence(&id) {
                    floor = floor.max(Some(id));
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        hashes.push(key.clone());
    }
    Ok(floor.map(|floor| {
        info!(hashes = hashes.len(), "redis: found per-row id hashes of an earlier version; they are checked until the stream passes them, then removed");
        Legacy { hashes, floor }
    }))
}

/// Whether a legacy hash says `r` (under `row`, in the table's hash `hash`) was applied
/// already: its row id or its table's truncate is at least as new.
pub(super) async fn legacy_applied(
    conn: &mut ConnectionManager,
    hash: &str,
    row: &str,
    r: &Record<'_>,
) -> Result<bool, Fault> {
    let (stored, truncated): (Option<String>, Option<String>) = redis::pipe()
        .cmd("HGET")
        .arg(hash)
        .arg(row)
        .cmd("HGET")
        .arg(hash)
        .arg("\0truncated")
        .query_async(conn)
        .await
        .map_err(classify)?;
    let id = (r.id.commit_lsn, r.id.ordinal);
    Ok([stored, truncated]
        .iter()
        .flatten()
        .filter_map(|s| parse_fence(s))
        .any(|s| s >= id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_round_trips_and_garbage_is_none() {
        let a = Applied {
            id: ChangeId {
                commit_lsn: Lsn(0x16B37A0),
                ordinal: 1_234_567,
            },
            offset: 42,
        };
        assert_eq!(Applied::decode(&a.encode()), Some(a));
        for bad in [
            "",
            "x",
            "00000000016B37A0-000003",
            "00000000016B37A0-000003 x",
        ] {
            assert_eq!(Applied::decode(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_fence(&format!("{:016X}{:016X}", 5, 7)),
            Some((Lsn(5), 7))
        );
        assert_eq!(parse_fence("short"), None);
    }

    fn read_at(lsn: u64, ordinal: u64, offset: u64) -> Record<'static> {
        Record {
            offset,
            id: ChangeId {
                commit_lsn: Lsn(lsn),
                ordinal,
            },
            commit_ts_micros: 0,
            op: sluice_core::Op::Read,
            schema: "public",
            table: "t",
            json: b"{}",
        }
    }

    #[test]
    fn the_mark_follows_the_log_not_the_ordinals_of_a_snapshot() {
        // Two snapshot workers' batches interleave: ordinals 1025.. are logged after
        // 2049.., and must still be applied.
        let applied = Applied::of(&read_at(100, 2049, 10));
        assert!(!applied.covers(&read_at(100, 1025, 11)));
        assert!(applied.covers(&read_at(100, 2049, 10)));
        assert!(applied.covers(&read_at(100, 3000, 9)));
        // An older commit is covered wherever it is; a newer one never.
        assert!(applied.covers(&read_at(99, 1, 500)));
        assert!(!applied.covers(&read_at(101, 1, 0)));
    }
}
