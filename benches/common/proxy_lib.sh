# shellcheck shell=bash
# Helpers shared by benches/proxy.sh and benches/footprint.sh; sourced, not run.
#
# The sourcing script sets, before calling anything here:
#   REPO           the repository root
#   TMP            its private temp dir (logs, configs, state)
#   PIDS           an array it kills and reaps on exit; every start_* appends
#   READY_TIMEOUT  seconds to wait for any readiness signal
#   LOG_TAG        prefix of log lines (the script's name)
# and may add `pid=log` entries to WATCHED: wait_until gives up as soon as
# one of those processes exits, with the tail of its log.

declare -A WATCHED=()

log() { echo "${LOG_TAG:-bench}: $*" >&2; }
die() {
    log "$*"
    exit 1
}

# HTTP status code of a GET (curl args), "000" when nothing answered.
# Prints the meshward binary to measure: MESHWARD_BIN (for A/B runs, a
# build saved earlier) or a fresh release build of this tree.
meshward_binary() {
    if [ -n "${MESHWARD_BIN:-}" ]; then
        [ -x "$MESHWARD_BIN" ] || die "MESHWARD_BIN=$MESHWARD_BIN is not an executable"
        echo "$MESHWARD_BIN"
    else
        log "building meshward (release)"
        cargo build --release --bin meshward >&2
        echo "$REPO/target/release/meshward"
    fi
}

# Makes $TMP (/tmp/<prefix>.XXXXXX: Unix socket paths under it must stay
# under ~100 bytes) and, on exit, stops every pid in PIDS and removes $TMP
# (KEEP=1 keeps it).
bench_tmp() {
    TMP=$(mktemp -d "/tmp/$1.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}
bench_cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}

# Dies unless the skill behind URL $2 saw the caller's verified identity
# ($BB_ID in x-agent-id): the client certificate was presented and checked
# on the mTLS hop of path $1.
check_identity() {
    local got
    got=$(curl -s --max-time 5 "$2" | jq -r '.headers["x-agent-id"]')
    [ "$got" = "$BB_ID" ] || die "$1: the skill saw x-agent-id '$got', expected $BB_ID"
}

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" || true; }
ok200() { [ "$(http_code "$@")" = 200 ]; }

# Prints $1 free loopback TCP ports (bound at once, so they are distinct).
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
PY
}

