//! Rows of `COPY ... TO STDOUT (FORMAT binary)` turned into the same JSON as the stream's
//! text values (see `values.rs`), so a snapshot row and an insert of the same row carry
//! byte-identical `key` and `after` objects.
//!
//! Columns of common types travel in binary and are converted here (integers, bool,
//! character types, json/jsonb, bytea, uuid, timestamps, dates); every other column is
//! selected as `col::text` and goes through the text path, so its JSON is exactly what the
//! stream produces from PostgreSQL's output function.
//!
//! Invariants:
//! - Nothing here panics, whatever the bytes; a malformed stream is an error that says
//!   where, never what value (logs must not contain row data).
//! - The parser accepts CopyData payloads split anywhere: PostgreSQL sends one row per
//!   payload with the file header glued to the first, but nothing here relies on it.

use crate::values::{write_json, write_json_string, TypeKind};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// How one column is selected and converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Codec {
    /// int2, int4, int8 (by length).
    Int,
    Bool,
    /// text, varchar, bpchar, name: the bytes are the text.
    Text,
    Json,
    /// Version byte 1, then the text.
    Jsonb,
    Bytea,
    Uuid,
    Timestamp,
    TimestampTz,
    Date,
    /// Selected as `::text`, converted like a streamed value of this kind.
    ViaText(TypeKind),
}

impl Codec {
    /// The codec for a column of type `oid` whose kind is `kind`.
    pub fn for_type(oid: u32, kind: TypeKind) -> Codec {
        match oid {
            20 | 21 | 23 => Codec::Int,
            16 => Codec::Bool,
            19 | 25 | 1042 | 1043 => Codec::Text,
            114 => Codec::Json,
            3802 => Codec::Jsonb,
            17 => Codec::Bytea,
            2950 => Codec::Uuid,
            1114 => Codec::Timestamp,
            1184 => Codec::TimestampTz,
            1082 => Codec::Date,
            _ => Codec::ViaText(kind),
        }
    }

    /// Whether the column must be cast to text in the SELECT list.
    pub fn via_text(&self) -> bool {
        matches!(self, Codec::ViaText(_))
    }
}

/// A malformed binary COPY stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    #[error("binary COPY stream does not start with the PGCOPY signature")]
    Signature,
    #[error("binary COPY row has {got} fields, expected {want}")]
    FieldCount { got: i16, want: usize },
    #[error("binary COPY field has invalid length {0}")]
    Length(i32),
    #[error("binary COPY value of column {column} is malformed: {reason}")]
    Value { column: usize, reason: &'static str },
    #[error("binary COPY stream continues after its trailer")]
    AfterTrailer,
}

/// Receives one row's fields (`None` = NULL).
pub type RowFn<'a, E> = dyn FnMut(&[Option<&[u8]>]) -> Result<(), E> + 'a;

/// Splits a binary COPY byte stream into rows.
#[derive(Debug, Default)]
pub struct CopyParser {
    header_done: bool,
    finished: bool,
    carry: Vec<u8>,
    /// (start, end) of each field in the current buffer; `None` for NULL.
    fields: Vec<Option<(usize, usize)>>,
}

impl CopyParser {
    pub fn new() -> CopyParser {
        CopyParser::default()
    }

