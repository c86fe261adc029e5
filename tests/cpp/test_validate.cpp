// Validation: layout -> strides, the sparse-mode plan (row_keys) against SPEC §3 formulas
// written out independently here, and typed errors.
#include <gtest/gtest.h>

#include <vector>

#include "api/validate.h"
#include "core/semantics.h"

using namespace speedattn;

namespace {

struct Qkv {
  std::vector<float> q, k, v;
  TensorView tq, tk, tv;
};

// B=2, N1=4, N2=2, S1=5, S2=7, D=3 in the given layout (contiguous). TND uses T1=5, T2=7.
Qkv make(const std::string& layout) {
  const int64_t B = 2, N1 = 4, N2 = 2, S1 = 5, S2 = 7, D = 3;
  std::vector<int64_t> qs, ks;
  if (layout == "BSH") qs = {B, S1, N1 * D}, ks = {B, S2, N2 * D};
  if (layout == "SBH") qs = {S1, B, N1 * D}, ks = {S2, B, N2 * D};
  if (layout == "BSND") qs = {B, S1, N1, D}, ks = {B, S2, N2, D};
  if (layout == "BNSD") qs = {B, N1, S1, D}, ks = {B, N2, S2, D};
  if (layout == "TND") qs = {S1, N1, D}, ks = {S2, N2, D};
  Qkv r;
  int64_t nq = 1, nk = 1;
  for (auto s : qs) nq *= s;
  for (auto s : ks) nk *= s;
  r.q.resize(size_t(nq));
  r.k.resize(size_t(nk));
  r.v.resize(size_t(nk));
  r.tq = TensorView::contiguous(r.q.data(), DType::float32, qs);
  r.tk = TensorView::contiguous(r.k.data(), DType::float32, ks);
  r.tv = TensorView::contiguous(r.v.data(), DType::float32, ks);
  return r;
}

// Independent row-major index of (b, n, s, d) in each layout.
int64_t expected_index(const std::string& layout, int64_t B, int64_t N, int64_t S, int64_t D, int64_t b, int64_t n,
                       int64_t s, int64_t d) {
  if (layout == "BSH") return ((b * S + s) * N + n) * D + d;
  if (layout == "SBH") return ((s * B + b) * N + n) * D + d;
  if (layout == "BSND") return ((b * S + s) * N + n) * D + d;
  if (layout == "BNSD") return ((b * N + n) * S + s) * D + d;
  return (s * N + n) * D + d;  // TND (b = 0, one sequence)
}

}  // namespace

TEST(Layout, StridesAddressEveryElement) {
  for (std::string layout : {"BSH", "SBH", "BSND", "BNSD", "TND"}) {
    Qkv t = make(layout);
    Options o;
    o.head_num = 4;
    o.input_layout = layout;
    if (layout == "TND") o.actual_seq_qlen = std::vector<int64_t>{5}, o.actual_seq_kvlen = std::vector<int64_t>{7};
    Forward f(t.tq, t.tk, t.tv, o);
    const Problem& p = ProblemAccess::of(f);
    EXPECT_EQ(p.N1, 4);
    EXPECT_EQ(p.N2, 2);
    EXPECT_EQ(p.G, 2);
    EXPECT_EQ(p.D, 3);
    const int64_t B = layout == "TND" ? 1 : 2;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t n = 0; n < 4; ++n)
        for (int64_t i = 0; i < 5; ++i)
          for (int64_t d = 0; d < 3; ++d)
            ASSERT_EQ(operand_offset(p, p.q, false, b, n, i) + d, expected_index(layout, B, 4, 5, 3, b, n, i, d))
                << layout;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t n = 0; n < 2; ++n)
        for (int64_t j = 0; j < 7; ++j)
          ASSERT_EQ(operand_offset(p, p.k, true, b, n, j), expected_index(layout, B, 2, 7, 3, b, n, j, 0)) << layout;
    // the output is contiguous with the query's shape
    for (int64_t n = 0; n < 4; ++n)
      ASSERT_EQ(operand_offset(p, p.out, false, 0, n, 2), expected_index(layout, B, 4, 5, 3, 0, n, 2, 0)) << layout;
  }
}

