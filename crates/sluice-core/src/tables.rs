//! The one matcher of table lists as configuration writes them: `schema.table` names one
//! table, `schema.*` every table of a schema. An empty list matches nothing here; what an
//! empty list means (often "all") is for the caller to say.

use std::collections::BTreeSet;

/// A list of `schema.table` and `schema.*` entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TablePatterns {
    tables: BTreeSet<String>,
    schemas: BTreeSet<String>,
}

impl TablePatterns {
    pub fn new<S: AsRef<str>>(entries: impl IntoIterator<Item = S>) -> TablePatterns {
        let mut p = TablePatterns::default();
        for e in entries {
            let e = e.as_ref();
            match e.strip_suffix(".*") {
                Some(s) => p.schemas.insert(s.to_owned()),
                None => p.tables.insert(e.to_owned()),
            };
        }
        p
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.schemas.is_empty()
    }

    /// Whether an entry is well formed: `schema.table` or `schema.*`, neither part empty.
    pub fn is_valid_entry(entry: &str) -> bool {
        entry
            .split_once('.')
            .is_some_and(|(s, n)| !s.is_empty() && !n.is_empty() && !n.contains('.'))
    }

    /// Whether the table `schema`.`table` is listed, by name or by its schema.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        if self.schemas.contains(schema) {
            return true;
        }
        // Compares in place: no "schema.table" is built per record.
        self.tables.iter().any(|t| {
            t.len() == schema.len() + 1 + table.len()
                && t.starts_with(schema)
                && t.as_bytes()[schema.len()] == b'.'
                && t.ends_with(table)
        })
    }

    /// [`Self::matches`] for a qualified `schema.table`.
    pub fn matches_qualified(&self, qualified: &str) -> bool {
        match qualified.split_once('.') {
            Some((s, t)) => self.matches(s, t),
            None => false,
        }
    }

    /// Whether `entry` (a table or a `schema.*`) is within this list.
    pub fn covers(&self, entry: &str) -> bool {
        match entry.strip_suffix(".*") {
            Some(s) => self.schemas.contains(s),
            None => self.matches_qualified(entry),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_schemas_match_and_nothing_else() {
        let p = TablePatterns::new(["public.orders", "audit.*"]);
        assert!(p.matches("public", "orders"));
        assert!(!p.matches("public", "order"));
        assert!(!p.matches("publi", "c.orders"));
        assert!(p.matches("audit", "x"));
        assert!(p.matches_qualified("audit.y"));
        assert!(!p.matches_qualified("audit"));
        assert!(p.covers("audit.*") && p.covers("public.orders") && !p.covers("public.*"));
        assert!(TablePatterns::new(Vec::<String>::new()).is_empty());
        assert!(TablePatterns::is_valid_entry("a.b") && TablePatterns::is_valid_entry("a.*"));
        assert!(!TablePatterns::is_valid_entry("a") && !TablePatterns::is_valid_entry("a.b.c"));
        assert!(!TablePatterns::is_valid_entry(".b") && !TablePatterns::is_valid_entry("a."));
    }
}
