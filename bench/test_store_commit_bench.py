"""pytest wrapper of bench/store_commit_bench.py: one quick run (10,000
records, 2,048 puts a batch size), its figures in ``extra_info``.

    python -m pytest bench/test_store_commit_bench.py --benchmark-only -s
"""


def test_store_commit_bench_quick(benchmark):
    import store_commit_bench

    opts = store_commit_bench.parse_args(["--quick"])
    report = benchmark.pedantic(store_commit_bench.run_bench, args=(opts,), rounds=1, iterations=1)
    for batch, r in report["batches"].items():
        assert r["commits"] == opts.puts // int(batch), (batch, r)
        assert 0 < r["commit_median_ms"] <= r["commit_p99_ms"] <= r["commit_max_ms"], r
        assert r["puts_per_s"] > 0
        for k, v in r.items():
            benchmark.extra_info[f"{batch} per commit: {k}"] = v
