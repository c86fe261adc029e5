// The Forward / Backward call objects and the allocating convenience functions: validate
// once, then run the kernel chosen by dispatch (or the reference when asked for).
#include <cstring>

#include "api/dispatch.h"
#include "api/validate.h"

namespace speedattn {
namespace {

// TND: token rows after the last sequence belong to no sequence; they are zeroed so no
// output is left uninitialised. rows = T1, used = last cumulative length, row_elems per row.
void zero_tail_rows(void* base, int64_t rows, int64_t used, int64_t row_elems, std::size_t elem) {
  if (used < rows)
    std::memset(static_cast<char*>(base) + used * row_elems * int64_t(elem), 0,
                size_t((rows - used) * row_elems) * elem);
}

int64_t tnd_used_rows(const Problem& p) { return p.B ? p.row0_q.back() + p.sq.back() : 0; }

}  // namespace

Forward::Forward(const TensorView& query, const TensorView& key, const TensorView& value, const Options& options)
    : p_(std::make_unique<Problem>(validate_forward(query, key, value, options))) {}
Forward::~Forward() = default;
Forward::Forward(Forward&&) noexcept = default;
Forward& Forward::operator=(Forward&&) noexcept = default;

OutputSpec Forward::attention_out_spec() const { return p_->out_spec; }
OutputSpec Forward::softmax_stat_spec() const { return p_->stat_spec; }
int64_t Forward::numels() const { return p_->numels; }

std::string Forward::kernel_name() const {
  return p_->backend == Backend::reference ? "reference" : select_forward(p_->dtype).name;
}

RngState Forward::run(void* attention_out, float* softmax_max, float* softmax_sum) const {
  Problem p = *p_;
  p.out.data = attention_out;
  p.smax_out = softmax_max;
  p.ssum_out = softmax_sum;
  p.rng = p.dropout ? (p.given_rng ? *p.given_rng : reserve_rng(p.numels)) : rng_state();
  if (p.layout == Layout::TND) {
    const int64_t used = tnd_used_rows(p);
    zero_tail_rows(attention_out, p.T1, used, p.N1 * p.D, dtype_size(p.dtype));
    zero_tail_rows(softmax_max, p.T1, used, p.N1 * 8, 4);
    zero_tail_rows(softmax_sum, p.T1, used, p.N1 * 8, 4);
  }
  if (p.backend == Backend::reference)
    reference_forward(p);
  else
    select_forward(p.dtype).run(p);
  return p.rng;
}

Backward::Backward(const TensorView& query, const TensorView& key, const TensorView& value, const TensorView& dy,
                   const Options& options, const ForwardSaved& saved)
    : p_(std::make_unique<Problem>(validate_backward(query, key, value, dy, options, saved))) {}
Backward::~Backward() = default;
Backward::Backward(Backward&&) noexcept = default;
Backward& Backward::operator=(Backward&&) noexcept = default;

OutputSpec Backward::dq_spec() const { return p_->dq_spec; }
OutputSpec Backward::dk_spec() const { return p_->dk_spec; }
OutputSpec Backward::dv_spec() const { return p_->dv_spec; }
OutputSpec Backward::dpse_spec() const { return p_->dpse_spec; }

std::string Backward::kernel_name() const {
  return p_->backend == Backend::reference ? "reference" : select_backward(*p_).name;
}

void Backward::run(void* dq, void* dk, void* dv, void* dpse) const {
  Problem p = *p_;
  p.dq.data = dq;
  p.dk.data = dk;
  p.dv.data = dv;
  p.dpse_out = dpse;
  if (p.backend == Backend::reference)
    reference_backward(p);
  else
    select_backward(p).run(p);
}

ForwardResult forward(const TensorView& query, const TensorView& key, const TensorView& value,
                      const Options& options) {
  Forward f(query, key, value, options);
  ForwardResult r;
  r.attention_out = Tensor::empty(f.attention_out_spec());
  r.softmax_max = Tensor::empty(f.softmax_stat_spec());
  r.softmax_sum = Tensor::empty(f.softmax_stat_spec());
  r.softmax_out = Tensor::empty(OutputSpec{query.dtype, {0}});
  const RngState used = f.run(r.attention_out.data(), static_cast<float*>(r.softmax_max.data()),
                              static_cast<float*>(r.softmax_sum.data()));
  r.seed = used.seed;
  r.offset = used.offset;
  r.numels = f.numels();
  return r;
}

BackwardResult backward(const TensorView& query, const TensorView& key, const TensorView& value,
                        const TensorView& dy, const Options& options, const ForwardSaved& saved) {
  Backward b(query, key, value, dy, options, saved);
  BackwardResult r;
  r.dq = Tensor::empty(b.dq_spec());
  r.dk = Tensor::empty(b.dk_spec());
  r.dv = Tensor::empty(b.dv_spec());
  r.dpse = Tensor::empty(b.dpse_spec());
  b.run(r.dq.data(), r.dk.data(), r.dv.data(), r.dpse.data());
  return r;
}

std::string version() { return "0.1.0"; }

std::string forward_kernel_for(DType dtype) { return select_forward(dtype).name; }
std::string backward_kernel_for(DType dtype) { return select_backward(dtype).name; }

}  // namespace speedattn
