// Validation: user tensors + options -> Problem (SPEC §2-§7, §10). Every check runs here,
// before any work; failures throw TypeError (wrong type) or ValueError (wrong value) with a
// message naming the argument, the value received and what is allowed.
#pragma once

#include "core/problem.h"
#include "speedattn/speedattn.h"

namespace speedattn {

// Forward problem. Output pointers (out, smax_out, ssum_out) and rng are left unset.
Problem validate_forward(const TensorView& query, const TensorView& key, const TensorView& value,
                         const Options& options);

// Backward problem: the forward checks plus dy and the saved tensors. Output pointers unset.
Problem validate_backward(const TensorView& query, const TensorView& key, const TensorView& value,
                          const TensorView& dy, const Options& options, const ForwardSaved& saved);

// Internal access to a validated call's Problem (tests and benchmarks run chosen kernels).
struct ProblemAccess {
  static const Problem& of(const Forward& f) { return *f.p_; }
  static const Problem& of(const Backward& b) { return *b.p_; }
};

}  // namespace speedattn
