// Run-time dispatch (src/api/kernel_registry.cpp): the ISA cap and the per-problem choice of
// kernels whose registry entry has a `suits` predicate.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "api/dispatch.h"
#include "core/problem.h"

using namespace speedattn;

namespace {

// The fields select_backward(p) reads: dtype, per-sequence lengths, group size.
Problem shape(DType dt, std::vector<int64_t> sq, std::vector<int64_t> skv, int64_t G) {
  Problem p;
  p.dtype = dt;
  p.sq = std::move(sq);
  p.skv = std::move(skv);
  p.G = G;
  return p;
}

TEST(Dispatch, Fp32BackwardUsesAmxFromFiveHundredTwelveRowsAndKeys) {
  if (detected_isa() != Isa::amx) GTEST_SKIP() << "no AMX on this machine";
  const std::string amx = "bwd_amx_fp32", fma = "bwd_avx512_fp32";
  EXPECT_EQ(select_backward(shape(DType::float32, {2048}, {2048}, 1)).name, amx);
  EXPECT_EQ(select_backward(shape(DType::float32, {512}, {512}, 1)).name, amx);
  EXPECT_EQ(select_backward(shape(DType::float32, {511}, {2048}, 1)).name, fma);   // rows
  EXPECT_EQ(select_backward(shape(DType::float32, {2048}, {511}, 1)).name, fma);   // keys
  EXPECT_EQ(select_backward(shape(DType::float32, {128}, {512}, 4)).name, amx);    // GQA: 512 rows per kv head
  EXPECT_EQ(select_backward(shape(DType::float32, {3, 600}, {1, 700}, 1)).name, amx);  // TND: longest sequences
  EXPECT_EQ(select_backward(DType::float32).name, amx);  // dtype only: the kernel for large problems
  // other dtypes have no threshold
  EXPECT_EQ(select_backward(shape(DType::bfloat16, {16}, {16}, 1)).name, std::string("bwd_amx_bf16"));
}

TEST(Dispatch, IsaCapAppliesToPerProblemChoice) {
  if (int(detected_isa()) < int(Isa::avx512)) GTEST_SKIP() << "no AVX-512 on this machine";
  ASSERT_EQ(setenv("SPEEDATTN_MAX_ISA", "avx2", 1), 0);
  const std::string got = select_backward(shape(DType::float32, {2048}, {2048}, 1)).name;
  unsetenv("SPEEDATTN_MAX_ISA");
  EXPECT_EQ(got, "bwd_avx2_fp32");
}

}  // namespace
