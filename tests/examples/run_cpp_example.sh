#!/usr/bin/env bash
# Installs the C++ library and builds + runs examples/cpp against the INSTALLED package
# (find_package(speedattn) -> speedattn::speedattn), the way a user would.
#
#   tests/examples/run_cpp_example.sh
#
# Library build: the existing build tree $BUILD_DIR (default build/cpp, the one `make build`
# creates) is brought up to date and installed; without one, a library-only build tree is
# configured under $WORK/lib. Everything goes under $WORK (default build/example):
# install/ (the prefix), app/ (the example's build). The example runs twice: with the best
# kernels and with SPEEDATTN_MAX_ISA=scalar. Exit status 0 iff both match its naive loops.
# Env: BUILD_DIR, WORK, CMAKE (default .venv/bin/cmake, else cmake), JOBS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
BUILD_DIR="${BUILD_DIR:-build/cpp}"
WORK="${WORK:-build/example}"
if [ -z "${CMAKE:-}" ]; then
  if [ -x .venv/bin/cmake ]; then CMAKE=.venv/bin/cmake; else CMAKE=cmake; fi
fi
GEN=()
if command -v ninja >/dev/null 2>&1 || [ -x .venv/bin/ninja ]; then
  GEN=(-G Ninja)
  [ -x .venv/bin/ninja ] && export PATH="$ROOT/.venv/bin:$PATH"
fi
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
case "$WORK" in /*) ;; *) WORK="$ROOT/$WORK" ;; esac

if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  BUILD_DIR="$WORK/lib"
  echo "== configuring a library build in $BUILD_DIR"
  "$CMAKE" -S . -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DSPEEDATTN_BUILD_TESTS=OFF \
    -DSPEEDATTN_BUILD_PYTHON=OFF >/dev/null
fi
echo "== building the library ($BUILD_DIR)"
"$CMAKE" --build "$BUILD_DIR" -j "$JOBS" --target speedattn

PREFIX="$WORK/install"
rm -rf "$PREFIX"
echo "== installing into $PREFIX"
"$CMAKE" --install "$BUILD_DIR" --prefix "$PREFIX" >/dev/null

echo "== building examples/cpp against the installed package"
rm -rf "$WORK/app"
mkdir -p "$WORK"
if ! "$CMAKE" -S examples/cpp -B "$WORK/app" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF \
    -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF >"$WORK/app-configure.log" 2>&1; then
  cat "$WORK/app-configure.log" >&2
  exit 1
fi
grep -F -- "-- speedattn" "$WORK/app-configure.log" || true
"$CMAKE" --build "$WORK/app" -j "$JOBS"

echo "== running the example"
"$WORK/app/speedattn_example"
echo "== running the example with SPEEDATTN_MAX_ISA=scalar (the portable kernels)"
SPEEDATTN_MAX_ISA=scalar "$WORK/app/speedattn_example"
