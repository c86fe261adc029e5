// AMX-BF16 helpers shared by the forward (fwd_amx.cpp) and the backward (bwd_amx.cpp): the
// tile configuration, and products of float16 / float32 operands as sums of exact bf16 part
// products (EngineAmx<2 / 3>, bwd_amx_fp32): the exact split of a value into kParts bf16
// parts, the term tables, and one TDP pass on a 2x2 block of C tiles. Include only from *_amx.cpp, inside the file's SA_NS,
// after fwd_driver.h (bitsf) and <immintrin.h>.
#pragma once

// Palette 1 with all 8 tiles 16 rows x 64 bytes (every kernel here uses that one shape).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

static inline void load_tile_config() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

// 16 fp32 values x (the fp16 / fp32 input elements) as kParts (2, 3) bf16 vectors whose sum is x:
// part i = bf16(x - part 0 - ... - part i-1), round to nearest even. Every residual is exact in
// fp32 and the last part holds the rest exactly (8 significant bits per part: 16 >= fp16's 11,
// 24 = fp32's 24). +-Inf: part 0 carries it, the others are 0 (the residual would be Inf - Inf).
// fp32 values above the largest finite bf16 take a truncated part 0 (rounding would give Inf).
// AMX treats bf16 denormals as 0 (DAZ): a part below 2^-126 is lost, i.e. an fp32 value under
// ~2^-110 (1e-33) keeps 16 of its 24 bits, and fp32 denormal inputs count as 0 (their products
// are below every fp32 normal scale).
template <int kParts>
static inline void split_parts(__m512 x, __m256i part[kParts]) {
  const __mmask16 fin = ~_mm512_fpclass_ps_mask(x, 0x18);
  const __mmask16 big = _mm512_cmp_ps_mask(_mm512_abs_ps(x), _mm512_set1_ps(bitsf(0x7f7f0000u)), _CMP_GT_OQ) & fin;
  for (int i = 0; i < kParts; ++i) {
    const __m256bh hb = _mm512_cvtneps_pbh(x);
    __m256i h = reinterpret_cast<const __m256i&>(hb);
    if (i == 0) h = _mm256_mask_mov_epi16(h, big, _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(x), 16)));
    part[i] = h;
    if (i + 1 < kParts)
      x = _mm512_maskz_sub_ps(fin, x, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  }
}

// One AMX product pass: C += A_a B_b with A / B the parts a / b of the two operands.
struct Term {
  int a, b;
};
// S = Q K^T = sum over kQk[kParts] of Q_a K_b^T; O += P V = sum over kPv[kParts] of P_a V_b.
//   bf16:  S = Q K;                                     O += Ph V + Pl V            (P: 2 parts)
//   fp16:  S = Qh Kh + Qh Kl + Ql Kh + Ql Kl (exact);   O += Ph Vh + Ph Vl + Pl Vh  (P: 2 parts)
//   fp32:  the 6 products of order >= 2^-16 (parts 0..2; dropped terms ~2^-24 relative, the
//          size of fp32 rounding), for S and for O += P V (P: 3 parts, exact); the fp32
//          backward's S = Q K^T and dP = dY V^T use qk.
// Consecutive terms share an operand, so after the first each term loads one tile pair; the
// B operand (K / V, streamed from L2) is loaded once per part.
template <int kParts>
struct Terms;
template <>
struct Terms<1> {
  static constexpr Term qk[] = {{0, 0}};
  static constexpr Term pv[] = {{0, 0}, {1, 0}};
};
template <>
struct Terms<2> {
  static constexpr Term qk[] = {{1, 0}, {0, 0}, {0, 1}, {1, 1}};
  static constexpr Term pv[] = {{0, 1}, {0, 0}, {1, 0}};
};
template <>
struct Terms<3> {
  static constexpr Term qk[] = {{0, 2}, {0, 1}, {1, 1}, {1, 0}, {2, 0}, {0, 0}};
  static constexpr Term pv[] = {{0, 2}, {0, 1}, {1, 1}, {1, 0}, {2, 0}, {0, 0}};
};

// One pass C += A B on a 2x2 block of C tiles 0 1 / 2 3 (A rows: tiles 4, 5 when two; B
// columns: tiles 6, 7 when twod), loading the operand tiles that change (ca: A via la(i) into
// tile 4 + i, cb: B via lb(i) into 6 + i) interleaved with the TDPs, each load right after the
// last read of the tile it replaces.
template <class LA, class LB>
static inline void pass2x2(bool ca, bool cb, bool two, bool twod, LA la, LB lb) {
  if (ca && cb) {
    la(0);
    lb(0);
    _tile_dpbf16ps(0, 4, 6);
    if (twod) {
      lb(1);
      _tile_dpbf16ps(1, 4, 7);
    }
    if (two) {
      la(1);
      _tile_dpbf16ps(2, 5, 6);
      if (twod) _tile_dpbf16ps(3, 5, 7);
    }
  } else if (cb) {
    lb(0);
    _tile_dpbf16ps(0, 4, 6);
    if (two) _tile_dpbf16ps(2, 5, 6);
    if (twod) {
      lb(1);
      _tile_dpbf16ps(1, 4, 7);
      if (two) _tile_dpbf16ps(3, 5, 7);
    }
  } else {
    la(0);
    _tile_dpbf16ps(0, 4, 6);
    if (twod) _tile_dpbf16ps(1, 4, 7);
    if (two) {
      la(1);
      _tile_dpbf16ps(2, 5, 6);
      if (twod) _tile_dpbf16ps(3, 5, 7);
    }
  }
}