TEST(Layout, StridedViewKeepsStrides) {
  // BNSD query as a view with padded rows: stride of S is 2*D.
  std::vector<float> buf(2 * 4 * 5 * 6);
  TensorView q = TensorView::contiguous(buf.data(), DType::float32, {2, 4, 5, 3});
  q.stride[2] = 6, q.stride[1] = 30, q.stride[0] = 120;
  std::vector<float> kb(2 * 2 * 7 * 3);
  TensorView k = TensorView::contiguous(kb.data(), DType::float32, {2, 2, 7, 3});
  Options o;
  o.head_num = 4;
  o.input_layout = "BNSD";
  Forward f(q, k, k, o);
  const Problem& p = ProblemAccess::of(f);
  EXPECT_EQ(operand_offset(p, p.q, false, 1, 2, 3), 120 + 60 + 18);
}

namespace {

// SPEC §3 keep(i, j) for the generated part (no explicit mask), written independently.
bool spec_keep(int mode, int64_t i, int64_t j, int64_t S1, int64_t S2, int64_t pre, int64_t next, int64_t prefix) {
  switch (mode) {
    case 0: return i - pre <= j && j <= i + next;
    case 1: return true;
    case 2: return j <= i;
    case 3: return j <= i + (S2 - S1);
    case 4: return i + (S2 - S1) - pre <= j && j <= i + (S2 - S1) + next;
    case 5:
    case 6: return j <= i + (S2 - S1) || j < prefix;
  }
  return false;
}

std::vector<uint8_t> causal_template(int64_t rows) {
  std::vector<uint8_t> m(size_t(rows * 2048));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < 2048; ++j) m[size_t(i * 2048 + j)] = i < 2048 ? j > i : j >= 1024;
  return m;
}

}  // namespace

TEST(SparsePlan, RowKeysMatchSpecFormulas) {
  const std::vector<std::pair<int64_t, int64_t>> sizes = {{5, 5}, {3, 8}, {8, 3}, {1, 1}, {6, 9}};
  const std::vector<std::pair<int64_t, int64_t>> bands = {{2, 1}, {0, 0}, {5, 3}, {kMaxTokens, kMaxTokens}, {4, -1}, {-1, 3}};
  auto tmpl = causal_template(3072);
  for (auto [S1, S2] : sizes)
    for (int mode = 0; mode <= 6; ++mode)
      for (auto [pre, next] : bands) {
        std::vector<float> q(static_cast<size_t>(S1)), k(static_cast<size_t>(S2));
        TensorView tq = TensorView::contiguous(q.data(), DType::float32, {1, 1, S1, 1});
        TensorView tk = TensorView::contiguous(k.data(), DType::float32, {1, 1, S2, 1});
        std::vector<uint8_t> full(size_t(S1 * S2), 0);
        Options o;
        o.head_num = 1;
        o.input_layout = "BNSD";
        o.sparse_mode = mode;
        o.pre_tokens = pre;
        o.next_tokens = next;
        int64_t prefix = S1 > S2 ? S2 / 2 : S2 - S1 + (S1 / 2);
        if (mode == 5 || mode == 6) o.prefix = std::vector<int64_t>{prefix};
        if (mode == 0 || mode == 1)
          o.atten_mask = TensorView::contiguous(full.data(), DType::boolean, {S1, S2});
        else if (mode == 5)
          o.atten_mask = TensorView::contiguous(full.data(), DType::uint8, {1, 1, S1, S2});
        else
          o.atten_mask = TensorView::contiguous(tmpl.data(), DType::boolean, {mode == 6 ? 3072 : 2048, 2048});
        try {
          Forward f(tq, tk, tk, o);
          const Problem& p = ProblemAccess::of(f);
          for (int64_t i = 0; i < S1; ++i)
            for (int64_t j = 0; j < S2; ++j)
              ASSERT_EQ(position_kept(p, 0, 0, i, j), spec_keep(mode, i, j, S1, S2, pre, next, prefix))
                  << "mode " << mode << " S1 " << S1 << " S2 " << S2 << " pre " << pre << " next " << next << " (" << i
                  << "," << j << ")";
        } catch (const ValueError&) {
          // illegal (pre, next) for a band mode, or mode 3 rules: only band modes may reject
          ASSERT_TRUE(mode == 0 || mode == 4) << "mode " << mode;
        }
      }
}

