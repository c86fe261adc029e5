// The flash-tiled forward driver shared by every CPU forward kernel (scalar, AVX2, AVX-512,
// AMX). Included once per ISA translation unit AFTER defining SA_NS to a namespace name
// unique to that file (e.g. `#define SA_NS fwd_avx512_ns`): every function here then lives
// in that namespace, so copies compiled with different -m flags never meet at link time.
//
// Shapes and guarantees:
//   * Work is split into tasks (b, kv head g, a group of nh query heads of g, a q-block of
//     ni rows, a kv split). A task owns R = nh * ni <= E::kBq "virtual rows" r -> (n, i).
//   * Per task, keys are streamed in blocks of <= E::kBk; per-thread scratch only:
//     S (R x kBk fp32), P, O (R x D fp32), Q/K/V tiles. Memory is O(S), never S1 x S2.
//   * Online softmax over KEPT positions only: m = max of kept logits (natural units,
//     exactly the fp32 logit), l = sum exp(x - m) over kept positions, O = sum p * keep * V.
//     Masked positions contribute exactly 0. A row with no kept position at all is handled
//     at the end: uniform (max -FLT_MAX, sum S2, out = mean of keep/keep_prob * V over all
//     S2 keys) or invalid-line (0, -FLT_MAX, +FLT_MAX), SPEC §4.
//   * Tiles where every row is masked (band/causal/prefix computed analytically, explicit
//     mask bytes scanned) are skipped; the element mask is only evaluated on rows that are
//     partly masked in the tile ("general" rows); pse / ALiBi is added in the max pass.
//   * Dropout keep bits: Philox4x32-10 of SPEC §7 evaluated in-kernel (bit-identical to
//     semantics.h dropout_keep).
//   * Bit-identical for any thread count: a task's result depends only on its index; split-KV
//     partials are merged in split order; the split count depends only on the problem.
//
// Engine concept E (see fwd_engine_portable.h for the reference implementation):
//   kBq, kBk, struct Shared{Shared(const Problem&)}, E(const Problem&, const Shared&),
//   load_q, load_kv, qk, srow, row_max, logits_row, exp_row, zero_p, scale_o, pv, orow, gen_words.
#pragma once

#ifndef SA_NS
#error "define SA_NS (a namespace unique to the including ISA file) before including fwd_driver.h"
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "common/scratch_cache.h"
#include "common/thread_pool.h"
#include "core/problem.h"
#include "cpu/tile/exp2_poly.h"

