#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs kadfast (building its
# Cython modules), builds the sdist and the wheels and smoke-tests each
# installed wheel, builds the interop peers (rust, go, js, py) into a cache
# outside the clone, runs every test with pytest and prints a timing table.
set -uo pipefail
start=$(date +%s)
phase_names=(); phase_secs=()
phase() { phase_names+=("$1"); phase_secs+=("$2"); }

# Headers the build needs: GMP's (py-libp2p's pinned fastecdsa builds from
# source) and OpenSSL's (kadfast._noise, the compiled Noise transport, which
# the tests require).
t=$(date +%s)
need_pkg() {  # need_pkg HEADER PACKAGE WHY
  if ! [ -e "/usr/include/$1" ] && ! [ -e "/usr/include/x86_64-linux-gnu/$1" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      apt-get update -qq && apt-get install -y -qq "$2" >/dev/null
    else
      echo "$2 is missing (needed by $3); install it" >&2
    fi
  fi
}
need_pkg gmp.h libgmp-dev "the py-libp2p interop peer"
need_pkg openssl/evp.h libssl-dev "kadfast._noise, the compiled Noise transport"
phase "system packages" $(( $(date +%s) - t ))

t=$(date +%s)
KADFAST_EXTRAS=test source "$(dirname "$0")/env.sh" || exit 1
phase "install kadfast (Cython build)" $(( $(date +%s) - t ))

export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
export KADFAST_INTEROP_CACHE=${KADFAST_INTEROP_CACHE:-$HOME/.cache/kadfast-interop}
rc=0

t=$(date +%s)
# configured in pyproject.toml; tests/test_typing.py checks the same (and
# the compiled modules' stubs), this says it first and on its own
ruff check . || rc=1
python -m mypy || rc=1
phase "lint and types" $(( $(date +%s) - t ))

t=$(date +%s)
# the quick unit suite on two worker processes (pytest-xdist): one per core
# of our machines; KADFAST_TEST_WORKERS=0 runs it in this process
python -m pytest -q -p no:cacheprovider -n "${KADFAST_TEST_WORKERS:-2}" tests --ignore=tests/interop "$@" || rc=1
# the benchmark files once each, untimed: they assert what they measure
python -m pytest -q -p no:cacheprovider bench --benchmark-disable || rc=1
phase "unit tests" $(( $(date +%s) - t ))

t=$(date +%s)
# the many-node and long-running tests (marked slow in tests/conftest.py)
python -m pytest -q -p no:cacheprovider tests --ignore=tests/interop -m slow "$@" || rc=1
phase "slow tests (many nodes)" $(( $(date +%s) - t ))

t=$(date +%s)
# the release files: the sdist, a manylinux wheel per CPython found here,
# each installed into a fresh virtualenv and smoke-tested from outside the tree
./scripts/wheels.sh || rc=1
phase "sdist + wheels (build, smoke)" $(( $(date +%s) - t ))

t=$(date +%s)
python fuzz/run.py || rc=1          # bounded: about 2-3 minutes in all
phase "fuzzing (bounded)" $(( $(date +%s) - t ))

t=$(date +%s)
rm -f "$KADFAST_INTEROP_CACHE/timings.json"
python -m pytest -q -p no:cacheprovider tests/interop "$@" || rc=1
phase "interop (builds + tests)" $(( $(date +%s) - t ))

echo
echo "== timing =="
for i in "${!phase_names[@]}"; do
  printf '%-34s %6ss\n' "${phase_names[$i]}" "${phase_secs[$i]}"
done
if [ -f "$KADFAST_INTEROP_CACHE/timings.json" ]; then
  python - "$KADFAST_INTEROP_CACHE/timings.json" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
for impl, row in sorted(data.items()):
    if isinstance(row, dict):
        secs = row.get("seconds", 0.0)
        how = "cached" if row.get("cached") else "built"
        print(f"  peer build {impl:<23} {secs:6.0f}s ({how})")
PY
fi
printf '%-34s %6ss\n' "total" $(( $(date +%s) - start ))
exit $rc
