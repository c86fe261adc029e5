// The AVX-512 forward kernel (float32, float16, bfloat16 inputs; fp32 compute throughout):
// fwd_driver.h + an fp32 FMA engine.
//
//   S = Q K^T : Q rows broadcast x K^T (transposed per kv block, 16x16 in-register
//               transposes) in a 12-row x 32-key register tile (24 zmm accumulators).
//   P = exp   : degree-5 exp2 (vreduceps / vscalefps), fp32 P written over S.
//   O += P V  : P broadcast x V rows in a 6-row x 64-column register tile.
// fp16 / bf16 are converted to fp32 when a block is loaded (never fp16 accumulation).
//
// Decode-shaped problems (S1 * G <= 16 query rows per kv head) take EngineDecode below instead:
// K and V rows read once, straight from the inputs, no K^T transpose (dev/08_decode_engine.txt).
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

// 256 x 256 tiles: per task K/V are streamed once from L3/DRAM for 256 rows (at 128 rows
// the K/V stream cost 13% of the run in perf, B1 N4 S2048 D128 fp32).
struct EngineAvx512 : EngineF32State<256, 256, 256 + 80>, SoftmaxRowsAvx512<EngineAvx512> {
  // V is stored in column chunks of 64 ([chunk][kBk][64]) and PV walks keys in sub-blocks of
  // kPvKeys: 96 x 64 x 4 B = 24 KiB of V stays in the 48 KiB L1 across all row blocks.
  static constexpr int kPvKeys = 96;
  static constexpr int kQkRows = 12;  // 12 x 2 accumulators (24 zmm) + 2 K + 1 broadcast
  static constexpr int kPvRows = 6;   // 6 x 4 accumulators (24 zmm) + 4 V + 1 broadcast
  struct Shared {
    explicit Shared(const Problem&) {}
  };

  EngineAvx512(const Problem& prob, const Shared&) : EngineF32State(prob.D) {
    Q = bq.get<float>(size_t(kBq * Dp));
    Kt = bkt.get<float>(size_t(Dp * kBk));
    V = bv.get<float>(size_t(kBk * round_up(Dp, 64)));
  }

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
    nbad_ = 0;
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
        __mmask16 nonfinite = 0;
        for (int64_t d = 0; d < Dp; d += 16) {
          const __m512 x = load16(p.v.data, p.dtype, off + d, lanes(D - d));
          nonfinite |= _mm512_fpclass_ps_mask(x, 0x99);  // QNaN | SNaN | +Inf | -Inf
          _mm512_store_ps(V + (d / 64) * kBk * 64 + (j + jj) * 64 + (d % 64), x);
        }
        if (nonfinite) {
          for (int64_t d = 0; d < Dp; d += 16)
            _mm512_store_ps(V + (d / 64) * kBk * 64 + (j + jj) * 64 + (d % 64), _mm512_setzero_ps());
          bad_[nbad_++] = j + jj;
        }
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

  int64_t orow_width() const { return Dp; }
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

#include "cpu/fwd_decode_avx512.h"

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
