#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run (docs/reliability.md).
#
#   1. builds the library and the GoogleTest suites with -DSPEEDATTN_SANITIZE=ON in build/asan
#      with clang++-14 and runs a fast subset: every discovered test except those whose name
#      matches $SANITIZE_EXCLUDE. (Not GCC 12: its ASan+UBSan build of src/cpu/bwd_amx.cpp
#      compiles a loop into `jmp .` and hangs; see docs/reliability.md.)
#   2. (skipped with SANITIZE_PYTHON=0) builds the Python extension in the same build directory,
#      lays out a private copy of the package in build/asan/pkg (the venv's editable install is
#      left alone) and runs tests/sanitize/py_smoke.py with the ASan runtime preloaded into the
#      interpreter, started with -S so that the editable install's import hook (a .pth file)
#      cannot shadow the sanitized copy.
#
# Any sanitizer report fails the run (halt_on_error; UBSan -fno-sanitize-recover). Leak
# detection is on for the C++ tests and off for Python (the interpreter itself "leaks").
#
# Env: JOBS (build parallelism, default 2), SANITIZE_EXCLUDE (ctest -E regex),
#      SANITIZE_PYTHON=0|1, SANITIZE_CXX (compiler; default clang++-14).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
CMAKE="$(command -v cmake)"
CTEST="$(command -v ctest)"
PY="$ROOT/.venv/bin/python"
JOBS="${JOBS:-2}"
CXX_BIN="${SANITIZE_CXX:-clang++-14}"
EXCLUDE="${SANITIZE_EXCLUDE:-Large|Slow|Stress|Perf|Bench|Exhaustive}"
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)

export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1${ASAN_EXTRA:+:$ASAN_EXTRA}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

t0=$(date +%s)
echo "== sanitize: C++ library + tests (build/asan, $CXX_BIN, ASan+UBSan)"
GEN_ARGS=("${GEN[@]}")
[ -f build/asan/CMakeCache.txt ] && GEN_ARGS=()  # the generator cannot change once configured
"$CMAKE" -S . -B build/asan "${GEN_ARGS[@]}" \
  -DCMAKE_CXX_COMPILER="$CXX_BIN" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSPEEDATTN_SANITIZE=ON -DSPEEDATTN_BUILD_TESTS=ON -DSPEEDATTN_BUILD_PYTHON=ON \
  -DPython_EXECUTABLE="$PY" >/dev/null
"$CMAKE" --build build/asan -j "$JOBS" --target speedattn
# Test executables: keep going past one that does not compile (reported, and fatal unless
# SANITIZE_ALLOW_BROKEN=1), then run each built binary directly with a gtest filter.
"$CMAKE" --build build/asan -j "$JOBS" -- -k 0 || true
broken=()
ran=0
for src in tests/cpp/test_*.cpp; do
  name="$(basename "$src" .cpp)"
  exe="build/asan/tests/cpp/$name"
  if [ ! -x "$exe" ] || [ "$exe" -ot "$src" ]; then
    broken+=("$name")
    continue
  fi
  filter="-$(echo "$EXCLUDE" | sed 's/|/*:*/g; s/^/*/; s/$/*/')"
  echo "-- $name (--gtest_filter=$filter)"
  s0=$(date +%s)
  ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=1" timeout "${SANITIZE_TEST_TIMEOUT:-600}" "$exe" --gtest_filter="$filter" \
    --gtest_brief=1 > "build/asan/$name.log" 2>&1 || { tail -n 40 "build/asan/$name.log"; echo "sanitize: $name FAILED (log build/asan/$name.log)" >&2; exit 1; }
  echo "   $(grep -E '^\[  PASSED  \]|tests? ran' "build/asan/$name.log" | tail -n 1) in $(( $(date +%s) - s0 )) s"
  ran=$((ran + 1))
done
if [ ${#broken[@]} -gt 0 ]; then
  echo "sanitize: these test files do not compile with $CXX_BIN: ${broken[*]}" >&2
  [ "${SANITIZE_ALLOW_BROKEN:-0}" = 1 ] || exit 1
fi
t1=$(date +%s)
echo "== sanitize: C++ done in $((t1 - t0)) s"

if [ "${SANITIZE_PYTHON:-1}" = "0" ]; then
  exit 0
fi

echo "== sanitize: Python extension (build/asan, ASan runtime preloaded)"
# The interpreter is not instrumented: preload the shared ASan runtime (clang's bundles UBSan).
case "$CXX_BIN" in
  *clang*) LIBASAN="$("$CXX_BIN" -print-file-name=libclang_rt.asan-x86_64.so)" ;;
  *) LIBASAN="$("$CXX_BIN" -print-file-name=libasan.so)" ;;
esac
if [ ! -e "$LIBASAN" ] || [ "${LIBASAN#/}" = "$LIBASAN" ]; then
  echo "sanitize: $CXX_BIN has no shared libasan; skipping the Python smoke" >&2
  exit 0
fi
"$CMAKE" --build build/asan -j "$JOBS" --target _core
PKG=build/asan/pkg/speedattn
rm -rf build/asan/pkg && mkdir -p "$PKG"
cp python/speedattn/*.py "$PKG"/
cp build/asan/_core*.so "$PKG"/
cp -P build/asan/libspeedattn.so* "$PKG"/ 2>/dev/null || true
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
LD_PRELOAD="$LIBASAN" ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0" SANITIZE_EXPECT_PKG="$ROOT/build/asan/pkg" \
  PYTHONPATH="$ROOT/build/asan/pkg:$SITE" "$PY" -S tests/sanitize/py_smoke.py
t2=$(date +%s)
echo "== sanitize: Python done in $((t2 - t1)) s (total $((t2 - t0)) s)"
