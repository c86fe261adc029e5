// The AVX-512 forward kernel (float32, float16, bfloat16 inputs; fp32 compute throughout):
// fwd_driver.h + an fp32 FMA engine.
//
//   S = Q K^T : Q rows broadcast x K^T (transposed per kv block, 16x16 in-register
//               transposes) in a 12-row x 32-key register tile (24 zmm accumulators).
//   P = exp   : degree-5 exp2 (vreduceps / vscalefps), fp32 P written over S.
//   O += P V  : P broadcast x V rows in a 6-row x 64-column register tile.
// fp16 / bf16 are converted to fp32 when a block is loaded (never fp16 accumulation).
//
// Tiles: kBq 128 rows x kBk 256 keys. At D=128: S 128 KiB, K^T 128 KiB, V 128 KiB,
// O 64 KiB, Q 64 KiB = 512 KiB per core, inside the 2 MiB L2; Bq >= 14 suffices for fp32
// from L2 (machine-limits.md), Bq = 128 amortises the K^T transpose (1/128 of the FMAs).
#if defined(__x86_64__) || defined(_M_X64)  // x86-only file (the registry lists it only there)
#define SA_NS fwd_avx512_ns
#include "cpu/fwd_driver.h"
#include "cpu/fwd_kernels.h"

namespace speedattn {
namespace SA_NS {

#include "cpu/tile/simd_avx512.h"

// S[r0..r0+RB)[j..j+16*NV) = Q[r] . Kt[:, j..]
template <int RB, int NV>
static inline void qk_tile(const float* Q, int64_t Dp, const float* Kt, int64_t ldk, int64_t D, float* S,
                           int64_t lds) {
  __m512 acc[RB][NV];
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    __m512 k[NV];
    for (int v = 0; v < NV; ++v) k[v] = _mm512_load_ps(Kt + d * ldk + 16 * v);
    for (int r = 0; r < RB; ++r) {
      const __m512 q = _mm512_set1_ps(Q[r * Dp + d]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(q, k[v], acc[r][v]);
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) _mm512_store_ps(S + r * lds + 16 * v, acc[r][v]);
}

// O[r0..r0+RB)[d0..d0+16*NV) += sum_j P[r][j] V[j][d0..]
template <int RB, int NV>
static inline void pv_tile(float* O, int64_t Dp, const float* P, int64_t ldp, const float* V, int64_t ldv, int jn) {
  __m512 acc[RB][NV];
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_load_ps(O + r * Dp + 16 * v);
  for (int j = 0; j < jn; ++j) {
    __m512 vv[NV];
    for (int v = 0; v < NV; ++v) vv[v] = _mm512_load_ps(V + j * ldv + 16 * v);
    for (int r = 0; r < RB; ++r) {
      const __m512 pb = _mm512_set1_ps(P[r * ldp + j]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(pb, vv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) _mm512_store_ps(O + r * Dp + 16 * v, acc[r][v]);
}

template <int NV>
static inline void qk_rows(int rb, const float* Q, int64_t Dp, const float* Kt, int64_t ldk, int64_t D, float* S,
                           int64_t lds) {
  switch (rb) {
#define SA_CASE(n) \
  case n: qk_tile<n, NV>(Q, Dp, Kt, ldk, D, S, lds); break;
    SA_CASE(1) SA_CASE(2) SA_CASE(3) SA_CASE(4) SA_CASE(5) SA_CASE(6)
    SA_CASE(7) SA_CASE(8) SA_CASE(9) SA_CASE(10) SA_CASE(11) SA_CASE(12)
#undef SA_CASE
    default: break;
  }
}
template <int RB>
static inline void pv_cols(int nv, float* O, int64_t Dp, const float* P, int64_t ldp, const float* V, int jn) {
  switch (nv) {
    case 1: pv_tile<RB, 1>(O, Dp, P, ldp, V, 64, jn); break;
    case 2: pv_tile<RB, 2>(O, Dp, P, ldp, V, 64, jn); break;
    case 3: pv_tile<RB, 3>(O, Dp, P, ldp, V, 64, jn); break;
    default: pv_tile<RB, 4>(O, Dp, P, ldp, V, 64, jn); break;
  }
}
static inline void pv_rows(int rb, int nv, float* O, int64_t Dp, const float* P, int64_t ldp, const float* V, int jn) {
  switch (rb) {
    case 1: pv_cols<1>(nv, O, Dp, P, ldp, V, jn); break;
    case 2: pv_cols<2>(nv, O, Dp, P, ldp, V, jn); break;
    case 3: pv_cols<3>(nv, O, Dp, P, ldp, V, jn); break;
    case 4: pv_cols<4>(nv, O, Dp, P, ldp, V, jn); break;
    case 5: pv_cols<5>(nv, O, Dp, P, ldp, V, jn); break;
    default: pv_cols<6>(nv, O, Dp, P, ldp, V, jn); break;
  }
}

struct EngineAvx512 {
  // 256 x 256 tiles: per task K/V are streamed once from L3/DRAM for 256 rows (at 128 rows
  // the K/V stream cost 13% of the run in perf, B1 N4 S2048 D128 fp32).
  static constexpr int kBq = 256, kBk = 256;
  // V is stored in column chunks of 64 ([chunk][kBk][64]) and PV walks keys in sub-blocks of
  // kPvKeys: 96 x 64 x 4 B = 24 KiB of V stays in the 48 KiB L1 across all row blocks.
  static constexpr int kPvKeys = 96;
  static constexpr int kQkRows = 12;  // 12 x 2 accumulators (24 zmm) + 2 K + 1 broadcast
  static constexpr int kPvRows = 6;   // 6 x 4 accumulators (24 zmm) + 4 V + 1 broadcast
  static constexpr int kWords = 256 + 80;
  struct Shared {
    explicit Shared(const Problem&) {}
  };

  int64_t D, Dp;
  Buf bq, bkt, bv, bs, bo, btmp;
  float *Q, *Kt, *V, *S, *O, *tmp, *tmp2;
  RowMeta meta_[kBq];
  float m_[kBq], l_[kBq];
  uint8_t cls_[kBq];
  int kend_[kBq];
  alignas(64) uint32_t words_[kWords];

  EngineAvx512(const Problem& prob, const Shared&) : D(prob.D), Dp(round_up(prob.D, 16)) {
    Q = bq.get<float>(size_t(kBq * Dp));
    Kt = bkt.get<float>(size_t(Dp * kBk));
    V = bv.get<float>(size_t(kBk * round_up(Dp, 64)));
    S = bs.get<float>(size_t(kBq * kBk));
    O = bo.get<float>(size_t(kBq * Dp));
    tmp = btmp.get<float>(size_t(2 * Dp));
    tmp2 = tmp + Dp;
  }
  static constexpr int kStrip = kBq;
  static constexpr bool kOverlap = false;  // no QK/softmax/PV software pipeline
  static constexpr int kRowsPerStep = 1;
  template <class F> void qk_overlap(int, int, int, F&) {}
  template <class F> void pv_overlap(int, int, int, F&) {}  // rows per QK/softmax/PV strip (fwd_driver.h)
  RowMeta* meta() { return meta_; }
  void end_task() {}
  float* mvec() { return m_; }
  float* lvec() { return l_; }
  uint8_t* clsvec() { return cls_; }
  int* kendvec() { return kend_; }
  uint32_t* wordbuf() { return words_; }
  float* tmprow() { return tmp; }
  float* tmprow2() { return tmp2; }
  float* orow(int r) { return O + r * Dp; }
  float* srow(int r) { return S + r * kBk; }

  static void store_row(void* base, DType dt, int64_t off, const float* src, int64_t D) {
    store_row_avx512(base, dt, off, src, D);
  }

  void begin_task(const Problem& p, int64_t b, int64_t, const RowMeta* rm, int R) {
    for (int r = 0; r < R; ++r) {
      const int64_t off = b * p.q.sb + (p.row0_q[size_t(b)] + rm[r].i) * p.q.ss + rm[r].n * p.q.sn;
      load_row_f32(p.q.data, p.dtype, off, Q + r * Dp, D, Dp);
    }
    std::memset(O, 0, size_t(R * Dp) * sizeof(float));
  }

  // K^T in panels of 32 keys: Kt[(j/32)][d][j%32] (a panel is contiguous: D*128 bytes);
  // V in column chunks: V[(d/64)][j][d%64].
  void load_kv(const Problem& p, int64_t b, int64_t g, int64_t j0, int jn) {
    const int64_t kbase = b * p.k.sb + (p.row0_kv[size_t(b)] + j0) * p.k.ss + g * p.k.sn;
    const int64_t vbase = b * p.v.sb + (p.row0_kv[size_t(b)] + j0) * p.v.ss + g * p.v.sn;
    for (int j = 0; j < jn; j += 16) {
      const int nj = std::min(16, jn - j);
      float* panel = Kt + (j / 32) * D * 32 + (j % 32);
      for (int64_t d = 0; d < D; d += 16) {
        __m512 r[16];
        const __mmask16 kd = lanes(D - d);
        for (int jj = 0; jj < 16; ++jj)
          r[jj] = jj < nj ? load16(p.k.data, p.dtype, kbase + (j + jj) * p.k.ss + d, kd) : _mm512_setzero_ps();
        transpose16x16(r);
        const int64_t nd = std::min<int64_t>(16, D - d);
        for (int64_t dd = 0; dd < nd; ++dd) _mm512_store_ps(panel + (d + dd) * 32, r[dd]);
      }
      for (int jj = 0; jj < nj; ++jj) {
        const int64_t off = vbase + (j + jj) * p.v.ss;
        for (int64_t d = 0; d < Dp; d += 16)
          _mm512_store_ps(V + (d / 64) * kBk * 64 + (j + jj) * 64 + (d % 64), load16(p.v.data, p.dtype, off + d, lanes(D - d)));
      }
    }
  }

  void qk(int rlo, int rhi, int jn) {
    const int jn16 = int(round_up(jn, 16));
    for (int jp = 0; jp < jn16; jp += 32) {
      const float* panel = Kt + (jp / 32) * D * 32;
      for (int r0 = rlo; r0 < rhi; r0 += kQkRows) {
        const int rb = std::min(kQkRows, rhi - r0);
        if (jp + 32 <= jn16) qk_rows<2>(rb, Q + r0 * Dp, Dp, panel, 32, D, S + r0 * kBk + jp, kBk);
        else qk_rows<1>(rb, Q + r0 * Dp, Dp, panel, 32, D, S + r0 * kBk + jp, kBk);
      }
    }
  }

  void zero_p(int r, int jn) { std::memset(srow(r), 0, size_t(jn) * sizeof(float)); }
  void zero_p_from(int r, int from, int jn) { std::memset(srow(r) + from, 0, size_t(jn - from) * sizeof(float)); }
  float row_max(const float* s, int jn) { return row_max_avx512(s, jn); }
  float logits_row(const Problem& p, const RowMeta& rm, float* s, int64_t j0, int jn) {
    return logits_row_avx512(p, rm, s, j0, jn);
  }
  float exp_row(int r, int jn, float xs, float mn, bool general, const uint32_t* w, uint32_t thr) {
    return exp_row_f32_avx512<5>(srow(r), jn, xs, mn, general, w, thr);
  }
  void scale_o(int r, float alpha) {
    float* o = orow(r);
    const __m512 a = _mm512_set1_ps(alpha);
    for (int64_t d = 0; d < Dp; d += 16) _mm512_store_ps(o + d, _mm512_mul_ps(_mm512_load_ps(o + d), a));
  }
  void pv(int rlo, int rhi, int jn) {
    const int nvt = int(Dp / 16);
    for (int v0 = 0; v0 < nvt; v0 += 4) {
      const float* vchunk = V + (v0 / 4) * kBk * 64;
      for (int js = 0; js < jn; js += kPvKeys) {
        const int jl = std::min(kPvKeys, jn - js);
        for (int r0 = rlo; r0 < rhi; r0 += kPvRows) {
          const int rb = std::min(kPvRows, rhi - r0);
          pv_rows(rb, std::min(4, nvt - v0), O + r0 * Dp + 16 * v0, Dp, S + r0 * kBk + js, kBk, vchunk + js * 64, jl);
        }
      }
    }
  }
  void gen_words(uint64_t seed, uint64_t off, uint64_t q0, int64_t nq, uint32_t* w) {
    gen_words_avx512(seed, off, q0, nq, w);
  }
};

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
#ifndef SA_DECODE_PF
#define SA_DECODE_PF 16
#endif
#ifndef SA_DECODE_HINT
#define SA_DECODE_HINT _MM_HINT_T0
#endif
template <DType DT>
struct EngineDecode {
  static constexpr int kRows = 16;  // rows per task: R * D/16 FMAs per key stay under the
                                    // DRAM time of a K+V row (~95 cycles at 13 GB/s, D=128)
  static constexpr int kBq = kRows, kBk = 256;  // S = 16 KiB, partial sums 16 KiB: L1
  static constexpr int kPvRows = 6;             // 6 x 4 accumulators + 4 V + 1 broadcast zmm
  static constexpr int kWords = 256 + 80;
  struct Shared {
    explicit Shared(const Problem&) {}
  };
  int64_t D, Dv;  // Dv = D rounded up to 32 (engine vectors come in even/odd pairs)
  Buf bq, bs, bo, bacc, btmp;
  float *Q, *S, *O, *acc, *tmp, *tmp2;
  const void* kdat = nullptr;
  const void* vdat = nullptr;
  int64_t koff = 0, voff = 0, kss = 0, vss = 0;
  RowMeta meta_[kBq];
  float m_[kBq], l_[kBq];
  uint8_t cls_[kBq];
  int kend_[kBq];
  int R_ = 0;
  alignas(64) uint32_t words_[kWords];

  EngineDecode(const Problem& p, const Shared&) : D(p.D), Dv(round_up(p.D, 32)) {
    row_bytes = SA_DECODE_PF > 0 ? D * int64_t(DT == DType::float32 ? 4 : 2) : 0;
    Q = bq.get<float>(size_t(kBq * Dv));
    S = bs.get<float>(size_t(kBq * kBk));
    O = bo.get<float>(size_t(kBq * Dv));
    acc = bacc.get<float>(size_t(kBq * 16 * 16));
    tmp = btmp.get<float>(size_t(2 * Dv));
    tmp2 = tmp + Dv;
  }
  static constexpr int kStrip = kBq;
  static constexpr bool kOverlap = false;
  static constexpr int kRowsPerStep = 1;
  template <class F> void qk_overlap(int, int, int, F&) {}
  template <class F> void pv_overlap(int, int, int, F&) {}
  RowMeta* meta() { return meta_; }
  float* mvec() { return m_; }
  float* lvec() { return l_; }
  uint8_t* clsvec() { return cls_; }
  int* kendvec() { return kend_; }
  uint32_t* wordbuf() { return words_; }
  float* tmprow() { return tmp; }
  float* tmprow2() { return tmp2; }
  float* orow(int r) { return O + r * Dv; }
  float* srow(int r) { return S + r * kBk; }
  static void store_row(void* base, DType dt, int64_t off, const float* src, int64_t D) {
    store_row_avx512(base, dt, off, src, D);
  }

  // Software prefetch of the K / V row kPrefetchKeys keys ahead (D=128 bf16: 4 KiB ahead, ~4
  // DRAM latencies at the target rate); may run past the block (prefetches never fault).
  static constexpr int kPrefetchKeys = SA_DECODE_PF;
  int64_t row_bytes = 0;
  inline void prefetch_row(const void* base, int64_t off) const {
    const char* a = static_cast<const char*>(base) + off * int64_t(DT == DType::float32 ? 4 : 2);
    for (int64_t b = 0; b < row_bytes; b += 64) _mm_prefetch(a + b, SA_DECODE_HINT);
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

  void load_kv(const Problem& p, int64_t b, int64_t g, int64_t j0, int) {
    kdat = p.k.data;
    vdat = p.v.data;
    kss = p.k.ss;
    vss = p.v.ss;
    koff = b * p.k.sb + (p.row0_kv[size_t(b)] + j0) * p.k.ss + g * p.k.sn;
    voff = b * p.v.sb + (p.row0_kv[size_t(b)] + j0) * p.v.ss + g * p.v.sn;
  }

  // acc[r][jj] (+)= 16-lane partial dot products of Q rows [r0, r0+nr) with keys j..j+nk,
  // engine vectors [c0, c0 + NG).
  template <int NG>
  void qk_part(int r0, int nr, int j, int nk, int64_t c0, bool first) {
    for (int jj = 0; jj < 16; ++jj) {
      __m512 kv[NG];
      if (jj < nk) {
        if (c0 == 0) prefetch_row(kdat, koff + (j + jj + kPrefetchKeys) * kss);
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
      if (c0 == 0 && r0 == 0) prefetch_row(vdat, voff + (j + kPrefetchKeys) * vss);
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

  void zero_p(int r, int jn) { std::memset(srow(r), 0, size_t(jn) * sizeof(float)); }
  void zero_p_from(int r, int from, int jn) { std::memset(srow(r) + from, 0, size_t(jn - from) * sizeof(float)); }
  float row_max(const float* s, int jn) { return row_max_avx512(s, jn); }
  float logits_row(const Problem& p, const RowMeta& rm, float* s, int64_t j0, int jn) {
    return logits_row_avx512(p, rm, s, j0, jn);
  }
  float exp_row(int r, int jn, float xs, float mn, bool general, const uint32_t* w, uint32_t thr) {
    return exp_row_f32_avx512<5>(srow(r), jn, xs, mn, general, w, thr);
  }
  void scale_o(int r, float alpha) {
    float* o = orow(r);
    const __m512 a = _mm512_set1_ps(alpha);
    for (int64_t d = 0; d < Dv; d += 16) _mm512_store_ps(o + d, _mm512_mul_ps(_mm512_load_ps(o + d), a));
  }
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

}  // namespace SA_NS

namespace cpu {
void fwd_avx512(const Problem& p) {
  if (SA_NS::decode_shape(p)) {
    switch (p.dtype) {
      case DType::bfloat16: SA_NS::forward<SA_NS::EngineDecode<DType::bfloat16>>(p); return;
      case DType::float16: SA_NS::forward<SA_NS::EngineDecode<DType::float16>>(p); return;
      default: SA_NS::forward<SA_NS::EngineDecode<DType::float32>>(p); return;
    }
  }
  SA_NS::forward<SA_NS::EngineAvx512>(p);
}
}  // namespace cpu
}  // namespace speedattn
#endif  // x86-64
