//! A table with a column of every type the change record documents, and writes that
//! cover their edge values (shared by the value-mapping and snapshot tests).

/// The `public.vals` table and the types it needs.
pub const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy, "very"');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN email AS text CHECK (VALUE LIKE '%@%');
CREATE TABLE public.vals (
    id int PRIMARY KEY,
    i2 int2, i4 int4, i8 int8,
    num numeric, num_p numeric(40,20),
    f4 float4, f8 float8,
    b bool,
    t text, vc varchar(20), ch char(5),
    j json, jb jsonb,
    ts timestamp, tstz timestamptz,
    d date, tm time, tmtz timetz,
    by bytea, u uuid,
    ia int[], ta text[], ia2 int[][],
    na numeric[], fa float8[], ba bool[], tsa timestamptz[], bya bytea[], ja jsonb[], ua uuid[],
    m mood, pi posint, em email,
    ip inet, iv interval
);
"#;

/// Rows 1, 2 and 4 with edge values (row 3 is inserted and deleted again).
pub const WRITES: &str = r#"
INSERT INTO vals VALUES (1,
    -32768, 2147483647, 9223372036854775807,
    'NaN', 12345678901234567890.12345678901234567890,
    'NaN', 'Infinity',
    true,
    E'line1\nline2 "quoted" \\ back\tslash \u00fc \U0001F600 \x01 end', 'varchar ü', 'ab',
    E'{ "a" : [1, 2.5, {"b": null}],\n  "c": "x\\ny \\u00e9",\n "d": {"e": {"f": [true, false]}} }',
    '{"a": [1, 2.5, {"b": null}], "c": "x", "nested": {"deep": {"deeper": [[], {}]}}}',
    '2026-11-22 01:02:03.456789', '2026-11-22 01:02:03.456789+05:30',
    '2026-02-28', '23:59:59.999999', '12:00:00+05:30',
    '\x00ff0a41', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '{1,-2,NULL,3}',
    ARRAY['a"b', 'c,d', NULL, 'NULL', '', ' sp ', E'back\\slash', '{br}', 'ü'],
    '{{1,2},{3,4}}',
    '{1.10,NaN,-0.000000000000000000001,NULL}', '{1.5,NaN,-Infinity,1e-300,NULL}', '{t,f,NULL}',
    ARRAY['2026-11-22 01:02:03.5+05:30'::timestamptz, 'infinity', NULL],
    ARRAY['\x00ff'::bytea, '', NULL],
    ARRAY['{"a": [1, {"b": "c,d}"}]}'::jsonb, '"s"', 'null', NULL],
    '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}',
    'happy, "very"', 5, 'a@b.c', '192.168.0.1/24', '1 year 2 mons 3 days 04:05:06.5');
INSERT INTO vals VALUES (2,
    32767, -2147483648, -9223372036854775808,
    '-0.000000000000000000000000000001', 0,
    '-Infinity', -1.5e-300,
    false,
    '', '', ' ',
    '[]', '[1, "two", null, {"x": -0.5e3, "y": "\u00e9\"q\""}]',
    'infinity', '-infinity',
    '0044-03-15 BC', '00:00:00', '00:00:00-08',
    '', '00000000-0000-0000-0000-000000000000',
    '{}', '{}', '{{-1,NULL},{0,7}}',
    '{}', '{{1.5,2},{3,4}}', '{}', '{}', '{}', '{}', '{}',
    'sad', 2147483647, 'x@y', '::1', '-1 days +00:00:00.000001');
INSERT INTO vals (id) VALUES (3);
INSERT INTO vals VALUES (4,
    0, 0, 0,
    '19.90', -1.5,
    3.14, 0.1,
    true,
    'plain', 'v', 'abcde',
    '"a json string"', '{"k": 12345678901234567}',
    '2000-01-01 00:00:00', '1850-06-01 12:00:00+00',
    '2000-02-29', '12:34:56', '23:59:59.5-03:30',
    '\x5c22', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
    '[0:1]={5,6}', ARRAY[E'quote"and\\backslash', 'with space', 'NULL ', ''],
    '{{7}}',
    '[2:3]={1,2}', '{0.1}', '{{t},{f}}', '{"1850-06-01 12:00:00+00"}', '{"\\\\x5c"}',
    ARRAY['[]'::jsonb], '{}',
    'ok', 1, 'q@r', '10.0.0.0/8', '00:00:00');
UPDATE vals SET f4 = 1e30, f8 = 2.2250738585072014e-308, num = '1e-20', tstz = now(),
    ta = '{"x,y",z}', ia2 = '{{1,2,3},{4,5,6}}', by = '\xdeadbeef', b = NULL
  WHERE id = 4;
DELETE FROM vals WHERE id = 3;
"#;
