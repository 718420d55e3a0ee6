//! The marked YAML tree of `mesh.yaml` to model types, checking every field.
//!
//! Decoding and validation are one walk so each error is reported with the
//! line and field path of the value at fault, and the walk goes on after a
//! failure to report everything in one pass. Unknown keys are errors: a typo
//! such as `request_per_second` must not silently leave an agent unlimited.
//!
//! Choices an operator may not guess:
//! - Names are unique across agents *and* services (both become dataplane,
//!   cluster and `meshward up` names), and SPIFFE IDs too (one identity is
//!   one workload).
//! - Port 0 is a placeholder in `endpoints` only; a `backend` is where
//!   traffic goes, so it needs a real port (omit it for the built-in demo service).
//! - Numbers and booleans must be unquoted: `burst: "10"` is an error, not a
//!   silent conversion. Durations need a unit (`10s`, `500ms`).
//! - `limits` / `per_caller_limits` may be omitted (zero: no limit), but a
//!   rate without a burst is an error, since it could never admit a request.
//! - `listeners` may be omitted (the defaults of [`ListenerLimits`]); each
//!   value given must be in the range a dataplane accepts.
//! - A service's `timeouts` may be omitted (response 30s, idle 5m, no
//!   total); a `routes[].timeouts` entry inherits what it omits from the
//!   service's, and the resolved values are checked (so a route that only
//!   raises `response` above the service's `total` is an error at `total`).
//!
//! The result is a [`Draft`]: model values plus the positions the cross-field
//! checks and the bundle loader need. Invalid values are replaced by
//! defaults so the walk can continue; a draft with errors is never turned
//! into a [`Mesh`](super::Mesh).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use super::error::ConfigError;
use super::model::{
    Agent, BreakerSettings, ForwardClientCert, ListenerLimits, PathAction, PathRules,
    RateLimitSettings, RouteTimeouts, Service, ServiceTimeouts, Timeouts,
};
use super::yaml::{Entry, Node, Value};
use meshward_contract::rules;
use meshward_contract::spec::{McpSettings, mcp};

/// What the mesh file says, decoded; `errors` is empty if it is all valid.
#[derive(Debug, Default)]
pub struct Draft {
    pub trust_domain: String,
    pub agents: Vec<Agent>,
    pub services: Vec<Service>,
    pub policy: Option<PolicySection>,
    pub listeners: ListenerLimits,
    /// SPIFFE IDs of ext_authz / rate-limit backends (`authorizers:`).
    pub authorizers: Vec<String>,
    pub tracing: Option<meshward_telemetry::TracingFile>,
    pub errors: Vec<ConfigError>,
}

/// The `policy:` section, with lines for errors the bundle loader finds.
#[derive(Debug, Clone)]
pub struct PolicySection {
    /// As written (relative to the mesh file's directory, or absolute).
    pub dir: Option<String>,
    pub dir_line: usize,
    pub decision: Option<String>,
    pub decision_line: usize,
}

const TOP_KEYS: &[&str] = &[
    "trust_domain",
    "policy",
    "listeners",
    "authorizers",
    "telemetry",
    "agents",
    "services",
];
const POLICY_KEYS: &[&str] = &["dir", "decision"];
const TELEMETRY_KEYS: &[&str] = &["tracing"];
const TRACING_KEYS: &[&str] = &["endpoint", "protocol", "sampler", "sampler_arg"];
const AGENT_KEYS: &[&str] = &["name", "spiffe_id", "attributes", "permissions", "limits"];
const SERVICE_KEYS: &[&str] = &[
    "name",
    "spiffe_id",
    "endpoints",
    "backend",
    "metadata",
    "breaker",
    "per_caller_limits",
    "paths",
    "forward_client_cert",
    "protocol",
    "mcp",
    "timeouts",
    "routes",
];
const PROTOCOLS: &[&str] = &["http", "mcp"];
const MCP_KEYS: &[&str] = &[
    "path",
    "max_message_bytes",
    "filter_tools_list",
    "tool_limits",
];
const LIMIT_KEYS: &[&str] = &[
    "requests_per_second",
    "burst",
    "max_concurrent",
    "per_destination",
    "count_denied",
];
const PATH_KEYS: &[&str] = &["escaped_slashes", "path_parameters"];
const LISTENER_KEYS: &[&str] = &[
    "header_read_timeout",
    "idle_timeout",
    "max_connections",
    "max_connections_per_client_ip",
    "max_request_headers_kb",
    "max_concurrent_streams",
    "admin_max_connections",
];
const BREAKER_KEYS: &[&str] = &["consecutive_failures", "open_for", "half_open_probes"];
const TIMEOUT_KEYS: &[&str] = &["response", "idle", "total"];
const ROUTE_KEYS: &[&str] = &["prefix", "timeouts"];

