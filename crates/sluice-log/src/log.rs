//! The segment files, the writer thread and the deletion rule.
//!
//! On disk: `dir/<first offset, 20 digits>.seg`, each a sequence of frames
//! ([`crate::frame`]). A record's offset is its position in the whole log, counted from 0
//! across segments; a segment holds the consecutive offsets from the one in its name.
//!
//! Invariants:
//! - Readers see only records that are fsync'd: [`End::next`] moves after the sync, never
//!   before, so an offset once read always names the same record, also after a crash.
//! - Opening cuts a torn or damaged tail of the last segment (a crash mid-write); only
//!   unsynced records can be there, and the source sends them again.
//! - A segment other than the last is deleted only when every durable cursor's
//!   persisted position is past its last record, and it is older than the retention or
//!   the log is over its disk budget. The last segment is never deleted.
//! - Over the budget with nothing deletable, the policy applies: `PauseSource` stops
//!   appending (the source waits: back-pressure), `ShedSink` waits the same way for
//!   `shed_after`, then detaches the cursor that holds the oldest segment, marks it shed
//!   and says so.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sluice_core::{ChangeId, Lsn, Op};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::cursors::CursorStore;
use crate::frame::{self, Decoded, FRAME_HEADER};
use crate::LogError;

/// What to do when the log reaches `max_bytes` and no segment can be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Stop taking changes from the source until sinks catch up (the slot's WAL grows).
    #[default]
    PauseSource,
    /// Detach the slowest sink, mark it for a re-backfill, and keep going.
    ShedSink,
}

/// How the log is kept.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// The disk budget; `None`: unbounded.
    pub max_bytes: Option<u64>,
    pub on_full: FullPolicy,
    /// Segments every cursor has passed are kept this long (for SSE clients resuming
    /// from an older position).
    pub retention: Duration,
    /// `ShedSink`: how long the log may stay over its budget (the source waiting) before
    /// the slowest sink is shed, so a burst that every sink is working through sheds none.
    pub shed_after: Duration,
}

/// The durable end of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct End {
    /// The offset the next record will get; every offset below is durable.
    pub next: u64,
    /// The end LSN of the last transaction whose commit is durable.
    pub durable_lsn: Lsn,
}

#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub base: u64,
    pub path: PathBuf,
    pub bytes: u64,
    /// When it was closed; `None` while it is the one being written.
    pub sealed: Option<SystemTime>,
    /// Every cursor has passed it and its pages were dropped from the page cache (it
    /// stays on disk for its retention).
    pub dropped: bool,
}

pub(crate) struct Inner {
    pub config: LogConfig,
    pub segments: Mutex<VecDeque<Segment>>,
    pub end: watch::Sender<End>,
    pub cursors: Arc<CursorStore>,
    /// Whether appending waits on the disk budget (for metrics and readiness).
    pub paused: std::sync::atomic::AtomicBool,
    /// Set at shutdown: a paused writer stops waiting and writes what it has.
    pub closing: std::sync::atomic::AtomicBool,
    /// The id of the last streamed change in the log when it was opened.
    pub last_change: Option<ChangeId>,
    /// Where the readers are, for dropping the pages they have all passed.
    pub reads: crate::pagecache::ReadMarks,
}

/// A handle on the log; cheap to clone.
#[derive(Clone)]
pub struct Log {
    pub(crate) inner: Arc<Inner>,
}

