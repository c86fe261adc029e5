// The AVX-512 backward kernel (every dtype, fp32 compute): bwd_driver.h with the engine of
// bwd_engine_avx512.h (FMA micro-kernel for all five products of a tile, 16-lane element
// semantics, 16-lane Philox) and the worker over kv superblocks of bwd_worker_super.h with
// FMA products.
// Tiles: kBq 64 q rows x kBk 128 keys, superblocks of kSubs = 4 key tiles
// (dev/bwd_01_tiles.md, dev/bwd_05_fp32_gemm.md have the measurements).
#include <immintrin.h>

#define SA_NS bwd_avx512_ns
#include "cpu/bwd_driver.h"

namespace speedattn {
namespace SA_NS {

#include "cpu/bwd_engine_avx512.h"

#include "cpu/bwd_worker_super.h"
}  // namespace SA_NS

namespace cpu {
void bwd_avx512(const Problem& p) {
  using E = SA_NS::BwdEngineAvx512<64, 128>;
  using W = SA_NS::bwd::WorkerSuper<E, 4, SA_NS::bwd::FmaProducts<E>>;
  SA_NS::bwd::backward_with<W>(p, W::kSup, SA_NS::bwd::gemm_dsum<E>);
}
}  // namespace cpu
}  // namespace speedattn
