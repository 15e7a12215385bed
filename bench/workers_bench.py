#!/usr/bin/env python3
"""``kadfast server --workers N``: FIND_NODE requests and accepted connections
with 1 and 2 workers, same run, medians of ``--runs`` (default 5).

    python bench/workers_bench.py [--quick] [--json] [--runs 5] [--workers 1,2]
                                  [--duration S] [--connections C] [--inflight K]
                                  [--churn | --no-churn]

The server is the real command (``python -m kadfast server --workers N
--store sqlite:...``), one per worker count, for the whole run (the
worker counts' runs interleaved). Its CPU is that of the whole process tree (the supervisor and every
worker, utime+stime from ``/proc``). When it started, 30 kadfast nodes of this
process join it (one FIND_NODE each), so that every answer carries 20 peers
with an address; they are stopped before the load starts.

* FIND_NODE: this process on uvloop opens ``--connections`` connections
  (default 8; the kernel's SO_REUSEPORT hash spreads them over the workers)
  and keeps ``--inflight`` requests (default 16) in flight on one reused
  stream of each (``case_pipelined`` of ``bench/_common.py``): requests per
  second and server CPU per request.
* Connections (``--churn``, the default when Go is there): the go-libp2p
  churn dialer of ``bench/churn_bench.py`` (one go host per connection: TCP,
  Noise, Yamux, identify both ways, a ping) opens connections for
  ``--duration`` seconds: accepted connections per second and server CPU per
  connection.

On a 2-core machine the load generator shares the cores with the workers,
so throughput with 2 workers cannot double; the report adds a projection
from CPU per unit of work: ``workers / (CPU seconds per unit)``, what N
workers would do with a core each and the load generator elsewhere. The
figure that must hold is the CPU per request and per connection: it must
not rise with the number of workers (the hub's relay is the only extra
work, per routing-table change, not per request).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import Window, case_pipelined, log_progress, proc_cpu  # noqa: E402


def tree_pids(pid: int) -> list[int]:
    out = [pid]
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    return out


def tree_cpu(pid: int) -> float:
    return sum(proc_cpu(p) or 0.0 for p in tree_pids(pid))


class TreeWindow(Window):
    """A measuring window whose server CPU is that of a process tree."""

    def __init__(self, server_pid: int, shared: dict) -> None:
        super().__init__(server_pid)
        self.shared = shared

    def start(self) -> None:
        if self.shared.get("t0") is None:
            self.shared.update(t0=time.perf_counter(), cpu0=tree_cpu(self.server_pid), replies=0)
        self.replies = 0

    def stop(self) -> dict:
        self.shared["replies"] += self.replies
        return {}


class Server:
    def __init__(self, workers: int, tmp: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kadfast", "server", "--workers", str(workers), "--json", "-q",
             "--listen", "/ip4/127.0.0.1/tcp/0", "--max-reads-per-second", "0",
             "--store", f"sqlite:{tmp}/store-{workers}-{time.time_ns()}.db"],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"kadfast server --workers {workers} did not start (exit {self.proc.wait()})")
        ev = json.loads(line)
        self.peer_id = ev["peer_id"]
        self.maddr = ev["addrs"][0]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def join_and_wait(maddr: str, n: int) -> None:
    """``--join MADDR N``: N nodes join the server; "joined" on stdout; they
    stay until stdin closes."""
    nodes = await join_peers(maddr, n)
    await asyncio.sleep(0.5)  # the last routing changes reach every worker
    print("joined", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for node in nodes:
        await node.stop()


async def join_peers(maddr: str, n: int):
    from kadfast import Multiaddr
    from kadfast.kad.node import Config, KadNode
    from kadfast.kad.pb import KadMessage, MessageType
    from kadfast.net import HostConfig

    ma = Multiaddr(maddr)
    pid, addr = ma.peer_id(), ma.without_peer_id()
    nodes = []
    for _ in range(n):
        node = KadNode(config=Config(mode="server"), host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
        await node.start()
        node.add_address(pid, addr)
        await node.request(pid, KadMessage(MessageType.FIND_NODE, key=node.peer_id.to_bytes()))
        nodes.append(node)
    return nodes


async def findnode_run(server: Server, opts) -> dict:
    from findnode_bench import check_reply, request_frames

    from kadfast import Multiaddr, PeerId
    from kadfast.net import Host, HostConfig

    pid = PeerId.from_string(server.peer_id)
    hosts = []
    for _ in range(opts.connections):
        h = Host(config=HostConfig())
        await h.start()
        await asyncio.wait_for(h.dial(Multiaddr(server.maddr)), 20)
        await h.identify(pid, timeout=10)
        hosts.append(h)
    frames = request_frames(256)
    shared: dict = {"t0": None}
    try:
        wins = [TreeWindow(server.proc.pid, shared) for _ in hosts]
        await asyncio.gather(*(case_pipelined(h, pid, frames, opts.inflight, 0.5, opts.duration, w,
                                              lambda i, b: check_reply(b) if opts.check else None)
                               for h, w in zip(hosts, wins)))
        # every connection's window opened within the warm-up; the first opened the shared one
        dt = time.perf_counter() - shared["t0"]
        cpu = tree_cpu(server.proc.pid) - shared["cpu0"]
        n = shared["replies"]
        return {"per_s": round(n / dt, 1), "server_cpu_us": round(cpu / n * 1e6, 2) if n else None,
                "server_util": round(cpu / dt, 2)}
    finally:
        for h in hosts:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(h.close(), 5)


def churn_run(server: Server, dialer, duration: float) -> dict:
    from churn_bench import sleep_until

    lead = 0.5
    start_at = time.time() + lead
    stop_at = start_at + duration
    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(1)
    fut = pool.submit(dialer.peer.call, "churn", addr=server.maddr, start_at=start_at, stop_at=stop_at,
                      concurrency=dialer.concurrency, timeout=duration + lead + 60)
    pool.shutdown(wait=False)
    sleep_until(start_at)
    c0, t0 = tree_cpu(server.proc.pid), time.time()
    sleep_until(stop_at)
    c1, t1 = tree_cpu(server.proc.pid), time.time()
    r = fut.result()
    n, dt, cpu = r["in_window"], t1 - t0, c1 - c0
    return {"conn_per_s": round(n / dt, 1), "server_cpu_ms_per_conn": round(cpu / n * 1e3, 3) if n else None,
            "server_util": round(cpu / dt, 2), "errors": sum(r.get("errors", {}).values())}


def median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def run_bench(opts) -> dict:
    from kadfast.loop import run as run_loop

    harness = None
    if opts.churn:
        from _common import load_harness
        harness = load_harness()
    report: dict = {"config": {"runs": opts.runs, "duration": opts.duration, "connections": opts.connections,
                               "inflight": opts.inflight, "cores": len(os.sched_getaffinity(0))},
                    "servers": {}}
    samples: dict[int, list] = {n: [] for n in opts.workers}
    servers: dict[int, Server] = {}
    dialers: dict = {}
    joiners: list[subprocess.Popen] = []
    try:
        with tempfile.TemporaryDirectory(prefix="kadfast-workers-bench-") as tmp:
            for n in opts.workers:  # one server per worker count, for the whole run
                server = servers[n] = Server(n, tmp)

                # 30 kadfast nodes join it, from a process of their own (a load generator
                # sharing its loop with 30 live nodes saw ~100 ms round trips with the
                # server idle; not understood yet), and stay until the end
                joiners.append(subprocess.Popen([sys.executable, __file__, "--join", server.maddr, "30"],
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
                if joiners[-1].stdout.readline().strip() != "joined":
                    raise RuntimeError("the joining nodes did not join")
                if harness is not None:
                    from churn_bench import GoDialer

                    d = dialers[n] = GoDialer(argparse.Namespace(concurrency=opts.churn_concurrency,
                                                                 identities=opts.churn_concurrency * 4,
                                                                 transport="tcp"), harness)
                    d.prepare(server.maddr, server.peer_id, 0)
                    report["config"]["churn_dialer"] = d.describe()
            for run in range(opts.runs):
                for n in opts.workers:  # interleaved: the machine's noise hits each alike
                    server = servers[n]
                    s = {"findnode": run_loop(lambda server=server: findnode_run(server, opts), "uvloop")}
                    if n in dialers:
                        s["churn"] = churn_run(server, dialers[n], opts.duration)
                    samples[n].append(s)
                    log_progress(f"  run {run + 1}/{opts.runs}, {n} worker(s): {json.dumps(s)}")
    finally:
        for d in dialers.values():
            d.stop()
        for server in servers.values():
            server.stop()
        for j in joiners:
            j.stdin.close()
            j.wait(30)
    for n, ss in samples.items():
        fn = {k: median([s["findnode"][k] for s in ss]) for k in ("per_s", "server_cpu_us", "server_util")}
        fn["projected_per_s"] = round(n / (fn["server_cpu_us"] * 1e-6)) if fn["server_cpu_us"] else None
        row = {"workers": n, "findnode": fn}
        if dialers:
            ch = {k: median([s["churn"][k] for s in ss]) for k in ("conn_per_s", "server_cpu_ms_per_conn", "server_util")}
            ch["projected_per_s"] = round(n / (ch["server_cpu_ms_per_conn"] * 1e-3)) if ch["server_cpu_ms_per_conn"] else None
            row["churn"] = ch
        report["servers"][str(n)] = row
    if len(opts.workers) >= 2:
        one, more = report["servers"][str(opts.workers[0])], report["servers"][str(opts.workers[-1])]
        ratio = {"findnode_per_s": round(more["findnode"]["per_s"] / one["findnode"]["per_s"], 2),
                 "findnode_cpu_per_request": round(more["findnode"]["server_cpu_us"] / one["findnode"]["server_cpu_us"], 2)}
        if dialers:
            ratio["conn_per_s"] = round(more["churn"]["conn_per_s"] / one["churn"]["conn_per_s"], 2)
            ratio["cpu_per_conn"] = round(more["churn"]["server_cpu_ms_per_conn"]
                                          / one["churn"]["server_cpu_ms_per_conn"], 2)
        report["ratio"] = ratio
    return report


def print_table(report: dict) -> None:
    c = report["config"]
    print(f"kadfast server --workers N, {c['cores']} cores, medians of {c['runs']} runs of {c['duration']} s; "
          f"FIND_NODE: {c['connections']} connections x {c['inflight']} in flight")
    print(f"{'workers':>7} {'FIND_NODE/s':>12} {'us CPU/req':>11} {'util':>5} {'projected/s':>12}"
          f" {'conn/s':>8} {'ms CPU/conn':>12} {'projected/s':>12}")
    for row in report["servers"].values():
        f, ch = row["findnode"], row.get("churn", {})
        print(f"{row['workers']:>7} {f['per_s']:>12} {f['server_cpu_us']:>11} {f['server_util']:>5} "
              f"{f['projected_per_s']:>12} {ch.get('conn_per_s', '-'):>8} {ch.get('server_cpu_ms_per_conn', '-'):>12} "
              f"{ch.get('projected_per_s', '-'):>12}")
    if "ratio" in report:
        print("ratios (most workers / one):", json.dumps(report["ratio"]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one run of 1 s (a smoke test)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--workers", default="1,2", help="comma list of worker counts")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--inflight", type=int, default=16)
    p.add_argument("--churn", dest="churn", action="store_true", default=None)
    p.add_argument("--no-churn", dest="churn", action="store_false")
    p.add_argument("--churn-concurrency", type=int, default=32)
    p.add_argument("--no-check", dest="check", action="store_false", help="do not check that replies carry 20 peers")
    opts = p.parse_args(argv)
    opts.workers = [int(x) for x in opts.workers.split(",")]
    if opts.quick:
        opts.runs, opts.duration = 1, 1.0
    if opts.churn is None:
        import shutil
        opts.churn = shutil.which("go") is not None
    return opts


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--join"]:
        from kadfast.loop import run as run_loop
        run_loop(lambda: join_and_wait(argv[1], int(argv[2])), "uvloop")
        return 0
    opts = parse_args(argv)
    report = run_bench(opts)
    if opts.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
