// The AMX-BF16 forward kernel (bfloat16 inputs): fwd_driver.h + an AMX tile engine.
//
//   pre-pass (Shared): K and V of every (b, kv head) packed ONCE into AMX B-operand layouts
//       Kp[(b,g)][S2p/16][D/2][16]          uint32 = (K[j][2q], K[j][2q+1])   ("VNNI" K^T)
//       Vp[(b,g)][S2p/32][D16/16][16][16]   uint32 = (V[2p][d], V[2p+1][d])   ("VNNI" V)
//     blocked so every AMX B tile (16 rows x 64 B) is one contiguous KiB (a row-major
//     [D/2][S2p] K^T made tile rows 16 KiB apart: same L1 set, 16 pages; perf showed the QK
//     tile loads dominating, dev/02_amx_pack_layout.txt)
//     reused by every q-block and all G query heads of the kv head (O(S) memory, like the
//     inputs; S2p = S2 rounded up to 32, D padded with zeros).
//   S = Q K^T : 2x2 blocking of 16x16 fp32 C tiles (rows 32 x keys 32), TDPBF16PS over D.
//   softmax   : AVX-512, degree-4 exp2 (rel err 2.7e-6: P in bf16 would take degree 3, but
//               softmax_sum must meet the fp32 stats tolerance 2^-15), scale
//               folded into one FMA; P written as TWO bf16 halves Ph = trunc16(p), Pl = bf16(p-Ph).
//   O += P V  : O += Ph V + Pl V (C tiles loaded from / stored to the fp32 O accumulator,
//               2x2 blocking). FlashAttention's single bf16 P (rounded before PV) broke the
//               SPEC §11 bound (2x the bf16 rounding error of the output) on some shapes:
//               tests/python/test_properties.py found err 1.306e-3 > tol 1.305e-3 (S1 63,
//               S2 65, D 3); with Pl the P error is ~2^-16 and the bound holds
//               (dev/07_amx_p_split.txt: cost of the second PV pass).
// float16 inputs (EngineAmx<true>): no AMX-FP16 on this CPU and fp16 accumulation is not
// acceptable, so every fp16 value is split exactly into two bf16 parts, x = hi + lo
// (hi = bf16(x), lo = bf16(x - hi): 8 + 8 significant bits >= fp16's 11), and
//   S  = Qh Kh + Qh Kl + Ql Kh + Ql Kl    (exact products: the fp32 statistics need them, F6)
//   O += Ph Vh + Ph Vl + Pl Vh            (P = Ph + Pl to ~2^-16; Pl Vl ~2^-18, below fp16 output)
// four / three AMX passes; still well ahead of fp32 FMA (dev/04_fp16_paths.txt).
// Problems with fewer than kMinRowsPerKvHead rows per kv head use the AVX-512 kernel (AMX tiles of 16
// rows would be mostly padding, and the pre-pack would not amortise); bf16 decode shapes (2..16
// rows per kv head, D % 32 == 0) use EngineDecodeAmx below (no pre-pack: K rows are the A operand).
//
// Tiles: kBq 256 rows x kBk 256 keys: S 256 KiB + P 128 KiB + O 128 KiB (D=128) + Q 64 KiB
// per core (2 MiB L2). 256 rows per pass over K/V: 4x128 rows x 2 B/key-elem K+V stream is
// ~0.1 ms per task from L3 against ~0.27 ms of AMX work (machine-limits.md: Bq >= 100-128
// needed when K/V come from L3).
#if defined(__x86_64__) || defined(_M_X64)  // x86-only file (the registry lists it only there)
#define SA_NS fwd_amx_ns
#include "cpu/fwd_driver.h"

#include <array>

#include "common/cpu_features.h"
#include "cpu/fwd_kernels.h"

namespace speedattn {
namespace SA_NS {

#include "cpu/tile/simd_avx512.h"

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

// 16 elements of a bf16 or fp16 row as (hi, lo) bf16 halves (lo only for fp16: exact split).
template <bool kSplit>
static inline __m256i load_bf16x16(const uint16_t* src, __mmask16 k, __m256i* lo) {
  if constexpr (!kSplit) {
    return _mm256_maskz_loadu_epi16(k, src);
  } else {
    const __m512 x = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, src));
    const __m256i hi = reinterpret_cast<const __m256i&>(static_cast<const __m256bh&>(_mm512_cvtneps_pbh(x)));
    const __m512 xh = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
    // lo = 0 for +-Inf (x - hi would be Inf - Inf = NaN: hi alone carries the Inf)
    const __m256bh l = _mm512_cvtneps_pbh(_mm512_maskz_sub_ps(~_mm512_fpclass_ps_mask(x, 0x18), x, xh));
    *lo = reinterpret_cast<const __m256i&>(l);
    return hi;
  }
}
static inline __m512i join256(__m256i a, __m256i b) { return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1); }

// Tuning knobs, overridable with -D only for the dev/ A/B experiments (03, 05, 06).
#ifndef SA_AMX_BQ
#define SA_AMX_BQ 256
#endif
#ifndef SA_AMX_BK
#define SA_AMX_BK 256
#endif
#ifndef SA_AMX_STRIP
#define SA_AMX_STRIP 32  // with the overlap pipeline (dev/06); kBq without (dev/03_amx_strips.txt)
#endif

template <bool kSplit>
struct EngineAmx {
  static constexpr int kBq = SA_AMX_BQ, kBk = SA_AMX_BK;
  static constexpr int kWords = 256 + 80;
  static constexpr int64_t kPackKeys = 256;  // keys per pre-pass work item

  // Memory budget of the shared pre-pack. Above it (e.g. S2 = 131072, D 128, bf16: K + V packs
  // are 64 MiB) no pre-pack is made: every engine packs the K/V block it is about to use into
  // its own kBk-key buffers (Shared::local), repacking per q-block (dev/14_local_pack.txt).
#ifndef SA_AMX_PREPACK_MIB
#define SA_AMX_PREPACK_MIB 48
#endif
  static constexpr int64_t kMaxPrePackBytes = int64_t(SA_AMX_PREPACK_MIB) << 20;

