//! End to end: the ClickHouse sink against a real ClickHouse server (Debian's). After an
//! initial copy and a concurrent mixed workload with two kill -9s of Sluice, the table's
//! current state in ClickHouse equals the PostgreSQL table row by row, for every type in
//! the mapping; columns added and dropped mid-stream appear downstream; a change that
//! cannot be converted parks only its table, and the parked changes are applied once the
//! table is fixed; what can never work stops at once with its fix.

mod support;

use std::time::Duration;

use sluice_testkit::ClickHouseServer;
use support::*;

const TYPES: &str = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE items (id bigint PRIMARY KEY, i2 smallint, i4 int, n numeric(12,2), nu numeric,
  t text, v varchar(20), j jsonb, js json, ts timestamp, tz timestamptz, d date, u uuid,
  b bool, arr int[], tarr text[], raw bytea, e mood, f8 float8, f4 real, big text, iv interval);";

/// The rows' values as functions of `g` (inserts) and the updates the workload makes.
fn insert_sql(from: i64, to: i64) -> String {
    format!(
        "INSERT INTO items SELECT g, (g % 30000)::smallint, g * 7, g * 1.25, g / 7.0, \
         'text ' || g || E' with \\t tab, ''quote'' \\\\ and ünïcode', 'v' || g, \
         jsonb_build_object('g', g, 'a', jsonb_build_array(1, 'x', null)), \
         json_build_object('k', g), '2026-01-02 03:04:05.123456'::timestamp + g * interval '1 ms', \
         '2026-01-02 03:04:05.5+02'::timestamptz + g * interval '1 second', \
         '2026-01-02'::date + (g % 1000)::int, md5(g::text)::uuid, g % 2 = 0, ARRAY[g::int, NULL, 3], \
         ARRAY['a' || g, NULL, 'c,d'], decode(lpad(to_hex(g), 8, '0') || '00ff', 'hex'), \
         (ARRAY['sad','ok','happy'])[1 + g % 3]::mood, g / 3.0, (g / 3.0)::real, \
         CASE WHEN g % 10 = 0 THEN (SELECT string_agg(md5(x::text || g), '') FROM generate_series(1, 700) x) END, \
         make_interval(days => (g % 5)::int, secs => g % 60) \
         FROM generate_series({from}, {to}) g"
    )
}

/// One round of the concurrent workload: inserts, updates (some leave the TOASTed `big`
/// unchanged), a key change, deletes, and odd values.
fn round(url: &str, r: i64) -> Result<(), String> {
    let base = 100_000 + r * 1_000;
    let sql = [
        insert_sql(base, base + 199),
        format!("UPDATE items SET i4 = i4 + 1, n = n + 0.01 WHERE id % 50 = {}", r % 50),
        format!("UPDATE items SET t = 'upd' || {r}, f8 = 'NaN', f4 = '-Infinity' WHERE id BETWEEN {base} AND {base} + 20"),
        format!("UPDATE items SET tz = 'infinity', d = '-infinity', arr = '{{}}', tarr = NULL WHERE id = {base} + 30"),
        format!("UPDATE items SET id = id + 500 WHERE id = {base} + 40"),
        format!("DELETE FROM items WHERE id BETWEEN {base} + 50 AND {base} + 59"),
        format!("DELETE FROM items WHERE id % 97 = {} AND id < 100000", r % 97),
        format!("BEGIN; INSERT INTO items (id, t) VALUES ({base} + 900, 'a'); UPDATE items SET t = 'b' WHERE id = {base} + 900; UPDATE items SET t = 'c' WHERE id = {base} + 900; COMMIT"),
    ];
    for s in sql {
        psql_url(url, &s)?;
    }
    Ok(())
}

