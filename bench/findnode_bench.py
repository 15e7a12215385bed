#!/usr/bin/env python3
"""Bootstrap-server throughput: FIND_NODE requests over Noise+Yamux (or QUIC) on loopback.

    python bench/findnode_bench.py [--quick] [--json] [--runs 5] [--loop uvloop|asyncio|both]
                                   [--impls kadfast,rust,go,js,py|all] [--peers N] [--duration S]
                                   [--pin none|same|apart] [--client-wait auto|poll|sleep]
                                   [--profile cprofile|pyinstrument] [--transport tcp|quic]

The servers (``--impls``, comma list; default ``kadfast``; ``all`` = every
one), each in a child process of its own:

* ``kadfast``: a kadfast ``KadNode`` (``python bench/findnode_bench.py
  --serve --loop KIND``, one server per ``--loop``: uvloop, asyncio or
  both), driven through the interop harness's ``Peer`` (ready line,
  ``stats``, ``stop``) as in ``bench/net_bench.py``. Before it starts
  listening it has met ``--peers`` random peers (default 1,000): each one
  added with an address (``add_address``) and marked connected
  (``update_peer(..., connected=True)``), so its routing table is as full
  as random peers make it (~150 entries) and every FIND_NODE reply carries
  20 peers with an address. Its periodic bootstrap is pushed out of the run
  (it would dial the made-up addresses), and its per-peer read limit
  (``max_reads_per_peer_per_second``) is off: all the load comes from one
  peer.
* ``rust``, ``go``, ``js``, ``py``: the interop peer programs of
  ``tests/interop/peers/`` (rust-libp2p with libp2p-kad, go-libp2p with
  go-libp2p-kad-dht, js-libp2p with @libp2p/kad-dht on Node.js, py-libp2p
  with its kad_dht on trio; the versions are in the report), each a server-mode
  Kademlia node on TCP+Noise+Yamux, built into the harness's cache
  (``harness.build_for(impl).ensure()``) and started through its ``Peer``.
  Its ``kad_fill`` command makes it meet ``--peers`` random peers the way
  that implementation stores peers it met (an address in its peer store, an
  entry in its routing table, nobody dialed; see ``tests/interop/peers/
  PROTOCOL.md``), so its replies too carry 20 peers with addresses; how
  many entries its table keeps depends on its bucket layout (rust and go
  ~135, js ~970, py all). The CPU measured is that of the peer's own
  process (the binary, ``node``, or the venv's ``python``; all its threads).
  A case such a server cannot serve (it resets or closes the stream, or
  stops answering) is reported as failed, with the reason, and the run goes
  on.

Every server listens on TCP and on QUIC-v1; ``--transport`` (default
``tcp``) says which one the load generator dials: over ``quic`` a request
travels on a QUIC stream (TLS 1.3, no Noise, no Yamux), for kadfast through
aioquic.

The load generator is this process (so it never shares a loop or a CPU slot
with the server), the same for every server: a raw kadfast client on uvloop
that does only the wire work -- a kadfast ``Host`` and its streams, requests
pre-encoded (a pool of FIND_NODE frames for random keys), replies counted by
splitting the stream into frames with ``MessageReader``, never decoded (the
first replies of every case are decoded once and checked to carry 20 peers
with addresses).

Cases, each for ``--duration`` seconds after a warm-up:

* ``reused/1``   one stream, one request at a time (request/reply ping-pong)
* ``reused/32``  one stream, 32 requests in flight (pipelined)
* ``new/1``      a new stream per request (multistream negotiation, request,
                 half-close, reply), one at a time
* ``new/32``     the same with 32 requests in flight (32 concurrent streams)

Per case: requests per second, and the CPU time (``/proc/<pid>/stat``
utime+stime, 10 ms ticks) the server and this client spent per request.
``--runs N`` repeats every case N times against the same server (the cases
interleaved) and reports the medians. With other implementations in the
run, the report also gives, per case, how many times the server CPU per
request of kadfast on uvloop each of them spends. The target: at most 50 us
of kadfast server CPU per FIND_NODE on a reused stream (median of 5 runs).

``--client-wait poll`` (the default unless ``--pin same``) has the load
generator poll its sockets instead of sleeping until a reply comes; see
``busy_polling``. Its own CPU per request is then 1/rate.

``--profile cprofile|pyinstrument`` runs the kadfast server(s) under that
profiler and prints its report (written by the server when it stops) after
the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
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
OTHER_IMPLS = ("rust", "go", "js", "py")
ALL_IMPLS = ("kadfast",) + OTHER_IMPLS
BASELINE = "kadfast/uvloop"  # the server CPU ratios are relative to this one
FILL_SETTLE_S = 1.0  # after kad_fill: js's self-query (waiting for a first peer) runs then
FAILED_CASE_SETTLE_S = 1.0  # after a failed new/N case, before the next case
# Known limits behind a failed case, printed (and put in the JSON) with it.
IMPL_NOTES = {
    "py": "py-libp2p's KadDHT handles at most 12 inbound kad streams at a time and resets any further one",
}


# --------------------------------------------------------------------------
# the server (child process)
# --------------------------------------------------------------------------


def serve(loop_kind: str, n_peers: int, profiler: str | None, profile_out: str | None) -> int:
    from kadfast.kad.node import Config, KadNode
    from kadfast.loop import tune_gc_for_server
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
        # all the load comes from one peer, far above the per-peer read
        # limit (max_reads_per_peer_per_second, 200/s by default): off
        cfg = Config(periodic_bootstrap_interval=1e12, max_reads_per_peer_per_second=0)
        node = KadNode(config=cfg, host_config=HostConfig(listen_addrs=LISTEN))
        t0 = time.perf_counter()
        size = fill_table(node, n_peers)
        fill_s = time.perf_counter() - t0
        node.schedule.last_bootstrap = node.clock()  # no bootstrap lookups towards the made-up peers
        await node.start()
        tune_gc_for_server()  # as `kadfast server` does
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
        try:
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
        except BaseException:
            stream.reset()
            raise

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

    workers = [asyncio.ensure_future(worker()) for _ in range(inflight)]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        # one request failed (or the case timed out): stop the other workers
        # too, and give the server a moment to drop what they left it, so
        # that none of it lands in the next case
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await asyncio.sleep(FAILED_CASE_SETTLE_S)
        raise
    return win.stop()


@contextlib.contextmanager
def busy_polling(on: bool):
    """With ``on``, keep this process's event loop from ever sleeping: a
    callback that schedules itself again makes every loop pass poll the
    sockets with a zero timeout, so the load generator spins on its core
    instead of waiting in ``epoll_wait``.

    Why: on loopback the server's ``send`` runs the receiving side's TCP
    input and wakes the receiving process. A load generator asleep on the
    other core then costs the server's send a cross-core wake-up (an
    inter-processor interrupt, a costly exit to the hypervisor on a virtual
    machine) that a server answering peers over a network never pays; and
    the slower round trip lets the server's core fall idle between
    requests. A polling load generator is awake when the reply comes, as
    latency benchmarks' busy-poll modes are. It needs a core of its own:
    not with ``--pin same``."""
    if not on:
        yield
        return
    loop = asyncio.get_running_loop()
    handle = None

    def spin() -> None:
        nonlocal handle
        handle = loop.call_soon(spin)

    spin()
    try:
        yield
    finally:
        handle.cancel()


async def bench_server(server_pid: int, maddr: str, peer_id: str, opts) -> list[dict]:
    """All cases, ``opts.runs`` times (interleaved); one dict per run and case."""
    frames = request_frames(REQUEST_POOL)
    async with raw_client(maddr, peer_id) as (host, pid):
        def run_case(kind, inflight, win):
            fn = case_reused if kind == "reused" else case_new
            return fn(host, pid, frames, inflight, opts.warmup, opts.duration, win)

        with busy_polling(opts.client_wait == "poll"):
            return await run_cases(server_pid, opts, run_case, 60)


@contextlib.contextmanager
def server_affinity(pin: str):
    """While a server process starts: this process on the server's CPUs, so
    that the server and all its threads inherit them; then back to the load
    generator's CPUs."""
    if pin == "none" or not hasattr(os, "sched_setaffinity"):
        yield
        return
    client = {0}
    server = {0} if pin == "same" else {1}
    os.sched_setaffinity(0, server)
    try:
        yield
    finally:
        os.sched_setaffinity(0, client)


