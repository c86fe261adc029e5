// The AVX-512 backward kernel (every dtype, fp32 compute): bwd_driver.h with the engine of
// bwd_engine_avx512.h (FMA micro-kernel for all five products of a tile, 16-lane element
// semantics, 16-lane Philox).
// Tiles: kBq 64 q rows x kBk 128 keys (dev/bwd_01_tiles.md has the measurements).
#include <immintrin.h>

#define SA_NS bwd_avx512_ns
#include "cpu/bwd_driver.h"

namespace speedattn {
namespace SA_NS {

#include "cpu/bwd_engine_avx512.h"

}  // namespace SA_NS

namespace cpu {
void bwd_avx512(const Problem& p) { SA_NS::bwd::backward<SA_NS::BwdEngineAvx512<64, 128>>(p); }
}  // namespace cpu
}  // namespace speedattn