fn psql_url(url: &str, sql: &str) -> Result<(), String> {
    let out = std::process::Command::new(sluice_testkit::pg_bin("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Per column: PostgreSQL's and ClickHouse's expression for the same text. Debian's
/// ClickHouse (18.16) has no DateTime64, Date32 or Bool: timestamps and dates are kept as
/// their text, booleans as UInt8, so the expressions compare those forms.
const COLUMNS: &[(&str, &str, &str)] = &[
    ("i2", "i2::text", "toString(i2)"),
    ("i4", "i4::text", "toString(i4)"),
    ("n", "n::text", "toString(n)"),
    ("nu", "nu::text", "nu"),
    ("t", "t", "t"),
    ("v", "v", "v"),
    ("j", "j::text", "j"),
    ("js", "js::text", "js"),
    ("ts", "CASE WHEN isfinite(ts) THEN to_char(ts, 'YYYY-MM-DD\"T\"HH24:MI:SS.US') ELSE ts::text END", "ts"),
    ("tz", "CASE WHEN isfinite(tz) THEN to_char(tz AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') ELSE tz::text END", "tz"),
    ("d", "d::text", "d"),
    ("u", "u::text", "toString(u)"),
    ("b", "b::int::text", "toString(b)"),
    // ClickHouse has no NULL array: a NULL one is stored empty.
    ("arr", "coalesce(array_to_string(arr, ',', 'NULL'), '')", "arrayStringConcat(arrayMap(x -> ifNull(toString(x), 'NULL'), arr), ',')"),
    ("tarr", "coalesce(array_to_string(tarr, '|', 'NULL'), '')", "arrayStringConcat(arrayMap(x -> ifNull(x, 'NULL'), tarr), '|')"),
    ("raw", "upper(encode(raw, 'hex'))", "hex(raw)"),
    ("e", "e::text", "e"),
    ("f8", "f8::text", "toString(f8)"),
    ("f4", "f4::text", "toString(f4)"),
    ("big", "md5(big)", "lower(hex(MD5(big)))"),
    ("iv", "iv::text", "iv"),
];

/// PostgreSQL's rows as `id -> column -> text`.
fn pg_rows(pg: &PgServer) -> std::collections::BTreeMap<i64, Vec<String>> {
    let exprs: Vec<String> = COLUMNS
        .iter()
        .map(|(_, p, _)| format!("encode(convert_to(coalesce(({p}), 'NULL'), 'UTF8'), 'hex')"))
        .collect();
    let out = pg
        .psql(&format!(
            "SELECT id, {} FROM items ORDER BY id",
            exprs.join(", ")
        ))
        .unwrap();
    parse_rows(&out, '|')
}

/// ClickHouse's current state, in the same form.
fn ch_rows(ch: &ClickHouseServer) -> std::collections::BTreeMap<i64, Vec<String>> {
    let exprs: Vec<String> = COLUMNS
        .iter()
        .map(|(_, _, c)| format!("lower(hex(ifNull(({c}), 'NULL')))"))
        .collect();
    let out = ch
        .query(&format!(
            "SELECT id, {} FROM default.items FINAL WHERE _sluice_deleted = 0 ORDER BY id FORMAT TabSeparatedRaw",
            exprs.join(", ")
        ))
        .unwrap();
    parse_rows(&out, '\t')
}

fn parse_rows(text: &str, sep: char) -> std::collections::BTreeMap<i64, Vec<String>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut f = l.split(sep);
            let id = f.next().unwrap().parse().unwrap();
            let vals = f
                .map(|h| {
                    let bytes: Vec<u8> = (0..h.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                        .collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                })
                .collect();
            (id, vals)
        })
        .collect()
}

/// Equal row by row, or a message naming the first differences (values are test data).
fn compare(pg: &PgServer, ch: &ClickHouseServer) -> Result<(), String> {
    let (p, c) = (pg_rows(pg), ch_rows(ch));
    let mut diffs = Vec::new();
    let mut by_column = std::collections::BTreeMap::<&str, usize>::new();
    for (id, row) in &p {
        match c.get(id) {
            None => diffs.push(format!("id {id}: missing in ClickHouse")),
            Some(other) => {
                for (i, (a, b)) in row.iter().zip(other).enumerate() {
                    if !same(COLUMNS[i].0, a, b) {
                        *by_column.entry(COLUMNS[i].0).or_default() += 1;
                        if by_column[COLUMNS[i].0] <= 2 {
                            diffs.push(format!("id {id} {}: pg {a:?} ch {b:?}", COLUMNS[i].0));
                        }
                    }
                }
            }
        }
    }
    if !by_column.is_empty() {
        diffs.push(format!("per column: {by_column:?}"));
    }
    for id in c.keys().filter(|id| !p.contains_key(id)) {
        diffs.push(format!("id {id}: in ClickHouse only"));
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} differences: {:?}",
            diffs.len(),
            &diffs[diffs.len().saturating_sub(40)..]
        ))
    }
}

