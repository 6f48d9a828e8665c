//! `sluice server`'s control plane from a client's side: one pipeline's stop never holds
//! up another request, whatever its sinks are doing; every refusal is the API's JSON
//! error, the extremes of a parameter included; a flood of refused requests cannot push
//! real actions out of the audit log.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::server::{tool, Server};
use support::{wait_until, PgServer, WAIT};

/// A request with a raw body; the status and the JSON body (or the text as a string).
fn raw(addr: &str, head: &str, body: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("{head}Content-Length: {}\r\n\r\n", body.len()).as_bytes())
        .unwrap();
    // The server may answer (and close) before it has read a body it refuses.
    let _ = s.write_all(body);
    let mut text = Vec::new();
    let _ = s.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text);
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    (code, v)
}

#[test]
fn a_pause_of_a_pipeline_whose_sink_nobody_reads_is_prompt_and_holds_up_no_one() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .unwrap();
    let server = Server::new();
    let admin = server.admin_token();
    let config = json!({
        "pipeline": {"name": "unread"},
        "source": {"url": pg.url("postgres", "postgres"), "tables": ["public.t"], "status_interval_secs": 1},
        "sinks": [{"name": "queue", "type": "pull"}]
    });
    let (code, v) = server.call("POST", "/v1/pipelines", Some(&admin), Some(&config));
    assert_eq!(code, 201, "{v}\n{}", server.logs());
    server.wait_state(&admin, "unread", "running");
    pg.psql("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 500) g")
        .unwrap();
    // The rows are in the log and on offer; nobody takes them.
    wait_until(WAIT, "the rows in the log", || {
        let (_, v) = server.call("GET", "/v1/pipelines/unread", Some(&admin), None);
        (v["status"]["log_records"].as_u64() >= Some(500)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));

    let addr = server.addr();
    let (pause_addr, pause_token) = (addr.clone(), admin.clone());
    let pause = std::thread::spawn(move || {
        let started = Instant::now();
        let r = support::server::call(
            &pause_addr,
            "POST",
            "/v1/pipelines/unread/pause",
            Some(&pause_token),
            None,
        );
        (r, started.elapsed())
    });
    // A second client, a moment later, while the pause is under way.
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let (code, list) = server.call("GET", "/v1/pipelines", Some(&admin), None);
    let listed_in = started.elapsed();
    assert_eq!(code, 200, "{list}");
    let ((code, paused), paused_in) = pause.join().unwrap();
    assert_eq!(code, 200, "{paused}\n{}", server.logs());
    assert_eq!(paused["state"], "paused", "{paused}");
    assert!(
        listed_in < Duration::from_secs(1),
        "the list took {listed_in:?} while a pause was under way"
    );
    assert!(
        paused_in < Duration::from_secs(2),
        "the pause took {paused_in:?}\n{}",
        server.logs()
    );
    // The view says what was left in the log for the sink.
    let left = &paused["undelivered"];
    assert_eq!(left[0]["sink"], "queue", "{paused}");
    assert!(left[0]["records"].as_u64() > Some(0), "{paused}");

    // Resumed, the records are still there for a consumer; deleting is prompt too.
    let (code, v) = server.call("POST", "/v1/pipelines/unread/resume", Some(&admin), None);
    assert_eq!(code, 200, "{v}");
    server.wait_state(&admin, "unread", "running");
    let (code, v) = server.call(
        "POST",
        "/v1/pipelines/unread/sinks/queue/receive?max=10",
        Some(&admin),
        None,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["records"].as_array().map(Vec::len), Some(10), "{v}");
    let started = Instant::now();
    let (code, v) = server.call("DELETE", "/v1/pipelines/unread", Some(&admin), None);
    assert_eq!(code, 200, "{v}\n{}", server.logs());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the delete took {:?}",
        started.elapsed()
    );
}

