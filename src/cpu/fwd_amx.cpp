// The AMX-BF16 forward kernels (bfloat16, float16, float32 inputs): fwd_driver.h + an AMX tile engine.
//
//   pack (Shared): K and V of each (b, kv head) packed once for all its tasks (lazily, per
//       256-key chunk on first use; in a head slot, recycled when all heads exceed the budget,
//       see Shared) into AMX B-operand layouts
//       Kp[slot][S2p/16][D/2][16]          uint32 = (K[j][2q], K[j][2q+1])   ("VNNI" K^T)
//       Vp[slot][S2p/32][D16/16][16][16]   uint32 = (V[2p][d], V[2p+1][d])   ("VNNI" V)
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
// float16 / float32 inputs (EngineAmx<2> / <3>): no AMX-FP16 on this CPU and fp16 accumulation
// is not acceptable, so every value is split exactly into 2 / 3 bf16 parts (load_parts: 8
// significant bits each, >= fp16's 11 / = fp32's 24), and every product is the sum of its part
// products (Terms):
//   fp16: S = Qh Kh + Qh Kl + Ql Kh + Ql Kl (exact: the fp32 statistics need it, F6);
//         O += Ph Vh + Ph Vl + Pl Vh (P = Ph + Pl to ~2^-16; Pl Vl ~2^-18, below fp16 output);
//         4 / 3 AMX passes, 2.1x the fp32 FMA kernel (dev/04_fp16_paths.txt).
//   fp32: the 6 part products of order >= 2^-16 for S and for O += P V, P split into 3 exact
//         parts, degree-5 exp2: 1.2-1.45x the FMA kernel per CPU-second (dev/13_amx_fp32.txt).
// Problems with fewer than kMinRowsPerKvHead rows per kv head use the AVX-512 kernel (AMX tiles of 16
// rows would be mostly padding, and the pre-pack would not amortise); bf16 decode shapes (2..16
// rows per kv head, D % 32 == 0) use EngineDecodeAmx below (no pre-pack: K rows are the A operand).
//
// Tiles: kBq 256 rows x kBk 256 keys: S 272 KiB (rows padded by 64 B; bf16 / fp16: P written
// over it; fp32: + P 408 KiB) + O 144 KiB (D=128, padded) + Q 64 KiB per core (2 MiB L2).
// 256 rows per pass over K/V:
// 4x128 rows x 2 B/key-elem K+V stream is ~0.1 ms per task from L3 against ~0.27 ms of AMX
// work (machine-limits.md: Bq >= 100-128 needed when K/V come from L3).
#if defined(__x86_64__) || defined(_M_X64)  // x86-only file (the registry lists it only there)
#define SA_NS fwd_amx_ns
#include "cpu/fwd_driver.h"

#include <atomic>
#include <mutex>

#include "common/cpu_features.h"
#include "cpu/fwd_kernels.h"

namespace speedattn {
namespace SA_NS {

#include "cpu/tile/simd_avx512.h"
#include "cpu/tile/amx_parts.h"

// 16 elements of an input row (bf16 / fp16 / fp32 for kParts 1 / 2 / 3) as kParts bf16 vectors
// whose sum is the value (kParts 2, 3: split_parts, cpu/tile/amx_parts.h).
template <int kParts>
static inline void load_parts(const void* base, int64_t off, __mmask16 k, __m256i part[kParts]) {
  if constexpr (kParts == 1) {
    part[0] = _mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(base) + off);
  } else {
    split_parts<kParts>(kParts == 2 ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(base) + off))
                                    : _mm512_maskz_loadu_ps(k, static_cast<const float*>(base) + off),
                        part);
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

// kParts: bf16 parts per input element, 1 (bfloat16), 2 (float16), 3 (float32); see load_parts.
// S rows of kBk + 16 floats: see kSRow.
template <int kParts>
struct EngineAmx : EngineRowState<SA_AMX_BQ, SA_AMX_BK, 256 + 80, SA_AMX_BK + 16> {
  static constexpr int kBq = SA_AMX_BQ, kBk = SA_AMX_BK;
  static constexpr int kWords = 256 + 80;
  static constexpr int64_t kPackKeys = 256;  // keys per pre-pass work item
  // Parts of P: 2 (P = Ph + Pl to ~2^-16, below a bf16 / fp16 output's rounding, dev/07) or,
  // for fp32 outputs, 3 (exact: P = P0 + P1 + P2, truncations of the fp32 p and its residuals).
  static constexpr int kPParts = kParts == 3 ? 3 : 2;
  using T = Terms<kParts>;
  static constexpr int kNqk = int(sizeof(T::qk) / sizeof(Term)), kNpv = int(sizeof(T::pv) / sizeof(Term));

