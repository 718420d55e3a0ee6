//! `meshward spire entries`: the mesh's registry as SPIRE registration entries.
//!
//! `mesh.yaml` is the one registry of who exists in the mesh; SPIRE must issue
//! an SVID to exactly those identities. Writing the entries by hand would make
//! two registries that drift, so this module derives them: one entry per
//! agent, per service and for the control plane, each with the selectors that
//! tell that workload apart on a node.
//!
//! Selector conventions (documented in `docs/spire.md`):
//!
//! - `unix` (local runs, the unix workload attestor): the workload runs as its
//!   own user `mw-<name>` (`mw-controlplane` for the control plane), selector
//!   `unix:user:mw-<name>`. Linux user names are at most 32 characters, so
//!   names longer than 29 are refused.
//! - `k8s` (the k8s workload attestor): the workload runs in namespace
//!   `meshward` with service account `<name>` (`meshward-controlplane` for the
//!   control plane), selectors `k8s:ns:meshward` and `k8s:sa:<name>`. The
//!   node alias the entries hang off is itself an entry (`-node`, selected by
//!   `k8s_psat:cluster:<cluster>`).
//!
//! The module is pure planning (entries, commands, a diff against what the
//! server already has); running `spire-server` is left to the CLI, so the
//! logic is unit-tested without a server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Who exists in the mesh, as far as SPIRE needs to know: each agent's and
/// service's name and SPIFFE ID (the control plane derives it from
/// `mesh.yaml`; this crate knows SPIRE, not the mesh file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// (name, SPIFFE ID), by name.
    pub agents: Vec<(String, String)>,
    /// (name, SPIFFE ID), by name.
    pub services: Vec<(String, String)>,
    /// (name, SPIFFE ID) of the ext_authz / rate-limit backends; the name
    /// is the ID's last path segment.
    pub authorizers: Vec<(String, String)>,
}

/// Longest Linux user name `useradd` accepts.
const MAX_UNIX_USER: usize = 32;
/// Prefix of the per-workload unix users.
pub const UNIX_USER_PREFIX: &str = "mw-";

/// Why entries could not be planned or applied.
#[derive(Debug, thiserror::Error)]
pub enum EntriesError {
    /// A workload name cannot become a unix user name.
    #[error("{kind} {name:?}: unix user {user:?} is longer than {MAX_UNIX_USER} characters")]
    UserTooLong {
        /// agent, service or control plane.
        kind: &'static str,
        /// The workload's name in mesh.yaml.
        name: String,
        /// The user name it would get.
        user: String,
    },
    /// A parent ID that is not a SPIFFE ID of the mesh's trust domain.
    #[error("parent ID {parent_id:?} must be a SPIFFE ID in trust domain {trust_domain}")]
    BadParentId {
        /// The parent ID as given.
        parent_id: String,
        /// The mesh's trust domain.
        trust_domain: String,
    },
    /// A name Kubernetes cannot use as a service account or label value.
    #[error(
        "{kind} {what:?}: {name:?} is not a Kubernetes DNS label (a-z, 0-9 and '-', at most 63 characters, starting and ending with a letter or digit)"
    )]
    NotADnsLabel {
        /// agent, service, authorizer, control plane or namespace.
        kind: &'static str,
        /// The workload, or the option that named it.
        what: String,
        /// The refused name.
        name: String,
    },
    /// Two workloads whose pods would carry the same label and account.
    #[error("{first} and {second} share the name {name:?}: their pods could not be told apart")]
    SameWorkloadName {
        /// The shared name.
        name: String,
        /// The first workload with it.
        first: String,
        /// The second one.
        second: String,
    },
    /// A SPIFFE ID spire-controller-manager would expand as a template.
    #[error("{workload}: SPIFFE ID {spiffe_id:?} contains a template delimiter ({{{{ or }}}})")]
    TemplateInSpiffeId {
        /// Which workload.
        workload: String,
        /// The refused ID.
        spiffe_id: String,
    },
    /// `spire-server entry show -output json` answered something unexpected.
    #[error("cannot read the entries spire-server listed: {0}")]
    ExistingEntries(String),
    /// Running `spire-server` failed.
    #[error("`{command}` failed: {reason}")]
    Command {
        /// The command line, shell-quoted.
        command: String,
        /// Exit status and stderr, or the spawn error.
        reason: String,
    },
}

