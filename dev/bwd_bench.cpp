// dev/bwd_bench: times registered backward kernels on one shape (medians of N runs).
//   build: g++ -O2 -std=c++17 -Iinclude -Isrc dev/bwd_bench.cpp -Lbuild/bwd -lspeedattn -Wl,-rpath,$PWD/build/bwd -o build/bwd/bwd_bench
//   run:   build/bwd/bwd_bench <dtype f32|bf16|f16> B N1 N2 S1 S2 D [mode] [reps] [kernel-substring] [threads]
//          [pse_type 2|3: internal ALiBi with (N1,) slopes 2^-(8 (n+1) / N1)]
// Prints ms and TFLOP/s (FLOPs = 2.5 * 4 * B * N1 * S1 * S2 * D, halved for causal modes 2/3).
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "api/dispatch.h"
#include "api/validate.h"
#include "common/half.h"

using namespace speedattn;

int main(int argc, char** argv) {
  std::string dts = argc > 1 ? argv[1] : "bf16";
  const int64_t B = argc > 2 ? atol(argv[2]) : 1, N1 = argc > 3 ? atol(argv[3]) : 16, N2 = argc > 4 ? atol(argv[4]) : 16;
  const int64_t S1 = argc > 5 ? atol(argv[5]) : 2048, S2 = argc > 6 ? atol(argv[6]) : 2048, D = argc > 7 ? atol(argv[7]) : 128;
  const int64_t mode = argc > 8 ? atol(argv[8]) : 0;
  const int reps = argc > 9 ? atoi(argv[9]) : 5;
  const std::string want = argc > 10 ? argv[10] : "";
  if (argc > 11) set_num_threads(atoi(argv[11]));
  const int64_t pse_type = argc > 12 ? atol(argv[12]) : -1;
  const DType dt = dts == "f32" ? DType::float32 : dts == "f16" ? DType::float16 : DType::bfloat16;
  const size_t es = dt == DType::float32 ? 4 : 2;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto make = [&](int64_t n) {
    std::vector<unsigned char> v(size_t(n) * es);
    for (int64_t i = 0; i < n; ++i) {
      const float x = nd(rng);
      if (dt == DType::float32) reinterpret_cast<float*>(v.data())[i] = x;
      else if (dt == DType::bfloat16) reinterpret_cast<uint16_t*>(v.data())[i] = to_bf16(x).bits;
      else reinterpret_cast<uint16_t*>(v.data())[i] = to_fp16(x).bits;
    }
    return v;
  };
  auto q = make(B * N1 * S1 * D), k = make(B * N2 * S2 * D), v = make(B * N2 * S2 * D), dy = make(B * N1 * S1 * D);
  TensorView tq = TensorView::contiguous(q.data(), dt, {B, N1, S1, D});
  TensorView tk = TensorView::contiguous(k.data(), dt, {B, N2, S2, D});
  TensorView tv = TensorView::contiguous(v.data(), dt, {B, N2, S2, D});
  TensorView tdy = TensorView::contiguous(dy.data(), dt, {B, N1, S1, D});
  Options o;
  o.head_num = N1;
  o.input_layout = "BNSD";
  o.scale = 1.0 / std::sqrt(double(D));
  o.sparse_mode = mode;
  std::vector<uint8_t> tmpl;
  if (mode == 2 || mode == 3) {
    tmpl.assign(2048 * 2048, 0);
    for (int i = 0; i < 2048; ++i)
      for (int j = i + 1; j < 2048; ++j) tmpl[size_t(i) * 2048 + size_t(j)] = 1;
    o.atten_mask = TensorView::contiguous(tmpl.data(), DType::uint8, {2048, 2048});
  }
  std::vector<float> slopes;
  if (pse_type == 2 || pse_type == 3) {
    for (int64_t n = 0; n < N1; ++n) slopes.push_back(std::exp2(-8.0f * float(n + 1) / float(N1)));
    o.pse = TensorView::contiguous(slopes.data(), DType::float32, {N1});
    o.pse_type = pse_type;
  }
  ForwardResult fr = forward(tq, tk, tv, o);
  ForwardSaved sv{fr.softmax_max.view(), fr.softmax_sum.view(), fr.attention_out.view(), fr.seed, fr.offset, fr.numels};
  Backward bw(tq, tk, tv, tdy, o, sv);
  Problem p = ProblemAccess::of(bw);
  std::vector<unsigned char> dq(q.size()), dk(k.size()), dvv(v.size());
  p.dq.data = dq.data();
  p.dk.data = dk.data();
  p.dv.data = dvv.data();
  std::vector<float> dslopes(slopes.size());
  p.dpse_out = dslopes.data();
  double flops = 2.5 * 4.0 * double(B * N1) * double(S1) * double(S2) * double(D);
  if (mode == 2 || mode == 3) flops /= 2;
  for (const BackwardKernel& kr : backward_kernels()) {
    if (kr.dtype != dt || int(kr.isa) > int(detected_isa())) continue;
    if (!want.empty() && std::string(kr.name).find(want) == std::string::npos) continue;
    std::vector<double> t, cpu;
    auto cpu_now = [] {
      timespec ts;
      clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
      return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
    };
    for (int r = 0; r < reps; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      const double c0 = cpu_now();
      kr.run(p);
      cpu.push_back(cpu_now() - c0);
      t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    std::sort(cpu.begin(), cpu.end());
    // cpu: process CPU seconds (all threads); GFLOP/s per CPU-second is load-independent
    std::printf("%-18s threads %d  median %.2f ms  min %.2f ms  %.3f TFLOP/s (median)  %.1f GFLOP per cpu-s (min)\n",
                kr.name, get_num_threads(), t[t.size() / 2] * 1e3, t[0] * 1e3, flops / t[t.size() / 2] / 1e12,
                flops / cpu[0] / 1e9);
  }
  return 0;
}
