"""Build and drive the interop peer programs (tests/interop/peers/*).

Two parts:

* ``PeerBuild`` (one subclass per implementation) builds a peer program into
  the cache directory (``$KADFAST_INTEROP_CACHE``, default
  ``~/.cache/kadfast-interop``), outside the clone. A build is skipped when
  the digest of its inputs (sources, lock file, toolchain version) matches the
  stamp left by the last successful build. A build holds an ``fcntl`` lock
  on ``<cache>/<impl>.lock``, so parallel runs never build the same peer at
  once (the second waits, then finds the build current). Every ``ensure()``
  records its duration in ``<cache>/timings.json``.
* ``Peer`` runs one peer program and speaks the JSON-lines control protocol
  of ``peers/PROTOCOL.md`` with it.

The module has no pytest dependency; ``conftest.py`` wires it into fixtures.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = [
    "EXTRA_PEERS",
    "IMPLS",
    "PEERS_DIR",
    "BuildError",
    "BuildResult",
    "KuboDaemon",
    "KuboError",
    "PeerBuild",
    "Peer",
    "PeerError",
    "PeerDied",
    "PeerTimeout",
    "PeerStartError",
    "build_for",
    "cache_root",
    "wait_until",
]

IMPLS = ("rust", "go", "js", "py")
#: peers that do not speak the control protocol (so not in the pairs tests);
#: their own test files run them
EXTRA_PEERS = ("kubo",)
PEERS_DIR = Path(__file__).resolve().parent / "peers"

# Bump to force every peer to rebuild after a change of the recipes below.
RECIPE_VERSION = "1"

# How much of a build log goes into the exception message.
BUILD_LOG_TAIL_LINES = 150
# How many stderr lines of a running peer are kept for error messages.
STDERR_TAIL_LINES = 200
# Extra time, beyond a command's own `timeout`, before we stop waiting for
# its reply (the peer promises a reply within `timeout`; this covers
# scheduling on a loaded 2-core machine).
REPLY_GRACE_S = 15.0


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


BUILD_TIMEOUT_S = _env_float("KADFAST_INTEROP_BUILD_TIMEOUT", 3600.0)
START_TIMEOUT_S = _env_float("KADFAST_INTEROP_START_TIMEOUT", 60.0)


def cache_root() -> Path:
    root = os.environ.get("KADFAST_INTEROP_CACHE") or "~/.cache/kadfast-interop"
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------
# Builds
# --------------------------------------------------------------------------


class BuildError(Exception):
    """A peer could not be built. ``output`` is the tool's output tail."""

    def __init__(self, impl: str, message: str, output: str = "", log: Path | None = None):
        self.impl = impl
        self.output = output
        self.log = log
        text = f"[{impl}] build failed: {message}"
        if log is not None:
            text += f"\n(full log: {log})"
        if output:
            text += f"\n--- output (tail) ---\n{output}"
        super().__init__(text)


@dataclass(frozen=True)
class BuildResult:
    impl: str
    argv: tuple[str, ...]  # how to run the peer (without --listen/--seed)
    cwd: Path
    cached: bool
    seconds: float  # time spent in ensure(), lock wait excluded
    lock_wait: float
    digest: str


