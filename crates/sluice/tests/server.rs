//! `sluice server` end to end: pipelines created, paused, resumed and deleted through the
//! management API and from a configuration directory, in one process against a real
//! PostgreSQL; tokens and their scopes; the registry surviving a restart.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::server::{call, Server};
use support::{read_records, wait_until, PgServer, WAIT};

fn pipeline_json(pg: &PgServer, name: &str, table: &str, out: &Path) -> Value {
    json!({
        "pipeline": {"name": name},
        "source": {
            "url": pg.url_with_password("postgres", "hunter2", "postgres"),
            "tables": [table],
            "status_interval_secs": 1
        },
        "sinks": [{"name": "out", "type": "file", "path": out}]
    })
}

/// Whether the slot exists, and whether it is active.
fn slot(pg: &PgServer, slot: &str) -> Option<bool> {
    let out = pg
        .psql(&format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .unwrap();
    match out.trim() {
        "" => None,
        a => Some(a == "t"),
    }
}

fn wait_rows(path: &Path, n: usize, server: &Server) -> Vec<Value> {
    wait_until(WAIT, &format!("{n} records in {}", path.display()), || {
        let r = read_records(path);
        (r.len() >= n).then_some(r)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()))
}

#[test]
fn the_server_runs_pipelines_from_the_api_and_from_files() {
    let pg = PgServer::start().unwrap();
    pg.psql(
        "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text);",
    )
    .unwrap();
    let mut server = Server::new();
    let admin = server.admin_token();
    let out_a = server.dir.path().join("a.jsonl");

    // No token, a wrong one: refused before anything runs.
    assert_eq!(server.call("GET", "/v1/pipelines", None, None).0, 401);
    assert_eq!(
        server
            .call("GET", "/v1/pipelines", Some("sluice_wrong"), None)
            .0,
        401
    );

    // Bad input: 4xx with what is wrong, never a 500.
    let (code, v) = server.call("POST", "/v1/pipelines", Some(&admin), None);
    assert_eq!(code, 400, "{v}");
    let mut bad = pipeline_json(&pg, "pa", "public.a", &out_a);
    bad["pipeline"]["data_dir"] = json!("/tmp/elsewhere");
    let (code, v) = server.call("POST", "/v1/pipelines", Some(&admin), Some(&bad));
    assert_eq!(code, 400, "{v}");
    assert!(
        v["problems"].to_string().contains("pipeline.data_dir"),
        "{v}"
    );
    let missing = pipeline_json(&pg, "pm", "public.nope", &out_a);
    let (code, v) = server.call("POST", "/v1/pipelines", Some(&admin), Some(&missing));
    assert_eq!(code, 422, "{v}");
    let failed: Vec<&Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["ok"] == false)
        .collect();
    assert!(
        !failed.is_empty() && failed.iter().all(|f| f["fix"].is_string()),
        "{v}"
    );

    // Created through the API: it streams.
    let (code, v) = server.call(
        "POST",
        "/v1/pipelines",
        Some(&admin),
        Some(&pipeline_json(&pg, "pa", "public.a", &out_a)),
    );
    assert_eq!(code, 201, "{v}\n{}", server.logs());
    assert_eq!(v["slot"], "sluice_pa");
    let (code, v) = server.call(
        "POST",
        "/v1/pipelines",
        Some(&admin),
        Some(&pipeline_json(&pg, "pa", "public.a", &out_a)),
    );
    assert_eq!(code, 409, "{v}");
    server.wait_state(&admin, "pa", "running");
    pg.psql("INSERT INTO a VALUES (1, 'one')").unwrap();
    assert_eq!(wait_rows(&out_a, 1, &server)[0]["after"]["v"], "one");

    // Its configuration comes back without the password.
    let (_, v) = server.call("GET", "/v1/pipelines/pa", Some(&admin), None);
    let text = v.to_string();
    assert!(
        !text.contains("hunter2") && text.contains("<redacted>"),
        "{text}"
    );
    // On disk, the registry holds it sealed under the server's key.
    let stored = std::fs::read_to_string(server.data().join("registry/pa.json")).unwrap();
    assert!(
        !stored.contains("hunter2") && stored.contains("sluice-sealed:v1:"),
        "{stored}"
    );

    // A file in the configuration directory is a pipeline too.
    let out_b = server.dir.path().join("b.jsonl");
    let file_b = server.conf().join("pb.toml");
    std::fs::write(
        &file_b,
        format!(
            "[pipeline]\nname = \"pb\"\n[source]\nurl = {:?}\ntables = [\"public.b\"]\nstatus_interval_secs = 1\n[[sinks]]\nname = \"out\"\ntype = \"file\"\npath = {:?}\n",
            pg.url("postgres", "postgres"),
            out_b
        ),
    )
    .unwrap();
    let v = server.wait_state(&admin, "pb", "running");
    assert_eq!(v["origin"]["kind"], "file", "{v}");
    pg.psql("INSERT INTO b VALUES (1, 'bee')").unwrap();
    assert_eq!(wait_rows(&out_b, 1, &server)[0]["after"]["v"], "bee");
    // Metrics are one series per pipeline.
    wait_until(WAIT, "each pipeline's series", || {
        let (_, text) = server.call("GET", "/metrics", None, None);
        let text = text.as_str()?.to_owned();
        ["pa", "pb"]
            .iter()
            .all(|p| {
                text.contains(&format!(
                    "sluice_sink_delivered_records_total{{pipeline=\"{p}\",sink=\"out\"}}"
                )) && text.contains(&format!("sluice_log_bytes{{pipeline=\"{p}\"}}"))
            })
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{:?}", server.call("GET", "/metrics", None, None)));
    let (code, v) = server.call("DELETE", "/v1/pipelines/pb", Some(&admin), None);
    assert_eq!(code, 409, "a file's pipeline changes through its file: {v}");

    // Pause releases the slot; changes wait in it and arrive on resume.
    let (code, v) = server.call("POST", "/v1/pipelines/pa/pause", Some(&admin), None);
    assert_eq!((code, v["state"].as_str()), (200, Some("paused")), "{v}");
    wait_until(WAIT, "the slot to be released", || {
        (slot(&pg, "sluice_pa") == Some(false)).then_some(())
    })
    .unwrap();
    pg.psql("INSERT INTO a VALUES (2, 'two')").unwrap();
    // A restart keeps the registry, the pause and the tokens, and prints no new token.
    // It also rotates the secret key: the old key opens the registry's secrets once, and
    // they are sealed again under the new one.
    server.stop();
    let old_key = server.dir.path().join("old.key");
    std::fs::rename(server.data().join("secret.key"), &old_key).unwrap();
    let new_key = server.dir.path().join("new.key");
    std::fs::write(&new_key, "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\n").unwrap();
    let sealed_before = std::fs::read_to_string(server.data().join("registry/pa.json")).unwrap();
    server.args = vec![
        "--secret-key-file".into(),
        new_key.clone().into(),
        "--previous-secret-key-file".into(),
        old_key.into(),
    ];
    server.start();
    server.wait_state(&admin, "pa", "paused");
    let sealed_after = std::fs::read_to_string(server.data().join("registry/pa.json")).unwrap();
    assert_ne!(
        sealed_before, sealed_after,
        "sealed again under the new key"
    );
    assert!(!sealed_after.contains("hunter2"), "{sealed_after}");
    assert!(
        !server.data().join("secret.key").exists(),
        "no key was made"
    );
    server.wait_state(&admin, "pb", "running");
    assert!(
        !server.stdout(2).contains("admin token"),
        "{}",
        server.stdout(2)
    );
    assert_eq!(read_records(&out_a).len(), 1, "nothing flows while paused");
    let (code, _) = server.call("POST", "/v1/pipelines/pa/resume", Some(&admin), None);
    assert_eq!(code, 200);
    assert_eq!(wait_rows(&out_a, 2, &server)[1]["after"]["v"], "two");

    // A read-only token reads and changes nothing.
    let read = server.token(&admin, "dashboard", json!({"kind": "read"}));
    let (code, v) = server.call("GET", "/v1/pipelines", Some(&read), None);
    assert_eq!(code, 200);
    assert_eq!(v["pipelines"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(
        server
            .call("POST", "/v1/pipelines/pa/pause", Some(&read), None)
            .0,
        403
    );
    assert_eq!(server.call("GET", "/v1/tokens", Some(&read), None).0, 403);
    let (_, v) = server.call("GET", "/v1/tokens", Some(&admin), None);
    assert!(
        !v.to_string().contains(&read),
        "tokens are listed without secrets: {v}"
    );
    assert!(!std::fs::read_to_string(server.data().join("tokens.json"))
        .unwrap()
        .contains(&read));
    assert!(
        !server.logs().contains(&read) && !server.logs().contains(&admin),
        "tokens never logged"
    );

    // The audit log has each action with its token's id, also the refused one.
    assert_eq!(server.call("GET", "/v1/audit", Some(&read), None).0, 403);
    let (code, v) = server.call("GET", "/v1/audit?limit=1000", Some(&admin), None);
    assert_eq!(code, 200, "{v}");
    let events = v["events"].as_array().unwrap();
    let (_, tokens) = server.call("GET", "/v1/tokens", Some(&admin), None);
    let id_of = |name: &str| {
        tokens["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| t["id"].clone())
            .unwrap()
    };
    let has = |action: &str, target: &str, status: u16, token: &Value| {
        events.iter().any(|e| {
            e["action"] == action
                && e["target"] == target
                && e["status"] == status
                && &e["token"] == token
        })
    };
    let admin_id = id_of("admin (created at first start)");
    assert!(has("POST /v1/pipelines", "pa", 201, &admin_id), "{v}");
    assert!(
        has("POST /v1/pipelines/{pipeline}/pause", "pa", 200, &admin_id),
        "{v}"
    );
    assert!(
        has(
            "POST /v1/pipelines/{pipeline}/pause",
            "pa",
            403,
            &id_of("dashboard")
        ),
        "{v}"
    );
    assert!(
        has(
            "POST /v1/tokens",
            id_of("dashboard").as_str().unwrap(),
            201,
            &admin_id
        ),
        "{v}"
    );
    let text = v.to_string();
    assert!(
        !text.contains(&read) && !text.contains(&admin) && !text.contains("hunter2"),
        "{text}"
    );

    // An update that adds a table backfills it while the pipeline keeps streaming.
    pg.psql(
        "CREATE TABLE c (id int PRIMARY KEY, v text); INSERT INTO c VALUES (1, 'c1'), (2, 'c2');",
    )
    .unwrap();
    let mut both = pipeline_json(&pg, "pa", "public.a", &out_a);
    both["source"]["tables"] = json!(["public.a", "public.c"]);
    let (code, v) = server.call("PUT", "/v1/pipelines/pa", Some(&admin), Some(&both));
    assert_eq!(code, 200, "{v}\n{}", server.logs());
    let (code, v) = server.call("PUT", "/v1/pipelines/pb", Some(&admin), Some(&both));
    assert_eq!(code, 400, "a pipeline cannot be renamed: {v}");
    wait_until(WAIT, "table c's rows", || {
        let recs = read_records(&out_a);
        (recs.iter().filter(|r| r["table"] == "c").count() >= 2).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
    // Its progress is in the pipeline's status.
    wait_until(WAIT, "the backfill's progress", || {
        let (_, v) = server.call("GET", "/v1/pipelines/pa", Some(&admin), None);
        v["status"]["copies"]
            .as_array()?
            .iter()
            .any(|c| {
                c["table"] == "public.c"
                    && c["kind"] == "backfill"
                    && c["rows"] == 2
                    && c["finished"] == true
            })
            .then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{:?}",
            server.call("GET", "/v1/pipelines/pa", Some(&admin), None)
        )
    });
    pg.psql("INSERT INTO a VALUES (3, 'three')").unwrap();
    wait_until(WAIT, "a row after the update", || {
        read_records(&out_a)
            .iter()
            .any(|r| r["after"]["v"] == "three")
            .then_some(())
    })
    .unwrap();

    // Delete: the slot and publication go, and the pipeline's data.
    let (code, v) = server.call("DELETE", "/v1/pipelines/pa", Some(&admin), None);
    assert_eq!(code, 200, "{v}\n{}", server.logs());
    assert_eq!(slot(&pg, "sluice_pa"), None);
    assert!(!server.data().join("pipelines/pa").exists());
    assert_eq!(
        server.call("GET", "/v1/pipelines/pa", Some(&admin), None).0,
        404
    );

    // A removed file stops its pipeline and keeps its slot (a file can vanish by mistake).
    std::fs::remove_file(&file_b).unwrap();
    wait_until(WAIT, "pb to go", || {
        (server.call("GET", "/v1/pipelines/pb", Some(&admin), None).0 == 404).then_some(())
    })
    .unwrap();
    assert!(slot(&pg, "sluice_pb").is_some());
    server.stop();
}

#[test]
fn consume_tokens_open_one_sink_and_nothing_else() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .unwrap();
    let server = Server::new();
    let admin = server.admin_token();
    let config = json!({
        "pipeline": {"name": "feeds"},
        "source": {"url": pg.url("postgres", "postgres"), "tables": ["public.t"], "status_interval_secs": 1},
        "sinks": [{"name": "feed", "type": "sse"}, {"name": "other", "type": "sse"}]
    });
    let (code, v) = server.call("POST", "/v1/pipelines", Some(&admin), Some(&config));
    assert_eq!(code, 201, "{v}\n{}", server.logs());
    server.wait_state(&admin, "feeds", "running");
    let scope = |sink: &str| json!({"name": "web", "scope": {"kind": "consume", "pipeline": "feeds", "sink": sink}});
    let (code, v) = server.call("POST", "/v1/tokens", Some(&admin), Some(&scope("nope")));
    assert_eq!(code, 400, "{v}");
    let (code, v) = server.call("POST", "/v1/tokens", Some(&admin), Some(&scope("feed")));
    assert_eq!(code, 201, "{v}");
    let consume = v["token"].as_str().unwrap().to_string();

    // The management API is not the consumer's.
    assert_eq!(
        server.call("GET", "/v1/pipelines", Some(&consume), None).0,
        403
    );
    let addr = server.addr();
    let events = "/v1/pipelines/feeds/sinks/feed/events";
    assert_eq!(
        call(
            &addr,
            "GET",
            &format!("/v1/pipelines/feeds/sinks/other/events?access_token={consume}"),
            None,
            None
        )
        .0,
        403
    );

    // Its own sink, with the token as a query parameter (as a browser's EventSource sends it).
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {events}?access_token={consume} HTTP/1.0\r\nHost: {addr}\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains(" 200 "), "{line}");
    pg.psql("INSERT INTO t VALUES (7, 'seven')").unwrap();
    let data = loop {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "the stream ended\n{}",
            server.logs()
        );
        if let Some(d) = line.strip_prefix("data: ") {
            break serde_json::from_str::<Value>(d).unwrap();
        }
    };
    assert_eq!(data["after"]["v"], "seven");

    // Revoked: refused at once.
    let (_, v) = server.call("GET", "/v1/tokens", Some(&admin), None);
    let id = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "web")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        server
            .call("DELETE", &format!("/v1/tokens/{id}"), Some(&admin), None)
            .0,
        200
    );
    assert_eq!(
        call(
            &addr,
            "GET",
            &format!("{events}?access_token={consume}"),
            None,
            None
        )
        .0,
        401
    );
    // The last admin token cannot be revoked.
    let admin_id = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["scope"]["kind"] == "admin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        server
            .call(
                "DELETE",
                &format!("/v1/tokens/{admin_id}"),
                Some(&admin),
                None
            )
            .0,
        409
    );

    // Allow-lists apply at once. A change that would shut out its maker is refused.
    let lists = |m: Value, c: Value| json!({"management": m, "consumers": c});
    let (code, v) = server.call(
        "PUT",
        "/v1/access",
        Some(&admin),
        Some(&lists(json!(["10.0.0.0/8"]), Value::Null)),
    );
    assert_eq!(code, 409, "{v}");
    let (code, v) = server.call(
        "PUT",
        "/v1/access",
        Some(&admin),
        Some(&lists(json!(["10.0.0.0/33"]), Value::Null)),
    );
    assert_eq!(code, 400, "{v}");
    let (code, v) = server.call(
        "PUT",
        "/v1/access",
        Some(&admin),
        Some(&lists(json!(["127.0.0.0/8", "::1"]), json!(["10.0.0.0/8"]))),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        server.call("GET", "/v1/pipelines", Some(&admin), None).0,
        200
    );
    let (code, v) = call(
        &addr,
        "GET",
        &format!("{events}?access_token={admin}"),
        None,
        None,
    );
    assert_eq!(code, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("consumers allow-list"),
        "{v}"
    );
    let mut forced = lists(json!(["10.0.0.0/8"]), Value::Null);
    forced["force"] = json!(true);
    assert_eq!(
        server
            .call("PUT", "/v1/access", Some(&admin), Some(&forced))
            .0,
        200
    );
    assert_eq!(
        server.call("GET", "/v1/pipelines", Some(&admin), None).0,
        403
    );
    assert_eq!(server.call("GET", "/metrics", None, None).0, 403);
    assert_eq!(server.call("GET", "/healthz", None, None).0, 200);
}

