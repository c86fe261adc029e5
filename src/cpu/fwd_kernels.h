// Entry points of the CPU forward kernels (listed in src/api/kernel_registry.cpp).
// Each is compiled in the file of its ISA (fwd_<isa>.cpp) and may only be called when the
// dispatcher has checked that the CPU supports that ISA.
#pragma once

#include "core/problem.h"

namespace speedattn {
namespace cpu {

// Portable (baseline flags; also builds on non-x86): fp32 compute for every dtype.
void fwd_scalar(const Problem& p);
// AVX2 + FMA + F16C: the portable engine compiled for AVX2 (fp32 compute).
void fwd_avx2(const Problem& p);
// AVX-512 (F/BW/VL/DQ): fp32 FMA micro-kernels, conversion on load for bf16 / fp16; problems
// with S1 * G <= 16 rows per kv head use its decode engine (K/V streamed once, no transpose).
void fwd_avx512(const Problem& p);
// AMX-BF16 for bfloat16 inputs (falls back to fwd_avx512 for tiny row counts).
void fwd_amx_bf16(const Problem& p);
// AMX-BF16 for float16 inputs via an exact hi/lo bf16 split (3 tile passes per GEMM).
void fwd_amx_fp16(const Problem& p);
// AMX-BF16 for float32 inputs via an exact three-part bf16 split (6 tile passes per GEMM).
void fwd_amx_fp32(const Problem& p);

}  // namespace cpu
}  // namespace speedattn
