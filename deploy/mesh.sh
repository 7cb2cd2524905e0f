#!/usr/bin/env bash
# The main job: install what is needed, build optimized, and run a small mesh on this
# machine (deploy/local/demo.sh: a backend, two sidecars with mTLS between them, real
# requests, one refused caller, the /stats figures).
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install-deps.sh
if [ ! -f build-release/build.ninja ]; then
  meson setup build-release --buildtype=release -Dtests=true
fi
ninja -C build-release
exec ./deploy/local/demo.sh build-release
