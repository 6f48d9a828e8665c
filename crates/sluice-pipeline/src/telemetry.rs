//! The process-wide metrics recorder: installed once, every metric of
//! [`sluice_core::metric::ALL`] described, latency histograms bucketed from 0.5 ms to 60 s.

use metrics::SetRecorderError;
use metrics_exporter_prometheus::{
    BuildError, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Why the metrics recorder could not be installed: a bucket setting the exporter
/// refuses, or another recorder installed first in this process. Neither passes by
/// itself, so a run that needs metrics stops.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{0}")]
    Buckets(#[from] BuildError),
    #[error("{0}")]
    Installed(#[from] SetRecorderError<PrometheusRecorder>),
}

/// Definite, the message says it all (as it did as text).
impl From<MetricsError> for sluice_core::Fault {
    fn from(e: MetricsError) -> sluice_core::Fault {
        sluice_core::Fault::fatal(e.to_string())
    }
}

/// Installs the recorder (once) and returns the handle that renders it.
pub fn install_metrics() -> Result<PrometheusHandle, MetricsError> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ],
        )?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    use sluice_core::metric::{Kind, ALL};
    for m in ALL {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}
