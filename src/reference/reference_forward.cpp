// The reference forward (SPEC §1, §3-§8): plain loops, float64 accumulation, every
// feature, no SIMD, no threads. The oracle every kernel is checked against.
//
// Memory: O(S2 * D) per (b, kv head) (K and V converted to double once) plus O(S2) per
// query row; never O(S1 * S2). Rows are streamed one at a time:
//   logits x[j] (masked: -FLT_MAX) -> max, sum = sum exp(x - max) -> P = exp(x - max) / sum
//   -> P' = P * keep / keep_prob -> out = P' V, rounded once to the input dtype.
// A row with no kept position gives max = -FLT_MAX, sum = S2, out = mean of V ("uniform"),
// or with p.invalid_line: out = 0, max = -FLT_MAX, sum = +FLT_MAX (SPEC §4).
// Outputs: p.out (contiguous, zeroed first so TND tokens outside every sequence are 0),
// p.smax_out / p.ssum_out (8 identical floats per stats row; zeroed first as well).
#include <algorithm>
#include <cmath>
#include <vector>

#include "api/dispatch.h"
#include "core/semantics.h"
#include "reference/reference_rows.h"

namespace speedattn {

void reference_forward(const Problem& p) {
  using namespace reference;
  void* out = const_cast<void*>(p.out.data);
  zero_output(out, p.out_spec);
  zero_output(p.smax_out, p.stat_spec);
  zero_output(p.ssum_out, p.stat_spec);

  const int64_t D = p.D;
  std::vector<double> kmat, vmat, x;
  std::vector<double> qrow(static_cast<size_t>(D)), acc(static_cast<size_t>(D));
  std::vector<unsigned char> kept;

  for (int64_t b = 0; b < p.B; ++b) {
    const int64_t sq = p.sq[size_t(b)], skv = p.skv[size_t(b)];
    if (sq == 0) continue;  // validation guarantees skv > 0 when sq > 0
    for (int64_t g = 0; g < p.N2; ++g) {
      load_rows(p, p.k, true, b, g, skv, kmat);
      load_rows(p, p.v, true, b, g, skv, vmat);
      for (int64_t n = g * p.G; n < (g + 1) * p.G; ++n) {
        for (int64_t i = 0; i < sq; ++i) {
          const int64_t qoff = operand_offset(p, p.q, false, b, n, i);
          for (int64_t d = 0; d < D; ++d) qrow[size_t(d)] = load_as_double(p.q.data, p.dtype, qoff + d);
          const bool any = row_logits(p, b, n, i, qrow.data(), kmat, x, kept);

          const int64_t srow = stat_row(p, b, n, i) * 8;
          const int64_t ooff = operand_offset(p, p.out, false, b, n, i);
          if (!any && p.invalid_line) {
            for (int k = 0; k < 8; ++k) {
              p.smax_out[srow + k] = kMaskedLogit;
              p.ssum_out[srow + k] = kInvalidSum;
            }
            for (int64_t d = 0; d < D; ++d) store_rounded(out, p.dtype, ooff + d, 0.0);
            continue;
          }

          double mx = -HUGE_VAL;
          for (int64_t j = 0; j < skv; ++j) mx = std::max(mx, x[size_t(j)]);
          double sum = 0.0;
          for (int64_t j = 0; j < skv; ++j) sum += std::exp(x[size_t(j)] - mx);

          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t j = 0; j < skv; ++j) {
            double pj = std::exp(x[size_t(j)] - mx) / sum;
            if (p.dropout) pj = dropout_kept(p, b, n, i, j) ? pj / p.keep_prob : 0.0;
            if (pj == 0.0) continue;
            const double* vr = vmat.data() + j * D;
            for (int64_t d = 0; d < D; ++d) acc[size_t(d)] += pj * vr[d];
          }
          for (int64_t d = 0; d < D; ++d) store_rounded(out, p.dtype, ooff + d, acc[size_t(d)]);
          const float fmx = static_cast<float>(mx), fsum = static_cast<float>(sum);
          for (int k = 0; k < 8; ++k) {
            p.smax_out[srow + k] = fmx;
            p.ssum_out[srow + k] = fsum;
          }
        }
      }
    }
  }
}

}  // namespace speedattn
