//! Webhooks: records POSTed as JSON to a URL, signed as Standard Webhooks specifies.
//!
//! Invariants:
//! - `webhook-id` is the record's id (the first record's when batching), identical on
//!   every retry, so a receiver can drop repeats; each record in a body carries its own.
//! - `webhook-signature` is `v1,` and base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")),
//!   the secret given as `whsec_<base64>` (or as plain text).
//! - The answer is classified in one place ([`classify`]): 2xx acknowledges; 408, 429
//!   (after its `Retry-After`), 5xx and network errors are retried; other 4xx are refused
//!   into the dead letters unless configured to retry; redirects are not followed.
//! - Logs name the URL's host and the status, never a body or the secret.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use sluice_core::{Fault, Finding};
use sluice_delivery::{Delivery, DeliveryConfig, Failure, Item, Target};

use crate::{finding_for, Built, Capabilities, Context, Events, Secret, SinkSpec};

/// `type = "webhook"`: records POSTed as JSON to a URL, with Standard Webhooks
/// signatures, per-key order, retries and the waiting room.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Unique name of the sink within the pipeline.
    pub name: String,
    /// Where records go (unless `urls` names their table or topic).
    #[serde(default)]
    pub url: String,
    /// URLs by `schema.table` or outbox topic.
    #[serde(default)]
    pub urls: BTreeMap<String, String>,
    /// Tables this sink takes (default: all, unless `topics` is set).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Outbox topics this sink takes (`name` or `prefix*`).
    #[serde(default)]
    pub topics: Vec<String>,
    /// Debezium-layout outbox tables (aggregatetype, aggregateid, type, payload): their
    /// inserts are routed as events (topic from aggregatetype, key from aggregateid).
    #[serde(default)]
    pub outbox_tables: Vec<String>,
    /// Delete an `outbox_tables` row from the source once every sink that takes its
    /// table has finished it (delivered, or kept in the dead letters).
    #[serde(default)]
    pub delete_delivered: bool,
    /// Signing secret, `whsec_<base64>`; better given through `secret_env`.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Environment variable that holds the signing secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Seconds a request may take.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Records per request: 1 (default) posts one JSON object, more post an array.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Retry 4xx answers (other than 408 and 429, always retried) instead of
    /// dead-lettering them.
    #[serde(default)]
    pub retry_4xx: bool,
    /// Concurrency, rate and retries.
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

fn default_timeout() -> u64 {
    10
}

fn default_batch() -> usize {
    1
}

impl WebhookConfig {
    fn all_urls(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.url)
            .chain(self.urls.values())
            .filter(|u| !u.is_empty())
    }

    /// The signing secret, from the environment when `secret_env` names it.
    fn secret(&self) -> Result<Option<String>, Fault> {
        match &self.secret_env {
            Some(var) => std::env::var(var).map(Some).map_err(|_| {
                Fault::definite(
                    format!("secret_env {var:?} is not set in the environment"),
                    format!("export {var}=whsec_... before starting Sluice"),
                )
            }),
            None => Ok(self.secret.as_ref().map(|s| s.expose().to_owned())),
        }
    }
}

impl SinkSpec for WebhookConfig {
    const DESCRIPTION: &'static str = "POSTs each change (or a batch) to an HTTP endpoint, signed (Standard Webhooks); a failing key waits in the waiting room while others flow.";
    const CAPABILITIES: Capabilities = Capabilities {
        waiting_room: true,
        outbox: true,
        ..Capabilities::NONE
    };

    fn name(&self) -> &str {
        &self.name
    }

    fn tables(&self) -> &[String] {
        &self.tables
    }

