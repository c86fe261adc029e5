// The kernel registry: every compiled forward / backward kernel, listed once, best first
// within each dtype. Dispatch (select_*), `speedattn info`, the tests and the benchmarks all
// read these lists. A kernel is only ever called when its isa <= isa_limit().
#include "api/dispatch.h"
#include "cpu/bwd_kernels.h"
#include "cpu/fwd_kernels.h"

namespace speedattn {

// x86-only kernels (their files compile to nothing elsewhere); the scalar ones build anywhere.
#if defined(__x86_64__) || defined(_M_X64)
#define SA_X86(...) __VA_ARGS__
#else
#define SA_X86(...)
#endif

const std::vector<ForwardKernel>& forward_kernels() {
  static const std::vector<ForwardKernel> k = {
      // bfloat16: AMX tiles for QK^T and PV (P kept as two bf16 halves), AVX-512 softmax.
      SA_X86({"fwd_amx_bf16", Isa::amx, DType::bfloat16, &cpu::fwd_amx_bf16},
             {"fwd_avx512_bf16", Isa::avx512, DType::bfloat16, &cpu::fwd_avx512},
             {"fwd_avx2_bf16", Isa::avx2, DType::bfloat16, &cpu::fwd_avx2},)
      {"fwd_scalar_bf16", Isa::scalar, DType::bfloat16, &cpu::fwd_scalar},
      // float16: never fp16 accumulation. AMX: exact hi/lo bf16 split, 3 passes per GEMM;
      // otherwise fp32 compute (converted on load).
      SA_X86({"fwd_amx_fp16", Isa::amx, DType::float16, &cpu::fwd_amx_fp16},
             {"fwd_avx512_fp16", Isa::avx512, DType::float16, &cpu::fwd_avx512},
             {"fwd_avx2_fp16", Isa::avx2, DType::float16, &cpu::fwd_avx2},)
      {"fwd_scalar_fp16", Isa::scalar, DType::float16, &cpu::fwd_scalar},
      // float32: AMX with an exact three-part bf16 split (6 passes per GEMM); FMA micro-kernels.
      SA_X86({"fwd_amx_fp32", Isa::amx, DType::float32, &cpu::fwd_amx_fp32},
             {"fwd_avx512_fp32", Isa::avx512, DType::float32, &cpu::fwd_avx512},
             {"fwd_avx2_fp32", Isa::avx2, DType::float32, &cpu::fwd_avx2},)
      {"fwd_scalar_fp32", Isa::scalar, DType::float32, &cpu::fwd_scalar},
  };
  return k;
}
#undef SA_X86

// Backward kernels: listed in src/cpu/bwd_registry.cpp (best first within each dtype).
const std::vector<BackwardKernel>& backward_kernels() {
  static const std::vector<BackwardKernel> k = cpu::bwd_kernel_list();
  return k;
}

const ForwardKernel& select_forward(DType dtype) {
  static const ForwardKernel reference{"reference", Isa::scalar, DType::float32, &reference_forward};
  const Isa limit = isa_limit();
  for (const ForwardKernel& k : forward_kernels())
    if (k.dtype == dtype && static_cast<int>(k.isa) <= static_cast<int>(limit)) return k;
  return reference;
}

// The first kernel of dtype within the ISA cap that suits p (p == nullptr: any problem).
static const BackwardKernel& first_backward(DType dtype, const Problem* p) {
  static const BackwardKernel reference{"reference", Isa::scalar, DType::float32, &reference_backward};
  const Isa limit = isa_limit();
  for (const BackwardKernel& k : backward_kernels())
    if (k.dtype == dtype && static_cast<int>(k.isa) <= static_cast<int>(limit) && (!p || !k.suits || k.suits(*p)))
      return k;
  return reference;
}
const BackwardKernel& select_backward(DType dtype) { return first_backward(dtype, nullptr); }
const BackwardKernel& select_backward(const Problem& p) { return first_backward(p.dtype, &p); }

}  // namespace speedattn
