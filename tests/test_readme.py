"""The documentation's Python snippets run as written.

Every ```python block of README.md and of docs/*.md is a complete program:
it starts its own nodes on loopback and finishes by itself. Each runs in a
subprocess of its own, from an empty temporary directory, and must exit with
code 0; the README's blocks must also print what they promise.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))

_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return _BLOCK.findall(path.read_text(encoding="utf-8"))


README_BLOCKS = python_blocks(README)

#: what each README block prints, in README order (a block added to the
#: README needs its entry here: the count is checked)
EXPECTED = [
    ["stored on 1 peer(s); bob got b'hello'", "alice provides: True",
     "alice is at [Multiaddr('/ip4/127.0.0.1/tcp/", "closest: [PeerId(", "boot served {"],
    ["members: 1", "{'from': 'listener', 'you said': {'hi': 1}}"],
    ["{'sum': 6}"],
]

CASES = [(README, i, block, EXPECTED[i] if i < len(EXPECTED) else []) for i, block in enumerate(README_BLOCKS)]
CASES += [(doc, i, block, []) for doc in DOCS for i, block in enumerate(python_blocks(doc))]


def test_every_readme_block_has_its_expectations():
    assert README_BLOCKS, "README.md has no ```python block"
    assert len(README_BLOCKS) == len(EXPECTED), "a ```python block was added to or removed from README.md"


@pytest.mark.parametrize("path, index, block, expected", CASES,
                         ids=[f"{c[0].relative_to(ROOT)}:{c[1] + 1}" for c in CASES])
def test_python_block_runs(path, index, block, expected, tmp_path):
    where = f"{path.relative_to(ROOT)}, python block {index + 1}"
    script = tmp_path / "snippet.py"
    script.write_text(block, encoding="utf-8")
    cp = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, f"{where} failed:\n{block}\n--- stderr:\n{cp.stderr}"
    for text in expected:
        assert text in cp.stdout, f"{where}: {text!r} not in its output:\n{cp.stdout}"
