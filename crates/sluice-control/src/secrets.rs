//! Which values of a pipeline's configuration are secret, decided in one place: the
//! settings each sink type declares secret (its configuration type's `Secret` fields, as
//! `sluice_sinks::sink_types` describes them; `[log.jetstream]` has the NATS sink's), and any string that holds a password (a
//! URL's `user:password@`, a connection string's `password=`). No field name decides it.
//!
//! Invariants:
//! - Redaction (every API answer) and sealing (the registry at rest) walk a
//!   configuration through the same [`map_secrets`], so what the API hides is what the
//!   disk seals.
//! - An update that sends a secret back as [`REDACTED`] keeps the stored one; a sink's
//!   secrets are matched by the sink's name and type, so sinks added, removed or
//!   reordered keep theirs.

use std::collections::HashMap;

use serde_json::Value;

/// What an answer shows in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// `[log.jetstream]` has the NATS sink's connection settings: its secrets are the ones
/// that sink type declares.
const LOG_CONNECTION: &str = "nats";

/// The secret settings of each sink type.
#[derive(Debug, Clone, Default)]
pub struct Declared(HashMap<String, Vec<String>>);

impl Declared {
    /// What the sink types of this build declare (described once, then kept).
    pub fn current() -> &'static Declared {
        static CURRENT: std::sync::OnceLock<Declared> = std::sync::OnceLock::new();
        CURRENT.get_or_init(Declared::of_sinks)
    }

    /// What the sink types of this build declare.
    pub fn of_sinks() -> Declared {
        Declared(
            sluice_sinks::sink_types()
                .into_iter()
                .map(|t| {
                    let secret = t.fields.into_iter().filter(|f| f.secret);
                    (t.kind.to_owned(), secret.map(|f| f.name).collect())
                })
                .collect(),
        )
    }

    /// Declarations given outright (for tests of the rules themselves).
    pub fn new(types: &[(&str, &[&str])]) -> Declared {
        Declared(
            types
                .iter()
                .map(|(k, f)| (k.to_string(), f.iter().map(|f| f.to_string()).collect()))
                .collect(),
        )
    }

    fn is_secret(&self, kind: &str, field: &str) -> bool {
        self.0
            .get(kind)
            .is_some_and(|f| f.iter().any(|f| f == field))
    }
}