  // Memory budget of the shared K/V packs. The packs live in head slots, each holding the
  // packed K and V of one (b, kv head) for every query head and q-block that reads them:
  //   - every head fits the budget: one slot per head;
  //   - else threads + 1 slots fit (e.g. fp32 B1 N16 S4096 D128: 96 MiB for all 16 heads, 6 MiB
  //     per head): the slots are recycled. Tasks run grouped by kv head, so at most threads + 1
  //     heads are open at once; a slot whose head has no running task is reassigned (least
  //     recently used first) and repacked. Per-block packing instead of recycled slots cost
  //     ~20% there (dev/20_pack_slots.txt);
  //   - else (e.g. S2 = 131072, D 128, bf16: one head's packs are 64 MiB) no shared pack: every
  //     engine packs the K/V block it is about to use into its own kBk-key buffers, repacking
  //     per q-block (dev/14_local_pack.txt).
#ifndef SA_AMX_PREPACK_MIB
#define SA_AMX_PREPACK_MIB 48
#endif
  static constexpr int64_t kMaxPrePackBytes = int64_t(SA_AMX_PREPACK_MIB) << 20;

  // A slot's pack is filled lazily, one kPackKeys-key chunk at a time, by the first engine
  // whose block needs it (ensure_packed, from load_kv): the chunk is packed right before its
  // first use, still in L2, where a pre-pass packed every head first and the tasks read the
  // packs back from DRAM (dev/17_causal_fixed_cost.txt). Chunk states (atomic): 0 not packed,
  // 1 being packed (~30 us; engines that need it pack ahead meanwhile), 2 packed. The
  // contents do not depend on which thread packs, nor on which slot (bit-identity).
  struct Shared {
    int64_t D = 0, Dp32 = 0, Dp16 = 0;
    int64_t njs = 0, nchunk = 0;  // keys (padded) and chunks of one slot: the longest head's
    int64_t kw = 0, vw = 0;       // words of one part's K / V pack in one slot
    int nslots = 0;               // 0: no shared pack, engines pack per block (see above)
    std::vector<int64_t> skvp;    // per b: keys rounded up to 32
    struct Slot {
      int64_t bg = -1;    // the (b, kv head) packed here, -1 none
      int users = 0;      // running tasks of that head
      uint64_t used = 0;  // release tick (least recently used first)
    };
    std::mutex mu;  // guards slot_of, slots, tick
    std::vector<int> slot_of;  // per (b, g): its slot, -1 none
    std::vector<Slot> slots;
    uint64_t tick = 0;
    std::vector<uint8_t> vbad;                      // [slot][njs]: the value row has a NaN / Inf (packed as 0)
    std::unique_ptr<std::atomic<uint8_t>[]> state;  // [slot][nchunk]: 0 / 1 / 2 (see above)
    Scratch kvbuf;  // K then V packs of every slot, kept across calls (common/scratch_cache.h)
    uint32_t* kp[kParts] = {};  // part i: K packs [slot][njs/16][Dp32/2][16] words
    uint32_t* vp[kParts] = {};  //         V packs [slot][njs/32][Dp16/16][16][16] words
    explicit Shared(const Problem& p) : D(p.D), Dp32(round_up(p.D, 32)), Dp16(round_up(p.D, 16)) {
      int64_t heads = 0;
      skvp.resize(size_t(p.B));
      for (int64_t b = 0; b < p.B; ++b) {
        skvp[size_t(b)] = round_up(p.skv[size_t(b)], 32);
        if (p.sq[size_t(b)] == 0) continue;
        heads += p.N2;
        njs = std::max(njs, skvp[size_t(b)]);
      }
      kw = Dp32 / 2 * njs;
      vw = njs / 2 * Dp16;
      nchunk = ceil_div(njs, kPackKeys);
      const int64_t slot_bytes = (kw + vw) * int64_t(sizeof(uint32_t)) * kParts,
                    open = std::min<int64_t>(heads, pool_threads() + 1);
      if (slot_bytes == 0) return;
      nslots = int(heads * slot_bytes <= kMaxPrePackBytes ? heads : open * slot_bytes <= kMaxPrePackBytes ? open : 0);
      if (nslots == 0) return;
      slot_of.assign(size_t(p.B * p.N2), -1);
      slots.resize(size_t(nslots));
      vbad.assign(size_t(nslots * njs), 0);
      state.reset(new std::atomic<uint8_t>[size_t(nslots * nchunk)]);
      uint32_t* k0 = kvbuf.get<uint32_t>(size_t((kw + vw) * kParts * nslots));  // pack() writes every word
      uint32_t* v0 = k0 + kw * kParts * nslots;
      for (int i = 0; i < kParts; ++i) {
        kp[i] = k0 + i * kw * nslots;
        vp[i] = v0 + i * vw * nslots;
      }
    }
    // The slot of head bg for one task (-1: none free, pack per block), held until release.
    // A head without a slot takes the free slot released longest ago; its chunks restart
    // unpacked. With threads + 1 slots one is always free (<= threads running tasks).
    int acquire(int64_t bg) {
      std::lock_guard<std::mutex> lock(mu);
      int s = slot_of[size_t(bg)];
      if (s < 0) {
        for (int c = 0; c < nslots; ++c)
          if (slots[size_t(c)].users == 0 && (s < 0 || slots[size_t(c)].used < slots[size_t(s)].used)) s = c;
        if (s < 0) return -1;
        Slot& sl = slots[size_t(s)];
        if (sl.bg >= 0) slot_of[size_t(sl.bg)] = -1;
        sl.bg = bg;
        slot_of[size_t(bg)] = s;
        for (int64_t c = 0; c < nchunk; ++c) state[size_t(s * nchunk + c)].store(0, std::memory_order_relaxed);
      }
      ++slots[size_t(s)].users;
      return s;
    }
    void release(int s) {
      std::lock_guard<std::mutex> lock(mu);
      --slots[size_t(s)].users;
      slots[size_t(s)].used = ++tick;
    }
    // Makes sure keys [j0, j1) of (b, g), held in slot s, are packed: packs the chunks nobody
    // claimed; while another engine packs one, packs the head's next unclaimed chunks (needed
    // soon by both) before waiting for it.
    void ensure_packed(const Problem& p, int64_t b, int64_t g, int s, int64_t j0, int64_t j1) {
      const int64_t nc = ceil_div(skvp[size_t(b)], kPackKeys);
      int64_t ahead = j0 / kPackKeys + 1;
      for (int64_t c = j0 / kPackKeys; c * kPackKeys < j1; ++c) {
        const std::atomic<uint8_t>& st = state[size_t(s * nchunk + c)];
        if (st.load(std::memory_order_acquire) == 2 || try_pack(p, b, g, s, c)) continue;
        for (ahead = std::max(ahead, c + 1); ahead < nc && st.load(std::memory_order_acquire) != 2; ++ahead)
          try_pack(p, b, g, s, ahead);
        while (st.load(std::memory_order_acquire) != 2) _mm_pause();
      }
    }
    // Packs chunk c of (b, g) into slot s if nobody claimed it; returns whether this call packed it.
    bool try_pack(const Problem& p, int64_t b, int64_t g, int s, int64_t c) {
      std::atomic<uint8_t>& st = state[size_t(s * nchunk + c)];
      uint8_t expect = 0;
      if (st.load(std::memory_order_relaxed) != 0 || !st.compare_exchange_strong(expect, 1, std::memory_order_acquire))
        return false;
      const int64_t c0 = c * kPackKeys;
      pack(p, b, g, c0, std::min(kPackKeys, skvp[size_t(b)] - c0), kslot(s, c0), vslot(s, c0), kw * nslots,
           vw * nslots, vbad.data() + s * njs + c0);
      st.store(2, std::memory_order_release);
      return true;
    }
    // Part-0 K / V packs of slot s at key j (j % 32 == 0); part i is i planes further.
    uint32_t* kslot(int s, int64_t j) const { return kp[0] + s * kw + (j / 16) * (Dp32 / 2) * 16; }
    uint32_t* vslot(int s, int64_t j) const { return vp[0] + s * vw + (j / 32) * (Dp16 / 16) * 256; }
    // Packs keys [j0, j0 + nj) (j0 and nj multiples of 32; keys >= S2 as 0) of (b, kv head g):
    // part i of K to kdst + i * kplane, of V to vdst + i * vplane; bad[j - j0] = 1 where the
    // value row j has a NaN / Inf. The destinations point at the block of key j0.
    void pack(const Problem& p, int64_t b, int64_t g, int64_t j0, int64_t nj, uint32_t* kdst, uint32_t* vdst,
              int64_t kplane, int64_t vplane, uint8_t* bad) const {
      const int64_t skv = p.skv[size_t(b)];
      const int64_t kb = b * p.k.sb + p.row0_kv[size_t(b)] * p.k.ss + g * p.k.sn;
      const int64_t vb = b * p.v.sb + p.row0_kv[size_t(b)] * p.v.ss + g * p.v.sn;
      // K: 16 keys x 16 d-pairs blocks, 32-bit transpose (per part)
      for (int64_t j = j0; j < j0 + nj; j += 16) {
        for (int64_t q0 = 0; q0 < Dp32 / 2; q0 += 16) {
          __m512 r[kParts][16];
          const int64_t d0 = 2 * q0;
          for (int jj = 0; jj < 16; ++jj) {
            __m256i l[kParts], h[kParts];
            for (int i = 0; i < kParts; ++i) l[i] = h[i] = _mm256_setzero_si256();
            if (j + jj < skv) {
              const int64_t row = kb + (j + jj) * p.k.ss + d0;
              load_parts<kParts>(p.k.data, row, lanes(D - d0), l);
              load_parts<kParts>(p.k.data, row + 16, lanes(D - d0 - 16), h);
            }
            for (int i = 0; i < kParts; ++i) r[i][jj] = _mm512_castsi512_ps(join256(l[i], h[i]));
          }
          for (int i = 0; i < kParts; ++i) {
            transpose16x16(r[i]);
            uint32_t* blk = kdst + i * kplane + ((j - j0) / 16) * (Dp32 / 2) * 16;
            for (int qq = 0; qq < 16; ++qq) _mm512_storeu_ps(reinterpret_cast<float*>(blk + (q0 + qq) * 16), r[i][qq]);
          }
        }
      }
      // V: key pairs interleaved per column. Rows with a NaN / Inf are packed as 0 and
      // flagged: fwd_driver.h fix_bad_v adds them where P != 0 (P = 0 never meets an Inf).
      auto nonfinite = [&](int64_t j) {
        if (j >= skv) return false;
        __mmask16 hit = 0;
        for (int64_t d = 0; d < D; d += 16)
          hit |= _mm512_fpclass_ps_mask(load16(p.v.data, p.dtype, vb + j * p.v.ss + d, lanes(D - d)), 0x99);
        bad[j - j0] = hit != 0;
        return hit != 0;
      };
      for (int64_t j = j0; j < j0 + nj; j += 2) {
        const bool za = j >= skv || nonfinite(j), zc = j + 1 >= skv || nonfinite(j + 1);
        for (int64_t d = 0; d < Dp16; d += 16) {
          const __mmask16 kd = lanes(D - d);
          __m256i a[kParts], c[kParts];
          for (int i = 0; i < kParts; ++i) a[i] = c[i] = _mm256_setzero_si256();
          if (!za) load_parts<kParts>(p.v.data, vb + j * p.v.ss + d, kd, a);
          if (!zc) load_parts<kParts>(p.v.data, vb + (j + 1) * p.v.ss + d, kd, c);
          const int64_t jp = (j - j0) / 2, at = (jp / 16) * (Dp16 / 16) * 256 + (d / 16) * 256 + (jp % 16) * 16;
          for (int i = 0; i < kParts; ++i)
            _mm512_storeu_si512(vdst + i * vplane + at, _mm512_or_si512(_mm512_cvtepu16_epi32(a[i]),
                                                            _mm512_slli_epi32(_mm512_cvtepu16_epi32(c[i]), 16)));
        }
      }
    }
  };

