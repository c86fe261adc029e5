// AVX-512 fp32 backward engine for bwd_driver.h (include inside SA_NS, after bwd_driver.h,
// in a file compiled with the AVX-512 flags; needs <immintrin.h>):
//   * gemm: register-blocked FMA micro-kernel (6 rows x 64 columns, 24 zmm accumulators, A
//     broadcast from any (row, k) strides so the transposed products P'^T dY and dS^T Q need
//     no transposition);
//   * grad_row: the element semantics of a row tile in 16 lanes (band / mask bits, pse /
//     ALiBi, exp2 polynomial of degree 5 (rel. err 1.6e-7, cpu/tile/exp2_poly.h), dropout,
//     dpse); strided mask / pse columns fall back to the scalar semantics;
//   * gen_words: a 16-lane Philox4x32-10 (bit-identical to common/philox.h).
#pragma once

template <int kBq_, int kBk_>
struct BwdEngineAvx512 {
  static constexpr int kBq = kBq_, kBk = kBk_;

  // ---- GEMM: C[m][n] (+)= sum_k A[m*a_sm + k*a_sk] * B[k*ldb + n] -------------------------
  template <int MR, int NV>
  static inline __attribute__((always_inline)) void micro(int K, const float* A, int64_t a_sm, int64_t a_sk,
                                                          const float* B, int64_t ldb, float* C, int64_t ldc, bool acc,
                                                          __mmask16 last) {
    __m512 c[MR][NV];
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const __mmask16 mk = v == NV - 1 ? last : __mmask16(0xffff);
        c[m][v] = acc ? _mm512_maskz_loadu_ps(mk, C + m * ldc + v * 16) : _mm512_setzero_ps();
      }
    for (int k = 0; k < K; ++k) {
      __m512 b[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        if (v == NV - 1)
          b[v] = _mm512_maskz_loadu_ps(last, B + k * ldb + v * 16);
        else
          b[v] = _mm512_loadu_ps(B + k * ldb + v * 16);
      }
      const float* a = A + k * a_sk;
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const __m512 av = _mm512_set1_ps(a[m * a_sm]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) c[m][v] = _mm512_fmadd_ps(av, b[v], c[m][v]);
      }
    }
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const __mmask16 mk = v == NV - 1 ? last : __mmask16(0xffff);
        _mm512_mask_storeu_ps(C + m * ldc + v * 16, mk, c[m][v]);
      }
  }

  template <int NV>
  static inline void rows(int M, int K, const float* A, int64_t a_sm, int64_t a_sk, const float* B, int64_t ldb,
                          float* C, int64_t ldc, bool acc, __mmask16 last) {
    constexpr int MR = 6;
    int m0 = 0;
    for (; m0 + MR <= M; m0 += MR)
      micro<MR, NV>(K, A + m0 * a_sm, a_sm, a_sk, B, ldb, C + m0 * ldc, ldc, acc, last);
    const float* a = A + m0 * a_sm;
    float* c = C + m0 * ldc;
    switch (M - m0) {
      case 1: micro<1, NV>(K, a, a_sm, a_sk, B, ldb, c, ldc, acc, last); break;
      case 2: micro<2, NV>(K, a, a_sm, a_sk, B, ldb, c, ldc, acc, last); break;
      case 3: micro<3, NV>(K, a, a_sm, a_sk, B, ldb, c, ldc, acc, last); break;
      case 4: micro<4, NV>(K, a, a_sm, a_sk, B, ldb, c, ldc, acc, last); break;
      case 5: micro<5, NV>(K, a, a_sm, a_sk, B, ldb, c, ldc, acc, last); break;
      default: break;
    }
  }

  static void gemm(int M, int N, int K, const float* A, int64_t a_sm, int64_t a_sk, const float* B, int64_t ldb,
                   float* C, int64_t ldc, bool acc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
      if (!acc)
        for (int m = 0; m < M; ++m) std::memset(C + m * ldc, 0, size_t(N) * 4);
      return;
    }
    for (int n0 = 0; n0 < N; n0 += 64) {
      const int nn = std::min(64, N - n0);
      const int nv = (nn + 15) / 16;
      const int rem = nn - (nv - 1) * 16;
      const __mmask16 last = __mmask16((1u << rem) - 1u);
      switch (nv) {
        case 1: rows<1>(M, K, A, a_sm, a_sk, B + n0, ldb, C + n0, ldc, acc, last); break;
        case 2: rows<2>(M, K, A, a_sm, a_sk, B + n0, ldb, C + n0, ldc, acc, last); break;
        case 3: rows<3>(M, K, A, a_sm, a_sk, B + n0, ldb, C + n0, ldc, acc, last); break;
        default: rows<4>(M, K, A, a_sm, a_sk, B + n0, ldb, C + n0, ldc, acc, last); break;
      }
    }
  }

  // ---- element semantics -------------------------------------------------------------------
  // e^t, t <= ~0 (kept logits); NaN -> NaN, -inf -> exactly 0 (as std::exp: a -inf logit has
  // P = 0 and then contributes nothing), other t clamped at 2^-126.
  static inline __m512 exp_ps(__m512 t) {
    const __m512 x0 = _mm512_mul_ps(t, _mm512_set1_ps(kLog2e));
    const __m512 x = _mm512_max_ps(_mm512_set1_ps(exp2c::kMinArg), x0);  // operand order keeps NaN
    const __m512 f = _mm512_reduce_ps(x, 0x09);  // x - floor(x) in [0, 1)
    const float* c = exp2c::d5;
    __m512 pl = _mm512_set1_ps(c[5]);
    pl = _mm512_fmadd_ps(pl, f, _mm512_set1_ps(c[4]));
    pl = _mm512_fmadd_ps(pl, f, _mm512_set1_ps(c[3]));
    pl = _mm512_fmadd_ps(pl, f, _mm512_set1_ps(c[2]));
    pl = _mm512_fmadd_ps(pl, f, _mm512_set1_ps(c[1]));
    pl = _mm512_fmadd_ps(pl, f, _mm512_set1_ps(c[0]));
    return _mm512_maskz_scalef_ps(_mm512_cmp_ps_mask(x0, _mm512_set1_ps(-INFINITY), _CMP_NEQ_UQ), pl, x);  // p * 2^floor(x)
  }

  static inline __m512 load_pse(DType dt, const void* base, int64_t idx, __mmask16 k) {
    switch (dt) {
      case DType::float16:
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(base) + idx));
      case DType::bfloat16: {
        const __m256i h = _mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(base) + idx);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      }
      default: return _mm512_maskz_loadu_ps(k, static_cast<const float*>(base) + idx);
    }
  }

  static void grad_row(const Problem& p, const bwd::GradRow& a, float* s, float* dp, int64_t j0, int jn) {
    const RowMeta& rm = *a.rm;
    const PseDesc& d = p.pse;
    // Rare layouts fall back to the scalar semantics: strided mask / pse columns, a
    // broadcast dpse column, or ALiBi distances outside int32.
    const bool slopes = d.kind == PseKind::slopes;
    if ((a.partial && rm.mrow && p.mask.sj != 1) || (d.kind == PseKind::tensor && d.sj != 1) ||
        (a.dpse && a.dsj != 1) ||
        (slopes && (std::llabs(rm.dist0) > (int64_t(1) << 30) || j0 + jn > (int64_t(1) << 30)))) {
      bwd::grad_row_scalar(p, a, s, dp, j0, jn);
      return;
    }
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 vscale = _mm512_set1_ps(a.scale), vmx = _mm512_set1_ps(a.mx), vis = _mm512_set1_ps(a.inv_sum);
    const __m512 vdsum = _mm512_set1_ps(a.dsum), vrkp = _mm512_set1_ps(a.rkp);
    const __m512 vslope = _mm512_set1_ps(rm.slope);
    const __m512i vthr = _mm512_set1_epi32(int32_t(a.thr));
    const __m512 pse_mul = _mm512_set1_ps(d.pse_type == 1 ? a.scale : 1.f);
    // band limits as int32 (clamped to [0, skv] <= 2^31)
    const __m512i vlo = _mm512_set1_epi32(int32_t(rm.lo)), vhi = _mm512_set1_epi32(int32_t(rm.hi));
    const __m512i vph = _mm512_set1_epi32(int32_t(rm.ph));
    // Slope-gradient sums of core/slope_grad.h. sum dS dist and sum dS in fp64 (lanes 0-7 /
    // 8-15): grad() cancels them against each other (terms ~S2 times the result), so their
    // fp32 rounding would be amplified like the errors the centring removes. sum P dist and
    // sum P in fp32: they only form the centre c, which multiplies sum dS (0 up to exactly
    // those errors), so their rounding is not amplified. (Measured: dev/bwd_05_slope_grad.md.)
    __m512d s_dsd[2], s_ds[2];
    for (int h = 0; h < 2; ++h) s_dsd[h] = s_ds[h] = _mm512_setzero_pd();
    __m512 s_pd = _mm512_setzero_ps(), s_p = _mm512_setzero_ps();
    for (int jj = 0; jj < jn; jj += 16) {
      const int rem = std::min(16, jn - jj);
      const __mmask16 m = __mmask16((1u << rem) - 1u);
      const int64_t j = j0 + jj;
      const __m512i jv = _mm512_add_epi32(_mm512_set1_epi32(int32_t(j)), iota);
      __mmask16 keep = m;
      if (a.partial) {
        const __mmask16 band = _mm512_cmpge_epi32_mask(jv, vlo) & _mm512_cmplt_epi32_mask(jv, vhi);
        keep &= band | _mm512_cmplt_epi32_mask(jv, vph);
        if (rm.mrow && keep) {
          const __m128i bytes = _mm_maskz_loadu_epi8(keep, rm.mrow + j);
          keep &= _mm_cmpeq_epi8_mask(bytes, _mm_setzero_si128());
        }
      }
      if (!keep) {
        _mm512_mask_storeu_ps(s + jj, m, _mm512_setzero_ps());
        _mm512_mask_storeu_ps(dp + jj, m, _mm512_setzero_ps());
        continue;
      }
      const __m512 qk = _mm512_maskz_loadu_ps(keep, s + jj);
      __m512 dpv = _mm512_maskz_loadu_ps(keep, dp + jj);
      __m512 x, dist = _mm512_setzero_ps();
      if (d.kind == PseKind::tensor) {
        const __m512 bias = load_pse(d.dtype, d.data, rm.pse_base + j, keep);
        x = d.pse_type == 1 ? _mm512_mul_ps(vscale, _mm512_add_ps(qk, bias)) : _mm512_fmadd_ps(vscale, qk, bias);
      } else if (slopes) {
        const __m512i dd = _mm512_abs_epi32(_mm512_add_epi32(jv, _mm512_set1_epi32(int32_t(rm.dist0))));
        dist = _mm512_cvtepi32_ps(dd);
        if (d.pse_type == 3) dist = _mm512_sqrt_ps(dist);
        x = _mm512_fnmadd_ps(vslope, dist, _mm512_mul_ps(vscale, qk));
      } else {
        x = _mm512_mul_ps(vscale, qk);
      }
      const __m512 pr = _mm512_maskz_mul_ps(keep, exp_ps(_mm512_sub_ps(x, vmx)), vis);
      __m512 pd = pr;
      if (a.w) {
        const __m512i wv = _mm512_maskz_loadu_epi32(keep, a.w + jj);
        const __mmask16 kb = _mm512_mask_cmplt_epu32_mask(keep, wv, vthr);
        pd = _mm512_maskz_mul_ps(kb, pr, vrkp);
        dpv = _mm512_maskz_mul_ps(kb, dpv, vrkp);
      }
      // dS = 0 at masked lanes and where P = 0 (no 0 * NaN from a non-finite dP or Dsum)
      const __mmask16 kds = _mm512_mask_cmp_ps_mask(keep, pr, _mm512_setzero_ps(), _CMP_NEQ_UQ);
      const __m512 ds = _mm512_maskz_mul_ps(kds, pr, _mm512_sub_ps(dpv, vdsum));
      _mm512_mask_storeu_ps(s + jj, m, pd);
      _mm512_mask_storeu_ps(dp + jj, m, _mm512_mul_ps(vscale, ds));
      if (a.dpse) {
        float* cell = a.dpse + j;
        const __m512 cv = _mm512_maskz_loadu_ps(keep, cell);
        _mm512_mask_storeu_ps(cell, keep, _mm512_fmadd_ps(pse_mul, ds, cv));
      }
      if (slopes) {  // masked lanes: ds = pr = 0
        const __m512d dsh[2] = {_mm512_cvtps_pd(_mm512_castps512_ps256(ds)), _mm512_cvtps_pd(_mm512_extractf32x8_ps(ds, 1))};
        const __m512d dih[2] = {_mm512_cvtps_pd(_mm512_castps512_ps256(dist)),
                                _mm512_cvtps_pd(_mm512_extractf32x8_ps(dist, 1))};
        for (int h = 0; h < 2; ++h) {
          s_dsd[h] = _mm512_fmadd_pd(dsh[h], dih[h], s_dsd[h]);
          s_ds[h] = _mm512_add_pd(s_ds[h], dsh[h]);
        }
        s_pd = _mm512_fmadd_ps(pr, dist, s_pd);
        s_p = _mm512_add_ps(s_p, pr);
      }
    }
    if (a.slope) {
      SlopeRowSums t;
      t.ds_dist = _mm512_reduce_add_pd(_mm512_add_pd(s_dsd[0], s_dsd[1]));
      t.ds = _mm512_reduce_add_pd(_mm512_add_pd(s_ds[0], s_ds[1]));
      t.p_dist = _mm512_reduce_add_ps(s_pd);
      t.p = _mm512_reduce_add_ps(s_p);
      a.slope->add(t);
    }
  }

  // ---- Philox4x32-10, 16 quads per step ------------------------------------------------------
  static inline void mul_hilo(__m512i a, __m512i mul, __m512i* hi, __m512i* lo) {
    const __m512i pe = _mm512_mul_epu32(a, mul);                         // even lanes, 64-bit
    const __m512i po = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), mul);  // odd lanes
    *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe, 32), po);
    *lo = _mm512_mask_blend_epi32(0xAAAA, pe, _mm512_slli_epi64(po, 32));
  }

  static void gen_words(uint64_t seed, uint64_t off, uint64_t q0, int64_t nq, uint32_t* w) {
    // Lane l holds quad 4*(l%4) + l/4, so the 4x4 in-lane transpose below leaves quads
    // 4k..4k+3 in output vector k (no cross-lane shuffles).
    const __m512i qidx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m512i M0 = _mm512_set1_epi32(int32_t(0xD2511F53u)), M1 = _mm512_set1_epi32(int32_t(0xCD9E8D57u));
    int64_t q = 0;
    for (; q + 16 <= nq; q += 16) {
      const uint64_t base = off + q0 + uint64_t(q);
      const __m512i blo = _mm512_set1_epi32(int32_t(uint32_t(base)));
      __m512i c0 = _mm512_add_epi32(blo, qidx);
      const __mmask16 carry = _mm512_cmplt_epu32_mask(c0, blo);
      __m512i c1 = _mm512_mask_add_epi32(_mm512_set1_epi32(int32_t(uint32_t(base >> 32))), carry,
                                         _mm512_set1_epi32(int32_t(uint32_t(base >> 32))), _mm512_set1_epi32(1));
      __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
      uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
      for (int round = 0; round < 10; ++round) {
        __m512i h0, l0, h1, l1;
        mul_hilo(c0, M0, &h0, &l0);
        mul_hilo(c2, M1, &h1, &l1);
        const __m512i n0 = _mm512_xor_si512(_mm512_xor_si512(h1, c1), _mm512_set1_epi32(int32_t(k0)));
        const __m512i n2 = _mm512_xor_si512(_mm512_xor_si512(h0, c3), _mm512_set1_epi32(int32_t(k1)));
        c0 = n0;
        c1 = l1;
        c2 = n2;
        c3 = l0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
      }
      const __m512i t0 = _mm512_unpacklo_epi32(c0, c1), t1 = _mm512_unpackhi_epi32(c0, c1);
      const __m512i t2 = _mm512_unpacklo_epi32(c2, c3), t3 = _mm512_unpackhi_epi32(c2, c3);
      _mm512_storeu_si512(w + 4 * q + 0, _mm512_unpacklo_epi64(t0, t2));
      _mm512_storeu_si512(w + 4 * q + 16, _mm512_unpackhi_epi64(t0, t2));
      _mm512_storeu_si512(w + 4 * q + 32, _mm512_unpacklo_epi64(t1, t3));
      _mm512_storeu_si512(w + 4 * q + 48, _mm512_unpackhi_epi64(t1, t3));
    }
    if (q < nq) gen_words_scalar(seed, off, q0 + uint64_t(q), nq - q, w + 4 * q);
  }
};

