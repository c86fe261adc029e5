// dev/fma_micro_probe: per-CPU-second ceilings of fp32 FMA code on one core (dev/bwd_05_fp32_gemm.md).
//   build: g++ -O3 -march=native dev/fma_micro_probe.cpp -o build/fma_micro_probe
//   run:   taskset -c 0 build/fma_micro_probe
// Prints GFLOP per CPU-second (thread CPU time, so a busy second vCPU does not distort it) of
//   * 24 independent vfmadd231ps chains with no loads (the FMA peak), and with n broadcast loads
//     per 24 FMAs that nothing consumes (load-port pressure alone);
//   * register-blocked C[MR][16*NV] += A B micro-kernels (A broadcast from rows at stride 144,
//     B rows at stride 144, C loaded / stored per call), K = 128: the ceiling of the GEMM loop
//     bwd_engine_avx512.h runs (6 x 64) and of alternatives; M x N 60 x 128 / 64 x 96 touch
//     more B than L1 holds (L2-fed), 24 x 64 / 24 x 48 are L1-resident.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>

static double cpu_now() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

alignas(64) static float g_buf[1024];

template <int NL>
static void fma_chains() {
  __m512 a[24];
  for (int i = 0; i < 24; ++i) a[i] = _mm512_set1_ps(1.f + float(i));
  __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  const float* p = g_buf;
  const long it = 20000000;
  const double c0 = cpu_now();
  for (long k = 0; k < it; ++k) {
#pragma GCC unroll 16
    for (int j = 0; j < NL; ++j) {
      const __m512 l = _mm512_set1_ps(p[j]);
      __asm__ volatile("" ::"v"(l));
    }
#pragma GCC unroll 24
    for (int i = 0; i < 24; ++i) a[i] = _mm512_fmadd_ps(a[i], x, y);
    __asm__ volatile("" : "+v"(x), "+r"(p));
  }
  const double c = cpu_now() - c0;
  __m512 s = a[0];
  for (int i = 1; i < 24; ++i) s = _mm512_add_ps(s, a[i]);
  std::printf("24 FMA chains, %2d broadcast loads per 24 FMAs: %6.1f GFLOP per cpu-s (%g)\n", NL,
              double(it) * 24 * 32 / c / 1e9, double(_mm512_reduce_add_ps(s)));
}

template <int MR, int NV>
__attribute__((noinline)) static void micro(int K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                                            int64_t ldc) {
  __m512 c[MR][NV];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) c[m][v] = _mm512_loadu_ps(C + m * ldc + v * 16);
  for (int k = 0; k < K; ++k) {
    __m512 b[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(B + k * ldb + v * 16);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const __m512 av = _mm512_set1_ps(A[m * lda + k]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) c[m][v] = _mm512_fmadd_ps(av, b[v], c[m][v]);
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(C + m * ldc + v * 16, c[m][v]);
}

template <int MR, int NV>
static void gemm_l1(int M, int N) {
  const int K = 128, ld = 144;
  float* A = static_cast<float*>(std::aligned_alloc(64, size_t(M) * ld * 4));
  float* B = static_cast<float*>(std::aligned_alloc(64, size_t(K) * ld * 4));
  float* C = static_cast<float*>(std::aligned_alloc(64, size_t(M) * ld * 4));
  std::fill(A, A + M * ld, 0.01f);
  std::fill(B, B + K * ld, 0.01f);
  std::fill(C, C + M * ld, 0.f);
  double best = 1e30, flop = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const double c0 = cpu_now();
    flop = 0;
    for (int i = 0; i < 3000; ++i)
      for (int n0 = 0; n0 + 16 * NV <= N; n0 += 16 * NV)
        for (int m0 = 0; m0 + MR <= M; m0 += MR) {
          micro<MR, NV>(K, A + m0 * ld, ld, B + n0, ld, C + m0 * ld + n0, ld);
          flop += 2.0 * MR * NV * 16 * K;
        }
    best = std::min(best, cpu_now() - c0);
  }
  std::printf("micro-kernel %2d x %2d, M %d N %d K %d: %6.1f GFLOP per cpu-s\n", MR, 16 * NV, M, N, K,
              flop / best / 1e9);
  std::free(A), std::free(B), std::free(C);
}

int main() {
  fma_chains<0>();
  fma_chains<8>();
  fma_chains<16>();
  gemm_l1<6, 4>(60, 128);
  gemm_l1<8, 3>(64, 96);
  gemm_l1<4, 6>(64, 96);
  gemm_l1<12, 2>(60, 128);
  // One B panel of the kernel's width (K 128 x 64 / 48 columns: 32 / 24 KiB) and 24 A rows:
  // the cases above touch 64 / 48 KiB of B, more than the 48 KiB L1 (dev/bwd_07_fp32_ceiling.md)
  gemm_l1<6, 4>(24, 64);
  gemm_l1<8, 3>(24, 48);
  return 0;
}