  Shared& sh;
  int64_t D, Dp32, Dp16;
  Buf bq, bp, blk, blv;  // blk, blv: the block's K/V parts (when the task has no head slot)
  uint16_t* Qb;  // [kParts][kBq][Dp32] bf16 parts of Q
  uint16_t* P;   // kPParts 3: [3][kBq][kPRow] bf16 parts of P; kPParts 2: none, P is written over S
  const uint32_t* kcur[kParts] = {};  // K / V packs of each part at the block's first key
  const uint32_t* vcur[kParts] = {};
  uint8_t lbad_[kBk];  // the block's value-row flags (no slot)
  int slot_ = -1;      // the task's head slot in sh, -1: blocks packed into blk / blv

  EngineAmx(const Problem& p, Shared& s)
      : EngineRowState(o_stride(p.D)), sh(s), D(p.D), Dp32(round_up(p.D, 32)), Dp16(round_up(p.D, 16)) {
    Qb = bq.get<uint16_t>(size_t(kParts * kBq * Dp32));
    if (!kPInS) P = bp.get<uint16_t>(size_t(kPParts * kBq * kPRow));
  }
  uint16_t* qpart(int i) const { return Qb + i * kBq * Dp32; }
  // Row strides of S and O: padded by one cache line where a power-of-two stride would put the
  // 16 rows of a tile into a few L1 sets (S rows of 1 KiB: 4 sets; O rows of 512 B: 8 sets), which
  // every QK C-tile store, P.V A-tile load (P over S) and O-tile load / store hit. Padded, a tile
  // spans 16 sets: the tile work alone runs ~4-5% faster, the whole kernel 0-1.5%
  // (dev/21_amx_tile_loop.txt).
  static constexpr int64_t kSRow = kBk + 16;
  static int64_t o_stride(int64_t d) {
    const int64_t dp = round_up(d, 16);
    return dp % 128 == 0 ? dp + 16 : dp;
  }
  // P in place over S (kPParts 2): the 128 B of S[r][j, j + 32) take Ph[r][j, j + 32) then
  // Pl[r][j, j + 32) (exp_row reads a 32-key chunk before it writes it), so a strip's S and P
  // share one 32 KiB footprint; A tiles of part i: 16 rows x 64 B at the S row stride. The
  // three fp32 parts (192 B per 32 keys) keep a separate [3][kBq][kPRow] buffer.
  static constexpr bool kPInS = kPParts == 2;
  static constexpr int64_t kPRow = kBk + 32;  // bf16 per row of the separate P parts (padded as S)
  static constexpr int64_t kPRowBytes = kPInS ? kSRow * 4 : kPRow * 2;
  uint16_t* ppart(int i, int r, int j) const {  // part i of P[r][j, j + 32), j % 32 == 0
    return kPInS ? reinterpret_cast<uint16_t*>(S + r * kSRow + j) + 32 * i : P + (i * kBq + r) * kPRow + j;
  }
  // Rows per QK/softmax/PV strip: the whole q-block. 32-row strips (S of a strip in L1) were
  // slower: qk 60->68, softmax 74->79, pv 61->89 ms thread-CPU (dev/03_amx_strips.txt).
#ifndef SA_AMX_OVERLAP
#define SA_AMX_OVERLAP 1
#endif
  static constexpr int kStrip = SA_AMX_OVERLAP ? SA_AMX_STRIP : kBq;
  // Software-pipelined QK / softmax / PV over 32-row strips (fwd_driver.h), softmax rows
  // interleaved with tile work: SA_AMX_FINE (default) one row per 8 TDPs, else two rows per
  // 16 TDPs. +10% over no overlap for bf16 (dev/06_amx_overlap.txt), +2-3% for the fp16 / fp32
  // splits, whose tile work dominates (dev/13_amx_fp32.txt).
  static constexpr bool kOverlap = SA_AMX_OVERLAP;
#ifndef SA_AMX_FINE
#define SA_AMX_FINE 1
#endif
  static constexpr int kRowsPerStep = SA_AMX_FINE ? 1 : 2;
  // SA_AMX_FINE: one softmax row per kQkStep passes (4 TDPs each) of QK and per kPvStep of PV.
  // bf16 3 / 2 (12 / 8 TDPs: fewer rows during QK, all the rest early in PV) against 2 / 4:
  // +2-3% per CPU-second (dev/16); fp16 / fp32 (longer tile work per row) keep 2 / 4.
  static constexpr int kQkStep = kParts == 1 ? 3 : 2, kPvStep = kParts == 1 ? 2 : 4;
  float p_at(int r, int jj) const {  // exact: the parts' sum is the fp32 p (kPParts 2: to ~2^-16)
    float s = 0.f;
    for (int i = 0; i < kPParts; ++i) s += bf16_to_f(ppart(i, r, jj & ~31)[jj & 31]);
    return s;
  }
  static int64_t opos(int64_t d) { return d; }

