#!/usr/bin/env bash
# Installs promtool (Prometheus' own checker, version pinned below) into
# .tools/bin/promtool when it is missing or reports another version. The
# observability tests (tests/observability_assets.rs) run
# `promtool check metrics` on live /metrics scrapes and
# `promtool check rules` on deploy/observability/alerts.yaml.
#
# Built from its Go module, like opa-envoy-plugin (scripts/install-opa-envoy.sh):
# the module in tools/promtool/ records cmd/promtool as a Go tool dependency
# (go.mod + go.sum are committed, so the build is reproducible). Prometheus
# publishes its Go module as v0.MAJOR*100+MINOR.PATCH, so module v0.316.0 is
# Prometheus 3.16.0; the version is stamped the way the release build does it,
# so `promtool --version` reports 3.16.0. CGO is off; the binary is static.
#
# Idempotent: a second run with the binary at the right version does nothing.
#
# Usage: scripts/install-promtool.sh
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
MODDIR=$ROOT/tools/promtool
PROMTOOL_MODULE_VERSION=${PROMTOOL_MODULE_VERSION:-v0.316.0}
MODULE=github.com/prometheus/prometheus
PKG=$MODULE/cmd/promtool
BIN=$TOOLS/bin/promtool

if [ $# -ne 0 ]; then
    printf 'usage: %s\n' "$0" >&2
    exit 2
fi

say() { printf '[install-promtool] %s\n' "$*"; }

# v0.316.0 -> 3.16.0
release_version() {
    local v=${1#v0.}
    local minor=${v%%.*} patch=${v#*.}
    printf '%d.%d.%s\n' $((10#$minor / 100)) $((10#$minor % 100)) "$patch"
}
RELEASE=$(release_version "$PROMTOOL_MODULE_VERSION")

installed_version() {
    # `promtool --version` prints "promtool, version 3.16.0 (branch: ..., revision: ...)".
    "$BIN" --version 2>&1 | sed -n 's/^promtool, version \([^ ]*\).*/\1/p' | head -n 1
}

up_to_date() {
    [ -x "$BIN" ] && [ "$(installed_version)" = "$RELEASE" ]
}

if up_to_date; then
    say "promtool $RELEASE (module $PROMTOOL_MODULE_VERSION) already installed in $TOOLS/bin"
    exit 0
fi

command -v go >/dev/null || { say "error: go is not on PATH"; exit 1; }
# The go.mod `tool` directive needs Go 1.24+; Prometheus 3.16 needs 1.25+.
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
if [ "${go_minor:-0}" -lt 25 ] 2>/dev/null; then
    say "error: Go $(go env GOVERSION) is too old; promtool $RELEASE needs Go 1.25+"
    exit 1
fi
mkdir -p "$TOOLS/bin" "$MODDIR"
cd "$MODDIR"

if [ ! -f go.mod ]; then
    say "creating Go module in tools/promtool"
    go mod init meshward.local/tools/promtool
fi

if ! grep -q "$MODULE $PROMTOOL_MODULE_VERSION" go.mod || ! grep -q "tool $PKG\|	$PKG" go.mod; then
    # Only an exact version is asked for, never a version list.
    say "go get -tool $PKG@$PROMTOOL_MODULE_VERSION"
    go get -tool "$PKG@$PROMTOOL_MODULE_VERSION"
fi

say "building promtool $RELEASE (CGO_ENABLED=0) into $TOOLS/bin; a cold build takes minutes"
start=$(date +%s)
# Prometheus' release build (promu) stamps github.com/prometheus/common/version.
CGO_ENABLED=0 GOBIN="$TOOLS/bin" GOFLAGS="-mod=mod -buildvcs=false" go install \
    -ldflags "-X github.com/prometheus/common/version.Version=$RELEASE -X github.com/prometheus/common/version.Revision=module-$PROMTOOL_MODULE_VERSION" \
    "$PKG"
say "build took $(( $(date +%s) - start )) s"

say "promtool: $(installed_version)"
up_to_date || { say "error: installed promtool does not report version $RELEASE"; exit 1; }
say "done"
