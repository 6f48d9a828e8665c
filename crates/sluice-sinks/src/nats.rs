//! NATS JetStream: each record (or each package of one table's records) published to a
//! JetStream stream, on a subject rendered from the record.
//!
//! Invariants:
//! - The cursor moves only over publishes JetStream acknowledged (stored in the stream):
//!   a batch is acknowledged when every publish of it is, in order (`Sink::start` sends
//!   them and returns the wait for their acknowledgements).
//! - `Nats-Msg-Id` is `{pipeline}/{sink}/{id}` (the record's id, or a package's first and
//!   last id): unique across the pipelines and sinks that share a stream, and the same
//!   when a new process publishes a record again after a crash, so the server drops that
//!   repeat within the stream's duplicate window. A package published again may be cut
//!   differently; its events keep their ids.
//! - Publishes leave in log order on one connection, so the stream stores them in that
//!   order. After a failed batch within one process (a reconnect can lose a publish
//!   while later ones are stored), the runner publishes again from the cursor with ids
//!   marked as a retry (`/r{n}`): the server keeps those copies, so the last copy of every
//!   key's records is in log order again; deduplicating them against the first attempt
//!   would leave the lost record after the later ones for good. Consumers drop repeats by
//!   the record's id (`Sluice-Id`), which increases per key.
//! - The client's allowance of unacknowledged publishes is above two batches' messages,
//!   so a batch's publishes never wait on acknowledgements the runner has not asked for.
//! - A wrong credential, an untrusted server certificate, a missing stream (unless
//!   `create_stream`) or a stream that does not take the sink's subjects stops the
//!   pipeline at once with the fix; a server that is down or restarting is waited out.
//! - Logs name the stream and subjects' pattern, never a credential or a row value.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{ConnectErrorKind, ConnectOptions, HeaderMap};
use serde::Deserialize;
use sluice_core::{Fault, Finding};
use sluice_log::RecordBatch;

use crate::broker::{self, Compression, Encoder, EncoderSettings, Encoding, Outgoing, Packing};
use crate::route::{covers, Flavor, Route};
use crate::{finding_for, Built, Capabilities, Context, InFlight, Secret, Sink, SinkSpec};

