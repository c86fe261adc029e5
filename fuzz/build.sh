#!/usr/bin/env bash
# Builds build/fuzz/fuzz_api: libFuzzer + ASan + UBSan, clang++-14, library sources compiled in.
# Incremental (CMake + Ninja). Usage: bash fuzz/build.sh   (env JOBS=n, default 1)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CXX="${FUZZ_CXX:-clang++-14}"
command -v "$CXX" >/dev/null || { echo "fuzz/build.sh: $CXX not found (apt-get install clang-14 libclang-rt-14-dev)" >&2; exit 2; }
CMAKE="${CMAKE:-$(command -v .venv/bin/cmake || command -v cmake)}"
GEN=()
if command -v .venv/bin/ninja >/dev/null || command -v ninja >/dev/null; then GEN=(-G Ninja); fi
export PATH="$ROOT/.venv/bin:$PATH"
[ -f build/fuzz/CMakeCache.txt ] || "$CMAKE" -S fuzz -B build/fuzz "${GEN[@]}" -DCMAKE_CXX_COMPILER="$CXX" >/dev/null
"$CMAKE" --build build/fuzz -j "${JOBS:-1}"
