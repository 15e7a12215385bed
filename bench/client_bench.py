#!/usr/bin/env python3
"""FIND_NODE as real clients send it: js-libp2p, go-libp2p and rust-libp2p
load generators against every server, same run.

    python bench/client_bench.py [--clients js,go,rust] [--servers kadfast,rust,go,js,py|all]
                                 [--cases new/1,new/16,reused/1,reused/16] [--runs 5]
                                 [--duration 3] [--peers 1000] [--json] [--quick]

``bench/findnode_bench.py`` measures every server with one load generator, a
raw kadfast client. Real peers bring their own Noise, Yamux and
multistream-select, and open streams their own way; this benchmark puts
each of them in front of each server.

The clients (``--clients``) are the interop peer programs of
``tests/interop/peers/`` started with ``--client`` and driven by their
``kad_load`` command (``tests/interop/peers/PROTOCOL.md``): for
``duration`` seconds, ``inflight`` workers send FIND_NODE requests for
random PeerIds over one connection, and the peer reports how many were
answered and their latency (p50, p99, from the stream's opening or the
request's write to the last byte of the reply):

* ``rust``: a new stream per request through libp2p-kad's own client (a
  ``get_closest_peers`` query with only the server to ask), a reused stream
  through ``libp2p-stream``;
* ``go``: a reused stream through go-libp2p-kad-dht's own message sender
  (one per worker), a new stream through ``host.NewStream`` and go-msgio;
* ``js``: js-libp2p streams (``dialProtocol``) framed as @libp2p/kad-dht
  frames them.

The servers (``--servers``): ``kadfast`` is a kadfast ``KadNode`` on uvloop
in a child process, set up as in ``bench/findnode_bench.py --serve`` (it
has met ``--peers`` random peers, its per-peer read limit is off since all
the load comes from one peer); ``rust``, ``go``, ``js``, ``py`` are the
interop peers after ``kad_fill`` (see ``bench/findnode_bench.py``). Every
reply carries 20 peers with addresses.

Cases (``--cases``): ``new/N`` a new stream per request, ``reused/N`` one
stream per worker, ``N`` requests in flight (default 1 and 16). For each
client, every server is started once; then ``--runs`` rounds, each
running every case against every server in turn (so the servers see the
same machine load), a warm-up call before each measured one. The server
CPU is its process's utime+stime (all threads) over the measured call,
divided by the requests answered. Reported per client, server and case:
the medians over the runs of requests/s, server CPU per request, p50 and
p99 latency, and kadfast's figures over rust-libp2p's and go-libp2p's.

Targets (issue: performance as real clients see it), per client js, go,
rust, medians of 5: kadfast's server CPU per request at or below rust's
and go's in all four cases; its requests/s at or above theirs with 16 in
flight; its p50 at or below rust's.

The machine has 2 cores: the client and the server share them, so a slow
client (js) limits the rate, and a server's CPU per request includes what
waking that client costs it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import findnode_bench
from _common import kadfast_server_peer, load_harness, log_progress, proc_cpu, short_error

ALL_SERVERS = ["kadfast", "rust", "go", "js", "py"]
ALL_CLIENTS = ["js", "go", "rust"]
DEFAULT_CASES = ["new/1", "new/16", "reused/1", "reused/16"]
NAMES = {"kadfast": "kadfast/uvloop", "rust": "rust-libp2p", "go": "go-libp2p", "js": "js-libp2p", "py": "py-libp2p"}
FIELDS = ("per_s", "server_cpu_us", "p50_ms", "p99_ms")


class Server:
    """One server process, started once per client."""

    def __init__(self, harness, impl: str, opts) -> None:
        self.impl = impl
        self.peer = None
        self.pid = 0
        self.description = ""
        self.info: dict[str, Any] = {}
        if impl == "kadfast":
            self.peer = kadfast_server_peer(harness, findnode_bench.__file__, "kadfast-server",
                                            "--loop", "uvloop", "--peers", str(opts.peers))
            self.peer.start(timeout=120)
            self.pid = self.peer.proc.pid
            self.description = "kadfast KadNode on uvloop"
            self.info = {k: self.peer.ready.get(k) for k in ("routing_table", "peers_met")}
        else:
            build = harness.build_for(impl).ensure()
            self.peer = harness.Peer(impl, build.argv, cwd=build.cwd, name=f"{impl}-server")
            self.peer.start(timeout=120)
            fill = self.peer.call("kad_fill", count=opts.peers, timeout=300)
            self.pid = findnode_bench.working_pid(self.peer.proc.pid)
            self.description = findnode_bench.impl_description(harness, impl)
            self.info = {"routing_table": fill.get("routing_table"), "peers_met": opts.peers}
            time.sleep(findnode_bench.FILL_SETTLE_S)

    @property
    def addr(self) -> str:
        return self.peer.maddr  # with its /p2p/ suffix

    def stop(self) -> None:
        if self.peer is not None:
            with contextlib.suppress(Exception):
                self.peer.stop(timeout=10)


def parse_case(case: str) -> tuple[str, int]:
    mode, _, n = case.partition("/")
    if mode not in ("new", "reused") or not n.isdigit() or not 1 <= int(n) <= 256:
        raise ValueError(f"bad case {case!r} (want new/N or reused/N, N in 1..256)")
    return mode, int(n)


def measure(client, server: Server, case: str, duration: float, warmup: float, seed: int) -> dict:
    """One warm-up call and one measured ``kad_load`` call of ``client``
    against ``server``; the server's CPU over the measured one."""
    mode, inflight = parse_case(case)
    args = {"addr": server.addr, "mode": mode, "inflight": inflight, "seed": seed}
    if warmup > 0:
        client.call("kad_load", duration=warmup, timeout=warmup + 60, **args)
    c0 = proc_cpu(server.pid)
    r = client.call("kad_load", duration=duration, timeout=duration + 60, **args)
    c1 = proc_cpu(server.pid)
    n = r.get("requests") or 0
    out: dict[str, Any] = {"case": case, "requests": n, "errors": r.get("errors", 0),
                           "closer_peers": r.get("closer_peers")}
    if r.get("error"):
        out["first_error"] = r["error"]
    elapsed = r.get("elapsed") or duration
    if n:
        out["per_s"] = round(n / elapsed, 1)
        if c0 is not None and c1 is not None:
            out["server_cpu_us"] = round((c1 - c0) / n * 1e6, 1)
        out["p50_ms"] = r.get("p50_ms")
        out["p99_ms"] = r.get("p99_ms")
    else:
        out["error"] = r.get("error") or "no request answered"
    if r.get("closer_peers") not in (None, 20):
        out["warning"] = f"the first reply carried {r.get('closer_peers')} peers, not 20"
    return out


