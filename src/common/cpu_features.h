// CPU feature detection (CPUID + XGETBV) and the AMX tile permission request.
//
// Guarantees: every flag is true only if the CPU reports the instruction set AND the OS
// saves its register state (XCR0), so a kernel may use it. `amx_usable` additionally
// requires that the kernel granted this process XTILEDATA permission (requested once,
// thread-safe, the first time detection runs). On non-x86 builds every flag is false.
// This file and cpu_features.cpp compile without any ISA flags.
#pragma once

#include <string>
#include <vector>

namespace speedattn {

struct CpuFeatures {
  // AVX2 tier
  bool avx2 = false, fma = false, f16c = false;
  // AVX-512 family
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_bf16 = false, avx512_fp16 = false;
  // AMX (CPU + OS tile state); amx_usable = also permission granted by arch_prctl
  bool amx_tile = false, amx_bf16 = false, amx_fp16 = false;
  bool amx_usable = false;

  bool avx2_tier() const { return avx2 && fma && f16c; }
  // The avx512 tier matches the flags CMake gives *_avx512.cpp files (SPEEDATTN_AVX512_FLAGS:
  // F, BW, VL, DQ, BF16, FP16), so the compiler may use any of them there.
  bool avx512_tier() const {
    return avx2_tier() && avx512f && avx512bw && avx512vl && avx512dq && avx512_bf16 && avx512_fp16;
  }
  bool amx_tier() const { return avx512_tier() && amx_tile && amx_bf16 && amx_usable; }

  std::vector<std::string> names() const;  // e.g. {"avx2", "fma", "f16c", "avx512f", ..., "amx_bf16"}
};

// Detected once (first call, thread-safe); the AMX permission request happens then.
const CpuFeatures& cpu_info();

// Requests XTILEDATA permission for the process (idempotent, thread-safe); true if granted.
// cpu_info() calls it when the CPU and OS support AMX; kernels need not call it again.
bool request_amx_permission();

}  // namespace speedattn