    fn validate(&self, errs: &mut Vec<String>) {
        let name = &self.name;
        self.delivery.validate(name, errs);
        if self.url.is_empty() && self.urls.is_empty() {
            errs.push(finding_for(
                name,
                "set url = \"https://...\" (or urls per table or topic)",
            ));
        }
        for u in self.all_urls() {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                // Its start only: the rest of a URL may carry a token.
                let start: String = u.chars().take(8).collect();
                errs.push(finding_for(
                    name,
                    format_args!("url {start:?}... must start with http:// or https://"),
                ));
            }
        }
        if self.batch == 0 {
            errs.push(finding_for(name, "batch must be at least 1"));
        }
        if self.secret.is_some() && self.secret_env.is_some() {
            errs.push(finding_for(name, "set secret or secret_env, not both"));
        }
        if let Some(s) = &self.secret {
            if let Err(e) = secret_key(s.expose()) {
                errs.push(finding_for(name, e));
            }
        }
    }

    async fn check(&self, _ctx: &Context<'_>) -> Vec<Finding> {
        let mut out = Vec::new();
        if let Err(e) = self.secret() {
            out.push(Finding::fail(
                finding_for(&self.name, &e.message),
                e.fix.unwrap_or_default(),
            ));
        }
        for u in self.all_urls() {
            let Ok(parsed) = reqwest::Url::parse(u) else {
                out.push(Finding::fail(
                    // Not shown: a URL may carry a token.
                    finding_for(&self.name, "a url of the sink is not a URL"),
                    "write it as https://host[:port]/path",
                ));
                continue;
            };
            let host = parsed.host_str().unwrap_or_default().to_owned();
            let port = parsed.port_or_known_default().unwrap_or(443);
            // Only the host is named: a URL's path or query may carry a token.
            let found = tokio::net::lookup_host(format!("{host}:{port}"))
                .await
                .map(|mut a| a.next().is_some());
            match found {
                Ok(true) => out.push(Finding::pass(
                    finding_for(&self.name, format_args!("{host} resolves")),
                )),
                Ok(false) | Err(_) => out.push(Finding::warn(
                    finding_for(&self.name, format_args!("{host} does not resolve")),
                    "check the URL's host name and this machine's DNS; deliveries are retried meanwhile",
                )),
            }
        }
        out
    }

    async fn build(&self, _ctx: &Context<'_>) -> Result<Built, Fault> {
        let hook = Webhook::new(WebhookOptions {
            url: self.url.clone(),
            urls: self.urls.clone(),
            secret: self.secret()?,
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                .collect(),
            timeout: Duration::from_secs(self.timeout_secs),
            array: self.batch > 1,
            retry_4xx: self.retry_4xx,
        })?;
        Ok(Built::Engine {
            target: Arc::new(hook),
            batch: self.batch,
            pull: None,
        })
    }

    fn events(&self) -> Option<Events<'_>> {
        Some(Events {
            topics: &self.topics,
            outbox_tables: &self.outbox_tables,
            delete_delivered: self.delete_delivered,
            delivery: &self.delivery,
        })
    }
}

/// How a webhook sink posts.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    pub url: String,
    /// URLs by route (`schema.table` or outbox topic), instead of `url`.
    pub urls: BTreeMap<String, String>,
    /// `whsec_<base64>` or plain text; `None`: no signature header.
    pub secret: Option<String>,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// Bodies are JSON arrays (batching on) rather than one object.
    pub array: bool,
    /// Retry 4xx answers other than 408 and 429 instead of dead-lettering them.
    pub retry_4xx: bool,
}

pub struct Webhook {
    client: reqwest::Client,
    options: Arc<WebhookOptions>,
    key: Option<Arc<ring::hmac::Key>>,
}

/// What the operator does when this machine trusts no certificate authority.
const CA_FIX: &str = "install the system's CA certificates (Debian: ca-certificates), or point SSL_CERT_FILE at a PEM bundle";

/// A URL's parse error (the `url` crate's, through reqwest).
type UrlError = <reqwest::Url as std::str::FromStr>::Err;

/// Why a webhook sink (or an HTTP client with Sluice's TLS settings) cannot be set up.
/// Every cause is a setting or this machine's set-up, so it is definite. The texts hold
/// no secret: the secret's own text is never shown, only why it does not decode.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("url is empty: set url = \"https://...\"")]
    EmptyUrl,
    /// The URL itself is not shown: it may carry a token.
    #[error("a url of the sink is not a URL ({source}): check url and urls")]
    BadUrl {
        #[source]
        source: UrlError,
    },
    #[error("secret: whsec_ is followed by invalid base64 ({0})")]
    SecretBase64(#[source] base64::DecodeError),
    #[error("no trusted certificate authorities found on this machine{}: {CA_FIX}",
        .0.as_ref().map(|e| format!(" ({e})")).unwrap_or_default())]
    NoTrustedRoots(#[source] Option<rustls_native_certs::Error>),
    #[error("{0}")]
    Protocols(#[source] rustls::Error),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl WebhookError {
    /// What the operator can change, where the error names it.
    pub fn fix(&self) -> Option<&'static str> {
        match self {
            WebhookError::EmptyUrl => Some("set url = \"https://...\""),
            WebhookError::NoTrustedRoots(_) => Some(CA_FIX),
            _ => None,
        }
    }
}

impl sluice_core::Classify for WebhookError {
    fn class(&self) -> sluice_core::ErrorClass {
        sluice_core::ErrorClass::Definite
    }
}

/// A sink that cannot be built stops its pipeline: the message is the error's text, the
/// fix the one a webhook sink has always given.
impl From<WebhookError> for Fault {
    fn from(e: WebhookError) -> Fault {
        Fault::definite(e.to_string(), "correct the sink's url and secret")
    }
}

