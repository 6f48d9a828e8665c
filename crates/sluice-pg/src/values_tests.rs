use super::*;
use base64::Engine as _;
use proptest::prelude::*;

fn array(element: TypeKind) -> TypeKind {
    TypeKind::Array {
        element: Box::new(element),
        delimiter: b',',
    }
}

fn json(kind: &TypeKind, text: &[u8]) -> String {
    let mut out = Vec::new();
    write_json(kind, text, &mut out).expect("converts");
    let s = String::from_utf8(out).expect("utf-8");
    serde_json::from_str::<serde_json::Value>(&s).expect("valid JSON");
    s
}

fn json_str(kind: &TypeKind, text: &str) -> String {
    json(kind, text.as_bytes())
}

/// Asserts the conversion fails and leaves what was already in the buffer alone.
fn fails(kind: &TypeKind, text: &[u8]) -> ValueError {
    let mut out = b"[1,".to_vec();
    let err = write_json(kind, text, &mut out).expect_err("should fail");
    assert_eq!(out, b"[1,", "output changed on error");
    err
}

fn string_of(text: &[u8]) -> String {
    let mut out = Vec::new();
    write_json_string(text, &mut out);
    String::from_utf8(out).expect("utf-8")
}

#[test]
#[rustfmt::skip]
fn builtin_oids() {
    use TypeKind::*;
    let scalars = [
        (16, Bool), (17, Bytea), (18, Text), (19, Text), (20, Int), (21, Int), (23, Int),
        (25, Text), (26, Int), (114, Json), (700, Float), (701, Float), (1042, Text),
        (1043, Text), (1082, Date), (1083, Time), (1114, Timestamp), (1184, TimestampTz),
        (1266, Time), (1700, Numeric), (2950, Uuid), (3802, Json), (28, Other), (1186, Other),
    ];
    for (oid, kind) in scalars {
        assert_eq!(builtin_kind(oid), Some(kind), "oid {oid}");
    }
    let arrays = [
        (1000, Bool), (1001, Bytea), (1002, Text), (1003, Text), (1016, Int), (1005, Int),
        (1007, Int), (1009, Text), (1028, Int), (199, Json), (1021, Float), (1022, Float),
        (1014, Text), (1015, Text), (1182, Date), (1183, Time), (1115, Timestamp),
        (1185, TimestampTz), (1270, Time), (1231, Numeric), (2951, Uuid), (3807, Json),
        (1187, Other),
    ];
    for (oid, element) in arrays {
        assert_eq!(builtin_kind(oid), Some(array(element)), "oid {oid}");
    }
    let boxes = Array { element: Box::new(Other), delimiter: b';' };
    assert_eq!(builtin_kind(1020), Some(boxes));
    assert_eq!(builtin_kind(0), None);
    assert_eq!(builtin_kind(16_384), None);
    // Every built-in array's element is itself built in.
    for &(array_oid, element) in BUILTIN_ARRAYS {
        assert!(builtin_scalar(element).is_some(), "{array_oid}");
        assert!(builtin_scalar(array_oid).is_none(), "{array_oid}");
    }
}

