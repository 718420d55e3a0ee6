#!/usr/bin/env bash
# Policy evaluation: Meshward (regorus, clone of a prepared engine per request)
# against OPA (`opa bench`, the peer) on the same bundle and the same inputs,
# in one run. Prints ns/op for each and the ratio OPA / Meshward.
set -euo pipefail
cd "$(dirname "$0")/.."
OPA=${MESHWARD_OPA:-.tools/bin/opa}
[ -x "$OPA" ] || { echo "OPA not found at $OPA: run scripts/test.sh once (it installs OPA)" >&2; exit 1; }
ITER=${ITER:-20000}
INPUTS=target/bench-inputs
out=$(cargo bench --quiet --bench policy -- "$ITER" "$INPUTS")
echo "$out"
for case in allow deny; do
    ours=$(echo "$out" | awk -v c="meshward_eval/$case" '$1==c {print $2}')
    opa_ns=$("$OPA" bench --format json --count 1 --benchmem=false -b policies \
        --input "$INPUTS/$case.json" 'data.meshward.authz.decision' |
        python3 -c "import json,sys; r=json.load(sys.stdin); print(round(r[\"T\"] / r[\"N\"]))")
    echo "opa_bench/$case $opa_ns"
    python3 -c "print('ratio opa/meshward/$case %.2f' % ($opa_ns / $ours))"
done
