//! Record values (their JSON form, docs/GUARANTEES.md) written as ClickHouse's RowBinary,
//! the compact format inserts are sent in.
//!
//! Invariants:
//! - Nothing here panics, whatever the JSON.
//! - On `Err`, `out` may hold a partial value: the caller drops the whole row buffer (a
//!   row is never sent half-written).
//! - Errors name the target type, never the value (logs must not contain row data).
//! - A value is written exactly or refused: never rounded, truncated or clamped, except
//!   `infinity` and `-infinity` of dates and timestamps, which become the type's last and
//!   first instant (documented in the README).

use std::borrow::Cow;

use base64::Engine as _;

use super::types::{ChType, Text};

/// A value the target column's type cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a value that {ty} cannot hold exactly")]
pub struct Unfit {
    pub ty: String,
}

fn unfit(ty: &ChType) -> Unfit {
    Unfit { ty: ty.sql() }
}

/// First and last instant of `DateTime64(6)` (1900-01-01 to 2299-12-31), in µs.
const TS_MIN: i64 = -2_208_988_800_000_000;
const TS_MAX: i64 = 10_413_791_999_999_999;
/// First and last day of `Date32`.
const DAY_MIN: i64 = -25_567;
const DAY_MAX: i64 = 120_529;

/// Appends `n` as an unsigned LEB128 (RowBinary's lengths).
pub fn varint(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends a string (or bytes) value.
pub fn bytes(b: &[u8], out: &mut Vec<u8>) {
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// Appends the value whose JSON text is `json` as a `ty`.
pub fn encode(ty: &ChType, json: &str, out: &mut Vec<u8>) -> Result<(), Unfit> {
    let json = json.trim();
    if let ChType::Nullable(inner) = ty {
        if json == "null" {
            out.push(1);
            return Ok(());
        }
        out.push(0);
        return encode(inner, json, out);
    }
    let bad = || unfit(ty);
    match ty {
        ChType::Int16 => out.extend_from_slice(&int::<i16>(json).ok_or_else(bad)?.to_le_bytes()),
        ChType::Int32 => out.extend_from_slice(&int::<i32>(json).ok_or_else(bad)?.to_le_bytes()),
        ChType::Int64 => out.extend_from_slice(&int::<i64>(json).ok_or_else(bad)?.to_le_bytes()),
        ChType::UInt32 => out.extend_from_slice(&int::<u32>(json).ok_or_else(bad)?.to_le_bytes()),
        ChType::UInt8 | ChType::Bool => out.push(match json {
            "true" => 1,
            "false" => 0,
            _ => return Err(bad()),
        }),
        ChType::Float32 => {
            let f = float(json).ok_or_else(bad)?;
            // A float4's text is its shortest form; a wider value (the column became
            // float8) would be rounded: refused, so the column is widened.
            let narrow = f as f32;
            if f.is_finite() && narrow.to_string().parse::<f64>().ok() != Some(f) {
                return Err(bad());
            }
            out.extend_from_slice(&narrow.to_le_bytes())
        }
        ChType::Float64 => out.extend_from_slice(&float(json).ok_or_else(bad)?.to_le_bytes()),
        ChType::Decimal(p, s) => {
            decimal(&text(json).ok_or_else(bad)?, *p, *s, out).ok_or_else(bad)?
        }
        ChType::String(kind) => string(*kind, json, out).ok_or_else(bad)?,
        ChType::Uuid => {
            let u = uuid(&text(json).ok_or_else(bad)?).ok_or_else(bad)?;
            out.extend_from_slice(&((u >> 64) as u64).to_le_bytes());
            out.extend_from_slice(&(u as u64).to_le_bytes());
        }
        ChType::Date32 => {
            let t = text(json).ok_or_else(bad)?;
            let days = match t.as_ref() {
                "infinity" => DAY_MAX,
                "-infinity" => DAY_MIN,
                d => sluice_core::time::parse_date_days(d)
                    .filter(|d| (DAY_MIN..=DAY_MAX).contains(d))
                    .ok_or_else(bad)?,
            };
            out.extend_from_slice(&(days as i32).to_le_bytes());
        }
        ChType::DateTime64 => {
            let t = text(json).ok_or_else(bad)?;
            let us = match t.as_ref() {
                "infinity" => TS_MAX,
                "-infinity" => TS_MIN,
                ts => sluice_core::time::parse_rfc3339_micros(ts)
                    .filter(|us| (TS_MIN..=TS_MAX).contains(us))
                    .ok_or_else(bad)?,
            };
            out.extend_from_slice(&us.to_le_bytes());
        }
        // ClickHouse has no NULL array: stored empty (documented).
        ChType::Array(_) if json == "null" => out.push(0),
        ChType::Array(element) => {
            let items: Vec<&serde_json::value::RawValue> =
                serde_json::from_str(json).map_err(|_| bad())?;
            varint(items.len() as u64, out);
            for item in items {
                encode(element, item.get(), out)?;
            }
        }
        ChType::Nullable(_) => return Err(bad()),
    }
    Ok(())
}

/// The length of the RowBinary value of type `ty` at the start of `b` (to split a
/// lookup's answer into its columns); `None` when `b` is cut short.
pub fn value_len(ty: &ChType, b: &[u8]) -> Option<usize> {
    let fixed = |n: usize| (b.len() >= n).then_some(n);
    match ty {
        ChType::Nullable(inner) => match b.first()? {
            1 => Some(1),
            _ => value_len(inner, &b[1..]).map(|n| n + 1),
        },
        ChType::UInt8 | ChType::Bool => fixed(1),
        ChType::Int16 => fixed(2),
        ChType::Int32 | ChType::UInt32 | ChType::Float32 | ChType::Date32 => fixed(4),
        ChType::Int64 | ChType::Float64 | ChType::DateTime64 => fixed(8),
        ChType::Uuid => fixed(16),
        ChType::Decimal(p, _) => fixed(match p {
            0..=9 => 4,
            10..=18 => 8,
            19..=38 => 16,
            _ => 32,
        }),
        ChType::String(_) => {
            let (n, used) = read_varint(b)?;
            let end = used.checked_add(usize::try_from(n).ok()?)?;
            (b.len() >= end).then_some(end)
        }
        ChType::Array(element) => {
            let (n, mut at) = read_varint(b)?;
            for _ in 0..n {
                at += value_len(element, b.get(at..)?)?;
            }
            Some(at)
        }
    }
}

/// A string value at the start of `b`: its bytes and the length of the whole value.
pub fn read_string(b: &[u8]) -> Option<(&[u8], usize)> {
    let (n, used) = read_varint(b)?;
    let end = used.checked_add(usize::try_from(n).ok()?)?;
    Some((b.get(used..end)?, end))
}

/// An unsigned LEB128 and the bytes it took.
fn read_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut n = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        n |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((n, i + 1));
        }
    }
    None
}

