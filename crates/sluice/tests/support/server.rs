//! A running `sluice server` for end-to-end tests: its own data dir and configuration
//! directory, the admin token it printed, and one-shot HTTP calls to it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{terminate, wait_until, WAIT};

/// A running `sluice server` with its own data dir and configuration directory.
pub struct Server {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    starts: usize,
    /// Further arguments to `sluice server`.
    pub args: Vec<std::ffi::OsString>,
}

impl Server {
    pub fn new() -> Server {
        Server::with_args(Vec::new())
    }

    pub fn with_args(args: Vec<std::ffi::OsString>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("conf")).unwrap();
        let mut s = Server {
            dir,
            child: None,
            starts: 0,
            args,
        };
        s.start();
        s
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    pub fn start(&mut self) {
        self.starts += 1;
        let _ = std::fs::remove_file(self.data().join("server.addr"));
        let out = std::fs::File::create(self.dir.path().join(format!("out-{}.txt", self.starts)))
            .unwrap();
        let err =
            std::fs::File::create(self.dir.path().join(format!("server-{}.log", self.starts)))
                .unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_sluice"))
                .arg("server")
                .arg("--data-dir")
                .arg(self.data())
                .arg("--config-dir")
                .arg(self.conf())
                .args(["--listen", "127.0.0.1:0"])
                .args(&self.args)
                .env("SLUICE_LOG", "info")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap(),
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c);
        }
    }

    /// SIGKILL: nothing is flushed or confirmed.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stdout(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("out-{n}.txt"))).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.path().join(format!("server-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    pub fn addr(&self) -> String {
        wait_until(WAIT, "the server to listen", || {
            std::fs::read_to_string(self.data().join("server.addr")).ok()
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// The admin token the first start printed.
    pub fn admin_token(&self) -> String {
        wait_until(WAIT, "the admin token", || {
            let out = self.stdout(1);
            out.lines()
                .find_map(|l| {
                    l.strip_prefix("admin token (shown once; it is stored only as a hash): ")
                })
                .map(str::to_owned)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        call(&self.addr(), method, path, token, body)
    }

    /// A new token of `scope` (as the API takes it), made with `admin`; its secret.
    pub fn token(&self, admin: &str, name: &str, scope: Value) -> String {
        let (code, v) = self.call(
            "POST",
            "/v1/tokens",
            Some(admin),
            Some(&serde_json::json!({"name": name, "scope": scope})),
        );
        assert_eq!(code, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// Waits until pipeline `name` is in `state`; returns its view.
    pub fn wait_state(&self, token: &str, name: &str, state: &str) -> Value {
        wait_until(WAIT, &format!("pipeline {name} to be {state}"), || {
            let (code, v) = self.call("GET", &format!("/v1/pipelines/{name}"), Some(token), None);
            (code == 200
                && v["state"] == state
                && (state != "running" || v["status"]["streaming"] == true))
                .then_some(v)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTP/1.0 request; the status and the JSON body (or the text as a string).
pub fn call(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    (code, v)
}

/// A program of the test tools' virtualenv (schemathesis, python with Playwright), which
/// `scripts/install-deps.sh --tests` makes.
pub fn tool(name: &str) -> PathBuf {
    let tools = std::env::var_os("SLUICE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/sluice-tools")
        });
    let bin = tools.join("venv/bin").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `bash scripts/install-deps.sh --tests`",
        bin.display()
    );
    bin
}
