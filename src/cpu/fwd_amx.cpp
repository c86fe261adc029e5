// AMX-BF16 forward (placeholder until the tile engine lands): the AVX-512 kernel.
#include "cpu/fwd_kernels.h"
namespace speedattn {
namespace cpu {
void fwd_amx_bf16(const Problem& p) { fwd_avx512(p); }
}  // namespace cpu
}  // namespace speedattn
