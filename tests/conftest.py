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