/// `type = "nats"`: the change stream published to a NATS JetStream stream, one JSON
/// record or one package per message.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Unique name of the sink within the pipeline.
    pub name: String,
    /// The server, `nats://host:4222` (`tls://` for TLS); several separated by commas.
    pub url: String,
    /// The JetStream stream that stores the messages.
    pub stream: String,
    /// Subject of each message: `{pipeline}`, `{schema}`, `{table}`, `{op}` and any
    /// column of the row (`orders.{account_id}`) are filled in from the record.
    #[serde(default = "default_subject")]
    #[schema(default = "sluice.{pipeline}.{schema}.{table}")]
    pub subject: String,
    /// Tables this sink takes (default: all).
    #[serde(default)]
    pub tables: Vec<String>,
    /// `json`: one record per message; `package`: one table's records per message
    /// (protobuf `sluice.v1.Package`).
    #[serde(default)]
    pub encoding: Encoding,
    /// `zstd` compresses each message.
    #[serde(default)]
    pub compression: Compression,
    /// Records in one package at most.
    #[serde(default = "default_package_records")]
    #[schema(default = 1000)]
    pub package_max_records: usize,
    /// Bytes in one package at most (before compression); keep it under the server's
    /// `max_payload` (1 MiB by default).
    #[serde(default = "default_package_bytes")]
    #[schema(default = 524288)]
    pub package_max_bytes: usize,
    /// How long a package waits for more records when fewer than a full one are there.
    #[serde(default = "default_package_wait")]
    #[schema(default = 100)]
    pub package_max_wait_ms: u64,
    /// Create the stream when it does not exist, with the settings below.
    #[serde(default)]
    pub create_stream: bool,
    /// The subjects of a stream Sluice creates (default: the subject template's, with
    /// a `*` for each field, e.g. `sluice.orders.*.*`).
    #[serde(default)]
    pub stream_subjects: Vec<String>,
    /// Where a stream Sluice creates keeps its messages.
    #[serde(default)]
    pub storage: Storage,
    /// When a stream Sluice creates lets messages go.
    #[serde(default)]
    pub retention: Retention,
    /// Seconds a message is kept in a stream Sluice creates (0: no limit).
    #[serde(default)]
    pub max_age_secs: u64,
    /// Bytes a stream Sluice creates keeps at most (0: no limit).
    #[serde(default)]
    pub max_bytes: u64,
    /// Messages a stream Sluice creates keeps at most (0: no limit).
    #[serde(default)]
    pub max_msgs: u64,
    /// Replicas of a stream Sluice creates (a cluster's servers).
    #[serde(default = "one")]
    #[schema(default = 1)]
    pub replicas: usize,
    /// Seconds within which a repeated `Nats-Msg-Id` is dropped, for a stream Sluice
    /// creates: longer than a restart takes.
    #[serde(default = "default_duplicate_window")]
    #[schema(default = 120)]
    pub duplicate_window_secs: u64,
    /// Token authentication.
    #[serde(default)]
    pub token: Option<Secret>,
    /// User for user and password authentication.
    #[serde(default)]
    pub user: Option<String>,
    /// Password for `user`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// NKey seed (`SU...`) for NKey authentication.
    #[serde(default)]
    pub nkey_seed: Option<Secret>,
    /// A credentials file's contents (user JWT and NKey seed), as `nsc` writes it.
    #[serde(default)]
    pub credentials: Option<Secret>,
    /// Path of a credentials file (relative to the configuration's directory).
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// Require TLS (implied by `ca_file` and by a `tls://` URL).
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the CA that signed the server's certificate (relative to the
    /// configuration's directory); default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<String>,
}

/// `storage` of a stream Sluice creates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

/// `retention` of a stream Sluice creates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// Kept until a limit (age, bytes, messages) is reached.
    #[default]
    Limits,
    /// Kept while a consumer has not acknowledged it.
    Interest,
    /// Kept until one consumer acknowledges it.
    Workqueue,
}

fn default_subject() -> String {
    "sluice.{pipeline}.{schema}.{table}".into()
}
pub(crate) fn default_package_records() -> usize {
    1000
}
pub(crate) fn default_package_bytes() -> usize {
    512 << 10
}
pub(crate) fn default_package_wait() -> u64 {
    100
}
fn one() -> usize {
    1
}
fn default_duplicate_window() -> u64 {
    120
}

/// How long a connection attempt (and an API request) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a publish waits for JetStream's acknowledgement before it is retried.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

impl NatsConfig {
    fn packing(&self) -> Packing {
        Packing {
            max_records: self.package_max_records,
            max_bytes: self.package_max_bytes,
            max_wait: Duration::from_millis(self.package_max_wait_ms),
        }
    }

    fn route(&self) -> Result<Route, crate::route::RouteError> {
        Route::parse(&self.subject, Flavor::Nats)
    }

    /// The subjects a stream must take: the template's pattern for this pipeline.
    fn pattern(&self, pipeline: &str) -> String {
        self.route()
            .map(|r| r.pattern_for(Some(pipeline)))
            .unwrap_or_default()
    }

