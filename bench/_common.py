"""Helpers shared by the process-level benchmarks (net_bench, findnode_bench,
churn_bench, records_bench): /proc readings, log counting, the interop
harness, the server child's control protocol (ready line, commands on stdin,
JSON replies on stdout), the raw kadfast client and its case runs, medians
and the per-case table.

The benchmark scripts run as ``python bench/X.py`` (so this directory is on
``sys.path``) and import this module as ``_common``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import json
import logging
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
KAD_PROTOCOL = "/ipfs/kad/1.0.0"


# --------------------------------------------------------------------------
# /proc readings
# --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    i = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[i]


def proc_cpu(pid: int | None = None) -> float | None:
    """utime + stime of a process in seconds (10 ms resolution), or None."""
    try:
        with open(f"/proc/{pid or 'self'}/stat", "rb") as f:
            rest = f.read().rsplit(b")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def proc_sys_cpu(pid: int) -> float | None:
    """stime (kernel time) of a process in seconds, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[12]) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def proc_rss_kib(pid: int | str = "self") -> int | None:
    """VmRSS of a process in KiB (/proc/<pid>/status), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def machine_busy() -> float | None:
    """CPU seconds all CPUs spent busy since boot (/proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) / CLK_TCK
    except (OSError, ValueError):
        return None


def cpu_delta(before: float | None, after: float | None) -> float | None:
    if before is None or after is None:
        return None
    return after - before


# --------------------------------------------------------------------------
# logs, errors, progress
# --------------------------------------------------------------------------


class LogCounter(logging.Handler):
    """Counts kadfast log records by level and message template."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.levelname} {record.name}: {record.msg}"
        self.counts[key] += 1
        if key not in self.examples:
            try:
                text = record.getMessage()
            except Exception:  # pragma: no cover
                text = str(record.msg)
            if record.exc_info and record.exc_info[1] is not None:
                text += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
            self.examples[key] = text[:300]

    def summary(self) -> list[dict[str, Any]]:
        return [
            {"count": n, "template": k, "example": self.examples.get(k, "")}
            for k, n in self.counts.most_common(12)
        ]

    def reset(self) -> None:
        self.counts.clear()
        self.examples.clear()


def install_log_counter() -> LogCounter:
    counter = LogCounter()
    lg = logging.getLogger("kadfast")
    lg.addHandler(counter)
    lg.setLevel(logging.INFO)
    lg.propagate = False  # count, don't print
    return counter


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def log_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def count_loop_errors(loop) -> collections.Counter[str]:
    """Install an exception handler on ``loop`` that counts what reaches it
    (by short error text); the counter it fills."""
    loop_errors: collections.Counter[str] = collections.Counter()

    def on_loop_error(lp, ctx):
        exc = ctx.get("exception")
        loop_errors[short_error(exc) if exc else str(ctx.get("message"))[:200]] += 1

    loop.set_exception_handler(on_loop_error)
    return loop_errors


# --------------------------------------------------------------------------
# the interop harness (the parent side of a server child)
# --------------------------------------------------------------------------


def load_harness():
    path = ROOT / "tests" / "interop" / "harness.py"
    spec = importlib.util.spec_from_file_location("kadfast_interop_harness", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up
    spec.loader.exec_module(mod)
    return mod


def kadfast_server_peer(harness, script: str, label: str, *args: str):
    """A (not yet started) ``harness.Peer`` for ``python SCRIPT --serve ARGS``
    run from the repository root."""
    argv = [sys.executable, str(Path(script).resolve()), "--serve", *args]
    return harness.Peer("kadfast", argv, cwd=str(ROOT), name=label)


def gc_rss(peer, settle: float, timeout: float) -> int:
    """Server RSS in KiB after a ``gc`` command (and a pause either side)."""
    time.sleep(settle)
    r = peer.call("gc", timeout=timeout)
    time.sleep(0.2)
    return proc_rss_kib(peer.proc.pid) or r["rss_kib"]


# --------------------------------------------------------------------------
# the server child: control protocol on stdin/stdout
# --------------------------------------------------------------------------


def make_emitter() -> Callable[[dict], None]:
    """``emit(obj)``: one JSON line on stdout, thread-safe."""
    out_lock = threading.Lock()

    def emit(obj: dict) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    return emit


def start_control(loop, emit, done: asyncio.Event, commands: dict[str, Callable[[dict], Any]],
                  catch_errors: bool = False) -> None:
    """Read commands (``{"id", "cmd", ...}`` lines) from stdin in a thread and
    answer them on ``loop``: ``stop`` (and stdin EOF) sets ``done``; a command
    in ``commands`` is answered with ``{"ok": True, "result": fn(req)}``; any
    other with ``unsupported``. With ``catch_errors`` a failing command is
    answered with its error; else the error goes to the loop's handler."""

    def on_line(line: str | None) -> None:
        if line is None:
            done.set()
            return
        try:
            req = json.loads(line)
        except ValueError:
            return
        cmd, rid = req.get("cmd"), req.get("id")
        try:
            if cmd == "stop":
                emit({"id": rid, "ok": True, "result": {}})
                done.set()
            elif cmd in commands:
                emit({"id": rid, "ok": True, "result": commands[cmd](req)})
            else:
                emit({"id": rid, "ok": False, "error": f"unsupported: {cmd}"})
        except Exception as exc:
            if not catch_errors:
                raise
            emit({"id": rid, "ok": False, "error": short_error(exc)})

    def read_stdin() -> None:
        for raw in sys.stdin:
            if raw.strip():
                loop.call_soon_threadsafe(on_line, raw)
        loop.call_soon_threadsafe(on_line, None)

    threading.Thread(target=read_stdin, daemon=True).start()


