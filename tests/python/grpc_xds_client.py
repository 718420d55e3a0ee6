"""A proxyless gRPC client (grpcio's own xDS client) for tests/grpc_xds.rs.

Reads the xDS bootstrap from GRPC_XDS_BOOTSTRAP, like any proxyless gRPC
workload, and calls `method` on `xds:///<service>` with xDS credentials, so
the mTLS to the service comes from the cluster Meshward's control plane
sent. The request is given as hex; the result is one JSON line: the reply as
hex, or the gRPC status code name and details. The caller (Rust) encodes and
decodes the messages with the generated types, so this script needs none.

Usage: grpc_xds_client.py SERVICE METHOD REQUEST_HEX [TIMEOUT_SECONDS]
"""

import json
import sys

import grpc


def main() -> int:
    service, method, request_hex = sys.argv[1:4]
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
    creds = grpc.xds_channel_credentials(fallback_credentials=None)
    with grpc.secure_channel(f"xds:///{service}", creds) as channel:
        call = channel.unary_unary(
            method,
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            # wait_for_ready: the first call waits for LDS/RDS/CDS/EDS and
            # the handshake instead of failing while the channel connects.
            reply = call(bytes.fromhex(request_hex), timeout=timeout, wait_for_ready=True)
            print(json.dumps({"reply": reply.hex()}))
        except grpc.RpcError as err:
            print(json.dumps({"code": err.code().name, "details": err.details()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
