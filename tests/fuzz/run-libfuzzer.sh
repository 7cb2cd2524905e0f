#!/usr/bin/env bash
# Real coverage-guided fuzzing of the targets in this folder with clang's libFuzzer
# (not part of the test run). Usage: tests/fuzz/run-libfuzzer.sh [TARGET] [SECONDS]
# (TARGET: policy, spiffe, tls, yaml, h1, h1resp, gate, h2 or h1h2; default all, 60 s each). Crashes
# land in build-fuzz/crash-*; add the input to seeds/ once the bug is fixed.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v clang >/dev/null || apt-get install -y -qq clang libclang-rt-14-dev
if [ ! -f build-fuzz/build.ninja ]; then
  CC=clang meson setup build-fuzz -Db_sanitize=address,undefined -Db_lundef=false \
    -Dc_args=-fsanitize=fuzzer-no-link \
    -Dtests=true >/dev/null
fi
ninja -C build-fuzz sidecar/libtether-sidecar.a sidecar/libtether-h2.a tests/tools/libtestcerts.a \
  control/libtether-control.a control/libtether-yaml.a libllhttp.a >/dev/null
secs=${2:-60}
for t in ${1:-policy spiffe tls yaml h1 h1resp gate h2 h1h2}; do
  extra=()
  [ "$t" = tls ] && extra=(build-fuzz/tests/tools/libtestcerts.a)
  case $t in h2 | h1h2) extra=(build-fuzz/sidecar/libtether-h2.a -lnghttp2) ;; esac
  [ "$t" = yaml ] && extra=(-iquote control build-fuzz/control/libtether-control.a build-fuzz/control/libtether-yaml.a -lyaml)
  clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -std=gnu11 \
    -Isidecar/src -Itests/tools -I/usr/include/android -Ibuild-fuzz/proto \
    "tests/fuzz/fuzz-$t.c" -Wl,--start-group "${extra[@]}" build-fuzz/sidecar/libtether-sidecar.a \
    build-fuzz/libllhttp.a -Wl,--end-group \
    -L/usr/lib/x86_64-linux-gnu/android -Wl,-rpath,/usr/lib/x86_64-linux-gnu/android \
    -lssl -lcrypto -luv -ljansson -lhttp_parser -lpthread -o "build-fuzz/libfuzzer-$t"
  mkdir -p "build-fuzz/corpus-$t"
  cp tests/fuzz/seeds/* "build-fuzz/corpus-$t/" 2>/dev/null || true
  (cd build-fuzz && "./libfuzzer-$t" -max_total_time="$secs" "corpus-$t")
done
