#!/usr/bin/env bash
# Builds the libFuzzer harness: clang++-14 -fsanitize=fuzzer,address,undefined, library sources
# compiled in (fuzz/CMakeLists.txt). Incremental (CMake + Ninja).
#   bash fuzz/build.sh                      -> build/fuzz/fuzz_api
#   FUZZ_CXXFLAGS="-fno-sanitize=nonnull-attribute" FUZZ_BUILD_DIR=build/fuzz-relaxed bash fuzz/build.sh
#       (a variant that tolerates a known, reported finding so a long run can go past it)
# Env: JOBS (default 1), FUZZ_CXX (default clang++-14).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CXX="${FUZZ_CXX:-clang++-14}"
command -v "$CXX" >/dev/null || { echo "fuzz/build.sh: $CXX not found (apt-get install clang-14 libclang-rt-14-dev)" >&2; exit 2; }
export PATH="$ROOT/.venv/bin:$PATH"
CMAKE="$(command -v cmake)"
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
DIR="${FUZZ_BUILD_DIR:-build/fuzz}"
# Always (re)configure: cheap, and a changed FUZZ_CXXFLAGS rebuilds what it affects.
[ -f "$DIR/CMakeCache.txt" ] && GEN=()
"$CMAKE" -S fuzz -B "$DIR" "${GEN[@]}" -DCMAKE_CXX_COMPILER="$CXX" -DFUZZ_SAN_EXTRA="${FUZZ_CXXFLAGS:-}" >/dev/null
"$CMAKE" --build "$DIR" -j "${JOBS:-1}"
