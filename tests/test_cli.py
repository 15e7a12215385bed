"""End-to-end tests of the real ``kadfast`` command line, run as subprocesses
on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from _procs import KadfastProc

from kadfast import Ed25519KeyPair

LOOP = "/ip4/127.0.0.1/tcp/0"


Proc = KadfastProc


def kadfast(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kadfast", *args], capture_output=True, text=True, timeout=timeout)


def events(cp: subprocess.CompletedProcess, kind: str) -> list[dict]:
    return [o for o in map(json.loads, cp.stdout.splitlines()) if o.get("event") == kind]


@pytest.fixture
def procs():
    started: list[Proc] = []

    def start(*args):
        p = Proc(*args)
        started.append(p)
        return p

    yield start
    for p in reversed(started):
        p.stop()


@pytest.fixture
def server(procs):
    s = procs("server", "--listen", LOOP, "--json")
    ev = s.wait_event("listening")
    return ev["addrs"][0]


def test_namespaces_separate_listeners(procs, server):
    alpha = [procs("listen", "--bootstrap", server, "--namespace", "alpha", "--listen", LOOP, "--json") for _ in range(2)]
    beta = procs("listen", "--bootstrap", server, "--namespace", "beta", "--listen", LOOP, "--json")
    alpha_ids = {p.wait_event("announced")["peer_id"] for p in alpha}
    beta_id = beta.wait_event("announced")["peer_id"]

    cp = kadfast("dial", "--bootstrap", server, "--namespace", "alpha", "--listen", LOOP, "--json", "--message", '{"n": 7}')
    assert cp.returncode == 0, cp.stderr
    replies = events(cp, "reply")
    assert {r["peer"] for r in replies} == alpha_ids
    assert all(r["response"] == {"peer": r["peer"], "echo": {"n": 7}} for r in replies)
    # each listener printed the peer that talked to it
    for p in alpha:
        assert p.wait_event("request")["request"] == {"n": 7}

    cp = kadfast("dial", "--bootstrap", server, "--namespace", "beta", "--listen", LOOP, "--json", "--count", "1")
    assert cp.returncode == 0, cp.stderr
    assert [r["peer"] for r in events(cp, "reply")] == [beta_id]

    cp = kadfast("dial", "--bootstrap", server, "--namespace", "nobody-here", "--listen", LOOP)
    assert cp.returncode == 4
    assert "no peer of namespace 'nobody-here'" in cp.stdout + cp.stderr


def test_dht_commands(procs, server):
    listener = procs("listen", "--bootstrap", server, "--namespace", "x", "--listen", LOOP, "--json")
    lid = listener.wait_event("announced")["peer_id"]
    net = ("--bootstrap", server, "--listen", LOOP)

    cp = kadfast("put", *net, "/demo/key", "hello", "--json")
    assert cp.returncode == 0, cp.stderr
    assert events(cp, "stored")[0]["peers"] >= 1
    cp = kadfast("get", *net, "/demo/key")
    assert cp.returncode == 0 and cp.stdout.strip() == "hello", cp.stderr
    cp = kadfast("put", *net, "--hex", "00ff", "cafe")
    assert cp.returncode == 0, cp.stderr
    cp = kadfast("get", *net, "--hex", "00ff", "--all")
    assert cp.stdout.split() == ["cafe"]
    cp = kadfast("get", *net, "/demo/missing")
    assert cp.returncode == 4 and "no record" in cp.stderr

    cp = kadfast("provide", *net, "some-content", "--json")
    assert cp.returncode == 0 and events(cp, "provided")[0]["peers"] >= 1, cp.stderr
    cp = kadfast("providers", *net, "some-content", "--json")
    assert cp.returncode == 0, cp.stderr
    assert len(events(cp, "provider")) == 1  # the node that provided it (a past CLI run)

    cp = kadfast("closest", *net, lid, "--json")
    assert cp.returncode == 0, cp.stderr
    assert lid in [e["peer"] for e in events(cp, "peer")]
    cp = kadfast("find-peer", *net, lid, "--json")
    assert cp.returncode == 0, cp.stderr
    assert events(cp, "addr")[0]["peer"] == lid

    cp = kadfast("put", *net, "/demo/q", "v", "--quorum", "all")
    assert cp.returncode == 5 and "quorum" in cp.stderr


def test_one_shot_commands_are_dht_clients(procs, server, tmp_path):
    """get/put/provide/... listen nowhere and do not announce kad unless told
    to: after they exit, no peer hands them out (a server that kept them
    would send every later lookup to dead peers)."""
    key = str(tmp_path / "one-shot.key")
    pid = events(kadfast("id", "--key", key, "--json"), "identity")[0]["peer_id"]
    listener = procs("listen", "--bootstrap", server, "--namespace", "x", "--listen", LOOP, "--json")
    lid = listener.wait_event("announced")["peer_id"]
    for cmd in (("put", "/demo/c", "v"), ("get", "/demo/c"), ("provide", "c"), ("closest", lid)):
        cp = kadfast(cmd[0], "--bootstrap", server, "--key", key, *cmd[1:])
        assert cp.returncode == 0, (cmd, cp.stderr)
    # a provider record without addresses is not handed out (go and js drop
    # such entries too): `provide` needs --listen to be reachable
    cp = kadfast("providers", "--bootstrap", server, "--key", key, "c")
    assert cp.returncode == 4 and "no providers" in cp.stdout + cp.stderr
    # a fresh client asks the server and the listener for the peers nearest that id
    cp = kadfast("closest", "--bootstrap", server, pid, "--json")
    assert cp.returncode == 0, cp.stderr
    found = [e["peer"] for e in events(cp, "peer")]
    assert lid in found and pid not in found
    cp = kadfast("find-peer", "--bootstrap", server, pid)
    assert cp.returncode == 4, cp.stdout + cp.stderr


def test_bad_arguments_and_unreachable_bootstrap():
    cp = kadfast("dial", "--namespace", "x")
    assert cp.returncode == 2 and "--bootstrap" in cp.stderr
    cp = kadfast("dial", "--bootstrap", "/ip4/999.1.1.1/tcp/1", "--namespace", "x")
    assert cp.returncode == 2 and "ip4" in cp.stderr
    cp = kadfast("dial", "--bootstrap", "/ip4/127.0.0.1/tcp/1", "--namespace", "x")
    assert cp.returncode == 3 and "/p2p/" in cp.stderr
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ghost = Ed25519KeyPair.generate().peer_id
    cp = kadfast("dial", "--bootstrap", f"/ip4/127.0.0.1/tcp/{port}/p2p/{ghost}", "--namespace", "x", "--listen", LOOP)
    assert cp.returncode == 3 and "no bootstrap node reachable" in cp.stderr
    cp = kadfast("put", "--bootstrap", f"/ip4/127.0.0.1/tcp/{port}/p2p/{ghost}", "k", "v", "--quorum", "zero")
    assert cp.returncode in (2, 3)
    cp = kadfast("nonsense")
    assert cp.returncode == 2
    cp = kadfast("--help")
    assert cp.returncode == 0 and "exit codes" in cp.stdout


def test_id_command_creates_and_reuses_a_key(tmp_path):
    path = tmp_path / "node.key"
    first = kadfast("id", "--key", str(path)).stdout.strip()
    assert first.startswith("12D3KooW") and path.exists()
    assert kadfast("id", "--key", str(path)).stdout.strip() == first
    path.write_bytes(b"garbage")
    cp = kadfast("id", "--key", str(path))
    assert cp.returncode == 2 and "malformed" in cp.stderr


def test_server_restart_keeps_identity_and_sqlite_records(procs, tmp_path):
    key = str(tmp_path / "server.key")
    db = f"sqlite:{tmp_path / 'records.db'}"
    s1 = procs("server", "--listen", LOOP, "--json", "--key", key, "--store", db)
    addr1 = s1.wait_event("listening")["addrs"][0]
    cp = kadfast("put", "--bootstrap", addr1, "--listen", LOOP, "/keep/me", "persisted")
    assert cp.returncode == 0, cp.stderr
    assert s1.stop() == 0
    s2 = procs("server", "--listen", LOOP, "--json", "--key", key, "--store", db)
    ev = s2.wait_event("listening")
    assert ev["peer_id"] == addr1.rsplit("/", 1)[1]
    # ask the restarted server alone: the record came back from disk
    cp = kadfast("get", "--bootstrap", ev["addrs"][0], "--listen", LOOP, "/keep/me")
    assert cp.returncode == 0 and cp.stdout.strip() == "persisted", cp.stderr


def test_demo_runs_to_completion():
    cp = kadfast("demo", "--json", timeout=60)
    assert cp.returncode == 0, cp.stderr
    summary = events(cp, "summary")[0]
    assert summary["found"] == 3 and summary["replies"] == 3 and summary["ok"]


def test_server_metrics_endpoint(procs):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    server = procs("server", "--listen", LOOP, "--json", "--metrics-port", str(port))
    addr = server.wait_event("listening")["addrs"][0]
    cp = kadfast("put", "--bootstrap", addr, "--listen", LOOP, "/m/k", "v")
    assert cp.returncode == 0, cp.stderr
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                body = b""
                while chunk := c.recv(65536):
                    body += chunk
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "metrics endpoint never came up"
            time.sleep(0.1)
    text = body.decode()
    assert text.startswith("HTTP/1.1 200")
    assert "kadfast_routing_table_peers" in text and "kadfast_store_records 1" in text
    assert 'kadfast_requests_total{type="PUT_VALUE"} 1' in text
    assert 'kadfast_open_connections{transport="quic"} 0' in text  # the put came over TCP
    assert 'kadfast_open_connections{transport="tcp"}' in text


def test_sigterm_stops_a_running_command_cleanly(procs, server):
    # a dial into an empty namespace that would otherwise wait for its lookups
    p = procs("listen", "--bootstrap", server, "--namespace", "t", "--listen", LOOP, "--json")
    p.wait_event("announced")
    assert p.stop() == 0  # SIGTERM -> graceful stop, exit 0


def test_server_limits_from_the_command_line(procs):
    server = procs("server", "--listen", LOOP, "--json", "--max-records", "1", "--max-value-bytes", "8")
    addr = server.wait_event("listening")["addrs"][0]
    net = ("--bootstrap", addr, "--listen", LOOP)
    assert kadfast("put", *net, "/l/a", "v").returncode == 0
    cp = kadfast("put", *net, "/l/b", "v")  # the store is full: the server refuses
    assert cp.returncode == 5 and "quorum" in cp.stderr
    cp = kadfast("put", *net, "/l/a", "much too long")  # over --max-value-bytes
    assert cp.returncode == 5
    assert kadfast("get", *net, "/l/a").stdout.strip() == "v"


def test_server_unvalidated_records_modes(procs):
    """By default (owner) a key no validator checks is changed only by the
    peer that stored it (each one-shot command is a new identity); with
    --unvalidated-records accept the last writer wins."""
    for mode, second in (("owner", 5), ("accept", 0)):
        server = procs("server", "--listen", LOOP, "--json", "--unvalidated-records", mode,
                       "--max-reads-per-second", "100", "--max-records-per-peer", "10")
        net = ("--bootstrap", server.wait_event("listening")["addrs"][0], "--listen", LOOP)
        assert kadfast("put", *net, "/o/k", "first").returncode == 0
        cp = kadfast("put", *net, "/o/k", "second")
        assert cp.returncode == second, cp.stderr
        assert kadfast("get", *net, "/o/k").stdout.strip() == ("first" if mode == "owner" else "second")
        server.stop()
    assert kadfast("server", "--unvalidated-records", "sometimes").returncode == 2
