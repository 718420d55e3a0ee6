#!/usr/bin/env bash
# Footprint of one sidecar as its own process (issue 12, target 3: a Meshward
# dataplane at RSS <= 15 MB and CPU <= 0.06 cores at a steady 1,000 req/s;
# ztunnel publishes 12 MB / 0.06 vCPU there, an Envoy sidecar 60 MB / 0.20),
# with Envoy measured the same way beside it.
#
# Topology, every box its own process, loopback only:
#   h2load -> billing-bot outbound `meshward dataplane` -> mTLS h2 ->
#             hello-skill inbound `meshward dataplane` -> `meshward skill`
#   h2load -> Envoy outbound (plain listener) -> mTLS h2 -> Envoy inbound
#             (client certificate required) -> the same skill
# The dataplanes take their configuration from a `meshward controlplane`
# process whose mesh file (the benchmark copy of deploy/local/mesh.yaml, rate
# limits raised as in benches/proxy.sh, policy on) names the inbound
# dataplane's address as hello-skill's endpoint. Identities (SVIDs and the
# bundle, for the control plane, both dataplanes and both Envoys over SDS)
# come from a `meshward up` run as the dev identity server: it also runs its
# own demo mesh, idle and off the measured path. The Envoys are the
# benches/proxy.sh `envoy` pair (benches/proxy/envoy_bootstrap.py).
#
# Measured per process (each dataplane, each Envoy): RSS (VmRSS from
# /proc/PID/status, the highest of 1 s samples over the window), peak RSS
# since start (VmHWM at the end of the window), what the RSS is made of at
# the end of the window (RssAnon: the process's own memory; RssFile: mapped
# file pages, mostly the binary's code, shared and evictable), CPU cores (utime + stime
# from /proc/PID/stat over the window, divided by its length) and threads.
# States: idle (everything started and one request sent through each path,
# then IDLE seconds with no traffic), then for each protocol, each path in
# turn at a fixed RATE with h2load --rps on one connection (one request
# every 1/RATE s), LOAD seconds measured after WARMUP s; the other path's
# processes sit idle meanwhile.
#
# Knobs (environment): RATE (req/s, default 1000), IDLE (s, default 10),
# LOAD (s, default 15), WARMUP (s, default 2), PROTOS (default "h2c h1"),
# TARGETS (default "meshward envoy"), ENVOY_CONCURRENCY (workers per Envoy,
# default: the worker threads of the measured meshward dataplane's runtime,
# i.e. nproc), MESHWARD_BIN (default: build target/release/meshward),
# MESHWARD_ENVOY (Envoy binary), POLICY_DIR, OUT (default
# target/bench-footprint), KEEP=1 (leave the temp dir).
# Prints a markdown section (also $OUT/report.md) for benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
LOG_TAG=footprint.sh
# shellcheck source=benches/common/proxy_lib.sh
source "$REPO/benches/common/proxy_lib.sh"

RATE=${RATE:-1000}
IDLE=${IDLE:-10}
LOAD=${LOAD:-15}
WARMUP=${WARMUP:-2}
PROTOS=${PROTOS:-"h2c h1"}
TARGETS=${TARGETS:-"meshward envoy"}
ENVOY_CONCURRENCY=${ENVOY_CONCURRENCY:-$(nproc)}
OUT=${OUT:-$REPO/target/bench-footprint}
ENVOY=$(find_envoy)
READY_TIMEOUT=60

require_tools
if [[ " $TARGETS " == *" envoy "* ]]; then
    [ -x "${ENVOY:-}" ] || die "Envoy not found (${ENVOY:-none}): run scripts/install-python-peers.sh or set MESHWARD_ENVOY"
fi
MESHWARD=$(meshward_binary)

bench_tmp mwf

# Starts "$@" in the background with log $TMP/$name.log (name = $1); the rest
# of the arguments are the command, run under `env` (so VAR=value may lead).
# Sets LAST_PID.
spawn() {
    local name=$1
    shift
    env "$@" </dev/null >/dev/null 2>"$TMP/$name.log" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    WATCHED[$LAST_PID]=$TMP/$name.log
}