  struct Shared {
    int64_t D = 0, Dp32 = 0, Dp16 = 0;
    bool local = false;                     // no pre-pack: engines pack per block (see above)
    std::vector<int64_t> skvp, koff, voff;  // per (b, g): padded keys, word offsets
    std::vector<int64_t> joff;              // per (b, g): first key in vbad
    std::vector<uint8_t> vbad;              // per key: the value row has a NaN / Inf (packed as 0)
    Buf kbuf, vbuf, klbuf, vlbuf;
    uint32_t* kp = nullptr;
    uint32_t* vp = nullptr;
    uint32_t* kpl = nullptr;  // lo halves (fp16 split only)
    uint32_t* vpl = nullptr;
    explicit Shared(const Problem& p) : D(p.D), Dp32(round_up(p.D, 32)), Dp16(round_up(p.D, 16)) {
      const int64_t BG = p.B * p.N2;
      skvp.resize(size_t(p.B));
      koff.resize(size_t(BG));
      voff.resize(size_t(BG));
      joff.resize(size_t(BG));
      int64_t kw = 0, vw = 0, jw = 0;
      std::vector<std::array<int64_t, 3>> units;  // (b, g, chunk start)
      for (int64_t b = 0; b < p.B; ++b) {
        const int64_t skv = p.skv[size_t(b)];
        skvp[size_t(b)] = round_up(skv, 32);
        const bool used = p.sq[size_t(b)] > 0;
        for (int64_t g = 0; g < p.N2; ++g) {
          koff[size_t(b * p.N2 + g)] = kw;
          voff[size_t(b * p.N2 + g)] = vw;
          joff[size_t(b * p.N2 + g)] = jw;
          if (!used) continue;
          jw += skvp[size_t(b)];
          kw += Dp32 / 2 * skvp[size_t(b)];
          vw += skvp[size_t(b)] / 2 * Dp16;
          for (int64_t j = 0; j < skvp[size_t(b)]; j += kPackKeys) units.push_back({b, g, j});
        }
      }
      local = (kw + vw) * int64_t(sizeof(uint32_t)) * (kSplit ? 2 : 1) > kMaxPrePackBytes;
      if (local) return;
      vbad.assign(size_t(jw), 0);
      kp = kbuf.get<uint32_t>(size_t(kw), false);  // pack() writes every word
      vp = vbuf.get<uint32_t>(size_t(vw), false);
      if (kSplit) {
        kpl = klbuf.get<uint32_t>(size_t(kw), false);
        vpl = vlbuf.get<uint32_t>(size_t(vw), false);
      }
      parallel_for(int64_t(units.size()), [&](int64_t u, int) {
        const auto [b, g, j0] = units[size_t(u)];
        const int64_t bg = b * p.N2 + g, kat = koff[size_t(bg)] + (j0 / 16) * (Dp32 / 2) * 16,
                      vat = voff[size_t(bg)] + (j0 / 32) * (Dp16 / 16) * 256;
        pack(p, b, g, j0, std::min(kPackKeys, skvp[size_t(b)] - j0), kp + kat, vp + vat,
             kSplit ? kpl + kat : nullptr, kSplit ? vpl + vat : nullptr, vbad.data() + joff[size_t(bg)] + j0);
      });
    }
    // Packs keys [j0, j0 + nj) (j0 and nj multiples of 32; keys >= S2 as 0) of (b, kv head g):
    // K to kdst, V to vdst (lo halves to kdstl / vdstl when split), bad[j - j0] = 1 where the value
    // row j has a NaN / Inf. The destinations point at the block of key j0.
    void pack(const Problem& p, int64_t b, int64_t g, int64_t j0, int64_t nj, uint32_t* kdst, uint32_t* vdst,
              uint32_t* kdstl, uint32_t* vdstl, uint8_t* bad) const {
      const int64_t skv = p.skv[size_t(b)], sp = skvp[size_t(b)];
      const uint16_t* K = static_cast<const uint16_t*>(p.k.data);
      const uint16_t* V = static_cast<const uint16_t*>(p.v.data);
      const int64_t kb = b * p.k.sb + p.row0_kv[size_t(b)] * p.k.ss + g * p.k.sn;
      const int64_t vb = b * p.v.sb + p.row0_kv[size_t(b)] * p.v.ss + g * p.v.sn;
      // K: 16 keys x 16 d-pairs blocks, 32-bit transpose
      for (int64_t j = j0; j < j0 + nj; j += 16) {
        for (int64_t q0 = 0; q0 < Dp32 / 2; q0 += 16) {
          __m512 r[16], rl[16];
          const int64_t d0 = 2 * q0;
          for (int jj = 0; jj < 16; ++jj) {
            if (j + jj < skv) {
              const uint16_t* row = K + kb + (j + jj) * p.k.ss + d0;
              __m256i l0 = _mm256_setzero_si256(), l1 = _mm256_setzero_si256();
              const __m256i h0 = load_bf16x16<kSplit>(row, lanes(D - d0), &l0);
              const __m256i h1 = load_bf16x16<kSplit>(row + 16, lanes(D - d0 - 16), &l1);
              r[jj] = _mm512_castsi512_ps(join256(h0, h1));
              rl[jj] = _mm512_castsi512_ps(join256(l0, l1));
            } else {
              r[jj] = rl[jj] = _mm512_setzero_ps();
            }
          }
          transpose16x16(r);
          uint32_t* blk = kdst + ((j - j0) / 16) * (Dp32 / 2) * 16;
          for (int qq = 0; qq < 16; ++qq) _mm512_storeu_ps(reinterpret_cast<float*>(blk + (q0 + qq) * 16), r[qq]);
          if (kSplit) {
            transpose16x16(rl);
            uint32_t* blkl = kdstl + ((j - j0) / 16) * (Dp32 / 2) * 16;
            for (int qq = 0; qq < 16; ++qq) _mm512_storeu_ps(reinterpret_cast<float*>(blkl + (q0 + qq) * 16), rl[qq]);
          }
        }
      }
      // V: key pairs interleaved per column. Rows with a NaN / Inf are packed as 0 and
      // flagged: fwd_driver.h fix_bad_v adds them where P != 0 (P = 0 never meets an Inf).
      const __m512i vexp = _mm512_set1_epi16(int16_t(kSplit ? 0x7c00 : 0x7f80));
      auto nonfinite = [&](int64_t j) {
        if (j >= skv) return false;
        const uint16_t* row = V + vb + j * p.v.ss;
        __mmask32 hit = 0;
        for (int64_t d = 0; d < D; d += 32)
          hit |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(_mm512_maskz_loadu_epi16(lanes32(D - d), row + d), vexp), vexp);
        bad[j - j0] = hit != 0;
        return hit != 0;
      };
      for (int64_t j = j0; j < j0 + nj; j += 2) {
        const bool za = nonfinite(j), zc = nonfinite(j + 1);
        for (int64_t d = 0; d < Dp16; d += 16) {
          const __mmask16 kd = lanes(D - d);
          __m256i al = _mm256_setzero_si256(), cl = _mm256_setzero_si256();
          const __m256i a =
              j < skv && !za ? load_bf16x16<kSplit>(V + vb + j * p.v.ss + d, kd, &al) : _mm256_setzero_si256();
          const __m256i c = j + 1 < skv && !zc ? load_bf16x16<kSplit>(V + vb + (j + 1) * p.v.ss + d, kd, &cl)
                                               : _mm256_setzero_si256();
          const int64_t jp = (j - j0) / 2, at = (jp / 16) * (Dp16 / 16) * 256 + (d / 16) * 256 + (jp % 16) * 16;
          _mm512_storeu_si512(vdst + at, _mm512_or_si512(_mm512_cvtepu16_epi32(a),
                                                         _mm512_slli_epi32(_mm512_cvtepu16_epi32(c), 16)));
          if (kSplit)
            _mm512_storeu_si512(vdstl + at, _mm512_or_si512(_mm512_cvtepu16_epi32(al),
                                                            _mm512_slli_epi32(_mm512_cvtepu16_epi32(cl), 16)));
        }
      }
    }
  };

  const Shared& sh;
  int64_t D, Dp32, Dp16;
  Buf bq, bql, bs, bp, bpl, bo, btmp, blk, blv, blkl, blvl;  // blk..: the block's K/V (Shared::local)
  uint16_t* Qb;  // [kBq][Dp32] bf16 (hi halves when split)
  uint16_t* Ql;  // lo halves (split only)
  float* S;      // [kBq][kBk]
  uint16_t* P;   // [kBq][kBk] bf16 (hi halves when split)
  uint16_t* Pl;  // lo halves: P = Ph + Pl to ~2^-17 (both dtypes; see pv)
  float* O;      // [kBq][Dp16]
  float *tmp, *tmp2;
  const uint32_t* kcur = nullptr;  // K pack at the block's first key
  const uint32_t* vcur = nullptr;
  const uint32_t* kcurl = nullptr;
  const uint32_t* vcurl = nullptr;
  RowMeta meta_[kBq];
  float m_[kBq], l_[kBq];
  uint8_t cls_[kBq];
  int kend_[kBq];
  alignas(64) uint32_t words_[kWords];
  int nbad_ = 0;  // keys of the current block whose value row has a NaN / Inf (Shared::vbad)
  int bad_[kBk];
  uint8_t lbad_[kBk];  // the block's value-row flags (Shared::local)

  EngineAmx(const Problem& p, const Shared& s)
      : sh(s), D(p.D), Dp32(round_up(p.D, 32)), Dp16(round_up(p.D, 16)) {
    Qb = bq.get<uint16_t>(size_t(kBq * Dp32));
    Ql = kSplit ? bql.get<uint16_t>(size_t(kBq * Dp32)) : nullptr;
    Pl = bpl.get<uint16_t>(size_t(kBq * kBk));
    S = bs.get<float>(size_t(kBq * kBk));
    P = bp.get<uint16_t>(size_t(kBq * kBk));
    O = bo.get<float>(size_t(kBq * Dp16));
    tmp = btmp.get<float>(size_t(2 * Dp16));
    tmp2 = tmp + Dp16;
  }
  // Rows per QK/softmax/PV strip: the whole q-block. 32-row strips (S of a strip in L1) were
  // slower: qk 60->68, softmax 74->79, pv 61->89 ms thread-CPU (dev/03_amx_strips.txt).
