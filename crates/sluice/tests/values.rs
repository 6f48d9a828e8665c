//! End to end: every built-in type docs/GUARANTEES.md names comes out with the documented JSON
//! mapping, and agrees value by value with what the `wal2json` output plugin reports for
//! the same changes (read from its own slot, created before the writes).
//!
//! wal2json's text forms differ from the documented mapping (numeric as a JSON number,
//! timestamps and arrays in PostgreSQL text form, bytea as bare hex, json as a string; and
//! it writes NaN and the infinities of float and numeric columns as null), so both sides
//! are parsed and compared semantically, and the values wal2json loses are pinned down by
//! spot checks. wal2json is read in a session with another
//! time zone than UTC, so the timestamptz comparison really checks the conversion.

mod support;

use serde_json::Value;
use support::vals::{SCHEMA, WRITES};
use support::*;

/// How a column's value is mapped and compared.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A JSON integer; wal2json: the same digits (a string for a domain).
    Int,
    /// A string of the exact numeric text; wal2json: a JSON number (null for NaN).
    Numeric,
    /// A JSON number, or "NaN" / "Infinity" / "-Infinity" as strings.
    Float,
    Bool,
    /// A string, identical to wal2json's.
    Text,
    /// Embedded JSON; wal2json: a string holding the JSON text.
    Json,
    /// RFC 3339 without offset; wal2json: `YYYY-MM-DD HH:MM:SS[.f]`.
    Timestamp,
    /// RFC 3339 in UTC ending in `Z`; wal2json: in the session's zone.
    TimestampTz,
    /// base64; wal2json: hex.
    Bytea,
    /// JSON arrays (nested per dimension) of this element kind; wal2json: an array
    /// literal, whose elements are compared like the scalars.
    Array(&'static Kind),
}

const COLUMNS: &[(&str, Kind)] = &[
    ("id", Kind::Int),
    ("i2", Kind::Int),
    ("i4", Kind::Int),
    ("i8", Kind::Int),
    ("num", Kind::Numeric),
    ("num_p", Kind::Numeric),
    ("f4", Kind::Float),
    ("f8", Kind::Float),
    ("b", Kind::Bool),
    ("t", Kind::Text),
    ("vc", Kind::Text),
    ("ch", Kind::Text),
    ("j", Kind::Json),
    ("jb", Kind::Json),
    ("ts", Kind::Timestamp),
    ("tstz", Kind::TimestampTz),
    ("d", Kind::Text),
    ("tm", Kind::Text),
    ("tmtz", Kind::Text),
    ("by", Kind::Bytea),
    ("u", Kind::Text),
    ("ia", Kind::Array(&Kind::Int)),
    ("ta", Kind::Array(&Kind::Text)),
    ("ia2", Kind::Array(&Kind::Int)),
    ("na", Kind::Array(&Kind::Numeric)),
    ("fa", Kind::Array(&Kind::Float)),
    ("ba", Kind::Array(&Kind::Bool)),
    ("tsa", Kind::Array(&Kind::TimestampTz)),
    ("bya", Kind::Array(&Kind::Bytea)),
    ("ja", Kind::Array(&Kind::Json)),
    ("ua", Kind::Array(&Kind::Text)),
    ("m", Kind::Text),
    ("pi", Kind::Int),
    ("em", Kind::Text),
    ("ip", Kind::Text),
    ("iv", Kind::Text),
];

/// Some PostgreSQL builds (this machine's among them) only allow the output plugins listed
/// in `output_plugin_libraries` (default `pgoutput, test_decoding`); a superuser may widen
/// the list for its session. A no-op where the setting does not exist.
const ALLOW_WAL2JSON: &str =
    "DO $$ BEGIN PERFORM set_config(name, 'pgoutput, test_decoding, wal2json', false) \
     FROM pg_settings WHERE name = 'output_plugin_libraries'; END $$;";

