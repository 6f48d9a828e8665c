//! Kafka: each record (or each package of one table's records) produced to a topic
//! rendered from the record, through librdkafka's idempotent producer.
//!
//! Invariants:
//! - The producer is idempotent (`enable.idempotence`, acks from every in-sync
//!   replica): the broker drops the producer's own retries, and per partition messages
//!   are stored in the order they were produced.
//! - A record's message key is its key (the replica identity columns as JSON), so one
//!   key's records share a partition and keep their order; a package's key is its
//!   `schema.table`, so one table's packages do.
//! - The cursor moves only over messages the broker acknowledged: a batch is
//!   acknowledged once every delivery report of it is a success. After a failure the
//!   runner starts again from the cursor (duplicates carry the same `sluice-id`).
//! - A refused credential or permission, a topic that does not exist (unless
//!   `create_topics`), or a message over the broker's size limit stops the pipeline
//!   with the fix; brokers that are down are waited out.
//! - Secrets (`sasl_password`, `ssl_key_password`) are declared as secrets and never
//!   accepted in `options`, so they are sealed at rest and redacted in answers.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use serde::Deserialize;
use sluice_core::{Fault, Finding};
use sluice_log::RecordBatch;

use crate::broker::{self, Compression, Encoder, EncoderSettings, Encoding, Outgoing, Packing};
use crate::route::{Flavor, Route};
use crate::{finding_for, Built, Capabilities, Context, InFlight, Secret, Sink, SinkSpec};

/// `type = "kafka"`: the change stream produced to Kafka topics, one JSON record or one
/// package per message, keyed by the row's key.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Unique name of the sink within the pipeline.
    pub name: String,
    /// Bootstrap brokers, `host:9092` (several separated by commas).
    pub brokers: String,
    /// Topic of each message: `{pipeline}`, `{schema}`, `{table}`, `{op}` and any column
    /// of the row are filled in from the record (characters Kafka does not allow in a
    /// topic become `_`).
    #[serde(default = "default_topic")]
    #[schema(default = "sluice.{pipeline}.{schema}.{table}")]
    pub topic: String,
    /// Tables this sink takes (default: all).
    #[serde(default)]
    pub tables: Vec<String>,
    /// `json`: one record per message; `package`: one table's records per message
    /// (protobuf `sluice.v1.Package`).
    #[serde(default)]
    pub encoding: Encoding,
    /// `zstd` compresses each message's value.
    #[serde(default)]
    pub compression: Compression,
    /// Records in one package at most.
    #[serde(default = "crate::nats::default_package_records")]
    #[schema(default = 1000)]
    pub package_max_records: usize,
    /// Bytes in one package at most (before compression); keep it under the broker's
    /// `message.max.bytes`.
    #[serde(default = "crate::nats::default_package_bytes")]
    #[schema(default = 524288)]
    pub package_max_bytes: usize,
    /// How long a package waits for more records when fewer than a full one are there.
    #[serde(default = "crate::nats::default_package_wait")]
    #[schema(default = 100)]
    pub package_max_wait_ms: u64,
    /// Create a topic the first time a message goes to it (with `partitions` and
    /// `replication_factor`), rather than relying on the broker's automatic creation.
    #[serde(default)]
    pub create_topics: bool,
    /// Partitions of a topic Sluice creates.
    #[serde(default = "default_partitions")]
    #[schema(default = 6)]
    pub partitions: i32,
    /// Replicas of a topic Sluice creates.
    #[serde(default = "default_replication")]
    #[schema(default = 1)]
    pub replication_factor: i32,
    /// Client settings passed to librdkafka as they are, for TLS and SASL:
    /// `security.protocol`, `ssl.ca.location`, `sasl.mechanisms`, `sasl.username`...
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// SASL password (librdkafka's `sasl.password`).
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// Password of the client's TLS key (`ssl.key.password`).
    #[serde(default)]
    pub ssl_key_password: Option<Secret>,
}

fn default_topic() -> String {
    "sluice.{pipeline}.{schema}.{table}".into()
}
fn default_partitions() -> i32 {
    6
}
fn default_replication() -> i32 {
    1
}

/// librdkafka settings that hold secrets: only through the declared secret fields.
const SECRET_OPTIONS: &[&str] = &[
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.key.pem",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.assertion.private.key.pem",
    "sasl.oauthbearer.assertion.private.key.passphrase",
];

