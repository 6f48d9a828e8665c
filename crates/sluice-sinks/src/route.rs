//! Routes: where a broker sink sends a record, from a template such as
//! `sluice.{pipeline}.{schema}.{table}` or `orders.{account_id}` (NATS subjects, Kafka
//! topics). `{pipeline}`, `{schema}`, `{table}` and `{op}` are the record's; any other
//! name is a column of the row (its new image, else the old one, else the key).
//!
//! Invariants:
//! - A rendered route is always valid for its broker: a value's characters that the
//!   broker does not allow in a name become `_` (a NATS subject's `.`, `*`, `>` and
//!   spaces; anything outside `[A-Za-z0-9._-]` in a Kafka topic), so a value can neither
//!   add a token to a subject nor make a publish fail. An empty value or a column the
//!   record does not have renders as `_`; a value longer than 128 characters is cut there.
//! - One record renders to one route, whatever else is in its batch.

use serde_json::Value as Json;
use sluice_log::Record;

/// Which broker's naming rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// NATS subjects: `.`-separated tokens.
    Nats,
    /// Kafka topics: `[A-Za-z0-9._-]`, at most 249 characters.
    Kafka,
}

/// One part of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Pipeline,
    Schema,
    Table,
    Op,
    Column(String),
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Route {
    parts: Vec<Part>,
    flavor: Flavor,
}

/// A template that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("a `{{` is not closed by `}}`")]
    Unclosed,
    #[error("`{{}}` names nothing: write a field ({{table}}) or a column name")]
    Empty,
    #[error("{0:?} is not allowed in a {1} outside `{{...}}`")]
    BadChar(char, &'static str),
    #[error("the template is empty")]
    Blank,
    #[error("a subject has an empty token (`..`, or a `.` at the start or the end)")]
    EmptyToken,
}

impl Route {
    pub fn parse(template: &str, flavor: Flavor) -> Result<Route, RouteError> {
        if template.is_empty() {
            return Err(RouteError::Blank);
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let end = rest[open..].find('}').ok_or(RouteError::Unclosed)? + open;
            let name = rest[open + 1..end].trim();
            parts.push(match name {
                "" => return Err(RouteError::Empty),
                "pipeline" => Part::Pipeline,
                "schema" => Part::Schema,
                "table" => Part::Table,
                "op" => Part::Op,
                col => Part::Column(col.to_owned()),
            });
            rest = &rest[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        let route = Route { parts, flavor };
        route.check_literals()?;
        Ok(route)
    }

    fn check_literals(&self) -> Result<(), RouteError> {
        let what = match self.flavor {
            Flavor::Nats => "subject",
            Flavor::Kafka => "topic",
        };
        for part in &self.parts {
            if let Part::Literal(l) = part {
                let bad = match self.flavor {
                    Flavor::Nats => l
                        .chars()
                        .find(|c| matches!(c, '*' | '>') || c.is_whitespace()),
                    Flavor::Kafka => l.chars().find(|&c| !kafka_char(c)),
                };
                if let Some(c) = bad {
                    return Err(RouteError::BadChar(c, what));
                }
            }
        }
        if self.flavor == Flavor::Nats {
            let pattern = self.pattern();
            if pattern.split('.').any(str::is_empty) {
                return Err(RouteError::EmptyToken);
            }
        }
        Ok(())
    }

    /// The columns the template names.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Column(c) => Some(c.as_str()),
            _ => None,
        })
    }

    /// Whether rendering needs the row (the template names a column).
    pub fn needs_row(&self) -> bool {
        self.columns().next().is_some()
    }

    /// The NATS subject pattern every rendering matches: each token with a `{...}` in it
    /// becomes `*` (a value never adds a token). `pipeline` is filled in when given.
    pub fn pattern_for(&self, pipeline: Option<&str>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Pipeline if pipeline.is_some() => {
                    out.push_str(&sanitize(pipeline.unwrap_or_default(), self.flavor))
                }
                _ => out.push('\u{0}'),
            }
        }
        out.split('.')
            .map(|t| if t.contains('\u{0}') { "*" } else { t })
            .collect::<Vec<_>>()
            .join(".")
    }

    fn pattern(&self) -> String {
        self.pattern_for(None)
    }

    /// The route of `record`; `row` is its parsed envelope when [`Route::needs_row`].
    pub fn render(
        &self,
        pipeline: &str,
        record: &Record<'_>,
        row: Option<&Json>,
        out: &mut String,
    ) {
        out.clear();
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Pipeline => push_value(out, pipeline, self.flavor),
                Part::Schema => push_value(out, record.schema, self.flavor),
                Part::Table => push_value(out, record.table, self.flavor),
                Part::Op => push_value(out, record.op.as_str(), self.flavor),
                Part::Column(c) => {
                    let v = row.and_then(|r| column(r, c));
                    match v {
                        Some(Json::String(s)) => push_value(out, s, self.flavor),
                        Some(Json::Null) | None => out.push('_'),
                        Some(other) => push_value(out, &other.to_string(), self.flavor),
                    }
                }
            }
        }
        if self.flavor == Flavor::Kafka {
            if out.len() > 249 {
                let mut cut = 249;
                while !out.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.truncate(cut);
            }
            // Names Kafka refuses.
            if out == "." || out == ".." {
                out.clear();
                out.push('_');
            }
        }
    }
}