  static void store_row(void* base, DType dt, int64_t off, const float* src, int64_t D) {
    store_row_avx512(base, dt, off, src, D);
  }

  void begin_task(const Problem& p, int64_t b, int64_t g, const RowMeta* rm, int R) {
    slot_ = sh.nslots ? sh.acquire(b * p.N2 + g) : -1;
    load_tile_config();
    const int R32 = int(round_up(R, 32));
    for (int r = 0; r < R32; ++r) {
      const int64_t off = r < R ? b * p.q.sb + (p.row0_q[size_t(b)] + rm[r].i) * p.q.ss + rm[r].n * p.q.sn : 0;
      for (int64_t d = 0; d < Dp32; d += 16) {
        __m256i x[kParts];
        for (int i = 0; i < kParts; ++i) x[i] = _mm256_setzero_si256();
        if (r < R) load_parts<kParts>(p.q.data, off + d, lanes(D - d), x);
        for (int i = 0; i < kParts; ++i) _mm256_storeu_si256(reinterpret_cast<__m256i*>(qpart(i) + r * Dp32 + d), x[i]);
      }
    }
    std::memset(O, 0, size_t(R32 * ostride) * sizeof(float));
  }
  void end_task() {
    _tile_release();
    if (slot_ >= 0) sh.release(slot_);
    slot_ = -1;
  }

