//! End to end: the NATS JetStream sink against a real, current `nats-server -js`. What
//! lands in the streams decodes (JSON, packages, packages with zstd) to the file sink's
//! records for the same workload, in order; a kill -9 of Sluice and a restart of NATS
//! lose nothing and leave no duplicate in the stream; what can never work stops at once
//! with its fix; the README's Python decoder reads the packages.

#[path = "support/broker.rs"]
mod broker;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sluice_testkit::NatsServer;
use support::*;

const TABLE: &str = "CREATE TABLE items (id int PRIMARY KEY, account text NOT NULL, \
    amount numeric(12,2), big text, at timestamptz, day date, data jsonb, raw bytea, \
    f float8, flag bool, tags int[]);";

/// Inserts, updates that leave a TOASTed value unchanged, deletes, a truncate and a
/// large transaction; ends with the insert of id 999999.
fn workload(pg: &PgServer) {
    // A value PostgreSQL keeps out of line: 20 kB that do not compress.
    let big = "(SELECT string_agg(md5(g::text || $1), '') FROM generate_series(1, 640) g)";
    let sql = [
        format!("INSERT INTO items SELECT g, 'acct' || (g % 3), g * 1.25, {}, \
         '2026-01-02 03:04:05.123456+00'::timestamptz + g * interval '1 second', \
         '2026-01-02', jsonb_build_object('g', g, 'tags', jsonb_build_array('a', g)), \
         decode('00ff' || lpad(to_hex(g), 4, '0'), 'hex'), g / 3.0, g % 2 = 0, ARRAY[g, g + 1] \
         FROM generate_series(1, 50) g;", big.replace("$1", "'x'")),
        "UPDATE items SET amount = amount + 1 WHERE id <= 20;".into(),
        "UPDATE items SET account = 'moved', f = 'NaN' WHERE id = 3;".into(),
        "DELETE FROM items WHERE id BETWEEN 40 AND 45;".into(),
        "INSERT INTO items (id, account, at) VALUES (500, 'acct0', 'infinity');".into(),
        "TRUNCATE items;".into(),
        "BEGIN; INSERT INTO items (id, account, amount, flag) SELECT g, 'acct' || (g % 5), g, true \
         FROM generate_series(1000, 6000) g; UPDATE items SET amount = -1 WHERE id % 7 = 0; COMMIT;"
            .into(),
        "INSERT INTO items (id, account) VALUES (999999, 'acct1');".into(),
    ];
    for s in sql {
        pg.psql(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

fn nats_sink(name: &str, url: &str, stream: &str, subject: &str, extra: &str) -> String {
    format!(
        "[[sinks]]\nname = {name:?}\ntype = \"nats\"\nurl = {url:?}\nstream = {stream:?}\n\
         subject = {subject:?}\ncreate_stream = true\n{extra}\n"
    )
}

fn python() -> std::path::PathBuf {
    sluice_testkit::tools_venv()
        .expect("the tools venv")
        .join("bin/python")
}

#[test]
fn json_and_packages_decode_to_the_file_sinks_records_in_order() {
    let pg = PgServer::start().unwrap();
    pg.psql(TABLE).unwrap();
    let nats = NatsServer::start().unwrap();
    let url = nats.url();
    let mut p = Pipeline::new(&pg, "brk", &["public.items"], "");
    p.add_config(&nats_sink("json", &url, "J", "j.{table}.{account}", ""));
    p.add_config(&nats_sink(
        "pkg",
        &url,
        "P",
        "p.{schema}.{table}",
        "encoding = \"package\"\npackage_max_records = 700",
    ));
    p.add_config(&nats_sink(
        "zst",
        &url,
        "Z",
        "sluice.{pipeline}.{schema}.{table}",
        "encoding = \"package\"\ncompression = \"zstd\"\npackage_max_wait_ms = 20",
    ));
    let check = p.command("check");
    assert!(check.status.success(), "{}", output_text(&check));
    let text = output_text(&check);
    assert!(text.contains("stream \"J\""), "{text}");
    p.start();
    p.wait_streaming(&pg);
    workload(&pg);
    let records = wait_until(WAIT, "the file sink to hold the last insert", || {
        let r = p.records();
        r.last()
            .filter(|l| l["key"]["id"] == 999999)
            .map(|_| r.clone())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    let last_id = records.last().unwrap()["id"].as_str().unwrap().to_owned();
    assert!(records.len() > 5000, "{}", records.len());

    // JSON: one message per record, the record as the file sink has it, on its subject.
    let json = broker::read_stream(&url, "J", &last_id, WAIT);
    assert_eq!(json.len(), records.len());
    for (m, r) in json.iter().zip(&records) {
        assert_eq!(m.records(), vec![r.clone()]);
        assert_eq!(
            m.header("Nats-Msg-Id"),
            format!("brk/json/{}", r["id"].as_str().unwrap())
        );
        assert_eq!(m.header("Sluice-Op"), r["op"].as_str().unwrap());
        assert_eq!(m.header("Sluice-Table"), "items");
        let account = ["after", "before", "key"]
            .iter()
            .find_map(|i| r[i]["account"].as_str())
            .unwrap_or("_");
        assert_eq!(m.subject, format!("j.items.{account}"), "{r}");
    }
    // Packages, plain and zstd: the same records in the same order, one table each.
    for (stream, prefix) in [("P", "p.public.items"), ("Z", "sluice.brk.public.items")] {
        let msgs = broker::read_stream(&url, stream, &last_id, WAIT);
        assert!(
            msgs.len() < records.len() / 5,
            "{stream}: {} packages",
            msgs.len()
        );
        let mut decoded = Vec::new();
        for m in &msgs {
            assert_eq!(m.subject, prefix);
            assert_eq!(m.header("Sluice-Encoding"), "package");
            let events = m.records();
            assert_eq!(m.header("Sluice-Records"), events.len().to_string());
            assert!(events.len() <= 1000);
            let first = events[0]["id"].as_str().unwrap();
            let last = events.last().unwrap()["id"].as_str().unwrap();
            assert_eq!(m.header("Sluice-Id"), format!("{first}..{last}"));
            decoded.extend(events);
        }
        assert_eq!(decoded.len(), records.len(), "{stream}");
        for (d, r) in decoded.iter().zip(&records) {
            broker::same_record(d, r).unwrap_or_else(|e| panic!("{stream}: {e}\n{d}\n{r}"));
        }
    }
    let zst = broker::read_stream(&url, "Z", &last_id, WAIT);
    assert_eq!(zst[0].header("Sluice-Compression"), "zstd");

    readme_decoder_reads_the_packages(&url, &records);
    p.stop();
}

/// The README's Python consumer, run as a user would: it prints one line per event.
fn readme_decoder_reads_the_packages(url: &str, records: &[Value]) {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let code = readme
        .split("```python\n")
        .find(|b| b.contains("sluice.v1") || b.contains("package_pb2"))
        .and_then(|b| b.split("```").next())
        .expect("the README's Python decoding example");
    let dir = tempfile::tempdir().unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let gen = Command::new(python())
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(format!("{root}/proto"))
        .arg(format!("--python_out={}", dir.path().display()))
        .arg(format!("{root}/proto/sluice/v1/package.proto"))
        .output()
        .unwrap();
    assert!(gen.status.success(), "{}", output_text(&gen));
    std::fs::write(dir.path().join("consume.py"), code).unwrap();
    let out = Command::new(python())
        .arg(dir.path().join("consume.py"))
        .current_dir(dir.path())
        .env("NATS_URL", url)
        .env("STREAM", "Z")
        .env("SUBJECT", "sluice.brk.>")
        .env("COUNT", records.len().to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let want: Vec<String> = records
        .iter()
        .map(|r| {
            format!(
                "{} {} public.items",
                r["id"].as_str().unwrap(),
                r["op"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(lines.len(), want.len());
    for (line, want) in lines.iter().zip(&want) {
        assert!(
            line.starts_with(&format!("{want} {{")),
            "{line} is not {want}"
        );
    }
}

/// Inserts ids `from..=to` into `public.t` in transactions of 100 rows, on a thread.
fn insert_range(url: String, from: i64, to: i64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for lo in (from..=to).step_by(100) {
            let out = Command::new(sluice_testkit::pg_bin("psql"))
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c"])
                .arg(format!(
                    "INSERT INTO t SELECT g, 'r' || g FROM generate_series({lo}, {}) g",
                    (lo + 99).min(to)
                ))
                .output()
                .expect("run psql");
            assert!(out.status.success(), "{out:?}");
        }
    })
}

/// The file sink's records once it holds every id up to `rows`, and the largest id.
fn all_rows(p: &Pipeline, rows: i64) -> String {
    let records = wait_until(WAIT, "every row in the file sink", || {
        let r = p.records();
        let ids: BTreeSet<i64> = r.iter().filter_map(|r| r["key"]["id"].as_i64()).collect();
        (ids.len() == rows as usize).then_some(r)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .max()
        .unwrap()
}

#[test]
fn a_kill9_of_sluice_repeats_nothing_and_a_restart_of_nats_loses_nothing() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE t (id bigint PRIMARY KEY, v text);")
        .unwrap();
    let mut nats = NatsServer::start().unwrap();
    let url = nats.url();
    let mut p = Pipeline::new(&pg, "crash", &["public.t"], "");
    p.add_config(&nats_sink(
        "n",
        &url,
        "S",
        "s.{table}",
        "duplicate_window_secs = 600",
    ));
    p.start();
    p.wait_streaming(&pg);
    let pg_url = pg.url("postgres", "postgres");

    // kill -9 of Sluice mid-load: what the new process publishes again from its cursor,
    // the server drops; every row is in the stream once, in log order.
    let rows = 20_000;
    let writer = insert_range(pg_url.clone(), 1, rows);
    wait_until(WAIT, "a third of the rows in the file sink", || {
        (p.records().len() > rows as usize / 3).then_some(())
    })
    .unwrap();
    p.kill9();
    p.start();
    writer.join().unwrap();
    let last = all_rows(&p, rows);
    let stored = broker::read_stream(&url, "S", &last, WAIT);
    let mut seen = BTreeMap::new();
    for m in &stored {
        let r = &m.records()[0];
        let id = r["id"].as_str().unwrap().to_owned();
        assert_eq!(m.header("Nats-Msg-Id"), format!("crash/n/{id}"));
        let first = seen.insert(id.clone(), r["key"]["id"].as_i64().unwrap());
        assert!(first.is_none(), "{id} stored twice");
    }
    let keys: BTreeSet<i64> = seen.values().copied().collect();
    assert_eq!(keys.len(), rows as usize);
    assert_eq!(stored.len(), rows as usize);
    let ids: Vec<&String> = seen.keys().collect();
    let in_stream: Vec<&str> = stored.iter().map(|m| m.header("Sluice-Id")).collect();
    assert_eq!(in_stream, ids, "in log order");

    // NATS restarted mid-load: delivery resumes and nothing is lost (a batch that failed
    // meanwhile is published again, and may be stored twice, with the same Sluice-Id).
    let more = 20_000;
    let writer = insert_range(pg_url, rows + 1, rows + more);
    wait_until(WAIT, "some of the new rows in the file sink", || {
        (p.records().len() > (rows + more / 4) as usize).then_some(())
    })
    .unwrap();
    nats.restart().unwrap();
    writer.join().unwrap();
    let last = all_rows(&p, rows + more);
    let stored = broker::read_stream(&url, "S", &last, WAIT);
    let keys: BTreeSet<i64> = stored
        .iter()
        .map(|m| m.records()[0]["key"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(keys.len(), (rows + more) as usize, "nothing lost");
    p.stop();
}

#[test]
fn what_can_never_work_is_refused_with_its_fix() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE t (id bigint PRIMARY KEY, v text);")
        .unwrap();
    let locked = NatsServer::builder()
        .user("sluice", "c0rrect-h0rse")
        .start()
        .unwrap();
    let tls = NatsServer::builder().tls().start().unwrap();
    let plain = NatsServer::start().unwrap();
    let p = Pipeline::new(&pg, "refuse", &["public.t"], "");
    p.add_config(&nats_sink(
        "badpw",
        &locked.url(),
        "S",
        "s.{table}",
        "user = \"sluice\"\npassword = \"n0t-the-passw0rd\"",
    ));
    p.add_config(&nats_sink("untrusted", &tls.url(), "S", "s.{table}", ""));
    p.add_config(&format!(
        "[[sinks]]\nname = \"nostream\"\ntype = \"nats\"\nurl = {:?}\nstream = \"MISSING\"\n",
        plain.url()
    ));
    p.add_config(&nats_sink(
        "column",
        &plain.url(),
        "C",
        "c.{table}.{account_id}",
        "",
    ));
    // A stream that exists but takes other subjects.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(plain.url()).await.unwrap());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "OTHER".into(),
            subjects: vec!["x.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    });
    p.add_config(&format!(
        "[[sinks]]\nname = \"elsewhere\"\ntype = \"nats\"\nurl = {:?}\nstream = \"OTHER\"\n",
        plain.url()
    ));
    let out = p.command("check");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    for (sink, what, fix) in [
        ("badpw", "refused the credentials", "password"),
        ("untrusted", "certificate is not trusted", "ca_file"),
        (
            "nostream",
            r#"stream "MISSING" does not exist"#,
            "create_stream = true",
        ),
        (
            "column",
            r#"column ["account_id"], which table public.t does not have"#,
            "columns every table",
        ),
        (
            "elsewhere",
            r#"takes ["x.>"], not the sink's subjects "sluice.refuse.*.*""#,
            r#"add "sluice.refuse.*.*" to the stream's subjects"#,
        ),
    ] {
        let line = text
            .lines()
            .position(|l| {
                l.starts_with("FAIL") && l.contains(&format!("sink {sink:?}")) && l.contains(what)
            })
            .unwrap_or_else(|| panic!("no FAIL for {sink} ({what}):\n{text}"));
        let next = text.lines().nth(line + 1).unwrap_or_default();
        assert!(
            next.contains("fix:") && next.contains(fix),
            "{sink}: {next}\n{text}"
        );
    }
    // `sluice check` changes nothing: the stream of a sink with create_stream is made at
    // start, not by the check.
    assert!(
        text.contains(r#"stream "C" does not exist yet: it is created at start"#),
        "{text}"
    );
    // The same with a CA that signed the server's certificate: accepted; a token too.
    let tokened = NatsServer::builder().token("s3cret-token").start().unwrap();
    let user_key = nkeys::KeyPair::new_user();
    let seed = user_key.seed().unwrap();
    let nkeyed = NatsServer::builder()
        .nkey(&user_key.public_key())
        .start()
        .unwrap();
    let q = Pipeline::new(&pg, "trust", &["public.t"], "");
    q.add_config(&nats_sink(
        "trusted",
        &tls.url(),
        "S",
        "s.{table}",
        &format!("ca_file = {:?}", tls.ca_file()),
    ));
    q.add_config(&nats_sink(
        "goodpw",
        &locked.url(),
        "S",
        "s.{table}",
        "user = \"sluice\"\npassword = \"c0rrect-h0rse\"",
    ));
    q.add_config(&nats_sink(
        "token",
        &tokened.url(),
        "S",
        "s.{table}",
        "token = \"s3cret-token\"",
    ));
    q.add_config(&nats_sink(
        "nkey",
        &nkeyed.url(),
        "S",
        "s.{table}",
        &format!("nkey_seed = {seed:?}"),
    ));
    // The same server refuses another key.
    q.add_config(&nats_sink(
        "otherkey",
        &nkeyed.url(),
        "S",
        "s.{table}",
        &format!(
            "nkey_seed = {:?}",
            nkeys::KeyPair::new_user().seed().unwrap()
        ),
    ));
    let out = q.command("check");
    let text = output_text(&out);
    assert!(
        text.lines().any(|l| l.starts_with("FAIL")
            && l.contains(r#"sink "otherkey""#)
            && l.contains("refused the credentials")),
        "{text}"
    );
    for sink in ["trusted", "goodpw", "token", "nkey"] {
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("FAIL") && l.contains(&format!("sink {sink:?}"))),
            "{sink}: {text}"
        );
    }
    assert!(!text.contains(&seed), "the seed is in the output: {text}");
    assert!(
        !text.contains("s3cret-token") && !text.contains("c0rrect-h0rse"),
        "a secret in the output: {text}"
    );
    // A run stops at once on the wrong password, with the fix, and nothing is marked
    // delivered.
    let r = Pipeline::new(&pg, "badrun", &["public.t"], "");
    r.add_config(&nats_sink(
        "badpw",
        &locked.url(),
        "S",
        "s.{table}",
        "user = \"sluice\"\npassword = \"n0t-the-passw0rd\"",
    ));
    let started = std::time::Instant::now();
    let out = r.command("run");
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(30));
    let text = output_text(&out);
    assert!(
        text.contains("refused the credentials") && text.contains("password"),
        "{text}"
    );
    assert!(
        !text.contains("n0t-the-passw0rd"),
        "the password is in the output: {text}"
    );
}
