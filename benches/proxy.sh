#!/usr/bin/env bash
# Proxy path load benchmark: the same request through
#   direct    client -> demo skill backend (baseline, no proxy)
#   meshward  client -> billing-bot outbound dataplane -> mTLS h2 -> hello-skill
#             inbound dataplane -> skill (policy + limits + breakers on both sides)
#   envoy     client -> Envoy outbound (plain listener) -> mTLS h2 -> Envoy inbound
#             (client cert required) -> the same skill (the peer: no authz filter)
#   envoy-opa the envoy topology with a second Envoy pair whose HTTP
#             connection managers also run ext_authz (gRPC) against an
#             opa-envoy-plugin beside each Envoy (two OPA processes, the
#             sidecar layout) on the same Rego bundle: the seed's stack
#             (issue 12, target 2)
# in one run, with h2load over HTTP/1.1 and h2c (prior knowledge), loopback only.
# Both Envoys take their SVIDs and bundle from the running `meshward up` dev
# identity server's SDS (billing-bot's socket for outbound, hello-skill's for
# inbound), so both meshes use the same identities and CA.
#
# envoy-opa: the bundle reads input.meshward (caller, service), which only
# Meshward adds, so each plugin evaluates benches/proxy/opa/bench_adapter.rego
# over the parity test's adapter (tests/fixtures/ext_authz/adapter): caller
# and service are looked up in a registry written from the bench's mesh file
# (benches/proxy/opa_registry.py). The outbound Envoy's plain listener has no
# peer certificate, so its route names the caller (billing-bot, the sidecar's
# own identity, as Meshward's outbound dataplane judges it) and the service
# in ext_authz context extensions; the inbound OPA sees the verified peer
# URI SAN (see benches/proxy/envoy_bootstrap.py). Before measuring, the script
# checks that an allowed request gets 200 and a denied one (billing-bot
# DELETE on hello-skill: a write, and billing-bot lacks data:write) gets 403
# through meshward and envoy-opa.
#
# The mesh runs from a copy of deploy/local/mesh.yaml and policies/ with every
# rate limit raised to 1e6 rps (and concurrency caps to 1e5) so the benchmark
# measures the proxy, not the limiter; policy stays on and is evaluated on
# both sides for every request.
#
# Knobs (environment): DURATION (s per case, default 10), WARMUP (s, default 2),
# CONCURRENCY (default "1 32", with RATE "1"), PROTOS (default "h1 h2c"), TARGETS (default
# "direct meshward envoy"; add envoy-opa for the seed's stack),
# ENVOY_CONCURRENCY (workers per Envoy, default 1:
# two Envoys x 1 worker against Meshward's one process on a 2-core box),
# MESHWARD_ENVOY (Envoy binary), MESHWARD_OPA_ENVOY (opa-envoy-plugin,
# default .tools/bin/opa-envoy-plugin from scripts/install-opa-envoy.sh),
# RATE (req/s; when set, every case runs at this fixed total rate instead of
# as fast as it goes: h2load --rps=round(RATE/conc) per connection, a whole
# number, so c=32 at RATE=1000 offers 992 req/s, in bursts of 32 (the
# connections' timers tick together); the offered rate is in the report;
# issue 12's "p99 at a fixed 1,000 req/s": RATE=1000 with the default c=1),
# OUT (results dir, default target/bench-proxy),
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
LOG_TAG=proxy.sh
# shellcheck source=benches/common/proxy_lib.sh
source "$REPO/benches/common/proxy_lib.sh"

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
# With RATE, one connection by default: h2load's per-connection --rps timers
# tick in step, so c connections send bursts of c requests every c/RATE s;
# one connection sends one request every 1/RATE s.
CONCURRENCY=${CONCURRENCY:-$([ -n "${RATE:-}" ] && echo 1 || echo "1 32")}
PROTOS=${PROTOS:-"h1 h2c"}
TARGETS=${TARGETS:-"direct meshward envoy"}
TARGETS_ARG=$TARGETS
ENVOY_CONCURRENCY=${ENVOY_CONCURRENCY:-1}
OUT=${OUT:-$REPO/target/bench-proxy}
ENVOY=$(find_envoy)
OPA_ENVOY=${MESHWARD_OPA_ENVOY:-$REPO/.tools/bin/opa-envoy-plugin}
RATE=${RATE:-}
READY_TIMEOUT=60

# --- tools -------------------------------------------------------------------
# shellcheck disable=SC2119
require_tools
if [[ " $TARGETS " == *" envoy "* || " $TARGETS " == *" envoy-opa "* ]]; then
    [ -x "${ENVOY:-}" ] || die "Envoy not found (${ENVOY:-none}): run scripts/install-python-peers.sh or set MESHWARD_ENVOY"
fi
if [[ " $TARGETS " == *" envoy-opa "* ]]; then
    [ -x "$OPA_ENVOY" ] || die "opa-envoy-plugin not found ($OPA_ENVOY): run scripts/install-opa-envoy.sh or set MESHWARD_OPA_ENVOY"