    /// Whether the trailer has been seen.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Feeds one CopyData payload; `row` gets each complete row's fields (`None` = NULL).
    pub fn feed<E: From<CopyError>>(
        &mut self,
        data: &[u8],
        ncols: usize,
        row: &mut RowFn<'_, E>,
    ) -> Result<(), E> {
        if self.carry.is_empty() {
            let used = self.parse(data, ncols, row)?;
            self.carry.extend_from_slice(&data[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.carry);
            buf.extend_from_slice(data);
            let used = self.parse(&buf, ncols, row)?;
            buf.drain(..used);
            self.carry = buf;
        }
        Ok(())
    }

    /// Parses whole rows from `buf`; returns how many bytes were consumed.
    fn parse<E: From<CopyError>>(
        &mut self,
        buf: &[u8],
        ncols: usize,
        row: &mut RowFn<'_, E>,
    ) -> Result<usize, E> {
        let mut pos = 0;
        if !self.header_done {
            if buf.len() < SIGNATURE.len() + 8 {
                return Ok(0);
            }
            if &buf[..SIGNATURE.len()] != SIGNATURE {
                return Err(CopyError::Signature.into());
            }
            let ext = be_i32(&buf[SIGNATURE.len() + 4..]);
            if ext < 0 {
                return Err(CopyError::Length(ext).into());
            }
            let end = SIGNATURE.len() + 8 + ext as usize;
            if buf.len() < end {
                return Ok(0);
            }
            pos = end;
            self.header_done = true;
        }
        // One CopyData is one row: keep the per-call setup off the heap for common widths.
        let mut inline: [Option<&[u8]>; 32] = [None; 32];
        let mut heap: Vec<Option<&[u8]>> = Vec::new();
        loop {
            if buf.len() < pos + 2 {
                return Ok(pos);
            }
            if self.finished {
                return Err(CopyError::AfterTrailer.into());
            }
            let count = i16::from_be_bytes([buf[pos], buf[pos + 1]]);
            if count == -1 {
                self.finished = true;
                pos += 2;
                continue;
            }
            if count < 0 || count as usize != ncols {
                return Err(CopyError::FieldCount {
                    got: count,
                    want: ncols,
                }
                .into());
            }
            let mut p = pos + 2;
            self.fields.clear();
            let mut complete = true;
            for _ in 0..ncols {
                if buf.len() < p + 4 {
                    complete = false;
                    break;
                }
                let len = be_i32(&buf[p..]);
                p += 4;
                if len == -1 {
                    self.fields.push(None);
                    continue;
                }
                if len < 0 {
                    return Err(CopyError::Length(len).into());
                }
                let end = p + len as usize;
                if buf.len() < end {
                    complete = false;
                    break;
                }
                self.fields.push(Some((p, end)));
                p = end;
            }
            if !complete {
                return Ok(pos);
            }
            let values: &mut [Option<&[u8]>] = if ncols <= inline.len() {
                &mut inline[..ncols]
            } else {
                heap.resize(ncols, None);
                &mut heap
            };
            for (v, f) in values.iter_mut().zip(&self.fields) {
                *v = f.map(|(a, b)| &buf[a..b]);
            }
            row(values)?;
            pos = p;
        }
    }
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Appends the JSON of one binary (or `::text`) value.
pub fn write_value(
    codec: &Codec,
    column: usize,
    v: &[u8],
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), CopyError> {
    let bad = |reason| CopyError::Value { column, reason };
    match codec {
        Codec::Int => {
            let n = match v.len() {
                2 => i16::from_be_bytes([v[0], v[1]]) as i64,
                4 => be_i32(v) as i64,
                8 => i64::from_be_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]]),
                _ => return Err(bad("integer of unexpected width")),
            };
            push_i64(n, out);
        }
        Codec::Bool => match v {
            [0] => out.extend_from_slice(b"false"),
            [1] => out.extend_from_slice(b"true"),
            _ => return Err(bad("bool is not one byte of 0 or 1")),
        },
        Codec::Text => write_json_string(v, out),
        Codec::Json => text_value(&TypeKind::Json, v, out),
        Codec::Jsonb => match v.split_first() {
            Some((1, text)) => text_value(&TypeKind::Json, text, out),
            _ => return Err(bad("jsonb of an unknown version")),
        },
        Codec::Bytea => {
            use base64::Engine;
            out.push(b'"');
            let start = out.len();
            out.resize(start + v.len().div_ceil(3) * 4, 0);
            let n = base64::engine::general_purpose::STANDARD
                .encode_slice(v, &mut out[start..])
                .map_err(|_| bad("bytea too large to encode"))?;
            out.truncate(start + n);
            out.push(b'"');
        }
        Codec::Uuid => {
            if v.len() != 16 {
                return Err(bad("uuid is not 16 bytes"));
            }
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push(b'"');
            for (i, b) in v.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    out.push(b'-');
                }
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
            }
            out.push(b'"');
        }
        Codec::Timestamp | Codec::TimestampTz => {
            let micros =
                i64::from_be_bytes(v.try_into().map_err(|_| bad("timestamp is not 8 bytes"))?);
            let tz = *codec == Codec::TimestampTz;
            if rfc3339(micros, tz, out) {
                return Ok(());
            }
            // Infinities and years outside 1-9999: as the text path writes them.
            scratch.clear();
            timestamp_text(micros, tz, scratch);
            let kind = if tz {
                TypeKind::TimestampTz
            } else {
                TypeKind::Timestamp
            };
            text_value(&kind, scratch, out);
        }
        Codec::Date => {
            let days = be_i32(&<[u8; 4]>::try_from(v).map_err(|_| bad("date is not 4 bytes"))?);
            scratch.clear();
            date_text(days, scratch);
            write_json_string(scratch, out);
        }
        Codec::ViaText(kind) => text_value(kind, v, out),
    }
    Ok(())
}