    fn connection(&self) -> Connection<'_> {
        Connection {
            owner: format!("sink {:?}", self.name),
            url: &self.url,
            token: self.token.as_ref(),
            user: self.user.as_deref(),
            password: self.password.as_ref(),
            nkey_seed: self.nkey_seed.as_ref(),
            credentials: self.credentials.as_ref(),
            credentials_file: self.credentials_file.as_deref(),
            tls: self.tls,
            ca_file: self.ca_file.as_deref(),
        }
    }

    async fn connect(&self, ctx: &Context<'_>) -> Result<async_nats::Client, Fault> {
        self.connection()
            .connect(
                ctx.base_dir,
                format!("sluice {}/{}", ctx.pipeline, self.name),
            )
            .await
    }

    /// The stream, checked (or, when `create` and `create_stream`, created): it exists
    /// and takes the sink's subjects. A check does not create it: `sluice check` changes
    /// nothing; the start does.
    async fn ensure_stream(
        &self,
        js: &jetstream::Context,
        pipeline: &str,
        create: bool,
    ) -> Result<Stream, Fault> {
        let pattern = self.pattern(pipeline);
        let info = match js.get_stream(&self.stream).await {
            Ok(mut s) => s
                .info()
                .await
                .map_err(|e| {
                    Fault::transient(format!("nats: stream {:?} did not answer", self.stream))
                        .caused_by(e)
                })?
                .config
                .clone(),
            Err(e) if stream_missing(&e) => {
                if !self.create_stream {
                    return Err(Fault::definite(
                        format!("nats: stream {:?} does not exist", self.stream),
                        format!(
                            "create it (nats stream add {} --subjects '{pattern}'), or set create_stream = true on sink {:?}",
                            self.stream, self.name
                        ),
                    ));
                }
                if !create {
                    return Ok(Stream::ToCreate);
                }
                self.create(js, &pattern).await?;
                return Ok(Stream::Created);
            }
            Err(e) => {
                return Err(Fault::transient(format!(
                    "nats: stream {:?} could not be looked up",
                    self.stream
                ))
                .caused_by(e))
            }
        };
        if !info.subjects.iter().any(|f| covers(f, &pattern)) {
            return Err(Fault::definite(
                format!(
                    "nats: stream {:?} takes {:?}, not the sink's subjects {pattern:?}",
                    self.stream, info.subjects
                ),
                format!(
                    "add {pattern:?} to the stream's subjects, or change sink {:?}'s subject",
                    self.name
                ),
            ));
        }
        Ok(Stream::Takes)
    }

    async fn create(&self, js: &jetstream::Context, pattern: &str) -> Result<(), Fault> {
        let subjects = if self.stream_subjects.is_empty() {
            vec![pattern.to_owned()]
        } else {
            self.stream_subjects.clone()
        };
        let limit = |v: u64| {
            if v == 0 {
                -1
            } else {
                v.min(i64::MAX as u64) as i64
            }
        };
        let config = stream::Config {
            name: self.stream.clone(),
            subjects,
            storage: match self.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            retention: match self.retention {
                Retention::Limits => stream::RetentionPolicy::Limits,
                Retention::Interest => stream::RetentionPolicy::Interest,
                Retention::Workqueue => stream::RetentionPolicy::WorkQueue,
            },
            max_age: Duration::from_secs(self.max_age_secs),
            max_bytes: limit(self.max_bytes),
            max_messages: limit(self.max_msgs),
            num_replicas: self.replicas,
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            ..Default::default()
        };
        js.create_stream(config).await.map_err(|e| {
            use jetstream::context::CreateStreamErrorKind as K;
            let what = format!("nats: stream {:?} could not be created", self.stream);
            match e.kind() {
                K::TimedOut | K::JetStreamUnavailable => Fault::transient(what),
                _ => Fault::definite(
                    what,
                    "check the stream settings (replicas at most the cluster's servers; subjects not taken by another stream) and the user's JetStream permissions",
                ),
            }
            .caused_by(e)
        })?;
        tracing::info!(sink = %self.name, stream = %self.stream, "nats: stream created");
        Ok(())
    }
}

/// How to reach and authenticate to NATS: the NATS sink's connection settings, which a
/// JetStream log (`[log.jetstream]`) has too.
pub struct Connection<'a> {
    /// Whose settings these are, for messages (`sink "x"`, `[log.jetstream]`).
    pub owner: String,
    pub url: &'a str,
    pub token: Option<&'a Secret>,
    pub user: Option<&'a str>,
    pub password: Option<&'a Secret>,
    pub nkey_seed: Option<&'a Secret>,
    pub credentials: Option<&'a Secret>,
    /// Relative to the configuration's directory.
    pub credentials_file: Option<&'a str>,
    pub tls: bool,
    /// Relative to the configuration's directory.
    pub ca_file: Option<&'a str>,
}