#ifndef SA_AMX_OVERLAP
#define SA_AMX_OVERLAP 1
#endif
  static constexpr int kStrip = (SA_AMX_OVERLAP && !kSplit) ? SA_AMX_STRIP : kBq;
  // Software-pipelined QK / softmax / PV over 32-row strips (fwd_driver.h), softmax rows
  // interleaved with tile work: SA_AMX_FINE (default) one row per 8 TDPs, else two rows per
  // 16 TDPs. +10% over no overlap (dev/06_amx_overlap.txt).
  static constexpr bool kOverlap = SA_AMX_OVERLAP && !kSplit;
#ifndef SA_AMX_FINE
#define SA_AMX_FINE 1
#endif
  static constexpr int kRowsPerStep = SA_AMX_FINE ? 1 : 2;
  RowMeta* meta() { return meta_; }
  float* mvec() { return m_; }
  float* lvec() { return l_; }
  uint8_t* clsvec() { return cls_; }
  int* kendvec() { return kend_; }
  uint32_t* wordbuf() { return words_; }
  float* tmprow() { return tmp; }
  float* tmprow2() { return tmp2; }
  float* orow(int r) { return O + r * Dp16; }
  float* srow(int r) { return S + r * kBk; }
  int nbad_v() const { return nbad_; }
  const int* bad_v() const { return bad_; }
  float p_at(int r, int jj) const { return bf16_to_f(P[r * kBk + jj]) + bf16_to_f(Pl[r * kBk + jj]); }
  static int64_t opos(int64_t d) { return d; }

  static void store_row(void* base, DType dt, int64_t off, const float* src, int64_t D) {
    store_row_avx512(base, dt, off, src, D);
  }

  void begin_task(const Problem& p, int64_t b, int64_t, const RowMeta* rm, int R) {
    load_tile_config();
    const uint16_t* q = static_cast<const uint16_t*>(p.q.data);
    const int R32 = int(round_up(R, 32));
    for (int r = 0; r < R32; ++r) {
      uint16_t* dst = Qb + r * Dp32;
      uint16_t* dstl = kSplit ? Ql + r * Dp32 : nullptr;
      const int64_t off = r < R ? b * p.q.sb + (p.row0_q[size_t(b)] + rm[r].i) * p.q.ss + rm[r].n * p.q.sn : 0;
      for (int64_t d = 0; d < Dp32; d += 16) {
        __m256i lo = _mm256_setzero_si256();
        const __m256i hi = r < R ? load_bf16x16<kSplit>(q + off + d, lanes(D - d), &lo) : _mm256_setzero_si256();
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + d), hi);
        if (kSplit) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dstl + d), lo);
      }
    }
    std::memset(O, 0, size_t(R32 * Dp16) * sizeof(float));
  }
  void end_task() { _tile_release(); }

  void load_kv(const Problem& p, int64_t b, int64_t g, int64_t j0, int jn) {
    nbad_ = 0;
    const uint8_t* vb;
    if (sh.local) {  // pack this block now: K [kBk/16][Dp32/2][16], V [kBk/32][Dp16/16][16][16] words
      const int64_t kw = kBk / 2 * Dp32, vw = kBk / 2 * Dp16;
      uint32_t *k = blk.get<uint32_t>(size_t(kw)), *v = blv.get<uint32_t>(size_t(vw));
      uint32_t *kl = kSplit ? blkl.get<uint32_t>(size_t(kw)) : nullptr, *vl = kSplit ? blvl.get<uint32_t>(size_t(vw)) : nullptr;
      sh.pack(p, b, g, j0, round_up(jn, 32), k, v, kl, vl, lbad_);
      kcur = k, vcur = v, kcurl = kl, vcurl = vl;
      vb = lbad_;
    } else {
      const int64_t bg = b * p.N2 + g, kat = sh.koff[size_t(bg)] + (j0 / 16) * (Dp32 / 2) * 16,
                    vat = sh.voff[size_t(bg)] + (j0 / 32) * (Dp16 / 16) * 256;
      kcur = sh.kp + kat;
      vcur = sh.vp + vat;
      if (kSplit) {
        kcurl = sh.kpl + kat;
        vcurl = sh.vpl + vat;
      }
      vb = sh.vbad.data() + sh.joff[size_t(bg)] + j0;
    }
    for (int jj = 0; jj < jn; ++jj)
      if (vb[jj]) bad_[nbad_++] = jj;
  }

  // Keys of rows [r, r + n) that can be kept in this block, rounded up to 32 (kend_ is set by
  // the driver; rows outside [rlo, rhi) have P = 0 and count as 0). Causal diagonal blocks
  // then compute about half of their tiles.
  int key_limit(int r, int n, int rlo, int rhi, int jn32) const {
    int m = 0;
    for (int i = std::max(r, rlo); i < std::min(r + n, rhi); ++i) m = std::max(m, kend_[i]);
    return std::min(jn32, int(round_up(m, 32)));
  }

  // fp16 split: 16 rows x 32 keys per C pair; S = Qh Kh + Qh Kl + Ql Kh + Ql Kl: every product
  // of the fp16 inputs is exact, so S carries only fp32 accumulation error (dropping Ql Kl,
  // ~2^-18 |q||k| per term, moved softmax_sum by up to 5.5e-5 relative: docs/reliability.md F6).
  void qk_split(int r0s, int r1s, int jn32, int rlo, int rhi) {
    const int64_t qs = Dp32 * 2, kbs = (Dp32 / 2) * 16;
    for (int r = r0s; r < r1s; r += 16) {
      const int jl = key_limit(r, 16, rlo, rhi, jn32);
      for (int j = 0; j < jl; j += 32) {
        _tile_zero(0);
        _tile_zero(1);
        for (int64_t k = 0; k < Dp32 / 32; ++k) {
          const int64_t ko = (j / 16) * kbs + 256 * k;
          _tile_loadd(2, Qb + r * Dp32 + 32 * k, qs);
          _tile_loadd(3, Ql + r * Dp32 + 32 * k, qs);
          _tile_loadd(4, kcur + ko, 64);
          _tile_loadd(5, kcur + ko + kbs, 64);
          _tile_loadd(6, kcurl + ko, 64);
          _tile_loadd(7, kcurl + ko + kbs, 64);
          _tile_dpbf16ps(0, 2, 4);
          _tile_dpbf16ps(1, 2, 5);
          _tile_dpbf16ps(0, 2, 6);
          _tile_dpbf16ps(1, 2, 7);
          _tile_dpbf16ps(0, 3, 4);
          _tile_dpbf16ps(1, 3, 5);
          _tile_dpbf16ps(0, 3, 6);
          _tile_dpbf16ps(1, 3, 7);
        }
        _tile_stored(0, S + r * kBk + j, kBk * 4);
        _tile_stored(1, S + r * kBk + j + 16, kBk * 4);
      }
    }
  }

  void qk(int rlo, int rhi, int jn) {
    const int r0s = rlo & ~15, r1s = int(round_up(rhi, 16));
    const int jn32 = int(round_up(jn, 32));
    if constexpr (kSplit) {
      qk_split(r0s, r1s, jn32, rlo, rhi);
      return;
    }
    const int64_t ks = 64, qs = Dp32 * 2;
    for (int r = r0s; r < r1s; r += 32) {
      const bool two = r + 32 <= r1s;
      const uint16_t* qa = Qb + r * Dp32;
      const int jl = key_limit(r, 32, rlo, rhi, jn32);
      for (int j = 0; j < jl; j += 32) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t k = 0; k < Dp32 / 32; ++k) {
          const uint32_t* kb = kcur + (j / 16) * (Dp32 / 2) * 16 + 256 * k;
          _tile_loadd(4, qa + 32 * k, qs);
          _tile_loadd(6, kb, ks);
          _tile_loadd(7, kb + (Dp32 / 2) * 16, ks);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
          if (two) {
            _tile_loadd(5, qa + 16 * Dp32 + 32 * k, qs);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
        }
        float* s = S + r * kBk + j;
        _tile_stored(0, s, kBk * 4);
        _tile_stored(1, s + 16, kBk * 4);
        if (two) {
          _tile_stored(2, s + 16 * kBk, kBk * 4);
          _tile_stored(3, s + 16 * kBk + 16, kBk * 4);
        }
      }
    }
  }

  // QK of one strip (<= 32 rows, inside one aligned 32-row block), calling step() after each
  // 32x32 block (16 TDPs).
  template <class F>
  void qk_overlap(int lo, int hi, int jn, F& step) {
    const int r = lo & ~15, r1s = int(round_up(hi, 16));
    const bool two = r + 32 <= r1s;
    const int jn32 = int(round_up(jn, 32));
    const int jl = key_limit(r, 32, lo, hi, jn32);
    const uint16_t* qa = Qb + r * Dp32;
    const int64_t qs = Dp32 * 2;
    for (int j = 0; j < jl; j += 32) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t k = 0; k < Dp32 / 32; ++k) {
        const uint32_t* kb = kcur + (j / 16) * (Dp32 / 2) * 16 + 256 * k;
        _tile_loadd(4, qa + 32 * k, qs);
        _tile_loadd(6, kb, 64);
        _tile_loadd(7, kb + (Dp32 / 2) * 16, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        if (two) {
          _tile_loadd(5, qa + 16 * Dp32 + 32 * k, qs);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
        if (SA_AMX_FINE && k % 2 == 1) step();
      }
      float* s = S + r * kBk + j;
      _tile_stored(0, s, kBk * 4);
      _tile_stored(1, s + 16, kBk * 4);
      if (two) {
        _tile_stored(2, s + 16 * kBk, kBk * 4);
        _tile_stored(3, s + 16 * kBk + 16, kBk * 4);
      }
      if (!SA_AMX_FINE) step();
    }
  }
  // PV of one strip, calling step() after every 16 TDPs.
  template <class F>
  void pv_overlap(int lo, int hi, int jn, F& step) {
    const int r = lo & ~15, r1s = int(round_up(hi, 16));
    for (int i = r; i < lo; ++i) zero_p(i, jn);
    for (int i = hi; i < r1s; ++i) zero_p(i, jn);
    const bool two = r + 32 <= r1s;
    const int jn32 = int(round_up(jn, 32));
    const int jl = key_limit(r, 32, lo, hi, jn32);
    const int64_t os = Dp16 * 4, ps = kBk * 2;
    for (int64_t d = 0; d < Dp16; d += 32) {
      const bool twod = d + 32 <= Dp16;
      float* o = O + r * Dp16 + d;
      _tile_loadd(0, o, os);
      if (twod) _tile_loadd(1, o + 16, os);
      if (two) _tile_loadd(2, o + 16 * Dp16, os);
      if (two && twod) _tile_loadd(3, o + 16 * Dp16 + 16, os);
      for (int k = 0; k < jl; k += 32) {
        const uint32_t* vb = vcur + (k / 32) * (Dp16 / 16) * 256 + (d / 16) * 256;
        _tile_loadd(4, P + r * kBk + k, ps);
        _tile_loadd(6, vb, 64);
        _tile_dpbf16ps(0, 4, 6);
        if (twod) {
          _tile_loadd(7, vb + 256, 64);
          _tile_dpbf16ps(1, 4, 7);
        }
        if (two) {
          _tile_loadd(5, P + (r + 16) * kBk + k, ps);
          _tile_dpbf16ps(2, 5, 6);
          if (twod) _tile_dpbf16ps(3, 5, 7);
        }
        // second pass with the lo halves of P (V is exact bf16): O += Pl V
        _tile_loadd(4, Pl + r * kBk + k, ps);
        _tile_dpbf16ps(0, 4, 6);
        if (twod) _tile_dpbf16ps(1, 4, 7);
        if (two) {
          _tile_loadd(5, Pl + (r + 16) * kBk + k, ps);
          _tile_dpbf16ps(2, 5, 6);
          if (twod) _tile_dpbf16ps(3, 5, 7);
        }
        if (SA_AMX_FINE ? k % 64 == 32 : k % 128 == 96) step();
      }
      _tile_stored(0, o, os);
      if (twod) _tile_stored(1, o + 16, os);
      if (two) _tile_stored(2, o + 16 * Dp16, os);
      if (two && twod) _tile_stored(3, o + 16 * Dp16 + 16, os);
    }
  }

  void zero_p(int r, int jn) {
    uint16_t* pr = P + r * kBk;
    const int jn32 = int(round_up(jn, 32));
    for (int j = 0; j < jn32; j += 32) _mm512_storeu_si512(pr + j, _mm512_setzero_si512());
    for (int j = 0; j < jn32; j += 32) _mm512_storeu_si512(Pl + r * kBk + j, _mm512_setzero_si512());
  }
  void zero_p_from(int r, int from, int jn) {  // exp_row already zeroed up to from rounded to 32
    const int jn32 = int(round_up(jn, 32));
    for (int j = int(round_up(from, 32)); j < jn32; j += 32) {
      _mm512_storeu_si512(P + r * kBk + j, _mm512_setzero_si512());
      _mm512_storeu_si512(Pl + r * kBk + j, _mm512_setzero_si512());
    }
  }
  float row_max(const float* s, int jn) { return row_max_avx512(s, jn); }
  float logits_row(const Problem& p, const RowMeta& rm, float* s, int64_t j0, int jn) {
    return logits_row_avx512(p, rm, s, j0, jn);
  }
  float logits_row_kept(const Problem& p, const RowMeta& rm, float* s, int64_t j0, int jn) {
    return logits_row_kept_avx512(p, rm, s, j0, jn);
  }

  // P[r][j..j+32) = p0 | p1 as Ph = the high 16 bits of p (truncation: one vpermt2w packs
  // both vectors) and Pl = bf16(p - Ph) (exact difference, rounded): P to ~2^-16 relative.
  // (Round-to-nearest Ph cost 10 port slots per 32 elements against 7 here.)
  inline void store_p_split(int r, int j, __m512 p0, __m512 p1) {
    const __m512i odd16 = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29,
                                           27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    const __m512i hi = _mm512_permutex2var_epi16(_mm512_castps_si512(p0), odd16, _mm512_castps_si512(p1));
    _mm512_storeu_si512(P + r * kBk + j, hi);
    const __m512 mask = _mm512_castsi512_ps(_mm512_set1_epi32(int32_t(0xffff0000u)));
    const __m512 l0 = _mm512_sub_ps(p0, _mm512_and_ps(p0, mask)), l1 = _mm512_sub_ps(p1, _mm512_and_ps(p1, mask));
    const __m512bh pl = _mm512_cvtne2ps_pbh(l1, l0);
    _mm512_storeu_si512(Pl + r * kBk + j, reinterpret_cast<const __m512i&>(pl));
  }

  // P (bf16) = exp2(x*c - mb), c = xs*log2e, mb = mn*log2e (one FMA); degree-4 exp2;
  // flush: 0 below kPFlush (fwd_driver.h; p - Ph of a 2^-126 p would be denormal).
  static inline __m512 exp2_sel(bool flush, __m512 t) { return flush ? exp2_flush_ps<4>(t) : exp2_ps<4>(t); }
  float exp_row(int r, int jn, float xs, float mn, bool general, bool flush, const uint32_t* w, uint32_t thr) {
    const float* s = srow(r);
    uint16_t* pr = P + r * kBk;
    const __m512 vc = _mm512_set1_ps(xs * kLog2e), vmb = _mm512_set1_ps(mn * kLog2e),
                 vmasked = _mm512_set1_ps(kMasked);
    const __m512i vthr = _mm512_set1_epi32(int32_t(thr));
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
    const int jn32 = int(round_up(jn, 32));
    if (!general && !w && jn == jn32) {  // hot path: no masks, no dropout, whole vectors
      for (int j = 0; j < jn; j += 32) {
        const __m512 p0 = exp2_sel(flush, _mm512_fmsub_ps(_mm512_loadu_ps(s + j), vc, vmb));
        const __m512 p1 = exp2_sel(flush, _mm512_fmsub_ps(_mm512_loadu_ps(s + j + 16), vc, vmb));
        sum0 = _mm512_add_ps(sum0, p0);
        sum1 = _mm512_add_ps(sum1, p1);
        store_p_split(r, j, p0, p1);
      }
      return _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
    }
    for (int j = 0; j < jn32; j += 32) {
      const __mmask16 k0 = lanes(jn - j), k1 = lanes(jn - j - 16);
      const __m512 x0 = _mm512_maskz_loadu_ps(k0, s + j), x1 = _mm512_maskz_loadu_ps(k1, s + j + 16);
      __mmask16 m0 = k0, m1 = k1;
      if (general) {
        m0 &= _mm512_cmp_ps_mask(x0, vmasked, _CMP_NEQ_UQ);
        m1 &= _mm512_cmp_ps_mask(x1, vmasked, _CMP_NEQ_UQ);
      }
      __m512 p0 = _mm512_maskz_mov_ps(m0, exp2_sel(flush, _mm512_fmsub_ps(x0, vc, vmb)));
      __m512 p1 = _mm512_maskz_mov_ps(m1, exp2_sel(flush, _mm512_fmsub_ps(x1, vc, vmb)));
      sum0 = _mm512_add_ps(sum0, p0);
      sum1 = _mm512_add_ps(sum1, p1);
      if (w) {
        p0 = _mm512_maskz_mov_ps(_mm512_cmplt_epu32_mask(_mm512_maskz_loadu_epi32(k0, w + j), vthr), p0);
        p1 = _mm512_maskz_mov_ps(_mm512_cmplt_epu32_mask(_mm512_maskz_loadu_epi32(k1, w + j + 16), vthr), p1);
      }
      store_p_split(r, j, p0, p1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
  }

  void scale_o(int r, float alpha) {
    float* o = orow(r);
    const __m512 a = _mm512_set1_ps(alpha);
    for (int64_t d = 0; d < Dp16; d += 16) _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_loadu_ps(o + d), a));
  }

  // fp16 split: O += Ph Vh + Ph Vl + Pl Vh, 16 rows x 32 columns per C pair.
  void pv_split(int r0s, int r1s, int jn32, int rlo, int rhi) {
    const int64_t os = Dp16 * 4, ps = kBk * 2;
    for (int r = r0s; r < r1s; r += 16) {
      const int jl = key_limit(r, 16, rlo, rhi, jn32);
      for (int64_t d = 0; d < Dp16; d += 32) {
        const bool twod = d + 32 <= Dp16;
        float* o = O + r * Dp16 + d;
        _tile_loadd(0, o, os);
        if (twod) _tile_loadd(1, o + 16, os);
        for (int k = 0; k < jl; k += 32) {
          const int64_t vo = (k / 32) * (Dp16 / 16) * 256 + (d / 16) * 256;
          _tile_loadd(2, P + r * kBk + k, ps);
          _tile_loadd(3, Pl + r * kBk + k, ps);
          _tile_loadd(4, vcur + vo, 64);
          _tile_loadd(6, vcurl + vo, 64);
          _tile_dpbf16ps(0, 2, 4);
          _tile_dpbf16ps(0, 2, 6);
          _tile_dpbf16ps(0, 3, 4);
          if (twod) {
            _tile_loadd(5, vcur + vo + 256, 64);
            _tile_loadd(7, vcurl + vo + 256, 64);
            _tile_dpbf16ps(1, 2, 5);
            _tile_dpbf16ps(1, 2, 7);
            _tile_dpbf16ps(1, 3, 5);
          }
        }
        _tile_stored(0, o, os);
        if (twod) _tile_stored(1, o + 16, os);
      }
    }
  }

  void pv(int rlo, int rhi, int jn) {
    const int r0s = rlo & ~15, r1s = int(round_up(rhi, 16));
    for (int r = r0s; r < rlo; ++r) zero_p(r, jn);
    for (int r = rhi; r < r1s; ++r) zero_p(r, jn);
    const int jn32 = int(round_up(jn, 32));
    if constexpr (kSplit) {
      pv_split(r0s, r1s, jn32, rlo, rhi);
      return;
    }
    const int64_t os = Dp16 * 4, vs = 64, ps = kBk * 2;
    for (int r = r0s; r < r1s; r += 32) {
      const bool two = r + 32 <= r1s;
      const int jl = key_limit(r, 32, rlo, rhi, jn32);
      for (int64_t d = 0; d < Dp16; d += 32) {
        const bool twod = d + 32 <= Dp16;
        float* o = O + r * Dp16 + d;
        _tile_loadd(0, o, os);
        if (twod) _tile_loadd(1, o + 16, os);
        if (two) _tile_loadd(2, o + 16 * Dp16, os);
        if (two && twod) _tile_loadd(3, o + 16 * Dp16 + 16, os);
        for (int k = 0; k < jl; k += 32) {
          const uint32_t* vb = vcur + (k / 32) * (Dp16 / 16) * 256 + (d / 16) * 256;
          _tile_loadd(4, P + r * kBk + k, ps);
          _tile_loadd(6, vb, vs);
          _tile_dpbf16ps(0, 4, 6);
          if (twod) {
            _tile_loadd(7, vb + 256, vs);
            _tile_dpbf16ps(1, 4, 7);
          }
          if (two) {
            _tile_loadd(5, P + (r + 16) * kBk + k, ps);
            _tile_dpbf16ps(2, 5, 6);
            if (twod) _tile_dpbf16ps(3, 5, 7);
          }
          _tile_loadd(4, Pl + r * kBk + k, ps);  // O += Pl V
          _tile_dpbf16ps(0, 4, 6);
          if (twod) _tile_dpbf16ps(1, 4, 7);
          if (two) {
            _tile_loadd(5, Pl + (r + 16) * kBk + k, ps);
            _tile_dpbf16ps(2, 5, 6);
            if (twod) _tile_dpbf16ps(3, 5, 7);
          }
        }
        _tile_stored(0, o, os);
        if (twod) _tile_stored(1, o + 16, os);
        if (two) _tile_stored(2, o + 16 * Dp16, os);
        if (two && twod) _tile_stored(3, o + 16 * Dp16 + 16, os);
      }
    }
  }

  void gen_words(uint64_t seed, uint64_t off, uint64_t q0, int64_t nq, uint32_t* w) {
    gen_words_avx512(seed, off, q0, nq, w);
  }
};

#include "cpu/fwd_decode_avx512.h"

// The decode engine with QK on the tiles (bf16, D % 32 == 0): S^T[16 keys][16 rows] = K Q^T
// with the K rows, straight from the input, as the A operand (row-major K IS the A layout:
// 16 keys x 32 d per tile, row stride = the K row stride) and Q^T packed once per task as the
// B operand (VNNI pairs of d). D/32 TDPs per 16 keys + one 16x16 in-register transpose into the
// S rows, against ~8 + 12 R vector ops per key in EngineDecode::qk (dev/08_decode_engine.txt).
// O += P V on the tiles too when tasks hold >= kMinRowsTilePv rows (else the vector PV of
// EngineDecode, O in its engine order): per block V is packed to VNNI key pairs (one vpermt2w per 16 d of
// two keys) and P is split P = Ph + Pl exactly as in EngineAmx (SPEC §11, dev/07); 2 x D/16 x
// jn/32 TDPs per block on all 16 tile rows, O (natural element order, 16 x Dv fp32) loaded and
// stored once per block per pair of 16-column tiles.
struct EngineDecodeAmx : EngineDecode<DType::bfloat16> {
  using Base = EngineDecode<DType::bfloat16>;
  Buf bqt, bks, bvp, bph, bpl;
  uint32_t* Qt;   // [Dv/32][16 d-pairs][16 rows]: (Q[r][32c+2kk], Q[r][32c+2kk+1]); rows >= R zero
  uint16_t* Ks;   // [16][Dv] zero-padded staging for a key group that ends inside the block
  uint32_t* Vp;   // [kBk/32][Dv/16][16 key pairs][16 d]: (V[2kp][d], V[2kp+1][d]) of the block
  uint16_t* Ph;   // [16][kBk] bf16 high halves of P (truncation)
  uint16_t* Pl;   // [16][kBk] bf16(P - Ph)
  alignas(64) float C[256];
  // Tile PV pays a V repack (vpermt2w) and 2 x 16-row TDPs per 32 keys whatever the row count:
  // N32/N2 2 (16 rows) 96-98 vs 80 GFLOP/cpu-s with vector PV, N32/N2 8 (4 rows) 24-26 vs 29-30
  // (dev/08_decode_engine.txt): the crossover lies between, 8 rows.
  static constexpr int kMinRowsTilePv = 8;
  bool tile_pv = false;
  // position of element d in an O row (fwd_driver.h fix_bad_v): tile PV keeps natural order
  int64_t opos(int64_t d) const { return tile_pv ? d : Base::opos(d); }
  EngineDecodeAmx(const Problem& p, const Shared& s) : Base(p, s) {
    int64_t max_sq = 0;
    for (int64_t q : p.sq) max_sq = std::max(max_sq, q);
    tile_pv = max_sq * p.G >= kMinRowsTilePv;
    Qt = bqt.get<uint32_t>(size_t(Dv / 2 * 16));
    Ks = bks.get<uint16_t>(size_t(16 * Dv));
    Vp = bvp.get<uint32_t>(size_t(kBk / 2 * Dv));
    Ph = bph.get<uint16_t>(size_t(16 * kBk));
    Pl = bpl.get<uint16_t>(size_t(16 * kBk));
  }
  void pv(int rlo, int rhi, int jn) {
    if (!tile_pv) return Base::pv(rlo, rhi, jn);
    const int jn32 = int(round_up(jn, 32));
    const uint16_t* V = static_cast<const uint16_t*>(vdat);
    const __m512i ilo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                         37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i ihi = _mm512_set_epi16(63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57, 25, 56, 24, 55, 23, 54,
                                         22, 53, 21, 52, 20, 51, 19, 50, 18, 49, 17, 48, 16);
    for (int j = 0; j < jn32; j += 2) {  // V key pairs -> VNNI tiles
      const int64_t kp = (j % 32) / 2;
      uint32_t* dst = Vp + (j / 32) * (Dv / 16) * 256 + kp * 16;
      for (int64_t d = 0; d < Dv; d += 32) {
        const __m512i a = j < jn ? _mm512_loadu_si512(V + voff + j * vss + d) : _mm512_setzero_si512();
        const __m512i b = j + 1 < jn ? _mm512_loadu_si512(V + voff + (j + 1) * vss + d) : _mm512_setzero_si512();
        _mm512_storeu_si512(dst + (d / 16) * 256, _mm512_permutex2var_epi16(a, ilo, b));
        _mm512_storeu_si512(dst + (d / 16 + 1) * 256, _mm512_permutex2var_epi16(a, ihi, b));
      }
    }
    const __m512i odd16 = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29,
                                           27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    const __m512 hmask = _mm512_castsi512_ps(_mm512_set1_epi32(int32_t(0xffff0000u)));
    for (int r = 0; r < 16; ++r) {  // P = Ph + Pl; rows outside [rlo, rhi) are 0 this block
      const bool live = r >= rlo && r < rhi;
      for (int j = 0; j < jn32; j += 32) {
        const __m512 p0 = live ? _mm512_maskz_loadu_ps(lanes(jn - j), S + r * kBk + j) : _mm512_setzero_ps();
        const __m512 p1 = live ? _mm512_maskz_loadu_ps(lanes(jn - j - 16), S + r * kBk + j + 16) : _mm512_setzero_ps();
        _mm512_storeu_si512(Ph + r * kBk + j,
                            _mm512_permutex2var_epi16(_mm512_castps_si512(p0), odd16, _mm512_castps_si512(p1)));
        const __m512bh pl = _mm512_cvtne2ps_pbh(_mm512_sub_ps(p1, _mm512_and_ps(p1, hmask)),
                                                _mm512_sub_ps(p0, _mm512_and_ps(p0, hmask)));
        _mm512_storeu_si512(Pl + r * kBk + j, reinterpret_cast<const __m512i&>(pl));
      }
    }
    const int64_t os = Dv * 4, ps = kBk * 2;
    for (int64_t t = 0; t < Dv / 16; t += 2) {  // Dv % 32 == 0: column tiles come in pairs
      _tile_loadd(0, O + 16 * t, os);
      _tile_loadd(1, O + 16 * t + 16, os);
      for (int k = 0; k < jn32; k += 32) {
        const uint32_t* vb = Vp + (k / 32) * (Dv / 16) * 256 + t * 256;
        _tile_loadd(2, Ph + k, ps);
        _tile_loadd(3, Pl + k, ps);
        _tile_loadd(4, vb, 64);
        _tile_loadd(5, vb + 256, 64);
        _tile_dpbf16ps(0, 2, 4);
        _tile_dpbf16ps(1, 2, 5);
        _tile_dpbf16ps(0, 3, 4);
        _tile_dpbf16ps(1, 3, 5);
      }
      _tile_stored(0, O + 16 * t, os);
      _tile_stored(1, O + 16 * t + 16, os);
    }
  }
  void begin_task(const Problem& p, int64_t b, int64_t g, const RowMeta* rm, int R) {
    Base::begin_task(p, b, g, rm, R);
    load_tile_config();
    const uint16_t* q = static_cast<const uint16_t*>(p.q.data);
    for (int r = 0; r < 16; ++r) {
      const uint16_t* row =
          r < R ? q + b * p.q.sb + (p.row0_q[size_t(b)] + rm[r].i) * p.q.ss + rm[r].n * p.q.sn : nullptr;
      for (int64_t kp = 0; kp < Dv / 2; ++kp)  // d pair kp = (c, kk): Qt[(c*16 + kk)*16 + r]
        Qt[kp * 16 + r] = row ? uint32_t(row[2 * kp]) | (uint32_t(row[2 * kp + 1]) << 16) : 0u;
    }
  }
  void end_task() {
    _tile_release();
    if (!tile_pv) Base::end_task();  // vector PV: O back from engine order (tile PV: natural)
  }
  void qk(int rlo, int rhi, int jn) {
    const uint16_t* K = static_cast<const uint16_t*>(kdat);
    for (int j = 0; j < jn; j += 16) {
      const int nk = std::min(16, jn - j);
      const uint16_t* a = K + koff + j * kss;
      int64_t as = kss * 2;
      if (nk < 16) {  // never read keys past the block end (the tensor may end there)
        for (int jj = 0; jj < 16; ++jj)
          for (int64_t d = 0; d < Dv; d += 32)
            _mm512_storeu_si512(Ks + jj * Dv + d, jj < nk ? _mm512_loadu_si512(a + jj * kss + d) : _mm512_setzero_si512());
        a = Ks;
        as = Dv * 2;
      }
      _tile_zero(0);
      for (int64_t c = 0; c < Dv / 32; ++c) {
        _tile_loadd(1, a + 32 * c, as);
        _tile_loadd(2, Qt + c * 256, 64);
        _tile_dpbf16ps(0, 1, 2);
      }
      _tile_stored(0, C, 64);
      __m512 x[16];
      for (int jj = 0; jj < 16; ++jj) x[jj] = _mm512_load_ps(C + 16 * jj);
      transpose16x16(x);  // x[r][jj] = S[r][j + jj]
      for (int r = rlo; r < rhi; ++r) _mm512_storeu_ps(S + r * kBk + j, x[r]);
    }
  }
};

