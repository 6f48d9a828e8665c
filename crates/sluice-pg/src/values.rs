//! Column values, as pgoutput sends them in text format, turned into the JSON of the change
//! record and appended straight to a byte buffer (the hot path: no intermediate
//! `serde_json::Value`, no allocation per value except for array elements with backslash
//! escapes).
//!
//! The replication session runs with `DateStyle=ISO`, `TimeZone=UTC`, `extra_float_digits=3`,
//! `IntervalStyle=postgres` and `bytea_output=hex`, so the text forms below are predictable.
//!
//! | kind | PostgreSQL text | JSON |
//! |---|---|---|
//! | `Int` (int2, int4, int8, oid) | `-42` | number; a text that is not an integer becomes a string |
//! | `Float` (float4, float8) | `1.5`, `1e+100`, `NaN` | number; `NaN`, `Infinity`, `-Infinity` (anything that is not a JSON number) as a string |
//! | `Numeric` | `19.90`, `NaN` | string, so no JSON parser rounds it |
//! | `Bool` | `t`, `f` | `true`, `false` |
//! | `Text` (text, varchar, bpchar, name, char, enums, string-category types such as citext) | | string |
//! | `Json` (json, jsonb) | | embedded, with insignificant whitespace removed (a `json` value may contain newlines, which would break line-delimited output) |
//! | `Bytea` | `\x0a0b` | base64 string, standard alphabet with padding |
//! | `Timestamp` | `2026-11-22 01:02:03.456789` | `"2026-11-22T01:02:03.456789"` |
//! | `TimestampTz` | `2026-11-22 01:02:03.456789+00` | `"2026-11-22T01:02:03.456789Z"`; another offset as `+05:30` |
//! | `Date`, `Time` (time, timetz), `Uuid`, `Other` | | the text as a string |
//! | `Array` | `{1,2,NULL}`, `{{1,2},{3,4}}`, `[0:1]={1,2}` | JSON arrays, nested per dimension, elements converted by the element kind; explicit bounds are dropped |
//!
//! Timestamps `infinity`, `-infinity` and BC dates (`... BC`) keep their text, as strings; so
//! does an offset with seconds (`+00:19:32`, only seen for pre-1900 local mean time), which
//! RFC 3339 cannot express.
//!
//! Invariants:
//! - Nothing here panics, whatever the bytes.
//! - When [`write_json`] returns `Ok`, it appended exactly one valid JSON value, in UTF-8;
//!   json values nest at most 100 deep and arrays 6, so the envelope around them stays
//!   within serde_json's default recursion limit of 128.
//! - When it returns `Err`, `out` is exactly as it was; the caller writes the text form as a
//!   string instead. Errors say what was wrong and where, never the value itself (logs must
//!   not contain row data).

use std::collections::HashMap;
use std::io::Write as _;

use base64::engine::general_purpose::STANDARD as BASE64;

/// How the text form of a PostgreSQL type maps to JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeKind {
    /// int2, int4, int8, oid: a JSON number.
    Int,
    /// float4, float8: a JSON number, or a string for `NaN` and the infinities.
    Float,
    /// numeric: a string, to keep every digit.
    Numeric,
    /// bool: `true` or `false`.
    Bool,
    /// Character types and enums: a string.
    Text,
    /// json, jsonb: embedded as JSON.
    Json,
    /// bytea: a base64 string.
    Bytea,
    /// timestamp without time zone: an RFC 3339 string without offset.
    Timestamp,
    /// timestamp with time zone: an RFC 3339 string, `Z` for UTC.
    TimestampTz,
    /// date: a string.
    Date,
    /// time, timetz: a string.
    Time,
    /// uuid: a string.
    Uuid,
    /// An array literal whose elements are of kind `element`, separated by `delimiter`
    /// (the element type's `typdelim`: `;` for box, `,` for nearly everything else).
    Array {
        element: Box<TypeKind>,
        delimiter: u8,
    },
    /// Anything else: its text form as a string.
    Other,
}

/// OID of `box`, the one built-in type whose array delimiter is `;`.
const BOX_OID: u32 = 603;