#[test]
fn every_documented_type_maps_as_documented_and_agrees_with_wal2json() {
    let pg = PgServer::start().unwrap();
    pg.psql(SCHEMA).unwrap();
    let mut p = Pipeline::new(&pg, "values", &["public.vals"], "");
    p.start();
    p.wait_streaming(&pg);
    pg.psql(&format!(
        "{ALLOW_WAL2JSON} SELECT 'x' FROM pg_create_logical_replication_slot('w2j', 'wal2json')"
    ))
    .unwrap_or_else(|e| {
        panic!("{e}\n(is postgresql-15-wal2json installed? apt-get install postgresql-15-wal2json)")
    });
    pg.psql(WRITES).unwrap();

    // Four inserts, one update, one delete.
    let recs = p.wait_records(6);
    p.stop();
    assert_eq!(recs.len(), 6, "{recs:#?}");
    assert_eq!(
        ops(&recs),
        ["insert", "insert", "insert", "insert", "update", "delete"]
    );

    // Another zone than the replication session's UTC: wal2json prints timestamptz in it.
    let w2j = pg
        .psql(&format!(
            "{ALLOW_WAL2JSON}
             SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres';
             SET extra_float_digits = 3; SET bytea_output = 'hex';
             SELECT data FROM pg_logical_slot_get_changes('w2j', NULL, NULL,
                 'format-version', '2', 'include-types', 'true');"
        ))
        .unwrap();
    let changes: Vec<W> = w2j
        .lines()
        .map(|l| W::parse(l).unwrap_or_else(|| panic!("wal2json line is not JSON: {l}")))
        .filter(|c| matches!(c.get("action").and_then(W::as_str), Some("I" | "U" | "D")))
        .collect();
    assert_eq!(changes.len(), recs.len(), "wal2json: {w2j}");
    assert!(
        w2j.contains("01:02:03.456789+05:30"),
        "not in Asia/Kolkata: {w2j}"
    );

    // The sink's lines again, read keeping numbers as text: serde_json's default float
    // parsing may be one ulp off, and f64 values are compared exactly.
    let raw: Vec<W> = std::fs::read_to_string(&p.out_path)
        .unwrap()
        .lines()
        .map(|l| W::parse(l).unwrap())
        .collect();
    assert_eq!(raw.len(), recs.len());

    for ((rec, raw), change) in recs.iter().zip(&raw).zip(&changes) {
        assert_eq!(rec["schema"], "public");
        assert_eq!(rec["table"], "vals");
        assert_eq!(change.get("table").and_then(W::as_str), Some("vals"));
        let action = change.get("action").and_then(W::as_str).unwrap();
        let (image, raw_image, theirs) = match action {
            "I" | "U" => (
                &rec["after"],
                raw.get("after"),
                change.get("columns").unwrap(),
            ),
            _ => (
                &rec["before"],
                raw.get("before"),
                change.get("identity").unwrap(),
            ),
        };
        let what = format!("record {} ({action})", rec["id"]);
        let image = image
            .as_object()
            .unwrap_or_else(|| panic!("{what}: no row image in {rec}"));
        let W::Arr(theirs) = theirs else {
            panic!("{what}: wal2json columns are not an array")
        };
        let their_names: Vec<&str> = theirs
            .iter()
            .map(|c| c.get("name").and_then(W::as_str).unwrap())
            .collect();
        let our_names: Vec<&str> = image.keys().map(String::as_str).collect();
        let mut sorted = their_names.clone();
        sorted.sort_unstable();
        let mut ours_sorted = our_names.clone();
        ours_sorted.sort_unstable();
        assert_eq!(ours_sorted, sorted, "{what}: column sets differ");
        if action != "D" {
            assert_eq!(their_names.len(), COLUMNS.len(), "{what}");
        }
        for col in theirs {
            let name = col.get("name").and_then(W::as_str).unwrap();
            let ty = col.get("type").and_then(W::as_str).unwrap_or("?");
            let kind = COLUMNS
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("unexpected column {name}"))
                .1;
            let ours = &image[name];
            let ours_raw = raw_image.and_then(|r| r.get(name)).unwrap();
            let theirs = col.get("value").unwrap();
            if let Err(e) = compare(kind, ours, ours_raw, theirs) {
                panic!("{what}, column {name} ({ty}, {kind:?}): {e}\n  sluice:   {ours}\n  wal2json: {theirs:?}");
            }
        }
        // The key is the primary key, with the same mapping.
        assert_eq!(rec["key"], serde_json::json!({"id": image["id"]}), "{what}");
    }

    // A few spot checks of the documented forms, independent of wal2json.
    let one = &recs[0]["after"];
    assert_eq!(one["i8"], serde_json::json!(9223372036854775807i64));
    assert_eq!(one["num"], "NaN");
    assert_eq!(one["num_p"], "12345678901234567890.12345678901234567890");
    assert_eq!(one["f4"], "NaN");
    assert_eq!(one["f8"], "Infinity");
    assert_eq!(one["ch"], "ab   ");
    assert_eq!(one["tstz"], "2026-11-21T19:32:03.456789Z");
    assert_eq!(one["ts"], "2026-11-22T01:02:03.456789");
    assert_eq!(one["by"], "AP8KQQ==");
    assert_eq!(one["ia"], serde_json::json!([1, -2, null, 3]));
    assert_eq!(
        one["ta"],
        serde_json::json!([
            "a\"b",
            "c,d",
            null,
            "NULL",
            "",
            " sp ",
            "back\\slash",
            "{br}",
            "ü"
        ])
    );
    assert_eq!(one["ia2"], serde_json::json!([[1, 2], [3, 4]]));
    assert_eq!(
        one["na"],
        serde_json::json!(["1.10", "NaN", "-0.000000000000000000001", null])
    );
    assert_eq!(
        one["fa"],
        serde_json::json!([1.5, "NaN", "-Infinity", 1e-300, null])
    );
    assert_eq!(one["ba"], serde_json::json!([true, false, null]));
    assert_eq!(
        one["tsa"],
        serde_json::json!(["2026-11-21T19:32:03.5Z", "infinity", null])
    );
    assert_eq!(one["bya"], serde_json::json!(["AP8=", "", null]));
    assert_eq!(
        one["ja"],
        serde_json::json!([{"a": [1, {"b": "c,d}"}]}, "s", null, null])
    );
    assert_eq!(
        one["ua"],
        serde_json::json!(["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", null])
    );
    assert_eq!(one["j"]["c"], "x\ny é");
    assert_eq!(one["m"], "happy, \"very\"");
    assert_eq!(one["pi"], 5);
    assert_eq!(one["iv"], "1 year 2 mons 3 days 04:05:06.5");
    let two = &recs[1]["after"];
    assert_eq!(two["i8"], serde_json::json!(-9223372036854775808i64));
    assert_eq!(two["f4"], "-Infinity");
    assert_eq!(two["ts"], "infinity");
    assert_eq!(two["tstz"], "-infinity");
    assert_eq!(two["by"], "");
    assert_eq!(two["ia"], serde_json::json!([]));
    let three = &recs[2]["after"];
    assert!(COLUMNS
        .iter()
        .all(|(n, _)| *n == "id" || three[*n].is_null()));
    let four = &recs[3]["after"];
    assert_eq!(four["ba"], serde_json::json!([[true], [false]]));
    assert_eq!(four["ja"], serde_json::json!([[]]));
    assert_eq!(
        four["ia"],
        serde_json::json!([5, 6]),
        "explicit bounds dropped"
    );
    assert_eq!(four["tstz"], "1850-06-01T12:00:00Z");
    assert_eq!(four["jb"], serde_json::json!({"k": 12345678901234567u64}));
}

