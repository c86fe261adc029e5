// A standalone user of the installed speedattn library (find_package(speedattn) ->
// speedattn::speedattn): one grouped-query, right-down causal attention forward and backward
// in float32, checked against naive float64 loops written here. Exits 1 on a mismatch.
//
// Problem: layout BNSD, B=1, N1=4 query heads sharing N2=2 kv heads, S1=12 queries attending
// to S2=16 keys, D=8, sparse_mode=3 (query row i sees keys j <= i + S2 - S1; the (2048, 2048)
// mask is only the template that switches the pattern on), scale 1/sqrt(D).
#include <speedattn/speedattn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

namespace {

constexpr int64_t B = 1, N1 = 4, N2 = 2, G = N1 / N2, S1 = 12, S2 = 16, D = 8;

// Element (b, n, s, d) of a contiguous BNSD tensor with N heads and S rows.
inline int64_t at(int64_t N, int64_t S, int64_t b, int64_t n, int64_t s, int64_t d) {
  return ((b * N + n) * S + s) * D + d;
}

bool kept(int64_t i, int64_t j) { return j <= i + (S2 - S1); }  // sparse_mode 3

double max_abs_diff(const float* got, const std::vector<double>& want) {
  double e = 0;
  for (size_t x = 0; x < want.size(); ++x) e = std::max(e, std::fabs(double(got[x]) - want[x]));
  return e;
}

}  // namespace

