#!/usr/bin/env bash
# The main job: installs kadfast (what running needs, and only when the
# checkout changed since the last install) and runs a local network on loopback — a
# bootstrap node, three listeners in one namespace and a dialer that finds
# them through the DHT and exchanges JSON requests with each.
source "$(dirname "$0")/env.sh"
kadfast demo "$@"
