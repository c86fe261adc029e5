// Entry points of the CPU backward kernels (listed in src/api/kernel_registry.cpp).
// Each is compiled in the file of its ISA (bwd_<isa>.cpp) and may only be called when the
// dispatcher has checked that the CPU supports that ISA. Every one handles every dtype
// (fp32 accumulation always) and every feature of SPEC §9.
#pragma once

#include <vector>

#include "api/dispatch.h"
#include "core/problem.h"

namespace speedattn {
namespace cpu {

// Portable (baseline flags; also builds on non-x86): fp32 compute for every dtype.
void bwd_scalar(const Problem& p);
// AVX2 + FMA + F16C: the portable engine compiled for AVX2.
void bwd_avx2(const Problem& p);
// AVX-512: fp32 FMA micro-kernels, conversion on load for bf16 / fp16.
void bwd_avx512(const Problem& p);
// AMX-BF16 for bfloat16 inputs.
void bwd_amx_bf16(const Problem& p);
// AMX-BF16 for float16 inputs: every value split exactly into two bf16 halves.
void bwd_amx_fp16(const Problem& p);
// AMX-BF16 for float32 inputs: S = Q K^T and dP = dY V^T on exact three-part bf16 splits, the
// rest as bwd_avx512.
void bwd_amx_fp32(const Problem& p);

// The backward kernel list, best first within each dtype (bwd_registry.cpp); returned by
// backward_kernels() in src/api/kernel_registry.cpp.
std::vector<BackwardKernel> bwd_kernel_list();

}  // namespace cpu
}  // namespace speedattn
