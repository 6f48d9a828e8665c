//! The audit log: one line of JSON per management action (who, from where, what, on
//! what, when, with what answer) in `<data_dir>/audit.jsonl`, readable through the API.
//!
//! Invariants:
//! - An event names its token by id, never by secret, and holds no request body, so no
//!   secret or row value is ever written here.
//! - Each event is appended and synced before the next is written (the file is 0600);
//!   a torn last line after a crash is skipped when reading, never an error.
//! - The file is bounded: past [`MAX_BYTES`] it becomes `audit.jsonl.1` (replacing the
//!   one before) and a new file starts, so the log keeps between one and two files' worth.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Size past which the file is rotated.
pub const MAX_BYTES: u64 = 8 << 20;

/// One management action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The id of the token used (absent when none was accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The caller's address.
    pub from: String,
    /// The method and route, e.g. `POST /v1/pipelines/{pipeline}/pause`.
    pub action: String,
    /// What it acted on: the pipeline, token or sink the path or the answer names.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// The HTTP status of the answer.
    pub status: u16,
}

/// The audit log of a server's data dir.
pub struct Audit {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
}

impl Audit {
    pub fn open(data_dir: &Path) -> std::io::Result<Audit> {
        let path = data_dir.join("audit.jsonl");
        let mut file = open_append(&path)?;
        // A line torn by a crash is ended, so the next event starts a line of its own.
        let text = std::fs::read(&path)?;
        if text.last().is_some_and(|&b| b != b'\n') {
            file.write_all(b"\n")?;
        }
        Ok(Audit {
            file: Mutex::new(file),
            path,
        })
    }

    /// Appends `event` and syncs it.
    pub fn record(&self, event: &AuditEvent) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.metadata()?.len() + line.len() as u64 > MAX_BYTES {
            std::fs::rename(&self.path, self.path.with_extension("jsonl.1"))?;
            *file = open_append(&self.path)?;
        }
        file.write_all(&line)?;
        file.sync_data()
    }

    /// The latest `limit` events, newest first.
    pub fn recent(&self, limit: usize) -> std::io::Result<Vec<AuditEvent>> {
        // Held so no rotation happens between the two reads.
        let _file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(limit.min(1024));
        for path in [self.path.clone(), self.path.with_extension("jsonl.1")] {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for line in text.lines().rev() {
                if out.len() == limit {
                    return Ok(out);
                }
                if let Ok(e) = serde_json::from_str(line) {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: i64) -> AuditEvent {
        AuditEvent {
            time_ms: n,
            token: Some("t1".into()),
            from: "127.0.0.1".into(),
            action: "POST /v1/pipelines".into(),
            target: format!("p{n}"),
            status: 201,
        }
    }

    #[test]
    fn events_come_back_newest_first_across_a_rotation_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path()).unwrap();
        for n in 0..3 {
            audit.record(&event(n)).unwrap();
        }
        // A crash in the middle of a line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("audit.jsonl"))
            .unwrap()
            .write_all(b"{\"time_ms\":")
            .unwrap();
        let got = audit.recent(10).unwrap();
        assert_eq!(got, vec![event(2), event(1), event(0)]);
        assert_eq!(audit.recent(1).unwrap(), vec![event(2)]);
        // Reopened after the crash, the next event is whole.
        let audit = Audit::open(dir.path()).unwrap();
        audit.record(&event(9)).unwrap();
        assert_eq!(audit.recent(2).unwrap(), vec![event(9), event(2)]);
        // Rotation: the old file is still read.
        std::fs::rename(
            dir.path().join("audit.jsonl"),
            dir.path().join("audit.jsonl.1"),
        )
        .unwrap();
        let audit = Audit::open(dir.path()).unwrap();
        audit.record(&event(3)).unwrap();
        assert_eq!(audit.recent(2).unwrap(), vec![event(3), event(9)]);
    }
}
