//! `[log] backend = "jetstream"`: the pipeline's log in a NATS JetStream stream
//! (`sluice-jetstream`), with the NATS sink's connection settings.
//!
//! The source's state goes to a key-value bucket beside the stream (`{stream}_STATE`), so
//! an instance on another machine that takes over finds the slot; the cursors and the
//! delivery state stay in the data directory (`jetstream/`), as the embedded log keeps
//! them beside its segments.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use sluice_core::{ErrorClass, Fault, Finding};
use sluice_sinks::nats::Connection;
use sluice_sinks::Secret;

/// `[log.jetstream]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamSection {
    /// The servers, `nats://host:4222` (`tls://` for TLS); several separated by commas.
    pub url: String,
    /// The stream that holds the log (default: `SLUICE_LOG_{pipeline}`), created with the
    /// settings below when missing.
    #[serde(default)]
    pub stream: Option<String>,
    /// Its subjects are `{subject_prefix}.{partition}` (default: `sluice.log.{pipeline}`).
    #[serde(default)]
    pub subject_prefix: Option<String>,
    /// Partitions (by key) of a stream created now; fixed for the stream's life.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Replicas of a stream created now (at most the cluster's servers; 3 survives the
    /// loss of one).
    #[serde(default = "one")]
    pub replicas: usize,
    /// `file` (default) or `memory`, for a stream created now.
    #[serde(default)]
    pub storage: Storage,
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
    /// A credentials file's contents (user JWT and NKey seed).
    #[serde(default)]
    pub credentials: Option<Secret>,
    /// Path of a credentials file (relative to the configuration's directory).
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// Require TLS (implied by `ca_file` and a `tls://` URL).
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the CA that signed the servers' certificates.
    #[serde(default)]
    pub ca_file: Option<String>,
}

/// Where a stream created now keeps its messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

fn default_partitions() -> u32 {
    16
}

fn one() -> usize {
    1
}

impl JetStreamSection {
    /// What is wrong with the section, without I/O.
    pub fn validate(&self, errs: &mut Vec<String>) {
        if self.url.trim().is_empty() {
            errs.push(
                "log.jetstream.url is empty: give the NATS servers, e.g. nats://127.0.0.1:4222"
                    .into(),
            );
        }
        if !(1..=1024).contains(&self.partitions) {
            errs.push(format!(
                "log.jetstream.partitions = {} must be between 1 and 1024",
                self.partitions
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            errs.push(format!(
                "log.jetstream.replicas = {} must be between 1 and 5 (JetStream's limit)",
                self.replicas
            ));
        }
        for (what, v) in [
            ("stream", &self.stream),
            ("subject_prefix", &self.subject_prefix),
        ] {
            if v.as_deref()
                .is_some_and(|v| v.is_empty() || v.contains(['*', '>', ' ', '\t']))
            {
                errs.push(format!(
                    "log.jetstream.{what} must be a non-empty name without spaces, '*' or '>'"
                ));
            }
        }
        if self.stream.as_deref().is_some_and(|v| v.contains('.')) {
            errs.push("log.jetstream.stream must not contain '.' (a JetStream stream name)".into());
        }
    }

    fn connection(&self) -> Connection<'_> {
        Connection {
            owner: "[log.jetstream]".into(),
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

    /// The stream's settings for pipeline `pipeline`.
    fn settings(
        &self,
        pipeline: &str,
        max_bytes: u64,
        retention: Duration,
        data_dir: &Path,
    ) -> sluice_jetstream::Settings {
        // Stream names take no '.', and pipeline names may hold '-'.
        let name: String = pipeline
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        sluice_jetstream::Settings {
            stream: self
                .stream
                .clone()
                .unwrap_or_else(|| format!("SLUICE_LOG_{name}")),
            subject_prefix: self
                .subject_prefix
                .clone()
                .unwrap_or_else(|| format!("sluice.log.{name}")),
            partitions: self.partitions,
            replicas: self.replicas,
            file_storage: self.storage == Storage::File,
            max_bytes,
            retention,
            state_dir: data_dir.join("jetstream"),
        }
    }

    /// `sluice check`'s finding: the servers reachable with these credentials, the stream
    /// there (or to be created) and taking the log's subjects.
    pub async fn finding(&self, pipeline: &str, max_bytes: u64, base_dir: &Path) -> Finding {
        let settings = self.settings(pipeline, max_bytes, Duration::ZERO, base_dir);
        let checked = async {
            let client = self
                .connection()
                .connect(base_dir, format!("sluice {pipeline}/check"))
                .await?;
            sluice_jetstream::check(client, &settings).await
        };
        match checked.await {
            Ok(what) => Finding::pass(format!("log: {what}")),
            Err(f) => {
                let what = format!("log: {f}");
                let fix = f.fix.clone().unwrap_or_else(|| "check that the NATS servers in [log.jetstream] url are up and have JetStream enabled".into());
                if f.class == ErrorClass::Definite {
                    Finding::fail(what, fix)
                } else {
                    Finding::warn(what, fix)
                }
            }
        }
    }

    /// Connects and opens the log, and the bucket of the source's state beside it.
    pub async fn open(
        &self,
        pipeline: &str,
        max_bytes: u64,
        retention: Duration,
        base_dir: &Path,
        data_dir: &Path,
    ) -> Result<(sluice_jetstream::Opened, sluice_jetstream::KvState), Fault> {
        let client = self
            .connection()
            .connect(base_dir, format!("sluice {pipeline}/log"))
            .await?;
        let settings = self.settings(pipeline, max_bytes, retention, data_dir);
        let bucket = format!("{}_STATE", settings.stream);
        let (section, base, name) = (
            self.clone(),
            base_dir.to_owned(),
            format!("sluice {pipeline}/state"),
        );
        let connect: sluice_jetstream::Connect = Box::new(move || {
            Box::pin(async move { section.connection().connect(&base, name).await })
        });
        let state = sluice_jetstream::open_state(
            connect,
            &bucket,
            self.replicas,
            self.storage == Storage::File,
        )
        .await?;
        Ok((sluice_jetstream::open(client, settings).await?, state))
    }
}