// ---------------------------------------------------------------------------------------
// Semantic comparison of one value.

/// `ours` is the sink's value, `ours_raw` the same read with numbers kept as text.
fn compare(kind: Kind, ours: &Value, ours_raw: &W, theirs: &W) -> Result<(), String> {
    // wal2json writes NaN and the infinities of float4/float8/numeric as null, losing them;
    // the spot checks pin those values down instead.
    if matches!(kind, Kind::Float | Kind::Numeric) && matches!(theirs, W::Null) {
        if let Value::String(s) = ours {
            return check(
                ["NaN", "Infinity", "-Infinity"].contains(&s.as_str()),
                "wal2json null for a finite value",
            );
        }
    }
    // A json value `null` is embedded as JSON null, like SQL NULL (the documented mapping
    // cannot tell them apart).
    if kind == Kind::Json && ours.is_null() && theirs.as_str() == Some("null") {
        return Ok(());
    }
    if ours.is_null() || matches!(theirs, W::Null) {
        return if ours.is_null() && matches!(theirs, W::Null) {
            Ok(())
        } else {
            Err("null on one side only".into())
        };
    }
    match kind {
        Kind::Int => {
            if !(ours.is_i64() || ours.is_u64()) {
                return Err("not a JSON integer".into());
            }
            let digits = match theirs {
                W::Num(n) | W::Str(n) => n,
                _ => return Err("wal2json: not a number".into()),
            };
            let theirs: i128 = digits.parse().map_err(|_| "wal2json: bad integer")?;
            let ours = ours
                .as_i64()
                .map(i128::from)
                .or(ours.as_u64().map(i128::from));
            check(ours == Some(theirs), "integers differ")
        }
        Kind::Numeric => {
            let Value::String(s) = ours else {
                return Err("numeric is not a JSON string".into());
            };
            let text = match theirs {
                W::Num(n) | W::Str(n) => n,
                _ => return Err("wal2json: not a number".into()),
            };
            check(s == text, "numeric text differs")
        }
        Kind::Float => match (ours, theirs) {
            (Value::Number(_), W::Num(t)) => {
                let W::Num(ours) = ours_raw else {
                    return Err("raw form is not a number".into());
                };
                let a: f64 = ours.parse().map_err(|_| "bad float")?;
                let b: f64 = t.parse().map_err(|_| "wal2json: bad float")?;
                check(a == b, &format!("floats differ: {ours} vs {t}"))
            }
            (Value::String(s), W::Str(t)) => check(
                s == t && ["NaN", "Infinity", "-Infinity"].contains(&s.as_str()),
                "special floats differ",
            ),
            _ => Err("float forms differ".into()),
        },
        Kind::Bool => match (ours, theirs) {
            (Value::Bool(a), W::Bool(b)) => check(a == b, "booleans differ"),
            _ => Err("not booleans".into()),
        },
        Kind::Text => match (ours, theirs) {
            (Value::String(a), W::Str(b)) => check(a == b, "text differs"),
            _ => Err("not strings".into()),
        },
        Kind::Json => {
            let W::Str(text) = theirs else {
                return Err("wal2json: json not a string".into());
            };
            let parsed: Value =
                serde_json::from_str(text).map_err(|e| format!("wal2json json: {e}"))?;
            check(*ours == parsed, "json differs")
        }
        Kind::Timestamp => {
            let (Value::String(a), W::Str(b)) = (ours, theirs) else {
                return Err("not strings".into());
            };
            if b == "infinity" || b == "-infinity" {
                return check(a == b, "infinities differ");
            }
            check(
                is_rfc3339_local(a) && *a == b.replacen(' ', "T", 1),
                "timestamp not RFC 3339 or differs",
            )
        }
        Kind::TimestampTz => {
            let (Value::String(a), W::Str(b)) = (ours, theirs) else {
                return Err("not strings".into());
            };
            if b == "infinity" || b == "-infinity" {
                return check(a == b, "infinities differ");
            }
            if !a.ends_with('Z') || !is_rfc3339_local(&a[..a.len() - 1]) {
                return Err("timestamptz is not RFC 3339 in UTC".into());
            }
            let x = epoch_micros(a).ok_or("cannot parse ours")?;
            let y = epoch_micros(b).ok_or("cannot parse wal2json's")?;
            check(x == y, &format!("instants differ: {x} vs {y}"))
        }
        Kind::Bytea => {
            let (Value::String(a), W::Str(b)) = (ours, theirs) else {
                return Err("not strings".into());
            };
            let ours = base64_decode(a).ok_or("not base64")?;
            // wal2json writes the hex digits without bytea_output's `\x`.
            let theirs =
                hex_decode(b.strip_prefix("\\x").unwrap_or(b)).ok_or("wal2json: not hex")?;
            check(ours == theirs, "bytes differ")
        }
        Kind::Array(element) => {
            let W::Str(literal) = theirs else {
                return Err("wal2json: array not a string".into());
            };
            let parsed = parse_array_literal(literal).ok_or("bad array literal")?;
            compare_array(*element, ours, ours_raw, &parsed)
        }
    }
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what.into())
    }
}

