//! SVID expiry and rotation metrics.

use super::workload::WorkloadIdentity;

/// Gauge: `notAfter` of the current SVID as a Unix timestamp, labelled with the
/// caller's labels plus `spiffe_id`; set on every rotation.
pub const METRIC_SVID_EXPIRY: &str = "meshward_svid_expiry_timestamp_seconds";
/// Counter: SVID rotations seen (a new leaf replacing an earlier one).
pub const METRIC_SVID_ROTATIONS: &str = "meshward_svid_rotations_total";

/// Describes the identity metric families on the installed recorder.
pub fn describe() {
    metrics::describe_gauge!(
        METRIC_SVID_EXPIRY,
        metrics::Unit::Seconds,
        "notAfter of the workload's current X.509-SVID, as a Unix timestamp, by SPIFFE ID."
    );
    metrics::describe_counter!(
        METRIC_SVID_ROTATIONS,
        "X.509-SVID rotations seen (a new leaf replacing the previous one)."
    );
}

/// Publishes [`METRIC_SVID_EXPIRY`] and [`METRIC_SVID_ROTATIONS`] for `identity`,
/// labelled with `labels` plus `spiffe_id`, until the identity is dropped.
/// Uses whatever `metrics` recorder the process installed.
pub async fn export_svid_metrics(identity: WorkloadIdentity, labels: Vec<(&'static str, String)>) {
    let mut updates = identity.updated();
    let Ok(src) = identity.ready().await else {
        return;
    };
    drop(identity);
    let mut last_serial: Option<String> = None;
    loop {
        if let Some(info) = src.last_svid()
            && last_serial.as_deref() != Some(info.serial.as_str())
        {
            let mut l: Vec<metrics::Label> = labels
                .iter()
                .map(|(k, v)| metrics::Label::new(*k, v.clone()))
                .collect();
            l.push(metrics::Label::new("spiffe_id", info.spiffe_id.clone()));
            // f64 holds Unix seconds exactly for the next 285 million years.
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(METRIC_SVID_EXPIRY, l.clone()).set(info.not_after_unix() as f64);
            if last_serial.is_some() {
                metrics::counter!(METRIC_SVID_ROTATIONS, l).increment(1);
            }
            last_serial = Some(info.serial);
        }
        if updates.changed().await.is_err() {
            return;
        }
    }
}
