# Sourced by scripts/run.sh and scripts/test.sh: a virtualenv inside the clone
# (.venv, ignored by git) with kadfast installed editable, so that Cython
# builds the compiled modules in place and the tests run against them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q -e ".[test]"
