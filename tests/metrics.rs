//! A live `/metrics`, read as Prometheus reads it: every family has `HELP`
//! and `TYPE`, every name carries the `meshward_` prefix, and request
//! durations are histograms with sub-millisecond buckets (aggregatable
//! across instances, which summaries are not).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{TestMesh, net};

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

    let (status, text) = net::admin(&mesh.admin("support-triage"), "/metrics").await;
    assert_eq!(status, 200);
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
    ] {
        assert!(families.contains_key(name), "{name} missing");
    }
    mesh.shutdown().await;
}
