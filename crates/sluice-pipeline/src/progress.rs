//! Snapshot and backfill progress for the operator: a bar per table (rows, rows/s, ETA) on
//! a terminal, a log line per table every few seconds otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sluice_pg::snapshot::Progress;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// How often a log line per table is written when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Shows progress until `cancel`.
pub async fn show(progress: Arc<Progress>, cancel: CancellationToken) {
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:>24} [{bar:30}] {pos}/{len} rows  {per_sec}  eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    // table -> (rows, when) at the last log line
    let mut logged: HashMap<String, (u64, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        for t in progress.tables() {
            let len = t.est_rows.max(t.rows);
            if tty {
                let bar = bars.entry(t.table.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(len));
                    b.set_style(style.clone());
                    b.set_prefix(t.table.clone());
                    b
                });
                if bar.is_finished() {
                    continue;
                }
                bar.set_length(len);
                bar.set_position(t.rows);
                if t.finished {
                    bar.finish();
                }
                continue;
            }
            let now = Instant::now();
            let (rows0, at) = *logged.entry(t.table.clone()).or_insert((t.rows, now));
            if t.finished || now.duration_since(at) < LOG_EVERY {
                continue;
            }
            let rate = (t.rows.saturating_sub(rows0)) as f64 / now.duration_since(at).as_secs_f64();
            let eta = (rate > 0.0 && len > t.rows).then(|| ((len - t.rows) as f64 / rate) as u64);
            info!(
                table = %t.table,
                kind = ?t.kind,
                rows = t.rows,
                estimated_rows = t.est_rows,
                chunks_done = t.ranges_done,
                chunks = t.ranges,
                rows_per_sec = rate as u64,
                eta_secs = eta,
                "copy progress"
            );
            logged.insert(t.table.clone(), (t.rows, now));
        }
    }
    for b in bars.values() {
        if !b.is_finished() {
            b.abandon();
        }
    }
}
