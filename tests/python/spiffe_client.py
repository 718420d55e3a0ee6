#!/usr/bin/env python3
"""An independent SPIFFE Workload API client for Meshward's interop tests.

Uses the Python `spiffe` package (not Meshward code) to read an X.509-SVID and
trust bundles from a Workload API socket, the way a Python agent would, and
prints what it got as one JSON object so the Rust test can compare it with what
the dev identity server issued. It also makes raw gRPC calls *without* the
`workload.spiffe.io` security header and reports the status codes, since a
conforming server must refuse them.

Usage: spiffe_client.py <socket path>     (exit code 0 even when checks differ;
                                           non-zero only when the client failed)
"""

import json
import sys
import warnings

import grpc
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from spiffe import TrustDomain, WorkloadApiClient, X509Source
from spiffe._proto import workload_pb2, workload_pb2_grpc

TIMEOUT = 10.0


def der(cert) -> bytes:
    return cert.public_bytes(Encoding.DER)


def describe_svid(svid) -> dict:
    leaf = svid.leaf
    spki = lambda key: key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return {
        "spiffe_id": str(svid.spiffe_id),
        "chain_len": len(svid.cert_chain),
        "leaf_der": der(leaf).hex(),
        "not_after": int(leaf.not_valid_after_utc.timestamp()),
        "key_matches_leaf": spki(svid.private_key.public_key()) == spki(leaf.public_key()),
    }


def describe_bundles(bundle_set) -> dict:
    return {
        str(b.trust_domain.name): sorted(der(c).hex() for c in b.x509_authorities)
        for b in bundle_set.bundles
    }


def call_without_header(path: str) -> dict:
    """Status codes of FetchX509SVID / FetchX509Bundles sent with no security header."""
    codes = {}
    with grpc.insecure_channel(f"unix:{path}") as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        calls = {
            "FetchX509SVID": lambda: stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=TIMEOUT),
            "FetchX509Bundles": lambda: stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), timeout=TIMEOUT),
        }
        for name, call in calls.items():
            try:
                next(call())
                codes[name] = {"code": "OK", "details": ""}
            except grpc.RpcError as e:
                codes[name] = {"code": e.code().name, "details": e.details()}
    return codes


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    path = sys.argv[1]
    socket = f"unix:{path}"

    with WorkloadApiClient(socket_path=socket, default_timeout=TIMEOUT) as client:
        svid = client.fetch_x509_svid()
        bundles = client.fetch_x509_bundles()
        context = client.fetch_x509_context()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with X509Source(socket_path=socket, timeout_in_seconds=TIMEOUT) as source:
            ctx = source.get_x509_context()
            own_td = TrustDomain(str(ctx.default_svid.spiffe_id.trust_domain.name))
            own_bundle = source.get_bundle_for_trust_domain(own_td)
            source_report = {
                "svid": describe_svid(ctx.default_svid),
                "bundles": describe_bundles(ctx.x509_bundle_set),
                "has_own_bundle": own_bundle is not None,
            }

    report = {
        "client": {
            "svid": describe_svid(svid),
            "bundles": describe_bundles(bundles),
            "context_svids": [str(s.spiffe_id) for s in context.x509_svids],
            "context_bundles": describe_bundles(context.x509_bundle_set),
        },
        "source": source_report,
        "without_header": call_without_header(path),
    }
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
