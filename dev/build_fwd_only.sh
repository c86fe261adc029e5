#!/usr/bin/env bash
# Private build of the library WITHOUT src/cpu/bwd_* (for when the backward files are
# mid-edit) plus tests/cpp/test_forward_kernels.cpp -> build/fwdonly/test_forward_kernels.
# Usage: dev/build_fwd_only.sh [extra test sources...]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/fwdonly}  # env OUT / EXTRA (e.g. -DSA_AMX_PREPACK_MIB=0) for A/B variants
mkdir -p $OUT/obj
AVX2="-mavx2 -mfma -mf16c"
AVX512="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mavx512fp16 -mfma -mf16c"
AMX="$AVX512 -mamx-tile -mamx-bf16"
CXX="g++ -std=c++17 -O3 -fPIC -Iinclude -Isrc -DSPEEDATTN_VERSION_STRING=\"0.1.0\" ${EXTRA:-}"
objs=()
pids=()
for f in $(find src -name '*.cpp' | sort); do
  case "$f" in */bwd_scalar.cpp|*/bwd_avx2.cpp|*/bwd_avx512.cpp|*/bwd_amx.cpp) continue;; esac
  flags=""
  case "$f" in *_avx2.cpp) flags="$AVX2";; *_avx512.cpp) flags="$AVX512";; *_amx.cpp) flags="$AMX";; esac
  o=$OUT/obj/$(echo "$f" | tr '/' '_').o
  objs+=("$o")
  if [ ! -f "$o" ] || [ "$f" -nt "$o" ] || [ -n "$(find src include -name '*.h' -newer "$o" | head -1)" ]; then
    $CXX $flags -c "$f" -o "$o" &
    pids+=($!)
    if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  fi
done
for p in "${pids[@]}"; do wait "$p"; done
# backward stubs so the registry links without the backward files
{ echo '#include <stdexcept>'; echo '#include "cpu/bwd_kernels.h"'; echo 'namespace speedattn { namespace cpu {';
  grep -oE 'void bwd_[a-z0-9_]+\(const Problem& p\)' src/cpu/bwd_kernels.h | sed 's/$/ { throw std::runtime_error("stub"); }/';
  echo '}}'; } > $OUT/bwd_stub.cpp
$CXX -c $OUT/bwd_stub.cpp -o $OUT/bwd_stub.o
objs+=("$OUT/bwd_stub.o")
g++ -shared -o $OUT/libspeedattn_fwd.so "${objs[@]}" -lpthread
for t in tests/cpp/test_forward_kernels.cpp "$@"; do
  n=$(basename "$t" .cpp)
  $CXX -Itests/cpp "$t" -o $OUT/$n -L$OUT -lspeedattn_fwd -Wl,-rpath,$PWD/$OUT -lgtest -lgtest_main -lpthread
done
echo built $OUT