  void load_kv(const Problem& p, int64_t b, int64_t g, int64_t j0, int jn) {
    nbad_ = 0;
    const uint8_t* vb;
    if (slot_ < 0) {  // pack this block now: K [kBk/16][Dp32/2][16], V [kBk/32][Dp16/16][16][16] words per part
      const int64_t kw = kBk / 2 * Dp32, vw = kBk / 2 * Dp16;
      uint32_t *k = blk.get<uint32_t>(size_t(kw * kParts)), *v = blv.get<uint32_t>(size_t(vw * kParts));
      sh.pack(p, b, g, j0, round_up(jn, 32), k, v, kw, vw, lbad_);
      for (int i = 0; i < kParts; ++i) {
        kcur[i] = k + i * kw;
        vcur[i] = v + i * vw;
      }
      vb = lbad_;
    } else {
      sh.ensure_packed(p, b, g, slot_, j0, j0 + jn);
      for (int i = 0; i < kParts; ++i) {
        kcur[i] = sh.kslot(slot_, j0) + i * sh.kw * sh.nslots;
        vcur[i] = sh.vslot(slot_, j0) + i * sh.vw * sh.nslots;
      }
      vb = sh.vbad.data() + slot_ * sh.njs + j0;
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

  // S[r, r + 16 or 32)[0, jl) = sum of the T::qk passes: 2x2 blocking of 16x16 fp32 C tiles
  // (rows x keys 32 x 32; 16 x 32 when !two), TDPBF16PS over D, per 32 d the terms in order;
  // step() every kQkStep terms (SA_AMX_FINE) or per 32 keys.
  template <class F>
  void qk_rows(int r, bool two, int jl, F& step) {
    const int64_t qs = Dp32 * 2, kbs = (Dp32 / 2) * 16;
    int n = 0;
    for (int j = 0; j < jl; j += 32) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t k = 0; k < Dp32 / 32; ++k) {
#pragma GCC unroll 8
        for (int t = 0; t < kNqk; ++t) {
          const Term tm = T::qk[t];
          const uint16_t* qa = qpart(tm.a) + r * Dp32 + 32 * k;
          const uint32_t* kb = kcur[tm.b] + (j / 16) * kbs + 256 * k;
          pass2x2(t == 0 || tm.a != T::qk[t - 1].a, t == 0 || tm.b != T::qk[t - 1].b, two, true,
                  [&](int i) {
                    if (i) _tile_loadd(5, qa + 16 * Dp32, qs);
                    else _tile_loadd(4, qa, qs);
                  },
                  [&](int i) {
                    if (i) _tile_loadd(7, kb + kbs, 64);
                    else _tile_loadd(6, kb, 64);
                  });
          if (SA_AMX_FINE && ++n % kQkStep == 0) step();
        }
      }
      float* s = srow(r) + j;
      _tile_stored(0, s, kSRow * 4);
      _tile_stored(1, s + 16, kSRow * 4);
      if (two) {
        _tile_stored(2, s + 16 * kSRow, kSRow * 4);
        _tile_stored(3, s + 16 * kSRow + 16, kSRow * 4);
      }
      if (!SA_AMX_FINE) step();
    }
  }
  // O[r, r + 16 or 32)[0, Dp16) += sum of the T::pv passes over keys [0, jl): 2x2 blocking
  // (rows x d 32 x 32), O tiles loaded and stored once per 32 d; step() every kPvStep terms
  // (SA_AMX_FINE) or 8.
  template <class F>
  void pv_rows(int r, bool two, int jl, F& step) {
    const int64_t os = ostride * 4, ps = kPRowBytes;
    int n = 0;
    for (int64_t d = 0; d < Dp16; d += 32) {
      const bool twod = d + 32 <= Dp16;
      float* o = orow(r) + d;
      _tile_loadd(0, o, os);
      if (twod) _tile_loadd(1, o + 16, os);
      if (two) _tile_loadd(2, o + 16 * ostride, os);
      if (two && twod) _tile_loadd(3, o + 16 * ostride + 16, os);
      for (int k = 0; k < jl; k += 32) {
#pragma GCC unroll 8
        for (int t = 0; t < kNpv; ++t) {
          const Term tm = T::pv[t];
          const uint16_t* pa = ppart(tm.a, r, k);
          const uint32_t* vb = vcur[tm.b] + (k / 32) * (Dp16 / 16) * 256 + (d / 16) * 256;
          pass2x2(t == 0 || tm.a != T::pv[t - 1].a, t == 0 || tm.b != T::pv[t - 1].b, two, twod,
                  [&](int i) {
                    if (i) _tile_loadd(5, pa + 16 * ps / 2, ps);
                    else _tile_loadd(4, pa, ps);
                  },
                  [&](int i) {
                    if (i) _tile_loadd(7, vb + 256, 64);
                    else _tile_loadd(6, vb, 64);
                  });
          if (++n % (SA_AMX_FINE ? kPvStep : 8) == 0) step();
        }
      }
      _tile_stored(0, o, os);
      if (twod) _tile_stored(1, o + 16, os);
      if (two) _tile_stored(2, o + 16 * ostride, os);
      if (two && twod) _tile_stored(3, o + 16 * ostride + 16, os);
    }
  }

