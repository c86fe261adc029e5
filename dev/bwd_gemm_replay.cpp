// dev/bwd_gemm_replay: the five GEMM calls of bwd_avx512.cpp's WorkerSuper on one head (S 2048,
// D 128, q tiles of 64 rows, superblocks of 4 key tiles of 128, the same strides and buffer
// sizes), with no element pass, no packing and no Q / dY copies: the GEMMs' own rate in the
// superblock's data flow (dev/bwd_07_fp32_ceiling.md).
//   build: g++ -O3 -std=c++17 -Iinclude -Isrc -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16
//            -mavx512fp16 -mfma -mf16c dev/bwd_gemm_replay.cpp -o build/bwd_gemm_replay   (one line)
//   run:   taskset -c 0 build/bwd_gemm_replay [mask 1..31] [single 0|1]
//          mask bits: 1 S = Q K^T, 2 dP = dY V^T, 4 dV += P'^T dY, 8 dK += dS^T Q, 16 dQ += dS K;
//          single 1: every step on the first key tile and the first dQ rows (all operands warm)
// Prints GFLOP per CPU-second (thread CPU time, best of 5) of the selected products.
#include <immintrin.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>

#define SA_NS bwd_avx512_ns
#include "cpu/bwd_driver.h"
namespace speedattn {
namespace SA_NS {
#include "cpu/bwd_engine_avx512.h"
}  // namespace SA_NS
}  // namespace speedattn
using namespace speedattn;
using E = SA_NS::BwdEngineAvx512<64, 128>;

static double cpu_now() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}
static float* alloc(size_t n) {
  float* p = static_cast<float*>(std::aligned_alloc(64, (n * 4 + 127) / 64 * 64));
  for (size_t i = 0; i < n; ++i) p[i] = float(std::rand() % 1000) * 1e-4f;
  return p;
}

int main(int argc, char** argv) {
  const int mask = argc > 1 ? std::atoi(argv[1]) : 31;
  const bool single = argc > 2 && std::atoi(argv[2]) != 0;
  constexpr int S = 2048, D = 128, kBq = 64, kBk = 128, kSup = 4 * kBk;
  constexpr int Dp = int(SA_NS::bwd::odd_line_stride(D)), kLd = int(SA_NS::bwd::odd_line_stride(kBk));
  constexpr int kLdSup = int(SA_NS::bwd::odd_line_stride(kSup));
  float *KTs = alloc(D * kLdSup), *VTs = alloc(D * kLdSup), *Krs = alloc(kSup * Dp);
  float *dKa = alloc(kSup * Dp), *dVa = alloc(kSup * Dp), *Q = alloc(kBq * Dp), *dY = alloc(kBq * Dp);
  float *Sb = alloc(kBq * kLd), *dP = alloc(kBq * kLd), *dq = alloc(size_t(S) * D);
  const int tiles = single ? 1 : kSup / kBk;
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const double c0 = cpu_now();
    for (int sb = 0; sb < S / kSup; ++sb)
      for (int i0 = 0; i0 < S; i0 += kBq)
        for (int t = 0; t < tiles; ++t) {
          const int s0 = t * kBk;
          float* dqr = dq + size_t(single ? 0 : i0) * D;
          if (mask & 1) E::gemm(kBq, kBk, D, Q, Dp, 1, KTs + s0, kLdSup, Sb, kLd, false);
          if (mask & 2) E::gemm(kBq, kBk, D, dY, Dp, 1, VTs + s0, kLdSup, dP, kLd, false);
          if (mask & 4) E::gemm(kBk, D, kBq, Sb, 1, kLd, dY, Dp, dVa + s0 * Dp, Dp, true);
          if (mask & 8) E::gemm(kBk, D, kBq, dP, 1, kLd, Q, Dp, dKa + s0 * Dp, Dp, true);
          if (mask & 16) E::gemm(kBq, D, kBk, dP, kLd, 1, Krs + s0 * Dp, Dp, dqr, D, true);
        }
    best = std::min(best, cpu_now() - c0);
  }
  const double flop = 2.0 * kBq * kBk * D * __builtin_popcount(unsigned(mask)) * (S / kSup) * (S / kBq) * tiles;
  std::printf("mask %2d single %d: %.1f GFLOP per cpu-s (%.0f%% of 214)\n", mask, int(single), flop / best / 1e9,
              flop / best / 1e9 / 214 * 100);
  return 0;
}
