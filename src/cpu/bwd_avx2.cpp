// The AVX2 + FMA backward kernel: the portable fp32 engine compiled with -mavx2 -mfma -mf16c.
// Same tiles as the scalar kernel (kBq 64 x kBk 128).
#define SA_NS bwd_avx2_ns
#include "cpu/bwd_driver.h"

namespace speedattn {
namespace SA_NS {
#include "cpu/bwd_engine_portable.h"
}  // namespace SA_NS

namespace cpu {
void bwd_avx2(const Problem& p) { SA_NS::bwd::backward<SA_NS::BwdEnginePortable<64, 128>>(p); }
}  // namespace cpu
}  // namespace speedattn
