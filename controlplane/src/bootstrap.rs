//! `meshward bootstrap envoy`: a complete Envoy bootstrap for a node of the
//! mesh.
//!
//! The Envoy gets everything else from the control plane over ADS (SotW or
//! delta), on an mTLS connection whose certificate and trust bundle come
//! from the SPIRE agent's (or the dev identity server's) SDS socket, and
//! accepts only the control plane's SPIFFE ID on the other end. Its role
//! (agent, service, gateway) follows from its SPIFFE ID in the registry;
//! where its listeners bind and where its app is travel in its node metadata
//! ([`crate::snapshot::envoy::metadata`]). Admin stays on loopback.

use std::path::PathBuf;

use meshward_contract::rules;
use meshward_contract::spec::Endpoint;

use crate::snapshot::envoy::{SDS_CLUSTER, SVID_SECRET, metadata};

/// The static cluster for the control plane's xDS.
pub const XDS_CLUSTER: &str = "meshward_xds";

/// What a bootstrap needs to know.
#[derive(Debug, Clone)]
pub struct EnvoyBootstrap {
    /// The SPIFFE ID the Envoy's SVID carries.
    pub spiffe_id: String,
    /// `Node.id` (logs); defaults to the SPIFFE ID.
    pub node_id: Option<String>,
    /// `Node.cluster`.
    pub cluster: String,
    /// The control plane's xDS address, `host:port`.
    pub xds: String,
    /// The SPIFFE ID the control plane must present; defaults to
    /// `spiffe://<trust domain>/meshward/controlplane`.
    pub xds_spiffe_id: Option<String>,
    /// The SPIRE agent's (or dev server's) socket, serving SDS.
    pub sds_socket: PathBuf,
    /// Delta xDS instead of state of the world.
    pub delta: bool,
    /// Envoy's admin address (loopback).
    pub admin: String,
    pub outbound: Option<String>,
    pub inbound: Option<String>,
    pub backend: Option<String>,
    /// `ip:port` of the Meshward authorizer the inbound listener asks
    /// (ext_authz and its access log); none: no `ext_authz` filter.
    pub ext_authz: Option<String>,
}

