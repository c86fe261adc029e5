#!/usr/bin/env bash
# Long fuzz run on ONE core at the lowest priority (the machine is shared):
#   bash fuzz/run.sh [SECONDS=1800] [extra libFuzzer flags...]
# Working corpus: build/fuzz/work (seeded from fuzz/corpus, kept between runs); crashes land in
# build/fuzz/artifacts; the log in build/fuzz/logs/. Afterwards, `bash fuzz/merge.sh` folds
# the new coverage back into the committed seed corpus fuzz/corpus (minimised).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECS="${1:-1800}"
shift || true
bash fuzz/build.sh >/dev/null
BIN="${FUZZ_BUILD_DIR:-build/fuzz}/fuzz_api"
mkdir -p build/fuzz/work build/fuzz/artifacts build/fuzz/logs
CPU="${FUZZ_CPU:-$(( $(nproc) - 1 ))}"
LOG="build/fuzz/logs/run-$(date +%Y%m%d-%H%M%S).log"
echo "fuzz: ${SECS}s on cpu ${CPU}, log ${LOG}"
start=$(date +%s)
set +e
timeout "$SECS" nice -n 19 taskset -c "$CPU" "$BIN" build/fuzz/work fuzz/corpus \
  -max_len=512 -len_control=0 -timeout=60 -rss_limit_mb=6000 -print_final_stats=1 \
  -artifact_prefix=build/fuzz/artifacts/ "$@" >"$LOG" 2>&1
rc=$?
set -e
end=$(date +%s)
echo "$(date -u +%FT%TZ) ran $((end - start)) s rc=$rc log=$LOG" >> build/fuzz/logs/hours.txt
tail -n 5 "$LOG"
# rc 124 = the timeout ended a clean run
[ "$rc" = 0 ] || [ "$rc" = 124 ] || { echo "fuzz: FINDING (rc=$rc), see $LOG and build/fuzz/artifacts/" >&2; exit 1; }
