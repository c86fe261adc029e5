// Helpers shared by the reference forward and backward (src/reference only): the float64
// logits of one query row, a double -> dtype store that rounds exactly once, operand
// loading and output zeroing. Plain loops; no SIMD, no threads.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/problem.h"
#include "core/semantics.h"

namespace speedattn {
namespace reference {

inline size_t element_size(DType dt) {
  switch (dt) {
    case DType::float16:
    case DType::bfloat16: return 2;
    case DType::float32: return 4;
    case DType::boolean:
    case DType::uint8: return 1;
    case DType::int64:
    case DType::float64: return 8;
  }
  return 0;
}

// Zeroes a contiguous caller-owned output of `spec` (a no-op for nullptr or an empty spec).
inline void zero_output(void* data, const OutputSpec& spec) {
  if (!data || spec.shape.empty()) return;
  int64_t n = 1;
  for (int64_t e : spec.shape) n *= e;
  if (n > 0) std::memset(data, 0, size_t(n) * element_size(spec.dtype));
}

// x rounded once to float, with round-to-odd (the bit pattern whose last bit is 1 among the
// two floats around x when x is inexact). Rounding that result to nearest-even in a format
// with at most 22 significand bits equals rounding x directly (float16 / bfloat16 here).
inline float round_to_odd_float(double x) {
  float f = static_cast<float>(x);
  if (!std::isfinite(f) || static_cast<double>(f) == x) return f;
  if ((float_bits(f) & 1u) == 0) f = std::nextafter(f, x > static_cast<double>(f) ? HUGE_VALF : -HUGE_VALF);
  return f;
}

// Store x (float64) rounded once to dt (float64: stored exactly).
inline void store_rounded(void* base, DType dt, int64_t idx, double x) {
  if (dt == DType::float32 || dt == DType::float64) {
    store_from_double(base, dt, idx, x);
  } else {
    store_from_float(base, dt, idx, round_to_odd_float(x));
  }
}

// Loads (exactly, float64 inputs included) `count` consecutive elements of operand `o` at (b, n, i, 0..D) for rows i in
// [0, count) into dst (row-major, count x D doubles).
inline void load_rows(const Problem& p, const Operand& o, bool kv_side, int64_t b, int64_t n, int64_t count,
                      std::vector<double>& dst) {
  dst.assign(size_t(count * p.D), 0.0);
  for (int64_t r = 0; r < count; ++r) {
    const int64_t off = operand_offset(p, o, kv_side, b, n, r);
    for (int64_t d = 0; d < p.D; ++d) dst[size_t(r * p.D + d)] = load_as_double(o.data, p.dtype, off + d);
  }
}

// The logits x[0..skv) of row i of (b, n) (SPEC §1 steps 1-3) in float64: kept positions
// via semantics.h, masked ones kMaskedLogit. q: D doubles; kmat: skv x D doubles of kv head
// n / G. kept[j] = 1 iff (i, j) is kept. Returns true iff some position is kept.
inline bool row_logits(const Problem& p, int64_t b, int64_t n, int64_t i, const double* q, const std::vector<double>& kmat,
                       std::vector<double>& x, std::vector<unsigned char>& kept) {
  const int64_t skv = p.skv[size_t(b)];
  x.assign(size_t(skv), static_cast<double>(kMaskedLogit));
  kept.assign(size_t(skv), 0);
  const RowKeys rk = row_keys(p, b, i);
  bool any = false;
  for (int64_t j = rk.first(); j < rk.last_end(); ++j) {
    if (!rk.contains(j) || !explicit_mask_keeps(p, b, n, i, j)) continue;
    const double* kr = kmat.data() + j * p.D;
    double qk = 0.0;
    for (int64_t d = 0; d < p.D; ++d) qk += q[d] * kr[d];
    x[size_t(j)] = logit(p, b, n, i, j, qk);
    kept[size_t(j)] = 1;
    any = true;
  }
  return any;
}

}  // namespace reference
}  // namespace speedattn