#[test]
fn registry_resolves_catalog_rows() {
    let mut types = TypeRegistry::new();
    // enum mood and its array
    types.record(16_400, b'e', b'E', 0, 0, b',');
    types.record(16_401, b'b', b'A', 16_400, 0, b',');
    // domain positive over int4, a domain over that, and an array of the outer domain
    types.record(16_410, b'd', b'N', 0, 23, b',');
    types.record(16_411, b'd', b'N', 0, 16_410, b',');
    types.record(16_412, b'b', b'A', 16_411, 0, b',');
    // domain over int4[]
    types.record(16_420, b'd', b'A', 0, 1007, b',');
    // citext-like base type, composite, range
    types.record(16_430, b'b', b'S', 0, 0, b',');
    types.record(16_431, b'c', b'C', 0, 0, b',');
    types.record(16_432, b'r', b'R', 0, 0, b',');
    // a domain over box, whose array uses ';'
    types.record(16_440, b'd', b'G', 0, 603, b';');
    types.record(16_441, b'b', b'A', 16_440, 0, b',');
    // two domains naming each other
    types.record(16_450, b'd', b'N', 0, 16_451, b',');
    types.record(16_451, b'd', b'N', 0, 16_450, b',');

    assert_eq!(types.kind(16_400), TypeKind::Text);
    assert_eq!(types.kind(16_401), array(TypeKind::Text));
    assert_eq!(types.kind(16_410), TypeKind::Int);
    assert_eq!(types.kind(16_411), TypeKind::Int);
    assert_eq!(types.kind(16_412), array(TypeKind::Int));
    assert_eq!(types.kind(16_420), array(TypeKind::Int));
    assert_eq!(types.kind(16_430), TypeKind::Text);
    assert_eq!(types.kind(16_431), TypeKind::Other);
    assert_eq!(types.kind(16_432), TypeKind::Other);
    let boxes = TypeKind::Array {
        element: Box::new(TypeKind::Other),
        delimiter: b';',
    };
    assert_eq!(types.kind(16_441), boxes);
    assert_eq!(types.kind(16_450), TypeKind::Other);
    assert_eq!(types.kind(99_999), TypeKind::Other);
    assert_eq!(types.kind(23), TypeKind::Int);

    assert!(types.knows(23) && types.knows(1007) && types.knows(16_400));
    assert!(!types.knows(99_999));
}

#[test]
fn registry_gives_up_past_depth_eight() {
    let mut types = TypeRegistry::new();
    // domain chain 20_000 -> 20_001 -> ... -> 20_009 -> int4
    for i in 0..10 {
        types.record(20_000 + i, b'd', b'N', 0, 20_001 + i, b',');
    }
    types.record(20_010, b'd', b'N', 0, 23, b',');
    assert_eq!(types.kind(20_000), TypeKind::Other);
    assert_eq!(types.kind(20_003), TypeKind::Int);
}

#[test]
fn integers() {
    for text in ["42", "-7", "0", "-0", "9223372036854775807", "4294967295"] {
        assert_eq!(json_str(&TypeKind::Int, text), text);
    }
    for text in ["abc", "007", "", "1.5", "+1", "-", "1e3", " 1"] {
        assert_eq!(json_str(&TypeKind::Int, text), format!("\"{text}\""));
    }
}

#[test]
fn floats() {
    for text in [
        "1.5",
        "-0",
        "1e+100",
        "1.2345678901234567e-05",
        "3",
        "-2.5E-3",
    ] {
        assert_eq!(json_str(&TypeKind::Float, text), text);
    }
    for text in ["NaN", "Infinity", "-Infinity", "1.", ".5", "1e", "", "0x10"] {
        assert_eq!(json_str(&TypeKind::Float, text), format!("\"{text}\""));
    }
}