/// The API fuzzer schemathesis (installed by `scripts/install-deps.sh --tests`).
#[test]
fn a_fuzzer_driven_by_the_openapi_document_finds_no_server_error() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE f (id int PRIMARY KEY, v text)")
        .unwrap();
    let server = Server::new();
    let admin = server.admin_token();
    let out = server.dir.path().join("f.jsonl");
    let (code, v) = server.call(
        "POST",
        "/v1/pipelines",
        Some(&admin),
        Some(&pipeline_json(&pg, "fz", "public.f", &out)),
    );
    assert_eq!(code, 201, "{v}");
    let addr = server.addr();
    // Every check but one: a schema-valid configuration may still be refused (its source
    // must exist), which is what `positive_data_acceptance` counts as a failure.
    let mut child = Command::new(support::server::tool("schemathesis"))
        .args(["run", &format!("http://{addr}/v1/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {admin}")])
        .args([
            "--max-examples",
            "50",
            "--generation-deterministic",
            "--workers",
            "1",
        ])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        // Fuzzing the allow-lists with force: true shuts the fuzzer out of the rest
        // (consume_tokens_open_one_sink_and_nothing_else tests that route).
        .args(["--exclude-name", "PUT /v1/access"])
        // The live views stream until the server stops: no answer for the fuzzer to wait
        // for (the console's browser test uses them).
        .args(["--exclude-path-regex", "^/v1/stream/"])
        .args(["--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_until(Duration::from_secs(600), "the fuzzer to finish", || {
        child.try_wait().unwrap()
    })
    .unwrap_or_else(|e| {
        let _ = child.kill();
        panic!("{e}")
    });
    let mut report = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut report)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut report)
        .unwrap();
    assert!(status.success(), "{report}\n{}", server.logs());
    assert!(!server.logs().contains("panicked"), "{}", server.logs());
    // Still serving. (Its stateful phase follows the API: it may delete the pipeline, or
    // create an admin token and revoke this one.)
    assert_eq!(server.call("GET", "/healthz", None, None).0, 200);
}

