#!/usr/bin/env python3
# Splits each strong hop of a bench_migration_cost run into its steps, from the nodes' trace
# files kept with SOJOURN_BENCH_KEEP_TRACE=1 (the directory the bench prints), and, given the
# text of `perf script` over a `perf record -k CLOCK_MONOTONIC` of the same run, the CPU
# samples of every thread (both nodes, their guests) that fall in each step.
#
#   SOJOURN_BENCH_KEEP_TRACE=1 perf record -k CLOCK_MONOTONIC -F 999 -e cpu-clock -g -o run.data \
#       build/bin/bench_migration_cost 12 --sizes 64m --strong-only
#   perf script -i run.data -F comm,tid,time,ip,sym --no-inline > run.txt
#   bench/strong_hop_phases.py /tmp/sojourn-migration-cost.XXXXXX [run.txt]
#
# Steps (trace events, docs/experiments.md): stop = the go mark to span_received (the guest's
# collection and page-map scan); seal = span_received to span_sealed (pages read and
# compressed, the image hashed); pieces = serialize_start to image_sent (every agent.image_part
# answered); transfer = image_sent to the last restore_end (the TRANSFER, its checks, the
# COMMIT); opening = restore_end to pages_in (the image opened into the fresh guest's arena).
# The trace's mono_ns and perf's CLOCK_MONOTONIC are one clock. The first hop (the heap's fill
# is in it) is left out of the CPU figures.
import collections
import glob
import json
import re
import sys

STEPS = ["stop", "seal", "sealed->send", "pieces", "transfer", "opening", "end"]


def load_events(directory):
    events = []
    for path in glob.glob(directory + "/*.jsonl"):
        with open(path) as f:
            events.extend(json.loads(line) for line in f if line.strip())
    events.sort(key=lambda e: e["mono_ns"])
    return events


def hop_steps(events):
    gos = [e["mono_ns"] for e in events if e["kind"] == "mark_go"]
    arrived = [e["mono_ns"] for e in events if e["kind"] == "mark_arrived"]
    hops = []
    for go, end in zip(gos, arrived):
        inside = [e for e in events if go <= e["mono_ns"] <= end and e["node"] != "bench"]

        def first(kind, after=go):
            return next((e["mono_ns"] for e in inside if e["kind"] == kind and e["mono_ns"] >= after), None)

        def last(kind):
            found = [e["mono_ns"] for e in inside if e["kind"] == kind]
            return found[-1] if found else None

        restored = last("restore_end")
        marks = [go, first("span_received"), first("span_sealed"), first("serialize_start"), first("image_sent"),
                 restored, first("pages_in", restored or go), end]
        if marks[4] is None:  # the image rode in the TRANSFER: no pieces
            marks[4] = marks[3]
        pieces = sum(1 for e in inside if e["kind"] == "request" and e["detail"] == "agent.image_part")
        hops.append((marks, pieces))
    return hops


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: strong_hop_phases.py TRACE_DIR [PERF_SCRIPT_TEXT]")
    hops = hop_steps(load_events(sys.argv[1]))
    print("hop  total   " + "  ".join(f"{s:>12s}" for s in STEPS) + "  pieces")
    for i, (marks, pieces) in enumerate(hops):
        if None in marks:
            print(f"{i:3d}  (incomplete trace)")
            continue
        steps = [(b - a) / 1e6 for a, b in zip(marks, marks[1:])]
        print(f"{i:3d} {(marks[-1] - marks[0]) / 1e6:7.1f}   " + "  ".join(f"{v:12.1f}" for v in steps) + f"  {pieces:6d}")
    if len(sys.argv) < 3:
        return
    windows = []
    for marks, _ in hops[1:]:
        if None not in marks:
            windows.extend((name, a, b) for name, a, b in zip(STEPS, marks, marks[1:]))
    counted = len(windows) // len(STEPS)
    if counted == 0:
        return
    samples = collections.Counter()
    leaf = collections.defaultdict(collections.Counter)
    step = None
    want_leaf = False
    header = re.compile(r"\s*(\S.*?)\s+(\d+)\s+(\d+\.\d+):\s*$")
    with open(sys.argv[2]) as f:
        for line in f:
            m = header.match(line)
            if m:
                t = int(round(float(m.group(3)) * 1e9))
                step = next((name for name, a, b in windows if a <= t < b), None)
                if step:
                    samples[step] += 1
                want_leaf = True
                continue
            if step and want_leaf and line.strip():
                fields = line.split(None, 1)
                leaf[step][fields[1].strip() if len(fields) > 1 else "?"] += 1
                want_leaf = False
    print(f"\nCPU samples per step, per hop (hops 1-{counted}; one sample per ms of CPU at 999 Hz):")
    for name in STEPS:
        top = ", ".join(f"{s[:40]} {c / counted:.1f}" for s, c in leaf[name].most_common(6))
        print(f"{name:>12s} {samples[name] / counted:7.1f}   {top}")


if __name__ == "__main__":
    main()
