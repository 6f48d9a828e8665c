//! The HTTP server end to end: SSE with resume, auth, retention errors; metrics.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use support::{wait_until, PgServer, Pipeline, WAIT};

const TOKEN: &str = "s3cret-token";

fn token_config() -> String {
    // sha256("s3cret-token")
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(TOKEN.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let hex = String::from_utf8(out.stdout).unwrap();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntokens = [\"sha256:{}\"]\n",
        hex.split_whitespace().next().unwrap()
    )
}

/// A raw HTTP/1.0 request (the response body then ends with the connection).
fn request(addr: &str, path: &str, headers: &[(&str, &str)]) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    BufReader::new(s)
}

/// Status code and headers; the reader is left at the body.
fn status(r: &mut BufReader<TcpStream>) -> u16 {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let code = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            return code;
        }
    }
}

fn get_text(addr: &str, path: &str) -> (u16, String) {
    let mut r = request(addr, path, &[]);
    let code = status(&mut r);
    let mut body = String::new();
    r.read_to_string(&mut body).unwrap();
    (code, body)
}

/// One SSE event: (id, event type, data). Ids are opaque tokens that sort in order.
fn next_event(r: &mut BufReader<TcpStream>) -> (Option<String>, String, String) {
    let (mut id, mut kind, mut data) = (None, "message".to_string(), String::new());
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).expect("read an event");
        assert!(n > 0, "the stream ended");
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            if !data.is_empty() || kind != "message" {
                return (id, kind, data);
            }
            continue;
        }
        if l.starts_with(':') {
            continue; // keep-alive
        }
        if let Some(v) = l.strip_prefix("id:") {
            id = Some(v.trim().to_owned());
        } else if let Some(v) = l.strip_prefix("event:") {
            kind = v.trim().to_owned();
        } else if let Some(v) = l.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
}

fn sse_pipeline(pg: &PgServer, name: &str, extra: &str) -> Pipeline {
    pg.psql("CREATE TABLE public.e (id int PRIMARY KEY, v text); CREATE TABLE public.other (id int PRIMARY KEY)")
        .unwrap();
    let p = Pipeline::new(pg, name, &["public.e", "public.other"], "");
    p.add_config(&format!(
        "[[sinks]]\nname = \"feed\"\ntype = \"sse\"\ntables = [\"public.e\"]\n{extra}\n{}",
        token_config()
    ));
    p
}