/// Text forms that mean the same value: floats as numbers (`NaN`/`nan`), JSON as JSON,
/// timestamps as instants (Sluice keeps the record's RFC 3339 text on this release).
fn same(column: &str, pg: &str, ch: &str) -> bool {
    if pg == ch {
        return true;
    }
    match column {
        "f8" | "f4" => {
            let f = |s: &str| match s.to_ascii_lowercase().as_str() {
                "nan" => Some(f64::NAN),
                "infinity" | "inf" => Some(f64::INFINITY),
                "-infinity" | "-inf" => Some(f64::NEG_INFINITY),
                x => x.parse::<f64>().ok(),
            };
            match (f(pg), f(ch)) {
                (Some(a), Some(b)) => {
                    (a.is_nan() && b.is_nan())
                        || a == b
                        || (column == "f4" && (a as f32) == (b as f32))
                }
                _ => false,
            }
        }
        "j" | "js" => {
            serde_json::from_str::<serde_json::Value>(pg).ok() == serde_json::from_str(ch).ok()
        }
        "ts" | "tz" => {
            sluice_testkit::rfc3339_micros(pg).is_some()
                && sluice_testkit::rfc3339_micros(pg) == sluice_testkit::rfc3339_micros(ch)
        }
        _ => false,
    }
}

fn ch_sink(ch: &ClickHouseServer, extra: &str) -> String {
    format!(
        "[[sinks]]\nname = \"ch\"\ntype = \"clickhouse\"\nurl = {:?}\nbatch_max_wait_ms = 200\n{extra}\n",
        ch.http_url()
    )
}