// Whether q or k holds a +-Inf (or NaN) float16 value. The fp16 split computes
// S = Qh Kh + Qh Kl + Ql Kh + Ql Kl, and with an infinite element one of the lo halves is 0 against
// an Inf (0 * Inf = NaN where q . k is +-Inf): such problems take the fp32 AVX-512 kernel.
// One pass over q and k (O(S*D), parallel; ~1% of the three-pass AMX work).
inline bool fp16_qk_nonfinite(const Problem& p) {
  const __m512i e = _mm512_set1_epi16(int16_t(0x7c00));
  auto bad_rows = [&](const Operand& o, bool kv, int64_t b, int64_t n, int64_t rows) {
    const uint16_t* base = static_cast<const uint16_t*>(o.data);
    for (int64_t i = 0; i < rows; ++i) {
      const uint16_t* r = base + b * o.sb + ((kv ? p.row0_kv[size_t(b)] : p.row0_q[size_t(b)]) + i) * o.ss + n * o.sn;
      __mmask32 bad = 0;
      for (int64_t d = 0; d < p.D; d += 32)
        bad |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(_mm512_maskz_loadu_epi16(lanes32(p.D - d), r + d), e), e);
      if (bad) return true;
    }
    return false;
  };
  std::vector<uint8_t> hit(size_t(p.B * (p.N1 + p.N2)), 0);
  parallel_for(p.B * (p.N1 + p.N2), [&](int64_t t, int) {
    const int64_t b = t / (p.N1 + p.N2), h = t % (p.N1 + p.N2);
    if (p.sq[size_t(b)] == 0) return;
    hit[size_t(t)] = h < p.N1 ? bad_rows(p.q, false, b, h, p.sq[size_t(b)])
                              : bad_rows(p.k, true, b, h - p.N1, p.skv[size_t(b)]);
  });
  for (uint8_t x : hit)
    if (x) return true;
  return false;
}

}  // namespace SA_NS

