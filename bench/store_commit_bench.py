#!/usr/bin/env python3
"""How long the sqlite store's commits hold the calling thread (in a node,
the event loop) under a steady stream of puts.

    python bench/store_commit_bench.py [--records N] [--puts N] [--batches 1,32] [--runs R] [--json] [--quick]

A ``SqliteStore`` with group commit (as ``kadfast server --store sqlite:``
runs it) in a temporary directory, pre-filled with ``--records`` records
(100,000; 128-byte values) in one transaction; then rounds of ``batch`` puts
that overwrite random stored keys followed by one ``commit()``, as KadNode
does for the requests that one read of the network carried. Per batch size:
puts per second and the distribution of ``commit()`` times (median, 99th
percentile, maximum), medians over ``--runs`` runs. A commit is one fsync of
the WAL (and, about every 4 MB of log, SQLite's automatic checkpoint, which
copies the log back into the database file inside that commit). The maximum
shows how long the loop can stall on one commit.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

from _common import percentile
from records_bench import RECORD_TTL as TTL  # the same records
from records_bench import record_key as key
from records_bench import sqlite_prefill

from kadfast import Ed25519KeyPair
from kadfast.sqlite_store import SqliteStore
from kadfast.store import Record, StoreConfig

VALUE_SIZE = 128


def one_run(records: int, puts: int, batch: int, seed: int) -> dict:
    rnd = random.Random(seed)
    peer = Ed25519KeyPair.generate().peer_id
    with tempfile.TemporaryDirectory() as d:
        store = SqliteStore(os.path.join(d, "store.db"), peer, StoreConfig(max_records=records + 1),
                            group_commit=True)
        try:
            now = time.monotonic()
            sqlite_prefill(store, records, VALUE_SIZE, [peer], now + TTL)
            commits = []
            t0 = time.perf_counter()
            for _ in range(puts // batch):
                for _ in range(batch):
                    store.put(Record(key(rnd.randrange(records)), os.urandom(VALUE_SIZE), publisher=peer,
                                     expires=now + TTL), now)
                t = time.perf_counter()
                store.commit()
                commits.append(time.perf_counter() - t)
            elapsed = time.perf_counter() - t0
            assert len(store) == records  # overwrites only
        finally:
            store.close()
    return {
        "puts_per_s": len(commits) * batch / elapsed,
        "commit_median_ms": statistics.median(commits) * 1e3,
        "commit_p99_ms": percentile(commits, 99) * 1e3,
        "commit_max_ms": max(commits) * 1e3,
        "commits": len(commits),
    }


def run_bench(opts) -> dict:
    out = {"records": opts.records, "puts": opts.puts, "runs": opts.runs, "batches": {}}
    for batch in opts.batches:
        runs = [one_run(opts.records, opts.puts, batch, seed) for seed in range(opts.runs)]
        out["batches"][str(batch)] = {
            k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]
        } | {"max_of_runs_ms": round(max(r["commit_max_ms"] for r in runs), 3)}
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--puts", type=int, default=64_000, help="puts per run and batch size")
    ap.add_argument("--batches", default="1,32", help="puts per commit, comma-separated")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true", help="10,000 records, 2,048 puts, one run")
    opts = ap.parse_args(argv)
    opts.batches = [int(b) for b in opts.batches.split(",") if b.strip()]
    if opts.quick:
        opts.records, opts.puts, opts.runs = 10_000, 2_048, 1
    if not opts.batches or min(opts.batches) < 1 or opts.puts < max(opts.batches) or opts.runs < 1:
        ap.error("need --batches >= 1, --puts >= the largest batch, --runs >= 1")
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    report = run_bench(opts)
    if opts.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"sqlite store, group commit, {opts.records:,} records, {opts.puts:,} puts per run, "
          f"medians of {opts.runs} run(s)")
    print("| puts per commit | puts/s | commit median | p99 | max | max of all runs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for batch, r in report["batches"].items():
        print(f"| {batch} | {r['puts_per_s']:,.0f} | {r['commit_median_ms']:.2f} ms | {r['commit_p99_ms']:.2f} ms "
              f"| {r['commit_max_ms']:.1f} ms | {r['max_of_runs_ms']:.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