def median_cells(samples: list[dict]) -> dict:
    good = [s for s in samples if "error" not in s]
    cell: dict[str, Any] = {"runs": len(good)}
    for f in FIELDS:
        vals = [s[f] for s in good if s.get(f) is not None]
        if vals:
            cell[f] = round(statistics.median(vals), 3 if f.endswith("_ms") else 1)
            cell[f + "_all"] = vals
    errs = sum(s.get("errors", 0) for s in samples)
    if errs:
        cell["request_errors"] = errs
        cell["first_error"] = next((s["first_error"] for s in samples if s.get("first_error")), None)
    failed = [s["error"] for s in samples if "error" in s]
    if failed:
        cell["failed"] = failed[0]
    return cell


def run_client(harness, client_impl: str, opts) -> dict:
    """Every case of one client implementation against every server: one
    client process per server (rust's kad client must have that server
    alone in its routing table), each server started once."""
    res: dict[str, Any] = {"servers": {}}
    servers: dict[str, Server] = {}
    clients: dict[str, Any] = {}
    try:
        build = harness.build_for(client_impl).ensure()
        res["client"] = findnode_bench.impl_description(harness, client_impl)
        for impl in opts.servers:
            try:
                servers[impl] = Server(harness, impl, opts)
                client = harness.Peer(client_impl, [*build.argv, "--client"], cwd=build.cwd,
                                      name=f"{client_impl}-client-{impl}")
                clients[impl] = client
                client.start(timeout=120)
                res["servers"][impl] = {"description": servers[impl].description, **servers[impl].info,
                                        "samples": []}
            except Exception as exc:
                res["servers"][impl] = {"error": short_error(exc)}
                servers.pop(impl, None)
        for run in range(opts.runs):
            for case in opts.cases:
                for impl, server in servers.items():
                    entry = res["servers"][impl]
                    try:
                        s = measure(clients[impl], server, case, opts.duration, opts.warmup, seed=run)
                    except Exception as exc:
                        s = {"case": case, "error": short_error(exc)}
                    entry["samples"].append(s)
                    log_progress(f"  {client_impl} client, run {run + 1}/{opts.runs}, {case} -> {impl}: "
                                 + (s.get("error") or f"{s['per_s']:.0f} req/s, server {s.get('server_cpu_us')} "
                                    f"us/req, p50 {s['p50_ms']:.3f} ms, p99 {s['p99_ms']:.3f} ms, "
                                    f"errors {s['errors']}"))
        for entry in res["servers"].values():
            if "samples" in entry:
                entry["cases"] = {case: median_cells([s for s in entry["samples"] if s["case"] == case])
                                  for case in opts.cases}
    except Exception as exc:
        res["error"] = short_error(exc)
    finally:
        for client in clients.values():
            with contextlib.suppress(Exception):
                client.stop(timeout=10)
        for server in servers.values():
            server.stop()
    return res


