// TensorView / Tensor / dtype helpers of the public API.
#include <string>

#include "speedattn/speedattn.h"

namespace speedattn {

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::float16:
    case DType::bfloat16: return 2;
    case DType::float32: return 4;
    case DType::boolean:
    case DType::uint8: return 1;
    case DType::int64:
    case DType::float64: return 8;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::float16: return "float16";
    case DType::bfloat16: return "bfloat16";
    case DType::float32: return "float32";
    case DType::boolean: return "bool";
    case DType::uint8: return "uint8";
    case DType::int64: return "int64";
    case DType::float64: return "float64";
  }
  return "unknown";
}

TensorView TensorView::contiguous(const void* data, DType dtype, const std::vector<int64_t>& shape) {
  if (shape.size() > size_t(kMaxDims))
    throw ValueError("shape: got " + std::to_string(shape.size()) + " dimensions; at most 4 are allowed");
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.ndim = int(shape.size());
  int64_t s = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    t.shape[d] = shape[size_t(d)];
    t.stride[d] = s;
    s *= shape[size_t(d)] > 0 ? shape[size_t(d)] : 1;
  }
  return t;
}

TensorView TensorView::contiguous(const void* data, DType dtype, std::initializer_list<int64_t> shape) {
  return contiguous(data, dtype, std::vector<int64_t>(shape));
}

namespace {
int64_t product(const int64_t* shape, size_t n) {
  int64_t r = 1;
  for (size_t i = 0; i < n; ++i)
    if (__builtin_mul_overflow(r, shape[i], &r)) throw ValueError("shape: element count overflows 64-bit indexing");
  return r;
}
}  // namespace

int64_t TensorView::numel() const { return product(shape, size_t(ndim)); }
int64_t OutputSpec::numel() const { return product(shape.data(), shape.size()); }

Tensor Tensor::empty(const OutputSpec& spec) {
  Tensor t;
  t.spec = spec;
  t.storage = std::make_shared<std::vector<std::byte>>(size_t(spec.numel()) * dtype_size(spec.dtype));
  return t;
}

}  // namespace speedattn
