#!/usr/bin/env bash
# xDS at scale: Meshward's control plane against go-control-plane v0.14.0
# (benches/xds_scale/go-server, the peer) serving the same resources to the
# same simulated delta ADS clients, in one run. See benches/xds_scale.rs for
# what is measured; prints a Markdown table for benches/RESULTS.md.
#
# XDS_SCALE_CLIENTS (default 1000,10000), XDS_SCALE_SERVICES (default 50).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tools/bench
# Bench-only peer: built here, not by the test command.
(cd benches/xds_scale/go-server && go build -trimpath -o ../../../.tools/bench/xds-go-server .)
cargo build --quiet --release --bin meshward
# Each client is a TCP connection on each side of loopback.
ulimit -n "$(ulimit -Hn)"
echo "machine: $(nproc) vCPU, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB; $(date -u +%Y-%m-%dT%H:%MZ)"
MESHWARD_BIN=target/release/meshward XDS_GO_SERVER=.tools/bench/xds-go-server \
    cargo bench --quiet --bench xds_scale
