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
use sluice_delivery::{Delivery, Failure, Item, Target};

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

/// The secret's key bytes.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("secret: whsec_ is followed by invalid base64 ({e})")),
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

/// The system's CA bundle, for `https://` URLs.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let candidates = [
        std::env::var("SSL_CERT_FILE").ok(),
        Some("/etc/ssl/certs/ca-certificates.crt".into()),
        Some("/etc/pki/tls/certs/ca-bundle.crt".into()),
    ];
    use rustls::pki_types::pem::PemObject;
    for path in candidates.into_iter().flatten() {
        if let Ok(certs) = rustls::pki_types::CertificateDer::pem_file_iter(&path) {
            for c in certs.flatten() {
                let _ = roots.add(c);
            }
            break;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An HTTP client builder with Sluice's TLS settings (ring, the system's CA bundle).
pub fn client_builder() -> Result<reqwest::ClientBuilder, String> {
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls_config()?))
}

impl Webhook {
    pub fn new(options: WebhookOptions) -> Result<Webhook, String> {
        for u in std::iter::once(&options.url).chain(options.urls.values()) {
            if u.is_empty() && options.urls.is_empty() {
                return Err("url is empty: set url = \"https://...\"".into());
            }
            if !u.is_empty() {
                reqwest::Url::parse(u).map_err(|e| format!("url {u:?}: {e}"))?;
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
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
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
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
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