#[test]
fn refusals_are_json_errors_and_extreme_values_are_refused_not_panicked_on() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let server = Server::new();
    let admin = server.admin_token();
    let addr = server.addr();
    // A body over the limit: the API's error body, not the framework's text.
    let big = vec![b' '; 10 << 20];
    let (code, v) = raw(
        &addr,
        &format!(
            "POST /v1/pipelines HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\n"
        ),
        &big,
    );
    assert_eq!(code, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("MiB"), "{v}");
    // An unknown route and a wrong method answer in the same shape.
    let (code, v) = server.call("GET", "/v1/no-such-route", Some(&admin), None);
    assert_eq!((code, v["error"].is_string()), (404, true), "{v}");
    let (code, v) = server.call("PATCH", "/v1/pipelines", Some(&admin), None);
    assert_eq!((code, v["error"].is_string()), (405, true), "{v}");

    let config = json!({
        "pipeline": {"name": "pulled"},
        "source": {"url": pg.url("postgres", "postgres"), "tables": ["public.t"], "status_interval_secs": 1},
        "sinks": [{"name": "queue", "type": "pull"}]
    });
    let (code, v) = server.call("POST", "/v1/pipelines", Some(&admin), Some(&config));
    assert_eq!(code, 201, "{v}\n{}", server.logs());
    server.wait_state(&admin, "pulled", "running");
    for query in [
        "visibility=99999999999999999999999",
        "visibility=1e308",
        "visibility=18446744073709551616s",
        "visibility=-1",
        "visibility=NaN",
        "visibility=inf",
        "wait=99999999999999999999999h",
        "visibility=25h",
    ] {
        let (code, v) = server.call(
            "POST",
            &format!("/v1/pipelines/pulled/sinks/queue/receive?{query}"),
            Some(&admin),
            None,
        );
        assert_eq!(code, 400, "{query}: {v}");
        assert!(v["error"].is_string(), "{query}: {v}");
    }
    for query in ["limit=99999999999999999999999", "limit=0", "limit=-1"] {
        let (code, v) = server.call("GET", &format!("/v1/audit?{query}"), Some(&admin), None);
        assert_eq!(code, 400, "{query}: {v}");
    }
    // The server is still there and well.
    let (code, _) = server.call("GET", "/v1/pipelines", Some(&admin), None);
    assert_eq!(code, 200, "{}", server.logs());
    assert!(!server.logs().contains("panicked"), "{}", server.logs());
}

#[test]
fn a_flood_of_refused_requests_cannot_push_actions_out_of_the_audit_log() {
    let server = Server::new();
    let admin = server.admin_token();
    let marker = server.token(&admin, "marker", json!({"kind": "read"}));
    assert!(!marker.is_empty());
    for _ in 0..300 {
        let (code, _) = server.call(
            "POST",
            "/v1/pipelines",
            Some("not-a-token"),
            Some(&json!({})),
        );
        assert_eq!(code, 401);
    }
    let (code, v) = server.call("GET", "/v1/audit?limit=10000", Some(&admin), None);
    assert_eq!(code, 200, "{v}");
    let events = v["events"].as_array().unwrap();
    // The refusals are one counted event, and the token's creation is still there.
    let refused: Vec<&Value> = events.iter().filter(|e| e["status"] == 401).collect();
    assert_eq!(refused.len(), 1, "{v}");
    assert_eq!(refused[0]["count"], 300, "{v}");
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "POST /v1/tokens" && e["status"] == 201),
        "{v}"
    );
    let actions = std::fs::read_to_string(server.data().join("audit.jsonl")).unwrap();
    assert!(
        !actions.contains("\"status\":401"),
        "refusals without a token are not written among the actions:\n{actions}"
    );
}

