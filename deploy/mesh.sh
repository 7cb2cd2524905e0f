#!/usr/bin/env bash
# The main job: install what is needed, build optimized, and run a mesh on this machine.
# As root where network namespaces and iptables work: deploy/local/mesh up (pods as
# network namespaces on a bridge, transparent sidecars with capture rules, tether-control
# in the hub; about 30 s), then deploy/local/mesh down, unless MESH_KEEP=1 leaves it
# running to explore (take it down with deploy/local/mesh down). Elsewhere it says why and
# runs the explicit-mode demo instead (deploy/local/demo.sh: no root, no iptables).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  ./deploy/install-deps.sh
else
  echo "mesh.sh: not root: skipping deploy/install-deps.sh (the build needs its packages)"
fi
if [ ! -f build-release/build.ninja ]; then
  meson setup build-release --buildtype=release -Dtests=true
fi
ninja -C build-release
if ! why=$(./deploy/local/mesh check build-release); then
  echo "mesh.sh: cannot build pods in network namespaces here ($why);"
  echo "mesh.sh: running the explicit-mode demo instead (deploy/local/demo.sh)"
  exec ./deploy/local/demo.sh build-release
fi
./deploy/local/mesh up build-release
if [ "${MESH_KEEP:-0}" = 1 ]; then
  echo "mesh.sh: MESH_KEEP=1: the mesh keeps running; deploy/local/mesh down stops it"
else
  echo "mesh.sh: taking the mesh down (MESH_KEEP=1 ./deploy/mesh.sh leaves it running)"
  ./deploy/local/mesh down build-release
fi
