"""pytest wrapper of bench/workers_bench.py: one short run with 1 and 2
workers (FIND_NODE only; the churn phase needs the go dialer), the figures in
``extra_info``.

    python -m pytest bench/test_workers_bench.py --benchmark-only -s
"""


def test_workers_bench_quick(benchmark):
    import workers_bench

    opts = workers_bench.parse_args(["--quick", "--no-churn", "--duration", "0.5"])
    report = benchmark.pedantic(workers_bench.run_bench, args=(opts,), rounds=1, iterations=1)
    for n in ("1", "2"):
        row = report["servers"][n]["findnode"]
        assert row["per_s"] > 0 and row["server_cpu_us"] > 0, row
        benchmark.extra_info[f"{n} worker(s) FIND_NODE/s"] = row["per_s"]
        benchmark.extra_info[f"{n} worker(s) server us/request"] = row["server_cpu_us"]
    assert report["ratio"]["findnode_cpu_per_request"] > 0
