// The backward kernels, best first within each dtype (read by backward_kernels()).
#include "cpu/bwd_kernels.h"

#include <algorithm>

namespace speedattn {
namespace cpu {

// bwd_amx_fp32 splits each 512-key superblock's K / V and recomputes every row's Dsum on the
// tiles: below ~512 rows per kv head or 512 keys that does not amortise and bwd_avx512_fp32 is
// faster (B4 N16 S256 D128 0.94x, B16 N16 S128 0.88x; from S512 the AMX kernel wins by 2-10%,
// dev/bwd_09_fp32_amx.md).
static bool amx_fp32_suits(const Problem& p) {
  constexpr int64_t kMin = 512;
  int64_t sq = 0, skv = 0;
  for (size_t b = 0; b < p.sq.size(); ++b) {
    sq = std::max(sq, p.sq[b]);
    skv = std::max(skv, p.skv[b]);
  }
  return sq * p.G >= kMin && skv >= kMin;
}

std::vector<BackwardKernel> bwd_kernel_list() {
  return {
      // float32: S = Q K^T and dP = dY V^T on AMX tiles (exact three-part bf16 splits, 6 passes),
      // the rest on FMA micro-kernels (from 512 rows per kv head and keys); FMA micro-kernels /
      // portable loops.
      {"bwd_amx_fp32", Isa::amx, DType::float32, &bwd_amx_fp32, &amx_fp32_suits},
      {"bwd_avx512_fp32", Isa::avx512, DType::float32, &bwd_avx512},
      {"bwd_avx2_fp32", Isa::avx2, DType::float32, &bwd_avx2},
      {"bwd_scalar_fp32", Isa::scalar, DType::float32, &bwd_scalar},
      // bfloat16: AMX tiles for the five products (P', dS as exact hi + lo bf16 pairs, fp32 accumulation);
      // fp32 compute (converted on load) below it.
      {"bwd_amx_bf16", Isa::amx, DType::bfloat16, &bwd_amx_bf16},
      {"bwd_avx512_bf16", Isa::avx512, DType::bfloat16, &bwd_avx512},
      {"bwd_avx2_bf16", Isa::avx2, DType::bfloat16, &bwd_avx2},
      {"bwd_scalar_bf16", Isa::scalar, DType::bfloat16, &bwd_scalar},
      // float16: AMX tiles on exact hi + lo bf16 splits of every value (fp32 accumulation);
      // fp32 compute (converted on load; never fp16 accumulation) below it.
      {"bwd_amx_fp16", Isa::amx, DType::float16, &bwd_amx_fp16},
      {"bwd_avx512_fp16", Isa::avx512, DType::float16, &bwd_avx512},
      {"bwd_avx2_fp16", Isa::avx2, DType::float16, &bwd_avx2},
      {"bwd_scalar_fp16", Isa::scalar, DType::float16, &bwd_scalar},
  };
}

}  // namespace cpu
}  // namespace speedattn
