//! The streaming replication sub-protocol on top of a walsender connection: system
//! identification, slot creation, START_REPLICATION, and the CopyData messages that flow
//! inside it (XLogData and keepalives in, standby status updates out).
//!
//! Invariant: the flush LSN sent in a status update is whatever the caller passes; this
//! module never invents progress.

use bytes::{Buf, Bytes};
use sluice_core::Lsn;

use crate::error::PgError;
use crate::wire::{quote_ident, Connection, CopyMessage};

/// Answer to IDENTIFY_SYSTEM.
#[derive(Debug, Clone)]
pub struct SystemId {
    pub system_id: String,
    pub timeline: u32,
    pub xlogpos: Lsn,
    pub dbname: Option<String>,
}

pub async fn identify_system(conn: &mut Connection) -> Result<SystemId, PgError> {
    let rows = conn.query("IDENTIFY_SYSTEM").await?;
    let row = rows
        .first()
        .ok_or_else(|| PgError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
    let col = |i: usize| row.get(i).cloned().flatten();
    Ok(SystemId {
        system_id: col(0).unwrap_or_default(),
        timeline: col(1).and_then(|t| t.parse().ok()).unwrap_or(0),
        xlogpos: col(2).and_then(|l| l.parse().ok()).unwrap_or_default(),
        dbname: col(3),
    })
}

/// Creates a logical slot with the pgoutput plugin; returns its consistent point.
pub async fn create_slot(conn: &mut Connection, slot: &str) -> Result<Lsn, PgError> {
    let rows = conn
        .query(&format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
            quote_ident(slot)
        ))
        .await?;
    rows.first()
        .and_then(|r| r.get(1).cloned().flatten())
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| {
            PgError::Protocol("CREATE_REPLICATION_SLOT returned no consistent point".into())
        })
}

/// Creates a logical slot and exports the snapshot it starts from; returns the consistent
/// point and the snapshot's name. The snapshot stays importable (`SET TRANSACTION
/// SNAPSHOT`) only until the next command on `conn`.
pub async fn create_slot_exporting(
    conn: &mut Connection,
    slot: &str,
) -> Result<(Lsn, String), PgError> {
    let rows = conn
        .query(&format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
            quote_ident(slot)
        ))
        .await?;
    let row = rows.first();
    let at = row
        .and_then(|r| r.get(1).cloned().flatten())
        .and_then(|l| l.parse().ok());
    let snapshot = row.and_then(|r| r.get(2).cloned().flatten());
    match (at, snapshot) {
        (Some(at), Some(snapshot)) => Ok((at, snapshot)),
        _ => Err(PgError::Protocol(
            "CREATE_REPLICATION_SLOT returned no consistent point or snapshot".into(),
        )),
    }
}

/// What to ask of pgoutput.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub slot: String,
    pub publication: String,
    /// 1, or 2 (PostgreSQL 14+).
    pub proto_version: u32,
    pub messages: bool,
    /// Stream in-progress transactions (protocol 2 only).
    pub streaming: bool,
    /// Where to start: transactions that committed before it are not sent. The server
    /// starts from the slot's confirmed position when that is later (`Lsn::ZERO`: always).
    pub from: Lsn,
}

/// Starts streaming from `opts.from` or the slot's confirmed position, whichever is later.
pub async fn start_replication(conn: &mut Connection, opts: &StartOptions) -> Result<(), PgError> {
    // publication_names is a string holding a list of identifiers; the replication
    // command scanner knows only plain '' literals.
    let publications = quote_ident(&opts.publication).replace('\'', "''");
    let mut sql = format!(
        "START_REPLICATION SLOT {} LOGICAL {} (proto_version '{}', publication_names '{publications}'",
        quote_ident(&opts.slot),
        opts.from,
        opts.proto_version,
    );
    if opts.messages {
        sql.push_str(", messages 'true'");
    }
    if opts.proto_version >= 2 && opts.streaming {
        sql.push_str(", streaming 'on'");
    }
    sql.push(')');
    conn.start_copy_both(&sql).await
}

/// One message of the replication stream.
#[derive(Debug)]
pub enum StreamMessage {
    /// A pgoutput message starting at `wal_start`.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        data: Bytes,
    },
    /// The server's position; `reply` asks for a status update now.
    Keepalive { wal_end: Lsn, reply: bool },
    /// The server ended the stream.
    End,
    /// A message type this client does not know; logged and skipped.
    Unknown(u8),
}

/// Parses one CopyData payload of the replication stream.
pub fn parse_stream_message(msg: CopyMessage) -> Result<StreamMessage, PgError> {
    let mut data = match msg {
        CopyMessage::Done => return Ok(StreamMessage::End),
        CopyMessage::Data(d) => d,
    };
    let short = || PgError::Protocol("truncated replication message".into());
    match data.first() {
        Some(b'w') if data.len() >= 25 => {
            data.advance(1);
            let wal_start = Lsn(data.get_u64());
            let wal_end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            Ok(StreamMessage::XLogData {
                wal_start,
                wal_end,
                data,
            })
        }
        Some(b'k') if data.len() >= 18 => {
            data.advance(1);
            let wal_end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            Ok(StreamMessage::Keepalive {
                wal_end,
                reply: data.get_u8() == 1,
            })
        }
        Some(b'w') | Some(b'k') => Err(short()),
        Some(other) => Ok(StreamMessage::Unknown(*other)),
        None => Err(short()),
    }
}

/// Sends a standby status update.
pub async fn send_status(
    conn: &mut Connection,
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    reply: bool,
) -> Result<(), PgError> {
    let mut msg = [0u8; 34];
    msg[0] = b'r';
    msg[1..9].copy_from_slice(&write.0.to_be_bytes());
    msg[9..17].copy_from_slice(&flush.0.to_be_bytes());
    msg[17..25].copy_from_slice(&apply.0.to_be_bytes());
    msg[25..33].copy_from_slice(&pg_now_micros().to_be_bytes());
    msg[33] = reply as u8;
    conn.send_copy(&msg).await
}

/// Microseconds since 2000-01-01, PostgreSQL's epoch.
pub fn pg_now_micros() -> i64 {
    sluice_core::time::pg_now_micros()
}
