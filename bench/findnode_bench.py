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
import collections
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from net_bench import (  # noqa: E402
    install_log_counter,
    load_harness,
    log_progress,
    machine_busy,
    proc_cpu,
    short_error,
)

KAD_PROTOCOL = "/ipfs/kad/1.0.0"
CASES = [("reused", 1), ("reused", 32), ("new", 1), ("new", 32)]
TARGET_US = 50.0
REQUEST_POOL = 512
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_sys_cpu(pid: int) -> float | None:
    """stime (kernel time) of a process in seconds, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[12]) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


# --------------------------------------------------------------------------
# the server (child process)
# --------------------------------------------------------------------------


def fill_table(node, n: int) -> int:
    """Make ``node`` meet ``n`` random peers, each with one address, all
    marked connected. Returns the routing-table size."""
    from kadfast.peerid import PeerId

    now = node.clock()
    for i in range(n):
        pid = PeerId(bytes.fromhex("002408011220") + os.urandom(32))
        addr = f"/ip4/10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}/tcp/4001"
        node.add_address(pid, addr)
        node._update_peer(pid, now, connected=True)
    return len(node.table)


def serve(loop_kind: str, n_peers: int, profiler: str | None, profile_out: str | None) -> int:
    from kadfast.kad.node import Config, KadNode
    from kadfast.loop import run as run_loop
    from kadfast.net import HostConfig

    counter = install_log_counter()
    out_lock = threading.Lock()

    def emit(obj: dict) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

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
        loop_errors: collections.Counter[str] = collections.Counter()

        def on_loop_error(lp, ctx):
            exc = ctx.get("exception")
            loop_errors[short_error(exc) if exc else str(ctx.get("message"))[:200]] += 1

        loop.set_exception_handler(on_loop_error)
        cfg = Config(periodic_bootstrap_interval=1e12)
        node = KadNode(config=cfg, host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
        t0 = time.perf_counter()
        size = fill_table(node, n_peers)
        fill_s = time.perf_counter() - t0
        node._last_bootstrap = node.clock()  # no bootstrap lookups towards the made-up peers
        await node.start()
        done = asyncio.Event()

        def on_line(line: str | None) -> None:
            if line is None:
                done.set()
                return
            try:
                req = json.loads(line)
            except ValueError:
                return
            cmd, rid = req.get("cmd"), req.get("id")
            if cmd == "stop":
                emit({"id": rid, "ok": True, "result": {}})
                done.set()
            elif cmd == "stats":
                emit({"id": rid, "ok": True, "result": {
                    "routing_table": len(node.table),
                    "connections": node.host.connection_count(),
                    "loop_errors": dict(loop_errors.most_common(10)),
                    "log": counter.summary(),
                }})
            elif cmd == "profile_start":
                if prof is not None:
                    prof.enable() if profiler == "cprofile" else prof.start()
                emit({"id": rid, "ok": True, "result": {"profiling": prof is not None}})
            elif cmd == "profile_stop":
                if prof is not None:
                    prof.disable() if profiler == "cprofile" else prof.stop()
                emit({"id": rid, "ok": True, "result": {}})
            else:
                emit({"id": rid, "ok": False, "error": f"unsupported: {cmd}"})

        def read_stdin() -> None:
            for raw in sys.stdin:
                if raw.strip():
                    loop.call_soon_threadsafe(on_line, raw)
            loop.call_soon_threadsafe(on_line, None)

        threading.Thread(target=read_stdin, daemon=True).start()
        emit({
            "event": "ready",
            "impl": f"kadfast/{loop_kind}",
            "loop": type(loop).__module__,
            "peer_id": str(node.peer_id),
            "addrs": [str(a) for a in node.listen_addrs],
            "routing_table": size,
            "peers_met": n_peers,
            "fill_seconds": round(fill_s, 3),
        })
        try:
            await done.wait()
        finally:
            await node.stop()

    try:
        run_loop(main, loop_kind)
    except Exception as exc:  # pragma: no cover - reported to the parent
        emit({"event": "fatal", "error": short_error(exc)})
        return 1
    finally:
        if prof is not None and profile_out:
            write_profile(prof, profiler, profile_out)
    return 0


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
    from kadfast.peerid import PeerId

    out = []
    for _ in range(n):
        key = PeerId(bytes.fromhex("002408011220") + os.urandom(32)).to_bytes()
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


class Window:
    """The measured part of a case: counts replies between start() and stop()."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.replies = 0
        self.t0 = self.cs0 = self.cc0 = self.busy0 = None
        self.result: dict | None = None

    def start(self) -> None:
        self.replies = 0
        self.cs0, self.cc0, self.busy0 = proc_cpu(self.server_pid), proc_cpu(), machine_busy()
        self.sys0 = proc_sys_cpu(self.server_pid)
        self.t0 = time.perf_counter()

    def stop(self) -> dict:
        dt = time.perf_counter() - self.t0
        cs, cc, busy = proc_cpu(self.server_pid), proc_cpu(), machine_busy()
        sys1 = proc_sys_cpu(self.server_pid)
        n = self.replies
        s_cpu = cs - self.cs0 if cs is not None and self.cs0 is not None else None
        c_cpu = cc - self.cc0 if cc is not None and self.cc0 is not None else None
        other = (busy - self.busy0 - (s_cpu or 0) - (c_cpu or 0)) / dt if busy is not None and self.busy0 is not None else None
        return {
            "requests": n,
            "seconds": round(dt, 3),
            "per_s": round(n / dt, 1),
            "server_cpu_us": round(s_cpu / n * 1e6, 2) if s_cpu is not None and n else None,
            "server_sys_us": round((sys1 - self.sys0) / n * 1e6, 2) if sys1 is not None and self.sys0 is not None and n else None,
            "client_cpu_us": round(c_cpu / n * 1e6, 2) if c_cpu is not None and n else None,
            "server_util": round(s_cpu / dt, 2) if s_cpu is not None else None,
            "other_util": round(other, 2) if other is not None else None,
        }