namespace speedattn {
namespace SA_NS {

constexpr float kMasked = -3.4028234663852886e38f;  // -FLT_MAX (SPEC §1 step 3)
constexpr float kBigSum = 3.4028234663852886e38f;   // +FLT_MAX (invalid-line sum)
constexpr float kLog2e = 1.4426950408889634f;
// Denormal flush of the online softmax (dev/11_pse_fast_path.txt): on rows with pse / ALiBi /
// masks (exp_row's `flush`), P = 2^t with t < kPFlush (log2 units below the running max) is
// stored as exactly 0 (plain rows: clamped at 2^-126); on every row an O / l rescale factor below
// 2^kPFlush is 0. Without it, far ALiBi keys (t down at the 2^-126 clamp) fed P * V products and
// O accumulators in the denormal range: microcode assists made fp32 ALiBi 3.7x slower. The terms
// dropped are < 2^-64 of the row max (l >= 1), < 2^-33 relative for any S2 < 2^31.
constexpr float kPFlush = -64.0f;
constexpr float kAlphaFlush = -44.3614195558365f;  // kPFlush * ln 2 (natural units)

// Split-KV: when a problem has fewer than kSplitMinTasks tasks, each task's key range is
// split so both cores (and more) get work; a split covers at least kSplitMinKeys keys.
// Provenance: ggml splits at S2 >= 512, ORT when batch*heads < 2-5x threads; 16 tasks give
// <= 6% imbalance on 2..8 threads. Depends only on the problem (bit-identity).
constexpr int64_t kSplitMinTasks = 16;
constexpr int64_t kSplitMinKeys = 512;
// Key-block alignment (AMX VNNI packs keys in pairs; 32 keeps tile rows whole).
constexpr int64_t kKeyAlign = 32;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// ---- aligned scratch ------------------------------------------------------------------
// Buffers of kHugeBytes and more (the K/V packs of a call: tens of MiB, mapped afresh by every
// call) are 2 MiB-aligned and advised to use transparent huge pages: with 4 KiB pages the
// page faults of a 32 MiB pack cost more than the packing itself (dev/15_pack_pages.txt).
// get(n, false) skips the zeroing for buffers the caller overwrites completely.
struct Buf {
  static constexpr size_t kHugeBytes = size_t(2) << 20;
  void* p = nullptr;
  size_t n = 0;
  Buf() = default;
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { std::free(p); }
  template <class T>
  T* get(size_t count, bool zero = true) {
    size_t bytes = size_t(round_up(int64_t(count * sizeof(T)) + 64, 64));
    if (bytes > n) {
      std::free(p);
      const bool huge = bytes >= kHugeBytes;
      if (huge) bytes = size_t(round_up(int64_t(bytes), int64_t(kHugeBytes)));
      p = std::aligned_alloc(huge ? kHugeBytes : 64, bytes);
      if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
      if (huge) madvise(p, bytes, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
      if (zero) std::memset(p, 0, bytes);
      n = bytes;
    }
    return static_cast<T*>(p);
  }
};

// ---- local copies of the scalar semantics (core/semantics.h, common/half.h, philox.h) ----
// Duplicated inside SA_NS on purpose: the originals are inline functions that, compiled in an
// ISA file, could be merged with a baseline copy by the linker. Tests check agreement.
inline uint32_t fbits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bitsf(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float bf16_to_f(uint16_t h) { return bitsf(uint32_t(h) << 16); }
inline uint16_t f_to_bf16(float f) {
  uint32_t u = fbits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
inline float fp16_to_f(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t ex = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (ex == 0x1f) return bitsf(sign | 0x7f800000u | (man << 13));
  if (ex != 0) return bitsf(sign | ((ex + 112u) << 23) | (man << 13));
  const float mag = float(man) * bitsf(0x33800000u);
  return bitsf(sign | fbits(mag));
}
inline uint16_t f_to_fp16(float f) {
  const uint32_t u = fbits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);
  if (a < 0x38800000u) {
    const float mag = bitsf(a) + 0.5f;
    return uint16_t(sign | uint16_t(fbits(mag) - 0x3f000000u));
  }
  uint32_t r = a - 0x38000000u;
  r += 0xfffu + ((r >> 13) & 1u);
  return uint16_t(sign | uint16_t(r >> 13));
}
inline float load_elem(const void* base, DType dt, int64_t idx) {
  switch (dt) {
    case DType::float16: return fp16_to_f(static_cast<const uint16_t*>(base)[idx]);
    case DType::bfloat16: return bf16_to_f(static_cast<const uint16_t*>(base)[idx]);
    default: return static_cast<const float*>(base)[idx];
  }
}
inline void store_elem(void* base, DType dt, int64_t idx, float x) {
  switch (dt) {
    case DType::float16: static_cast<uint16_t*>(base)[idx] = f_to_fp16(x); break;
    case DType::bfloat16: static_cast<uint16_t*>(base)[idx] = f_to_bf16(x); break;
    default: static_cast<float*>(base)[idx] = x; break;
  }
}

// Philox4x32-10 (identical to common/philox.h).
inline void philox10(uint32_t c0, uint32_t c1, uint32_t k0, uint32_t k1, uint32_t out[4]) {
  uint32_t c2 = 0, c3 = 0;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(0xD2511F53u) * c0;
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * c2;
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n1 = uint32_t(p1);
    const uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    const uint32_t n3 = uint32_t(p0);
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}
// Words of quads q0 .. q0+nq-1 (4 per quad) into w: the scalar generator.
inline void gen_words_scalar(uint64_t seed, uint64_t offset, uint64_t q0, int64_t nq, uint32_t* w) {
  for (int64_t q = 0; q < nq; ++q) {
    const uint64_t c = offset + q0 + uint64_t(q);
    philox10(uint32_t(c), uint32_t(c >> 32), uint32_t(seed), uint32_t(seed >> 32), w + 4 * q);
  }
}

// Per virtual row of a task: everything the element semantics need, precomputed.
struct RowMeta {
  int64_t n = 0, i = 0;         // query head, row within the sequence
  int64_t lo = 0, hi = 0, ph = 0;  // keeps j in [lo, hi) or j < ph (row_keys of semantics.h)
  const uint8_t* mrow = nullptr;   // explicit mask at (b, n, i, j=0); element j at mrow[j*msj]
  int64_t pse_base = 0;            // pse tensor element index at j = 0 (affine in j, step pse.sj)
  float slope = 0.f;               // ALiBi slope (pse_type 2/3)
  int64_t dist0 = 0;               // ALiBi: distance(j) = |j + dist0|
  uint64_t e_row = 0;              // dropout element index of (b, n, i, 0)
  int64_t first() const { return ph > 0 ? 0 : lo; }
  int64_t last_end() const { return std::max(hi, ph); }
};

inline RowMeta make_row_meta(const Problem& p, int64_t b, int64_t n, int64_t i) {
  RowMeta m;
  m.n = n;
  m.i = i;
  const SeqBand& sb = p.band[size_t(b)];
  const int64_t skv = p.skv[size_t(b)], sq = p.sq[size_t(b)];
  if (!sb.banded) {
    m.lo = 0;
    m.hi = skv;
    m.ph = 0;
  } else {
    m.lo = std::clamp<int64_t>(i + sb.lo_off, 0, skv);
    m.hi = std::clamp<int64_t>(i + sb.hi_off + 1, 0, skv);
    if (m.hi < m.lo) m.hi = m.lo;
    m.ph = std::clamp<int64_t>(sb.prefix, 0, skv);
  }
  if (p.mask.data) m.mrow = p.mask.data + b * p.mask.sb + n * p.mask.sn + i * p.mask.si;
  const PseDesc& d = p.pse;
  if (d.kind == PseKind::tensor) {
    int64_t row = i, colshift = 0;
    if (d.compressed) {
      const int64_t t = sq - 1024;
      if (i >= t) {
        row = i - t;
      } else {
        row = i % 1024;
        colshift = -i + row + (skv - 1024);
      }
    }
    m.pse_base = b * d.sb + n * d.sn + row * d.si + colshift * d.sj;
  } else if (d.kind == PseKind::slopes) {
    m.slope = static_cast<const float*>(d.data)[b * d.sb + n * d.sn];
    m.dist0 = d.kv_start - i - d.q_start;
  }
  m.e_row = uint64_t(p.drop_base[size_t(b)] + (n * sq + i) * skv);
  return m;
}

// Classification of a row within a key tile [j0, j1). band_class returns the first three;
// run_task refines kPartial to kPrefix when the kept keys are exactly [j0, j0 + kend)
// (explicit mask all-kept there): the causal / band diagonal then takes the engines' plain
// softmax pass over the first kend keys. kFull / kPrefix rows with pse / ALiBi (or scale <= 0)
// compute their logits in the max pass (logits_row_kept: no keep compares) and take the
// unmasked exp pass; only kPartial rows take the general logits (band / mask compares).
enum : uint8_t { kNone = 0, kFull = 1, kPartial = 2, kPrefix = 3 };

// Kept keys of the row inside [j0, j1) form one run starting at j0 (given band_class said
// kPartial and no explicit mask byte is set there): [lo, hi) U [0, ph) with lo <= j0 or ph >= lo.
inline bool band_prefix_run(const RowMeta& m, int64_t j0) { return m.lo <= j0 || m.ph >= m.lo; }

inline uint8_t band_class(const RowMeta& m, int64_t j0, int64_t j1) {
  if ((m.lo <= j0 && j1 <= m.hi) || j1 <= m.ph) return kFull;
  const bool band_hit = std::max(m.lo, j0) < std::min(m.hi, j1);
  if (!band_hit && m.ph <= j0) return kNone;
  return kPartial;
}

// Explicit-mask bytes of one row tile: 0 all kept (zero bytes), 2 all masked, 1 mixed.
inline int mask_scan(const uint8_t* m, int64_t sj, int64_t n) {
  bool any_zero = false, any_set = false;
  if (sj == 1) {
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
      uint64_t w;
      std::memcpy(&w, m + k, 8);
      const uint64_t zero_bytes = (w - 0x0101010101010101ull) & ~w & 0x8080808080808080ull;
      if (w) any_set = true;
      if (zero_bytes) any_zero = true;
      if (any_set && any_zero) return 1;
    }
    for (; k < n; ++k) (m[k] ? any_set : any_zero) = true;
  } else {
    for (int64_t k = 0; k < n; ++k) (m[k * sj] ? any_set : any_zero) = true;
  }
  if (any_set && any_zero) return 1;
  return any_set ? 2 : 0;
}

// The general logits of one row tile, scalar: s[0..jn) holds qk; writes x (masked: kMasked)
// and returns the max of x. Element semantics of semantics.h `logit` / `position_kept`.
inline float logits_row_scalar(const Problem& p, const RowMeta& rm, float* s, int64_t j0, int64_t jn) {
  const float scale = float(p.scale);
  const PseDesc& d = p.pse;
  float mx = kMasked;
  for (int64_t jj = 0; jj < jn; ++jj) {
    const int64_t j = j0 + jj;
    bool keep = (j >= rm.lo && j < rm.hi) || j < rm.ph;
    if (keep && rm.mrow) keep = rm.mrow[j * p.mask.sj] == 0;
    float x = kMasked;
    if (keep) {
      const float qk = s[jj];
      switch (d.kind) {
        case PseKind::none: x = scale * qk; break;
        case PseKind::tensor: {
          const float bias = load_elem(d.data, d.dtype, rm.pse_base + j * d.sj);
          x = d.pse_type == 1 ? scale * (qk + bias) : scale * qk + bias;
          break;
        }
        case PseKind::slopes: {
          float dist = std::fabs(float(j + rm.dist0));
          if (d.pse_type == 3) dist = std::sqrt(dist);
          x = scale * qk - rm.slope * dist;
          break;
        }
      }
    }
    s[jj] = x;
    mx = std::max(mx, x);
  }
  return mx;
}

// ---- per-row state of every engine -----------------------------------------------------------
// What run_task reads and writes in every engine, with its accessors: S [kBq][kSRow_ >= kBk] fp32
// logits (overwritten with P by the engines that keep P in fp32), O [kBq][ostride] fp32 unnormalised
// output, two scratch rows of ostride floats, per row m, l, the block class, kend and RowMeta,
// the block's dropout words, and the keys of the block whose value row has a NaN / Inf (zeroed
// in the engine's V, added back by fix_bad_v where P != 0: masked / dropped P never meets them).
template <int kBq_, int kBk_, int kWords_, int kSRow_ = kBk_>
struct EngineRowState {
  int64_t ostride;  // floats per O row and per scratch row
  Buf bs, bo, btmp;
  float *S, *O, *tmp, *tmp2;
  RowMeta meta_[kBq_];
  float m_[kBq_], l_[kBq_];
  uint8_t cls_[kBq_];
  int kend_[kBq_];
  alignas(64) uint32_t words_[kWords_];
  int nbad_ = 0;
  int bad_[kBk_];

