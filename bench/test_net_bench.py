"""pytest wrapper of bench/net_bench.py (loopback network benchmark against
kadfast, py-libp2p and js-libp2p servers). Skipped unless KADFAST_NET_BENCH=1:

    KADFAST_NET_BENCH=1 python -m pytest bench/test_net_bench.py --benchmark-only -s

One quick run; the measured numbers go into ``extra_info``.
"""

import os

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("KADFAST_NET_BENCH") != "1", reason="set KADFAST_NET_BENCH=1 to run the network benchmark"
)


def test_net_bench_quick(benchmark):
    import net_bench

    opts = net_bench.parse_args(["--quick", "--peers", os.environ.get("KADFAST_NET_BENCH_PEERS", "py,js")])
    report = benchmark.pedantic(net_bench.run_bench, args=(opts,), rounds=1, iterations=1)
    net_bench.print_table(report)
    base = report["servers"]["kadfast/uvloop"]
    assert "error" not in base, base
    for label, path, _, _ in net_bench.METRICS:
        for server, res in report["servers"].items():
            v = net_bench.get_path(res, path)
            if isinstance(v, (int, float)):
                benchmark.extra_info[f"{server} {label.strip()}"] = v
    assert net_bench.get_path(base, ("handshake", "per_s")), base
