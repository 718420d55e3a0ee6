#!/usr/bin/env bash
# Installs opa-envoy-plugin (the OPA build with the Envoy ext_authz gRPC
# server, version pinned below) into .tools/bin/opa-envoy-plugin when it is
# missing or reports another version. It is the reference implementation that
# Meshward's ext_authz server is compared against.
#
# Built from its Go module, like SPIRE (scripts/install-spire.sh): the module
# in tools/opa-envoy/ records cmd/opa-envoy-plugin as a Go tool dependency
# (go.mod + go.sum are committed, so the build is reproducible). A plain
# `go install github.com/open-policy-agent/opa-envoy-plugin/cmd/opa-envoy-plugin@VERSION`
# does not work here (the module proxy refuses the version list it reads, and
# v1.17.0..v1.19.1-envoy); building inside the committed main module does.
# CGO is off and the opa_wasm tag is not set: the Wasm evaluator is not needed,
# and the binary is static. The version is stamped the way the plugin's
# release Makefile intends, so `opa-envoy-plugin version` reports it.
#
# Idempotent: a second run with the binary at the right version does nothing.
#
# Usage: scripts/install-opa-envoy.sh [--verify]
#   --verify  also start the binary with a minimal config and a trivial
#             policy and send it two envoy.service.auth.v3 Check calls
#             (needs .venv/bin/python with grpcio and xds-protos).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
MODDIR=$ROOT/tools/opa-envoy
OPA_ENVOY_VERSION=${OPA_ENVOY_VERSION:-v1.15.2-envoy}
MODULE=github.com/open-policy-agent/opa-envoy-plugin
PKG=$MODULE/cmd/opa-envoy-plugin
BIN=$TOOLS/bin/opa-envoy-plugin

VERIFY=0
for arg in "$@"; do
    case $arg in
        --verify) VERIFY=1 ;;
        *) printf 'usage: %s [--verify]\n' "$0" >&2; exit 2 ;;
    esac
done

say() { printf '[install-opa-envoy] %s\n' "$*"; }

installed_version() {
    # `opa-envoy-plugin version` prints "Version: 1.15.2-envoy" first.
    "$BIN" version 2>/dev/null | sed -n 's/^Version: *//p' | head -n 1
}

up_to_date() {
    [ -x "$BIN" ] && [ "$(installed_version)" = "${OPA_ENVOY_VERSION#v}" ]
}

verify() {
    local py=$ROOT/.venv/bin/python
    if [ ! -x "$py" ]; then
        say "verify: skipped, $py is missing (run scripts/install-python-peers.sh)"
        return 0
    fi
    "$py" - "$BIN" <<'PY'
import os, socket, subprocess, sys, tempfile, time, urllib.request

import grpc
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

binary = sys.argv[1]

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

http_port, grpc_port = free_port(), free_port()
work = tempfile.mkdtemp(prefix="opa-envoy-verify-")
os.makedirs(os.path.join(work, "policies"))
with open(os.path.join(work, "policies", "authz.rego"), "w") as f:
    f.write('package envoy.authz\n\ndefault allow := false\n\n'
            'allow if input.attributes.request.http.method == "GET"\n')
with open(os.path.join(work, "config.yaml"), "w") as f:
    f.write(f"""plugins:
  envoy_ext_authz_grpc:
    addr: 127.0.0.1:{grpc_port}
    path: envoy/authz/allow
    dry-run: false
    enable-reflection: false
decision_logs:
  console: false
""")
cmd = [binary, "run", "--server", "--addr", f"127.0.0.1:{http_port}",
       "--skip-version-check", "--log-level", "error",
       "--config-file", os.path.join(work, "config.yaml"),
       os.path.join(work, "policies")]
print("[install-opa-envoy] verify: " + " ".join(cmd), flush=True)
proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
try:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            sys.exit("opa-envoy-plugin exited early: " + proc.stderr.read().decode())
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{http_port}/health?plugins", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit("opa-envoy-plugin did not become healthy within 30 s")
        time.sleep(0.1)

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
        stub = external_auth_pb2_grpc.AuthorizationStub(ch)
        got = {}
        for method in ("GET", "POST"):
            req = external_auth_pb2.CheckRequest(
                attributes=attribute_context_pb2.AttributeContext(
                    request=attribute_context_pb2.AttributeContext.Request(
                        http=attribute_context_pb2.AttributeContext.HttpRequest(
                            method=method, path="/verify", headers={":path": "/verify"}))))
            resp = stub.Check(req, timeout=10)
            got[method] = resp.status.code
            has_id = "decision_id" in resp.dynamic_metadata.fields
            print(f"[install-opa-envoy] verify: {method} -> status.code={resp.status.code} "
                  f"decision_id={'yes' if has_id else 'no'}", flush=True)
        if got != {"GET": 0, "POST": 7}:
            sys.exit(f"unexpected Check results {got}, want GET=0 (OK), POST=7 (PERMISSION_DENIED)")
finally:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
print("[install-opa-envoy] verify: ok", flush=True)
PY
}

if up_to_date; then
    say "opa-envoy-plugin $OPA_ENVOY_VERSION already installed in $TOOLS/bin"
    if [ "$VERIFY" = 1 ]; then verify; fi
    exit 0
fi

command -v go >/dev/null || { say "error: go is not on PATH"; exit 1; }
# The go.mod `tool` directive needs Go 1.24+; the plugin's go.mod needs 1.25+.
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
if [ "${go_minor:-0}" -lt 25 ] 2>/dev/null; then
    say "error: Go $(go env GOVERSION) is too old; opa-envoy-plugin $OPA_ENVOY_VERSION needs Go 1.25+"
    exit 1
fi
mkdir -p "$TOOLS/bin" "$MODDIR"
cd "$MODDIR"

if [ ! -f go.mod ]; then
    say "creating Go module in tools/opa-envoy"
    go mod init meshward.local/tools/opa-envoy
fi

if ! grep -q "$MODULE $OPA_ENVOY_VERSION" go.mod || ! grep -q "tool $PKG\|	$PKG" go.mod; then
    # Only an exact version is asked for: the proxy refuses the version list.
    say "go get -tool $PKG@$OPA_ENVOY_VERSION"
    go get -tool "$PKG@$OPA_ENVOY_VERSION"
fi

say "building opa-envoy-plugin $OPA_ENVOY_VERSION (CGO_ENABLED=0) into $TOOLS/bin; a cold build takes minutes"
start=$(date +%s)
# The release Makefile stamps the version with -X; v1/version.Version is the
# variable `opa-envoy-plugin version` prints.
CGO_ENABLED=0 GOBIN="$TOOLS/bin" GOFLAGS="-mod=mod -buildvcs=false" go install \
    -ldflags "-X github.com/open-policy-agent/opa/v1/version.Version=${OPA_ENVOY_VERSION#v}" \
    "$PKG"
say "build took $(( $(date +%s) - start )) s"

say "opa-envoy-plugin: $(installed_version)"
up_to_date || { say "error: installed opa-envoy-plugin does not report version ${OPA_ENVOY_VERSION#v}"; exit 1; }
if [ "$VERIFY" = 1 ]; then verify; fi
say "done"
