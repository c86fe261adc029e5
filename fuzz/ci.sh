#!/usr/bin/env bash
# CI fuzz pass (docs/reliability.md): builds the libFuzzer harness (clang++-14, ASan+UBSan),
# replays every reproducer in fuzz/regressions/ and the seed corpus fuzz/corpus/, then fuzzes
# for FUZZ_CI_SECONDS (default 60) starting from the seed corpus. New inputs go to a scratch
# directory; the committed corpus is never modified here. Exit 1 on any finding, with the
# crashing input left in build/fuzz/ci-artifacts/ (replay: build/fuzz/fuzz_api FILE;
# FUZZ_VERBOSE=1 prints the decoded call).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECS="${FUZZ_CI_SECONDS:-60}"
# The fully strict sanitizer build (F1 and F11, which once needed -fno-sanitize flags here, are
# fixed). FUZZ_CXXFLAGS adds flags for local experiments.
export FUZZ_CXXFLAGS="${FUZZ_CXXFLAGS-}"
t0=$(date +%s)
JOBS="${JOBS:-2}" bash fuzz/build.sh >/dev/null
t1=$(date +%s)
echo "fuzz/ci: harness built in $((t1 - t0)) s"
BIN="${FUZZ_BUILD_DIR:-build/fuzz}/fuzz_api"
ART=build/fuzz/ci-artifacts
rm -rf "$ART" build/fuzz/ci-work && mkdir -p "$ART" build/fuzz/ci-work
FLAGS=(-max_len=512 -len_control=0 -timeout=60 -rss_limit_mb=6000 -artifact_prefix="$ART/")

shopt -s nullglob
regs=(fuzz/regressions/*)
if [ ${#regs[@]} -gt 0 ]; then
  "$BIN" "${FLAGS[@]}" "${regs[@]}" >"$ART/regressions.log" 2>&1 \
    || { tail -n 30 "$ART/regressions.log"; echo "fuzz/ci: a regression input fails (see $ART/regressions.log)" >&2; exit 1; }
  echo "fuzz/ci: ${#regs[@]} regression inputs clean"
fi

set +e
"$BIN" "${FLAGS[@]}" -max_total_time="$SECS" -print_final_stats=1 build/fuzz/ci-work fuzz/corpus >"$ART/fuzz.log" 2>&1
rc=$?
set -e
t2=$(date +%s)
grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)" "$ART/fuzz.log" | tr '\n' ' '
echo
if [ "$rc" != 0 ]; then
  grep -E -A 30 "ERROR|runtime error|speedattn fuzz finding|==[0-9]+==" "$ART/fuzz.log" | head -n 60
  echo "fuzz/ci: FINDING (rc=$rc); reproducer in $ART/ (log $ART/fuzz.log)" >&2
  exit 1
fi
echo "fuzz/ci: clean (${SECS} s fuzzing, $((t2 - t0)) s total)"
