// The reference backend (src/reference), through the public API (Backend::reference):
//  1. the Ascend hardware test vectors of SPEC §12 (statistics of cases A, B, D; outputs and
//     gradients of case C), from fp16 inputs;
//  2. float64 finite-difference checks of the backward (dq, dk, dv, dpse for pse_type 0/1
//     tensors incl. broadcast and the compressed form, and slopes for pse_type 2/3) against
//     L = sum(out * dy), over layouts, GQA, masks/bands, dropout, TND with empty sequences,
//     uniform and invalid-line fully masked rows.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/half.h"
#include "reference/reference_rows.h"
#include "speedattn/speedattn.h"

namespace speedattn {
namespace {

// numpy.random.seed(1967515154); numpy.random.randn(1, 2, 4, 4).astype(numpy.float16), as bits.
const uint16_t kSeedArray[32] = {0x3f63, 0x38ea, 0x3b55, 0xb745, 0xb5a0, 0xb1bd, 0xb5ff, 0xb004,
                                 0xbd82, 0xbca5, 0xba90, 0xbc25, 0xb535, 0xbdbe, 0x3957, 0xa999,
                                 0x36c7, 0x230c, 0xb8a1, 0x39c2, 0x3bc5, 0x3cba, 0x32f1, 0x387b,
                                 0xaf3f, 0xa879, 0x3ad8, 0xb042, 0x3122, 0xb803, 0x4048, 0x306b};

std::vector<uint8_t> causal_template() {
  std::vector<uint8_t> m(2048 * 2048);
  for (int i = 0; i < 2048; ++i)
    for (int j = 0; j < 2048; ++j) m[size_t(i) * 2048 + j] = j > i;
  return m;
}

struct AscendCase : ::testing::Test {
  std::vector<uint16_t> x{kSeedArray, kSeedArray + 32};
  TensorView qkv = TensorView::contiguous(x.data(), DType::float16, {1, 2, 4, 4});
  std::vector<float> slopes{0.0625f, 0.0039f};
  TensorView slope_view = TensorView::contiguous(slopes.data(), DType::float32, {2});
  std::vector<uint8_t> tmpl = causal_template();
  TensorView tmpl_view = TensorView::contiguous(tmpl.data(), DType::boolean, {2048, 2048});

