// Kernel registry and run-time dispatch by dtype and CPU features (capped by the
// SPEEDATTN_MAX_ISA environment variable: scalar | avx2 | avx512 | amx).
//
// Every compiled kernel is listed once in kernel_registry.cpp; dispatch, `speedattn info`,
// the tests (which run every kernel the machine supports) and the benchmarks all read it.
#pragma once

#include <string>
#include <vector>

#include "core/problem.h"

namespace speedattn {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2, amx = 3 };

const char* isa_name(Isa isa);
Isa detected_isa();  // best ISA this CPU and OS support (AMX only after tile permission is granted)
Isa isa_limit();     // min(detected_isa(), SPEEDATTN_MAX_ISA); the env var is read on every call

// Forward kernel: reads p (all inputs and p.out / p.smax_out / p.ssum_out set), writes the
// attention output (rounded once to p.dtype) and the statistics (8 identical floats per row).
using ForwardFn = void (*)(const Problem& p);
// Backward kernel: reads p (inputs, saved stats, p.out = attention_in, p.dy), writes
// p.dq/p.dk/p.dv (rounded once to p.dtype) and p.dpse_out when p.pse.kind != none.
using BackwardFn = void (*)(const Problem& p);

struct ForwardKernel {
  const char* name;  // e.g. "fwd_amx_bf16"
  Isa isa;
  DType dtype;
  ForwardFn run;
};
struct BackwardKernel {
  const char* name;
  Isa isa;
  DType dtype;
  BackwardFn run;
  // nullptr: dispatch uses the kernel for every problem of its dtype; else only where suits(p)
  // (a kernel below it in the list is faster on the others). Calls by name ignore it.
  bool (*suits)(const Problem& p) = nullptr;
};

const std::vector<ForwardKernel>& forward_kernels();    // best first within each dtype
const std::vector<BackwardKernel>& backward_kernels();  // best first within each dtype

// The reference backend (src/reference): plain loops, float64, no SIMD, no threads.
void reference_forward(const Problem& p);
void reference_backward(const Problem& p);

// The best registered kernel for dtype with isa <= isa_limit(); the reference if none.
const ForwardKernel& select_forward(DType dtype);
const BackwardKernel& select_backward(DType dtype);  // for large problems (ignores suits)
const BackwardKernel& select_backward(const Problem& p);  // the kernel dispatch runs for p

}  // namespace speedattn
