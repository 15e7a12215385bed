"""The go-libp2p churn dialer of bench/churn_bench.py against a kadfast
server, small: it builds on a fresh machine, its connections (go-libp2p's
TCP, Noise, Yamux and identify from many source addresses, or quic-go's
QUIC-v1 and identify) are accepted, identified and held, and the
benchmark's report is whole. The benchmark
itself is run by hand; this keeps it from rotting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def selected(config) -> bool:
    raw = config.getoption("--interop-impls", default=None) or os.environ.get("KADFAST_INTEROP_IMPLS", "")
    names = [n.strip() for n in raw.split(",") if n.strip()]
    return not names or "go" in names


@pytest.mark.parametrize("transport", ["tcp", "quic"])
def test_go_churn_dialer_against_a_kadfast_server(request, transport):
    if not selected(request.config):
        pytest.skip("go not among the selected interop implementations")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "churn_bench.py"), "--quick", "--hold", "100",
         "--duration", "1", "--identities", "64", "--concurrency", "16", "--transport", transport, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r["config"]["dialer_kind"] == "go" and r["config"]["transport"] == transport
    hold = r["hold"]
    assert hold["opened"] == 100 and not hold["open_errors"]
    assert hold["server_open_connections"] == 100
    assert hold["after_churn"]["client_alive"] == 100 and hold["after_churn"]["client_lost"] == 0
    for phase in ("churn_held", "churn_empty"):
        p = r[phase]
        assert p["client_completed"] > 0 and p["error_count"] == 0
        # the server saw them as libp2p connections and identified them
        assert p["server_established"] >= p["client_completed"] * 0.9
        assert p["server_identified"] >= p["client_completed"] * 0.9
    end = r["end"]
    assert end["open"] == 0 and end["peer_info"] == 0 and end["tasks"] == 0
