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

/// What `--tls-cert` must name.
const CERT_FIX: &str =
    "--tls-cert takes a PEM file with the server's certificate first, then its chain";
/// What `--tls-key` must name.
const KEY_FIX: &str = "--tls-key takes a PEM file with a PKCS#8, PKCS#1 or SEC1 key";

/// Why the certificate and key do not make a TLS configuration. The files are the
/// operator's to change; at start the server refuses to run, on a reload it keeps the
/// previous pair. The texts name the files, never a key's contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate {}: {source} ({CERT_FIX})", path.display())]
    ReadCert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{} holds no PEM certificate (--tls-cert)", path.display())]
    NoCert { path: PathBuf },
    #[error("cannot read the private key {}: {source} ({KEY_FIX})", path.display())]
    ReadKey {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0}")]
    Protocols(#[source] rustls::Error),
    #[error("the certificate {} and key {} do not make a pair: {source}", cert.display(), key.display())]
    NotAPair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

impl TlsError {
    /// What the operator can change, where the error names it.
    pub fn fix(&self) -> Option<&'static str> {
        match self {
            TlsError::ReadCert { .. } | TlsError::NoCert { .. } => Some(CERT_FIX),
            TlsError::ReadKey { .. } => Some(KEY_FIX),
            _ => None,
        }
    }
}

impl TlsFiles {
    /// Reads both files into a server configuration (HTTP/1.1, TLS 1.2 and 1.3).
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|source| TlsError::ReadCert {
                path: self.cert.clone(),
                source,
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCert {
                path: self.cert.clone(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|source| TlsError::ReadKey {
            path: self.key.clone(),
            source,
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Protocols)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|source| TlsError::NotAPair {
                cert: self.cert.clone(),
                key: self.key.clone(),
                source,
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
    pub(crate) fn new(
        tcp: TcpListener,
        addr: SocketAddr,
        files: TlsFiles,
    ) -> Result<Self, TlsError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_do_not_load_say_which_flag_takes_what() {
        let dir = std::env::temp_dir().join(format!("sluice-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        };
        let e = files.load().unwrap_err();
        assert!(matches!(e, TlsError::ReadCert { .. }), "{e}");
        let text = e.to_string();
        assert!(text.starts_with(&format!("cannot read the certificate {}: ", cert.display())));
        assert!(text.ends_with(&format!("({})", e.fix().unwrap())), "{text}");
        std::fs::write(&cert, "not a certificate\n").unwrap();
        let e = files.load().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{} holds no PEM certificate (--tls-cert)", cert.display())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
