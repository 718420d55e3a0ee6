#!/usr/bin/env bash
# Proxy path load benchmark: the same request through
#   direct    client -> demo skill backend (baseline, no proxy)
#   meshward  client -> billing-bot outbound dataplane -> mTLS h2 -> hello-skill
#             inbound dataplane -> skill (policy + limits + breakers on both sides)
#   envoy     client -> Envoy outbound (plain listener) -> mTLS h2 -> Envoy inbound
#             (client cert required) -> the same skill (the peer: no authz filter)
# in one run, with h2load over HTTP/1.1 and h2c (prior knowledge), loopback only.
# Both Envoys take their SVIDs and bundle from the running `meshward up` dev
# identity server's SDS (billing-bot's socket for outbound, hello-skill's for
# inbound), so both meshes use the same identities and CA.
#
# The mesh runs from a copy of deploy/local/mesh.yaml and policies/ with every
# rate limit raised to 1e6 rps (and concurrency caps to 1e5) so the benchmark
# measures the proxy, not the limiter; policy stays on and is evaluated on
# both sides for every request.
#
# Knobs (environment): DURATION (s per case, default 10), WARMUP (s, default 2),
# CONCURRENCY (default "1 32"), PROTOS (default "h1 h2c"), TARGETS (default
# "direct meshward envoy"), ENVOY_CONCURRENCY (workers per Envoy, default 1:
# two Envoys x 1 worker against Meshward's one process on a 2-core box),
# MESHWARD_ENVOY (Envoy binary), OUT (results dir, default target/bench-proxy),
# MESHWARD_BIN (measure this binary instead of building; for A/B runs),
# POLICY_DIR (policy bundle to copy, default policies/),
# KEEP=1 (leave the temp dir), PERF=1 (after the measured cases, an extra
# meshward h2c run at the highest concurrency under `perf record`:
# $OUT/perf.data and $OUT/perf-summary.md),
# REPEAT (default 1: run every target this many times per case, interleaved,
# each repeat in a rotated order),
# TRACING (e.g. "off 1 100": measure Meshward with OTLP tracing off and at 1%
# and 100% sampling, see below), MESHWARD_JAEGER (collector binary, default
# .tools/bin/jaeger from scripts/install-jaeger.sh).
#
# TRACING: one `meshward up` per mode runs side by side from the same binary
# and mesh copy (ext_authz/rate-limit servers off in all of them, they would
# collide on their fixed ports and are not on the proxy path); a mode of N
# (percent) exports OTLP/gRPC spans to one real Jaeger v2 on loopback
# (tests/fixtures/jaeger/config.yaml, in-memory store) with
# OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG=N/100;
# "off" runs with no OTEL_* variable. Targets meshward (off), meshward-t1,
# meshward-t100... take the place of `meshward` and interleave inside each
# case. Server CPU sums every mesh (idle ones included, alike for all rows);
# the collector's CPU is reported on its own. At the end each mode's
# meshward_trace_spans_{exported,dropped}_total come from its /metrics.
# Prints a markdown section (also written to $OUT/report.md) for benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONCURRENCY=${CONCURRENCY:-"1 32"}
PROTOS=${PROTOS:-"h1 h2c"}
TARGETS=${TARGETS:-"direct meshward envoy"}
TARGETS_ARG=$TARGETS
ENVOY_CONCURRENCY=${ENVOY_CONCURRENCY:-1}
OUT=${OUT:-$REPO/target/bench-proxy}
ENVOY=${MESHWARD_ENVOY:-$(ls "$REPO"/.venv/lib/python3.*/site-packages/envoy/_bin/envoy 2>/dev/null | head -1 || true)}
READY_TIMEOUT=60