#: what every server listens on: TCP and QUIC
LISTEN = ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"]


def dial_addr(peer, transport: str) -> str:
    """The server's address to dial over ``transport`` (with ``/p2p/``)."""
    want = "/quic-v1" if transport == "quic" else None
    for a in peer.addrs:
        if (a.endswith(want) if want else "/tcp/" in a):
            return f"{a}/p2p/{peer.peer_id}"
    raise RuntimeError(f"the server announces no {transport} address: {peer.addrs}")


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
        with server_affinity(opts.pin):
            peer.start(timeout=120)
        res["server"] = {k: peer.ready.get(k) for k in ("impl", "loop", "routing_table", "peers_met", "fill_seconds")}
        if opts.profile:
            peer.call("profile_start", timeout=10)
        addr = dial_addr(peer, opts.transport)
        samples = run_loop(lambda: bench_server(peer.proc.pid, addr, peer.peer_id, opts), "uvloop")
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


# --------------------------------------------------------------------------
# the other implementations' servers (interop peers)
# --------------------------------------------------------------------------


def _grep(path: Path, pattern: str) -> str | None:
    try:
        m = re.search(pattern, path.read_text(), re.M)
    except OSError:
        return None
    return m.group(1) if m else None


def impl_description(harness, impl: str) -> str:
    """What the ``impl`` server is, with the library versions its lock files pin."""
    d = harness.PEERS_DIR / impl
    if impl == "rust":
        lib = _grep(d / "Cargo.toml", r'^libp2p = \{ version = "([^"]+)"')
        kad = _grep(d / "Cargo.lock", r'^name = "libp2p-kad"\nversion = "([^"]+)"')
        return (f"rust-libp2p {lib} (libp2p-kad {kad}) interop peer, tokio current-thread runtime, "
                f"a release build (opt-level 2, no debug assertions)")
    if impl == "go":
        lib = _grep(d / "go.mod", r"github\.com/libp2p/go-libp2p (v\S+)")
        kad = _grep(d / "go.mod", r"github\.com/libp2p/go-libp2p-kad-dht (v\S+)")
        return f"go-libp2p {lib} + go-libp2p-kad-dht {kad} interop peer"
    if impl == "js":
        lib = _grep(d / "package.json", r'"libp2p": "([^"]+)"')
        kad = _grep(d / "package.json", r'"@libp2p/kad-dht": "([^"]+)"')
        node = harness.JsBuild.NODE
        try:
            version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            version = "?"
        return f"js-libp2p {lib} + @libp2p/kad-dht {kad} interop peer on Node.js {version}"
    if impl == "py":
        lib = _grep(d / "requirements.txt", r"^libp2p==(\S+)")
        return f"py-libp2p {lib} interop peer (trio)"
    return impl


