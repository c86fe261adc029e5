// The reference backward (SPEC §9): plain loops, float64 accumulation, no SIMD, no threads.
//
// For each sequence b and kv head g, K and V (S2 x D) are converted to double once; dK and
// dV of (b, g) accumulate in double over the G query heads n of the group and all their rows,
// then are rounded once. Per query row i (O(S2) scratch):
//   x[j]      logits as in the forward; P = exp(x - max) / sum with the SAVED max / sum
//             (p.smax_in / p.ssum_in) at KEPT positions only
//   rows whose saved max is -FLT_MAX are fully masked rows (SPEC §4): with p.invalid_line
//             they contribute nothing, else ("uniform") P = 1 / sum at EVERY key and they
//             only feed dV (their logits are constants: dS = 0)
//   Dsum      sum_d dy[i,d] * out[i,d], out = the stored, rounded attention_in (p.out)
//   P'        P * keep / keep_prob;  dV[j] += P' dy[i]
//   dP        (dy[i] . V[j]) * keep / keep_prob (0 where dropped)
//   dS        P * (dP - Dsum) at kept positions; masked positions contribute nothing (their
//             logit is the constant -FLT_MAX, so it has no gradient w.r.t. q, k or pse)
//   dQ[i]     scale * sum_j dS K[j] (rounded once per row);  dK[j] += scale * dS q[i]
// Non-finite inputs (docs/semantics.md "Non-finite inputs"): every product term whose weight
// (P' for dV, dS for dQ / dK / dpse) is exactly 0 is omitted, and a kept position with P = 0
// (a -inf logit) contributes nothing at all, so masked, dropped and -inf positions never
// multiply a non-finite q, k, v or dy (no 0 * Inf); everything else is IEEE arithmetic.
//   dpse      pse_type 1: scale * dS, pse_type 0: dS, accumulated into the element of the
//             (contiguous, pse-shaped) dpse that position reads: broadcast dimensions sum,
//             the compressed ALiBi form accumulates into the cell pse_tensor_index maps to;
//             pse_type 2/3: d/dslope = -sum dS * distance, evaluated per row with the distances
//             centred on their P-weighted mean (core/slope_grad.h, finding F13), summed over b
//             for a (N1,) slope.
// Fully masked rows under p.invalid_line contribute nothing. Every output is zeroed
// first (rows of empty sequences, TND tokens outside every sequence stay 0).
#include <algorithm>
#include <cmath>
#include <vector>

#include "api/dispatch.h"
#include "core/semantics.h"
#include "core/slope_grad.h"
#include "reference/reference_rows.h"

