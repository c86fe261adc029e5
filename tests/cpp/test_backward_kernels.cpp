// Every registered backward kernel the machine supports (isa <= detected_isa()) against the
// reference backward (src/reference), SPEC §9 / §11:
//   * the oracle is reference_backward run on a float32 copy of the problem (inputs exactly
//     the dtype's values), i.e. the float64 result rounded once to float32;
//   * tolerance per tensor (SPEC §11, tests/python/twin.py tolerance()):
//       2 * max|round_dtype(ref) - ref| + 2^-15 * max|ref| + 1e-6;
//   * dq, dk, dv and dpse (every pse form) are compared; every kernel must be bit-identical
//     for 1, 2, 3 and 7 threads.
// The saved statistics and attention_in come from the reference forward.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "api/dispatch.h"
#include "api/validate.h"
#include "common/half.h"
#include "core/semantics.h"

using namespace speedattn;

namespace {

enum class MaskKind { none, full, full_b1, s1s2, template2048, template6, rows_masked };
enum class PseForm { none, full, b1, rows1, b1rows1, compressed, slopes_bn, slopes_n };

struct Case {
  std::string name;
  DType dt = DType::float32;
  std::string layout = "BNSD";
  int64_t B = 1, N1 = 1, N2 = 1, S1 = 8, S2 = 8, D = 16;
  int64_t mode = 0;
  int64_t pre = kMaxTokens, next = kMaxTokens;
  MaskKind mask = MaskKind::none;
  PseForm pse = PseForm::none;
  int64_t pse_type = 1;
  double keep_prob = 1.0;
  int64_t inner_precise = 0;
  std::vector<int64_t> prefix;
  std::vector<int64_t> seq_q, seq_kv;  // TND lengths (not cumulative)
  int64_t q_start = 0, kv_start = 0;
  int pad = 0;  // extra elements per row of q, k, v, dy (strided views)
  double scale = 0.0;  // 0: 1/sqrt(D)
  char poke = 0;       // 'q' / 'k' / 'v' / 'y' (dy): one element set to poke_val (BNSD: head N1-1 / N2-1, row S/2, d 3)
  float poke_val = 0.f;
  bool one_key = false;  // every row keeps exactly one key: dq, dk and dpse must be exactly 0
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

const char* dname(DType d) {
  return d == DType::float32 ? "fp32" : d == DType::float16 ? "fp16" : "bf16";
}

float round_to(DType dt, float x) {
  if (dt == DType::bfloat16) return to_float(to_bf16(x));
  if (dt == DType::float16) return to_float(to_fp16(x));
  return x;
}

// A tensor held as float32 master values (exactly representable in dt) plus a dt copy.
struct Tens {
  std::vector<float> f32;           // master values, padded layout
  std::vector<uint16_t> h;          // bf16/fp16 copy
  std::vector<int64_t> shape, stride;
  DType dt = DType::float32;
  TensorView view(bool as_f32) const {
    TensorView t;
    t.data = as_f32 || dt == DType::float32 ? static_cast<const void*>(f32.data()) : static_cast<const void*>(h.data());
    t.dtype = as_f32 ? DType::float32 : dt;
    t.ndim = int(shape.size());
    for (int i = 0; i < t.ndim; ++i) t.shape[i] = shape[size_t(i)], t.stride[i] = stride[size_t(i)];
    return t;
  }
};

Tens make_tensor(DType dt, const std::vector<int64_t>& shape, int pad, std::mt19937& rng, float amp) {
  Tens t;
  t.dt = dt;
  t.shape = shape;
  t.stride.resize(shape.size());
  int64_t run = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    t.stride[i] = run;
    run *= shape[i] + (i + 1 == shape.size() ? pad : 0);
  }
  std::normal_distribution<float> nd(0.f, amp);
  t.f32.resize(size_t(run));
  for (float& x : t.f32) x = round_to(dt, nd(rng));
  if (dt != DType::float32) {
    t.h.resize(t.f32.size());
    for (size_t i = 0; i < t.f32.size(); ++i)
      t.h[i] = dt == DType::bfloat16 ? to_bf16(t.f32[i]).bits : to_fp16(t.f32[i]).bits;
  }
  return t;
}

std::vector<float> to_f32(DType dt, const void* data, size_t n) {
  std::vector<float> r(n);
  for (size_t i = 0; i < n; ++i) r[i] = load_as_float(data, dt, int64_t(i));
  return r;
}

size_t esize(DType dt) { return dt == DType::float32 ? 4 : 2; }

struct Outputs {
  std::vector<unsigned char> dq, dk, dv, dpse;
};

// SPEC §11 tolerance, per tensor.
void expect_close(const std::vector<float>& got, const std::vector<float>& ref, DType dt, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double amax = 0, rerr = 0;
  for (float r : ref) {
    amax = std::max(amax, double(std::fabs(r)));
    rerr = std::max(rerr, std::fabs(double(round_to(dt, r)) - double(r)));
  }
  const double tol = 2 * rerr + std::ldexp(1.0, -15) * amax + 1e-6;
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << what << ": non-finite at " << i;
    const double e = std::fabs(double(got[i]) - double(ref[i]));
    if (e > worst) worst = e, at = i;
  }
  EXPECT_LE(worst, tol) << what << ": max err " << worst << " > tol " << tol << " at " << at << " (got " << got[at]
                        << ", ref " << ref[at] << ", amax " << amax << ")";
}

