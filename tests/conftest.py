import os
import sys

from hypothesis import HealthCheck, settings

# CI runs more examples; a developer's default run stays quick.
settings.register_profile("ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# shared helper modules of the tests (tests/_procs.py) import as top-level modules
# whatever --import-mode pytest runs with
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_addoption(parser):
    # Declared here (not in tests/interop/conftest.py) so that the option works
    # however pytest is pointed at the suite.
    parser.getgroup("interop").addoption(
        "--interop-impls",
        default=None,
        help="comma list of interop peer implementations to test "
        "(rust,go,js,py,kubo; default: $KADFAST_INTEROP_IMPLS or all)",
    )


#: the many-node and long-running tests (tens of seconds each): marked slow
#: here, in one place, so that the quick suite stays quick (a whole file, one
#: test, or the parameters that start with the text before "[...-")
SLOW = (
    "test_churn.py",
    "test_sim_small.py",
    "test_netns.py",
    "test_kad_node.py::test_network_of_50_nodes",
    "test_kad_sim.py::test_lookups_find_the_true_closest_live_nodes[1000-",
    "test_yamux.py::test_random_operations_keep_data_intact",
)


def pytest_configure(config):
    # declared here too (not only in pyproject.toml), so that a copy of the
    # suite run against an installed wheel knows the marker
    config.addinivalue_line("markers", "slow: a many-node or long-running test (-m slow runs them)")


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        nodeid = item.nodeid.split("tests/", 1)[-1]
        for s in SLOW:
            # a file, a parameter prefix, or one test with all its parameters
            prefix = s if s.endswith((".py", "[", "-")) else s + "["
            if nodeid == s or nodeid.startswith(prefix):
                item.add_marker(pytest.mark.slow)
                break
