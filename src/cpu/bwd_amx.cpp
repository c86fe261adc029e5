// The AMX-BF16 backward kernels (bwd_amx_bf16; bwd_amx_fp16, below; bwd_amx_fp32, S and dP
// only, at the end of the file): bwd_driver.h (plan, statistics, dQ partials, dpse, uniform
// rows) with the five products of a tile on AMX tiles (bf16 in, fp32 accumulation) and the
// element semantics in AVX-512 fp32.
//
// Per kv superblock (the driver's kv block: kSup = 512 keys, jp = keys rounded up to 32) of
// (b, kv head g):
//   pack  KVd, VVd  [D/2][kLd][2]  K, V pairs along d (B operand of S = Q K^T, dP = dY V^T)
//         Kjv       [kSup/2][D][2] K pairs along j   (B operand of dQ = dS K)
//   per query head n of the group, q tile (<= kBq = 128 rows) and key tile (kSub = 128 keys
//   of the superblock; Rp = the tile's rows rounded to 32, sp = its keys rounded to 32):
//     S  [Rp][sp] = Qc  . KVd      dP [Rp][sp] = dYc . VVd          (fp32, AMX)
//     element pass (AVX-512): P' = P keep / keep_prob and scale dS, split into hi + lo bf16:
//       Pv, dSv [Rp/2][kSub][2] (row pairs) and dSr [Rp][kSub] (rows). Tiles whose rows keep
//       every key (no pse / dropout) use fused_convert (exp2 with the scale folded, one pass);
//       the others the general grad_rows (bwd_engine_avx512.h) + convert.
//     dV^T [D][kLd] += dY^T . Pv    dK^T [D][kLd] += Q^T . dSv      (fp32 tiles in memory)
//     dQl [Rp][D] (+)= dSr . Kjv   (accumulated over the key tiles of the q tile; added to
//                                  the task's fp32 dQ partial rows once per superblock)
//   end: dK^T / dV^T transposed to rows (16 x 16 transposes), uniform rows added to dV,
//   rounded once.
// Qc/dYc (rows, bf16) and QT/dYT (transposed, [n][D][row]) are packed once per call in a
// parallel pass (O(S*D)). Requires D % 32 == 0 (tile K step); other D run bwd_avx512.
// P' and dS enter the products as hi + lo bf16 pairs (a plain bf16 P' / dS, as PyTorch /
// FlashAttention use, misses the SPEC §11 tolerance); all accumulation is fp32. Every
// reduction order depends only on the problem: results are bit-identical for any thread count.
// float16 inputs (AmxWorker<true>, bwd_amx_fp16; dev/bwd_04_fp16_amx.md): no AMX-FP16 here, so
// every q / k / v / dy value is split exactly into bf16 halves x = hi + lo (hi = bf16(x), lo =
// bf16(x - hi); *l buffers beside each packed operand) and
//   S, dP        = Xh Yh + Xh Yl + Xl Yh + Xl Yl  (exact products: statistics / cancelling dS)
//   dV, dK, dQ  += Ph Xh + Ph Xl + Pl Xh          (P' / dS already hi + lo; Pl Xl ~2^-17 rel.)
// Dsum is recomputed on the tiles in dP's exact pass order (amx_dsum). Non-finite inputs take
// the per-superblock fp32 route of the bf16 kernel (kbad / qbad / dybad).
#include <immintrin.h>
#include <unistd.h>

#include <utility>

#define SA_NS bwd_amx_ns
#include "cpu/bwd_driver.h"
#include "cpu/bwd_kernels.h"

namespace speedattn {
namespace SA_NS {

#include "cpu/bwd_engine_avx512.h"
#include "cpu/tile/amx_parts.h"

namespace bwd {

// Tile shape. Provenance (dev/bwd_02_amx.md, dev/bwd_03_superblock.md):
//   kAmxBq 128 q rows x kAmxSub 128 keys per tile: S, dP fp32 64 KiB each; every fp32 C tile
//   of the dK^T / dV^T products gets 4 K-steps (8 TDPBF16PS with the lo pass) per load/store.
//   kAmxBk 512 keys per driver kv block ("superblock", 4 tiles wide): the q-side stream
//   (Qc, dYc, QT, dYT bf16 = 1 KiB per row) and the dQ partial row (fp32 read + write, 1 KiB)
//   are touched once per 512 keys instead of once per 128. With 128 they spilled to L3
//   (~20 GB/s per core) and bounded the kernel: 2 KiB per row per 164 kFLOP. The per-thread
//   set at D=128 is dK^T/dV^T 512 KiB + packed K/V 384 KiB + tiles ~0.4 MiB (< 2 MiB L2).
constexpr int kAmxBq = 128, kAmxSub = 128, kAmxBk = 512;
using AmxBase = BwdEngineAvx512<kAmxBq, kAmxSub>;

// C[M x N] (+)= A[M x K] . B[K x N]: bf16 A row-major (row stride lda bytes), B as VNNI
// pairs [K/2][N][2] (row stride ldb bytes), fp32 C (row stride ldc bytes). M, N, K multiples
// of 32; 2 x 2 C tiles (tmm0-3) per pass, A in tmm4-5, B in tmm6-7.
// A2 / B2 (optional, same layout as A / B): C += A . B2 and C += A2 . B as well (the lo
// halves of an exact hi + lo bf16 split); ll (both given): C += A2 . B2 too (4 passes).
inline void amx_gemm(int M, int N, int K, const void* A, int64_t lda, const void* B, int64_t ldb, void* C, int64_t ldc,
                     bool load_c, const void* A2 = nullptr, const void* B2 = nullptr, bool ll = false) {
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
          if (b2) {  // tmm6-7 hold B2
            if (ll) {
              _tile_dpbf16ps(0, 4, 6);
              _tile_dpbf16ps(1, 4, 7);
              _tile_dpbf16ps(2, 5, 6);
              _tile_dpbf16ps(3, 5, 7);
            }
            _tile_loadd(6, bb + (k / 2) * ldb + n * 4, ldb);
            _tile_loadd(7, bb + (k / 2) * ldb + (n + 16) * 4, ldb);
          }
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

// float16 -> exact bf16 halves x = hi + lo (hi = bf16(x), lo = bf16(x - hi): 8 + 8
// significant bits hold fp16's 11; lo = 0 for +-Inf). n % 16 == 0.
inline void split_fp16(const uint16_t* src, uint16_t* hi, uint16_t* lo, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
    const __m256i h = (__m256i)_mm512_cvtneps_pbh(x);
    const __m512 xh = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    const __m256i l = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_sub_ps(~_mm512_fpclass_ps_mask(x, 0x18), x, xh));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi + i), h);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo + i), l);
  }
}