/// How workloads are told apart on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorKind {
    /// `unix:user:mw-<name>` (the unix workload attestor, local runs).
    Unix,
    /// `k8s:ns:<namespace>` + `k8s:sa:<name>` (the k8s workload attestor).
    K8s,
}

impl std::str::FromStr for SelectorKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "unix" => Ok(SelectorKind::Unix),
            "k8s" => Ok(SelectorKind::K8s),
            other => Err(format!("unknown selector kind {other:?} (unix or k8s)")),
        }
    }
}

/// What the entries are derived for, beyond the mesh file.
#[derive(Debug, Clone)]
pub struct EntryOptions {
    /// The SPIFFE ID of the node (alias) the workload entries hang off;
    /// default `spiffe://<td>/meshward/node`.
    pub parent_id: Option<String>,
    /// Which selectors to generate.
    pub selectors: SelectorKind,
    /// Kubernetes namespace of the workloads (k8s selectors only).
    pub k8s_namespace: String,
    /// Kubernetes cluster name the node alias selects (k8s selectors only).
    pub k8s_cluster: String,
    /// X509-SVID lifetime for the entries, in seconds; `None` keeps the
    /// server's `default_x509_svid_ttl`.
    pub x509_svid_ttl: Option<u32>,
}

impl Default for EntryOptions {
    fn default() -> Self {
        Self {
            parent_id: None,
            selectors: SelectorKind::Unix,
            k8s_namespace: "meshward".into(),
            k8s_cluster: "meshward".into(),
            x509_svid_ttl: None,
        }
    }
}

/// One registration entry, as `spire-server entry create` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Which mesh workload this is, for messages (`agent support-triage`).
    pub workload: String,
    /// The workload's SPIFFE ID.
    pub spiffe_id: String,
    /// The node (alias) the entry hangs off.
    pub parent_id: String,
    /// `type:value` strings, sorted.
    pub selectors: Vec<String>,
    /// A node alias entry (`-node`) rather than a workload entry.
    pub node: bool,
    /// X509-SVID lifetime in seconds; `None` keeps the server's default.
    pub x509_svid_ttl: Option<u32>,
}

/// The SPIFFE ID the control plane runs as in a trust domain.
pub fn controlplane_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/meshward/controlplane")
}

/// The default node alias the workload entries hang off.
pub fn default_parent_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/meshward/node")
}

/// The unix user a workload named `name` runs as (`mw-<name>`).
pub fn unix_user(name: &str) -> String {
    format!("{UNIX_USER_PREFIX}{name}")
}

/// The entries for every agent and service of `registry` and for its control
/// plane (control plane first, then agents, then services, in registry order).
pub fn plan(registry: &Registry, opts: &EntryOptions) -> Result<Vec<Entry>, EntriesError> {
    let td = &registry.trust_domain;
    let parent_id = opts
        .parent_id
        .clone()
        .unwrap_or_else(|| default_parent_id(td));
    if parent_id
        .strip_prefix(&format!("spiffe://{td}/"))
        .is_none_or(str::is_empty)
    {
        return Err(EntriesError::BadParentId {
            parent_id,
            trust_domain: td.clone(),
        });
    }
    let mut workloads: Vec<(&'static str, String, String)> = vec![(
        "control plane",
        "controlplane".to_string(),
        controlplane_id(td),
    )];
    workloads.extend(
        registry
            .agents
            .iter()
            .map(|(name, id)| ("agent", name.clone(), id.clone())),
    );
    workloads.extend(
        registry
            .services
            .iter()
            .map(|(name, id)| ("service", name.clone(), id.clone())),
    );
    workloads.extend(
        registry
            .authorizers
            .iter()
            .map(|(name, id)| ("authorizer", name.clone(), id.clone())),
    );

    let mut entries = Vec::new();
    if opts.selectors == SelectorKind::K8s {
        entries.push(Entry {
            workload: format!("node alias (cluster {})", opts.k8s_cluster),
            spiffe_id: parent_id.clone(),
            parent_id: format!("spiffe://{td}/spire/server"),
            selectors: vec![format!("k8s_psat:cluster:{}", opts.k8s_cluster)],
            node: true,
            x509_svid_ttl: None,
        });
    }
    for (kind, name, spiffe_id) in workloads {
        let mut selectors = match opts.selectors {
            SelectorKind::Unix => {
                let user = unix_user(&name);
                if user.len() > MAX_UNIX_USER {
                    return Err(EntriesError::UserTooLong { kind, name, user });
                }
                vec![format!("unix:user:{user}")]
            }
            SelectorKind::K8s => {
                let sa = if kind == "control plane" {
                    "meshward-controlplane".to_string()
                } else {
                    name.clone()
                };
                vec![
                    format!("k8s:ns:{}", opts.k8s_namespace),
                    format!("k8s:sa:{sa}"),
                ]
            }
        };
        selectors.sort();
        entries.push(Entry {
            workload: if kind == "control plane" {
                kind.to_string()
            } else {
                format!("{kind} {name}")
            },
            spiffe_id,
            parent_id: parent_id.clone(),
            selectors,
            node: false,
            x509_svid_ttl: opts.x509_svid_ttl,
        });
    }
    Ok(entries)
}