# --- the identity provider (meshward up) -------------------------------------------
bench_mesh "$TMP"
"$MESHWARD" validate "$TMP/mesh.yaml" >&2 || die "the benchmark mesh config does not validate"
log "starting meshward up (dev identity server)"
spawn up RUST_LOG=warn "$MESHWARD" up --config "$TMP/mesh.yaml" --state-dir "$TMP/state" --no-ext-authz --no-rate-limit
UP=$TMP/state/up.json
wait_until "up.json" test -s "$UP"
TD=$(jq -r .trust_domain "$UP")
CP_ID=spiffe://$TD/meshward/controlplane
BB_ID=$(jq -r '.agents[] | select(.name=="billing-bot") | .spiffe_id' "$UP")
HS_ID=$(jq -r '.services[] | select(.name=="hello-skill") | .spiffe_id' "$UP")
sock() { jq -r --arg id "$1" '.identity.sockets[$id] // empty' "$UP"; }
CP_SOCK=$(sock "$CP_ID")
BB_SOCK=$(sock "$BB_ID")
HS_SOCK=$(sock "$HS_ID")
if [ -z "$CP_SOCK" ] || [ -z "$BB_SOCK" ] || [ -z "$HS_SOCK" ]; then
    die "up.json lacks an identity socket for $CP_ID, $BB_ID or $HS_ID"
fi

# --- the skill, the control plane, the two dataplanes --------------------------------
read -r SKILL XDS CP_ADMIN INB IN_ADMIN OUTB OUT_ADMIN < <(free_ports 7)
spawn skill RUST_LOG=warn "$MESHWARD" skill --name hello-skill --listen "127.0.0.1:$SKILL"
wait_until "the skill" ok200 "http://127.0.0.1:$SKILL/bench"

# The control plane's mesh: hello-skill's endpoint is the inbound dataplane
# started below, its backend the skill above.
python3 - "$TMP/mesh.yaml" "$TMP/mesh-cp.yaml" "127.0.0.1:$INB" "127.0.0.1:$SKILL" <<'PY'
import sys, yaml
src, dst, endpoint, backend = sys.argv[1:]
mesh = yaml.safe_load(open(src))
for svc in mesh["services"]:
    if svc["name"] == "hello-skill":
        svc["endpoints"] = [endpoint]
        svc["backend"] = backend
yaml.safe_dump(mesh, open(dst, "w"), sort_keys=False)
PY
"$MESHWARD" validate "$TMP/mesh-cp.yaml" >&2 || die "the control plane's mesh file does not validate"

spawn controlplane RUST_LOG=warn SPIFFE_ENDPOINT_SOCKET="unix:$CP_SOCK" \
    "$MESHWARD" controlplane --config "$TMP/mesh-cp.yaml" --xds "127.0.0.1:$XDS" --admin "127.0.0.1:$CP_ADMIN"
wait_until "the control plane's /ready" ok200 "http://127.0.0.1:$CP_ADMIN/ready"

declare -A PID_OF
if [[ " $TARGETS " == *" meshward "* ]]; then
    spawn dp-inbound RUST_LOG=warn SPIFFE_ENDPOINT_SOCKET="unix:$HS_SOCK" \
        "$MESHWARD" dataplane --name hello-skill-inbound --xds "127.0.0.1:$XDS" --xds-spiffe-id "$CP_ID" \
        --inbound "127.0.0.1:$INB" --local-upstream "127.0.0.1:$SKILL" --admin "127.0.0.1:$IN_ADMIN"
    PID_OF[meshward-inbound]=$LAST_PID
    spawn dp-outbound RUST_LOG=warn SPIFFE_ENDPOINT_SOCKET="unix:$BB_SOCK" \
        "$MESHWARD" dataplane --name billing-bot --xds "127.0.0.1:$XDS" --xds-spiffe-id "$CP_ID" \
        --outbound "127.0.0.1:$OUTB" --admin "127.0.0.1:$OUT_ADMIN"
    PID_OF[meshward-outbound]=$LAST_PID
    wait_until "the inbound dataplane's /ready" ok200 "http://127.0.0.1:$IN_ADMIN/ready"
    wait_until "the outbound dataplane's /ready" ok200 "http://127.0.0.1:$OUT_ADMIN/ready"
    wait_until "a request through the dataplanes" ok200 "http://127.0.0.1:$OUTB/mcp://hello-skill/bench"
    # The request went through our inbound dataplane (not up's): it counted it.
    curl -s --max-time 5 "http://127.0.0.1:$IN_ADMIN/metrics" | grep -q '^meshward_requests_total{.*direction="inbound"' ||
        die "the inbound dataplane counted no request: is hello-skill's endpoint 127.0.0.1:$INB?"
    log "meshward ready: outbound 127.0.0.1:$OUTB -> inbound 127.0.0.1:$INB -> skill 127.0.0.1:$SKILL"
