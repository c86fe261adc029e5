// The decode engine of the forward driver (fwd_driver.h): problems with S1 * G <= 16 query rows
// per kv head. Include only from *_avx512.cpp / *_amx.cpp, inside the file's SA_NS, after
// fwd_driver.h and tile/simd_avx512.h (fwd_amx.cpp derives an AMX-QK variant from it).
#pragma once

// ---- decode engine: few query rows per kv head (S1 * G <= kRows) --------------------------
// Shapes: a task holds all R <= 16 query rows of one kv head (the G heads x S1 rows), so each
// key block of K and V is read ONCE from memory, straight from the input tensor: no K^T
// transpose and no fp32 staging (EngineAvx512 spends 32 shuffles per key on the transpose,
// dev/08_decode.txt). Split-KV over the key range by the driver keeps both cores busy.
//   S = Q K^T : per key, the K row as fp32 vectors (bf16: even / odd lanes of each 32-element
//               chunk, two ALU ops), R dot products into 16-lane partials, then a 16-key
//               transpose-add (45 ops per 16 keys per row) -> S row.
//   O += P V  : V rows converted on load, P broadcast, register tiles of <= 6 rows x 64 columns.
// Q and O are kept in the same "engine order" as the converted rows (bf16: even/odd permuted
// within each 32-element chunk); end_task restores natural order before the driver reads O.
template <DType DT>
struct EngineDecode : EngineRowState<16, 256, 256 + 80>, SoftmaxRowsAvx512<EngineDecode<DT>> {
  static constexpr int kRows = 16;  // rows per task: R * D/16 FMAs per key stay under the
                                    // DRAM time of a K+V row (~95 cycles at 13 GB/s, D=128)
  static constexpr int kBq = kRows, kBk = 256;  // S = 16 KiB, partial sums 16 KiB: L1
  static constexpr int kPvRows = 6;             // 6 x 4 accumulators + 4 V + 1 broadcast zmm
  static constexpr int kWords = 256 + 80;
  struct Shared {
    explicit Shared(const Problem&) {}
  };
  int64_t D, Dv;  // Dv = D rounded up to 32 (engine vectors come in even/odd pairs)
  Buf bq, bacc;
  float *Q, *acc;
  const void* kdat = nullptr;
  const void* vdat = nullptr;
  int64_t koff = 0, voff = 0, kss = 0, vss = 0;
  int R_ = 0;
  Buf bvz;          // the block's values with those rows zeroed (only for such blocks)

  EngineDecode(const Problem& p, const Shared&) : EngineRowState(round_up(p.D, 32)), D(p.D), Dv(round_up(p.D, 32)) {
    static_assert(kBq == 16 && kBk == 256 && kWords == 256 + 80, "EngineRowState arguments");
    Q = bq.get<float>(size_t(kBq * Dv));
    acc = bacc.get<float>(size_t(kBq * 16 * 16));
  }
  static constexpr int kStrip = kBq;
  static constexpr bool kOverlap = false;
  static constexpr int kRowsPerStep = 1;
  template <class F> void qk_overlap(int, int, int, F&) {}
  template <class F> void pv_overlap(int, int, int, F&) {}
  float p_at(int r, int jj) const { return S[r * kBk + jj]; }
  // position of element d in an O row (engine order: bf16 even / odd lanes per 32-chunk)
  static int64_t opos(int64_t d) {
    if constexpr (DT == DType::bfloat16) return (d & ~int64_t(31)) + ((d & 1) ? 16 : 0) + ((d & 31) >> 1);
    return d;
  }
  static void store_row(void* base, DType dt, int64_t off, const float* src, int64_t D) {
    store_row_avx512(base, dt, off, src, D);
  }