def _run_logged(
    impl: str,
    argv: list[str],
    *,
    cwd: Path,
    log: Path,
    env: dict[str, str] | None = None,
    timeout: float = BUILD_TIMEOUT_S,
) -> None:
    """Run a build step, appending its output to ``log``; raise BuildError."""
    with log.open("ab") as out:
        out.write(f"\n$ (cd {cwd} && {' '.join(argv)})\n".encode())
        out.flush()
        try:
            proc = subprocess.run(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        except FileNotFoundError as exc:
            raise BuildError(impl, f"{argv[0]}: command not found ({exc})", log=log) from None
        except subprocess.TimeoutExpired:
            raise BuildError(
                impl, f"{' '.join(argv)} timed out after {timeout:.0f}s", _tail_file(log), log
            ) from None
    if proc.returncode != 0:
        raise BuildError(
            impl,
            f"{' '.join(argv)} exited with {proc.returncode}",
            _tail_file(log),
            log,
        )


def _tail_file(path: Path, lines: int = BUILD_LOG_TAIL_LINES) -> str:
    try:
        data = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _tool_version(argv: list[str], cwd: Path) -> str:
    try:
        proc = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{argv[0]}: unavailable ({exc})"
    return (proc.stdout + proc.stderr).strip()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[float]:
    """Exclusive fcntl lock on ``path``; yields the seconds spent waiting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with path.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield time.monotonic() - start
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _collect_stderr(proc: subprocess.Popen | None, lines) -> None:
    """A reader thread's loop: the child's stderr, line by line, into ``lines``."""
    assert proc is not None and proc.stderr is not None
    try:
        for raw in proc.stderr:
            lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
    except (OSError, ValueError):
        pass


def _close_pipes(proc: subprocess.Popen, threads) -> None:
    """After a child exited: let its reader threads finish, close its pipes."""
    for thread in threads:
        thread.join(timeout=5)
    for stream in (proc.stdout, proc.stderr):
        with contextlib.suppress(OSError):
            if stream:
                stream.close()


class PeerBuild:
    """Builds one implementation's peer program into ``<cache>/<impl>/``.

    Subclasses define ``impl``, the input files (``sources``), the toolchain
    version string, the build steps and the command that runs the result.
    """

    impl: str = ""
    required: tuple[str, ...] = ()  # files that must exist before building

    def __init__(self, cache: Path | None = None, peers_dir: Path = PEERS_DIR):
        self.cache = cache if cache is not None else cache_root()
        self.src = peers_dir / self.impl
        self.out = self.cache / self.impl
        self.stamp = self.out / "stamp.json"
        self.log = self.out / "build.log"
        self._toolchain: str | None = None

    # -- to override -------------------------------------------------------

    def sources(self) -> list[Path]:
        """Files whose content decides whether a rebuild is needed."""
        raise NotImplementedError

    def toolchain_cmds(self) -> list[list[str]]:
        raise NotImplementedError

    def artifacts(self) -> list[Path]:
        """Files that must exist for a cached build to count."""
        raise NotImplementedError

    def build_steps(self) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def run_cwd(self) -> Path:
        return self.src

    def sync(self) -> None:
        """Cheap step run on every ensure(), cached or not (e.g. copying)."""

    # -- common ------------------------------------------------------------

    def toolchain(self) -> str:
        if self._toolchain is None:
            self._toolchain = "\n".join(
                _tool_version(cmd, self.src) for cmd in self.toolchain_cmds()
            )
        return self._toolchain

    def missing(self) -> list[str]:
        return [name for name in self.required if not (self.src / name).is_file()]

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(f"recipe {RECIPE_VERSION}\n".encode())
        h.update(f"toolchain {self.toolchain()}\n".encode())
        for path in sorted(self.sources()):
            rel = path.relative_to(self.src).as_posix()
            data = path.read_bytes()
            h.update(f"file {rel} {len(data)}\n".encode())
            h.update(data)
        return h.hexdigest()

    def _stamp_digest(self) -> str | None:
        try:
            return json.loads(self.stamp.read_text()).get("digest")
        except (OSError, ValueError):
            return None

    def is_current(self, digest: str | None = None) -> bool:
        digest = digest or self.digest()
        return self._stamp_digest() == digest and all(p.exists() for p in self.artifacts())

    def ensure(self) -> BuildResult:
        """Build if the inputs changed since the last successful build."""
        missing = self.missing()
        if missing:
            raise BuildError(self.impl, f"missing source files in {self.src}: {', '.join(missing)}")
        with _file_lock(self.cache / f"{self.impl}.lock") as lock_wait:
            start = time.monotonic()
            self.out.mkdir(parents=True, exist_ok=True)
            digest = self.digest()
            cached = self.is_current(digest)
            error: BuildError | None = None
            if not cached:
                # No stamp while a build is under way: an interrupted build
                # must never look current.
                self.stamp.unlink(missing_ok=True)
                self.log.write_text(f"# build of {self.impl} peer, digest {digest}\n")
                try:
                    self.build_steps()
                    missing_art = [str(p) for p in self.artifacts() if not p.exists()]
                    if missing_art:
                        raise BuildError(
                            self.impl,
                            f"build succeeded but did not produce {', '.join(missing_art)}",
                            _tail_file(self.log),
                            self.log,
                        )
                except BuildError as exc:
                    error = exc
                else:
                    _write_atomic(
                        self.stamp,
                        json.dumps({"digest": digest, "toolchain": self.toolchain()}, indent=1),
                    )
            if error is None:
                self.sync()
            seconds = time.monotonic() - start
            self._record_timing(seconds, lock_wait, cached, error is None)
        if error is not None:
            raise error
        return BuildResult(
            impl=self.impl,
            argv=tuple(self.command()),
            cwd=self.run_cwd(),
            cached=cached,
            seconds=seconds,
            lock_wait=lock_wait,
            digest=digest,
        )

    def _record_timing(self, seconds: float, lock_wait: float, cached: bool, ok: bool) -> None:
        with _file_lock(self.cache / "timings.lock"):
            self._update_timings(seconds, lock_wait, cached, ok)

    def _update_timings(self, seconds: float, lock_wait: float, cached: bool, ok: bool) -> None:
        path = self.cache / "timings.json"
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        data[self.impl] = {
            "seconds": round(seconds, 3),
            "cached": cached,
            "ok": ok,
            "lock_wait_seconds": round(lock_wait, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")

    def _run(self, argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None):
        _run_logged(self.impl, argv, cwd=cwd or self.src, log=self.log, env=env)


class RustBuild(PeerBuild):
    impl = "rust"
    required = ("Cargo.toml", "Cargo.lock", "src/main.rs")
    binary_name = "kadfast-interop-rust"

    @property
    def target(self) -> Path:
        return self.out / "target"

    def sources(self) -> list[Path]:
        files = [self.src / "Cargo.toml", self.src / "Cargo.lock"]
        files += [p for p in (self.src / "src").rglob("*") if p.is_file()]
        for extra in ("build.rs", "rust-toolchain", "rust-toolchain.toml"):
            if (self.src / extra).is_file():
                files.append(self.src / extra)
        return files

    def toolchain_cmds(self) -> list[list[str]]:
        return [["cargo", "--version"], ["rustc", "--version"]]

    def artifacts(self) -> list[Path]:
        return [self.target / "debug" / self.binary_name]

    def build_steps(self) -> None:
        env = dict(os.environ, CARGO_TARGET_DIR=str(self.target))
        self._run(["cargo", "build", "--locked"], env=env)

    def command(self) -> list[str]:
        return [str(self.artifacts()[0])]


class GoBuild(PeerBuild):
    impl = "go"
    required = ("go.mod", "go.sum", "main.go")
    binary_name = "kadfast-interop-go"

    def sources(self) -> list[Path]:
        files = [self.src / "go.mod", self.src / "go.sum"]
        files += [p for p in self.src.rglob("*.go") if p.is_file()]
        return files

    def toolchain_cmds(self) -> list[list[str]]:
        return [["go", "version"]]

    def artifacts(self) -> list[Path]:
        return [self.out / self.binary_name]

    def build_steps(self) -> None:
        self._run(["go", "build", "-mod=readonly", "-o", str(self.artifacts()[0]), "."])

    def command(self) -> list[str]:
        return [str(self.artifacts()[0])]


class JsBuild(PeerBuild):
    """npm ci in ``<cache>/js``; the peer's sources are copied next to it.

    Only package.json, package-lock.json and the node/npm versions decide a
    rebuild (``npm ci``); the sources (top-level *.mjs, *.js, *.cjs) are
    re-copied on every ensure() when they differ, which is cheap.
    """

    impl = "js"
    required = ("package.json", "package-lock.json", "peer.mjs")
    NODE = os.environ.get("KADFAST_INTEROP_NODE", "node")

    def _code_files(self) -> list[Path]:
        return sorted(
            p for p in self.src.iterdir() if p.is_file() and p.suffix in (".mjs", ".js", ".cjs")
        )

    def sources(self) -> list[Path]:
        return [self.src / "package.json", self.src / "package-lock.json"]

    def toolchain_cmds(self) -> list[list[str]]:
        return [[self.NODE, "--version"], ["npm", "--version"]]

    def artifacts(self) -> list[Path]:
        return [self.out / "node_modules"]

    def build_steps(self) -> None:
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(self.src / name, self.out / name)
        self._run(["npm", "ci", "--no-audit", "--no-fund"], cwd=self.out)

    def sync(self) -> None:
        for path in self._code_files():
            dest = self.out / path.name
            if not dest.is_file() or dest.read_bytes() != path.read_bytes():
                self._copy(path, dest)

    @staticmethod
    def _copy(src: Path, dest: Path) -> None:
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)

    def command(self) -> list[str]:
        return [self.NODE, str(self.out / "peer.mjs")]

    def run_cwd(self) -> Path:
        return self.out


class PyBuild(PeerBuild):
    """A venv in ``<cache>/py/venv`` with requirements.txt installed.

    peer.py runs from the clone, so only requirements.txt and the Python
    version decide a rebuild.
    """

    impl = "py"
    required = ("requirements.txt", "peer.py")

    @staticmethod
    def base_python() -> str:
        if sys.version_info[:2] == (3, 11):
            return sys.executable
        return shutil.which("python3.11") or "python3.11"

    @property
    def venv(self) -> Path:
        return self.out / "venv"

    def sources(self) -> list[Path]:
        return [self.src / "requirements.txt"]

    def toolchain_cmds(self) -> list[list[str]]:
        return [[self.base_python(), "-c", "import sys; print(sys.version)"]]

    def artifacts(self) -> list[Path]:
        return [self.venv / "bin" / "python"]

    def build_steps(self) -> None:
        self._run([self.base_python(), "-m", "venv", "--clear", str(self.venv)])
        pip = [str(self.venv / "bin" / "python"), "-m", "pip"]
        self._run(pip + ["install", "--disable-pip-version-check", "-r", "requirements.txt"])

    def command(self) -> list[str]:
        return [str(self.artifacts()[0]), "-u", str(self.src / "peer.py")]


class KuboBuild(PeerBuild):
    """Kubo, the reference IPFS daemon, built from the Go module proxy.

    Kubo's ``go.mod`` replaces go-libp2p with a fork that the module proxy
    does not serve, so the recipe builds a writable copy of the module with
    that replace dropped and upstream go-libp2p required instead. Nothing of
    it lives in the clone: the digest covers the recipe's constants and the
    Go version.
    """

    impl = "kubo"
    module = "github.com/ipfs/kubo"
    version = "v0.43.1"
    #: (module, version) required in place of the fork Kubo's go.mod names
    libp2p = ("github.com/libp2p/go-libp2p", "v0.50.0")
    #: bump when the steps below change
    recipe = "1"

    def __init__(self, cache: Path | None = None, peers_dir: Path = PEERS_DIR):
        super().__init__(cache, peers_dir)
        self.src = self.cache  # no sources in the clone; tools run in the cache
        self.module_dir = self.out / "module"

    def sources(self) -> list[Path]:
        return []

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(f"recipe {RECIPE_VERSION} kubo {self.recipe}\n".encode())
        h.update(f"module {self.module}@{self.version}\n".encode())
        h.update(f"require {self.libp2p[0]}@{self.libp2p[1]} (replace dropped)\n".encode())
        h.update(f"toolchain {self.toolchain()}\n".encode())
        return h.hexdigest()

    def toolchain_cmds(self) -> list[list[str]]:
        return [["go", "version"]]

    def artifacts(self) -> list[Path]:
        return [self.out / "ipfs"]

    def _module_source(self) -> Path:
        """``go mod download`` of Kubo; the module's (read-only) directory."""
        argv = ["go", "mod", "download", "-json", f"{self.module}@{self.version}"]
        with self.log.open("ab") as log:
            log.write(f"\n$ (cd {self.out} && {' '.join(argv)})\n".encode())
            try:
                proc = subprocess.run(
                    argv, cwd=self.out, capture_output=True, timeout=BUILD_TIMEOUT_S,
                    stdin=subprocess.DEVNULL,
                )
            except FileNotFoundError as exc:
                raise BuildError(self.impl, f"go: command not found ({exc})", log=self.log) from None
            except subprocess.TimeoutExpired:
                raise BuildError(self.impl, f"{' '.join(argv)} timed out", _tail_file(self.log), self.log) from None
            log.write(proc.stdout + proc.stderr)
        try:
            info = json.loads(proc.stdout)
        except ValueError:
            info = {}
        if proc.returncode != 0 or not info.get("Dir") or info.get("Error"):
            raise BuildError(
                self.impl, f"{' '.join(argv)} exited with {proc.returncode}", _tail_file(self.log), self.log
            )
        return Path(info["Dir"])

    @staticmethod
    def _make_writable(root: Path) -> None:
        for path in (root, *root.rglob("*")):
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o200)

    def build_steps(self) -> None:
        source = self._module_source()
        if self.module_dir.exists():
            self._make_writable(self.module_dir)
            shutil.rmtree(self.module_dir)
        # the module cache is read-only; the copy is edited in place
        shutil.copytree(source, self.module_dir, symlinks=True)
        self._make_writable(self.module_dir)
        name, version = self.libp2p
        self._run(
            ["go", "mod", "edit", f"-dropreplace={name}", f"-require={name}@{version}"],
            cwd=self.module_dir,
        )
        # -mod=mod: go.sum gains the entries of the required go-libp2p
        self._run(
            ["go", "build", "-mod=mod", "-o", str(self.artifacts()[0]), "./cmd/ipfs"],
            cwd=self.module_dir,
        )
        self._run([str(self.artifacts()[0]), "version", "--all"], cwd=self.out)

    def run_cwd(self) -> Path:
        return self.out

    def command(self) -> list[str]:
        return [str(self.artifacts()[0])]


