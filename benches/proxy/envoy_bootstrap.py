#!/usr/bin/env python3
"""Envoy bootstraps for the peer side of benches/proxy.sh.

The same two-hop topology Meshward runs, with plain Envoy and no authz filter:

  outbound: plain HTTP listener (HTTP/1.1 or h2c prior knowledge, codec AUTO),
            route /mcp://<service>/ -> / on cluster <service>: h2 over mTLS with
            the agent's SVID, the server must present the service's SPIFFE ID.
  inbound:  mTLS listener (client certificate required, chained to the trust
            domain's bundle, ALPN h2), every request -> the local backend over
            HTTP/1.1, x-agent-id set from the verified peer URI SAN.

Certificates and bundles come from the `meshward up` dev identity server's SDS
(one Unix socket per workload, the way a SPIRE agent serves Envoy), so both
peers use the same identities and the same CA.

With `--ext-authz <port>` (the envoy-opa target) each HTTP connection manager
also runs `envoy.filters.http.ext_authz` (gRPC, envoy.service.auth.v3, no
body, fail closed) against the opa-envoy-plugin on 127.0.0.1:<port>, before
the router. The route names the destination for the policy adapter in
context extensions (static sidecar configuration, never request data):
`meshward_service` on both sides (the Host the client sent is a loopback
address, not the service), and on the outbound side `meshward_caller` = the
agent's own SPIFFE ID, because its plain listener has no peer certificate
(Meshward's outbound dataplane judges with caller = its own identity too).
The inbound side's caller is the verified peer URI SAN Envoy reports as
`source.principal`. See benches/proxy/opa/bench_adapter.rego.

Usage: envoy_bootstrap.py outbound <sds_socket> <own_id> <trust_domain> <service> <upstream_port> <server_id> [--ext-authz <port>]
       envoy_bootstrap.py inbound  <sds_socket> <own_id> <trust_domain> <backend_port> [--ext-authz <port> <service>]
Prints the bootstrap as JSON on stdout. Listener and admin ports are 0; the
script reads the bound ports from the admin API.
"""

import json
import sys

H2_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def sds(name, socket_cluster="dev_identity"):
    return {
        "name": name,
        "sds_config": {
            "resource_api_version": "V3",
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": socket_cluster}}],
            },
        },
    }


def sds_cluster(socket):
    return {
        "name": "dev_identity",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": H2_OPTIONS,
        "load_assignment": {
            "cluster_name": "dev_identity",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": socket}}}}]}],
        },
    }


def static_cluster(name, port, extra):
    cluster = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
                    ]
                }
            ],
        },
    }
    cluster.update(extra)
    return cluster


def ext_authz_filter():
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": "ext_authz"}, "timeout": "2s"},
            "failure_mode_allow": False,
        },
    }


def with_context_extensions(route, extensions):
    """The route with ext_authz context extensions (per-route config)."""
    route = dict(route)
    route["typed_per_filter_config"] = {
        "envoy.filters.http.ext_authz": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
            "check_settings": {"context_extensions": extensions},
        }
    }
    return route


def ext_authz_cluster(port):
    return static_cluster("ext_authz", port, {"typed_extension_protocol_options": H2_OPTIONS})


def hcm(stat_prefix, route, request_headers_to_add=None, ext_authz=False):
    route_config = {
        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}],
    }
    if request_headers_to_add:
        route_config["request_headers_to_add"] = request_headers_to_add
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "route_config": route_config,
            "http_filters": ([ext_authz_filter()] if ext_authz else [])
            + [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }
            ],
        },
    }


def bootstrap(node, listener, clusters):
    return {
        "node": {"id": node, "cluster": "meshward-bench"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


def outbound(socket, own_id, td, service, upstream_port, server_id, authz_port=None):
    route = {
        "match": {"prefix": f"/mcp://{service}/"},
        "route": {"cluster": service, "prefix_rewrite": "/"},
    }
    if authz_port:
        route = with_context_extensions(route, {"meshward_service": service, "meshward_caller": own_id})
    upstream_tls = {
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "spiffe.meshward.invalid",
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_certificate_sds_secret_configs": [sds(own_id)],
                    "combined_validation_context": {
                        "default_validation_context": {
                            "match_typed_subject_alt_names": [
                                {"san_type": "URI", "matcher": {"exact": server_id}}
                            ]
                        },
                        "validation_context_sds_secret_config": sds(f"spiffe://{td}"),
                    },
                },
            },
        },
        "typed_extension_protocol_options": H2_OPTIONS,
    }
    listener = {
        "name": "outbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [hcm("outbound", route, ext_authz=bool(authz_port))]}],
    }
    clusters = [sds_cluster(socket), static_cluster(service, upstream_port, upstream_tls)]
    if authz_port:
        clusters.append(ext_authz_cluster(authz_port))
    return bootstrap("bench-outbound", listener, clusters)


def inbound(socket, own_id, td, backend_port, authz_port=None, service=None):
    route = {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}
    if authz_port:
        route = with_context_extensions(route, {"meshward_service": service})
    add = [
        {
            "header": {"key": "x-agent-id", "value": "%DOWNSTREAM_PEER_URI_SAN%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]
    listener = {
        "name": "inbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "filters": [hcm("inbound", route, add, ext_authz=bool(authz_port))],
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "require_client_certificate": True,
                        "common_tls_context": {
                            "alpn_protocols": ["h2"],
                            "tls_certificate_sds_secret_configs": [sds(own_id)],
                            "validation_context_sds_secret_config": sds(f"spiffe://{td}"),
                        },
                    },
                },
            }
        ],
    }
    # The backend speaks HTTP/1.1, as Meshward's inbound uses for non-gRPC apps.
    clusters = [sds_cluster(socket), static_cluster("backend", backend_port, {})]
    if authz_port:
        clusters.append(ext_authz_cluster(authz_port))
    return bootstrap("bench-inbound", listener, clusters)


def main(argv):
    role = argv[1] if len(argv) > 1 else ""
    if role == "outbound" and len(argv) == 8:
        cfg = outbound(argv[2], argv[3], argv[4], argv[5], int(argv[6]), argv[7])
    elif role == "outbound" and len(argv) == 10 and argv[8] == "--ext-authz":
        cfg = outbound(argv[2], argv[3], argv[4], argv[5], int(argv[6]), argv[7], int(argv[9]))
    elif role == "inbound" and len(argv) == 6:
        cfg = inbound(argv[2], argv[3], argv[4], int(argv[5]))
    elif role == "inbound" and len(argv) == 9 and argv[6] == "--ext-authz":
        cfg = inbound(argv[2], argv[3], argv[4], int(argv[5]), int(argv[7]), argv[8])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    json.dump(cfg, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
