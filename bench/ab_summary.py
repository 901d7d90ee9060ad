#!/usr/bin/env python3
# bench/run_ab.sh's table: per side (a, b) and row, the median over rounds of the sojourn median,
# its p99, and the ratio to Redis measured in the same round (median and range).
import csv, glob, statistics, sys
for out in sys.argv[1:]:
    rows = {}
    for side in ("a", "b"):
        for f in sorted(glob.glob(f"{out}/{side}_*.csv")):
            for r in csv.DictReader(open(f)):
                d = rows.setdefault((r["id"], side), {"s": [], "p99": [], "ratio": []})
                s, p = float(r["sojourn"]), float(r["redis"])
                d["s"].append(s)
                if r["sojourn_p99"]: d["p99"].append(float(r["sojourn_p99"]))
                d["ratio"].append(s / p if p else float("nan"))
    print(f"# {out} (A = side a, B = side b)")
    print("| id | A median | A p99 | A ratio (med, range) | B median | B p99 | B ratio (med, range) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    ids = sorted({k[0] for k in rows})
    for i in ids:
        cells = []
        for side in ("a", "b"):
            d = rows.get((i, side))
            if not d: cells += ["", "", ""]; continue
            med = statistics.median(d["s"]); p99 = statistics.median(d["p99"]) if d["p99"] else float("nan")
            rs = d["ratio"]
            cells += [f"{med:.1f}", "" if p99 != p99 else f"{p99:.1f}",
                      f"{statistics.median(rs):.3f} ({min(rs):.3f}-{max(rs):.3f})"]
        print(f"| `{i}` | " + " | ".join(cells) + " |")