impl Connection<'_> {
    /// Connects as `client_name`; a refusal no retry fixes is definite, with its fix.
    pub async fn connect(
        &self,
        base_dir: &Path,
        client_name: String,
    ) -> Result<async_nats::Client, Fault> {
        let o = self.options(base_dir, client_name).await?;
        // The client parses one address per string: a list is split here.
        let servers: Vec<&str> = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        o.connect(servers)
            .await
            .map_err(|e| classify_connect(&self.owner, e))
    }

    async fn options(&self, base_dir: &Path, name: String) -> Result<ConnectOptions, Fault> {
        let mut o = ConnectOptions::new()
            .name(name)
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(CONNECT_TIMEOUT));
        if let Some(t) = self.token {
            o = o.token(t.expose().to_owned());
        }
        if let (Some(u), Some(p)) = (self.user, self.password) {
            o = o.user_and_password(u.to_owned(), p.expose().to_owned());
        }
        if let Some(seed) = self.nkey_seed {
            o = o.nkey(seed.expose().to_owned());
        }
        let unreadable = |what: &str, e: std::io::Error| {
            Fault::definite(
                format!("nats: the {what} cannot be read"),
                format!(
                    "give {} a readable {what} (JWT and seed, as nsc writes it)",
                    self.owner
                ),
            )
            .caused_by(e)
        };
        if let Some(c) = self.credentials {
            o = o
                .credentials(c.expose())
                .map_err(|e| unreadable("credentials", e))?;
        }
        if let Some(f) = self.credentials_file {
            o = o
                .credentials_file(base_dir.join(f))
                .await
                .map_err(|e| unreadable("credentials_file", e))?;
        }
        if let Some(ca) = self.ca_file {
            o = o.add_root_certificates(base_dir.join(ca));
        }
        if self.tls || self.ca_file.is_some() {
            o = o.require_tls(true);
        }
        Ok(o)
    }
}

/// What [`NatsConfig::ensure_stream`] found.
enum Stream {
    /// It exists and takes the sink's subjects.
    Takes,
    Created,
    /// Missing, and `create_stream` is set: the start creates it.
    ToCreate,
}

fn stream_missing(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// A connection failure: what only the operator can fix stops the pipeline.
fn classify_connect(owner: &str, e: async_nats::ConnectError) -> Fault {
    let definite = |what: &str, fix: String| Fault::definite(format!("nats: {what}"), fix);
    let fault = match e.kind() {
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => definite(
            "the server refused the credentials",
            format!("check {owner}'s token, user and password, nkey_seed or credentials"),
        ),
        ConnectErrorKind::Tls => definite(
            "TLS failed: the server's certificate is not trusted, or the server does not speak TLS",
            format!("set {owner}'s ca_file to the CA that signed the server's certificate, or check the URL"),
        ),
        ConnectErrorKind::ServerParse => definite(
            "the URL cannot be parsed",
            format!("give {owner} a url like nats://host:4222"),
        ),
        _ if untrusted_certificate(&e) => definite(
            "TLS failed: the server's certificate is not trusted",
            format!("set {owner}'s ca_file to the CA that signed the server's certificate"),
        ),
        _ => Fault::transient("nats: the server cannot be reached"),
    };
    fault.caused_by(e)
}

/// Whether a connection failed on the server's certificate (the client reports it as an
/// I/O error): no retry makes it trusted.
fn untrusted_certificate(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        let tls = c.downcast_ref::<rustls::Error>().or_else(|| {
            c.downcast_ref::<std::io::Error>()?
                .get_ref()?
                .downcast_ref()
        });
        if matches!(tls, Some(rustls::Error::InvalidCertificate(_))) {
            return true;
        }
        cause = c.source();
    }
    false
}

