#!/usr/bin/env python3
"""Bootstrap-server throughput: FIND_NODE requests over Noise+Yamux on loopback.

    python bench/findnode_bench.py [--quick] [--json] [--runs 5] [--loop uvloop|asyncio|both]
                                   [--peers N] [--duration S] [--profile cprofile|pyinstrument]

The server is a kadfast ``KadNode`` in a child process of its own
(``python bench/findnode_bench.py --serve --loop KIND``), driven through the
interop harness's ``Peer`` (ready line, ``stats``, ``stop``) as in
``bench/net_bench.py``. Before it starts listening it has met ``--peers``
random peers (default 1,000): each one added with an address
(``add_address``) and marked connected (``_update_peer(..., connected=True)``),
so its routing table is as full as random peers make it (~150 entries) and
every FIND_NODE reply carries 20 peers with an address. Its periodic
bootstrap is pushed out of the run (it would dial the made-up addresses).

The load generator is this process (so it never shares a loop or a CPU slot
with the server): a raw kadfast client on uvloop that does only the wire
work -- a kadfast ``Host`` and its streams, requests pre-encoded (a pool of
FIND_NODE frames for random keys), replies counted by splitting the stream
into frames with ``MessageReader``, never decoded (the first replies of every
case are decoded once and checked to carry 20 peers with addresses).

Cases, each for ``--duration`` seconds after a warm-up:

* ``reused/1``   one stream, one request at a time (request/reply ping-pong)
* ``reused/32``  one stream, 32 requests in flight (pipelined)
* ``new/1``      a new stream per request (multistream negotiation, request,
                 half-close, reply), one at a time
* ``new/32``     the same with 32 requests in flight (32 concurrent streams)

Per case: requests per second, and the CPU time (``/proc/<pid>/stat``
utime+stime, 10 ms ticks) the server and this client spent per request.
``--runs N`` repeats every case N times against the same server (the cases
interleaved) and reports the medians. The target: at most 50 us of server CPU
per FIND_NODE on a reused stream (median of 5 runs).

``--profile cprofile|pyinstrument`` runs the server under that profiler and
prints its report (written by the server when it stops) after the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    KAD_PROTOCOL,
    ROOT,
    case_pipelined,
    count_loop_errors,
    fill_table,
    install_log_counter,
    kadfast_server_peer,
    load_harness,
    log_progress,
    make_emitter,
    print_case_table,
    random_peer_id,
    raw_client,
    ready_line,
    run_cases,
    run_server,
    short_error,
    start_control,
    summarize,
)

sys.path.insert(0, str(ROOT))

CASES = [("reused", 1), ("reused", 32), ("new", 1), ("new", 32)]
TARGET_US = 50.0
REQUEST_POOL = 512


# --------------------------------------------------------------------------
# the server (child process)
# --------------------------------------------------------------------------


def serve(loop_kind: str, n_peers: int, profiler: str | None, profile_out: str | None) -> int:
    from kadfast.kad.node import Config, KadNode
    from kadfast.net import HostConfig

    counter = install_log_counter()
    emit = make_emitter()

    prof = None
    if profiler == "cprofile":
        import cProfile

        # CPU time, not wall time: on a busy machine a send() that wakes the
        # client often costs the server its CPU slot, which is not its work
        prof = cProfile.Profile(time.process_time)
    elif profiler == "pyinstrument":
        import pyinstrument

        prof = pyinstrument.Profiler(interval=0.0005, async_mode="disabled")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop_errors = count_loop_errors(loop)
        cfg = Config(periodic_bootstrap_interval=1e12)
        node = KadNode(config=cfg, host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
        t0 = time.perf_counter()
        size = fill_table(node, n_peers)
        fill_s = time.perf_counter() - t0
        node._last_bootstrap = node.clock()  # no bootstrap lookups towards the made-up peers
        await node.start()
        done = asyncio.Event()

        def profile_start(req) -> dict:
            if prof is not None:
                prof.enable() if profiler == "cprofile" else prof.start()
            return {"profiling": prof is not None}

        def profile_stop(req) -> dict:
            if prof is not None:
                prof.disable() if profiler == "cprofile" else prof.stop()
            return {}

        start_control(loop, emit, done, {
            "stats": lambda req: {
                "routing_table": len(node.table),
                "connections": node.host.connection_count(),
                "loop_errors": dict(loop_errors.most_common(10)),
                "log": counter.summary(),
            },
            "profile_start": profile_start,
            "profile_stop": profile_stop,
        })
        emit(ready_line(loop_kind, loop, node.peer_id, node.listen_addrs,
                        routing_table=size, peers_met=n_peers, fill_seconds=round(fill_s, 3)))
        try:
            await done.wait()
        finally:
            await node.stop()

    try:
        return run_server(main, loop_kind, emit)
    finally:
        if prof is not None and profile_out:
            write_profile(prof, profiler, profile_out)


def write_profile(prof, profiler: str, path: str) -> None:
    import io

    if profiler == "cprofile":
        import pstats

        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.sort_stats("tottime").print_stats(35)
        buf.write("\n")
        st.sort_stats("cumulative").print_stats(35)
        text = buf.getvalue()
    else:
        text = prof.output_text(unicode=False, color=False, show_all=False)
    Path(path).write_text(text)


# --------------------------------------------------------------------------
# the load generator (this process)
# --------------------------------------------------------------------------


def request_frames(n: int) -> list[bytes]:
    from kadfast.kad.pb import KadMessage, MessageType, encode_message, frame

    out = []
    for _ in range(n):
        key = random_peer_id().to_bytes()
        out.append(frame(encode_message(KadMessage(MessageType.FIND_NODE, key=key))))
    return out


def check_reply(body: bytes, k: int = 20) -> None:
    from kadfast.kad.pb import MessageType, decode_message

    msg = decode_message(body)
    if msg.type != MessageType.FIND_NODE:
        raise RuntimeError(f"reply of type {msg.type!r}")
    with_addrs = [p for p in msg.closer_peers if p.addrs]
    if len(msg.closer_peers) != k or len(with_addrs) != k:
        raise RuntimeError(f"reply carries {len(msg.closer_peers)} peers, {len(with_addrs)} with addresses; want {k}")


async def case_reused(host, pid, frames, inflight: int, warmup: float, duration: float, win) -> dict:
    return await case_pipelined(host, pid, frames, inflight, warmup, duration, win, lambda i, body: check_reply(body))


async def case_new(host, pid, frames, inflight: int, warmup: float, duration: float, win) -> dict:
    from kadfast.kad.pb import MessageReader

    loop = asyncio.get_running_loop()
    nf = len(frames)
    counter = [0]
    state = {"phase": 0, "t_next": loop.time() + warmup, "checked": 0}

    async def one(frame: bytes) -> None:
        stream = await host.new_stream(pid, KAD_PROTOCOL)
        stream.write(frame)
        stream.close()
        reader = MessageReader(1 << 20)
        while True:
            data = await stream.read()
            if not data:
                raise RuntimeError("stream ended without a reply")
            bodies = reader.feed(data)
            if bodies:
                if state["checked"] < 3:
                    check_reply(bodies[0])
                    state["checked"] += 1
                return

    async def worker() -> None:
        while state["phase"] < 2:
            i = counter[0]
            counter[0] = i + 1
            await one(frames[i % nf])
            win.replies += 1
            now = loop.time()
            if now >= state["t_next"]:
                if state["phase"] == 0:
                    state["phase"] = 1
                    win.start()
                    state["t_next"] = now + duration
                else:
                    state["phase"] = 2

    await asyncio.gather(*[worker() for _ in range(inflight)])
    return win.stop()


async def bench_server(server_pid: int, maddr: str, peer_id: str, opts) -> list[dict]:
    """All cases, ``opts.runs`` times (interleaved); one dict per run and case."""
    frames = request_frames(REQUEST_POOL)
    async with raw_client(maddr, peer_id) as (host, pid):
        def run_case(kind, inflight, win):
            fn = case_reused if kind == "reused" else case_new
            return fn(host, pid, frames, inflight, opts.warmup, opts.duration, win)

        return await run_cases(server_pid, opts, run_case, 60)


def run_one(harness, label: str, loop_kind: str, opts) -> dict:
    from kadfast.loop import run as run_loop

    args = ["--loop", loop_kind, "--peers", str(opts.peers)]
    profile_out = None
    if opts.profile:
        profile_out = f"/tmp/findnode_bench_profile_{os.getpid()}_{loop_kind}.txt"
        args += ["--profiler", opts.profile, "--profile-out", profile_out]
    peer = kadfast_server_peer(harness, __file__, label, *args)
    res: dict[str, Any] = {}
    try:
        peer.start(timeout=120)
        res["server"] = {k: peer.ready.get(k) for k in ("impl", "loop", "routing_table", "peers_met", "fill_seconds")}
        if opts.profile:
            peer.call("profile_start", timeout=10)
        samples = run_loop(lambda: bench_server(peer.proc.pid, peer.maddr, peer.peer_id, opts), "uvloop")
        if opts.profile:
            peer.call("profile_stop", timeout=30)
        res["samples"] = samples
        res["cases"] = summarize(samples, keep_all=("per_s", "server_cpu_us"))
        with contextlib.suppress(Exception):
            res["server_stats"] = peer.call("stats", timeout=10)
    except Exception as exc:
        res["error"] = short_error(exc)
        res["stderr"] = peer.stderr_tail(10) if peer.proc else ""
    finally:
        with contextlib.suppress(Exception):
            peer.stop(timeout=60 if opts.profile else 10)
    if profile_out and os.path.exists(profile_out):
        res["profile"] = Path(profile_out).read_text()
        os.unlink(profile_out)
    return res


def run_bench(opts) -> dict:
    harness = load_harness()
    install_log_counter()
    loops = ["uvloop", "asyncio"] if opts.loop == "both" else [opts.loop]
    results = {}
    for kind in loops:
        label = f"kadfast/{kind}"
        log_progress(f"findnode_bench: {label} ...")
        results[label] = run_one(harness, label, kind, opts)
    verdict = {}
    for label, res in results.items():
        for case in ("reused/1", "reused/32"):
            v = res.get("cases", {}).get(case, {}).get("server_cpu_us")
            if v is not None:
                verdict[f"{label} {case}"] = v <= TARGET_US
    return {
        "config": {
            "quick": opts.quick,
            "runs": opts.runs,
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "peers_met": opts.peers,
            "cases": [f"{k}/{n}" for k, n in opts.cases],
            "client": "raw kadfast client on uvloop in this process: pre-encoded FIND_NODE frames, "
                      "replies counted by MessageReader framing, not decoded",
            "cpus": os.cpu_count(),
            "target_server_cpu_us_reused": TARGET_US,
        },
        "servers": results,
        "target_met": verdict,
    }


def print_table(report: dict) -> None:
    cfg = report["config"]
    servers = report["servers"]
    print(
        f"\nfindnode_bench: FIND_NODE over Noise+Yamux on loopback, {cfg['cpus']} CPUs; server = kadfast KadNode in a "
        f"child process that met {cfg['peers_met']} random peers; {cfg['runs']} run(s) x {cfg['duration_s']:g}s per case, "
        f"medians"
    )
    print(f"load generator: {cfg['client']}")
    for label, res in servers.items():
        if "error" in res:
            print(f"\n{label}: ERROR {res['error']}\n{res.get('stderr', '')}")
            continue
        srv = res.get("server", {})
        print(f"\n{label} (routing table {srv.get('routing_table')} entries; every reply checked to carry 20 peers)")
        print_case_table(res.get("cases", {}))
        st = res.get("server_stats")
        if isinstance(st, dict):
            if st.get("loop_errors"):
                print(f"  server loop errors: {st['loop_errors']}")
            for item in st.get("log", []):
                print(f"  server log x{item['count']}: {item['example']}")
    if report.get("target_met"):
        print(f"\ntarget (server CPU <= {TARGET_US:g} us per FIND_NODE on a reused stream): "
              + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in report["target_met"].items()))
    for label, res in servers.items():
        if res.get("profile"):
            print(f"\n--- server profile, {label} ---\n{res['profile']}")
    print()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short cases (1 s each)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--runs", type=int, default=1, help="repeat every case and report the medians")
    ap.add_argument("--loop", choices=["uvloop", "asyncio", "both"], default="both",
                    help="event loop(s) of the kadfast server (the client always uses uvloop)")
    ap.add_argument("--peers", type=int, default=1000, help="random peers the server has met")
    ap.add_argument("--duration", type=float, default=None, help="measured seconds per case")
    ap.add_argument("--cases", default=None, help="comma list of cases, e.g. reused/32,new/1 (default: all four)")
    ap.add_argument("--profile", choices=["cprofile", "pyinstrument"], default=None,
                    help="profile the server while the cases run; the report is printed at the end")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--profiler", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", default=None, help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.serve:
        return opts
    if opts.duration is None:
        opts.duration = 1.0 if opts.quick else 3.0
    opts.warmup = 0.3 if opts.quick else 0.5
    if opts.cases:
        opts.cases = [(c.split("/")[0], int(c.split("/")[1])) for c in opts.cases.split(",") if c.strip()]
        bad = [c for c in opts.cases if c[0] not in ("reused", "new") or c[1] < 1]
        if bad:
            ap.error(f"bad case(s) {bad}")
    else:
        opts.cases = list(CASES)
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.serve:
        return serve("uvloop" if opts.loop == "both" else opts.loop, opts.peers, opts.profiler, opts.profile_out)
    report = run_bench(opts)
    if opts.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)
    return 0 if all("error" not in r for r in report["servers"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
