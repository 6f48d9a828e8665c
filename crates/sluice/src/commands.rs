//! The `run`, `check`, `backfill`, `teardown` and `token` commands.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use sluice_pg::catalog::{self, CheckSpec, Finding};
use sluice_pg::{ConnInfo, Connection};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Config;
pub use crate::pipeline::run_pipeline;

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
pub(crate) fn base_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

pub(crate) fn spec(config: &Config) -> anyhow::Result<CheckSpec> {
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

pub(crate) fn print_findings(findings: &[Finding]) {
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
    let spec = spec(&config)?;
    let mut findings = catalog::check(&spec).await;
    if let Ok(mut conn) = Connection::connect(&spec.conninfo, false).await {
        if let Ok((tables, _)) = catalog::expand_tables(&mut conn, &config.source.tables).await {
            let captured: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
            findings.extend(crate::pipeline::key_findings(&config, &mut conn, &captured).await?);
        }
        conn.close().await;
    }
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

/// Prints a new random bearer token and the line that configures it.
pub fn token() -> anyhow::Result<ExitCode> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    println!("token (give it to the client; it is not stored): {token}");
    println!(
        "config ([server] tokens):                          \"sha256:{}\"",
        sluice_server::token_hash(&token)
    );
    Ok(ExitCode::SUCCESS)
}
