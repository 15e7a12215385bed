"""The package's shape: one error hierarchy, and sans-IO cores that import
without the network stack."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import kadfast
from kadfast import errors, yamux

#: exceptions that are not errors of the API: the CLI's argument error and a
#: control-flow signal inside the kad decoder
NOT_API_ERRORS = {"kadfast.cli.UsageError", "kadfast.kad.pb._Truncated"}


def _modules():
    for info in pkgutil.walk_packages(kadfast.__path__, "kadfast."):
        if info.name.endswith(("__main__",)):
            continue
        yield importlib.import_module(info.name)


def test_every_error_class_is_defined_in_errors():
    stray = set()
    for module in _modules():
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                if module.__name__ != "kadfast.errors" and f"{module.__name__}.{name}" not in NOT_API_ERRORS:
                    stray.add(f"{module.__name__}.{name}")
    assert not stray, f"error classes outside kadfast.errors: {sorted(stray)}"
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.KadfastError), name


def test_events_and_errors_do_not_share_names():
    assert not set(yamux.__all__) & set(errors.__all__)


def test_sans_io_cores_import_without_the_network_stack():
    cores = ["kadfast.yamux", "kadfast.multistream", "kadfast.noise", "kadfast.kad.pb", "kadfast.kad.query",
             "kadfast.identify", "kadfast.ping", "kadfast.store", "kadfast.ipns", "kadfast.kad.validation",
             "kadfast.tls", "kadfast.quic"]
    code = (
        "import sys\n"
        f"for m in {cores!r}: __import__(m)\n"
        "print(sorted(m for m in ('asyncio', 'kadfast.net', 'kadfast.kad.node', 'kadfast.client', 'kadfast.reqresp')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_the_network_names_still_come_from_the_package():
    from kadfast import Client, Host, KadNode

    assert KadNode.__module__ == "kadfast.kad.node" and Host.__module__ == "kadfast.net.host"
    assert Client.__module__ == "kadfast.client"
    assert set(kadfast.__all__) <= set(dir(kadfast))


def _private_crossings(package_dir: Path) -> list[str]:
    """Uses of ``x._name`` (x not self/cls) and imports of ``_name`` where no
    code of the same module defines ``_name``: one module reaching into
    another's private names."""
    trees = {p: ast.parse(p.read_text()) for p in sorted(package_dir.rglob("*.py"))}
    # the package's private modules (the compiled ones and their twins) are
    # the package's to import; their contents are not
    private_modules = {p.name.split(".")[0] for p in package_dir.rglob("_*") if p.suffix in (".py", ".pyx", ".so")}
    found = []
    for path, tree in trees.items():
        own: set[str] = set()
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(n.name)
            elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) \
                    and isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"):
                own.add(n.attr)
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                own.add(n.id)
            elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                own.add(n.value)  # __slots__ entries
            elif isinstance(n, ast.arg):
                own.add(n.arg)
        where = path.relative_to(package_dir.parent)
        for n in ast.walk(tree):
            if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__"):
                if not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls")) and n.attr not in own:
                    found.append(f"{where}:{n.lineno}: .{n.attr}")
            elif isinstance(n, ast.ImportFrom):
                for a in n.names:
                    if a.name.startswith("_") and not a.name.startswith("__") and a.name not in private_modules:
                        found.append(f"{where}:{n.lineno}: import {a.name}")
    return found


#: private names of a library that kadfast uses because the library has no
#: public way, each with why; tests/test_quic.py fails if aioquic drops them
LIBRARY_INTERNALS = {
    # aioquic's TLS context keeps the peer's certificate (and chain) for its
    # own chain check, which libp2p replaces; it has no public accessor
    ("kadfast/quic.py", "_peer_certificate"), ("kadfast/quic.py", "_peer_certificate_chain"),
    # the server's request for the client's certificate: libp2p authenticates
    # both ends, aioquic keeps the switch for its tests
    ("kadfast/quic.py", "_request_client_certificate"),
    # bytes of a stream not sent yet (the writer's back-pressure): aioquic
    # keeps the end of the written data in its stream sender, with no accessor
    ("kadfast/quic.py", "_streams"), ("kadfast/quic.py", "_buffer_stop"),
    # the connection's flow-control use (the peer's highest offsets), against
    # which the bytes delivered in order bound what aioquic buffers in gaps
    ("kadfast/quic.py", "_local_max_data"),
    # the peer's CONNECTION_CLOSE, which aioquic reports only after its
    # draining period: the connection ends for the host when it arrives
    ("kadfast/quic.py", "_close_event"),
    # the TLS output buffers aioquic keeps for a connection's life, swapped
    # for small ones once the handshake is over
    ("kadfast/quic.py", "_crypto_buffers"),
    # the groups the client makes key shares for (aioquic makes four)
    ("kadfast/quic.py", "_supported_groups"),
}


def test_no_module_uses_a_private_name_of_another():
    found = {(line.split(":")[0], line.rpartition(".")[2]) for line in _private_crossings(Path(kadfast.__file__).parent)}
    assert found - LIBRARY_INTERNALS == set()
    assert LIBRARY_INTERNALS - found == set(), "LIBRARY_INTERNALS entries no longer used"


