"""The fuzz runner (fuzz/run.py) in the normal suite: every target for about
a second with the built-in engine, the CLI, replay, and atheris when present.
Longer runs: python fuzz/run.py (see fuzz/README.md)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(ROOT, "fuzz", "run.py")

_spec = importlib.util.spec_from_file_location("kadfast_fuzz_run", RUN_PY)
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)

NAMES = run.target_names()
SECONDS = float(os.environ.get("KADFAST_FUZZ_SMOKE_SECONDS", "1.0"))


def _explain(res: dict) -> str:
    f = res["failure"] or {}
    return (f"{res['target']}: {f.get('kind')}: {f.get('error')}\nreproducer: {f.get('hex')}\n"
            f"{f.get('traceback')}")


def test_every_layer_has_a_target():
    expected = {
        "multistream_dialer", "multistream_listener", "noise_initiator", "noise_responder", "noise_transport",
        "yamux_client", "yamux_server", "identify", "ping", "kad_pb", "multiaddr_text", "multiaddr_binary",
        "peerid_text", "peerid_bytes", "public_key", "keyfile", "routing", "keyspace",
    }
    assert expected <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_target_smoke(name, tmp_path):
    res = run.fuzz_in_process(name, SECONDS, artifacts=str(tmp_path))
    assert res["status"] == "ok", _explain(res)
    assert res["runs"] > 0
    assert res["peak_mib"] < run.DEFAULT_MEMORY_LIMIT_MIB


def test_seeds_reach_success_paths():
    """The seed corpus must hold inputs the layer accepts, or fuzzing only
    explores the first error branch."""
    tm = run.import_targets(False)
    for name, t in tm.TARGETS.items():
        labels = []
        for s in t.seeds():
            try:
                labels.append(t.fn(s))
            except t.allowed:
                labels.append("err")
        assert "ok" in labels, f"{name}: no seed succeeds ({labels})"


def test_cli_json_and_replay():
    out = subprocess.run(
        [sys.executable, RUN_PY, "--engine", "random", "--seconds-per-target", "0.5",
         "--target", "ping", "--target", "multiaddr_text", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["target"] for r in rows] == ["ping", "multiaddr_text"], out.stdout + out.stderr
    assert all(r["runs"] > 0 and r["status"] == "ok" for r in rows), out.stdout
    assert out.returncode == 0
    rep = subprocess.run([sys.executable, RUN_PY, "--target", "ping", "--replay-hex", "00" + "ab" * 40],
                         capture_output=True, text=True, timeout=60)
    assert rep.returncode == 0 and "outcome" in rep.stdout, rep.stdout + rep.stderr


@pytest.mark.skipif(not run.have_atheris(), reason="atheris not installed")
def test_atheris_engine():
    out = subprocess.run(
        [sys.executable, RUN_PY, "--engine", "atheris", "--seconds-per-target", "1",
         "--target", "multistream_listener", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert rows and rows[0]["engine"] == "atheris" and rows[0]["runs"] > 0, out.stdout + out.stderr
    assert rows[0]["status"] == "ok", out.stdout
