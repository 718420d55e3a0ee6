//! Replays every committed fuzz input on stable Rust: the seeds in
//! `fuzz/seeds/<target>/` and what `scripts/fuzz.sh` saved from crashes in
//! `fuzz/regressions/<target>/`, through the very checks the fuzz targets run
//! (`meshward::fuzz_checks`). A crash found once stays fixed without nightly
//! or libFuzzer, and the seeds are shown to reach the code under test.
//!
//! The binary seeds are made by [`generated_seeds`]; after changing it, run
//! `MESHWARD_WRITE_SEEDS=1 cargo test --test fuzz_regressions
//! committed_generated_seeds_are_current`.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    Address, Metadata, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::google::protobuf::Any;
use meshward::fuzz_checks::{Check, TARGETS, Verdict, XdsKind};
use meshward_contract::pb::v1 as mw;
use prost::Message;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The input files directly in `dir`, sorted; none if `dir` does not exist.
/// Names starting with `.` and `README` files are not inputs.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.') && !n.starts_with("README"))
        })
        .collect();
    files.sort();
    files
}

/// Runs every file through `check`. Panics naming each file whose check
/// failed (all of them, not just the first), else returns the verdicts.
fn replay(check: Check, files: &[PathBuf]) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    let mut failures = Vec::new();
    for file in files {
        let data = fs::read(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        match catch_unwind(AssertUnwindSafe(|| check(&data))) {
            Ok(verdict) => verdicts.push(verdict),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(non-string panic)");
                failures.push(format!("{}: {message}", file.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} fuzz input(s) fail their check:\n{}",
        failures.len(),
        failures.join("\n")
    );
    verdicts
}

#[test]
fn saved_crashes_pass_their_checks() {
    for (target, check) in TARGETS {
        replay(
            *check,
            &inputs(&fuzz_dir().join("regressions").join(target)),
        );
    }
}

#[test]
fn seeds_pass_and_reach_the_code_under_test() {
    for (target, check) in TARGETS {
        let files = inputs(&fuzz_dir().join("seeds").join(target));
        assert!(!files.is_empty(), "no seeds in fuzz/seeds/{target}/");
        let verdicts = replay(*check, &files);
        assert!(
            verdicts.contains(&Verdict::Accepted),
            "no seed of {target} is accepted: {verdicts:?}"
        );
    }
}

#[test]
fn generated_seeds_are_accepted() {
    for (target, name, data) in generated_seeds() {
        let check = check_of(target);
        assert_eq!(check(&data), Verdict::Accepted, "{target}/{name}");
    }
}

/// Every target the checks know has a fuzz target that calls its check, and
/// the other way round, so neither side can drift out of the replay.
#[test]
fn fuzz_targets_match_the_checks() {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut files: Vec<String> = inputs(&dir)
        .iter()
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_string))
        .collect();
    files.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    assert_eq!(
        files, names,
        "fuzz/fuzz_targets/ and fuzz_checks::TARGETS differ"
    );
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap_or_default();
    for name in names {
        let source = fs::read_to_string(dir.join(format!("{name}.rs"))).unwrap_or_default();
        assert!(
            source.contains(&format!("fuzz_checks::{name}(")),
            "fuzz target {name} does not call fuzz_checks::{name}"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}

/// The generated seeds in `fuzz/seeds/` are what `generated_seeds` builds
/// today, so a change to a resource type cannot leave stale seeds behind.
/// `MESHWARD_WRITE_SEEDS=1` rewrites them instead of comparing.
#[test]
fn committed_generated_seeds_are_current() {
    let write = std::env::var_os("MESHWARD_WRITE_SEEDS").is_some();
    for (target, name, data) in generated_seeds() {
        let dir = fuzz_dir().join("seeds").join(target);
        let file = dir.join(name);
        if write {
            fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            fs::write(&file, &data).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        } else {
            let committed = fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert!(
                committed == data,
                "{} is stale: rerun with MESHWARD_WRITE_SEEDS=1",
                file.display()
            );
        }
    }
}

fn check_of(target: &str) -> Check {
    TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .map(|(_, c)| *c)
        .unwrap_or_else(|| panic!("no target {target}"))
}

/// The seeds that are easier to build than to write by hand: encoded xDS
/// resources, HPACK blocks and framed requests. (target, file name, bytes).
fn generated_seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let cluster = cluster().encode_to_vec();
    let endpoints = endpoints().encode_to_vec();
    let agent = agent().encode_to_vec();
    let policy = policy().encode_to_vec();
    let settings = mw::DataplaneSettings {
        name: "default".into(),
        listeners: Some(mw::ListenerLimits {
            max_connections: 512,
            idle_timeout_ms: 60_000,
            ..Default::default()
        }),
    }
    .encode_to_vec();
    vec![
        (
            "xds_resources",
            "cluster",
            XdsKind::Cluster.input("hello-skill", &cluster),
        ),
        (
            "xds_resources",
            "cluster-named-by-message",
            XdsKind::Cluster.input_named_by_message(&cluster),
        ),
        (
            "xds_resources",
            "endpoints",
            XdsKind::Endpoint.input("hello-skill", &endpoints),
        ),
        (
            "xds_resources",
            "agent",
            XdsKind::Agent.input_named_by_message(&agent),
        ),
        (
            "xds_resources",
            "policy",
            XdsKind::Policy.input("default", &policy),
        ),
        (
            "xds_resources",
            "settings",
            XdsKind::Settings.input("default", &settings),
        ),
        ("hpack_relay", "socket-path-authority", hpack_blocks()),
        ("policy_input", "json-post", json_post()),
    ]
}

fn cluster() -> Cluster {
    let meta = mw::ServiceMetadata {
        spiffe_id: "spiffe://example.org/service/hello-skill".into(),
        metadata: [("team".to_string(), "platform".to_string())].into(),
        breaker: Some(mw::CircuitBreaker {
            consecutive_failures: 5,
            open_for_ms: 10_000,
            half_open_probes: 1,
        }),
        per_caller_limits: Some(mw::RateLimit {
            requests_per_second: 200.0,
            burst: 400,
            ..Default::default()
        }),
        paths: Some(mw::PathRules {
            escaped_slashes: mw::PathAction::Keep as i32,
            path_parameters: mw::PathAction::Reject as i32,
        }),
        forward_client_cert: mw::ForwardClientCert::SanitizeSet as i32,
        mcp: None,
        timeouts: Some(mw::Timeouts {
            response_ms: 30_000,
            idle_ms: 300_000,
            total_ms: 0,
        }),
        routes: vec![mw::RouteTimeouts {
            prefix: "/stream".into(),
            timeouts: Some(mw::Timeouts {
                response_ms: 30_000,
                idle_ms: 3_600_000,
                total_ms: 7_200_000,
            }),
        }],
    };
    Cluster {
        name: "hello-skill".into(),
        metadata: Some(Metadata {
            typed_filter_metadata: [(
                "meshward".to_string(),
                Any {
                    type_url: "type.googleapis.com/meshward.v1.ServiceMetadata".into(),
                    value: meta.encode_to_vec(),
                },
            )]
            .into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn endpoints() -> ClusterLoadAssignment {
    let endpoint = |host: &str, port: u32| LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: host.into(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    ClusterLoadAssignment {
        cluster_name: "hello-skill".into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![
                endpoint("127.0.0.1", 8080),
                endpoint("hello-skill.meshward.svc", 15006),
            ],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn agent() -> mw::Agent {
    mw::Agent {
        name: "support-triage".into(),
        spiffe_id: "spiffe://example.org/agent/support-triage".into(),
        attributes: [("team".to_string(), "customer-success".to_string())].into(),
        permissions: vec!["skills:invoke".into()],
        limits: Some(mw::RateLimit {
            requests_per_second: 5.0,
            burst: 10,
            max_concurrent: 20,
            ..Default::default()
        }),
    }
}

fn policy() -> mw::PolicyBundle {
    mw::PolicyBundle {
        name: "default".into(),
        revision: "seed".into(),
        modules: vec![mw::RegoModule {
            path: "authz.rego".into(),
            source: "package meshward.authz\n\n\
                     default decision := false\n\n\
                     decision if {\n\
                     \tinput.attributes.request.http.method == \"GET\"\n\
                     \tnot startswith(input.parsed_path[0], \"admin\")\n\
                     }\n"
            .into(),
        }],
        data_json: "{\"roles\": {\"admin\": [\"support-triage\"]}}".into(),
        decision: "data.meshward.authz.decision".into(),
    }
}

/// Two requests on one connection as a gRPC C-core client sends them: the
/// socket path as `:authority`, the second block indexing the first's
/// entries in the dynamic table. Each block has a two-byte length.
fn hpack_blocks() -> Vec<u8> {
    let request: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
        (b":authority", b"%2Ftmp%2Fmw%2Fs%2Fagent_a.sock"),
        (b"workload.spiffe.io", b"true"),
    ];
    let mut encoder = loona_hpack::Encoder::new();
    let mut out = Vec::new();
    for _ in 0..2 {
        let block = encoder.encode(request.clone());
        let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&block);
    }
    out
}

/// An outbound JSON POST, in the `policy_input` layout.
fn json_post() -> Vec<u8> {
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(bytes);
    };
    let mut out = vec![0];
    field(&mut out, b"POST");
    field(&mut out, b"/tools/call?name=lookup&x=%2F#frag");
    field(&mut out, b"customer-lookup");
    let headers: [(&[u8], &[u8]); 3] = [
        (b"content-type", b"application/json; charset=utf-8"),
        (b"x-request-id", b"abc"),
        (b"x-request-id", b"def"),
    ];
    out.push(3);
    for (name, value) in headers {
        field(&mut out, name);
        field(&mut out, value);
    }
    out.push(1);
    out.extend_from_slice(br#"{"jsonrpc":"2.0","method":"tools/call","params":{"id":7}}"#);
    out
}