/// Waits until the file sink holds a change of `id` (everything before it is in the log)
/// and ClickHouse equals PostgreSQL.
fn wait_equal(p: &Pipeline, pg: &PgServer, ch: &ClickHouseServer, marker: i64) {
    wait_until(WAIT, "the marker row in the file sink", || {
        p.records()
            .iter()
            .any(|r| r["key"]["id"] == marker)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    let mut last = String::new();
    wait_until(
        Duration::from_secs(90),
        "ClickHouse to equal PostgreSQL",
        || match compare(pg, ch) {
            Ok(()) => Some(()),
            Err(e) => {
                last = e;
                None
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {last}\n{}", p.logs()));
}

#[test]
fn copy_and_stream_across_two_kill9s_equal_the_source_for_every_type() {
    let pg = PgServer::start().unwrap();
    pg.psql(TYPES).unwrap();
    pg.psql(&insert_sql(1, 20_000)).unwrap();
    let ch = ClickHouseServer::start().unwrap();
    let mut p = Pipeline::new(&pg, "chk", &["public.items"], "");
    p.add_config(&ch_sink(&ch, ""));
    let check = p.command("check");
    assert!(check.status.success(), "{}", output_text(&check));
    p.start();
    let url = pg.url("postgres", "postgres");
    let writer = std::thread::spawn({
        let url = url.clone();
        move || {
            for r in 0..30 {
                round(&url, r).unwrap();
            }
        }
    });
    for kill in 1..=2 {
        wait_until(WAIT, "more changes in the file sink", || {
            (p.records().len() > 20_000 + kill * 1_500).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
        p.kill9();
        p.start();
    }
    writer.join().unwrap();
    psql_url(&url, "INSERT INTO items (id) VALUES (999999)").unwrap();
    wait_equal(&p, &pg, &ch, 999_999);
    // The mapping the log reports once for a type without a ClickHouse equivalent.
    assert!(p.log_contains("stored as its text"), "{}", p.logs());
    // A truncate empties the table; later rows arrive.
    psql_url(
        &url,
        "TRUNCATE items; INSERT INTO items (id, t) VALUES (1, 'after truncate'), (999998, 'x')",
    )
    .unwrap();
    wait_equal(&p, &pg, &ch, 999_998);
    p.stop();
}

#[test]
fn columns_added_and_dropped_mid_stream_and_an_unconvertible_change_parks_only_its_table() {
    let pg = PgServer::start().unwrap();
    pg.psql(
        "CREATE TABLE a (id int PRIMARY KEY, x int, y text); CREATE TABLE b (id int PRIMARY KEY, v text);
         CREATE TABLE c (a int, b int, v text, PRIMARY KEY (b, a));
         INSERT INTO c SELECT g, g % 3, 'c' || g FROM generate_series(1, 10) g;
         INSERT INTO a SELECT g, g, 'y' || g FROM generate_series(1, 100) g;
         INSERT INTO b SELECT g, 'v' || g FROM generate_series(1, 100) g;",
    )
    .unwrap();
    let ch = ClickHouseServer::start().unwrap();
    let mut p = Pipeline::new(&pg, "chs", &["public.a", "public.b", "public.c"], "");
    p.add_config(&ch_sink(&ch, ""));
    p.start();
    p.wait_streaming(&pg);
    let count = |sql: &str| {
        ch.query(sql)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    wait_until(WAIT, "the copy in ClickHouse", || {
        (count("SELECT count() FROM default.a FINAL WHERE _sluice_deleted = 0") == "100")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    // A key declared in another order than the columns: ordered by it, changes applied.
    pg.psql("UPDATE c SET v = 'changed' WHERE a = 4; DELETE FROM c WHERE a = 5;")
        .unwrap();
    wait_until(WAIT, "c's changes", || {
        let rows = count("SELECT count(), countIf(v = 'changed') FROM default.c FINAL WHERE _sluice_deleted = 0 FORMAT TabSeparatedRaw");
        (rows == "9\t1").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    assert!(count("SHOW CREATE TABLE default.c FORMAT TabSeparatedRaw").contains("ORDER BY (b, a)"));

    // ADD COLUMN: the column appears, typed from the source's catalog; DROP COLUMN: it
    // stays in ClickHouse and reads NULL for new rows.
    pg.psql("ALTER TABLE a ADD COLUMN amount numeric(10,3); INSERT INTO a VALUES (101, 1, 'new', 2.5); ALTER TABLE a DROP COLUMN y; INSERT INTO a (id, x, amount) VALUES (102, 2, 7.125);").unwrap();
    wait_until(WAIT, "the new rows with the new column", || {
        let out = count("SELECT id, toString(amount), ifNull(y, 'NULL') FROM default.a FINAL WHERE id > 100 ORDER BY id FORMAT TabSeparatedRaw");
        (out == "101\t2.500\tnew\n102\t7.125\tNULL".trim()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", count("SELECT * FROM default.a WHERE id > 100 FORMAT TabSeparatedRaw"), p.logs()));
    let ty = count("SELECT type FROM system.columns WHERE database = 'default' AND table = 'a' AND name = 'amount'");
    assert_eq!(ty, "Nullable(Decimal(10, 3))");
    // A widened type is widened in place.
    pg.psql("ALTER TABLE a ALTER COLUMN x TYPE bigint; UPDATE a SET x = 5000000000 WHERE id = 1;")
        .unwrap();
    wait_until(WAIT, "the widened value", || {
        (count("SELECT toString(x) FROM default.a FINAL WHERE id = 1") == "5000000000")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));

    // int -> uuid cannot be converted in place: table a is parked with the fix, b goes on.
    pg.psql("ALTER TABLE a ALTER COLUMN x TYPE uuid USING md5(x::text)::uuid; UPDATE a SET x = md5('z')::uuid WHERE id = 2; INSERT INTO a (id) VALUES (103); INSERT INTO b VALUES (101, 'after');").unwrap();
    wait_until(WAIT, "b's new row", || {
        (count("SELECT v FROM default.b FINAL WHERE id = 101") == "after").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    assert!(p.log_contains("held back"), "{}", p.logs());
    assert!(p.log_contains("MODIFY COLUMN"), "{}", p.logs());
    assert_eq!(
        count("SELECT count() FROM default.a FINAL WHERE id = 103"),
        "0"
    );
    let held = count("SELECT count() FROM default.sluice_parked WHERE source_table = 'public.a'");
    assert!(held.parse::<u64>().unwrap() >= 2, "{held}");
    // The operator follows the fix; at the next start the held changes are applied.
    p.stop();
    ch.query("ALTER TABLE default.a MODIFY COLUMN x Nullable(String)")
        .unwrap();
    p.start();
    // Applied, then marked done (the log says so after the mark).
    wait_until(WAIT, "the held changes applied", || {
        (count("SELECT count() FROM default.a FINAL WHERE id = 103 AND _sluice_deleted = 0") == "1"
            && p.log_contains("held changes applied"))
        .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    assert_eq!(
        count("SELECT count() FROM default.sluice_resumed WHERE source_table = 'public.a'"),
        "1"
    );
    pg.psql("INSERT INTO a (id, x) VALUES (104, md5('w')::uuid);")
        .unwrap();
    wait_until(WAIT, "a goes on", || {
        (count("SELECT count() FROM default.a FINAL WHERE id = 104") == "1").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    p.stop();
}

#[test]
fn a_wrong_password_stops_at_once_tls_takes_its_ca_and_a_table_without_a_key_is_refused() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE k (id int PRIMARY KEY); CREATE TABLE nokey (v int);")
        .unwrap();
    let ch = ClickHouseServer::builder()
        .user("writer", "right-password")
        .start()
        .unwrap();
    let p = Pipeline::new(&pg, "chp", &["public.k"], "");
    p.add_config(&ch_sink(
        &ch,
        "user = \"writer\"\npassword = \"wrong-password\"",
    ));
    let out = p.command("check");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("refused the credentials"), "{text}");
    assert!(text.contains("user and password"), "{text}");
    assert!(!text.contains("wrong-password"), "{text}");
    // TLS: the server's CA in ca_file is trusted; without it the check says to set it.
    let tls = ClickHouseServer::builder().tls().start().unwrap();
    let https = |ca: &str| {
        format!(
            "[[sinks]]\nname = \"ch\"\ntype = \"clickhouse\"\nurl = {:?}\n{ca}\n",
            tls.https_url()
        )
    };
    let t = Pipeline::new(&pg, "cht", &["public.k"], "");
    t.add_config(&https(&format!("ca_file = {:?}", tls.ca_file())));
    let out = t.command("check");
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ClickHouse 18.16"), "{text}");
    let u = Pipeline::new(&pg, "chu", &["public.k"], "");
    u.add_config(&https(""));
    let out = u.command("check");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("ca_file"), "{text}");
    let q = Pipeline::new(&pg, "chq", &["public.nokey"], "");
    q.add_config(&ch_sink(
        &ch,
        "user = \"writer\"\npassword = \"right-password\"",
    ));
    let out = q.command("check");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("without a primary key"), "{text}");
}

#[test]
fn a_clickhouse_restart_mid_stream_loses_nothing() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE t (id bigint PRIMARY KEY, v text);")
        .unwrap();
    let mut ch = ClickHouseServer::start().unwrap();
    let mut p = Pipeline::new(&pg, "chr", &["public.t"], "");
    p.add_config(&ch_sink(&ch, ""));
    p.start();
    p.wait_streaming(&pg);
    let rows = 20_000;
    let writer = insert_batches(vec![pg.url("postgres", "postgres")], rows);
    let count = |ch: &ClickHouseServer| {
        ch.query("SELECT count() FROM default.t FINAL WHERE _sluice_deleted = 0")
            .map(|s| s.trim().parse::<i64>().unwrap_or(0))
            .unwrap_or(0)
    };
    wait_until(WAIT, "some rows in ClickHouse", || {
        (count(&ch) > 1_000).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    // Down while rows keep coming: inserts in flight fail, the sink waits it out and
    // starts again from its cursor once the server is back.
    ch.kill();
    let seen = p.records().len();
    wait_until(WAIT, "the stream to go on meanwhile", || {
        (p.records().len() > seen + 2_000).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    ch.start_again().unwrap();
    writer.join().unwrap();
    wait_until(WAIT, "every row in ClickHouse", || {
        (count(&ch) == rows).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", count(&ch), p.logs()));
    p.stop();
}
