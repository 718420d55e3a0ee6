//! `meshward spire entries --format k8s`: the mesh's registry as
//! spire-controller-manager `ClusterSPIFFEID` resources.
//!
//! On Kubernetes, SPIRE's own way to register workloads is
//! [spire-controller-manager]: it watches `ClusterSPIFFEID` resources and
//! pods, and keeps one registration entry per matching pod (parented to the
//! node the pod runs on, with `k8s:ns` and `k8s:pod-uid` selectors), creating
//! and deleting them as pods come and go. Running `spire-server entry create`
//! through `kubectl exec` instead would need the `meshward` binary and the mesh
//! file inside the SPIRE server's image, and would leave stale entries behind.
//!
//! Each workload of the mesh (the control plane, every agent, service and
//! authorizer) gets one `ClusterSPIFFEID`, selecting the pods that:
//!
//! - run in the workloads' namespace (`namespaceSelector` on the
//!   `kubernetes.io/metadata.name` label, which the API server sets and
//!   nobody else can);
//! - carry the label `meshward.io/workload: <name>`;
//! - run as the service account `<name>` (`workloadSelectorTemplates`
//!   `k8s:sa:<name>`, checked by the SPIRE agent's k8s workload attestor).
//!
//! The label picks the pods the controller registers; the service account
//! selector means a pod that copies the label without running as that
//! account gets no SVID. The control plane's name is
//! `meshward-controlplane`, as in [`crate::entries`]' k8s selectors.
//!
//! No `ClusterStaticEntry` is needed: every workload of the mesh runs in a
//! pod, and node entries come from the agents' `k8s_psat` attestation.
//!
//! [spire-controller-manager]: https://github.com/spiffe/spire-controller-manager

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::entries::{EntriesError, Registry, controlplane_id};

/// The label that ties a pod to the mesh workload it runs.
pub const WORKLOAD_LABEL: &str = "meshward.io/workload";
/// The control plane's service account and workload label.
pub const CONTROLPLANE_NAME: &str = "meshward-controlplane";
/// The label every namespace carries with its own name (set by the API
/// server since Kubernetes 1.22).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The CRD version the resources are written for (spire-controller-manager
/// v0.7.0 serves only this one).
pub const API_VERSION: &str = "spire.spiffe.io/v1alpha1";

/// What the resources are derived for, beyond the mesh file.
#[derive(Debug, Clone)]
pub struct K8sOptions {
    /// Namespace the mesh's workloads run in.
    pub namespace: String,
    /// The controller class that acts on the resources (`className`);
    /// `None` leaves it to every controller without a class filter.
    pub class_name: Option<String>,
    /// X509-SVID lifetime in seconds; `None` keeps the server's default.
    pub x509_svid_ttl: Option<u32>,
}

impl Default for K8sOptions {
    fn default() -> Self {
        Self {
            namespace: "meshward".into(),
            class_name: None,
            x509_svid_ttl: None,
        }
    }
}

/// One `ClusterSPIFFEID`: which pods get which SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpiffeId {
    /// Which mesh workload this is, for messages and comments.
    pub workload: String,
    /// The resource's name (`meshward-<kind>-<name>`).
    pub name: String,
    /// The SPIFFE ID every selected pod gets.
    pub spiffe_id: String,
    /// The pods' namespace.
    pub namespace: String,
    /// The value of the pods' `meshward.io/workload` label, which is also
    /// their service account.
    pub workload_name: String,
    /// `className`, when one was asked for.
    pub class_name: Option<String>,
    /// X509-SVID lifetime in seconds.
    pub x509_svid_ttl: Option<u32>,
}

impl ClusterSpiffeId {
    /// The resource, as `kubectl apply` takes it.
    pub fn to_value(&self) -> Value {
        let mut spec = json!({
            // A template for the controller; a SPIFFE ID never contains
            // `{{` (checked in `plan`), so this one is a literal.
            "spiffeIDTemplate": self.spiffe_id,
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: self.namespace}},
            "podSelector": {"matchLabels": {WORKLOAD_LABEL: self.workload_name}},
            "workloadSelectorTemplates": [format!("k8s:sa:{}", self.workload_name)],
        });
        if let Some(class) = &self.class_name {
            spec["className"] = json!(class);
        }
        if let Some(ttl) = self.x509_svid_ttl {
            // A Go duration, as the CRD's `ttl` field takes it.
            spec["ttl"] = json!(format!("{ttl}s"));
        }
        json!({
            "apiVersion": API_VERSION,
            "kind": "ClusterSPIFFEID",
            "metadata": {
                "name": self.name,
                "labels": {"app.kubernetes.io/part-of": "meshward"},
            },
            "spec": spec,
        })
    }
}

