//! [`Secret`]: how a sink declares that a setting is secret. The declaration is the
//! field's type, so it travels with the field: the sink's published schema marks it
//! (`writeOnly`, format `password`), and from that schema the server seals it at rest,
//! redacts it in every answer and keeps it on an update that sends it back redacted; the
//! console shows it as a password field. No list of names anywhere decides it.
//!
//! Invariant: a `Secret` never prints its value (`Debug` shows `<redacted>`); code that
//! needs the value calls [`Secret::expose`].

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};

/// A secret setting of a sink (a password, a signing key, a token).
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself: for the client that sends it, never for a log line.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The schema's name; [`is_secret_schema`] knows a reference to it.
pub const SECRET_SCHEMA: &str = "Secret";

impl utoipa::PartialSchema for Secret {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Password)))
            .write_only(Some(true))
            .description(Some(
                "A secret: write-only (answers show `<redacted>`; sending `<redacted>` back keeps the stored value), sealed at rest.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Secret {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed(SECRET_SCHEMA)
    }
}

/// Whether a field's schema (as JSON) declares a secret: write-only, or a [`Secret`]
/// (by reference, or as the values of a map, or the items of a list).
pub fn is_secret_schema(schema: &serde_json::Value) -> bool {
    use serde_json::Value;
    match schema {
        Value::Object(m) => {
            m.get("writeOnly") == Some(&Value::Bool(true))
                || m.get("$ref")
                    .and_then(Value::as_str)
                    .is_some_and(|r| r.rsplit('/').next() == Some(SECRET_SCHEMA))
                || ["additionalProperties", "items"]
                    .iter()
                    .filter_map(|k| m.get(*k))
                    .any(is_secret_schema)
                || ["oneOf", "anyOf", "allOf"]
                    .iter()
                    .filter_map(|k| m.get(*k).and_then(Value::as_array))
                    .flatten()
                    .any(is_secret_schema)
        }
        _ => false,
    }
}