/// Built-in types that stay text, known so that their arrays become JSON arrays:
/// int2vector, regproc, tid, xid, cid, oidvector, xml, xid8, point, lseg, path, box, polygon,
/// line, circle, money, macaddr8, macaddr, inet, cidr, interval, bit, varbit, the reg* types,
/// pg_lsn, tsvector, tsquery, jsonpath, the ranges and the multiranges.
#[rustfmt::skip]
const TEXT_ONLY_BUILTINS: &[u32] = &[
    22, 24, 27, 28, 29, 30, 142, 5069, 600, 601, 602, 603, 604, 628, 718, 790, 774, 829, 869,
    650, 1186, 1560, 1562, 2202, 2203, 2204, 2205, 2206, 3220, 3614, 3615, 4072, 3904, 3906,
    3908, 3910, 3912, 3926, 4451, 4532, 4533, 4534, 4535, 4536,
];

/// Kind of a built-in scalar type OID (from `pg_type.dat`).
fn builtin_scalar(oid: u32) -> Option<TypeKind> {
    use TypeKind::*;
    Some(match oid {
        16 => Bool,
        17 => Bytea,
        // char, name, text, bpchar, varchar, refcursor
        18 | 19 | 25 | 1042 | 1043 | 1790 => Text,
        // int8, int2, int4, oid
        20 | 21 | 23 | 26 => Int,
        114 | 3802 => Json,
        700 | 701 => Float,
        1082 => Date,
        1083 | 1266 => Time,
        1114 => Timestamp,
        1184 => TimestampTz,
        1700 => Numeric,
        2950 => Uuid,
        _ if TEXT_ONLY_BUILTINS.contains(&oid) => Other,
        _ => return None,
    })
}

/// Built-in array types and their element types (`array_type_oid` in `pg_type.dat`).
#[rustfmt::skip]
const BUILTIN_ARRAYS: &[(u32, u32)] = &[
    (1000, 16), (1001, 17), (1002, 18), (1003, 19), (1016, 20), (1005, 21), (1007, 23),
    (1009, 25), (1028, 26), (199, 114), (1021, 700), (1022, 701), (1014, 1042), (1015, 1043),
    (1182, 1082), (1183, 1083), (1115, 1114), (1185, 1184), (1270, 1266), (1231, 1700),
    (2951, 2950), (3807, 3802), (2201, 1790), (1006, 22), (1008, 24), (1010, 27), (1011, 28),
    (1012, 29), (1013, 30), (143, 142), (271, 5069), (1017, 600), (1018, 601), (1019, 602),
    (1020, 603), (1027, 604), (629, 628), (719, 718), (791, 790), (775, 774), (1040, 829),
    (1041, 869), (651, 650), (1187, 1186), (1561, 1560), (1563, 1562), (2207, 2202),
    (2208, 2203), (2209, 2204), (2210, 2205), (2211, 2206), (3221, 3220), (3643, 3614),
    (3645, 3615), (4073, 4072), (3905, 3904), (3907, 3906), (3909, 3908), (3911, 3910),
    (3913, 3912), (3927, 3926), (6150, 4451), (6151, 4532), (6152, 4533), (6153, 4534),
    (6155, 4535), (6157, 4536),
];

fn builtin_array_element(oid: u32) -> Option<u32> {
    BUILTIN_ARRAYS
        .iter()
        .find(|&&(array, _)| array == oid)
        .map(|&(_, element)| element)
}

fn builtin_delimiter(element_oid: u32) -> u8 {
    if element_oid == BOX_OID {
        b';'
    } else {
        b','
    }
}

fn is_builtin(oid: u32) -> bool {
    builtin_scalar(oid).is_some() || builtin_array_element(oid).is_some()
}

