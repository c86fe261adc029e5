// AVX-512 building blocks of the forward kernels: dtype row loads, exp2 polynomial
// (vreduceps + Horner + vscalefps), 16x16 fp32 transpose, the general logits of a row tile
// (scale / pse / ALiBi / band / explicit mask), vectorised Philox4x32-10.
// Include only from *_avx512.cpp / *_amx.cpp, inside the file's SA_NS, after fwd_driver.h.
#pragma once

#include <immintrin.h>

// Lane mask of the first n (0..16) lanes.
static inline __mmask16 lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}
// Lane mask of the first n (0..32) 16-bit lanes.
static inline __mmask32 lanes32(int64_t n) {
  return n >= 32 ? __mmask32(0xffffffffu) : n <= 0 ? __mmask32(0) : __mmask32((1u << n) - 1u);
}

// 16 (or n, zero-filled) elements of a dtype row as fp32.
static inline __m512 load16(const void* base, DType dt, int64_t off, __mmask16 k) {
  switch (dt) {
    case DType::float16:
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(base) + off));
    case DType::bfloat16:
      return _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(base) + off)), 16));
    default: return _mm512_maskz_loadu_ps(k, static_cast<const float*>(base) + off);
  }
}

// Row of D elements -> fp32 dst[0..Dp) (zero padded to Dp, a multiple of 16).
static inline void load_row_f32(const void* base, DType dt, int64_t off, float* dst, int64_t D, int64_t Dp) {
  for (int64_t d = 0; d < Dp; d += 16) _mm512_store_ps(dst + d, load16(base, dt, off + d, lanes(D - d)));
}

// Round a fp32 row once to dt and store it (bit-identical to store_elem: bf16 by integer
// round-to-nearest-even with quiet NaNs, fp16 by the IEEE hardware conversion).
static inline void store_row_avx512(void* base, DType dt, int64_t off, const float* src, int64_t D) {
  for (int64_t d = 0; d < D; d += 16) {
    const __mmask16 k = lanes(D - d);
    const __m512 x = _mm512_maskz_loadu_ps(k, src + d);
    if (dt == DType::float32) {
      _mm512_mask_storeu_ps(static_cast<float*>(base) + off + d, k, x);
    } else if (dt == DType::float16) {
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(base) + off + d, k,
                               _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    } else {
      const __m512i u = _mm512_castps_si512(x);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
      __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
      const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
      r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(base) + off + d, k, _mm512_cvtepi32_epi16(r));
    }
  }
}

// 2^t for t <= 0 (clamped at 2^-126). Degree DEG in {4, 5} (tile/exp2_poly.h).
template <int DEG>
static inline __m512 exp2_ps(__m512 t) {
  t = _mm512_max_ps(_mm512_set1_ps(exp2c::kMinArg), t);  // this operand order keeps NaN t (vmaxps returns operand 2)
  const __m512 f = _mm512_reduce_ps(t, 0x09);  // t - floor(t), round-down, no exceptions
  __m512 p;
  if constexpr (DEG == 4) {
    p = _mm512_set1_ps(exp2c::d4[4]);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d4[3]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d4[2]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d4[1]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d4[0]));
  } else {
    static_assert(DEG == 5, "degree 4 or 5");
    p = _mm512_set1_ps(exp2c::d5[5]);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d5[4]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d5[3]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d5[2]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d5[1]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d5[0]));
  }
  return _mm512_scalef_ps(p, t);  // p * 2^floor(t)
}

// exp2_ps with the forward's denormal flush (fwd_driver.h kPFlush): exactly 0 where
// t < kPFlush; NaN t stays NaN. One compare more, folded into the final vscalefps.
// The Horner chain is spelled out here and in exp2_ps on purpose: one shared helper changed
// GCC's inlining across fwd_amx.cpp and cost the bf16 kernel ~2% (3 alternating rounds).
template <int DEG>
static inline __m512 exp2_flush_ps(__m512 t) {
  const __mmask16 keep = _mm512_cmp_ps_mask(t, _mm512_set1_ps(kPFlush), _CMP_NLT_UQ);
  t = _mm512_max_ps(_mm512_set1_ps(exp2c::kMinArg), t);
  const __m512 f = _mm512_reduce_ps(t, 0x09);
  __m512 p;
  if constexpr (DEG == 4) {
    p = _mm512_set1_ps(exp2c::d4[4]);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d4[3]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d4[2]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d4[1]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d4[0]));
  } else {
    static_assert(DEG == 5, "degree 4 or 5");
    p = _mm512_set1_ps(exp2c::d5[5]);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d5[4]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d5[3]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d5[2]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d5[1]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2c::d5[0]));
  }
  return _mm512_maskz_scalef_ps(keep, p, t);
}