async def case_reused(host, pid, frames, inflight: int, warmup: float, duration: float, win: Window) -> dict:
    from kadfast.kad.pb import MessageReader

    loop = asyncio.get_running_loop()
    stream = await host.new_stream(pid, KAD_PROTOCOL)
    reader = MessageReader(1 << 20)
    feed = reader.feed
    write = stream.write
    nf = len(frames)
    i = 0
    checked = 0
    for _ in range(inflight):
        write(frames[i % nf])
        i += 1
    outstanding = inflight
    phase = 0  # 0 warm-up, 1 measuring, 2 draining
    t_next = loop.time() + warmup
    try:
        while outstanding:
            data = await stream.read()
            if not data:
                raise RuntimeError("server closed the stream")
            bodies = feed(data)
            got = len(bodies)
            if checked < 3:
                for b in bodies[: 3 - checked]:
                    check_reply(b)
                checked += min(got, 3)
            outstanding -= got
            win.replies += got
            if phase < 2:
                now = loop.time()
                if now >= t_next:
                    if phase == 0:
                        phase = 1
                        win.start()
                        t_next = now + duration
                    else:
                        phase = 2
                        continue
                for _ in range(got):
                    write(frames[i % nf])
                    i += 1
                outstanding += got
    finally:
        stream.close()
    return win.stop()


async def case_new(host, pid, frames, inflight: int, warmup: float, duration: float, win: Window) -> dict:
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
    from kadfast import Multiaddr, PeerId
    from kadfast.net import Host, HostConfig

    host = Host(config=HostConfig())
    await host.start()
    pid = PeerId.from_string(peer_id)
    frames = request_frames(REQUEST_POOL)
    out = []
    try:
        await asyncio.wait_for(host.dial(Multiaddr(maddr)), 20)
        await host.identify(pid, timeout=10)
        for run in range(opts.runs):
            for kind, inflight in opts.cases:
                fn = case_reused if kind == "reused" else case_new
                win = Window(server_pid)
                try:
                    res = await asyncio.wait_for(
                        fn(host, pid, frames, inflight, opts.warmup, opts.duration, win), opts.duration + 60
                    )
                except (asyncio.TimeoutError, Exception) as exc:
                    res = {"error": "timed out" if isinstance(exc, asyncio.TimeoutError) else short_error(exc)}
                res.update(run=run, case=f"{kind}/{inflight}")
                out.append(res)
                log_progress(f"  run {run + 1}/{opts.runs} {kind}/{inflight}: "
                             + (res.get("error") or f"{res['per_s']:.0f} req/s, server {res['server_cpu_us']} us/req"))
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(host.close(), 5)
    return out


def summarize(samples: list[dict]) -> dict:
    by_case: dict[str, list[dict]] = collections.defaultdict(list)
    for s in samples:
        by_case[s["case"]].append(s)
    out = {}
    for case, rows in by_case.items():
        good = [r for r in rows if "error" not in r]
        entry: dict[str, Any] = {"runs": len(good)}
        for f in ("per_s", "server_cpu_us", "server_sys_us", "client_cpu_us", "server_util", "other_util"):
            vals = [r[f] for r in good if r.get(f) is not None]
            if vals:
                entry[f] = round(statistics.median(vals), 2)
                if f in ("per_s", "server_cpu_us"):
                    entry[f + "_all"] = vals
        errs = [r["error"] for r in rows if "error" in r]
        if errs:
            entry["errors"] = dict(collections.Counter(errs))
        out[case] = entry
    return out


def run_one(harness, label: str, loop_kind: str, opts) -> dict:
    from kadfast.loop import run as run_loop

    argv = [sys.executable, str(Path(__file__).resolve()), "--serve", "--loop", loop_kind,
            "--peers", str(opts.peers)]
    profile_out = None
    if opts.profile:
        profile_out = f"/tmp/findnode_bench_profile_{os.getpid()}_{loop_kind}.txt"
        argv += ["--profiler", opts.profile, "--profile-out", profile_out]
    peer = harness.Peer("kadfast", argv, cwd=str(ROOT), name=label)
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
        res["cases"] = summarize(samples)
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
        head = (f"{'case':<12}{'req/s':>10}{'server us/req':>15}{'(kernel)':>10}{'client us/req':>15}"
                f"{'server util':>13}{'other util':>12}")
        print(head)
        print("-" * len(head))
        for case, row in res.get("cases", {}).items():
            def f(key, fmt):
                v = row.get(key)
                return fmt.format(v) if isinstance(v, (int, float)) else "-"
            print(f"{case:<12}{f('per_s', '{:.0f}'):>10}{f('server_cpu_us', '{:.1f}'):>15}{f('server_sys_us', '{:.1f}'):>10}"
                  f"{f('client_cpu_us', '{:.1f}'):>15}{f('server_util', '{:.2f}'):>13}{f('other_util', '{:.2f}'):>12}"
                  + (f"  errors {row['errors']}" if row.get("errors") else ""))
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
