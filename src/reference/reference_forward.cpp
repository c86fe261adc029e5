// The reference forward (SPEC §1, §3-§8): plain loops, float64 accumulation, every
// feature, no SIMD, no threads. The oracle every kernel is checked against.
//
// Memory: O(S2 * D) per (b, kv head) (K and V converted to double once) plus O(S2) per
// query row; never O(S1 * S2). Rows are streamed one at a time, over the KEPT positions j:
//   logits x[j] -> max = max(-FLT_MAX, x[j]), NaN if any x[j] is NaN ("NaN-sticky")
//   -> sum = sum exp(x - max) -> P = exp(x - max) / sum -> P' = P * keep / keep_prob
//   -> out = sum of P'[j] V[j] over the terms with P'[j] != 0, rounded once to the input dtype.
// Masked and dropped positions never touch V (no 0 * Inf / 0 * NaN). IEEE arithmetic does
// the rest: a NaN logit makes the row NaN (max, sum, out); a +inf logit gives max = +inf and
// sum = out = NaN (inf - inf); a -inf logit has P = 0 (like a masked position).
// A row whose sum is 0 (no kept position, or every kept logit -inf) gives max = -FLT_MAX,
// sum = S2, out = mean of keep / keep_prob * V over all S2 keys ("uniform"; NaN/Inf in V reach
// it by definition), or with p.invalid_line: out = 0, max = -FLT_MAX, sum = +FLT_MAX (SPEC §4).
// docs/semantics.md "Non-finite inputs".
// Outputs: p.out (contiguous, zeroed first so TND tokens outside every sequence are 0),
// p.smax_out / p.ssum_out (8 identical floats per stats row; zeroed first as well).
#include <algorithm>
#include <cmath>
#include <limits>
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
          // NaN-sticky max over the kept logits, floored at -FLT_MAX (the masked logit)
          double mx = static_cast<double>(kMaskedLogit);
          for (int64_t j = 0; any && j < skv; ++j) {
            if (!kept[size_t(j)]) continue;
            const double xj = x[size_t(j)];
            if (std::isnan(xj) || std::isnan(mx)) mx = std::numeric_limits<double>::quiet_NaN();
            else if (xj > mx) mx = xj;
          }
          double sum = 0.0;
          for (int64_t j = 0; any && j < skv; ++j)
            if (kept[size_t(j)]) sum += std::exp(x[size_t(j)] - mx);
          std::fill(acc.begin(), acc.end(), 0.0);
          if (sum == 0.0) {  // no kept position (or only -inf logits): a fully masked row
            for (int k = 0; k < 8; ++k) {
              p.smax_out[srow + k] = kMaskedLogit;
              p.ssum_out[srow + k] = p.invalid_line ? kInvalidSum : static_cast<float>(skv);
            }
            if (!p.invalid_line) {  // uniform: mean of keep / keep_prob * V over all keys
              const double pu = 1.0 / static_cast<double>(skv) / p.keep_prob;
              for (int64_t j = 0; j < skv; ++j) {
                if (p.dropout && !dropout_kept(p, b, n, i, j)) continue;
                const double* vr = vmat.data() + j * D;
                for (int64_t d = 0; d < D; ++d) acc[size_t(d)] += pu * vr[d];
              }
            }
            for (int64_t d = 0; d < D; ++d) store_rounded(out, p.dtype, ooff + d, acc[size_t(d)]);
            continue;
          }

          for (int64_t j = 0; j < skv; ++j) {
            if (!kept[size_t(j)]) continue;
            double pj = std::exp(x[size_t(j)] - mx) / sum;
            if (p.dropout) pj = dropout_kept(p, b, n, i, j) ? pj / p.keep_prob : 0.0;
            if (pj == 0.0) continue;  // zero weight: the term is omitted (never 0 * Inf)
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
