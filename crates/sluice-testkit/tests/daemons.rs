//! Redis and NATS servers start privately, answer, survive a restart with their data, and
//! are gone when dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use sluice_testkit::{NatsServer, RedisServer};

#[test]
fn redis_answers_and_keeps_its_data_across_a_crash() {
    let mut a = RedisServer::start().unwrap();
    let b = RedisServer::start().unwrap();
    assert_ne!(a.port(), b.port());
    assert!(a.url().ends_with(&format!(":{}/", a.port())));
    assert_eq!(a.cli(&["SET", "k", "v"]).unwrap(), "OK");
    assert_eq!(b.cli(&["GET", "k"]).unwrap(), "", "servers share nothing");
    a.restart().unwrap();
    assert_eq!(a.cli(&["GET", "k"]).unwrap(), "v");
    a.kill();
    assert!(a.cli(&["PING"]).is_err() || a.cli(&["PING"]).unwrap() != "PONG");
    a.start_again().unwrap();
    assert_eq!(a.cli(&["PING"]).unwrap(), "PONG");
    let port = b.port();
    drop(b);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn nats_runs_jetstream_and_comes_back_on_its_port() {
    let mut n = NatsServer::start().unwrap();
    let info = |port: u16| {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    };
    let line = info(n.port());
    assert!(line.contains("\"jetstream\":true"), "{line}");
    n.restart().unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", n.port())).unwrap();
    s.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap(); // INFO
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "PONG\r\n");
    assert!(n.url().starts_with("nats://127.0.0.1:"));
}