// One key per row (P = 1, attention_in = V_j): the exact dS is 0, so dS = P (dP - Dsum) must
// cancel to the bit (Dsum evaluated exactly as the kernel's dP) and the gradient be exactly 0.
void expect_zero(const std::vector<unsigned char>& got, DType dt, const std::string& what) {
  const std::vector<float> g = to_f32(dt, got.data(), got.size() / esize(dt));
  size_t nz = 0, at = 0;
  for (size_t i = 0; i < g.size(); ++i)
    if (g[i] != 0.f && nz++ == 0) at = i;
  EXPECT_EQ(nz, 0u) << what << ": " << nz << " of " << g.size() << " not exactly 0, first at " << at << " ("
                    << (g.empty() ? 0.f : g[at]) << ")";
}

struct Built {
  Tens q, k, v, dy, pse;
  std::vector<uint8_t> mask;
  std::vector<int64_t> mask_shape;
  Options opt;
  std::vector<float> smax, ssum;
  std::vector<unsigned char> out;  // dt
  std::vector<float> out32;
  RngState rng;
  int64_t numels = 0;
};

Built build(const Case& c) {
  Built r;
  std::mt19937 rng(12345u + uint32_t(c.S1 * 7 + c.S2 * 13 + c.D * 17 + c.mode));
  const bool tnd = c.layout == "TND";
  int64_t T1 = 0, T2 = 0, S1 = c.S1, S2 = c.S2;
  if (tnd) {
    std::vector<int64_t> cq, ck;
    S1 = S2 = 0;
    for (size_t b = 0; b < c.seq_q.size(); ++b) {
      T1 += c.seq_q[b];
      T2 += c.seq_kv[b];
      cq.push_back(T1);
      ck.push_back(T2);
      S1 = std::max(S1, c.seq_q[b]);
      S2 = std::max(S2, c.seq_kv[b]);
    }
    T1 += 3;  // tokens outside every sequence
    T2 += 2;
    r.opt.actual_seq_qlen = cq;
    r.opt.actual_seq_kvlen = ck;
  }
  const int64_t B = tnd ? int64_t(c.seq_q.size()) : c.B;
  auto shp = [&](int64_t N, int64_t S, int64_t T) -> std::vector<int64_t> {
    if (c.layout == "BSH") return {B, S, N * c.D};
    if (c.layout == "SBH") return {S, B, N * c.D};
    if (c.layout == "BSND") return {B, S, N, c.D};
    if (c.layout == "BNSD") return {B, N, S, c.D};
    return {T, N, c.D};
  };
  r.q = make_tensor(c.dt, shp(c.N1, S1, T1), c.pad, rng, 1.0f);
  r.k = make_tensor(c.dt, shp(c.N2, S2, T2), c.pad, rng, 1.0f);
  r.v = make_tensor(c.dt, shp(c.N2, S2, T2), c.pad, rng, 1.0f);
  r.dy = make_tensor(c.dt, shp(c.N1, S1, T1), c.pad, rng, 1.0f);
  if (c.poke) {  // BNSD, no padding
    Tens& t = c.poke == 'q' ? r.q : c.poke == 'k' ? r.k : c.poke == 'v' ? r.v : r.dy;
    const int64_t N = c.poke == 'k' || c.poke == 'v' ? c.N2 : c.N1, S = c.poke == 'k' || c.poke == 'v' ? S2 : S1;
    const size_t e = size_t((((B - 1) * N + N - 1) * S + S / 2) * c.D + 3);
    t.f32[e] = c.poke_val;
    if (c.dt != DType::float32) t.h[e] = c.dt == DType::bfloat16 ? to_bf16(c.poke_val).bits : to_fp16(c.poke_val).bits;
  }

  Options& o = r.opt;
  o.head_num = c.N1;
  o.input_layout = c.layout;
  o.scale = c.scale != 0.0 ? c.scale : 1.0 / std::sqrt(double(c.D));
  o.keep_prob = c.keep_prob;
  o.pre_tokens = c.pre;
  o.next_tokens = c.next;
  o.inner_precise = c.inner_precise;
  o.sparse_mode = c.mode;
  o.pse_type = c.pse_type;
  if (!c.prefix.empty()) o.prefix = c.prefix;
  if (c.q_start) o.q_start_idx = std::vector<int64_t>{c.q_start};
  if (c.kv_start) o.kv_start_idx = std::vector<int64_t>{c.kv_start};

  std::bernoulli_distribution coin(0.3);
  switch (c.mask) {
    case MaskKind::none: break;
    case MaskKind::full:
    case MaskKind::rows_masked:
      r.mask_shape = {B, c.N1, S1, S2};
      r.mask.resize(size_t(B * c.N1 * S1 * S2));
      for (size_t e = 0; e < r.mask.size(); ++e) r.mask[e] = coin(rng) ? 1 : 0;
      if (c.mask == MaskKind::rows_masked)  // every third row fully masked
        for (int64_t bn = 0; bn < B * c.N1; ++bn)
          for (int64_t i = 0; i < S1; i += 3)
            for (int64_t j = 0; j < S2; ++j) r.mask[size_t((bn * S1 + i) * S2 + j)] = 1;
      break;
    case MaskKind::full_b1:
      r.mask_shape = {B, 1, S1, S2};
      r.mask.resize(size_t(B * S1 * S2));
      for (auto& m : r.mask) m = coin(rng) ? 1 : 0;
      break;
    case MaskKind::s1s2:
      r.mask_shape = {S1, S2};
      r.mask.resize(size_t(S1 * S2));
      for (auto& m : r.mask) m = coin(rng) ? 1 : 0;
      break;
    case MaskKind::template2048:
    case MaskKind::template6: {
      const int64_t rows = c.mask == MaskKind::template6 ? 3072 : 2048;
      r.mask_shape = {rows, 2048};
      r.mask.assign(size_t(rows * 2048), 0);
      for (int64_t i = 0; i < 2048; ++i)
        for (int64_t j = i + 1; j < 2048; ++j) r.mask[size_t(i * 2048 + j)] = 1;
      for (int64_t i = 2048; i < rows; ++i)
        for (int64_t j = 1024; j < 2048; ++j) r.mask[size_t(i * 2048 + j)] = 1;
      break;
    }
  }
  if (!r.mask.empty()) o.atten_mask = TensorView::contiguous(r.mask.data(), DType::uint8, r.mask_shape);

  switch (c.pse) {
    case PseForm::none: break;
    case PseForm::full: r.pse = make_tensor(c.dt, {B, c.N1, S1, S2}, 0, rng, 1.0f); break;
    case PseForm::b1: r.pse = make_tensor(c.dt, {1, c.N1, S1, S2}, 0, rng, 1.0f); break;
    case PseForm::rows1: r.pse = make_tensor(c.dt, {B, c.N1, 1, S2}, 0, rng, 1.0f); break;
    case PseForm::b1rows1: r.pse = make_tensor(c.dt, {1, c.N1, 1, S2}, 0, rng, 1.0f); break;
    case PseForm::compressed: r.pse = make_tensor(c.dt, {B, c.N1, 1024, S2}, 0, rng, 1.0f); break;
    case PseForm::slopes_bn: r.pse = make_tensor(DType::float32, {B, c.N1}, 0, rng, 0.1f); break;
    case PseForm::slopes_n: r.pse = make_tensor(DType::float32, {c.N1}, 0, rng, 0.1f); break;
  }
  if (c.pse != PseForm::none) o.pse = r.pse.view(false);

  // reference forward in the dtype: attention_in and the statistics
  Options fo = o;
  fo.backend = Backend::reference;
  manual_seed(77);
  Forward f(r.q.view(false), r.k.view(false), r.v.view(false), fo);
  r.out.resize(size_t(f.attention_out_spec().numel()) * esize(c.dt));
  r.smax.resize(size_t(f.softmax_stat_spec().numel()));
  r.ssum.resize(r.smax.size());
  r.rng = f.run(r.out.data(), r.smax.data(), r.ssum.data());
  r.numels = f.numels();
  r.out32 = to_f32(c.dt, r.out.data(), size_t(f.attention_out_spec().numel()));
  return r;
}

