// The tiled backward driver (SPEC §9) shared by the fp32-compute CPU backward kernels
// (scalar, AVX2, AVX-512; every dtype converted to fp32 on load). Included once per ISA
// translation unit AFTER defining SA_NS to a namespace unique to that file: it includes
// fwd_driver.h (whose row helpers it reuses: RowMeta, make_row_meta, band_class, mask_scan,
// Buf, Philox, element load/store) into the same namespace.
//
// Shapes and guarantees:
//   * Tasks are (b, kv head g, kv chunk c): a chunk is a run of kv blocks of E::kBk keys.
//     A task OWNS the dK/dV rows of its keys (fp32 accumulation over the G query heads of
//     the group and every q row, rounded once) and writes its dQ contribution into its own
//     fp32 partial buffer (chunk c); a second pass sums the C partials in chunk order and
//     rounds once. The chunk count C depends only on the problem, never on threads, so the
//     result is bit-identical for any thread count. Memory: C fp32 copies of dQ (C <= 8)
//     + per-thread tiles: O(S*D), never S1 x S2.
//   * P is recomputed from the saved statistics: P = exp(x - max) / sum at kept positions,
//     0 at masked ones. Rows whose saved max is -FLT_MAX (no kept key) either contribute
//     nothing (invalid line) or, in the default "uniform" behaviour, P = 1/sum at EVERY key:
//     they only feed dV (dS = 0 at masked positions) and are added per kv block outside the
//     tiles (so tile skipping stays exact).
//   * Tiles (q block x kv block) whose rows keep no key are skipped: the q rows that can
//     reach a kv block come from the band analytically (first/last key are monotone in i),
//     explicit mask bytes are scanned per row tile.
//   * dpse: pse_type 0/1 accumulate fp32 into a dpse-shaped buffer (the output itself for
//     float32): every cell is owned by one task (for a batch-broadcast pse the tasks loop
//     over b inside; the compressed form forces one chunk), accumulation order is fixed.
//     pse_type 2/3: per row and chunk, the four fp64 sums of core/slope_grad.h (the slope
//     gradient with the distances centred per row, finding F13); finish_slopes adds a row's
//     chunks in chunk order, forms its centred gradient, and sums rows in (b, n, i) order.
//     The centre needs every key of the row, and the keys are split across chunk tasks: the
//     sums defer it to that fixed-order reduction, so nothing depends on the thread count.
//
// Engine concept E (bwd_engine_portable.h is the reference implementation):
//   kBq, kBk;  gemm(M, N, K, A, a_sm, a_sk, B, ldb, C, ldc, accumulate):
//     C[m][n] (+)= sum_k A[m*a_sm + k*a_sk] * B[k*ldb + n]   (N may be any size)
//   grad_row(p, GradRow&, s, dp, j0, jn): the element semantics of one row tile (below).
//   gen_words(seed, offset, q0, nq, w): Philox words of quads q0.. (bit-identical).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "common/scratch_cache.h"
#include "common/thread_pool.h"
#include "core/problem.h"
#include "core/slope_grad.h"
#include "cpu/fwd_driver.h"
#include "cpu/tile/exp2_poly.h"