/// One `ClusterSPIFFEID` per workload of `registry`: control plane first,
/// then agents, services and authorizers in registry order.
///
/// Refuses what would make the resources select the wrong pods or fail to
/// apply: a name that is not a Kubernetes DNS label (it becomes a label
/// value, a service account and part of the resource name), two workloads
/// with one name (their pods would be indistinguishable), and a SPIFFE ID
/// the controller would read as a template.
pub fn plan(registry: &Registry, opts: &K8sOptions) -> Result<Vec<ClusterSpiffeId>, EntriesError> {
    check_dns_label("namespace", "--k8s-namespace", &opts.namespace)?;
    let mut workloads: Vec<(&'static str, &str, String, String)> = vec![(
        "control plane",
        "controlplane",
        CONTROLPLANE_NAME.to_string(),
        controlplane_id(&registry.trust_domain),
    )];
    for (kind, label, list) in [
        ("agent", "agent", &registry.agents),
        ("service", "service", &registry.services),
        ("authorizer", "authorizer", &registry.authorizers),
    ] {
        workloads.extend(
            list.iter()
                .map(|(name, id)| (kind, label, name.clone(), id.clone())),
        );
    }

    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::with_capacity(workloads.len());
    for (kind, label, name, spiffe_id) in workloads {
        let workload = if kind == "control plane" {
            kind.to_string()
        } else {
            format!("{kind} {name}")
        };
        check_dns_label(kind, &name, &name)?;
        if let Some(first) = seen.insert(name.clone(), workload.clone()) {
            return Err(EntriesError::SameWorkloadName {
                name,
                first,
                second: workload,
            });
        }
        if spiffe_id.contains("{{") || spiffe_id.contains("}}") {
            return Err(EntriesError::TemplateInSpiffeId {
                workload,
                spiffe_id,
            });
        }
        let resource_name = if kind == "control plane" {
            name.clone()
        } else {
            format!("meshward-{label}-{name}")
        };
        out.push(ClusterSpiffeId {
            workload,
            name: resource_name,
            spiffe_id,
            namespace: opts.namespace.clone(),
            workload_name: name,
            class_name: opts.class_name.clone(),
            x509_svid_ttl: opts.x509_svid_ttl,
        });
    }
    Ok(out)
}

/// Refuses a name that is not an RFC 1123 DNS label: at most 63 characters
/// of `a-z`, `0-9` and `-`, starting and ending with a letter or digit.
/// Service accounts, label values and namespaces all accept such a name.
fn check_dns_label(kind: &'static str, what: &str, name: &str) -> Result<(), EntriesError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(EntriesError::NotADnsLabel {
            kind,
            what: what.to_string(),
            name: name.to_string(),
        })
    }
}

/// The resources as one multi-document YAML stream for `kubectl apply -f`,
/// headed by a comment saying where they came from (`source`: the command
/// that made them).
pub fn to_yaml(resources: &[ClusterSpiffeId], source: &str) -> String {
    let mut out = format!(
        "# Generated by `{source}`.\n\
         # Edit the mesh file and regenerate; do not edit this file.\n"
    );
    for r in resources {
        out.push_str(&format!("# {} ({})\n", r.workload, r.spiffe_id));
        out.push_str(&yaml_document(&r.to_value()));
        out.push('\n');
    }
    out
}

/// One YAML document (`---` first) for a JSON value.
fn yaml_document(value: &Value) -> String {
    let mut text = String::new();
    yaml_rust2::YamlEmitter::new(&mut text)
        .dump(&to_yaml_node(value))
        .expect("writing YAML to a String cannot fail");
    text
}

