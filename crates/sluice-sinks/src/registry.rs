//! The registry of sinks: the `type` name of a `[[sinks]]` entry and the module that
//! implements it. One line per sink; an optional sink's line carries its cargo feature.
//!
//! Invariants:
//! - [`SinkConfig`] only dispatches; what a sink is and does lives in its module.
//! - What the API and the console know of a sink ([`sink_types`], the OpenAPI schema of
//!   [`SinkConfig`]) is derived from its configuration type, never written elsewhere.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{Discriminator, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;

use crate::{Built, Capabilities, Context, Events, Fault, Finding, SinkSpec};

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

        /// Every sink type this build has, described from its configuration type.
        pub fn sink_types() -> Vec<SinkType> {
            vec![$($(#[$attr])* describe::<crate::$module::$config>($tag),)*]
        }

        /// One schema per sink type, told apart by `type`; each is a named component
        /// (its configuration type's name), so client generators make one model each.
        impl utoipa::PartialSchema for SinkConfig {
            fn schema() -> RefOr<Schema> {
                let mut one = OneOfBuilder::new();
                $($(#[$attr])* {
                    let name = <crate::$module::$config as utoipa::ToSchema>::name();
                    one = one.item(utoipa::openapi::Ref::from_schema_name(name));
                })*
                one.discriminator(Some(Discriminator::new("type"))).into()
            }
        }

        impl utoipa::ToSchema for SinkConfig {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed("SinkConfig")
            }

            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                $($(#[$attr])* {
                    type Config = crate::$module::$config;
                    let name = <Config as utoipa::ToSchema>::name().into_owned();
                    schemas.push((name, tagged::<Config>($tag)));
                    <Config as utoipa::ToSchema>::schemas(schemas);
                })*
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
    #[cfg(feature = "nats")]
    "nats" => Nats(nats::NatsConfig),
    #[cfg(feature = "kafka")]
    "kafka" => Kafka(kafka::KafkaConfig),
    "postgres" => Postgres(postgres::PostgresConfig),
    #[cfg(feature = "clickhouse")]
    "clickhouse" => ClickHouse(clickhouse::ClickHouseConfig),
}

/// A sink type as the API and the console see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SinkType {
    /// The `type` of a `[[sinks]]` entry.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// What the sink does, in one line.
    pub description: &'static str,
    pub capabilities: Capabilities,
    /// Its settings, in a form a form can be built from.
    pub fields: Vec<SinkField>,
    /// The JSON schema of its settings, as in the API document.
    #[schema(value_type = Object)]
    pub schema: Value,
}

/// One setting of a sink type.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SinkField {
    pub name: String,
    pub description: String,
    /// `string`, `integer`, `number`, `boolean`, `array` or `object`.
    pub kind: String,
    pub required: bool,
    /// Write-only: sealed at rest, `<redacted>` in every answer.
    pub secret: bool,
    /// The value taken when it is not given, where the schema says (any JSON value:
    /// a number, a text, a list...).
    pub default: Option<Value>,
    /// The values it may take, for a setting with a fixed set.
    pub choices: Option<Vec<String>>,
}

/// The description of sink type `T`.
fn describe<T: SinkSpec>(kind: &'static str) -> SinkType {
    let (schema, fields) = schema_and_fields::<T>();
    SinkType {
        kind,
        description: T::DESCRIPTION,
        capabilities: T::CAPABILITIES,
        fields,
        schema,
    }
}

/// A configuration type's schema (as JSON) and its settings.
fn schema_and_fields<T: utoipa::ToSchema>() -> (Value, Vec<SinkField>) {
    let mut components = Vec::new();
    T::schemas(&mut components);
    let components: HashMap<String, Value> = components
        .into_iter()
        .map(|(name, s)| (name, serde_json::to_value(s).unwrap_or_default()))
        .collect();
    let schema = serde_json::to_value(T::schema()).unwrap_or_default();
    let fields = fields_of(&schema, &components);
    (schema, fields)
}

/// The top-level settings of an object schema, references resolved in `components`.
fn fields_of(schema: &Value, components: &HashMap<String, Value>) -> Vec<SinkField> {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema["properties"].as_object() else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, prop)| {
            let resolved = resolve(prop, components);
            let kind = match &resolved["type"] {
                Value::String(t) => t.clone(),
                Value::Array(ts) => ts
                    .iter()
                    .filter_map(Value::as_str)
                    .find(|t| *t != "null")
                    .unwrap_or("string")
                    .to_owned(),
                _ if resolved.get("enum").is_some() => "string".to_owned(),
                _ => "object".to_owned(),
            };
            let description = [prop, &resolved]
                .iter()
                .find_map(|v| v["description"].as_str())
                .unwrap_or_default()
                .to_owned();
            SinkField {
                name: name.clone(),
                description,
                kind,
                required: required.contains(&name.as_str()),
                secret: crate::is_secret_schema(prop),
                default: prop.get("default").cloned(),
                choices: resolved["enum"].as_array().map(|e| {
                    e.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                }),
            }
        })
        .collect()
}