#[test]
fn every_sink_type_is_described_in_the_api_document_and_by_the_sink_types_route() {
    let server = Server::new();
    let admin = server.admin_token();
    let read = server.token(&admin, "reader", json!({"kind": "read"}));
    let (code, types) = server.call("GET", "/v1/sink-types", Some(&read), None);
    assert_eq!(code, 200, "{types}");
    let types = types.as_array().unwrap().clone();
    let kinds: Vec<&str> = types.iter().map(|t| t["type"].as_str().unwrap()).collect();
    for kind in ["file", "stdout", "redis", "sse", "webhook", "pull"] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    let (code, doc) = server.call("GET", "/v1/openapi.json", None, None);
    assert_eq!(code, 200);
    // The body of POST /v1/pipelines: its sinks are one schema per type, each with the
    // type's own fields, the same fields the route lists.
    let body = &doc["paths"]["/v1/pipelines"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    let resolve = |v: &Value| -> Value {
        match v["$ref"].as_str() {
            Some(r) => doc["components"]["schemas"][r.rsplit('/').next().unwrap()].clone(),
            None => v.clone(),
        }
    };
    let config = resolve(body);
    let sinks = resolve(&config["properties"]["sinks"]["items"]);
    let variants: Vec<Value> = sinks["oneOf"]
        .as_array()
        .unwrap_or_else(|| panic!("{sinks}"))
        .iter()
        .map(resolve)
        .collect();
    assert_eq!(variants.len(), types.len(), "{sinks}");
    for t in &types {
        let kind = t["type"].as_str().unwrap();
        let variant = variants
            .iter()
            .find(|v| v["properties"]["type"]["enum"][0] == kind)
            .unwrap_or_else(|| panic!("no schema for {kind}: {sinks}"));
        for field in t["fields"].as_array().unwrap() {
            let name = field["name"].as_str().unwrap();
            assert!(
                variant["properties"].get(name).is_some(),
                "{kind}.{name} is not in the document: {variant}"
            );
            assert!(
                !field["description"].as_str().unwrap().is_empty(),
                "{kind}.{name}"
            );
        }
    }
    // Secrets are declared in both places.
    let webhook = types.iter().find(|t| t["type"] == "webhook").unwrap();
    let secret = webhook["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "secret")
        .unwrap();
    assert_eq!(secret["secret"], true, "{webhook}");
    assert!(
        doc["components"]["schemas"]["Secret"]["writeOnly"] == true,
        "{}",
        doc["components"]["schemas"]["Secret"]
    );
    // A pipeline answer is one plain object, not a union.
    let view = &doc["components"]["schemas"]["PipelineView"];
    assert_eq!(view["type"], "object", "{view}");
    assert!(
        view.get("allOf").is_none() && view.get("oneOf").is_none(),
        "{view}"
    );
    // Without a token, the route refuses in the API's error body.
    let (code, v) = server.call("GET", "/v1/sink-types", None, None);
    assert_eq!((code, v["error"].is_string()), (401, true), "{v}");
}

#[test]
fn a_client_generated_from_the_api_document_has_a_typed_model_for_every_management_answer() {
    let server = Server::new();
    let (code, doc) = server.call("GET", "/v1/openapi.json", None, None);
    assert_eq!(code, 200);
    let dir = server.dir.path().join("client");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("openapi.json"), doc.to_string()).unwrap();
    // No formatter run afterwards: the generated code is read, not kept.
    std::fs::write(dir.join("config.yaml"), "post_hooks: []\n").unwrap();
    let out = std::process::Command::new(tool("openapi-python-client"))
        .current_dir(&dir)
        .args(["generate", "--path", "openapi.json", "--output-path", "gen"])
        .args(["--meta", "none", "--config", "config.yaml"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("Warning"),
        "the generator dropped something:\n{text}"
    );
    // Every route that answers JSON of a documented shape gets a model, not `Any`.
    let api = dir.join("gen/api");
    let mut checked = 0;
    for group in std::fs::read_dir(&api).unwrap() {
        let group = group.unwrap().path();
        if !group.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&group).unwrap() {
            let path = file.unwrap().path();
            let code = std::fs::read_to_string(&path).unwrap();
            let Some(at) = code.find("\ndef sync(") else {
                continue;
            };
            let answer = code[at..].lines().find(|l| l.contains("->")).unwrap_or("");
            let route = code.lines().find(|l| l.contains("\"url\":")).unwrap_or("");
            // Server-Sent Events are a stream, not a JSON body.
            if route.contains("/stream/") || route.contains("/events") {
                continue;
            }
            assert!(
                !answer.contains("Any"),
                "{}: {answer} ({route})",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} routes checked");
    // The sink types and the pipeline answer are models of their own.
    for model in [
        "pipeline_view.py",
        "sink_type.py",
        "sink_field.py",
        "webhook_config.py",
    ] {
        assert!(
            dir.join("gen/models").join(model).exists(),
            "no model {model}"
        );
    }
}
