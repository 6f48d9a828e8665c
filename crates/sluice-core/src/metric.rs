//! Every metric Sluice publishes, named once with its help text. Code records through
//! these constants (`metrics::counter!(metric::CHANGES.name, ...)`), and the exporter
//! describes each from [`ALL`], so `/metrics` carries a `# HELP` line for every series.
//!
//! Invariant: a name appears in the code only here; labels never carry row values.

/// A metric's name, kind and help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

macro_rules! metrics {
    ($($id:ident = $name:literal, $kind:ident, $help:literal;)*) => {
        $(pub const $id: Metric = Metric { name: $name, kind: Kind::$kind, help: $help };)*
        /// Every metric, for the exporter's descriptions.
        pub const ALL: &[Metric] = &[$($id),*];
    };
}

metrics! {
    CHANGES = "sluice_changes_total", Counter,
        "Changes written to the log, by table and op.";
    LOG_BYTES = "sluice_log_bytes", Gauge, "Bytes of the embedded log on disk.";
    LOG_RECORDS = "sluice_log_records", Gauge, "Records held in the embedded log.";
    LOG_PAUSED = "sluice_log_paused", Gauge,
        "1 while the log is at its disk budget and the source waits.";
    SINK_LAG_RECORDS = "sluice_sink_lag_records", Gauge,
        "Records in the log that a sink has not finished.";
    SINK_LAG_SECONDS = "sluice_sink_lag_seconds", Gauge,
        "Age of the last change a lagging sink delivered (0 when caught up).";
    SINK_SHED = "sluice_sink_shed", Gauge, "1 when the disk budget shed the sink.";
    SINK_DELIVERED = "sluice_sink_delivered_records_total", Counter,
        "Records a sink delivered.";
    SINK_LATENCY = "sluice_sink_delivery_latency_seconds", Histogram,
        "From a change's commit to its delivery.";
    SINK_FAILURES = "sluice_sink_failures_total", Counter, "Failed delivery attempts.";
    SOURCE_RECONNECTS = "sluice_source_reconnects_total", Counter,
        "Times the source reconnected to PostgreSQL.";
    SOURCE_STREAMING = "sluice_source_streaming", Gauge,
        "1 while the source holds the lock and streams.";
    SOURCE_CONFIRMED_LSN = "sluice_source_confirmed_lsn", Gauge,
        "The flush LSN last confirmed to PostgreSQL.";
    HEARTBEAT_AGE = "sluice_source_heartbeat_age_seconds", Gauge,
        "Seconds since the pipeline's last heartbeat came through the stream.";
    HEARTBEAT_LATENCY = "sluice_source_heartbeat_latency_seconds", Gauge,
        "From the last heartbeat's write to its arrival through the stream.";
    SLOT_ACTIVE = "sluice_replication_slot_active", Gauge,
        "1 while the replication slot is in use.";
    SLOT_LAG_BYTES = "sluice_replication_slot_lag_bytes", Gauge,
        "WAL bytes between the server's end and the slot's confirmed position.";
    SLOT_RETAINED_BYTES = "sluice_replication_slot_retained_bytes", Gauge,
        "WAL bytes the slot keeps on the server (from its restart position).";
    SLOT_LOST = "sluice_replication_slot_lost", Gauge,
        "1 when the slot is gone or invalidated (wal_status lost).";
    RESIDENT_MEMORY = "process_resident_memory_bytes", Gauge, "Resident memory of the process.";
    DELIVERY_RETRIES = "sluice_delivery_retries_total", Counter,
        "Delivery attempts of the engine that will be retried.";
    DELIVERY_PARKED_KEYS = "sluice_delivery_parked_keys", Gauge,
        "Keys held in a sink's waiting room.";
    DELIVERY_IN_FLIGHT = "sluice_delivery_in_flight", Gauge, "Deliveries in flight.";
    DELIVERY_DEAD_LETTERS = "sluice_delivery_dead_letters_total", Counter,
        "Records put in a sink's dead letters.";
    OUTBOX_DELETED = "sluice_outbox_deleted_total", Counter,
        "Outbox rows deleted after every sink finished them.";
    REDIS_INCOMPLETE_ROWS = "sluice_redis_incomplete_rows_total", Counter,
        "Updates with unchanged TOAST values whose row was not cached (left absent).";
    SSE_CLIENTS = "sluice_sse_clients", Gauge, "Connected SSE clients.";
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_and_prometheus_shaped() {
        let mut seen = std::collections::BTreeSet::new();
        for m in super::ALL {
            assert!(seen.insert(m.name), "{} twice", m.name);
            assert!(m.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            if m.kind == super::Kind::Counter {
                assert!(m.name.ends_with("_total"), "{}", m.name);
            }
        }
    }
}