/// Decodes and checks a parsed mesh document.
pub fn check(file: &Path, root: &Node) -> Draft {
    let mut c = Checker {
        file,
        errors: Vec::new(),
    };
    let mut draft = Draft::default();
    let Some(top) = c.mapping(root, "", TOP_KEYS) else {
        draft.errors = c.errors;
        return draft;
    };

    let td_valid = match c.required_string(&top, "", "trust_domain") {
        Some((td, line)) => {
            let ok = c.rule(line, "trust_domain", rules::trust_domain(&td));
            draft.trust_domain = td;
            ok
        }
        None => false,
    };
    let td = td_valid.then_some(draft.trust_domain.as_str());

    draft.policy = top.get("policy").and_then(|node| {
        let fields = c.mapping(node, "policy", POLICY_KEYS)?;
        let dir = c.required_string(&fields, "policy", "dir");
        let decision = c.required_string(&fields, "policy", "decision");
        let decision = decision.and_then(|(d, line)| {
            c.rule(line, "policy.decision", rules::decision_path(&d))
                .then_some((d, line))
        });
        Some(PolicySection {
            dir_line: dir.as_ref().map_or(fields.line, |(_, l)| *l),
            dir: dir.map(|(d, _)| d),
            decision_line: decision.as_ref().map_or(fields.line, |(_, l)| *l),
            decision: decision.map(|(d, _)| d),
        })
    });
    if top.get("policy").is_none() {
        c.error(
            top.line,
            "policy",
            "is required (the policy bundle: dir and decision)",
        );
    }

    draft.listeners = c.listeners(top.get("listeners"));
    draft.tracing = top.get("telemetry").and_then(|n| c.telemetry(n));

    // Identities and names, with where they were written, for the
    // uniqueness checks across agents and services.
    let mut ids: Vec<Named> = Vec::new();
    let mut names: Vec<Named> = Vec::new();

    for (i, node) in c.list(top.get("agents"), "agents").iter().enumerate() {
        let field = format!("agents[{i}]");
        let Some(fields) = c.mapping(node, &field, AGENT_KEYS) else {
            continue;
        };
        let (name, spiffe_id) = c.identity(&fields, &field, td, &mut names, &mut ids);
        let attributes = c.string_map(fields.get("attributes"), &format!("{field}.attributes"));
        let permissions = c.permissions(fields.get("permissions"), &format!("{field}.permissions"));
        let limits = c.limits(fields.get("limits"), &format!("{field}.limits"));
        draft.agents.push(Agent {
            name,
            spiffe_id,
            attributes,
            permissions,
            limits,
        });
    }

    for (i, node) in c.list(top.get("services"), "services").iter().enumerate() {
        let field = format!("services[{i}]");
        let Some(fields) = c.mapping(node, &field, SERVICE_KEYS) else {
            continue;
        };
        let (name, spiffe_id) = c.identity(&fields, &field, td, &mut names, &mut ids);
        let endpoints = c.endpoints(&fields, &field);
        let backend = fields.get("backend").and_then(|node| {
            let field = format!("{field}.backend");
            let backend = c.string(node, &field)?;
            // Port 0 is a placeholder for endpoints only: a backend is where
            // traffic goes, and "no backend" is spelled by omitting it.
            c.rule(node.line, &field, rules::host_port(&backend, false))
                .then_some(backend)
        });
        let metadata = c.string_map(fields.get("metadata"), &format!("{field}.metadata"));
        let breaker = c.breaker(fields.get("breaker"), &format!("{field}.breaker"));
        let per_caller_limits = c.limits(
            fields.get("per_caller_limits"),
            &format!("{field}.per_caller_limits"),
        );
        let paths = c.paths(fields.get("paths"), &format!("{field}.paths"));
        let forward_client_cert = fields
            .get("forward_client_cert")
            .and_then(|n| {
                c.choice(
                    n,
                    &format!("{field}.forward_client_cert"),
                    ForwardClientCert::NAMES,
                    ForwardClientCert::parse,
                )
            })
            .unwrap_or_default();
        let mcp = c.protocol(&fields, &field);
        let timeouts = c.service_timeouts(&fields, &field, &name);
        draft.services.push(Service {
            spec: meshward_contract::spec::Service {
                name,
                spiffe_id,
                metadata,
                breaker,
                per_caller_limits,
                paths,
                forward_client_cert,
                mcp,
                timeouts,
            },
            endpoints,
            backend,
        });
    }

    // Authorizers (ext_authz and rate-limit backends) are neither agents
    // nor services: their IDs are unique across all three.
    for (i, node) in c
        .list(top.get("authorizers"), "authorizers")
        .iter()
        .enumerate()
    {
        let field = format!("authorizers[{i}]");
        let Some(id) = c.string(node, &field) else {
            continue;
        };
        let checked = rules::spiffe_id(&id, td).map_err(|reason| {
            format!("must be a spiffe:// URI in the trust domain: `{id}` {reason}")
        });
        if c.rule(node.line, &field, checked) {
            ids.push(Named {
                value: id.clone(),
                field,
                line: node.line,
            });
            draft.authorizers.push(id);
        }
    }

    c.unique(&names, "name");
    c.unique(&ids, "SPIFFE ID");
    draft.errors = c.errors;
    draft
}