namespace speedattn {

namespace {

// Contiguous element strides of pse's shape, mapped right-aligned onto `want` logical
// dimensions ((b, n, i, j) for a tensor, (b, n) for slopes); extent-1 dimensions (broadcast)
// and missing leading ones get stride 0.
void contiguous_pse_strides(const PseDesc& d, int want, int64_t out[4], int64_t& numel) {
  for (int k = 0; k < 4; ++k) out[k] = 0;
  int64_t run = 1;
  for (int a = d.ndim - 1; a >= 0; --a) {
    const int logical = want - (d.ndim - a);
    if (logical >= 0 && logical < 4) out[logical] = d.shape[a] == 1 ? 0 : run;
    run *= d.shape[a];
  }
  numel = run;
}

}  // namespace

void reference_backward(const Problem& p) {
  using namespace reference;
  void* dq = const_cast<void*>(p.dq.data);
  void* dk = const_cast<void*>(p.dk.data);
  void* dv = const_cast<void*>(p.dv.data);
  zero_output(dq, p.dq_spec);
  zero_output(dk, p.dk_spec);
  zero_output(dv, p.dv_spec);
  const bool want_dpse = p.pse.kind != PseKind::none && p.dpse_out != nullptr;
  const bool want_slopes = want_dpse && p.pse.kind == PseKind::slopes;
  if (want_dpse) zero_output(p.dpse_out, p.dpse_spec);

  // dpse addressing: a copy of the problem whose pse strides are those of the contiguous
  // dpse buffer, so pse_tensor_index (including the compressed form) yields dpse indices.
  int64_t dst[4];
  int64_t dpse_numel = 0;
  Problem pd;
  std::vector<double> dpse_acc;
  if (want_dpse) {
    contiguous_pse_strides(p.pse, p.pse.kind == PseKind::tensor ? 4 : 2, dst, dpse_numel);
    dpse_acc.assign(size_t(std::max<int64_t>(dpse_numel, 0)), 0.0);
    if (p.pse.kind == PseKind::tensor) {
      pd = p;
      pd.pse.sb = dst[0];
      pd.pse.sn = dst[1];
      pd.pse.si = dst[2];
      pd.pse.sj = dst[3];
    }
  }

  const int64_t D = p.D;
  std::vector<double> kmat, vmat, x, dk_acc, dv_acc;
  std::vector<double> qrow(static_cast<size_t>(D)), dyrow(static_cast<size_t>(D)), dq_acc(static_cast<size_t>(D));
  std::vector<unsigned char> kept;

  for (int64_t b = 0; b < p.B; ++b) {
    const int64_t sq = p.sq[size_t(b)], skv = p.skv[size_t(b)];
    if (sq == 0 || skv == 0) continue;
    for (int64_t g = 0; g < p.N2; ++g) {
      load_rows(p, p.k, true, b, g, skv, kmat);
      load_rows(p, p.v, true, b, g, skv, vmat);
      dk_acc.assign(size_t(skv * D), 0.0);
      dv_acc.assign(size_t(skv * D), 0.0);
      for (int64_t n = g * p.G; n < (g + 1) * p.G; ++n) {
        for (int64_t i = 0; i < sq; ++i) {
          const int64_t qoff = operand_offset(p, p.q, false, b, n, i);
          for (int64_t d = 0; d < D; ++d) qrow[size_t(d)] = load_as_double(p.q.data, p.dtype, qoff + d);
          row_logits(p, b, n, i, qrow.data(), kmat, x, kept);

          const int64_t srow = stat_row(p, b, n, i) * p.stat_row_stride;
          const double mx = p.smax_in[srow], sum = p.ssum_in[srow];
          const bool fully_masked = p.smax_in[srow] == kMaskedLogit;
          if (fully_masked && p.invalid_line) continue;  // dq row stays 0
          const int64_t dyoff = operand_offset(p, p.dy, false, b, n, i);
          const int64_t ooff = operand_offset(p, p.out, false, b, n, i);
          double dsum = 0.0;
          for (int64_t d = 0; d < D; ++d) {
            dyrow[size_t(d)] = load_as_double(p.dy.data, p.dtype, dyoff + d);
            dsum += dyrow[size_t(d)] * load_as_double(p.out.data, p.dtype, ooff + d);
          }
          std::fill(dq_acc.begin(), dq_acc.end(), 0.0);
          SlopeRowSums slope_row;

          for (int64_t j = 0; j < skv; ++j) {
            if (!fully_masked && !kept[size_t(j)]) continue;  // masked: contributes nothing
            const double pj = fully_masked ? 1.0 / sum : std::exp(x[size_t(j)] - mx) / sum;
            if (pj == 0.0) continue;  // contributes to nothing
            double drop = 1.0;        // keep / keep_prob
            if (p.dropout) drop = dropout_kept(p, b, n, i, j) ? 1.0 / p.keep_prob : 0.0;
            const double* vr = vmat.data() + j * D;
            double* dvr = dv_acc.data() + j * D;
            const double pp = drop == 0.0 ? 0.0 : pj * drop;  // dropped: P' = 0 exactly
            double dpp = 0.0;
            for (int64_t d = 0; d < D; ++d) {
              if (pp != 0.0) dvr[d] += pp * dyrow[size_t(d)];
              dpp += dyrow[size_t(d)] * vr[d];
            }
            if (fully_masked) continue;  // uniform row: dS = 0
            const double ds = pj * ((drop == 0.0 ? 0.0 : dpp * drop) - dsum);
            if (want_slopes) slope_row.add(pj, ds, alibi_distance(p, i, j));  // every P > 0 key
            if (ds == 0.0) continue;
            const double sds = p.scale * ds;
            const double* kr = kmat.data() + j * D;
            double* dkr = dk_acc.data() + j * D;
            for (int64_t d = 0; d < D; ++d) {
              dq_acc[size_t(d)] += sds * kr[d];
              dkr[d] += sds * qrow[size_t(d)];
            }
            if (want_dpse && !want_slopes)
              dpse_acc[size_t(pse_tensor_index(pd, b, n, i, j))] += p.pse.pse_type == 1 ? sds : ds;
          }
          if (want_slopes) dpse_acc[size_t(b * dst[0] + n * dst[1])] += slope_row.grad();
          const int64_t dqoff = operand_offset(p, p.dq, false, b, n, i);
          for (int64_t d = 0; d < D; ++d) store_rounded(dq, p.dtype, dqoff + d, dq_acc[size_t(d)]);
        }
      }
      for (int64_t j = 0; j < skv; ++j) {
        const int64_t dkoff = operand_offset(p, p.dk, true, b, g, j);
        const int64_t dvoff = operand_offset(p, p.dv, true, b, g, j);
        for (int64_t d = 0; d < D; ++d) {
          store_rounded(dk, p.dtype, dkoff + d, dk_acc[size_t(j * D + d)]);
          store_rounded(dv, p.dtype, dvoff + d, dv_acc[size_t(j * D + d)]);
        }
      }
    }
  }

  if (want_dpse) {
    for (int64_t e = 0; e < dpse_numel; ++e) store_rounded(p.dpse_out, p.pse.dtype, e, dpse_acc[size_t(e)]);
  }
}

}  // namespace speedattn