// In-register transpose of a 16x16 fp32 block: r[i][j] -> r[j][i].
static inline void transpose16x16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
  }
}

static inline float row_max_avx512(const float* s, int jn) {
  __m512 m0 = _mm512_set1_ps(kMasked), m1 = m0;
  int j = 0;
  for (; j + 32 <= jn; j += 32) {
    m0 = _mm512_max_ps(m0, _mm512_loadu_ps(s + j));
    m1 = _mm512_max_ps(m1, _mm512_loadu_ps(s + j + 16));
  }
  for (; j < jn; j += 16) m0 = _mm512_max_ps(m0, _mm512_mask_loadu_ps(_mm512_set1_ps(kMasked), lanes(jn - j), s + j));
  return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

// The general logits of a row tile (vector form of logits_row_scalar). s[0..jn): qk -> x.
static inline float logits_row_avx512(const Problem& p, const RowMeta& rm, float* s, int64_t j0, int jn) {
  const PseDesc& d = p.pse;
  const bool mask_vec = !rm.mrow || p.mask.sj == 1;
  const bool pse_vec = d.kind != PseKind::tensor || d.sj == 1;
  const int64_t abase = j0 + rm.dist0;
  const bool alibi_vec = d.kind != PseKind::slopes || (std::llabs(abase) + jn < (int64_t(1) << 30));
  if (!mask_vec || !pse_vec || !alibi_vec || j0 + jn >= (int64_t(1) << 30))
    return logits_row_scalar(p, rm, s, j0, jn);
  const __m512 vscale = _mm512_set1_ps(float(p.scale)), vmasked = _mm512_set1_ps(kMasked);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i vlo = _mm512_set1_epi32(int32_t(rm.lo)), vhi = _mm512_set1_epi32(int32_t(rm.hi)),
                vph = _mm512_set1_epi32(int32_t(rm.ph));
  const __m512 vslope = _mm512_set1_ps(rm.slope);
  __m512 mx = vmasked;
  for (int j = 0; j < jn; j += 16) {
    const __mmask16 kt = lanes(jn - j);
    const __m512i jv = _mm512_add_epi32(_mm512_set1_epi32(int32_t(j0 + j)), iota);
    __mmask16 keep = (_mm512_cmpge_epi32_mask(jv, vlo) & _mm512_cmplt_epi32_mask(jv, vhi)) |
                     _mm512_cmplt_epi32_mask(jv, vph);
    keep &= kt;
    if (rm.mrow) {
      const __m128i mb = _mm_maskz_loadu_epi8(keep, rm.mrow + j0 + j);
      keep &= _mm_cmpeq_epi8_mask(mb, _mm_setzero_si128());
    }
    const __m512 qk = _mm512_maskz_loadu_ps(kt, s + j);
    __m512 x;
    if (d.kind == PseKind::tensor) {
      const __m512 bias = load16(d.data, d.dtype, rm.pse_base + j0 + j, keep);
      x = d.pse_type == 1 ? _mm512_mul_ps(vscale, _mm512_add_ps(qk, bias))
                          : _mm512_add_ps(_mm512_mul_ps(vscale, qk), bias);  // two roundings, as scalar
    } else if (d.kind == PseKind::slopes) {
      const __m512i dv = _mm512_add_epi32(_mm512_set1_epi32(int32_t(abase + j)), iota);
      __m512 dist = _mm512_cvtepi32_ps(_mm512_abs_epi32(dv));
      if (d.pse_type == 3) dist = _mm512_sqrt_ps(dist);
      x = _mm512_sub_ps(_mm512_mul_ps(vscale, qk), _mm512_mul_ps(vslope, dist));
    } else {
      x = _mm512_mul_ps(vscale, qk);
    }
    x = _mm512_mask_mov_ps(vmasked, keep, x);
    mx = _mm512_mask_max_ps(mx, kt, mx, x);
    _mm512_mask_storeu_ps(s + j, kt, x);
  }
  return _mm512_reduce_max_ps(mx);
}

// sqrt(float(|k|)) for k in [-h, h), indexed by signed k (pse_type 3 ALiBi distances): per
// thread, grown on demand; std::sqrt(float) is correctly rounded, as vsqrtps (bit-identical).
// vsqrtps zmm has a reciprocal throughput of ~12 cycles: a contiguous load is far cheaper.
constexpr int64_t kSqrtTableMax = int64_t(1) << 20;  // half-width limit (8 MiB per thread)
static inline const float* alibi_sqrt_table(int64_t h) {
  static thread_local std::vector<float> tab;
  static thread_local int64_t half = 0;
  if (h > half) {
    half = std::min(std::max(h, 2 * half), kSqrtTableMax);
    tab.resize(size_t(2 * half));
    for (int64_t k = 0; k < 2 * half; ++k) tab[size_t(k)] = std::sqrt(float(std::llabs(k - half)));
  }
  return tab.data() + half;
}

// The logits of a row tile whose keys [j0, j0 + jn) are ALL kept (kFull / kPrefix rows with
// pse / ALiBi or scale <= 0): logits_row_avx512 without the keep compares, mask bytes and
// masked stores; the bias is added in registers in the max pass, with the same roundings
// (ALiBi: |j + c| as int32 iota, one cvt, [sqrt,] scale*qk - slope*dist).
static inline float logits_row_kept_avx512(const Problem& p, const RowMeta& rm, float* s, int64_t j0, int jn) {
  const PseDesc& d = p.pse;
  const int64_t abase = j0 + rm.dist0;
  if ((d.kind == PseKind::tensor && d.sj != 1) ||
      (d.kind == PseKind::slopes && std::llabs(abase) + jn >= (int64_t(1) << 30)))
    return logits_row_avx512(p, rm, s, j0, jn);  // every key kept: the same x
  const __m512 vscale = _mm512_set1_ps(float(p.scale)), vslope = _mm512_set1_ps(rm.slope);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const int64_t hreach = std::llabs(abase) + jn + 16;
  const float* sq = d.kind == PseKind::slopes && d.pse_type == 3 && hreach <= kSqrtTableMax
                        ? alibi_sqrt_table(hreach) + abase
                        : nullptr;  // sq[j] = sqrt(|abase + j|)
  __m512 mx0 = _mm512_set1_ps(kMasked), mx1 = mx0;
  auto one = [&](int j, __mmask16 kt) -> __m512 {
    const __m512 qk = _mm512_maskz_loadu_ps(kt, s + j);
    __m512 x;
    if (d.kind == PseKind::tensor) {
      const __m512 bias = load16(d.data, d.dtype, rm.pse_base + j0 + j, kt);
      x = d.pse_type == 1 ? _mm512_mul_ps(vscale, _mm512_add_ps(qk, bias))
                          : _mm512_add_ps(_mm512_mul_ps(vscale, qk), bias);
    } else if (d.kind == PseKind::slopes) {
      __m512 dist;
      if (sq) {
        dist = _mm512_maskz_loadu_ps(kt, sq + j);
      } else {
        const __m512i dv = _mm512_add_epi32(_mm512_set1_epi32(int32_t(abase + j)), iota);
        dist = _mm512_cvtepi32_ps(_mm512_abs_epi32(dv));
        if (d.pse_type == 3) dist = _mm512_sqrt_ps(dist);
      }
      x = _mm512_sub_ps(_mm512_mul_ps(vscale, qk), _mm512_mul_ps(vslope, dist));
    } else {
      x = _mm512_mul_ps(vscale, qk);
    }
    _mm512_mask_storeu_ps(s + j, kt, x);
    return x;
  };
  int j = 0;
  for (; j + 32 <= jn; j += 32) {
    mx0 = _mm512_max_ps(mx0, one(j, 0xffff));
    mx1 = _mm512_max_ps(mx1, one(j + 16, 0xffff));
  }
  for (; j < jn; j += 16) {
    const __mmask16 kt = lanes(jn - j);
    mx0 = _mm512_mask_max_ps(mx0, kt, mx0, one(j, kt));
  }
  return _mm512_reduce_max_ps(_mm512_max_ps(mx0, mx1));
}

// Vectorised Philox4x32-10 for 16 consecutive counters (quads q0..q0+15): writes 64 words
// (element order: quad q's 4 words at w[4q..4q+3]). Bit-identical to philox10().
static inline __m512i mulhi_epu32(__m512i a, __m512i b, __m512i* lo) {
  const __m512i even = _mm512_mul_epu32(a, b);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), b);
  *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  return _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}