fi
if [ -n "$RATE" ]; then
    [[ "$RATE" =~ ^[1-9][0-9]*$ ]] || die "RATE must be a whole number of requests per second"
    for conc in $CONCURRENCY; do
        [ $(((RATE + conc / 2) / conc)) -ge 1 ] || die "RATE=$RATE is below one request per second per connection at concurrency $conc"
    done
fi

# A/B runs measure a binary built (and saved) earlier: MESHWARD_BIN.
MESHWARD=$(meshward_binary)

# --- a private mesh with high limits -------------------------------------------
bench_tmp mwb

bench_mesh "$TMP"
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

# wait_until (benches/common/proxy_lib.sh) gives up when a mesh exits.
MESH_PIDS=()

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
    WATCHED[$!]=$TMP/up$sfx.log
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
# start_envoy: benches/common/proxy_lib.sh.
if [[ " $TARGETS " == *" envoy "* ]]; then
    python3 benches/proxy/envoy_bootstrap.py inbound "$HS_SOCK" "$HS_ID" "$TD" "${BACKEND##*:}" >"$TMP/inbound.json"
    start_envoy inbound "$TMP/inbound.json" "$ENVOY_CONCURRENCY"
    ENVOY_IN=$ENVOY_PORT
    python3 benches/proxy/envoy_bootstrap.py outbound "$BB_SOCK" "$BB_ID" "$TD" hello-skill "$ENVOY_IN" "$HS_ID" >"$TMP/outbound.json"
    start_envoy outbound "$TMP/outbound.json" "$ENVOY_CONCURRENCY"
    ENVOY_OUT=127.0.0.1:$ENVOY_PORT
    wait_until "a request through Envoy" ok200 "http://$ENVOY_OUT/mcp://hello-skill/bench"
    log "envoy ready: outbound $ENVOY_OUT -> inbound 127.0.0.1:$ENVOY_IN -> $BACKEND"
fi

# --- Envoy + ext_authz + opa-envoy-plugin, the seed's stack -------------------------
# One plugin per Envoy (the sidecar layout), both on the bench's copy of the
# bundle without *_test.rego (Meshward does not load those either).
OPA_PIDS=()
if [[ " $TARGETS " == *" envoy-opa "* ]]; then
    mkdir -p "$TMP/opa-bundle"
    (cd "$TMP/policies" && find . -type f ! -name '*_test.rego' -exec cp --parents {} "$TMP/opa-bundle/" \;)
    opa_registry "$TMP/mesh.yaml" "$TMP/opa-registry.json"
    read -r OPA_IN_GRPC OPA_IN_HTTP OPA_OUT_GRPC OPA_OUT_HTTP < <(free_ports 4)
    start_opa opa-inbound "$OPA_IN_GRPC" "$OPA_IN_HTTP" "$TMP/opa-bundle" "$TMP/opa-registry.json"
    OPA_PIDS+=("$OPA_PID")
    start_opa opa-outbound "$OPA_OUT_GRPC" "$OPA_OUT_HTTP" "$TMP/opa-bundle" "$TMP/opa-registry.json"
    OPA_PIDS+=("$OPA_PID")
    python3 benches/proxy/envoy_bootstrap.py inbound "$HS_SOCK" "$HS_ID" "$TD" "${BACKEND##*:}" \
        --ext-authz "$OPA_IN_GRPC" hello-skill >"$TMP/opa-inbound-envoy.json"
    start_envoy opa-inbound-envoy "$TMP/opa-inbound-envoy.json" "$ENVOY_CONCURRENCY"
    OPA_ENVOY_IN=$ENVOY_PORT
    python3 benches/proxy/envoy_bootstrap.py outbound "$BB_SOCK" "$BB_ID" "$TD" hello-skill "$OPA_ENVOY_IN" "$HS_ID" \
        --ext-authz "$OPA_OUT_GRPC" >"$TMP/opa-outbound-envoy.json"
    start_envoy opa-outbound-envoy "$TMP/opa-outbound-envoy.json" "$ENVOY_CONCURRENCY"
    OPA_ENVOY_OUT=127.0.0.1:$ENVOY_PORT
    wait_until "a request through Envoy + OPA" ok200 "http://$OPA_ENVOY_OUT/mcp://hello-skill/bench"
    log "envoy-opa ready: outbound $OPA_ENVOY_OUT (OPA :$OPA_OUT_GRPC) -> inbound 127.0.0.1:$OPA_ENVOY_IN (OPA :$OPA_IN_GRPC) -> $BACKEND"
fi

# Every path must deliver the caller's verified identity (check_identity).
for t in "${!MESH_OUT[@]}"; do check_identity "$t" "http://${MESH_OUT[$t]}/mcp://hello-skill/bench"; done
[ -z "${ENVOY_OUT:-}" ] || check_identity envoy "http://$ENVOY_OUT/mcp://hello-skill/bench"
[ -z "${OPA_ENVOY_OUT:-}" ] || check_identity envoy-opa "http://$OPA_ENVOY_OUT/mcp://hello-skill/bench"

