// speedattn — portable fused attention with the exact semantics of MindSpore's
// speed_fusion_attention (Ascend FlashAttentionScore). Public C++ API.
//
// The contract is docs/semantics.md. Shapes use B batch, N1 query heads, N2 kv heads,
// S1 query length, S2 key length, D head size, T1/T2 total tokens (TND layout).
//
//   speedattn::TensorView q = speedattn::TensorView::contiguous(ptr, DType::bfloat16, {B, S1, N1 * D});
//   speedattn::Options opt; opt.head_num = N1; opt.input_layout = "BSH"; opt.scale = 1 / sqrt(D);
//   speedattn::ForwardResult r = speedattn::forward(q, k, v, opt);
//
// Errors: every check runs before any work; speedattn::TypeError for a wrong type
// (dtype), speedattn::ValueError for a wrong value (shape, mode, range). Python maps
// them to TypeError / ValueError.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace speedattn {

// float64 is accepted by the reference backend only (exact gradient checks); Backend::automatic
// runs the reference for it and kernel_name() says so.
enum class DType : int { float16 = 0, bfloat16 = 1, float32 = 2, boolean = 3, uint8 = 4, int64 = 5, float64 = 6 };

std::size_t dtype_size(DType t);
const char* dtype_name(DType t);

// A non-owning strided view. Strides are in ELEMENTS (not bytes). Up to 4 dimensions.
struct TensorView {
  static constexpr int kMaxDims = 4;
  const void* data = nullptr;
  DType dtype = DType::float32;
  int ndim = 0;
  int64_t shape[kMaxDims] = {0, 0, 0, 0};
  int64_t stride[kMaxDims] = {0, 0, 0, 0};

  // Row-major contiguous view of `shape`.
  static TensorView contiguous(const void* data, DType dtype, std::initializer_list<int64_t> shape);
  static TensorView contiguous(const void* data, DType dtype, const std::vector<int64_t>& shape);
  int64_t numel() const;  // 0 for a zero-size tensor; overflow is a ValueError
};

// Base of both typed errors.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// Wrong type: q/k/v dtypes differ, a mask that is not bool/uint8, ...
class TypeError : public Error {
 public:
  using Error::Error;
};
// Wrong value: unknown layout or mode, bad shapes, illegal ranges, ...
class ValueError : public Error {
 public:
  using Error::Error;
};

enum class Backend : int {
  automatic = 0,  // fastest kernel available for the dtype and CPU (capped by SPEEDATTN_MAX_ISA)
  reference = 1,  // plain loops, float64 accumulation: the oracle, for debugging
};

// Dropout random state used by one call (SPEC §7).
struct RngState {
  int64_t seed = 0;
  int64_t offset = 0;
};

constexpr int64_t kMaxTokens = 2147483647;

// Every keyword of the seed signature (speed_fusion_attention), with its defaults.
struct Options {
  int64_t head_num = 0;
  std::string input_layout = "BSH";  // BSH, SBH, BSND, BNSD, TND
  std::optional<TensorView> pse;
  std::optional<TensorView> padding_mask;  // reserved: must be empty
  std::optional<TensorView> atten_mask;    // bool or uint8, 1 = masked out
  double scale = 1.0;
  double keep_prob = 1.0;
  int64_t pre_tokens = kMaxTokens;
  int64_t next_tokens = kMaxTokens;
  int64_t inner_precise = 0;
  std::optional<std::vector<int64_t>> prefix;
  std::optional<std::vector<int64_t>> actual_seq_qlen;   // cumulative ends, no leading 0
  std::optional<std::vector<int64_t>> actual_seq_kvlen;  // cumulative ends, no leading 0
  int64_t sparse_mode = 0;
  bool gen_mask_parallel = true;  // accepted and ignored (Ascend debug switch)
  bool sync = false;              // accepted and ignored (Ascend debug switch)
  int64_t pse_type = 1;
  std::optional<std::vector<int64_t>> q_start_idx;   // length 1
  std::optional<std::vector<int64_t>> kv_start_idx;  // length 1
  Backend backend = Backend::automatic;
  // Dropout state to use instead of drawing from the process generator (keep_prob < 1);
  // makes a call a pure function of its inputs (the torch custom op passes it).
  std::optional<RngState> rng;
  // The caller vouches that atten_mask holds the compressed template its sparse mode (2-4, 6-8)
  // requires, e.g. because the same, unchanged tensor passed the check before: its shape is
  // still checked, its 4 / 6 MiB of content is not re-read (~0.3 ms per call). The Python
  // front end sets it for torch templates it has seen pass, at the same version counter.
  bool template_verified = false;
};