def proc_comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def working_pid(pid: int) -> int:
    """The process that serves: ``pid`` itself, unless it is a shell wrapper
    with one child (then that child)."""
    if proc_comm(pid) not in ("sh", "bash", "dash", "env"):
        return pid
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        return pid
    return working_pid(children[0]) if len(children) == 1 else pid


def run_other(harness, impl: str, opts) -> dict:
    """All cases against the ``impl`` interop peer after ``kad_fill``."""
    from kadfast.loop import run as run_loop

    res: dict[str, Any] = {"server": {"impl": impl, "description": impl_description(harness, impl)}}
    peer = None
    try:
        build = harness.build_for(impl).ensure()
        # the go and rust peers listen on QUIC too; the js and py ones on TCP
        listen = ",".join(LISTEN) if impl in ("go", "rust") else None
        peer = harness.Peer(impl, build.argv, cwd=build.cwd, listen=listen, name=impl)
        with server_affinity(opts.pin):
            peer.start(timeout=120)
        t0 = time.perf_counter()
        fill = peer.call("kad_fill", count=opts.peers, timeout=300)
        pid = working_pid(peer.proc.pid)
        res["server"].update(routing_table=fill.get("routing_table"), peers_met=opts.peers,
                             fill_seconds=round(time.perf_counter() - t0, 3), process=proc_comm(pid))
        time.sleep(FILL_SETTLE_S)
        addr = dial_addr(peer, opts.transport)
        samples = run_loop(lambda: bench_server(pid, addr, peer.peer_id, opts), "uvloop")
        res["samples"] = samples
        res["cases"] = summarize(samples, keep_all=("per_s", "server_cpu_us"))
        with contextlib.suppress(Exception):
            res["server"]["routing_table_after"] = len(peer.call("routing_table", timeout=30)["peers"])
    except Exception as exc:
        res["error"] = short_error(exc)
        res["stderr"] = peer.stderr_tail(10) if peer is not None and peer.proc else ""
    finally:
        if peer is not None:
            with contextlib.suppress(Exception):
                peer.stop(timeout=10)
    return res


def case_failure(entry: dict) -> str | None:
    """Why a case has no figures (every run failed), or None."""
    if entry.get("runs"):
        return None
    errors = entry.get("errors") or {}
    return "; ".join(errors) or "no result"


