"""Fixtures for the interop tests: build the peer programs once, spawn peers.

Choose implementations with ``--interop-impls=rust,go`` or the environment
variable ``KADFAST_INTEROP_IMPLS`` (comma list; default: all four, and
Kubo). ``kubo`` in the list selects the Kubo tests (test_kubo.py); a list
without it leaves them out. A build or start failure fails the test that
needed it; it is never a skip.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Sequence

import pytest

from .harness import (
    EXTRA_PEERS,
    IMPLS,
    BuildError,
    BuildResult,
    KuboDaemon,
    KuboError,
    Peer,
    PeerStartError,
    build_for,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "interop: runs real libp2p peers (rust, go, js, py) as subprocesses"
    )


def _selected_names(config: pytest.Config) -> list[str]:
    """The names given by --interop-impls or KADFAST_INTEROP_IMPLS ([] if none)."""
    raw = config.getoption("--interop-impls", default=None)
    if raw is None:
        raw = os.environ.get("KADFAST_INTEROP_IMPLS", "")
    names = [n.strip() for n in raw.split(",") if n.strip()]
    known = IMPLS + EXTRA_PEERS
    unknown = [n for n in names if n not in known]
    if unknown:
        raise pytest.UsageError(
            f"unknown interop implementation(s) {unknown}; known: {', '.join(known)}"
        )
    return names


def selected_impls(config: pytest.Config) -> list[str]:
    """The control-protocol peers to test (default: all four). Names of
    EXTRA_PEERS (``kubo``) may be given too; they are not among these."""
    names = _selected_names(config)
    if not names:
        return list(IMPLS)
    # Keep the canonical order so test ids are stable.
    return [n for n in IMPLS if n in names]


def peer_selected(config: pytest.Config, name: str) -> bool:
    """Whether the tests of one of EXTRA_PEERS run: with no selection, or
    when the selection names it."""
    names = _selected_names(config)
    return not names or name in names


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


# --------------------------------------------------------------------------
# Kubo
# --------------------------------------------------------------------------


class KuboDaemons:
    """Starts Kubo daemons (each with its own repository under a temporary
    directory) and stops them all at ``close()``."""

    def __init__(self, builds: Builds, tmp: Callable[[str], "os.PathLike[str]"]) -> None:
        self._builds = builds
        self._tmp = tmp
        self.daemons: list[KuboDaemon] = []

    def __call__(
        self,
        bootstrap: list[str] | tuple[str, ...],
        routing: str = "dht",
        name: str | None = None,
        config: dict | None = None,
    ) -> KuboDaemon:
        """A started daemon whose only bootstrap peers are ``bootstrap``."""
        build = self._builds.get("kubo")
        name = name or f"kubo{len(self.daemons) + 1}"
        daemon = KuboDaemon(
            build.argv[0], self._tmp(name), bootstrap=bootstrap, routing=routing,
            config=config, name=name,
        )
        self.daemons.append(daemon)
        try:
            daemon.start()
        except KuboError as exc:
            pytest.fail(str(exc), pytrace=False)
        return daemon

    def attach(self, node: pytest.Item) -> None:
        """Each daemon's output into the report of ``node``."""
        for daemon in self.daemons:
            node.add_report_section("teardown", f"kubo {daemon.name}", daemon.diagnostics(lines=200))

    def close(self, node: pytest.Item | None = None, failed: bool = False) -> None:
        """Stop every daemon; with ``node``, attach the output of each one to
        its report when the test failed or the daemon exited with an error."""
        for daemon in reversed(self.daemons):
            code = daemon.stop()
            if node is not None and (failed or code not in (0, None)):
                node.add_report_section(
                    "teardown", f"kubo {daemon.name} (exit {code})", daemon.diagnostics(lines=200)
                )


def _failed(node: pytest.Item) -> bool:
    return any(
        getattr(getattr(node, f"rep_{when}", None), "failed", False) for when in ("setup", "call")
    )


@pytest.fixture
def kubo_daemon(request: pytest.FixtureRequest, interop_builds: Builds, tmp_path_factory):
    """Factory: ``kubo_daemon(bootstrap, routing="dht", name=None, config=None)``
    -> a started :class:`KuboDaemon`; stopped at teardown, its output attached
    to the report of a failed test."""
    daemons = KuboDaemons(interop_builds, lambda name: tmp_path_factory.mktemp(f"kubo-{name}"))
    yield daemons
    daemons.close(request.node, _failed(request.node))


@pytest.fixture(scope="module")
def kubo_module_daemons(interop_builds: Builds, tmp_path_factory):
    """Like ``kubo_daemon``, but the daemons live until the module's end
    (shared by its tests). The module attaches their output to its failed
    tests with ``kubo_module_daemons.attach(request.node)``."""
    daemons = KuboDaemons(interop_builds, lambda name: tmp_path_factory.mktemp(f"kubo-{name}"))
    yield daemons
    daemons.close()
