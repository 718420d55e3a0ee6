//! The shipped observability assets (`deploy/observability/`) against a live
//! mesh: every scrape passes `promtool check metrics`, the alert rules pass
//! `promtool check rules`, and every metric name and label that a dashboard
//! panel, a template variable or an alert uses is one the mesh exports. A
//! renamed family or label fails here instead of leaving an empty panel or
//! an alert that can never fire.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use common::wait::poll;
use common::{TestMesh, net, promtool};
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Labels Prometheus adds to every series at scrape time: rules and panels
/// may group by them though no exposition carries them.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

// ---------------------------------------------------------------- scrapes

/// What the live scrapes hold: label names seen per series name
/// (`meshward_request_duration_seconds_bucket` has `le`, its family does not).
#[derive(Default)]
struct Exported {
    series: BTreeMap<String, BTreeSet<String>>,
}

impl Exported {
    fn add(&mut self, exposition: &str) {
        for line in exposition.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, labels) = sample_labels(line);
            self.series.entry(name).or_default().extend(labels);
        }
    }

    /// Whether the family (histogram suffixes stripped) has any sample.
    fn has_family(&self, family: &str) -> bool {
        self.series.keys().any(|s| family_of(s) == family)
    }
}

/// A sample line's series name and label names.
fn sample_labels(line: &str) -> (String, Vec<String>) {
    let Some(open) = line.find('{') else {
        let name = line.split(' ').next().unwrap_or_default();
        return (name.to_string(), Vec::new());
    };
    let name = line[..open].to_string();
    let mut labels = Vec::new();
    let mut rest = &line[open + 1..];
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if rest.starts_with('}') || rest.is_empty() {
            break;
        }
        let eq = rest
            .find('=')
            .unwrap_or_else(|| panic!("bad sample: {line}"));
        labels.push(rest[..eq].trim().to_string());
        rest = skip_string(&rest[eq + 1..]).unwrap_or_else(|| panic!("bad sample: {line}"));
    }
    (name, labels)
}

/// `s` starts with a quoted string; what follows it.
fn skip_string(s: &str) -> Option<&str> {
    let quote = s.chars().next().filter(|c| matches!(c, '"' | '\'' | '`'))?;
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            '\\' if !escaped => escaped = true,
            c if c == quote && !escaped => return Some(&s[i + 1..]),
            _ => escaped = false,
        }
    }
    None
}

/// The family a series belongs to: histogram series lose their suffix.
fn family_of(series: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| series.strip_suffix(s))
        .unwrap_or(series)
}

// ------------------------------------------------------------ expressions

/// A metric a PromQL expression selects, as written, and the labels its
/// matchers name.
#[derive(Debug)]
struct Selector {
    series: String,
    labels: Vec<String>,
    at: usize,
}

/// Labels an expression groups by (`by (...)`, `without (...)`, or the
/// label of a Grafana `label_values(...)`), and the span of the argument
/// whose metrics must carry them.
#[derive(Debug)]
struct Grouping {
    labels: Vec<String>,
    span: (usize, usize),
}