/// Compares a JSON array with a parsed literal (strings, nulls, nested arrays): each
/// element as the scalar of `element` kind with wal2json's text for it.
fn compare_array(element: Kind, ours: &Value, ours_raw: &W, theirs: &Value) -> Result<(), String> {
    match (ours, ours_raw, theirs) {
        (Value::Array(a), W::Arr(raw), Value::Array(b)) => {
            if a.len() != b.len() || raw.len() != a.len() {
                return Err(format!("array lengths {} and {}", a.len(), b.len()));
            }
            a.iter()
                .zip(raw)
                .zip(b)
                .try_for_each(|((x, r), y)| compare_array(element, x, r, y))
        }
        (_, _, Value::Null) => compare(element, ours, ours_raw, &W::Null),
        (_, _, Value::String(text)) => {
            // How wal2json would have written this element as a scalar.
            let theirs = match element {
                Kind::Bool => W::Bool(text == "t"),
                Kind::Float if text.parse::<f64>().is_ok_and(f64::is_finite) => {
                    W::Num(text.clone())
                }
                _ => W::Str(text.clone()),
            };
            compare(element, ours, ours_raw, &theirs)
        }
        // A json element may itself be an array (`{[]}`): its text decides, above.
        _ => Err(format!("array shapes differ: {ours} vs {theirs}")),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]`.
fn is_rfc3339_local(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() >= 19
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (b.len() == 19 || (b[19] == b'.' && b.len() > 20 && digits(20..b.len())))
}

/// Microseconds since 1970 of `YYYY-MM-DD[T ]HH:MM:SS[.f](Z|±HH[:MM[:SS]])`.
fn epoch_micros(s: &str) -> Option<i64> {
    let num = |t: &str| t.parse::<i64>().ok();
    let (y, mo, d) = (num(s.get(0..4)?)?, num(s.get(5..7)?)?, num(s.get(8..10)?)?);
    let (h, mi, sec) = (
        num(s.get(11..13)?)?,
        num(s.get(14..16)?)?,
        num(s.get(17..19)?)?,
    );
    let mut rest = &s[19..];
    let mut micros = 0;
    if let Some(f) = rest.strip_prefix('.') {
        let n = f.bytes().take_while(u8::is_ascii_digit).count();
        let mut frac = f[..n].to_owned();
        frac.truncate(6);
        while frac.len() < 6 {
            frac.push('0');
        }
        micros = num(&frac)?;
        rest = &f[n..];
    }
    let offset = if rest == "Z" {
        0
    } else {
        let sign = match rest.as_bytes().first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let parts: Vec<i64> = rest[1..].split(':').map(num).collect::<Option<_>>()?;
        let secs =
            parts.first()? * 3600 + parts.get(1).unwrap_or(&0) * 60 + parts.get(2).unwrap_or(&0);
        sign * secs
    };
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec - offset) * 1_000_000) + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Standard alphabet with padding, strict.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = n << 6 | ALPHABET.iter().position(|&a| a == c)? as u32;
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// A PostgreSQL array literal as nested JSON arrays of strings and nulls; explicit
/// dimension bounds (`[0:1]=`) are skipped.
fn parse_array_literal(s: &str) -> Option<Value> {
    let s = match s.strip_prefix('[') {
        Some(_) => &s[s.find('=')? + 1..],
        None => s,
    };
    let chars: Vec<char> = s.chars().collect();
    let mut pos = 0;
    let v = parse_array_level(&chars, &mut pos)?;
    (pos == chars.len()).then_some(v)
}

fn parse_array_level(c: &[char], pos: &mut usize) -> Option<Value> {
    if c.get(*pos) != Some(&'{') {
        return None;
    }
    *pos += 1;
    let mut items = Vec::new();
    if c.get(*pos) == Some(&'}') {
        *pos += 1;
        return Some(Value::Array(items));
    }
    loop {
        match c.get(*pos)? {
            '{' => items.push(parse_array_level(c, pos)?),
            '"' => {
                *pos += 1;
                let mut text = String::new();
                loop {
                    match c.get(*pos)? {
                        '"' => break,
                        '\\' => {
                            *pos += 1;
                            text.push(*c.get(*pos)?);
                        }
                        &ch => text.push(ch),
                    }
                    *pos += 1;
                }
                *pos += 1;
                items.push(Value::String(text));
            }
            _ => {
                let start = *pos;
                while !matches!(c.get(*pos)?, ',' | '}') {
                    *pos += 1;
                }
                let text: String = c[start..*pos].iter().collect();
                items.push(if text == "NULL" {
                    Value::Null
                } else {
                    Value::String(text)
                });
            }
        }
        match c.get(*pos)? {
            ',' => *pos += 1,
            '}' => {
                *pos += 1;
                return Some(Value::Array(items));
            }
            _ => return None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// A small JSON reader for wal2json's output that keeps numbers as their text, so that
// numeric values with more digits than an f64 holds can be compared exactly.

#[derive(Debug, Clone, PartialEq)]
enum W {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<W>),
    Obj(Vec<(String, W)>),
}

impl W {
    fn parse(s: &str) -> Option<W> {
        let mut r = Reader {
            s: s.as_bytes(),
            pos: 0,
        };
        let v = r.value()?;
        r.ws();
        (r.pos == s.len()).then_some(v)
    }

    fn get(&self, key: &str) -> Option<&W> {
        match self {
            W::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            W::Str(s) => Some(s),
            _ => None,
        }
    }
}

struct Reader<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn ws(&mut self) {
        while matches!(self.s.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        let ok = self.s.get(self.pos) == Some(&b);
        if ok {
            self.pos += 1;
        }
        ok
    }

    fn value(&mut self) -> Option<W> {
        self.ws();
        let rest = &self.s[self.pos..];
        for (word, v) in [
            (&b"null"[..], W::Null),
            (b"true", W::Bool(true)),
            (b"false", W::Bool(false)),
        ] {
            if rest.starts_with(word) {
                self.pos += word.len();
                return Some(v);
            }
        }
        match rest.first()? {
            b'"' => self.string().map(W::Str),
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Some(W::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    if self.eat(b']') {
                        return Some(W::Arr(items));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'{' => {
                self.pos += 1;
                let mut fields = Vec::new();
                if self.eat(b'}') {
                    return Some(W::Obj(fields));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    if !self.eat(b':') {
                        return None;
                    }
                    fields.push((key, self.value()?));
                    if self.eat(b'}') {
                        return Some(W::Obj(fields));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            _ => {
                let n = rest
                    .iter()
                    .take_while(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .count();
                if n == 0 {
                    return None;
                }
                self.pos += n;
                Some(W::Num(String::from_utf8(rest[..n].to_vec()).ok()?))
            }
        }
    }

    /// A JSON string at `pos` (its opening quote), unescaped.
    fn string(&mut self) -> Option<String> {
        if self.s.get(self.pos) != Some(&b'"') {
            return None;
        }
        self.pos += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            match *self.s.get(self.pos)? {
                b'"' => {
                    self.pos += 1;
                    return String::from_utf8(out).ok();
                }
                b'\\' => {
                    let e = *self.s.get(self.pos + 1)?;
                    self.pos += 2;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let mut unit = self.hex4()?;
                            if (0xD800..0xDC00).contains(&unit) {
                                if self.s.get(self.pos..self.pos + 2)? != b"\\u" {
                                    return None;
                                }
                                self.pos += 2;
                                let low = self.hex4()?;
                                unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                            }
                            char::from_u32(unit)?
                        }
                        _ => return None,
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                b => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = std::str::from_utf8(self.s.get(self.pos..self.pos + 4)?).ok()?;
        self.pos += 4;
        u32::from_str_radix(h, 16).ok()
    }
}

#[test]
fn test_helpers_parse_what_postgres_prints() {
    assert_eq!(
        parse_array_literal(r#"{"a\"b","c,d",NULL,"NULL","",{x}}"#),
        Some(serde_json::json!(["a\"b", "c,d", null, "NULL", "", ["x"]]))
    );
    assert_eq!(
        parse_array_literal("[0:1]={5,6}"),
        Some(serde_json::json!(["5", "6"]))
    );
    assert_eq!(epoch_micros("1970-01-01 05:30:00.5+05:30"), Some(500_000));
    assert_eq!(epoch_micros("1970-01-02T00:00:00Z"), Some(86_400_000_000));
    assert_eq!(
        epoch_micros("1850-06-01 17:53:28+05:53:28"),
        epoch_micros("1850-06-01T12:00:00Z")
    );
    assert_eq!(base64_decode("AP8KQQ=="), Some(vec![0, 255, 10, 65]));
    assert_eq!(base64_decode(""), Some(vec![]));
    let w = W::parse(r#"{"a":[1.50,"x\u00e9\ud83d\ude00",null,true]}"#).unwrap();
    assert_eq!(
        w.get("a"),
        Some(&W::Arr(vec![
            W::Num("1.50".into()),
            W::Str("xé😀".into()),
            W::Null,
            W::Bool(true)
        ]))
    );
}