TEST(SparsePlan, NoMaskMeansFullAttention) {
  std::vector<float> q(4), k(6);
  TensorView tq = TensorView::contiguous(q.data(), DType::float32, {1, 1, 4, 1});
  TensorView tk = TensorView::contiguous(k.data(), DType::float32, {1, 1, 6, 1});
  for (int mode : {0, 2, 3, 4}) {
    Options o;
    o.head_num = 1;
    o.input_layout = "BNSD";
    o.sparse_mode = mode;
    o.pre_tokens = 0, o.next_tokens = 0;
    Forward f(tq, tk, tk, o);
    const Problem& p = ProblemAccess::of(f);
    for (int64_t i = 0; i < 4; ++i)
      for (int64_t j = 0; j < 6; ++j) ASSERT_TRUE(position_kept(p, 0, 0, i, j));
  }
}

TEST(SparsePlan, TndModes7And8) {
  // three sequences: lengths q = {2, 0, 3}, kv = {4, 0, 3}
  std::vector<float> q(5), k(7);
  TensorView tq = TensorView::contiguous(q.data(), DType::float32, {5, 1, 1});
  TensorView tk = TensorView::contiguous(k.data(), DType::float32, {7, 1, 1});
  auto tmpl = causal_template(2048);
  for (int mode : {7, 8}) {
    Options o;
    o.head_num = 1;
    o.input_layout = "TND";
    o.sparse_mode = mode;
    o.pre_tokens = 1, o.next_tokens = 0;
    o.actual_seq_qlen = std::vector<int64_t>{2, 2, 5};
    o.actual_seq_kvlen = std::vector<int64_t>{4, 4, 7};
    o.atten_mask = TensorView::contiguous(tmpl.data(), DType::boolean, {2048, 2048});
    Forward f(tq, tk, tk, o);
    const Problem& p = ProblemAccess::of(f);
    const std::vector<int64_t> sq = {2, 0, 3}, skv = {4, 0, 3};
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t i = 0; i < sq[size_t(b)]; ++i)
        for (int64_t j = 0; j < skv[size_t(b)]; ++j) {
          const int64_t diag = skv[size_t(b)] - sq[size_t(b)];
          const bool band_seq = mode == 7 ? b == 2 : b == 0;
          bool want;
          if (band_seq) want = i + diag - 1 <= j && j <= i + diag;
          else want = mode == 7 ? j <= i + diag : j <= i;
          ASSERT_EQ(position_kept(p, b, 0, i, j), want) << mode << " " << b << " " << i << " " << j;
        }
    EXPECT_EQ(p.numels, 2 * 4 + 3 * 3);
    EXPECT_EQ(p.drop_base[2], 8);
    EXPECT_EQ(p.stat_base[2], 2);
  }
}

TEST(Errors, TypedErrors) {
  std::vector<float> q(8), k(8);
  TensorView tq = TensorView::contiguous(q.data(), DType::float32, {1, 2, 4});
  TensorView tk = TensorView::contiguous(k.data(), DType::float32, {1, 2, 4});
  Options o;
  o.head_num = 2;
  o.input_layout = "BSH";
  EXPECT_NO_THROW((Forward{tq, tk, tk, o}));
  TensorView kh = tk;
  kh.dtype = DType::float16;
  EXPECT_THROW((Forward{tq, kh, kh, o}), TypeError);
  Options bad = o;
  bad.input_layout = "XYZ";
  EXPECT_THROW((Forward{tq, tk, tk, bad}), ValueError);
  bad = o;
  bad.keep_prob = 0.0;
  EXPECT_THROW((Forward{tq, tk, tk, bad}), ValueError);
  bad = o;
  bad.head_num = 3;
  EXPECT_THROW((Forward{tq, tk, tk, bad}), ValueError);
  bad = o;
  bad.sparse_mode = 9;
  EXPECT_THROW((Forward{tq, tk, tk, bad}), ValueError);
  try {
    bad = o;
    bad.pse_type = 2;
    Forward f(tq, tk, tk, bad);
    FAIL();
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("pse"), std::string::npos);
  }
}

TEST(Errors, OverflowingShapeIsValueError) {
  float x = 0;
  TensorView q = TensorView::contiguous(&x, DType::float32, {1, 1, 1, 1});
  q.shape[0] = int64_t(1) << 40, q.shape[2] = int64_t(1) << 40;
  Options o;
  o.head_num = 1;
  o.input_layout = "BNSD";
  EXPECT_THROW((Forward{q, q, q, o}), ValueError);
}