fi

if [[ " $TARGETS " == *" envoy "* ]]; then
    python3 benches/proxy/envoy_bootstrap.py inbound "$HS_SOCK" "$HS_ID" "$TD" "$SKILL" >"$TMP/inbound.json"
    start_envoy envoy-inbound "$TMP/inbound.json" "$ENVOY_CONCURRENCY"
    PID_OF[envoy-inbound]=$ENVOY_PID
    ENVOY_IN=$ENVOY_PORT
    python3 benches/proxy/envoy_bootstrap.py outbound "$BB_SOCK" "$BB_ID" "$TD" hello-skill "$ENVOY_IN" "$HS_ID" >"$TMP/outbound.json"
    start_envoy envoy-outbound "$TMP/outbound.json" "$ENVOY_CONCURRENCY"
    PID_OF[envoy-outbound]=$ENVOY_PID
    ENVOY_OUT=127.0.0.1:$ENVOY_PORT
    wait_until "a request through Envoy" ok200 "http://$ENVOY_OUT/mcp://hello-skill/bench"
    log "envoy ready: outbound $ENVOY_OUT -> inbound 127.0.0.1:$ENVOY_IN -> skill 127.0.0.1:$SKILL"
fi

# Every path must deliver the caller's verified identity (check_identity).
url_for() {
    case $1 in
        meshward) echo "http://127.0.0.1:$OUTB/mcp://hello-skill/bench" ;;
        envoy) echo "http://$ENVOY_OUT/mcp://hello-skill/bench" ;;
    esac
}
for t in $TARGETS; do check_identity "$t" "$(url_for "$t")"; done

# --- measurement ------------------------------------------------------------------------
HZ=$(getconf CLK_TCK)
mkdir -p "$OUT"
ROWS=$OUT/rows.tsv
: >"$ROWS"
# Processes in table order.
PROCS=()
for t in $TARGETS; do PROCS+=("$t-outbound" "$t-inbound"); done

# Measures processes "${@:3}" (names in PID_OF) for $2 seconds, state $1:
# appends "name state rss_max_kib hwm_kib cpu_cores threads anon_kib file_kib"
# rows to $ROWS.
# RSS is sampled once a second (the window's timing, not a readiness wait).
measure() {
    local state=$1 secs=$2 name i
    shift 2
    declare -A before rss
    for name in "$@"; do
        before[$name]=$(cpu_ticks "${PID_OF[$name]}")
        rss[$name]=$(rss_kib "${PID_OF[$name]}")
    done
    local start=$EPOCHREALTIME
    for ((i = 0; i < secs; i++)); do
        sleep 1
        for name in "$@"; do
            local now
            now=$(rss_kib "${PID_OF[$name]}")
            [ "$now" -le "${rss[$name]}" ] || rss[$name]=$now
        done
    done
    local elapsed
    elapsed=$(python3 -c "print($EPOCHREALTIME - $start)")
    for name in "$@"; do
        local pid=${PID_OF[$name]}
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$state" "${rss[$name]}" "$(hwm_kib "$pid")" \
            "$(python3 -c "print(($(cpu_ticks "$pid") - ${before[$name]}) / $HZ / $elapsed)")" \
            "$(awk '/^Threads:/ {print $2}' "/proc/$pid/status")" \
            "$(anon_kib "$pid")" "$(file_kib "$pid")" >>"$ROWS"
    done
}

