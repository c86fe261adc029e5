#!/usr/bin/env bash
# Phase-profiled bench (-DSA_PROFILE in the kernel files; AMX with the overlap pipeline OFF so
# the phases are separable): build/prof/bench, after
# dev/build_fwd_only.sh has built the other objects. Usage: dev/prof_build.sh
set -e
cd "$(dirname "$0")/.."
mkdir -p build/prof
F512="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mavx512fp16 -mfma -mf16c"
g++ -std=c++17 -O3 -fPIC -Iinclude -Isrc -DSA_PROFILE -DSA_AMX_OVERLAP=0 $F512 -mamx-tile -mamx-bf16 -c src/cpu/fwd_amx.cpp -o build/prof/fwd_amx.o &
g++ -std=c++17 -O3 -fPIC -Iinclude -Isrc -DSA_PROFILE $F512 -c src/cpu/fwd_avx512.cpp -o build/prof/fwd_avx512.o
wait
objs=$(ls build/fwdonly/obj/*.o | grep -v -e fwd_amx -e fwd_avx512)
g++ -shared -o build/prof/libp.so $objs build/prof/fwd_amx.o build/prof/fwd_avx512.o build/fwdonly/bwd_stub.o -lpthread
g++ -std=c++17 -O2 -Iinclude -Isrc dev/bench_fwd.cpp -o build/prof/bench -Lbuild/prof -lp -Wl,-rpath,$PWD/build/prof -lpthread