  // Elements [32c, 32c+32) of the row at element offset off as two fp32 vectors in engine order
  // (lanes at or beyond D are 0).
  static inline void load2(const void* base, int64_t off, int64_t D, int64_t c, __m512& a, __m512& b) {
    if constexpr (DT == DType::bfloat16) {
      const uint16_t* src = static_cast<const uint16_t*>(base) + off + 32 * c;
      const __m512i x = D >= 32 * c + 32 ? _mm512_loadu_si512(src) : _mm512_maskz_loadu_epi16(lanes32(D - 32 * c), src);
      a = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
      b = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(int32_t(0xffff0000u))));
    } else {
      a = load16(base, DT, off + 32 * c, lanes(D - 32 * c));
      b = load16(base, DT, off + 32 * c + 16, lanes(D - 32 * c - 16));
    }
  }

  void begin_task(const Problem& p, int64_t b, int64_t, const RowMeta* rm, int R) {
    R_ = R;
    for (int r = 0; r < R; ++r) {
      const int64_t off = b * p.q.sb + (p.row0_q[size_t(b)] + rm[r].i) * p.q.ss + rm[r].n * p.q.sn;
      for (int64_t c = 0; c < Dv / 32; ++c) {
        __m512 a, bb;
        load2(p.q.data, off, D, c, a, bb);
        _mm512_store_ps(Q + r * Dv + 32 * c, a);
        _mm512_store_ps(Q + r * Dv + 32 * c + 16, bb);
      }
    }
    std::memset(O, 0, size_t(R * Dv) * sizeof(float));
  }
  void end_task() {  // O back to natural element order
    if constexpr (DT == DType::bfloat16) {
      const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
      const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
      for (int r = 0; r < R_; ++r)
        for (int64_t c = 0; c < Dv / 32; ++c) {
          float* o = O + r * Dv + 32 * c;
          const __m512 a = _mm512_load_ps(o), b = _mm512_load_ps(o + 16);
          _mm512_store_ps(o, _mm512_permutex2var_ps(a, lo, b));
          _mm512_store_ps(o + 16, _mm512_permutex2var_ps(a, hi, b));
        }
    }
  }

  void load_kv(const Problem& p, int64_t b, int64_t g, int64_t j0, int jn) {
    kdat = p.k.data;
    vdat = p.v.data;
    kss = p.k.ss;
    vss = p.v.ss;
    koff = b * p.k.sb + (p.row0_kv[size_t(b)] + j0) * p.k.ss + g * p.k.sn;
    voff = b * p.v.sb + (p.row0_kv[size_t(b)] + j0) * p.v.ss + g * p.v.sn;
    // Value rows with a NaN / Inf: P = 0 (masked, dropped) times Inf must not reach O, so
    // such a block reads a copy with those rows zeroed and fwd_driver.h fix_bad_v adds them
    // back where P != 0.
    scan_block(jn);
    if (nbad_) {
      const size_t es = DT == DType::float32 ? 4 : 2;
      char* z = bvz.get<char>(size_t(jn) * size_t(D) * es);
      for (int jj = 0; jj < jn; ++jj)
        std::memcpy(z + size_t(jj) * size_t(D) * es, static_cast<const char*>(vdat) + (voff + jj * vss) * int64_t(es),
                    size_t(D) * es);
      for (int t = 0; t < nbad_; ++t) std::memset(z + size_t(bad_[t]) * size_t(D) * es, 0, size_t(D) * es);
      vdat = z;
      voff = 0;
      vss = D;
    }
  }
  // One pass over the block's K and V rows from memory before qk / pv read them from L2: it lists
  // the value rows with a NaN / Inf (bad_, in key order) and touches the key rows. The rows are
  // visited as kStreams interleaved sub-ranges of the block (2 x kStreams address streams): one
  // sequential stream per tensor leaves the L2 streamer idle at every 4 KiB page boundary, and the
  // reads from inside qk (tile / vector loads) and pv ran at ~7 GB/s against ~11 GB/s for this
  // pass (1 thread, BNSD bf16, dev/12_decode_bandwidth.txt).
  static constexpr int kStreams = 4;
  __m512i touched_ = _mm512_setzero_si512();  // OR of the key rows read (keeps the loads alive)
  void scan_block(int jn) {
    const int per = (jn + kStreams - 1) / kStreams;
    const char* kb = static_cast<const char*>(kdat);
    const char* vb = static_cast<const char*>(vdat);
    bool bad[kBk];
    for (int i = 0; i < per; ++i)
      for (int s = 0; s < kStreams; ++s) {
        const int jj = s * per + i;
        if (jj >= jn) break;
        touched_ = _mm512_or_si512(touched_, row_or(kb, koff + jj * kss));
        bad[jj] = row_nonfinite(vb, voff + jj * vss);
      }
    nbad_ = 0;
    for (int jj = 0; jj < jn; ++jj)
      if (bad[jj]) bad_[nbad_++] = jj;
  }
  // The OR of the row of D elements at element offset off (its bytes, as one vector).
  __m512i row_or(const char* base, int64_t off) const {
    const int64_t es = DT == DType::float32 ? 4 : 2, nb = D * es;
    const char* r = base + off * es;
    __m512i a = _mm512_setzero_si512();
    for (int64_t o = 0; o < nb; o += 64)
      a = _mm512_or_si512(a, _mm512_maskz_loadu_epi8(nb - o >= 64 ? ~__mmask64(0) : (__mmask64(1) << (nb - o)) - 1, r + o));
    return a;
  }
  // Whether the row of D elements at element offset off has a NaN / Inf (exponent all ones).
  bool row_nonfinite(const char* base, int64_t off) const {
    if constexpr (DT == DType::float32) {
      const float* r = reinterpret_cast<const float*>(base) + off;
      __mmask16 bad = 0;
      for (int64_t d = 0; d < D; d += 16) bad |= _mm512_fpclass_ps_mask(_mm512_maskz_loadu_ps(lanes(D - d), r + d), 0x99);
      return bad != 0;
    } else {
      const __m512i e = _mm512_set1_epi16(int16_t(DT == DType::bfloat16 ? 0x7f80 : 0x7c00));
      const uint16_t* r = reinterpret_cast<const uint16_t*>(base) + off;
      __mmask32 bad = 0;
      for (int64_t d = 0; d < D; d += 32)
        bad |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(_mm512_maskz_loadu_epi16(lanes32(D - d), r + d), e), e);
      return bad != 0;
    }
  }

  // acc[r][jj] (+)= 16-lane partial dot products of Q rows [r0, r0+nr) with keys j..j+nk,
  // engine vectors [c0, c0 + NG).
  template <int NG>
  void qk_part(int r0, int nr, int j, int nk, int64_t c0, bool first) {
    for (int jj = 0; jj < 16; ++jj) {
      __m512 kv[NG];
      if (jj < nk) {
        for (int c = 0; c < NG / 2; ++c) load2(kdat, koff + (j + jj) * kss, D, c0 / 2 + c, kv[2 * c], kv[2 * c + 1]);
      } else {
        for (int c = 0; c < NG; ++c) kv[c] = _mm512_setzero_ps();
      }
      for (int r = r0; r < r0 + nr; ++r) {
        const float* q = Q + r * Dv + 16 * c0;
        __m512 a0 = _mm512_mul_ps(_mm512_load_ps(q), kv[0]);
        __m512 a1 = _mm512_mul_ps(_mm512_load_ps(q + 16), kv[1]);
        for (int c = 2; c < NG; c += 2) {
          a0 = _mm512_fmadd_ps(_mm512_load_ps(q + 16 * c), kv[c], a0);
          a1 = _mm512_fmadd_ps(_mm512_load_ps(q + 16 * c + 16), kv[c + 1], a1);
        }
        float* ap = acc + (r * 16 + jj) * 16;
        __m512 s = _mm512_add_ps(a0, a1);
        if (!first) s = _mm512_add_ps(s, _mm512_load_ps(ap));
        _mm512_store_ps(ap, s);
      }
    }
  }
  // 16 vectors v[k] -> one vector whose lane k is the sum of v[k]'s lanes.
  static inline __m512 reduce16(const float* a) {
    __m512 s1[8], s2[4], s3[2];
    for (int i = 0; i < 8; ++i) {
      const __m512 x = _mm512_load_ps(a + 32 * i), y = _mm512_load_ps(a + 32 * i + 16);
      s1[i] = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
    }
    for (int i = 0; i < 4; ++i)
      s2[i] = _mm512_add_ps(_mm512_shuffle_ps(s1[2 * i], s1[2 * i + 1], 0x44),
                            _mm512_shuffle_ps(s1[2 * i], s1[2 * i + 1], 0xEE));
    // s2[i], 128-bit lane l: lane-l partial sums of keys 4i .. 4i+3
    for (int i = 0; i < 2; ++i)
      s3[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s2[2 * i], s2[2 * i + 1], 0x88),
                            _mm512_shuffle_f32x4(s2[2 * i], s2[2 * i + 1], 0xDD));
    // s3[i] lanes: keys 8i..8i+3 (l0+l2, l1+l3), keys 8i+4..8i+7 (l0+l2, l1+l3)
    return _mm512_add_ps(_mm512_shuffle_f32x4(s3[0], s3[1], 0x88), _mm512_shuffle_f32x4(s3[0], s3[1], 0xDD));
  }

  void qk(int rlo, int rhi, int jn) {
    const int64_t nv = Dv / 16;
    for (int j = 0; j < jn; j += 16) {
      const int nk = std::min(16, jn - j);
      for (int64_t c0 = 0; c0 < nv; c0 += 8) {
        const bool first = c0 == 0;
        switch (std::min<int64_t>(8, nv - c0)) {
          case 2: qk_part<2>(rlo, rhi - rlo, j, nk, c0, first); break;
          case 4: qk_part<4>(rlo, rhi - rlo, j, nk, c0, first); break;
          case 6: qk_part<6>(rlo, rhi - rlo, j, nk, c0, first); break;
          default: qk_part<8>(rlo, rhi - rlo, j, nk, c0, first); break;
        }
      }
      for (int r = rlo; r < rhi; ++r) _mm512_storeu_ps(S + r * kBk + j, reduce16(acc + r * 256));
    }
  }

  template <int RB, int NG>
  void pv_tile(int r0, int jn, int64_t c0) {
    __m512 o[RB][NG];
    for (int r = 0; r < RB; ++r)
      for (int c = 0; c < NG; ++c) o[r][c] = _mm512_load_ps(O + (r0 + r) * Dv + 16 * (c0 + c));
    for (int j = 0; j < jn; ++j) {
      __m512 vv[NG];
      for (int c = 0; c < NG / 2; ++c) load2(vdat, voff + j * vss, D, c0 / 2 + c, vv[2 * c], vv[2 * c + 1]);
      for (int r = 0; r < RB; ++r) {
        const __m512 pb = _mm512_set1_ps(S[(r0 + r) * kBk + j]);
        for (int c = 0; c < NG; ++c) o[r][c] = _mm512_fmadd_ps(pb, vv[c], o[r][c]);
      }
    }
    for (int r = 0; r < RB; ++r)
      for (int c = 0; c < NG; ++c) _mm512_store_ps(O + (r0 + r) * Dv + 16 * (c0 + c), o[r][c]);
  }
  template <int NG>
  void pv_rows(int rb, int r0, int jn, int64_t c0) {
    switch (rb) {
      case 1: pv_tile<1, NG>(r0, jn, c0); break;
      case 2: pv_tile<2, NG>(r0, jn, c0); break;
      case 3: pv_tile<3, NG>(r0, jn, c0); break;
      case 4: pv_tile<4, NG>(r0, jn, c0); break;
      case 5: pv_tile<5, NG>(r0, jn, c0); break;
      default: pv_tile<6, NG>(r0, jn, c0); break;
    }
  }
  void pv(int rlo, int rhi, int jn) {
    const int64_t nv = Dv / 16;
    for (int64_t c0 = 0; c0 < nv; c0 += 4)
      for (int r0 = rlo; r0 < rhi; r0 += kPvRows) {
        const int rb = std::min(kPvRows, rhi - r0);
        if (nv - c0 >= 4) pv_rows<4>(rb, r0, jn, c0);
        else pv_rows<2>(rb, r0, jn, c0);
      }
  }

  int64_t orow_width() const { return Dv; }
  void gen_words(uint64_t seed, uint64_t off, uint64_t q0, int64_t nq, uint32_t* w) {
    gen_words_avx512(seed, off, q0, nq, w);
  }
};

// Problems whose every task would hold all query rows of its kv head within kRows.
inline bool decode_shape(const Problem& p) {
  int64_t max_sq = 0;
  for (int64_t s : p.sq) max_sq = std::max(max_sq, s);
  return max_sq * p.G <= EngineDecode<DType::float32>::kRows;
}

