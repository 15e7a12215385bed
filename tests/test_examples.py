"""The examples in examples/ run as documented."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_namespace_chat_example():
    cp = subprocess.run([sys.executable, str(ROOT / "examples" / "namespace_chat.py")],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert "alice replied: {'from': 'alice', 'you said': {'text': 'hello alice'}}" in cp.stdout
