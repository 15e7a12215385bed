"""Checks of bench/client_bench.py that need no peer builds: its options
and the comparison it draws (the benchmark itself: ``python
bench/client_bench.py``, see docs/benchmarks.md)."""

import pytest


def test_options():
    import client_bench

    opts = client_bench.parse_args([])
    assert opts.clients == ["js", "go", "rust"] and opts.servers == ["kadfast", "rust", "go"]
    assert opts.cases == ["new/1", "new/16", "reused/1", "reused/16"] and opts.runs == 5
    assert client_bench.parse_args(["--servers", "all"]).servers == ["kadfast", "rust", "go", "js", "py"]
    for bad in (["--cases", "new/0"], ["--cases", "pipelined/4"], ["--clients", "py"], ["--servers", "kubo"]):
        with pytest.raises(SystemExit):
            client_bench.parse_args(bad)


def test_medians_and_verdicts():
    import client_bench

    def cell(rate, cpu, p50):
        return {"case": "new/16", "requests": 1, "errors": 0, "per_s": rate, "server_cpu_us": cpu,
                "p50_ms": p50, "p99_ms": p50 * 2}

    kf = client_bench.median_cells([cell(900, 100, 2.0), cell(1000, 90, 1.0), cell(1100, 80, 1.5)])
    assert (kf["per_s"], kf["server_cpu_us"], kf["p50_ms"], kf["runs"]) == (1000, 90, 1.5, 3)
    failed = client_bench.median_cells([{"case": "new/16", "error": "no request answered"}])
    assert failed["runs"] == 0 and failed["failed"] == "no request answered"
    rust = client_bench.median_cells([cell(800, 120, 1.0)])
    report = {"clients": {"go": {"servers": {"kadfast": {"cases": {"new/16": kf}},
                                             "rust": {"cases": {"new/16": rust}}}}}}
    row = client_bench.verdicts(report)["go client, new/16, kadfast vs rust"]
    assert row["cpu_ratio"] == 0.75 and row["rate_ratio"] == 1.25 and row["p50_ratio"] == 1.5
    assert row["met"] == {"cpu <= theirs": True, "req/s >= theirs": True, "p50 <= rust's": False}