#[test]
fn sources_and_sinks_are_checked_before_a_pipeline_exists() {
    let pg = PgServer::builder()
        .hba("host all app 127.0.0.1/32 scram-sha-256")
        .start()
        .unwrap();
    pg.psql(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE app LOGIN REPLICATION PASSWORD 'app-secret';
         CREATE TABLE keyed (id int PRIMARY KEY, v text NOT NULL);
         CREATE TABLE loose (v text);
         ALTER TABLE loose REPLICA IDENTITY FULL;
         GRANT SELECT ON keyed TO app;
         INSERT INTO keyed SELECT g, 'x' FROM generate_series(1, 100) g; ANALYZE keyed;",
    )
    .unwrap();
    let redis = sluice_testkit::RedisServer::start().unwrap();
    let server = Server::new();
    let admin = server.admin_token();

    // Discovery: keys, identities, estimates, and what the role may read.
    let url = pg.url_with_password("app", "app-secret", "postgres");
    let (code, v) = server.call(
        "POST",
        "/v1/sources/discover",
        Some(&admin),
        Some(&json!({ "url": url })),
    );
    assert_eq!(code, 200, "{v}");
    let tables = v["tables"].as_array().unwrap();
    let keyed = tables.iter().find(|t| t["table"] == "keyed").unwrap();
    assert_eq!(keyed["primary_key"], true);
    assert_eq!(keyed["readable"], true);
    assert_eq!(keyed["estimated_rows"], 100);
    assert_eq!(
        keyed["columns"][0],
        json!({"name": "id", "type": "integer", "nullable": false, "primary_key": true})
    );
    let loose = tables.iter().find(|t| t["table"] == "loose").unwrap();
    assert_eq!(
        (
            loose["primary_key"].clone(),
            loose["replica_identity"].clone(),
            loose["readable"].clone()
        ),
        (json!(false), json!("full"), json!(false))
    );
    assert!(!v.to_string().contains("app-secret"));

    // A wrong password: a failed check with its fix, never the password.
    let wrong = pg.url_with_password("app", "not-it", "postgres");
    let (code, v) = server.call(
        "POST",
        "/v1/sources/test",
        Some(&admin),
        Some(&json!({ "url": wrong })),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["ok"], false, "{v}");
    let failed = &v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["ok"] == false)
        .unwrap()
        .clone();
    assert!(
        failed["fix"].as_str().unwrap().contains("password"),
        "{failed}"
    );
    assert!(!v.to_string().contains("not-it"));
    // The role may not create the publication until it owns the table: said, with the fix.
    let req = json!({ "url": url, "tables": ["public.keyed"] });
    let (code, v) = server.call("POST", "/v1/sources/test", Some(&admin), Some(&req));
    assert_eq!((code, v["ok"].clone()), (200, json!(false)), "{v}");
    let failed: Vec<&Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["ok"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{v}");
    assert!(
        failed[0]["fix"]
            .as_str()
            .unwrap()
            .contains("CREATE PUBLICATION"),
        "{v}"
    );
    pg.psql("ALTER TABLE keyed OWNER TO app; GRANT CREATE ON DATABASE postgres TO app")
        .unwrap();
    let (code, v) = server.call("POST", "/v1/sources/test", Some(&admin), Some(&req));
    assert_eq!((code, v["ok"].clone()), (200, json!(true)), "{v}");

    // Sinks: a Redis that answers, one that does not.
    let sink = |u: &str| json!({"sink": {"name": "cache", "type": "redis", "url": u}, "tables": ["public.keyed"]});
    let (code, v) = server.call(
        "POST",
        "/v1/sinks/verify",
        Some(&admin),
        Some(&sink(&redis.url())),
    );
    assert_eq!((code, v["ok"].clone()), (200, json!(true)), "{v}");
    let (code, v) = server.call(
        "POST",
        "/v1/sinks/verify",
        Some(&admin),
        Some(&sink("redis://127.0.0.1:1")),
    );
    assert_eq!((code, v["ok"].clone()), (200, json!(false)), "{v}");
    let (code, v) = server.call(
        "POST",
        "/v1/sinks/verify",
        Some(&admin),
        Some(&json!({"sink": {"name": "x", "type": "nope"}})),
    );
    assert_eq!(code, 400, "{v}");
}

