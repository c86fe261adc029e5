// CPU feature detection and the SPEEDATTN_MAX_ISA cap (src/common/cpu_features.cpp).
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "api/dispatch.h"
#include "common/cpu_features.h"
#include "speedattn/speedattn.h"

namespace speedattn {
namespace {

struct EnvGuard {
  std::string saved;
  bool had = false;
  EnvGuard() {
    if (const char* v = std::getenv("SPEEDATTN_MAX_ISA")) {
      had = true;
      saved = v;
    }
  }
  ~EnvGuard() {
    if (had) setenv("SPEEDATTN_MAX_ISA", saved.c_str(), 1);
    else unsetenv("SPEEDATTN_MAX_ISA");
  }
};

TEST(CpuFeatures, TiersAreConsistent) {
  const CpuFeatures& f = cpu_info();
  const Isa det = detected_isa();
  if (det >= Isa::avx2) {
    EXPECT_TRUE(f.avx2 && f.fma && f.f16c);
  }
  if (det >= Isa::avx512) {
    EXPECT_TRUE(f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512_bf16 && f.avx512_fp16);
  }
  if (det == Isa::amx) {
    EXPECT_TRUE(f.amx_tile && f.amx_bf16 && f.amx_usable);
  }
  if (f.amx_tile) {
    EXPECT_TRUE(request_amx_permission() == f.amx_usable);
  }
  const auto names = cpu_features();
  for (const auto& n : names) EXPECT_FALSE(n.empty());
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    EXPECT_TRUE(f.avx2 && f.fma);
  }
  if (__builtin_cpu_supports("avx512f")) {
    EXPECT_TRUE(f.avx512f);
  }
#endif
  std::string list;
  for (const auto& n : names) list += n + " ";
  std::printf("detected isa: %s; features: %s\n", isa_name(det), list.c_str());
}

TEST(CpuFeatures, IsaNames) {
  EXPECT_STREQ(isa_name(Isa::scalar), "scalar");
  EXPECT_STREQ(isa_name(Isa::avx2), "avx2");
  EXPECT_STREQ(isa_name(Isa::avx512), "avx512");
  EXPECT_STREQ(isa_name(Isa::amx), "amx");
}

TEST(CpuFeatures, EnvCap) {
  EnvGuard guard;
  const Isa det = detected_isa();
  unsetenv("SPEEDATTN_MAX_ISA");
  EXPECT_EQ(isa_limit(), det);
  EXPECT_EQ(isa_cap(), "none");
  setenv("SPEEDATTN_MAX_ISA", "", 1);
  EXPECT_EQ(isa_limit(), det);
  for (Isa cap : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::amx}) {
    setenv("SPEEDATTN_MAX_ISA", isa_name(cap), 1);
    EXPECT_EQ(isa_limit(), int(cap) < int(det) ? cap : det);
    EXPECT_EQ(isa_cap(), isa_name(cap));
  }
  setenv("SPEEDATTN_MAX_ISA", "AVX2", 1);  // case-insensitive
  EXPECT_LE(int(isa_limit()), int(Isa::avx2));
  setenv("SPEEDATTN_MAX_ISA", "sse9", 1);
  try {
    isa_limit();
    FAIL() << "expected ValueError";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("SPEEDATTN_MAX_ISA"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("sse9"), std::string::npos);
  }
  EXPECT_THROW(isa_cap(), ValueError);
}

}  // namespace
}  // namespace speedattn
