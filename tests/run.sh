#!/usr/bin/env bash
# Installs what the tests need, builds Tether twice (debug, and with AddressSanitizer +
# UndefinedBehaviorSanitizer) and runs every unit and integration test in both builds.
# Ends with the line "N passed, N failed, N skipped"; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."

./deploy/install-deps.sh || { echo "dependency installation failed"; exit 1; }

fail_build=0
run_suite() {
  local dir=$1; shift
  rm -f "$dir/meson-logs/testlog.json"
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "$@" >"$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; fail_build=1; return; }
  fi
  ninja -C "$dir" || { fail_build=1; return; }
  meson test -C "$dir" --print-errorlogs --num-processes 2 || true
}

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

run_suite build-test --buildtype=debugoptimized
run_suite build-asan --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false

summary=$(mktemp)
TT_SUMMARY=$summary python3 - build-test build-asan <<'PY'
import json, sys, os
passed = failed = skipped = 0
for d in sys.argv[1:]:
    path = os.path.join(d, "meson-logs", "testlog.json")
    if not os.path.exists(path):
        failed += 1
        print(f"{d}: no test log (build failed?)")
        continue
    for line in open(path):
        t = json.loads(line)
        r = t.get("result")
        if r in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif r == "SKIP":
            skipped += 1
        else:
            failed += 1
            print(f"FAILED: {d}: {t.get('name')} ({r})")
open(os.environ["TT_SUMMARY"], "w").write(f"{passed} {failed} {skipped}\n")
PY
read -r passed failed skipped < "$summary" 2>/dev/null || { passed=0; failed=1; skipped=0; }
rm -f "$summary"
[ "$fail_build" -ne 0 ] && failed=$((failed + 1))
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