namespace speedattn {
namespace SA_NS {
namespace bwd {

// Chunking of the kv axis: when a problem has fewer than kTargetTasks (b, g) heads, the kv
// axis of each head is split into C chunks so every core gets work. Provenance: same
// threshold as the forward's split-KV (fwd_driver.h kSplitMinTasks, <= 6% imbalance on 2..8
// threads). kMaxChunks bounds the dQ partial memory to 8 fp32 copies of dQ.
constexpr int64_t kTargetTasks = 16;
constexpr int64_t kMaxChunks = 8;

enum : uint8_t { kRowNormal = 0, kRowSkip = 1, kRowUniform = 2 };

// Everything the element semantics of one row tile need.
struct GradRow {
  const RowMeta* rm = nullptr;
  bool partial = true;     // evaluate band / mask per element (else every key of the tile kept)
  float mx = 0.f;          // saved max
  float inv_sum = 0.f;     // 1 / saved sum
  float dsum = 0.f;        // sum_d dy * out
  float scale = 1.f;
  float rkp = 1.f;         // 1 / keep_prob
  const uint32_t* w = nullptr;  // Philox word of element jj at w[jj] (dropout), else null
  uint32_t thr = 0;
  float* dpse = nullptr;   // fp32 dpse cell of (row, j) at dpse[j * dsj] (tensor pse), else null
  int64_t dsj = 1;
  SlopeRowSums* slope = nullptr;  // pse_type 2/3: the row's slope-gradient sums (this chunk)
};

// Scalar element semantics of one row tile (the portable engine's grad_row; ISA engines use
// it for rare cases). s[jj] holds qk, dp[jj] holds dy.v for key j = j0 + jj; on return
// s[jj] = P' = P * keep / keep_prob and dp[jj] = scale * dS (0 at masked positions).
inline void grad_row_scalar(const Problem& p, const GradRow& a, float* s, float* dp, int64_t j0, int jn) {
  const RowMeta& rm = *a.rm;
  const PseDesc& d = p.pse;
  SlopeRowSums slope;
  for (int jj = 0; jj < jn; ++jj) {
    const int64_t j = j0 + jj;
    bool keep = true;
    if (a.partial) {
      keep = (j >= rm.lo && j < rm.hi) || j < rm.ph;
      if (keep && rm.mrow) keep = rm.mrow[j * p.mask.sj] == 0;
    }
    if (!keep) {
      s[jj] = 0.f;
      dp[jj] = 0.f;
      continue;
    }
    const float qk = s[jj];
    float x, dist = 0.f;
    switch (d.kind) {
      case PseKind::tensor: {
        const float bias = load_elem(d.data, d.dtype, rm.pse_base + j * d.sj);
        x = d.pse_type == 1 ? a.scale * (qk + bias) : a.scale * qk + bias;
        break;
      }
      case PseKind::slopes: {
        dist = std::fabs(float(j + rm.dist0));
        if (d.pse_type == 3) dist = std::sqrt(dist);
        x = a.scale * qk - rm.slope * dist;
        break;
      }
      default: x = a.scale * qk; break;
    }
    const float pr = std::exp(x - a.mx) * a.inv_sum;
    float dpv = dp[jj], pd = pr;
    if (a.w) {
      const bool k = a.w[jj] < a.thr;
      pd = k ? pr * a.rkp : 0.f;
      dpv = k ? dpv * a.rkp : 0.f;
    }
    const float ds = pr == 0.f ? 0.f : pr * (dpv - a.dsum);  // P = 0 (-inf logit): no term
    s[jj] = pd;
    dp[jj] = a.scale * ds;
    if (a.dpse) a.dpse[j * a.dsj] += d.pse_type == 1 ? a.scale * ds : ds;
    if (a.slope) slope.add(pr, ds, dist);
  }
  if (a.slope) a.slope->add(slope);
}

// ---- band helpers ---------------------------------------------------------------------------
// Rows [ia, ie) of sequence b that may keep a key in [j0, j1): first(i) < j1 and end(i) > j0.
// With the band [i + lo_off, i + hi_off] (clamped) and the prefix [0, ph): if the prefix
// reaches j0 every row qualifies; else lo(i) < j1 <=> i < j1 - lo_off and hi(i) > j0 <=>
// i >= j0 - hi_off (offsets are bounded by 2^62: no overflow). Conservative superset.
inline void rows_for_keys(const Problem& p, int64_t b, int64_t j0, int64_t j1, int64_t* ia, int64_t* ie) {
  const int64_t sq = p.sq[size_t(b)];
  if (!p.band[size_t(b)].banded) {
    *ia = 0;
    *ie = sq;
    return;
  }
  const SeqBand& sb = p.band[size_t(b)];
  const int64_t skv = p.skv[size_t(b)];
  const int64_t ph = std::clamp<int64_t>(sb.prefix, 0, skv);
  if (ph > j0) {  // the prefix reaches this block: every row may keep a key
    *ia = 0;
    *ie = sq;
    return;
  }
  const int64_t a = std::clamp<int64_t>(j0 - sb.hi_off, 0, sq);  // first i with i + hi_off + 1 > j0
  const int64_t e = std::clamp<int64_t>(j1 - sb.lo_off, 0, sq);  // first i with i + lo_off >= j1
  *ia = a;
  *ie = std::max(a, e);
}

// ---- plan -----------------------------------------------------------------------------------
struct BTask {
  int64_t b = 0;     // -1: every sequence, looped inside (batch-broadcast pse)
  int64_t g = 0;
  int64_t c = 0;     // chunk
  int64_t cost = 0;
};

struct BPlan {
  int64_t C = 1;
  bool b_inner = false;
  std::vector<BTask> tasks;      // natural order (b, g, c): partial slots use this index
  std::vector<int64_t> order;    // execution order (longest first)
  std::vector<int64_t> qbase;    // first row of sequence b in the compact (Tq) row space
  int64_t Tq = 0;
};

inline int64_t nblocks(int64_t skv, int64_t Bk) { return ceil_div(skv, Bk); }
inline void chunk_blocks(int64_t nkb, int64_t C, int64_t c, int64_t* kb0, int64_t* kb1) {
  *kb0 = c * nkb / C;
  *kb1 = (c + 1) * nkb / C;
}

inline int64_t block_cost(const Problem& p, int64_t b, int64_t j0, int64_t j1) {
  int64_t ia, ie;
  rows_for_keys(p, b, j0, j1, &ia, &ie);
  return (ie - ia) * (j1 - j0);
}

inline BPlan make_plan(const Problem& p, int64_t Bk) {
  BPlan pl;
  pl.qbase.resize(size_t(p.B));
  for (int64_t b = 0; b < p.B; ++b) {
    pl.qbase[size_t(b)] = pl.Tq;
    pl.Tq += p.sq[size_t(b)];
  }
  const bool tensor_pse = p.pse.kind == PseKind::tensor && p.dpse_out;
  pl.b_inner = tensor_pse && p.pse.sb == 0 && p.B > 1;
  int64_t heads = 0, nkb_max = 0;
  for (int64_t b = 0; b < p.B; ++b)
    if (p.sq[size_t(b)] > 0 && p.skv[size_t(b)] > 0) {
      ++heads;
      nkb_max = std::max(nkb_max, nblocks(p.skv[size_t(b)], Bk));
    }
  heads *= p.N2;
  if (pl.b_inner) heads = p.N2;
  pl.C = 1;
  if (!pl.b_inner && !(tensor_pse && p.pse.compressed) && heads > 0 && heads < kTargetTasks)
    pl.C = std::max<int64_t>(1, std::min({ceil_div(kTargetTasks, heads), nkb_max, kMaxChunks}));
  if (pl.b_inner) {
    for (int64_t g = 0; g < p.N2; ++g) {
      BTask t;
      t.b = -1;
      t.g = g;
      for (int64_t b = 0; b < p.B; ++b)
        if (p.sq[size_t(b)] > 0) t.cost += block_cost(p, b, 0, p.skv[size_t(b)]);
      pl.tasks.push_back(t);
    }
  } else {
    for (int64_t b = 0; b < p.B; ++b) {
      const int64_t sq = p.sq[size_t(b)], skv = p.skv[size_t(b)];
      if (sq == 0 || skv == 0) continue;
      const int64_t nkb = nblocks(skv, Bk);
      for (int64_t g = 0; g < p.N2; ++g)
        for (int64_t c = 0; c < pl.C; ++c) {
          int64_t kb0, kb1;
          chunk_blocks(nkb, pl.C, c, &kb0, &kb1);
          if (kb0 >= kb1) continue;
          BTask t;
          t.b = b;
          t.g = g;
          t.c = c;
          for (int64_t kb = kb0; kb < kb1; ++kb)
            t.cost += block_cost(p, b, kb * Bk, std::min(skv, (kb + 1) * Bk)) + Bk;
          pl.tasks.push_back(t);
        }
    }
  }
  pl.order.resize(pl.tasks.size());
  std::iota(pl.order.begin(), pl.order.end(), int64_t(0));
  std::stable_sort(pl.order.begin(), pl.order.end(),
                   [&](int64_t a, int64_t b) { return pl.tasks[size_t(a)].cost > pl.tasks[size_t(b)].cost; });
  return pl;
}

// Contiguous element strides of pse's shape mapped onto (b, n, i, j) (tensor) or (b, n)
// (slopes): extent-1 and missing leading dimensions get stride 0 (as the reference).
inline int64_t dpse_strides(const PseDesc& d, int want, int64_t out[4]) {
  for (int k = 0; k < 4; ++k) out[k] = 0;
  int64_t run = 1;
  for (int a = d.ndim - 1; a >= 0; --a) {
    const int logical = want - (d.ndim - a);
    if (logical >= 0 && logical < 4) out[logical] = d.shape[a] == 1 ? 0 : run;
    run *= d.shape[a];
  }
  return run;
}

// ---- shared state of one backward call ------------------------------------------------------
struct Shared {
  const Problem& p;
  BPlan plan;
  int64_t D = 0;
  // per (n, compact row): saved max, 1/sum, Dsum, row kind
  std::vector<float> mx, isum, dsum;
  // per (n, compact row): -(max * log2(e) + log2(sum)), rounded once from double, so that
  // P = 2^(qk * scale * log2(e) + nb2) is one FMA and an exp2 (the AMX fast element pass)
  std::vector<float> nb2;
  std::vector<uint8_t> kind;
  // Non-finite inputs: per (n, compact row) q / dy row has a NaN or Inf; per (kv head, key of
  // the compact key space, sequence b at kbase[b]) the k row has one. The products whose zero
  // weights (masked / dropped / P = 0) would meet them take them out of the GEMM and add their
  // terms where the weight is not 0 (Worker::kv_block; docs/semantics.md "Non-finite inputs").
  // Bits: qbad 1 = q row, 2 = Dsum non-finite; kbad 1 = k row, 2 = v row (the AMX kernel sends
  // every one of them to the fp32 path; Worker only needs q, dy and k).
  std::vector<uint8_t> qbad, dybad, kbad;
  std::vector<int64_t> kbase;
  int64_t Tk = 0;
  bool any_qdy_bad(int64_t b, int64_t g) const {  // some q / dy row of (b, heads of g)
    for (int64_t n = g * p.G; n < (g + 1) * p.G; ++n)
      for (int64_t i = 0; i < p.sq[size_t(b)]; ++i)
        if (qbad[ri(n, b, i)] | dybad[ri(n, b, i)]) return true;
    return false;
  }
  std::vector<int64_t> ucount;  // uniform rows per (b, n)
  std::vector<float> uvec;      // (no dropout) sum over uniform rows of dy / sum, per (b, n): D floats
  // C x N1 x Tq x D (common/scratch_cache.h; precompute zeroes it in parallel)
  Scratch bdq;
  float* dq_acc = nullptr;
  // dpse
  float* dpse = nullptr;        // fp32 accumulation (tensor pse)
  std::vector<float> dpse_own;
  int64_t dst[4] = {0, 0, 0, 0};
  int64_t dpse_numel = 0;
  std::vector<SlopeRowSums> slope_rows;  // pse_type 2/3: C x N1 x Tq (chunk, head, compact row)
  // Packed bf16 copies for the AMX kernel (filled by its prepare step): per query head n,
  // rows in a padded row space (sequence b starts at qpbase[b], a multiple of 32; 32 zero
  // rows of slack at the end): Qc/dYc [n][Tqp][D], QT/dYT [n][D][Tqp].
  std::vector<int64_t> qpbase;
  int64_t Tqp = 0;
  // Cached scratch (common/scratch_cache.h): the parallel prepare step writes every row, padding included.
  Scratch bqc, bdyc, bqt, bdyt;
  uint16_t *qc = nullptr, *dyc = nullptr, *qt = nullptr, *dyt = nullptr;
  // float16 inputs (bwd_amx_fp16): the exact lo bf16 halves (x = hi + lo) of the same four.
  Scratch bqcl, bdycl, bqtl, bdytl;
  uint16_t *qcl = nullptr, *dycl = nullptr, *qtl = nullptr, *dytl = nullptr;
  explicit Shared(const Problem& prob) : p(prob) {}
  size_t ri(int64_t n, int64_t b, int64_t i) const { return size_t(n * plan.Tq + plan.qbase[size_t(b)] + i); }
  float* dq_row(int64_t c, int64_t n, int64_t b, int64_t i) {
    return dq_acc + ((c * p.N1 + n) * plan.Tq + plan.qbase[size_t(b)] + i) * D;
  }
  SlopeRowSums* slope_row(int64_t c, int64_t n, int64_t b, int64_t i) {
    return slope_rows.data() + (c * p.N1 + n) * plan.Tq + plan.qbase[size_t(b)] + i;
  }
};

inline void load_row_f32(const void* base, DType dt, int64_t off, float* dst, int64_t D) {
  switch (dt) {
    case DType::float16: {
      const uint16_t* s = static_cast<const uint16_t*>(base) + off;
      for (int64_t d = 0; d < D; ++d) dst[d] = fp16_to_f(s[d]);
      break;
    }
    case DType::bfloat16: {
      const uint16_t* s = static_cast<const uint16_t*>(base) + off;
      for (int64_t d = 0; d < D; ++d) dst[d] = bitsf(uint32_t(s[d]) << 16);
      break;
    }
    default: std::memcpy(dst, static_cast<const float*>(base) + off, size_t(D) * 4); break;
  }
}
inline void store_row_f32(void* base, DType dt, int64_t off, const float* src, int64_t D) {
  switch (dt) {
    case DType::float16: {
      uint16_t* s = static_cast<uint16_t*>(base) + off;
      for (int64_t d = 0; d < D; ++d) s[d] = f_to_fp16(src[d]);
      break;
    }
    case DType::bfloat16: {
      uint16_t* s = static_cast<uint16_t*>(base) + off;
      for (int64_t d = 0; d < D; ++d) s[d] = f_to_bf16(src[d]);
      break;
    }
    default: std::memcpy(static_cast<float*>(base) + off, src, size_t(D) * 4); break;
  }
}
inline int64_t op_off(const Problem& p, const Operand& o, bool kv, int64_t b, int64_t n, int64_t i) {
  return b * o.sb + ((kv ? p.row0_kv[size_t(b)] : p.row0_q[size_t(b)]) + i) * o.ss + n * o.sn;
}
inline bool nonfinite_row(const float* x, int64_t D) {
  uint32_t bad = 0;
  for (int64_t d = 0; d < D; ++d) bad |= uint32_t((fbits(x[d]) & 0x7f800000u) == 0x7f800000u);
  return bad != 0;
}

// sum_d dy[d] o[d] in 16 independent lanes (vectorised; no D-long dependency chain). Only
// whether it is finite matters (and its value where it is not): every kernel's prepare step
// replaces the finite ones with its dP's own evaluation (replace_dsum).
inline float plain_dsum(const float* dy, const float* o, int64_t D) {
  float lane[16] = {};
  int64_t d = 0;
  for (; d + 16 <= D; d += 16)
    for (int t = 0; t < 16; ++t) lane[t] += dy[d + t] * o[d + t];
  float s = 0.f;
  for (; d < D; ++d) s += dy[d] * o[d];
  for (int t = 0; t < 16; ++t) s += lane[t];
  return s;
}

// Pass 1 (parallel over (b, n)): row statistics, Dsum (plain_dsum), uniform rows, zeroed dQ
// partials.
inline void precompute(Shared& sh) {
  const Problem& p = sh.p;
  const int64_t D = p.D;
  parallel_for(p.B * p.N1, [&](int64_t task, int) {
    const int64_t b = task / p.N1, n = task % p.N1, sq = p.sq[size_t(b)];
    std::vector<float> dy(static_cast<size_t>(D)), o(static_cast<size_t>(D)), qk(static_cast<size_t>(D));
    if (n % p.G == 0) {  // the k rows of kv head n / G
      for (int64_t j = 0; j < p.skv[size_t(b)]; ++j) {
        load_row_f32(p.k.data, p.dtype, op_off(p, p.k, true, b, n / p.G, j), qk.data(), D);
        uint8_t f = nonfinite_row(qk.data(), D) ? 1 : 0;
        load_row_f32(p.v.data, p.dtype, op_off(p, p.v, true, b, n / p.G, j), qk.data(), D);
        if (nonfinite_row(qk.data(), D)) f |= 2;
        sh.kbad[size_t((n / p.G) * sh.Tk + sh.kbase[size_t(b)] + j)] = f;
      }
    }
    float* u = sh.uvec.data() + task * D;
    std::fill(u, u + D, 0.f);
    int64_t uc = 0;
    for (int64_t i = 0; i < sq; ++i) {
      const int64_t srow = (p.stat_base[size_t(b)] + n * p.stat_sn[size_t(b)] + i) * p.stat_row_stride;
      const float m = p.smax_in[srow], s = p.ssum_in[srow];
      load_row_f32(p.dy.data, p.dtype, op_off(p, p.dy, false, b, n, i), dy.data(), D);
      load_row_f32(p.out.data, p.dtype, op_off(p, p.out, false, b, n, i), o.data(), D);
      const float ds = plain_dsum(dy.data(), o.data(), D);
      const size_t r = sh.ri(n, b, i);
      load_row_f32(p.q.data, p.dtype, op_off(p, p.q, false, b, n, i), qk.data(), D);
      sh.qbad[r] = uint8_t((nonfinite_row(qk.data(), D) ? 1 : 0) | (std::isfinite(ds) ? 0 : 2));
      sh.dybad[r] = nonfinite_row(dy.data(), D);
      sh.mx[r] = m;
      sh.isum[r] = float(1.0 / double(s));
      sh.nb2[r] = float(-(double(m) * 1.4426950408889634 + std::log2(double(s))));
      sh.dsum[r] = ds;
      uint8_t k = kRowNormal;
      if (m == kMasked) k = p.invalid_line ? kRowSkip : kRowUniform;
      sh.kind[r] = k;
      if (k == kRowUniform) {
        ++uc;
        for (int64_t d = 0; d < D; ++d) u[d] += dy[size_t(d)] * sh.isum[r];
      }
      for (int64_t c = 0; c < sh.plan.C; ++c) std::memset(sh.dq_row(c, n, b, i), 0, size_t(D) * 4);
    }
    sh.ucount[size_t(task)] = uc;
  });
}

// Dsum of row ri as the kernel's dP = dY V^T evaluates it (v: dy . o with dP's passes, products
// and summation order), replacing the plain sum of precompute where that is finite (a non-finite
// one sends its row to the fp32 path); a v that overflows flags the row the same way. dS = P (dP -
// Dsum) cancels: where O = V_j (a row keeping a single key: S2 = 1, a band of width 0, dense
// masks) the exact dS is 0, and it comes out exactly 0 only if dP and Dsum agree to the bit
// (finding N1, docs/reliability.md).
inline void replace_dsum(Shared& sh, size_t ri, float v) {
  float& ds = sh.dsum[ri];
  if (!std::isfinite(ds)) return;
  ds = v;
  if (!std::isfinite(v)) sh.qbad[ri] |= 2;
}

// The Dsum policy of the fp32-compute kernels (prepare step, parallel over (b, n)): Dsum with
// E::gemm, which computes dP. 16 rows per call, C = dY O^T [16][16] and its diagonal: each
// element is the same chain over d (FMA or multiply + add, in order from 0) as an element of dP.
// O(16 S1 D) per head against the O(S1 S2 D) of each of the five products.
template <class E>
void gemm_dsum(Shared& sh) {
  const Problem& p = sh.p;
  const int64_t D = p.D;
  parallel_for(p.B * p.N1, [&](int64_t task, int) {
    const int64_t b = task / p.N1, n = task % p.N1, sq = p.sq[size_t(b)];
    std::vector<float> dy(size_t(16 * D)), ot(size_t(16 * D)), o(static_cast<size_t>(D)), c(16 * 16);
    for (int64_t i0 = 0; i0 < sq; i0 += 16) {
      const int nr = int(std::min<int64_t>(16, sq - i0));
      for (int r = 0; r < nr; ++r) {  // dY rows [nr][D], O^T [D][16]
        load_row_f32(p.dy.data, p.dtype, op_off(p, p.dy, false, b, n, i0 + r), dy.data() + r * D, D);
        load_row_f32(p.out.data, p.dtype, op_off(p, p.out, false, b, n, i0 + r), o.data(), D);
        for (int64_t d = 0; d < D; ++d) ot[size_t(d * 16 + r)] = o[size_t(d)];
      }
      E::gemm(nr, 16, int(D), dy.data(), D, 1, ot.data(), 16, c.data(), 16, false);
      for (int r = 0; r < nr; ++r) replace_dsum(sh, sh.ri(n, b, i0 + r), c[size_t(r * 17)]);
    }
  });
}

// Pass 3 (parallel over (b, n)): dQ = sum of the chunk partials in chunk order, rounded once.
inline void finish_dq(Shared& sh) {
  const Problem& p = sh.p;
  const int64_t D = p.D;
  parallel_for(p.B * p.N1, [&](int64_t task, int) {
    const int64_t b = task / p.N1, n = task % p.N1, sq = p.sq[size_t(b)];
    std::vector<float> acc(static_cast<size_t>(D));
    for (int64_t i = 0; i < sq; ++i) {
      const float* r0 = sh.dq_row(0, n, b, i);
      std::memcpy(acc.data(), r0, size_t(D) * 4);
      for (int64_t c = 1; c < sh.plan.C; ++c) {
        const float* rc = sh.dq_row(c, n, b, i);
        for (int64_t d = 0; d < D; ++d) acc[size_t(d)] += rc[d];
      }
      store_row_f32(const_cast<void*>(p.dq.data), p.dtype, op_off(p, p.dq, false, b, n, i), acc.data(), D);
    }
  });
}

// Pass 4 (pse_type 2/3): per row, its chunk sums added in chunk order and the centred slope
// gradient formed (core/slope_grad.h); rows summed in order per (b, n) (parallel over (b, n)),
// then (b, n) totals into the slope cells in (b, n) order: a (N1,) slope sums over b.
inline void finish_slopes(Shared& sh) {
  const Problem& p = sh.p;
  std::vector<double> head(size_t(p.B * p.N1), 0.0);
  parallel_for(p.B * p.N1, [&](int64_t task, int) {
    const int64_t b = task / p.N1, n = task % p.N1;
    double g = 0.0;
    for (int64_t i = 0; i < p.sq[size_t(b)]; ++i) {
      SlopeRowSums row = *sh.slope_row(0, n, b, i);
      for (int64_t c = 1; c < sh.plan.C; ++c) row.add(*sh.slope_row(c, n, b, i));
      g += row.grad();
    }
    head[size_t(task)] = g;
  });
  std::vector<double> acc(size_t(sh.dpse_numel), 0.0);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t n = 0; n < p.N1; ++n) acc[size_t(b * sh.dst[0] + n * sh.dst[1])] += head[size_t(b * p.N1 + n)];
  float* out = static_cast<float*>(p.dpse_out);
  for (int64_t e = 0; e < sh.dpse_numel; ++e) out[e] = float(acc[size_t(e)]);
}

// Calls f(b, c, j0, jn) for the kv blocks [j0, j0 + jn) of Bk keys of task t, in order: the
// blocks of chunk c of sequence t.b, or (t.b = -1, batch-broadcast pse) every sequence's blocks
// with slot 0.
template <class F>
void for_task_blocks(const Problem& p, const Shared& sh, const BTask& t, int64_t Bk, F&& f) {
  if (t.b >= 0) {
    const int64_t skv = p.skv[size_t(t.b)];
    int64_t kb0, kb1;
    chunk_blocks(nblocks(skv, Bk), sh.plan.C, t.c, &kb0, &kb1);
    for (int64_t kb = kb0; kb < kb1; ++kb) f(t.b, t.c, kb * Bk, int(std::min<int64_t>(Bk, skv - kb * Bk)));
    return;
  }
  for (int64_t b = 0; b < p.B; ++b) {
    const int64_t skv = p.skv[size_t(b)];
    if (p.sq[size_t(b)] == 0 || skv == 0) continue;
    for (int64_t kb = 0; kb < nblocks(skv, Bk); ++kb) f(b, int64_t(0), kb * Bk, int(std::min<int64_t>(Bk, skv - kb * Bk)));
  }
}

// ---- per-thread worker ------------------------------------------------------------------------
// The smallest row stride >= n floats that is an odd number of 64-byte lines.
constexpr int64_t odd_line_stride(int64_t n) {
  const int64_t lines = (n + 15) / 16;
  return (lines % 2 == 0 ? lines + 1 : lines) * 16;
}

template <class E>
struct Worker {
  static constexpr int kBq = E::kBq, kBk = E::kBk;
  // Row strides: kLd (S, dP, K^T, V^T) and Dp (K, Q, dY, dK, dV rows) are an odd number of
  // 64-byte lines, so the rows of a GEMM panel spread over all 64 L1 sets (a 512-byte stride
  // maps them onto 32 sets and the panel thrashes: dev/bwd_05_fp32_gemm.md).
  static constexpr int kLd = int(odd_line_stride(kBk));
  const Problem& p;
  Shared& sh;
  int64_t D, Dp;
  Buf bkt, bvt, bkr, bq, bdy, bs, bdp, bdk, bdv, bw, btmp;
  float *KT, *VT, *Kr, *Q, *dY, *S, *dP, *dKa, *dVa, *tmp;
  uint32_t* words;
  RowMeta rm[kBq];
  uint8_t cls[kBq], rnormal[kBq];
  int nbadk = 0, badk[kBk];  // keys of the current block whose k row has a NaN / Inf