# The paths that enforce the policy must also refuse what it denies:
# billing-bot may invoke hello-skill (GET /bench: 200, checked above) but not
# write to it (DELETE is a write; billing-bot lacks data:write): 403.
check_denied() {
    local got
    got=$(http_code -X DELETE "$2")
    [ "$got" = 403 ] || die "$1: DELETE $2 (denied by the policy) answered $got, expected 403"
}
for t in "${!MESH_OUT[@]}"; do check_denied "$t" "http://${MESH_OUT[$t]}/mcp://hello-skill/bench"; done
[ -z "${OPA_ENVOY_OUT:-}" ] || check_denied envoy-opa "http://$OPA_ENVOY_OUT/mcp://hello-skill/bench"

url_for() {
    case $1 in
        direct) echo "http://$BACKEND/bench" ;;
        meshward*) echo "http://${MESH_OUT[$1]}/mcp://hello-skill/bench" ;;
        envoy) echo "http://$ENVOY_OUT/mcp://hello-skill/bench" ;;
        envoy-opa) echo "http://$OPA_ENVOY_OUT/mcp://hello-skill/bench" ;;
    esac
}

# CPU time (clock ticks, cpu_ticks in benches/common/proxy_lib.sh) of the
# server-side processes: meshward up (both dataplanes and the skill) and,
# when running, both Envoys of each Envoy pair and both opa-envoy-plugins.
# Every row sums the same processes (the idle ones too).
# With TRACING: every mesh, not the collector (counted on its own).
SERVER_PIDS=()
for pid in "${PIDS[@]}"; do [ "$pid" = "$JAEGER_PID" ] || SERVER_PIDS+=("$pid"); done
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
            # One request in flight per connection: `conc` connections;
            # with RATE, each connection sends RATE/conc requests a second.
            # (h2load's --rps is per connection and a whole number.)
            rps=() offered=
            if [ -n "$RATE" ]; then
                rps=(--rps=$(((RATE + conc / 2) / conc)))
                offered=$((((RATE + conc / 2) / conc) * conc))
            fi
            # shellcheck disable=SC2086
            h2load $flag -t 1 -c "$conc" -m 1 ${rps[@]+"${rps[@]}"} -D "$DURATION" --warm-up-time="$WARMUP" \
                --log-file="$OUT/$name.log" "$(url_for "$target")" >"$OUT/$name.out" 2>&1 ||
                die "h2load failed for $name: $(tail -5 "$OUT/$name.out")"
            after=$(cpu_ticks "${SERVER_PIDS[@]}")
            if [ -n "$JAEGER_PID" ]; then
                COLLECTOR_CPU_SECONDS=$(python3 -c "print(($(cpu_ticks "$JAEGER_PID") - $jbefore) / $HZ)")
                export COLLECTOR_CPU_SECONDS
            fi
            # Server CPU per request: ticks over warm-up + run, divided by the
            # requests of the run scaled to warm-up + run (same rate assumed).
            CPU_SECONDS=$(python3 -c "print(($after - $before) / $HZ)") \
                SPAN=$((DURATION + WARMUP)) REP=$rep FIXED_RATE=$offered python3 benches/proxy/summarize.py case "$target" "$proto" "$conc" \
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
    echo "Run: \`${TRACING:+TRACING=\"$TRACING\" REPEAT=$REPEAT }${RATE:+RATE=$RATE }TARGETS=\"$TARGETS_ARG\" PROTOS=\"$PROTOS\" DURATION=$DURATION WARMUP=$WARMUP CONCURRENCY=\"$CONCURRENCY\" ENVOY_CONCURRENCY=$ENVOY_CONCURRENCY bash benches/proxy.sh\`"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    dirty=$(git status --porcelain -- . ':!benches' 2>/dev/null | awk '{print $2}' | tr '\n' ' ')
    echo "- revision: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)${dirty:+ + uncommitted changes in: $dirty}; binary sha256 $(sha256sum "$MESHWARD" | cut -c1-12)"
    echo "- machine: $(machine_line)"
    echo "- load before: ${LOAD_BEFORE#*load average: }; after: ${LOAD_AFTER#*load average: } (1/5/15 min)"
    echo "- tools: $(h2load --version | head -1), Envoy $(envoy_version)${OPA_PIDS[0]:+, opa-envoy-plugin $("$OPA_ENVOY" version 2>/dev/null | sed -n 's/^Version: *//p' | head -1)}"
    if [ -n "$RATE" ]; then
        echo "- each case: fixed rate, h2load -t 1 -c <conc> -m 1 --rps=round($RATE/<conc>) (per connection; offered rates in the table's note), ${DURATION} s after ${WARMUP} s warm-up; h2load times each request from when it is sent, so a path that cannot keep up shows a lower req/s, not a queue in p99"
    else
        echo "- each case: h2load -t 1 -c <conc> -m 1, ${DURATION} s after ${WARMUP} s warm-up"
    fi
    echo "- mean from h2load, p50/p99 from its per-request log; server CPU = user+sys of \`meshward up\` (both dataplanes + the skill)${ENVOY_OUT:+, both Envoys}${OPA_ENVOY_OUT:+, the envoy-opa pair and both opa-envoy-plugins}, summed in every row, per request (the skill's own cost is in every row, see \`direct\`)"
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