namespace cpu {
// Rows per kv head below which AMX is not used (one 16-row tile would be mostly padding and
// the K/V pre-pack would cost as much as the attention itself).
constexpr int64_t kMinRowsPerKvHead = 32;

// Decode-shaped bf16 problems (fwd_decode_avx512.h) with at least this many rows per kv head
// take the tile engine EngineDecodeAmx: at 1 row the vector engine was as fast or faster
// (N32/32: 7.3-7.7 vs 7.8-8.3 GFLOP/cpu-s with tile QK), from 4 rows the tiles win
// (dev/08_decode_engine.txt).
constexpr int64_t kMinRowsDecodeAmx = 2;

static int64_t max_rows_per_kv_head(const Problem& p) {
  int64_t max_sq = 0;
  for (int64_t s : p.sq) max_sq = std::max(max_sq, s);
  return max_sq * p.G;
}

static bool use_amx(const Problem& p, DType want) {
  return p.dtype == want && max_rows_per_kv_head(p) >= kMinRowsPerKvHead && request_amx_permission();
}

void fwd_amx_bf16(const Problem& p) {
  if (use_amx(p, DType::bfloat16)) SA_NS::forward<SA_NS::EngineAmx<false>>(p);
  else if (p.dtype == DType::bfloat16 && p.D % 32 == 0 && SA_NS::decode_shape(p) &&
           max_rows_per_kv_head(p) >= kMinRowsDecodeAmx && request_amx_permission())
    SA_NS::forward<SA_NS::EngineDecodeAmx>(p);
  else fwd_avx512(p);
}

void fwd_amx_fp16(const Problem& p) {
  if (use_amx(p, DType::float16) && !SA_NS::fp16_qk_nonfinite(p)) SA_NS::forward<SA_NS::EngineAmx<true>>(p);
  else fwd_avx512(p);
}
}  // namespace cpu
}  // namespace speedattn
#endif  // x86-64
