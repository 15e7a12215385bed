#!/usr/bin/env python3
"""kadfast's fuzz runner: every decoder and sans-IO core, one target each.

    python fuzz/run.py                           # all targets, default budget (CI)
    python fuzz/run.py --seconds-per-target 600 --target yamux_server
    python fuzz/run.py --list
    python fuzz/run.py --replay-hex 00ab... --target kad_pb     # rerun a reproducer

Engine: atheris (coverage-guided, libFuzzer) when it imports, else a small
built-in mutation fuzzer over a seed corpus made by kadfast's own encoders
(``--engine random`` forces it). Each target runs in its own process, ``--jobs``
at a time. A target fails on an exception that is not the layer's own, on a
property violation (whole vs split, compiled vs twin, round trips), or when
the tracemalloc peak exceeds ``--memory-limit-mib``; the reproducer is printed
as hex and written to ``--artifacts``. Exit status 1 on any failure.
See fuzz/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SECONDS = 12.0  # 19 targets, 2 at a time: about 2.5 minutes in all
DEFAULT_MEMORY_LIMIT_MIB = 64.0
HEX_PRINT_LIMIT = 4096  # hex characters printed; the full input goes to --artifacts


def import_targets(instrument: bool):
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    if instrument:
        import atheris

        with atheris.instrument_imports(include=["kadfast"]):
            import fuzz_targets  # imports and instruments kadfast
    import fuzz_targets

    return fuzz_targets


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except Exception:
        return False
    return True


# ------------------------------------------------------------------ worker


class Runner:
    """Runs one target on inputs and keeps the statistics."""

    def __init__(self, targets_mod, name: str, seconds: float, memory_limit_mib: float, artifacts: str | None,
                 keep_going: bool = False):
        self.tm = targets_mod
        self.target = targets_mod.TARGETS[name]
        self.name = name
        self.seconds = seconds
        self.limit = int(memory_limit_mib * 1024 * 1024)
        self.artifacts = artifacts
        self.runs = 0
        self.labels: dict[str, int] = {}
        self.failure: dict | None = None  # the first failure
        self.failures: list[dict] = []  # distinct failures (with keep_going)
        self._signatures: set[str] = set()
        self.keep_going = keep_going
        self.start = time.monotonic()
        self.baseline = None  # traced memory after the first second
        self.baseline_at = self.start + min(1.0, seconds / 4)
        if not tracemalloc.is_tracing():
            tracemalloc.start()
        tracemalloc.reset_peak()
        self._mem0 = tracemalloc.get_traced_memory()[0]

    def step(self, data: bytes) -> bool:
        """Run one input; False once the budget is spent or a failure was found."""
        self.runs += 1
        try:
            lab = self.target.fn(data)
        except self.target.allowed as exc:  # a target may also let its own error through
            lab = type(exc).__name__
        except self.tm.Finding as exc:
            return self._fail("property", exc, data)
        except Exception as exc:  # the point of fuzzing
            return self._fail("unexpected exception", exc, data)
        self.labels[lab] = self.labels.get(lab, 0) + 1
        now = time.monotonic()
        if self.runs & 63 == 0 or now - self.start >= self.seconds:
            cur, peak = tracemalloc.get_traced_memory()
            if self.baseline is None and now >= self.baseline_at:
                self.baseline = cur
            if peak - self._mem0 > self.limit:
                self._fail("memory", MemoryError(f"tracemalloc peak {(peak - self._mem0) / 2**20:.1f} MiB "
                                                 f"above the {self.limit / 2**20:.0f} MiB limit"), data)
                return False
        return now - self.start < self.seconds

    def _fail(self, kind: str, exc: BaseException, data: bytes) -> bool:
        """Record a failure; True to go on (keep_going and not too many)."""
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else "?"
        sig = f"{kind}|{type(exc).__name__}|{where}|{str(exc).split(':')[0][:60]}"
        if sig in self._signatures:
            return True
        self._signatures.add(sig)
        path = None
        if self.artifacts:
            os.makedirs(self.artifacts, exist_ok=True)
            path = os.path.join(self.artifacts, f"{self.name}-{hashlib.sha1(data).hexdigest()[:12]}.bin")
            with open(path, "wb") as fh:
                fh.write(data)
        failure = {
            "kind": kind,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(exc)),
            "hex": data.hex(),
            "file": path,
        }
        self.failure = self.failure or failure
        self.failures.append(failure)
        return self.keep_going and len(self.failures) < 20

    def result(self, engine: str) -> dict:
        cur, peak = tracemalloc.get_traced_memory()
        return {
            "target": self.name,
            "engine": engine,
            "runs": self.runs,
            "seconds": round(time.monotonic() - self.start, 2),
            "outcomes": dict(sorted(self.labels.items(), key=lambda kv: -kv[1])),
            "peak_mib": round((peak - self._mem0) / 2**20, 2),
            "mem_start_mib": round(((self.baseline if self.baseline is not None else cur) - self._mem0) / 2**20, 2),
            "mem_end_mib": round((cur - self._mem0) / 2**20, 2),
            "status": "fail" if self.failure else "ok",
            "failure": self.failure,
            "failures": self.failures,
        }


_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


def mutate(rng: random.Random, data: bytes, corpus: list[bytes], max_len: int) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 5)):
        op = rng.randrange(9)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            pos = rng.randint(0, len(b))
            b[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and b:
            pos = rng.randrange(len(b))
            del b[pos : pos + rng.randint(1, 16)]
        elif op == 4 and b:
            pos = rng.randrange(len(b))
            chunk = b[pos : pos + rng.randint(1, 64)]
            at = rng.randint(0, len(b))
            b[at:at] = chunk * rng.randint(1, 4)
        elif op == 5 and corpus:
            other = rng.choice(corpus)
            cut = rng.randint(0, len(b))
            ocut = rng.randint(0, len(other))
            b = b[:cut] + bytearray(other[ocut:])
        elif op == 6 and len(b) >= 4:
            size = rng.choice((1, 2, 4))
            pos = rng.randrange(len(b) - size + 1)
            value = rng.choice(_INTERESTING) & ((1 << (8 * size)) - 1)
            b[pos : pos + size] = value.to_bytes(size, rng.choice(("big", "little")))
        elif op == 7 and b:
            del b[rng.randint(0, len(b)) :]
        elif op == 8 and b:  # a LEB128 varint somewhere (length prefixes everywhere)
            pos = rng.randrange(len(b))
            v = rng.choice((0, 1, 127, 128, 300, 4096, 16384, 65535, 1 << 20, 1 << 32, 1 << 63))
            enc = bytearray()
            while True:
                enc.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
                v >>= 7
                if not v:
                    break
            b[pos : pos + 1] = enc
    return bytes(b[:max_len])


def run_random(runner: Runner, seeds: list[bytes], seed: int, max_len: int) -> None:
    rng = random.Random(seed)
    corpus = list(seeds) or [b""]
    seen = set()
    for s in corpus:  # every seed once, as is
        if not runner.step(s):
            return
    while True:
        if rng.random() < 0.05:
            data = rng.randbytes(rng.randint(0, 64))
        else:
            data = mutate(rng, rng.choice(corpus), corpus, max_len)
        before = len(runner.labels)
        if not runner.step(data):
            return
        # crude feedback: keep inputs that produced an outcome not seen before
        if len(runner.labels) != before and len(corpus) < 4096 and data not in seen:
            seen.add(data)
            corpus.append(data)


def target_names() -> list[str]:
    return list(import_targets(False).TARGETS)


def fuzz_in_process(name: str, seconds: float, *, memory_limit_mib: float = DEFAULT_MEMORY_LIMIT_MIB,
                    seed: int = 0, max_len: int = 4096, artifacts: str | None = None) -> dict:
    """The built-in engine in this process (used by the pytest smoke test)."""
    tm = import_targets(False)
    runner = Runner(tm, name, seconds, memory_limit_mib, artifacts)
    run_random(runner, tm.TARGETS[name].seeds(), seed, max_len)
    return runner.result("random")


def worker(args) -> int:
    engine = args.engine
    tm = import_targets(engine == "atheris")
    t = tm.TARGETS[args.target]
    seeds = t.seeds()
    runner = Runner(tm, args.target, args.seconds_per_target, args.memory_limit_mib, args.artifacts,
                    args.keep_going)

    def finish() -> None:
        with open(args.stats_file, "w") as fh:
            json.dump(runner.result(engine), fh)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1 if runner.failure else 0)

    if engine == "random":
        run_random(runner, seeds, args.seed, args.max_len)
        finish()

    import atheris

    corpus = args.corpus or tempfile.mkdtemp(prefix=f"kadfast-fuzz-{args.target}-")
    os.makedirs(corpus, exist_ok=True)
    for s in seeds:
        with open(os.path.join(corpus, "seed-" + hashlib.sha1(s).hexdigest()), "wb") as fh:
            fh.write(s)
    max_len = max([args.max_len] + [len(s) for s in seeds])

    def one(data: bytes) -> None:
        if not runner.step(data):
            finish()

    libfuzzer_args = [
        sys.argv[0],
        corpus,
        f"-max_len={max_len}",
        f"-max_total_time={int(args.seconds_per_target) + 60}",  # backstop; we stop ourselves
        "-timeout=30",
        "-rss_limit_mb=4096",
        f"-seed={args.seed or 1}",
        "-print_final_stats=0",
    ]
    atheris.Setup(libfuzzer_args, one)
    atheris.Fuzz()
    finish()
    return 0


# ------------------------------------------------------------------ parent


def run_target(name: str, args, engine: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="kadfast-fuzz-") as tmp:
        stats = os.path.join(tmp, "stats.json")
        log = os.path.join(tmp, "log.txt")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--target", name, "--engine", engine,
               "--seconds-per-target", str(args.seconds_per_target), "--stats-file", stats,
               "--memory-limit-mib", str(args.memory_limit_mib), "--seed", str(args.seed),
               "--max-len", str(args.max_len)] + (["--keep-going"] if args.keep_going else [])
        if args.artifacts:
            cmd += ["--artifacts", args.artifacts]
        if args.corpus:
            cmd += ["--corpus", os.path.join(args.corpus, name)]
        with open(log, "wb") as fh:
            try:
                proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                      timeout=args.seconds_per_target + 120)
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        if os.path.exists(stats):
            with open(stats) as fh:
                res = json.load(fh)
        else:  # the worker died without reporting (libFuzzer OOM/timeout, a crash in C)
            with open(log, "rb") as fh:
                tail = fh.read()[-6000:].decode("utf-8", "replace")
            res = {"target": name, "engine": engine, "runs": None, "seconds": None, "outcomes": {},
                   "peak_mib": None, "mem_start_mib": None, "mem_end_mib": None, "status": "fail",
                   "failure": {"kind": "worker died", "error": f"exit status {rc}", "traceback": tail,
                               "hex": None, "file": None}}
        return res


def print_table(results: list[dict]) -> None:
    print(f"{'target':<22} {'engine':<8} {'inputs':>9} {'secs':>6} {'peak MiB':>9} {'mem MiB':>13}  status  outcomes")
    for r in results:
        mem = "" if r["mem_end_mib"] is None else f"{r['mem_start_mib']}->{r['mem_end_mib']}"
        outcomes = ", ".join(f"{k} {v}" for k, v in list(r["outcomes"].items())[:6])
        runs = "-" if r["runs"] is None else r["runs"]
        secs = "-" if r["seconds"] is None else r["seconds"]
        peak = "-" if r["peak_mib"] is None else r["peak_mib"]
        print(f"{r['target']:<22} {r['engine']:<8} {runs:>9} {secs:>6} {peak:>9} {mem:>13}  {r['status']:<6}  {outcomes}")
    for r in results:
        for f in r.get("failures") or ([r["failure"]] if r.get("failure") else []):
            print(f"\n== {r['target']}: {f['kind']}: {f['error'][:2000]}")
            if f.get("hex") is not None:
                h = f["hex"]
                more = "..." if len(h) > HEX_PRINT_LIMIT else ""
                print(f"reproducer ({len(h) // 2} bytes): {h[:HEX_PRINT_LIMIT]}{more}")
                if f.get("file"):
                    print(f"reproducer file: {f['file']}")
                print(f"replay: python fuzz/run.py --target {r['target']} --replay-hex <hex>")
            print(f["traceback"].rstrip())


def replay(args) -> int:
    tm = import_targets(False)
    data = bytes.fromhex(args.replay_hex) if args.replay_hex else Path(args.replay_file).read_bytes()
    t = tm.TARGETS[args.target]
    try:
        print("outcome:", t.fn(data))
    except t.allowed as exc:
        print("outcome (own error):", type(exc).__name__, exc)
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds-per-target", type=float, default=DEFAULT_SECONDS)
    ap.add_argument("--target", action="append", help="a target name (repeatable); default: all")
    ap.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--json", action="store_true", help="one JSON object per target on stdout")
    ap.add_argument("--memory-limit-mib", type=float, default=DEFAULT_MEMORY_LIMIT_MIB)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--corpus", help="keep atheris corpora in DIR/<target> (grows across runs)")
    ap.add_argument("--artifacts", default=os.path.join(tempfile.gettempdir(), "kadfast-fuzz-artifacts"),
                    help="where reproducers are written")
    ap.add_argument("--keep-going", action="store_true",
                    help="go on after a failure, reporting each distinct one (up to 20 per target)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--replay-hex")
    ap.add_argument("--replay-file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stats-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        args.target = args.target[0]
        return worker(args)
    if args.replay_hex or args.replay_file:
        if not args.target or len(args.target) != 1:
            ap.error("--replay-* needs exactly one --target")
        args.target = args.target[0]
        return replay(args)

    tm = import_targets(False)
    names = args.target or list(tm.TARGETS)
    unknown = [n for n in names if n not in tm.TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {unknown}; --list shows them")
    if args.list:
        for n, t in tm.TARGETS.items():
            print(f"{n:<22} {t.doc}")
        return 0
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if have_atheris() else "random"
    elif engine == "atheris" and not have_atheris():
        ap.error("atheris is not installed (pip install atheris)")

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda n: run_target(n, args, engine), names))
    if args.json:
        for r in results:
            print(json.dumps(r))
    else:
        print_table(results)
        print(f"\n{len(results)} targets, {sum(r['runs'] or 0 for r in results)} inputs, "
              f"{time.monotonic() - t0:.0f} s wall, engine {engine}, {args.jobs} job(s)")
    return 1 if any(r["status"] != "ok" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
