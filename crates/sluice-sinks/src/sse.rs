//! The SSE sink's configuration. Server-Sent Events are served by the HTTP server, one
//! log reader per client (`sluice-server`'s `sse.rs`); this module says what a sink of
//! `type = "sse"` is and what the server needs to serve it.

use std::time::Duration;

use serde::Deserialize;
use sluice_core::{Fault, Finding};

use crate::{finding_for, Built, Context, SinkSpec};

/// `type = "sse"`: Server-Sent Events at `GET /v1/sinks/<name>/events` on the HTTP server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseConfig {
    /// Unique name of the sink within the pipeline (the URL path).
    pub name: String,
    /// Tables this sink serves (`schema.table` or `schema.*`; default: all).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Seconds a client's buffer may stay full before it is disconnected.
    #[serde(default = "default_slow_client")]
    pub slow_client_timeout_secs: u64,
}

fn default_slow_client() -> u64 {
    10
}

/// What the server needs to serve one SSE sink.
#[derive(Debug, Clone)]
pub struct SseOptions {
    /// Tables it serves (`schema.table` or `schema.*`; empty: all).
    pub tables: Vec<String>,
    /// A client whose buffer stays full this long is disconnected.
    pub slow_client_timeout: Duration,
    /// Batches of events buffered per client.
    pub buffer: usize,
}

impl SinkSpec for SseConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn tables(&self) -> &[String] {
        &self.tables
    }

    fn validate(&self, errs: &mut Vec<String>) {
        if self.slow_client_timeout_secs == 0 {
            errs.push(finding_for(
                &self.name,
                "slow_client_timeout_secs must be at least 1",
            ));
        }
    }

    async fn check(&self, _ctx: &Context<'_>) -> Vec<Finding> {
        vec![Finding::pass(finding_for(
            &self.name,
            "served by the HTTP server",
        ))]
    }

    async fn build(&self, _ctx: &Context<'_>) -> Result<Built, Fault> {
        Ok(Built::Served(SseOptions {
            tables: self.tables.clone(),
            slow_client_timeout: Duration::from_secs(self.slow_client_timeout_secs),
            // 4 batches of ≤ 256 KiB: about 1 MiB per client at most.
            buffer: 4,
        }))
    }

    fn needs_server(&self) -> bool {
        true
    }
}
