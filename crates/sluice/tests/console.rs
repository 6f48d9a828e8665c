//! The web console in a real Chromium (Debian's `chromium`, driven by Playwright for
//! Python from the test tools' virtualenv) against a real `sluice server` and PostgreSQL.
//! The browser checks are in `console/console_test.py`; this test makes what they need.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::server::{tool, Server};
use support::{wait_until, PgServer};

#[test]
fn the_console_signs_in_shows_pipelines_live_and_offers_only_what_the_token_may_do() {
    let pg = PgServer::builder()
        .hba("host all shopper 127.0.0.1/32 scram-sha-256")
        .start()
        .unwrap();
    pg.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, v text); CREATE TABLE notes (v text);
         CREATE TABLE tickets (id int PRIMARY KEY, v int NOT NULL);
         CREATE TABLE extras (id int PRIMARY KEY, v text); INSERT INTO extras VALUES (1, 'a'), (2, 'b'), (3, 'c');
         SET password_encryption = 'scram-sha-256';
         CREATE ROLE shopper LOGIN SUPERUSER REPLICATION PASSWORD 'shop-secret';",
    )
    .unwrap();
    let redis = sluice_testkit::RedisServer::start().unwrap();
    // A webhook receiver that refuses ticket 42 until the browser has seen it parked.
    let rx = std::sync::Arc::new(sluice_testkit::WebhookReceiver::start(5).unwrap());
    rx.set(sluice_testkit::Behaviour {
        fail_matching: vec!["\"key\":{\"id\":42}".into()],
        ..Default::default()
    });
    let server = Server::new();
    let admin = server.admin_token();
    let out = server.dir.path().join("orders.jsonl");
    let config = json!({
        "pipeline": {"name": "shop"},
        "source": {"url": pg.url("postgres", "postgres"), "tables": ["public.orders"], "status_interval_secs": 1},
        "sinks": [{"name": "out", "type": "file", "path": out}, {"name": "feed", "type": "sse"}]
    });
    let (code, v) = server.call("POST", "/v1/pipelines", Some(&admin), Some(&config));
    assert_eq!(code, 201, "{v}\n{}", server.logs());
    server.wait_state(&admin, "shop", "running");
    let hooks = json!({
        "pipeline": {"name": "hooks"},
        "source": {"url": pg.url("postgres", "postgres"), "tables": ["public.tickets"], "status_interval_secs": 1},
        "sinks": [{"name": "hook", "type": "webhook", "url": format!("{}/hook", rx.url()), "secret": "s3",
                   "delivery": {"max_attempts": 2, "retry_initial_ms": 10, "retry_max_ms": 50}}]
    });
    let (code, v) = server.call("POST", "/v1/pipelines", Some(&admin), Some(&hooks));
    assert_eq!(code, 201, "{v}\n{}", server.logs());
    server.wait_state(&admin, "hooks", "running");
    let read = server.token(&admin, "dashboard", json!({"kind": "read"}));

    // Screenshots go to docs/ when asked (SLUICE_SCREENSHOTS=docs), else beside the test.
    let shots = match std::env::var("SLUICE_SCREENSHOTS").as_deref() {
        Ok("docs") => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs"),
        _ => server.dir.path().join("screenshots"),
    };
    std::fs::create_dir_all(&shots).unwrap();
    // The browser asks for the receiver to heal by making this file.
    let heal = server.dir.path().join("heal");
    let healer = {
        let (heal, rx) = (heal.clone(), rx.clone());
        std::thread::spawn(move || {
            let healed = wait_until(Duration::from_secs(300), "the browser to ask", || {
                heal.exists().then_some(())
            });
            if healed.is_ok() {
                rx.set(sluice_testkit::Behaviour::default());
                // Said back by removing the file.
                let _ = std::fs::remove_file(&heal);
            }
        })
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console/console_test.py");
    let mut child = Command::new(tool("python"))
        .arg(&script)
        .env("SLUICE_URL", format!("http://{}", server.addr()))
        .env("SLUICE_ADMIN_TOKEN", &admin)
        .env("SLUICE_READ_TOKEN", &read)
        .env("SLUICE_PG_URL", pg.url("postgres", "postgres"))
        .env("SLUICE_PSQL", sluice_testkit::pg_bin("psql"))
        .env("SLUICE_PG_PORT", pg.port().to_string())
        .env("SLUICE_REDIS_URL", redis.url())
        .env("SLUICE_REDIS_PORT", redis.port().to_string())
        .env("SLUICE_SCREENSHOTS", &shots)
        .env("SLUICE_HEAL_FILE", &heal)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_until(Duration::from_secs(300), "the browser checks", || {
        child.try_wait().unwrap()
    });
    if status.is_err() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        status.is_ok() && out.status.success(),
        "{text}\nscreenshots in {}\n{}",
        shots.display(),
        server.logs()
    );
    assert!(
        text.contains("ok: a_read_only_token_sees_no_write_controls"),
        "{text}"
    );
    // Ticket 42's records, redriven from the waiting-room page, arrived in order.
    healer.join().unwrap();
    let got: Vec<i64> = rx
        .accepted()
        .iter()
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap())
        .filter(|b| b["key"]["id"] == 42)
        .map(|b| b["after"]["v"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![1, 2, 3], "{text}");
    assert!(!server.logs().contains(&admin), "the token was logged");
}
