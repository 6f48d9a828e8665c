//! The file sink: JSON lines, one record per line, appended to a file (the stdout sink
//! shares its writer).
//!
//! A file sink appends a batch and fsyncs it before acknowledging, so its cursor never
//! passes a record that is not on disk. It repairs a torn last line (a crash mid-write)
//! before its first write, so the file is always whole JSON lines; records after the last
//! acknowledged batch may be written again after a restart, with the same ids. Only the
//! active instance opens sinks (the data_dir lock), so the repair never races a writer.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_core::{Fault, Finding};
use sluice_log::RecordBatch;

use crate::{finding_for, Built, Context, Sink, SinkSpec};

/// `type = "file"`: JSON lines appended to a file and fsync'd before the sink's cursor
/// moves.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Unique name of the sink within the pipeline.
    pub name: String,
    /// The file to append to (created if missing; relative to the config file).
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// Tables this sink takes (`schema.table` or `schema.*`; default: all).
    #[serde(default)]
    pub tables: Vec<String>,
}

/// Records per batch (one write and one fsync each; the reader also stops at 4 MiB).
/// 8,192 rather than 1,000: 4% less time for a backlog of 1M rows (bench/compare.sh,
/// 2026-12-05), the fsyncs being fewer; a batch is what the log holds, so latency at a
/// low rate does not change.
pub(crate) const BATCH: usize = 8192;

impl FileConfig {
    fn resolved(&self, base: &Path) -> PathBuf {
        if self.path.is_absolute() {
            self.path.clone()
        } else {
            base.join(&self.path)
        }
    }
}

impl SinkSpec for FileConfig {
    const DESCRIPTION: &'static str =
        "Appends each change as a line of JSON to a file, fsync'd before it is acknowledged.";

    fn name(&self) -> &str {
        &self.name
    }

    fn tables(&self) -> &[String] {
        &self.tables
    }

    fn validate(&self, errs: &mut Vec<String>) {
        if self.path.as_os_str().is_empty() {
            errs.push(finding_for(
                &self.name,
                "path is empty: name the file to append to",
            ));
        }
    }

    async fn check(&self, ctx: &Context<'_>) -> Vec<Finding> {
        let path = self.resolved(ctx.base_dir);
        let existed = path.exists();
        // Opening for append (creating the directory) is what the sink does first.
        let opened = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| OpenOptions::new().create(true).append(true).open(&path));
        match opened {
            Ok(_) => {
                if !existed {
                    let _ = std::fs::remove_file(&path);
                }
                vec![Finding::pass(finding_for(
                    &self.name,
                    format_args!("{} is writable", path.display()),
                ))]
            }
            Err(e) => vec![Finding::fail(
                finding_for(
                    &self.name,
                    format_args!("cannot open {} for appending: {e}", path.display()),
                ),
                "create the directory, or give the user running Sluice write access to it",
            )],
        }
    }

    async fn build(&self, ctx: &Context<'_>) -> Result<Built, Fault> {
        let path = self.resolved(ctx.base_dir);
        let sink = LineSink::file(&path).map_err(|e| {
            Fault::definite(
                format!("cannot open {}", path.display()),
                "check the path and its directory's permissions",
            )
            .caused_by(e)
        })?;
        Ok(Built::Batches {
            sink: Box::new(sink),
            max_records: BATCH,
            window: None,
        })
    }

    fn exclusive_path(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

/// Bytes and syncs a line-oriented destination.
trait Lines: Send {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// Makes everything appended durable.
    fn sync(&mut self) -> std::io::Result<()>;
}

/// A [`Sink`] of JSON lines into a file or standard output.
pub struct LineSink {
    out: Box<dyn Lines>,
    buf: Vec<u8>,
}

impl LineSink {
    /// Appends to `path` (created with its directory if missing).
    pub fn file(path: &Path) -> std::io::Result<LineSink> {
        Ok(LineSink {
            out: Box::new(FileSink::open(path)?),
            buf: Vec::new(),
        })
    }

    pub fn stdout() -> LineSink {
        LineSink {
            out: Box::new(StdoutSink(std::io::stdout())),
            buf: Vec::new(),
        }
    }
}

impl Sink for LineSink {
    // Blocking writes are fine here: every sink runs on a thread of its own.
    async fn deliver(&mut self, batch: &RecordBatch) -> Result<(), Fault> {
        self.buf.clear();
        for r in batch.iter() {
            self.buf.extend_from_slice(r.json);
            self.buf.push(b'\n');
        }
        // A failing disk is not something a retry fixes by itself, but it often is
        // (full, then freed): retry with backoff, the log keeps the records.
        self.out
            .append(&self.buf)
            .and_then(|()| self.out.sync())
            .map_err(|e| Fault::transient("write failed").caused_by(e))
    }
}

struct FileSink {
    file: File,
    /// Whether the torn tail has been repaired (done at the first append).
    repaired: bool,
    /// Bytes of the file already synced and dropped from the page cache.
    dropped_to: u64,
    /// Bytes in the file after the last append.
    len: u64,
}

impl FileSink {
    fn open(path: &Path) -> std::io::Result<FileSink> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let created = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        if created {
            // The new directory entry must survive a crash as much as the data does.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            } else {
                File::open(".")?.sync_all()?;
            }
        }
        Ok(FileSink {
            file,
            repaired: false,
            dropped_to: 0,
            len: 0,
        })
    }
}

/// Cuts a partial last line left by a crash mid-write.
fn repair_torn_tail(file: &mut File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut pos = len;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let start = pos.saturating_sub(buf.len() as u64);
        let n = (pos - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep != len {
                file.set_len(keep)?;
                file.sync_all()?;
            }
            return Ok(());
        }
        if start == 0 {
            file.set_len(0)?;
            file.sync_all()?;
            return Ok(());
        }
        pos = start;
    }
}

impl Lines for FileSink {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if !self.repaired {
            repair_torn_tail(&mut self.file)?;
            self.repaired = true;
            self.len = self.file.metadata()?.len();
            self.dropped_to = self.len;
        }
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        // Synced pages are clean: let the kernel reuse them (a reader of the file gets
        // them from the disk).
        if self.len > self.dropped_to {
            sluice_log::drop_cached(&self.file, self.dropped_to, self.len - self.dropped_to);
            self.dropped_to = self.len;
        }
        Ok(())
    }
}

struct StdoutSink(std::io::Stdout);

impl Lines for StdoutSink {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.lock().write_all(bytes)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.0.lock().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_cut_before_the_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let mut sink = FileSink::open(&path).unwrap();
        // Opening alone leaves the file to whoever is still writing it (a standby opens
        // early).
        assert_eq!(std::fs::read(&path).unwrap().len(), 21);
        sink.append(b"{\"d\":4}\n").unwrap();
        sink.append(b"{\"e\":5}\n").unwrap();
        drop(sink);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"{\"a\":1}\n{\"b\":2}\n{\"d\":4}\n{\"e\":5}\n"
        );
        std::fs::write(&path, b"no newline at all").unwrap();
        let mut sink = FileSink::open(&path).unwrap();
        sink.append(b"{\"f\":6}\n").unwrap();
        drop(sink);
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"f\":6}\n");
    }
}