/// Kind of a built-in type OID: the standard scalar types (bool, bytea, char, name, int8,
/// int2, int4, text, oid, json, float4, float8, bpchar, varchar, date, time, timestamp,
/// timestamptz, timetz, numeric, uuid, jsonb, plus the text-only built-ins such as interval,
/// inet and box) and the array types of all of them. `None` for an unknown OID.
pub fn builtin_kind(oid: u32) -> Option<TypeKind> {
    if let Some(kind) = builtin_scalar(oid) {
        return Some(kind);
    }
    let element = builtin_array_element(oid)?;
    Some(TypeKind::Array {
        element: Box::new(builtin_scalar(element)?),
        delimiter: builtin_delimiter(element),
    })
}

/// Domains over domains, arrays of domains...: deeper than this is a cycle or nonsense.
const MAX_TYPE_DEPTH: u32 = 8;

/// The `pg_type` columns that decide a kind.
#[derive(Debug, Clone, Copy)]
struct CatalogRow {
    typtype: u8,
    typcategory: u8,
    typelem: u32,
    typbasetype: u32,
    typdelim: u8,
}

/// Resolves type OIDs, with catalog rows for non-built-in types (enums, domains, arrays of
/// those, composite, ranges...).
#[derive(Debug, Default, Clone)]
pub struct TypeRegistry {
    rows: HashMap<u32, CatalogRow>,
}

impl TypeRegistry {
    /// An empty registry: built-in types only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Kind for an OID: builtin, or from catalog rows, or Other.
    pub fn kind(&self, oid: u32) -> TypeKind {
        self.resolve(oid, 0)
    }

    /// Whether the OID is built in or has a recorded catalog row.
    pub fn knows(&self, oid: u32) -> bool {
        is_builtin(oid) || self.rows.contains_key(&oid)
    }

    /// Record one pg_type row: typtype ('b','c','d','e','p','r','m'), typelem (0 if none),
    /// typbasetype (0 if none), typdelim, typcategory ('A' = array). Resolution of
    /// domains/arrays happens in kind() recursively (guard against cycles/depth > 8 → Other).
    pub fn record(
        &mut self,
        oid: u32,
        typtype: u8,
        typcategory: u8,
        typelem: u32,
        typbasetype: u32,
        typdelim: u8,
    ) {
        let row = CatalogRow {
            typtype,
            typcategory,
            typelem,
            typbasetype,
            typdelim,
        };
        self.rows.insert(oid, row);
    }

    fn resolve(&self, oid: u32, depth: u32) -> TypeKind {
        if depth > MAX_TYPE_DEPTH {
            return TypeKind::Other;
        }
        // Built-in OIDs are fixed, so a recorded row never overrides them.
        if let Some(kind) = builtin_kind(oid) {
            return kind;
        }
        let Some(row) = self.rows.get(&oid) else {
            return TypeKind::Other;
        };
        match row.typtype {
            b'd' if row.typbasetype != 0 => self.resolve(row.typbasetype, depth + 1),
            b'e' => TypeKind::Text,
            b'b' if row.typcategory == b'A' && row.typelem != 0 => TypeKind::Array {
                element: Box::new(self.resolve(row.typelem, depth + 1)),
                // array_out separates elements with the element type's delimiter.
                delimiter: self.element_delimiter(row.typelem).unwrap_or(row.typdelim),
            },
            b'b' if row.typcategory == b'S' => TypeKind::Text,
            _ => TypeKind::Other,
        }
    }

    fn element_delimiter(&self, element: u32) -> Option<u8> {
        if is_builtin(element) {
            return Some(builtin_delimiter(element));
        }
        self.rows.get(&element).map(|row| row.typdelim)
    }
}

