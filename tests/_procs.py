"""A long-running ``python -m kadfast`` command whose JSON stdout lines are
queued, shared by the end-to-end tests (test_cli, test_netns,
test_server_kill). Imported as a sibling module: tests/conftest.py puts this
directory on ``sys.path``."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time


class KadfastProc:
    """``[*prefix, python, -m, kadfast, *args]`` started at once; stdout lines
    queued (None at EOF), stderr collected in ``self.stderr``."""

    def __init__(self, *args: str, prefix: tuple[str, ...] = ()) -> None:
        self.args = args
        self.p = subprocess.Popen(
            [*prefix, sys.executable, "-m", "kadfast", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.p.stderr), daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_event(self, event: str, timeout: float = 30.0) -> dict:
        """The next JSON line whose ``event`` is ``event`` (others skipped);
        AssertionError on a timeout or if the process exits first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {event!r} from {self.args} after {timeout}s; "
                                     f"stderr: {''.join(self.stderr[-20:])}") from None
            if line is None:
                raise AssertionError(f"{self.args} exited ({self.p.wait()}); stderr: {''.join(self.stderr[-20:])}")
            obj = json.loads(line)
            if obj.get("event") == event:
                return obj

    def kill(self) -> None:
        """SIGKILL (if still running) and reap."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 10 s; the exit code."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode
