// The AMX-BF16 backward kernel (bfloat16 inputs): bwd_driver.h (plan, statistics, dQ
// partials, dpse, uniform rows) with the five products of a tile on AMX tiles (bf16 in,
// fp32 accumulation) and the element semantics in AVX-512 fp32 (bwd_engine_avx512.h).
//
// Per kv block (kBk = 128 keys, jp = keys rounded up to 32) of (b, kv head g):
//   pack  KVd, VVd  [D/2][kBk][2]  K, V pairs along d (B operand of S = Q K^T, dP = dY V^T)
//         Kjv       [kBk/2][D][2]  K pairs along j   (B operand of dQ = dS K)
//   per query head n of the group and q block (<= kBq = 128 rows, Rp = rows rounded to 32):
//     S  [Rp][jp] = Qc  . KVd      dP [Rp][jp] = dYc . VVd          (fp32, AMX)
//     element semantics (AVX-512): S <- P' = P keep / keep_prob, dP <- scale dS
//     Pv, dSv [Rp/2][kBk][2] (row pairs, bf16) and dSr [Rp][kBk] (bf16) from one convert pass
//     dV^T [D][kBk] += dY^T . Pv    dK^T [D][kBk] += Q^T . dSv       (fp32 tiles in memory)
//     dQl [Rp][D] = dSr . Kjv, added to the task's fp32 dQ partial rows
//   end: dK^T / dV^T transposed to rows, uniform rows added to dV, rounded once.
// Qc/dYc (rows, bf16) and QT/dYT (transposed, [n][D][row]) are packed once per call in a
// parallel pass (O(S*D)). Requires D % 32 == 0 (tile K step); other D run bwd_avx512.
// P' and dS enter the products as exact hi + lo bf16 pairs (a plain bf16 P' / dS, as
// PyTorch / FlashAttention use, misses the SPEC §11 tolerance); all accumulation is fp32.
#include <immintrin.h>
#include <unistd.h>

#define SA_NS bwd_amx_ns
#include "cpu/bwd_driver.h"
#include "cpu/bwd_kernels.h"

namespace speedattn {
namespace SA_NS {

#include "cpu/bwd_engine_avx512.h"

namespace bwd {

// Tile shape. Provenance: kBk 128 x kBq 128 keeps the per-thread set (S, dP fp32 64 KiB each,
// packed K/V 96 KiB, dK^T/dV^T 128 KiB at D=128) in L2 and gives each fp32 C tile of the
// dK^T / dV^T products 4 K-steps per load/store (dev/bwd_02_amx.md).
constexpr int kAmxBq = 128, kAmxBk = 128;
using AmxBase = BwdEngineAvx512<kAmxBq, kAmxBk>;

struct TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

inline void load_tile_config() {
  alignas(64) TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

// C[M x N] (+)= A[M x K] . B[K x N]: bf16 A row-major (row stride lda bytes), B as VNNI
// pairs [K/2][N][2] (row stride ldb bytes), fp32 C (row stride ldc bytes). M, N, K multiples
// of 32; 2 x 2 C tiles (tmm0-3) per pass, A in tmm4-5, B in tmm6-7.
// A2 / B2 (optional, same layout as A / B): C += A2 . B and C += A . B2 as well (the lo
// halves of an exact hi + lo bf16 split).
inline void amx_gemm(int M, int N, int K, const void* A, int64_t lda, const void* B, int64_t ldb, void* C, int64_t ldc,
                     bool load_c, const void* A2 = nullptr, const void* B2 = nullptr) {
  const char* a2 = static_cast<const char*>(A2);
  const char* b2 = static_cast<const char*>(B2);
  const char* a = static_cast<const char*>(A);
  const char* bb = static_cast<const char*>(B);
  char* c = static_cast<char*>(C);
  for (int m = 0; m < M; m += 32)
    for (int n = 0; n < N; n += 32) {
      char* c00 = c + m * ldc + n * 4;
      char* c10 = c00 + 16 * ldc;
      if (load_c) {
        _tile_loadd(0, c00, ldc);
        _tile_loadd(1, c00 + 64, ldc);
        _tile_loadd(2, c10, ldc);
        _tile_loadd(3, c10 + 64, ldc);
      } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      for (int k = 0; k < K; k += 32) {
        _tile_loadd(4, a + m * lda + k * 2, lda);
        _tile_loadd(5, a + (m + 16) * lda + k * 2, lda);
        _tile_loadd(6, bb + (k / 2) * ldb + n * 4, ldb);
        _tile_loadd(7, bb + (k / 2) * ldb + (n + 16) * 4, ldb);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
        if (b2) {
          _tile_loadd(6, b2 + (k / 2) * ldb + n * 4, ldb);
          _tile_loadd(7, b2 + (k / 2) * ldb + (n + 16) * 4, ldb);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
        if (a2) {
          _tile_loadd(4, a2 + m * lda + k * 2, lda);
          _tile_loadd(5, a2 + (m + 16) * lda + k * 2, lda);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, c00, ldc);
      _tile_stored(1, c00 + 64, ldc);
      _tile_stored(2, c10, ldc);
      _tile_stored(3, c10 + 64, ldc);
    }
}

// Packs Qc / dYc / QT / dYT (see Shared) in parallel over (b, n).
inline void amx_prepare(Shared& sh) {
  const Problem& p = sh.p;
  const int64_t D = p.D;
  sh.qpbase.resize(size_t(p.B));
  int64_t t = 0;
  for (int64_t b = 0; b < p.B; ++b) {
    sh.qpbase[size_t(b)] = t;
    t += round_up(p.sq[size_t(b)], 32);
  }
  sh.Tqp = t + 32;  // slack: tiles starting at any row stay in bounds
  const size_t n = size_t(p.N1 * sh.Tqp * D);
  sh.qc.assign(n, 0);
  sh.dyc.assign(n, 0);
  sh.qt.assign(n, 0);
  sh.dyt.assign(n, 0);
  parallel_for(p.B * p.N1, [&](int64_t task, int) {
    const int64_t b = task / p.N1, hn = task % p.N1, sq = p.sq[size_t(b)];
    const uint16_t* q = static_cast<const uint16_t*>(p.q.data);
    const uint16_t* dy = static_cast<const uint16_t*>(p.dy.data);
    uint16_t* qc = sh.qc.data() + size_t(hn * sh.Tqp * D);
    uint16_t* dyc = sh.dyc.data() + size_t(hn * sh.Tqp * D);
    uint16_t* qt = sh.qt.data() + size_t(hn * D * sh.Tqp);
    uint16_t* dyt = sh.dyt.data() + size_t(hn * D * sh.Tqp);
    for (int64_t i = 0; i < sq; ++i) {
      const int64_t row = sh.qpbase[size_t(b)] + i;
      const uint16_t* qs = q + op_off(p, p.q, false, b, hn, i);
      const uint16_t* ds = dy + op_off(p, p.dy, false, b, hn, i);
      std::memcpy(qc + row * D, qs, size_t(D) * 2);
      std::memcpy(dyc + row * D, ds, size_t(D) * 2);
      for (int64_t d = 0; d < D; ++d) {
        qt[d * sh.Tqp + row] = qs[d];
        dyt[d * sh.Tqp + row] = ds[d];
      }
    }
  });
}

struct AmxWorker : Worker<AmxBase> {
  Buf bkvd, bvvd, bkjv, bpv, bdsv, bdsr, bdkt, bdvt, bdql;
  // P' and dS as exact-ish bf16 pairs hi + lo (hi = bf16(x), lo = bf16(x - hi): 16
  // significand bits, rel. error <= 2^-17): a single bf16 P' / dS exceeds the SPEC §11
  // tolerance on long rows (dev/bwd_02_amx.md).
  uint16_t *KVd, *VVd, *Kjv, *Pv, *dSv, *dSr, *Pv2, *dSv2, *dSr2;
  float *dKT, *dVT, *dQl;

  AmxWorker(const Problem& prob, Shared& s) : Worker<AmxBase>(prob, s) {
    KVd = bkvd.get<uint16_t>(size_t(D * kBk));
    VVd = bvvd.get<uint16_t>(size_t(D * kBk));
    Kjv = bkjv.get<uint16_t>(size_t(kBk * D));
    Pv = bpv.get<uint16_t>(size_t(2 * kBq * kBk));
    dSv = bdsv.get<uint16_t>(size_t(2 * kBq * kBk));
    dSr = bdsr.get<uint16_t>(size_t(2 * kBq * kBk));
    Pv2 = Pv + kBq * kBk;
    dSv2 = dSv + kBq * kBk;
    dSr2 = dSr + kBq * kBk;
    dKT = bdkt.get<float>(size_t(D * kBk));
    dVT = bdvt.get<float>(size_t(D * kBk));
    dQl = bdql.get<float>(size_t(kBq * D));
  }

  // P' / dS rows [0, Rp) x keys [0, jp) -> Pv, dSv (row pairs) and dSr (rows), bf16; keys
  // >= jn and rows >= R are 0.
  void convert(int R, int Rp, int jn, int jp) {
    // word k of the result = pair (row r, row r+1) of key k/2: index k/2 + 16 * (k & 1)
    const __m512i inter = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                           21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int r = 0; r < Rp; r += 2) {
      const float* s0 = S + r * kBk;
      const float* s1 = s0 + kBk;
      const float* d0 = dP + r * kBk;
      const float* d1 = d0 + kBk;
      const bool v0 = r < R, v1 = r + 1 < R;
      for (int j = 0; j < jp; j += 16) {
        const __mmask16 m = j + 16 <= jn ? __mmask16(0xffff) : j < jn ? __mmask16((1u << (jn - j)) - 1u) : 0;
        const __m512 a0 = _mm512_maskz_loadu_ps(v0 ? m : 0, s0 + j), a1 = _mm512_maskz_loadu_ps(v1 ? m : 0, s1 + j);
        const __m512 b0 = _mm512_maskz_loadu_ps(v0 ? m : 0, d0 + j), b1 = _mm512_maskz_loadu_ps(v1 ? m : 0, d1 + j);
        const __m512i pa = __m512i(_mm512_cvtne2ps_pbh(a1, a0));  // [row r | row r+1]
        const __m512i pb = __m512i(_mm512_cvtne2ps_pbh(b1, b0));
        // lo halves: x - float(hi) (exact in fp32), rounded to bf16
        const __m512 ha0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(pa)), 16));
        const __m512 ha1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(pa, 1)), 16));
        const __m512 hb0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(pb)), 16));
        const __m512 hb1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(pb, 1)), 16));
        const __m512i la = __m512i(_mm512_cvtne2ps_pbh(_mm512_sub_ps(a1, ha1), _mm512_sub_ps(a0, ha0)));
        const __m512i lb = __m512i(_mm512_cvtne2ps_pbh(_mm512_sub_ps(b1, hb1), _mm512_sub_ps(b0, hb0)));
        const int64_t vo = (r / 2) * kBk * 2 + j * 2;
        _mm512_storeu_si512(Pv + vo, _mm512_permutexvar_epi16(inter, pa));
        _mm512_storeu_si512(dSv + vo, _mm512_permutexvar_epi16(inter, pb));
        _mm512_storeu_si512(Pv2 + vo, _mm512_permutexvar_epi16(inter, la));
        _mm512_storeu_si512(dSv2 + vo, _mm512_permutexvar_epi16(inter, lb));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dSr + r * kBk + j), _mm512_castsi512_si256(pb));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dSr + (r + 1) * kBk + j), _mm512_extracti64x4_epi64(pb, 1));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dSr2 + r * kBk + j), _mm512_castsi512_si256(lb));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dSr2 + (r + 1) * kBk + j), _mm512_extracti64x4_epi64(lb, 1));
      }
    }
  }

  void kv_block_amx(int64_t b, int64_t g, int64_t c, int64_t j0, int jn, double* sl) {
    const int jp = int(round_up(jn, 32));
    const uint16_t* ksrc = static_cast<const uint16_t*>(p.k.data);
    const uint16_t* vsrc = static_cast<const uint16_t*>(p.v.data);
    for (int jj = 0; jj < jp; ++jj) {
      const bool in = jj < jn;
      const uint16_t* kr = in ? ksrc + op_off(p, p.k, true, b, g, j0 + jj) : nullptr;
      const uint16_t* vr = in ? vsrc + op_off(p, p.v, true, b, g, j0 + jj) : nullptr;
      for (int64_t d = 0; d < D; ++d) {
        const uint16_t kv = in ? kr[d] : 0, vv = in ? vr[d] : 0;
        KVd[(d / 2) * kBk * 2 + jj * 2 + (d & 1)] = kv;
        VVd[(d / 2) * kBk * 2 + jj * 2 + (d & 1)] = vv;
        Kjv[(jj / 2) * D * 2 + d * 2 + (jj & 1)] = kv;
      }
    }
    std::memset(dKT, 0, size_t(D * kBk) * 4);
    std::memset(dVT, 0, size_t(D * kBk) * 4);

    int64_t ia, ie;
    rows_for_keys(p, b, j0, j0 + jn, &ia, &ie);
    const int64_t Tqp = sh.Tqp;
    for (int64_t n = g * p.G; n < (g + 1) * p.G; ++n) {
      const uint16_t* qc = sh.qc.data() + n * Tqp * D;
      const uint16_t* dyc = sh.dyc.data() + n * Tqp * D;
      const uint16_t* qt = sh.qt.data() + n * D * Tqp;
      const uint16_t* dyt = sh.dyt.data() + n * D * Tqp;
      for (int64_t i0 = ia; i0 < ie; i0 += kBq) {
        const int ni = int(std::min<int64_t>(kBq, ie - i0));
        int rlo, rhi;
        classify(b, n, i0, ni, j0, jn, &rlo, &rhi);
        if (rlo >= rhi) continue;
        const int R = rhi - rlo, Rp = int(round_up(R, 32));
        const int64_t ib = i0 + rlo, prow = sh.qpbase[size_t(b)] + ib;
        amx_gemm(Rp, jp, int(D), qc + prow * D, D * 2, KVd, kBk * 4, S, kBk * 4, false);
        amx_gemm(Rp, jp, int(D), dyc + prow * D, D * 2, VVd, kBk * 4, dP, kBk * 4, false);
        grad_rows(b, n, g, ib, rlo, R, j0, jn, S, dP, kBk, sl);
        convert(R, Rp, jn, jp);
        amx_gemm(int(D), jp, Rp, dyt + prow, Tqp * 2, Pv, kBk * 4, dVT, kBk * 4, true, nullptr, Pv2);
        amx_gemm(int(D), jp, Rp, qt + prow, Tqp * 2, dSv, kBk * 4, dKT, kBk * 4, true, nullptr, dSv2);
        amx_gemm(Rp, int(D), jp, dSr, kBk * 2, Kjv, D * 4, dQl, D * 4, false, dSr2, nullptr);
        for (int r = 0; r < R; ++r) {
          float* dst = sh.dq_row(c, n, b, ib + r);
          const float* src = dQl + r * D;
          for (int64_t d = 0; d < D; d += 16)
            _mm512_storeu_ps(dst + d, _mm512_add_ps(_mm512_loadu_ps(dst + d), _mm512_loadu_ps(src + d)));
        }
      }
    }
    // dK^T / dV^T -> rows
    for (int64_t d = 0; d < D; ++d)
      for (int jj = 0; jj < jn; ++jj) {
        dKa[jj * Dp + d] = dKT[d * kBk + jj];
        dVa[jj * Dp + d] = dVT[d * kBk + jj];
      }
    for (int64_t n = g * p.G; n < (g + 1) * p.G; ++n)
      if (sh.ucount[size_t(b * p.N1 + n)] > 0) uniform_rows(b, n, j0, jn);
    store_kv(b, g, j0, jn);
  }

  void run_task(const BTask& t, double* sl) {
    load_tile_config();
    if (t.b >= 0) {
      const int64_t skv = p.skv[size_t(t.b)];
      int64_t kb0, kb1;
      chunk_blocks(nblocks(skv, kBk), sh.plan.C, t.c, &kb0, &kb1);
      for (int64_t kb = kb0; kb < kb1; ++kb)
        kv_block_amx(t.b, t.g, t.c, kb * kBk, int(std::min<int64_t>(kBk, skv - kb * kBk)), sl);
    } else {
      for (int64_t b = 0; b < p.B; ++b) {
        const int64_t skv = p.skv[size_t(b)];
        if (p.sq[size_t(b)] == 0 || skv == 0) continue;
        for (int64_t kb = 0; kb < nblocks(skv, kBk); ++kb)
          kv_block_amx(b, t.g, 0, kb * kBk, int(std::min<int64_t>(kBk, skv - kb * kBk)), sl);
      }
    }
    _tile_release();
  }
};

}  // namespace bwd
}  // namespace SA_NS

namespace cpu {
void bwd_amx_bf16(const Problem& p) {
  if (p.dtype != DType::bfloat16 || p.D % 32 != 0) {
    bwd_avx512(p);
    return;
  }
  SA_NS::bwd::backward_with<SA_NS::bwd::AmxWorker>(p, SA_NS::bwd::kAmxBk, SA_NS::bwd::amx_prepare);
}
}  // namespace cpu
}  // namespace speedattn