/// A property's own schema: through a reference, and past the `null` of an `Option`.
fn resolve(prop: &Value, components: &HashMap<String, Value>) -> Value {
    if let Some(r) = prop["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or_default();
        return components.get(name).cloned().unwrap_or(Value::Null);
    }
    for union in ["oneOf", "anyOf"] {
        if let Some(items) = prop[union].as_array() {
            if let Some(inner) = items.iter().find(|i| i["type"] != "null") {
                return resolve(inner, components);
            }
        }
    }
    prop.clone()
}

/// `T`'s schema with its `type` tag added, required.
fn tagged<T: utoipa::PartialSchema>(tag: &str) -> RefOr<Schema> {
    let tag_schema = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([tag]))
        .description(Some("The sink's type."));
    match T::schema() {
        RefOr::T(Schema::Object(mut o)) => {
            o.properties.insert("type".into(), tag_schema.into());
            o.required.insert(0, "type".into());
            RefOr::T(Schema::Object(o))
        }
        other => other,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;

    /// A sink type of the future: its secrets have names no list would guess.
    #[derive(Deserialize, utoipa::ToSchema)]
    #[allow(dead_code)]
    struct OddConfig {
        /// Its name.
        name: String,
        /// A seed that signs in.
        nkey_seed: Secret,
        /// Optional credentials.
        #[serde(default)]
        creds: Option<Secret>,
        /// Headers, each a secret.
        #[serde(default)]
        extra: std::collections::BTreeMap<String, Secret>,
        /// Where the password file is (a path, not a secret).
        sasl_password_file: String,
    }

    #[test]
    fn secrets_are_what_the_types_declare_whatever_their_names() {
        let (_, fields) = schema_and_fields::<OddConfig>();
        let secret: Vec<&str> = fields
            .iter()
            .filter(|f| f.secret)
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(
            secret,
            vec!["nkey_seed", "creds", "extra"],
            "in declaration order"
        );
        let seed = fields.iter().find(|f| f.name == "nkey_seed").unwrap();
        assert!(seed.required && seed.kind == "string", "{seed:?}");
        assert_eq!(seed.description, "A seed that signs in.");
        assert!(!fields.iter().find(|f| f.name == "creds").unwrap().required);
    }

    #[test]
    fn every_sink_type_describes_its_fields_and_capabilities() {
        let types = sink_types();
        let of = |k: &str| types.iter().find(|t| t.kind == k).unwrap();
        for t in &types {
            assert!(!t.description.is_empty(), "{}", t.kind);
            let name = t.fields.iter().find(|f| f.name == "name").unwrap();
            assert!(name.required && !name.secret, "{}", t.kind);
            assert!(t.fields.iter().all(|f| !f.description.is_empty()), "{t:?}");
        }
        #[cfg(feature = "webhook")]
        {
            let webhook = of("webhook");
            let secret: Vec<&str> = webhook
                .fields
                .iter()
                .filter(|f| f.secret)
                .map(|f| f.name.as_str())
                .collect();
            assert_eq!(secret, vec!["secret", "headers"]);
            assert!(webhook.capabilities.waiting_room && webhook.capabilities.outbox);
        }
        #[cfg(feature = "redis")]
        {
            let redis = of("redis");
            assert!(redis.capabilities.needs_primary_key);
            let format = redis.fields.iter().find(|f| f.name == "format").unwrap();
            assert_eq!(format.choices, Some(vec!["json".into(), "hash".into()]));
            assert!(redis.fields.iter().all(|f| !f.secret));
        }
        assert!(of("sse").capabilities.served && !of("sse").capabilities.waiting_room);
        assert!(of("pull").capabilities.served && of("pull").capabilities.waiting_room);
        assert_eq!(of("file").capabilities, Capabilities::NONE);
        // The API document's schema of a sink entry: one per type, each a component
        // with its tag.
        let one = serde_json::to_value(<SinkConfig as utoipa::PartialSchema>::schema()).unwrap();
        let items = one["oneOf"].as_array().unwrap();
        assert_eq!(items.len(), types.len());
        let mut components = Vec::new();
        <SinkConfig as utoipa::ToSchema>::schemas(&mut components);
        for (item, t) in items.iter().zip(&types) {
            let name = item["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
            let (_, schema) = components.iter().find(|(n, _)| n == name).unwrap();
            let schema = serde_json::to_value(schema).unwrap();
            assert_eq!(schema["properties"]["type"]["enum"][0], t.kind, "{schema}");
            assert_eq!(schema["required"][0], "type");
        }
    }
}