/// Lines of the logs in `p`'s directory that contain every one of `needles`.
fn log_lines(p: &Pipeline, needles: &[&str]) -> usize {
    p.logs()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

#[test]
fn a_reload_of_one_pipeline_keeps_the_sse_clients_of_another_connected() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE public.ra (id int PRIMARY KEY); CREATE TABLE public.rb (id int PRIMARY KEY); CREATE TABLE public.rc (id int PRIMARY KEY)")
        .unwrap();
    let a = Pipeline::new(&pg, "reload_a", &["public.ra"], "");
    a.add_config(&format!(
        "[[sinks]]\nname = \"feed_a\"\ntype = \"sse\"\n{}",
        token_config()
    ));
    let b = Pipeline::new(&pg, "reload_b", &["public.rb"], "");
    b.add_config(&format!(
        "[[sinks]]\nname = \"feed_b\"\ntype = \"sse\"\n{}",
        token_config()
    ));
    let mut child = a.spawn_with(&[&b]);
    let addr = a.server_addr();
    let auth = format!("Bearer {TOKEN}");
    wait_until(WAIT, "both pipelines to stream", || {
        (log_lines(&a, &["source: streaming"]) >= 2).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", a.logs()));
    let mut rb = request(
        &addr,
        "/v1/sinks/feed_b/events",
        &[("Authorization", &auth)],
    );
    assert_eq!(status(&mut rb), 200);
    let mut ra = request(
        &addr,
        "/v1/sinks/feed_a/events",
        &[("Authorization", &auth)],
    );
    assert_eq!(status(&mut ra), 200);
    pg.psql("INSERT INTO public.rb VALUES (1)").unwrap();
    let (_, _, data) = next_event(&mut rb);
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap()["after"]["id"],
        1
    );

    // Pipeline a takes one more table: only it restarts.
    let config = std::fs::read_to_string(&a.config_path).unwrap();
    std::fs::write(
        &a.config_path,
        config.replace(
            "tables = [\"public.ra\"]",
            "tables = [\"public.ra\", \"public.rc\"]",
        ),
    )
    .unwrap();
    wait_until(WAIT, "pipeline a to run again with its new config", || {
        (log_lines(&a, &["starting", "pipeline=reload_a"]) >= 2
            && log_lines(&a, &["source: streaming"]) >= 3)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", a.logs()));
    // a's client was let go (it resumes with Last-Event-ID); b's is still served, on the
    // same connection.
    let mut rest = String::new();
    assert!(
        ra.read_to_string(&mut rest).is_ok(),
        "a's stream ended (not timed out)"
    );
    pg.psql("INSERT INTO public.rb VALUES (2); INSERT INTO public.rc VALUES (7)")
        .unwrap();
    let (_, _, data) = next_event(&mut rb);
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap()["after"]["id"],
        2
    );
    let mut ra = request(
        &addr,
        "/v1/sinks/feed_a/events?from=earliest&tables=public.rc",
        &[("Authorization", &auth)],
    );
    assert_eq!(status(&mut ra), 200);
    let (_, _, data) = next_event(&mut ra);
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap()["table"],
        "rc",
        "the reloaded pipeline captures its new table"
    );
    support::terminate(&mut child);
}

#[test]
fn sse_clients_resume_after_a_disconnect_without_gaps_or_repeats() {
    sse_resume(None);
}

/// The same with the log in JetStream: the feed waits at the stream's end and a client
/// resumes at a position the reader finds in the stream.
#[test]
fn sse_clients_resume_with_the_jetstream_log() {
    let nats = sluice_testkit::NatsServer::start().unwrap();
    sse_resume(Some(&nats.url()));
}

fn sse_resume(jetstream: Option<&str>) {
    let pg = PgServer::start().unwrap();
    let mut p = sse_pipeline(&pg, "sse", "");
    if let Some(url) = jetstream {
        p.use_jetstream_log(url, 1);
    }
    p.start();
    p.wait_streaming(&pg);
    let addr = p.server_addr();
    let auth = format!("Bearer {TOKEN}");

    // Without a token: refused.
    let mut r = request(&addr, "/v1/sinks/feed/events", &[]);
    assert_eq!(status(&mut r), 401);
    let mut r = request(&addr, "/v1/sinks/nope/events", &[("Authorization", &auth)]);
    assert_eq!(status(&mut r), 404);

    let mut r = request(
        &addr,
        "/v1/sinks/feed/events?from=earliest",
        &[("Authorization", &auth)],
    );
    assert_eq!(status(&mut r), 200);
    pg.psql("INSERT INTO public.e SELECT g, 'a' FROM generate_series(1, 100) g; INSERT INTO public.other VALUES (1);")
        .unwrap();
    let mut seen = Vec::new();
    let mut last = String::new();
    for _ in 0..40 {
        let (id, kind, data) = next_event(&mut r);
        assert_eq!(kind, "message");
        let rec: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(rec["table"], "e", "the sink serves only its tables");
        seen.push(rec["after"]["id"].as_i64().unwrap());
        last = id.unwrap();
    }
    drop(r);
    // An id issued before ids were tokens (a plain log offset: the 40th insert is at 39)
    // resumes where the token of that event does.
    for id in ["39", last.as_str()] {
        let mut r = request(
            &addr,
            "/v1/sinks/feed/events",
            &[("Authorization", &auth), ("Last-Event-ID", id)],
        );
        assert_eq!(status(&mut r), 200);
        let (_, _, data) = next_event(&mut r);
        let rec: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(rec["after"]["id"], 41, "resumed after {id}");
    }
    // More changes while the client is away.
    pg.psql("UPDATE public.e SET v = 'b' WHERE id <= 50")
        .unwrap();
    let mut r = request(
        &addr,
        "/v1/sinks/feed/events",
        &[("Authorization", &auth), ("Last-Event-ID", &last)],
    );
    assert_eq!(status(&mut r), 200);
    let mut ids = Vec::new();
    while seen.len() < 150 {
        let (id, _, data) = next_event(&mut r);
        let rec: Value = serde_json::from_str(&data).unwrap();
        assert!(
            id.clone().unwrap() > last,
            "resumed after {last}, got {id:?}"
        );
        ids.push(rec["id"].as_str().unwrap().to_owned());
        seen.push(rec["after"]["id"].as_i64().unwrap());
    }
    let inserted: Vec<i64> = seen[..100].to_vec();
    assert_eq!(
        inserted,
        (1..=100).collect::<Vec<_>>(),
        "every insert once, in order"
    );
    let mut updated = seen[100..].to_vec();
    updated.sort();
    assert_eq!(updated, (1..=50).collect::<Vec<_>>(), "every update once");
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no repeats");

    // Filters in the query string.
    let mut r = request(
        &addr,
        "/v1/sinks/feed/events?from=earliest&ops=update",
        &[("Authorization", &auth)],
    );
    assert_eq!(status(&mut r), 200);
    let (_, _, data) = next_event(&mut r);
    let rec: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(rec["op"], "update");
    p.stop();
}

#[test]
fn a_position_past_retention_gets_a_clear_error_event() {
    let pg = PgServer::start().unwrap();
    // Tiny segments kept for no time: the file sink passing them lets them go.
    let mut p = sse_pipeline(
        &pg,
        "expired",
        "[log]\nsegment_bytes = 4096\nretention_secs = 0\n",
    );
    p.start();
    p.wait_streaming(&pg);
    pg.psql("INSERT INTO public.e SELECT g, repeat('x', 200) FROM generate_series(1, 200) g")
        .unwrap();
    p.wait_records(200);
    let addr = p.server_addr();
    let auth = format!("Bearer {TOKEN}");
    let first = wait_until(WAIT, "old segments to be deleted", || {
        pg.psql("INSERT INTO public.other SELECT coalesce(max(id), 0) + 1 FROM public.other")
            .ok()?;
        let mut r = request(
            &addr,
            "/v1/sinks/feed/events",
            &[("Authorization", &auth), ("Last-Event-ID", "0")],
        );
        status(&mut r);
        let (_, kind, data) = next_event(&mut r);
        (kind == "error").then_some(data)
    })
    .map(|data| {
        let v: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["error"], "expired");
        let first = v["first"].as_str().unwrap().to_owned();
        assert!(!first.is_empty() && first != "0", "{first}");
        assert!(v["message"]
            .as_str()
            .unwrap()
            .contains("no longer in the log"));
        first
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    // The position the error names is one to resume from.
    let mut r = request(
        &addr,
        &format!("/v1/sinks/feed/events?from={first}"),
        &[("Authorization", &auth)],
    );
    assert_eq!(status(&mut r), 200);
    pg.psql("INSERT INTO public.e VALUES (1000, 'y')").unwrap();
    let (_, kind, _) = next_event(&mut r);
    assert_eq!(kind, "message");
    p.stop();
}

/// Parses Prometheus text format strictly enough to catch malformed output: every line
/// is a comment or `name{labels} value`. Returns (name with labels, value).
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let kind = rest.split_whitespace().nth(1).unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels in {line:?}");
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.push((series.to_owned(), v));
    }
    out
}

