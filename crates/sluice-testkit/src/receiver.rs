//! A real HTTP/1.1 webhook receiver on a free port that fails, throttles and stalls on
//! demand, and keeps a log of every request with the answer it gave.
//!
//! - One thread per connection, keep-alive honoured (clients pool connections).
//! - [`Behaviour`] is read per request: a random share of 500s (from a seeded
//!   xorshift, so a printed seed reproduces a run), 500 for bodies containing any of
//!   `fail_matching`, 429 with `Retry-After` for the next `throttle` requests, a fixed
//!   `stall` before answering, and a `status` for everything else.
//! - Every request is logged ([`Received`]) with its answer, in the order answered.
//! - Dropping the receiver stops accepting; threads of open connections end with them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the receiver answers.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Share of requests answered 500 at random (0.0-1.0).
    pub fail_rate: f64,
    /// Requests whose body contains any of these are answered 500.
    pub fail_matching: Vec<String>,
    /// The next this many requests are answered 429 with `Retry-After: 1`.
    pub throttle: u32,
    /// Waited before every answer.
    pub stall: Duration,
    /// The answer when nothing above applies.
    pub status: u16,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            fail_rate: 0.0,
            fail_matching: Vec::new(),
            throttle: 0,
            stall: Duration::ZERO,
            status: 200,
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub status: u16,
    pub at: Instant,
}

impl Received {
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

struct Shared {
    behaviour: Mutex<Behaviour>,
    log: Mutex<Vec<Received>>,
    rng: Mutex<u64>,
    stop: AtomicBool,
}

pub struct WebhookReceiver {
    addr: String,
    shared: Arc<Shared>,
}

impl WebhookReceiver {
    /// Starts on a free port of 127.0.0.1; `seed` drives the random failures.
    pub fn start(seed: u64) -> anyhow::Result<WebhookReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(Behaviour::default()),
            log: Mutex::new(Vec::new()),
            rng: Mutex::new(seed | 1),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Acquire) {
                    return;
                }
                if let Ok(c) = conn {
                    let s = s.clone();
                    std::thread::spawn(move || serve(c, &s));
                }
            }
        });
        Ok(WebhookReceiver { addr, shared })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, b: Behaviour) {
        *self.shared.behaviour.lock().expect("behaviour") = b;
    }

    pub fn update(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.shared.behaviour.lock().expect("behaviour"));
    }

    /// Every request so far, in the order answered.
    pub fn log(&self) -> Vec<Received> {
        self.shared.log.lock().expect("log").clone()
    }

    /// How many requests were accepted so far (no copy of the log).
    pub fn accepted_count(&self) -> usize {
        self.shared
            .log
            .lock()
            .expect("log")
            .iter()
            .filter(|r| r.accepted())
            .count()
    }

    /// Bodies of accepted requests, in order.
    pub fn accepted(&self) -> Vec<Received> {
        self.log().into_iter().filter(|r| r.accepted()).collect()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn next_random(s: &Shared) -> f64 {
    let mut r = s.rng.lock().expect("rng");
    *r ^= *r >> 12;
    *r ^= *r << 25;
    *r ^= *r >> 27;
    (r.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
}

fn serve(conn: TcpStream, s: &Shared) {
    let _ = conn.set_nodelay(true);
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let b = s.behaviour.lock().expect("behaviour").clone();
        if !b.stall.is_zero() {
            std::thread::sleep(b.stall);
        }
        let text = String::from_utf8_lossy(&body);
        let (status, extra) = if b.throttle > 0 {
            s.behaviour.lock().expect("behaviour").throttle -= 1;
            (429, "Retry-After: 1\r\n")
        } else if b.fail_matching.iter().any(|m| text.contains(m.as_str()))
            || (b.fail_rate > 0.0 && next_random(s) < b.fail_rate)
        {
            (500, "")
        } else {
            (b.status, "")
        };
        // Logged before answering: once the client sees a 2xx, the log holds it.
        s.log.lock().expect("log").push(Received {
            method,
            path,
            headers,
            body,
            status,
            at: Instant::now(),
        });
        let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n{extra}\r\n");
        if writer.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}