/// The metric selectors and groupings of a PromQL expression (or a Grafana
/// `label_values(metric{...}, label)` variable query). A small scanner, not
/// a full parser: enough for the expressions we ship, and it fails loudly
/// on what it does not understand.
fn analyse(expr: &str) -> (Vec<Selector>, Vec<Grouping>) {
    let bytes = expr.as_bytes();
    let mut selectors = Vec::new();
    let mut groupings = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if matches!(c, '"' | '\'' | '`') {
            let rest =
                skip_string(&expr[i..]).unwrap_or_else(|| panic!("unclosed string in {expr}"));
            i = expr.len() - rest.len();
            continue;
        }
        if c == '[' {
            // A range or subquery duration, possibly `$__rate_interval`.
            i += expr[i..]
                .find(']')
                .unwrap_or_else(|| panic!("unclosed [ in {expr}"));
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_') {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len()
            && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
        {
            i += 1;
        }
        let word = &expr[start..i];
        let after = expr[i..].trim_start();
        let next = i + (expr[i..].len() - after.len());
        if word.starts_with("meshward_") {
            let mut labels = Vec::new();
            if after.starts_with('{') {
                let (names, end) = matchers(expr, next);
                labels = names;
                i = end;
            }
            selectors.push(Selector {
                series: word.to_string(),
                labels,
                at: start,
            });
        } else if matches!(word, "by" | "without") && after.starts_with('(') {
            let close = matching(expr, next);
            let labels = expr[next + 1..close]
                .split(',')
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            let arg = next_group(expr, close + 1).unwrap_or_else(|| {
                panic!("`{word} (...)` must come before the aggregated expression in: {expr}")
            });
            groupings.push(Grouping { labels, span: arg });
            i = close + 1;
        } else if word == "label_values" && after.starts_with('(') {
            let close = matching(expr, next);
            let inner = &expr[next + 1..close];
            let label = inner.rsplit(',').next().unwrap_or_default().trim();
            assert!(
                inner.contains(',') && !label.is_empty(),
                "label_values without a metric in: {expr}"
            );
            groupings.push(Grouping {
                labels: vec![label.to_string()],
                span: (next, close),
            });
            i = next + 1;
        }
    }
    (selectors, groupings)
}

/// The label names of the matchers in the `{...}` at `open`; and the index
/// just past its `}`.
fn matchers(expr: &str, open: usize) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    let mut rest = &expr[open + 1..];
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if let Some(after) = rest.strip_prefix('}') {
            return (names, expr.len() - after.len());
        }
        let op = rest
            .find(['=', '!'])
            .unwrap_or_else(|| panic!("bad matcher in: {expr}"));
        names.push(rest[..op].trim().to_string());
        rest = rest[op..].trim_start_matches(['=', '!', '~']).trim_start();
        rest = skip_string(rest).unwrap_or_else(|| panic!("bad matcher value in: {expr}"));
    }
}

/// The index of the `)` that closes the `(` at `open`.
fn matching(expr: &str, open: usize) -> usize {
    let mut depth = 0;
    for (i, c) in expr[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return open + i;
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses in: {expr}");
}

/// The span of the parenthesized group starting at or after `from`
/// (whitespace only between).
fn next_group(expr: &str, from: usize) -> Option<(usize, usize)> {
    let rest = &expr[from..];
    let open = from + (rest.len() - rest.trim_start().len());
    (expr[open..].starts_with('(')).then(|| (open, matching(expr, open)))
}

// ----------------------------------------------------------------- assets

/// Every PromQL expression in the dashboard: panel targets (rows included)
/// and query variables, each with where it came from.
fn dashboard_exprs() -> Vec<(String, String)> {
    let path = repo().join("deploy/observability/grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dash: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    fn panels(list: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for panel in list.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?} has a target without expr"));
                out.push((format!("panel {title:?}"), expr.to_string()));
            }
            panels(&panel["panels"], out);
        }
    }
    panels(&dash["panels"], &mut out);
    assert!(out.len() >= 15, "too few panel queries: {out:?}");
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] == "query" {
            let name = var["name"].as_str().unwrap_or("?");
            let query = var["query"]["query"]
                .as_str()
                .or(var["query"].as_str())
                .unwrap_or_else(|| panic!("variable {name} has no query"));
            out.push((format!("variable ${name}"), query.to_string()));
        }
    }
    out
}

