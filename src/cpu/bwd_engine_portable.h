// Portable fp32 backward engine for bwd_driver.h: plain C++ loops written so the compiler
// vectorises them (constant-trip inner loops over 16 lanes). Used by the scalar backward
// (baseline flags, also non-x86) and the AVX2 backward (same code with -mavx2 -mfma).
// Include inside the SA_NS of the including file, after bwd_driver.h.
#pragma once

template <int kBq_, int kBk_>
struct BwdEnginePortable {
  static constexpr int kBq = kBq_, kBk = kBk_;

  // c + a * b: one FMA where the target has a fast one (the AVX2 build), else a multiply and an
  // add. Explicit, so every call site rounds alike whether the compiler inlines, vectorises or
  // contracts it or not: bwd::gemm_dsum's Dsum must equal an element of dP = dY V^T to the bit.
  static inline float madd(float a, float b, float c) {
#if defined(__FP_FAST_FMAF) || defined(__FMA__)
    return __builtin_fmaf(a, b, c);
#else
    return c + a * b;
#endif
  }

  // C[m][n] (+)= sum_k A[m*a_sm + k*a_sk] * B[k*ldb + n], m < M, n < N, k < K.
  static void gemm(int M, int N, int K, const float* A, int64_t a_sm, int64_t a_sk, const float* B, int64_t ldb,
                   float* C, int64_t ldc, bool acc) {
    constexpr int RB = 4;
    int n0 = 0;
    for (; n0 + 16 <= N; n0 += 16) {
      for (int m0 = 0; m0 < M; m0 += RB) {
        const int mb = std::min(RB, M - m0);
        float c[RB][16];
        for (int rr = 0; rr < RB; ++rr)
          for (int t = 0; t < 16; ++t) c[rr][t] = (acc && rr < mb) ? C[(m0 + rr) * ldc + n0 + t] : 0.f;
        for (int k = 0; k < K; ++k) {
          const float* b = B + k * ldb + n0;
          float av[RB];
          for (int rr = 0; rr < RB; ++rr) av[rr] = rr < mb ? A[(m0 + rr) * a_sm + k * a_sk] : 0.f;
          for (int rr = 0; rr < RB; ++rr)
            for (int t = 0; t < 16; ++t) c[rr][t] = madd(av[rr], b[t], c[rr][t]);
        }
        for (int rr = 0; rr < mb; ++rr)
          for (int t = 0; t < 16; ++t) C[(m0 + rr) * ldc + n0 + t] = c[rr][t];
      }
    }
    if (n0 < N) {
      for (int m = 0; m < M; ++m)
        for (int n = n0; n < N; ++n) {
          float c = acc ? C[m * ldc + n] : 0.f;
          for (int k = 0; k < K; ++k) c = madd(A[m * a_sm + k * a_sk], B[k * ldb + n], c);
          C[m * ldc + n] = c;
        }
    }
  }

  static void grad_row(const Problem& p, const bwd::GradRow& a, float* s, float* dp, int64_t j0, int jn) {
    bwd::grad_row_scalar(p, a, s, dp, j0, jn);
  }

  static void gen_words(uint64_t seed, uint64_t off, uint64_t q0, int64_t nq, uint32_t* w) {
    gen_words_scalar(seed, off, q0, nq, w);
  }
};
