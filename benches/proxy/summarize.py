#!/usr/bin/env python3
"""Results of benches/proxy.sh: one JSON line per h2load run, and the report.

  summarize.py case <target> <proto> <concurrency> <h2load stdout> <h2load --log-file>
      prints one JSON object: rps, mean/p50/p99 latency (µs), request counts,
      and (from CPU_SECONDS, SPAN in the environment) server CPU per request;
      FIXED_RATE (req/s, proxy.sh's RATE) is recorded as the case's
      offered rate. Percentiles come from h2load's per-request log (h2load
      itself prints min/max/mean/sd only).
  summarize.py report <cases.jsonl>
      prints the markdown table, the ratios Meshward/Envoy, Meshward/direct
      and, when the run has envoy-opa rows, Meshward/envoy-opa (issue 12,
      target 2: req/s >= 3x, p99 <= 1/3).
  summarize.py tracing <cases.jsonl> <metrics dir>
      (TRACING runs) per case and tracing mode: medians over the repeats,
      ratios against tracing off, and each mode's span counters from the
      `<mode>.metrics` files (a dataplane's /metrics) in <metrics dir>.
"""

import json
import os
import re
import sys

UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def duration_us(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"not an h2load duration: {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    # Nearest rank.
    rank = max(1, int(round(p / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def case(target, proto, conc, out_path, log_path):
    out = open(out_path, encoding="utf-8", errors="replace").read()
    m = re.search(r"finished in ([0-9.]+)s, ([0-9.]+) req/s", out)
    if not m:
        raise SystemExit(f"{out_path}: no 'finished in' line; h2load said:\n{out}")
    rps = float(m.group(2))
    req = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout",
        out,
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    mean = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    lat = []
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            # start time (µs since epoch), status, duration (µs)
            if len(parts) == 3 and parts[1].isdigit() and 200 <= int(parts[1]) < 300:
                lat.append(float(parts[2]))
    lat.sort()
    result = {
        "target": target,
        "proto": proto,
        "concurrency": int(conc),
        "rps": rps,
        "mean_us": duration_us(mean.group(3)) if mean else float("nan"),
        "p50_us": percentile(lat, 50),
        "p99_us": percentile(lat, 99),
        "done": int(req.group(3)) if req else 0,
        "succeeded": int(req.group(4)) if req else 0,
        "failed": int(req.group(5)) + int(req.group(6)) + int(req.group(7)) if req else 0,
        "non_2xx": sum(int(codes.group(i)) for i in (2, 3, 4)) if codes else 0,
        "logged": len(lat),
    }
    # Server-side CPU (meshward up + Envoys), measured by proxy.sh over
    # warm-up + run (SPAN seconds); requests over the span estimated at `rps`.
    cpu = os.environ.get("CPU_SECONDS")
    span = os.environ.get("SPAN")
    if cpu and span and rps > 0:
        result["server_cpu_cores"] = float(cpu) / float(span)
        result["cpu_us_per_req"] = float(cpu) * 1e6 / (rps * float(span))
    collector = os.environ.get("COLLECTOR_CPU_SECONDS")
    if collector and span and rps > 0:
        result["collector_cpu_us_per_req"] = float(collector) * 1e6 / (rps * float(span))
    if span:
        result["span_s"] = float(span)
    if os.environ.get("FIXED_RATE"):
        result["offered_rps"] = int(os.environ["FIXED_RATE"])
    if os.environ.get("REP"):
        result["rep"] = int(os.environ["REP"])
    print(json.dumps(result))


def fmt_us(v):
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"


def report(path):
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    by = {(r["target"], r["proto"], r["concurrency"]): r for r in rows}
    offered = sorted({r["offered_rps"] for r in rows if r.get("offered_rps")})
    if offered:
        print(f"Fixed rate: {', '.join(map(str, offered))} req/s offered per case (req/s below is what was answered).")
        print()
    print("| path | proto | conc | req/s | mean | p50 | p99 | server CPU (cores) | server CPU / req | non-2xx / errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['target']} | {r['proto']} | {r['concurrency']} | {r['rps']:.0f} | "
            f"{fmt_us(r['mean_us'])} | {fmt_us(r['p50_us'])} | {fmt_us(r['p99_us'])} | "
            f"{r.get('server_cpu_cores', float('nan')):.2f} | {fmt_us(r.get('cpu_us_per_req', float('nan')))} | "
            f"{r['non_2xx']} / {r['failed']} |"
        )
    print()
    print("| proto | conc | req/s Meshward/Envoy | req/s Meshward/direct | p50 Meshward/Envoy | p99 Meshward/Envoy | CPU/req Meshward/Envoy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    keys = sorted({(r["proto"], r["concurrency"]) for r in rows}, key=lambda k: (k[0] != "h1", k[1]))

    def ratio(a, b, field):
        return f"{a[field] / b[field]:.2f}" if a and b and b.get(field) and a.get(field) else "n/a"

    for proto, conc in keys:
        mw = by.get(("meshward", proto, conc))
        ev = by.get(("envoy", proto, conc))
        di = by.get(("direct", proto, conc))
        if not mw:
            continue
        print(
            f"| {proto} | {conc} | {ratio(mw, ev, 'rps')} | {ratio(mw, di, 'rps')} | "
            f"{ratio(mw, ev, 'p50_us')} | {ratio(mw, ev, 'p99_us')} | {ratio(mw, ev, 'cpu_us_per_req')} |"
        )
    if not any(r["target"] == "envoy-opa" for r in rows):
        return
    print()
    print("Against the seed's stack (Envoy pair + ext_authz + opa-envoy-plugin on both hops); "
          "issue 12 target 2: req/s >= 3, p99 <= 0.33.")
    print()
    print("| proto | conc | req/s Meshward/envoy-opa | p50 Meshward/envoy-opa | p99 Meshward/envoy-opa | CPU/req Meshward/envoy-opa |")
    print("|---|---:|---:|---:|---:|---:|")
    for proto, conc in keys:
        mw = by.get(("meshward", proto, conc))
        eo = by.get(("envoy-opa", proto, conc))
        if not mw or not eo:
            continue
        print(
            f"| {proto} | {conc} | {ratio(mw, eo, 'rps')} | {ratio(mw, eo, 'p50_us')} | "
            f"{ratio(mw, eo, 'p99_us')} | {ratio(mw, eo, 'cpu_us_per_req')} |"
        )


def median(values):
    v = sorted(x for x in values if x == x)
    if not v:
        return float("nan")
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def span_counters(path):
    """meshward_trace_spans_{exported,dropped}_total from a /metrics text."""
    exported, dropped = 0.0, {}
    if not os.path.exists(path):
        return None
    for line in open(path, encoding="utf-8"):
        m = re.match(r"meshward_trace_spans_(exported|dropped)_total(\{[^}]*\})?\s+([0-9.e+]+)", line)
        if not m:
            continue
        if m.group(1) == "exported":
            exported += float(m.group(3))
        else:
            reason = re.search(r'reason="([^"]*)"', m.group(2) or "")
            key = reason.group(1) if reason else "?"
            dropped[key] = dropped.get(key, 0.0) + float(m.group(3))
    return exported, dropped


def mode_of(target):
    return "off" if target == "meshward" else target[len("meshward-t"):] + "%"


def tracing(path, metrics_dir):
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    rows = [r for r in rows if r["target"].startswith("meshward")]
    groups = {}
    for r in rows:
        groups.setdefault((r["proto"], r["concurrency"], r["target"]), []).append(r)
    reps = max(len(g) for g in groups.values())
    print(f"Medians over {reps} interleaved repeat(s); req/s range = min-max over the repeats.")
    print()
    print("| proto | conc | tracing | req/s | req/s range | p50 | p99 | server CPU / req | collector CPU / req | req/s vs off | p50 vs off | p99 vs off | CPU/req vs off |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    keys = sorted({(p, c) for p, c, _ in groups}, key=lambda k: (k[0] != "h1", k[1]))
    targets = []
    for r in rows:
        if r["target"] not in targets:
            targets.append(r["target"])
    for proto, conc in keys:
        med = {}
        for t in targets:
            g = groups.get((proto, conc, t))
            if not g:
                continue
            med[t] = {f: median([x.get(f, float("nan")) for x in g])
                      for f in ("rps", "p50_us", "p99_us", "cpu_us_per_req", "collector_cpu_us_per_req")}
            med[t]["lo"] = min(x["rps"] for x in g)
            med[t]["hi"] = max(x["rps"] for x in g)
        off = med.get("meshward")
        for t in targets:
            if t not in med:
                continue
            m = med[t]

            def ratio(f):
                return f"{m[f] / off[f]:.2f}" if off and off.get(f) else "n/a"

            coll = m["collector_cpu_us_per_req"]
            print(
                f"| {proto} | {conc} | {mode_of(t)} | {m['rps']:.0f} | {m['lo']:.0f}-{m['hi']:.0f} | "
                f"{fmt_us(m['p50_us'])} | {fmt_us(m['p99_us'])} | {fmt_us(m['cpu_us_per_req'])} | "
                f"{fmt_us(coll) if coll == coll else 'n/a'} | "
                f"{ratio('rps')} | {ratio('p50_us')} | {ratio('p99_us')} | {ratio('cpu_us_per_req')} |"
            )
    print()
    print("| tracing | requests (all cases and repeats, warm-up included at the measured rate) | spans exported | spans dropped | exported spans / request |")
    print("|---|---:|---:|---:|---:|")
    for t in targets:
        mode = mode_of(t).rstrip("%")
        c = span_counters(os.path.join(metrics_dir, f"{mode}.metrics"))
        done = round(sum(r["rps"] * r.get("span_s", 0) or r["done"] for r in rows if r["target"] == t))
        if c is None:
            print(f"| {mode_of(t)} | {done} | n/a | n/a | n/a |")
            continue
        exported, dropped = c
        d = ", ".join(f"{int(v)} {k}" for k, v in sorted(dropped.items())) or "0"
        print(f"| {mode_of(t)} | {done} | {int(exported)} | {d} | {exported / done:.3f} |" if done else f"| {mode_of(t)} | 0 | {int(exported)} | {d} | n/a |")


def main(argv):
    if len(argv) == 7 and argv[1] == "case":
        case(*argv[2:])
    elif len(argv) == 3 and argv[1] == "report":
        report(argv[2])
    elif len(argv) == 4 and argv[1] == "tracing":
        tracing(argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