// 16 x 16 transpose of 32-bit elements: dst[c * ldd + r] = src[r][c] for rows src[0..15]
// (pure data movement: the bits of any 32-bit payload, bf16 pairs included, are preserved).
inline void transpose16x16(const float* const src[16], float* dst, int64_t ldd) {
  __m512 r[16], t[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src[i]);
#pragma GCC unroll 8
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  // r[4q + k] holds, per 128-bit lane L, column 4L + k of rows 4q..4q+3
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
    const __m512 a = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88);       // lanes 0,2 of rows 0-7
    const __m512 b = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xDD);       // lanes 1,3
    const __m512 c = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88);
    const __m512 d = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xDD);
    _mm512_storeu_ps(dst + (0 + k) * ldd, _mm512_shuffle_f32x4(a, c, 0x88));   // column k
    _mm512_storeu_ps(dst + (8 + k) * ldd, _mm512_shuffle_f32x4(a, c, 0xDD));   // column 8 + k
    _mm512_storeu_ps(dst + (4 + k) * ldd, _mm512_shuffle_f32x4(b, d, 0x88));   // column 4 + k
    _mm512_storeu_ps(dst + (12 + k) * ldd, _mm512_shuffle_f32x4(b, d, 0xDD));  // column 12 + k
  }
}

// 32 x 32 transpose of 16-bit elements: dst[c * ldd + r] = src[r * lds + c], r, c < 32. The
// rows as dwords (column pairs) through two 16 x 16 dword transposes, then the pair halves of
// rows 0-15 and 16-31 gathered into columns 2p / 2p + 1.
inline void transpose32x32_16(const uint16_t* src, int64_t lds, uint16_t* dst, int64_t ldd) {
  alignas(64) float ta[16 * 16], tb[16 * 16];  // [pair p][row r]
  const float* ra[16];
  const float* rb[16];
  for (int i = 0; i < 16; ++i) {
    ra[i] = reinterpret_cast<const float*>(src + i * lds);
    rb[i] = reinterpret_cast<const float*>(src + (16 + i) * lds);
  }
  transpose16x16(ra, ta, 16);
  transpose16x16(rb, tb, 16);
  const __m512i even = _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32, 30, 28, 26,
                                        24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi16(even, _mm512_set1_epi16(1));
  for (int pr = 0; pr < 16; ++pr) {
    const __m512i a = _mm512_load_si512(ta + pr * 16), b = _mm512_load_si512(tb + pr * 16);
    _mm512_storeu_si512(dst + (2 * pr) * ldd, _mm512_permutex2var_epi16(a, even, b));
    _mm512_storeu_si512(dst + (2 * pr + 1) * ldd, _mm512_permutex2var_epi16(a, odd, b));
  }
}

// The skeleton of the AMX Dsum policies (bwd_driver.h replace_dsum), per (b, head n): for each
// block of 32 rows i0 .. i0 + rn, prod(i0, rn, c) computes c [32][32] = dY . O^T of those rows
// with dP's passes; its diagonal replaces their Dsum.
template <class Prod>
inline void amx_diag_dsum(Shared& sh, int64_t b, int64_t n, Prod&& prod) {
  const int64_t sq = sh.p.sq[size_t(b)];
  if (sq == 0) return;
  std::vector<float> c(32 * 32);
  load_tile_config();
  for (int64_t i0 = 0; i0 < sq; i0 += 32) {
    const int rn = int(std::min<int64_t>(32, sq - i0));
    prod(i0, rn, c.data());
    for (int j = 0; j < rn; ++j) replace_dsum(sh, sh.ri(n, b, i0 + j), c[size_t(j * 33)]);
  }
  _tile_release();
}

// The Dsum policy of the bf16 / fp16 AMX kernels (bwd_driver.h replace_dsum): Dsum of the rows
// of (b, head n) recomputed on the tiles as dY . O^T with exactly the passes and order of dP =
// dY . V^T (amx_gemm: one bf16 pass; kF16: the hi / lo halves, 4 passes), 32 rows at a time (the
// diagonal of a 32 x 32 product). Needs the packed dY rows (amx_prepare). The fp32 sum of
// precompute rounds differently from the AMX accumulation (kF16: dK = 1.4e-6 against the exact
// 0, tolerance 1e-6: test_backward_kernels shape_1x1_fp16).
template <bool kF16>
inline void amx_dsum(Shared& sh, int64_t b, int64_t n) {
  const Problem& p = sh.p;
  const int64_t D = p.D, Dw = D / 2;  // dwords (bf16 pairs) per row
  // O rows as VNNI B columns [D/2][32][2] (ob; kF16: lo halves in obl); kF16: the split rows
  std::vector<float> ob(size_t(Dw * 32)), obl(kF16 ? size_t(Dw * 32) : 0), zero(static_cast<size_t>(Dw));
  std::vector<uint16_t> hs(kF16 ? size_t(32 * D) : 0), ls(kF16 ? size_t(32 * D) : 0);
  const uint16_t* out = static_cast<const uint16_t*>(p.out.data);
  const int64_t o = n * sh.Tqp * D;
  amx_diag_dsum(sh, b, n, [&](int64_t i0, int rn, float* c) {
    const float* rh[32];
    const float* rl[32];
    for (int j = 0; j < 32; ++j) {
      rh[j] = rl[j] = zero.data();
      if (j >= rn) continue;
      const uint16_t* orow = out + op_off(p, p.out, false, b, n, i0 + j);
      if constexpr (kF16) {
        split_fp16(orow, hs.data() + j * D, ls.data() + j * D, D);
        rh[j] = reinterpret_cast<const float*>(hs.data() + j * D);
        rl[j] = reinterpret_cast<const float*>(ls.data() + j * D);
      } else {
        rh[j] = reinterpret_cast<const float*>(orow);
      }
    }
    for (int64_t m = 0; m < Dw; m += 16)
      for (int jb = 0; jb < 32; jb += 16) {
        const float* src[16];
        for (int t = 0; t < 16; ++t) src[t] = rh[jb + t] + m;
        transpose16x16(src, ob.data() + m * 32 + jb, 32);
        if constexpr (kF16) {
          for (int t = 0; t < 16; ++t) src[t] = rl[jb + t] + m;
          transpose16x16(src, obl.data() + m * 32 + jb, 32);
        }
      }
    const int64_t row = sh.qpbase[size_t(b)] + i0;
    amx_gemm(32, 32, int(D), sh.dyc + o + row * D, D * 2, ob.data(), 32 * 4, c, 32 * 4, false,
             kF16 ? sh.dycl + o + row * D : nullptr, kF16 ? obl.data() : nullptr, kF16);
  });
}

// Packs Qc / dYc / QT / dYT (see Shared) in parallel over (b, n); kF16: their hi halves
// there and the lo halves in Qcl / dYcl / QTl / dYTl.
template <bool kF16>
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
  sh.qc = sh.bqc.get<uint16_t>(n);
  sh.dyc = sh.bdyc.get<uint16_t>(n);
  sh.qt = sh.bqt.get<uint16_t>(n);
  sh.dyt = sh.bdyt.get<uint16_t>(n);
  if (kF16) {
    sh.qcl = sh.bqcl.get<uint16_t>(n);
    sh.dycl = sh.bdycl.get<uint16_t>(n);
    sh.qtl = sh.bqtl.get<uint16_t>(n);
    sh.dytl = sh.bdytl.get<uint16_t>(n);
  }
  parallel_for(p.B * p.N1, [&](int64_t task, int) {
    const int64_t b = task / p.N1, hn = task % p.N1, sq = p.sq[size_t(b)];
    const uint16_t* q = static_cast<const uint16_t*>(p.q.data);
    const uint16_t* dy = static_cast<const uint16_t*>(p.dy.data);
    const size_t o = size_t(hn * sh.Tqp * D);
    const int64_t r0 = sh.qpbase[size_t(b)];
    for (int64_t i = 0; i < sq; ++i) {
      const int64_t row = (r0 + i) * D;
      const uint16_t* qs = q + op_off(p, p.q, false, b, hn, i);
      const uint16_t* ds = dy + op_off(p, p.dy, false, b, hn, i);
      if constexpr (kF16) {
        split_fp16(qs, sh.qc + o + row, sh.qcl + o + row, D);
        split_fp16(ds, sh.dyc + o + row, sh.dycl + o + row, D);
      } else {
        std::memcpy(sh.qc + o + row, qs, size_t(D) * 2);
        std::memcpy(sh.dyc + o + row, ds, size_t(D) * 2);
      }
    }
    // padding rows up to the next sequence (or the end, slack included) are zero; the
    // transposes then cover whole 32-row blocks
    const int64_t pa = r0 + sq, pe = b + 1 < p.B ? sh.qpbase[size_t(b) + 1] : sh.Tqp;
    const std::pair<uint16_t*, uint16_t*> rt[4] = {{sh.qc, sh.qt}, {sh.dyc, sh.dyt}, {sh.qcl, sh.qtl}, {sh.dycl, sh.dytl}};
    for (const auto& [rows, cols] : rt) {
      if (!rows) continue;
      std::memset(rows + o + pa * D, 0, size_t((pe - pa) * D) * 2);
      for (int64_t r = r0; r < pe; r += 32)
        for (int64_t d = 0; d < D; d += 32) transpose32x32_16(rows + o + r * D + d, D, cols + o + d * sh.Tqp + r, sh.Tqp);
    }
    amx_dsum<kF16>(sh, b, hn);
  });
}

// kF16: float16 inputs, every q / k / v / dy value as exact bf16 halves hi + lo (the *l
// buffers): S, dP in 4 passes (hh + hl + lh + ll), the P' / dS products in 3 (Ph Xh + Ph Xl + Pl Xh).
template <bool kF16>
struct AmxWorker : Worker<AmxBase> {
  static constexpr int kSub = kAmxSub, kSup = kAmxBk;
  // Row stride (in 32-bit words) of KVd / VVd / dK^T / dV^T: kSup + 16, not kSup. A 2 KiB
  // stride maps the 16 rows of every tile load onto 2 of the 64 L1 sets (conflict misses);
  // padding by one cache line spreads them (dev/bwd_03_superblock.md).
  static constexpr int kLd = kSup + 16;
  Buf bkvd, bvvd, bkjv, bpv, bdsv, bdsr, bdkt, bdvt, bdql, bdka, bdva, bwords, bzero, bkvdl, bvvdl, bkjvl, bsplit;
  // P' and dS as exact-ish bf16 pairs hi + lo (hi = bf16(x), lo = bf16(x - hi): 16
  // significand bits, rel. error <= 2^-17): a single bf16 P' / dS exceeds the SPEC §11
  // tolerance on long rows (dev/bwd_02_amx.md).
  uint16_t *KVd, *VVd, *Kjv, *Pv, *dSv, *dSr, *Pv2, *dSv2, *dSr2;
  uint16_t *KVdl = nullptr, *VVdl = nullptr, *Kjvl = nullptr, *tsplit = nullptr;  // kF16 only
  float *dKT, *dVT, *dQl, *zrow;

  AmxWorker(const Problem& prob, Shared& s) : Worker<AmxBase>(prob, s) {
    KVd = bkvd.get<uint16_t>(size_t(D * kLd));
    VVd = bvvd.get<uint16_t>(size_t(D * kLd));
    Kjv = bkjv.get<uint16_t>(size_t(kSup * D));
    Pv = bpv.get<uint16_t>(size_t(2 * kBq * kSub));
    dSv = bdsv.get<uint16_t>(size_t(2 * kBq * kSub));
    dSr = bdsr.get<uint16_t>(size_t(2 * kBq * kSub));
    Pv2 = Pv + kBq * kSub;
    dSv2 = dSv + kBq * kSub;
    dSr2 = dSr + kBq * kSub;
    dKT = bdkt.get<float>(size_t(D * kLd));
    dVT = bdvt.get<float>(size_t(D * kLd));
    dQl = bdql.get<float>(size_t((kBq + 32) * D));
    // the base buffers sized for kBk = kSub keys: dK/dV rows and dropout words of a superblock
    dKa = bdka.get<float>(size_t(kSup * Dp));
    dVa = bdva.get<float>(size_t(kSup * Dp));
    words = bwords.get<uint32_t>(size_t(kSup + 16));
    zrow = bzero.get<float>(size_t(D));  // zeros (padding rows of the K/V transposes)
    if (kF16) {
      KVdl = bkvdl.get<uint16_t>(size_t(D * kLd));
      VVdl = bvvdl.get<uint16_t>(size_t(D * kLd));
      Kjvl = bkjvl.get<uint16_t>(size_t(kSup * D));
      tsplit = bsplit.get<uint16_t>(size_t(4 * 16 * D));  // K hi, K lo, V hi, V lo of 16 keys
    }
  }

  // General path: P' / dS rows [0, Rp) x keys [0, jp) of S / dP (row stride kSub) -> Pv, dSv
  // (row pairs) and dSr (rows), hi + lo bf16; keys >= jn and rows >= R are 0.
  void convert(int R, int Rp, int jn, int jp) {
    // word k of the result = pair (row r, row r+1) of key k/2: index k/2 + 16 * (k & 1)
    const __m512i inter = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                           21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int r = 0; r < Rp; r += 2) {
      const float* s0 = S + r * kSub;
      const float* s1 = s0 + kSub;
      const float* d0 = dP + r * kSub;
      const float* d1 = d0 + kSub;
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
        const int64_t vo = (r / 2) * kSub * 2 + j * 2;
        _mm512_storeu_si512(Pv + vo, _mm512_permutexvar_epi16(inter, pa));
        _mm512_storeu_si512(dSv + vo, _mm512_permutexvar_epi16(inter, pb));
        _mm512_storeu_si512(Pv2 + vo, _mm512_permutexvar_epi16(inter, la));
        _mm512_storeu_si512(dSv2 + vo, _mm512_permutexvar_epi16(inter, lb));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dSr + r * kSub + j), _mm512_castsi512_si256(pb));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dSr + (r + 1) * kSub + j), _mm512_extracti64x4_epi64(pb, 1));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dSr2 + r * kSub + j), _mm512_castsi512_si256(lb));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dSr2 + (r + 1) * kSub + j), _mm512_extracti64x4_epi64(lb, 1));
      }
    }
  }

  // Fast path (no pse, no dropout, every row of the tile keeps every key): the element
  // semantics and the hi + lo split in one pass, straight from the S / dP tiles:
  //   P = 2^(qk * scale * log2e + nb2[row])  (degree-5 exp2, rel. err 1.6e-7)
  //   scale * dS = scale * (P * (dP - Dsum))  (grad_row's order: dP - Dsum is exactly 0 where
  //   Dsum is dP's own evaluation and O = V_j; dP * scale - (Dsum * scale rounded) is not)
  //   hi = x rounded to bf16 in the integer domain ((bits + 0x8000) & ~0xffff: round half away,
  //   |x - hi| <= half a bf16 ulp), lo = bf16(x - hi) (the difference is exact in fp32).
  // A row pair's hi halves interleave into VNNI dwords without a permute: (hi1 | hi0 >> 16).
  // Rows ib .. ib+R of head n, keys [0, jn); rows [R, Rp) and keys [jn, jp) are written 0.
  void fused_convert(int64_t b, int64_t n, int64_t ib, int R, int Rp, int jn, int jp) {
    const __m512i inter = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                           21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    // inverse of inter: [row r words | row r+1 words] from VNNI pairs
    const __m512i deint = _mm512_set_epi16(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1, 30, 28, 26, 24,
                                           22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const float scale = float(p.scale);
    const __m512 c1 = _mm512_set1_ps(scale * kLog2e), vscale = _mm512_set1_ps(scale);
    const __m512 vmin = _mm512_set1_ps(exp2c::kMinArg);
    const __m512i rnd = _mm512_set1_epi32(0x8000), himask = _mm512_set1_epi32(int32_t(0xffff0000u));
    const float* c = exp2c::d5;
    const __m512 e0 = _mm512_set1_ps(c[0]), e1 = _mm512_set1_ps(c[1]), e2 = _mm512_set1_ps(c[2]);
    const __m512 e3 = _mm512_set1_ps(c[3]), e4 = _mm512_set1_ps(c[4]), e5 = _mm512_set1_ps(c[5]);
    const __m512 vninf = _mm512_set1_ps(-INFINITY);
    // k: the lanes to compute; -inf (a -inf logit) gives exactly 0, NaN stays NaN
    auto exp2v = [&](__m512 t, __mmask16& k) {
      k = _mm512_mask_cmp_ps_mask(k, t, vninf, _CMP_NEQ_UQ);
      t = _mm512_max_ps(vmin, t);  // operand order keeps NaN
      const __m512 f = _mm512_reduce_ps(t, 0x09);  // t - floor(t) in [0, 1)
      __m512 pl = _mm512_fmadd_ps(e5, f, e4);
      pl = _mm512_fmadd_ps(pl, f, e3);
      pl = _mm512_fmadd_ps(pl, f, e2);
      pl = _mm512_fmadd_ps(pl, f, e1);
      pl = _mm512_fmadd_ps(pl, f, e0);
      return _mm512_maskz_scalef_ps(k, pl, t);
    };
    auto hi_of = [&](__m512 x) {
      return _mm512_and_si512(_mm512_add_epi32(_mm512_castps_si512(x), rnd), himask);
    };
    for (int r = 0; r < Rp; r += 2) {
      const float* s0 = S + r * kSub;
      const float* d0 = dP + r * kSub;
      const bool v0 = r < R, v1 = r + 1 < R;
      float nb0 = 0.f, nb1 = 0.f, ds0 = 0.f, ds1 = 0.f;
      if (v0) {
        const size_t ri = sh.ri(n, b, ib + r);
        nb0 = sh.nb2[ri];
        ds0 = sh.dsum[ri];
      }
      if (v1) {
        const size_t ri = sh.ri(n, b, ib + r + 1);
        nb1 = sh.nb2[ri];
        ds1 = sh.dsum[ri];
      }
      const __m512 vnb0 = _mm512_set1_ps(nb0), vnb1 = _mm512_set1_ps(nb1);
      const __m512 vds0 = _mm512_set1_ps(ds0), vds1 = _mm512_set1_ps(ds1);
      uint16_t* pv = Pv + (r / 2) * kSub * 2;
      uint16_t* pv2 = Pv2 + (r / 2) * kSub * 2;
      uint16_t* dsv = dSv + (r / 2) * kSub * 2;
      uint16_t* dsv2 = dSv2 + (r / 2) * kSub * 2;
      for (int j = 0; j < jp; j += 16) {
        const __mmask16 m = j + 16 <= jn ? __mmask16(0xffff) : j < jn ? __mmask16((1u << (jn - j)) - 1u) : 0;
        __mmask16 m0 = v0 ? m : 0, m1 = v1 ? m : 0;  // narrowed by exp2v to P != 0
        const __m512 p0 = exp2v(_mm512_fmadd_ps(_mm512_loadu_ps(s0 + j), c1, vnb0), m0);
        const __m512 p1 = exp2v(_mm512_fmadd_ps(_mm512_loadu_ps(s0 + kSub + j), c1, vnb1), m1);
        const __m512 q0 =
            _mm512_mul_ps(vscale, _mm512_maskz_mul_ps(m0, p0, _mm512_sub_ps(_mm512_loadu_ps(d0 + j), vds0)));
        const __m512 q1 =
            _mm512_mul_ps(vscale, _mm512_maskz_mul_ps(m1, p1, _mm512_sub_ps(_mm512_loadu_ps(d0 + kSub + j), vds1)));
        const __m512i hp0 = hi_of(p0), hp1 = hi_of(p1), hq0 = hi_of(q0), hq1 = hi_of(q1);
        const __m512 lp0 = _mm512_sub_ps(p0, _mm512_castsi512_ps(hp0));
        const __m512 lp1 = _mm512_sub_ps(p1, _mm512_castsi512_ps(hp1));
        const __m512 lq0 = _mm512_sub_ps(q0, _mm512_castsi512_ps(hq0));
        const __m512 lq1 = _mm512_sub_ps(q1, _mm512_castsi512_ps(hq1));
        const __m512i vp = _mm512_or_si512(hp1, _mm512_srli_epi32(hp0, 16));  // VNNI pairs
        const __m512i vq = _mm512_or_si512(hq1, _mm512_srli_epi32(hq0, 16));
        const __m512i lp = __m512i(_mm512_cvtne2ps_pbh(lp1, lp0));  // [row r | row r+1]
        const __m512i lq = __m512i(_mm512_cvtne2ps_pbh(lq1, lq0));
        const __m512i rq = _mm512_permutexvar_epi16(deint, vq);
        _mm512_storeu_si512(pv + j * 2, vp);
        _mm512_storeu_si512(dsv + j * 2, vq);
        _mm512_storeu_si512(pv2 + j * 2, _mm512_permutexvar_epi16(inter, lp));
        _mm512_storeu_si512(dsv2 + j * 2, _mm512_permutexvar_epi16(inter, lq));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dSr + r * kSub + j), _mm512_castsi512_si256(rq));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dSr + (r + 1) * kSub + j), _mm512_extracti64x4_epi64(rq, 1));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dSr2 + r * kSub + j), _mm512_castsi512_si256(lq));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dSr2 + (r + 1) * kSub + j), _mm512_extracti64x4_epi64(lq, 1));
      }
    }
  }

  // Packs keys [j0, j0 + jn) of (b, g), zero padded to jp (a multiple of 32):
  //   KVd, VVd [D/2][kSup][2]: the dwords (d pairs) of each K / V row, transposed;
  //   Kjv [kSup/2][D][2]: rows 2p and 2p+1 interleaved word by word.
  // kF16: the hi halves there, the lo halves in KVdl, VVdl, Kjvl.
  void pack_kv(int64_t b, int64_t g, int64_t j0, int jn, int jp) {
    const uint16_t* ksrc = static_cast<const uint16_t*>(p.k.data);
    const uint16_t* vsrc = static_cast<const uint16_t*>(p.v.data);
    for (int jb = 0; jb < jp; jb += 16) {
      const float* kr[16];
      const float* vr[16];
      const float* krl[16];
      const float* vrl[16];
      for (int i = 0; i < 16; ++i) {
        const bool in = jb + i < jn;
        const uint16_t* ks = in ? ksrc + op_off(p, p.k, true, b, g, j0 + jb + i) : nullptr;
        const uint16_t* vs = in ? vsrc + op_off(p, p.v, true, b, g, j0 + jb + i) : nullptr;
        if constexpr (kF16) {
          uint16_t* kh = tsplit + i * D;
          uint16_t* kl = tsplit + (16 + i) * D;
          uint16_t* vh = tsplit + (32 + i) * D;
          uint16_t* vl = tsplit + (48 + i) * D;
          if (in) {
            split_fp16(ks, kh, kl, D);
            split_fp16(vs, vh, vl, D);
          }
          kr[i] = in ? reinterpret_cast<const float*>(kh) : zrow;
          krl[i] = in ? reinterpret_cast<const float*>(kl) : zrow;
          vr[i] = in ? reinterpret_cast<const float*>(vh) : zrow;
          vrl[i] = in ? reinterpret_cast<const float*>(vl) : zrow;
        } else {
          kr[i] = in ? reinterpret_cast<const float*>(ks) : zrow;
          vr[i] = in ? reinterpret_cast<const float*>(vs) : zrow;
        }
      }
      pack_rows(jb, kr, vr, KVd, VVd, Kjv);
      if constexpr (kF16) pack_rows(jb, krl, vrl, KVdl, VVdl, Kjvl);
    }
  }

  // The 16 keys jb.. (bf16 rows kr / vr) into kvd, vvd, kjv (layouts of pack_kv).
  void pack_rows(int jb, const float* const kr[16], const float* const vr[16], uint16_t* kvd, uint16_t* vvd,
                 uint16_t* kjv) {
    const int64_t Dw = D / 2;  // dwords per row
    for (int64_t m = 0; m < Dw; m += 16) {
      const float* ks[16];
      const float* vs[16];
      for (int i = 0; i < 16; ++i) ks[i] = kr[i] + m, vs[i] = vr[i] + m;
      transpose16x16(ks, reinterpret_cast<float*>(kvd) + m * kLd + jb, kLd);
      transpose16x16(vs, reinterpret_cast<float*>(vvd) + m * kLd + jb, kLd);
    }
    // Kjv: word (pair p, d, e) = K[2p + e][d]
    const __m512i ilo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                         37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i ihi = _mm512_set_epi16(63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57, 25, 56, 24, 55, 23, 54,
                                         22, 53, 21, 52, 20, 51, 19, 50, 18, 49, 17, 48, 16);
    for (int i = 0; i < 16; i += 2) {
      const uint16_t* r0 = reinterpret_cast<const uint16_t*>(kr[i]);
      const uint16_t* r1 = reinterpret_cast<const uint16_t*>(kr[i + 1]);
      uint16_t* dst = kjv + ((jb + i) / 2) * D * 2;
      for (int64_t d = 0; d < D; d += 32) {
        const __m512i a = _mm512_loadu_si512(r0 + d), c = _mm512_loadu_si512(r1 + d);
        _mm512_storeu_si512(dst + d * 2, _mm512_permutex2var_epi16(a, ilo, c));
        _mm512_storeu_si512(dst + d * 2 + 32, _mm512_permutex2var_epi16(a, ihi, c));
      }
    }
  }

  // dK^T / dV^T [D][kSup] -> dKa / dVa rows [jn][Dp] (16 x 16 transposes).
  void unpack_dkv(int jn) {
    const int jr = int(round_up(jn, 16));
    for (int64_t d0 = 0; d0 < D; d0 += 16)
      for (int jb = 0; jb < jr; jb += 16) {
        const float* ks[16];
        const float* vs[16];
        for (int i = 0; i < 16; ++i) ks[i] = dKT + (d0 + i) * kLd + jb, vs[i] = dVT + (d0 + i) * kLd + jb;
        transpose16x16(ks, dKa + jb * Dp + d0, Dp);
        transpose16x16(vs, dVa + jb * Dp + d0, Dp);
      }
  }

  // Rounds the finished dK / dV rows once to bf16 (round to nearest even, as f_to_bf16).
  void store_kv_bf16(int64_t b, int64_t g, int64_t j0, int jn) {
    uint16_t* dk = static_cast<uint16_t*>(const_cast<void*>(p.dk.data));
    uint16_t* dv = static_cast<uint16_t*>(const_cast<void*>(p.dv.data));
    for (int jj = 0; jj < jn; ++jj) {
      uint16_t* kd = dk + op_off(p, p.dk, true, b, g, j0 + jj);
      uint16_t* vd = dv + op_off(p, p.dv, true, b, g, j0 + jj);
      for (int64_t d = 0; d < D; d += 32) {
        _mm512_storeu_si512(kd + d, __m512i(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(dKa + jj * Dp + d + 16),
                                                                  _mm512_loadu_ps(dKa + jj * Dp + d))));
        _mm512_storeu_si512(vd + d, __m512i(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(dVa + jj * Dp + d + 16),
                                                                  _mm512_loadu_ps(dVa + jj * Dp + d))));
      }
    }
  }

  // One superblock: keys [j0, j0 + jn), jn <= kSup, of (b, kv head g); dQ partial slot c.
  // Loop order: query head n, q tile (kBq rows), key tile (kSub keys). The q tile's dQ
  // accumulates in dQl (AMX C tiles, fp32) across the key tiles and is added to the partial
  // rows once per superblock.
  void kv_block_amx(int64_t b, int64_t g, int64_t c, int64_t j0, int jn) {
    const int jp = int(round_up(jn, 32));
    pack_kv(b, g, j0, jn, jp);
    for (int64_t d = 0; d < D; ++d) {
      std::memset(dKT + d * kLd, 0, size_t(jp) * 4);
      std::memset(dVT + d * kLd, 0, size_t(jp) * 4);
    }
    const bool fast_ok = p.pse.kind == PseKind::none && !p.dropout && !sh.dpse;
    // k / q / dy / v rows with a NaN / Inf, or a non-finite Dsum (rare): the bf16 products here
    // would multiply zero weights by them, and an infinite dS splits into Inf + NaN halves; the
    // fp32 path (bwd_driver.h Worker::kv_block) takes them out.
    {
      bool bad = sh.any_qdy_bad(b, g);
      const uint8_t* kb = sh.kbad.data() + g * sh.Tk + sh.kbase[size_t(b)] + j0;
      for (int jj = 0; !bad && jj < jn; ++jj) bad = kb[jj] != 0;
      if (bad) {
        for (int s0 = 0; s0 < jn; s0 += kSub) kv_block(b, g, c, j0 + s0, std::min(kSub, jn - s0));
        return;
      }
    }

    int64_t ia, ie;
    rows_for_keys(p, b, j0, j0 + jn, &ia, &ie);
    const int64_t Tqp = sh.Tqp;
    for (int64_t n = g * p.G; n < (g + 1) * p.G; ++n) {
      const uint16_t* qc = sh.qc + n * Tqp * D;
      const uint16_t* dyc = sh.dyc + n * Tqp * D;
      const uint16_t* qt = sh.qt + n * D * Tqp;
      const uint16_t* dyt = sh.dyt + n * D * Tqp;
      const uint16_t* qcl = kF16 ? sh.qcl + n * Tqp * D : nullptr;
      const uint16_t* dycl = kF16 ? sh.dycl + n * Tqp * D : nullptr;
      const uint16_t* qtl = kF16 ? sh.qtl + n * D * Tqp : nullptr;
      const uint16_t* dytl = kF16 ? sh.dytl + n * D * Tqp : nullptr;
      for (int64_t i0 = ia; i0 < ie; i0 += kBq) {
        const int ni = int(std::min<int64_t>(kBq, ie - i0));
        int zlo = 0, zhi = 0;  // dQl rows holding values (relative to i0)
        int qlo = kBq, qhi = 0;
        row_metas(b, n, i0, ni);
        for (int s0 = 0; s0 < jn; s0 += kSub) {
          const int sn = std::min(kSub, jn - s0), sp = int(round_up(sn, 32));
          int rlo, rhi;
          classify_keys(ni, j0 + s0, sn, &rlo, &rhi);
          if (rlo >= rhi) continue;
          const int R = rhi - rlo, Rp = int(round_up(R, 32));
          const int64_t ib = i0 + rlo, prow = sh.qpbase[size_t(b)] + ib;
          if constexpr (kF16) {  // exact products: hh + hl + lh + ll
            amx_gemm(Rp, sp, int(D), qc + prow * D, D * 2, KVd + s0 * 2, kLd * 4, S, kSub * 4, false,
                     qcl + prow * D, KVdl + s0 * 2, true);
            amx_gemm(Rp, sp, int(D), dyc + prow * D, D * 2, VVd + s0 * 2, kLd * 4, dP, kSub * 4, false,
                     dycl + prow * D, VVdl + s0 * 2, true);
          } else {
            amx_gemm(Rp, sp, int(D), qc + prow * D, D * 2, KVd + s0 * 2, kLd * 4, S, kSub * 4, false);
            amx_gemm(Rp, sp, int(D), dyc + prow * D, D * 2, VVd + s0 * 2, kLd * 4, dP, kSub * 4, false);
          }
          bool fast = fast_ok;
          for (int r = rlo; fast && r < rhi; ++r) fast = cls[r] == kFull;
          if (fast) {
            fused_convert(b, n, ib, R, Rp, sn, sp);
          } else {
            grad_rows(b, n, c, ib, rlo, R, j0 + s0, sn, S, dP, kSub);
            convert(R, Rp, sn, sp);
          }
          // kF16: Xh Ph + Xh Pl + Xl Ph (Xl Pl ~2^-17 relative: below the fp16 output)
          amx_gemm(int(D), sp, Rp, dyt + prow, Tqp * 2, Pv, kSub * 4, dVT + s0, kLd * 4, true,
                   kF16 ? dytl + prow : nullptr, Pv2);
          amx_gemm(int(D), sp, Rp, qt + prow, Tqp * 2, dSv, kSub * 4, dKT + s0, kLd * 4, true,
                   kF16 ? qtl + prow : nullptr, dSv2);
          // dQl rows [rlo, rlo + Rp) (+)= dS K
          const int a = rlo, e = rlo + Rp;
          bool load = true;
          if (zhi == 0) {
            load = false;
            zlo = a, zhi = e;
          } else {
            if (a < zlo) std::memset(dQl + a * D, 0, size_t((zlo - a) * D) * 4), zlo = a;
            if (e > zhi) std::memset(dQl + zhi * D, 0, size_t((e - zhi) * D) * 4), zhi = e;
          }
          amx_gemm(Rp, int(D), sp, dSr, kSub * 2, Kjv + (s0 / 2) * D * 2, D * 4, dQl + a * D, D * 4, load, dSr2,
                   kF16 ? Kjvl + (s0 / 2) * D * 2 : nullptr);
          qlo = std::min(qlo, rlo);
          qhi = std::max(qhi, rhi);
        }
        for (int r = qlo; r < qhi; ++r) {
          float* dst = sh.dq_row(c, n, b, i0 + r);
          const float* src = dQl + r * D;
          for (int64_t d = 0; d < D; d += 16)
            _mm512_storeu_ps(dst + d, _mm512_add_ps(_mm512_loadu_ps(dst + d), _mm512_loadu_ps(src + d)));
        }
      }
    }
    unpack_dkv(jn);
    for (int64_t n = g * p.G; n < (g + 1) * p.G; ++n)
      if (sh.ucount[size_t(b * p.N1 + n)] > 0) uniform_rows(b, n, j0, jn);
    if constexpr (kF16) store_kv(b, g, j0, jn);  // rounded once to fp16 (store_row_f32)
    else store_kv_bf16(b, g, j0, jn);
  }

  void run_task(const BTask& t) {
    load_tile_config();
    for_task_blocks(p, sh, t, kSup, [&](int64_t b, int64_t c, int64_t j0, int jn) { kv_block_amx(b, t.g, c, j0, jn); });
    _tile_release();
  }
};

}  // namespace bwd

#include "cpu/bwd_worker_super.h"

namespace bwd {

// ---- float32 (bwd_amx_fp32): S = Q K^T and dP = dY V^T on AMX ---------------------------------
// The fp32 worker of bwd_avx512 (bwd_worker_super.h: element pass, dV / dK / dQ on FMA) with its
// two products S and dP as sums of bf16 part products: every q / k / v / dy value split exactly
// into three bf16 parts (split_parts, cpu/tile/amx_parts.h: x = x0 + x1 + x2), and
//   S = sum over Terms<3>::qk of Q_a K_b^T   (the 6 products of order >= 2^-16, as the fp32
//   dP = sum over Terms<3>::qk of dY_a V_b^T  forward: dropped terms ~2^-24 relative)
// D is padded with zero parts to Dk (a multiple of 32), rows and keys to multiples of 32.
// Dsum is recomputed with the same passes (amx_dsum_f32). dev/bwd_09_fp32_amx.md.

// The three bf16 parts of row[d .. d + 16) (row: D fp32 values, 0 past D; nullptr: zeros).
inline void split_at(const float* row, int64_t D, int64_t d, __m256i x[3]) {
  const __mmask16 k = row && d < D ? __mmask16(D - d >= 16 ? 0xffffu : (1u << (D - d)) - 1u) : __mmask16(0);
  split_parts<3>(_mm512_maskz_loadu_ps(k, row ? row + d : nullptr), x);
}

// Rows rows[r] (D fp32 values; nullptr: zeros), r < n, as three bf16 part planes, row-major
// (A operand): part i of element d of row r at dst[i * plane + r * ld + d], d < Dk (0 for d >= D).
inline void split_rows_a(const float* const* rows, int n, int64_t D, int64_t Dk, uint16_t* dst, int64_t ld,
                         int64_t plane) {
  for (int r = 0; r < n; ++r)
    for (int64_t d = 0; d < Dk; d += 16) {
      __m256i x[3];
      split_at(rows[r], D, d, x);
      for (int i = 0; i < 3; ++i) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i * plane + r * ld + d), x[i]);
    }
}

