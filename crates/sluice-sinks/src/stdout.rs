//! The stdout sink: JSON lines on standard output, written by the file sink's writer.

use serde::Deserialize;
use sluice_core::{Fault, Finding};

use crate::file::LineSink;
use crate::{finding_for, Built, Context, SinkSpec};

/// `type = "stdout"`: JSON lines on standard output.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// Unique name of the sink within the pipeline.
    pub name: String,
    /// Tables this sink takes (`schema.table` or `schema.*`; default: all).
    #[serde(default)]
    pub tables: Vec<String>,
}

impl SinkSpec for StdoutConfig {
    const DESCRIPTION: &'static str = "Prints each change as a line of JSON on standard output.";

    fn name(&self) -> &str {
        &self.name
    }

    fn tables(&self) -> &[String] {
        &self.tables
    }

    fn validate(&self, _errs: &mut Vec<String>) {}

    async fn check(&self, _ctx: &Context<'_>) -> Vec<Finding> {
        vec![Finding::pass(finding_for(&self.name, "standard output"))]
    }

    async fn build(&self, _ctx: &Context<'_>) -> Result<Built, Fault> {
        Ok(Built::Batches {
            sink: Box::new(LineSink::stdout()),
            max_records: crate::file::BATCH,
            window: None,
        })
    }
}
