#!/usr/bin/env bash
# Tests the Python SDK (sdk/python): installs it (with the grpc and mcp extras), pytest
# and grpcio-tools into .venv/, runs the unit tests, then the integration
# tests against a real `meshward up`.
#
#   scripts/test-sdk.sh
#   MESHWARD_BIN=/path/to/meshward scripts/test-sdk.sh
#
# Environment: MESHWARD_BIN (default <repo>/target/debug/meshward; build it
# first), MESHWARD_VENV (default <repo>/.venv), PYTHON (default python3).
# Exits non-zero if either suite fails.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${MESHWARD_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
export MESHWARD_BIN=${MESHWARD_BIN:-$ROOT/target/debug/meshward}

PYTEST_PIN="pytest==9.2.0"
# Generates the demo Echo stubs for the gRPC integration tests.
GRPC_TOOLS_PIN="grpcio-tools==1.85.1"

log() { printf '%s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating Python venv at $VENV"
    "$PYTHON" -m venv "$VENV"
fi
VPY=$VENV/bin/python

# Reinstalled every run (quick, no build isolation downloads after the first):
# the tests must see this checkout's SDK, not an older install.
start=$SECONDS
"$VPY" -m pip install --quiet --disable-pip-version-check \
    "$PYTEST_PIN" "$GRPC_TOOLS_PIN" "$ROOT/sdk/python[grpc,mcp]" >&2
log "SDK (with grpc and mcp), pytest and grpcio-tools installed in $((SECONDS - start))s"

if [ ! -x "$MESHWARD_BIN" ]; then
    log "no meshward binary at $MESHWARD_BIN: build it (cargo build) or set MESHWARD_BIN"
    exit 1
fi

cd "$ROOT/sdk/python"
log "== SDK unit tests"
"$VPY" -m pytest -q -p no:cacheprovider tests/unit
log "== SDK integration tests (meshward up: $MESHWARD_BIN)"
"$VPY" -m pytest -q -p no:cacheprovider -m integration tests/integration
