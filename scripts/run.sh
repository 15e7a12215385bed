#!/usr/bin/env bash
# The main job. Until the network layer lands it runs the hot-path benchmarks
# (compiled modules against their plain-Python twins).
source "$(dirname "$0")/env.sh"
python bench/run.py --quick "$@"