  Worker(const Problem& prob, Shared& s)
      : p(prob), sh(s), D(prob.D), Dp(odd_line_stride(prob.D)) {
    KT = bkt.get<float>(size_t(D * kLd));
    VT = bvt.get<float>(size_t(D * kLd));
    Kr = bkr.get<float>(size_t(kBk * Dp));
    Q = bq.get<float>(size_t(kBq * Dp));
    dY = bdy.get<float>(size_t(kBq * Dp));
    S = bs.get<float>(size_t(kBq * kLd));
    dP = bdp.get<float>(size_t(kBq * kLd));
    dKa = bdk.get<float>(size_t(kBk * Dp));
    dVa = bdv.get<float>(size_t(kBk * Dp));
    words = bw.get<uint32_t>(size_t(kBk + 16));
    tmp = btmp.get<float>(size_t(Dp));
  }

  // Keys [j0, j0 + jn) of (b, kv head g) as fp32: kt / vt = K^T / V^T [D][ld] (columns jn ..
  // jpad zero), kr = K rows [jn][Dp].
  void pack_kv(int64_t b, int64_t g, int64_t j0, int jn, int jpad, float* kt, float* vt, int64_t ld, float* kr) {
    for (int jj = 0; jj < jn; ++jj) {
      const int64_t ko = op_off(p, p.k, true, b, g, j0 + jj), vo = op_off(p, p.v, true, b, g, j0 + jj);
      load_row_f32(p.k.data, p.dtype, ko, kr + jj * Dp, D);
      for (int64_t d = 0; d < D; ++d) kt[d * ld + jj] = kr[jj * Dp + d];
      load_row_f32(p.v.data, p.dtype, vo, tmp, D);
      for (int64_t d = 0; d < D; ++d) vt[d * ld + jj] = tmp[d];
    }
    for (int64_t d = 0; d < D; ++d)
      for (int jj = jn; jj < jpad; ++jj) kt[d * ld + jj] = vt[d * ld + jj] = 0.f;
  }

