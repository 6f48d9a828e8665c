//! The `run`, `check` and `teardown` commands.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use sluice_core::ErrorClass;
use sluice_pg::catalog::{self, CheckSpec, Finding};
use sluice_pg::{ConnInfo, Connection, SourceConfig, SourceWorker};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Config;
use crate::sink::SinkOutput;

/// How long shutdown may take before the process exits anyway.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

fn load(path: &Path) -> anyhow::Result<Config> {
    let config = Config::load(path)?;
    if let Err(errs) = config.validate() {
        anyhow::bail!(
            "config {} is not valid:\n  - {}",
            path.display(),
            errs.join("\n  - ")
        );
    }
    Ok(config)
}

/// Relative paths in the config are relative to the config file.
fn base_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn spec(config: &Config) -> anyhow::Result<CheckSpec> {
    Ok(CheckSpec {
        conninfo: ConnInfo::parse(&config.source.url)?,
        tables: config.source.tables.clone(),
        exclusions: config.exclusions(),
        slot: config.slot(),
        publication: config.publication(),
        external_publication: config.source.publication.is_some(),
        lock_keys: sluice_pg::source::lock_keys(&config.pipeline.name),
    })
}

fn print_findings(findings: &[Finding]) {
    for f in findings {
        if f.ok {
            println!("ok    {}", f.what);
        } else {
            println!("FAIL  {}", f.what);
            if let Some(fix) = &f.fix {
                println!("      fix: {fix}");
            }
        }
    }
}

pub async fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let config = load(path)?;
    let findings = catalog::check(&spec(&config)?).await;
    print_findings(&findings);
    let failed = findings.iter().filter(|f| !f.ok).count();
    if failed == 0 {
        println!("all checks passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{failed} check(s) failed");
        Ok(ExitCode::from(2))
    }
}