ForwardSaved saved_of(const Built& r, const Case& c, bool as_f32, const OutputSpec& stat, const OutputSpec& outs) {
  ForwardSaved s;
  s.softmax_max = TensorView::contiguous(r.smax.data(), DType::float32, stat.shape);
  s.softmax_sum = TensorView::contiguous(r.ssum.data(), DType::float32, stat.shape);
  s.attention_in = as_f32 ? TensorView::contiguous(r.out32.data(), DType::float32, outs.shape)
                          : TensorView::contiguous(r.out.data(), c.dt, outs.shape);
  s.seed = r.rng.seed;
  s.offset = r.rng.offset;
  s.numels = r.numels;
  return s;
}

// Runs `fn` on the backward problem (as_f32: the float32 copy) into fresh outputs.
Outputs run_bwd(const Built& r, const Case& c, bool as_f32, BackwardFn fn) {
  Options o = r.opt;
  if (c.pse != PseForm::none) o.pse = r.pse.view(as_f32);
  Forward fshape(r.q.view(as_f32), r.k.view(as_f32), r.v.view(as_f32), o);
  const ForwardSaved sv = saved_of(r, c, as_f32, fshape.softmax_stat_spec(), fshape.attention_out_spec());
  Backward bw(r.q.view(as_f32), r.k.view(as_f32), r.v.view(as_f32), r.dy.view(as_f32), o, sv);
  Problem p = ProblemAccess::of(bw);
  Outputs out;
  const size_t es = as_f32 ? 4 : esize(c.dt);
  // poison: kernels must write every element
  out.dq.assign(size_t(bw.dq_spec().numel()) * es, 0x7f);
  out.dk.assign(size_t(bw.dk_spec().numel()) * es, 0x7f);
  out.dv.assign(size_t(bw.dv_spec().numel()) * es, 0x7f);
  const size_t pse_es = c.pse == PseForm::slopes_bn || c.pse == PseForm::slopes_n ? 4 : es;
  out.dpse.assign(std::max<size_t>(1, size_t(bw.dpse_spec().numel()) * pse_es), 0x7f);
  p.dq.data = out.dq.data();
  p.dk.data = out.dk.data();
  p.dv.data = out.dv.data();
  p.dpse_out = c.pse != PseForm::none ? out.dpse.data() : nullptr;
  fn(p);
  return out;
}