# Polls `cmd...` every 100 ms until it succeeds; dies after READY_TIMEOUT or
# when a WATCHED process exits.
wait_until() {
    local what=$1 pid
    shift
    local deadline=$((SECONDS + READY_TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "timed out waiting for $what"
        for pid in "${!WATCHED[@]}"; do
            kill -0 "$pid" 2>/dev/null ||
                die "waiting for $what: process $pid exited; ${WATCHED[$pid]}: $(tail -20 "${WATCHED[$pid]}" 2>/dev/null)"
        done
        sleep 0.1
    done
}

# h2load (nghttp2-client) is installed when missing and we are root; curl,
# jq, python3 and the commands named in "$@" must be on PATH.
# shellcheck disable=SC2120 # callers may pass no extra tools
require_tools() {
    if ! command -v h2load >/dev/null; then
        [ "$(id -u)" = 0 ] || die "h2load missing: apt-get install nghttp2-client (as root)"
        log "installing nghttp2-client (h2load)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null
    fi
    local t
    for t in curl jq python3 "$@"; do command -v "$t" >/dev/null || die "$t is required"; done
}

# The Envoy binary: MESHWARD_ENVOY, else the one scripts/install-python-peers.sh
# put in .venv (empty when there is none).
find_envoy() {
    if [ -n "${MESHWARD_ENVOY:-}" ]; then
        echo "$MESHWARD_ENVOY"
    else
        find "$REPO"/.venv/lib/python3.*/site-packages/envoy/_bin/envoy 2>/dev/null | head -1 || true
    fi
}

# Copies the policy bundle ($POLICY_DIR, default policies/) to $1/policies and
# writes $1/mesh.yaml: deploy/local/mesh.yaml pointing at that copy with
# every rate limit raised to 1e6 rps (and concurrency caps to 1e5), so a
# benchmark measures the proxy, not the limiter (policy stays on). Extra
# sed expressions in "$@" are applied too.
bench_mesh() {
    local dir=$1
    shift
    cp -r "${POLICY_DIR:-$REPO/policies}" "$dir/policies"
    sed -e 's#^\(\s*dir:\s*\).*#\1policies#' \
        -e 's#^\(\s*requests_per_second:\s*\).*#\11000000#' \
        -e 's#^\(\s*burst:\s*\).*#\11000000#' \
        -e 's#^\(\s*max_concurrent:\s*\).*#\1100000#' \
        "$@" "$REPO/deploy/local/mesh.yaml" >"$dir/mesh.yaml"
}

# Starts Envoy (binary $ENVOY) named $1 with bootstrap $2 and $3 workers;
# waits until its admin /ready is 200 (LIVE: the listener is warm, i.e. its
# SDS secrets arrived). Sets ENVOY_PID and ENVOY_PORT (its first listener).
start_envoy() {
    local name=$1 config=$2 workers=$3
    "$ENVOY" --config-path "$config" --admin-address-path "$TMP/$name.admin" \
        --disable-hot-restart --concurrency "$workers" \
        --log-level warn --log-path "$TMP/$name.log" </dev/null >/dev/null 2>&1 &
    ENVOY_PID=$!
    PIDS+=("$ENVOY_PID")
    WATCHED[$ENVOY_PID]=$TMP/$name.log
    wait_until "envoy $name" envoy_ready "$name"
    # shellcheck disable=SC2034 # read by the sourcing script
    ENVOY_PORT=$(curl -s "http://$(cat "$TMP/$name.admin")/listeners?format=json" |
        jq -r '.listener_statuses[0].local_address.socket_address.port_value')
}

# Writes the registry the OPA adapter reads (data.parity_registry, the shapes
# of input.meshward.caller / .service) from mesh file $1 to $2.
opa_registry() {
    python3 "$REPO/benches/proxy/opa_registry.py" "$1" >"$2"
}

# Starts opa-envoy-plugin ($OPA_ENVOY) named $1: ext_authz v3 gRPC on
# 127.0.0.1:$2, health on 127.0.0.1:$3, with bundle dir $4 (without
# *_test.rego), the registry file $5, the parity test's adapter
# (tests/fixtures/ext_authz/adapter) and the bench's (benches/proxy/opa, its
# decision bench_adapter/decision). Waits until /health?plugins is 200 (the
# bundle is loaded and the gRPC server is up). Sets OPA_PID.
start_opa() {
    local name=$1 grpc=$2 http=$3 bundle=$4 registry=$5
    cat >"$TMP/$name.yaml" <<EOF
plugins:
  envoy_ext_authz_grpc:
    addr: 127.0.0.1:$grpc
    path: bench_adapter/decision
    dry-run: false
    enable-reflection: false
decision_logs:
  console: false
EOF
    "$OPA_ENVOY" run --server --addr "127.0.0.1:$http" --skip-version-check \
        --log-level error --config-file "$TMP/$name.yaml" \
        "$bundle" "$REPO/tests/fixtures/ext_authz/adapter" "$REPO/benches/proxy/opa" "$registry" \
        </dev/null >/dev/null 2>"$TMP/$name.log" &
    # shellcheck disable=SC2034 # read by the sourcing script
    OPA_PID=$!
    PIDS+=("$OPA_PID")
    WATCHED[$OPA_PID]=$TMP/$name.log
    wait_until "opa-envoy-plugin $name" ok200 "http://127.0.0.1:$http/health?plugins"
}

envoy_ready() { [ -s "$TMP/$1.admin" ] && ok200 "http://$(cat "$TMP/$1.admin")/ready"; }

# Sum of user+sys clock ticks of the processes "$@" (/proc/PID/stat fields
# 14 and 15; the command name has no spaces for the processes we start).
cpu_ticks() {
    local pid total=0
    for pid in "$@"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}

# VmRSS / VmHWM (kB) of process $1.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
# Of the RSS: the process's own (anonymous) memory, and the file pages it
# maps (its binary's and libraries' code, shared with every process mapping
# the same file and evictable).
anon_kib() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status"; }
file_kib() { awk '/^RssFile:/ {print $2}' "/proc/$1/status"; }

machine_line() {
    echo "$(nproc) CPUs, $(lscpu | sed -n 's/^Model name:\s*//p' | head -1), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM"
}
envoy_version() { "$ENVOY" --version 2>/dev/null | grep -o '/1\.[0-9.]*/' | tr -d / || echo n/a; }