pub async fn teardown(path: &Path) -> anyhow::Result<ExitCode> {
    let config = load(path)?;
    let info = ConnInfo::parse(&config.source.url)?;
    let mut conn = Connection::connect(&info, false).await?;
    // A publication the operator brought is theirs to drop.
    let own_publication = config
        .source
        .publication
        .is_none()
        .then(|| config.publication());
    let dropped = catalog::teardown(&mut conn, &config.slot(), own_publication.as_deref()).await?;
    if dropped.is_empty() {
        println!("nothing to drop for pipeline {}", config.pipeline.name);
    }
    for d in dropped {
        println!("dropped {d}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn backfill(
    path: &Path,
    table: &str,
    filter: Option<String>,
) -> anyhow::Result<ExitCode> {
    let config = load(path)?;
    let info = ConnInfo::parse(&config.source.url)?;
    let mut conn = Connection::connect(&info, false).await?;
    let (tables, _) = catalog::expand_tables(&mut conn, &config.source.tables).await?;
    let wanted = catalog::TableRef::parse(table);
    if !tables.contains(&wanted) {
        eprintln!(
            "error: {wanted} is not captured by pipeline {}: add it to source.tables in {} \
             (a running pipeline picks the change up and backfills the table by itself)",
            config.pipeline.name,
            path.display()
        );
        return Ok(ExitCode::from(2));
    }
    let excluded = config.exclusions();
    let shape = sluice_pg::snapshot::describe(
        &mut conn,
        &wanted.schema,
        &wanted.name,
        excluded.get(&wanted.to_string()),
        &mut sluice_pg::values::TypeRegistry::new(),
    )
    .await?;
    if !shape.keyed {
        eprintln!(
            "error: {wanted} has no primary key or replica identity index: a backfill while \
             streaming must tell which rows the stream changed during each chunk. Add a primary \
             key, or ALTER TABLE {} REPLICA IDENTITY FULL",
            wanted.qualified()
        );
        return Ok(ExitCode::from(2));
    }
    if config.source.publication.is_none() {
        catalog::ensure_publication(&mut conn, &config.publication(), &tables).await?;
    }
    let req = sluice_pg::backfill::BackfillRequest {
        schema: wanted.schema.clone(),
        table: wanted.name.clone(),
        filter,
    };
    conn.execute(&sluice_pg::backfill::request_sql(
        &config.pipeline.name,
        &req,
    ))
    .await?;
    conn.close().await;
    println!(
        "backfill of {wanted} requested: pipeline {} copies it while streaming (progress in its log)",
        config.pipeline.name
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs the pipeline until a signal; a change to the config file that passes validation
/// restarts it in-process with the new config (a table added to `source.tables` is then
/// added to the publication and backfilled while the others stream).
pub async fn run(path: &Path, until: Option<sluice_core::Lsn>) -> anyhow::Result<ExitCode> {
    let cancel = CancellationToken::new();
    let signals = cancel.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down");
        signals.cancel();
    });
    let mut config = load(path)?;
    loop {
        let session = cancel.child_token();
        let reload = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = tokio::spawn(watch_config(
            path.to_owned(),
            config.clone(),
            session.clone(),
            reload.clone(),
        ));
        let result = run_pipeline(&config, base_dir(path), session, until).await;
        watcher.abort();
        if cancel.is_cancelled() || !reload.load(std::sync::atomic::Ordering::SeqCst) {
            return result;
        }
        result?;
        config = load(path)?;
        info!("config changed; running the pipeline with it");
    }
}

/// Checks the config file every two seconds (and on SIGHUP); when it changed and is
/// valid, flags a reload and stops the running pipeline. An invalid change is reported
/// and ignored.
async fn watch_config(
    path: std::path::PathBuf,
    current: Config,
    stop: CancellationToken,
    reload: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = stamp(&path);
    let mut hup = signal(SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                seen = None;
            }
        }
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match load(&path) {
            Ok(new) if new == current => {}
            Ok(_) => {
                info!("config file changed; restarting the pipeline to apply it");
                reload.store(true, std::sync::atomic::Ordering::SeqCst);
                stop.cancel();
                return;
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "config file changed but is not valid; keeping the running config")
            }
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Preflight, publication, then the source feeding the sinks until `cancel`.
pub async fn run_pipeline(
    config: &Config,
    base: &Path,
    cancel: CancellationToken,
    until: Option<sluice_core::Lsn>,
) -> anyhow::Result<ExitCode> {
    let spec = spec(config)?;
    let findings = catalog::check(&spec).await;
    let blocking: Vec<&Finding> = findings.iter().filter(|f| !f.ok && f.blocking).collect();
    if !blocking.is_empty() {
        print_findings(&findings);
        error!(
            failed = blocking.len(),
            "preflight failed; nothing was started"
        );
        return Ok(ExitCode::from(2));
    }
    let mut conn = Connection::connect(&spec.conninfo, false).await?;
    let (tables, _) = catalog::expand_tables(&mut conn, &config.source.tables).await?;
    if config.source.publication.is_none() {
        catalog::ensure_publication(&mut conn, &spec.publication, &tables).await?;
    }
    conn.close().await;
    info!(pipeline = %config.pipeline.name, tables = tables.len(), slot = %spec.slot, publication = %spec.publication, "starting");

    let data_dir = if config.pipeline.data_dir.is_absolute() {
        config.pipeline.data_dir.clone()
    } else {
        base.join(&config.pipeline.data_dir)
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data_dir {}", data_dir.display()))?;
    let output = SinkOutput::open(&config.sinks, base)?;
    let progress = std::sync::Arc::new(sluice_pg::snapshot::Progress::default());
    let source_config = SourceConfig {
        conninfo: spec.conninfo.clone(),
        pipeline: config.pipeline.name.clone(),
        slot: spec.slot.clone(),
        publication: spec.publication.clone(),
        exclusions: spec.exclusions.clone(),
        spill_dir: data_dir.join("spill"),
        messages: config.source.messages,
        proto_version: config.source.protocol_version,
        status_interval: Duration::from_secs(config.source.status_interval_secs),
        tables: tables
            .iter()
            .map(|t| (t.schema.clone(), t.name.clone()))
            .collect(),
        snapshot_tables: tables
            .iter()
            .filter(|t| config.snapshots(&t.to_string()))
            .map(|t| (t.schema.clone(), t.name.clone()))
            .collect(),
        snapshot_workers: config.source.snapshot_workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
        chunk_rows: config.source.chunk_rows,
        state_path: data_dir.join("state.redb"),
        progress: progress.clone(),
    };
    let (worker, mut status) = SourceWorker::new(source_config, output)?;
    tokio::spawn(crate::progress::show(progress, cancel.clone()));
    if let Some(until) = until {
        let stop = cancel.clone();
        tokio::spawn(async move {
            if status.wait_for(|s| s.confirmed >= until).await.is_ok() {
                info!(%until, "everything up to the requested LSN is confirmed; stopping");
                stop.cancel();
            }
        });
    }
    let mut source = tokio::spawn(worker.run(cancel.clone()));
    let result = tokio::select! {
        r = &mut source => r,
        _ = cancel.cancelled() => match tokio::time::timeout(SHUTDOWN_DEADLINE, &mut source).await {
            Ok(r) => r,
            Err(_) => {
                error!("shutdown deadline passed; exiting with work unconfirmed (it will be sent again)");
                return Ok(ExitCode::FAILURE);
            }
        },
    };
    match result.context("source task failed")? {
        Ok(output) => {
            tokio::task::spawn_blocking(move || output.close()).await??;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let hint = if e.class() == ErrorClass::Definite {
                " (run `sluice check` for the fix)"
            } else {
                ""
            };
            error!(error = %e, "source stopped{hint}");
            Err(anyhow::anyhow!("{e}"))
        }
    }
}
