// The portable forward kernel: fwd_driver.h + the plain-C++ fp32 engine, baseline flags.
// Builds on any architecture (no intrinsics). Tile sizes: kBq 128 rows x kBk 128 keys keep
// S (64 KiB) + Kt/V (D=128: 64 KiB each) in L2 and halve the per-row cost of the strided K^T
// transpose against 64 rows; the scalar path is a correctness fallback, not tuned.
#define SA_NS fwd_scalar_ns
#include "cpu/fwd_driver.h"

namespace speedattn {
namespace SA_NS {
#include "cpu/fwd_engine_portable.h"
}  // namespace SA_NS

namespace cpu {
void fwd_scalar(const Problem& p) { SA_NS::forward<SA_NS::EnginePortable<128, 128>>(p); }
}  // namespace cpu
}  // namespace speedattn