BUILDERS: dict[str, type[PeerBuild]] = {
    cls.impl: cls for cls in (RustBuild, GoBuild, JsBuild, PyBuild, KuboBuild)
}


def build_for(impl: str, cache: Path | None = None) -> PeerBuild:
    try:
        return BUILDERS[impl](cache)
    except KeyError:
        raise ValueError(f"unknown implementation {impl!r} (known: {', '.join(BUILDERS)})") from None


# --------------------------------------------------------------------------
# Running peers
# --------------------------------------------------------------------------


class PeerError(Exception):
    """The peer answered ``ok: false``."""

    def __init__(self, impl: str, cmd: str, message: str):
        self.impl = impl
        self.cmd = cmd
        self.message = message
        super().__init__(f"[{impl}] {cmd}: {message}")

    @property
    def unsupported(self) -> bool:
        return self.message.startswith("unsupported")


class PeerTimeout(Exception):
    """No reply within the command's timeout plus a grace period."""


class PeerDied(Exception):
    """The peer process exited (or closed stdout) while we waited on it."""


class PeerStartError(Exception):
    """The peer did not print its ready line."""


class Peer:
    """One peer program speaking the JSON-lines control protocol.

    ``start()`` waits for the ready line; ``call()`` sends one request and
    waits for the reply with the same id. A reader thread dispatches replies
    by id, so calls may come from several threads at once.
    """

    def __init__(
        self,
        impl: str,
        argv: list[str] | tuple[str, ...],
        *,
        cwd: Path | None = None,
        listen: str | None = None,
        seed: int | None = None,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        name: str | None = None,
    ):
        self.impl = impl
        self.name = name or impl
        self.seed = seed
        self.argv = list(argv)
        if listen is not None:
            self.argv += ["--listen", listen]
        if seed is not None:
            self.argv += ["--seed", str(seed)]
        self.argv += list(args)  # further options, e.g. ``--client``
        self.cwd = cwd
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._ready_future: Future = Future()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._noise: collections.deque[str] = collections.deque(maxlen=50)  # non-protocol stdout
        self._events: list[dict[str, Any]] = []
        self._threads: list[threading.Thread] = []
        self._eof = False
        self.started_at: float | None = None
        self.start_seconds: float | None = None

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<Peer {self.name} pid={pid} id={self.ready and self.ready.get('peer_id')}>"

    # -- lifecycle -----------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> "Peer":
        self.started_at = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group, see _kill
            )
        except OSError as exc:
            raise PeerStartError(f"[{self.name}] cannot run {self.argv}: {exc}") from None
        for target, stream in ((self._read_stdout, "stdout"), (self._read_stderr, "stderr")):
            thread = threading.Thread(
                target=target, name=f"peer-{self.name}-{stream}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        try:
            self.ready = self._ready_future.result(timeout=timeout)
        except FutureTimeout:
            self.stop(graceful=False)
            raise PeerStartError(
                f"[{self.name}] no ready line within {timeout:.0f}s\n{self.diagnostics()}"
            ) from None
        except PeerDied as exc:
            self.stop(graceful=False)
            raise PeerStartError(f"{exc} before its ready line\n{self.diagnostics()}") from None
        self.start_seconds = time.monotonic() - self.started_at
        problems = [k for k in ("peer_id", "addrs") if k not in self.ready]
        if problems or not self.ready.get("addrs"):
            self.stop(graceful=False)
            raise PeerStartError(
                f"[{self.name}] bad ready line {self.ready!r} (missing or empty: "
                f"{problems or ['addrs']})"
            )
        return self

    def stop(self, timeout: float = 10.0, graceful: bool = True) -> int | None:
        """Ask the peer to stop, then terminate/kill it. Always closes pipes.

        Returns the exit code (negative for a signal), or None if never started.
        """
        proc = self.proc
        if proc is None:
            return None
        if graceful and proc.poll() is None and not self._eof:
            # Fire and forget: the exit below is what we wait for, and a hung
            # peer must not cost a reply timeout on top.
            self._send({"id": next(self._ids), "cmd": "stop"})
        with contextlib.suppress(OSError, ValueError):
            if proc.stdin:
                proc.stdin.close()  # the protocol says: exit when stdin closes
        try:
            proc.wait(timeout=timeout if graceful else 0.5)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                proc.wait()
        _close_pipes(proc, self._threads)
        self._fail_pending(PeerDied(f"[{self.name}] stopped"))
        return proc.returncode

    def _settle(self, timeout: float = 2.0) -> None:
        """Give a dying process time to exit and its stderr to drain."""
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=timeout)

    def kill(self, sig: int) -> None:
        # The peer runs in a process group of its own (start_new_session), so
        # this reaches anything it spawned and nothing else.
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def __enter__(self) -> "Peer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- identity --------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        assert self.ready is not None, "peer not started"
        return self.ready["peer_id"]

    @property
    def addrs(self) -> list[str]:
        assert self.ready is not None, "peer not started"
        return list(self.ready["addrs"])

    @property
    def maddr(self) -> str:
        """First listen address with the /p2p/<id> suffix, for `dial`."""
        return f"{self.addrs[0]}/p2p/{self.peer_id}"

    # -- requests -------------------------------------------------------------

    def call(self, cmd: str, timeout: float = 30, **args: Any) -> dict[str, Any]:
        """Send ``cmd`` and return its ``result``; raise PeerError on ok:false.

        ``timeout`` goes to the peer as the command's own deadline; we wait
        that long plus REPLY_GRACE_S for the reply.
        """
        __tracebackhide__ = True  # pytest: show the caller, not this plumbing
        req_id = next(self._ids)
        request: dict[str, Any] = {"id": req_id, "cmd": cmd, **args}
        if cmd != "stop":
            request["timeout"] = int(timeout) if float(timeout).is_integer() else timeout
        fut: Future = Future()
        with self._lock:
            if self._eof:
                raise PeerDied(f"[{self.name}] process has exited\n{self.diagnostics()}")
            self._pending[req_id] = fut
        error = self._send(request)
        if error is not None:
            with self._lock:
                self._pending.pop(req_id, None)
            raise PeerDied(
                f"[{self.name}] cannot send {cmd}: {error}\n{self.diagnostics()}"
            )
        try:
            reply = fut.result(timeout=timeout + REPLY_GRACE_S)
        except FutureTimeout:
            with self._lock:
                self._pending.pop(req_id, None)
            raise PeerTimeout(
                f"[{self.name}] no reply to {cmd} (id {req_id}) within "
                f"{timeout + REPLY_GRACE_S:.0f}s\n{self.diagnostics()}"
            ) from None
        except PeerDied as exc:
            self._settle()
            raise PeerDied(f"{exc} (while waiting for {cmd})\n{self.diagnostics()}") from None
        if reply.get("ok") is True:
            result = reply.get("result")
            return result if isinstance(result, dict) else {"result": result}
        raise PeerError(self.name, cmd, str(reply.get("error", f"malformed reply {reply!r}")))

    def _send(self, request: dict[str, Any]) -> Exception | None:
        """Write one request line; return the error instead of raising it."""
        line = json.dumps(request, separators=(",", ":")) + "\n"
        try:
            with self._write_lock:
                assert self.proc is not None and self.proc.stdin is not None
                self.proc.stdin.write(line.encode())
                self.proc.stdin.flush()
        except (OSError, ValueError) as exc:
            return exc
        return None

    # -- reader threads ----------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", errors="replace").strip()
                if not line:
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    self._noise.append(line)
                    continue
                if not isinstance(msg, dict):
                    self._noise.append(line)
                    continue
                self._dispatch(msg, line)
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                self._eof = True
            code = self.proc.poll()
            died = PeerDied(
                f"[{self.name}] stdout closed"
                + (f" (exit code {code})" if code is not None else "")
            )
            if not self._ready_future.done():
                self._ready_future.set_exception(died)
            self._fail_pending(died)

    def _dispatch(self, msg: dict[str, Any], line: str) -> None:
        if "id" in msg and ("ok" in msg):
            with self._lock:
                fut = self._pending.pop(msg["id"], None)
            if fut is None:
                self._noise.append(f"reply to unknown id: {line}")
            elif not fut.done():
                fut.set_result(msg)
            return
        event = msg.get("event")
        if event is not None:
            self._events.append(msg)
            if not self._ready_future.done():
                if event == "ready":
                    self._ready_future.set_result(msg)
                elif event == "fatal":
                    self._ready_future.set_exception(
                        PeerDied(f"[{self.name}] fatal: {msg.get('error')}")
                    )
            return
        self._noise.append(line)

    def _read_stderr(self) -> None:
        _collect_stderr(self.proc, self._stderr)

    def _fail_pending(self, exc: Exception) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    # -- diagnostics ------------------------------------------------------------

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    def diagnostics(self, lines: int = 60) -> str:
        parts = [f"--- {self.name}: {' '.join(self.argv)}"]
        if self.proc is not None:
            parts.append(f"exit code: {self.proc.poll()}")
        if self._noise:
            parts.append("non-protocol stdout lines:\n" + "\n".join(self._noise))
        parts.append(f"stderr (last {lines} lines):\n{self.stderr_tail(lines) or '<empty>'}")
        return "\n".join(parts)