def comparison(results: dict, cases: list[str]) -> dict:
    """Per server and case: requests/s, server CPU per request and how many
    times the baseline's (kadfast/uvloop) server CPU per request that is; or
    the reason the case failed."""
    base = results.get(BASELINE, {}).get("cases", {})
    out: dict[str, dict] = {}
    for label, res in results.items():
        row: dict[str, Any] = {}
        for case in cases:
            if "error" in res:
                row[case] = {"failed": res["error"]}
                continue
            entry = res.get("cases", {}).get(case, {})
            why = case_failure(entry)
            if why is not None:
                row[case] = {"failed": why}
                if label in IMPL_NOTES:
                    row[case]["note"] = IMPL_NOTES[label]
                continue
            cell: dict[str, Any] = {"per_s": entry.get("per_s"), "server_cpu_us": entry.get("server_cpu_us")}
            b = base.get(case, {}).get("server_cpu_us")
            if b and cell["server_cpu_us"] is not None:
                cell["cpu_vs_kadfast_uvloop"] = round(cell["server_cpu_us"] / b, 2)
            if entry.get("errors"):
                cell["failed_runs"] = entry["errors"]
            row[case] = cell
        out[label] = row
    return out


def run_bench(opts) -> dict:
    """Every server and case; this process's CPU affinity is what it was
    before when it returns (it runs inside pytest too)."""
    if opts.pin == "none" or not hasattr(os, "sched_setaffinity"):
        return _run_bench(opts)
    if (os.cpu_count() or 1) < 2 and opts.pin == "apart":
        raise SystemExit("--pin apart needs two CPUs")
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        return _run_bench(opts)
    finally:
        os.sched_setaffinity(0, before)


def _run_bench(opts) -> dict:
    harness = load_harness()
    install_log_counter()
    loops = ["uvloop", "asyncio"] if opts.loop == "both" else [opts.loop]
    results = {}
    if "kadfast" in opts.impls:
        for kind in loops:
            label = f"kadfast/{kind}"
            log_progress(f"findnode_bench: {label} ...")
            results[label] = run_one(harness, label, kind, opts)
            results[label].setdefault("server", {})["description"] = (
                f"kadfast KadNode on {kind}, python bench/findnode_bench.py --serve")
    for impl in opts.impls:
        if impl == "kadfast":
            continue
        log_progress(f"findnode_bench: {impl} ...")
        results[impl] = run_other(harness, impl, opts)
        if "error" in results[impl]:
            log_progress(f"  {impl}: {results[impl]['error']}")
    verdict = {}
    for label, res in results.items():
        if not label.startswith("kadfast/") or opts.transport != "tcp":  # the target is TCP's
            continue
        for case in ("reused/1", "reused/32"):
            v = res.get("cases", {}).get(case, {}).get("server_cpu_us")
            if v is not None:
                verdict[f"{label} {case}"] = v <= TARGET_US
    cases = [f"{k}/{n}" for k, n in opts.cases]
    return {
        "config": {
            "quick": opts.quick,
            "transport": opts.transport,
            "runs": opts.runs,
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "peers_met": opts.peers,
            "impls": list(opts.impls),
            "cases": cases,
            "pin": {"none": "no CPU affinity: the OS schedules server and load generator",
                    "same": "server and load generator both on CPU 0",
                    "apart": "load generator on CPU 0, server on CPU 1"}[opts.pin],
            "client": "raw kadfast client on uvloop in this process, the same for every server: "
                      "pre-encoded FIND_NODE frames, replies counted by MessageReader framing, not decoded",
            "client_wait": {"poll": "the load generator polls its sockets without sleeping (it spins on its "
                                    "core; its CPU per request is then 1/rate)",
                            "sleep": "the load generator sleeps in epoll_wait until a reply comes"}[opts.client_wait],
            "server_cpu": "utime+stime of the server's process (/proc/<pid>/stat, all its threads) per request",
            "cpu_vs_kadfast_uvloop": "a server's CPU per request divided by kadfast/uvloop's in the same case: "
                                     "how many times less CPU kadfast on uvloop spends",
            "cpus": os.cpu_count(),
            "target_server_cpu_us_reused": TARGET_US,
        },
        "servers": results,
        "comparison": comparison(results, cases),
        "target_met": verdict,
    }


