//! Snapshot rows as binary COPY data for a staging table (`sql::stage_create`): a `seq`
//! column, then each column in its staging type: integers, floats, booleans and bytea in
//! their binary forms, everything else as text that the merge casts to the target type
//! (`numeric`, timestamps, `uuid`, enums...: their input functions take the text form the
//! change record carries).
//!
//! Invariants:
//! - Each row is whole or not at all: a value that cannot be encoded fails the row (and the
//!   batch) with an error that names the column, never the value.
//! - Text forms are exactly what the target's input functions read back to the source's
//!   value: JSON strings unescaped, JSON arrays as array literals with every element
//!   quoted, `bytea` elements as `\x` hex, `json` values as their JSON text.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::value::RawValue;
use serde_json::Value;

use super::sql::{Column, Conv};

/// Why a value could not be encoded. Names the column, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a value of column {column:?} cannot be converted to {ty}: {reason}")]
pub(super) struct ValueError {
    pub column: String,
    pub ty: String,
    pub reason: &'static str,
}

/// The binary COPY stream of one staging table.
pub(super) struct CopyData {
    out: Vec<u8>,
}

impl CopyData {
    /// The signature, flags and header extension of the binary format.
    pub fn new() -> CopyData {
        let mut out = Vec::with_capacity(1 << 16);
        out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        CopyData { out }
    }

    /// One row: `seq`, then `values` (aligned with `cols`).
    pub fn row(
        &mut self,
        seq: i64,
        cols: &[&Column],
        values: &[&RawValue],
    ) -> Result<(), ValueError> {
        let start = self.out.len();
        self.out
            .extend_from_slice(&((cols.len() + 1) as i16).to_be_bytes());
        self.out.extend_from_slice(&8i32.to_be_bytes());
        self.out.extend_from_slice(&seq.to_be_bytes());
        for (c, v) in cols.iter().zip(values) {
            if let Err(reason) = field(c.conv, v.get(), &mut self.out) {
                self.out.truncate(start);
                return Err(ValueError {
                    column: c.name.clone(),
                    ty: c.ty.clone(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// The stream with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(&(-1i16).to_be_bytes());
        self.out
    }
}

/// Appends one field (length, then bytes; -1 for NULL).
fn field(conv: Conv, raw: &str, out: &mut Vec<u8>) -> Result<(), &'static str> {
    if raw == "null" {
        out.extend_from_slice(&(-1i32).to_be_bytes());
        return Ok(());
    }
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    match conv {
        Conv::Int2 => out.extend_from_slice(&integer::<i16>(raw)?.to_be_bytes()),
        Conv::Int4 => out.extend_from_slice(&integer::<i32>(raw)?.to_be_bytes()),
        Conv::Int8 => out.extend_from_slice(&integer::<i64>(raw)?.to_be_bytes()),
        Conv::Float4 => out.extend_from_slice(&float::<f32>(raw)?.to_be_bytes()),
        Conv::Float8 => out.extend_from_slice(&float::<f64>(raw)?.to_be_bytes()),
        Conv::Bool => out.push(match raw {
            "true" => 1,
            "false" => 0,
            _ => return Err("not a boolean"),
        }),
        Conv::Bytea => {
            let b64 = string(raw).ok_or("not a base64 string")?;
            let bytes = BASE64.decode(b64.as_bytes()).map_err(|_| "not base64")?;
            out.extend_from_slice(&bytes);
        }
        Conv::Json => out.extend_from_slice(raw.as_bytes()),
        Conv::Array | Conv::JsonArray | Conv::ByteaArray => {
            let v: Value = serde_json::from_str(raw).map_err(|_| "not JSON")?;
            let mut text = String::new();
            match &v {
                Value::Array(_) => array_literal(&v, conv, &mut text)?,
                // Not an array in JSON: its text form as the source sent it.
                Value::String(s) => text.push_str(s),
                _ => return Err("not an array"),
            }
            out.extend_from_slice(text.as_bytes());
        }
        Conv::Plain => match string(raw) {
            Some(s) => out.extend_from_slice(s.as_bytes()),
            // Numbers and booleans are their own text; objects their JSON.
            None => out.extend_from_slice(raw.as_bytes()),
        },
    }
    let len = (out.len() - len_at - 4) as i32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// A JSON string's text (`None`: not a string).
fn string(raw: &str) -> Option<String> {
    raw.starts_with('"')
        .then(|| serde_json::from_str(raw).ok())
        .flatten()
}

fn integer<T: std::str::FromStr>(raw: &str) -> Result<T, &'static str> {
    match string(raw) {
        Some(s) => s.parse(),
        None => raw.parse(),
    }
    .map_err(|_| "not an integer in range")
}

fn float<T: std::str::FromStr>(raw: &str) -> Result<T, &'static str> {
    // NaN and the infinities are strings in JSON; Rust parses their PostgreSQL spelling.
    match string(raw) {
        Some(s) => s.parse(),
        None => raw.parse(),
    }
    .map_err(|_| "not a number")
}

/// A JSON array as a PostgreSQL array literal: one brace level per dimension, every
/// element quoted, `NULL` for null.
fn array_literal(v: &Value, conv: Conv, out: &mut String) -> Result<(), &'static str> {
    let Value::Array(items) = v else {
        return Err("not an array");
    };
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Value::Null => out.push_str("NULL"),
            // A nested array is a dimension, unless elements are JSON themselves.
            Value::Array(_) if conv != Conv::JsonArray => array_literal(item, conv, out)?,
            _ => {
                let text = match (conv, item) {
                    (Conv::JsonArray, _) => item.to_string(),
                    (Conv::ByteaArray, Value::String(s)) => {
                        let bytes = BASE64
                            .decode(s.as_bytes())
                            .map_err(|_| "an element is not base64")?;
                        let mut hex = String::with_capacity(2 + 2 * bytes.len());
                        hex.push_str("\\x");
                        for b in bytes {
                            hex.push_str(&format!("{b:02x}"));
                        }
                        hex
                    }
                    (Conv::ByteaArray, _) => return Err("an element is not base64"),
                    (_, Value::String(s)) => s.clone(),
                    (_, other) => other.to_string(),
                };
                quote_element(&text, out);
            }
        }
    }
    out.push('}');
    Ok(())
}

