// The slope gradient of one query row (pse_type 2/3, SPEC §9; finding F13 in
// docs/reliability.md), shared by the reference and the fast backward.
//
// With the logit x_j = scale * qk_j - slope * dist_j (dist_j = |j + kv_start - i - q_start|,
// or its square root for pse_type 3), the row's contribution to d(loss)/d(slope) is
//     -sum_j dS_j dist_j                                   (kept keys j)
// and, because sum_j dS_j = 0 in exact arithmetic (dS = P (dP - Dsum), Dsum = sum_j P_j dP_j;
// with dropout dP already carries keep / keep_prob and P does not), equally
//     -sum_j dS_j (dist_j - c),   c = sum_j P_j dist_j / sum_j P_j   (the P-weighted mean).
// The second form is the one evaluated. The first is ill-conditioned on long rows: its terms
// are ~mean(dist) times larger than the result, and an error of the form dS_j += delta P_j
// (P recomputed from float32 statistics: a scale error; Dsum from the stored, rounded out: an
// offset) moves it by delta * sum_j P_j dist_j, amplified ~S2 times. In the centred form that
// error contributes delta * sum_j P_j (dist_j - c) = 0 exactly (c uses the same P).
//
// The four sums below may be accumulated over any split of the row's keys (the fast backward
// splits them across kv-block tasks) and added in a fixed order; grad() then forms
//     -(sum dS dist - c * sum dS)  =  -sum_j dS_j (dist_j - c)
// (identical in real arithmetic). c is not needed before the keys are visited, and the
// result does not depend on how the keys were split beyond the rounding of the sums.
#pragma once

namespace speedattn {

struct SlopeRowSums {
  double ds_dist = 0.0;  // sum_j dS_j dist_j
  double ds = 0.0;       // sum_j dS_j        (0 in exact arithmetic)
  double p_dist = 0.0;   // sum_j P_j dist_j  (P without the dropout factor)
  double p = 0.0;        // sum_j P_j

  void add(double pj, double dsj, double dist) {
    ds_dist += dsj * dist;
    ds += dsj;
    p_dist += pj * dist;
    p += pj;
  }
  void add(const SlopeRowSums& o) {
    ds_dist += o.ds_dist;
    ds += o.ds;
    p_dist += o.p_dist;
    p += o.p;
  }
  // The row's d(loss)/d(slope). A row without a key of P > 0 has dS = 0 everywhere: 0.
  double grad() const { return p == 0.0 ? 0.0 : -(ds_dist - p_dist / p * ds); }
};

}  // namespace speedattn