/// Whether a librdkafka setting may hold a secret: the known ones, and any whose name
/// says so (a new librdkafka may add more).
fn secret_option(key: &str) -> bool {
    SECRET_OPTIONS.contains(&key)
        || ["password", "secret", "passphrase", "private"]
            .iter()
            .any(|w| key.contains(w))
}

/// Settings Sluice decides: they carry its ordering and acknowledgement rules.
const FIXED_OPTIONS: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "client.id",
];

/// How long a metadata look-up in a check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

impl KafkaConfig {
    fn packing(&self) -> Packing {
        Packing {
            max_records: self.package_max_records,
            max_bytes: self.package_max_bytes,
            max_wait: Duration::from_millis(self.package_max_wait_ms),
        }
    }

    fn route(&self) -> Result<Route, crate::route::RouteError> {
        Route::parse(&self.topic, Flavor::Kafka)
    }

    fn client_config(&self, ctx: &Context<'_>) -> ClientConfig {
        let mut c = ClientConfig::new();
        // A default the options may change: a few milliseconds to fill a request.
        c.set("linger.ms", "5");
        for (k, v) in &self.options {
            c.set(k, v);
        }
        // Sluice's own (validate refuses them in options): ordering and acknowledgement
        // depend on them.
        c.set("bootstrap.servers", &self.brokers)
            .set(
                "client.id",
                format!("sluice-{}-{}", ctx.pipeline, self.name),
            )
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            // Unacknowledged after this long: reported as failed, and the batch is
            // produced again from the cursor.
            .set("message.timeout.ms", "30000");
        if let Some(p) = &self.sasl_password {
            c.set("sasl.password", p.expose());
        }
        if let Some(p) = &self.ssl_key_password {
            c.set("ssl.key.password", p.expose());
        }
        c
    }

    fn producer(&self, ctx: &Context<'_>, observer: &Observer) -> Result<KafkaProducer, Fault> {
        self.client_config(ctx)
            .create_with_context(observer.clone())
            .map_err(|e| {
                Fault::definite(
                    "kafka: the client cannot be created from the settings",
                    format!(
                        "check sink {:?}'s options (librdkafka's names and values)",
                        self.name
                    ),
                )
                .caused_by(e)
            })
    }

    /// The brokers answer a metadata request (reachable, authenticated). librdkafka
    /// reports a refused login beside the request (which only times out): the
    /// observer's record of it makes the failure definite.
    async fn probe(&self, ctx: &Context<'_>) -> Result<usize, Fault> {
        let observer = Observer::default();
        let producer = self.producer(ctx, &observer)?;
        let answer = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, CHECK_TIMEOUT)
                .map(|m| m.brokers().len())
        })
        .await
        .map_err(|e| Fault::fatal("kafka: the metadata request was lost").caused_by(e))?;
        match (answer, observer.refused(&self.name)) {
            (_, Some(refused)) => Err(refused),
            (Ok(n), None) => Ok(n),
            (Err(e), None) => Err(classify(&self.name, e)),
        }
    }
}

/// The producer's client: librdkafka with an [`Observer`].
type KafkaProducer = FutureProducer<Observer>;