  // One kv block [j0, j0 + jn) of sequence b, kv head g; dQ (and slope-sum) partial slot c.
  void kv_block(int64_t b, int64_t g, int64_t c, int64_t j0, int jn) {
    const int jpad = int(round_up(jn, 16));
    pack_kv(b, g, j0, jn, jpad, KT, VT, kLd, Kr);
    // k rows with a NaN / Inf leave Kr (the dQ = dS K operand; KT keeps them for S = Q K^T)
    nbadk = 0;
    const uint8_t* kb = sh.kbad.data() + g * sh.Tk + sh.kbase[size_t(b)] + j0;
    for (int jj = 0; jj < jn; ++jj)
      if (kb[jj] & 1) {
        std::memset(Kr + jj * Dp, 0, size_t(D) * 4);
        badk[nbadk++] = jj;
      }
    std::memset(dKa, 0, size_t(jn * Dp) * 4);
    std::memset(dVa, 0, size_t(jn * Dp) * 4);

    int64_t ia, ie;
    rows_for_keys(p, b, j0, j0 + jn, &ia, &ie);
    for (int64_t n = g * p.G; n < (g + 1) * p.G; ++n) {
      for (int64_t i0 = ia; i0 < ie; i0 += kBq) {
        const int ni = int(std::min<int64_t>(kBq, ie - i0));
        int rlo, rhi;
        classify(b, n, i0, ni, j0, jn, &rlo, &rhi);
        if (rlo >= rhi) continue;
        const int R = rhi - rlo;
        const int64_t ib = i0 + rlo;  // first row of the tile
        load_qdy(b, n, ib, R);
        const float *qa = Q, *dya = dY;
        int64_t ldq = Dp, lddy = Dp;
        E::gemm(R, jpad, int(D), qa, ldq, 1, KT, kLd, S, kLd, false);
        E::gemm(R, jpad, int(D), dya, lddy, 1, VT, kLd, dP, kLd, false);
        grad_rows(b, n, c, ib, rlo, R, j0, jn, S, dP, kLd);
        // q / dy rows with a NaN / Inf leave the dK / dV operands (zeroed copies; S and dP
        // above used them): fix_bad_rows adds their terms where the weight is not 0
        bool qb = false, dyb = false;
        for (int r = 0; r < R; ++r) {
          qb |= (sh.qbad[sh.ri(n, b, ib + r)] & 1) != 0;
          dyb |= sh.dybad[sh.ri(n, b, ib + r)] != 0;
        }
        if (qb) qa = zero_bad_rows(sh.qbad, n, b, ib, R, qa, ldq, Q, &ldq);
        if (dyb) dya = zero_bad_rows(sh.dybad, n, b, ib, R, dya, lddy, dY, &lddy);
        // dV += P'^T dY, dK += (scale dS)^T Q, dQ += (scale dS) K
        E::gemm(jn, int(D), R, S, 1, kLd, dya, lddy, dVa, Dp, true);
        E::gemm(jn, int(D), R, dP, 1, kLd, qa, ldq, dKa, Dp, true);
        E::gemm(R, int(D), jn, dP, kLd, 1, Kr, Dp, sh.dq_row(c, n, b, ib), D, true);
        if (qb | dyb | (nbadk > 0)) fix_bad_rows(b, n, g, c, ib, R, j0, jn, S, dP, kLd, qb, dyb);
      }
      if (sh.ucount[size_t(b * p.N1 + n)] > 0) uniform_rows(b, n, j0, jn);
    }
    store_kv(b, g, j0, jn);
  }

