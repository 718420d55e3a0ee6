//! Where a service's inbound dataplanes listen, and the EDS resource that
//! carries it.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{
    Address, Locality, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};

use envoy_types::pb::google::protobuf::UInt32Value;

use crate::rules;

/// An IP address, or a DNS name resolved when a connection is opened (a
/// Kubernetes Service name), so the mesh file does not pin cluster IPs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Ip(SocketAddr),
    Dns { host: String, port: u16 },
}

impl Endpoint {
    pub fn port(&self) -> u16 {
        match self {
            Endpoint::Ip(addr) => addr.port(),
            Endpoint::Dns { port, .. } => *port,
        }
    }

    /// The address as EDS writes it: IPv6 without brackets.
    fn address(&self) -> String {
        match self {
            Endpoint::Ip(addr) => addr.ip().to_string(),
            Endpoint::Dns { host, .. } => host.clone(),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Ip(addr) => addr.fmt(f),
            Endpoint::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Endpoint::Ip(addr)
    }
}

/// The EDS resource of `cluster`: one locality with `endpoints`, which must
/// have non-zero ports (a dataplane refuses port 0).
pub fn load_assignment(cluster: &str, endpoints: &[Endpoint]) -> ClusterLoadAssignment {
    let lb_endpoints = endpoints
        .iter()
        .map(|e| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        protocol: socket_address::Protocol::Tcp as i32,
                        address: e.address(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                            e.port(),
                        ))),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            // gRPC's xDS client refuses a locality that is absent and drops
            // one without a weight (gRFC A27); Envoy needs neither.
            locality: Some(Locality::default()),
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The endpoints of an EDS resource named `name`: each a TCP socket address
/// whose host passes [`rules::endpoint_parts`]. The error names the
/// endpoint at fault.
pub fn endpoints_of(name: &str, cla: &ClusterLoadAssignment) -> Result<Vec<Endpoint>, String> {
    if cla.cluster_name != name {
        return Err(format!(
            "resource name {name:?} but cluster_name {:?}",
            cla.cluster_name
        ));
    }
    let mut endpoints = Vec::new();
    for (i, locality) in cla.endpoints.iter().enumerate() {
        for (j, lb) in locality.lb_endpoints.iter().enumerate() {
            let at = format!("endpoints[{i}].lb_endpoints[{j}]");
            let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &lb.host_identifier else {
                return Err(format!("{at}: not an endpoint"));
            };
            let Some(address::Address::SocketAddress(sa)) =
                endpoint.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                return Err(format!("{at}: no socket address"));
            };
            if sa.protocol != socket_address::Protocol::Tcp as i32 {
                return Err(format!("{at}: protocol is not TCP"));
            }
            let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
                return Err(format!("{at}: no numeric port"));
            };
            let endpoint =
                rules::endpoint_parts(&sa.address, port).map_err(|e| format!("{at}: {e}"))?;
            endpoints.push(endpoint);
        }
    }
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_round_trip_through_eds() {
        let endpoints = vec![
            Endpoint::Ip("127.0.0.1:80".parse().unwrap()),
            Endpoint::Ip("[::1]:15006".parse().unwrap()),
            Endpoint::Dns {
                host: "hello-skill.meshward.svc".into(),
                port: 15006,
            },
        ];
        let cla = load_assignment("s", &endpoints);
        assert_eq!(endpoints_of("s", &cla), Ok(endpoints));
        assert!(endpoints_of("other", &cla).is_err());
    }

    #[test]
    fn bad_endpoints_name_the_endpoint() {
        for (host, port) in [
            ("127.0.0.1", 0),
            ("127.0.0.1", 70000),
            ("999.1.1.1", 80),
            ("bad_name", 80),
            ("-leading.example", 80),
        ] {
            let mut cla = load_assignment("s", &[Endpoint::Ip("127.0.0.1:1".parse().unwrap())]);
            if let Some(lb_endpoint::HostIdentifier::Endpoint(e)) =
                &mut cla.endpoints[0].lb_endpoints[0].host_identifier
                && let Some(address::Address::SocketAddress(sa)) =
                    e.address.as_mut().and_then(|a| a.address.as_mut())
            {
                sa.address = host.into();
                sa.port_specifier = Some(socket_address::PortSpecifier::PortValue(port));
            }
            let err = endpoints_of("s", &cla).unwrap_err();
            assert!(err.starts_with("endpoints[0].lb_endpoints[0]"), "{err}");
        }
    }
}
