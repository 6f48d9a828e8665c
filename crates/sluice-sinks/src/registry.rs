//! The registry of sinks: the `type` name of a `[[sinks]]` entry and the module that
//! implements it. One line per sink; an optional sink's line carries its cargo feature.
//!
//! Invariant: [`SinkConfig`] only dispatches; what a sink is and does lives in its module.

use std::path::Path;

use serde::Deserialize;

use crate::{Built, Context, Events, Fault, Finding, SinkSpec};

macro_rules! registry {
    ($($(#[$attr:meta])* $tag:literal => $variant:ident($module:ident::$config:ident),)*) => {
        /// One `[[sinks]]` entry, by its `type`.
        #[derive(Debug, Clone, PartialEq, Deserialize)]
        #[serde(tag = "type")]
        pub enum SinkConfig {
            $($(#[$attr])* #[serde(rename = $tag)] $variant(crate::$module::$config),)*
        }

        impl SinkConfig {
            /// The `type` name.
            pub fn kind(&self) -> &'static str {
                match self { $($(#[$attr])* SinkConfig::$variant(_) => $tag,)* }
            }

            fn spec(&self) -> &dyn SpecObject {
                match self { $($(#[$attr])* SinkConfig::$variant(c) => c,)* }
            }

            pub async fn check(&self, ctx: &Context<'_>) -> Vec<Finding> {
                match self { $($(#[$attr])* SinkConfig::$variant(c) => c.check(ctx).await,)* }
            }

            pub async fn build(&self, ctx: &Context<'_>) -> Result<Built, Fault> {
                let built = match self {
                    $($(#[$attr])* SinkConfig::$variant(c) => c.build(ctx).await,)*
                };
                built.map_err(|e| e.within(format_args!("sink {:?}", self.name())))
            }
        }
    };
}

registry! {
    "file" => File(file::FileConfig),
    "stdout" => Stdout(stdout::StdoutConfig),
    #[cfg(feature = "redis")]
    "redis" => Redis(redis::RedisConfig),
    "sse" => Sse(sse::SseConfig),
    #[cfg(feature = "webhook")]
    "webhook" => Webhook(webhook::WebhookConfig),
    "pull" => Pull(pull::PullConfig),
}

/// The synchronous part of [`SinkSpec`], object-safe, for dispatch without a match per
/// method.
trait SpecObject {
    fn name(&self) -> &str;
    fn tables(&self) -> &[String];
    fn validate(&self, errs: &mut Vec<String>);
    fn events(&self) -> Option<Events<'_>>;
    fn needs_primary_key(&self) -> bool;
    fn needs_server(&self) -> bool;
    fn exclusive_path(&self) -> Option<&Path>;
}

impl<T: SinkSpec> SpecObject for T {
    fn name(&self) -> &str {
        SinkSpec::name(self)
    }
    fn tables(&self) -> &[String] {
        SinkSpec::tables(self)
    }
    fn validate(&self, errs: &mut Vec<String>) {
        SinkSpec::validate(self, errs)
    }
    fn events(&self) -> Option<Events<'_>> {
        SinkSpec::events(self)
    }
    fn needs_primary_key(&self) -> bool {
        SinkSpec::needs_primary_key(self)
    }
    fn needs_server(&self) -> bool {
        SinkSpec::needs_server(self)
    }
    fn exclusive_path(&self) -> Option<&Path> {
        SinkSpec::exclusive_path(self)
    }
}

impl SinkConfig {
    pub fn name(&self) -> &str {
        self.spec().name()
    }

    pub fn tables(&self) -> &[String] {
        self.spec().tables()
    }

    /// Pure checks of this sink's own settings.
    pub fn validate(&self, errs: &mut Vec<String>) {
        self.spec().validate(errs)
    }

    pub fn events(&self) -> Option<Events<'_>> {
        self.spec().events()
    }

    pub fn needs_primary_key(&self) -> bool {
        self.spec().needs_primary_key()
    }

    pub fn needs_server(&self) -> bool {
        self.spec().needs_server()
    }

    pub fn exclusive_path(&self) -> Option<&Path> {
        self.spec().exclusive_path()
    }

    /// Whether the sink reads the log through a cursor of its own. Only a sink served by
    /// the HTTP server without the engine (SSE) does not: each client reads on its own.
    pub fn has_cursor(&self) -> bool {
        !self.needs_server() || self.events().is_some()
    }

    /// The outbox tables whose finished rows this sink asks to delete.
    pub fn deletes_delivered(&self) -> &[String] {
        match self.events() {
            Some(e) if e.delete_delivered => e.outbox_tables,
            _ => &[],
        }
    }

    /// The filter of records this sink reads from the log: its tables, and for an
    /// engine-driven sink its outbox tables and topics.
    pub fn filter(&self) -> crate::TableFilter {
        match self.events() {
            Some(e) => {
                let mut tables = self.tables().to_vec();
                tables.extend(e.outbox_tables.iter().cloned());
                crate::TableFilter::with_topics(&tables, e.topics)
            }
            None => crate::TableFilter::new(self.tables()),
        }
    }

    /// Among `captured` (`schema.table`), the tables this sink takes.
    pub fn takes(&self, captured: &[String]) -> Vec<String> {
        let filter = crate::TableFilter::new(self.tables());
        captured
            .iter()
            .filter(|t| {
                let (s, n) = t.split_once('.').unwrap_or(("", t));
                filter.accepts(sluice_core::Op::Insert, s, n)
            })
            .cloned()
            .collect()
    }
}
