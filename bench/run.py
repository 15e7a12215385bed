#!/usr/bin/env python3
"""Hot-path benchmarks: compiled modules against their plain-Python twins,
measured in the same run.

    python bench/run.py --quick --json

prints one JSON object with, per workload, ``compiled_ns`` and ``python_ns``
(median time per operation) and ``speedup``, plus the issue's targets and
whether this run met them. ``--runs 5`` repeats the whole measurement and
reports the median of the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workloads import FLAT_KEYS, WORKLOADS


def time_per_op(fn, ops: int, budget_s: float, repeats: int) -> float:
    """Median over ``repeats`` samples of ns per operation; each sample loops
    ``fn`` for about ``budget_s / repeats`` seconds."""
    fn()  # warm up
    t0 = time.perf_counter_ns()
    fn()
    once = max(time.perf_counter_ns() - t0, 1)
    loops = max(1, int(budget_s / repeats * 1e9 / once))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter_ns() - t0) / (loops * ops))
    return statistics.median(samples)


def measure(quick: bool) -> dict:
    budget = 0.3 if quick else 2.0
    repeats = 5 if quick else 9
    out = {}
    for name, make in WORKLOADS.items():
        row = {}
        for impl in ("compiled", "python"):
            fn, ops = make(impl)
            row[f"{impl}_ns"] = round(time_per_op(fn, ops, budget, repeats), 2)
        row["speedup"] = round(row["python_ns"] / row["compiled_ns"], 1)
        out[name] = row
    out["closest_flat"]["compiled_ns_per_key"] = round(out["closest_flat"]["compiled_ns"] / FLAT_KEYS, 3)
    out["table_update"]["compiled_per_s"] = round(1e9 / out["table_update"]["compiled_ns"])
    return out


def targets(res: dict) -> dict:
    return {
        "closest_table_speedup_ge_20": res["closest_table"]["speedup"] >= 20,
        "closest_table_under_3us": res["closest_table"]["compiled_ns"] < 3000,
        "closest_flat_under_2ns_per_key": res["closest_flat"]["compiled_ns_per_key"] < 2.0,
        "table_update_ge_1M_per_s": res["table_update"]["compiled_per_s"] >= 1_000_000,
    }


def median_of(runs: list[dict]) -> dict:
    out = {}
    for name in runs[0]:
        out[name] = {f: statistics.median(r[name][f] for r in runs) for f in runs[0][name]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short timing budget (a few seconds in all)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--runs", type=int, default=1, help="repeat the measurement and report the median")
    args = ap.parse_args(argv)
    runs = [measure(args.quick) for _ in range(max(1, args.runs))]
    res = median_of(runs) if len(runs) > 1 else runs[0]
    res["targets"] = targets(res)
    res["runs"] = len(runs)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for name, row in res.items():
            if isinstance(row, dict) and "speedup" in row:
                print(f"{name:15s} compiled {row['compiled_ns']:>12.1f} ns  python {row['python_ns']:>14.1f} ns  x{row['speedup']}")
        for t, ok in res["targets"].items():
            print(f"{'met ' if ok else 'MISSED'} {t}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