/// A secret as [`map_secrets`] finds it.
pub enum Found<'a> {
    /// A declared setting's whole value.
    Setting(&'a Value),
    /// A string that holds a password.
    Text(&'a str),
}

/// `value` with each secret replaced by what `f` makes of it.
pub fn map_secrets<E>(
    value: &Value,
    declared: &Declared,
    f: &mut dyn FnMut(Found<'_>) -> Result<Value, E>,
) -> Result<Value, E> {
    walk(value, None, true, declared, f)
}

fn walk<E>(
    value: &Value,
    sink_type: Option<&str>,
    top: bool,
    declared: &Declared,
    f: &mut dyn FnMut(Found<'_>) -> Result<Value, E>,
) -> Result<Value, E> {
    Ok(match value {
        Value::Object(m) => {
            let mut out = serde_json::Map::with_capacity(m.len());
            for (k, v) in m {
                let v = match (v, sink_type) {
                    (Value::Array(sinks), None) if top && k == "sinks" => {
                        let mut each = Vec::with_capacity(sinks.len());
                        for s in sinks {
                            let kind = s["type"].as_str().unwrap_or_default();
                            each.push(walk(s, Some(kind), false, declared, f)?);
                        }
                        Value::Array(each)
                    }
                    (Value::Object(log), None) if top && k == "log" => {
                        let mut each = serde_json::Map::with_capacity(log.len());
                        for (lk, lv) in log {
                            let kind = (lk == "jetstream").then_some(LOG_CONNECTION);
                            each.insert(lk.clone(), walk(lv, kind, false, declared, f)?);
                        }
                        Value::Object(each)
                    }
                    (v, Some(kind)) if !v.is_null() && declared.is_secret(kind, k) => {
                        f(Found::Setting(v))?
                    }
                    (v, _) => walk(v, None, false, declared, f)?,
                };
                out.insert(k.clone(), v);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|v| walk(v, None, false, declared, f))
                .collect::<Result<_, _>>()?,
        ),
        Value::String(s) if holds_password(s) => f(Found::Text(s))?,
        v => v.clone(),
    })
}

/// `value` with every secret replaced by [`REDACTED`] (inside a URL: its password only).
pub fn redact(value: &Value, declared: &Declared) -> Value {
    let redacted: Result<Value, std::convert::Infallible> =
        map_secrets(value, declared, &mut |found| {
            Ok(match found {
                Found::Setting(_) => Value::String(REDACTED.into()),
                Found::Text(s) => Value::String(redact_url(s)),
            })
        });
    match redacted {
        Ok(v) => v,
    }
}

/// `new` with every value that is `old`'s redacted form (as an API answer showed it)
/// put back to `old`'s: an update sent back with [`REDACTED`] keeps the stored secrets,
/// and a secret given anew replaces them.
pub fn restore_secrets(new: &Value, old: &Value, declared: &Declared) -> Value {
    restore(new, old, None, declared)
}

fn restore(new: &Value, old: &Value, sink_type: Option<&str>, declared: &Declared) -> Value {
    if sink_type.is_none() && redact(old, declared) == *new {
        return old.clone();
    }
    match (new, old) {
        (Value::Object(n), Value::Object(o)) => Value::Object(
            n.iter()
                .map(|(k, v)| {
                    let v = match (o.get(k), sink_type) {
                        (Some(Value::Array(old_sinks)), None) if k == "sinks" => {
                            restore_sinks(v, old_sinks, declared)
                        }
                        (Some(Value::Object(old_log)), None) if k == "log" => {
                            restore_log(v, old_log, declared)
                        }
                        (Some(ov), Some(kind)) if v == REDACTED && declared.is_secret(kind, k) => {
                            ov.clone()
                        }
                        (Some(ov), _) => restore(v, ov, None, declared),
                        (None, _) => v.clone(),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        (Value::Array(n), Value::Array(o)) => Value::Array(
            n.iter()
                .enumerate()
                .map(|(i, v)| {
                    o.get(i)
                        .map_or_else(|| v.clone(), |ov| restore(v, ov, None, declared))
                })
                .collect(),
        ),
        _ => new.clone(),
    }
}

/// `[log]`: its `jetstream` section has the NATS sink's secret settings.
fn restore_log(new: &Value, old: &serde_json::Map<String, Value>, declared: &Declared) -> Value {
    let Value::Object(n) = new else {
        return new.clone();
    };
    Value::Object(
        n.iter()
            .map(|(k, v)| {
                let kind = (k == "jetstream").then_some(LOG_CONNECTION);
                let v = match old.get(k) {
                    Some(ov) => restore(v, ov, kind, declared),
                    None => v.clone(),
                };
                (k.clone(), v)
            })
            .collect(),
    )
}

/// Each sink of `new` against the stored sink of the same name and type.
fn restore_sinks(new: &Value, old: &[Value], declared: &Declared) -> Value {
    let Value::Array(sinks) = new else {
        return new.clone();
    };
    Value::Array(
        sinks
            .iter()
            .map(|s| {
                let kind = s["type"].as_str().unwrap_or_default();
                let stored = old
                    .iter()
                    .find(|o| o["name"] == s["name"] && o["type"] == s["type"]);
                match stored {
                    Some(o) => restore(s, o, Some(kind), declared),
                    None => s.clone(),
                }
            })
            .collect(),
    )
}

/// Whether `s` holds a password (`scheme://user:password@`, `password=`).
pub(crate) fn holds_password(s: &str) -> bool {
    redact_url(s) != s
}

/// A URL's password (`scheme://user:password@host`) and `password=` parameters replaced.
fn redact_url(s: &str) -> String {
    let mut out = s.to_string();
    if let Some(scheme) = out.find("://") {
        let rest = scheme + 3;
        let end = out[rest..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..end].rfind('@') {
            let userinfo = &out[rest..rest + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest + colon + 1..rest + at, REDACTED);
            }
        }
    }
    // Key-value connection strings and query parameters.
    for key in ["password=", "sslpassword="] {
        let mut from = 0;
        while let Some(i) = out[from..].find(key) {
            let start = from + i + key.len();
            let end = out[start..]
                .find([' ', '&'])
                .map_or(out.len(), |j| start + j);
            out.replace_range(start..end, REDACTED);
            from = start + REDACTED.len();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redacts_passwords_in_urls_and_declared_settings_only() {
        let declared = Declared::of_sinks();
        let v = json!({
            "source": {"url": "postgres://app:s3cret@db:5432/app?sslmode=require"},
            "sinks": [
                {"type": "redis", "url": "rediss://:pw@cache:6380"},
                {"type": "webhook", "url": "https://hooks.example/x", "secret": "abc", "headers": {"X-Key": "k"}},
                {"type": "x", "url": "host=db password=hunter2 user=app", "password": "not-declared"}
            ]
        });
        let r = redact(&v, &declared).to_string();
        for secret in ["s3cret", "pw@", "abc", "\"k\"", "hunter2"] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        assert!(
            r.contains("postgres://app:<redacted>@db:5432/app?sslmode=require"),
            "{r}"
        );
        assert!(r.contains("https://hooks.example/x"), "{r}");
        assert!(r.contains("user=app"), "{r}");
        // A name is no declaration: an unknown type's `password` is not a setting of any.
        assert!(r.contains("not-declared"), "{r}");
    }

    #[test]
    fn the_jetstream_logs_connection_secrets_are_the_nats_sinks() {
        let declared = Declared::new(&[("nats", &["password", "token"])]);
        let config = json!({
            "log": {"backend": "jetstream", "max_bytes": 5,
                    "jetstream": {"url": "nats://h:4222", "user": "u", "password": "pw", "token": "t"}},
            "sinks": []
        });
        let shown = redact(&config, &declared);
        assert_eq!(shown["log"]["jetstream"]["password"], REDACTED);
        assert_eq!(shown["log"]["jetstream"]["token"], REDACTED);
        assert_eq!(shown["log"]["jetstream"]["user"], "u");
        assert_eq!(shown["log"]["max_bytes"], 5);
        let mut sent_back = shown.clone();
        sent_back["log"]["jetstream"]["user"] = json!("v");
        let kept = restore_secrets(&sent_back, &config, &declared);
        assert_eq!(kept["log"]["jetstream"]["password"], "pw");
        assert_eq!(kept["log"]["jetstream"]["user"], "v");
    }

    #[test]
    fn a_setting_with_an_unusual_name_is_secret_when_its_type_says_so() {
        let declared = Declared::new(&[("broker", &["nkey_seed", "creds"])]);
        let v = json!({
            "sinks": [{"name": "b", "type": "broker", "nkey_seed": "SUAM", "creds": {"a": 1}, "subject": "x"}]
        });
        let r = redact(&v, &declared);
        assert_eq!(r["sinks"][0]["nkey_seed"], REDACTED);
        assert_eq!(r["sinks"][0]["creds"], REDACTED);
        assert_eq!(r["sinks"][0]["subject"], "x");
    }

    #[test]
    fn an_update_with_redacted_secrets_keeps_the_stored_ones_by_sink_name() {
        let declared = Declared::of_sinks();
        let old = json!({
            "source": {"url": "postgres://app:s3cret@db/app", "tables": ["public.a"]},
            "sinks": [
                {"name": "first", "type": "file", "path": "a.jsonl"},
                {"name": "w", "type": "webhook", "url": "https://x/", "secret": "abc"}
            ]
        });
        let mut sent = redact(&old, &declared);
        sent["source"]["tables"] = json!(["public.a", "public.b"]);
        let back = restore_secrets(&sent, &old, &declared);
        assert_eq!(back["source"]["url"], "postgres://app:s3cret@db/app");
        assert_eq!(back["sinks"][1]["secret"], "abc");
        assert_eq!(back["source"]["tables"], json!(["public.a", "public.b"]));
        // The first sink removed: the webhook, now first, keeps its secret.
        let mut fewer = sent.clone();
        fewer["sinks"].as_array_mut().unwrap().remove(0);
        let back = restore_secrets(&fewer, &old, &declared);
        assert_eq!(back["sinks"][0]["secret"], "abc");
        // A new secret replaces the old one.
        sent["sinks"][1]["secret"] = json!("new");
        assert_eq!(
            restore_secrets(&sent, &old, &declared)["sinks"][1]["secret"],
            "new"
        );
        // A new sink cannot take another's secret by sending the redacted form.
        let mut other = sent.clone();
        other["sinks"][1]["name"] = json!("impostor");
        other["sinks"][1]["secret"] = json!(REDACTED);
        assert_eq!(
            restore_secrets(&other, &old, &declared)["sinks"][1]["secret"],
            REDACTED
        );
    }
}