def verdicts(report: dict) -> dict:
    """kadfast against rust and go, per client and case, and the targets."""
    out: dict[str, Any] = {}
    for cl, res in report["clients"].items():
        kf = res.get("servers", {}).get("kadfast", {}).get("cases")
        if not kf:
            continue
        for other in ("rust", "go"):
            oc = res["servers"].get(other, {}).get("cases")
            if not oc:
                continue
            for case, cell in kf.items():
                o = oc.get(case, {})
                if not cell.get("server_cpu_us") or not o.get("server_cpu_us"):
                    continue
                key = f"{cl} client, {case}, kadfast vs {other}"
                row = {"cpu_ratio": round(cell["server_cpu_us"] / o["server_cpu_us"], 2),
                       "rate_ratio": round(cell["per_s"] / o["per_s"], 2),
                       "p50_ratio": round(cell["p50_ms"] / o["p50_ms"], 2) if o.get("p50_ms") else None}
                checks = {"cpu <= theirs": row["cpu_ratio"] <= 1.0}
                if case.endswith("/16"):
                    checks["req/s >= theirs"] = row["rate_ratio"] >= 1.0
                if other == "rust" and row["p50_ratio"] is not None:
                    checks["p50 <= rust's"] = row["p50_ratio"] <= 1.0
                row["met"] = checks
                out[key] = row
    return out


def run_bench(opts) -> dict:
    harness = load_harness()
    t0 = time.monotonic()
    report: dict[str, Any] = {"config": {"clients": opts.clients, "servers": opts.servers, "cases": opts.cases,
                                         "runs": opts.runs, "duration": opts.duration, "warmup": opts.warmup,
                                         "peers": opts.peers},
                              "clients": {}}
    for cl in opts.clients:
        log_progress(f"client_bench: {cl} client against {', '.join(opts.servers)}")
        report["clients"][cl] = run_client(harness, cl, opts)
    report["versus"] = verdicts(report)
    report["elapsed_s"] = round(time.monotonic() - t0, 1)
    return report


def print_table(report: dict) -> None:
    cfg = report["config"]
    print(f"\nclient_bench: FIND_NODE, 20 peers per reply, {cfg['runs']} runs of {cfg['duration']} s per case; "
          "medians: requests/s | server CPU per request | p50 / p99 latency")
    for cl, res in report["clients"].items():
        print(f"\n{cl} client: {res.get('client', '?')}")
        if res.get("error"):
            print(f"  ERROR: {res['error']}")
        head = f"  {'server':<16}" + "".join(f"{c:>34}" for c in cfg["cases"])
        print(head)
        print("  " + "-" * (len(head) - 2))
        for impl, entry in res.get("servers", {}).items():
            if "cases" not in entry:
                print(f"  {NAMES.get(impl, impl):<16}  failed: {entry.get('error')}")
                continue
            cells = []
            for c in cfg["cases"]:
                cell = entry["cases"].get(c, {})
                if "per_s" not in cell:
                    cells.append(f"{'fails: ' + str(cell.get('failed', '?'))[:26]:>34}")
                    continue
                cells.append(f"{cell['per_s']:>8.0f} |{cell.get('server_cpu_us', 0):>6.0f} us |"
                             f"{cell['p50_ms']:>5.2f} /{cell['p99_ms']:>6.2f} ms")
            print(f"  {NAMES.get(impl, impl):<16}" + "".join(f"{x:>34}" for x in cells))
        for impl, entry in res.get("servers", {}).items():
            for c, cell in entry.get("cases", {}).items():
                if cell.get("request_errors"):
                    print(f"    {impl} {c}: {cell['request_errors']} failed requests, e.g. {cell.get('first_error')}")
    if report.get("versus"):
        print("\nkadfast over rust-libp2p / go-libp2p (server CPU per request, requests/s, p50):")
        for key, row in report["versus"].items():
            met = ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in row["met"].items())
            print(f"  {key:<40} cpu {row['cpu_ratio']:.2f}x  req/s {row['rate_ratio']:.2f}x  "
                  f"p50 {row['p50_ratio'] if row['p50_ratio'] is not None else '-'}x   {met}")
    print(f"(run took {report.get('elapsed_s')} s)\n")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default=",".join(ALL_CLIENTS), help="comma list from js,go,rust")
    ap.add_argument("--servers", default="kadfast,rust,go", help="comma list from kadfast,rust,go,js,py, or all")
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma list of new/N and reused/N")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", type=float, default=3.0, help="measured seconds per case")
    ap.add_argument("--warmup", type=float, default=0.5, help="seconds of load before each measured call")
    ap.add_argument("--peers", type=int, default=1000, help="random peers each server has met")
    ap.add_argument("--quick", action="store_true", help="1 run of 1 s per case")
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args(argv)
    opts.clients = [c for c in opts.clients.split(",") if c]
    opts.servers = ALL_SERVERS if opts.servers == "all" else [s for s in opts.servers.split(",") if s]
    opts.cases = [c for c in opts.cases.split(",") if c]
    for c in opts.clients:
        if c not in ALL_CLIENTS:
            ap.error(f"unknown client {c!r}")
    for s in opts.servers:
        if s not in ALL_SERVERS:
            ap.error(f"unknown server {s!r}")
    try:
        for c in opts.cases:
            parse_case(c)
    except ValueError as exc:
        ap.error(str(exc))
    if opts.quick:
        opts.runs, opts.duration, opts.warmup = 1, 1.0, 0.3
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    report = run_bench(opts)
    if opts.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)
    failed = any(res.get("error") for res in report["clients"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