  explicit EngineRowState(int64_t os) : ostride(os) {
    S = bs.get<float>(size_t(kBq_ * kSRow_));
    O = bo.get<float>(size_t(kBq_ * os));
    tmp = btmp.get<float>(size_t(2 * os));
    tmp2 = tmp + os;
  }
  RowMeta* meta() { return meta_; }
  float* mvec() { return m_; }
  float* lvec() { return l_; }
  uint8_t* clsvec() { return cls_; }
  int* kendvec() { return kend_; }
  uint32_t* wordbuf() { return words_; }
  float* tmprow() { return tmp; }
  float* tmprow2() { return tmp2; }
  float* orow(int r) { return O + r * ostride; }
  float* srow(int r) { return S + r * kSRow_; }
  int nbad_v() const { return nbad_; }
  const int* bad_v() const { return bad_; }
};

// ---- fp32 engine state ---------------------------------------------------------------------
// The fp32 engines (portable, AVX-512): P kept in S, no software pipeline. Dp = D rounded up to
// 16 (the O row stride); the engine allocates Q, Kt, V in its own layout.
template <int kBq_, int kBk_, int kWords_>
struct EngineF32State : EngineRowState<kBq_, kBk_, kWords_> {
  static constexpr int kBq = kBq_, kBk = kBk_, kWords = kWords_;
  static constexpr int kStrip = kBq;
  static constexpr bool kOverlap = false;  // no QK/softmax/PV software pipeline
  static constexpr int kRowsPerStep = 1;   // rows per QK/softmax/PV strip (run_task)

