// The element-level semantics of SPEC §1, §3-§7, shared by the reference backend and every
// kernel. Scalar and obviously correct; kernels vectorise the same formulas and must agree
// with these functions (dropout bit for bit, masks exactly).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/half.h"
#include "common/philox.h"
#include "core/problem.h"

namespace speedattn {

constexpr float kMaskedLogit = -3.4028234663852886e38f;  // -FLT_MAX: the logit of a masked position
constexpr float kInvalidSum = 3.4028234663852886e38f;    // +FLT_MAX: softmax_sum of an invalid line

// Read element `idx` of a float16 / bfloat16 / float32 / float64 buffer, exactly.
inline double load_as_double(const void* base, DType dt, int64_t idx) {
  switch (dt) {
    case DType::float16: return to_float(static_cast<const fp16*>(base)[idx]);
    case DType::bfloat16: return to_float(static_cast<const bf16*>(base)[idx]);
    case DType::float64: return static_cast<const double*>(base)[idx];
    default: return static_cast<const float*>(base)[idx];
  }
}
// Read element `idx` as float (float64 buffers are rounded: kernels never see float64).
inline float load_as_float(const void* base, DType dt, int64_t idx) { return float(load_as_double(base, dt, idx)); }

// Round `x` once to dt and store element `idx` (float16/bfloat16 go through float32 first:
// a double -> float -> half double rounding; x is a float32-accumulated value for kernels).
inline void store_from_double(void* base, DType dt, int64_t idx, double x) {
  switch (dt) {
    case DType::float16: static_cast<fp16*>(base)[idx] = to_fp16(float(x)); break;
    case DType::bfloat16: static_cast<bf16*>(base)[idx] = to_bf16(float(x)); break;
    case DType::float64: static_cast<double*>(base)[idx] = x; break;
    default: static_cast<float*>(base)[idx] = float(x); break;
  }
}
inline void store_from_float(void* base, DType dt, int64_t idx, float x) { store_from_double(base, dt, idx, x); }

// Element offset of (b, n, i, 0) of an operand.
inline int64_t operand_offset(const Problem& p, const Operand& o, bool kv_side, int64_t b, int64_t n, int64_t i) {
  const int64_t row0 = kv_side ? p.row0_kv[size_t(b)] : p.row0_q[size_t(b)];
  return b * o.sb + (row0 + i) * o.ss + n * o.sn;
}

// Keys [lo, hi) of row i that the band/causal part keeps, plus keys [0, prefix_hi).
// Row i keeps j iff (lo <= j < hi || j < prefix_hi) && explicit mask keeps (i, j).
struct RowKeys {
  int64_t lo = 0, hi = 0;     // band interval, clamped to [0, skv]
  int64_t prefix_hi = 0;      // prefix interval [0, prefix_hi), clamped to [0, skv]
  bool contains(int64_t j) const { return (j >= lo && j < hi) || j < prefix_hi; }
  int64_t first() const { return prefix_hi > 0 ? 0 : lo; }                 // smallest candidate key
  int64_t last_end() const { return std::max(hi, prefix_hi); }             // one past the largest
  bool empty() const { return first() >= last_end(); }
};

inline RowKeys row_keys(const Problem& p, int64_t b, int64_t i) {
  const SeqBand& sb = p.band[size_t(b)];
  const int64_t skv = p.skv[size_t(b)];
  RowKeys r;
  if (!sb.banded) {
    r.lo = 0;
    r.hi = skv;
    return r;
  }
  // offsets may be near +-2^31 and i up to 2^19: int64 cannot overflow here
  r.lo = std::clamp<int64_t>(i + sb.lo_off, 0, skv);
  r.hi = std::clamp<int64_t>(i + sb.hi_off + 1, 0, skv);
  if (r.hi < r.lo) r.hi = r.lo;
  r.prefix_hi = std::clamp<int64_t>(sb.prefix, 0, skv);
  return r;
}

// True iff the explicit mask (if any) keeps (b, n, i, j).
inline bool explicit_mask_keeps(const Problem& p, int64_t b, int64_t n, int64_t i, int64_t j) {
  if (!p.mask.data) return true;
  return p.mask.data[b * p.mask.sb + n * p.mask.sn + i * p.mask.si + j * p.mask.sj] == 0;
}

inline bool position_kept(const Problem& p, int64_t b, int64_t n, int64_t i, int64_t j) {
  return row_keys(p, b, i).contains(j) && explicit_mask_keeps(p, b, n, i, j);
}

// Element index into the user's pse tensor for (b, n, i, j) (pse_type 0/1), SPEC §5.
// For the compressed 1024-row form, rows below the stored block read along their diagonal;
// the index is only meaningful at kept (causal) positions — callers must not read elsewhere.
inline int64_t pse_tensor_index(const Problem& p, int64_t b, int64_t n, int64_t i, int64_t j) {
  const PseDesc& d = p.pse;
  int64_t row = i, col = j;
  if (d.compressed) {
    const int64_t S1 = p.sq[size_t(b)], S2 = p.skv[size_t(b)];
    const int64_t t = S1 - 1024;
    if (i >= t) {
      row = i - t;
    } else {
      row = i % 1024;
      col = j - i + row + (S2 - 1024);
    }
  }
  return b * d.sb + n * d.sn + row * d.si + col * d.sj;
}

// pse_type 2/3 distance term: |(j + kv_start) - (i + q_start)|, or its square root.
inline double alibi_distance(const Problem& p, int64_t i, int64_t j) {
  const double dist = std::fabs(double((j + p.pse.kv_start) - (i + p.pse.q_start)));
  return p.pse.pse_type == 3 ? std::sqrt(dist) : dist;
}

inline double alibi_slope(const Problem& p, int64_t b, int64_t n) {
  return double(static_cast<const float*>(p.pse.data)[b * p.pse.sb + n * p.pse.sn]);
}

// The logit x[i,j] (SPEC §1 step 2) of a KEPT position, from qk = sum_d q*k, in double.
inline double logit(const Problem& p, int64_t b, int64_t n, int64_t i, int64_t j, double qk) {
  switch (p.pse.kind) {
    case PseKind::none: return p.scale * qk;
    case PseKind::tensor: {
      const double bias = load_as_double(p.pse.data, p.pse.dtype, pse_tensor_index(p, b, n, i, j));
      return p.pse.pse_type == 1 ? p.scale * (qk + bias) : p.scale * qk + bias;
    }
    case PseKind::slopes: return p.scale * qk - alibi_slope(p, b, n) * alibi_distance(p, i, j);
  }
  return 0.0;
}

// Dropout element index e of (b, n, i, j), SPEC §7.
inline uint64_t dropout_index(const Problem& p, int64_t b, int64_t n, int64_t i, int64_t j) {
  const int64_t sq = p.sq[size_t(b)], skv = p.skv[size_t(b)];
  return uint64_t(p.drop_base[size_t(b)] + (n * sq + i) * skv + j);
}

inline bool dropout_kept(const Problem& p, int64_t b, int64_t n, int64_t i, int64_t j) {
  if (!p.dropout) return true;
  return dropout_keep(uint64_t(p.rng.seed), uint64_t(p.rng.offset), dropout_index(p, b, n, i, j), p.keep_threshold);
}

// Row index (in rows of 8 floats) of the softmax statistics of (b, n, i).
inline int64_t stat_row(const Problem& p, int64_t b, int64_t n, int64_t i) {
  return p.stat_base[size_t(b)] + n * p.stat_sn[size_t(b)] + i;
}

}  // namespace speedattn