log() { echo "proxy.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# --- tools -------------------------------------------------------------------
if ! command -v h2load >/dev/null; then
    [ "$(id -u)" = 0 ] || die "h2load missing: apt-get install nghttp2-client (as root)"
    log "installing nghttp2-client (h2load)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null
fi
for t in curl jq python3; do command -v "$t" >/dev/null || die "$t is required"; done
if [[ " $TARGETS " == *" envoy "* ]]; then
    [ -x "${ENVOY:-}" ] || die "Envoy not found (${ENVOY:-none}): run scripts/install-python-peers.sh or set MESHWARD_ENVOY"
fi

if [ -n "${MESHWARD_BIN:-}" ]; then
    # A/B runs: measure a binary built (and saved) earlier.
    MESHWARD=$MESHWARD_BIN
    [ -x "$MESHWARD" ] || die "MESHWARD_BIN=$MESHWARD is not an executable"
else
    log "building meshward (release)"
    cargo build --release --bin meshward >&2
    MESHWARD=$REPO/target/release/meshward
fi

# --- a private mesh with high limits -------------------------------------------
# Short path: Unix socket paths must stay under ~100 bytes.
TMP=$(mktemp -d /tmp/mwb.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cp -r "${POLICY_DIR:-policies}" "$TMP/policies"
sed -e 's#^\(\s*dir:\s*\).*#\1policies#' \
    -e 's#^\(\s*requests_per_second:\s*\).*#\11000000#' \
    -e 's#^\(\s*burst:\s*\).*#\11000000#' \
    -e 's#^\(\s*max_concurrent:\s*\).*#\1100000#' \
    deploy/local/mesh.yaml >"$TMP/mesh.yaml"
"$MESHWARD" validate "$TMP/mesh.yaml" >&2 || die "the benchmark mesh config does not validate"

TRACING=${TRACING:-}
REPEAT=${REPEAT:-1}
UP_FLAGS=()
JAEGER_PID=
if [ -n "$TRACING" ]; then
    UP_FLAGS=(--no-ext-authz --no-rate-limit)
    for mode in $TRACING; do
        [ "$mode" = off ] || [[ "$mode" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "TRACING: '$mode' is neither off nor a percentage"
    done
    if [[ " $TRACING " != *" off "* ]] || [ "$(wc -w <<<"$TRACING")" != "$(tr ' ' '\n' <<<"$TRACING" | sed '/^$/d' | sort -u | wc -l)" ]; then
        die "TRACING must list off and distinct percentages, e.g. \"off 1 100\""
    fi
fi

# Polls `cmd...` every 100 ms until it succeeds; dies after READY_TIMEOUT
# (or when a mesh exits).
MESH_PIDS=()
wait_until() {
    local what=$1 pid
    shift
    local deadline=$((SECONDS + READY_TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "timed out waiting for $what"
        for pid in "${MESH_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || die "a meshward up exited; logs: $(tail -20 "$TMP"/up*.log)"
        done
        sleep 0.1
    done
}
ok200() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@")" = 200 ]; }

# --- the collector (TRACING only) ------------------------------------------------
if [[ "$TRACING" =~ [0-9] ]]; then
    JAEGER=${MESHWARD_JAEGER:-$REPO/.tools/bin/jaeger}
    [ -x "$JAEGER" ] || die "Jaeger not found ($JAEGER): run scripts/install-jaeger.sh or set MESHWARD_JAEGER"
    read -r J_GRPC J_HTTP J_QHTTP J_QGRPC J_HEALTH < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(5)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
    MESHWARD_JAEGER_OTLP_GRPC=127.0.0.1:$J_GRPC MESHWARD_JAEGER_OTLP_HTTP=127.0.0.1:$J_HTTP \
        MESHWARD_JAEGER_QUERY_HTTP=127.0.0.1:$J_QHTTP MESHWARD_JAEGER_QUERY_GRPC=127.0.0.1:$J_QGRPC \
        MESHWARD_JAEGER_HEALTH=127.0.0.1:$J_HEALTH MESHWARD_JAEGER_LOG_LEVEL=warn \
        "$JAEGER" --config "$REPO/tests/fixtures/jaeger/config.yaml" </dev/null >"$TMP/jaeger.log" 2>&1 &
    JAEGER_PID=$!
    PIDS+=("$JAEGER_PID")
    deadline=$((SECONDS + READY_TIMEOUT))
    until ok200 "http://127.0.0.1:$J_HEALTH/status"; do
        kill -0 "$JAEGER_PID" 2>/dev/null || die "jaeger exited; log: $(tail -20 "$TMP/jaeger.log")"
        [ $SECONDS -lt $deadline ] || die "timed out waiting for jaeger; log: $(tail -20 "$TMP/jaeger.log")"
        sleep 0.1
    done
    log "jaeger ready: OTLP/gRPC 127.0.0.1:$J_GRPC, query http://127.0.0.1:$J_QHTTP"
fi

# Starts `meshward up` for tracing mode $1 (off, or a sampling percentage) in
# state dir $TMP/state$2; its log is $TMP/up$2.log.
start_mesh() {
    local mode=$1 sfx=$2
    local otel=(env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
        -u OTEL_TRACES_SAMPLER -u OTEL_TRACES_SAMPLER_ARG -u OTEL_EXPORTER_OTLP_PROTOCOL
        -u OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)
    if [ "$mode" != off ]; then
        otel+=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$J_GRPC" OTEL_EXPORTER_OTLP_PROTOCOL=grpc
            OTEL_TRACES_SAMPLER=parentbased_traceidratio
            OTEL_TRACES_SAMPLER_ARG="$(python3 -c "print($mode / 100)")")
    fi
    log "starting meshward up, tracing $mode (state dir $TMP/state$sfx)"
    "${otel[@]}" "$MESHWARD" up --config "$TMP/mesh.yaml" --state-dir "$TMP/state$sfx" ${UP_FLAGS[@]+"${UP_FLAGS[@]}"} \
        >"$TMP/up$sfx.out" 2>"$TMP/up$sfx.log" &
    MESH_PIDS+=("$!")
    PIDS+=("$!")
}
# Target name of tracing mode $1.
mode_target() { if [ "$1" = off ]; then echo meshward; else echo "meshward-t$1"; fi; }

start_mesh off ""
MESH_PID=${MESH_PIDS[0]}
declare -A MESH_OUT MESH_ADMINS
for mode in $TRACING; do
    [ "$mode" = off ] || start_mesh "$mode" "-t$mode"
done

STATE=$TMP/state
wait_until "up.json" test -s "$STATE/up.json"
UP=$STATE/up.json
TD=$(jq -r .trust_domain "$UP")
BB_ID=$(jq -r '.agents[] | select(.name=="billing-bot") | .spiffe_id' "$UP")
HS_ID=$(jq -r '.services[] | select(.name=="hello-skill") | .spiffe_id' "$UP")
BACKEND=$(jq -r '.services[] | select(.name=="hello-skill") | .backend' "$UP")
BB_SOCK=$(jq -r --arg id "$BB_ID" '.identity.sockets[$id]' "$UP")
HS_SOCK=$(jq -r --arg id "$HS_ID" '.identity.sockets[$id]' "$UP")
for mode in ${TRACING:-off}; do
    [ "$mode" = off ] && sfx= || sfx=-t$mode
    up=$TMP/state$sfx/up.json
    wait_until "up.json ($mode)" test -s "$up"
    bb_out=$(jq -r '.agents[] | select(.name=="billing-bot") | .outbound' "$up")
    bb_admin=$(jq -r '.agents[] | select(.name=="billing-bot") | .admin' "$up")
    hs_admin=$(jq -r '.services[] | select(.name=="hello-skill") | .admin' "$up")
    wait_until "billing-bot /ready ($mode)" ok200 "http://$bb_admin/ready"
    wait_until "hello-skill /ready ($mode)" ok200 "http://$hs_admin/ready"
    wait_until "a request through the mesh ($mode)" ok200 "http://$bb_out/mcp://hello-skill/bench"
    MESH_OUT[$(mode_target "$mode")]=$bb_out
    MESH_ADMINS[$mode]="$bb_admin $hs_admin"
done
BB_OUT=${MESH_OUT[meshward]}
log "mesh ready: billing-bot outbound $BB_OUT, skill backend $BACKEND"

# --- Envoy, the peer -------------------------------------------------------------
# Starts Envoy with bootstrap $2 (name $1); sets ENVOY_PORT to its listener's port.
start_envoy() {
    local name=$1 config=$2
    "$ENVOY" --config-path "$config" --admin-address-path "$TMP/$name.admin" \
        --disable-hot-restart --concurrency "$ENVOY_CONCURRENCY" \
        --log-level warn --log-path "$TMP/$name.log" </dev/null >/dev/null 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    local deadline=$((SECONDS + READY_TIMEOUT))
    # LIVE once the listener is warm, i.e. its SDS secrets arrived.
    until [ -s "$TMP/$name.admin" ] && ok200 "http://$(cat "$TMP/$name.admin")/ready"; do
        kill -0 "$pid" 2>/dev/null || die "envoy $name exited; log: $(tail -20 "$TMP/$name.log")"
        [ $SECONDS -lt $deadline ] || die "timed out waiting for envoy $name; log: $(tail -20 "$TMP/$name.log")"
        sleep 0.1
    done
    ENVOY_PORT=$(curl -s "http://$(cat "$TMP/$name.admin")/listeners?format=json" |
        jq -r '.listener_statuses[0].local_address.socket_address.port_value')
}
if [[ " $TARGETS " == *" envoy "* ]]; then
    python3 benches/proxy/envoy_bootstrap.py inbound "$HS_SOCK" "$HS_ID" "$TD" "${BACKEND##*:}" >"$TMP/inbound.json"
    start_envoy inbound "$TMP/inbound.json"
    ENVOY_IN=$ENVOY_PORT
    python3 benches/proxy/envoy_bootstrap.py outbound "$BB_SOCK" "$BB_ID" "$TD" hello-skill "$ENVOY_IN" "$HS_ID" >"$TMP/outbound.json"
    start_envoy outbound "$TMP/outbound.json"
    ENVOY_OUT=127.0.0.1:$ENVOY_PORT
    wait_until "a request through Envoy" ok200 "http://$ENVOY_OUT/mcp://hello-skill/bench"
    log "envoy ready: outbound $ENVOY_OUT -> inbound 127.0.0.1:$ENVOY_IN -> $BACKEND"
fi

# Both meshes must deliver the caller's verified identity (proof that the
# client certificate was presented and checked on the mTLS hop).
check_identity() {
    local got
    got=$(curl -s --max-time 5 "$2" | jq -r '.headers["x-agent-id"]')
    [ "$got" = "$BB_ID" ] || die "$1: the skill saw x-agent-id '$got', expected $BB_ID"
}
for t in "${!MESH_OUT[@]}"; do check_identity "$t" "http://${MESH_OUT[$t]}/mcp://hello-skill/bench"; done
[ -z "${ENVOY_OUT:-}" ] || check_identity envoy "http://$ENVOY_OUT/mcp://hello-skill/bench"

url_for() {
    case $1 in
        direct) echo "http://$BACKEND/bench" ;;
        meshward*) echo "http://${MESH_OUT[$1]}/mcp://hello-skill/bench" ;;
        envoy) echo "http://$ENVOY_OUT/mcp://hello-skill/bench" ;;
    esac
}

