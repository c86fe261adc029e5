// The portable backward kernel: bwd_driver.h + the plain-C++ fp32 engine, baseline flags.
// Builds on any architecture (no intrinsics). Tiles kBq 64 x kBk 128 (S, dP 32 KiB each;
// K^T, V^T, K, dK, dV at D=128: 64 KiB each, all in L2); a correctness fallback, not tuned.
#define SA_NS bwd_scalar_ns
#include "cpu/bwd_driver.h"

namespace speedattn {
namespace SA_NS {
#include "cpu/bwd_engine_portable.h"
}  // namespace SA_NS

namespace cpu {
void bwd_scalar(const Problem& p) { SA_NS::bwd::backward<SA_NS::BwdEnginePortable<64, 128>>(p); }
}  // namespace cpu
}  // namespace speedattn
