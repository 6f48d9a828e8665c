//! The `run`, `check`, `backfill`, `teardown` and `token` commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_pipeline::config::Auth;

use sluice_pg::catalog;
use sluice_pg::{ConnInfo, Connection};
use sluice_pipeline::preflight;
use sluice_pipeline::{Config, Directory, Outcome, RunContext, Supervisor, SHUTDOWN_DEADLINE};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub(crate) fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load_valid(path).map_err(anyhow::Error::msg)
}

/// Relative paths in the config are relative to the config file.
pub(crate) fn base_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

pub async fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let config = load(path)?;
    let findings = preflight::check_all(&config, base_dir(path)).await?;
    print!("{}", preflight::render(&findings));
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
    // The source's state describes the slot: without it, the next start begins afresh
    // (a new slot and snapshot) instead of reporting the slot as lost.
    let state = sluice_pipeline::data_dir(&config, base_dir(path))?.join("state.redb");
    match std::fs::remove_file(&state) {
        Ok(()) => println!("removed {} (the next start begins afresh)", state.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot remove {}: {e}", state.display()),
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

/// The process's one HTTP server, from the configs' `[server]` sections: they must agree
/// (one listener serves every pipeline).
fn server_section(
    configs: &[(PathBuf, Config)],
) -> anyhow::Result<Option<sluice_pipeline::config::ServerSection>> {
    let mut chosen: Option<(&Path, sluice_pipeline::config::ServerSection)> = None;
    for (path, c) in configs {
        let Some(section) = c.server_section() else {
            continue;
        };
        match &chosen {
            None => chosen = Some((path, section)),
            Some((first, s)) if s.listen != section.listen || s.auth != section.auth => {
                anyhow::bail!(
                    "{} and {} configure different [server] sections: one server serves every pipeline of a process; give [server] in one file (or the same in each)",
                    first.display(),
                    path.display()
                )
            }
            Some(_) => {}
        }
    }
    // Tokens of every file are accepted.
    Ok(chosen.map(|(_, mut s)| {
        for (_, c) in configs {
            if let Some(other) = &c.server {
                s.tokens.extend(other.tokens.iter().cloned());
            }
        }
        s.tokens.sort();
        s.tokens.dedup();
        s
    }))
}

fn token_hashes(section: &sluice_pipeline::config::ServerSection) -> Option<Vec<String>> {
    (section.auth == Auth::Token).then(|| {
        section
            .tokens
            .iter()
            .map(|t| t.trim_start_matches("sha256:").to_ascii_lowercase())
            .collect()
    })
}

/// Starts the HTTP server on a runtime of its own (many SSE clients, never in the
/// sources' way); it serves whatever pipelines the directory holds, and outlives them.
async fn start_server(
    section: &sluice_pipeline::config::ServerSection,
    directory: Arc<Directory>,
    stop: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    directory.set_tokens(token_hashes(section));
    let listen: std::net::SocketAddr = section.listen.parse().context("server.listen")?;
    let tls = tls_files(section.tls_cert.clone(), section.tls_key.clone())
        .map_err(|e| anyhow::anyhow!("[server] {e}"))?;
    start_http(listen, tls, directory, None, stop).await
}

/// Certificate and key come as a pair.
pub(crate) fn tls_files(
    cert: Option<std::path::PathBuf>,
    key: Option<std::path::PathBuf>,
) -> anyhow::Result<Option<sluice_server::TlsFiles>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(sluice_server::TlsFiles { cert, key })),
        (None, None) => Ok(None),
        _ => anyhow::bail!("tls_cert and tls_key go together: give both for HTTPS, or neither"),
    }
}

/// Binds `listen` and serves on a thread and runtime of its own until `stop`.
pub(crate) async fn start_http(
    listen: std::net::SocketAddr,
    tls: Option<sluice_server::TlsFiles>,
    directory: Arc<Directory>,
    control: Option<sluice_control::Handle>,
    stop: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("sluice-http".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            rt.block_on(async move {
                match sluice_server::bind(listen, tls, directory, control, stop).await {
                    Ok((_, serve)) => {
                        let _ = tx.send(Ok(()));
                        if let Err(e) = serve.await {
                            error!(error = %e, "server stopped");
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                    }
                }
            });
        })?;
    match rx.await {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => anyhow::bail!("server: {e}"),
        Err(_) => anyhow::bail!("server thread ended at start"),
    }
}