/// A value that must be unique, where it was written.
struct Named {
    value: String,
    field: String,
    line: usize,
}

/// A mapping's entries and the line it starts on.
struct Fields<'n> {
    line: usize,
    entries: &'n [Entry],
}

impl<'n> Fields<'n> {
    /// The value of `key`; an explicit null counts as absent.
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
            .filter(|n| n.value != Value::Null)
    }
}

struct Checker<'a> {
    file: &'a Path,
    errors: Vec<ConfigError>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Checker<'_> {
    fn error(&mut self, line: usize, field: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::new(
            self.file,
            Some(line),
            field,
            message.into(),
        ));
    }

    /// Records `result`'s error, if any; true when the value is fine.
    fn rule(&mut self, line: usize, field: &str, result: Result<(), String>) -> bool {
        match result {
            Ok(()) => true,
            Err(message) => {
                self.error(line, field, message);
                false
            }
        }
    }

    /// `node` as a mapping with only `known` keys (unknown ones are reported
    /// at their own line, with a suggestion when it looks like a typo).
    fn mapping<'n>(&mut self, node: &'n Node, field: &str, known: &[&str]) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            let at = if field.is_empty() { "the file" } else { field };
            self.error(
                node.line,
                field,
                format!("{at} must be a mapping, found {}", node.kind()),
            );
            return None;
        };
        for entry in entries {
            if !known.contains(&entry.key.as_str()) {
                let hint = suggestion(&entry.key, known)
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                self.error(
                    entry.key_line,
                    &join(field, &entry.key),
                    format!("unknown key{hint}; expected one of: {}", known.join(", ")),
                );
            }
        }
        Some(Fields {
            line: node.line,
            entries,
        })
    }

    fn list<'n>(&mut self, node: Option<&'n Node>, field: &str) -> &'n [Node] {
        match node.map(|n| (n, &n.value)) {
            None => &[],
            Some((_, Value::Seq(items))) => items,
            Some((n, _)) => {
                self.error(n.line, field, format!("must be a list, found {}", n.kind()));
                &[]
            }
        }
    }

    fn string(&mut self, node: &Node, field: &str) -> Option<String> {
        match &node.value {
            Value::Scalar { text, .. } if !text.is_empty() => Some(text.clone()),
            Value::Scalar { .. } => {
                self.error(node.line, field, "must not be empty");
                None
            }
            _ => {
                self.error(
                    node.line,
                    field,
                    format!("must be a string, found {}", node.kind()),
                );
                None
            }
        }
    }

    fn required_string(
        &mut self,
        fields: &Fields<'_>,
        parent: &str,
        key: &str,
    ) -> Option<(String, usize)> {
        let field = join(parent, key);
        match fields.get(key) {
            None => {
                self.error(fields.line, &field, "is required");
                None
            }
            Some(node) => self.string(node, &field).map(|s| (s, node.line)),
        }
    }

    /// A plain (unquoted) scalar; quoted `"5"` is a string, not a number.
    fn plain<'n>(&mut self, node: &'n Node, field: &str, what: &str) -> Option<&'n str> {
        match &node.value {
            Value::Scalar { text, plain: true } => Some(text),
            Value::Scalar { text, plain: false } => {
                self.error(
                    node.line,
                    field,
                    format!("must be {what}, found the string {text:?}"),
                );
                None
            }
            _ => {
                self.error(
                    node.line,
                    field,
                    format!("must be {what}, found {}", node.kind()),
                );
                None
            }
        }
    }

    fn uint(&mut self, node: &Node, field: &str) -> Option<u32> {
        let text = self.plain(node, field, "a whole number")?;
        if let Ok(n) = text.parse::<u32>() {
            return Some(n);
        }
        let message = match text.parse::<f64>() {
            Ok(v) if v < 0.0 => "must not be negative".to_string(),
            Ok(v) if v.fract() == 0.0 => format!("must be at most {}", u32::MAX),
            _ => format!("must be a whole number, found {text:?}"),
        };
        self.error(node.line, field, message);
        None
    }

    fn number(&mut self, node: &Node, field: &str) -> Option<f64> {
        let text = self.plain(node, field, "a number")?;
        match text.parse::<f64>() {
            Ok(v) if !v.is_finite() => {
                self.error(node.line, field, "must be a finite number");
                None
            }
            Ok(v) if v < 0.0 => {
                self.error(node.line, field, "must not be negative");
                None
            }
            Ok(v) => Some(v),
            Err(_) => {
                self.error(
                    node.line,
                    field,
                    format!("must be a number, found {text:?}"),
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, field: &str) -> Option<bool> {
        match self.plain(node, field, "true or false")? {
            "true" | "True" | "TRUE" => Some(true),
            "false" | "False" | "FALSE" => Some(false),
            other => {
                self.error(
                    node.line,
                    field,
                    format!("must be true or false, found {other:?}"),
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, field: &str) -> Option<Duration> {
        let text = self.string(node, field)?;
        match humantime_serde::re::humantime::parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    node.line,
                    field,
                    format!("must be a duration with a unit like 10s or 500ms ({e})"),
                );
                None
            }
        }
    }

    /// Registry attributes / metadata: scalar values, kept as written.
    fn string_map(&mut self, node: Option<&Node>, field: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(node) = node else { return out };
        let Value::Map(entries) = &node.value else {
            self.error(
                node.line,
                field,
                format!("must be a mapping, found {}", node.kind()),
            );
            return out;
        };
        for entry in entries {
            let key_field = join(field, &entry.key);
            if entry.key.is_empty() {
                self.error(entry.key_line, field, "keys must not be empty");
                continue;
            }
            match &entry.value.value {
                Value::Scalar { text, .. } => {
                    out.insert(entry.key.clone(), text.clone());
                }
                _ => self.error(
                    entry.value.line,
                    &key_field,
                    format!("must be a string, found {}", entry.value.kind()),
                ),
            }
        }
        out
    }

    fn permissions(&mut self, node: Option<&Node>, field: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (i, item) in self.list(node, field).iter().enumerate() {
            let item_field = format!("{field}[{i}]");
            if let Some(p) = self.string(item, &item_field) {
                if out.contains(&p) {
                    self.error(
                        item.line,
                        &item_field,
                        format!("duplicate permission `{p}`"),
                    );
                } else {
                    out.push(p);
                }
            }
        }
        out
    }

    /// `name` and `spiffe_id` of an agent or service.
    fn identity(
        &mut self,
        fields: &Fields<'_>,
        field: &str,
        td: Option<&str>,
        names: &mut Vec<Named>,
        ids: &mut Vec<Named>,
    ) -> (String, String) {
        let mut name = String::new();
        if let Some((n, line)) = self.required_string(fields, field, "name") {
            let name_field = join(field, "name");
            if self.rule(line, &name_field, rules::dns_label(&n)) {
                names.push(Named {
                    value: n.clone(),
                    field: name_field,
                    line,
                });
            }
            name = n;
        }
        let mut spiffe_id = String::new();
        if let Some((id, line)) = self.required_string(fields, field, "spiffe_id") {
            let id_field = join(field, "spiffe_id");
            let checked = rules::spiffe_id(&id, td).map_err(|reason| match td {
                Some(td) => {
                    format!("must be a spiffe:// URI in trust domain {td}: `{id}` {reason}")
                }
                None => format!("must be a spiffe:// URI: `{id}` {reason}"),
            });
            if self.rule(line, &id_field, checked) {
                ids.push(Named {
                    value: id.clone(),
                    field: id_field,
                    line,
                });
            }
            spiffe_id = id;
        }
        (name, spiffe_id)
    }

    fn endpoints(&mut self, fields: &Fields<'_>, field: &str) -> Vec<String> {
        let list_field = join(field, "endpoints");
        let Some(node) = fields.get("endpoints") else {
            self.error(
                fields.line,
                &list_field,
                "is required: at least one host:port",
            );
            return Vec::new();
        };
        let items = self.list(Some(node), &list_field);
        if items.is_empty() && matches!(node.value, Value::Seq(_)) {
            self.error(node.line, &list_field, "must list at least one host:port");
        }
        let mut out: Vec<String> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_field = format!("{list_field}[{i}]");
            let Some(addr) = self.string(item, &item_field) else {
                continue;
            };
            // Port 0 is the placeholder `meshward up` fills in.
            if !self.rule(item.line, &item_field, rules::host_port(&addr, true)) {
                continue;
            }
            if out.contains(&addr) && !addr.ends_with(":0") {
                self.error(
                    item.line,
                    &item_field,
                    format!("duplicate endpoint `{addr}`"),
                );
                continue;
            }
            out.push(addr);
        }
        out
    }

    fn limits(&mut self, node: Option<&Node>, field: &str) -> RateLimitSettings {
        let mut limits = RateLimitSettings::default();
        let Some(fields) = node.and_then(|n| self.mapping(n, field, LIMIT_KEYS)) else {
            return limits;
        };
        if let Some(n) = fields.get("requests_per_second") {
            let f = join(field, "requests_per_second");
            limits.requests_per_second = self.number(n, &f).unwrap_or_default();
        }
        let mut burst_line = fields.line;
        let mut burst_ok = true;
        if let Some(n) = fields.get("burst") {
            burst_line = n.line;
            let parsed = self.uint(n, &join(field, "burst"));
            burst_ok = parsed.is_some();
            limits.burst = parsed.unwrap_or_default();
        }
        if let Some(n) = fields.get("max_concurrent") {
            limits.max_concurrent = self
                .uint(n, &join(field, "max_concurrent"))
                .unwrap_or_default();
        }
        if let Some(n) = fields.get("per_destination") {
            limits.per_destination = self
                .boolean(n, &join(field, "per_destination"))
                .unwrap_or_default();
        }
        if let Some(n) = fields.get("count_denied") {
            limits.count_denied = self
                .boolean(n, &join(field, "count_denied"))
                .unwrap_or(true);
        }
        if burst_ok && limits.requests_per_second > 0.0 && limits.burst < 1 {
            self.error(
                burst_line,
                &join(field, "burst"),
                "must be at least 1 when requests_per_second > 0",
            );
        }
        limits
    }

    fn breaker(&mut self, node: Option<&Node>, field: &str) -> BreakerSettings {
        let mut breaker = BreakerSettings::default();
        let Some(fields) = node.and_then(|n| self.mapping(n, field, BREAKER_KEYS)) else {
            return breaker;
        };
        if let Some(n) = fields.get("consecutive_failures") {
            let f = join(field, "consecutive_failures");
            if let Some(v) = self.uint(n, &f) {
                if v >= 1 {
                    breaker.consecutive_failures = v;
                } else {
                    self.error(n.line, &f, "must be at least 1");
                }
            }
        }
        if let Some(n) = fields.get("open_for") {
            let f = join(field, "open_for");
            if let Some(d) = self.duration(n, &f) {
                if d > Duration::ZERO {
                    breaker.open_for = d;
                } else {
                    self.error(n.line, &f, "must be longer than 0s");
                }
            }
        }
        if let Some(n) = fields.get("half_open_probes") {
            let f = join(field, "half_open_probes");
            if let Some(v) = self.uint(n, &f) {
                if v >= 1 {
                    breaker.half_open_probes = v;
                } else {
                    self.error(n.line, &f, "must be at least 1");
                }
            }
        }
        breaker
    }

    /// A service's `timeouts` and `routes`: each route's `timeouts` starts
    /// from the service's, so what a route omits it inherits. Every value
    /// is checked as a dataplane will check it ([`Timeouts::problems`]),
    /// and each message names the service.
    fn service_timeouts(
        &mut self,
        fields: &Fields<'_>,
        field: &str,
        service: &str,
    ) -> ServiceTimeouts {
        let timeouts_field = join(field, "timeouts");
        let default = self.timeouts(
            fields.get("timeouts"),
            &timeouts_field,
            Timeouts::default(),
            service,
        );
        let mut routes: Vec<RouteTimeouts> = Vec::new();
        let mut seen: Vec<(String, String, usize)> = Vec::new();
        let routes_field = join(field, "routes");
        for (i, node) in self
            .list(fields.get("routes"), &routes_field)
            .iter()
            .enumerate()
        {
            let route_field = format!("{routes_field}[{i}]");
            let Some(route) = self.mapping(node, &route_field, ROUTE_KEYS) else {
                continue;
            };
            let prefix_field = join(&route_field, "prefix");
            let prefix = self
                .required_string(&route, &route_field, "prefix")
                .and_then(|(prefix, line)| {
                    let checked = rules::path_prefix(&prefix)
                        .map_err(|why| format!("of service {service} {why}"));
                    if !self.rule(line, &prefix_field, checked) {
                        return None;
                    }
                    if let Some((_, first, first_line)) = seen.iter().find(|(p, ..)| *p == prefix)
                    {
                        self.error(
                            line,
                            &prefix_field,
                            format!(
                                "duplicate prefix `{prefix}` of service {service}: already used by {first} (line {first_line})"
                            ),
                        );
                        return None;
                    }
                    seen.push((prefix.clone(), prefix_field.clone(), line));
                    Some(prefix)
                });
            let timeouts = self.timeouts(
                route.get("timeouts"),
                &join(&route_field, "timeouts"),
                default,
                service,
            );
            if let Some(prefix) = prefix {
                routes.push(RouteTimeouts { prefix, timeouts });
            }
        }
        ServiceTimeouts { default, routes }
    }

    /// A `timeouts:` mapping over `base`: the keys given replace its
    /// values. Out-of-range values are reported and `base`'s kept.
    fn timeouts(
        &mut self,
        node: Option<&Node>,
        field: &str,
        base: Timeouts,
        service: &str,
    ) -> Timeouts {
        let mut timeouts = base;
        let Some(fields) = node.and_then(|n| self.mapping(n, field, TIMEOUT_KEYS)) else {
            return timeouts;
        };
        let mut lines = HashMap::new();
        for entry in fields.entries {
            lines.insert(entry.key.as_str(), entry.value.line);
        }
        if let Some(d) = fields
            .get("response")
            .and_then(|n| self.duration(n, &join(field, "response")))
        {
            timeouts.response = d;
        }
        if let Some(d) = fields
            .get("idle")
            .and_then(|n| self.duration(n, &join(field, "idle")))
        {
            timeouts.idle = d;
        }
        if let Some(d) = fields
            .get("total")
            .and_then(|n| self.duration(n, &join(field, "total")))
        {
            timeouts.total = Some(d);
        }
        let problems = timeouts.problems();
        for (key, why) in &problems {
            // `total < response` with only `response` written is still
            // reported at `total`, where the inherited value came from.
            let line = lines.get(key).copied().unwrap_or(fields.line);
            self.error(
                line,
                &join(field, key),
                format!("of service {service} {why}"),
            );
        }
        if problems.is_empty() { timeouts } else { base }
    }

    /// One of `names`, turned into a value by `parse`.
    fn choice<T>(
        &mut self,
        node: &Node,
        field: &str,
        names: &[&str],
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let text = self.string(node, field)?;
        let value = parse(&text);
        if value.is_none() {
            self.error(
                node.line,
                field,
                format!("must be one of {}, found {text:?}", names.join(", ")),
            );
        }
        value
    }

    /// `protocol` (`http`, the default, or `mcp`) and the `mcp` block,
    /// which only an MCP service may have.
    fn protocol(&mut self, fields: &Fields<'_>, field: &str) -> Option<McpSettings> {
        let protocol_field = join(field, "protocol");
        let is_mcp = match fields.get("protocol") {
            None => false,
            Some(n) => self
                .choice(n, &protocol_field, PROTOCOLS, |p| {
                    PROTOCOLS.contains(&p).then_some(p == "mcp")
                })
                .unwrap_or(false),
        };
        let block = fields.get("mcp");
        if !is_mcp {
            if let Some(n) = block {
                self.error(n.line, &join(field, "mcp"), "needs `protocol: mcp`");
            }
            return None;
        }
        let mut settings = McpSettings::default();
        let field = join(field, "mcp");
        let Some(m) = block.and_then(|n| self.mapping(n, &field, MCP_KEYS)) else {
            return Some(settings);
        };
        if let Some(n) = m.get("path") {
            let f = join(&field, "path");
            if let Some(p) = self.string(n, &f)
                && self.rule(n.line, &f, mcp::check_path(&p))
            {
                settings.path = p;
            }
        }
        if let Some(n) = m.get("max_message_bytes") {
            let f = join(&field, "max_message_bytes");
            if let Some(v) = self.uint(n, &f)
                && self.rule(n.line, &f, mcp::check_max_message_bytes(v))
            {
                settings.max_message_bytes = v;
            }
        }
        if let Some(n) = m.get("filter_tools_list") {
            let f = join(&field, "filter_tools_list");
            settings.filter_tools_list = self.boolean(n, &f).unwrap_or_default();
        }
        if let Some(n) = m.get("tool_limits") {
            let f = join(&field, "tool_limits");
            let Value::Map(entries) = &n.value else {
                self.error(
                    n.line,
                    &f,
                    format!(
                        "must be a mapping of tool name to limits, found {}",
                        n.kind()
                    ),
                );
                return Some(settings);
            };
            for entry in entries {
                let tf = join(&f, &entry.key);
                if !self.rule(entry.key_line, &tf, mcp::check_tool_name(&entry.key)) {
                    continue;
                }
                let limit = self.limits(Some(&entry.value), &tf);
                if limit.max_concurrent != 0 {
                    self.error(
                        entry.value.line,
                        &join(&tf, "max_concurrent"),
                        "is not supported per tool (a tool limit is a rate)",
                    );
                } else if limit.per_destination {
                    self.error(
                        entry.value.line,
                        &join(&tf, "per_destination"),
                        "does not apply: tool limits are per service",
                    );
                } else if !limit.rate_limited() {
                    self.error(
                        entry.value.line,
                        &join(&tf, "requests_per_second"),
                        "must be > 0 for a tool limit",
                    );
                } else {
                    settings.tool_limits.insert(entry.key.clone(), limit);
                }
            }
        }
        Some(settings)
    }

    fn paths(&mut self, node: Option<&Node>, field: &str) -> PathRules {
        let mut rules = PathRules::default();
        let Some(fields) = node.and_then(|n| self.mapping(n, field, PATH_KEYS)) else {
            return rules;
        };
        let mut action = |key: &str| {
            fields.get(key).and_then(|n| {
                self.choice(n, &join(field, key), PathAction::NAMES, PathAction::parse)
            })
        };
        if let Some(a) = action("escaped_slashes") {
            rules.escaped_slashes = a;
        }
        if let Some(a) = action("path_parameters") {
            rules.path_parameters = a;
        }
        rules
    }

    /// The `telemetry:` section: `tracing` (an OTLP endpoint, protocol and
    /// sampler), checked as the OpenTelemetry environment would be.
    fn telemetry(&mut self, node: &Node) -> Option<meshward_telemetry::TracingFile> {
        use meshward_telemetry::{Protocol, TracingConfig, TracingFile};
        let telemetry = self.mapping(node, "telemetry", TELEMETRY_KEYS)?;
        let field = "telemetry.tracing";
        let fields = self.mapping(telemetry.get("tracing")?, field, TRACING_KEYS)?;
        let mut file = TracingFile::default();
        let mut lines = HashMap::new();
        for entry in fields.entries {
            lines.insert(entry.key.as_str(), entry.value.line);
        }
        file.endpoint = fields
            .get("endpoint")
            .and_then(|n| self.string(n, &join(field, "endpoint")));
        if let Some(n) = fields.get("protocol") {
            file.protocol = match self.string(n, &join(field, "protocol")).as_deref() {
                Some("grpc") => Some(Protocol::Grpc),
                Some("http/protobuf") => Some(Protocol::HttpProtobuf),
                Some(other) => {
                    self.error(
                        n.line,
                        &join(field, "protocol"),
                        format!("{other:?} is not an OTLP protocol (grpc, http/protobuf)"),
                    );
                    None
                }
                None => None,
            };
        }
        file.sampler = fields
            .get("sampler")
            .and_then(|n| self.string(n, &join(field, "sampler")));
        file.sampler_arg = fields
            .get("sampler_arg")
            .and_then(|n| self.number(n, &join(field, "sampler_arg")));
        if file.endpoint.is_none() {
            self.error(fields.line, &join(field, "endpoint"), "is required");
            return None;
        }
        // The same checks the environment gets, without the environment.
        if let Err(e) = TracingConfig::resolve_with(Some(&file), |_| None) {
            let key = e.setting.rsplit('.').next().unwrap_or_default();
            let line = lines.get(key).copied().unwrap_or(fields.line);
            self.error(line, &e.setting, e.message);
            return None;
        }
        Some(file)
    }

    /// The `listeners:` section: each value given replaces a default, and
    /// the result must be in the range a dataplane accepts.
    fn listeners(&mut self, node: Option<&Node>) -> ListenerLimits {
        let field = "listeners";
        let mut limits = ListenerLimits::default();
        let Some(fields) = node.and_then(|n| self.mapping(n, field, LISTENER_KEYS)) else {
            return limits;
        };
        let mut lines = HashMap::new();
        for entry in fields.entries {
            lines.insert(entry.key.as_str(), entry.value.line);
        }
        for (key, slot) in [
            ("header_read_timeout", &mut limits.header_read_timeout),
            ("idle_timeout", &mut limits.idle_timeout),
        ] {
            if let Some(d) = fields
                .get(key)
                .and_then(|n| self.duration(n, &join(field, key)))
            {
                *slot = d;
            }
        }
        for (key, slot) in [
            ("max_connections", &mut limits.max_connections),
            (
                "max_connections_per_client_ip",
                &mut limits.max_connections_per_client_ip,
            ),
            ("max_concurrent_streams", &mut limits.max_concurrent_streams),
            ("admin_max_connections", &mut limits.admin_max_connections),
        ] {
            if let Some(v) = fields
                .get(key)
                .and_then(|n| self.uint(n, &join(field, key)))
            {
                *slot = v;
            }
        }
        if let Some(kb) = fields
            .get("max_request_headers_kb")
            .and_then(|n| self.uint(n, "listeners.max_request_headers_kb"))
        {
            limits.max_request_headers_bytes = kb.saturating_mul(1024);
        }
        for (key, why) in limits.problems() {
            let line = lines.get(key).copied().unwrap_or(fields.line);
            self.error(line, &join(field, key), why);
        }
        limits
    }

    /// Reports every repeat of a value, at the repeat, naming the first.
    fn unique(&mut self, items: &[Named], what: &str) {
        let mut first: HashMap<&str, &Named> = HashMap::new();
        for item in items {
            if let Some(prev) = first.get(item.value.as_str()) {
                self.error(
                    item.line,
                    &item.field,
                    format!(
                        "duplicate {what} `{}`: already used by {} (line {})",
                        item.value, prev.field, prev.line
                    ),
                );
            } else {
                first.insert(&item.value, item);
            }
        }
    }
}

/// The known key closest to a misspelled one, if it is close enough to be a
/// plausible typo.
fn suggestion<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_typos_only() {
        assert_eq!(
            suggestion("request_per_second", LIMIT_KEYS),
            Some("requests_per_second")
        );
        assert_eq!(suggestion("brust", LIMIT_KEYS), Some("burst"));
        assert_eq!(suggestion("colour", LIMIT_KEYS), None);
    }
}
