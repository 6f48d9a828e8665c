//! ClickHouse's HTTP interface: statements as request bodies, inserts as a query parameter
//! with RowBinary rows as the body, errors classified once here.
//!
//! Invariants:
//! - Credentials travel in the `X-ClickHouse-User` / `X-ClickHouse-Key` headers, never in
//!   a URL, so no log or error message can carry them.
//! - The server's message is kept only for statements Sluice wrote without row values
//!   (DDL, catalog queries); an insert's or a lookup's error keeps only the code, because
//!   ClickHouse quotes the data it could not parse.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::Secret;

/// A failed request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChError {
    /// The server answered with an exception.
    #[error("ClickHouse error {code}: {message}")]
    Server { code: u32, message: String },
    /// Refused credentials (HTTP 401/403 or the authentication codes).
    #[error("ClickHouse refused the credentials ({message})")]
    Auth { message: String },
    /// No answer: the server is down, unreachable or slow.
    #[error("ClickHouse cannot be reached: {0}")]
    Network(String),
    /// The server's certificate is not trusted.
    #[error("ClickHouse's TLS certificate is not trusted: {0}")]
    Certificate(String),
}

/// A client that cannot be made: each names the setting to change.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The url does not parse (the parser's reason).
    #[error("url: {0}")]
    Url(String),
    #[error("url: the scheme must be http or https")]
    Scheme,
    #[error("ca_file {path}: {source}")]
    CaFile {
        path: std::path::PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("no trusted certificate authority found on this system for an https:// url")]
    NoRoots,
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl SetupError {
    /// What the operator changes.
    pub fn fix(&self) -> &'static str {
        match self {
            SetupError::Url(_) | SetupError::Scheme => "write url as http://host:8123 or https://host:8443",
            SetupError::CaFile { .. } => "point ca_file at a readable PEM file of the server's CA",
            SetupError::NoRoots => "set ca_file to the CA that signed the server's certificate, or install the system's CA bundle",
            SetupError::Tls(_) | SetupError::Client(_) => "check the url and ca_file",
        }
    }
}

/// Exception codes that mean the request can never succeed as written: the data or the
/// statement does not fit the table (a table-level stop, not a retry).
const TABLE_LEVEL: &[u32] = &[
    6, 15, 16, 26, 27, 36, 38, 41, 43, 44, 47, 50, 53, 62, 69, 70, 72, 117,
];
/// Authentication and authorization codes (old and current releases).
const AUTH: &[u32] = &[192, 193, 194, 497, 516];

impl ChError {
    /// The statement or its data does not fit the target table (see [`TABLE_LEVEL`]).
    pub fn is_table_level(&self) -> bool {
        matches!(self, ChError::Server { code, .. } if TABLE_LEVEL.contains(code))
    }

    /// A missing table (someone dropped it): it is created again.
    pub fn is_unknown_table(&self) -> bool {
        matches!(self, ChError::Server { code: 60, .. })
    }

    /// As a pipeline fault: definite when only the operator can fix it.
    pub fn fault(&self, sink: &str) -> sluice_core::Fault {
        use sluice_core::Fault;
        match self {
            ChError::Auth { .. } => Fault::definite(
                self.to_string(),
                format!("set sink {sink:?}'s user and password to an account of the server"),
            ),
            ChError::Certificate(_) => Fault::definite(
                self.to_string(),
                format!(
                    "set sink {sink:?}'s ca_file to the CA that signed the server's certificate"
                ),
            ),
            ChError::Server { code: 81, .. } => Fault::definite(
                self.to_string(),
                format!("create the database on the server, or set sink {sink:?}'s database"),
            ),
            ChError::Server { code: 164, .. } => Fault::definite(
                self.to_string(),
                format!("give sink {sink:?}'s user a profile that may write (readonly = 0)"),
            ),
            _ => Fault::transient(self.to_string()),
        }
    }
}

/// A connection to one server and database.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    url: Arc<str>,
    user: Option<String>,
    password: Option<Secret>,
}