/// Every alert's expression, by alert name.
fn alert_exprs() -> Vec<(String, String)> {
    let path = repo().join("deploy/observability/alerts.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs =
        YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    for group in docs[0]["groups"].as_vec().into_iter().flatten() {
        for rule in group["rules"].as_vec().into_iter().flatten() {
            let name = rule["alert"].as_str().unwrap_or("?");
            let Yaml::String(expr) = &rule["expr"] else {
                panic!("alert {name} has no string expr");
            };
            for key in ["summary", "description"] {
                assert!(
                    rule["annotations"][key]
                        .as_str()
                        .is_some_and(|s| s.len() > 20),
                    "alert {name} lacks a useful {key} annotation"
                );
            }
            out.push((format!("alert {name}"), expr.clone()));
        }
    }
    assert!(out.len() >= 6, "too few alerts: {out:?}");
    out
}

/// The problems of `exprs` against `exported`: metrics that no scrape
/// holds, and labels a selector or grouping uses that its metric lacks.
fn problems(
    exprs: &[(String, String)],
    exported: &Exported,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut missing = BTreeSet::new();
    let mut bad_labels = BTreeSet::new();
    for (whence, expr) in exprs {
        let (selectors, groupings) = analyse(expr);
        assert!(
            !selectors.is_empty(),
            "{whence}: no meshward_ metric in {expr}"
        );
        for s in &selectors {
            if !exported.has_family(family_of(&s.series)) {
                missing.insert(family_of(&s.series).to_string());
            }
        }
        let mut check = |series: &str, label: &str| {
            if TARGET_LABELS.contains(&label) {
                return;
            }
            // Missing families are reported by name above.
            if let Some(have) = exported.series.get(series)
                && !have.contains(label)
            {
                bad_labels.insert(format!(
                    "{whence}: {series} has no label {label:?} (it has {have:?})"
                ));
            }
        };
        for s in &selectors {
            for label in &s.labels {
                check(&s.series, label);
            }
        }
        for g in &groupings {
            let inside: Vec<_> = selectors
                .iter()
                .filter(|s| s.at > g.span.0 && s.at < g.span.1)
                .collect();
            assert!(
                !inside.is_empty(),
                "{whence}: a grouping over no metric in {expr}"
            );
            for s in inside {
                for label in &g.labels {
                    check(&s.series, label);
                }
            }
        }
    }
    (missing, bad_labels)
}

// ------------------------------------------------------------------ tests

#[test]
fn the_expression_scanner_finds_selectors_and_groupings() {
    let (sel, groups) = analyse(
        r#"histogram_quantile(0.99, sum by (le, direction) (rate(meshward_request_duration_seconds_bucket{dataplane=~"$dataplane", x!="a,}b"}[$__rate_interval]))) / on() meshward_other"#,
    );
    assert_eq!(sel.len(), 2, "{sel:?}");
    assert_eq!(sel[0].series, "meshward_request_duration_seconds_bucket");
    assert_eq!(sel[0].labels, ["dataplane", "x"]);
    assert_eq!(sel[1].series, "meshward_other");
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].labels, ["le", "direction"]);
    assert!(sel[0].at > groups[0].span.0 && sel[0].at < groups[0].span.1);
    assert!(sel[1].at > groups[0].span.1);

    let (sel, groups) =
        analyse(r#"label_values(meshward_requests_total{dataplane=~"$dataplane"}, caller)"#);
    assert_eq!(sel[0].labels, ["dataplane"]);
    assert_eq!(groups[0].labels, ["caller"]);

    let mut exported = Exported::default();
    exported.add("meshward_requests_total{dataplane=\"a\",code=\"200\"} 1\n");
    let exprs = [(
        "t".to_string(),
        "sum by (caller) (rate(meshward_requests_total{code=\"200\"}[5m])) + meshward_gone"
            .to_string(),
    )];
    let (missing, bad) = problems(&exprs, &exported);
    assert_eq!(missing, BTreeSet::from(["meshward_gone".to_string()]));
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad.iter().all(|b| b.contains("\"caller\"")), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_use_only_what_a_live_mesh_exports() {
    let Some(promtool) = promtool::find() else {
        return;
    };

    // The rule file on its own first: syntax, PromQL, templates.
    let rules = repo().join("deploy/observability/alerts.yaml");
    let checked = promtool::check_rules(&promtool, &rules);
    assert!(
        checked.success,
        "promtool check rules {}: {}",
        rules.display(),
        checked.output
    );

    let mut exprs = dashboard_exprs();
    exprs.extend(alert_exprs());
    let wanted: BTreeSet<String> = exprs
        .iter()
        .flat_map(|(_, e)| analyse(e).0)
        .map(|s| family_of(&s.series).to_string())
        .collect();

    // SVIDs of six seconds rotate after three, so the rotation counter
    // appears while the test runs.
    let mesh = TestMesh::start_with_options(|_| {}, |o| o.svid_ttl = Duration::from_secs(6)).await;
    drive_traffic(&mesh).await;
    // Held open until the scrapes are taken: the NACKing client's stream.
    let nacking = nack_once(&mesh).await;

    let mut targets = vec![(
        "controlplane".to_string(),
        mesh.up().info.controlplane.admin.clone(),
    )];
    for a in &mesh.up().info.agents {
        targets.push((a.name.clone(), a.admin.clone()));
    }
    for s in &mesh.up().info.services {
        targets.push((s.name.clone(), s.admin.clone()));
    }
    if let Some(authz) = &mesh.up().info.authorizer {
        targets.push(("authorizer".to_string(), authz.admin.clone()));
    }

    // Families appear as the traffic is counted, and the SVID gauges once
    // each identity is ready: scrape until every wanted family is there,
    // or a deadline passes and the last scrapes are judged as they are.
    let scrape = || async {
        let mut scrapes = Vec::new();
        for (name, admin) in &targets {
            let (status, text) = net::admin(admin, "/metrics").await;
            assert_eq!(status, 200, "{name} /metrics");
            scrapes.push((name.clone(), text));
        }
        scrapes
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let scrapes = loop {
        let scrapes = scrape().await;
        let mut exported = Exported::default();
        scrapes.iter().for_each(|(_, t)| exported.add(t));
        if wanted.iter().all(|f| exported.has_family(f)) || tokio::time::Instant::now() > deadline {
            break scrapes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(nacking);
    mesh.shutdown().await;

    let mut exported = Exported::default();
    for (name, text) in &scrapes {
        let checked = promtool::check_metrics(&promtool, text);
        assert!(
            checked.success,
            "promtool check metrics on {name}'s /metrics: {}",
            checked.output
        );
        exported.add(text);
    }

    let (missing, bad_labels) = problems(&exprs, &exported);
    assert!(
        missing.is_empty() && bad_labels.is_empty(),
        "deploy/observability uses what the mesh does not export.\nmissing families ({}): {missing:?}\nlabels:\n  {}",
        missing.len(),
        bad_labels.iter().cloned().collect::<Vec<_>>().join("\n  ")
    );
}

/// Traffic that makes the request, refusal, limiter, breaker, policy and
/// reload families appear: an allowed call, a denied one, calls past
/// support-triage's limit (5/s, burst 10) until one is refused, and a
/// rejected config reload followed by a good one.
async fn drive_traffic(mesh: &TestMesh) {
    let ok = mesh
        .call(
            "support-triage",
            "POST",
            "/mcp://hello-skill/say-hello",
            "{}",
        )
        .await;
    assert_eq!(ok.status, 200, "allowed call");
    let denied = mesh
        .call(
            "support-triage",
            "GET",
            "/mcp://billing-system/invoices",
            "",
        )
        .await;
    assert_eq!(denied.status, 403, "denied call");
    let mut limited = false;
    for _ in 0..200 {
        let a = mesh
            .call(
                "support-triage",
                "POST",
                "/mcp://hello-skill/say-hello",
                "{}",
            )
            .await;
        if a.status == 429 {
            limited = true;
            break;
        }
        assert_eq!(a.status, 200, "call under the limit");
    }
    assert!(
        limited,
        "200 calls at once never exceeded support-triage's limit"
    );

    let good = std::fs::read_to_string(mesh.config_path()).unwrap();
    let reloads = mesh.up().reload_status().reloads;
    std::fs::write(
        mesh.config_path(),
        format!("{good}\n  - this: [is not yaml\n"),
    )
    .unwrap();
    poll(
        Duration::from_secs(5),
        "the broken mesh.yaml is rejected",
        || async {
            let status = mesh.up().reload_status();
            if status.reloads > reloads && status.last_error.is_some() {
                Ok(())
            } else {
                Err(format!(
                    "{} reloads, last error {:?}",
                    status.reloads, status.last_error
                ))
            }
        },
    )
    .await;
    let reloads = mesh.up().reload_status().reloads;
    std::fs::write(mesh.config_path(), &good).unwrap();
    poll(
        Duration::from_secs(5),
        "the good mesh.yaml is reloaded",
        || async {
            let status = mesh.up().reload_status();
            if status.reloads > reloads && status.last_error.is_none() {
                Ok(())
            } else {
                Err(format!(
                    "{} reloads, last error {:?}",
                    status.reloads, status.last_error
                ))
            }
        },
    )
    .await;
}

/// An xDS client that NACKs the first Cluster response it gets: Meshward's
/// own dataplanes never do (the control plane validates first), so this
/// stands in for a client that rejects config. The returned value keeps the
/// stream open.
async fn nack_once(mesh: &TestMesh) -> HeldStream {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
    use envoy_types::pb::google::rpc::Status;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use prost::Message;

    const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    fn frame(message: &DiscoveryRequest) -> Result<Frame<bytes::Bytes>, std::io::Error> {
        let body = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&body);
        Ok(Frame::data(bytes::Bytes::from(out)))
    }

    let xds = mesh.up().info.controlplane.xds.clone();
    let svid = mesh
        .up()
        .identity_server()
        .test_ca()
        .issue(
            "spiffe://example.org/service/hello-skill",
            Duration::from_secs(600),
        )
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(&xds).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(svid.client_config(&[b"h2"]).unwrap())
        .connect(
            rustls::pki_types::ServerName::try_from("meshward.invalid").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let (body_tx, body_rx) = futures::channel::mpsc::unbounded();
    let node = Node {
        id: "nacking-client".into(),
        ..Default::default()
    };
    let subscribe = DiscoveryRequest {
        node: Some(node.clone()),
        type_url: CLUSTER.into(),
        ..Default::default()
    };
    body_tx.unbounded_send(frame(&subscribe)).unwrap();
    let req = http::Request::post(format!(
        "https://{xds}/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(StreamBody::new(body_rx))
    .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("ADS response headers within 10 s")
        .expect("ADS stream accepted");
    assert_eq!(response.status(), 200);

    // Read until one whole gRPC message (5-byte prefix, then the body).
    let mut body = response.into_body();
    let mut buf = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if buf.len() >= 5 + len {
                    return DiscoveryResponse::decode(&buf[5..5 + len])
                        .expect("a DiscoveryResponse");
                }
            }
            let frame = body
                .frame()
                .await
                .expect("the ADS stream stays open")
                .expect("ADS frame");
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
            }
        }
    })
    .await
    .expect("a Cluster response within 10 s");

    let nack = DiscoveryRequest {
        node: Some(node),
        type_url: CLUSTER.into(),
        response_nonce: first.nonce.clone(),
        error_detail: Some(Status {
            code: 3,
            message: "observability test: rejected on purpose".into(),
            details: Vec::new(),
        }),
        ..Default::default()
    };
    body_tx.unbounded_send(frame(&nack)).unwrap();

    HeldStream {
        _parts: vec![Box::new(send), Box::new(body_tx), Box::new(body)],
        conn,
    }
}

/// An open client stream: its parts are dropped, and its connection task
/// ended, with it.
struct HeldStream {
    _parts: Vec<Box<dyn std::any::Any + Send>>,
    conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Drop for HeldStream {
    fn drop(&mut self) {
        self.conn.abort();
    }
}