/// A column's value in an envelope: the new image, else the old one, else the key.
fn column<'a>(envelope: &'a Json, name: &str) -> Option<&'a Json> {
    ["after", "before", "key"]
        .iter()
        .filter_map(|image| envelope.get(image)?.get(name))
        .next()
}

fn kafka_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn sanitize(v: &str, flavor: Flavor) -> String {
    let mut s = String::new();
    push_value(&mut s, v, flavor);
    s
}

/// Characters of one value at most: a subject has to fit the server's control line
/// (4 KiB), a topic 249 characters.
const MAX_VALUE_CHARS: usize = 128;

fn push_value(out: &mut String, v: &str, flavor: Flavor) {
    if v.is_empty() {
        out.push('_');
        return;
    }
    out.extend(v.chars().take(MAX_VALUE_CHARS).map(|c| {
        let ok = match flavor {
            Flavor::Nats => !(matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control()),
            Flavor::Kafka => kafka_char(c),
        };
        if ok {
            c
        } else {
            '_'
        }
    }));
}

/// Whether NATS subject filter `filter` matches every subject `pattern` matches.
pub fn covers(filter: &str, pattern: &str) -> bool {
    let mut f = filter.split('.');
    let mut p = pattern.split('.');
    loop {
        match (f.next(), p.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(pt)) if pt != ">" => {}
            (Some(ft), Some(pt)) if ft == pt && pt != "*" && pt != ">" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::{ChangeId, Lsn, Op};

    fn record<'a>(json: &'a [u8]) -> Record<'a> {
        Record {
            offset: 0,
            id: ChangeId {
                commit_lsn: Lsn(1),
                ordinal: 0,
            },
            commit_ts_micros: 0,
            op: Op::Update,
            schema: "public",
            table: "orders",
            json,
        }
    }

    #[test]
    fn renders_fields_and_columns_within_the_brokers_rules() {
        let json = br#"{"after":{"account_id":"a.b *c","n":7,"z":null},"key":{"id":1}}"#;
        let env: Json = serde_json::from_slice(json).unwrap();
        let r = record(json);
        let mut out = String::new();
        let t = Route::parse("sluice.{pipeline}.{schema}.{table}.{op}", Flavor::Nats).unwrap();
        assert!(!t.needs_row());
        t.render("p1", &r, None, &mut out);
        assert_eq!(out, "sluice.p1.public.orders.update");
        let t = Route::parse("orders.{account_id}.{n}.{z}.{missing}.{id}", Flavor::Nats).unwrap();
        t.render("p", &r, Some(&env), &mut out);
        assert_eq!(out, "orders.a_b__c.7._._.1");
        let t = Route::parse("cdc-{table}-{account_id}", Flavor::Kafka).unwrap();
        t.render("p", &r, Some(&env), &mut out);
        assert_eq!(out, "cdc-orders-a.b__c");
    }

    #[test]
    fn refuses_templates_a_broker_cannot_take() {
        assert_eq!(
            Route::parse("a.{x", Flavor::Nats).unwrap_err(),
            RouteError::Unclosed
        );
        assert_eq!(
            Route::parse("a.{}", Flavor::Nats).unwrap_err(),
            RouteError::Empty
        );
        assert_eq!(
            Route::parse("a.*", Flavor::Nats).unwrap_err(),
            RouteError::BadChar('*', "subject")
        );
        assert_eq!(
            Route::parse("a..{table}", Flavor::Nats).unwrap_err(),
            RouteError::EmptyToken
        );
        assert_eq!(
            Route::parse("{table}.", Flavor::Nats).unwrap_err(),
            RouteError::EmptyToken
        );
        assert_eq!(
            Route::parse("a/b", Flavor::Kafka).unwrap_err(),
            RouteError::BadChar('/', "topic")
        );
        assert_eq!(
            Route::parse("", Flavor::Kafka).unwrap_err(),
            RouteError::Blank
        );
    }

    #[test]
    fn patterns_and_coverage() {
        let t = Route::parse("sluice.{pipeline}.{schema}.{table}", Flavor::Nats).unwrap();
        assert_eq!(t.pattern_for(Some("p.1")), "sluice.p_1.*.*");
        assert_eq!(t.pattern_for(None), "sluice.*.*.*");
        let t = Route::parse("orders.x{account_id}", Flavor::Nats).unwrap();
        assert_eq!(t.pattern_for(None), "orders.*");
        assert!(covers("sluice.>", "sluice.p.*.*"));
        assert!(covers("sluice.p.*.*", "sluice.p.*.*"));
        assert!(covers("sluice.*.*.*", "sluice.p.*.*"));
        assert!(!covers("sluice.p.public.*", "sluice.p.*.*"));
        assert!(!covers("sluice.p.*", "sluice.p.*.*"));
        assert!(!covers("other.>", "sluice.p.*.*"));
        assert!(!covers("sluice.>", "sluice"));
    }
}
