#!/usr/bin/env bash
# ext_authz v3 Check under load: a no-op tonic server (the floor), Meshward's
# authorizer (`meshward dataplane --ext-authz`, fed by `meshward
# controlplane`) and opa-envoy-plugin v1.15.2-envoy (the peer), each its own
# process, on the same requests from the same load generator in one run.
# See benches/ext_authz.rs for what is measured; prints Markdown tables for
# benches/RESULTS.md.
#
# EXT_AUTHZ_BENCH_SECONDS (default 5), EXT_AUTHZ_BENCH_WARMUP (default 1),
# EXT_AUTHZ_BENCH_SERVERS (default floor,meshward,opa),
# EXT_AUTHZ_BENCH_CONCURRENCY (default 1,32), EXT_AUTHZ_BENCH_RATES
# (default 1000,5000), EXT_AUTHZ_BENCH_CONNECTIONS (default 4),
# EXT_AUTHZ_BENCH_DENY_PERCENT (default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release --bin meshward
# The peer; does nothing when the pinned version is already installed.
bash scripts/install-opa-envoy.sh
echo "machine: $(nproc) vCPU, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB; $(date -u +%Y-%m-%dT%H:%MZ); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "opa-envoy-plugin: $(.tools/bin/opa-envoy-plugin version | awk -F': ' '/^Version/ {print $2}')"
MESHWARD_BIN=target/release/meshward MESHWARD_OPA_ENVOY=.tools/bin/opa-envoy-plugin \
    cargo bench --quiet --bench ext_authz
