// Forward kernel timing harness: every registered forward kernel (isa <= detected) on one
// shape, validated against the previous kernel of the list first (max abs diff printed),
// then timed (median / min of N runs). Build: see dev/build_fwd_only.sh (pass this file).
// Usage: bench_fwd dtype(bf16|fp16|fp32) B N1 N2 S1 S2 D mode reps [kernel-substring]
// Env: BENCH_THREADS=n; BENCH_PSE=2|3 (ALiBi slopes, that pse_type) or 0|1 (a (1,N1,S1,S2) bias).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>
#include <ctime>

#include "api/dispatch.h"
#include "api/validate.h"
#include "common/half.h"
#include "speedattn/speedattn.h"

namespace sa = speedattn;
int main(int argc, char** argv) {
  if (argc < 10) { std::fprintf(stderr, "usage\n"); return 1; }
  const std::string dts = argv[1];
  const sa::DType dt = dts == "bf16" ? sa::DType::bfloat16 : dts == "fp16" ? sa::DType::float16 : sa::DType::float32;
  const int64_t B = atol(argv[2]), N1 = atol(argv[3]), N2 = atol(argv[4]), S1 = atol(argv[5]), S2 = atol(argv[6]),
                D = atol(argv[7]), mode = atol(argv[8]);
  const int reps = atoi(argv[9]);
  const std::string only = argc > 10 ? argv[10] : "";
  const size_t es = dt == sa::DType::float32 ? 4 : 2;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  auto fill = [&](std::vector<uint8_t>& b, int64_t n) {
    b.resize(size_t(n) * es);
    for (int64_t e = 0; e < n; ++e) {
      const float x = nd(rng);
      if (es == 4) std::memcpy(b.data() + e * 4, &x, 4);
      else {
        uint16_t h = dt == sa::DType::bfloat16 ? sa::to_bf16(x).bits : sa::to_fp16(x).bits;
        std::memcpy(b.data() + e * 2, &h, 2);
      }
    }
  };
  std::vector<uint8_t> q, k, v, mask;
  fill(q, B * N1 * S1 * D);
  fill(k, B * N2 * S2 * D);
  fill(v, B * N2 * S2 * D);
  sa::Options o;
  o.head_num = N1;
  o.input_layout = "BNSD";
  o.scale = 1.0 / std::sqrt(double(D));
  o.sparse_mode = mode;
  if (mode >= 2) {
    mask.assign(2048 * 2048, 0);
    for (int i = 0; i < 2048; ++i)
      for (int j = i + 1; j < 2048; ++j) mask[size_t(i) * 2048 + j] = 1;
    o.atten_mask = sa::TensorView::contiguous(mask.data(), sa::DType::uint8, {2048, 2048});
  }
  // BENCH_PSE=2|3: ALiBi slopes 2^(-8(n+1)/N1) with that pse_type; BENCH_PSE=0|1: an fp32
  // (1, N1, S1, S2) ALiBi bias tensor with that pse_type.
  std::vector<float> slopes, pbias;
  std::vector<uint8_t> pbias_dt;
  if (const char* ps = std::getenv("BENCH_PSE"); ps && *ps) {
    const int pt = atoi(ps);
    slopes.resize(size_t(N1));
    for (int64_t n = 0; n < N1; ++n) slopes[size_t(n)] = std::exp2(-8.0f * float(n + 1) / float(N1));
    o.pse_type = pt;
    if (pt >= 2) {
      o.pse = sa::TensorView::contiguous(slopes.data(), sa::DType::float32, {N1});
    } else {
      pbias.resize(size_t(N1 * S1 * S2));
      for (int64_t n = 0; n < N1; ++n)
        for (int64_t i = 0; i < S1; ++i)
          for (int64_t j = 0; j < S2; ++j)
            pbias[size_t((n * S1 + i) * S2 + j)] = -slopes[size_t(n)] * float(std::llabs(j - i));
      pbias_dt.resize(pbias.size() * es);
      for (size_t e = 0; e < pbias.size(); ++e) {
        if (es == 4) std::memcpy(pbias_dt.data() + e * 4, &pbias[e], 4);
        else {
          uint16_t h = dt == sa::DType::bfloat16 ? sa::to_bf16(pbias[e]).bits : sa::to_fp16(pbias[e]).bits;
          std::memcpy(pbias_dt.data() + e * 2, &h, 2);
        }
      }
      o.pse = sa::TensorView::contiguous(pbias_dt.data(), dt, {1, N1, S1, S2});
    }
  }
  auto tq = sa::TensorView::contiguous(q.data(), dt, {B, N1, S1, D});
  auto tk = sa::TensorView::contiguous(k.data(), dt, {B, N2, S2, D});
  auto tv = sa::TensorView::contiguous(v.data(), dt, {B, N2, S2, D});
  sa::Problem p = sa::validate_forward(tq, tk, tv, o);
  std::vector<uint8_t> out(size_t(p.out_spec.numel()) * es), prev;
  std::vector<float> sm(size_t(p.stat_spec.numel())), ss(sm.size());
  p.out.data = out.data();
  p.smax_out = sm.data();
  p.ssum_out = ss.data();
  if (const char* th = std::getenv("BENCH_THREADS")) sa::set_num_threads(atoi(th));
  double flops = 4.0 * B * N1 * S1 * S2 * D;
  const double kv_bytes = 2.0 * B * N2 * S2 * D * double(es);  // K + V read once (decode roofline)
  if (mode == 2 || mode == 3) flops /= 2;
  for (const auto& kk : sa::forward_kernels()) {
    if (kk.dtype != dt || int(kk.isa) > int(sa::detected_isa())) continue;
    if (!only.empty() && std::string(kk.name).find(only) == std::string::npos) continue;
    kk.run(p);
    double diff = 0;
    if (!prev.empty())
      for (size_t e = 0; e < out.size() / es; ++e) {
        float a, b;
        if (es == 4) { std::memcpy(&a, out.data() + e * 4, 4); std::memcpy(&b, prev.data() + e * 4, 4); }
        else {
          uint16_t ha, hb;
          std::memcpy(&ha, out.data() + e * 2, 2);
          std::memcpy(&hb, prev.data() + e * 2, 2);
          a = dt == sa::DType::bfloat16 ? sa::to_float(sa::bf16{ha}) : sa::to_float(sa::fp16{ha});
          b = dt == sa::DType::bfloat16 ? sa::to_float(sa::bf16{hb}) : sa::to_float(sa::fp16{hb});
        }
        diff = std::max(diff, double(std::fabs(a - b)));
      }
    prev = out;
    std::vector<double> t, c;
    for (int r = 0; r < reps; ++r) {
      timespec c0, c1;
      clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
      auto t0 = std::chrono::steady_clock::now();
      kk.run(p);
      t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
      c.push_back(double(c1.tv_sec - c0.tv_sec) + 1e-9 * double(c1.tv_nsec - c0.tv_nsec));
    }
    std::sort(t.begin(), t.end());
    std::sort(c.begin(), c.end());
    // cpu: GFLOP per CPU-second (per-core rate, robust to other processes time-sharing the cores)
    std::printf("%-18s med %8.2f ms  min %8.2f ms  %7.1f GFLOP/s(med) %7.1f (min)  cpu %6.1f GF/core-s  K+V %5.1f GB/s(med)  maxdiff-vs-prev %.3g\n",
                kk.name, t[t.size() / 2] * 1e3, t[0] * 1e3, flops / t[t.size() / 2] * 1e-9, flops / t[0] * 1e-9,
                flops / c[0] * 1e-9, kv_bytes / t[t.size() / 2] * 1e-9, diff);
  }
}
