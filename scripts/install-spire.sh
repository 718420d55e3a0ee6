#!/usr/bin/env bash
# Installs SPIRE server and agent (the version pinned below) into .tools/bin
# when they are missing or report another version.
#
# SPIRE is built from its Go modules, as DESIGN.md prescribes: the module in
# tools/spire/ records spire-server and spire-agent as Go tool dependencies
# (go.mod + go.sum are committed, so the build is reproducible), and
# `go install` builds them with CGO (the sqlite datastore needs it).
# Idempotent: a second run with both binaries at the right version does nothing.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
MODDIR=$ROOT/tools/spire
SPIRE_VERSION=${SPIRE_VERSION:-v1.13.3}

say() { printf '[install-spire] %s\n' "$*"; }

installed_version() {
    # `spire-server --version` prints e.g. "1.13.3" on stderr.
    "$TOOLS/bin/$1" --version 2>&1 | head -n 1 | tr -d '[:space:]'
}

up_to_date() {
    local bin
    for bin in spire-server spire-agent; do
        [ -x "$TOOLS/bin/$bin" ] || return 1
        [ "$(installed_version "$bin")" = "${SPIRE_VERSION#v}" ] || return 1
    done
}

if up_to_date; then
    say "SPIRE $SPIRE_VERSION already installed in $TOOLS/bin"
    exit 0
fi

command -v go >/dev/null || { say "error: go is not on PATH"; exit 1; }
# `go get -tool` and the go.mod `tool` block need Go 1.24 or newer.
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
if [ "${go_minor:-0}" -lt 24 ] 2>/dev/null; then
    say "error: Go $(go env GOVERSION) is too old; Go 1.24+ is needed for tool dependencies"
    exit 1
fi
mkdir -p "$TOOLS/bin" "$MODDIR"
cd "$MODDIR"

if [ ! -f go.mod ]; then
    say "creating Go module in tools/spire"
    go mod init meshward.local/tools/spire
fi

for tool in spire-server spire-agent; do
    pkg="github.com/spiffe/spire/cmd/$tool"
    if ! grep -q "github.com/spiffe/spire $SPIRE_VERSION" go.mod || ! grep -q "tool $pkg\|	$pkg" go.mod; then
        say "go get -tool $pkg@$SPIRE_VERSION"
        go get -tool "$pkg@$SPIRE_VERSION"
    fi
done

say "building spire-server and spire-agent (CGO_ENABLED=1) into $TOOLS/bin; the first build takes minutes"
# SPIRE's release builds stamp the version this way (its Makefile sets
# version.gittag); without it the binaries report "<base>-dev-unk".
CGO_ENABLED=1 GOBIN="$TOOLS/bin" go install \
    -ldflags "-X github.com/spiffe/spire/pkg/common/version.gittag=${SPIRE_VERSION#v}" \
    github.com/spiffe/spire/cmd/spire-server \
    github.com/spiffe/spire/cmd/spire-agent

for bin in spire-server spire-agent; do
    say "$bin: $(installed_version "$bin")"
done
up_to_date || { say "error: installed SPIRE does not report version ${SPIRE_VERSION#v}"; exit 1; }
say "done"