  void qk(int rlo, int rhi, int jn) {
    const int r0s = rlo & ~15, r1s = int(round_up(rhi, 16)), jn32 = int(round_up(jn, 32));
    auto none = [] {};
    for (int r = r0s; r < r1s; r += 32) qk_rows(r, r + 32 <= r1s, key_limit(r, 32, rlo, rhi, jn32), none);
  }
  void pv(int rlo, int rhi, int jn) {
    const int r0s = rlo & ~15, r1s = int(round_up(rhi, 16)), jn32 = int(round_up(jn, 32));
    for (int r = r0s; r < rlo; ++r) zero_p(r, jn);
    for (int r = rhi; r < r1s; ++r) zero_p(r, jn);
    auto none = [] {};
    for (int r = r0s; r < r1s; r += 32) pv_rows(r, r + 32 <= r1s, key_limit(r, 32, rlo, rhi, jn32), none);
  }
  // QK / PV of one strip (<= 32 rows, inside one aligned 32-row block) with the softmax steps
  // of the previous strip interleaved (fwd_driver.h kOverlap).
  template <class F>
  void qk_overlap(int lo, int hi, int jn, F& step) {
    const int r = lo & ~15, r1s = int(round_up(hi, 16));
    qk_rows(r, r + 32 <= r1s, key_limit(r, 32, lo, hi, int(round_up(jn, 32))), step);
  }
  template <class F>
  void pv_overlap(int lo, int hi, int jn, F& step) {
    const int r = lo & ~15, r1s = int(round_up(hi, 16));
    for (int i = r; i < lo; ++i) zero_p(i, jn);
    for (int i = hi; i < r1s; ++i) zero_p(i, jn);
    pv_rows(r, r + 32 <= r1s, key_limit(r, 32, lo, hi, int(round_up(jn, 32))), step);
  }

