//! The key template's check: a template names each row's key, so it must hold `{pk}`
//! exactly once (a truncate finds a table's keys by the text around it) and only the
//! placeholders the sink fills.

/// The key template unless configured.
pub const DEFAULT_KEY_TEMPLATE: &str = "{prefix}{db}.{schema}.{table}.{pk}";

/// What is wrong with a `key_template` (a setting: the operator rewrites it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("key_template {0:?} must contain {{pk}}, or rows of a table would share one key")]
    NoPk(String),
    #[error("key_template {0:?} must contain {{pk}} once (a truncate finds a table's keys by the text around it)")]
    PkTwice(String),
    #[error("key_template has an unclosed {{")]
    Unclosed,
    #[error("key_template: unknown placeholder {{{0}}} (use prefix, db, schema, table, pk)")]
    UnknownPlaceholder(String),
}

/// Checks a key template; returns the problem, if any.
pub fn check_template(template: &str) -> Result<(), TemplateError> {
    if !template.contains("{pk}") {
        return Err(TemplateError::NoPk(template.to_owned()));
    }
    if template.matches("{pk}").count() > 1 {
        return Err(TemplateError::PkTwice(template.to_owned()));
    }
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        let end = rest[i..].find('}').ok_or(TemplateError::Unclosed)?;
        let name = &rest[i + 1..i + end];
        if !["prefix", "db", "schema", "table", "pk"].contains(&name) {
            return Err(TemplateError::UnknownPlaceholder(name.to_owned()));
        }
        rest = &rest[i + end + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_template_says_what_to_change() {
        assert_eq!(
            check_template("{table}").unwrap_err().to_string(),
            "key_template \"{table}\" must contain {pk}, or rows of a table would share one key"
        );
        assert_eq!(
            check_template("{pk}{tabel}").unwrap_err().to_string(),
            "key_template: unknown placeholder {tabel} (use prefix, db, schema, table, pk)"
        );
        assert_eq!(
            check_template("{pk}{").unwrap_err(),
            TemplateError::Unclosed
        );
    }
}
