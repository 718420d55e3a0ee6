//! The dataplane's metric families and what they mean (Prometheus `HELP`).
//!
//! Names are written where they are recorded; this is the one list an
//! operator reads, and the test that scrapes a live `/metrics` holds every
//! exported family to having a description here.

/// Describes every family this crate records, on the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "meshward_requests_total",
        "Requests answered by a dataplane, by direction and HTTP status code."
    );
    describe_counter!(
        "meshward_requests_refused_total",
        "Requests the mesh refused itself (policy, limit, breaker, not ready, bad request, no route), by direction and reason."
    );
    describe_histogram!(
        "meshward_request_duration_seconds",
        Unit::Seconds,
        "Time from a request's arrival to its answer's headers, by direction."
    );
    describe_gauge!(
        "meshward_connections_open",
        "Connections open on a dataplane listener."
    );
    describe_counter!(
        "meshward_connections_refused_total",
        "Connections a listener closed at accept, by reason (caps per listener and per client IP)."
    );
    describe_counter!(
        "meshward_connections_timed_out_total",
        "Connections closed by a listener timeout (header read, idle), by reason."
    );
    describe_counter!(
        "meshward_inbound_connections_refused_total",
        "Inbound connections closed before the TLS handshake because the dataplane cannot decide yet (no SVID or no config)."
    );
    describe_counter!(
        "meshward_tls_handshake_failures_total",
        "Inbound mTLS handshakes that failed (no, expired or foreign client certificate, protocol errors)."
    );
    describe_counter!(
        "meshward_ext_authz_checks_total",
        "Envoy ext_authz checks answered, by outcome (allowed, or the refusal kind)."
    );
    describe_counter!(
        "meshward_rate_limit_calls_total",
        "Envoy rate-limit service calls answered, by overall code."
    );
    describe_counter!(
        crate::xds::METRIC_UPDATES,
        "xDS responses a dataplane handled, by type URL and result (ack or nack)."
    );
}