def ready_line(loop_kind: str, loop, peer_id, addrs, **extra) -> dict:
    """The ``ready`` event the harness waits for."""
    return {
        "event": "ready",
        "impl": f"kadfast/{loop_kind}",
        "loop": type(loop).__module__,
        "peer_id": str(peer_id),
        "addrs": [str(a) for a in addrs],
        **extra,
    }


def run_server(main, loop_kind: str, emit) -> int:
    """Run the server's ``main`` coroutine function on ``loop_kind``; a failure
    is reported to the parent as a ``fatal`` event (exit code 1)."""
    from kadfast.loop import run as run_loop

    try:
        run_loop(main, loop_kind)
    except Exception as exc:  # pragma: no cover - reported to the parent
        emit({"event": "fatal", "error": short_error(exc)})
        return 1
    return 0


def random_peer_id():
    from kadfast.peerid import PeerId

    return PeerId(bytes.fromhex("002408011220") + os.urandom(32))


def fill_table(node, n: int) -> int:
    """Make ``node`` meet ``n`` random peers, each with one address, all
    marked connected. Returns the routing-table size."""
    now = node.clock()
    for i in range(n):
        pid = random_peer_id()
        addr = f"/ip4/10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}/tcp/4001"
        node.add_address(pid, addr)
        node.update_peer(pid, now, connected=True)
    return len(node.table)


# --------------------------------------------------------------------------
# the raw kadfast client (load generator) and its cases
# --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_client(maddr: str, peer_id: str):
    """A kadfast ``Host`` connected to (and having identified) the server;
    yields ``(host, server PeerId)`` and closes the host afterwards."""
    from kadfast import Multiaddr, PeerId
    from kadfast.net import Host, HostConfig

    host = Host(config=HostConfig())
    await host.start()
    pid = PeerId.from_string(peer_id)
    try:
        await asyncio.wait_for(host.dial(Multiaddr(maddr)), 20)
        await host.identify(pid, timeout=10)
        yield host, pid
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(host.close(), 5)


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


