#!/usr/bin/env bash
# Builds spire-plugincheck (tools/spire-plugincheck/main.go) into
# .tools/bin/spire-plugincheck when it is missing or its source changed.
#
# `spire-server validate` / `spire-agent validate` only parse the top-level
# HCL and never run the plugins' own config checks, so e.g. a BundlePublisher
# "k8s_configmap" without `format` passes `validate` and fails only at `run`.
# spire-plugincheck calls the built-in plugins' Validate on each plugin_data:
#
#   spire-plugincheck server|agent [-expandEnv] CONFIG
#
# The module in tools/spire-plugincheck/ requires github.com/spiffe/spire at
# the version tools/spire/ pins (its go.mod + go.sum are copies of
# tools/spire's, minus the tool block), so it reuses the module cache of
# scripts/install-spire.sh and builds offline once that has run. Built with
# CGO, like spire-server (the catalog links the sqlite datastore).
#
# Idempotent: the build is skipped when the binary exists and the stamp next
# to it matches the sha256 of main.go + go.mod + go.sum.
#
# Usage: scripts/install-spire-plugincheck.sh
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
MODDIR=$ROOT/tools/spire-plugincheck
BIN=$TOOLS/bin/spire-plugincheck
STAMP=$TOOLS/bin/.spire-plugincheck.sha256

if [ $# -ne 0 ]; then
    printf 'usage: %s\n' "$0" >&2
    exit 2
fi

say() { printf '[install-spire-plugincheck] %s\n' "$*"; }

source_hash() {
    (cd "$MODDIR" && cat main.go go.mod go.sum) | sha256sum | cut -d' ' -f1
}

for f in main.go go.mod go.sum; do
    [ -f "$MODDIR/$f" ] || { say "error: $MODDIR/$f is missing"; exit 1; }
done
HASH=$(source_hash)

if [ -x "$BIN" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
    say "spire-plugincheck (source ${HASH:0:12}) already installed in $TOOLS/bin"
    exit 0
fi

command -v go >/dev/null || { say "error: go is not on PATH"; exit 1; }
# SPIRE v1.13.3's module needs Go 1.24+.
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
if [ "${go_minor:-0}" -lt 24 ] 2>/dev/null; then
    say "error: Go $(go env GOVERSION) is too old; spire-plugincheck needs Go 1.24+"
    exit 1
fi
mkdir -p "$TOOLS/bin"

say "building spire-plugincheck (CGO_ENABLED=1) into $TOOLS/bin; a cold build takes minutes"
start=$(date +%s)
rm -f "$STAMP"
(cd "$MODDIR" && CGO_ENABLED=1 GOFLAGS="-buildvcs=false" go build -o "$BIN.tmp" .)
mv -f "$BIN.tmp" "$BIN"
printf '%s\n' "$HASH" > "$STAMP"
say "build took $(( $(date +%s) - start )) s"

# Smoke test: with no arguments it prints its usage and exits 2.
rc=0
"$BIN" >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || { say "error: $BIN without arguments exited $rc, expected 2"; exit 1; }
say "done"