#: the white-box tests that still reach into a private name, each for a
#: state that no test could reach through the public interface (or that
#: checks a private helper against its public counterpart), and why
WHITE_BOX = {
    # aioquic's TLS output buffers and key-share groups, which no public
    # interface shows
    ("test_quic.py", "_crypto_buffers"), ("test_quic.py", "_quic"), ("test_quic.py", "_supported_groups"),
    ("test_quic.py", "_x25519_private_key"),
    # the nonce counters: 2**64 - 1 messages cannot be sent in a test
    ("test_noise.py", "_send_n"), ("test_noise.py", "_recv_n"),
    # the receive buffer's bound while frames arrive byte by byte, in both the
    # compiled transport and its twin
    ("test_noise.py", "_buf"),
    # the handshake state machine and HKDF against the Noise test vectors
    ("test_noise.py", "_XXHandshakeState"), ("test_noise.py", "_hkdf2"), ("test_noise.py", "_NONCE_LIMIT"),
    # stream ids run out after 2**31 streams: the counter is set near the end
    ("test_yamux.py", "_next_id"),
    # the codec's inlined varint against the general one at every length
    ("test_kad_pb.py", "_varint"), ("fuzz_targets.py", "_varint"),
    # the churn benchmark's raw dialer checks the server's (unchanging) Noise
    # payload signature once, so that the dialer, not the server, is cheap
    ("churn_bench.py", "_verify_payload"),
    # a unidirectional QUIC stream, which kadfast never opens, sent to it
    ("test_quicstreams.py", "_quic"),
    # a peer sending stream bytes with gaps before them: aioquic's sender
    # made to skip all but each chunk's last byte
    ("test_quic.py", "_quic"), ("test_quic.py", "_streams"), ("test_quic.py", "_pending"),
    ("test_quic.py", "_buffer_stop"),
    # that aioquic still has the switch kadfast.quic sets (LIBRARY_INTERNALS)
    ("test_quic.py", "_request_client_certificate"),
}


def test_the_tests_use_public_interfaces():
    """The tests, benchmarks, fuzz targets, examples and scripts drive
    kadfast through its public names (the compiled modules and their twins
    are imported by name, as the package does), but for the few white-box
    uses listed in WHITE_BOX; an entry no longer used fails too, so that the
    list stays current. The interop peers of the other implementations are
    their programs, not ours; ``os._exit`` is the standard library's."""
    tests = Path(__file__).resolve().parent
    package = Path(kadfast.__file__).parent
    modules = {p.name.split(".")[0] for p in package.rglob("_*") if p.suffix in (".py", ".pyx", ".so")}
    modules.add("_exit")
    lines = [line for d in ("tests", "bench", "fuzz", "examples", "scripts")
             if (tests.parent / d).is_dir() for line in _private_crossings(tests.parent / d)]
    found = set()
    for line in lines:
        where, _, what = line.rpartition(": ")
        name = what.removeprefix("import ").removeprefix(".")
        path = where.split(":")[0]
        if "/interop/peers/" in path or name in modules:
            continue
        found.add((Path(path).name, name))
    assert found - WHITE_BOX == set(), "tests reaching into private names"
    assert WHITE_BOX - found == set(), "WHITE_BOX entries no longer used"


def _import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports when
    it is imported (module-level imports; not those inside functions or
    under ``if TYPE_CHECKING``)."""
    root = package_dir.parent
    files = {}
    for p in package_dir.rglob("*.py"):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = p
    top = package_dir.name
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                continue
            for st in node.body if isinstance(node, ast.Try) else [node]:
                if isinstance(st, ast.ImportFrom):
                    base = here[:len(here) - st.level + 1] if st.level else []
                    target = ".".join(base + ([st.module] if st.module else []))
                    for a in st.names:
                        full = f"{target}.{a.name}"
                        deps.add(full if full in files else target)
                elif isinstance(st, ast.Import):
                    deps.update(a.name for a in st.names)
        graph[name] = {d for d in deps if d in files and d != name and d.split(".")[0] == top}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def visit(u: str, path: list[str]) -> None:
        state[u] = 1
        path.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                found.append(path[path.index(v):] + [v])
            elif v not in state:
                visit(v, path)
        path.pop()
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            visit(u, [])
    return found


def test_no_import_cycle_in_the_package():
    graph = _import_graph(Path(kadfast.__file__).parent)
    assert graph["kadfast.net.host"] >= {"kadfast.net.connection", "kadfast.net.services"}  # the graph is real
    assert _cycles(graph) == []


def test_the_cycle_check_sees_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nfrom ..c import C\nif TYPE_CHECKING:\n    from .. import a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    assert _cycles(_import_graph(pkg)) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]


def test_the_crossing_check_sees_a_crossing(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("class A:\n    def __init__(self):\n        self._secret = 1\n")
    (pkg / "b.py").write_text("from .a import A, _hidden\n\ndef peek(a):\n    return a._secret\n")
    assert _private_crossings(pkg) == ["pkg/b.py:1: import _hidden", "pkg/b.py:4: ._secret"]
