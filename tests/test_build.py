"""The compiled modules are what kadfast runs on, and their absence is loud."""

import importlib.machinery
import shutil
import subprocess
import sys
import textwrap

import pytest

import kadfast
from kadfast import _closer, _routing, _xor


def _is_extension(module) -> bool:
    return module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_hot_modules_are_compiled():
    assert _is_extension(_xor), _xor.__file__
    assert _is_extension(_routing), _routing.__file__
    assert _is_extension(_closer), _closer.__file__
    # optional in setup.py (OpenSSL's headers), built on every machine of ours
    from kadfast import _noise

    assert _is_extension(_noise), _noise.__file__


def test_public_names_are_the_compiled_ones():
    assert kadfast.Key is _xor.Key
    assert kadfast.RoutingTable is _routing.RoutingTable
    assert kadfast.closest_digests is _xor.closest_digests


def test_import_fails_loudly_without_compiled_modules():
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name in ("kadfast._xor", "kadfast._routing", "kadfast._closer"):
                    raise ImportError("blocked for the test")
        sys.meta_path.insert(0, Block())
        try:
            import kadfast
        except ImportError as exc:
            print("IMPORT-ERROR", exc)
        else:
            print("IMPORTED")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "IMPORT-ERROR" in out.stdout, out.stdout + out.stderr
    assert "pip install" in out.stdout


def test_version_names_the_compiled_transport():
    out = subprocess.run([sys.executable, "-m", "kadfast", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"kadfast {kadfast.__version__} (Python "), out.stdout
    assert "Noise transport: compiled (kadfast._noise on OpenSSL " in out.stdout, out.stdout


def test_fallback_transport_is_named_not_silent():
    # a build without kadfast._noise still works, and says so: in --version
    # and, once per process, as a warning when a host starts
    code = textwrap.dedent(
        """
        import asyncio, logging, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "kadfast._noise":
                    raise ImportError("blocked for the test")
        sys.meta_path.insert(0, Block())
        logging.basicConfig(level=logging.WARNING, format="LOG %(levelname)s %(message)s")
        from kadfast import Ed25519KeyPair, Host, HostConfig, noise
        from kadfast.cli import version_text
        print("IMPL", noise.TRANSPORT_IMPL)
        print("VERSION", version_text())

        async def main():
            for _ in range(2):
                host = Host(Ed25519KeyPair.generate(), HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
                await host.start()
                await host.close()
        asyncio.run(main())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "IMPL python" in out.stdout, out.stdout
    assert "Noise transport: plain Python (kadfast._noise is not built" in out.stdout, out.stdout
    warnings = [line for line in out.stderr.splitlines() if line.startswith("LOG WARNING Noise transport: plain Python")]
    assert len(warnings) == 1, out.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("readelf") is None, reason="ELF only")
def test_compiled_modules_are_stripped_and_name_no_build_paths():
    # setup.py strips release builds and drops the build Python's run-time
    # search path (some Pythons' -Wl,-rpath), which would name the build machine
    from kadfast import _noise

    for module in (_xor, _routing, _closer, _noise):
        sections = subprocess.run(["readelf", "-S", module.__file__], capture_output=True, text=True, timeout=30).stdout
        dynamic = subprocess.run(["readelf", "-d", module.__file__], capture_output=True, text=True, timeout=30).stdout
        assert ".debug_info" not in sections and ".symtab" not in sections, module.__file__
        # an installed wheel's _noise finds its vendored libcrypto through
        # $ORIGIN (auditwheel); nothing may point outside the installation
        paths = [line for line in dynamic.splitlines() if "RPATH" in line or "RUNPATH" in line]
        assert all("[$ORIGIN" in line for line in paths), paths