/// The secret's key bytes.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, WebhookError> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(WebhookError::SecretBase64),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// The `webhook-signature` value for a body.
pub fn sign(key: &ring::hmac::Key, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut ctx = ring::hmac::Context::with_key(key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// The platform's trusted certificate authorities (as `rustls-native-certs` finds them,
/// `SSL_CERT_FILE` and `SSL_CERT_DIR` included), for `https://` URLs. None found is an
/// error that says so, rather than a client that trusts nothing.
fn tls_config() -> Result<rustls::ClientConfig, WebhookError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(WebhookError::NoTrustedRoots(
            found.errors.into_iter().next(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(WebhookError::Protocols)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An HTTP client builder with Sluice's TLS settings (ring, the system's CA bundle).
pub fn client_builder() -> Result<reqwest::ClientBuilder, WebhookError> {
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls_config()?))
}

impl Webhook {
    pub fn new(options: WebhookOptions) -> Result<Webhook, WebhookError> {
        for u in std::iter::once(&options.url).chain(options.urls.values()) {
            if u.is_empty() && options.urls.is_empty() {
                return Err(WebhookError::EmptyUrl);
            }
            if !u.is_empty() {
                reqwest::Url::parse(u).map_err(|source| WebhookError::BadUrl { source })?;
            }
        }
        let key = match &options.secret {
            Some(s) => Some(Arc::new(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                &secret_key(s)?,
            ))),
            None => None,
        };
        let client = client_builder()?
            .redirect(reqwest::redirect::Policy::none())
            .timeout(options.timeout)
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()
            .map_err(WebhookError::Client)?;
        Ok(Webhook {
            client,
            options: Arc::new(options),
            key,
        })
    }

    fn url_for(&self, route: &str) -> &str {
        self.options
            .urls
            .get(route)
            .map(String::as_str)
            .unwrap_or(&self.options.url)
    }
}

/// What an HTTP answer means for delivery.
pub fn classify(status: u16, retry_after: Option<&str>, retry_4xx: bool) -> Result<(), Failure> {
    let after = || {
        retry_after
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(3600)))
    };
    match status {
        200..=299 => Ok(()),
        408 | 429 => Err(Failure::Retry {
            error: format!("HTTP {status}"),
            after: after(),
        }),
        500..=599 => Err(Failure::Retry {
            error: format!("HTTP {status}"),
            after: after(),
        }),
        400..=499 if retry_4xx => Err(Failure::Retry {
            error: format!("HTTP {status}"),
            after: None,
        }),
        400..=499 => Err(Failure::Reject(format!("HTTP {status}"))),
        _ => Err(Failure::Reject(format!(
            "HTTP {status}: redirects are not followed; configure the final URL"
        ))),
    }
}

impl Target for Webhook {
    fn deliver(&self, items: Vec<Arc<Item>>) -> Delivery {
        let url = match items.first() {
            Some(i) => self.url_for(&i.route).to_owned(),
            None => return Box::pin(async { Ok(()) }),
        };
        let mut body =
            Vec::with_capacity(items.iter().map(|i| i.json.len() + 1).sum::<usize>() + 2);
        if self.options.array {
            body.push(b'[');
            for (n, i) in items.iter().enumerate() {
                if n > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&i.json);
            }
            body.push(b']');
        } else {
            body.extend_from_slice(&items[0].json);
        }
        let id = items[0].id.to_string();
        let timestamp = sluice_core::time::now_micros() / 1_000_000;
        let mut req = self
            .client
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(key) = &self.key {
            req = req.header("webhook-signature", sign(key, &id, timestamp, &body));
        }
        for (k, v) in &self.options.headers {
            req = req.header(k, v);
        }
        let req = req.body(body);
        let retry_4xx = self.options.retry_4xx;
        Box::pin(async move {
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    // Read the body so the connection goes back to the pool.
                    let _ = resp.bytes().await;
                    classify(status, retry_after.as_deref(), retry_4xx)
                }
                Err(e) => Err(Failure::Retry {
                    error: if e.is_timeout() {
                        "timed out".to_owned()
                    } else {
                        format!("request failed: {}", error_chain(&e))
                    },
                    after: None,
                }),
            }
        })
    }
}

/// An error with its causes (reqwest's top level says only "error sending request").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified() {
        assert_eq!(classify(204, None, false), Ok(()));
        assert_eq!(
            classify(429, Some("7"), false),
            Err(Failure::Retry {
                error: "HTTP 429".into(),
                after: Some(Duration::from_secs(7))
            })
        );
        assert!(matches!(
            classify(503, None, false),
            Err(Failure::Retry { after: None, .. })
        ));
        assert!(matches!(
            classify(408, None, false),
            Err(Failure::Retry { .. })
        ));
        assert_eq!(
            classify(404, None, false),
            Err(Failure::Reject("HTTP 404".into()))
        );
        assert!(matches!(
            classify(404, None, true),
            Err(Failure::Retry { .. })
        ));
        assert!(matches!(
            classify(302, None, false),
            Err(Failure::Reject(_))
        ));
    }

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