// 16 rows (keys jj < 16: D fp32 values; nullptr: zeros) as one 16-key block of three VNNI bf16
// part planes (B operand): dword dst[i * plane + q * 16 + jj] = part i of (row jj [2q], row jj
// [2q + 1]), q < Dk / 2. Every B tile (16 d pairs x 16 keys) is then one contiguous KiB.
inline void pack_rows_b(const float* const rows[16], int64_t D, int64_t Dk, uint32_t* dst, int64_t plane) {
  alignas(64) uint16_t t[3][16][32];  // [part][row][32 d]
  const float* src[3][16];
  for (int i = 0; i < 3; ++i)
    for (int jj = 0; jj < 16; ++jj) src[i][jj] = reinterpret_cast<const float*>(t[i][jj]);
  for (int64_t d0 = 0; d0 < Dk; d0 += 32) {
    for (int jj = 0; jj < 16; ++jj)
      for (int h = 0; h < 2; ++h) {
        const int64_t d = d0 + 16 * h;
        __m256i x[3];
        split_at(rows[jj], D, d, x);
        for (int i = 0; i < 3; ++i) _mm256_store_si256(reinterpret_cast<__m256i*>(t[i][jj] + 16 * h), x[i]);
      }
    for (int i = 0; i < 3; ++i)
      transpose16x16(src[i], reinterpret_cast<float*>(dst + i * plane + (d0 / 2) * 16), 16);
  }
}

