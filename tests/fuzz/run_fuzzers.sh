#!/usr/bin/env bash
# Runs every libFuzzer target of a -DSPARSEKV_FUZZ=ON build for a bounded time each, starting
# from the committed corpus. A crashing input is saved into tests/fuzz/corpus/TARGET/ (commit it:
# from then on it runs as a regression test in every build) and fails the run.
set -uo pipefail
BUILD_DIR="${1:?usage: run_fuzzers.sh BUILD_DIR [SECONDS]}"
SECONDS_EACH="${2:-20}"
HERE="$(cd "$(dirname "$0")" && pwd)"
fail=0
passed=0
failed=0
for target in config planner requests client_api; do
  bin="$BUILD_DIR/tests/fuzz/fuzz_$target"
  [ -x "$bin" ] || { echo "missing $bin"; fail=1; failed=$((failed + 1)); continue; }
  work="$(mktemp -d)"
  cp "$HERE/corpus/$target/"* "$work/" 2>/dev/null || true
  echo "== fuzz_$target for ${SECONDS_EACH}s"
  if ! "$bin" -max_total_time="$SECONDS_EACH" -rss_limit_mb=4096 -artifact_prefix="$HERE/corpus/$target/" \
       "$work" > "$work.log" 2>&1; then
    tail -40 "$work.log"
    echo "fuzz_$target FAILED: the crashing input is in $HERE/corpus/$target/"
    fail=1
    failed=$((failed + 1))
  else
    grep -E '^#[0-9]+.*(DONE|pulse)' "$work.log" | tail -1
    echo "fuzz_$target: no crash"
    passed=$((passed + 1))
  fi
  rm -rf "$work" "$work.log"
done
echo "fuzzers: $passed passed, $failed failed"
exit $fail
