//! Sluice's PostgreSQL client, apart from what it is used for: connection strings
//! (libpq URLs and key=value, `PG*` variables), startup and authentication (cleartext,
//! MD5, SCRAM-SHA-256 with channel binding), TLS (ring, the libpq `sslmode`s), simple
//! queries, and the streaming replication protocol. Errors are classified once
//! ([`PgError::class`]) as transient or definite.
//!
//! A crate of its own because more than the source uses it (preflight, the outbox
//! cleaner, the gauges, and sinks and checks that talk to PostgreSQL), and so that a
//! change to the decoder does not rebuild it.
//!
//! Invariants: an error carries no row values and no password; a server error keeps its
//! SQLSTATE, by which it is classified.

pub mod conninfo;
pub mod error;
pub mod replication;
mod tls;
pub mod wire;

pub use conninfo::{ConnInfo, SslMode};
pub use error::{PgError, ServerError, INSUFFICIENT_PRIVILEGE};
pub use tls::TlsError;
pub use wire::Connection;