void check_case(const Case& c) {
  const Built r = build(c);
  const Outputs ref = run_bwd(r, c, true, &reference_backward);
  const bool slopes = c.pse == PseForm::slopes_bn || c.pse == PseForm::slopes_n;
  const DType pse_dt = slopes ? DType::float32 : c.dt;
  int ran = 0;
  for (const BackwardKernel& k : backward_kernels()) {
    if (k.dtype != c.dt || int(k.isa) > int(detected_isa())) continue;
    ++ran;
    SCOPED_TRACE(std::string("kernel ") + k.name);
    Outputs first;
    for (int threads : {1, 2, 3, 7}) {
      set_num_threads(threads);
      Outputs got = run_bwd(r, c, false, k.run);
      if (threads == 1) {
        auto cmp = [&](const std::vector<unsigned char>& g, const std::vector<unsigned char>& rf, DType dt,
                       const char* what) {
          const size_t n = rf.size() / 4;
          expect_close(to_f32(dt, g.data(), n), to_f32(DType::float32, rf.data(), n), dt, what);
        };
        cmp(got.dq, ref.dq, c.dt, "dq");
        cmp(got.dk, ref.dk, c.dt, "dk");
        cmp(got.dv, ref.dv, c.dt, "dv");
        if (c.pse != PseForm::none) cmp(got.dpse, ref.dpse, pse_dt, "dpse");
        if (c.one_key) {
          expect_zero(got.dq, c.dt, "dq");
          expect_zero(got.dk, c.dt, "dk");
          if (c.pse != PseForm::none) expect_zero(got.dpse, pse_dt, "dpse");
        }
        first = std::move(got);
      } else {
        EXPECT_TRUE(got.dq == first.dq) << "dq differs with " << threads << " threads";
        EXPECT_TRUE(got.dk == first.dk) << "dk differs with " << threads << " threads";
        EXPECT_TRUE(got.dv == first.dv) << "dv differs with " << threads << " threads";
        EXPECT_TRUE(got.dpse == first.dpse) << "dpse differs with " << threads << " threads";
      }
    }
  }
  set_num_threads(2);
  EXPECT_GT(ran, 0) << "no backward kernel for " << dname(c.dt);
}