// C[M x N] = sum over Terms<3>::qk of A_a . B_b: A parts bf16 row-major (row stride lda, part i at
// A + i * a_plane), B parts VNNI dwords in 16-column blocks [N/16][K/2][16] (pack_rows_b; part i
// at B + i * b_plane), fp32 C (row stride ldc). M, N, K multiples of 32; 2 x 2 C tiles per
// 32 x 32 block, per 32 k the terms in order.
// An element's passes and their order depend only on K, not on its place in the tiles.
inline void amx_gemm_parts(int M, int N, int K, const uint16_t* A, int64_t lda, int64_t a_plane, const uint32_t* B,
                           int64_t b_plane, float* C, int64_t ldc) {
  using T = Terms<3>;
  constexpr int kT = int(sizeof(T::qk) / sizeof(Term));
  for (int m = 0; m < M; m += 32)
    for (int n = 0; n < N; n += 32) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int k = 0; k < K; k += 32) {
#pragma GCC unroll 8
        for (int t = 0; t < kT; ++t) {
          const Term tm = T::qk[t];
          const uint16_t* a = A + tm.a * a_plane + m * lda + k;
          const uint32_t* b = B + tm.b * b_plane + (n / 16) * (K / 2) * 16 + (k / 2) * 16;
          pass2x2(t == 0 || tm.a != T::qk[t - 1].a, t == 0 || tm.b != T::qk[t - 1].b, true, true,
                  [&](int i) {
                    if (i) _tile_loadd(5, a + 16 * lda, lda * 2);
                    else _tile_loadd(4, a, lda * 2);
                  },
                  [&](int i) {
                    if (i) _tile_loadd(7, b + (K / 2) * 16, 64);
                    else _tile_loadd(6, b, 64);
                  });
        }
      }
      float* c = C + m * ldc + n;
      _tile_stored(0, c, ldc * 4);
      _tile_stored(1, c + 16, ldc * 4);
      _tile_stored(2, c + 16 * ldc, ldc * 4);
      _tile_stored(3, c + 16 * ldc + 16, ldc * 4);
    }
}

