"""The package's shape: one error hierarchy, and sans-IO cores that import
without the network stack."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import kadfast
from kadfast import errors, yamux

#: exceptions that are not errors of the API: the CLI's argument error and a
#: control-flow signal inside the kad decoder
NOT_API_ERRORS = {"kadfast.cli.UsageError", "kadfast.kad.pb._Truncated"}


def _modules():
    for info in pkgutil.walk_packages(kadfast.__path__, "kadfast."):
        if info.name.endswith(("__main__",)):
            continue
        yield importlib.import_module(info.name)


def test_every_error_class_is_defined_in_errors():
    stray = set()
    for module in _modules():
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                if module.__name__ != "kadfast.errors" and f"{module.__name__}.{name}" not in NOT_API_ERRORS:
                    stray.add(f"{module.__name__}.{name}")
    assert not stray, f"error classes outside kadfast.errors: {sorted(stray)}"
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.KadfastError), name


def test_events_and_errors_do_not_share_names():
    assert not set(yamux.__all__) & set(errors.__all__)


def test_sans_io_cores_import_without_the_network_stack():
    cores = ["kadfast.yamux", "kadfast.multistream", "kadfast.noise", "kadfast.kad.pb", "kadfast.kad.query",
             "kadfast.identify", "kadfast.ping", "kadfast.store", "kadfast.ipns", "kadfast.kad.validation"]
    code = (
        "import sys\n"
        f"for m in {cores!r}: __import__(m)\n"
        "print(sorted(m for m in ('asyncio', 'kadfast.net', 'kadfast.kad.node', 'kadfast.client', 'kadfast.reqresp')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_the_network_names_still_come_from_the_package():
    from kadfast import Client, Host, KadNode

    assert KadNode.__module__ == "kadfast.kad.node" and Host.__module__ == "kadfast.net.host"
    assert Client.__module__ == "kadfast.client"
    assert set(kadfast.__all__) <= set(dir(kadfast))