int main() {
  using speedattn::DType;
  using speedattn::TensorView;

  std::printf("speedattn %s; forward kernel %s, backward kernel %s\n", speedattn::version().c_str(),
              speedattn::forward_kernel_for(DType::float32).c_str(),
              speedattn::backward_kernel_for(DType::float32).c_str());

  // ---- inputs
  std::mt19937 gen(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> q(B * N1 * S1 * D), k(B * N2 * S2 * D), v(B * N2 * S2 * D), dy(B * N1 * S1 * D);
  for (auto* t : {&q, &k, &v, &dy})
    for (float& x : *t) x = normal(gen);
  std::vector<uint8_t> causal_template(2048 * 2048);  // triu(ones(2048, 2048), diagonal=1)
  for (int64_t i = 0; i < 2048; ++i)
    for (int64_t j = 0; j < 2048; ++j) causal_template[i * 2048 + j] = j > i ? 1 : 0;

  const TensorView tq = TensorView::contiguous(q.data(), DType::float32, {B, N1, S1, D});
  const TensorView tk = TensorView::contiguous(k.data(), DType::float32, {B, N2, S2, D});
  const TensorView tv = TensorView::contiguous(v.data(), DType::float32, {B, N2, S2, D});
  const TensorView tdy = TensorView::contiguous(dy.data(), DType::float32, {B, N1, S1, D});

  speedattn::Options opt;
  opt.head_num = N1;
  opt.input_layout = "BNSD";
  opt.scale = 1.0 / std::sqrt(double(D));
  opt.sparse_mode = 3;
  opt.atten_mask = TensorView::contiguous(causal_template.data(), DType::uint8, {2048, 2048});

  // ---- the library: forward, then backward from the saved state
  speedattn::ForwardResult f = speedattn::forward(tq, tk, tv, opt);
  speedattn::ForwardSaved saved{f.softmax_max.view(), f.softmax_sum.view(), f.attention_out.view(),
                                f.seed, f.offset, f.numels};
  speedattn::BackwardResult g = speedattn::backward(tq, tk, tv, tdy, opt, saved);
  const float* out = static_cast<const float*>(f.attention_out.data());
  const float* smax = static_cast<const float*>(f.softmax_max.data());
  const float* ssum = static_cast<const float*>(f.softmax_sum.data());

  // ---- naive float64 loops (the formulas of docs/semantics.md sections 1 and 9)
  const double scale = opt.scale;
  std::vector<double> r_out(q.size(), 0.0), r_max(B * N1 * S1), r_sum(B * N1 * S1);
  std::vector<double> r_dq(q.size(), 0.0), r_dk(k.size(), 0.0), r_dv(v.size(), 0.0);
  std::vector<double> P(S2), dP(S2);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N1; ++n) {
      const int64_t kvh = n / G;  // the kv head of query head n
      for (int64_t i = 0; i < S1; ++i) {
        double mx = -HUGE_VAL;
        for (int64_t j = 0; j < S2; ++j) {
          double x = -3.4028234663852886e38;  // -FLT_MAX: masked
          if (kept(i, j)) {
            double qk = 0;
            for (int64_t d = 0; d < D; ++d) qk += double(q[at(N1, S1, b, n, i, d)]) * k[at(N2, S2, b, kvh, j, d)];
            x = scale * qk;
          }
          P[j] = x;
          mx = std::max(mx, x);
        }
        double sum = 0;
        for (int64_t j = 0; j < S2; ++j) sum += std::exp(P[j] - mx);
        for (int64_t j = 0; j < S2; ++j) P[j] = std::exp(P[j] - mx) / sum;
        r_max[(b * N1 + n) * S1 + i] = mx;
        r_sum[(b * N1 + n) * S1 + i] = sum;
        // forward output
        for (int64_t j = 0; j < S2; ++j)
          for (int64_t d = 0; d < D; ++d) r_out[at(N1, S1, b, n, i, d)] += P[j] * v[at(N2, S2, b, kvh, j, d)];
        // backward: Dsum uses the library's stored (rounded) output, as the operator does
        double dsum = 0;
        for (int64_t d = 0; d < D; ++d) dsum += double(dy[at(N1, S1, b, n, i, d)]) * out[at(N1, S1, b, n, i, d)];
        for (int64_t j = 0; j < S2; ++j) {
          double dpj = 0;
          for (int64_t d = 0; d < D; ++d) dpj += double(dy[at(N1, S1, b, n, i, d)]) * v[at(N2, S2, b, kvh, j, d)];
          const double ds = P[j] * (dpj - dsum);  // 0 where masked (P = 0)
          for (int64_t d = 0; d < D; ++d) {
            r_dv[at(N2, S2, b, kvh, j, d)] += P[j] * dy[at(N1, S1, b, n, i, d)];
            r_dq[at(N1, S1, b, n, i, d)] += scale * ds * k[at(N2, S2, b, kvh, j, d)];
            r_dk[at(N2, S2, b, kvh, j, d)] += scale * ds * q[at(N1, S1, b, n, i, d)];
          }
        }
      }
    }

  // ---- compare (float32 accumulation vs float64: a few 1e-6 expected)
  double e_stat = 0;
  for (int64_t r = 0; r < B * N1 * S1; ++r)
    for (int c = 0; c < 8; ++c) {  // 8 identical values per row
      e_stat = std::max(e_stat, std::fabs(smax[r * 8 + c] - r_max[r]));
      e_stat = std::max(e_stat, std::fabs(ssum[r * 8 + c] - r_sum[r]) / r_sum[r]);
    }
  const double errs[] = {
      max_abs_diff(out, r_out), e_stat,
      max_abs_diff(static_cast<const float*>(g.dq.data()), r_dq),
      max_abs_diff(static_cast<const float*>(g.dk.data()), r_dk),
      max_abs_diff(static_cast<const float*>(g.dv.data()), r_dv)};
  const char* names[] = {"out", "softmax stats", "dq", "dk", "dv"};
  constexpr double kTol = 1e-4;
  bool ok = true;
  for (int x = 0; x < 5; ++x) {
    const bool good = errs[x] <= kTol;
    ok = ok && good;
    std::printf("  %-14s max error %.2e  %s\n", names[x], errs[x], good ? "ok" : "MISMATCH");
  }

  // ---- errors are typed exceptions raised before any work
  try {
    speedattn::Options bad = opt;
    bad.head_num = 3;  // N1 is 4
    speedattn::forward(tq, tk, tv, bad);
    std::printf("  expected a ValueError for head_num=3\n");
    ok = false;
  } catch (const speedattn::ValueError& e) {
    std::printf("  ValueError as expected: %s\n", e.what());
  }

  std::printf("%s\n", ok ? "example OK" : "example FAILED");
  return ok ? 0 : 1;
}
