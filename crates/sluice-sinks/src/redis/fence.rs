//! The table fences of a batch: what each table's id hash says (`\0max`, whether it keeps
//! one), read under `WATCH`, and the fast path that writes a change newer than `\0max`
//! as plain commands. See the parent module's invariants.

use std::collections::HashMap;

use redis::aio::ConnectionManager;
use redis::Value;
use sluice_core::Fault;
use tracing::info;

use super::classify;

/// One table's fence during a batch.
#[derive(Debug, Clone, Default)]
pub(super) struct TableFence {
    /// The hash keeps `\0max` (or does not exist yet), so the fast path may be used.
    pub tracked: bool,
    /// `\0max` as read, raised by every write queued since.
    pub max: Option<String>,
    /// Raised by a write of this batch: `\0max` is written at its end.
    pub raised: bool,
}

impl TableFence {
    /// Whether a change with this id may take the fast path.
    pub fn allows(&self, id: &str) -> bool {
        self.tracked && self.max.as_deref().is_none_or(|m| id > m)
    }

    /// Records a write of `id` queued for the table.
    pub fn raise(&mut self, id: &str) {
        if self.max.as_deref().is_none_or(|m| id > m) {
            self.max = Some(id.to_owned());
            self.raised = true;
        }
    }
}

/// The fences of a batch's tables, by id hash key.
pub(super) type Fences = HashMap<String, TableFence>;

/// Watches the id hashes and reads their fences (a pipeline: one round trip). A hash
/// written before `\0max` existed gets it first (one `HSCAN` pass).
pub(super) async fn watch(conn: &mut ConnectionManager, keys: &[String]) -> Result<Fences, Fault> {
    let mut fences = read(conn, keys).await?;
    let legacy: Vec<String> = fences
        .iter()
        .filter(|(_, f)| !f.tracked)
        .map(|(k, _)| k.clone())
        .collect();
    if !legacy.is_empty() {
        for k in &legacy {
            record_max(conn, k).await?;
        }
        fences = read(conn, keys).await?;
    }
    Ok(fences)
}

async fn read(conn: &mut ConnectionManager, keys: &[String]) -> Result<Fences, Fault> {
    let mut pipe = redis::pipe();
    pipe.cmd("WATCH").arg(keys).ignore();
    for k in keys {
        pipe.cmd("HGET").arg(k).arg("\0max");
        pipe.cmd("EXISTS").arg(k);
    }
    let values: Vec<Value> = pipe.query_async(conn).await.map_err(classify)?;
    let mut fences = Fences::new();
    for (k, pair) in keys.iter().zip(values.chunks(2)) {
        let max = match &pair[0] {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        };
        let exists = matches!(pair.get(1), Some(Value::Int(n)) if *n > 0);
        fences.insert(
            k.clone(),
            TableFence {
                tracked: max.is_some() || !exists,
                max,
                raised: false,
            },
        );
    }
    Ok(fences)
}

/// Finds the newest id in a hash written before `\0max` existed and records it, unless
/// the hash changed meanwhile (then the next batch tries again).
async fn record_max(conn: &mut ConnectionManager, key: &str) -> Result<(), Fault> {
    redis::cmd("WATCH")
        .arg(key)
        .query_async::<()>(conn)
        .await
        .map_err(classify)?;
    let mut cursor = 0u64;
    let mut max = String::new();
    let mut fields = 0u64;
    loop {
        let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
            .arg(key)
            .arg(cursor)
            .arg("COUNT")
            .arg(10_000)
            .query_async(conn)
            .await
            .map_err(classify)?;
        for (field, id) in page {
            fields += 1;
            if field != "\0max" && id > max {
                max = id;
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let done: Option<Vec<Value>> = redis::pipe()
        .atomic()
        .cmd("HSETNX")
        .arg(key)
        .arg("\0max")
        .arg(&max)
        .query_async(conn)
        .await
        .map_err(classify)?;
    if done.is_some() {
        info!(hash = key, fields, "redis: recorded the newest id of an id hash written by an earlier version; its changes take the fast path from now on");
    }
    Ok(())
}
