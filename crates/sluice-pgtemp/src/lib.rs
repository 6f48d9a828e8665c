//! A throw-away PostgreSQL: [`PgServer::start`] (or [`PgServer::builder`]) runs `initdb`
//! into a fresh temporary directory and starts a private server on it. `sluice demo`
//! runs on one, and so does every test (through `sluice-testkit`, which re-exports it).
//!
//! - **Private.** Every call runs `initdb` into a fresh temporary directory and starts a new
//!   server on a free `127.0.0.1` port (re-chosen if another process grabs it first), with
//!   its Unix socket in that directory. Nothing is shared with other callers or with a
//!   server on 5432, so tests may run in parallel.
//! - **Ready for logical replication.** `wal_level = logical`, 20 replication slots and WAL
//!   senders, `fsync = on` (durability tests rely on it; opt out explicitly with
//!   `.setting("fsync", "off")`), trust authentication for everyone unless a caller adds
//!   stricter pg_hba.conf lines in front, superuser `postgres`, UTF8, no locale.
//! - **Removed afterwards.** Dropping the [`PgServer`] stops it immediately and deletes the
//!   directory. Drop never panics.
//! - **Root-safe.** PostgreSQL refuses to run as root; when run as uid 0 the server
//!   programs (`initdb`, `pg_ctl`, `postgres`) run as the `postgres` OS user through
//!   `runuser`, in a directory under /tmp owned by that user. Otherwise they run as the
//!   current user. Clients (`psql`) always run as the current user, over TCP.
//! - **Bounded.** Every wait has a deadline and fails with a message saying what was awaited
//!   (and, for the server, the end of its log), rather than hanging.
//!
//! The binaries come from `$SLUICE_PG_BINDIR`, `pg_config --bindir`, or the newest
//! `/usr/lib/postgresql/*/bin`; [`pg_bin`] finds other programs (`pg_recvlogical`,
//! `pgbench`) from the same installation.
//!
//! ```no_run
//! let pg = sluice_pgtemp::PgServer::start()?;
//! assert_eq!(pg.psql("SHOW wal_level")?, "logical");
//! let url = pg.url("postgres", "postgres");
//! # Ok::<(), anyhow::Error>(())
//! ```

mod bindir;
mod postgres;
mod process;
mod tls;

use std::net::TcpListener;
use std::time::{Duration, Instant};

pub use bindir::{pg_bin, pg_bindir};
pub use postgres::{PgServer, PgServerBuilder};

/// Calls `f` until it returns `Some`, sleeping briefly between calls, and returns that value;
/// fails with "timed out after ... waiting for {what}" once `timeout` has passed.
/// `f` is always called at least once, and once more at the deadline.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            anyhow::bail!("timed out after {:?} waiting for {what}", now - start);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago, below 32768: the kernel hands
/// ports above that to outgoing connections, which could take a server's port while a
/// test has it stopped for a restart. Another process may still take it before you bind
/// it; servers started by this crate retry with a new port when that happens.
///
/// # Panics
///
/// If no port of the range can be bound (no loopback interface).
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const HIGH: u32 = 32_000;
    // Spread over the range by process, time and call, so parallel tests rarely collide.
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761).wrapping_add(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    );
    for _ in 0..(HIGH - LOW) {
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = LOW + (seed.wrapping_add(n.wrapping_mul(7_919)) % (HIGH - LOW));
        let port = port as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {LOW} and {HIGH}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_the_value() {
        let mut n = 0;
        let v = wait_until(Duration::from_secs(5), "n to reach 3", || {
            n += 1;
            (n >= 3).then_some(n)
        })
        .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn wait_until_names_what_timed_out() {
        let err = wait_until(Duration::from_millis(30), "the impossible", || None::<()>)
            .unwrap_err()
            .to_string();
        assert!(err.contains("the impossible"), "{err}");
    }

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}
