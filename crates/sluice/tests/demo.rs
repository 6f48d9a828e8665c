//! `sluice demo` (the README's first command runs it): a throw-away PostgreSQL, a server
//! with the console and a demo pipeline, changes on standard output, all gone at exit.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::server::call;
use support::wait_until;

#[test]
fn the_demo_streams_changes_and_serves_the_console_with_a_token_to_sign_in() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["demo", "--seconds", "20"])
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = wait_until(Duration::from_secs(120), "the console's address", || {
        rx.try_recv()
            .ok()
            .filter(|l| l.contains("the console is at"))
    })
    .unwrap();
    // "the console is at http://ADDR/ ; sign in with TOKEN"
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap()
        .to_string();
    let token = line.rsplit(' ').next().unwrap().to_string();
    let (code, page) = call(&addr, "GET", "/", None, None);
    assert_eq!(code, 200);
    assert!(page
        .as_str()
        .unwrap_or("")
        .contains("<title>Sluice</title>"));
    let pipelines = wait_until(Duration::from_secs(60), "the demo pipeline", || {
        let (code, v) = call(&addr, "GET", "/v1/pipelines", Some(&token), None);
        (code == 200 && v["pipelines"][0]["name"] == "demo").then_some(v)
    })
    .unwrap();
    assert_eq!(pipelines["pipelines"][0]["sinks"][1]["type"], "sse");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let changes = String::from_utf8_lossy(&out.stdout);
    let first: serde_json::Value = serde_json::from_str(changes.lines().next().unwrap()).unwrap();
    assert_eq!(first["table"], "orders");
}
