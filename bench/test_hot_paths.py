"""pytest-benchmark suite: each hot path, compiled and plain-Python twin, in
one run so that pytest-benchmark's comparison table shows the ratio.

    python -m pytest bench/ --benchmark-only
"""

import pytest
from workloads import WORKLOADS


@pytest.mark.parametrize("impl", ["compiled", "python"])
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_hot_path(benchmark, workload, impl):
    fn, ops = WORKLOADS[workload](impl)
    benchmark.group = workload
    benchmark.extra_info["ops_per_call"] = ops
    benchmark(fn)