/// Where `spire-server` is and how it reaches the server's API socket.
#[derive(Debug, Clone)]
pub struct ServerCli {
    /// The `spire-server` binary.
    pub spire_server: PathBuf,
    /// `-socketPath`; `None` uses spire-server's default.
    pub socket: Option<PathBuf>,
}

impl ServerCli {
    fn socket_args(&self) -> Vec<String> {
        match &self.socket {
            Some(s) => vec!["-socketPath".into(), s.display().to_string()],
            None => Vec::new(),
        }
    }

    fn command(&self, args: Vec<String>) -> Vec<String> {
        let mut argv = vec![self.spire_server.display().to_string()];
        argv.extend(args);
        argv
    }

    /// `spire-server entry create ...` for `entry`.
    pub fn create(&self, entry: &Entry) -> Vec<String> {
        let mut args = vec!["entry".to_string(), "create".to_string()];
        args.extend(self.socket_args());
        args.extend(entry_args(entry, !entry.node));
        self.command(args)
    }

    /// `spire-server entry update -entryID <id> ...` making entry `id` equal `entry`.
    pub fn update(&self, id: &str, entry: &Entry) -> Vec<String> {
        let mut args = vec!["entry".to_string(), "update".to_string()];
        args.extend(self.socket_args());
        args.extend(["-entryID".to_string(), id.to_string()]);
        // `entry update` has no `-node`; the server ID parent says the same.
        args.extend(entry_args(entry, true));
        self.command(args)
    }

    /// `spire-server entry show -output json`: every entry the server has.
    pub fn show(&self) -> Vec<String> {
        let mut args = vec!["entry".to_string(), "show".to_string()];
        args.extend(self.socket_args());
        args.extend(["-output".to_string(), "json".to_string()]);
        self.command(args)
    }
}

/// `-spiffeID`, `-parentID` (or `-node`, which makes the server the parent),
/// selectors and TTL.
fn entry_args(entry: &Entry, with_parent: bool) -> Vec<String> {
    let mut args = vec!["-spiffeID".to_string(), entry.spiffe_id.clone()];
    if with_parent {
        args.extend(["-parentID".to_string(), entry.parent_id.clone()]);
    } else {
        args.insert(0, "-node".to_string());
    }
    for s in &entry.selectors {
        args.extend(["-selector".to_string(), s.clone()]);
    }
    if let Some(ttl) = entry.x509_svid_ttl {
        args.extend(["-x509SVIDTTL".to_string(), ttl.to_string()]);
    }
    args
}

/// An entry as the server has it (from `entry show -output json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    /// The server's entry ID.
    pub id: String,
    /// The entry's SPIFFE ID.
    pub spiffe_id: String,
    /// The entry's parent ID.
    pub parent_id: String,
    /// `type:value` strings.
    pub selectors: BTreeSet<String>,
    /// X509-SVID lifetime in seconds (0: the server's default).
    pub x509_svid_ttl: u32,
}