/// One request by curl, trusting only `ca`: the status and body, or curl's error.
fn curl(ca: &Path, url: &str, token: &str) -> Result<(u16, String), String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(ca)
        .args(["-H", &format!("Authorization: Bearer {token}"), url])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap();
    Ok((code.parse().unwrap(), body.to_string()))
}

#[test]
fn https_serves_the_api_and_takes_a_new_certificate_without_a_restart() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .unwrap();
    let certs = tempfile::tempdir().unwrap();
    let one = sluice_testkit::make_certs(certs.path(), "one").unwrap();
    let two = sluice_testkit::make_certs(certs.path(), "two").unwrap();
    let (cert_one, key_one, ca_one) = (one.cert, one.key, one.ca);
    let (cert_two, key_two, ca_two) = (two.cert, two.key, two.ca);
    let (cert, key) = (
        certs.path().join("server.crt"),
        certs.path().join("server.key"),
    );
    std::fs::copy(&cert_one, &cert).unwrap();
    std::fs::copy(&key_one, &key).unwrap();
    let server = Server::with_args(vec![
        "--tls-cert".into(),
        cert.clone().into(),
        "--tls-key".into(),
        key.clone().into(),
    ]);
    let admin = server.admin_token();
    let base = format!("https://{}", server.addr());

    assert_eq!(
        curl(&ca_one, &format!("{base}/healthz"), &admin),
        Ok((200, "ok\n".into()))
    );
    // Plain HTTP gets no answer from an HTTPS listener.
    let plain = curl(
        &ca_one,
        &format!("http://{}/healthz", server.addr()),
        &admin,
    );
    assert!(plain.is_err(), "{plain:?}");

    // A pipeline runs while the certificate changes under the server.
    let out = server.dir.path().join("t.jsonl");
    std::fs::write(
        server.conf().join("pt.toml"),
        format!(
            "[pipeline]\nname = \"pt\"\n[source]\nurl = {:?}\ntables = [\"public.t\"]\nstatus_interval_secs = 1\n[[sinks]]\nname = \"out\"\ntype = \"file\"\npath = {:?}\n",
            pg.url("postgres", "postgres"),
            out
        ),
    )
    .unwrap();
    wait_until(WAIT, "pipeline pt to stream, over HTTPS", || {
        let (code, body) = curl(&ca_one, &format!("{base}/v1/pipelines/pt"), &admin).ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v["status"]["streaming"] == true).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
    pg.psql("INSERT INTO t VALUES (1, 'before')").unwrap();
    wait_rows(&out, 1, &server);

    // The new pair replaces the old one, key first: until both are in place the server
    // keeps the certificate it has.
    std::fs::copy(&key_two, &key).unwrap();
    std::fs::copy(&cert_two, &cert).unwrap();
    wait_until(WAIT, "the new certificate to be served", || {
        curl(&ca_two, &format!("{base}/healthz"), &admin).ok()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
    let old = curl(&ca_one, &format!("{base}/healthz"), &admin);
    assert!(old.is_err(), "the old certificate is still served: {old:?}");

    // The pipeline never stopped.
    pg.psql("INSERT INTO t VALUES (2, 'after')").unwrap();
    assert_eq!(wait_rows(&out, 2, &server)[1]["after"]["v"], "after");
    let logs = server.logs();
    assert_eq!(logs.matches("pipeline started").count(), 1, "{logs}");
    assert!(logs.contains("TLS certificate reloaded"), "{logs}");
    assert!(!logs.contains(&admin), "the token was logged");
}

/// Every route of the OpenAPI document with its parameters filled in: (method, path).
fn documented_routes(server: &Server) -> Vec<(String, String)> {
    let (code, doc) = server.call("GET", "/v1/openapi.json", None, None);
    assert_eq!(code, 200);
    let mut out = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let path = path
            .replace("{pipeline}", "hooks")
            .replace("{name}", "hook")
            .replace("{id}", "nosuchtoken");
        for method in ops.as_object().unwrap().keys() {
            out.push((method.to_uppercase(), path.clone()));
        }
    }
    assert!(out.len() > 20, "{out:?}");
    out
}

#[test]
fn every_route_enforces_its_scope_and_read_tokens_see_no_values() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .unwrap();
    let rx = sluice_testkit::WebhookReceiver::start(3).unwrap();
    rx.set(sluice_testkit::Behaviour {
        fail_matching: vec!["\"id\":1".into()],
        ..Default::default()
    });
    let server = Server::new();
    let admin = server.admin_token();
    let config = json!({
        "pipeline": {"name": "hooks"},
        "source": {"url": pg.url("postgres", "postgres"), "tables": ["public.t"], "status_interval_secs": 1},
        "sinks": [{"name": "hook", "type": "webhook", "url": format!("{}/hook", rx.url()),
                   "secret": "whsec-do-not-show",
                   "delivery": {"max_attempts": 2, "retry_initial_ms": 10, "retry_max_ms": 50}}]
    });
    let (code, v) = server.call("POST", "/v1/pipelines", Some(&admin), Some(&config));
    assert_eq!(code, 201, "{v}\n{}", server.logs());
    server.wait_state(&admin, "hooks", "running");
    let token = |scope: Value| server.token(&admin, "t", scope);
    let read = token(json!({"kind": "read"}));
    let consume = token(json!({"kind": "consume", "pipeline": "hooks", "sink": "hook"}));

    // Without a token, every route but the document itself is refused; a consume token
    // reaches only its sink's routes; a read token changes nothing.
    for (method, path) in documented_routes(&server) {
        let open = path == "/v1/openapi.json";
        let (code, v) = server.call(&method, &path, None, None);
        assert_eq!(
            code == 401,
            !open,
            "{method} {path} without a token: {code} {v}"
        );
        // Any token may ask who it is (the console's sign-in).
        let mine = path.starts_with("/v1/pipelines/hooks/sinks/hook/") || path == "/v1/whoami";
        let (code, v) = server.call(&method, &path, Some(&consume), None);
        assert!(
            open || mine || code == 403,
            "{method} {path} with a consume token: {code} {v}"
        );
        if method != "GET" {
            let (code, v) = server.call(&method, &path, Some(&read), Some(&json!({})));
            assert_eq!(code, 403, "{method} {path} with a read token: {v}");
        }
    }

    // A parked key: its records' values are shown to its consumer and the admin, hidden
    // from a read token.
    pg.psql("INSERT INTO t VALUES (1, 'private-value')")
        .unwrap();
    let records = "/v1/pipelines/hooks/sinks/hook/parked/records?key=public.t:%7B%22id%22:1%7D";
    let shown = wait_until(WAIT, "the key to park", || {
        let (code, v) = server.call("GET", records, Some(&consume), None);
        (code == 200 && !v["records"].as_array()?.is_empty()).then_some(v)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
    assert!(shown.to_string().contains("private-value"), "{shown}");
    let (code, hidden) = server.call("GET", records, Some(&read), None);
    assert_eq!(code, 200, "{hidden}");
    assert_eq!(hidden["records"][0]["values_hidden"], true, "{hidden}");
    assert!(!hidden.to_string().contains("private-value"), "{hidden}");
    let (code, parked) = server.call(
        "GET",
        "/v1/pipelines/hooks/sinks/hook/parked",
        Some(&read),
        None,
    );
    assert_eq!(
        (code, parked["keys"][0]["state"].as_str()),
        (200, Some("parked")),
        "{parked}"
    );
    // Reading events is consuming: not for a read token.
    assert_eq!(
        server
            .call(
                "GET",
                "/v1/pipelines/hooks/sinks/hook/events",
                Some(&read),
                None
            )
            .0,
        403
    );
    let logs = server.logs();
    for secret in [
        "private-value",
        "whsec-do-not-show",
        &read,
        &consume,
        &admin,
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
}

/// The distinct `id`s of table `table` in a file sink's output.
fn ids(path: &Path, table: &str) -> std::collections::BTreeSet<i64> {
    read_records(path)
        .iter()
        .filter(|r| r["table"] == table)
        .filter_map(|r| r["after"]["id"].as_i64())
        .collect()
}

#[test]
fn pipelines_are_independent_and_a_kill_9_of_the_server_loses_nothing() {
    let (pg1, pg2) = (PgServer::start().unwrap(), PgServer::start().unwrap());
    for pg in [&pg1, &pg2] {
        pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text)")
            .unwrap();
    }
    let mut server = Server::new();
    let admin = server.admin_token();
    // Two pipelines on the same table of one source, a third on another source.
    let outs = server.dir.path().to_owned();
    let out = |n: &str| outs.join(format!("{n}.jsonl"));
    for (name, pg) in [("one", &pg1), ("two", &pg1), ("three", &pg2)] {
        let mut config = pipeline_json(pg, name, "public.t", &out(name));
        config["source"]["url"] = json!(pg.url("postgres", "postgres"));
        let (code, v) = server.call("POST", "/v1/pipelines", Some(&admin), Some(&config));
        assert_eq!(code, 201, "{v}\n{}", server.logs());
    }
    for name in ["one", "two", "three"] {
        server.wait_state(&admin, name, "running");
    }
    assert_eq!(slot(&pg1, "sluice_one"), Some(true));
    assert_eq!(slot(&pg1, "sluice_two"), Some(true));
    assert_eq!(slot(&pg2, "sluice_three"), Some(true));

    // Rows keep coming into both sources while the server is killed twice.
    const ROWS: i64 = 3000;
    let urls = [
        pg1.url("postgres", "postgres"),
        pg2.url("postgres", "postgres"),
    ];
    let writer = support::insert_batches(urls.to_vec(), ROWS);
    for round in 0..2 {
        wait_until(WAIT, "some rows to arrive", || {
            (ids(&out("three"), "t").len() as i64 > (round + 1) * 400).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
        server.kill9();
        server.start();
    }
    writer.join().unwrap();
    let all: std::collections::BTreeSet<i64> = (1..=ROWS).collect();
    for name in ["one", "two", "three"] {
        wait_until(WAIT, &format!("every row in {name}"), || {
            (ids(&out(name), "t") == all).then_some(())
        })
        .unwrap_or_else(|e| {
            let got = ids(&out(name), "t");
            let missing: Vec<_> = all.difference(&got).take(10).collect();
            panic!("{e}: {name} misses {missing:?}\n{}", server.logs())
        });
    }

    // A stopped source is reported by its pipeline alone; the others keep delivering.
    pg2.stop().unwrap();
    let v = wait_until(WAIT, "pipeline three to report its source down", || {
        let (code, v) = server.call("GET", "/v1/pipelines/three", Some(&admin), None);
        (code == 200 && v["status"]["streaming"] == false).then_some(v)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
    assert_eq!(v["state"], "running", "it retries, it has not failed: {v}");
    pg1.psql("INSERT INTO t VALUES (100000, 'while two is down')")
        .unwrap();
    for name in ["one", "two"] {
        wait_until(WAIT, &format!("{name} to go on"), || {
            ids(&out(name), "t").contains(&100000).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
    }
    let (_, v) = server.call("GET", "/v1/pipelines/one", Some(&admin), None);
    assert_eq!(v["status"]["streaming"], true, "{v}");
    pg2.start_again().unwrap();
    pg2.psql("INSERT INTO t VALUES (100001, 'back')").unwrap();
    wait_until(WAIT, "three to resume", || {
        ids(&out("three"), "t").contains(&100001).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
    // Neither pipeline on the first source saw the other source's row.
    assert!(!ids(&out("one"), "t").contains(&100001));
    server.stop();
}