impl Http {
    /// A client for `url` (`http://` or `https://`); `ca` is a PEM file of the CA that
    /// signed the server's certificate (default: the system's roots).
    pub fn new(
        url: &str,
        user: Option<String>,
        password: Option<Secret>,
        ca: Option<&std::path::Path>,
    ) -> Result<Http, SetupError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| SetupError::Url(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(SetupError::Scheme);
        }
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls(ca, parsed.scheme() == "https")?)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .tcp_nodelay(true)
            .build()?;
        Ok(Http {
            client,
            url: parsed.as_str().trim_end_matches('/').into(),
            user,
            password,
        })
    }

    /// Runs a statement Sluice wrote without row values; returns the body.
    pub async fn query(&self, sql: &str) -> Result<bytes::Bytes, ChError> {
        self.send(None, sql.as_bytes().to_vec(), true).await
    }

    /// Runs a statement whose text or answer holds row values (a key literal): an error
    /// keeps only its code.
    pub async fn query_private(&self, sql: &str) -> Result<bytes::Bytes, ChError> {
        self.send(None, sql.as_bytes().to_vec(), false).await
    }

    /// Sends `rows` (RowBinary) with `insert` (an `INSERT ... FORMAT RowBinary`).
    pub async fn insert(&self, insert: &str, rows: Vec<u8>) -> Result<(), ChError> {
        self.send(Some(insert), rows, false).await.map(|_| ())
    }

    async fn send(
        &self,
        query: Option<&str>,
        body: Vec<u8>,
        keep_message: bool,
    ) -> Result<bytes::Bytes, ChError> {
        let mut req = self.client.post(&*self.url).body(body);
        req = match query {
            // A retried insert must be inserted again: with deduplication (replicated
            // tables) a retry after a truncate would be dropped as a repeat.
            Some(q) => req.query(&[("query", q), ("insert_deduplicate", "0")]),
            // An error found while the answer streams must not arrive as more rows.
            None => req.query(&[("wait_end_of_query", "1")]),
        };
        if let Some(u) = &self.user {
            req = req.header("X-ClickHouse-User", u);
        }
        if let Some(p) = &self.password {
            req = req.header("X-ClickHouse-Key", p.expose());
        }
        let resp = req.send().await.map_err(network)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(network)?;
        if status.is_success() {
            return Ok(body);
        }
        let text = String::from_utf8_lossy(&body);
        let code = exception_code(&text);
        if matches!(status.as_u16(), 401 | 403) || code.is_some_and(|c| AUTH.contains(&c)) {
            return Err(ChError::Auth {
                message: format!("HTTP {}", status.as_u16()),
            });
        }
        let message = if keep_message {
            text.trim().chars().take(600).collect()
        } else {
            format!(
                "HTTP {} (the server's message is withheld: it may quote row values)",
                status.as_u16()
            )
        };
        Err(ChError::Server {
            code: code.unwrap_or(0),
            message,
        })
    }
}

/// `Code: 60. DB::Exception: ...` (current) or `Code: 60, e.displayText() = ...` (old).
fn exception_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn network(e: reqwest::Error) -> ChError {
    // The source chain says what failed (refused, timed out, certificate).
    let mut what = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        what = format!("{what}: {s}");
        source = s.source();
    }
    // The URL is the operator's and carries no credentials (they go in headers).
    if what.contains("certificate") || what.contains("UnknownIssuer") {
        ChError::Certificate(what)
    } else {
        ChError::Network(what)
    }
}

/// Client TLS: the CA in `ca`, or the system's roots (none found is an error when the
/// url needs them, rather than a client that trusts nothing).
fn tls(ca: Option<&std::path::Path>, https: bool) -> Result<rustls::ClientConfig, SetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let bad = |source: Box<dyn std::error::Error + Send + Sync>| SetupError::CaFile {
                path: path.to_owned(),
                source,
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.into()))? {
                roots
                    .add(cert.map_err(|e| bad(e.into()))?)
                    .map_err(|e| bad(e.into()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 && https {
                return Err(SetupError::NoRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_code_of_both_generations() {
        assert_eq!(
            exception_code("Code: 60. DB::Exception: Table x doesn't exist"),
            Some(60)
        );
        assert_eq!(
            exception_code("Code: 193, e.displayText() = DB::Exception: Wrong password"),
            Some(193)
        );
        assert_eq!(exception_code("Bad Gateway"), None);
    }
}