/// Why a bootstrap cannot be made; names the flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("--{flag} {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> BootstrapError {
    BootstrapError::Invalid {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A YAML scalar: JSON strings are valid YAML and escape everything.
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn socket_address(flag: &'static str, addr: &str) -> Result<(String, u16), BootstrapError> {
    match rules::endpoint(addr, false).map_err(|e| invalid(flag, addr, e))? {
        Endpoint::Ip(a) => Ok((a.ip().to_string(), a.port())),
        Endpoint::Dns { host, port } => Ok((host, port)),
    }
}

impl EnvoyBootstrap {
    /// The bootstrap as YAML.
    pub fn render(&self) -> Result<String, BootstrapError> {
        rules::spiffe_id(&self.spiffe_id, None).map_err(|e| invalid("node", &self.spiffe_id, e))?;
        let trust_domain = self
            .spiffe_id
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        let xds_spiffe_id = self
            .xds_spiffe_id
            .clone()
            .unwrap_or_else(|| format!("spiffe://{trust_domain}/meshward/controlplane"));
        rules::spiffe_id(&xds_spiffe_id, None)
            .map_err(|e| invalid("xds-spiffe-id", &xds_spiffe_id, e))?;
        let (xds_host, xds_port) = socket_address("xds", &self.xds)?;
        let xds_type = match rules::host(&xds_host).map_err(|e| invalid("xds", &self.xds, e))? {
            rules::Host::Ip(_) => "STATIC",
            rules::Host::Name(_) => "STRICT_DNS",
        };
        let (admin_host, admin_port) = socket_address("admin", &self.admin)?;
        let socket = self.sds_socket.to_str().ok_or_else(|| {
            invalid(
                "sds",
                &self.sds_socket.display().to_string(),
                "not valid UTF-8",
            )
        })?;
        if !self.sds_socket.is_absolute() {
            return Err(invalid("sds", socket, "must be an absolute path"));
        }
        let mut meta = Vec::new();
        for (flag, key, value) in [
            ("outbound", metadata::OUTBOUND, &self.outbound),
            ("inbound", metadata::INBOUND, &self.inbound),
            ("backend", metadata::BACKEND, &self.backend),
            ("ext-authz", metadata::EXT_AUTHZ, &self.ext_authz),
        ] {
            if let Some(v) = value {
                rules::endpoint(v, false).map_err(|e| invalid(flag, v, e))?;
                meta.push(format!("{}: {}", q(key), q(v)));
            }
        }
        let api_type = if self.delta { "DELTA_GRPC" } else { "GRPC" };
        let node_id = self.node_id.as_deref().unwrap_or(&self.spiffe_id);
        let sds = |name: &str| {
            format!(
                "{{ name: {}, sds_config: {{ resource_api_version: V3, api_config_source: \
                 {{ api_type: GRPC, transport_api_version: V3, grpc_services: \
                 [{{ envoy_grpc: {{ cluster_name: {SDS_CLUSTER} }} }}] }} }} }}",
                q(name)
            )
        };
        Ok(format!(
            r#"# Envoy bootstrap for {spiffe_id}, made by `meshward bootstrap envoy`.
node:
  id: {node_id}
  cluster: {cluster}
  metadata: {{ {meta} }}
admin:
  address: {{ socket_address: {{ address: {admin_host}, port_value: {admin_port} }} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {{ cluster_name: {XDS_CLUSTER} }}
  cds_config: {{ resource_api_version: V3, ads: {{}} }}
  lds_config: {{ resource_api_version: V3, ads: {{}} }}
static_resources:
  clusters:
  - name: {XDS_CLUSTER}
    type: {xds_type}
    connect_timeout: 5s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: {XDS_CLUSTER}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {xds_host}, port_value: {xds_port} }} }} }}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: spiffe.meshward.invalid
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificate_sds_secret_configs:
          - {svid}
          combined_validation_context:
            default_validation_context:
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{ exact: {xds_spiffe_id} }}
            validation_context_sds_secret_config: {bundle}
  - name: {SDS_CLUSTER}
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: {SDS_CLUSTER}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ pipe: {{ path: {socket} }} }} }}
"#,
            spiffe_id = self.spiffe_id,
            node_id = q(node_id),
            cluster = q(&self.cluster),
            meta = meta.join(", "),
            admin_host = q(&admin_host),
            xds_host = q(&xds_host),
            xds_spiffe_id = q(&xds_spiffe_id),
            svid = sds(SVID_SECRET),
            bundle = sds(&format!("spiffe://{trust_domain}")),
            socket = q(socket),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap() -> EnvoyBootstrap {
        EnvoyBootstrap {
            spiffe_id: "spiffe://example.org/agent/a".into(),
            node_id: None,
            cluster: "meshward".into(),
            xds: "127.0.0.1:18000".into(),
            xds_spiffe_id: None,
            sds_socket: "/run/spire/agent.sock".into(),
            delta: false,
            admin: "127.0.0.1:9901".into(),
            outbound: Some("127.0.0.1:15001".into()),
            inbound: None,
            backend: None,
            ext_authz: None,
        }
    }

    #[test]
    fn renders_ads_over_mtls_with_sds_and_the_node_metadata() {
        let yaml = bootstrap().render().unwrap();
        assert!(yaml.contains("api_type: GRPC\n"));
        assert!(
            yaml.contains(r#"matcher: { exact: "spiffe://example.org/meshward/controlplane" }"#)
        );
        assert!(yaml.contains(r#""meshward.outbound": "127.0.0.1:15001""#));
        assert!(yaml.contains(r#"pipe: { path: "/run/spire/agent.sock" }"#));
        assert!(yaml.contains(r#"name: "spiffe://example.org""#));
        let delta = EnvoyBootstrap {
            delta: true,
            xds: "controlplane.meshward.svc:18000".into(),
            ..bootstrap()
        }
        .render()
        .unwrap();
        assert!(delta.contains("api_type: DELTA_GRPC"));
        assert!(delta.contains("type: STRICT_DNS"));
    }

    #[test]
    fn bad_flags_are_named() {
        let cases = [
            (
                EnvoyBootstrap {
                    spiffe_id: "spiffe://example.org".into(),
                    ..bootstrap()
                },
                "--node",
            ),
            (
                EnvoyBootstrap {
                    xds: "nope".into(),
                    ..bootstrap()
                },
                "--xds",
            ),
            (
                EnvoyBootstrap {
                    sds_socket: "relative.sock".into(),
                    ..bootstrap()
                },
                "--sds",
            ),
            (
                EnvoyBootstrap {
                    backend: Some("my_app:80".into()),
                    ..bootstrap()
                },
                "--backend",
            ),
        ];
        for (b, flag) in cases {
            let err = b.render().unwrap_err().to_string();
            assert!(err.starts_with(flag), "{err}");
        }
    }
}
