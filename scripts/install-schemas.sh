#!/usr/bin/env bash
# Installs what tests/deploy_examples.rs checks the deploy/ examples against:
#
#   .tools/schemas/istio.io/api@<v>/customresourcedefinitions.gen.yaml
#       Istio's CRDs (AuthorizationPolicy, PeerAuthentication, Telemetry, ...)
#       from the Go module istio.io/api
#   .tools/schemas/github.com/envoyproxy/gateway@<v>/*.yaml
#       Envoy Gateway's CRDs (SecurityPolicy, ClientTrafficPolicy, ...) and the
#       Gateway API CRDs it ships (Gateway, HTTPRoute, ReferenceGrant, ...),
#       from the Go module github.com/envoyproxy/gateway
#   .tools/schemas/istio.io/api@<v>/mesh-config.binpb
#       Istio's MeshConfig message (what istiod reads from the `istio`
#       ConfigMap and IstioOperator's spec.meshConfig) as a protobuf
#       descriptor set, compiled from the module's mesh/v1alpha1/config.proto
#       with protoc from grpcio-tools (in .venv): MeshConfig is a protobuf
#       message with no published JSON or OpenAPI schema, so its descriptor is
#       the schema
#
# The modules come from the Go module proxy (`go mod download`, checked
# against the checksum database and against the sums pinned below); nothing
# is built. Needs .venv from scripts/install-python-peers.sh (for protoc).
# Idempotent: when .tools/schemas/SOURCES matches the pins, it does nothing.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
DEST=$TOOLS/schemas
PYTHON=${MESHWARD_PYTHON:-$ROOT/.venv/bin/python}

ISTIO_API=istio.io/api
ISTIO_API_VERSION=v1.32.0
ISTIO_API_SUM=h1:37mJvg9I0biYZAEQF+MATs4FNeCpXEIVO3LFpVb6iNM=
GATEWAY=github.com/envoyproxy/gateway
GATEWAY_VERSION=v1.9.1
GATEWAY_SUM=h1:vAVp6/AlBXJ1aOhp1mxL7fNEzVEfjADUguUhm2wzxQY=

say() { printf '[install-schemas] %s\n' "$*" >&2; }

sources() {
    printf '%s@%s %s\n' "$ISTIO_API" "$ISTIO_API_VERSION" "$ISTIO_API_SUM"
    printf '%s@%s %s\n' "$GATEWAY" "$GATEWAY_VERSION" "$GATEWAY_SUM"
}

if [ -f "$DEST/SOURCES" ] && [ "$(cat "$DEST/SOURCES")" = "$(sources)" ]; then
    say "schemas already installed ($ISTIO_API@$ISTIO_API_VERSION, $GATEWAY@$GATEWAY_VERSION)"
    exit 0
fi

command -v go >/dev/null || { say "error: go is not on PATH"; exit 1; }
"$PYTHON" -c 'import grpc_tools.protoc' 2>/dev/null || {
    say "error: $PYTHON lacks grpcio-tools (run scripts/install-python-peers.sh first)"
    exit 1
}
start=$(date +%s)

# Prints the module's directory in the module cache after checking its sum.
download() {
    local module=$1 version=$2 sum=$3 json dir got
    # Outside any module, so no go.mod is read or changed.
    json=$(cd / && GOFLAGS=-mod=mod go mod download -json "$module@$version")
    dir=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    got=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Sum": "\(.*\)",$/\1/p')
    if [ "$got" != "$sum" ]; then
        say "error: $module@$version has sum $got, pinned $sum"
        exit 1
    fi
    [ -d "$dir" ] || { say "error: go mod download gave no directory for $module@$version"; exit 1; }
    printf '%s\n' "$dir"
}

say "downloading $ISTIO_API@$ISTIO_API_VERSION and $GATEWAY@$GATEWAY_VERSION (Go module proxy)"
istio_dir=$(download "$ISTIO_API" "$ISTIO_API_VERSION" "$ISTIO_API_SUM")
gateway_dir=$(download "$GATEWAY" "$GATEWAY_VERSION" "$GATEWAY_SUM")

rm -rf "$DEST"
mkdir -p "$DEST/$ISTIO_API@$ISTIO_API_VERSION" "$DEST/$GATEWAY@$GATEWAY_VERSION"
cp "$istio_dir/kubernetes/customresourcedefinitions.gen.yaml" "$DEST/$ISTIO_API@$ISTIO_API_VERSION/"
# config.proto imports Istio's networking protos, and google/api and the
# well-known types, which the module carries in common-protos/.
"$PYTHON" -m grpc_tools.protoc -I"$istio_dir" -I"$istio_dir/common-protos" \
    --include_imports --descriptor_set_out="$DEST/$ISTIO_API@$ISTIO_API_VERSION/mesh-config.binpb" \
    mesh/v1alpha1/config.proto
# The chart's crds/ directory holds plain CRDs (not templates): Envoy Gateway's
# own under generated/, and the Gateway API bundle it installs.
crds=$gateway_dir/charts/gateway-helm/charts/crds/crds
cp "$crds/gatewayapi-crds.yaml" "$crds"/generated/*.yaml "$DEST/$GATEWAY@$GATEWAY_VERSION/"
chmod -R u+w "$DEST"

sources >"$DEST/SOURCES"
say "done in $(( $(date +%s) - start )) s"
