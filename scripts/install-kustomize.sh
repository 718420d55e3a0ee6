#!/usr/bin/env bash
# Installs kustomize (the version pinned below) into .tools/bin/kustomize when
# it is missing or reports another version. tests/k8s_deploy.rs renders every
# overlay under deploy/k8s/overlays/ with it (`kustomize build`) and checks
# the output against Kubernetes' strict schemas and the vendored CRDs.
#
# Built from its Go module, like promtool (scripts/install-promtool.sh): the
# module in tools/kustomize/ records sigs.k8s.io/kustomize/kustomize/v5 as a
# Go tool dependency (go.mod + go.sum are committed, so the build is
# reproducible). v5.8.1 is the newest release whose kustomize/api (v0.21.1)
# builds with the machine's Go 1.26; api v0.21.3 needs Go 1.27. The version
# is stamped the way kustomize's release build does it, so
# `kustomize version` reports it. CGO is off; the binary is static.
#
# Idempotent: a second run with the binary at the right version does nothing.
#
# Usage: scripts/install-kustomize.sh
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
MODDIR=$ROOT/tools/kustomize
KUSTOMIZE_VERSION=${KUSTOMIZE_VERSION:-v5.8.1}
MODULE=sigs.k8s.io/kustomize/kustomize/v5
BIN=$TOOLS/bin/kustomize

if [ $# -ne 0 ]; then
    printf 'usage: %s\n' "$0" >&2
    exit 2
fi

say() { printf '[install-kustomize] %s\n' "$*"; }

up_to_date() {
    [ -x "$BIN" ] && [ "$("$BIN" version 2>/dev/null)" = "$KUSTOMIZE_VERSION" ]
}

if up_to_date; then
    say "kustomize $KUSTOMIZE_VERSION already installed in $TOOLS/bin"
    exit 0
fi

command -v go >/dev/null || { say "error: go is not on PATH"; exit 1; }
# The go.mod `tool` directive needs Go 1.24+.
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
if [ "${go_minor:-0}" -lt 24 ] 2>/dev/null; then
    say "error: Go $(go env GOVERSION) is too old; Go 1.24+ is needed for tool dependencies"
    exit 1
fi
mkdir -p "$TOOLS/bin" "$MODDIR"
cd "$MODDIR"

if [ ! -f go.mod ]; then
    say "creating Go module in tools/kustomize"
    go mod init meshward.local/tools/kustomize
fi

if ! grep -q "$MODULE $KUSTOMIZE_VERSION" go.mod || ! grep -q "tool $MODULE\|	$MODULE" go.mod; then
    # Only an exact version is asked for, never a version list.
    say "go get -tool $MODULE@$KUSTOMIZE_VERSION"
    go get -tool "$MODULE@$KUSTOMIZE_VERSION"
fi

say "building kustomize $KUSTOMIZE_VERSION (CGO_ENABLED=0) into $TOOLS/bin"
start=$(date +%s)
CGO_ENABLED=0 GOBIN="$TOOLS/bin" GOFLAGS="-mod=mod -buildvcs=false" go install \
    -ldflags "-X sigs.k8s.io/kustomize/api/provenance.version=$KUSTOMIZE_VERSION" \
    "$MODULE"
say "build took $(( $(date +%s) - start )) s"

say "kustomize: $("$BIN" version)"
up_to_date || { say "error: installed kustomize does not report version $KUSTOMIZE_VERSION"; exit 1; }
say "done"
