//! Removing every cached row of a table (a truncate, or a shed sink starting over): the
//! keys its template can produce, found with `SCAN` (no per-row index to keep up to date
//! on every write). See the parent module's invariants.

use redis::aio::ConnectionManager;
use sluice_core::Fault;

use super::classify;

/// The keys of one table: the template with everything but `{pk}` filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyPattern {
    head: String,
    tail: String,
}

impl KeyPattern {
    /// `fill` gives the text of every placeholder but `{pk}` (the template has exactly
    /// one `{pk}`: checked when the configuration is validated).
    pub fn new(template: &str, fill: impl Fn(&str) -> String) -> KeyPattern {
        let mut parts = [String::new(), String::new()];
        let mut part = 0;
        let mut rest = template;
        while let Some(i) = rest.find('{') {
            parts[part].push_str(&rest[..i]);
            let end = rest[i..].find('}').map_or(rest.len(), |e| i + e);
            match &rest[i + 1..end] {
                "pk" => part = 1,
                name => parts[part].push_str(&fill(name)),
            }
            rest = rest.get(end + 1..).unwrap_or("");
        }
        parts[part].push_str(rest);
        let [head, tail] = parts;
        KeyPattern { head, tail }
    }

    pub fn matches(&self, key: &[u8]) -> bool {
        key.len() > self.head.len() + self.tail.len()
            && key.starts_with(self.head.as_bytes())
            && key.ends_with(self.tail.as_bytes())
    }

    /// The `SCAN MATCH` glob.
    fn glob(&self) -> String {
        let mut g = String::new();
        escape(&mut g, &self.head);
        g.push('*');
        escape(&mut g, &self.tail);
        g
    }

    fn literal_len(&self) -> usize {
        self.head.len() + self.tail.len()
    }
}

fn escape(out: &mut String, s: &str) {
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Unlinks every key of `table`, except keys that a more specific pattern of another of
/// the sink's tables also matches (with the default template, `t.1` is table `t`'s key
/// and `t.x.1` table `t.x`'s) and the sink's own keys (`reserved`, a prefix). Returns how
/// many keys went.
pub(super) async fn clear(
    conn: &mut ConnectionManager,
    table: &KeyPattern,
    others: &[KeyPattern],
    reserved: &str,
) -> Result<u64, Fault> {
    let glob = table.glob();
    let more_specific: Vec<&KeyPattern> = others
        .iter()
        .filter(|o| *o != table && o.literal_len() > table.literal_len())
        .collect();
    let mut cursor = 0u64;
    let mut removed = 0u64;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&glob)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(classify)?;
        let gone: Vec<&Vec<u8>> = keys
            .iter()
            .filter(|k| {
                table.matches(k)
                    && !k.starts_with(reserved.as_bytes())
                    && !more_specific.iter().any(|o| o.matches(k))
            })
            .collect();
        if !gone.is_empty() {
            removed += gone.len() as u64;
            redis::cmd("UNLINK")
                .arg(gone)
                .query_async::<()>(conn)
                .await
                .map_err(classify)?;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(template: &str, table: &str) -> KeyPattern {
        KeyPattern::new(template, |name| match name {
            "prefix" => "c:".into(),
            "db" => "shop".into(),
            "schema" => "public".into(),
            "table" => table.into(),
            _ => String::new(),
        })
    }

    #[test]
    fn a_tables_pattern_matches_its_keys_and_globs_escape_the_literal_parts() {
        let t = pattern("{prefix}{db}.{schema}.{table}.{pk}", "t*");
        assert_eq!(t.glob(), "c:shop.public.t\\*.*");
        assert!(t.matches(b"c:shop.public.t*.1"));
        assert!(!t.matches(b"c:shop.public.t*."), "a key has a pk");
        assert!(!t.matches(b"c:shop.public.u.1"));
        let mid = pattern("{pk}@{table}", "orders");
        assert_eq!(mid.glob(), "*@orders");
        assert!(mid.matches(b"7@orders"));
        assert!(!mid.matches(b"7@orders2"));
    }
}
