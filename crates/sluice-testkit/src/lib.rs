//! Real servers for Sluice's tests, no mocks.
//!
//! [`PgServer`] is a private, throw-away PostgreSQL (from `sluice-pgtemp`, which `sluice
//! demo` uses too): see its docs for what each server is.
//!
//! [`RedisServer::start`] and [`NatsServer::start`] do the same for `redis-server` (with an
//! append-only file synced on every write, so a restart keeps the data) and `nats-server`
//! with JetStream; [`NatsServer::builder`] adds a user and password or a token, and TLS
//! with a private CA. [`NatsCluster::start`] runs several `nats-server`s as one JetStream
//! cluster whose nodes a test can kill and start again. [`KafkaServer::start`] runs
//! tansu, a Kafka-protocol broker kept in memory. NATS and Kafka come from the test tools' virtualenv (`$SLUICE_TOOLS/venv`, by
//! default `~/.cache/sluice-tools/venv`, made by `scripts/install-deps.sh --tests`), NATS
//! from `PATH` when that has none.
//!
//! [`ClickHouseServer::start`] runs Debian's `clickhouse-server` (18.16) with a
//! passwordless `default` user; [`ClickHouseServer::builder`] adds a user with a password
//! and HTTPS with a private CA.
//!
//! [`WebhookReceiver::start`] is a real HTTP receiver that fails, throttles and stalls
//! on demand, and logs every request with its answer.

mod certs;
mod clickhouse;
mod daemon;
mod kafka;
mod nats;
mod nats_cluster;
mod receiver;

pub use certs::{make_certs, Certs};
pub use clickhouse::{ClickHouseServer, ClickHouseServerBuilder};
pub use daemon::{tools_venv, RedisServer};
pub use kafka::KafkaServer;
pub use nats::{NatsServer, NatsServerBuilder};
pub use nats_cluster::NatsCluster;
pub use receiver::{Behaviour, Received, WebhookReceiver};
pub use sluice_pgtemp::{free_port, pg_bin, pg_bindir, wait_until, PgServer, PgServerBuilder};

/// µs since the epoch of `2026-12-02T20:43:02.226537Z`.
pub fn rfc3339_micros(s: &str) -> Option<i64> {
    let n = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let (y, m, d) = (n(0, 4)?, n(5, 7)?, n(8, 10)?);
    let (hh, mm, ss) = (n(11, 13)?, n(14, 16)?, n(17, 19)?);
    let frac = s.get(20..s.len() - 1).unwrap_or("0");
    let us: i64 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + us)
}