LOAD_BEFORE=$(uptime)
log "idle: $IDLE s"
measure idle "$IDLE" "${PROCS[@]}"
for proto in $PROTOS; do
    case $proto in
        h1) flag=(--h1) ;;
        h2c) flag=() ;; # h2load's default for http:// URIs: h2c with prior knowledge
        *) die "unknown protocol $proto" ;;
    esac
    for t in $TARGETS; do
        name=$t-$proto-r$RATE
        log "$name: ${WARMUP} s warm-up + $LOAD s at $RATE req/s"
        # One connection, one request in flight, a request every 1/RATE s;
        # h2load runs WARMUP + LOAD s, the window is its last LOAD s
        # (plus h2load's own reporting, well under a second).
        h2load ${flag[@]+"${flag[@]}"} -t 1 -c 1 -m 1 --rps="$RATE" -D "$((WARMUP + LOAD + 1))" \
            --log-file="$OUT/$name.log" "$(url_for "$t")" >"$OUT/$name.out" 2>&1 &
        h2pid=$!
        sleep "$WARMUP"
        measure "$proto $RATE req/s" "$LOAD" "$t-outbound" "$t-inbound"
        wait "$h2pid" || die "h2load failed for $name: $(tail -5 "$OUT/$name.out")"
        python3 benches/proxy/summarize.py case "$t" "$proto" 1 "$OUT/$name.out" "$OUT/$name.log" >>"$OUT/cases.jsonl"
    done
done
LOAD_AFTER=$(uptime)

# --- report -----------------------------------------------------------------------------
{
    echo "Run: \`RATE=$RATE IDLE=$IDLE LOAD=$LOAD WARMUP=$WARMUP PROTOS=\"$PROTOS\" TARGETS=\"$TARGETS\" ENVOY_CONCURRENCY=$ENVOY_CONCURRENCY bash benches/footprint.sh\`"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    dirty=$(git status --porcelain -- . ':!benches' 2>/dev/null | awk '{print $2}' | tr '\n' ' ')
    echo "- revision: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)${dirty:+ + uncommitted changes in: $dirty}; binary sha256 $(sha256sum "$MESHWARD" | cut -c1-12)"
    echo "- machine: $(machine_line)"
    echo "- load before: ${LOAD_BEFORE#*load average: }; after: ${LOAD_AFTER#*load average: } (1/5/15 min)"
    echo "- tools: $(h2load --version | head -1)${ENVOY:+, Envoy $(envoy_version) (--concurrency $ENVOY_CONCURRENCY)}"
    echo "- each process on its own: the dataplanes are \`meshward dataplane\` processes fed by a \`meshward controlplane\` process; load: h2load -c 1 -m 1 --rps=$RATE, $LOAD s measured after $WARMUP s; RSS = highest VmRSS of 1 s samples in the window, peak = VmHWM since start, own/file pages = RssAnon/RssFile at the end of the window; CPU = utime+stime over the window"
    echo
    python3 - "$ROWS" "$OUT/cases.jsonl" <<'PY'
import json, os, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
cases = {}
if os.path.exists(sys.argv[2]):
    for l in open(sys.argv[2]):
        c = json.loads(l)
        cases[(c["target"], c["proto"])] = c
print("| process | state | RSS (MiB) | peak RSS (MiB) | own (RssAnon, MiB) | file pages (RssFile, MiB) | CPU (cores) | threads | answered req/s | p50 / p99 |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, state, rss, hwm, cpu, threads, anon, file in rows:
    target = name.rsplit("-", 1)[0]
    c = cases.get((target, state.split()[0])) if state != "idle" else None
    load = f"{c['rps']:.0f} | {c['p50_us']:.0f} / {c['p99_us']:.0f} µs" if c else "- | -"
    print(f"| {name} | {state} | {int(rss) / 1024:.1f} | {int(hwm) / 1024:.1f} | {int(anon) / 1024:.1f} | {int(file) / 1024:.1f} | {float(cpu):.3f} | {threads} | {load} |")
PY
    echo
    echo "Issue 12, target 3: a Meshward dataplane at RSS <= 15 MB and CPU <= 0.06 cores at 1,000 req/s."
} | tee "$OUT/report.md"