/// Appends batches; owned by the writer thread.
pub struct Writer {
    log: Log,
    file: File,
    /// Bytes in the active segment.
    len: u64,
    next: u64,
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Log {
    /// Opens (or creates) the log in `config.dir`, repairing a torn tail. Returns the log,
    /// its writer, and the commit LSN of the last record in it (records of earlier
    /// transactions are already here whole).
    pub fn open(config: LogConfig) -> Result<(Log, Writer, Lsn), LogError> {
        let dir = config.dir.clone();
        let io = |what: &str, e: std::io::Error| LogError::io(what, e);
        std::fs::create_dir_all(&dir).map_err(|e| io(&format!("create {}", dir.display()), e))?;
        let cursors = Arc::new(CursorStore::open(&dir.join("cursors.redb"))?);
        let mut bases: Vec<u64> = std::fs::read_dir(&dir)
            .map_err(|e| io(&format!("list {}", dir.display()), e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        let mut segments = VecDeque::new();
        for &base in &bases {
            let path = segment_path(&dir, base);
            let meta = std::fs::metadata(&path).map_err(|e| io(&path.display().to_string(), e))?;
            segments.push_back(Segment {
                base,
                path,
                bytes: meta.len(),
                sealed: Some(meta.modified().unwrap_or_else(|_| SystemTime::now())),
                dropped: false,
            });
        }
        let before_last = segments
            .len()
            .checked_sub(2)
            .map(|i| segments[i].path.clone());
        let mut tail_change = None;
        let (next, len, last_lsn, path) = match segments.back_mut() {
            Some(last) => {
                last.sealed = None;
                let scan = repair(&last.path)?;
                last.bytes = scan.valid;
                let mut last_lsn = scan.last_lsn;
                tail_change = scan.last_change;
                if scan.count == 0 {
                    // Just rolled: the last record is in the segment before.
                    if let Some(prev) = &before_last {
                        last_lsn = repair(prev)?.last_lsn;
                    }
                }
                (
                    last.base + scan.count,
                    scan.valid,
                    last_lsn,
                    last.path.clone(),
                )
            }
            None => {
                // A fresh log starts past every cursor, so no cursor points into the future.
                let base = cursors.max_position();
                let path = segment_path(&dir, base);
                segments.push_back(Segment {
                    base,
                    path: path.clone(),
                    bytes: 0,
                    sealed: None,
                    dropped: false,
                });
                (base, 0, Lsn::ZERO, path)
            }
        };
        let last_change = match tail_change {
            Some(id) => Some(id),
            // The last segment, scanned above, holds none: look in those before it.
            None => last_change(segments.iter().rev().skip(1))?,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path.display().to_string(), e))?;
        sync_dir(&dir).map_err(|e| io(&dir.display().to_string(), e))?;
        let (end, _) = watch::channel(End {
            next,
            durable_lsn: Lsn::ZERO,
        });
        let log = Log {
            inner: Arc::new(Inner {
                config,
                segments: Mutex::new(segments),
                end,
                cursors,
                paused: Default::default(),
                closing: Default::default(),
                last_change,
                reads: Default::default(),
            }),
        };
        info!(dir = %dir.display(), first = log.first(), next, "log: opened");
        let writer = Writer {
            log: log.clone(),
            file,
            len,
            next,
        };
        Ok((log, writer, last_lsn))
    }

    /// The durable end, to watch for new records.
    pub fn end(&self) -> watch::Receiver<End> {
        self.inner.end.subscribe()
    }

    pub fn next_offset(&self) -> u64 {
        self.inner.end.borrow().next
    }

    /// The oldest offset still in the log.
    pub fn first(&self) -> u64 {
        self.inner
            .segments
            .lock()
            .expect("segments lock")
            .front()
            .map_or(0, |s| s.base)
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.inner
            .segments
            .lock()
            .expect("segments lock")
            .iter()
            .map(|s| s.bytes)
            .sum()
    }

    pub fn cursors(&self) -> &Arc<CursorStore> {
        &self.inner.cursors
    }

    /// The id of the last change in the log that is not a snapshot read, as opened: the
    /// source, resending from the slot's confirmed position, skips every change up to it
    /// (the log holds them), so no transaction is logged twice.
    pub fn last_change(&self) -> Option<ChangeId> {
        self.inner.last_change
    }

    /// Whether appending waits for sinks to free space.
    pub fn paused(&self) -> bool {
        self.inner.paused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lets a writer paused on the disk budget finish (at shutdown).
    pub fn closing(&self) {
        self.inner
            .closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn segment_for(&self, offset: u64) -> Option<Segment> {
        let segs = self.inner.segments.lock().expect("segments lock");
        segs.iter().rev().find(|s| s.base <= offset).cloned()
    }

    /// Deletes the segments the rule allows; with `need` bytes over the budget, also
    /// those within retention. Returns the bytes freed.
    fn delete_passed(&self, over_budget: bool) -> u64 {
        let hold = self.inner.cursors.min_persisted();
        let now = SystemTime::now();
        let mut freed = 0;
        let mut segs = self.inner.segments.lock().expect("segments lock");
        while segs.len() > 1 {
            let next_base = segs[1].base;
            let first = &segs[0];
            let old = first.sealed.is_some_and(|t| {
                now.duration_since(t).unwrap_or_default() >= self.inner.config.retention
            });
            if hold.is_some_and(|h| h < next_base) || !(old || over_budget) {
                break;
            }
            match std::fs::remove_file(&first.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(path = %first.path.display(), error = %e, "log: cannot delete a passed segment");
                    break;
                }
            }
            freed += first.bytes;
            segs.pop_front();
        }
        // Sealed segments every cursor has passed stay for their retention, but nobody
        // reads them soon: their pages go back to the kernel for the writer's next ones.
        for i in 0..segs.len().saturating_sub(1) {
            let next_base = segs[i + 1].base;
            let s = &mut segs[i];
            if s.dropped || s.sealed.is_none() || hold.is_some_and(|h| h < next_base) {
                continue;
            }
            if let Ok(f) = std::fs::File::open(&s.path) {
                crate::drop_cached(&f, 0, s.bytes);
            }
            s.dropped = true;
        }
        freed
    }

    fn over_budget(&self) -> bool {
        self.inner
            .config
            .max_bytes
            .is_some_and(|max| self.bytes() >= max)
    }
}

/// What a scan of a segment found.
struct Scan {
    /// Records in its valid prefix.
    count: u64,
    /// Bytes of its valid prefix.
    valid: u64,
    /// The last record's commit LSN.
    last_lsn: Lsn,
    /// The id of its last record that is not a read (snapshot or backfill row).
    last_change: Option<ChangeId>,
}

/// Scans a segment and cuts anything after its valid prefix.
fn repair(path: &Path) -> Result<Scan, LogError> {
    let io = |e: std::io::Error| LogError::io(path.display().to_string(), e);
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io)?;
    let mut scan = Scan {
        count: 0,
        valid: 0,
        last_lsn: Lsn::ZERO,
        last_change: None,
    };
    let mut pos = 0usize;
    loop {
        match frame::check(&bytes[pos..]) {
            Decoded::Frame { len } => {
                if let Ok((head, _)) = frame::parse_body(&bytes[pos + FRAME_HEADER..pos + len]) {
                    scan.last_lsn = head.commit_lsn;
                    if head.op != Op::Read {
                        scan.last_change = Some(ChangeId {
                            commit_lsn: head.commit_lsn,
                            ordinal: head.ordinal,
                        });
                    }
                }
                pos += len;
                scan.count += 1;
            }
            Decoded::Incomplete if pos == bytes.len() => break,
            Decoded::Incomplete | Decoded::Corrupt(_) => {
                warn!(path = %path.display(), valid = pos, cut = bytes.len() - pos, "log: cutting a torn tail (unsynced records; the source sends them again)");
                let f = OpenOptions::new().write(true).open(path).map_err(io)?;
                f.set_len(pos as u64).map_err(io)?;
                f.sync_all().map_err(io)?;
                break;
            }
        }
    }
    scan.valid = pos as u64;
    Ok(scan)
}

/// The id of the last change that is not a read in these segments, newest first (only an
/// initial snapshot fills whole segments with reads, so this stops early). They are
/// whole: only the last segment can have a torn tail, and it was repaired first.
fn last_change<'a>(
    newest_first: impl Iterator<Item = &'a Segment>,
) -> Result<Option<ChangeId>, LogError> {
    for s in newest_first {
        if let Some(id) = repair(&s.path)?.last_change {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// One hand-off to the writer: whole frames, back to back.
pub struct Append {
    pub bytes: Vec<u8>,
    /// How many frames `bytes` holds.
    pub records: u64,
    /// The end LSN of the last transaction this completes.
    pub commit: Option<Lsn>,
    pub ack: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Writer {
    /// Appends every batch received, syncing once per group, until the channel closes.
    /// Spent buffers go back through `spare` for reuse.
    pub fn run(
        mut self,
        mut rx: tokio::sync::mpsc::Receiver<Append>,
        spare: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> Result<(), LogError> {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            let mut size = group[0].bytes.len();
            // Group commit: everything queued meanwhile shares one sync. A group stops at
            // the segment size, so segments stay near it and the budget is checked often.
            let cap = (16u64 << 20).min(self.log.inner.config.segment_bytes) as usize;
            while size < cap {
                match rx.try_recv() {
                    Ok(more) => {
                        size += more.bytes.len();
                        group.push(more);
                    }
                    Err(_) => break,
                }
            }
            self.wait_for_budget();
            let mut commit = None;
            for a in &group {
                self.write(&a.bytes)?;
                self.next += a.records;
                commit = a.commit.or(commit);
            }
            self.file
                .sync_data()
                .map_err(|e| LogError::io("log sync", e))?;
            let next = self.next;
            self.log.inner.end.send_modify(|e| {
                e.next = next;
                if let Some(c) = commit {
                    e.durable_lsn = e.durable_lsn.max(c);
                }
            });
            for mut a in group {
                if let Some(ack) = a.ack.take() {
                    let _ = ack.send(());
                }
                a.bytes.clear();
                let _ = spare.try_send(a.bytes);
            }
            if self.len >= self.log.inner.config.segment_bytes {
                self.roll()?;
            }
            self.log.delete_passed(self.log.over_budget());
        }
        self.file
            .sync_data()
            .map_err(|e| LogError::io("log sync", e))?;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        self.file
            .write_all(bytes)
            .map_err(|e| LogError::io("log write", e))?;
        self.len += bytes.len() as u64;
        let mut segs = self.log.inner.segments.lock().expect("segments lock");
        if let Some(last) = segs.back_mut() {
            last.bytes = self.len;
        }
        Ok(())
    }

    /// Closes the active segment (already synced) and starts the next one.
    fn roll(&mut self) -> Result<(), LogError> {
        let dir = self.log.inner.config.dir.clone();
        let path = segment_path(&dir, self.next);
        let io = |e: std::io::Error| LogError::io(path.display().to_string(), e);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        sync_dir(&dir).map_err(io)?;
        self.file = file;
        self.len = 0;
        let mut segs = self.log.inner.segments.lock().expect("segments lock");
        if let Some(last) = segs.back_mut() {
            last.sealed = Some(SystemTime::now());
        }
        segs.push_back(Segment {
            base: self.next,
            path,
            bytes: 0,
            sealed: None,
            dropped: false,
        });
        Ok(())
    }

    /// Over the disk budget: delete what may go; then pause or shed by the policy.
    fn wait_for_budget(&mut self) {
        use std::sync::atomic::Ordering;
        let log = self.log.clone();
        let mut announced = false;
        let mut over_since: Option<std::time::Instant> = None;
        while log.over_budget() && !log.inner.closing.load(Ordering::Relaxed) {
            log.delete_passed(true);
            if !log.over_budget() {
                break;
            }
            match log.inner.config.on_full {
                FullPolicy::ShedSink => {
                    // Shed only a sink that is really behind: first let every cursor's
                    // acknowledged position count, then see what that frees.
                    if let Err(e) = log.inner.cursors.commit() {
                        warn!(error = %e, "log: cannot save sink cursors");
                    }
                    log.delete_passed(true);
                    let active = log
                        .inner
                        .segments
                        .lock()
                        .expect("segments lock")
                        .back()
                        .map_or(0, |s| s.base);
                    if !log.over_budget()
                        || log
                            .inner
                            .cursors
                            .min_persisted()
                            .is_none_or(|m| m >= active)
                    {
                        // What is left is the segment being written.
                        break;
                    }
                    let since = *over_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() < log.inner.config.shed_after {
                        if !announced {
                            warn!(
                                max_bytes = log.inner.config.max_bytes,
                                shed_after_secs = log.inner.config.shed_after.as_secs_f64(),
                                "log: disk budget reached; the source waits for sinks to catch up before the slowest is shed"
                            );
                            announced = true;
                            log.inner.paused.store(true, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    // The end of the oldest segment a cursor holds.
                    let below = {
                        let held = log.inner.cursors.min_persisted().unwrap_or(active);
                        let segs = log.inner.segments.lock().expect("segments lock");
                        segs.iter()
                            .map(|s| s.base)
                            .find(|&b| b > held)
                            .unwrap_or(active)
                    };
                    match log.inner.cursors.shed_slowest(below) {
                        Some(name) => {
                            error!(sink = %name, max_bytes = log.inner.config.max_bytes, "log: disk budget reached; sink shed (detached, marked for a re-backfill when the pipeline restarts)");
                            // The next sink gets the same grace.
                            over_since = None;
                            continue;
                        }
                        // No sink holds the log: only retention did, and that went above.
                        None => break,
                    }
                }
                FullPolicy::PauseSource => {
                    if !announced {
                        warn!(
                            max_bytes = log.inner.config.max_bytes,
                            "log: disk budget reached; pausing the source until sinks catch up"
                        );
                        announced = true;
                        log.inner.paused.store(true, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        if announced {
            info!("log: below the disk budget again; resuming the source");
            log.inner.paused.store(false, Ordering::Relaxed);
        }
    }
}