  void zero_p(int r, int jn) { zero_p_from(r, 0, jn); }
  void zero_p_from(int r, int from, int jn) {  // exp_row already zeroed up to from rounded to 32
    const int jn32 = int(round_up(jn, 32));
    for (int i = 0; i < kPParts; ++i)
      for (int j = int(round_up(from, 32)); j < jn32; j += 32)
        _mm512_storeu_si512(ppart(i, r, j), _mm512_setzero_si512());
  }
  float row_max(const float* s, int jn) { return row_max_avx512(s, jn); }
  float logits_row(const Problem& p, const RowMeta& rm, float* s, int64_t j0, int jn) {
    return logits_row_avx512(p, rm, s, j0, jn);
  }
  float logits_row_kept(const Problem& p, const RowMeta& rm, float* s, int64_t j0, int jn) {
    return logits_row_kept_avx512(p, rm, s, j0, jn);
  }

  // P[r][j..j+32) = p0 | p1 as kPParts bf16 parts: part i = the high 16 bits (truncation; one
  // vpermt2w packs both vectors) of the residual p - part 0 - ... - part i-1 (exact fp32
  // differences). The last part: kPParts 2, bf16(p - Ph) rounded (P to ~2^-16 relative; a
  // truncated Pl would be 2^-14 and biased); kPParts 3, truncation is exact (8 + 8 + 8 bits).
  // (Round-to-nearest Ph cost 10 port slots per 32 elements against 7 here.)
  inline void store_p_split(int r, int j, __m512 p0, __m512 p1) {
    const __m512i odd16 = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29,
                                           27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    const __m512 mask = _mm512_castsi512_ps(_mm512_set1_epi32(int32_t(0xffff0000u)));
    for (int i = 0; i < kPParts; ++i) {
      uint16_t* dst = ppart(i, r, j);
      if (i == 1 && kPParts == 2) {
        const __m512bh pl = _mm512_cvtne2ps_pbh(p1, p0);
        _mm512_storeu_si512(dst, reinterpret_cast<const __m512i&>(pl));
        break;
      }
      _mm512_storeu_si512(dst, _mm512_permutex2var_epi16(_mm512_castps_si512(p0), odd16, _mm512_castps_si512(p1)));
      p0 = _mm512_sub_ps(p0, _mm512_and_ps(p0, mask));
      p1 = _mm512_sub_ps(p1, _mm512_and_ps(p1, mask));
    }
  }