  // Rows r < R of a (q or dy) operand at src (row stride ld) with their flag (bad[ri]) cleared
  // to 0, in buf (row stride Dp; buf may be src's own buffer: rows are copied in place).
  const float* zero_bad_rows(const std::vector<uint8_t>& bad, int64_t n, int64_t b, int64_t ib, int R, const float* src,
                             int64_t ld, float* buf, int64_t* ld_out) {
    for (int r = 0; r < R; ++r) {
      float* dst = buf + r * Dp;
      if (bad[sh.ri(n, b, ib + r)] & 1) std::memset(dst, 0, size_t(D) * 4);
      else if (src + r * ld != dst) std::memcpy(dst, src + r * ld, size_t(D) * 4);
    }
    *ld_out = Dp;
    return buf;
  }

  // The terms the GEMMs left out (rare): for the flagged q / dy rows r and k rows jj of a tile,
  // dV[jj] += P'[r][jj] dy[r], dK[jj] += sdS[r][jj] q[r], dQ[r] += sdS[r][jj] k[jj], only where
  // the weight (P' in Sb, scale * dS in dPb) is not 0 (the reference omits zero-weight terms).
  void fix_bad_rows(int64_t b, int64_t n, int64_t g, int64_t c, int64_t ib, int R, int64_t j0, int jn,
                    const float* Sb, const float* dPb, int64_t ld, bool qb, bool dyb) {
    for (int r = 0; r < R; ++r) {
      const size_t ri = sh.ri(n, b, ib + r);
      if (dyb && sh.dybad[ri]) {
        load_row_f32(p.dy.data, p.dtype, op_off(p, p.dy, false, b, n, ib + r), tmp, D);
        for (int jj = 0; jj < jn; ++jj) {
          const float w = Sb[r * ld + jj];
          if (w != 0.f)
            for (int64_t d = 0; d < D; ++d) dVa[jj * Dp + d] += w * tmp[d];
        }
      }
      if (qb && (sh.qbad[ri] & 1)) {
        load_row_f32(p.q.data, p.dtype, op_off(p, p.q, false, b, n, ib + r), tmp, D);
        for (int jj = 0; jj < jn; ++jj) {
          const float w = dPb[r * ld + jj];
          if (w != 0.f)
            for (int64_t d = 0; d < D; ++d) dKa[jj * Dp + d] += w * tmp[d];
        }
      }
    }
    for (int t = 0; t < nbadk; ++t) {
      const int jj = badk[t];
      load_row_f32(p.k.data, p.dtype, op_off(p, p.k, true, b, g, j0 + jj), tmp, D);
      for (int r = 0; r < R; ++r) {
        const float w = dPb[r * ld + jj];
        if (w == 0.f) continue;
        float* dq = sh.dq_row(c, n, b, ib + r);
        for (int64_t d = 0; d < D; ++d) dq[d] += w * tmp[d];
      }
    }
  }

