//! `sluice server`: the controller of `sluice-control` on this runtime, the HTTP server
//! (with the management API) on its own, until a signal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use sluice_control::access::{Access, AllowLists};
use sluice_control::sealed::{KeySources, SecretKeys};
use sluice_control::{Controller, Handle, Tokens};
use sluice_pipeline::Directory;
use tokio_util::sync::CancellationToken;

use crate::commands::{on_signal, start_http};

/// A started server: its controller (not yet running), the handle the API uses, and
/// the HTTP thread.
pub struct Started {
    pub controller: Controller,
    pub handle: Handle,
    pub addr: Option<SocketAddr>,
    /// The admin token made at this first start (shown once; stored as a hash).
    pub first_token: Option<String>,
    http: std::thread::JoinHandle<()>,
    http_stop: CancellationToken,
    _lock: std::fs::File,
}

impl Started {
    /// Runs the pipelines until `stop`, then stops the HTTP server.
    pub async fn run(self, stop: CancellationToken) {
        self.controller.run(stop).await;
        self.http_stop.cancel();
        let http = self.http;
        let _ = tokio::task::spawn_blocking(move || http.join()).await;
    }
}

/// Opens the data dir (one server per data dir), its tokens, allow-lists and registry,
/// and starts the HTTP server.
pub async fn start(
    data_dir: &Path,
    config_dir: Option<PathBuf>,
    listen: SocketAddr,
    tls: Option<sluice_server::TlsFiles>,
    allow: AllowLists,
    keys: SecretKeys,
) -> anyhow::Result<Started> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    let lock = lock(data_dir)?;
    if let Some(dir) = &config_dir {
        anyhow::ensure!(
            dir.is_dir(),
            "--config-dir {} is not a directory: create it, or leave the option out",
            dir.display()
        );
    }
    let (tokens, first_token) = Tokens::open(data_dir).map_err(anyhow::Error::msg)?;
    let access = Access::open(data_dir).map_err(anyhow::Error::msg)?;
    if allow != AllowLists::default() {
        // Flags given at start replace what the API set before.
        let mut lists = access.lists();
        lists.management = allow.management.or(lists.management);
        lists.consumers = allow.consumers.or(lists.consumers);
        access.set(lists).map_err(|e| {
            let problems: Vec<String> = e.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("--allow-*: {}", problems.join("; "))
        })?;
    }
    let directory = Directory::new();
    let (controller, handle) = Controller::open(
        data_dir,
        config_dir,
        directory.clone(),
        std::sync::Arc::new(tokens),
        std::sync::Arc::new(access),
        keys,
    )
    .with_context(|| format!("cannot open the registry in {}", data_dir.display()))?;
    let http_stop = CancellationToken::new();
    let http = start_http(
        listen,
        tls,
        directory.clone(),
        Some(handle.clone()),
        http_stop.clone(),
    )
    .await?;
    let addr = directory.server_addr();
    if let Some(addr) = addr {
        std::fs::write(data_dir.join("server.addr"), addr.to_string())
            .context("cannot write server.addr in the data dir")?;
    }
    Ok(Started {
        controller,
        handle,
        addr,
        first_token,
        http,
        http_stop,
        _lock: lock,
    })
}

pub async fn run(
    data_dir: &Path,
    config_dir: Option<PathBuf>,
    listen: SocketAddr,
    tls: Option<sluice_server::TlsFiles>,
    allow: AllowLists,
    keys: KeySources,
) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    let (keys, made) = SecretKeys::load(data_dir, &keys).map_err(anyhow::Error::msg)?;
    if made {
        tracing::warn!(
            file = %data_dir.join("secret.key").display(),
            "made a secret key for the secrets of pipeline configurations; it sits beside the data it protects: move it elsewhere and pass --secret-key-file (or SLUICE_SECRET_KEY), so that a copy of the data dir alone reveals no password"
        );
    }
    let started = start(data_dir, config_dir, listen, tls, allow, keys).await?;
    if let Some(secret) = &started.first_token {
        // Shown once, on standard output only: it is stored as a hash.
        println!("admin token (shown once; it is stored only as a hash): {secret}");
    }
    started.run(on_signal()).await;
    Ok(ExitCode::SUCCESS)
}

/// One server per data dir: a second would run the same registry's pipelines.
fn lock(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("server.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    anyhow::ensure!(
        f.try_lock().is_ok(),
        "another `sluice server` uses {} (it holds {}): stop it, or give this one its own --data-dir",
        data_dir.display(),
        path.display()
    );
    Ok(f)
}