  // P = exp2(t) of the logits x, with t = (x*xs - mn) * log2e. bf16 / fp16 (P to 2^-16): one FMA,
  // x * (xs log2e) - mn log2e, and degree-4 exp2. fp32: degree 5 and the unfolded argument of
  // the fp32 AVX-512 engine, whose error is relative to the distance from the max (the folded
  // one errs by ~2^-24 |x xs|, 2e-6 relative in P at |logit| 30);
  // flush: 0 below kPFlush (fwd_driver.h; p - Ph of a 2^-126 p would be denormal).
  static constexpr int kExpDeg = kParts == 3 ? 5 : 4;
  static inline __m512 exp2_sel(bool flush, __m512 t) {
    return flush ? exp2_flush_ps<kExpDeg>(t) : exp2_ps<kExpDeg>(t);
  }
  float exp_row(int r, int jn, float xs, float mn, bool general, bool flush, const uint32_t* w, uint32_t thr) {
    const float* s = srow(r);
    const __m512 vc = _mm512_set1_ps(kParts == 3 ? xs : xs * kLog2e), vmb = _mm512_set1_ps(kParts == 3 ? mn : mn * kLog2e),
                 vmasked = _mm512_set1_ps(kMasked);
    auto arg = [&](__m512 x) {
      const __m512 t = _mm512_fmsub_ps(x, vc, vmb);
      return kParts == 3 ? _mm512_mul_ps(t, _mm512_set1_ps(kLog2e)) : t;
    };
    const __m512i vthr = _mm512_set1_epi32(int32_t(thr));
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
    const int jn32 = int(round_up(jn, 32));
    if (!general && !w && jn == jn32) {  // hot path: no masks, no dropout, whole vectors
      for (int j = 0; j < jn; j += 32) {
        const __m512 p0 = exp2_sel(flush, arg(_mm512_loadu_ps(s + j)));
        const __m512 p1 = exp2_sel(flush, arg(_mm512_loadu_ps(s + j + 16)));
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
      __m512 p0 = _mm512_maskz_mov_ps(m0, exp2_sel(flush, arg(x0)));
      __m512 p1 = _mm512_maskz_mov_ps(m1, exp2_sel(flush, arg(x1)));
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

// Whether q or k holds a +-Inf or NaN (float16 / float32). The split engines compute S as a sum
// of part products, and with an infinite element the other parts are 0 against an Inf
// (0 * Inf = NaN where q . k is +-Inf): such problems take the fp32 AVX-512 kernel.
// One pass over q and k (O(S*D), parallel; ~1% of the split AMX work).
inline bool qk_nonfinite(const Problem& p) {
  auto bad_rows = [&](const Operand& o, bool kv, int64_t b, int64_t n, int64_t rows) {
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t r = b * o.sb + ((kv ? p.row0_kv[size_t(b)] : p.row0_q[size_t(b)]) + i) * o.ss + n * o.sn;
      __mmask16 bad = 0;
      for (int64_t d = 0; d < p.D; d += 16)
        bad |= _mm512_fpclass_ps_mask(load16(o.data, p.dtype, r + d, lanes(p.D - d)), 0x99);
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
  if (use_amx(p, DType::bfloat16)) SA_NS::forward<SA_NS::EngineAmx<1>>(p);
  else if (p.dtype == DType::bfloat16 && p.D % 32 == 0 && SA_NS::decode_shape(p) &&
           max_rows_per_kv_head(p) >= kMinRowsDecodeAmx && request_amx_permission())
    SA_NS::forward<SA_NS::EngineDecodeAmx>(p);
  else fwd_avx512(p);
}

void fwd_amx_fp16(const Problem& p) {
  if (use_amx(p, DType::float16) && !SA_NS::qk_nonfinite(p)) SA_NS::forward<SA_NS::EngineAmx<2>>(p);
  else fwd_avx512(p);
}

void fwd_amx_fp32(const Problem& p) {
  if (use_amx(p, DType::float32) && !SA_NS::qk_nonfinite(p)) SA_NS::forward<SA_NS::EngineAmx<3>>(p);
  else fwd_avx512(p);
}
}  // namespace cpu
}  // namespace speedattn
#endif  // x86-64
