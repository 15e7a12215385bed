"""Lint and types: ruff and mypy over the checkout are clean, and the stubs
of the compiled modules (each kadfast/*.pyx has its .pyi) match
what was built (stubtest). The tools come with the test extra, pinned in
pyproject.toml; their configuration is there too."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
ALLOWLIST = Path(__file__).resolve().parent / "stubtest-allowlist.txt"
#: every compiled module of the package, one per Cython source
COMPILED = sorted(f"kadfast.{p.stem}" for p in (ROOT / "kadfast").glob("*.pyx"))


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _report(out: subprocess.CompletedProcess[str]) -> str:
    return f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"


@pytest.mark.parametrize("tool", ["mypy", "ruff"])
def test_the_pinned_version_is_installed(tool):
    """A venv left with another version would check other rules."""
    extra = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["test"]
    pins = [m.group(1) for req in extra if (m := re.fullmatch(rf"{tool}==(\S+)", req))]
    assert pins, f"{tool} is not pinned in the test extra"
    assert importlib.metadata.version(tool) == pins[0], "reinstall the test extra: pip install -e '.[test]'"


def test_ruff_is_clean():
    out = _run("-m", "ruff", "check", "--no-fix", ".")
    assert out.returncode == 0, _report(out)


def test_mypy_is_clean():
    out = _run("-m", "mypy")  # files and options: [tool.mypy] in pyproject.toml
    assert out.returncode == 0, _report(out)
    assert "Success: no issues found" in out.stdout, _report(out)


def test_every_compiled_module_has_its_stub():
    assert "kadfast._closer" in COMPILED and len(COMPILED) >= 4, COMPILED
    missing = [m for m in COMPILED if not (ROOT / "kadfast" / f"{m.split('.')[1]}.pyi").exists()]
    assert not missing, missing


def test_the_stubs_match_the_compiled_modules(tmp_path):
    # mypy's configuration, but for the warning about override sections of
    # modules that the compiled ones do not import (stubtest builds only those)
    text = PYPROJECT.read_text()
    assert "warn_unused_configs = true" in text
    config = tmp_path / "pyproject.toml"
    config.write_text(text.replace("warn_unused_configs = true", "warn_unused_configs = false"))
    out = _run("-m", "mypy.stubtest", "--mypy-config-file", str(config), "--allowlist", str(ALLOWLIST), *COMPILED)
    assert out.returncode == 0, _report(out)
