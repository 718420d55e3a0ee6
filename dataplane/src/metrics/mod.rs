//! The dataplane's metric families and what they mean (Prometheus `HELP`).
//!
//! Names are written where they are recorded; this is the one list an
//! operator reads, and the test that scrapes a live `/metrics` holds every
//! exported family to having a description here.
//!
//! Label values that name callers and services are bounded by [`labels`].

pub mod labels;

/// Counter: policy decisions, labelled `result` (`allow`, `deny`, `error`).
pub const POLICY_EVALUATIONS: &str = "meshward_policy_evaluations_total";
/// Histogram: time one policy evaluation took.
pub const POLICY_EVALUATION_DURATION: &str = "meshward_policy_evaluation_duration_seconds";
/// Counter: decision cache lookups, labelled `outcome` (`hit`, `miss`).
pub const POLICY_CACHE_LOOKUPS: &str = "meshward_policy_cache_lookups_total";
/// Gauge: a breaker's state, labelled `dataplane`, `caller`, `service`.
pub const BREAKER_STATE: &str = "meshward_breaker_state";
/// Counter: breaker state changes, labelled `dataplane`, `service`, `to`.
pub const BREAKER_TRANSITIONS: &str = "meshward_breaker_transitions_total";
/// Counter: limiter refusals, labelled `dataplane`, `scope`, `service`, `reason`.
pub const LIMITER_REFUSALS: &str = "meshward_limiter_refusals_total";
/// Counter: upstream timeouts, labelled `dataplane`, `service`, `kind`.
pub const UPSTREAM_TIMEOUTS: &str = "meshward_upstream_timeouts_total";

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
        POLICY_EVALUATIONS,
        "Policy decisions made (sidecar and ext_authz alike), by result: allow, deny, or error (evaluation failed; the request is denied)."
    );
    describe_histogram!(
        POLICY_EVALUATION_DURATION,
        Unit::Seconds,
        "Time one policy evaluation took, whatever its result."
    );
    describe_counter!(
        POLICY_CACHE_LOOKUPS,
        "Decision cache lookups of the sidecars, by outcome: hit (the decision of an earlier request with the same declared inputs, same policy revision) or miss (evaluated). Only bundles that declare data.meshward.decision_cache.inputs have a cache."
    );
    describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state per (caller, service): 0 closed, 1 half-open, 2 open. Callers and services outside the registry are \"unregistered\", beyond 200 distinct values \"other\" (the worst state of the breakers sharing a series)."
    );
    describe_counter!(
        BREAKER_TRANSITIONS,
        "Circuit breaker state changes, by service and the state entered (closed, half_open, open)."
    );
    describe_counter!(
        LIMITER_REFUSALS,
        "Requests the per-identity limiter refused, by scope (egress: the agent's own limit; ingress: a service's per-caller limit), service and reason (rate, concurrency, no_identity)."
    );
    describe_counter!(
        UPSTREAM_TIMEOUTS,
        "Upstream exchanges cut by the service's timeouts, by kind: response (no response headers in time; answered 504 upstream_timeout), idle (no bytes in either direction for the idle limit) or total (the whole exchange ran past its cap); idle and total after the headers abort the stream."
    );
    describe_counter!(
        crate::xds::METRIC_UPDATES,
        "xDS responses a dataplane handled, by type URL and result (ack or nack)."
    );
}

/// Unit tests read what a piece of code recorded as Prometheus text, the
/// form an operator sees.
#[cfg(test)]
pub(crate) mod test_support {
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

    /// A recorder of its own, for the code a test runs through it.
    pub struct Recording {
        recorder: PrometheusRecorder,
        handle: PrometheusHandle,
    }

    impl Recording {
        pub fn new() -> Self {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            Self { recorder, handle }
        }

        /// Runs `f` (on this thread) recording into this recorder.
        pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
            metrics::with_local_recorder(&self.recorder, f)
        }

        /// Everything recorded so far, as `/metrics` renders it.
        pub fn render(&self) -> String {
            self.handle.render()
        }
    }

    /// What `f` recorded (on this thread), rendered.
    pub fn capture(f: impl FnOnce()) -> String {
        let recording = Recording::new();
        recording.run(f);
        recording.render()
    }

    /// The value of the one sample of `name` whose labels include every
    /// pair of `labels`; `None` if there is none (or more than one).
    pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }
}
