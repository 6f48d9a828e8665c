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
//! - Requests refused without an accepted token (anyone who can reach the port can send
//!   them) never push real actions out: they are counted per address and minute, at
//!   most [`MAX_ADDRESSES`] addresses a minute (the rest counted together), and the counts
//!   go to a file of their own, `refusals.jsonl`, bounded the same way.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Size past which a file is rotated.
pub const MAX_BYTES: u64 = 8 << 20;
/// Addresses whose refusals are counted apart in one minute; the rest share one count.
pub const MAX_ADDRESSES: usize = 256;
/// The span over which refusals from one address are counted as one event.
pub const REFUSAL_WINDOW_MS: i64 = 60_000;
/// The address under which refusals beyond [`MAX_ADDRESSES`] are counted.
pub const OTHER_ADDRESSES: &str = "other";

/// One management action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// Milliseconds since the Unix epoch (for counted refusals: the first of them).
    pub time_ms: i64,
    /// The id of the token used (absent when none was accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The caller's address (`other` for refusals counted together).
    pub from: String,
    /// The method and route, e.g. `POST /v1/pipelines/{pipeline}/pause` (for counted
    /// refusals: the first one's).
    pub action: String,
    /// What it acted on: the pipeline, token or sink the path or the answer names.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// The HTTP status of the answer.
    pub status: u16,
    /// For refusals without a token: how many came from this address in the minute
    /// from `time_ms` (they are recorded as one event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// The audit log of a server's data dir.
pub struct Audit {
    actions: Journal,
    refusals: Journal,
    tally: Mutex<Tally>,
}

/// Refusals of the current window, by address.
#[derive(Default)]
struct Tally {
    started_ms: i64,
    by_address: HashMap<String, AuditEvent>,
}

/// One bounded file of events (and the one rotated out before it).
struct Journal {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
}

impl Journal {
    fn open(path: PathBuf) -> std::io::Result<Journal> {
        let mut file = open_append(&path)?;
        // A line torn by a crash is ended, so the next event starts a line of its own.
        let text = std::fs::read(&path)?;
        if text.last().is_some_and(|&b| b != b'\n') {
            file.write_all(b"\n")?;
        }
        Ok(Journal {
            file: Mutex::new(file),
            path,
        })
    }

    fn append(&self, events: &[AuditEvent]) -> std::io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::new();
        for e in events {
            serde_json::to_writer(&mut lines, e).map_err(std::io::Error::other)?;
            lines.push(b'\n');
        }
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.metadata()?.len() + lines.len() as u64 > MAX_BYTES {
            std::fs::rename(&self.path, self.path.with_extension("jsonl.1"))?;
            *file = open_append(&self.path)?;
        }
        file.write_all(&lines)?;
        file.sync_data()
    }

    /// The latest `limit` events, newest first.
    fn recent(&self, limit: usize) -> std::io::Result<Vec<AuditEvent>> {
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

impl Audit {
    pub fn open(data_dir: &Path) -> std::io::Result<Audit> {
        Ok(Audit {
            actions: Journal::open(data_dir.join("audit.jsonl"))?,
            refusals: Journal::open(data_dir.join("refusals.jsonl"))?,
            tally: Mutex::default(),
        })
    }

    /// Appends `event` and syncs it.
    pub fn record(&self, event: &AuditEvent) -> std::io::Result<()> {
        self.actions.append(std::slice::from_ref(event))
    }

    /// Counts a request refused without an accepted token. A window that is over is
    /// written first.
    pub fn refused(&self, event: AuditEvent) -> std::io::Result<()> {
        self.flush_refusals(event.time_ms)?;
        let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        if tally.by_address.is_empty() {
            tally.started_ms = event.time_ms;
        }
        let from = if tally.by_address.len() < MAX_ADDRESSES
            || tally.by_address.contains_key(&event.from)
        {
            event.from.clone()
        } else {
            OTHER_ADDRESSES.to_owned()
        };
        let counted = tally.by_address.entry(from.clone()).or_insert(AuditEvent {
            from,
            count: Some(0),
            ..event
        });
        counted.count = Some(counted.count.unwrap_or(0) + 1);
        Ok(())
    }

    /// Writes the counts of a window that ended before `now_ms`.
    pub fn flush_refusals(&self, now_ms: i64) -> std::io::Result<()> {
        let done: Vec<AuditEvent> = {
            let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
            if tally.by_address.is_empty() || now_ms - tally.started_ms < REFUSAL_WINDOW_MS {
                return Ok(());
            }
            let mut done: Vec<AuditEvent> = tally.by_address.drain().map(|(_, e)| e).collect();
            done.sort_by_key(|e| e.time_ms);
            done
        };
        self.refusals.append(&done)
    }

    /// The latest `limit` events, actions and counted refusals (those of the current
    /// window included), newest first.
    pub fn recent(&self, limit: usize) -> std::io::Result<Vec<AuditEvent>> {
        let actions = self.actions.recent(limit)?;
        let mut refusals = self.refusals.recent(limit)?;
        refusals.extend(
            self.tally
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .by_address
                .values()
                .cloned(),
        );
        refusals.sort_by_key(|e| std::cmp::Reverse(e.time_ms));
        // Merged by time; the actions keep the order they were written in.
        let mut out = Vec::with_capacity(limit.min(actions.len() + refusals.len()));
        let (mut a, mut r) = (
            actions.into_iter().peekable(),
            refusals.into_iter().peekable(),
        );
        while out.len() < limit {
            let take_refusal = match (a.peek(), r.peek()) {
                (Some(x), Some(y)) => y.time_ms > x.time_ms,
                (None, Some(_)) => true,
                (_, None) => false,
            };
            match if take_refusal { r.next() } else { a.next() } {
                Some(e) => out.push(e),
                None => break,
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
            count: None,
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

    #[test]
    fn refusals_without_a_token_are_counted_apart_and_never_push_actions_out() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path()).unwrap();
        audit.record(&event(1)).unwrap();
        let refusal = |from: String, time_ms: i64| AuditEvent {
            time_ms,
            token: None,
            from,
            action: "POST /v1/pipelines".into(),
            target: String::new(),
            status: 401,
            count: None,
        };
        // A flood from more addresses than are counted apart, within one minute.
        for n in 0..(MAX_ADDRESSES as i64 + 50) {
            for _ in 0..20 {
                audit
                    .refused(refusal(format!("10.0.{}.{}", n / 250, n % 250), 1000 + n))
                    .unwrap();
            }
        }
        // The minute is over: one event per address, the rest counted together.
        audit
            .refused(refusal("10.9.9.9".into(), 1000 + REFUSAL_WINDOW_MS))
            .unwrap();
        let written = std::fs::read_to_string(dir.path().join("refusals.jsonl")).unwrap();
        assert_eq!(written.lines().count(), MAX_ADDRESSES + 1);
        let other: AuditEvent = written
            .lines()
            .map(|l| serde_json::from_str::<AuditEvent>(l).unwrap())
            .find(|e| e.from == OTHER_ADDRESSES)
            .unwrap();
        assert_eq!(other.count, Some(50 * 20));
        // The action is still there, and the file of actions holds only it.
        let actions = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        assert_eq!(actions.lines().count(), 1);
        let all = audit.recent(10_000).unwrap();
        assert!(all.contains(&event(1)));
        // The current window's count is shown before it is written.
        assert!(all
            .iter()
            .any(|e| e.from == "10.9.9.9" && e.count == Some(1)));
    }
}
