"""pytest wrapper of bench/findnode_bench.py: the kadfast server on uvloop,
one short run of the reused-stream cases with the load generator polling
and again sleeping, the figures in ``extra_info`` (the other
implementations' servers: ``python bench/findnode_bench.py --impls all``).

    python -m pytest bench/test_findnode_bench.py --benchmark-only -s
"""

import os

import pytest


@pytest.mark.parametrize("wait", ["poll", "sleep"])
def test_findnode_bench_quick(benchmark, wait):
    import findnode_bench

    opts = findnode_bench.parse_args(["--impls", "kadfast", "--loop", "uvloop", "--cases", "reused/1,reused/32",
                                      "--duration", "0.5", "--pin", "apart", "--client-wait", wait])
    before = os.sched_getaffinity(0)
    report = benchmark.pedantic(findnode_bench.run_bench, args=(opts,), rounds=1, iterations=1)
    assert os.sched_getaffinity(0) == before  # the pinning ends with the run
    assert report["config"]["client_wait"].startswith("the load generator " + ("polls" if wait == "poll" else "sleeps"))
    res = report["servers"]["kadfast/uvloop"]
    assert "error" not in res, res
    for case in ("reused/1", "reused/32"):
        cell = res["cases"][case]
        assert cell["per_s"] > 0 and cell["server_cpu_us"] > 0, cell
        benchmark.extra_info[f"{case} requests/s"] = cell["per_s"]
        benchmark.extra_info[f"{case} server us/request"] = cell["server_cpu_us"]


def test_polling_needs_a_core_of_its_own():
    import findnode_bench

    assert findnode_bench.parse_args(["--pin", "same"]).client_wait == "sleep"
    assert findnode_bench.parse_args(["--pin", "none"]).client_wait == "poll"
    with pytest.raises(SystemExit):
        findnode_bench.parse_args(["--pin", "same", "--client-wait", "poll"])
