//! Real servers for Sluice's tests, no mocks.
//!
//! [`PgServer`] is a private, throw-away PostgreSQL (from `sluice-pgtemp`, which `sluice
//! demo` uses too): see its docs for what each server is.
//!
//! [`RedisServer::start`] and [`NatsServer::start`] do the same for `redis-server` (with an
//! append-only file synced on every write, so a restart keeps the data) and
//! `nats-server -js`.
//!
//! [`WebhookReceiver::start`] is a real HTTP receiver that fails, throttles and stalls
//! on demand, and logs every request with its answer.

mod daemon;
mod receiver;

pub use daemon::{NatsServer, RedisServer};
pub use receiver::{Behaviour, Received, WebhookReceiver};
pub use sluice_pgtemp::{free_port, pg_bin, pg_bindir, wait_until, PgServer, PgServerBuilder};
