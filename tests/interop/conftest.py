"""Fixtures for the interop tests: build the peer programs once, spawn peers.

Choose implementations with ``--interop-impls=rust,go`` or the environment
variable ``KADFAST_INTEROP_IMPLS`` (comma list; default: all four). A build
or start failure fails the test that needed it; it is never a skip.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Sequence

import pytest

from .harness import (
    IMPLS,
    BuildError,
    BuildResult,
    Peer,
    PeerStartError,
    build_for,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "interop: runs real libp2p peers (rust, go, js, py) as subprocesses"
    )


def selected_impls(config: pytest.Config) -> list[str]:
    raw = config.getoption("--interop-impls", default=None)
    if raw is None:
        raw = os.environ.get("KADFAST_INTEROP_IMPLS", "")
    names = [n.strip() for n in raw.split(",") if n.strip()] or list(IMPLS)
    unknown = [n for n in names if n not in IMPLS]
    if unknown:
        raise pytest.UsageError(
            f"unknown interop implementation(s) {unknown}; known: {', '.join(IMPLS)}"
        )
    # Keep the canonical order so test ids are stable.
    return [n for n in IMPLS if n in names]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.interop)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    # Keep each phase's report on the item so teardown can tell a failure.
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


class Builds:
    """Builds each implementation at most once per session, on first use.

    A failure is remembered, so later tests fail at once with the same output
    instead of rebuilding.
    """

    def __init__(self) -> None:
        self._results: dict[str, BuildResult | BuildError] = {}
        self._lock = threading.Lock()

    def get(self, impl: str) -> BuildResult:
        with self._lock:
            if impl not in self._results:
                try:
                    self._results[impl] = build_for(impl).ensure()
                except BuildError as exc:
                    self._results[impl] = exc
            result = self._results[impl]
        if isinstance(result, BuildError):
            pytest.fail(str(result), pytrace=False)
        return result

    def summary(self) -> dict[str, str]:
        out = {}
        for impl, res in self._results.items():
            if isinstance(res, BuildError):
                out[impl] = "FAILED"
            else:
                out[impl] = f"{'cached' if res.cached else 'built'} in {res.seconds:.1f}s" + (
                    f" (+{res.lock_wait:.1f}s waiting for the build lock)"
                    if res.lock_wait > 1
                    else ""
                )
        return out


_BUILDS = Builds()


@pytest.fixture(scope="session")
def interop_impls(pytestconfig: pytest.Config) -> list[str]:
    return selected_impls(pytestconfig)


@pytest.fixture(scope="session")
def interop_builds() -> Builds:
    """``interop_builds.get(impl)`` -> BuildResult, building on first use."""
    return _BUILDS


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    summary = _BUILDS.summary()
    if summary:
        terminalreporter.section("interop peer builds")
        for impl, text in summary.items():
            terminalreporter.write_line(f"{impl:>5}: {text}")


SpawnPeer = Callable[..., Peer]


@pytest.fixture
def spawn_peer(request: pytest.FixtureRequest, interop_builds: Builds) -> SpawnPeer:
    """Factory: ``spawn_peer(impl, seed=None, listen=None, client=False,
    args=()) -> Peer`` (started). ``client=True`` adds ``--client`` (Kademlia
    in client mode, see peers/PROTOCOL.md); ``args`` are further options.

    Every peer started through it is stopped at teardown. If the test failed,
    each peer's stderr tail is attached to the report.
    """
    peers: list[Peer] = []
    counts: dict[str, int] = {}

    def spawn(
        impl: str,
        seed: int | None = None,
        listen: str | None = None,
        client: bool = False,
        args: Sequence[str] = (),
    ) -> Peer:
        build = interop_builds.get(impl)
        counts[impl] = counts.get(impl, 0) + 1
        name = impl if counts[impl] == 1 else f"{impl}#{counts[impl]}"
        if client:
            name += "(client)"
        extra = (["--client"] if client else []) + list(args)
        peer = Peer(impl, build.argv, cwd=build.cwd, seed=seed, listen=listen, args=extra, name=name)
        peers.append(peer)
        try:
            peer.start()
        except PeerStartError as exc:
            pytest.fail(str(exc), pytrace=False)
        return peer

    yield spawn

    failed = any(
        getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
        for when in ("setup", "call")
    )
    for peer in reversed(peers):
        started = time.monotonic()
        code = peer.stop()
        if failed or (code not in (0, None) and peer.ready is not None):
            request.node.add_report_section(
                "teardown",
                f"peer {peer.name} (exit {code}, stop took {time.monotonic() - started:.1f}s)",
                peer.diagnostics(lines=200),
            )
