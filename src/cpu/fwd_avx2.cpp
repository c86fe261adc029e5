// The AVX2 + FMA forward kernel: the portable fp32 engine (fwd_engine_portable.h) compiled
// with -mavx2 -mfma -mf16c so its 16-lane inner loops become 2 x ymm FMAs. Tiles as the
// scalar kernel but kBk 256 (S 64 KiB; Kt/V 128 KiB each at D=128: fits the 2 MiB L2).
#define SA_NS fwd_avx2_ns
#include "cpu/fwd_driver.h"

namespace speedattn {
namespace SA_NS {
#include "cpu/fwd_engine_portable.h"
}  // namespace SA_NS

namespace cpu {
void fwd_avx2(const Problem& p) { SA_NS::forward<SA_NS::EnginePortable<128, 256>>(p); }
}  // namespace cpu
}  // namespace speedattn