/// Runs one pipeline per config file until a signal. A change to a file that passes
/// validation restarts that pipeline alone with it (a table added to `source.tables` is
/// then added to the publication and backfilled while the others stream); the HTTP
/// server and the other pipelines go on.
pub async fn run(paths: &[PathBuf], until: Option<sluice_core::Lsn>) -> anyhow::Result<ExitCode> {
    let configs: Vec<(PathBuf, Config)> = paths
        .iter()
        .map(|p| load(p).map(|c| (p.clone(), c)))
        .collect::<anyhow::Result<_>>()?;
    let mut names = std::collections::BTreeSet::new();
    for (p, c) in &configs {
        if !names.insert(c.pipeline.name.clone()) {
            anyhow::bail!(
                "pipeline {:?} is configured twice ({}): each file runs its own pipeline, with its own name",
                c.pipeline.name,
                p.display()
            );
        }
    }
    let directory = Directory::new();
    let server_stop = CancellationToken::new();
    let server = match server_section(&configs)? {
        Some(section) => {
            Some(start_server(&section, directory.clone(), server_stop.clone()).await?)
        }
        None => None,
    };
    let mut supervisor = Supervisor::new(directory.clone());
    let (changes_tx, mut changes) = tokio::sync::mpsc::channel::<(PathBuf, Config)>(4);
    let mut watchers = Vec::new();
    for (path, config) in configs {
        let ctx = RunContext {
            base_dir: base_dir(&path).to_owned(),
            until,
            directory: directory.clone(),
        };
        watchers.push(tokio::spawn(watch_config(
            path.clone(),
            config.clone(),
            changes_tx.clone(),
        )));
        supervisor.start(config, ctx).map_err(anyhow::Error::msg)?;
    }
    let signals = on_signal();
    let mut worst = ExitCode::SUCCESS;
    let mut failure: Option<anyhow::Error> = None;
    loop {
        tokio::select! {
            biased;
            _ = signals.cancelled() => {
                for ended in supervisor.shutdown(SHUTDOWN_DEADLINE * 2).await {
                    note_end(ended, &mut worst, &mut failure);
                }
                break;
            }
            Some((path, config)) = changes.recv() => {
                let ctx = RunContext { base_dir: base_dir(&path).to_owned(), until, directory: directory.clone() };
                if let Some(section) = config.server_section() {
                    directory.set_tokens(token_hashes(&section));
                }
                match supervisor.reconfigure(config, ctx).await {
                    Ok(ended) => ended.into_iter().for_each(|e| note_end(e, &mut worst, &mut failure)),
                    Err(e) => error!(error = %e, "cannot restart the pipeline"),
                }
            }
            ended = supervisor.next() => match ended {
                Some(e) => note_end(e, &mut worst, &mut failure),
                None => break,
            },
        }
    }
    for w in watchers {
        w.abort();
    }
    server_stop.cancel();
    if let Some(t) = server {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(worst),
    }
}

/// Records how a pipeline ended: a refused preflight exits 2, a failure 1.
fn note_end(
    (name, result): sluice_pipeline::Ended,
    worst: &mut ExitCode,
    failure: &mut Option<anyhow::Error>,
) {
    match result {
        Ok(Outcome::Done(_)) => info!(pipeline = %name, "pipeline stopped"),
        Ok(Outcome::Refused(findings)) => {
            print!("{}", preflight::render(&findings));
            let n = findings.iter().filter(|f| !f.ok && f.blocking).count();
            error!(pipeline = %name, failed = n, "preflight failed; nothing was started");
            *worst = ExitCode::from(2);
        }
        Ok(Outcome::Abandoned) => *worst = ExitCode::FAILURE,
        Err(e) => {
            error!(pipeline = %name, error = %e, "pipeline stopped");
            failure.get_or_insert(anyhow::anyhow!("pipeline {name:?}: {e}"));
        }
    }
}

/// Checks the config file every two seconds (and on SIGHUP); when it changed and is
/// valid, sends it. An invalid change is reported and ignored.
async fn watch_config(
    path: PathBuf,
    mut current: Config,
    changes: tokio::sync::mpsc::Sender<(PathBuf, Config)>,
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
            Ok(new) if new.pipeline.name != current.pipeline.name => {
                warn!(path = %path.display(), "the pipeline's name changed in its config file; restart Sluice to run it under the new name");
            }
            Ok(new) => {
                info!(path = %path.display(), "config file changed; restarting its pipeline to apply it");
                current = new.clone();
                if changes.send((path.clone(), new)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "config file changed but is not valid; keeping the running config")
            }
        }
    }
}

/// A token cancelled at SIGINT or SIGTERM.
pub(crate) fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down");
        t.cancel();
    });
    token
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