async def case_pipelined(host, pid, frames: list[bytes], inflight: int, warmup: float, duration: float,
                         win: Window, check: Callable[[int, bytes], None], n_check: int = 3) -> dict:
    """One reused ``/ipfs/kad/1.0.0`` stream with ``inflight`` requests (from
    ``frames``, round robin) in flight; replies split by ``MessageReader`` and
    counted, the first ``n_check`` passed to ``check(index, body)``. Warm-up,
    then ``win`` measures ``duration`` seconds, then the rest is drained."""
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
            if checked < n_check:
                for b in bodies[: n_check - checked]:
                    check(checked, b)
                    checked += 1
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


async def run_cases(server_pid: int, opts, run_case, timeout_extra: float, indent: str = "  ") -> list[dict]:
    """Every case of ``opts.cases`` (``(kind, inflight)``), ``opts.runs`` times
    interleaved: ``await run_case(kind, inflight, Window)`` with a timeout of
    ``opts.duration + timeout_extra``; one dict per run and case (an error
    recorded as ``{"error": ...}``), progress logged."""
    out = []
    for run in range(opts.runs):
        for kind, inflight in opts.cases:
            win = Window(server_pid)
            try:
                res = await asyncio.wait_for(run_case(kind, inflight, win), opts.duration + timeout_extra)
            except (asyncio.TimeoutError, Exception) as exc:
                res = {"error": "timed out" if isinstance(exc, asyncio.TimeoutError) else short_error(exc)}
            res.update(run=run, case=f"{kind}/{inflight}")
            out.append(res)
            log_progress(f"{indent}run {run + 1}/{opts.runs} {kind}/{inflight}: "
                         + (res.get("error") or f"{res['per_s']:.0f} req/s, server {res['server_cpu_us']} us/req"))
    return out


CASE_FIELDS = ("per_s", "server_cpu_us", "server_sys_us", "client_cpu_us", "server_util", "other_util")


def summarize(samples: list[dict], keep_all: tuple[str, ...] = ()) -> dict:
    """Per case: the median of every field over the runs without an error
    (and every run's value of the fields in ``keep_all``), errors counted."""
    by_case: dict[str, list[dict]] = collections.defaultdict(list)
    for s in samples:
        by_case[s["case"]].append(s)
    out = {}
    for case, rows in by_case.items():
        good = [r for r in rows if "error" not in r]
        entry: dict[str, Any] = {"runs": len(good)}
        for f in CASE_FIELDS:
            vals = [r[f] for r in good if r.get(f) is not None]
            if vals:
                entry[f] = round(statistics.median(vals), 2)
                if f in keep_all:
                    entry[f + "_all"] = vals
        errs = [r["error"] for r in rows if "error" in r]
        if errs:
            entry["errors"] = dict(collections.Counter(errs))
        out[case] = entry
    return out


def print_case_table(cases: dict, indent: str = "", case_width: int = 12) -> None:
    """The per-case medians of ``summarize``, one row a case."""
    head = (f"{indent}{'case':<{case_width}}{'req/s':>10}{'server us/req':>15}{'(kernel)':>10}{'client us/req':>15}"
            f"{'server util':>13}{'other util':>12}")
    print(head)
    print(indent + "-" * (len(head) - len(indent)))
    for case, row in cases.items():
        def f(key, fmt):
            v = row.get(key)
            return fmt.format(v) if isinstance(v, (int, float)) else "-"
        print(f"{indent}{case:<{case_width}}{f('per_s', '{:.0f}'):>10}{f('server_cpu_us', '{:.1f}'):>15}"
              f"{f('server_sys_us', '{:.1f}'):>10}{f('client_cpu_us', '{:.1f}'):>15}"
              f"{f('server_util', '{:.2f}'):>13}{f('other_util', '{:.2f}'):>12}"
              + (f"  errors {row['errors']}" if row.get("errors") else ""))