// The Dsum policy of bwd_amx_fp32 (bwd_driver.h replace_dsum): Dsum of every row recomputed on
// the tiles as dY . O^T with exactly the passes and order of dP = dY . V^T (amx_gemm_parts on
// parts split the same way).
inline void amx_dsum_f32(Shared& sh) {
  const Problem& p = sh.p;
  const int64_t D = p.D, Dk = round_up(D, 32);
  parallel_for(p.B * p.N1, [&](int64_t task, int) {
    const int64_t b = task / p.N1, n = task % p.N1;
    std::vector<uint16_t> a(size_t(3 * 32 * Dk));
    std::vector<uint32_t> o(size_t(3 * 16 * Dk));
    const float* dy = static_cast<const float*>(p.dy.data);
    const float* out = static_cast<const float*>(p.out.data);
    amx_diag_dsum(sh, b, n, [&](int64_t i0, int rn, float* c) {
      const float* dr[32];
      const float* orow[32];
      for (int j = 0; j < 32; ++j) {
        dr[j] = j < rn ? dy + op_off(p, p.dy, false, b, n, i0 + j) : nullptr;
        orow[j] = j < rn ? out + op_off(p, p.out, false, b, n, i0 + j) : nullptr;
      }
      split_rows_a(dr, 32, D, Dk, a.data(), Dk, 32 * Dk);
      pack_rows_b(orow, D, Dk, o.data(), 16 * Dk);
      pack_rows_b(orow + 16, D, Dk, o.data() + 8 * Dk, 16 * Dk);
      amx_gemm_parts(32, 32, int(Dk), a.data(), Dk, 32 * Dk, o.data(), 16 * Dk, c, 32);
    });
  });
}

// The products policy of WorkerSuper (bwd_worker_super.h) for bwd_amx_fp32.
struct AmxF32Products {
  static constexpr int kRowsA = 64 + 32;  // q tile rows + a 32-row tile starting at any of them
  const Problem& p;
  int64_t D, Dk, bplane;
  Buf bqa, bdya, bkb, bvb;
  uint16_t *Qa, *dYa;  // Q / dY parts of the q tile [3][kRowsA][Dk]; rows from nz on are 0
  int nz = 0;
  uint32_t *Kb, *Vb;   // K / V parts of the superblock [3][(kSup + 32) / 16][Dk/2][16]

  AmxF32Products(const Problem& prob, int64_t D_, int64_t, int kSup)
      : p(prob), D(D_), Dk(round_up(D_, 32)), bplane((kSup + 32) * Dk / 2) {
    Qa = bqa.get<uint16_t>(size_t(3 * kRowsA * Dk));
    dYa = bdya.get<uint16_t>(size_t(3 * kRowsA * Dk));
    Kb = bkb.get<uint32_t>(size_t(3 * bplane));
    Vb = bvb.get<uint32_t>(size_t(3 * bplane));
  }
  void begin_task() { load_tile_config(); }
  void end_task() { _tile_release(); }

  // K rows into w.Krs; K, V parts of keys [0, jpad + 16) (jpad = jn rounded to 16; zeros from
  // jn on): products reads up to 16 keys past its kpad (N rounded to 32).
  template <class W>
  void pack_kv(W& w, int64_t b, int64_t g, int64_t j0, int jn) {
    const int je = int(round_up(jn, 16)) + 16;
    const float* vsrc = static_cast<const float*>(p.v.data);
    for (int jb = 0; jb < je; jb += 16) {
      const float* kr[16];
      const float* vr[16];
      for (int i = 0; i < 16; ++i) {
        const int j = jb + i;
        kr[i] = vr[i] = nullptr;
        if (j >= jn) continue;
        float* k = w.Krs + j * w.Dp;
        load_row_f32(p.k.data, p.dtype, op_off(p, p.k, true, b, g, j0 + j), k, D);
        kr[i] = k;
        vr[i] = vsrc + op_off(p, p.v, true, b, g, j0 + j);
      }
      pack_rows_b(kr, D, Dk, Kb + jb * Dk / 2, bplane);
      pack_rows_b(vr, D, Dk, Vb + jb * Dk / 2, bplane);
    }
  }

  // Q / dY rows 0 .. ni of the q tile (w.Q, w.dY) as parts; rows from ni on zero (rows up to
  // ni + 32 are read: zeroed where an earlier q tile left values).
  template <class W>
  void load_q(W& w, int ni) {
    const float* qr[kRowsA];
    const float* dr[kRowsA];
    for (int r = 0; r < ni; ++r) {
      qr[r] = w.Q + r * w.Dp;
      dr[r] = w.dY + r * w.Dp;
    }
    split_rows_a(qr, ni, D, Dk, Qa, Dk, kRowsA * Dk);
    split_rows_a(dr, ni, D, Dk, dYa, Dk, kRowsA * Dk);
    for (int i = 0; i < 3 && nz > ni; ++i) {
      std::memset(Qa + i * kRowsA * Dk + ni * Dk, 0, size_t((nz - ni) * Dk) * 2);
      std::memset(dYa + i * kRowsA * Dk + ni * Dk, 0, size_t((nz - ni) * Dk) * 2);
    }
    nz = ni;
  }

  // S, dP [R rounded to 32][kpad rounded to 32] (rows rlo.. of the q tile, keys ks..).
  template <class W>
  void products(W& w, int rlo, int R, int ks, int kpad) {
    static_assert(W::kBq + 32 <= kRowsA, "q tile rows");
    const int M = int(round_up(R, 32)), N = int(round_up(kpad, 32));
    amx_gemm_parts(M, N, int(Dk), Qa + rlo * Dk, Dk, kRowsA * Dk, Kb + ks * Dk / 2, bplane, w.S, W::kLd);
    amx_gemm_parts(M, N, int(Dk), dYa + rlo * Dk, Dk, kRowsA * Dk, Vb + ks * Dk / 2, bplane, w.dP, W::kLd);
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
  SA_NS::bwd::backward_with<SA_NS::bwd::AmxWorker<false>>(p, SA_NS::bwd::kAmxBk, SA_NS::bwd::amx_prepare<false>);
}
void bwd_amx_fp16(const Problem& p) {
  if (p.dtype != DType::float16 || p.D % 32 != 0) {
    bwd_avx512(p);
    return;
  }
  SA_NS::bwd::backward_with<SA_NS::bwd::AmxWorker<true>>(p, SA_NS::bwd::kAmxBk, SA_NS::bwd::amx_prepare<true>);
}
void bwd_amx_fp32(const Problem& p) {
  if (p.dtype != DType::float32) {
    bwd_avx512(p);
    return;
  }
  using E = SA_NS::BwdEngineAvx512<64, 128>;
  using W = SA_NS::bwd::WorkerSuper<E, 4, SA_NS::bwd::AmxF32Products>;
  SA_NS::bwd::backward_with<W>(p, W::kSup, SA_NS::bwd::amx_dsum_f32);
}
}  // namespace cpu
}  // namespace speedattn