fn quote_element(text: &str, out: &mut String) {
    out.push('"');
    for ch in text.chars() {
        if ch == '"' || ch == '\\' {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(conv: Conv, raw: &str) -> Result<Vec<u8>, &'static str> {
        let mut out = Vec::new();
        field(conv, raw, &mut out)?;
        let len = i32::from_be_bytes(out[..4].try_into().unwrap());
        if len < 0 {
            assert_eq!(out.len(), 4);
            return Ok(b"NULL".to_vec());
        }
        assert_eq!(out.len(), 4 + len as usize);
        Ok(out[4..].to_vec())
    }

    fn text(conv: Conv, raw: &str) -> String {
        String::from_utf8(encoded(conv, raw).unwrap()).unwrap()
    }

    #[test]
    fn numbers_and_booleans_in_their_binary_forms() {
        assert_eq!(encoded(Conv::Int2, "-2").unwrap(), (-2i16).to_be_bytes());
        assert_eq!(
            encoded(Conv::Int8, "9223372036854775807").unwrap(),
            i64::MAX.to_be_bytes()
        );
        assert!(encoded(Conv::Int2, "70000").is_err());
        assert_eq!(encoded(Conv::Float8, "1.5").unwrap(), 1.5f64.to_be_bytes());
        assert_eq!(
            encoded(Conv::Float8, "1e+100").unwrap(),
            1e100f64.to_be_bytes()
        );
        let nan = f64::from_be_bytes(
            encoded(Conv::Float8, "\"NaN\"")
                .unwrap()
                .try_into()
                .unwrap(),
        );
        assert!(nan.is_nan());
        assert_eq!(
            encoded(Conv::Float4, "\"-Infinity\"").unwrap(),
            f32::NEG_INFINITY.to_be_bytes()
        );
        // float4 text read as f32 directly: no double rounding.
        assert_eq!(encoded(Conv::Float4, "0.1").unwrap(), 0.1f32.to_be_bytes());
        assert_eq!(encoded(Conv::Bool, "true").unwrap(), [1]);
        assert_eq!(encoded(Conv::Int4, "null").unwrap(), b"NULL");
    }

    #[test]
    fn bytea_is_decoded_from_base64() {
        assert_eq!(
            encoded(Conv::Bytea, "\"AAEC/w==\"").unwrap(),
            [0, 1, 2, 255]
        );
        assert!(encoded(Conv::Bytea, "\"not base64!\"").is_err());
        assert!(encoded(Conv::Bytea, "12").is_err());
    }

    #[test]
    fn text_forms() {
        assert_eq!(text(Conv::Plain, r#""a \"b\"\nc""#), "a \"b\"\nc");
        assert_eq!(text(Conv::Plain, r#""NaN""#), "NaN");
        assert_eq!(text(Conv::Plain, "12.50"), "12.50");
        assert_eq!(text(Conv::Json, r#"{"a":[1,"x"]}"#), r#"{"a":[1,"x"]}"#);
        assert_eq!(text(Conv::Json, r#""just a string""#), r#""just a string""#);
    }

    #[test]
    fn arrays_become_literals() {
        assert_eq!(text(Conv::Array, "[1,null,3]"), r#"{"1",NULL,"3"}"#);
        assert_eq!(
            text(Conv::Array, "[[1,2],[3,4]]"),
            r#"{{"1","2"},{"3","4"}}"#
        );
        assert_eq!(
            text(Conv::Array, r#"["a,b","q\"uote","back\\slash","NULL",""]"#),
            r#"{"a,b","q\"uote","back\\slash","NULL",""}"#
        );
        assert_eq!(text(Conv::Array, "[]"), "{}");
        assert_eq!(
            text(Conv::JsonArray, r#"[{"a":1},"s",[1,2],null]"#),
            r#"{"{\"a\":1}","\"s\"","[1,2]",NULL}"#
        );
        assert_eq!(
            text(Conv::ByteaArray, r#"["AAE=",null]"#),
            r#"{"\\x0001",NULL}"#
        );
        assert!(encoded(Conv::Array, "{}").is_err());
    }

    #[test]
    fn a_row_that_cannot_be_encoded_is_left_out_whole() {
        let cols = [Column::new("id", "integer"), Column::new("b", "bytea")];
        let cols: Vec<&Column> = cols.iter().collect();
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        let (one, good, bad) = (raw("1"), raw("\"AA==\""), raw("\"%%\""));
        let mut data = CopyData::new();
        data.row(0, &cols, &[&one, &good]).unwrap();
        let len = data.out.len();
        let err = data.row(1, &cols, &[&one, &bad]).unwrap_err();
        assert_eq!(data.out.len(), len);
        assert_eq!(
            err.to_string(),
            "a value of column \"b\" cannot be converted to bytea: not base64"
        );
        let bytes = data.finish();
        assert!(bytes.starts_with(b"PGCOPY\n\xff\r\n\0"));
        assert!(bytes.ends_with(&[0xff, 0xff]));
    }
}