static inline void philox16(uint64_t seed, uint64_t cbase, uint32_t* w) {
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i base_lo = _mm512_set1_epi32(int32_t(uint32_t(cbase)));
  __m512i c0 = _mm512_add_epi32(base_lo, iota);
  // carry into the high word where the low word wrapped
  const __mmask16 carry = _mm512_cmplt_epu32_mask(c0, base_lo);
  __m512i c1 = _mm512_mask_add_epi32(_mm512_set1_epi32(int32_t(uint32_t(cbase >> 32))), carry,
                                     _mm512_set1_epi32(int32_t(uint32_t(cbase >> 32))), _mm512_set1_epi32(1));
  __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  const __m512i M0 = _mm512_set1_epi32(int32_t(0xD2511F53u)), M1 = _mm512_set1_epi32(int32_t(0xCD9E8D57u));
  for (int round = 0; round < 10; ++round) {
    __m512i lo0, lo1;
    const __m512i hi0 = mulhi_epu32(c0, M0, &lo0);
    const __m512i hi1 = mulhi_epu32(c2, M1, &lo1);
    const __m512i n0 = _mm512_ternarylogic_epi32(hi1, c1, _mm512_set1_epi32(int32_t(k0)), 0x96);
    const __m512i n2 = _mm512_ternarylogic_epi32(hi0, c3, _mm512_set1_epi32(int32_t(k1)), 0x96);
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const __m512i a = _mm512_unpacklo_epi32(c0, c1), b = _mm512_unpackhi_epi32(c0, c1);
  const __m512i c = _mm512_unpacklo_epi32(c2, c3), d = _mm512_unpackhi_epi32(c2, c3);
  const __m512i e[4] = {_mm512_unpacklo_epi64(a, c), _mm512_unpackhi_epi64(a, c), _mm512_unpacklo_epi64(b, d),
                        _mm512_unpackhi_epi64(b, d)};
  // e[k] lane l holds quad 4l + k
  const __m512i x0 = _mm512_shuffle_i32x4(e[0], e[1], 0x44);  // q0 q4 q1 q5
  const __m512i x1 = _mm512_shuffle_i32x4(e[2], e[3], 0x44);  // q2 q6 q3 q7
  const __m512i x2 = _mm512_shuffle_i32x4(e[0], e[1], 0xEE);  // q8 q12 q9 q13
  const __m512i x3 = _mm512_shuffle_i32x4(e[2], e[3], 0xEE);  // q10 q14 q11 q15
  _mm512_storeu_si512(w, _mm512_shuffle_i32x4(x0, x1, 0x88));        // q0 q1 q2 q3
  _mm512_storeu_si512(w + 16, _mm512_shuffle_i32x4(x0, x1, 0xDD));   // q4 q5 q6 q7
  _mm512_storeu_si512(w + 32, _mm512_shuffle_i32x4(x2, x3, 0x88));   // q8 ..
  _mm512_storeu_si512(w + 48, _mm512_shuffle_i32x4(x2, x3, 0xDD));   // q12 ..
}
static inline void gen_words_avx512(uint64_t seed, uint64_t off, uint64_t q0, int64_t nq, uint32_t* w) {
  int64_t q = 0;
  for (; q + 16 <= nq; q += 16) philox16(seed, off + q0 + uint64_t(q), w + 4 * q);
  if (q < nq) gen_words_scalar(seed, off, q0 + uint64_t(q), nq - q, w + 4 * q);
}

// P = exp2((x*xs - mn) * log2e) over a row; general rows zero masked (x == kMasked) lanes;
// flush: P = 0 where the exp2 argument is below kPFlush (fwd_driver.h);
// returns the pre-dropout sum; dropped positions (w >= thr, unsigned) -> 0. Writes fp32 P.
template <int DEG, bool FLUSH>
static inline float exp_row_f32_avx512_t(float* s, int jn, float xs, float mn, bool general, const uint32_t* w,
                                         uint32_t thr) {
  const __m512 vxs = _mm512_set1_ps(xs), vmn = _mm512_set1_ps(mn), vl2e = _mm512_set1_ps(kLog2e),
               vmasked = _mm512_set1_ps(kMasked);
  const __m512i vthr = _mm512_set1_epi32(int32_t(thr));
  __m512 sum = _mm512_setzero_ps();
  for (int j = 0; j < jn; j += 16) {
    const __mmask16 kt = lanes(jn - j);
    const __m512 x = _mm512_maskz_loadu_ps(kt, s + j);
    const __m512 t = _mm512_mul_ps(_mm512_fmsub_ps(x, vxs, vmn), vl2e);
    __mmask16 k = kt;
    if (general) k &= _mm512_cmp_ps_mask(x, vmasked, _CMP_NEQ_UQ);  // NaN logits stay
    __m512 pv;
    if constexpr (FLUSH) pv = _mm512_maskz_mov_ps(k, exp2_flush_ps<DEG>(t));
    else pv = _mm512_maskz_mov_ps(k, exp2_ps<DEG>(t));
    sum = _mm512_add_ps(sum, pv);
    if (w) pv = _mm512_maskz_mov_ps(_mm512_cmplt_epu32_mask(_mm512_maskz_loadu_epi32(kt, w + j), vthr), pv);
    _mm512_mask_storeu_ps(s + j, kt, pv);
  }
  return _mm512_reduce_add_ps(sum);
}
template <int DEG>
static inline float exp_row_f32_avx512(float* s, int jn, float xs, float mn, bool general, bool flush,
                                       const uint32_t* w, uint32_t thr) {
  return flush ? exp_row_f32_avx512_t<DEG, true>(s, jn, xs, mn, general, w, thr)
               : exp_row_f32_avx512_t<DEG, false>(s, jn, xs, mn, general, w, thr);
}

// The fp32 softmax-row steps of the fwd_driver.h engine interface, shared by the engines whose
// S rows (E::srow) and O rows (E::orow, E::orow_width() floats, a multiple of 16, 64-B aligned)
// are plain fp32: EngineAvx512 and EngineDecode. CRTP: E derives from SoftmaxRowsAvx512<E>.
template <class E>
struct SoftmaxRowsAvx512 {
  void zero_p(int r, int jn) { std::memset(self().srow(r), 0, size_t(jn) * sizeof(float)); }
  void zero_p_from(int r, int from, int jn) {
    std::memset(self().srow(r) + from, 0, size_t(jn - from) * sizeof(float));
  }
  float row_max(const float* s, int jn) { return row_max_avx512(s, jn); }
  float logits_row(const Problem& p, const RowMeta& rm, float* s, int64_t j0, int jn) {
    return logits_row_avx512(p, rm, s, j0, jn);
  }
  float logits_row_kept(const Problem& p, const RowMeta& rm, float* s, int64_t j0, int jn) {
    return logits_row_kept_avx512(p, rm, s, j0, jn);
  }
  float exp_row(int r, int jn, float xs, float mn, bool general, bool flush, const uint32_t* w, uint32_t thr) {
    return exp_row_f32_avx512<5>(self().srow(r), jn, xs, mn, general, flush, w, thr);
  }
  void scale_o(int r, float alpha) {
    float* o = self().orow(r);
    const __m512 a = _mm512_set1_ps(alpha);
    for (int64_t d = 0; d < self().orow_width(); d += 16)
      _mm512_store_ps(o + d, _mm512_mul_ps(_mm512_load_ps(o + d), a));
  }

 private:
  E& self() { return static_cast<E&>(*this); }
};
