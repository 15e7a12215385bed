# Sourced by scripts/run.sh and scripts/test.sh: a virtualenv inside the clone
# (.venv, ignored by git) with kadfast installed editable, so that Cython
# builds the compiled modules in place and the tests run against them.
#
# KADFAST_EXTRAS names the extras to install ("" for running, "test" for the
# suite). The install is skipped when nothing it depends on changed since the
# last one: the build files, the Cython sources, the extras and the Python
# (plain .py edits need no reinstall in an editable install).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
fi
. .venv/bin/activate
extras=${KADFAST_EXTRAS-}
stamp() {  # what an install of the given extras depends on
  { python -VV; echo "extras=$1"; cat pyproject.toml setup.py kadfast/*.pyx kadfast/*.pxd; } | sha256sum | cut -d' ' -f1
}
installed() {  # installed EXTRAS: the last install with these extras is current and imports
  [ "$(cat ".venv/.kadfast-install-${1:-run}" 2>/dev/null)" = "$(stamp "$1")" ] \
    && python -c 'import kadfast' 2>/dev/null
}
if installed "$extras" || { [ -z "$extras" ] && installed test; }; then
  :  # up to date (an install with the test extras has all that running needs)
else
  python -m pip install -q -e ".${extras:+[$extras]}"
  stamp "$extras" > ".venv/.kadfast-install-${extras:-run}"
fi