  // Classifies rows i0 .. i0+ni of (b, n) against keys [j0, j0+jn) into cls[] (kNone: no
  // kept key or not a normal row; kFull; kPartial) with their RowMeta in rm[]; [rlo, rhi) is
  // the range of rows that are not kNone (empty: rlo >= rhi).
  void classify(int64_t b, int64_t n, int64_t i0, int ni, int64_t j0, int jn, int* rlo_out, int* rhi_out) {
    row_metas(b, n, i0, ni);
    classify_keys(ni, j0, jn, rlo_out, rhi_out);
  }

  // The key-independent half of classify: which rows i0 .. i0+ni of (b, n) are normal (rnormal)
  // and their RowMeta (rm). A q tile computes them once for all its key tiles.
  // Q and dY rows [i, i + nr) of (b, head n) as fp32 into Q / dY with the padded stride Dp
  // (copied for fp32 too: a GEMM panel at the input's 2^k-byte row stride thrashes L1).
  void load_qdy(int64_t b, int64_t n, int64_t i, int nr) {
    for (int r = 0; r < nr; ++r) {
      load_row_f32(p.q.data, p.dtype, op_off(p, p.q, false, b, n, i + r), Q + r * Dp, D);
      load_row_f32(p.dy.data, p.dtype, op_off(p, p.dy, false, b, n, i + r), dY + r * Dp, D);
    }
  }
  void row_metas(int64_t b, int64_t n, int64_t i0, int ni) {
    for (int r = 0; r < ni; ++r) {
      rnormal[r] = sh.kind[sh.ri(n, b, i0 + r)] == kRowNormal;
      if (rnormal[r]) rm[r] = make_row_meta(p, b, n, i0 + r);
    }
  }