  Options base(int64_t mode, double scale, double keep) const {
    Options o;
    o.head_num = 2;
    o.input_layout = "BNSD";
    o.sparse_mode = mode;
    o.scale = scale;
    o.keep_prob = keep;
    o.backend = Backend::reference;
    return o;
  }
  static void expect_stats(const Tensor& t, const double want[2][4], double rel) {
    const float* s = static_cast<const float*>(t.data());
    ASSERT_EQ(t.spec.shape, (std::vector<int64_t>{1, 2, 4, 8}));
    for (int n = 0; n < 2; ++n)
      for (int i = 0; i < 4; ++i)
        for (int k = 0; k < 8; ++k)
          EXPECT_NEAR(s[(n * 4 + i) * 8 + k], want[n][i], rel * std::fabs(want[n][i]) + 1e-7) << n << "," << i;
  }
  static void expect_fp16(const Tensor& t, const double want[2][4][4], double tol) {
    const fp16* s = static_cast<const fp16*>(t.data());
    for (int n = 0; n < 2; ++n)
      for (int i = 0; i < 4; ++i)
        for (int d = 0; d < 4; ++d)
          EXPECT_NEAR(to_float(s[(n * 4 + i) * 4 + d]), want[n][i][d], tol) << n << "," << i << "," << d;
  }
};

TEST_F(AscendCase, A_Mode2Alibi2Dropout) {
  Options o = base(2, 0.3, 0.7);
  o.atten_mask = tmpl_view;
  o.pse = slope_view;
  o.pse_type = 2;
  const ForwardResult r = forward(qkv, qkv, qkv, o);
  const double mx[2][4] = {{1.45018446, 0.09358247, 1.49721396, 0.78424454}, {0.30972376, 0.81006205, 0.22907121, 1.46355951}};
  const double sm[2][4] = {{1, 1.62510896, 1.36333108, 2.40727997}, {1, 1.54749846, 2.43408227, 1.79947615}};
  expect_stats(r.softmax_max, mx, 2e-6);
  expect_stats(r.softmax_sum, sm, 2e-6);
}

TEST_F(AscendCase, B_Mode3Alibi3Dropout) {
  Options o = base(3, 0.4, 0.9);
  o.atten_mask = tmpl_view;
  o.pse = slope_view;
  o.pse_type = 3;
  const ForwardResult r = forward(qkv, qkv, qkv, o);
  const double mx[2][4] = {{1.93357933, 0.12477662, 1.99628532, 1.04565942}, {0.41296503, 1.08008277, 0.30542827, 1.95141256}};
  const double sm[2][4] = {{1, 1.54574370, 1.23072267, 2.19226146}, {1, 1.44847870, 2.28967285, 1.53119659}};
  expect_stats(r.softmax_max, mx, 2e-6);
  expect_stats(r.softmax_sum, sm, 2e-6);
}

TEST_F(AscendCase, C_Mode4NoMaskAlibi3ForwardBackward) {
  Options o = base(4, 0.5, 1.0);
  o.pre_tokens = 2;
  o.next_tokens = 2;
  o.pse = slope_view;
  o.pse_type = 3;
  const ForwardResult r = forward(qkv, qkv, qkv, o);
  const double mx[2][4] = {{2.41697407, 0.50237018, 2.49535656, 1.30707419}, {0.51620626, 1.35010338, 0.90221488, 2.43926573}};
  const double sm[2][4] = {{1.11589324, 2.63446760, 1.32268143, 1.99203920}, {2.62266779, 1.89210248, 2.28339052, 1.35696399}};
  expect_stats(r.softmax_max, mx, 2e-6);
  expect_stats(r.softmax_sum, sm, 2e-6);
  const double out[2][4][4] = {
      {{1.60644531, 0.46069336, 0.82568359, -0.42773438}, {-0.45385742, -0.73193359, -0.14514160, -0.49487305},
       {-1.10156250, -1.07910156, -0.56250000, -0.80664062}, {-0.45629883, -1.02734375, 0.12396240, -0.37084961}},
      {{0.47729492, 0.31445312, 0.27221680, 0.45141602}, {0.60351562, 0.55029297, 0.42407227, 0.43774414},
       {0.26367188, -0.02201843, 1.12304688, 0.21533203}, {0.18151855, -0.29492188, 1.70605469, 0.14526367}}};
  expect_fp16(r.attention_out, out, 1e-3);

  std::vector<uint16_t> ones(32, 0x3c00);
  const TensorView dy = TensorView::contiguous(ones.data(), DType::float16, {1, 2, 4, 4});
  ForwardSaved saved{r.softmax_max.view(), r.softmax_sum.view(), r.attention_out.view(), r.seed, r.offset, r.numels};
  const BackwardResult g = backward(qkv, qkv, qkv, dy, o, saved);
  const double dq[2][4][4] = {
      {{0.49267578, 0.31079102, 0.19604492, -0.03540039}, {1.16992188, 0.62255859, 0.68994141, 0.35034180},
       {0.40087891, 0.13977051, 0.34790039, 0.29345703}, {0.80175781, 0.33374023, 0.56396484, 0.29785156}},
      {{0.15905762, 0.25561523, 0.14624023, 0.01330566}, {0.18554688, 0.28979492, 0.03869629, 0.04693604},
       {0.11383057, 0.10272217, 0.11828613, 0.04751587}, {0.05209351, 0.01346588, 0.09991455, 0.02937317}}};
  const double dk[2][4][4] = {
      {{0.16845703, -0.23095703, 0.17211914, -0.17211914}, {-0.375, -0.28417969, -0.18676758, -0.11450195},
       {0.65576172, 0.97851562, 0.15136719, 0.42822266}, {-0.44921875, -0.46313477, -0.13659668, -0.14172363}},
      {{-0.20739746, -0.15429688, -0.02813721, -0.20104980}, {0.32446289, 0.26440430, 0.10656738, 0.28930664},
       {-0.12634277, -0.06414795, -0.28540039, -0.10491943}, {0.00929260, -0.04586792, 0.20727539, 0.01663208}}};
  const double dvrow[2][4] = {{1.11328125, 0.54882812, 1.43359375, 0.90429688}, {0.74121094, 1.09179688, 0.71679688, 1.45019531}};
  double dv[2][4][4];
  for (int n = 0; n < 2; ++n)
    for (int i = 0; i < 4; ++i)
      for (int d = 0; d < 4; ++d) dv[n][i][d] = dvrow[n][i];
  expect_fp16(g.dq, dq, 1e-3);
  expect_fp16(g.dk, dk, 1e-3);
  expect_fp16(g.dv, dv, 1e-3);
  // dpse (slopes, float32, shape (N1,)) exists and is finite.
  ASSERT_EQ(g.dpse.spec.shape, (std::vector<int64_t>{2}));
  for (int n = 0; n < 2; ++n) EXPECT_TRUE(std::isfinite(static_cast<const float*>(g.dpse.data())[n]));
}

TEST_F(AscendCase, D_Mode1AllFalseMaskPse1Dropout) {
  Options o = base(1, 0.2, 0.5);
  std::vector<uint8_t> mask(32, 0);
  o.atten_mask = TensorView::contiguous(mask.data(), DType::boolean, {1, 2, 4, 4});
  o.pse = qkv;
  o.pse_type = 1;
  manual_seed(10);
  const ForwardResult r = forward(qkv, qkv, qkv, o);
  EXPECT_EQ(r.seed, 10);
  EXPECT_EQ(r.offset, 0);
  EXPECT_EQ(r.numels, 32);
  const double mx[2][4] = {{1.33612561, 0.15099691, 0.83408016, 0.51408333}, {0.29119930, 0.77636951, 0.33583462, 1.00331867}};
  const double sm[2][4] = {{1.59921753, 3.39330482, 2.08144379, 2.87661767}, {3.14441872, 2.64547515, 3.30701256, 2.45223570}};
  expect_stats(r.softmax_max, mx, 2e-6);
  expect_stats(r.softmax_sum, sm, 2e-6);
  EXPECT_EQ(rng_state().offset, 8);  // advanced by ceil(32 / 4)
}

// The reference rounds float64 results once to fp16/bf16 (round-to-odd through float), not
// twice: a value just above a half-precision midpoint must round up even though its nearest
// float IS the midpoint.
TEST(ReferenceRounding, DoubleToHalfRoundsOnce) {
  const double eps = std::ldexp(1.0, -40);
  struct Case {
    double x;
    uint16_t fp16_bits, bf16_bits;
  };
  const Case cases[] = {
      {1.0 + std::ldexp(1.0, -11) + eps, 0x3c01, 0x3f80},   // fp16: above midpoint -> up
      {1.0 + std::ldexp(1.0, -11) - eps, 0x3c00, 0x3f80},   // below -> down
      {1.0 + std::ldexp(1.0, -11), 0x3c00, 0x3f80},         // exact tie -> even
      {1.0 + std::ldexp(3.0, -11), 0x3c02, 0x3f80},         // exact tie -> even (up)
      {1.0 + std::ldexp(1.0, -8) + eps, 0x3c04, 0x3f81},    // bf16: above midpoint -> up
      {1.0 + std::ldexp(1.0, -8) - eps, 0x3c04, 0x3f80},
      {-(1.0 + std::ldexp(1.0, -8) + eps), 0xbc04, 0xbf81},
  };
  for (const Case& c : cases) {
    fp16 h;
    bf16 b;
    reference::store_rounded(&h, DType::float16, 0, c.x);
    reference::store_rounded(&b, DType::bfloat16, 0, c.x);
    EXPECT_EQ(h.bits, c.fp16_bits) << c.x;
    EXPECT_EQ(b.bits, c.bf16_bits) << c.x;
  }
  float f;
  reference::store_rounded(&f, DType::float32, 0, 1.0 + std::ldexp(1.0, -24) + eps);
  EXPECT_EQ(f, 1.0f + std::ldexp(1.0f, -23));
}

// SPEC §4: a fully masked row is "uniform" by default (max -FLT_MAX, sum S2, out = mean of V);
// inner_precise 2 makes it an invalid line (out 0, max -FLT_MAX, sum +FLT_MAX).
TEST(ReferenceForward, FullyMaskedRows) {
  const int64_t S1 = 3, S2 = 5, D = 2;
  std::vector<float> q(S1 * D), k(S2 * D), v(S2 * D);
  for (size_t i = 0; i < q.size(); ++i) q[i] = 0.1f * float(i) - 0.2f;
  for (size_t i = 0; i < k.size(); ++i) k[i] = 0.3f * float(i % 7) - 0.5f;
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i * i % 11) - 3.0f;
  std::vector<uint8_t> mask(S1 * S2, 0);
  for (int64_t j = 0; j < S2; ++j) mask[size_t(1 * S2 + j)] = 1;  // row 1 fully masked
  mask[0] = 1;
  for (int64_t inner : {0, 2}) {
    Options o;
    o.input_layout = "BNSD";
    o.head_num = 1;
    o.sparse_mode = 1;
    o.inner_precise = inner;
    o.backend = Backend::reference;
    o.atten_mask = TensorView::contiguous(mask.data(), DType::uint8, {S1, S2});
    const ForwardResult r = forward(TensorView::contiguous(q.data(), DType::float32, {1, 1, S1, D}),
                                    TensorView::contiguous(k.data(), DType::float32, {1, 1, S2, D}),
                                    TensorView::contiguous(v.data(), DType::float32, {1, 1, S2, D}), o);
    const float* out = static_cast<const float*>(r.attention_out.data());
    const float* mx = static_cast<const float*>(r.softmax_max.data());
    const float* sm = static_cast<const float*>(r.softmax_sum.data());
    for (int kk = 0; kk < 8; ++kk) {
      EXPECT_EQ(mx[1 * 8 + kk], -3.4028234663852886e38f);
      EXPECT_EQ(sm[1 * 8 + kk], inner == 2 ? 3.4028234663852886e38f : float(S2));
    }
    for (int64_t d = 0; d < D; ++d) {
      double mean = 0;
      for (int64_t j = 0; j < S2; ++j) mean += v[size_t(j * D + d)];
      mean /= double(S2);
      if (inner == 2) {
        EXPECT_EQ(out[1 * D + d], 0.0f);
      } else {
        EXPECT_NEAR(out[1 * D + d], mean, 1e-6);
      }
      // Row 0 (partly masked) is a normal softmax over keys 1..4.
      double m0 = -1e300, s0 = 0, o0 = 0;
      std::vector<double> x(S2);
      for (int64_t j = 1; j < S2; ++j) {
        double qk = 0;
        for (int64_t e = 0; e < D; ++e) qk += double(q[size_t(e)]) * k[size_t(j * D + e)];
        x[size_t(j)] = qk;
        m0 = std::max(m0, qk);
      }
      for (int64_t j = 1; j < S2; ++j) s0 += std::exp(x[size_t(j)] - m0);
      for (int64_t j = 1; j < S2; ++j) o0 += std::exp(x[size_t(j)] - m0) / s0 * v[size_t(j * D + d)];
      EXPECT_NEAR(out[d], o0, 1e-6);
      EXPECT_NEAR(mx[0], m0, 1e-6);
      EXPECT_NEAR(sm[0], s0, 1e-6);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// float64 gradient checks.

struct Buf {
  std::vector<int64_t> shape;
  std::vector<double> v;
  TensorView view() const { return TensorView::contiguous(v.data(), DType::float64, shape); }
};
Buf random_buf(std::vector<int64_t> shape, std::mt19937_64& rng, double sd = 1.0) {
  Buf b{shape, {}};
  int64_t n = 1;
  for (int64_t e : shape) n *= e;
  std::normal_distribution<double> nd(0.0, sd);
  for (int64_t i = 0; i < n; ++i) b.v.push_back(nd(rng));
  return b;
}

struct GradCase {
  std::string name;
  Options opt;  // layout, head_num, masks, modes, scale, keep_prob, ... (no pse, no backend)
  std::vector<int64_t> qshape, kshape;
  std::vector<int64_t> pse_shape;  // empty: no pse
  bool slopes = false;             // pse is a float32 slope tensor (pse_type 2/3)
  int max_checks = 1 << 30;        // per tensor: check at most this many (random) elements
  std::vector<int64_t> zero_q_rows;  // TND token rows of dq / out that must be exactly 0
};

void run_grad_case(const GradCase& c) {
  SCOPED_TRACE(c.name);
  std::mt19937_64 rng(1234);
  Buf q = random_buf(c.qshape, rng), k = random_buf(c.kshape, rng), v = random_buf(c.kshape, rng);
  Buf dy = random_buf(c.qshape, rng);
  Buf pse;
  std::vector<float> slopes;
  Options o = c.opt;
  o.backend = Backend::reference;
  if (!c.pse_shape.empty()) {
    pse = random_buf(c.pse_shape, rng, c.slopes ? 0.3 : 1.0);
    if (c.slopes)
      for (double& s : pse.v) s = std::fabs(s);
  }
  auto set_pse = [&](Options& opt) {
    if (c.pse_shape.empty()) return;
    if (c.slopes) {
      slopes.assign(pse.v.begin(), pse.v.end());
      opt.pse = TensorView::contiguous(slopes.data(), DType::float32, pse.shape);
    } else {
      opt.pse = pse.view();
    }
  };
  auto loss = [&]() {
    Options opt = o;
    set_pse(opt);
    const ForwardResult r = forward(q.view(), k.view(), v.view(), opt);
    const double* out = static_cast<const double*>(r.attention_out.data());
    double l = 0;
    for (size_t i = 0; i < dy.v.size(); ++i) l += out[i] * dy.v[i];
    return l;
  };

  Options opt = o;
  set_pse(opt);
  const ForwardResult r = forward(q.view(), k.view(), v.view(), opt);
  ASSERT_EQ(r.attention_out.spec.dtype, DType::float64);
  const ForwardSaved saved{r.softmax_max.view(), r.softmax_sum.view(), r.attention_out.view(), r.seed, r.offset, r.numels};
  const BackwardResult g = backward(q.view(), k.view(), v.view(), dy.view(), opt, saved);
  for (double x : std::vector<double>(static_cast<const double*>(r.attention_out.data()),
                                      static_cast<const double*>(r.attention_out.data()) + q.v.size()))
    ASSERT_TRUE(std::isfinite(x));

  const int64_t row_elems = c.qshape.back() * (c.qshape.size() == 3 ? c.qshape[1] : 1);
  for (int64_t row : c.zero_q_rows) {
    for (int64_t e = 0; e < row_elems; ++e) {
      EXPECT_EQ(static_cast<const double*>(r.attention_out.data())[row * row_elems + e], 0.0) << "out row " << row;
      EXPECT_EQ(static_cast<const double*>(g.dq.data())[row * row_elems + e], 0.0) << "dq row " << row;
    }
  }

  auto check = [&](const char* what, std::vector<double>& param, const Tensor& grad, bool grad_is_float) {
    std::vector<size_t> idx(param.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    if (int(idx.size()) > c.max_checks) {
      std::shuffle(idx.begin(), idx.end(), rng);
      idx.resize(size_t(c.max_checks));
    }
    int bad = 0;
    for (size_t i : idx) {
      const double saved_v = param[i];
      const double h = grad_is_float ? 1e-3 : 1e-5;  // slopes travel as float32: a coarser step
      param[i] = saved_v + h;
      const double lp = loss();
      param[i] = saved_v - h;
      const double lm = loss();
      param[i] = saved_v;
      const double fd = (lp - lm) / (2 * h);
      const double an = grad_is_float ? static_cast<const float*>(grad.data())[i] : static_cast<const double*>(grad.data())[i];
      const double tol = grad_is_float ? 2e-3 * (1 + std::fabs(fd)) : 2e-6 * (1 + std::fabs(fd));
      if (std::fabs(an - fd) > tol && ++bad <= 5)
        ADD_FAILURE() << what << "[" << i << "]: analytic " << an << " vs finite difference " << fd;
    }
    EXPECT_EQ(bad, 0) << what;
  };
  check("dq", q.v, g.dq, false);
  check("dk", k.v, g.dk, false);
  check("dv", v.v, g.dv, false);
  if (!c.pse_shape.empty()) {
    ASSERT_EQ(g.dpse.spec.shape, c.pse_shape);
    if (c.slopes) {
      // Perturb the float32 slopes through pse.v (copied to float32 in set_pse).
      check("dslope", pse.v, g.dpse, true);
    } else {
      check("dpse", pse.v, g.dpse, false);
    }
  }
}

Options layout_opt(const char* layout, int64_t heads) {
  Options o;
  o.input_layout = layout;
  o.head_num = heads;
  return o;
}

TEST(ReferenceGrad, BnsdGqaMaskBandDropoutPse1) {
  GradCase c;
  c.name = "BNSD GQA, mode 0 mask + band, dropout, pse_type 1 (B,N1,S1,S2)";
  c.opt = layout_opt("BNSD", 4);
  c.qshape = {2, 4, 5, 3};
  c.kshape = {2, 2, 7, 3};
  static std::vector<uint8_t> mask;
  std::mt19937 r(7);
  mask.resize(2 * 5 * 7);
  for (auto& m : mask) m = (r() % 5) == 0;
  c.opt.atten_mask = TensorView::contiguous(mask.data(), DType::uint8, {2, 1, 5, 7});
  c.opt.sparse_mode = 0;
  c.opt.pre_tokens = 3;
  c.opt.next_tokens = 1;
  c.opt.keep_prob = 0.8;
  c.opt.rng = RngState{7, 3};
  c.opt.scale = 0.4;
  c.opt.pse_type = 1;
  c.pse_shape = {2, 4, 5, 7};
  run_grad_case(c);
}

TEST(ReferenceGrad, BshCausalPse0RowBroadcast) {
  GradCase c;
  c.name = "BSH, mode 3 (S1 < S2), pse_type 0 (1,N1,1,S2)";
  c.opt = layout_opt("BSH", 2);
  c.qshape = {2, 4, 8};
  c.kshape = {2, 6, 4};
  static std::vector<uint8_t> tmpl = causal_template();
  c.opt.atten_mask = TensorView::contiguous(tmpl.data(), DType::boolean, {2048, 2048});
  c.opt.sparse_mode = 3;
  c.opt.scale = 0.7;
  c.opt.pse_type = 0;
  c.pse_shape = {1, 2, 1, 6};
  run_grad_case(c);
}

TEST(ReferenceGrad, BsndBandAlibi2SlopesBN) {
  GradCase c;
  c.name = "BSND, mode 4 band, pse_type 2 slopes (B,N1), q/kv start";
  c.opt = layout_opt("BSND", 2);
  c.qshape = {2, 4, 2, 3};
  c.kshape = {2, 6, 2, 3};
  static std::vector<uint8_t> tmpl = causal_template();
  c.opt.atten_mask = TensorView::contiguous(tmpl.data(), DType::boolean, {2048, 2048});
  c.opt.sparse_mode = 4;
  c.opt.pre_tokens = 2;
  c.opt.next_tokens = 1;
  c.opt.pse_type = 2;
  c.opt.q_start_idx = std::vector<int64_t>{1};
  c.opt.kv_start_idx = std::vector<int64_t>{-2};
  c.pse_shape = {2, 2};
  c.slopes = true;
  run_grad_case(c);
}

TEST(ReferenceGrad, SbhFullAlibi3SlopesNDropout) {
  GradCase c;
  c.name = "SBH, no mask, pse_type 3 slopes (N1,), dropout 0.6";
  c.opt = layout_opt("SBH", 2);
  c.qshape = {3, 2, 4};
  c.kshape = {5, 2, 4};
  c.opt.keep_prob = 0.6;
  c.opt.rng = RngState{99, 12345};
  c.opt.pse_type = 3;
  c.pse_shape = {2};
  c.slopes = true;
  run_grad_case(c);
}

GradCase tnd_case(int64_t inner_precise) {
  GradCase c;
  c.name = std::string("TND, empty sequence, fully masked row, inner_precise ") + std::to_string(inner_precise);
  c.opt = layout_opt("TND", 2);
  c.qshape = {6, 2, 2};  // token 5 belongs to no sequence
  c.kshape = {8, 1, 2};
  c.opt.actual_seq_qlen = std::vector<int64_t>{2, 2, 5};
  c.opt.actual_seq_kvlen = std::vector<int64_t>{3, 3, 7};
  static std::vector<uint8_t> mask;
  mask.assign(3 * 4, 0);
  for (int j = 0; j < 4; ++j) mask[1 * 4 + j] = 1;  // row 1 of every sequence fully masked
  mask[2 * 4 + 3] = 1;
  c.opt.atten_mask = TensorView::contiguous(mask.data(), DType::boolean, {3, 4});
  c.opt.sparse_mode = 0;
  c.opt.inner_precise = inner_precise;
  c.opt.keep_prob = 0.75;
  c.opt.rng = RngState{5, 0};
  c.opt.pse_type = 2;
  c.pse_shape = {2};
  c.slopes = true;
  c.zero_q_rows = {5};
  if (inner_precise == 2) c.zero_q_rows = {1, 3, 5};  // the fully masked rows of sequences 0 and 2
  return c;
}

TEST(ReferenceGrad, TndUniformRows) { run_grad_case(tnd_case(0)); }
TEST(ReferenceGrad, TndInvalidLineRows) { run_grad_case(tnd_case(2)); }

TEST(ReferenceGrad, TndMode8BandAndCausal) {
  GradCase c;
  c.name = "TND mode 8, pse_type 1 tensor";
  c.opt = layout_opt("TND", 2);
  c.qshape = {7, 2, 3};
  c.kshape = {9, 2, 3};
  c.opt.actual_seq_qlen = std::vector<int64_t>{0, 3, 7};
  c.opt.actual_seq_kvlen = std::vector<int64_t>{0, 4, 9};
  static std::vector<uint8_t> tmpl = causal_template();
  c.opt.atten_mask = TensorView::contiguous(tmpl.data(), DType::boolean, {2048, 2048});
  c.opt.sparse_mode = 8;
  c.opt.pre_tokens = 1;
  c.opt.next_tokens = 0;
  run_grad_case(c);
}

TEST(ReferenceGrad, CompressedAlibiPse) {
  GradCase c;
  c.name = "compressed (1,N1,1024,S2) pse_type 1, mode 2";
  c.opt = layout_opt("BNSD", 1);
  c.qshape = {1, 1, 1030, 1};
  c.kshape = {1, 1, 1030, 1};
  static std::vector<uint8_t> tmpl = causal_template();
  c.opt.atten_mask = TensorView::contiguous(tmpl.data(), DType::boolean, {2048, 2048});
  c.opt.sparse_mode = 2;
  c.opt.scale = 0.5;
  c.pse_shape = {1, 1, 1024, 1030};
  c.max_checks = 12;
  run_grad_case(c);
}

}  // namespace
}  // namespace speedattn