/// A JSON string's contents.
fn text(json: &str) -> Option<Cow<'_, str>> {
    if !json.starts_with('"') {
        return None;
    }
    serde_json::from_str(json).ok()
}

fn int<T: std::str::FromStr>(json: &str) -> Option<T> {
    json.parse().ok()
}

/// A float: a JSON number, or `NaN` and the infinities as strings.
fn float(json: &str) -> Option<f64> {
    match json {
        "\"NaN\"" => Some(f64::NAN),
        "\"Infinity\"" => Some(f64::INFINITY),
        "\"-Infinity\"" => Some(f64::NEG_INFINITY),
        n => n.parse().ok().filter(|f: &f64| f.is_finite()),
    }
}

fn string(kind: Text, json: &str, out: &mut Vec<u8>) -> Option<()> {
    match kind {
        Text::Json => bytes(json.as_bytes(), out),
        Text::Plain => match text(json) {
            Some(s) => bytes(s.as_bytes(), out),
            None if json.starts_with('"') => return None,
            None => bytes(json.as_bytes(), out),
        },
        Text::Base64 => {
            let b = base64::engine::general_purpose::STANDARD
                .decode(text(json)?.as_bytes())
                .ok()?;
            bytes(&b, out)
        }
    }
    Some(())
}

/// A decimal text (`-123.45`) as `Decimal(p, s)`: the value times 10^s as a
/// little-endian two's-complement integer of 4, 8, 16 or 32 bytes (by precision).
fn decimal(t: &str, p: u32, s: u32, out: &mut Vec<u8>) -> Option<()> {
    let (neg, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int_part, frac) = t.split_once('.').unwrap_or((t, ""));
    if int_part.is_empty() && frac.is_empty() {
        return None;
    }
    if !int_part
        .bytes()
        .chain(frac.bytes())
        .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    // Fractional digits past the scale must be zeros (exact or refused).
    let (kept, dropped) = frac.split_at(frac.len().min(s as usize));
    if dropped.bytes().any(|c| c != b'0') {
        return None;
    }
    let int_digits = int_part.trim_start_matches('0');
    if int_digits.len() as u32 > p - s {
        return None;
    }
    // 256-bit accumulator, little-endian 64-bit limbs.
    let mut limbs = [0u64; 4];
    let pad = s as usize - kept.len();
    let digits = int_digits
        .bytes()
        .chain(kept.bytes())
        .chain(std::iter::repeat_n(b'0', pad));
    for d in digits {
        let mut carry = u128::from(d - b'0');
        for limb in &mut limbs {
            let v = u128::from(*limb) * 10 + carry;
            *limb = v as u64;
            carry = v >> 64;
        }
    }
    if neg {
        // Two's complement: invert and add one.
        let mut carry = 1u128;
        for limb in &mut limbs {
            let v = u128::from(!*limb) + carry;
            *limb = v as u64;
            carry = v >> 64;
        }
    }
    let width = match p {
        0..=9 => 4,
        10..=18 => 8,
        19..=38 => 16,
        _ => 32,
    };
    let mut all = Vec::with_capacity(32);
    for limb in limbs {
        all.extend_from_slice(&limb.to_le_bytes());
    }
    out.extend_from_slice(&all[..width]);
    Some(())
}