#[test]
fn numerics_are_strings() {
    assert_eq!(json_str(&TypeKind::Numeric, "19.90"), r#""19.90""#);
    assert_eq!(json_str(&TypeKind::Numeric, "NaN"), r#""NaN""#);
    assert_eq!(
        json_str(&TypeKind::Numeric, "-123456789012345678901234567890.000001"),
        r#""-123456789012345678901234567890.000001""#
    );
}

#[test]
fn bools() {
    assert_eq!(json_str(&TypeKind::Bool, "t"), "true");
    assert_eq!(json_str(&TypeKind::Bool, "f"), "false");
    assert_eq!(fails(&TypeKind::Bool, b"x"), ValueError::Bool);
    fails(&TypeKind::Bool, b"");
}

#[test]
fn string_escaping() {
    assert_eq!(string_of(b"plain"), r#""plain""#);
    assert_eq!(string_of(b""), r#""""#);
    assert_eq!(string_of(br#"say "hi" \o/"#), r#""say \"hi\" \\o/""#);
    assert_eq!(string_of(b"a\nb\rc\td"), r#""a\nb\rc\td""#);
    assert_eq!(string_of(b"\x08\x0c"), r#""\b\f""#);
    assert_eq!(
        string_of(b"\x00\x01\x1f\x7f"),
        "\"\\u0000\\u0001\\u001f\x7f\""
    );
    assert_eq!(string_of("é日本🙂".as_bytes()), "\"é日本🙂\"");
    assert_eq!(string_of(b"a\xffb\xe6\x97"), "\"a\u{FFFD}b\u{FFFD}\"");
    let tricky = "\u{2028}\"\\\u{0}x\u{10FFFF}";
    let parsed: String = serde_json::from_str(&string_of(tricky.as_bytes())).unwrap();
    assert_eq!(parsed, tricky);
}

#[test]
fn text_like_kinds_are_strings() {
    for kind in [
        TypeKind::Text,
        TypeKind::Date,
        TypeKind::Time,
        TypeKind::Uuid,
        TypeKind::Other,
    ] {
        assert_eq!(json_str(&kind, "a\"b"), r#""a\"b""#);
    }
    assert_eq!(json_str(&TypeKind::Date, "2026-11-22"), r#""2026-11-22""#);
    assert_eq!(
        json_str(&TypeKind::Time, "01:02:03+05:30"),
        r#""01:02:03+05:30""#
    );
    let uuid = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    assert_eq!(json_str(&TypeKind::Uuid, uuid), format!("\"{uuid}\""));
}

#[test]
fn json_is_embedded_without_whitespace() {
    let k = TypeKind::Json;
    assert_eq!(
        json_str(
            &k,
            "{\"a\": 1, \"b\": [true, false, null],\n \"c\": {\"d\": \"x y\"}}"
        ),
        r#"{"a":1,"b":[true,false,null],"c":{"d":"x y"}}"#
    );
    assert_eq!(json_str(&k, " 42 "), "42");
    assert_eq!(json_str(&k, "-1.5e+3"), "-1.5e+3");
    assert_eq!(json_str(&k, r#""s""#), r#""s""#);
    assert_eq!(json_str(&k, "[]"), "[]");
    assert_eq!(json_str(&k, "{ }"), "{}");
    assert_eq!(
        json_str(&k, r#"["\u00e9\ud83d\ude00\n\"\/"]"#),
        r#"["\u00e9\ud83d\ude00\n\"\/"]"#
    );
    assert_eq!(json_str(&k, "\"日本\""), "\"日本\"");
    let deep = format!(
        "{}{}",
        "[".repeat(MAX_JSON_DEPTH),
        "]".repeat(MAX_JSON_DEPTH)
    );
    assert_eq!(json_str(&k, &deep), deep);
}

#[test]
fn invalid_json_fails() {
    let too_deep = format!(
        "{}{}",
        "[".repeat(MAX_JSON_DEPTH + 1),
        "]".repeat(MAX_JSON_DEPTH + 1)
    );
    let cases: [&[u8]; 20] = [
        b"",
        b"{",
        b"[1,]",
        b"{\"a\" 1}",
        b"{1:2}",
        b"01",
        b"1.",
        b"tru",
        b"nul",
        b"[1] x",
        b"\"a\nb\"",
        b"\"\\x\"",
        b"\"\\u12\"",
        b"\"\\ud800\"",
        b"\"\\udc00\"",
        b"\"\\ud800\\u0041\"",
        b"\"unterminated",
        b"\"\xff\"",
        b"NaN",
        too_deep.as_bytes(),
    ];
    for text in cases {
        match fails(&TypeKind::Json, text) {
            ValueError::Json { .. } => {}
            other => panic!("unexpected error {other:?}"),
        }
    }
}

#[test]
fn bytea_is_base64() {
    let k = TypeKind::Bytea;
    assert_eq!(json_str(&k, "\\x"), r#""""#);
    assert_eq!(json_str(&k, "\\x0a0b"), r#""Cgs=""#);
    assert_eq!(json_str(&k, "\\xDEADbeef"), r#""3q2+7w==""#);
    // Longer than one stack chunk.
    let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let expected = format!(
        "\"{}\"",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    );
    assert_eq!(json_str(&k, &format!("\\x{hex}")), expected);

    assert_eq!(
        fails(&k, b"\\x0a0"),
        ValueError::Bytea {
            offset: 5,
            reason: "odd number of hex digits"
        }
    );
    assert_eq!(
        fails(&k, b"\\x0a0g"),
        ValueError::Bytea {
            offset: 4,
            reason: "invalid hex digit"
        }
    );
    fails(&k, b"abc");
    fails(&k, b"\\001");
    let mut late_error = format!("\\x{hex}");
    late_error.push_str("zz");
    fails(&k, late_error.as_bytes());
}

#[test]
fn timestamps() {
    let ts = TypeKind::Timestamp;
    let tz = TypeKind::TimestampTz;
    assert_eq!(
        json_str(&ts, "2026-11-22 01:02:03.456789"),
        r#""2026-11-22T01:02:03.456789""#
    );
    assert_eq!(
        json_str(&ts, "2026-11-22 01:02:03"),
        r#""2026-11-22T01:02:03""#
    );
    assert_eq!(
        json_str(&ts, "12026-11-22 01:02:03"),
        r#""12026-11-22T01:02:03""#
    );
    assert_eq!(
        json_str(&tz, "2026-11-22 01:02:03.456789+00"),
        r#""2026-11-22T01:02:03.456789Z""#
    );
    assert_eq!(
        json_str(&tz, "2026-11-22 01:02:03+05:30"),
        r#""2026-11-22T01:02:03+05:30""#
    );
    assert_eq!(
        json_str(&tz, "2026-11-22 01:02:03.5-03"),
        r#""2026-11-22T01:02:03.5-03:00""#
    );
    assert_eq!(
        json_str(&tz, "1900-01-01 00:00:00+00:19:32"),
        r#""1900-01-01T00:00:00+00:19:32""#
    );
    for kind in [&ts, &tz] {
        assert_eq!(json_str(kind, "infinity"), r#""infinity""#);
        assert_eq!(json_str(kind, "-infinity"), r#""-infinity""#);
    }
    assert_eq!(
        json_str(&ts, "0044-03-15 12:00:00 BC"),
        r#""0044-03-15 12:00:00 BC""#
    );
    assert_eq!(
        json_str(&tz, "0044-03-15 12:00:00+00 BC"),
        r#""0044-03-15 12:00:00+00 BC""#
    );

    for bad in [
        "",
        "2026-11-22",
        "2026-11-22T01:02:03",
        "26-11-22 01:02:03",
        "2026-11-22 1:02:03",
        "2026-11-22 01:02:03.",
        "2026-11-22 01:02:03+00",
        "11/22/2026 01:02:03",
    ] {
        fails(&ts, bad.as_bytes());
    }
    for bad in [
        "2026-11-22 01:02:03",
        "2026-11-22 01:02:03+0",
        "2026-11-22 01:02:03+00:3",
        "2026-11-22 01:02:03 UTC",
        "2026-11-22 01:02:03+0530",
    ] {
        fails(&tz, bad.as_bytes());
    }
}

#[test]
fn arrays_of_scalars() {
    let ints = array(TypeKind::Int);
    assert_eq!(json_str(&ints, "{1,2,NULL}"), "[1,2,null]");
    assert_eq!(json_str(&ints, "{}"), "[]");
    assert_eq!(json_str(&ints, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
    assert_eq!(json_str(&ints, "{{{1},{2}}}"), "[[[1],[2]]]");
    assert_eq!(json_str(&ints, "[0:1]={1,2}"), "[1,2]");
    assert_eq!(json_str(&ints, "[-2:-1][1:1]={{1},{2}}"), "[[1],[2]]");
    assert_eq!(json_str(&ints, " { 1 , null , 3 } "), "[1,null,3]");
    assert_eq!(
        json_str(&array(TypeKind::Float), "{1.5,NaN,-Infinity}"),
        r#"[1.5,"NaN","-Infinity"]"#
    );
    assert_eq!(
        json_str(&array(TypeKind::Bool), "{t,f,NULL}"),
        "[true,false,null]"
    );
    assert_eq!(
        json_str(&array(TypeKind::Numeric), "{1.10,NaN}"),
        r#"["1.10","NaN"]"#
    );
    assert_eq!(
        json_str(&array(TypeKind::Bytea), r#"{"\\x0a0b",NULL}"#),
        r#"["Cgs=",null]"#
    );
    assert_eq!(
        json_str(
            &array(TypeKind::TimestampTz),
            r#"{"2026-11-22 01:02:03+00",infinity}"#
        ),
        r#"["2026-11-22T01:02:03Z","infinity"]"#
    );
}

#[test]
fn arrays_of_text() {
    let texts = array(TypeKind::Text);
    assert_eq!(
        json_str(&texts, r#"{"a b","c\"d","e\\f",NULL,"NULL",null,plain}"#),
        r#"["a b","c\"d","e\\f",null,"NULL",null,"plain"]"#
    );
    assert_eq!(json_str(&texts, r#"{"",""}"#), r#"["",""]"#);
    assert_eq!(json_str(&texts, r#"{"{}","a,b"}"#), r#"["{}","a,b"]"#);
    assert_eq!(json_str(&texts, r#"{a\,b,\NULL}"#), r#"["a,b","NULL"]"#);
    assert_eq!(
        json_str(&texts, "{\"line\nbreak\",日本}"),
        r#"["line\nbreak","日本"]"#
    );
    assert_eq!(
        json_str(&texts, r#"{{"a","b"},{"c",NULL}}"#),
        r#"[["a","b"],["c",null]]"#
    );
}

#[test]
fn arrays_of_json_box_and_nested_kinds() {
    assert_eq!(
        json_str(
            &array(TypeKind::Json),
            r#"{"{\"a\": [1, 2]}",NULL,"\"s\""}"#
        ),
        r#"[{"a":[1,2]},null,"s"]"#
    );
    let boxes = builtin_kind(1020).unwrap();
    assert_eq!(
        json_str(&boxes, "{(1,1),(0,0);(2,2),(1,1)}"),
        r#"["(1,1),(0,0)","(2,2),(1,1)"]"#
    );
    let points = builtin_kind(1017).unwrap();
    assert_eq!(
        json_str(&points, r#"{"(1,2)","(3,4)"}"#),
        r#"["(1,2)","(3,4)"]"#
    );
    // An array of a domain over int4[]: each element is itself an array literal.
    assert_eq!(
        json_str(
            &array(array(TypeKind::Int)),
            r#"{"{1,2}","[0:0]={3}",NULL}"#
        ),
        "[[1,2],[3],null]"
    );
}

#[test]
fn malformed_arrays_fail() {
    let ints = array(TypeKind::Int);
    let texts = array(TypeKind::Text);
    for bad in [
        "",
        "1,2",
        "{1,2",
        "{1,2}}",
        "{1,,2}",
        "{,}",
        "{1,}",
        "{1,{2}}",
        "{{1},2}",
        "{1 {2}}",
        "{\"a}",
        "{a\"b\"}",
        "{a\\",
        "[1:2={1,2}",
        "[1:2]{1,2}",
        "[a:b]={1}",
        "{{{{{{{1}}}}}}}",
        "{1}{2}",
    ] {
        match fails(&texts, bad.as_bytes()) {
            ValueError::Array { .. } => {}
            other => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(
        fails(&ints, b"{1,2"),
        ValueError::Array {
            offset: 4,
            reason: "unterminated array"
        }
    );
    assert_eq!(json_str(&ints, "{{{{{{1}}}}}}"), "[[[[[[1]]]]]]");
    // An element that fails its kind fails the array.
    assert_eq!(fails(&array(TypeKind::Bool), b"{t,x}"), ValueError::Bool);
    assert!(matches!(
        fails(&array(TypeKind::Json), b"{\"{\"}"),
        ValueError::Json { .. }
    ));
}

#[test]
fn errors_never_contain_the_value() {
    let secret = "s3cr3t-value";
    for (kind, text) in [
        (array(TypeKind::Text), format!("{{{secret}")),
        (TypeKind::Json, format!("{{{secret}")),
        (TypeKind::Bytea, format!("\\x{secret}")),
        (TypeKind::Timestamp, secret.to_owned()),
        (TypeKind::Bool, secret.to_owned()),
    ] {
        let message = fails(&kind, text.as_bytes()).to_string();
        assert!(!message.contains(secret), "{message}");
    }
}

fn all_kinds() -> Vec<TypeKind> {
    use TypeKind::*;
    let scalars = vec![
        Int,
        Float,
        Numeric,
        Bool,
        Text,
        Json,
        Bytea,
        Timestamp,
        TimestampTz,
        Date,
        Time,
        Uuid,
        Other,
    ];
    let mut kinds = scalars.clone();
    kinds.extend(scalars.into_iter().map(array));
    kinds.push(builtin_kind(1020).unwrap());
    kinds.push(array(array(Int)));
    kinds
}

/// Converts with every kind: never panics, Ok is one JSON value, Err leaves out alone.
fn check_every_kind(text: &[u8]) -> Result<(), TestCaseError> {
    for kind in all_kinds() {
        let mut out = b"prefix".to_vec();
        match write_json(&kind, text, &mut out) {
            Ok(()) => {
                let written = &out[b"prefix".len()..];
                prop_assert!(
                    serde_json::from_slice::<serde_json::Value>(written).is_ok(),
                    "{kind:?} wrote invalid JSON {:?}",
                    String::from_utf8_lossy(written)
                );
            }
            Err(_) => prop_assert_eq!(&out[..], b"prefix"),
        }
    }
    Ok(())
}

/// Renders an array literal the way array_out does: every element quoted and escaped.
fn array_literal(items: &[Option<String>]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|item| match item {
            None => "NULL".to_owned(),
            Some(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

proptest! {
    #[test]
    fn strings_are_escaped_exactly_as_serde_json_does(
        text in "[a-z\\\\\"\\x00-\\x1f\\x7f ü€😀]{0,40}",
    ) {
        let mut out = Vec::new();
        write_json_string(text.as_bytes(), &mut out);
        prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&text).unwrap());
    }

    #[test]
    fn arbitrary_bytes_never_panic(text in proptest::collection::vec(any::<u8>(), 0..64)) {
        check_every_kind(&text)?;
    }

    #[test]
    fn array_like_text_never_panics(text in r#"[\[\]\{\}",;\\ =:0-9a-zNUL\-\.tfx+]{0,40}"#) {
        check_every_kind(text.as_bytes())?;
    }

    #[test]
    fn json_like_text_never_panics(text in r#"[\[\]\{\}",: \\u0-9a-fnrtul\-\.eE+]{0,40}"#) {
        check_every_kind(text.as_bytes())?;
    }

    #[test]
    fn strings_round_trip(text in proptest::collection::vec(any::<u8>(), 0..64)) {
        let parsed: String = serde_json::from_str(&string_of(&text)).unwrap();
        prop_assert_eq!(parsed, String::from_utf8_lossy(&text));
    }

    #[test]
    fn text_arrays_round_trip(items in proptest::collection::vec(proptest::option::of(any::<String>()), 0..8)) {
        let written = json(&array(TypeKind::Text), array_literal(&items).as_bytes());
        let parsed: Vec<Option<String>> = serde_json::from_str(&written).unwrap();
        prop_assert_eq!(parsed, items);
    }

    #[test]
    fn bytea_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let written = json(&TypeKind::Bytea, format!("\\x{hex}").as_bytes());
        let encoded: String = serde_json::from_str(&written).unwrap();
        prop_assert_eq!(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap(), bytes);
    }
}