std::vector<Case> cases() {
  std::vector<Case> v;
  auto add = [&](Case c) {
    for (DType dt : {DType::float32, DType::bfloat16, DType::float16}) {
      Case x = c;
      x.dt = dt;
      x.name = c.name + "_" + dname(dt);
      v.push_back(x);
    }
  };
  Case c;
  // shapes: tails around the tiles (q 64, kv 128 / 32) and D
  for (auto s : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {63, 127}, {64, 128}, {65, 129}, {33, 300}, {200, 31}}) {
    c = Case();
    c.name = "shape_" + std::to_string(s.first) + "x" + std::to_string(s.second);
    c.S1 = s.first, c.S2 = s.second, c.D = 64;
    add(c);
  }
  // row / key tails around the AMX tiles of 16 and 32 (bwd_amx_fp32 pads rows and keys to 32,
  // D to a multiple of 32: D 40 and 96 take the zero-padded path)
  for (auto s : std::vector<std::array<int64_t, 3>>{
           {15, 17, 40}, {16, 32, 64}, {17, 15, 96}, {31, 33, 64}, {32, 16, 40}, {33, 31, 128}}) {
    c = Case();
    c.name = "tail_" + std::to_string(s[0]) + "x" + std::to_string(s[1]) + "_D" + std::to_string(s[2]);
    c.S1 = s[0], c.S2 = s[1], c.D = s[2];
    add(c);
  }
  // one key per row: O = V_0 for every row, so the exact dS (and dQ, dK, dpse) is 0, and the
  // computed dS = P (dP - Dsum) is exactly 0 only if each kernel evaluates Dsum as its dP (finding
  // N1): S2 = 1 at D 128 (AMX tiles) and D 40 (zero-padded / non-AMX paths), GQA with a pse tensor
  // (dpse), and a band of width 0 (row i keeps key i only) across q / kv tiles and with ALiBi slopes
  c = Case();
  c.name = "one_key_8x1";
  c.S1 = 8, c.S2 = 1, c.D = 128, c.one_key = true;
  add(c);
  for (int64_t D : {128, 40}) {
    c = Case();
    c.name = "one_key_33x1_D" + std::to_string(D);
    c.S1 = 33, c.S2 = 1, c.D = D, c.one_key = true;
    add(c);
  }
  c = Case();
  c.name = "one_key_gqa_pse";
  c.B = 2, c.N1 = 4, c.N2 = 2, c.S1 = 33, c.S2 = 1, c.D = 64, c.one_key = true;
  c.pse = PseForm::full, c.pse_type = 1;
  add(c);
  c = Case();
  c.name = "one_key_band0_300_D128";
  c.S1 = c.S2 = 300, c.D = 128, c.mode = 4, c.mask = MaskKind::template2048, c.pre = 0, c.next = 0;
  c.one_key = true;
  add(c);
  c = Case();
  c.name = "one_key_band0_33_D40_slopes";
  c.N1 = 2, c.S1 = c.S2 = 33, c.D = 40, c.mode = 4, c.mask = MaskKind::template2048, c.pre = 0, c.next = 0;
  c.pse = PseForm::slopes_n, c.pse_type = 2, c.one_key = true;
  add(c);
  // AMX (D % 32 == 0) tails: kv superblock 512 (tile-1, tile, tile+1, 2*tile+17) and key
  // tiles of 128 inside it; q tiles of 128 (1, 127, 128, 129, 300 rows).
  for (auto s : std::vector<std::pair<int64_t, int64_t>>{{127, 511}, {128, 512}, {129, 513}, {300, 1041}}) {
    c = Case();
    c.name = "amx_tail_" + std::to_string(s.first) + "x" + std::to_string(s.second);
    c.S1 = s.first, c.S2 = s.second, c.D = 64;
    add(c);
  }
  c = Case();
  c.name = "amx_causal_gqa";  // partial tiles on the diagonal of every 128 x 128 tile
  c.N1 = 4, c.N2 = 2, c.S1 = 300, c.S2 = 700, c.D = 32, c.mode = 3, c.mask = MaskKind::template2048;
  add(c);
  c = Case();
  c.name = "amx_band";  // band across superblock boundaries
  c.S1 = 600, c.S2 = 600, c.D = 32, c.mode = 4, c.mask = MaskKind::template2048, c.pre = 200, c.next = 50;
  add(c);
  for (int64_t D : {1, 3, 17, 80, 128, 768}) {
    c = Case();
    c.name = "D" + std::to_string(D);
    c.S1 = 40, c.S2 = 70, c.D = D;
    add(c);
  }
  for (std::string layout : {"BSH", "SBH", "BSND", "BNSD"}) {
    c = Case();
    c.name = "layout_" + layout + "_gqa_pad";
    c.layout = layout, c.B = 2, c.N1 = 4, c.N2 = 2, c.S1 = 37, c.S2 = 50, c.D = 24, c.pad = 5;
    add(c);
  }
  c = Case();
  c.name = "many_heads";  // B*N2 >= 16: one chunk per head
  c.B = 4, c.N1 = 8, c.N2 = 4, c.S1 = 20, c.S2 = 150, c.D = 16;
  add(c);
  // sparse modes
  for (int64_t mode : {0, 1, 2, 3, 4, 5, 6}) {
    c = Case();
    c.name = "mode" + std::to_string(mode);
    c.B = 2, c.N1 = 2, c.N2 = 1, c.S1 = 150, c.S2 = 170, c.D = 32;
    c.mode = mode;
    if (mode == 0) c.mask = MaskKind::full, c.pre = 40, c.next = 10;
    if (mode == 1) c.mask = MaskKind::s1s2;
    if (mode == 2 || mode == 3) c.mask = MaskKind::template2048;
    if (mode == 4) c.mask = MaskKind::template2048, c.pre = 30, c.next = 5;
    if (mode == 5) c.mask = MaskKind::full_b1, c.prefix = {30, 100};
    if (mode == 6) c.mask = MaskKind::template6, c.prefix = {30, 100};
    add(c);
  }
  c = Case();
  c.name = "mode4_nomask_full";  // sparse mode without a mask: full attention
  c.mode = 4, c.pre = 2, c.next = 2, c.S1 = 30, c.S2 = 30;
  add(c);
  c = Case();
  c.name = "mode3_s1_gt_s2_invalid";  // automatic invalid-line rows
  c.mode = 3, c.mask = MaskKind::template2048, c.S1 = 140, c.S2 = 90, c.D = 16;
  add(c);
  c = Case();
  c.name = "band_empty_rows_invalid";
  c.mask = MaskKind::full, c.pre = 10, c.next = -5, c.S1 = 70, c.S2 = 200, c.D = 16;
  add(c);
  // fully masked rows: uniform and invalid line
  c = Case();
  c.name = "masked_rows_uniform";
  c.mode = 1, c.mask = MaskKind::rows_masked, c.S1 = 70, c.S2 = 140, c.D = 16, c.N1 = 2;
  add(c);
  c.name = "masked_rows_uniform_dropout";
  c.keep_prob = 0.7;
  add(c);
  c.name = "masked_rows_invalid";
  c.keep_prob = 1.0, c.inner_precise = 2;
  add(c);
  // pse
  struct P {
    PseForm f;
    int64_t type;
    const char* n;
  };
  for (P pp : {P{PseForm::full, 1, "full_t1"}, P{PseForm::full, 0, "full_t0"}, P{PseForm::b1, 1, "b1_t1"},
               P{PseForm::rows1, 1, "rows1_t1"}, P{PseForm::b1rows1, 0, "b1rows1_t0"},
               P{PseForm::slopes_bn, 2, "slopes_bn_t2"}, P{PseForm::slopes_n, 3, "slopes_n_t3"}}) {
    c = Case();
    c.name = std::string("pse_") + pp.n;
    c.B = 2, c.N1 = 4, c.N2 = 2, c.S1 = 70, c.S2 = 140, c.D = 16;
    c.pse = pp.f, c.pse_type = pp.type;
    c.mode = 2, c.mask = MaskKind::template2048;
    if (pp.type >= 2) c.q_start = 3, c.kv_start = -2;
    add(c);
  }
  // long rows (finding F13): the slope gradient is a difference of terms ~S2 times larger than
  // itself unless each row's distances are centred (core/slope_grad.h); D = 32 for the AMX path
  c = Case();
  c.name = "pse_slopes_long_rows";
  c.B = 2, c.N1 = 2, c.N2 = 1, c.S1 = 8, c.S2 = 1100, c.D = 32;
  c.pse = PseForm::slopes_n, c.pse_type = 2;
  c.mode = 4, c.mask = MaskKind::template2048;
  add(c);
  c.name = "pse_slopes_long_rows_t3_dropout";
  c.pse = PseForm::slopes_bn, c.pse_type = 3, c.keep_prob = 0.8;
  add(c);
  c = Case();
  c.name = "pse_compressed";
  c.S1 = c.S2 = 1100, c.D = 8, c.pse = PseForm::compressed, c.mode = 3, c.mask = MaskKind::template2048;
  add(c);
  // dropout
  c = Case();
  c.name = "dropout";
  c.B = 2, c.N1 = 2, c.S1 = 67, c.S2 = 131, c.D = 32, c.keep_prob = 0.8;
  add(c);
  c.name = "dropout_causal_pse";
  c.mode = 3, c.mask = MaskKind::template2048, c.pse = PseForm::full, c.keep_prob = 0.6;
  add(c);
  // TND with empty sequences
  for (int64_t mode : {0, 2, 3, 7, 8}) {
    c = Case();
    c.name = "tnd_mode" + std::to_string(mode);
    c.layout = "TND", c.N1 = 4, c.N2 = 2, c.D = 16;
    c.seq_q = {5, 0, 70, 130, 0};
    c.seq_kv = {9, 4, 70, 140, 0};
    c.mode = mode;
    if (mode != 0) c.mask = MaskKind::template2048;
    if (mode == 7 || mode == 8) c.pre = 20, c.next = 3;
    add(c);
  }
  c = Case();
  c.name = "tnd_dropout_slopes";
  c.layout = "TND", c.N1 = 2, c.N2 = 1, c.D = 16, c.keep_prob = 0.75;
  c.seq_q = {33, 0, 65};
  c.seq_kv = {40, 7, 129};
  c.pse = PseForm::slopes_bn, c.pse_type = 2;
  add(c);
  return v;
}

