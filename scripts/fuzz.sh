#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/, each for a bounded time, and turns
# what they find into regression inputs.
#
#   bash scripts/fuzz.sh [--smoke] [SECONDS_PER_TARGET] [TARGET...]
#
#   SECONDS_PER_TARGET  default 60; --smoke (or FUZZ_SMOKE=1) makes it 5, for CI
#   TARGET              default: all of canonical_path mesh_yaml xds_resources
#                       policy_input hpack_relay mcp_inspect
#
# Needs nightly Rust (`cargo +nightly`). Installs cargo-fuzz into .tools/ when
# it is missing. Each target reads its committed seeds (fuzz/seeds/<target>/,
# read-only) and grows its working corpus in fuzz/corpus/<target>/ (ignored by
# git). When a target crashes, times out (FUZZ_TIMEOUT seconds for one input,
# default 30) or runs out of memory (2 GiB), the input libFuzzer saved is
# copied to fuzz/regressions/<target>/, where `cargo test --test
# fuzz_regressions` replays it on stable, and the script exits non-zero naming
# it. libFuzzer's output goes to fuzz/artifacts/<target>.log; one summary line
# per target goes to stdout.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

ALL_TARGETS=(canonical_path mesh_yaml xds_resources policy_input hpack_relay mcp_inspect)
SECONDS_PER_TARGET=60
SMOKE=${FUZZ_SMOKE:-0}
TIMEOUT=${FUZZ_TIMEOUT:-30}
TARGETS=()

log() { printf '%s\n' "$*" >&2; }
die() {
    log "fuzz.sh: $*"
    exit 2
}

seconds_set=0
for arg in "$@"; do
    case $arg in
    --smoke) SMOKE=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    -*) die "unknown option $arg" ;;
    *)
        if [[ $seconds_set == 0 && $arg =~ ^[0-9]+$ ]]; then
            SECONDS_PER_TARGET=$arg
            seconds_set=1
        elif [[ " ${ALL_TARGETS[*]} " == *" $arg "* ]]; then
            TARGETS+=("$arg")
        else
            die "unknown target $arg (targets: ${ALL_TARGETS[*]})"
        fi
        ;;
    esac
done
if [[ $SMOKE == 1 ]]; then
    SECONDS_PER_TARGET=5
fi
if [[ ${#TARGETS[@]} == 0 ]]; then
    TARGETS=("${ALL_TARGETS[@]}")
fi
[[ $SECONDS_PER_TARGET -gt 0 ]] || die "SECONDS_PER_TARGET must be positive"

export PATH="$ROOT/.tools/bin:$PATH"
if [[ ! -x .tools/bin/cargo-fuzz ]]; then
    log "installing cargo-fuzz into .tools/"
    cargo +nightly install cargo-fuzz --locked --root .tools
fi

# Built before the clock starts; `cargo fuzz run` then finds them up to date.
log "building fuzz targets"
if [[ ${#TARGETS[@]} == "${#ALL_TARGETS[@]}" ]]; then
    cargo +nightly fuzz build >&2
else
    for target in "${TARGETS[@]}"; do
        cargo +nightly fuzz build "$target" >&2
    done
fi

failed=()
for target in "${TARGETS[@]}"; do
    corpus=fuzz/corpus/$target
    seeds=fuzz/seeds/$target
    artifacts=fuzz/artifacts/$target
    logfile=fuzz/artifacts/$target.log
    mkdir -p "$corpus" "$artifacts"
    [[ -d $seeds ]] || die "no seed directory $seeds"

    status=0
    cargo +nightly fuzz run "$target" "$corpus" "$seeds" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 \
        -timeout="$TIMEOUT" -print_final_stats=1 >"$logfile" 2>&1 || status=$?

    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logfile" | tail -1 | grep -o '[0-9]*$' || true)
    if [[ -z $runs ]]; then
        runs=$(grep -o '^#[0-9]*' "$logfile" | tail -1 | tr -d '#' || true)
    fi
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$logfile" | tail -1 || true)
    cov=$(grep -o 'cov: [0-9]*' <<<"$done_line" | grep -o '[0-9]*' || true)
    corp=$(grep -o 'corp: [0-9]*' <<<"$done_line" | grep -o '[0-9]*' || true)

    # libFuzzer names the input it saved for a crash, timeout, OOM or leak
    # (crash-<sha1>, ...); read it from the log rather than the directory, so
    # finding the same input again is reported again.
    new=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$logfile" |
        grep -E '/(crash|oom|timeout|leak)-[^/]*$' | sort -u || true)
    if [[ -n $new ]]; then
        mkdir -p "fuzz/regressions/$target"
        while IFS= read -r artifact; do
            name=$(basename "$artifact")
            cp "$artifact" "fuzz/regressions/$target/$name"
            failed+=("fuzz/regressions/$target/$name")
            printf '%s: FOUND %s after %s runs; saved as fuzz/regressions/%s/%s (log: %s)\n' \
                "$target" "${name%%-*}" "${runs:-?}" "$target" "$name" "$logfile"
        done <<<"$new"
        grep -E -A1 'panicked at' "$logfile" | head -4 >&2 || true
    elif [[ $status != 0 ]]; then
        failed+=("$target (exit $status, no artifact)")
        printf '%s: FAILED with exit %s and no artifact (log: %s)\n' "$target" "$status" "$logfile"
        tail -20 "$logfile" >&2
    else
        printf '%s: ok, %s runs in %s s, cov %s, corpus %s\n' \
            "$target" "${runs:-?}" "$SECONDS_PER_TARGET" "${cov:-?}" "${corp:-?}"
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    log "fuzz.sh: ${#failed[@]} finding(s):"
    printf '  %s\n' "${failed[@]}" >&2
    log "replay with: cargo test --test fuzz_regressions"
    exit 1
fi