/// Watches librdkafka's errors for a refused login, which it reports on its own
/// thread rather than with the request that fails.
#[derive(Clone, Default)]
struct Observer {
    refused: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Observer {
    /// The refused login, as a definite fault, if the brokers refused one.
    fn refused(&self, sink: &str) -> Option<Fault> {
        let reason = self.refused.lock().ok()?.clone()?;
        Some(Fault::definite(
            format!("kafka: the brokers refused the credentials ({reason})"),
            format!("check sink {sink:?}'s sasl settings (options) and sasl_password"),
        ))
    }
}

impl ClientContext for Observer {
    fn error(&self, error: KafkaError, reason: &str) {
        use RDKafkaErrorCode as C;
        if matches!(
            error.rdkafka_error_code(),
            Some(C::Authentication | C::SaslAuthenticationFailed)
        ) {
            if let Ok(mut r) = self.refused.lock() {
                // librdkafka's reason names the mechanism and the broker's answer, never
                // the password.
                *r = Some(reason.to_owned());
            }
        }
        tracing::warn!(error = %error, reason, "kafka: client error");
    }
}

/// A Kafka failure: what only the operator can fix stops the pipeline.
fn classify(sink: &str, e: KafkaError) -> Fault {
    use RDKafkaErrorCode as C;
    let definite = |what: &str, fix: String| Fault::definite(format!("kafka: {what}"), fix);
    let fault = match e.rdkafka_error_code() {
        Some(C::Authentication | C::SaslAuthenticationFailed) => definite(
            "the brokers refused the credentials",
            format!("check sink {sink:?}'s sasl settings and sasl_password"),
        ),
        Some(C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed) => definite(
            "the brokers refused the user permission to produce",
            "grant the user WRITE (and IDEMPOTENT_WRITE on the cluster) on the topics".into(),
        ),
        Some(C::UnknownTopic | C::UnknownTopicOrPartition) => definite(
            "a topic does not exist",
            format!("create the topic, or set create_topics = true on sink {sink:?}"),
        ),
        Some(
            C::InvalidReplicationFactor | C::InvalidPartitions | C::InvalidTopic | C::PolicyViolation,
        ) => definite(
            "the brokers refused to create a topic",
            format!("check sink {sink:?}'s partitions and replication_factor (at most the brokers' count) and its topic template (a name may collide with another once `.` and `_` are alike)"),
        ),
        Some(C::MessageSizeTooLarge) => definite(
            "a message is larger than the broker takes",
            "raise message.max.bytes on the broker, or lower package_max_bytes or use compression = \"zstd\"".into(),
        ),
        _ => Fault::transient("kafka: the brokers did not acknowledge a message"),
    };
    fault.caused_by(e)
}

impl SinkSpec for KafkaConfig {
    const DESCRIPTION: &'static str = "Produces each change (JSON) or each table's changes in packages (protobuf, optionally zstd) to Kafka topics made from the row, keyed by the row's key, through an idempotent producer.";
    const CAPABILITIES: Capabilities = Capabilities::NONE;

    fn name(&self) -> &str {
        &self.name
    }

    fn tables(&self) -> &[String] {
        &self.tables
    }

    fn validate(&self, errs: &mut Vec<String>) {
        let name = &self.name;
        if self.brokers.trim().is_empty() {
            errs.push(finding_for(name, "brokers is empty: give host:9092"));
        }
        if let Err(e) = self.route() {
            errs.push(finding_for(
                name,
                format_args!("topic {:?}: {e}", self.topic),
            ));
        }
        for k in self.options.keys() {
            if secret_option(k) {
                errs.push(finding_for(name, format_args!("options.{k:?} holds a secret: use sasl_password or ssl_key_password, which are sealed and redacted")));
            }
            if FIXED_OPTIONS.contains(&k.as_str()) {
                errs.push(finding_for(name, format_args!("options.{k:?} is set by Sluice (its ordering and acknowledgement rules depend on it): leave it out")));
            }
        }
        if self.create_topics && (self.partitions < 1 || self.replication_factor < 1) {
            errs.push(finding_for(
                name,
                "partitions and replication_factor must be at least 1",
            ));
        }
        broker::validate_packing(name, self.encoding, &self.packing(), errs);
    }

    async fn check(&self, ctx: &Context<'_>) -> Vec<Finding> {
        let mut out = broker::column_findings(&self.name, self.route().ok().as_ref(), ctx);
        out.push(match self.probe(ctx).await {
            Ok(n) => Finding::pass(finding_for(
                &self.name,
                format_args!("kafka: {n} broker(s) answered"),
            )),
            Err(f) => broker::fault_finding(&self.name, "kafka brokers", &f),
        });
        out
    }

