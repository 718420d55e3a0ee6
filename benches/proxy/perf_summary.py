#!/usr/bin/env python3
"""Groups a `perf record` of the meshward process (benches/proxy.sh PERF=1) by cost.

Usage: perf_summary.py <perf.data>
Prints self time per category (policy engine, allocator, TLS crypto, HTTP
codecs, runtime, kernel/network, ...), the top symbols, and the inclusive
time (callees included, from DWARF call graphs) of the request path's stages.
"""

import re
import subprocess
import sys
from collections import defaultdict

CATEGORIES = [
    ("policy: regorus (Rego VM, values)", re.compile(r"regorus")),
    ("policy: input building / serde_json", re.compile(r"serde_json|meshward_dataplane::policy")),
    ("allocator (malloc/free)", re.compile(r"malloc|_int_free|cfree|unlink_chunk|realloc|tcache|consolidate")),
    ("TLS (rustls, ring, aws-lc)", re.compile(r"rustls|ring::|aws_lc|ring_core|_gcm|aes|sha2|chacha")),
    ("HTTP codecs (hyper, h2, http)", re.compile(r"hyper|\bh2::|http::|httparse|hpack")),
    ("metrics / tracing", re.compile(r"metrics|tracing")),
    ("async runtime (tokio)", re.compile(r"tokio")),
    ("kernel (syscalls, TCP, scheduling)", re.compile(r"\[k\]")),
    ("libc memcpy/memcmp", re.compile(r"mem(move|cpy|cmp|set)")),
    ("btree / collections", re.compile(r"btree|BTreeMap|hashbrown|HashMap")),
    ("meshward pipeline (other)", re.compile(r"meshward")),
]


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = subprocess.run(
        ["perf", "report", "-i", argv[1], "--no-children", "--sort", "symbol", "--stdio", "-g", "none"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([0-9.]+)%\s+(\[[.k]\])\s+(.*\S)", line)
        if m:
            rows.append((float(m.group(1)), f"{m.group(2)} {m.group(3)}"))
    totals = defaultdict(float)
    for pct, sym in rows:
        for name, rx in CATEGORIES:
            if rx.search(sym):
                totals[name] += pct
                break
        else:
            totals["other"] += pct
    print("| category (self time) | % of meshward process samples |")
    print("|---|---:|")
    for name, pct in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {pct:.1f} |")
    print()
    print("Top symbols (self):")
    for pct, sym in rows[:15]:
        print(f"  {pct:5.2f}%  {sym[:140]}")
    children = subprocess.run(
        ["perf", "report", "-i", argv[1], "--children", "--sort", "symbol", "--stdio", "-g", "none"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    print()
    print("Inclusive (callees included):")
    wanted = re.compile(
        r"policy::engine::CompiledPolicy::evaluate|policy::input::build_input|pipeline::handle\b|"
        r"rustls::|hyper::proto::h1::|h2::codec|demo::answer_http|ratelimit|breaker|metrics::"
    )
    seen = 0
    for line in children.splitlines():
        m = re.match(r"\s*([0-9.]+)%\s+([0-9.]+)%\s+\[[.k]\]\s+(.*\S)", line)
        if m and wanted.search(m.group(3)) and seen < 25:
            print(f"  {float(m.group(1)):5.1f}% incl  {float(m.group(2)):5.1f}% self  {m.group(3)[:120]}")
            seen += 1
    by_stage(argv[1])
    return 0


# Stage of a sample: the first rule (in this order) matching any frame of its
# call stack. The skill is the demo backend: the same work on every path.
STAGES = [
    ("demo skill (backend, same on every path)", re.compile(r"meshward::demo::")),
    ("policy: evaluate (regorus VM)", re.compile(r"policy::engine::CompiledPolicy::evaluate")),
    ("policy: build input", re.compile(r"policy::input::build_input")),
    ("rate limit / breaker", re.compile(r"meshward_dataplane::(ratelimit|breaker)")),
    ("metrics / tracing", re.compile(r"\bmetrics|tracing")),
    ("TLS (rustls)", re.compile(r"rustls")),
    ("h2 codec (mesh hop, h2c clients)", re.compile(r"\bh2::")),
    ("h1 codec (clients, inbound -> skill)", re.compile(r"hyper::proto::h1")),
    ("pipeline (routing, headers, forwarding)", re.compile(r"meshward_dataplane::")),
    ("tokio runtime / other user", re.compile(r"tokio::|^(?!\s*ffffffff)")),
]
ALLOC = re.compile(r"malloc|_int_free|cfree|unlink_chunk|realloc|consolidate|drop_in_place")


def by_stage(data):
    script = subprocess.run(
        ["perf", "script", "-i", data, "-F", "tid,ip,sym", "--no-inline"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stages = defaultdict(int)
    alloc = defaultdict(int)
    total = 0
    for block in script.split("\n\n"):
        frames = [ln.strip().split(" ", 1)[-1] for ln in block.splitlines()[1:] if ln.strip()]
        if not frames:
            continue
        total += 1
        stage = "kernel / unattributed"
        for name, rx in STAGES:
            if any(rx.search(f) for f in frames):
                stage = name
                break
        stages[stage] += 1
        if ALLOC.search(frames[0]):
            alloc[stage] += 1
    if not total:
        return
    print()
    print("| stage (inclusive, by call stack) | % of samples | of which allocator/free at the leaf |")
    print("|---|---:|---:|")
    for name, n in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {100 * n / total:.1f} | {100 * alloc[name] / total:.1f} |")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