  // The rows of the last row_metas against keys [j0, j0+jn): cls[] and [rlo, rhi) as classify.
  void classify_keys(int ni, int64_t j0, int jn, int* rlo_out, int* rhi_out) {
    const bool has_mask = p.mask.data != nullptr;
    int rlo = ni, rhi = 0;
    for (int r = 0; r < ni; ++r) {
      uint8_t cl = kNone;
      if (rnormal[r]) {
        cl = band_class(rm[r], j0, j0 + jn);
        if (cl != kNone && has_mask) {
          const int ms = mask_scan(rm[r].mrow + j0 * p.mask.sj, p.mask.sj, jn);
          if (ms == 2) cl = kNone;
          else if (ms == 1) cl = kPartial;
        }
      }
      cls[r] = cl;
      if (cl != kNone) {
        rlo = std::min(rlo, r);
        rhi = r + 1;
      }
    }
    *rlo_out = rlo;
    *rhi_out = rhi;
  }

  // Element semantics of the R rows ib.. (classified at index rlo..) of a tile: Sb[r*ld + jj]
  // holds qk, dPb dy.v; on return P' and scale * dS (kNone rows: 0). c: the partial slot.
  void grad_rows(int64_t b, int64_t n, int64_t c, int64_t ib, int rlo, int R, int64_t j0, int jn, float* Sb,
                 float* dPb, int64_t ld) {
    const float scale = float(p.scale);
    for (int r = 0; r < R; ++r) {
      float* s = Sb + r * ld;
      float* dp = dPb + r * ld;
      const int rr = rlo + r;
      if (cls[rr] == kNone) {
        std::memset(s, 0, size_t(jn) * 4);
        std::memset(dp, 0, size_t(jn) * 4);
        continue;
      }
      const size_t ri = sh.ri(n, b, ib + r);
      GradRow a;
      a.rm = &rm[rr];
      a.partial = cls[rr] == kPartial;
      a.mx = sh.mx[ri];
      a.inv_sum = sh.isum[ri];
      a.dsum = sh.dsum[ri];
      a.scale = scale;
      a.rkp = float(1.0 / p.keep_prob);
      if (p.dropout) {
        const uint64_t e0 = rm[rr].e_row + uint64_t(j0);
        const uint64_t q0 = e0 >> 2;
        const int64_t nq = int64_t(((e0 + uint64_t(jn) - 1) >> 2) - q0 + 1);
        E::gen_words(uint64_t(p.rng.seed), uint64_t(p.rng.offset), q0, nq, words);
        a.w = words + (e0 & 3);
        a.thr = p.keep_threshold;
      }
      if (sh.dpse) {
        a.dpse = sh.dpse + dpse_row_base(b, n, ib + r);
        a.dsj = sh.dst[3];
      }
      if (!sh.slope_rows.empty()) a.slope = sh.slope_row(c, n, b, ib + r);
      E::grad_row(p, a, s, dp, j0, jn);
    }
  }

  // Stores the finished dK / dV rows of a kv block (dKa / dVa, jn x Dp fp32), rounded once.
  void store_kv(int64_t b, int64_t g, int64_t j0, int jn) {
    void* dk = const_cast<void*>(p.dk.data);
    void* dv = const_cast<void*>(p.dv.data);
    for (int jj = 0; jj < jn; ++jj) {
      store_row_f32(dk, p.dtype, op_off(p, p.dk, true, b, g, j0 + jj), dKa + jj * Dp, D);
      store_row_f32(dv, p.dtype, op_off(p, p.dv, true, b, g, j0 + jj), dVa + jj * Dp, D);
    }
  }

  int64_t dpse_row_base(int64_t b, int64_t n, int64_t i) const {
    const PseDesc& d = p.pse;
    int64_t row = i, colshift = 0;
    if (d.compressed) {
      const int64_t sq = p.sq[size_t(b)], skv = p.skv[size_t(b)];
      const int64_t t = sq - 1024;
      if (i >= t) {
        row = i - t;
      } else {
        row = i % 1024;
        colshift = -i + row + (skv - 1024);
      }
    }
    return b * sh.dst[0] + n * sh.dst[1] + row * sh.dst[2] + colshift * sh.dst[3];
  }

