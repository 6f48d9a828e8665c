//! HTTPS for the server: a listener that completes each TLS handshake on a task of its
//! own and hands axum finished streams, with the certificate and key reloaded from their
//! files when they change.
//!
//! Invariants:
//! - A slow or silent client holds only its own handshake task (bounded by
//!   [`HANDSHAKE_TIMEOUT`]), never the accept loop or other clients.
//! - A reload swaps the configuration for new connections only: open connections, SSE
//!   streams among them, and every pipeline keep running. A certificate or key that does
//!   not load is logged and the previous pair stays in use, so a half-copied file never
//!   takes the server down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// How long a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate and key files are looked at.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The PEM files of the server's certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads both files into a server configuration (HTTP/1.1, TLS 1.2 and 1.3).
    pub fn load(&self) -> Result<Arc<ServerConfig>, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| {
                format!(
                    "cannot read the certificate {}: {e} (--tls-cert takes a PEM file with the server's certificate first, then its chain)",
                    self.cert.display()
                )
            })?;
        if certs.is_empty() {
            return Err(format!(
                "{} holds no PEM certificate (--tls-cert)",
                self.cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| {
            format!(
                "cannot read the private key {}: {e} (--tls-key takes a PEM file with a PKCS#8, PKCS#1 or SEC1 key)",
                self.key.display()
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                format!(
                    "the certificate {} and key {} do not make a pair: {e}",
                    self.cert.display(),
                    self.key.display()
                )
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// What identifies the files' current contents without reading them.
    fn stamp(&self) -> Option<[(SystemTime, u64); 2]> {
        let one = |p: &Path| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        };
        Some([one(&self.cert)?, one(&self.key)?])
    }
}

/// A TLS listener for `axum::serve`: yields streams whose handshake is complete.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    /// Serves `files` on `tcp`; the files are loaded now (an error is returned at once)
    /// and then watched while the listener lives.
    pub(crate) fn new(tcp: TcpListener, files: TlsFiles) -> Result<Self, String> {
        let addr = tcp.local_addr().map_err(|e| e.to_string())?;
        let current = Arc::new(RwLock::new(files.load()?));
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(reload(files, current.clone(), tx.clone()));
        tokio::spawn(accept(tcp, current, tx));
        Ok(Self { ready, addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ended (it only does once this listener is dropped).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

type Ready = mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>;

async fn accept(tcp: TcpListener, current: Arc<RwLock<Arc<ServerConfig>>>, ready: Ready) {
    loop {
        let (stream, peer) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: pause rather than spin.
                    warn!(error = %e, "server: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = ready.closed() => return,
        };
        // Events are small writes; see the plain listener.
        let _ = stream.set_nodelay(true);
        let config = current.read().unwrap_or_else(|p| p.into_inner()).clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(stream))
                .await
            {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "server: TLS handshake failed"),
                Err(_) => debug!(%peer, "server: TLS handshake timed out"),
            }
        });
    }
}

async fn reload(files: TlsFiles, current: Arc<RwLock<Arc<ServerConfig>>>, alive: Ready) {
    let mut seen = files.stamp();
    // The stamp that last failed to load: warned about once, not every interval.
    let mut failed = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(RELOAD_EVERY) => {}
            () = alive.closed() => return,
        }
        let now = files.stamp();
        if now.is_none() || now == seen || now == failed {
            continue;
        }
        match files.load() {
            Ok(config) => {
                *current.write().unwrap_or_else(|p| p.into_inner()) = config;
                seen = now;
                info!(cert = %files.cert.display(), "server: TLS certificate reloaded");
            }
            // Perhaps one file of the pair is still being written: try again next time.
            Err(e) => {
                failed = now;
                warn!(error = %e, "server: keeping the previous TLS certificate");
            }
        }
    }
}
