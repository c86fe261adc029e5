// The AVX2 + FMA forward kernel (fp32 compute for every dtype): the portable engine
// (fwd_engine_portable.h: loads, softmax bookkeeping) with AVX2 register-tiled micro-kernels
// for QK^T (6 rows x 16 keys, 12 ymm accumulators) and PV (6 rows x 16 columns) and an AVX2
// degree-5 exp2. GCC kept the portable kernels' accumulator arrays on the stack (perf annotate:
// vmovaps spills in the FMA loop, 20-29 GFLOP per core-second), hence the intrinsics.
// Tiles: kBq 128 rows x kBk 256 keys (S 128 KiB, K^T/V 128 KiB each at D=128: L2-resident).
#if defined(__x86_64__) || defined(_M_X64)  // x86-only file (the registry lists it only there)
#define SA_NS fwd_avx2_ns
#include "cpu/fwd_driver.h"

#include <immintrin.h>

#include "cpu/fwd_kernels.h"

namespace speedattn {
namespace SA_NS {
#include "cpu/fwd_engine_portable.h"

template <int RB>
static inline void qk_tile_avx2(const float* const* qrow, const float* Kt, int64_t ldk, int64_t D, float* S,
                                int64_t lds) {
  __m256 acc[RB][2];
  for (int r = 0; r < RB; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    const __m256 k0 = _mm256_loadu_ps(Kt + d * ldk), k1 = _mm256_loadu_ps(Kt + d * ldk + 8);
    for (int r = 0; r < RB; ++r) {
      const __m256 q = _mm256_broadcast_ss(qrow[r] + d);
      acc[r][0] = _mm256_fmadd_ps(q, k0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(q, k1, acc[r][1]);
    }
  }
  for (int r = 0; r < RB; ++r) {
    _mm256_storeu_ps(S + r * lds, acc[r][0]);
    _mm256_storeu_ps(S + r * lds + 8, acc[r][1]);
  }
}

template <int RB>
static inline void pv_tile_avx2(float* O, int64_t Dp, const float* P, int64_t ldp, const float* V, int64_t ldv,
                                int jn) {
  __m256 acc[RB][2];
  for (int r = 0; r < RB; ++r) {
    acc[r][0] = _mm256_loadu_ps(O + r * Dp);
    acc[r][1] = _mm256_loadu_ps(O + r * Dp + 8);
  }
  for (int j = 0; j < jn; ++j) {
    const __m256 v0 = _mm256_loadu_ps(V + j * ldv), v1 = _mm256_loadu_ps(V + j * ldv + 8);
    for (int r = 0; r < RB; ++r) {
      const __m256 pb = _mm256_broadcast_ss(P + r * ldp + j);
      acc[r][0] = _mm256_fmadd_ps(pb, v0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(pb, v1, acc[r][1]);
    }
  }
  for (int r = 0; r < RB; ++r) {
    _mm256_storeu_ps(O + r * Dp, acc[r][0]);
    _mm256_storeu_ps(O + r * Dp + 8, acc[r][1]);
  }
}

// 2^t, t clamped at -126 (tile/exp2_poly.h degree 5); NaN in, NaN out; flush: exactly 0 for
// t < kPFlush (fwd_driver.h denormal flush).
static inline __m256 exp2_avx2(__m256 t, bool flush) {
  const __m256 keep = flush ? _mm256_cmp_ps(t, _mm256_set1_ps(kPFlush), _CMP_NLT_UQ)  // t >= flush or NaN
                            : _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  t = _mm256_max_ps(_mm256_set1_ps(exp2c::kMinArg), t);  // operand order: NaN t propagates
  const __m256 fl = _mm256_floor_ps(t);
  const __m256 f = _mm256_sub_ps(t, fl);
  __m256 p = _mm256_set1_ps(exp2c::d5[5]);
  for (int c = 4; c >= 0; --c) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(exp2c::d5[c]));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fl), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

struct EngineAvx2 : EnginePortable<128, 256> {
  using Base = EnginePortable<128, 256>;
  static constexpr int kRows = 6;  // 6 x 2 ymm accumulators + 2 operands + 1 broadcast
  using Base::Base;

  void qk(int rlo, int rhi, int jn) {
    const int jn16 = int(round_up(jn, 16));
    for (int r0 = rlo; r0 < rhi; r0 += kRows) {
      const int rb = std::min(kRows, rhi - r0);
      const float* qrow[kRows];
      for (int rr = 0; rr < kRows; ++rr) qrow[rr] = Q + std::min(r0 + rr, rhi - 1) * Dp;
      alignas(32) float tmpS[kRows * 16];
      for (int j = 0; j < jn16; j += 16) {
        if (rb == kRows) {
          qk_tile_avx2<kRows>(qrow, Kt + j, kBk, D, S + r0 * kBk + j, kBk);
        } else {
          qk_tile_avx2<kRows>(qrow, Kt + j, kBk, D, tmpS, 16);
          for (int rr = 0; rr < rb; ++rr) std::memcpy(S + (r0 + rr) * kBk + j, tmpS + rr * 16, 64);
        }
      }
    }
  }

  void pv(int rlo, int rhi, int jn) {
    for (int r0 = rlo; r0 < rhi; r0 += kRows) {
      const int rb = std::min(kRows, rhi - r0);
      for (int64_t d0 = 0; d0 < Dp; d0 += 16) {
        switch (rb) {
          case 1: pv_tile_avx2<1>(O + r0 * Dp + d0, Dp, S + r0 * kBk, kBk, V + d0, Dp, jn); break;
          case 2: pv_tile_avx2<2>(O + r0 * Dp + d0, Dp, S + r0 * kBk, kBk, V + d0, Dp, jn); break;
          case 3: pv_tile_avx2<3>(O + r0 * Dp + d0, Dp, S + r0 * kBk, kBk, V + d0, Dp, jn); break;
          case 4: pv_tile_avx2<4>(O + r0 * Dp + d0, Dp, S + r0 * kBk, kBk, V + d0, Dp, jn); break;
          case 5: pv_tile_avx2<5>(O + r0 * Dp + d0, Dp, S + r0 * kBk, kBk, V + d0, Dp, jn); break;
          default: pv_tile_avx2<6>(O + r0 * Dp + d0, Dp, S + r0 * kBk, kBk, V + d0, Dp, jn); break;
        }
      }
    }
  }

  float exp_row(int r, int jn, float xs, float mn, bool general, bool flush, const uint32_t* w, uint32_t thr) {
    float* s = srow(r);
    const __m256 vxs = _mm256_set1_ps(xs), vmn = _mm256_set1_ps(mn), vl2e = _mm256_set1_ps(kLog2e),
                 vmasked = _mm256_set1_ps(kMasked);
    __m256 acc = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= jn; j += 8) {
      const __m256 x = _mm256_loadu_ps(s + j);
      __m256 pv = exp2_avx2(_mm256_mul_ps(_mm256_fmsub_ps(x, vxs, vmn), vl2e), flush);
      if (general) pv = _mm256_and_ps(pv, _mm256_cmp_ps(x, vmasked, _CMP_NEQ_UQ));
      acc = _mm256_add_ps(acc, pv);
      _mm256_storeu_ps(s + j, pv);
    }
    alignas(32) float lanes8[8];
    _mm256_store_ps(lanes8, acc);
    float sum = 0.f;
    for (int k = 0; k < 8; ++k) sum += lanes8[k];
    for (; j < jn; ++j) {
      const float x = s[j];
      float pv = exp2f_poly((x * xs - mn) * kLog2e, flush);
      if (general && x == kMasked) pv = 0.f;
      sum += pv;
      s[j] = pv;
    }
    if (w)
      for (int jj = 0; jj < jn; ++jj)
        if (!(w[jj] < thr)) s[jj] = 0.f;
    return sum;
  }
};

}  // namespace SA_NS

namespace cpu {
void fwd_avx2(const Problem& p) { SA_NS::forward<SA_NS::EngineAvx2>(p); }
}  // namespace cpu
}  // namespace speedattn
#endif  // x86-64