  // Uniform rows (no kept key, default behaviour) of (b, n): P = 1/sum at every key, dS = 0:
  // dV[j] += sum_i keep(i, j) / keep_prob / sum_i * dy[i].
  void uniform_rows(int64_t b, int64_t n, int64_t j0, int jn) {
    if (!p.dropout) {
      const float* u = sh.uvec.data() + (b * p.N1 + n) * D;
      for (int jj = 0; jj < jn; ++jj)
        for (int64_t d = 0; d < D; ++d) dVa[jj * Dp + d] += u[d];
      return;
    }
    const float rkp = float(1.0 / p.keep_prob);
    for (int64_t i = 0; i < p.sq[size_t(b)]; ++i) {
      const size_t ri = sh.ri(n, b, i);
      if (sh.kind[ri] != kRowUniform) continue;
      load_row_f32(p.dy.data, p.dtype, op_off(p, p.dy, false, b, n, i), tmp, D);
      const uint64_t e0 = uint64_t(p.drop_base[size_t(b)] + (n * p.sq[size_t(b)] + i) * p.skv[size_t(b)] + j0);
      const uint64_t q0 = e0 >> 2;
      const int64_t nq = int64_t(((e0 + uint64_t(jn) - 1) >> 2) - q0 + 1);
      E::gen_words(uint64_t(p.rng.seed), uint64_t(p.rng.offset), q0, nq, words);
      const uint32_t* w = words + (e0 & 3);
      const float pv = sh.isum[ri] * rkp;
      for (int jj = 0; jj < jn; ++jj) {
        if (!(w[jj] < p.keep_threshold)) continue;
        for (int64_t d = 0; d < D; ++d) dVa[jj * Dp + d] += pv * tmp[d];
      }
    }
  }

  void run_task(const BTask& t) {
    for_task_blocks(p, sh, t, kBk, [&](int64_t b, int64_t c, int64_t j0, int jn) { kv_block(b, t.g, c, j0, jn); });
  }
};

// The whole backward with worker type W (W(p, Shared&), W::run_task(BTask))
// over kv blocks of Bk keys; `prepare(sh)` runs after the statistics pass: packing, and the
// kernel's Dsum policy (replace_dsum), which every kernel must have.
template <class W, class Prepare>
void backward_with(const Problem& p, int64_t Bk, Prepare&& prepare) {
  void* dq = const_cast<void*>(p.dq.data);
  void* dk = const_cast<void*>(p.dk.data);
  void* dv = const_cast<void*>(p.dv.data);
  const size_t es = dtype_size(p.dtype);
  // Rows no task writes (TND tokens outside every sequence, keys of sequences without
  // queries) must be 0: zero everything up front when such rows can exist.
  bool zero_all = p.layout == Layout::TND;
  for (int64_t b = 0; b < p.B; ++b)
    if (p.sq[size_t(b)] == 0 || p.skv[size_t(b)] == 0) zero_all = true;
  if (zero_all) {
    // (zero-size outputs may have null pointers: memset(nullptr, 0, 0) is undefined)
    if (p.dq_spec.numel()) std::memset(dq, 0, size_t(p.dq_spec.numel()) * es);
    if (p.dk_spec.numel()) std::memset(dk, 0, size_t(p.dk_spec.numel()) * es);
    if (p.dv_spec.numel()) std::memset(dv, 0, size_t(p.dv_spec.numel()) * es);
  }
  Shared sh(p);
  sh.plan = make_plan(p, Bk);
  sh.D = p.D;
  const bool want_dpse = p.pse.kind != PseKind::none && p.dpse_out != nullptr;
  if (want_dpse) {
    sh.dpse_numel = dpse_strides(p.pse, p.pse.kind == PseKind::tensor ? 4 : 2, sh.dst);
    if (p.pse.kind == PseKind::tensor) {
      if (p.pse.dtype == DType::float32) {
        sh.dpse = static_cast<float*>(p.dpse_out);
      } else {
        sh.dpse_own.assign(size_t(sh.dpse_numel), 0.f);
        sh.dpse = sh.dpse_own.data();
      }
      std::memset(sh.dpse, 0, size_t(sh.dpse_numel) * 4);
    } else {
      sh.slope_rows.assign(size_t(sh.plan.C * p.N1 * sh.plan.Tq), SlopeRowSums{});
    }
  }
  if (p.B == 0 || p.N1 == 0 || p.D == 0) {
    if (want_dpse && p.pse.kind == PseKind::slopes) std::memset(p.dpse_out, 0, size_t(sh.dpse_numel) * 4);
    return;
  }
  const size_t rows = size_t(p.N1 * sh.plan.Tq);
  sh.mx.resize(rows);
  sh.isum.resize(rows);
  sh.nb2.resize(rows);
  sh.dsum.resize(rows);
  sh.kind.resize(rows);
  sh.qbad.assign(rows, 0);
  sh.dybad.assign(rows, 0);
  sh.kbase.resize(size_t(p.B));
  sh.Tk = 0;
  for (int64_t b = 0; b < p.B; ++b) {
    sh.kbase[size_t(b)] = sh.Tk;
    sh.Tk += p.skv[size_t(b)];
  }
  sh.kbad.assign(size_t(p.N2 * sh.Tk), 0);
  sh.ucount.assign(size_t(p.B * p.N1), 0);
  sh.uvec.assign(size_t(p.B * p.N1 * p.D), 0.f);
  sh.dq_acc = sh.bdq.get<float>(size_t(sh.plan.C) * rows * size_t(p.D));
  precompute(sh);
  prepare(sh);

  const int nthreads = std::max(1, pool_threads());
  std::vector<std::unique_ptr<W>> workers(static_cast<size_t>(nthreads));
  parallel_for(int64_t(sh.plan.order.size()), [&](int64_t k, int thread) {
    auto& w = workers[size_t(thread)];
    if (!w) w.reset(new W(p, sh));
    w->run_task(sh.plan.tasks[size_t(sh.plan.order[size_t(k)])]);
  });
  finish_dq(sh);
  if (want_dpse && p.pse.kind == PseKind::slopes) finish_slopes(sh);

  if (want_dpse && p.pse.kind == PseKind::tensor && p.pse.dtype != DType::float32) {
    const int64_t n = sh.dpse_numel, chunk = 1 << 16;
    parallel_for(ceil_div(n, chunk), [&](int64_t t, int) {
      const int64_t e0 = t * chunk, e1 = std::min(n, e0 + chunk);
      store_row_f32(p.dpse_out, p.pse.dtype, e0, sh.dpse + e0, e1 - e0);
    });
  }
}

// The whole backward with the fp32 engine E.
template <class E>
void backward(const Problem& p) {
  backward_with<Worker<E>>(p, E::kBk, gemm_dsum<E>);
}

}  // namespace bwd
}  // namespace SA_NS
}  // namespace speedattn