fn metric(all: &[(String, f64)], series: &str) -> Option<f64> {
    all.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

#[test]
fn metrics_parse_and_move_when_changes_flow() {
    let pg = PgServer::start().unwrap();
    let mut p = sse_pipeline(&pg, "metrics", "");
    p.start();
    p.wait_streaming(&pg);
    let addr = p.server_addr();
    assert_eq!(get_text(&addr, "/healthz").0, 200);
    wait_until(WAIT, "readiness", || {
        (get_text(&addr, "/readyz").0 == 200).then_some(())
    })
    .unwrap();
    pg.psql("INSERT INTO public.e SELECT g, 'a' FROM generate_series(1, 10) g")
        .unwrap();
    p.wait_records(10);
    let (code, text) = get_text(&addr, "/metrics");
    assert_eq!(code, 200);
    let before = parse_prometheus(&text);
    let changes = "sluice_changes_total{pipeline=\"metrics\",table=\"public.e\",op=\"insert\"}";
    assert_eq!(metric(&before, changes), Some(10.0), "{text}");
    for name in [
        "sluice_log_bytes{pipeline=\"metrics\"}",
        "sluice_log_records{pipeline=\"metrics\"}",
        "sluice_sink_lag_records{pipeline=\"metrics\",sink=\"out\"}",
        "sluice_sink_lag_seconds{pipeline=\"metrics\",sink=\"out\"}",
        "sluice_source_reconnects_total{pipeline=\"metrics\"}",
        "process_resident_memory_bytes",
    ] {
        assert!(metric(&before, name).is_some(), "{name} missing:\n{text}");
    }
    assert!(
        before.iter().any(|(s, _)| s.starts_with(
            "sluice_sink_delivery_latency_seconds_bucket{pipeline=\"metrics\",sink=\"out\""
        )),
        "{text}"
    );
    pg.psql("INSERT INTO public.e SELECT g, 'a' FROM generate_series(11, 30) g")
        .unwrap();
    p.wait_records(30);
    wait_until(WAIT, "metrics to move", || {
        let after = parse_prometheus(&get_text(&addr, "/metrics").1);
        let moved = metric(&after, changes) == Some(30.0)
            && metric(
                &after,
                "sluice_sink_delivered_records_total{pipeline=\"metrics\",sink=\"out\"}",
            ) >= Some(30.0)
            && metric(
                &after,
                "sluice_replication_slot_active{pipeline=\"metrics\"}",
            ) == Some(1.0)
            && metric(
                &after,
                "sluice_replication_slot_lag_bytes{pipeline=\"metrics\"}",
            )
            .is_some();
        moved.then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", get_text(&addr, "/metrics").1));
    p.stop();
}

#[test]
fn a_slow_client_is_cut_off_with_its_position_and_holds_back_no_one() {
    const ROWS: i64 = 40_000;
    let pg = PgServer::start().unwrap();
    let mut p = sse_pipeline(&pg, "slow", "slow_client_timeout_secs = 1\n");
    p.start();
    p.wait_streaming(&pg);
    let addr = p.server_addr();
    let auth = format!("Bearer {TOKEN}");
    // This client reads nothing until it has been cut off.
    let mut slow = request(
        &addr,
        "/v1/sinks/feed/events?from=earliest",
        &[("Authorization", &auth)],
    );
    assert_eq!(status(&mut slow), 200);
    let fast = {
        let (addr, auth) = (addr.clone(), auth.clone());
        std::thread::spawn(move || {
            let mut r = request(
                &addr,
                "/v1/sinks/feed/events?from=earliest",
                &[("Authorization", &auth)],
            );
            assert_eq!(status(&mut r), 200);
            (0..ROWS).map(|_| next_event(&mut r).0.unwrap()).last()
        })
    };
    // ~1 KiB rows, some 40 MiB of events: more than the server's and the sockets' buffers.
    pg.psql(&format!(
        "INSERT INTO public.e SELECT g, repeat('x', 1000) FROM generate_series(1, {ROWS}) g"
    ))
    .unwrap();
    p.wait_records(ROWS as usize);
    let last = fast.join().expect("the other client got every event");
    assert!(last.is_some());
    wait_until(WAIT, "the slow client to be cut off", || {
        p.log_contains("disconnecting a client too slow")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    // What was sent before the cut arrives, then the stream ends; resuming from the last
    // id read gives the rest, none twice.
    let mut ids = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if slow.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(v) = line.trim_end().strip_prefix("id:") {
            ids.push(v.trim().to_owned());
        }
    }
    assert!(
        !ids.is_empty() && (ids.len() as i64) < ROWS,
        "{} events before the cut",
        ids.len()
    );
    let mut r = request(
        &addr,
        "/v1/sinks/feed/events",
        &[
            ("Authorization", &auth),
            ("Last-Event-ID", ids.last().unwrap()),
        ],
    );
    assert_eq!(status(&mut r), 200);
    while (ids.len() as i64) < ROWS {
        ids.push(next_event(&mut r).0.unwrap());
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids increase: no repeats"
    );
    assert_eq!(
        ids.last(),
        last.as_ref(),
        "the same events as the other client"
    );
    p.stop();
}

#[test]
fn clients_sharing_a_sinks_read_each_get_their_own_records_once_in_order() {
    let pg = PgServer::start().unwrap();
    let mut p = sse_pipeline(&pg, "fanout", "");
    p.start();
    p.wait_streaming(&pg);
    let addr = p.server_addr();
    let auth = format!("Bearer {TOKEN}");
    // Records before anyone listens: the shared read skips them, catching-up clients read
    // them on their own.
    pg.psql("INSERT INTO public.e SELECT g, 'a' FROM generate_series(1, 200) g")
        .unwrap();
    let open = |query: &str| {
        let mut r = request(
            &addr,
            &format!("/v1/sinks/feed/events{query}"),
            &[("Authorization", &auth)],
        );
        assert_eq!(status(&mut r), 200);
        r
    };
    // Clients from now start after those 200: wait until they are in the log.
    let mut probe = open("?from=earliest");
    for _ in 0..200 {
        next_event(&mut probe);
    }
    drop(probe);
    let mut tail: Vec<_> = (0..20).map(|_| open("")).collect();
    let mut earliest: Vec<_> = (0..5).map(|_| open("?from=earliest")).collect();
    let mut updates: Vec<_> = (0..5).map(|_| open("?ops=update")).collect();
    for chunk in 0..6 {
        let (lo, hi) = (201 + chunk * 50, 250 + chunk * 50);
        pg.psql(&format!(
            "INSERT INTO public.e SELECT g, 'a' FROM generate_series({lo}, {hi}) g; \
             UPDATE public.e SET v = 'u{chunk}' WHERE id <= 10; INSERT INTO public.other VALUES ({chunk})"
        ))
        .unwrap();
    }
    // Every event of a client: (id, op, row id), until `n` of them.
    let read = |r: &mut BufReader<TcpStream>, n: usize| {
        let mut out = Vec::new();
        while out.len() < n {
            let (id, kind, data) = next_event(r);
            assert_eq!(kind, "message", "{data}");
            let rec: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(rec["table"], "e", "the sink serves only its tables");
            let op = rec["op"].as_str().unwrap().to_owned();
            out.push((id.unwrap(), op, rec["after"]["id"].as_i64().unwrap()));
        }
        out
    };
    let check = |events: &[(String, String, i64)], inserts: std::ops::RangeInclusive<i64>| {
        assert!(
            events.windows(2).all(|w| w[0].0 < w[1].0),
            "ids not increasing: a repeat or a reorder"
        );
        let ins: Vec<i64> = events
            .iter()
            .filter(|e| e.1 == "insert")
            .map(|e| e.2)
            .collect();
        assert_eq!(ins, inserts.collect::<Vec<_>>());
        let ups = events.iter().filter(|e| e.1 == "update").count();
        assert_eq!(ups, 60, "six updates of ten rows");
    };
    for r in &mut tail {
        check(&read(r, 300 + 60), 201..=500);
    }
    for r in &mut earliest {
        check(&read(r, 500 + 60), 1..=500);
    }
    for r in &mut updates {
        let events = read(r, 60);
        assert!(events.iter().all(|e| e.1 == "update"));
        assert!(events.windows(2).all(|w| w[0].0 < w[1].0));
    }
    // One more change reaches them all (nothing was left behind in a buffer).
    pg.psql("INSERT INTO public.e VALUES (501, 'z')").unwrap();
    for r in tail.iter_mut().chain(earliest.iter_mut()) {
        assert_eq!(read(r, 1)[0].2, 501);
    }
    p.stop();
}
