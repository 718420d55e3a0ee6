#!/usr/bin/env bash
# Installs Jaeger (version pinned below) into .tools/bin/jaeger when it is
# missing or reports another version. It is the trace backend the tracing
# tests export to and read back from (tests/common/jaeger.rs).
#
# Built from its Go module, like opa-envoy-plugin (scripts/install-opa-envoy.sh):
# the module in tools/jaeger/ records cmd/jaeger as a Go tool dependency
# (go.mod + go.sum are committed, so the build is reproducible). Module
# version v1.75.0 is the release whose cmd/jaeger is Jaeger v2 (the
# OpenTelemetry-collector-based binary, released as v2.12.0): one process
# that receives OTLP, stores traces and serves the query API and UI, run
# from a collector config file (tests/fixtures/jaeger/config.yaml).
# CGO is off and the binary is static. The release Makefile stamps
# internal/version.latestVersion with -X; we stamp the module version we pin,
# so `jaeger --version` prints "jaeger version v1.75.0" and this script can
# tell whether the installed binary is the pinned one.
#
# Idempotent: a second run with the binary at the right version does nothing.
#
# Usage: scripts/install-jaeger.sh [--verify]
#   --verify  also start the binary on the test config (loopback ports
#             picked here) and wait until its health check and query API
#             answer.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
MODDIR=$ROOT/tools/jaeger
JAEGER_VERSION=${JAEGER_VERSION:-v1.75.0}
MODULE=github.com/jaegertracing/jaeger
PKG=$MODULE/cmd/jaeger
BIN=$TOOLS/bin/jaeger
CONFIG=$ROOT/tests/fixtures/jaeger/config.yaml

VERIFY=0
for arg in "$@"; do
    case $arg in
        --verify) VERIFY=1 ;;
        *) printf 'usage: %s [--verify]\n' "$0" >&2; exit 2 ;;
    esac
done

say() { printf '[install-jaeger] %s\n' "$*"; }

installed_version() {
    # `jaeger --version` prints "jaeger version v1.75.0".
    "$BIN" --version 2>/dev/null | sed -n 's/^jaeger version *//p' | head -n 1
}

up_to_date() {
    [ -x "$BIN" ] && [ "$(installed_version)" = "$JAEGER_VERSION" ]
}

# Five distinct loopback ports that were free a moment ago.
free_ports() {
    python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))'
}

verify() {
    local work pid ok=0 i ports
    work=$(mktemp -d)
    read -r -a ports <<<"$(free_ports)"
    export MESHWARD_JAEGER_OTLP_GRPC=127.0.0.1:${ports[0]}
    export MESHWARD_JAEGER_OTLP_HTTP=127.0.0.1:${ports[1]}
    export MESHWARD_JAEGER_QUERY_HTTP=127.0.0.1:${ports[2]}
    export MESHWARD_JAEGER_QUERY_GRPC=127.0.0.1:${ports[3]}
    export MESHWARD_JAEGER_HEALTH=127.0.0.1:${ports[4]}
    say "verify: $BIN --config $CONFIG (query on $MESHWARD_JAEGER_QUERY_HTTP)"
    "$BIN" --config "$CONFIG" >"$work/jaeger.log" 2>&1 &
    pid=$!
    # Up to 30 s: the health check answers 200 once every component started.
    for i in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        if curl -fsS "http://$MESHWARD_JAEGER_HEALTH/status" >/dev/null 2>&1 &&
            curl -fsS "http://$MESHWARD_JAEGER_QUERY_HTTP/api/services" >/dev/null 2>&1; then
            ok=1
            break
        fi
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [ "$ok" != 1 ]; then
        say "verify: jaeger did not become ready within 30 s; its log:"
        tail -n 40 "$work/jaeger.log" >&2
        rm -rf "$work"
        exit 1
    fi
    rm -rf "$work"
    say "verify: ok"
}

if up_to_date; then
    say "jaeger $JAEGER_VERSION already installed in $TOOLS/bin"
    if [ "$VERIFY" = 1 ]; then verify; fi
    exit 0
fi

command -v go >/dev/null || { say "error: go is not on PATH"; exit 1; }
# The go.mod `tool` directive needs Go 1.24+, and so does Jaeger's go.mod.
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
if [ "${go_minor:-0}" -lt 24 ] 2>/dev/null; then
    say "error: Go $(go env GOVERSION) is too old; jaeger $JAEGER_VERSION needs Go 1.24+"
    exit 1
fi
mkdir -p "$TOOLS/bin" "$MODDIR"
cd "$MODDIR"

if [ ! -f go.mod ]; then
    say "creating Go module in tools/jaeger"
    go mod init meshward.local/tools/jaeger
fi

if ! grep -q "$MODULE $JAEGER_VERSION" go.mod || ! grep -q "tool $PKG\|	$PKG" go.mod; then
    # Only an exact version is asked for.
    say "go get -tool $PKG@$JAEGER_VERSION"
    go get -tool "$PKG@$JAEGER_VERSION"
fi

say "building jaeger $JAEGER_VERSION (CGO_ENABLED=0) into $TOOLS/bin; a cold build takes minutes"
start=$(date +%s)
CGO_ENABLED=0 GOBIN="$TOOLS/bin" GOFLAGS="-mod=mod -buildvcs=false" go install \
    -ldflags "-X $MODULE/internal/version.latestVersion=$JAEGER_VERSION" \
    "$PKG"
say "build took $(( $(date +%s) - start )) s"

say "jaeger: $(installed_version)"
up_to_date || { say "error: installed jaeger does not report version $JAEGER_VERSION"; exit 1; }
if [ "$VERIFY" = 1 ]; then verify; fi
say "done"