def print_comparison(report: dict) -> None:
    comp = report.get("comparison") or {}
    cases = report["config"]["cases"]
    if len(comp) < 2:
        return
    print(f"\nall servers, medians: requests/s | server CPU us per request (x = times the server CPU of {BASELINE})")
    width = 30
    print(f"{'server':<16}" + "".join(f"{c:>{width}}" for c in cases))
    failures = []
    for label, row in comp.items():
        cells = []
        for case in cases:
            cell = row.get(case, {})
            if "failed" in cell:
                cells.append("failed")
                failures.append(f"{label} {case}: {cell['failed']}" + (f" ({cell['note']})" if "note" in cell else ""))
                continue
            text = f"{cell['per_s']:.0f} | " if isinstance(cell.get("per_s"), (int, float)) else "- | "
            cpu = cell.get("server_cpu_us")
            text += f"{cpu:.1f} us" if isinstance(cpu, (int, float)) else "-"
            if "cpu_vs_kadfast_uvloop" in cell and label != BASELINE:
                text += f" ({cell['cpu_vs_kadfast_uvloop']:.1f}x)"
            cells.append(text)
        print(f"{label:<16}" + "".join(f"{c:>{width}}" for c in cells))
    for line in failures:
        print(f"  failed: {line}")


def print_table(report: dict) -> None:
    cfg = report["config"]
    servers = report["servers"]
    print(
        f"\nfindnode_bench: FIND_NODE over {'QUIC-v1' if cfg.get('transport') == 'quic' else 'Noise+Yamux'} "
        f"on loopback, {cfg['cpus']} CPUs; every server in a child "
        f"process, having met {cfg['peers_met']} random peers; {cfg['runs']} run(s) x {cfg['duration_s']:g}s per case, "
        f"medians"
    )
    print(f"load generator: {cfg['client']}")
    print(f"CPU affinity: {cfg['pin']}")
    print(f"load generator waits: {cfg['client_wait']}")
    for label, res in servers.items():
        srv = res.get("server", {})
        if "error" in res:
            print(f"\n{label} ({srv.get('description', '')}): ERROR {res['error']}\n{res.get('stderr', '')}")
            continue
        proc = f", process {srv['process']}" if srv.get("process") else ""
        print(f"\n{label}: {srv.get('description', '')} (routing table {srv.get('routing_table')} entries{proc}; "
              f"first replies of every case checked to carry 20 peers with addresses)")
        print_case_table(res.get("cases", {}))
        st = res.get("server_stats")
        if isinstance(st, dict):
            if st.get("loop_errors"):
                print(f"  server loop errors: {st['loop_errors']}")
            for item in st.get("log", []):
                print(f"  server log x{item['count']}: {item['example']}")
    print_comparison(report)
    if report.get("target_met"):
        print(f"\ntarget (kadfast server CPU <= {TARGET_US:g} us per FIND_NODE on a reused stream): "
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
    ap.add_argument("--impls", default="kadfast",
                    help="servers to measure, comma list of kadfast (the --loop server(s)), rust, go, js, py "
                         "(interop peers filled with kad_fill); all = every one")
    ap.add_argument("--peers", type=int, default=1000, help="random peers the server has met")
    ap.add_argument("--duration", type=float, default=None, help="measured seconds per case")
    ap.add_argument("--cases", default=None, help="comma list of cases, e.g. reused/32,new/1 (default: all four)")
    ap.add_argument("--profile", choices=["cprofile", "pyinstrument"], default=None,
                    help="profile the kadfast server while the cases run; the report is printed at the end")
    ap.add_argument("--pin", choices=["none", "same", "apart"], default="none",
                    help="CPU affinity: none (the OS schedules server and load generator), same (both on CPU 0: "
                         "no cross-core wake-ups), apart (load generator on CPU 0, server on CPU 1); a server "
                         "inherits it from this process when it starts, with every thread it makes")
    ap.add_argument("--client-wait", choices=["auto", "poll", "sleep"], default="auto",
                    help="how the load generator waits for replies: poll (spin without sleeping, so that the "
                         "server's reply does not have to wake it on another core), sleep (epoll_wait), or "
                         "auto: poll unless --pin same, where it would take the server's core")
    ap.add_argument("--transport", choices=["tcp", "quic"], default="tcp",
                    help="what the load generator dials: the server's TCP (Noise, Yamux) or QUIC-v1 address")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--profiler", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", default=None, help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.serve:
        return opts
    names = [n.strip() for n in opts.impls.split(",") if n.strip()]
    if "all" in names:
        names = list(ALL_IMPLS)
    bad = [n for n in names if n not in ALL_IMPLS]
    if bad or not names:
        ap.error(f"bad --impls {opts.impls!r}: choose from {', '.join(ALL_IMPLS)} or all")
    opts.impls = [n for n in ALL_IMPLS if n in names]
    if opts.client_wait == "auto":
        opts.client_wait = "sleep" if opts.pin == "same" else "poll"
    elif opts.client_wait == "poll" and opts.pin == "same":
        ap.error("--client-wait poll needs a core of its own: not with --pin same")
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