/// Why a value could not be converted for its kind. Never carries the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The text is not a well-formed array literal.
    #[error("malformed array literal at byte {offset}: {reason}")]
    Array { offset: usize, reason: &'static str },
    /// The text is not bytea in hex format.
    #[error("invalid bytea text at byte {offset}: {reason}")]
    Bytea { offset: usize, reason: &'static str },
    /// The text is not valid JSON (or is nested too deep to embed).
    #[error("invalid json text at byte {offset}: {reason}")]
    Json { offset: usize, reason: &'static str },
    /// A bool that is neither `t` nor `f`.
    #[error("invalid bool text: expected t or f")]
    Bool,
    /// A timestamp not in ISO form.
    #[error("invalid {kind} text: {reason}")]
    Timestamp {
        kind: &'static str,
        reason: &'static str,
    },
}

/// Append the JSON for one text-format value of the given kind to `out`.
///
/// On error `out` is left as it was.
pub fn write_json(kind: &TypeKind, text: &[u8], out: &mut Vec<u8>) -> Result<(), ValueError> {
    let start = out.len();
    let result = write_value(kind, text, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_value(kind: &TypeKind, text: &[u8], out: &mut Vec<u8>) -> Result<(), ValueError> {
    match kind {
        TypeKind::Int if is_integer(text) => out.extend_from_slice(text),
        TypeKind::Float if is_number(text) => out.extend_from_slice(text),
        TypeKind::Int
        | TypeKind::Float
        | TypeKind::Numeric
        | TypeKind::Text
        | TypeKind::Date
        | TypeKind::Time
        | TypeKind::Uuid
        | TypeKind::Other => write_json_string(text, out),
        TypeKind::Bool => match text {
            b"t" | b"true" => out.extend_from_slice(b"true"),
            b"f" | b"false" => out.extend_from_slice(b"false"),
            _ => return Err(ValueError::Bool),
        },
        TypeKind::Json => write_embedded_json(text, out)?,
        TypeKind::Bytea => write_bytea(text, out)?,
        TypeKind::Timestamp => write_timestamp(text, false, out)?,
        TypeKind::TimestampTz => write_timestamp(text, true, out)?,
        TypeKind::Array { element, delimiter } => write_array(element, *delimiter, text, out)?,
    }
    Ok(())
}

/// What follows a backslash for each byte that needs escaping in a JSON string; 0 = none,
/// `u` = `\u00XX`.
const ESCAPES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = b'u';
        i += 1;
    }
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Append `s` as a JSON string literal (quoted, escaped). Invalid UTF-8 is replaced with U+FFFD.
pub fn write_json_string(s: &[u8], out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    if std::str::from_utf8(s).is_ok() {
        escape_into(s, out);
    } else {
        for chunk in s.utf8_chunks() {
            escape_into(chunk.valid().as_bytes(), out);
            if !chunk.invalid().is_empty() {
                out.extend_from_slice("\u{FFFD}".as_bytes());
            }
        }
    }
    out.push(b'"');
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `w` is a control character, `"` or `\\` (bit tricks from
/// "Bit Twiddling Hacks": a zero byte, a byte below n).
fn needs_escape(w: u64) -> bool {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS != 0;
    zero(w ^ (ONES * u64::from(b'"')))
        || zero(w ^ (ONES * u64::from(b'\\')))
        || w.wrapping_sub(ONES * 0x20) & !w & HIGHS != 0
}

/// Escapes valid UTF-8; copies runs that need no escaping in one go.
fn escape_into(s: &[u8], out: &mut Vec<u8>) {
    let mut run = 0;
    let mut i = 0;
    while i < s.len() {
        // Eight bytes at a time while none needs escaping (most text needs none).
        while let Some(word) = s.get(i..i + 8) {
            let w = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
            if needs_escape(w) {
                break;
            }
            i += 8;
        }
        let Some(&byte) = s.get(i) else { break };
        i += 1;
        let escape = ESCAPES[usize::from(byte)];
        if escape == 0 {
            continue;
        }
        let i = i - 1;
        out.extend_from_slice(&s[run..i]);
        if escape == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX_DIGITS[usize::from(byte >> 4)]);
            out.push(HEX_DIGITS[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        run = i + 1;
    }
    out.extend_from_slice(&s[run..]);
}

fn count_digits(s: &[u8]) -> usize {
    s.iter().take_while(|b| b.is_ascii_digit()).count()
}

/// `-?(0|[1-9][0-9]*)`: an integer that is also a JSON number.
fn is_integer(s: &[u8]) -> bool {
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    !digits.is_empty()
        && count_digits(digits) == digits.len()
        && (digits.len() == 1 || digits[0] != b'0')
}

fn is_number(s: &[u8]) -> bool {
    let len = number_prefix(s);
    len != 0 && len == s.len()
}

/// Length of the JSON number at the start of `s`, or 0 if it does not start with one.
fn number_prefix(s: &[u8]) -> usize {
    let mut i = usize::from(s.first() == Some(&b'-'));
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i += count_digits(&s[i..]),
        _ => return 0,
    }
    if s.get(i) == Some(&b'.') {
        let fraction = count_digits(&s[i + 1..]);
        if fraction == 0 {
            return 0;
        }
        i += 1 + fraction;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(s.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let exponent = count_digits(&s[j..]);
        if exponent == 0 {
            return 0;
        }
        i = j + exponent;
    }
    i
}

/// Deepest nesting accepted inside a json/jsonb value. serde_json, which the sinks and their
/// consumers commonly use, stops at 128 levels, and the envelope, a batch and up to six
/// array dimensions sit around the value.
const MAX_JSON_DEPTH: usize = 100;

/// Validates json/jsonb text and copies it without insignificant whitespace.
fn write_embedded_json(text: &[u8], out: &mut Vec<u8>) -> Result<(), ValueError> {
    if let Err(e) = std::str::from_utf8(text) {
        return Err(ValueError::Json {
            offset: e.valid_up_to(),
            reason: "not UTF-8",
        });
    }
    let mut scan = JsonScan { s: text, pos: 0 };
    scan.skip_whitespace();
    scan.value(out, 1)?;
    scan.skip_whitespace();
    if scan.pos != text.len() {
        return Err(scan.error("trailing characters after the value"));
    }
    Ok(())
}

struct JsonScan<'a> {
    s: &'a [u8],
    pos: usize,
}

impl JsonScan<'_> {
    fn error(&self, reason: &'static str) -> ValueError {
        ValueError::Json {
            offset: self.pos,
            reason,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), ValueError> {
        match self.peek() {
            Some(open @ (b'{' | b'[')) => {
                if depth > MAX_JSON_DEPTH {
                    return Err(self.error("nested too deep"));
                }
                let close = if open == b'{' { b'}' } else { b']' };
                self.pos += 1;
                out.push(open);
                self.skip_whitespace();
                if self.peek() == Some(close) {
                    self.pos += 1;
                    out.push(close);
                    return Ok(());
                }
                loop {
                    self.skip_whitespace();
                    if open == b'{' {
                        if self.peek() != Some(b'"') {
                            return Err(self.error("expected an object key"));
                        }
                        self.string(out)?;
                        self.skip_whitespace();
                        if self.peek() != Some(b':') {
                            return Err(self.error("expected ':'"));
                        }
                        self.pos += 1;
                        out.push(b':');
                        self.skip_whitespace();
                    }
                    self.value(out, depth + 1)?;
                    self.skip_whitespace();
                    match self.peek() {
                        Some(b',') => out.push(b','),
                        Some(c) if c == close => {
                            self.pos += 1;
                            out.push(close);
                            return Ok(());
                        }
                        _ => return Err(self.error("expected ',' or the closing bracket")),
                    }
                    self.pos += 1;
                }
            }
            Some(b'"') => self.string(out),
            Some(b't') => self.literal(b"true", out),
            Some(b'f') => self.literal(b"false", out),
            Some(b'n') => self.literal(b"null", out),
            _ => {
                let len = number_prefix(&self.s[self.pos..]);
                if len == 0 {
                    return Err(self.error("expected a value"));
                }
                out.extend_from_slice(&self.s[self.pos..self.pos + len]);
                self.pos += len;
                Ok(())
            }
        }
    }

    fn literal(&mut self, word: &[u8], out: &mut Vec<u8>) -> Result<(), ValueError> {
        if !self.s[self.pos..].starts_with(word) {
            return Err(self.error("expected a value"));
        }
        self.pos += word.len();
        out.extend_from_slice(word);
        Ok(())
    }

    /// A string, copied verbatim once checked: escapes valid, surrogates paired (serde_json
    /// rejects a lone one), no raw control characters.
    fn string(&mut self, out: &mut Vec<u8>) -> Result<(), ValueError> {
        let start = self.pos;
        self.pos += 1;
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => break,
                Some(b'\\') => match self.s.get(self.pos + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.pos += 2,
                    Some(b'u') => {
                        let unit = self.unicode_escape()?;
                        if (0xDC00..0xE000).contains(&unit) {
                            return Err(self.error("unpaired surrogate escape"));
                        }
                        if (0xD800..0xDC00).contains(&unit) {
                            if self.s.get(self.pos + 1) != Some(&b'u') || self.peek() != Some(b'\\')
                            {
                                return Err(self.error("unpaired surrogate escape"));
                            }
                            let low = self.unicode_escape()?;
                            if !(0xDC00..0xE000).contains(&low) {
                                return Err(self.error("unpaired surrogate escape"));
                            }
                        }
                    }
                    _ => return Err(self.error("invalid escape")),
                },
                Some(0..=0x1f) => return Err(self.error("control character in string")),
                Some(_) => self.pos += 1,
            }
        }
        self.pos += 1;
        out.extend_from_slice(&self.s[start..self.pos]);
        Ok(())
    }

    /// `\uXXXX` at `pos`; returns the code unit and moves past it.
    fn unicode_escape(&mut self) -> Result<u32, ValueError> {
        let Some(hex) = self.s.get(self.pos + 2..self.pos + 6) else {
            return Err(self.error("truncated \\u escape"));
        };
        let mut unit = 0u32;
        for &digit in hex {
            let Some(value) = hex_value(digit) else {
                return Err(self.error("invalid \\u escape"));
            };
            unit = unit << 4 | u32::from(value);
        }
        self.pos += 6;
        Ok(unit)
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// bytea in hex format (`\x0a0b`) as a base64 string, decoded a chunk at a time on the stack.
fn write_bytea(text: &[u8], out: &mut Vec<u8>) -> Result<(), ValueError> {
    let error = |offset, reason| ValueError::Bytea { offset, reason };
    let Some(hex) = text.strip_prefix(b"\\x") else {
        return Err(error(0, "expected hex format (\\x...)"));
    };
    if hex.len() % 2 != 0 {
        return Err(error(text.len(), "odd number of hex digits"));
    }
    out.push(b'"');
    let mut encoder = base64::write::EncoderWriter::new(&mut *out, &BASE64);
    let mut decoded = [0u8; 768];
    for (chunk_index, chunk) in hex.chunks(decoded.len() * 2).enumerate() {
        for (i, pair) in chunk.chunks_exact(2).enumerate() {
            match (hex_value(pair[0]), hex_value(pair[1])) {
                (Some(high), Some(low)) => decoded[i] = high << 4 | low,
                _ => {
                    let offset = 2 + chunk_index * decoded.len() * 2 + i * 2;
                    return Err(error(offset, "invalid hex digit"));
                }
            }
        }
        // Writing into a Vec cannot fail.
        if encoder.write_all(&decoded[..chunk.len() / 2]).is_err() {
            return Err(error(0, "base64 encoding failed"));
        }
    }
    if encoder.finish().is_err() {
        return Err(error(0, "base64 encoding failed"));
    }
    drop(encoder);
    out.push(b'"');
    Ok(())
}

/// ISO timestamps with `T` between date and time; for timestamptz, `Z` for a zero offset.
fn write_timestamp(text: &[u8], with_zone: bool, out: &mut Vec<u8>) -> Result<(), ValueError> {
    if text == b"infinity" || text == b"-infinity" || text.ends_with(b" BC") {
        write_json_string(text, out);
        return Ok(());
    }
    let kind = if with_zone {
        "timestamptz"
    } else {
        "timestamp"
    };
    let error = |reason| ValueError::Timestamp { kind, reason };
    let year = count_digits(text);
    let digits_at = |at: usize, n: usize| {
        text.get(at..at + n)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let byte_at = |at: usize| text.get(at).copied();
    let date_ok = year >= 4
        && byte_at(year) == Some(b'-')
        && digits_at(year + 1, 2)
        && byte_at(year + 3) == Some(b'-')
        && digits_at(year + 4, 2);
    let date_end = year + 6;
    if !date_ok || byte_at(date_end) != Some(b' ') {
        return Err(error("expected an ISO date and a space"));
    }
    let time = date_end + 1;
    let time_ok = digits_at(time, 2)
        && byte_at(time + 2) == Some(b':')
        && digits_at(time + 3, 2)
        && byte_at(time + 5) == Some(b':')
        && digits_at(time + 6, 2);
    if !time_ok {
        return Err(error("expected an ISO time"));
    }
    let mut time_end = time + 8;
    if byte_at(time_end) == Some(b'.') {
        let fraction = count_digits(&text[time_end + 1..]);
        if fraction == 0 {
            return Err(error("expected fractional seconds after '.'"));
        }
        time_end += 1 + fraction;
    }
    let offset = &text[time_end..];
    let offset_ok = matches!(offset.first(), Some(b'+' | b'-'))
        && digits_at(time_end + 1, 2)
        && matches!(offset.len(), 3 | 6 | 9)
        && offset
            .chunks(3)
            .skip(1)
            .all(|part| part[0] == b':' && part[1..].iter().all(u8::is_ascii_digit));
    if with_zone && !offset_ok {
        return Err(error("expected a UTC offset after the time"));
    }
    if !with_zone && !offset.is_empty() {
        return Err(error("unexpected characters after the time"));
    }
    out.push(b'"');
    out.extend_from_slice(&text[..date_end]);
    out.push(b'T');
    out.extend_from_slice(&text[time..time_end]);
    if with_zone {
        if offset[1..].iter().all(|&b| b == b'0' || b == b':') {
            out.push(b'Z');
        } else {
            out.extend_from_slice(offset);
            if offset.len() == 3 {
                out.extend_from_slice(b":00");
            }
        }
    }
    out.push(b'"');
    Ok(())
}

/// PostgreSQL's MAXDIM: an array has at most six dimensions.
const MAX_ARRAY_DIMS: usize = 6;

fn write_array(
    element: &TypeKind,
    delimiter: u8,
    text: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ValueError> {
    // A delimiter that is part of the literal syntax would make the text ambiguous; no real
    // type has one, but catalog rows are input too.
    let delimiter = match delimiter {
        b'{' | b'}' | b'"' | b'\\' | b'[' | b']' | b'=' => b',',
        d if !d.is_ascii_graphic() => b',',
        d => d,
    };
    let mut parser = ArrayParser {
        s: text,
        pos: 0,
        delimiter,
        element,
        scratch: Vec::new(),
    };
    parser.skip_whitespace();
    if parser.peek() == Some(b'[') {
        parser.bounds()?;
    }
    parser.skip_whitespace();
    if parser.peek() != Some(b'{') {
        return Err(parser.error("expected '{'"));
    }
    parser.dimension(out, 1)?;
    parser.skip_whitespace();
    if parser.pos != text.len() {
        return Err(parser.error("trailing characters after the array"));
    }
    Ok(())
}

struct ArrayParser<'a> {
    s: &'a [u8],
    pos: usize,
    delimiter: u8,
    element: &'a TypeKind,
    /// Unescaped element text; only allocated when an element has backslash escapes.
    scratch: Vec<u8>,
}

impl ArrayParser<'_> {
    fn error(&self, reason: &'static str) -> ValueError {
        ValueError::Array {
            offset: self.pos,
            reason,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// `[lb:ub][lb:ub]=`, which array_out writes when a lower bound is not 1; JSON arrays
    /// have no bounds, so it is checked and dropped.
    fn bounds(&mut self) -> Result<(), ValueError> {
        while self.peek() == Some(b'[') {
            self.pos += 1;
            self.bound()?;
            if self.peek() == Some(b':') {
                self.pos += 1;
                self.bound()?;
            }
            if self.peek() != Some(b']') {
                return Err(self.error("expected ']' in dimension bounds"));
            }
            self.pos += 1;
        }
        self.skip_whitespace();
        if self.peek() != Some(b'=') {
            return Err(self.error("expected '=' after dimension bounds"));
        }
        self.pos += 1;
        Ok(())
    }

    fn bound(&mut self) -> Result<(), ValueError> {
        if matches!(self.peek(), Some(b'-' | b'+')) {
            self.pos += 1;
        }
        let digits = count_digits(&self.s[self.pos..]);
        if digits == 0 {
            return Err(self.error("expected an integer bound"));
        }
        self.pos += digits;
        Ok(())
    }

    /// One `{...}` level, at its `{`: all sub-arrays or all elements, never mixed.
    fn dimension(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), ValueError> {
        if depth > MAX_ARRAY_DIMS {
            return Err(self.error("more than 6 dimensions"));
        }
        self.pos += 1;
        out.push(b'[');
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            out.push(b']');
            return Ok(());
        }
        let mut nested = None;
        loop {
            self.skip_whitespace();
            let is_sub_array = self.peek() == Some(b'{');
            if *nested.get_or_insert(is_sub_array) != is_sub_array {
                return Err(self.error("sub-arrays mixed with elements"));
            }
            if is_sub_array {
                self.dimension(out, depth + 1)?;
            } else {
                self.item(out)?;
            }
            self.skip_whitespace();
            match self.peek() {
                Some(b'}') => {
                    self.pos += 1;
                    out.push(b']');
                    return Ok(());
                }
                Some(d) if d == self.delimiter => {
                    self.pos += 1;
                    out.push(b',');
                }
                None => return Err(self.error("unterminated array")),
                Some(_) => return Err(self.error("expected a delimiter or '}'")),
            }
        }
    }

    /// One element, quoted or not; an unquoted `NULL` (any case) is null.
    fn item(&mut self, out: &mut Vec<u8>) -> Result<(), ValueError> {
        let (raw, escaped) = if self.peek() == Some(b'"') {
            self.pos += 1;
            let start = self.pos;
            let mut escaped = false;
            loop {
                match self.peek() {
                    None => return Err(self.error("unterminated quoted element")),
                    Some(b'"') => break,
                    Some(b'\\') => {
                        escaped = true;
                        self.pos += 2;
                    }
                    Some(_) => self.pos += 1,
                }
            }
            let raw = &self.s[start..self.pos];
            self.pos += 1;
            (raw, escaped)
        } else {
            let start = self.pos;
            // Whitespace around an unquoted element is not part of it (array_in), unless
            // escaped.
            let mut end = start;
            let mut escaped = false;
            loop {
                match self.peek() {
                    None => return Err(self.error("unterminated array")),
                    Some(b'}') => break,
                    Some(d) if d == self.delimiter => break,
                    Some(b'{' | b'"') => return Err(self.error("unexpected character in element")),
                    Some(b'\\') => {
                        if self.pos + 1 >= self.s.len() {
                            return Err(self.error("unterminated array"));
                        }
                        escaped = true;
                        self.pos += 2;
                        end = self.pos;
                    }
                    Some(b) => {
                        self.pos += 1;
                        if !b.is_ascii_whitespace() {
                            end = self.pos;
                        }
                    }
                }
            }
            if end == start {
                return Err(self.error("empty element"));
            }
            let raw = &self.s[start..end];
            if !escaped && raw.eq_ignore_ascii_case(b"NULL") {
                out.extend_from_slice(b"null");
                return Ok(());
            }
            (raw, escaped)
        };
        let element = self.element;
        if !escaped {
            return write_value(element, raw, out);
        }
        self.scratch.clear();
        let mut bytes = raw.iter();
        while let Some(&b) = bytes.next() {
            let b = if b == b'\\' {
                bytes.next().copied()
            } else {
                Some(b)
            };
            self.scratch.extend(b);
        }
        write_value(element, &self.scratch, out)
    }
}

#[cfg(test)]
#[path = "values_tests.rs"]
mod tests;