/// A UUID's 128 bits from its text (`a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11`).
fn uuid(t: &str) -> Option<u128> {
    let hex: String = t.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(ty: &ChType, json: &str) -> Result<Vec<u8>, Unfit> {
        let mut out = Vec::new();
        encode(ty, json, &mut out).map(|_| out)
    }

    #[test]
    fn decimals_are_exact_or_refused() {
        assert_eq!(
            enc(&ChType::Decimal(5, 2), "\"-1.5\"").unwrap(),
            (-150i32).to_le_bytes()
        );
        assert_eq!(
            enc(&ChType::Decimal(12, 2), "\"19.90\"").unwrap(),
            1990i64.to_le_bytes()
        );
        assert_eq!(
            enc(&ChType::Decimal(38, 0), &format!("\"{}\"", "9".repeat(38))).unwrap(),
            (10i128.pow(38) - 1).to_le_bytes()
        );
        let wide = enc(&ChType::Decimal(50, 0), "\"-1\"").unwrap();
        assert_eq!(wide, vec![0xff; 32]);
        assert!(enc(&ChType::Decimal(5, 2), "\"1.234\"").is_err());
        assert!(enc(&ChType::Decimal(5, 2), "\"1234.5\"").is_err());
        assert!(enc(&ChType::Decimal(5, 2), "\"NaN\"").is_err());
        assert_eq!(
            enc(&ChType::Decimal(5, 2), "\"1.230\"").unwrap(),
            123i32.to_le_bytes()
        );
    }

    #[test]
    fn values_of_each_type() {
        let n = |t: ChType| t.nullable();
        assert_eq!(enc(&n(ChType::Int32), "null").unwrap(), vec![1]);
        assert_eq!(enc(&n(ChType::Int16), "7").unwrap(), vec![0, 7, 0]);
        assert!(enc(&ChType::Int16, "70000").is_err());
        assert!(enc(&ChType::Int64, "\"abc\"").is_err());
        assert_eq!(enc(&ChType::Float64, "\"NaN\"").unwrap().len(), 8);
        assert_eq!(
            enc(&ChType::Float32, "0.33333334").unwrap(),
            (1.0f32 / 3.0).to_le_bytes()
        );
        assert!(enc(&ChType::Float32, "0.3333333333333333").is_err());
        assert_eq!(
            enc(&ChType::String(Text::Base64), "\"aGk=\"").unwrap(),
            b"\x02hi"
        );
        assert_eq!(
            enc(&ChType::String(Text::Json), "{\"a\":1}").unwrap(),
            b"\x07{\"a\":1}"
        );
        assert_eq!(
            enc(&ChType::String(Text::Plain), "\"a\\nb\"").unwrap(),
            b"\x03a\nb"
        );
        assert_eq!(
            enc(&ChType::Date32, "\"1970-01-02\"").unwrap(),
            1i32.to_le_bytes()
        );
        assert_eq!(
            enc(&ChType::DateTime64, "\"1970-01-01T00:00:01.5Z\"").unwrap(),
            1_500_000i64.to_le_bytes()
        );
        assert_eq!(
            enc(&ChType::DateTime64, "\"infinity\"").unwrap(),
            TS_MAX.to_le_bytes()
        );
        assert!(enc(&ChType::DateTime64, "\"1800-01-01T00:00:00\"").is_err());
        let u = enc(&ChType::Uuid, "\"00000000-0000-0001-0000-000000000002\"").unwrap();
        assert_eq!(u, [1u64.to_le_bytes(), 2u64.to_le_bytes()].concat());
        let arr = ChType::Array(Box::new(n(ChType::Int32)));
        assert_eq!(enc(&arr, "[1,null]").unwrap(), vec![2, 0, 1, 0, 0, 0, 1]);
        assert!(enc(&arr, "[[1]]").is_err());
        let mut big = Vec::new();
        varint(300, &mut big);
        assert_eq!(big, vec![0xac, 0x02]);
        let row = [
            enc(&n(ChType::String(Text::Plain)), "\"abc\"").unwrap(),
            enc(&arr, "[1,null]").unwrap(),
        ]
        .concat();
        assert_eq!(value_len(&n(ChType::String(Text::Plain)), &row), Some(5));
        assert_eq!(value_len(&arr, &row[5..]), Some(7));
        assert_eq!(value_len(&arr, &row[5..9]), None);
    }
}