/// Parses `spire-server entry show -output json`.
pub fn parse_existing(json: &str) -> Result<Vec<Existing>, EntriesError> {
    let bad = |what: &str| EntriesError::ExistingEntries(what.to_string());
    let doc: serde_json::Value =
        serde_json::from_str(json).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let Some(entries) = doc.get("entries") else {
        return Err(bad("no \"entries\" field"));
    };
    let Some(entries) = entries.as_array() else {
        // An empty listing comes back as `"entries": null` or absent.
        return if entries.is_null() {
            Ok(Vec::new())
        } else {
            Err(bad("\"entries\" is not a list"))
        };
    };
    let id_of = |v: &serde_json::Value, field: &str| -> Result<String, EntriesError> {
        let td = v
            .get(field)
            .and_then(|id| id.get("trust_domain"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| bad(&format!("entry without {field}.trust_domain")))?;
        let path = v
            .get(field)
            .and_then(|id| id.get("path"))
            .and_then(|p| p.as_str())
            .unwrap_or("");
        Ok(format!("spiffe://{td}{path}"))
    };
    let mut out = Vec::new();
    for e in entries {
        let id = e
            .get("id")
            .and_then(|i| i.as_str())
            .ok_or_else(|| bad("entry without id"))?
            .to_string();
        let selectors = e
            .get("selectors")
            .and_then(|s| s.as_array())
            .map(|list| {
                list.iter()
                    .filter_map(|s| {
                        Some(format!(
                            "{}:{}",
                            s.get("type")?.as_str()?,
                            s.get("value")?.as_str()?
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Existing {
            spiffe_id: id_of(e, "spiffe_id")?,
            parent_id: id_of(e, "parent_id")?,
            selectors,
            x509_svid_ttl: e
                .get("x509_svid_ttl")
                .and_then(|t| t.as_u64())
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(0),
            id,
        });
    }
    Ok(out)
}

/// What applying one entry takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The server has it already, selectors and TTL as wanted.
    Unchanged {
        /// The server's entry ID.
        id: String,
    },
    /// The server has an entry for this SPIFFE ID and parent that differs.
    Update {
        /// The server's entry ID.
        id: String,
    },
    /// The server has no entry for this SPIFFE ID and parent.
    Create,
}

/// Compares the wanted entries with the server's: an entry is the same
/// registration when SPIFFE ID and parent match; it is unchanged when the
/// selectors (and the TTL, if one is asked for) match too.
pub fn diff(wanted: &[Entry], existing: &[Existing]) -> Vec<(Entry, Action)> {
    let by_key: BTreeMap<(&str, &str), &Existing> = existing
        .iter()
        .map(|e| ((e.spiffe_id.as_str(), e.parent_id.as_str()), e))
        .collect();
    wanted
        .iter()
        .map(|w| {
            let action = match by_key.get(&(w.spiffe_id.as_str(), w.parent_id.as_str())) {
                None => Action::Create,
                Some(e) => {
                    let selectors: BTreeSet<String> = w.selectors.iter().cloned().collect();
                    let ttl_ok = w.x509_svid_ttl.is_none_or(|t| t == e.x509_svid_ttl);
                    if selectors == e.selectors && ttl_ok {
                        Action::Unchanged { id: e.id.clone() }
                    } else {
                        Action::Update { id: e.id.clone() }
                    }
                }
            };
            (w.clone(), action)
        })
        .collect()
}

/// Quotes `argv` for a POSIX shell, so printed commands can be pasted.
pub fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '@')
                });
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs one `spire-server` command line, returning its stdout.
pub fn run(argv: &[String]) -> Result<String, EntriesError> {
    let fail = |reason: String| EntriesError::Command {
        command: shell_line(argv),
        reason,
    };
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| fail("empty command".into()))?;
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies `wanted` to the server idempotently; returns one line per entry
/// saying what happened.
pub fn apply(cli: &ServerCli, wanted: &[Entry]) -> Result<Vec<String>, EntriesError> {
    let existing = parse_existing(&run(&cli.show())?)?;
    let mut report = Vec::new();
    for (entry, action) in diff(wanted, &existing) {
        let line = match action {
            Action::Unchanged { id } => format!(
                "unchanged {} ({}, entry {id})",
                entry.spiffe_id, entry.workload
            ),
            Action::Update { id } => {
                run(&cli.update(&id, &entry))?;
                format!(
                    "updated   {} ({}, entry {id})",
                    entry.spiffe_id, entry.workload
                )
            }
            Action::Create => {
                run(&cli.create(&entry))?;
                format!("created   {} ({})", entry.spiffe_id, entry.workload)
            }
        };
        report.push(line);
    }
    Ok(report)
}

/// `spire-server` from `PATH` unless a path is given.
pub fn default_spire_server() -> PathBuf {
    Path::new("spire-server").to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo mesh's registry (deploy/local/mesh.yaml).
    fn shipped_mesh() -> Registry {
        let id = |kind: &str, name: &str| {
            (
                name.to_string(),
                format!("spiffe://example.org/{kind}/{name}"),
            )
        };
        Registry {
            trust_domain: "example.org".into(),
            agents: vec![id("agent", "billing-bot"), id("agent", "support-triage")],
            services: [
                "billing-system",
                "customer-lookup",
                "hello-skill",
                "sentiment-analysis",
                "support-system",
            ]
            .iter()
            .map(|n| id("service", n))
            .collect(),
            authorizers: vec![(
                "ext-authz".into(),
                "spiffe://example.org/meshward/ext-authz".into(),
            )],
        }
    }

    fn cli() -> ServerCli {
        ServerCli {
            spire_server: "spire-server".into(),
            socket: Some("/tmp/s/api.sock".into()),
        }
    }

    #[test]
    fn unix_entries_cover_controlplane_agents_and_services() {
        let mesh = shipped_mesh();
        let entries = plan(&mesh, &EntryOptions::default()).unwrap();
        assert_eq!(entries.len(), 1 + 2 + 5 + 1);
        let authorizer = entries.last().unwrap();
        assert_eq!(
            authorizer.spiffe_id,
            "spiffe://example.org/meshward/ext-authz"
        );
        assert_eq!(authorizer.selectors, ["unix:user:mw-ext-authz"]);
        assert_eq!(authorizer.workload, "authorizer ext-authz");
        assert_eq!(
            entries[0].spiffe_id,
            "spiffe://example.org/meshward/controlplane"
        );
        assert_eq!(entries[0].selectors, ["unix:user:mw-controlplane"]);
        let triage = entries
            .iter()
            .find(|e| e.spiffe_id == "spiffe://example.org/agent/support-triage")
            .unwrap();
        assert_eq!(triage.selectors, ["unix:user:mw-support-triage"]);
        assert_eq!(triage.parent_id, "spiffe://example.org/meshward/node");
        assert!(entries.iter().all(|e| !e.node));
        assert_eq!(
            shell_line(&cli().create(triage)),
            "spire-server entry create -socketPath /tmp/s/api.sock \
             -spiffeID spiffe://example.org/agent/support-triage \
             -parentID spiffe://example.org/meshward/node -selector unix:user:mw-support-triage"
        );
    }

    #[test]
    fn k8s_entries_use_namespace_service_account_and_a_node_alias() {
        let mesh = shipped_mesh();
        let opts = EntryOptions {
            selectors: SelectorKind::K8s,
            x509_svid_ttl: Some(300),
            ..EntryOptions::default()
        };
        let entries = plan(&mesh, &opts).unwrap();
        assert_eq!(entries.len(), 1 + 1 + 2 + 5 + 1);
        let authorizer = entries.last().unwrap();
        assert_eq!(
            authorizer.selectors,
            ["k8s:ns:meshward", "k8s:sa:ext-authz"]
        );
        let alias = &entries[0];
        assert!(alias.node);
        assert_eq!(alias.spiffe_id, "spiffe://example.org/meshward/node");
        assert_eq!(alias.selectors, ["k8s_psat:cluster:meshward"]);
        assert_eq!(
            entries[1].selectors,
            ["k8s:ns:meshward", "k8s:sa:meshward-controlplane"]
        );
        let hello = entries
            .iter()
            .find(|e| e.spiffe_id.ends_with("/service/hello-skill"))
            .unwrap();
        assert_eq!(hello.selectors, ["k8s:ns:meshward", "k8s:sa:hello-skill"]);
        let line = shell_line(&cli().create(hello));
        assert!(line.ends_with("-x509SVIDTTL 300"), "{line}");
        assert_eq!(
            shell_line(&cli().create(alias)),
            "spire-server entry create -socketPath /tmp/s/api.sock -node \
             -spiffeID spiffe://example.org/meshward/node -selector k8s_psat:cluster:meshward"
        );
    }

    #[test]
    fn parent_id_must_be_in_the_trust_domain() {
        let mesh = shipped_mesh();
        for bad in ["spiffe://other.org/node", "spiffe://example.org/", "node"] {
            let opts = EntryOptions {
                parent_id: Some(bad.into()),
                ..EntryOptions::default()
            };
            assert!(
                matches!(plan(&mesh, &opts), Err(EntriesError::BadParentId { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn names_too_long_for_a_unix_user_are_refused() {
        let mut mesh = shipped_mesh();
        mesh.agents[0].0 = "a".repeat(30);
        let err = plan(&mesh, &EntryOptions::default()).unwrap_err();
        assert!(err.to_string().contains(&"a".repeat(30)), "{err}");
        // 29 characters is the longest that fits.
        let mut mesh = shipped_mesh();
        mesh.agents[0].0 = "a".repeat(29);
        assert!(plan(&mesh, &EntryOptions::default()).is_ok());
    }

    const SHOW: &str = r#"{
      "entries": [
        {"id": "e1",
         "spiffe_id": {"trust_domain": "example.org", "path": "/agent/support-triage"},
         "parent_id": {"trust_domain": "example.org", "path": "/meshward/node"},
         "selectors": [{"type": "unix", "value": "user:mw-support-triage"}],
         "x509_svid_ttl": 3600},
        {"id": "e2",
         "spiffe_id": {"trust_domain": "example.org", "path": "/agent/billing-bot"},
         "parent_id": {"trust_domain": "example.org", "path": "/meshward/node"},
         "selectors": [{"type": "unix", "value": "uid:1000"}],
         "x509_svid_ttl": 3600}
      ],
      "next_page_token": ""
    }"#;

    #[test]
    fn diff_skips_equal_entries_updates_changed_and_creates_missing() {
        let mesh = shipped_mesh();
        let wanted = plan(&mesh, &EntryOptions::default()).unwrap();
        let existing = parse_existing(SHOW).unwrap();
        assert_eq!(existing.len(), 2);
        let actions: BTreeMap<String, Action> = diff(&wanted, &existing)
            .into_iter()
            .map(|(e, a)| (e.spiffe_id, a))
            .collect();
        assert_eq!(
            actions["spiffe://example.org/agent/support-triage"],
            Action::Unchanged { id: "e1".into() }
        );
        assert_eq!(
            actions["spiffe://example.org/agent/billing-bot"],
            Action::Update { id: "e2".into() }
        );
        assert_eq!(
            actions["spiffe://example.org/meshward/controlplane"],
            Action::Create
        );
        // Asking for another TTL turns an equal entry into an update.
        let wanted = plan(
            &mesh,
            &EntryOptions {
                x509_svid_ttl: Some(60),
                ..EntryOptions::default()
            },
        )
        .unwrap();
        let triage = diff(&wanted, &existing)
            .into_iter()
            .find(|(e, _)| e.spiffe_id.ends_with("support-triage"))
            .unwrap();
        assert_eq!(triage.1, Action::Update { id: "e1".into() });
        assert_eq!(
            shell_line(&cli().update("e1", &triage.0)),
            "spire-server entry update -socketPath /tmp/s/api.sock -entryID e1 \
             -spiffeID spiffe://example.org/agent/support-triage \
             -parentID spiffe://example.org/meshward/node -selector unix:user:mw-support-triage \
             -x509SVIDTTL 60"
        );
    }

    #[test]
    fn empty_and_malformed_listings() {
        assert!(parse_existing(r#"{"entries": null}"#).unwrap().is_empty());
        assert!(parse_existing(r#"{"entries": []}"#).unwrap().is_empty());
        assert!(parse_existing("not json").is_err());
        assert!(parse_existing(r#"{"entries": [{"spiffe_id": {}}]}"#).is_err());
    }

    #[test]
    fn shell_quoting() {
        let argv: Vec<String> = ["a b", "it's", "plain-1:x/y", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(shell_line(&argv), r"'a b' 'it'\''s' plain-1:x/y ''");
    }
}
