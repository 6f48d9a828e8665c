//! TLS for PostgreSQL connections (rustls with the ring provider), following libpq's
//! `sslmode` semantics: `require` encrypts without checking the certificate, `verify-ca`
//! checks the chain against `sslrootcert`, `verify-full` also checks the host name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::conninfo::SslMode;

/// What the operator does when `verify-ca`/`verify-full` finds no root certificate.
const ROOTCERT_FIX: &str = "set sslrootcert=/path/to/root.crt in the URL (or PGSSLROOTCERT), or place it in ~/.postgresql/root.crt";

/// Why TLS to PostgreSQL could not be set up. All of it is the connection's settings or
/// files, or the server's, so it is definite (see [`crate::PgError::class`]).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "sslmode={mode} needs the certificate of the CA that signed the server's: {ROOTCERT_FIX}"
    )]
    NoRootCert { mode: &'static str },
    #[error("cannot read sslrootcert {}: {source}", path.display())]
    ReadRootCert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("bad certificate in {}: {source}", path.display())]
    BadPem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("bad certificate in {}: {source}", path.display())]
    BadCert {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("sslrootcert {} holds no certificate", path.display())]
    NoCert { path: PathBuf },
    #[error("cannot use sslrootcert {}: {source}", path.display())]
    Verifier {
        path: PathBuf,
        #[source]
        source: rustls::client::VerifierBuilderError,
    },
    #[error("{0}")]
    Protocols(#[source] rustls::Error),
    #[error("host {host:?} is not a valid TLS server name: {source}")]
    ServerName {
        host: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("handshake with {target} failed: {source}")]
    Handshake {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{target} does not accept TLS but sslmode requires it: enable ssl on the server or use sslmode=prefer/disable")]
    NotAccepted { target: String },
}

impl TlsError {
    /// What the operator can change, where the error names it.
    pub fn fix(&self) -> Option<&'static str> {
        match self {
            TlsError::NoRootCert { .. } => Some(ROOTCERT_FIX),
            TlsError::NotAccepted { .. } => {
                Some("enable ssl on the server or use sslmode=prefer/disable")
            }
            _ => None,
        }
    }
}

/// Builds the rustls client configuration for `mode` (not called for `disable`).
pub(crate) fn client_config(
    mode: SslMode,
    rootcert: Option<&Path>,
) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // As libpq: `require` with a root certificate at hand verifies the chain (verify-ca).
    let mode = match mode {
        SslMode::Require if rootcert.is_some() || default_rootcert().is_some() => SslMode::VerifyCa,
        m => m,
    };
    let webpki = match mode {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            Some(webpki_verifier(mode, rootcert, provider.clone())?)
        }
        _ => None,
    };
    let verifier = Arc::new(Verifier {
        mode,
        webpki,
        provider: provider.clone(),
    });
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The chain check of `verify-ca`/`verify-full`, against `rootcert` or libpq's default.
fn webpki_verifier(
    mode: SslMode,
    rootcert: Option<&Path>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let path = match rootcert {
        Some(p) => p.to_path_buf(),
        None => default_rootcert().ok_or(TlsError::NoRootCert {
            mode: if mode == SslMode::VerifyCa {
                "verify-ca"
            } else {
                "verify-full"
            },
        })?,
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path).map_err(|source| TlsError::ReadRootCert {
        path: path.clone(),
        source,
    })?;
    for cert in certs {
        let cert = cert.map_err(|source| TlsError::BadPem {
            path: path.clone(),
            source,
        })?;
        roots.add(cert).map_err(|source| TlsError::BadCert {
            path: path.clone(),
            source,
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCert { path });
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|source| TlsError::Verifier { path, source })
}

fn default_rootcert() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("HOME")?).join(".postgresql/root.crt");
    p.exists().then_some(p)
}

/// The server name to present in SNI and to check under `verify-full`.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|source| TlsError::ServerName {
        host: host.to_owned(),
        source,
    })
}

#[derive(Debug)]
struct Verifier {
    mode: SslMode,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            // sslmode=require/prefer: encryption without authentication, as libpq does.
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.mode == SslMode::VerifyCa => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_root_certificate_says_where_to_put_one() {
        let e = TlsError::NoRootCert { mode: "verify-ca" };
        assert_eq!(
            e.to_string(),
            "sslmode=verify-ca needs the certificate of the CA that signed the server's: set \
             sslrootcert=/path/to/root.crt in the URL (or PGSSLROOTCERT), or place it in \
             ~/.postgresql/root.crt"
        );
        assert!(e.fix().is_some_and(|f| f.starts_with("set sslrootcert=")));
        let e = client_config(
            SslMode::VerifyFull,
            Some(Path::new("/nonexistent/root.crt")),
        );
        assert!(matches!(e, Err(TlsError::ReadRootCert { .. })), "{e:?}");
    }
}