def wait_until(
    predicate,
    timeout: float,
    interval: float = 0.2,
    message: str = "condition",
):
    """Poll ``predicate()`` until it returns a truthy value or time runs out.

    Returns the truthy value; raises TimeoutError with the last value (or
    exception) seen.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except (PeerError, PeerTimeout) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} not reached within {timeout:.0f}s (last: {last!r})")
        time.sleep(interval)


# --------------------------------------------------------------------------
# Kubo
# --------------------------------------------------------------------------


class KuboError(Exception):
    """An ``ipfs`` command failed, or the daemon did not start."""


def _set_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    node = config
    *parents, last = dotted.split(".")
    for name in parents:
        child = node.get(name)
        if not isinstance(child, dict):
            child = node[name] = {}
        node = child
    node[last] = value


#: The settings of every daemon on top of ``ipfs init --profile=test`` (which
#: already listens on 127.0.0.1 only, port 0, with no bootstrap peers, mDNS,
#: AutoConf, AutoTLS or delegated routers): TCP is the only transport, no
#: relay, hole punching, NAT port mapping or AutoNAT service, no HTTP routing
#: or retrieval. ``LoopbackAddressesOnLanDHT`` off keeps Kubo's LAN DHT
#: (``/ipfs/lan/kad/1.0.0``) from routing between daemons on loopback, so the
#: WAN DHT, and the kadfast server in it, is the only DHT they use.
KUBO_CONFIG: dict[str, Any] = {
    "Addresses.Swarm": ["/ip4/127.0.0.1/tcp/0"],
    "Addresses.API": ["/ip4/127.0.0.1/tcp/0"],
    "Addresses.Gateway": ["/ip4/127.0.0.1/tcp/0"],
    "Addresses.Announce": [],
    "Addresses.AppendAnnounce": [],
    "Addresses.NoAnnounce": [],
    "Swarm.Transports.Network.TCP": True,
    "Swarm.Transports.Network.QUIC": False,
    "Swarm.Transports.Network.Websocket": False,
    "Swarm.Transports.Network.WebTransport": False,
    "Swarm.Transports.Network.WebRTCDirect": False,
    "Swarm.Transports.Network.Relay": False,
    "Swarm.RelayClient.Enabled": False,
    "Swarm.RelayService.Enabled": False,
    "Swarm.EnableHolePunching": False,
    "Swarm.DisableNatPortMap": True,
    "AutoNAT.ServiceMode": "disabled",
    "Discovery.MDNS.Enabled": False,
    "AutoConf.Enabled": False,
    "AutoTLS.Enabled": False,
    "Routing.DelegatedRouters": [],
    "Routing.LoopbackAddressesOnLanDHT": False,
    "Ipns.DelegatedPublishers": [],
    "HTTPRetrieval.Enabled": False,
    "Version.SwarmCheckEnabled": False,
}

#: On top of KUBO_CONFIG: a daemon whose swarm listens on QUIC only
#: (``/quic-v1``), with the TCP transport off, so that it can neither listen
#: nor dial over TCP.
KUBO_QUIC_ONLY: dict[str, Any] = {
    "Addresses.Swarm": ["/ip4/127.0.0.1/udp/0/quic-v1"],
    "Swarm.Transports.Network.TCP": False,
    "Swarm.Transports.Network.QUIC": True,
}

#: Environment of the daemon and its CLI calls. TEST_DHT_STUB lets Kubo's WAN
#: DHT keep loopback peers and addresses (it drops them otherwise).
KUBO_ENV = {"TEST_DHT_STUB": "1", "IPFS_TELEMETRY": "off", "DO_NOT_TRACK": "1"}

KUBO_READY_LINE = "Daemon is ready"


class KuboDaemon:
    """One ``ipfs daemon`` with a repository of its own (``IPFS_PATH`` under
    ``root``), bootstrapping only from ``bootstrap``.

    ``routing`` is ``Routing.Type`` (``dht``, ``dhtclient``, ``dhtserver``);
    ``config`` adds or overrides settings (dotted keys, JSON values).
    ``cli(...)`` runs ``ipfs --api <its API> ...``.
    """

    def __init__(
        self,
        binary: str | Path,
        root: Path,
        *,
        bootstrap: list[str] | tuple[str, ...] = (),
        routing: str = "dht",
        config: dict[str, Any] | None = None,
        name: str = "kubo",
        env: dict[str, str] | None = None,
    ):
        self.binary = str(binary)
        self.name = name
        self.repo = Path(root) / "repo"
        self.settings = dict(KUBO_CONFIG)
        self.settings["Bootstrap"] = list(bootstrap)
        self.settings["Routing.Type"] = routing
        self.settings.update(config or {})
        self.env = dict(os.environ if env is None else env)
        self.env.update(KUBO_ENV)
        self.env["IPFS_PATH"] = str(self.repo)
        self.proc: subprocess.Popen[bytes] | None = None
        self.api: str | None = None  # multiaddr of the RPC API
        self.peer_id: str | None = None
        self.addrs: list[str] = []  # swarm listen addresses
        self._stdout: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._ready = threading.Event()
        self._eof = threading.Event()
        self._threads: list[threading.Thread] = []
        self.start_seconds: float | None = None

    def __repr__(self) -> str:
        return f"<KuboDaemon {self.name} id={self.peer_id} api={self.api}>"

    # -- lifecycle -----------------------------------------------------------

    def init(self) -> "KuboDaemon":
        """``ipfs init --profile=test``, then the settings into its config file."""
        self.repo.mkdir(parents=True, exist_ok=True)
        self._run_offline(["init", "--profile=test"])
        path = self.repo / "config"
        config = json.loads(path.read_text())
        for dotted, value in self.settings.items():
            _set_path(config, dotted, value)
        _write_atomic(path, json.dumps(config, indent=2))
        self.peer_id = config["Identity"]["PeerID"]
        return self

    def _run_offline(self, args: list[str], timeout: float = 60) -> bytes:
        try:
            proc = subprocess.run(
                [self.binary, *args], env=self.env, capture_output=True, timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KuboError(f"[{self.name}] ipfs {' '.join(args)}: {exc}") from None
        if proc.returncode != 0:
            raise KuboError(
                f"[{self.name}] ipfs {' '.join(args)} exited with {proc.returncode}\n"
                f"{proc.stdout.decode(errors='replace')}{proc.stderr.decode(errors='replace')}"
            )
        return proc.stdout

    def start(self, timeout: float = START_TIMEOUT_S) -> "KuboDaemon":
        if self.peer_id is None:
            self.init()
        started = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                [self.binary, "daemon"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise KuboError(f"[{self.name}] cannot run {self.binary}: {exc}") from None
        for target, stream in ((self._read_stdout, "stdout"), (self._read_stderr, "stderr")):
            thread = threading.Thread(target=target, name=f"kubo-{self.name}-{stream}", daemon=True)
            thread.start()
            self._threads.append(thread)
        deadline = started + timeout
        while not self._ready.wait(0.1):
            if self._eof.is_set() or time.monotonic() > deadline:
                why = "exited" if self._eof.is_set() else f"was not ready within {timeout:.0f}s"
                self.stop()
                raise KuboError(f"[{self.name}] daemon {why}\n{self.diagnostics()}")
        self.start_seconds = time.monotonic() - started
        self.api = (self.repo / "api").read_text().strip()
        ident = self.cli_json("id")
        if ident.get("ID") != self.peer_id:
            raise KuboError(f"[{self.name}] ipfs id says {ident.get('ID')}, the config {self.peer_id}")
        swarm = [a.split("/p2p/")[0] for a in ident.get("Addresses") or []]
        self.addrs = [a for a in swarm if "/tcp/" in a or a.endswith("/quic-v1")]
        if not self.addrs:
            raise KuboError(f"[{self.name}] no TCP or QUIC listen address in {ident}\n{self.diagnostics()}")
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait()
        _close_pipes(proc, self._threads)
        return proc.returncode

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)  # its own session: nothing else
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def maddr(self) -> str:
        return f"{self.addrs[0]}/p2p/{self.peer_id}"

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                self._stdout.append(line)
                if line.strip() == KUBO_READY_LINE:
                    self._ready.set()
        except (OSError, ValueError):
            pass
        finally:
            self._eof.set()

    def _read_stderr(self) -> None:
        _collect_stderr(self.proc, self._stderr)

    # -- commands ------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 60, input: bytes | None = None) -> bytes:
        """``ipfs --api <api> args...``; its stdout. KuboError on a failure."""
        __tracebackhide__ = True
        if self.api is None:
            raise KuboError(f"[{self.name}] daemon not started")
        argv = [self.binary, "--api", self.api, *args]
        try:
            proc = subprocess.run(
                argv, env=self.env, input=input, capture_output=True, timeout=timeout,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise KuboError(
                f"[{self.name}] ipfs {' '.join(args)} timed out after {timeout:.0f}s\n{self.diagnostics()}"
            ) from None
        if proc.returncode != 0:
            raise KuboError(
                f"[{self.name}] ipfs {' '.join(args)} exited with {proc.returncode}: "
                f"{proc.stderr.decode(errors='replace').strip()}\n{self.diagnostics()}"
            )
        return proc.stdout

    def cli_json(self, *args: str, timeout: float = 60) -> Any:
        return json.loads(self.cli(*args, "--enc=json", timeout=timeout))

    def diagnostics(self, lines: int = 60) -> str:
        code = self.proc.poll() if self.proc is not None else None
        return "\n".join([
            f"--- kubo {self.name} (id {self.peer_id}, IPFS_PATH {self.repo}, exit code {code})",
            "stdout:", *list(self._stdout)[-lines:],
            f"stderr (last {lines} lines):", *(list(self._stderr)[-lines:] or ["<empty>"]),
        ])
