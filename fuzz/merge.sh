#!/usr/bin/env bash
# Minimise build/fuzz/work + fuzz/corpus into a fresh fuzz/corpus (the committed seed corpus):
# edge coverage only (-use_counters=0) keeps it small (~900 files, ~110 KB) with the same edges.
# Use the build that ran the fuzzing (FUZZ_BUILD_DIR / FUZZ_CXXFLAGS as for fuzz/run.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash fuzz/build.sh >/dev/null
rm -rf build/fuzz/corpus.new && mkdir -p build/fuzz/corpus.new
nice -n 19 taskset -c "${FUZZ_CPU:-$(( $(nproc) - 1 ))}" "${FUZZ_BUILD_DIR:-build/fuzz}/fuzz_api" -merge=1 -max_len=512 -timeout=60 \
  -use_counters=0 "$@" build/fuzz/corpus.new fuzz/corpus build/fuzz/work 2>&1 | tail -n 3
rm -rf fuzz/corpus && mv build/fuzz/corpus.new fuzz/corpus
echo "fuzz/corpus: $(ls fuzz/corpus | wc -l) files, $(du -sh fuzz/corpus | cut -f1)"