class BackwardKernels : public ::testing::TestWithParam<Case> {};

TEST_P(BackwardKernels, MatchReferenceAndThreadCounts) { check_case(GetParam()); }

INSTANTIATE_TEST_SUITE_P(All, BackwardKernels, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

TEST(BackwardKernels, RegistryListsEveryDtype) {
  for (DType dt : {DType::float32, DType::bfloat16, DType::float16}) {
    bool scalar = false;
    for (const BackwardKernel& k : backward_kernels())
      if (k.dtype == dt && k.isa == Isa::scalar) scalar = true;
    EXPECT_TRUE(scalar) << "no portable backward for " << dname(dt);
  }
}

}  // namespace

// Non-finite inputs (docs/semantics.md "Non-finite inputs"): one NaN / +-Inf element in q, k,
// v or dy, no mask or causal (the poked key / row is masked for some rows), with and without
// dropout, shapes for the AMX tiles and several key blocks. Every kernel must reproduce the
// reference's NaN / Inf pattern of dq, dk, dv exactly and its finite values within SPEC §11.
TEST(BackwardKernels, NonFiniteInputs) {
  auto cls = [](float x) { return std::isnan(x) ? 2 : std::isinf(x) ? (x > 0 ? 3 : 4) : 0; };
  const std::pair<char, float> pokes[] = {{'q', NAN}, {'k', NAN}, {'v', NAN}, {'y', NAN}, {'k', INFINITY},
                                          {'k', -INFINITY}, {'v', INFINITY}, {'q', INFINITY}, {'y', -INFINITY}};
  for (DType dt : {DType::float32, DType::bfloat16, DType::float16})
    for (int64_t S : {40, 300})
      for (int64_t mode : {0, 2})
        for (double keep : {1.0, 0.8})
          for (const auto& pk : pokes) {
            Case c;
            c.dt = dt;
            c.N1 = c.N2 = 2;
            c.S1 = c.S2 = S;
            c.D = 32;
            c.mode = mode;
            c.mask = mode == 2 ? MaskKind::template2048 : MaskKind::none;
            c.keep_prob = keep;
            c.poke = pk.first;
            c.poke_val = pk.second;
            c.name = std::string(dname(dt)) + " S" + std::to_string(S) + " mode" + std::to_string(mode) + " keep" +
                     std::to_string(keep) + " " + pk.first + "=" + std::to_string(pk.second);
            SCOPED_TRACE(c.name);
            const Built r = build(c);
            const Outputs ref = run_bwd(r, c, true, &reference_backward);
            for (const BackwardKernel& k : backward_kernels()) {
              if (k.dtype != dt || int(k.isa) > int(detected_isa())) continue;
              SCOPED_TRACE(std::string("kernel ") + k.name);
              const Outputs got = run_bwd(r, c, false, k.run);
              const std::vector<unsigned char>* gs[] = {&got.dq, &got.dk, &got.dv};
              const std::vector<unsigned char>* rs[] = {&ref.dq, &ref.dk, &ref.dv};
              const char* names[] = {"dq", "dk", "dv"};
              for (int w = 0; w < 3; ++w) {
                const size_t n = rs[w]->size() / 4;
                const std::vector<float> g = to_f32(dt, gs[w]->data(), n), rf = to_f32(DType::float32, rs[w]->data(), n);
                std::vector<float> gf, rff;
                int bad = 0;
                for (size_t e = 0; e < n; ++e) {
                  const float rr = round_to(dt, rf[e]);  // Inf / overflow as the dtype holds it
                  if (cls(g[e]) != cls(rr)) {
                    if (bad++ < 3) ADD_FAILURE() << names[w] << "[" << e << "] got " << g[e] << " ref " << rf[e];
                  } else if (std::isfinite(rr)) {
                    gf.push_back(g[e]);
                    rff.push_back(rf[e]);
                  }
                }
                if (!rff.empty()) expect_close(gf, rff, dt, names[w]);
              }
            }
          }
}