fn to_yaml_node(value: &Value) -> yaml_rust2::Yaml {
    use yaml_rust2::Yaml;
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => Yaml::Integer(n.as_i64().unwrap_or_default()),
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(to_yaml_node).collect()),
        Value::Object(map) => Yaml::Hash(
            map.iter()
                .map(|(k, v)| (Yaml::String(k.clone()), to_yaml_node(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry {
            trust_domain: "example.org".into(),
            agents: vec![(
                "support-triage".into(),
                "spiffe://example.org/agent/support-triage".into(),
            )],
            services: vec![(
                "hello-skill".into(),
                "spiffe://example.org/service/hello-skill".into(),
            )],
            authorizers: vec![(
                "ext-authz".into(),
                "spiffe://example.org/meshward/ext-authz".into(),
            )],
        }
    }

    #[test]
    fn every_workload_gets_one_resource_selecting_its_pods_by_namespace_label_and_account() {
        let resources = plan(&registry(), &K8sOptions::default()).unwrap();
        let names: Vec<&str> = resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "meshward-controlplane",
                "meshward-agent-support-triage",
                "meshward-service-hello-skill",
                "meshward-authorizer-ext-authz",
            ]
        );
        let agent = resources[1].to_value();
        assert_eq!(agent["apiVersion"], "spire.spiffe.io/v1alpha1");
        assert_eq!(agent["kind"], "ClusterSPIFFEID");
        assert_eq!(
            agent["spec"],
            json!({
                "spiffeIDTemplate": "spiffe://example.org/agent/support-triage",
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "meshward"}},
                "podSelector": {"matchLabels": {"meshward.io/workload": "support-triage"}},
                "workloadSelectorTemplates": ["k8s:sa:support-triage"],
            })
        );
        let cp = resources[0].to_value();
        assert_eq!(
            cp["spec"]["spiffeIDTemplate"],
            "spiffe://example.org/meshward/controlplane"
        );
        assert_eq!(
            cp["spec"]["workloadSelectorTemplates"],
            json!(["k8s:sa:meshward-controlplane"])
        );
    }

    #[test]
    fn namespace_class_and_ttl_are_carried() {
        let opts = K8sOptions {
            namespace: "agents".into(),
            class_name: Some("meshward".into()),
            x509_svid_ttl: Some(900),
        };
        let v = plan(&registry(), &opts).unwrap()[2].to_value();
        assert_eq!(
            v["spec"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "agents"
        );
        assert_eq!(v["spec"]["className"], "meshward");
        assert_eq!(v["spec"]["ttl"], "900s");
    }

    #[test]
    fn names_that_are_not_dns_labels_are_refused_with_the_workload() {
        for bad in ["Support", "a_b", "-a", "a-", "a.b", &"a".repeat(64), ""] {
            let mut r = registry();
            r.agents[0].0 = bad.to_string();
            let err = plan(&r, &K8sOptions::default()).unwrap_err().to_string();
            assert!(
                err.contains("agent") && err.contains("DNS label"),
                "{bad:?}: {err}"
            );
        }
        let err = plan(
            &registry(),
            &K8sOptions {
                namespace: "Meshward".into(),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--k8s-namespace"), "{err}");
    }

    #[test]
    fn two_workloads_with_one_name_are_refused() {
        let mut r = registry();
        r.services[0].0 = "support-triage".into();
        let err = plan(&r, &K8sOptions::default()).unwrap_err().to_string();
        assert!(
            err.contains("agent support-triage") && err.contains("service support-triage"),
            "{err}"
        );
        let mut r = registry();
        r.agents[0].0 = CONTROLPLANE_NAME.into();
        assert!(plan(&r, &K8sOptions::default()).is_err());
    }

    #[test]
    fn a_spiffe_id_the_controller_would_read_as_a_template_is_refused() {
        let mut r = registry();
        r.agents[0].1 = "spiffe://example.org/agent/{{ .PodMeta.Name }}".into();
        let err = plan(&r, &K8sOptions::default()).unwrap_err().to_string();
        assert!(err.contains("template"), "{err}");
    }

    #[test]
    fn yaml_parses_back_to_the_same_resources() {
        let resources = plan(&registry(), &K8sOptions::default()).unwrap();
        let text = to_yaml(&resources, "meshward spire entries --format k8s");
        assert!(text.starts_with("# Generated by `meshward spire entries --format k8s`"));
        let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
        assert_eq!(docs.len(), resources.len());
        for (doc, r) in docs.iter().zip(&resources) {
            assert_eq!(doc["metadata"]["name"].as_str(), Some(r.name.as_str()));
            assert_eq!(
                doc["spec"]["spiffeIDTemplate"].as_str(),
                Some(r.spiffe_id.as_str())
            );
            assert_eq!(
                doc["spec"]["podSelector"]["matchLabels"][WORKLOAD_LABEL].as_str(),
                Some(r.workload_name.as_str())
            );
        }
    }
}
