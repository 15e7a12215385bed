"""The kadfast CLI against a rust-libp2p program modelled on the reference
listener: the reference program announces
itself with one DHT record (key: the namespace bytes, value: its PeerId
bytes, Quorum::One) and serves JSON request/response.

- The rust peer announces the reference way (``ref_announce``) through a
  ``kadfast server``; ``kadfast dial`` finds it and gets its JSON reply.
- A ``kadfast listen`` announces itself; the rust peer finds it the reference
  way (``ref_discover``) and gets ``{"peer": <listener>, "echo": ...}`` back.

The CLI runs as real child processes (``python -m kadfast ...``); stdout is
read line by line on a thread, every wait has a timeout, and every child is
killed at teardown.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable

import pytest

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
START_TIMEOUT = 30.0
ANNOUNCE_TIMEOUT = 90.0
DIAL_TIMEOUT = 120.0


class CliProcess:
    """One ``python -m kadfast ...`` child; stdout lines go to a queue."""

    def __init__(self, name: str, args: list[str]) -> None:
        self.name = name
        self.argv = [sys.executable, "-m", "kadfast", *args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []  # every stdout line so far
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=300)
        self._stdout_reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._stdout_reader.start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                self.lines.append(line)
                self._queue.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        try:
            for raw in self.proc.stderr:
                self._stderr.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
        except (OSError, ValueError):
            pass

    def wait_line(self, match: Callable[[str], Any], timeout: float, what: str) -> Any:
        """The first truthy ``match(line)`` of a new stdout line."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"[{self.name}] no {what} within {timeout:.0f}s\n{self.diagnostics()}")
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self._queue.put(None)  # later waits see the end too
                self.proc.wait(5)
                raise AssertionError(
                    f"[{self.name}] exited ({self.proc.returncode}) before {what}\n{self.diagnostics()}"
                )
            found = match(line)
            if found:
                return found

    def wait_event(self, event: str, timeout: float, **fields: Any) -> dict[str, Any]:
        def match(line: str):
            msg = json_line(line)
            if msg and msg.get("event") == event and all(msg.get(k) == v for k, v in fields.items()):
                return msg
            return None

        return self.wait_line(match, timeout, f"{event!r} event {fields or ''}")

    def wait_exit(self, timeout: float) -> int:
        """The exit code, once the child exited and all its stdout was read."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"[{self.name}] still running after {timeout:.0f}s\n{self.diagnostics()}"
            ) from None
        self._stdout_reader.join(10)
        return code

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL; only this child, by its pid."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def diagnostics(self, lines: int = 80) -> str:
        return "\n".join(
            [
                f"--- {self.name}: {' '.join(self.argv)} (exit code {self.proc.poll()})",
                "stdout:",
                *self.lines[-lines:],
                f"stderr (last {lines} lines):",
                *list(self._stderr)[-lines:],
            ]
        )


def json_line(line: str) -> dict[str, Any] | None:
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


@pytest.fixture
def kadfast_cli(request: pytest.FixtureRequest):
    """Factory ``kadfast_cli(name, *args) -> CliProcess``; all are stopped at teardown."""
    procs: list[CliProcess] = []

    def start(name: str, *args: str) -> CliProcess:
        proc = CliProcess(name, list(args))
        procs.append(proc)
        return proc

    yield start

    failed = any(
        getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
        for when in ("setup", "call")
    )
    for proc in reversed(procs):
        proc.stop()
        if failed:
            request.node.add_report_section("teardown", f"kadfast {proc.name}", proc.diagnostics(200))


@pytest.fixture
def rust_peer(spawn_peer, interop_impls):
    if "rust" not in interop_impls:
        pytest.fail("this test needs the rust peer")
    return spawn_peer("rust")


def start_server(kadfast_cli) -> tuple[CliProcess, str]:
    """A ``kadfast server`` on loopback and its multiaddr (with /p2p/)."""
    server = kadfast_cli("server", "server", "--listen", LOOPBACK, "--json", "-v")

    def addr(line: str):
        msg = json_line(line)
        if msg is not None:
            if msg.get("event") == "listening":
                return next((a for a in msg.get("addrs", []) if "/p2p/" in a), None)
            return None
        line = line.strip()
        return line if line.startswith("/ip4/") and "/p2p/" in line else None

    return server, server.wait_line(addr, START_TIMEOUT, "listen address")


def test_dial_finds_reference_announcer(kadfast_cli, rust_peer):
    """The rust peer announces itself the reference way; ``kadfast dial`` finds
    it and exchanges a JSON message with it."""
    ns = f"ref-{uuid.uuid4().hex[:12]}"
    server, server_addr = start_server(kadfast_cli)

    rust_peer.call("dial", addr=server_addr)
    rust_peer.call("ref_announce", namespace=ns)

    dial = kadfast_cli(
        "dial",
        "dial",
        "--bootstrap", server_addr,
        "--namespace", ns,
        "--message", json.dumps({"x": 1}),
        "--listen", LOOPBACK,
        "--json",
        "-v",
    )
    code = dial.wait_exit(DIAL_TIMEOUT)
    replies = [m for m in map(json_line, dial.lines) if m and m.get("event") == "reply"]
    assert code == 0, f"kadfast dial exited {code}\n{dial.diagnostics()}"
    from_rust = [r for r in replies if r.get("peer") == rust_peer.peer_id]
    assert from_rust, f"no reply from the rust peer {rust_peer.peer_id}\n{dial.diagnostics()}"
    response = from_rust[0]["response"]
    assert response["peer_id"] == rust_peer.peer_id, response
    assert response["echo"] == {"x": 1}, response
    assert response["impl"] == "rust", response
    assert server.proc.poll() is None, server.diagnostics()


def test_reference_discovers_kadfast_listener(kadfast_cli, rust_peer):
    """A ``kadfast listen`` announces itself; the rust peer finds it the reference
    way (get_record of the namespace) and gets its JSON reply."""
    ns = f"ref-{uuid.uuid4().hex[:12]}"
    _server, server_addr = start_server(kadfast_cli)

    listener = kadfast_cli(
        "listen",
        "listen",
        "--bootstrap", server_addr,
        "--namespace", ns,
        "--listen", LOOPBACK,
        "--json",
        "-v",
    )
    announced = listener.wait_event("announced", ANNOUNCE_TIMEOUT)
    listener_id = announced["peer_id"]
    assert announced.get("namespace") == ns, announced

    rust_peer.call("dial", addr=server_addr)
    found = rust_peer.call("ref_discover", namespace=ns)
    assert listener_id in found["peers"], found

    body = {"hello": "from the reference", "n": [1, 2, 3]}
    res = rust_peer.call("request", peer_id=listener_id, body=body)
    assert res["response"] == {"peer": listener_id, "echo": body}, res
    listener.wait_event("request", 10, peer=rust_peer.peer_id, request=body)