/// The stream's conversion of a text value, with the same fallback to a string.
fn text_value(kind: &TypeKind, text: &[u8], out: &mut Vec<u8>) {
    if write_json(kind, text, out).is_err() {
        write_json_string(text, out);
    }
}

fn push_i64(n: i64, out: &mut Vec<u8>) {
    push_padded(n, 1, out);
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Civil date of a day count since 2000-01-01 (proleptic Gregorian; year 0 is 1 BC).
fn civil(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days_from_civil inverse, shifted from 1970 to 2000.
    let z = days + 10_957 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Appends `n` in decimal, its digits zero-padded to at least `width`.
fn push_padded(n: i64, width: usize, out: &mut Vec<u8>) {
    if n < 0 {
        out.push(b'-');
    }
    sluice_core::push_decimal_min(out, n.unsigned_abs(), width);
}

/// `YYYY-MM-DD`, with ` BC` for years before 1, as PostgreSQL's ISO DateStyle prints.
fn push_date(days: i64, out: &mut Vec<u8>) -> bool {
    let (y, m, d) = civil(days);
    let bc = y <= 0;
    push_padded(if bc { 1 - y } else { y }, 4, out);
    out.push(b'-');
    push_padded(m as i64, 2, out);
    out.push(b'-');
    push_padded(d as i64, 2, out);
    bc
}

/// The JSON string the text path makes of a timestamp of years 1 to 9999 (RFC 3339, the
/// fraction as PostgreSQL prints it, `Z` with a zone); false for anything else.
fn rfc3339(micros: i64, tz: bool, out: &mut Vec<u8>) -> bool {
    if micros == i64::MAX || micros == i64::MIN {
        return false;
    }
    let (y, m, d) = civil(micros.div_euclid(MICROS_PER_DAY));
    if !(1..=9999).contains(&y) {
        return false;
    }
    let time = micros.rem_euclid(MICROS_PER_DAY);
    let secs = (time / 1_000_000) as u32;
    let frac = (time % 1_000_000) as u32;
    let mut b = *b"\"0000-00-00T00:00:00";
    let mut put = |at: usize, v: u32, n: usize| {
        let mut v = v;
        for i in (0..n).rev() {
            b[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(1, y as u32, 4);
    put(6, m, 2);
    put(9, d, 2);
    put(12, secs / 3600, 2);
    put(15, secs / 60 % 60, 2);
    put(18, secs % 60, 2);
    out.extend_from_slice(&b);
    if frac != 0 {
        let mut f = *b".000000";
        let mut v = frac;
        for i in (1..7).rev() {
            f[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        let mut n = 7;
        while f[n - 1] == b'0' {
            n -= 1;
        }
        out.extend_from_slice(&f[..n]);
    }
    out.extend_from_slice(if tz { b"Z\"" } else { b"\"" });
    true
}

/// PostgreSQL's text form of a timestamp (DateStyle ISO, TimeZone UTC).
pub fn timestamp_text(micros: i64, tz: bool, out: &mut Vec<u8>) {
    match micros {
        i64::MAX => return out.extend_from_slice(b"infinity"),
        i64::MIN => return out.extend_from_slice(b"-infinity"),
        _ => {}
    }
    let days = micros.div_euclid(MICROS_PER_DAY);
    let time = micros.rem_euclid(MICROS_PER_DAY);
    let bc = push_date(days, out);
    out.push(b' ');
    let secs = time / 1_000_000;
    let frac = time % 1_000_000;
    push_padded(secs / 3600, 2, out);
    out.push(b':');
    push_padded(secs / 60 % 60, 2, out);
    out.push(b':');
    push_padded(secs % 60, 2, out);
    if frac != 0 {
        out.push(b'.');
        let start = out.len();
        push_padded(frac, 6, out);
        while out.len() > start && out.last() == Some(&b'0') {
            out.pop();
        }
    }
    if tz {
        out.extend_from_slice(b"+00");
    }
    if bc {
        out.extend_from_slice(b" BC");
    }
}

/// PostgreSQL's text form of a date (DateStyle ISO).
pub fn date_text(days: i32, out: &mut Vec<u8>) {
    match days {
        i32::MAX => out.extend_from_slice(b"infinity"),
        i32::MIN => out.extend_from_slice(b"-infinity"),
        _ => {
            if push_date(days as i64, out) {
                out.extend_from_slice(b" BC");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl Fn(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn timestamps_print_as_postgresql_does() {
        let base = 0i64; // 2000-01-01 00:00:00
        assert_eq!(
            text(|o| timestamp_text(base, true, o)),
            "2000-01-01 00:00:00+00"
        );
        assert_eq!(
            text(|o| timestamp_text(base + 1_500_000, false, o)),
            "2000-01-01 00:00:01.5"
        );
        assert_eq!(
            text(|o| timestamp_text(-1, false, o)),
            "1999-12-31 23:59:59.999999"
        );
        // 2024-02-29 12:34:56.000789
        let leap = (8825 * 86_400 + 12 * 3600 + 34 * 60 + 56) * 1_000_000 + 789;
        assert_eq!(
            text(|o| timestamp_text(leap, true, o)),
            "2024-02-29 12:34:56.000789+00"
        );
        assert_eq!(text(|o| timestamp_text(i64::MAX, true, o)), "infinity");
        assert_eq!(text(|o| timestamp_text(i64::MIN, false, o)), "-infinity");
        // 0001-01-01 is day -730119; the day before is 1 BC, December 31.
        assert_eq!(text(|o| date_text(-730_119, o)), "0001-01-01");
        assert_eq!(text(|o| date_text(-730_120, o)), "0001-12-31 BC");
        assert_eq!(
            text(|o| timestamp_text(-730_120 * MICROS_PER_DAY, true, o)),
            "0001-12-31 00:00:00+00 BC"
        );
        assert_eq!(text(|o| date_text(2_914_000, o)), "9978-04-06");
    }

    #[test]
    fn the_direct_timestamp_json_is_the_text_paths() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut samples = vec![0i64, -1, 1, 999_999, 1_000_000, -730_119 * MICROS_PER_DAY];
        let span = 320_000 * 86_400 * 1_000_000i64;
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Years 1 to 9999 and a little beyond either side.
            samples.push((rng % (2 * span as u64)) as i64 - span);
        }
        let mut direct_count = 0;
        for m in samples {
            for tz in [false, true] {
                let mut text = Vec::new();
                timestamp_text(m, tz, &mut text);
                let kind = if tz {
                    TypeKind::TimestampTz
                } else {
                    TypeKind::Timestamp
                };
                let mut via_text = Vec::new();
                text_value(&kind, &text, &mut via_text);
                let mut direct = Vec::new();
                if rfc3339(m, tz, &mut direct) {
                    direct_count += 1;
                    assert_eq!(direct, via_text, "{m}");
                }
            }
        }
        assert!(direct_count > 30_000);
    }

    fn stream(rows: &[&[Option<&[u8]>]]) -> Vec<u8> {
        let mut b = SIGNATURE.to_vec();
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        for r in rows {
            b.extend_from_slice(&(r.len() as i16).to_be_bytes());
            for f in r.iter() {
                match f {
                    None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        b.extend_from_slice(v);
                    }
                }
            }
        }
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b
    }

    #[test]
    fn rows_come_out_whole_however_the_stream_is_split() {
        let rows: Vec<&[Option<&[u8]>]> = vec![
            &[Some(b"\0\0\0\x01"), Some(b"abc")],
            &[Some(b"\0\0\0\x02"), None],
        ];
        let bytes = stream(&rows);
        for split in 0..bytes.len() {
            let mut p = CopyParser::new();
            let mut got = Vec::new();
            let mut sink = |f: &[Option<&[u8]>]| -> Result<(), CopyError> {
                got.push(f.iter().map(|v| v.map(<[u8]>::to_vec)).collect::<Vec<_>>());
                Ok(())
            };
            p.feed(&bytes[..split], 2, &mut sink).unwrap();
            p.feed(&bytes[split..], 2, &mut sink).unwrap();
            assert!(p.finished());
            assert_eq!(got.len(), 2, "split at {split}");
            assert_eq!(got[1][1], None);
            assert_eq!(got[0][1].as_deref(), Some(&b"abc"[..]));
        }
    }

    #[test]
    fn malformed_streams_are_errors_not_panics() {
        let mut p = CopyParser::new();
        let mut sink = |_: &[Option<&[u8]>]| -> Result<(), CopyError> { Ok(()) };
        assert_eq!(
            p.feed(b"NOTCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0", 1, &mut sink),
            Err(CopyError::Signature)
        );
        let rows: Vec<&[Option<&[u8]>]> = vec![&[Some(b"x")]];
        let mut p = CopyParser::new();
        assert!(matches!(
            p.feed(&stream(&rows), 2, &mut sink),
            Err(CopyError::FieldCount { got: 1, want: 2 })
        ));
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        for codec in [
            Codec::Int,
            Codec::Bool,
            Codec::Jsonb,
            Codec::Uuid,
            Codec::Timestamp,
            Codec::Date,
        ] {
            assert!(write_value(&codec, 3, b"\x05\x05\x05", &mut scratch, &mut out).is_err());
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            split in 0usize..220,
            ncols in 0usize..40,
        ) {
            // With and without a valid header, split anywhere.
            for bytes in [body.clone(), [SIGNATURE, &[0u8; 8][..], &body].concat()] {
                let mut p = CopyParser::new();
                let mut scratch = Vec::new();
                let mut out = Vec::new();
                let codecs = [Codec::Int, Codec::Bool, Codec::Jsonb, Codec::Uuid, Codec::TimestampTz, Codec::Date, Codec::Bytea, Codec::Text];
                let mut sink = |f: &[Option<&[u8]>]| -> Result<(), CopyError> {
                    for (i, v) in f.iter().enumerate() {
                        if let Some(v) = v {
                            let _ = write_value(&codecs[i % codecs.len()], i, v, &mut scratch, &mut out);
                        }
                    }
                    Ok(())
                };
                let at = split.min(bytes.len());
                if p.feed(&bytes[..at], ncols, &mut sink).is_ok() {
                    let _ = p.feed(&bytes[at..], ncols, &mut sink);
                }
            }
        }
    }

    #[test]
    fn binary_values_become_the_streams_json() {
        let json = |codec: Codec, v: &[u8]| {
            let mut out = Vec::new();
            write_value(&codec, 0, v, &mut Vec::new(), &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(json(Codec::Int, &(-42i16).to_be_bytes()), "-42");
        assert_eq!(
            json(Codec::Int, &i64::MIN.to_be_bytes()),
            "-9223372036854775808"
        );
        assert_eq!(json(Codec::Bool, &[1]), "true");
        assert_eq!(json(Codec::Text, b"a\"b\n"), r#""a\"b\n""#);
        assert_eq!(json(Codec::Jsonb, b"\x01{\"a\": [1, 2]}"), r#"{"a":[1,2]}"#);
        assert_eq!(json(Codec::Bytea, &[0xff, 0, 0x10]), r#""/wAQ""#);
        assert_eq!(
            json(
                Codec::Uuid,
                &[
                    0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd,
                    0x38, 0x0a, 0x11
                ]
            ),
            r#""a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11""#
        );
        assert_eq!(
            json(Codec::TimestampTz, &1_500_000i64.to_be_bytes()),
            r#""2000-01-01T00:00:01.5Z""#
        );
        assert_eq!(json(Codec::Date, &0i32.to_be_bytes()), r#""2000-01-01""#);
        assert_eq!(
            json(Codec::ViaText(TypeKind::Numeric), b"19.90"),
            r#""19.90""#
        );
    }
}
