//! PostgreSQL side of Sluice: the wire client (startup, auth, TLS, simple queries), the
//! logical replication stream, the pgoutput decoder, value conversion to the JSON mapping
//! of the change record, and slot/publication management.

pub mod pgoutput;
pub mod values;
