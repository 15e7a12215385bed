"""Smoke test of an installed kadfast (a wheel, or an install from the sdist).

Run it with the Python of the environment that kadfast is installed in, in
isolated mode so that no source tree is importable:

    python -I scripts/smoke.py [--tests DIR] [--examples DIR]

It checks that kadfast is imported from the installation, not from a
checkout; that every compiled module imports and is a real extension
(kadfast._noise included, unless --allow-python-noise); that
``kadfast --version`` names the compiled Noise transport; that
``kadfast demo`` runs; and then a fast subset of the test suite, copied into
a temporary directory and run there against the installed package. Exit code
0 when all of it passes.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent

#: the compiled modules a complete build has: one per Cython source
COMPILED = tuple(sorted(f"kadfast.{p.stem}" for p in (CHECKOUT / "kadfast").glob("*.pyx")))

#: fast test files (about 15 s in all) that cover the compiled modules
#: against their plain-Python twins, the wire codecs and the build checks
FAST_TESTS = (
    "test_build.py",
    "test_keyspace.py",
    "test_routing.py",
    "test_closer.py",
    "test_noise.py",
    "test_yamux.py",
    "test_multistream.py",
    "test_kad_pb.py",
    "test_kad_validation.py",
    "test_identity.py",
    "test_multiaddr.py",
    "test_ipns.py",
    "test_ping.py",
    "test_examples.py",
)


def step(text: str) -> None:
    print(f"smoke: {text}", flush=True)


def fail(text: str) -> None:
    print(f"smoke: FAILED: {text}", file=sys.stderr, flush=True)
    sys.exit(1)


def console_script(name: str) -> str:
    path = Path(sysconfig.get_path("scripts")) / name
    if not path.exists():
        fail(f"the console script {name!r} is not installed next to {sys.executable}")
    return str(path)


def run(argv: list[str], cwd: str, timeout: float) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        fail(f"{' '.join(argv)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tests", type=Path, default=CHECKOUT / "tests", help="the test suite to take the subset from")
    ap.add_argument("--examples", type=Path, default=CHECKOUT / "examples", help="the examples test_examples runs")
    ap.add_argument("--allow-python-noise", action="store_true",
                    help="accept an install without kadfast._noise (a build without OpenSSL)")
    ap.add_argument("--no-tests", action="store_true", help="skip the test subset")
    args = ap.parse_args()
    args.tests, args.examples = args.tests.resolve(), args.examples.resolve()
    start = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="kadfast-smoke-") as tmp:
        os.chdir(tmp)  # nothing of a checkout is importable from here
        import kadfast

        location = Path(kadfast.__file__).resolve().parent
        if location == (CHECKOUT / "kadfast").resolve() or "site-packages" not in location.parts:
            fail(f"kadfast was imported from the source tree ({location}), not from an installation")
        step(f"kadfast {kadfast.__version__} imported from {location}")

        for name in COMPILED:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                if name == "kadfast._noise" and args.allow_python_noise:
                    step(f"{name} is not built (allowed): {exc}")
                    continue
                fail(f"{name} does not import: {exc}")
            if not module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
                fail(f"{name} is not a compiled extension: {module.__file__}")
            step(f"{name} is compiled ({Path(module.__file__).name})")

        version = run([console_script("kadfast"), "--version"], tmp, 60).stdout.strip()
        step(version)
        if "Noise transport: compiled" not in version and not args.allow_python_noise:
            fail("kadfast --version does not name the compiled Noise transport")

        demo = run([console_script("kadfast"), "demo"], tmp, 180)
        summary = [line for line in demo.stdout.splitlines() if line.startswith("summary:")]
        if not summary or not summary[-1].endswith("OK"):
            fail(f"kadfast demo did not end OK:\n{demo.stdout}\n{demo.stderr}")
        step(f"kadfast demo: {summary[-1]}")

        if not args.no_tests:
            shutil.copytree(args.tests, Path(tmp) / "tests", ignore=shutil.ignore_patterns("interop", "__pycache__"))
            if args.examples.is_dir():
                shutil.copytree(args.examples, Path(tmp) / "examples")
            files = [f"tests/{f}" for f in FAST_TESTS if (Path(tmp) / "tests" / f).exists()]
            env = dict(os.environ, HYPOTHESIS_PROFILE=os.environ.get("HYPOTHESIS_PROFILE", "dev"))
            out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
                                 cwd=tmp, env=env, timeout=600)
            if out.returncode != 0:
                fail(f"the test subset failed (pytest exit {out.returncode})")
            step(f"{len(files)} test files passed against the installation")

    step(f"all passed in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