/// A publish failure: the message that can never fit stops; the rest is retried.
fn classify_publish(e: async_nats::jetstream::context::PublishError) -> Fault {
    use jetstream::context::PublishErrorKind as K;
    match e.kind() {
        K::MaxPayloadExceeded => Fault::definite(
            "nats: a message is larger than the server's max_payload",
            "raise max_payload on the server, or lower package_max_bytes (packages) or use compression = \"zstd\"",
        )
        .caused_by(e),
        // "No responders": also while a stream's server restarts or elects a leader. The
        // start checked the stream; a stream deleted since is waited for, with this in
        // the log.
        K::StreamNotFound => Fault::transient(
            "nats: no stream answered for the subject (restarting, or deleted: restore it)",
        )
        .caused_by(e),
        _ => Fault::transient("nats: a publish was not acknowledged").caused_by(e),
    }
}

impl SinkSpec for NatsConfig {
    const DESCRIPTION: &'static str = "Publishes each change (JSON) or each table's changes in packages (protobuf, optionally zstd) to a NATS JetStream stream, on subjects made from the row.";
    const CAPABILITIES: Capabilities = Capabilities::NONE;

    fn name(&self) -> &str {
        &self.name
    }

    fn tables(&self) -> &[String] {
        &self.tables
    }

    fn validate(&self, errs: &mut Vec<String>) {
        let name = &self.name;
        if self.url.trim().is_empty() {
            errs.push(finding_for(
                name,
                "url is empty: give the server, e.g. nats://127.0.0.1:4222",
            ));
        }
        if self.url.contains('@') {
            errs.push(finding_for(name, "url holds credentials: give them as user and password, or token (sealed at rest, redacted in answers), and the url without them"));
        }
        if self.package_max_records > 100_000 {
            errs.push(finding_for(name, "package_max_records is at most 100000"));
        }
        if self.stream.is_empty() || self.stream.contains(['.', '*', '>', ' ', '\t']) {
            errs.push(finding_for(
                name,
                "stream must be a name without '.', '*', '>' or spaces",
            ));
        }
        if let Err(e) = self.route() {
            errs.push(finding_for(
                name,
                format_args!("subject {:?}: {e}", self.subject),
            ));
        }
        let methods = [
            self.token.is_some(),
            self.user.is_some() || self.password.is_some(),
            self.nkey_seed.is_some(),
            self.credentials.is_some() || self.credentials_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            errs.push(finding_for(
                name,
                "give one way to authenticate: token, user and password, nkey_seed, or credentials",
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            errs.push(finding_for(name, "user and password go together"));
        }
        if self.replicas == 0 || self.replicas > 5 {
            errs.push(finding_for(name, "replicas must be 1 to 5"));
        }
        broker::validate_packing(name, self.encoding, &self.packing(), errs);
    }

    async fn check(&self, ctx: &Context<'_>) -> Vec<Finding> {
        let mut out = broker::column_findings(&self.name, self.route().ok().as_ref(), ctx);
        let name = &self.name;
        let client = match self.connect(ctx).await {
            Ok(c) => c,
            Err(f) => {
                out.push(broker::fault_finding(name, "NATS server", &f));
                return out;
            }
        };
        let max_payload = client.server_info().max_payload;
        // A package's head and the headers come on top of its events.
        if self.encoding == Encoding::Package && self.package_max_bytes + 4096 > max_payload {
            out.push(Finding::fail(
                finding_for(
                    name,
                    format_args!(
                        "package_max_bytes {} is not 4 KiB below the server's max_payload {max_payload}",
                        self.package_max_bytes
                    ),
                ),
                "lower package_max_bytes, or raise max_payload on the server",
            ));
        }
        let js = jetstream::new(client);
        let (stream, pattern) = (&self.stream, self.pattern(ctx.pipeline));
        out.push(match self.ensure_stream(&js, ctx.pipeline, false).await {
            Ok(Stream::ToCreate) => Finding::pass(finding_for(
                name,
                format_args!("stream {stream:?} does not exist yet: it is created at start, taking {pattern}"),
            )),
            Ok(_) => Finding::pass(finding_for(name, format_args!("stream {stream:?} takes {pattern}"))),
            Err(f) => broker::fault_finding(name, &format!("stream {:?}", self.stream), &f),
        });
        out
    }

    async fn build(&self, ctx: &Context<'_>) -> Result<Built, Fault> {
        let route = self.route().map_err(|e| {
            Fault::definite(format!("nats: subject: {e}"), "fix the subject template")
        })?;
        let client = self.connect(ctx).await?;
        let (max_records, window) = broker::window(self.encoding, &self.packing());
        // Up to one message per record: two batches in flight, with room to spare.
        let js = jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .max_ack_inflight(2 * max_records + 1024)
            .build(client);
        self.ensure_stream(&js, ctx.pipeline, true).await?;
        let encoder = Encoder::new(EncoderSettings {
            pipeline: ctx.pipeline,
            route,
            encoding: self.encoding,
            compression: self.compression,
            packing: self.packing(),
            keyed: false,
            columns: ctx.columns,
        });
        Ok(Built::Batches {
            sink: Box::new(NatsSink {
                name: self.name.clone(),
                id_prefix: format!("{}/{}/", ctx.pipeline, self.name),
                retries: Default::default(),
                js,
                encoder,
                messages: Vec::new(),
            }),
            max_records,
            window,
        })
    }
}

/// The running sink.
struct NatsSink {
    name: String,
    /// `{pipeline}/{sink}/`, before each `Nats-Msg-Id`.
    id_prefix: String,
    /// Failed batches so far in this process: ids published after one carry `/r{n}`.
    retries: std::sync::Arc<std::sync::atomic::AtomicU64>,
    js: jetstream::Context,
    encoder: Encoder,
    messages: Vec<Outgoing>,
}

impl Sink for NatsSink {
    async fn deliver(&mut self, batch: &RecordBatch) -> Result<(), Fault> {
        self.start(batch).await?.await
    }

    async fn start(&mut self, batch: &RecordBatch) -> Result<InFlight, Fault> {
        use std::sync::atomic::Ordering;
        self.messages.clear();
        self.encoder.encode(batch, &mut self.messages)?;
        let retry = self.retries.load(Ordering::Relaxed);
        let mut acks = Vec::with_capacity(self.messages.len());
        for m in self.messages.drain(..) {
            let mut msg_id = String::with_capacity(self.id_prefix.len() + m.id.len() + 8);
            msg_id.push_str(&self.id_prefix);
            msg_id.push_str(&m.id);
            if retry > 0 {
                msg_id.push_str(&format!("/r{retry}"));
            }
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", msg_id.as_str());
            for (name, value) in self.encoder.headers(&m) {
                headers.insert(name, value.as_ref());
            }
            let sent = self
                .js
                .publish_with_headers(m.route, headers, m.payload.into())
                .await;
            match sent {
                Ok(ack) => acks.push(ack),
                Err(e) => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    return Err(classify_publish(e));
                }
            }
        }
        let (name, retries) = (self.name.clone(), self.retries.clone());
        Ok(Box::pin(async move {
            let mut repeats = 0usize;
            for ack in acks {
                match ack.await {
                    Ok(a) => repeats += usize::from(a.duplicate),
                    Err(e) => {
                        retries.fetch_add(1, Ordering::Relaxed);
                        return Err(classify_publish(e));
                    }
                }
            }
            if repeats > 0 {
                // Publishes sent again by a new process from the cursor, which the stream
                // already held: dropped by their Nats-Msg-Id.
                tracing::info!(sink = %name, repeats, "nats: the server dropped repeated publishes it already stored");
            }
            Ok(())
        }))
    }
}
