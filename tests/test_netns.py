"""kadfast nodes in separate network namespaces, joined by a bridge; one is cut
off mid-run and reconnected.

Topology (all in private namespaces: nothing touches the host's own network):

    kfh<id>  (hub)   br0 -- p1 p2 p3 p4
                           |  |  |  |      veth pairs
    kf<id>-1 .. -4   eth0 10.231.0.1 .. 10.231.0.4 /24

Node 1 runs ``kadfast server`` (the bootstrap node); nodes 2-4 run ``kadfast
listen`` bootstrapped through it (``kadfast server`` does not join through
``--bootstrap``, so a listener is the long-running node that joins). DHT
operations are the CLI (``put/get/find-peer/closest``) run with ``ip netns
exec`` in the nodes' namespaces. Needs root and working ``ip netns``; skipped
with the reason otherwise. Namespaces (and with them the veths and the bridge)
are always deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from _procs import KadfastProc

N = 4
SUBNET = "10.231.0"
PORT = 4001


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cp = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {cp.returncode}: {cp.stderr.strip()}")
    return cp


def netns_unavailable() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"kfprobe{os.getpid()}"
    cp = sh("ip", "netns", "add", probe, check=False)
    if cp.returncode != 0:
        return f"ip netns add does not work here: {cp.stderr.strip()}"
    sh("ip", "netns", "del", probe, check=False)
    return None


_REASON = netns_unavailable()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


class Net:
    """The namespaces, veths and bridge; ``close`` removes all of them."""

    def __init__(self) -> None:
        tag = f"{os.getpid()}{int(time.monotonic() * 1000) % 10000}"
        self.hub = f"kfh{tag}"
        self.ns = [f"kf{tag}-{i}" for i in range(1, N + 1)]
        self.created: list[str] = []

    def addr(self, i: int) -> str:
        return f"{SUBNET}.{i}"

    def setup(self) -> None:
        for ns in [self.hub, *self.ns]:
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")
        for i, ns in enumerate(self.ns, 1):
            sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{i}", "netns", self.hub)
            sh("ip", "-n", self.hub, "link", "set", f"p{i}", "master", "br0")
            sh("ip", "-n", self.hub, "link", "set", f"p{i}", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def cut(self, i: int) -> None:
        sh("ip", "-n", self.hub, "link", "set", f"p{i}", "down")

    def reconnect(self, i: int) -> None:
        sh("ip", "-n", self.hub, "link", "set", f"p{i}", "up")

    def reaches(self, src: int, dst: int, port: int) -> bool:
        """A TCP connection from node src's namespace to node dst's port opens within 1 s."""
        probe = f"exec 3<>/dev/tcp/{self.addr(dst)}/{port}"
        return sh("ip", "netns", "exec", self.ns[src - 1], "timeout", "1", "bash", "-c", probe,
                  check=False).returncode == 0

    def close(self) -> None:
        for ns in reversed(self.created):
            sh("ip", "netns", "del", ns, check=False)
        self.created.clear()


class Proc(KadfastProc):
    """A long-running kadfast command in a namespace; JSON stdout lines queued."""

    def __init__(self, ns: str, *args: str) -> None:
        super().__init__(*args, prefix=("ip", "netns", "exec", ns))


@pytest.fixture
def net():
    n = Net()
    try:
        try:
            n.setup()
        except RuntimeError as exc:  # e.g. no veth or bridge support in this kernel
            pytest.skip(f"cannot build the namespace network: {exc}")
        yield n
    finally:
        n.close()
        leftover = sh("ip", "netns", "list").stdout
        assert n.hub not in leftover and not any(ns in leftover for ns in n.ns), leftover


def test_nodes_in_namespaces_survive_a_cut_and_a_reconnect(net):
    t0 = time.monotonic()
    timings: list[str] = []

    def note(msg):
        timings.append(f"{time.monotonic() - t0:5.1f}s {msg}")

    def start_cli(i: int, *args: str, via: str) -> subprocess.Popen:
        """A CLI command started in node i's namespace, bootstrapping through ``via``."""
        return subprocess.Popen(
            ["ip", "netns", "exec", net.ns[i - 1], sys.executable, "-m", "kadfast", args[0],
             "--bootstrap", via, "--listen", f"/ip4/{net.addr(i)}/tcp/0", "--json", *args[1:]],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def finish(p: subprocess.Popen, timeout: float = 70.0) -> subprocess.CompletedProcess:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    def cli(i: int, *args: str, via: str) -> subprocess.CompletedProcess:
        return finish(start_cli(i, *args, via=via))

    def values(cp) -> list[str]:
        assert cp.returncode == 0, f"exit {cp.returncode}: {cp.stderr}"
        return [o["value"] for o in map(json.loads, cp.stdout.splitlines()) if o.get("event") == "value"]

    procs: list[Proc] = []
    try:
        server = Proc(net.ns[0], "server", "--listen", f"/ip4/{net.addr(1)}/tcp/{PORT}", "--json")
        procs.append(server)
        ev = server.wait_event("listening")
        boot = f"/ip4/{net.addr(1)}/tcp/{PORT}/p2p/{ev['peer_id']}"
        ids = {1: ev["peer_id"]}
        listeners = {}
        for i in range(2, N + 1):
            listeners[i] = Proc(net.ns[i - 1], "listen", "--bootstrap", boot, "--namespace", "netns-test",
                                "--listen", f"/ip4/{net.addr(i)}/tcp/{PORT}", "--json")
            procs.append(listeners[i])
        for i, p in listeners.items():
            ids[i] = p.wait_event("announced")["peer_id"]
        addr = {i: f"/ip4/{net.addr(i)}/tcp/{PORT}/p2p/{ids[i]}" for i in ids}
        note(f"{N} nodes up in {N} namespaces")

        # -- they find each other and put/get across namespaces ----------------------
        cp = cli(2, "closest", ids[4], via=addr[1])
        assert cp.returncode == 0, cp.stderr
        found = {o["peer"] for o in map(json.loads, cp.stdout.splitlines()) if o.get("event") == "peer"}
        assert {ids[1], ids[3], ids[4]} <= found, found
        cp = cli(3, "find-peer", ids[2], via=addr[4])
        assert cp.returncode == 0, cp.stderr
        assert any(f"/ip4/{net.addr(2)}/tcp/{PORT}" in o.get("addr", "") for o in map(json.loads, cp.stdout.splitlines()))
        cp = cli(2, "put", "/netns/before", "v-before", "--quorum", "3", via=addr[1])
        assert cp.returncode == 0, cp.stderr
        assert values(cli(4, "get", "/netns/before", via=addr[3])) == ["v-before"]
        note("closest/find-peer/put/get across namespaces")

        # -- node 4 cut off mid-run ------------------------------------------------
        net.cut(4)
        assert not net.reaches(1, 4, PORT) and not net.reaches(4, 1, PORT)
        note("node 4 cut off")
        # the others still work: a get through node 1 from node 2, a put from node 3
        # through node 2; node 4 alone finds its bootstrap node unreachable (exit 3).
        # Run side by side: each waits out node 4's request/dial timeouts (10 s).
        get_p = start_cli(2, "get", "/netns/before", via=addr[1])
        put_p = start_cli(3, "put", "/netns/during", "v-during", "--quorum", "2", via=addr[2])
        alone_p = start_cli(4, "get", "/netns/before", via=addr[1])
        assert values(finish(get_p)) == ["v-before"]
        cp = finish(put_p)
        assert cp.returncode == 0, cp.stderr
        stored = next(o for o in map(json.loads, cp.stdout.splitlines()) if o.get("event") == "stored")["peers"]
        assert stored >= 2
        cp = finish(alone_p)
        assert cp.returncode == 3, f"exit {cp.returncode}: {cp.stderr}"
        note(f"while cut: get, and put stored on {stored} peers, among nodes 1-3; node 4 alone (exit 3)")
        assert values(cli(1, "get", "/netns/during", via=addr[2])) == ["v-during"]
        note("while cut: the record put while node 4 was away is found")

        # -- reconnected: reachable again, and the way into the DHT ------------------
        net.reconnect(4)
        deadline = time.monotonic() + 10
        while not (net.reaches(1, 4, PORT) and net.reaches(4, 2, PORT)):
            assert time.monotonic() < deadline, "node 4 not reachable after the reconnect"
        note("node 4 reconnected")
        cp = cli(2, "find-peer", ids[4], via=addr[1])
        assert cp.returncode == 0, cp.stderr
        assert any(f"/ip4/{net.addr(4)}/tcp/{PORT}" in o.get("addr", "") for o in map(json.loads, cp.stdout.splitlines()))
        # through node 4: a record it holds, and one put while it was away
        assert values(cli(3, "get", "/netns/before", via=addr[4])) == ["v-before"]
        assert values(cli(2, "get", "/netns/during", via=addr[4])) == ["v-during"]
        cp = cli(4, "put", "/netns/after", "v-after", "--quorum", "3", via=addr[1])
        assert cp.returncode == 0, cp.stderr
        assert values(cli(1, "get", "/netns/after", via=addr[4])) == ["v-after"]
        note("after the reconnect: find-peer of node 4, gets through it, put from it")
        for p in procs:
            assert p.p.poll() is None, f"{p.args} exited: {''.join(p.stderr[-20:])}"
    finally:
        for p in procs:
            p.stop()
        print("\n".join(timings))