# CPU time (clock ticks) of the server-side processes: meshward up (both
# dataplanes and the skill) and, when running, both Envoys.
# With TRACING: every mesh, not the collector (counted on its own).
SERVER_PIDS=()
for pid in "${PIDS[@]}"; do [ "$pid" = "$JAEGER_PID" ] || SERVER_PIDS+=("$pid"); done
cpu_ticks() {
    local pid total=0
    for pid in "$@"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}
HZ=$(getconf CLK_TCK)
MAXCONC=$(tr ' ' '\n' <<<"$CONCURRENCY" | sort -n | tail -1)

if [ -n "$TRACING" ]; then
    expanded=
    for target in $TARGETS; do
        if [ "$target" = meshward ]; then
            for mode in $TRACING; do expanded+=" $(mode_target "$mode")"; done
        else
            expanded+=" $target"
        fi
    done
    TARGETS=${expanded# }
fi

# --- load ----------------------------------------------------------------------------
mkdir -p "$OUT"
CASES=$OUT/cases.jsonl
: >"$CASES"
LOAD_BEFORE=$(uptime)
# Targets interleave inside each (protocol, concurrency) so that load from
# other work on the machine hits them alike.
for proto in $PROTOS; do
    case $proto in
        h1) flag=--h1 ;;
        h2c) flag= ;; # h2load's default for http:// URIs: h2c with prior knowledge
        *) die "unknown protocol $proto" ;;
    esac
    for conc in $CONCURRENCY; do
        for rep in $(seq "$REPEAT"); do
        # Each repeat starts one target later, so that no target always
        # runs right after the same other one.
        read -r -a order <<<"$TARGETS"
        shift_by=$(((rep - 1) % ${#order[@]}))
        order=("${order[@]:shift_by}" "${order[@]:0:shift_by}")
        for target in "${order[@]}"; do
            name=$target-$proto-c$conc
            [ "$REPEAT" = 1 ] || name=$name-r$rep
            log "$name: $DURATION s"
            before=$(cpu_ticks "${SERVER_PIDS[@]}")
            [ -z "$JAEGER_PID" ] || jbefore=$(cpu_ticks "$JAEGER_PID")
            # One request in flight per connection: `conc` connections.
            # shellcheck disable=SC2086
            h2load $flag -t 1 -c "$conc" -m 1 -D "$DURATION" --warm-up-time="$WARMUP" \
                --log-file="$OUT/$name.log" "$(url_for "$target")" >"$OUT/$name.out" 2>&1 ||
                die "h2load failed for $name: $(tail -5 "$OUT/$name.out")"
            after=$(cpu_ticks "${SERVER_PIDS[@]}")
            [ -z "$JAEGER_PID" ] || export COLLECTOR_CPU_SECONDS=$(python3 -c "print(($(cpu_ticks "$JAEGER_PID") - $jbefore) / $HZ)")
            # Server CPU per request: ticks over warm-up + run, divided by the
            # requests of the run scaled to warm-up + run (same rate assumed).
            CPU_SECONDS=$(python3 -c "print(($after - $before) / $HZ)") \
                SPAN=$((DURATION + WARMUP)) REP=$rep python3 benches/proxy/summarize.py case "$target" "$proto" "$conc" \
                "$OUT/$name.out" "$OUT/$name.log" >>"$CASES"
        done
        done
    done
done
LOAD_AFTER=$(uptime)

# Span counters of each tracing mode (the `meshward up` process has one
# Prometheus recorder, served by every dataplane's admin /metrics; the
# billing-bot one is kept, the skill's saved next to it for a cross-check).
if [ -n "$TRACING" ]; then
    mkdir -p "$OUT/trace-metrics"
    for mode in $TRACING; do
        read -r bb_admin hs_admin <<<"${MESH_ADMINS[$mode]}"
        curl -s --max-time 5 "http://$bb_admin/metrics" >"$OUT/trace-metrics/$mode.metrics" || log "no /metrics for $mode"
        curl -s --max-time 5 "http://$hs_admin/metrics" >"$OUT/trace-metrics/$mode.skill.metrics" || true
    done
    if [ -n "$JAEGER_PID" ]; then
        curl -s --max-time 5 "http://127.0.0.1:$J_QHTTP/api/services" >"$OUT/trace-metrics/jaeger-services.json" || true
    fi
fi

# Profile: an extra, unmeasured meshward h2c run at the highest concurrency
# with perf attached (DWARF call graphs), so the measured cases stay clean.
if [ "${PERF:-0}" = 1 ] && [[ " $TARGETS " == *" meshward "* ]]; then
    log "profiling meshward (h2c, c=$MAXCONC, $DURATION s) with perf"
    perf record -F 299 --call-graph dwarf,16384 -p "$MESH_PID" -o "$OUT/perf.data" -- sleep "$DURATION" \
        >"$OUT/perf.out" 2>&1 &
    perf_pid=$!
    h2load -t 1 -c "$MAXCONC" -m 1 -D "$DURATION" "$(url_for meshward)" >"$OUT/perf-h2load.out" 2>&1 || true
    wait "$perf_pid" || log "perf record failed: $(tail -3 "$OUT/perf.out")"
    python3 benches/proxy/perf_summary.py "$OUT/perf.data" >"$OUT/perf-summary.md" 2>&1 ||
        log "perf summary failed: $(tail -3 "$OUT/perf-summary.md")"
    # Syscalls and context switches per request, all server processes (the
    # skill runs inside `meshward up`, so it counts on both sides).
    {
        echo
        echo "| path (h2c, c=$MAXCONC) | syscalls / req | context switches / req | task-clock ms / req |"
        echo "|---|---:|---:|---:|"
    } >>"$OUT/perf-summary.md"
    for target in direct meshward envoy; do
        [[ " $TARGETS " == *" $target "* ]] || continue
        pids=$(IFS=,; echo "${SERVER_PIDS[*]}")
        perf stat -x, -e raw_syscalls:sys_enter,context-switches,task-clock -p "$pids" \
            -o "$OUT/perf-stat-$target.csv" -- sleep "$DURATION" &
        perf_pid=$!
        h2load -t 1 -c "$MAXCONC" -m 1 -D "$DURATION" "$(url_for "$target")" >"$OUT/perf-stat-$target.h2load" 2>&1 || true
        wait "$perf_pid" || true
        python3 - "$target" "$OUT/perf-stat-$target.csv" "$OUT/perf-stat-$target.h2load" >>"$OUT/perf-summary.md" <<'PY' ||
import re, sys
target, csv, h2 = sys.argv[1:]
done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", open(h2).read()).group(1))
vals = {}
for line in open(csv):
    f = line.strip().split(",")
    if len(f) > 2 and f[0] and f[0][0].isdigit():
        vals[f[2]] = float(f[0])
print(f"| {target} | {vals['raw_syscalls:sys_enter'] / done:.1f} | {vals['context-switches'] / done:.2f} | {vals['task-clock'] / done:.3f} |")
PY
            log "perf stat summary failed for $target"
    done
    log "profile: $OUT/perf-summary.md"
fi

# --- report ----------------------------------------------------------------------------
{
    echo "Run: \`${TRACING:+TRACING=\"$TRACING\" REPEAT=$REPEAT TARGETS=\"$TARGETS_ARG\" PROTOS=\"$PROTOS\" }DURATION=$DURATION WARMUP=$WARMUP CONCURRENCY=\"$CONCURRENCY\" ENVOY_CONCURRENCY=$ENVOY_CONCURRENCY bash benches/proxy.sh\`"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    dirty=$(git status --porcelain -- . ':!benches' 2>/dev/null | awk '{print $2}' | tr '\n' ' ')
    echo "- revision: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)${dirty:+ + uncommitted changes in: $dirty}; binary sha256 $(sha256sum "$MESHWARD" | cut -c1-12)"
    echo "- machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name:\s*//p' | head -1), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM"
    echo "- load before: ${LOAD_BEFORE#*load average: }; after: ${LOAD_AFTER#*load average: } (1/5/15 min)"
    echo "- tools: $(h2load --version | head -1), Envoy $("$ENVOY" --version 2>/dev/null | grep -o '/1\.[0-9.]*/' | tr -d / || echo n/a)"
    echo "- each case: h2load -t 1 -c <conc> -m 1, ${DURATION} s after ${WARMUP} s warm-up; mean from h2load, p50/p99 from its per-request log; server CPU = user+sys of \`meshward up\` (both dataplanes + the skill) and both Envoys, per request (the skill's own cost is in every row, see \`direct\`)"
    echo
    python3 benches/proxy/summarize.py report "$CASES"
    if [ -n "$TRACING" ]; then
        echo
        echo "Tracing (TRACING=\"$TRACING\", REPEAT=$REPEAT): OTLP/gRPC to Jaeger $("$JAEGER" --version 2>/dev/null | grep -o 'v[0-9][0-9.]*' | head -1) on loopback; collector CPU = user+sys of that Jaeger per request (not in server CPU)."
        echo
        python3 benches/proxy/summarize.py tracing "$CASES" "$OUT/trace-metrics"
        if [ -s "$OUT/trace-metrics/jaeger-services.json" ]; then
            echo
            echo "Services in Jaeger after the run: $(jq -r '.data | sort | join(", ")' "$OUT/trace-metrics/jaeger-services.json")"
        fi
    fi
} | tee "$OUT/report.md"
