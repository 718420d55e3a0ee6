//! A live `/metrics`, read as Prometheus reads it: every family has `HELP`
//! and `TYPE`, every name carries the `meshward_` prefix, and request
//! durations are histograms with sub-millisecond buckets (aggregatable
//! across instances, which summaries are not). Traffic that refuses (policy,
//! limiter) and a rejected reload make the families an operator needs to
//! ask "why was this refused?" appear, bounded to registry names.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{TestMesh, eventually, net};

/// The families of an exposition: name → (help, type), and the sample names.
fn families(text: &str) -> (BTreeMap<String, (bool, String)>, BTreeSet<String>) {
    let mut families: BTreeMap<String, (bool, String)> = BTreeMap::new();
    let mut samples = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_string();
            families.entry(name).or_default().0 = true;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap().to_string();
            families.entry(name).or_default().1 = parts.next().unwrap_or_default().to_string();
        } else if !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap().to_string();
            samples.insert(name);
        }
    }
    (families, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_is_described_prefixed_and_durations_are_histograms() {
    let mesh = TestMesh::start().await;
    // Traffic, so the request families exist: an allowed and a denied call.
    let ok = mesh
        .call(
            "support-triage",
            "POST",
            "/mcp://hello-skill/say-hello",
            "{}",
        )
        .await;
    assert_eq!(ok.status, 200);
    let denied = mesh
        .call(
            "support-triage",
            "GET",
            "/mcp://billing-system/invoices",
            "",
        )
        .await;
    assert_eq!(denied.status, 403);
    // support-triage may burst 10 (at 5/s): a quick 20 more are refused by
    // its own egress limit.
    let mut refused = 0;
    for _ in 0..20 {
        let r = mesh
            .call(
                "support-triage",
                "POST",
                "/mcp://hello-skill/say-hello",
                "{}",
            )
            .await;
        refused += usize::from(r.status == 429);
    }
    assert!(refused > 0, "no request was rate limited");
    // A broken edit of mesh.yaml: rejected, counted, and kept in the
    // control plane's /config_dump.
    let reloads = mesh.up().reload_status().reloads;
    common::rewrite(&mesh.config_path(), |t| {
        t.replacen("burst: 10", "burst: 0", 1)
    });
    let rejected = eventually(Duration::from_secs(10), || async {
        let status = mesh.up().reload_status();
        status.reloads > reloads && status.last_error.is_some()
    })
    .await;
    assert!(rejected.is_some(), "the broken edit was not rejected");
    let cp_admin = mesh.up().info.controlplane.admin.clone();
    let (status, dump) = net::admin(&cp_admin, "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let error = &dump["last_reload_error"];
    assert_eq!(error["reason"], "validate", "{dump}");
    assert!(
        error["error"]
            .as_str()
            .unwrap_or_default()
            .contains("burst"),
        "{error}"
    );
    assert_eq!(error["file"], mesh.config_path().display().to_string());

    let (status, text) = net::admin(&mesh.admin("support-triage"), "/metrics").await;
    assert_eq!(status, 200);
    // Requests by caller and service, by registry name.
    let ok_series = [
        ("caller", "support-triage"),
        ("service", "hello-skill"),
        ("code", "200"),
    ];
    assert!(
        net::metric(&text, "meshward_requests_total", &ok_series) >= 1.0,
        "no meshward_requests_total{{caller,service}} for the allowed call:\n{text}"
    );
    let denied_series = [
        ("caller", "support-triage"),
        ("service", "billing-system"),
        ("reason", "forbidden"),
    ];
    assert!(
        net::metric(&text, "meshward_requests_refused_total", &denied_series) >= 1.0,
        "no refusal by caller and service:\n{text}"
    );
    assert!(
        net::metric(
            &text,
            "meshward_request_duration_seconds_count",
            &[("service", "hello-skill")]
        ) >= 1.0,
        "no duration by service:\n{text}"
    );
    let (families, samples) = families(&text);
    assert!(families.len() >= 8, "{families:?}");
    for (name, (help, kind)) in &families {
        assert!(name.starts_with("meshward_"), "{name} lacks the prefix");
        assert!(*help, "{name} has no HELP");
        assert!(!kind.is_empty(), "{name} has no TYPE");
        assert_ne!(kind, "summary", "{name} is a summary");
    }
    // Every sample belongs to a described family.
    for sample in &samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| sample.strip_suffix(s).filter(|f| families.contains_key(*f)))
            .unwrap_or(sample);
        assert!(families.contains_key(family), "{sample} has no TYPE/HELP");
    }
    assert_eq!(families["meshward_request_duration_seconds"].1, "histogram");
    assert!(
        text.contains("meshward_request_duration_seconds_bucket{")
            && text.contains("le=\"0.0001\""),
        "no sub-millisecond bucket"
    );
    for name in [
        "meshward_requests_total",
        "meshward_requests_refused_total",
        "meshward_xds_pushes_total",
        "meshward_xds_connected_streams",
        "meshward_xds_client_updates_total",
        "meshward_svid_expiry_timestamp_seconds",
        "meshward_policy_evaluations_total",
        "meshward_policy_evaluation_duration_seconds",
        "meshward_policy_cache_lookups_total",
        "meshward_breaker_state",
        "meshward_limiter_refusals_total",
        "meshward_config_reloads_total",
        "meshward_policy_revision_info",
    ] {
        assert!(families.contains_key(name), "{name} missing");
    }
    assert_eq!(
        families["meshward_policy_evaluation_duration_seconds"].1,
        "histogram"
    );
    assert_eq!(families["meshward_breaker_state"].1, "gauge");
    assert_eq!(families["meshward_policy_revision_info"].1, "gauge");
    let at_least_one = |name: &str, labels: &[(&str, &str)]| {
        assert!(
            net::metric(&text, name, labels) >= 1.0,
            "no {name} with {labels:?} in:\n{text}"
        );
    };
    at_least_one("meshward_policy_evaluations_total", &[("result", "deny")]);
    at_least_one("meshward_policy_evaluations_total", &[("result", "allow")]);
    // The reference bundle declares a decision cache: the repeated
    // say-hello calls were answered from it, the first one was not.
    at_least_one("meshward_policy_cache_lookups_total", &[("outcome", "hit")]);
    at_least_one(
        "meshward_policy_cache_lookups_total",
        &[("outcome", "miss")],
    );
    at_least_one(
        "meshward_limiter_refusals_total",
        &[
            ("dataplane", "support-triage"),
            ("scope", "egress"),
            ("service", "hello-skill"),
            ("reason", "rate"),
        ],
    );
    at_least_one(
        "meshward_config_reloads_total",
        &[("result", "rejected"), ("reason", "validate")],
    );
    let revision = dump["policy_revision"].as_str().unwrap_or_default();
    assert!(!revision.is_empty(), "{dump}");
    assert_eq!(
        net::metric(
            &text,
            "meshward_policy_revision_info",
            &[("revision", revision)]
        ),
        1.0
    );
    // The breaker of support-triage at hello-skill exists (closed), labelled
    // by registry names, not SPIFFE IDs.
    assert!(
        text.lines()
            .any(|l| l.starts_with("meshward_breaker_state{")
                && l.contains(r#"caller="support-triage""#)
                && l.contains(r#"service="hello-skill""#)
                && l.ends_with(" 0")),
        "{text}"
    );
    assert!(
        !text.contains("caller=\"spiffe://"),
        "a caller's SPIFFE ID became a label value"
    );

    // The dataplane's /config_dump: the limits in force (the rejected edit
    // changed nothing), its breakers, and no rejected xDS update.
    let (status, dump) = net::admin(&mesh.admin("support-triage"), "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["limits"]["egress"]["agent"], "support-triage",
        "{dump}"
    );
    assert_eq!(dump["limits"]["egress"]["limit"]["burst"], 10, "{dump}");
    assert!(
        dump["policy_revision"]
            .as_str()
            .is_some_and(|r| r == revision)
    );
    let breakers = &dump["breakers"];
    assert!(
        breakers["counts"]["closed"].as_u64() >= Some(1),
        "{breakers}"
    );
    assert!(
        breakers["breakers"].as_array().is_some_and(|all| all
            .iter()
            .any(|b| { b["caller"] == common::SUPPORT_TRIAGE && b["service"] == "hello-skill" })),
        "{breakers}"
    );
    assert_eq!(dump["last_rejected_xds"], serde_json::Value::Null, "{dump}");
    mesh.shutdown().await;
}