    async fn build(&self, ctx: &Context<'_>) -> Result<Built, Fault> {
        let route = self
            .route()
            .map_err(|e| Fault::definite(format!("kafka: topic: {e}"), "fix the topic template"))?;
        let observer = Observer::default();
        let producer = self.producer(ctx, &observer)?;
        let admin = if self.create_topics {
            let admin: AdminClient<DefaultClientContext> = self
                .client_config(ctx)
                .create()
                .map_err(|e| classify(&self.name, e))?;
            Some(admin)
        } else {
            None
        };
        let encoder = Encoder::new(EncoderSettings {
            pipeline: ctx.pipeline,
            route,
            encoding: self.encoding,
            compression: self.compression,
            packing: self.packing(),
            keyed: true,
            columns: ctx.columns,
        });
        let (max_records, window) = broker::window(self.encoding, &self.packing());
        Ok(Built::Batches {
            sink: Box::new(KafkaSink {
                name: self.name.clone(),
                config: self.client_config(ctx),
                observer,
                producer,
                encoder,
                admin,
                topics: TopicSpec {
                    partitions: self.partitions,
                    replication: self.replication_factor,
                    known: HashSet::new(),
                },
                messages: Vec::new(),
            }),
            max_records,
            window,
        })
    }
}

/// Topics Sluice creates, and those it knows exist.
struct TopicSpec {
    partitions: i32,
    replication: i32,
    known: HashSet<String>,
}

/// The running sink.
struct KafkaSink {
    name: String,
    /// The producer's settings, to replace it after a fatal error.
    config: ClientConfig,
    observer: Observer,
    producer: KafkaProducer,
    encoder: Encoder,
    admin: Option<AdminClient<DefaultClientContext>>,
    topics: TopicSpec,
    messages: Vec<Outgoing>,
}

impl KafkaSink {
    /// Creates the topics of `messages` not known yet (`create_topics`).
    async fn create_topics(&mut self) -> Result<(), Fault> {
        let Some(admin) = &self.admin else {
            return Ok(());
        };
        let new: Vec<String> = self
            .messages
            .iter()
            .map(|m| &m.route)
            .filter(|t| !self.topics.known.contains(*t))
            .collect::<HashSet<_>>()
            .into_iter()
            .cloned()
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let specs: Vec<NewTopic<'_>> = new
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.topics.partitions,
                    TopicReplication::Fixed(self.topics.replication),
                )
            })
            .collect();
        let results = admin
            .create_topics(&specs, &AdminOptions::new())
            .await
            .map_err(|e| classify(&self.name, e))?;
        for r in results {
            match r {
                Ok(t) | Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    self.topics.known.insert(t);
                }
                Err((t, code)) => {
                    return Err(classify(&self.name, KafkaError::AdminOp(code))
                        .within(format_args!("creating topic {t:?}")))
                }
            }
        }
        Ok(())
    }

    fn record<'a>(&self, m: &'a Outgoing) -> FutureRecord<'a, [u8], [u8]> {
        let mut headers = OwnedHeaders::new();
        for (name, value) in self.encoder.headers(m) {
            headers = headers.insert(Header {
                key: &name.to_ascii_lowercase(),
                value: Some(value.as_bytes()),
            });
        }
        FutureRecord::to(&m.route)
            .key(m.key.as_slice())
            .payload(m.payload.as_slice())
            .headers(headers)
    }
}

/// Waits for one delivery report.
async fn delivered(sink: &str, f: DeliveryFuture) -> Result<(), Fault> {
    match f.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(classify(sink, e)),
        Err(_) => Err(Fault::transient(
            "kafka: the producer went away before the broker answered",
        )),
    }
}

impl Sink for KafkaSink {
    async fn deliver(&mut self, batch: &RecordBatch) -> Result<(), Fault> {
        self.start(batch).await?.await
    }

    async fn start(&mut self, batch: &RecordBatch) -> Result<InFlight, Fault> {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            // An idempotent producer that lost its sequence cannot go on: a new one
            // starts over from the cursor (the runner rewound it).
            tracing::warn!(sink = %self.name, code = ?code, reason = %reason, "kafka: the producer failed; starting a new one");
            self.producer = self
                .config
                .create_with_context(self.observer.clone())
                .map_err(|e| classify(&self.name, e))?;
        }
        if let Some(refused) = self.observer.refused(&self.name) {
            return Err(refused);
        }
        self.messages.clear();
        self.encoder.encode(batch, &mut self.messages)?;
        self.create_topics().await?;
        let mut acks: VecDeque<DeliveryFuture> = VecDeque::with_capacity(self.messages.len());
        for m in &self.messages {
            let mut record = self.record(m);
            loop {
                match self.producer.send_result(record) {
                    Ok(f) => {
                        acks.push_back(f);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        // The client's queue is full: wait for the oldest report first.
                        record = r;
                        match acks.pop_front() {
                            Some(f) => delivered(&self.name, f).await?,
                            None => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                    Err((e, _)) => return Err(classify(&self.name, e)),
                }
            }
        }
        let name = self.name.clone();
        Ok(Box::pin(async move {
            for f in acks {
                delivered(&name, f).await?;
            }
            Ok(())
        }))
    }
}