  int64_t D, Dp;
  Buf bq, bkt, bv;
  float *Q = nullptr, *Kt = nullptr, *V = nullptr;

  explicit EngineF32State(int64_t d) : EngineRowState<kBq_, kBk_, kWords_>(round_up(d, 16)), D(d), Dp(round_up(d, 16)) {}
  template <class F> void qk_overlap(int, int, int, F&) {}
  template <class F> void pv_overlap(int, int, int, F&) {}
  void end_task() {}
  float p_at(int r, int jj) const { return this->S[r * kBk + jj]; }
  static int64_t opos(int64_t d) { return d; }
};

// ---- tasks ------------------------------------------------------------------------------
struct Task {
  int64_t b = 0, g = 0, h0 = 0, nh = 1, i0 = 0, ni = 0;
  int64_t kv0 = 0, kv1 = 0;    // key range of this split (union range of the rows, aligned)
  int64_t split = 0, nsplit = 1;
  int64_t group = 0;           // index of the unsplit task (partials slot = group * nsplit + split)
  int64_t cost = 0;
};

struct Plan {
  std::vector<Task> tasks;      // by kv head, longest first (make_plan)
  std::vector<Task> groups;     // unsplit tasks (for the merge), indexed by Task::group
  int64_t nsplit = 1;           // uniform split count (1: no split)
};

// Union key range of a row block: rows are monotone in i for bands (lo, hi nondecreasing).
inline void block_key_range(const Problem& p, int64_t b, int64_t i0, int64_t ni, int64_t* klo, int64_t* khi) {
  const RowMeta a = make_row_meta(p, b, 0, i0), z = make_row_meta(p, b, 0, i0 + ni - 1);
  int64_t lo = std::min(a.first(), z.first()), hi = std::max(a.last_end(), z.last_end());
  if (lo >= hi) {
    lo = 0;
    hi = 0;
  }
  *klo = lo;
  *khi = hi;
}

inline Plan make_plan(const Problem& p, int64_t Bq) {
  Plan plan;
  for (int64_t b = 0; b < p.B; ++b) {
    const int64_t sq = p.sq[size_t(b)];
    if (sq == 0) continue;
    int64_t nh = 1, nblk = ceil_div(sq, Bq), qb;
    if (sq < Bq) {
      nh = std::min<int64_t>(p.G, std::max<int64_t>(1, Bq / sq));
      // balance heads over groups of <= nh
      nh = ceil_div(p.G, ceil_div(p.G, nh));
      qb = sq;
    } else {
      qb = round_up(ceil_div(sq, nblk), 16);
      nblk = ceil_div(sq, qb);
    }
    for (int64_t g = 0; g < p.N2; ++g)
      for (int64_t h0 = 0; h0 < p.G; h0 += nh)
        for (int64_t k = 0; k < nblk; ++k) {
          Task t;
          t.b = b;
          t.g = g;
          t.h0 = h0;
          t.nh = std::min(nh, p.G - h0);
          t.i0 = k * qb;
          t.ni = std::min(qb, sq - t.i0);
          int64_t klo, khi;
          block_key_range(p, b, t.i0, t.ni, &klo, &khi);
          t.kv0 = klo / kKeyAlign * kKeyAlign;
          t.kv1 = khi;
          if (t.kv1 <= t.kv0) t.kv1 = t.kv0;  // all rows empty: no keys visited
          t.cost = t.nh * t.ni * std::max<int64_t>(t.kv1 - t.kv0, 1);
          t.group = int64_t(plan.groups.size());
          plan.groups.push_back(t);
        }
  }
  const int64_t T = int64_t(plan.groups.size());
  int64_t maxkv = 0;
  for (const Task& t : plan.groups) maxkv = std::max(maxkv, t.kv1 - t.kv0);
  if (T > 0 && T < kSplitMinTasks && maxkv >= 2 * kSplitMinKeys)
    plan.nsplit = std::max<int64_t>(1, std::min(ceil_div(kSplitMinTasks, T), maxkv / kSplitMinKeys));
  for (const Task& g : plan.groups) {
    if (plan.nsplit == 1) {
      plan.tasks.push_back(g);
      continue;
    }
    const int64_t len = g.kv1 - g.kv0;
    const int64_t chunk = round_up(std::max<int64_t>(ceil_div(len, plan.nsplit), 1), kKeyAlign);
    for (int64_t s = 0; s < plan.nsplit; ++s) {
      Task t = g;
      t.split = s;
      t.nsplit = plan.nsplit;
      t.kv0 = std::min(g.kv1, g.kv0 + s * chunk);
      t.kv1 = std::min(g.kv1, t.kv0 + chunk);
      t.cost = t.nh * t.ni * std::max<int64_t>(t.kv1 - t.kv0, 1);
      plan.tasks.push_back(t);
    }
  }
  // Order: kv heads (b, g) by total cost, longest first; within a head, tasks longest first.
  // A pure longest-first order interleaved the heads on causal problems (the q-block k of every
  // head, then k - 1, ...), so every task met its head's K / V packs cold in L2: consecutive
  // tasks sharing a head reuse them (dev/17_causal_fixed_cost.txt). The tail stays short: the
  // last tasks are the shortest of the cheapest head.
  std::vector<int64_t> head_cost(size_t(p.B * p.N2), 0);
  for (const Task& t : plan.tasks) head_cost[size_t(t.b * p.N2 + t.g)] += t.cost;
  std::stable_sort(plan.tasks.begin(), plan.tasks.end(), [&](const Task& a, const Task& b) {
    const int64_t ha = a.b * p.N2 + a.g, hb = b.b * p.N2 + b.g;
    if (ha != hb && head_cost[size_t(ha)] != head_cost[size_t(hb)]) return head_cost[size_t(ha)] > head_cost[size_t(hb)];
    if (ha != hb) return ha < hb;
    return a.cost > b.cost;
  });
  return plan;
}

// ---- row output -------------------------------------------------------------------------
// Uniform row (no kept key, default behaviour): out = sum_j keep_j / keep_prob * V_j / skv.
inline void uniform_row(const Problem& p, int64_t b, const RowMeta& rm, float* acc, uint32_t* wbuf) {
  const int64_t D = p.D, skv = p.skv[size_t(b)], g = rm.n / p.G;
  for (int64_t d = 0; d < D; ++d) acc[d] = 0.f;
  const int64_t chunk = 256;
  for (int64_t j0 = 0; j0 < skv; j0 += chunk) {
    const int64_t jn = std::min(chunk, skv - j0);
    int64_t woff = 0;
    if (p.dropout) {
      const uint64_t e0 = rm.e_row + uint64_t(j0);
      const uint64_t q0 = e0 >> 2;
      const int64_t nq = int64_t(((e0 + uint64_t(jn) - 1) >> 2) - q0 + 1);
      gen_words_scalar(uint64_t(p.rng.seed), uint64_t(p.rng.offset), q0, nq, wbuf);
      woff = int64_t(e0 & 3);
    }
    for (int64_t jj = 0; jj < jn; ++jj) {
      if (p.dropout && !(wbuf[woff + jj] < p.keep_threshold)) continue;
      const int64_t off = b * p.v.sb + (p.row0_kv[size_t(b)] + j0 + jj) * p.v.ss + g * p.v.sn;
      for (int64_t d = 0; d < D; ++d) acc[d] += load_elem(p.v.data, p.dtype, off + d);
    }
  }
  const float inv = float(1.0 / (double(skv) * p.keep_prob));
  for (int64_t d = 0; d < D; ++d) acc[d] *= inv;
}

inline void write_stats(const Problem& p, int64_t b, const RowMeta& rm, float mx, float sum) {
  const int64_t row = p.stat_base[size_t(b)] + rm.n * p.stat_sn[size_t(b)] + rm.i;
  float* pm = p.smax_out + row * p.stat_row_stride;
  float* ps = p.ssum_out + row * p.stat_row_stride;
  for (int k = 0; k < 8; ++k) {
    pm[k] = mx;
    ps[k] = sum;
  }
}

// Non-finite inputs (docs/semantics.md): the running max m may drop a NaN logit (the max
// instructions return one operand), but the exp pass keeps it, so the row's sum l is NaN.
// A NaN l is then either a NaN logit (max = NaN, as the reference) or a +inf one (inf - inf:
// max stays +inf). This rare path tells them apart from the inputs, in float64 as the reference.
inline bool row_has_nan_logit(const Problem& p, int64_t b, const RowMeta& rm) {
  const int64_t g = rm.n / p.G, skv = p.skv[size_t(b)];
  const int64_t qoff = b * p.q.sb + (p.row0_q[size_t(b)] + rm.i) * p.q.ss + rm.n * p.q.sn;
  const PseDesc& d = p.pse;
  for (int64_t j = rm.first(); j < std::min(rm.last_end(), skv); ++j) {
    if (!((j >= rm.lo && j < rm.hi) || j < rm.ph)) continue;
    if (rm.mrow && rm.mrow[j * p.mask.sj] != 0) continue;
    const int64_t koff = b * p.k.sb + (p.row0_kv[size_t(b)] + j) * p.k.ss + g * p.k.sn;
    double qk = 0.0;
    for (int64_t e = 0; e < p.D; ++e)
      qk += double(load_elem(p.q.data, p.dtype, qoff + e)) * double(load_elem(p.k.data, p.dtype, koff + e));
    double x = p.scale * qk;
    if (d.kind == PseKind::tensor) {
      const double bias = load_elem(d.data, d.dtype, rm.pse_base + j * d.sj);
      x = d.pse_type == 1 ? p.scale * (qk + bias) : x + bias;
    } else if (d.kind == PseKind::slopes) {
      double dist = std::fabs(double(j + rm.dist0));
      if (d.pse_type == 3) dist = std::sqrt(dist);
      x -= double(rm.slope) * dist;
    }
    if (std::isnan(x)) return true;
  }
  return false;
}

// Writes one finished row: o (unnormalised, D floats; may be clobbered), m, l.
template <class E>
inline void finish_row(const Problem& p, int64_t b, const RowMeta& rm, float* o, float m, float l, float* tmp,
                       uint32_t* wbuf) {
  void* out = const_cast<void*>(p.out.data);
  const int64_t ooff = b * p.out.sb + (p.row0_q[size_t(b)] + rm.i) * p.out.ss + rm.n * p.out.sn;
  if (l == 0.f) {  // no kept position in the row
    if (p.invalid_line) {
      for (int64_t d = 0; d < p.D; ++d) tmp[d] = 0.f;
      E::store_row(out, p.dtype, ooff, tmp, p.D);
      write_stats(p, b, rm, kMasked, kBigSum);
    } else {
      uniform_row(p, b, rm, tmp, wbuf);
      E::store_row(out, p.dtype, ooff, tmp, p.D);
      write_stats(p, b, rm, kMasked, float(p.skv[size_t(b)]));
    }
    return;
  }
  if (l != l && m == m && row_has_nan_logit(p, b, rm)) m = l;  // NaN-sticky max (rare path)
  const float inv = float(1.0 / (double(l) * p.keep_prob));
  for (int64_t d = 0; d < p.D; ++d) tmp[d] = o[d] * inv;
  E::store_row(out, p.dtype, ooff, tmp, p.D);
  write_stats(p, b, rm, m, l);
}

// Value rows with a NaN / Inf: the engines zero them in the PV operand (P = 0 at masked and
// dropped positions must not meet an Inf: 0 * Inf = NaN) and list them (nbad_v / bad_v);
// their terms are added here, only where P != 0 (the reference omits zero-weight terms).
template <class E>
inline void fix_bad_v(const Problem& p, E& e, int64_t b, int64_t g, int64_t j0, int lo, int hi) {
  const int nb = e.nbad_v();
  const int* bad = e.bad_v();
  for (int t = 0; t < nb; ++t) {
    const int64_t off = b * p.v.sb + (p.row0_kv[size_t(b)] + j0 + bad[t]) * p.v.ss + g * p.v.sn;
    for (int r = lo; r < hi; ++r) {
      const float w = e.p_at(r, bad[t]);
      if (w == 0.f) continue;
      float* o = e.orow(r);
      for (int64_t d = 0; d < p.D; ++d) o[e.opos(d)] += w * load_elem(p.v.data, p.dtype, off + d);
    }
  }
}

// Split-KV partial results: per (group, split) slot, kBq rows of (O[D], m, l).
struct Partials {
  float* o = nullptr;
  float* m = nullptr;
  float* l = nullptr;
  int64_t rows = 0, D = 0;
  float* o_at(int64_t slot, int64_t r) const { return o + (slot * rows + r) * D; }
};

// ---- optional phase profile (dev builds with -DSA_PROFILE; prints TSC cycles at exit) ------
#ifdef SA_PROFILE
#include <time.h>
#include <cstdio>
inline unsigned long long sa_thread_ns() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}
#define SA_PROFILE_STR(x) #x
#define SA_PROFILE_NAME(x) SA_PROFILE_STR(x)
struct PhaseProfile {
  unsigned long long c[4] = {0, 0, 0, 0};
  ~PhaseProfile() {
    std::fprintf(stderr, "[profile %s] thread-CPU ms: classify+load %.1f qk %.1f softmax %.1f pv %.1f\n", SA_PROFILE_NAME(SA_NS),
                 c[0] * 1e-6, c[1] * 1e-6, c[2] * 1e-6, c[3] * 1e-6);
  }
};
inline PhaseProfile g_profile;
#define SA_TICK(k) do { const unsigned long long _t = sa_thread_ns(); __atomic_fetch_add(&g_profile.c[k], _t - _t0, __ATOMIC_RELAXED); _t0 = _t; } while (0)
#define SA_TICK_START unsigned long long _t0 = sa_thread_ns()
#else
#define SA_TICK(k) do {} while (0)
#define SA_TICK_START do {} while (0)
#endif

// ---- one task -----------------------------------------------------------------------------
template <class E>
void run_task(const Problem& p, const Task& t, E& e, const Partials* parts) {
  const int64_t b = t.b;
  const int R = int(t.nh * t.ni);
  RowMeta* rm = e.meta();
  for (int r = 0; r < R; ++r) {
    const int64_t h = r / t.ni, ii = r % t.ni;
    rm[r] = make_row_meta(p, b, t.g * p.G + t.h0 + h, t.i0 + ii);
  }
  float* m = e.mvec();
  float* l = e.lvec();
  uint8_t* cls = e.clsvec();
  int* kend = e.kendvec();
  for (int r = 0; r < R; ++r) {
    m[r] = kMasked;
    l[r] = 0.f;
  }
  e.begin_task(p, b, t.g, rm, R);  // packs Q, zeroes O

  const float scale = float(p.scale);
  const bool plain_ok = p.pse.kind == PseKind::none && scale > 0.f;
  const bool has_mask = p.mask.data != nullptr;
  uint32_t* words = e.wordbuf();

  for (int64_t j0 = t.kv0; j0 < t.kv1; j0 += E::kBk) {
    SA_TICK_START;
    const int64_t jn = std::min<int64_t>(E::kBk, t.kv1 - j0), j1 = j0 + jn;
    int rlo = R, rhi = 0;
    for (int r = 0; r < R; ++r) {
      uint8_t c = band_class(rm[r], j0, j1);
      bool mask_mixed = false;
      if (c != kNone && has_mask) {
        const int ms = mask_scan(rm[r].mrow + j0 * p.mask.sj, p.mask.sj, jn);
        if (ms == 2) c = kNone;
        else if (ms == 1) c = kPartial, mask_mixed = true;
      }
      if (c == kPartial && !mask_mixed && band_prefix_run(rm[r], j0)) c = kPrefix;
      cls[r] = c;
      // keys of this block the row can keep (band/causal right edge); engines may skip the
      // key tiles of a row block beyond the block's largest kend (their P is 0)
      kend[r] = c == kNone ? 0 : int(std::clamp<int64_t>(rm[r].last_end() - j0, 0, jn));
      if (c != kNone) {
        rlo = std::min(rlo, r);
        rhi = r + 1;
      }
    }
    if (rlo >= rhi) continue;
    e.load_kv(p, b, t.g, j0, int(jn));
    SA_TICK(0);
    // The online-softmax update of one row of the block (S row -> P row, m, l, O rescale).
    auto softmax_row = [&](int r) {
      if (cls[r] == kNone) {
        e.zero_p(r, int(jn));
        return;
      }
      float* s = e.srow(r);
      float mx, xs;
      bool general;
      int jr = int(jn);  // keys of the row's softmax pass; P[jr, jn) is zeroed
      if (cls[r] == kFull || cls[r] == kPrefix) {
        if (cls[r] == kPrefix) jr = kend[r];
        if (plain_ok) {
          mx = e.row_max(s, jr) * scale;
          xs = scale;
        } else {  // pse / ALiBi / scale <= 0, every key of [0, jr) kept: fused logits + max
          mx = e.logits_row_kept(p, rm[r], s, j0, jr);
          xs = 1.f;
        }
        general = false;
      } else {
        jr = kend[r];
        mx = e.logits_row(p, rm[r], s, j0, jr);
        xs = 1.f;
        general = true;
      }
      const float mo = m[r];
      // NaN-sticky (std::max(mo, mx) keeps a NaN mo, drops a NaN mx)
      float mn = mx != mx ? mx : std::max(mo, mx);
      if (mn == kMasked) {  // nothing kept in this row so far: contributes nothing ...
        bool nan = false;   // ... unless the block max dropped NaN logits (rare)
        for (int j = 0; j < jr; ++j) nan |= s[j] != s[j];
        if (!nan) {
          e.zero_p(r, int(jn));
          return;
        }
        mn = std::numeric_limits<float>::quiet_NaN();
      }
      const uint32_t* w = nullptr;
      if (p.dropout) {
        const uint64_t e0 = rm[r].e_row + uint64_t(j0);
        const uint64_t q0 = e0 >> 2;
        const int64_t nq = int64_t(((e0 + uint64_t(jn) - 1) >> 2) - q0 + 1);
        e.gen_words(uint64_t(p.rng.seed), uint64_t(p.rng.offset), q0, nq, words);
        w = words + (e0 & 3);
      }
      // denormal flush (kPFlush) on rows whose logits carry pse / ALiBi / mask: their far keys
      // sit hundreds of log2 units below the max. Plain rows keep the cheaper clamp-only exp.
      const bool flush = general || !plain_ok;
      const float sum = e.exp_row(r, jr, xs, mn, general, flush, w, p.keep_threshold);
      if (jr < jn) e.zero_p_from(r, jr, int(jn));
      if (mn != mo && l[r] != 0.f) {
        const float dm = mo - mn;
        const float alpha = dm < kAlphaFlush ? 0.f : std::exp(dm);  // NaN dm: NaN alpha
        e.scale_o(r, alpha);
        l[r] *= alpha;
      }
      l[r] += sum;
      m[r] = mn;
    };
    const int a0 = rlo / E::kStrip * E::kStrip;
    if constexpr (E::kOverlap) {
      // Software pipeline over row strips k (AMX): iteration k runs QK(strip k) and PV(strip
      // k-2) on the tiles while the vector units do the softmax of strip k-1, interleaved at
      // ~16-TDP granularity (the engine calls `step` between tile groups), so the out-of-order
      // core overlaps TMUL and AVX-512 work. Strips touched by one iteration are disjoint rows.
      const int ns = (rhi - a0 + E::kStrip - 1) / E::kStrip;
      for (int k = 0; k < ns + 2; ++k) {
        int next = rhi, end = rhi;
        if (k >= 1 && k - 1 < ns) {
          next = std::max(a0 + (k - 1) * E::kStrip, rlo);
          end = std::min(a0 + k * E::kStrip, rhi);
        }
        auto step = [&]() {
          for (int c = 0; c < E::kRowsPerStep && next < end; ++c) softmax_row(next++);
        };
        if (k < ns) {
          const int s0 = a0 + k * E::kStrip;
          e.qk_overlap(std::max(s0, rlo), std::min(s0 + E::kStrip, rhi), int(jn), step);
        }
        if (k >= 2) {
          const int s0 = a0 + (k - 2) * E::kStrip;
          e.pv_overlap(std::max(s0, rlo), std::min(s0 + E::kStrip, rhi), int(jn), step);
          if (e.nbad_v()) fix_bad_v(p, e, b, t.g, j0, std::max(s0, rlo), std::min(s0 + E::kStrip, rhi));
        }
        while (next < end) softmax_row(next++);
      }
      SA_TICK(3);
    } else {
      // Row strips of E::kStrip (aligned): QK, softmax and PV of a strip run back to back.
      for (int s0 = a0; s0 < rhi; s0 += E::kStrip) {
        const int lo = std::max(s0, rlo), hi = std::min(s0 + E::kStrip, rhi);
        e.qk(lo, hi, int(jn));
        SA_TICK(1);
        for (int r = lo; r < hi; ++r) softmax_row(r);
        SA_TICK(2);
        e.pv(lo, hi, int(jn));
        if (e.nbad_v()) fix_bad_v(p, e, b, t.g, j0, lo, hi);
        SA_TICK(3);
      }
    }
  }

  e.end_task();
  float* tmp = e.tmprow();
  for (int r = 0; r < R; ++r) {
    float* o = e.orow(r);
    if (parts) {
      const int64_t slot = t.group * t.nsplit + t.split;
      std::memcpy(parts->o_at(slot, r), o, size_t(p.D) * sizeof(float));
      parts->m[slot * parts->rows + r] = m[r];
      parts->l[slot * parts->rows + r] = l[r];
    } else {
      finish_row<E>(p, b, rm[r], o, m[r], l[r], tmp, words);
    }
  }
}

// Merge the splits of one group in split order (fixed: bit-identical for any thread count).
template <class E>
void merge_group(const Problem& p, const Task& g, int64_t nsplit, const Partials& parts, E& e) {
  const int R = int(g.nh * g.ni);
  float* acc = e.tmprow2();
  float* tmp = e.tmprow();
  for (int r = 0; r < R; ++r) {
    const RowMeta rm = make_row_meta(p, g.b, g.g * p.G + g.h0 + r / g.ni, g.i0 + r % g.ni);
    float M = kMasked;
    bool any = false;
    for (int64_t s = 0; s < nsplit; ++s) {
      const int64_t slot = g.group * nsplit + s;
      if (parts.l[slot * parts.rows + r] != 0.f) {
        M = any ? std::max(M, parts.m[slot * parts.rows + r]) : parts.m[slot * parts.rows + r];
        any = true;
      }
    }
    for (int64_t d = 0; d < p.D; ++d) acc[d] = 0.f;
    float L = 0.f;
    if (any) {
      for (int64_t s = 0; s < nsplit; ++s) {
        const int64_t slot = g.group * nsplit + s;
        const float ls = parts.l[slot * parts.rows + r];
        if (ls == 0.f) continue;
        const float a = std::exp(parts.m[slot * parts.rows + r] - M);
        L += ls * a;
        const float* o = parts.o_at(slot, r);
        for (int64_t d = 0; d < p.D; ++d) acc[d] += a * o[d];
      }
    }
    finish_row<E>(p, g.b, rm, acc, M, L, tmp, e.wordbuf());
  }
}

// The whole forward.
template <class E>
void forward(const Problem& p) {
  if (p.B == 0 || p.N1 == 0 || p.D == 0) return;
  const Plan plan = make_plan(p, E::kBq);
  if (plan.tasks.empty()) return;
  typename E::Shared shared(p);
  const int nthreads = std::max(1, pool_threads());
  std::vector<std::unique_ptr<E>> engines(static_cast<size_t>(nthreads));
  auto engine = [&](int thread) -> E& {
    auto& ptr = engines[size_t(thread)];
    if (!ptr) ptr.reset(new E(p, shared));
    return *ptr;
  };
  Partials parts;
  Buf pbuf;
  if (plan.nsplit > 1) {
    parts.rows = E::kBq;
    parts.D = p.D;
    const int64_t slots = int64_t(plan.groups.size()) * plan.nsplit;
    float* base = pbuf.get<float>(size_t(slots * parts.rows * (p.D + 2)));
    parts.o = base;
    parts.m = base + slots * parts.rows * p.D;
    parts.l = parts.m + slots * parts.rows;
  }
  parallel_for(int64_t(plan.tasks.size()), [&](int64_t k, int thread) {
    run_task<E>(p, plan.tasks[size_t(k)], engine(thread), plan.nsplit > 1 ? &parts : nullptr);
  });
  if (plan.nsplit > 1) {
    parallel_for(int64_t(plan.groups.size()), [&](int64_t k, int thread) {
      merge_group<E>(p, plan.groups[size_t(k)], plan.nsplit, parts, engine(thread));
    });
  }
}

}  // namespace SA_NS
}  // namespace speedattn