// Shape and dtype of an output the caller allocates (row-major contiguous).
struct OutputSpec {
  DType dtype = DType::float32;
  std::vector<int64_t> shape;
  int64_t numel() const;
};

struct Problem;  // internal: the validated, layout-free description of a call

// A validated forward call. Construction performs every check of SPEC §2-§7, §10 and
// throws TypeError / ValueError; nothing is computed or written. run() may be called
// with caller-owned, contiguous output buffers of the specs below.
class Forward {
 public:
  Forward(const TensorView& query, const TensorView& key, const TensorView& value, const Options& options);
  ~Forward();
  Forward(Forward&&) noexcept;
  Forward& operator=(Forward&&) noexcept;

  OutputSpec attention_out_spec() const;  // query's shape and dtype
  OutputSpec softmax_stat_spec() const;   // float32 (B, N1, S1, 8) or (T1, N1, 8)
  int64_t numels() const;                 // B*N1*S1*S2, or N1 * sum sq_b*skv_b for TND
  std::string kernel_name() const;        // the kernel run() will use

  // Draws (seed, offset) from the process generator when keep_prob < 1 (advancing it by
  // ceil(numels/4)), computes, and returns the state used ({current seed, current offset}
  // without advancing when keep_prob == 1).
  RngState run(void* attention_out, float* softmax_max, float* softmax_sum) const;

 private:
  friend struct ProblemAccess;  // internal: tests and benchmarks run a chosen kernel
  std::unique_ptr<Problem> p_;
};

// Saved forward state the backward needs.
struct ForwardSaved {
  TensorView softmax_max;   // float32, softmax_stat_spec() shape
  TensorView softmax_sum;   // float32
  TensorView attention_in;  // the forward's attention_out
  int64_t seed = 0;
  int64_t offset = 0;
  int64_t numels = 0;
};

// A validated backward call (speed_fusion_attention_grad). Same checks as Forward, plus
// the saved tensors' shapes and dtypes.
class Backward {
 public:
  Backward(const TensorView& query, const TensorView& key, const TensorView& value, const TensorView& dy,
           const Options& options, const ForwardSaved& saved);
  ~Backward();
  Backward(Backward&&) noexcept;
  Backward& operator=(Backward&&) noexcept;

  OutputSpec dq_spec() const;
  OutputSpec dk_spec() const;
  OutputSpec dv_spec() const;
  OutputSpec dpse_spec() const;  // pse's shape and dtype, (0,) without pse
  std::string kernel_name() const;

  void run(void* dq, void* dk, void* dv, void* dpse) const;

 private:
  friend struct ProblemAccess;
  std::unique_ptr<Problem> p_;
};

// An owned, contiguous tensor (the convenience API's outputs).
struct Tensor {
  OutputSpec spec;
  std::shared_ptr<std::vector<std::byte>> storage;
  void* data() const { return storage ? storage->data() : nullptr; }
  TensorView view() const { return TensorView::contiguous(data(), spec.dtype, spec.shape); }
  static Tensor empty(const OutputSpec& spec);
};

struct ForwardResult {
  Tensor attention_out, softmax_max, softmax_sum, softmax_out;
  int64_t seed = 0, offset = 0, numels = 0;
};
struct BackwardResult {
  Tensor dq, dk, dv, dpse;
};

// Convenience: validate, allocate the outputs, run.
ForwardResult forward(const TensorView& query, const TensorView& key, const TensorView& value,
                      const Options& options);
BackwardResult backward(const TensorView& query, const TensorView& key, const TensorView& value,
                        const TensorView& dy, const Options& options, const ForwardSaved& saved);

// Process-wide dropout generator: seed s, offset 0.
void manual_seed(int64_t seed);
RngState rng_state();
// Takes the current state and advances its offset by ceil(numels / 4), atomically.
RngState reserve_rng(int64_t numels);

// Worker threads used by the CPU kernels (default: physical cores). n >= 1.
void set_num_threads(int n);
int get_num_threads();

// Runtime facts for `speedattn info`.
std::string version();
std::vector<std::string> cpu_features();  // e.g. {"avx2", "avx512f", "amx_bf16"}
std::string isa_cap();                    // SPEEDATTN_MAX_ISA in force, "none" if unset
std::string forward_kernel_for(DType dtype);
std::string backward_kernel_for(DType dtype);

}  // namespace speedattn
