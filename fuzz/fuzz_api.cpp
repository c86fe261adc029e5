// libFuzzer harness over the public C++ API (include/speedattn/speedattn.h).
//
// One fuzz input (<= 512 bytes) decodes into a complete call: q/k/v TensorViews of random
// shapes, strides (padded, permuted, broadcast, negative, non-unit last dim, arbitrary),
// dtypes and layouts, plus every Options field (valid, borderline and invalid values), an
// optional mask / pse, and a backward call with (possibly corrupted) saved tensors.
//
// What must hold (anything else aborts, i.e. is a finding):
//   * construction of speedattn::Forward / Backward either succeeds or throws exactly
//     speedattn::TypeError / speedattn::ValueError (no other exception, no crash, no UB);
//   * Backward rejects every call whose Forward part is rejected;
//   * a validated call runs (reference and automatic backends, every ISA cap) without
//     reading outside the caller's buffers (each tensor sits in its own exact-size heap
//     block, so ASan sees any stray access), without writing its inputs, and without throwing;
//   * automatic == reference within a loose tolerance (gross indexing / masking bugs only)
//     when the inputs are finite and moderate, and automatic is bit-identical for 1 thread
//     and N threads (SPEC §11);
//   * the backward accepts the forward's own saved state and rejects corrupted saved state.
//
// Env: FUZZ_VERBOSE=1 prints each decoded call; FUZZ_NONNULL_EMPTY=1 passes non-null pointers
// for zero-size outputs.
//
// Harness rules: the buffers always cover the strides the harness generates (a stray
// access is the library's bug, never the harness's). Tensors whose span is too large to
// allocate get a tiny placeholder buffer and are marked `fake`; a call with a fake tensor is
// only validated (validation reads no q/k/v/pse/dy/saved data), never run. Masks are always
// real (validation reads templates and, for the compressed pse, the mask).
//
// Build: fuzz/build.sh (clang++-14 -fsanitize=fuzzer,address,undefined).
// Run:   build/fuzz/fuzz_api fuzz/corpus -max_len=512       (see docs/reliability.md)
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "speedattn/speedattn.h"

namespace sa = speedattn;

namespace {

constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();
constexpr int64_t kMaxRealElems = int64_t(1) << 20;  // larger spans get a placeholder (fake)
constexpr int64_t kRunBudget = int64_t(1) << 17;     // run only if numels * D <= this
constexpr int64_t kMaxOutBytes = int64_t(64) << 20;

[[noreturn]] void finding(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "\n*** speedattn fuzz finding: %s %s\n", what, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

template <typename T, size_t N>
T pick(FuzzedDataProvider& fdp, const T (&table)[N]) {
  return table[fdp.ConsumeIntegralInRange<size_t>(0, N - 1)];
}

// Small integer, mostly in [lo, hi], occasionally an extreme value.
int64_t small_or_extreme(FuzzedDataProvider& fdp, int64_t lo, int64_t hi) {
  const uint8_t sel = fdp.ConsumeIntegral<uint8_t>();
  if (sel < 240) return lo + int64_t(sel % uint8_t(hi - lo + 1));
  static const int64_t kExtreme[] = {-1, 0, 1024, 1025, 2048, int64_t(1) << 31, int64_t(1) << 32,
                                     int64_t(1) << 40, kI64Max, kI64Min, -(int64_t(1) << 31), 3000};
  return kExtreme[sel % 12];
}

size_t elem_size(sa::DType t) {
  switch (t) {
    case sa::DType::float16:
    case sa::DType::bfloat16: return 2;
    case sa::DType::float32: return 4;
    case sa::DType::boolean:
    case sa::DType::uint8: return 1;
    default: return 8;  // int64, float64
  }
}

// ------------------------------------------------------------------------------------------
// Deterministic value generator (seeded from the fuzz input).
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }
};

uint16_t float_to_half_bits(float f);  // below
uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
uint16_t float_to_half_bits(float f) {
  // round-to-nearest-even float -> IEEE half (simple, handles inf/nan/subnormals)
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t mant = x & 0x7fffffu;
  const int32_t exp = int32_t((x >> 23) & 0xffu);
  if (exp == 0xff) return uint16_t(sign | 0x7c00u | (mant ? 0x200u : 0u));
  int32_t e = exp - 127 + 15;
  if (e >= 0x1f) return uint16_t(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return uint16_t(sign);
    mant |= 0x800000u;
    const uint32_t shift = uint32_t(14 - e);
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return uint16_t(sign | h);
  }
  uint32_t h = (uint32_t(e) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return uint16_t(sign | h);
}

float bits_to_float(const void* p, sa::DType t) {
  if (t == sa::DType::float32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  if (t == sa::DType::float64) {
    double d;
    std::memcpy(&d, p, 8);
    return float(d);
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  if (t == sa::DType::bfloat16) {
    const uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  // half -> float
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
  if (e == 0x1f) {
    u = sign | 0x7f800000u | (m << 13);
  } else if (e == 0) {
    if (m == 0) {
      u = sign;
    } else {
      int ee = -1;
      do {
        m <<= 1;
        ++ee;
      } while (!(m & 0x400u));
      u = sign | (uint32_t(127 - 15 - ee) << 23) | ((m & 0x3ffu) << 13);
    }
  } else {
    u = sign | ((e + 127 - 15) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

void store_float(void* p, sa::DType t, float v) {
  switch (t) {
    case sa::DType::float32: std::memcpy(p, &v, 4); break;
    case sa::DType::float64: {
      const double d = v;
      std::memcpy(p, &d, 8);
      break;
    }
    case sa::DType::bfloat16: {
      const uint16_t b = float_to_bf16_bits(v);
      std::memcpy(p, &b, 2);
      break;
    }
    case sa::DType::float16: {
      const uint16_t b = float_to_half_bits(v);
      std::memcpy(p, &b, 2);
      break;
    }
    case sa::DType::int64: {
      const int64_t i = std::isfinite(v) ? int64_t(std::max(-1e18f, std::min(1e18f, v))) : 0;
      std::memcpy(p, &i, 8);
      break;
    }
    default: {  // bool / uint8
      const uint8_t b = v > 0.5f ? 1 : 0;
      std::memcpy(p, &b, 1);
      break;
    }
  }
}

// ------------------------------------------------------------------------------------------
// A tensor in its own exact-size heap block.
struct GenTensor {
  sa::TensorView view;
  std::unique_ptr<unsigned char[]> mem;
  size_t bytes = 0;
  bool fake = false;  // the buffer does not cover the view (span too large): never run
  bool finite = true;  // no NaN/Inf/huge injected
  std::vector<unsigned char> snapshot;  // copy before run (inputs must not change)
};

enum StrideMode : uint8_t { kContig, kPadded, kPermuted, kBroadcast, kNegative, kLastNonUnit, kArbitrary, kNumModes };

// Builds a tensor of `shape` (ndim may be 0..5; 5 is invalid on purpose) with a stride mode
// from the input, allocates exactly the span it addresses (plus an optional leading element
// so the data pointer is offset from the allocation start) and fills it.
std::unique_ptr<GenTensor> make_tensor(FuzzedDataProvider& fdp, sa::DType dtype, std::vector<int64_t> shape,
                                       bool allow_odd_strides, int special_rate) {
  auto g = std::make_unique<GenTensor>();
  sa::TensorView& v = g->view;
  v.dtype = dtype;
  const int nd = int(shape.size());
  v.ndim = nd;
  const int stored = std::min(nd, sa::TensorView::kMaxDims);
  for (int d = 0; d < stored; ++d) v.shape[d] = shape[size_t(d)];

  // Contiguous strides (dims of size <= 0 count as 1), in a chosen memory order.
  uint8_t mode = allow_odd_strides ? fdp.ConsumeIntegral<uint8_t>() % 16 : 0;
  if (mode >= kNumModes) mode = kContig;  // contiguous most of the time
  int order[4] = {0, 1, 2, 3};  // order[0] outermost in memory
  if (mode == kPermuted && stored >= 2) {
    for (int d = stored - 1; d > 0; --d) std::swap(order[d], order[fdp.ConsumeIntegralInRange<int>(0, d)]);
  }
  bool overflow = false;
  int64_t s = 1;
  for (int k = stored - 1; k >= 0; --k) {
    const int d = order[k];
    v.stride[d] = s;
    int64_t extent = std::max<int64_t>(v.shape[d], 1);
    if (mode == kPadded) extent += fdp.ConsumeIntegralInRange<int64_t>(0, 3);
    if (__builtin_mul_overflow(s, extent, &s)) overflow = true, s = 1;
  }
  if (stored > 0) {
    const int d = fdp.ConsumeIntegralInRange<int>(0, stored - 1);
    if (mode == kBroadcast) v.stride[d] = 0;
    if (mode == kNegative) v.stride[d] = -v.stride[d];
    if (mode == kLastNonUnit) v.stride[stored - 1] = fdp.ConsumeBool() ? 2 : 0;
    if (mode == kArbitrary)
      for (int e = 0; e < stored; ++e) v.stride[e] = fdp.ConsumeIntegralInRange<int64_t>(-9, 9);
  }

  // Span of addressed elements: [lo, hi] relative to data.
  __int128 lo = 0, hi = 0;
  bool empty = false;
  for (int d = 0; d < stored; ++d) {
    if (v.shape[d] <= 0) empty = true;
    if (v.shape[d] <= 1) continue;
    const __int128 step = __int128(v.shape[d] - 1) * v.stride[d];
    if (step < 0) lo += step; else hi += step;
  }
  const int64_t lead = fdp.ConsumeBool() ? 1 : 0;  // data pointer offset by one element
  const size_t es = elem_size(dtype);
  const __int128 span = empty ? 0 : hi - lo + 1;
  if (overflow || span > kMaxRealElems || nd > sa::TensorView::kMaxDims) {
    g->fake = true;
    g->bytes = 64;
    g->mem.reset(new unsigned char[g->bytes]());
    v.data = g->mem.get();
    return g;
  }
  const size_t n_alloc = size_t(span) + size_t(lead);
  g->bytes = n_alloc * es;
  if (g->bytes == 0) {
    // zero-size tensor: null or a dangling-but-valid pointer
    if (fdp.ConsumeBool()) {
      g->mem.reset(new unsigned char[1]());
      v.data = g->mem.get();
    } else {
      v.data = nullptr;
    }
    return g;
  }
  g->mem.reset(new unsigned char[g->bytes]);
  v.data = g->mem.get() + (size_t(lead) + size_t(-lo)) * es;

  // Fill every allocated element.
  Rng rng(fdp.ConsumeIntegral<uint32_t>());
  const bool mask = dtype == sa::DType::boolean || dtype == sa::DType::uint8;
  const double density = mask ? 0.1 + 0.8 * (fdp.ConsumeIntegral<uint8_t>() / 255.0) : 0.0;
  const bool inject = !mask && special_rate > 0 && fdp.ConsumeIntegralInRange<int>(0, special_rate) == 0;
  static const float kSpecial[] = {NAN, INFINITY, -INFINITY, 6.0e4f, -3.0e38f, 1e-40f, -0.0f};
  for (size_t e = 0; e < n_alloc; ++e) {
    unsigned char* p = g->mem.get() + e * es;
    if (mask) {
      const bool m = rng.uniform() < density;
      if (dtype == sa::DType::uint8 && m) *p = uint8_t(1 + rng.next() % 255);
      else *p = m ? 1 : 0;
      continue;
    }
    float x = float(rng.uniform() * 4.0 - 2.0);
    if (inject && rng.next() % 7 == 0) x = kSpecial[rng.next() % 7];
    store_float(p, dtype, x);
  }
  g->finite = !inject;
  return g;
}

// Shapes of one q/k/v-like tensor in a layout. H = N * D for BSH/SBH.
std::vector<int64_t> layout_shape(int layout, int64_t B, int64_t S, int64_t N, int64_t D) {
  switch (layout) {
    case 0: return {B, S, N * D};      // BSH
    case 1: return {S, B, N * D};      // SBH
    case 2: return {B, S, N, D};       // BSND
    case 3: return {B, N, S, D};       // BNSD
    default: return {S, N, D};         // TND (S = T)
  }
}

void mutate_shape(FuzzedDataProvider& fdp, std::vector<int64_t>& shape) {
  const uint8_t how = fdp.ConsumeIntegral<uint8_t>() % 8;
  if (shape.empty()) {
    if (how < 2) shape.push_back(1);
    return;
  }
  const size_t d = fdp.ConsumeIntegralInRange<size_t>(0, shape.size() - 1);
  switch (how) {
    case 0: shape[d] = shape[d] < kI64Max ? shape[d] + 1 : shape[d]; break;
    case 1: shape[d] = shape[d] > 0 ? shape[d] - 1 : 0; break;
    case 2: shape[d] = small_or_extreme(fdp, -2, 9); break;
    case 3: shape.push_back(fdp.ConsumeIntegralInRange<int64_t>(1, 3)); break;  // extra dim (maybe 5-D)
    case 4: shape.erase(shape.begin() + long(d)); break;
    case 5: shape[d] = 0; break;
    case 6: shape[d] = int64_t(1) << fdp.ConsumeIntegralInRange<int>(20, 62); break;
    default: shape[d] = (shape[d] > -(int64_t(1) << 61) && shape[d] < (int64_t(1) << 61)) ? shape[d] * 2 : 0; break;
  }
}

struct Case {
  std::unique_ptr<GenTensor> q, k, v, mask, pse, dy;
  sa::Options opt;
  int shape_layout = 0;  // the layout the shapes were made for
  bool bounded = true;   // inputs finite and moderate, |scale| <= 1: differential check is meaningful
};

std::optional<std::vector<int64_t>> fuzz_int_list(FuzzedDataProvider& fdp, size_t want_len,
                                                  const std::vector<int64_t>& interesting) {
  // Caller decided a list is present. Mostly the right length.
  size_t len = want_len;
  const uint8_t l = fdp.ConsumeIntegral<uint8_t>();
  if (l >= 230) len = l % 4;
  if (l == 255) len = 1025;
  std::vector<int64_t> out(len);
  for (size_t i = 0; i < len; ++i) {
    const uint8_t sel = fdp.ConsumeIntegral<uint8_t>();
    if (!interesting.empty() && sel < 200) out[i] = interesting[sel % interesting.size()];
    else out[i] = small_or_extreme(fdp, -3, 12);
  }
  return out;
}

}  // namespace

// Flattened output buffers of one run.
struct RunOut {
  std::vector<unsigned char> out, smax, ssum;
  sa::RngState rng;
};

// FUZZ_NONNULL_EMPTY=1: zero-size outputs get a non-null pointer (the default passes
// nullptr, which the C++ API allows for an empty buffer).
static const bool g_nonnull_empty = [] {
  const char* e = std::getenv("FUZZ_NONNULL_EMPTY");
  return e && *e == '1';
}();
static const bool g_verbose = [] {
  const char* e = std::getenv("FUZZ_VERBOSE");
  return e && *e == '1';
}();

static std::vector<unsigned char> alloc_spec(const sa::OutputSpec& s) {
  const int64_t n = s.numel();
  if (n < 0) finding("negative output numel");
  std::vector<unsigned char> v(size_t(n) * elem_size(s.dtype), 0xA5);
  if (v.empty() && g_nonnull_empty) v.reserve(1);
  return v;
}

static std::string describe(const sa::TensorView& t, bool fake = false) {
  std::string s = std::string(sa::dtype_name(t.dtype)) + " shape=(";
  for (int d = 0; d < std::min(t.ndim, 4); ++d) s += std::to_string(t.shape[d]) + ",";
  s += ") strides=(";
  for (int d = 0; d < std::min(t.ndim, 4); ++d) s += std::to_string(t.stride[d]) + ",";
  s += ") ndim=" + std::to_string(t.ndim) + (t.data ? "" : " data=NULL") + (fake ? " [placeholder buffer]" : "");
  return s;
}

static std::string describe_list(const std::optional<std::vector<int64_t>>& v) {
  if (!v) return "None";
  std::string s = "[";
  for (size_t i = 0; i < v->size() && i < 16; ++i) s += std::to_string((*v)[i]) + ",";
  if (v->size() > 16) s += "... (" + std::to_string(v->size()) + ")";
  return s + "]";
}

static void describe_call(const sa::TensorView& q, const sa::TensorView& k, const sa::TensorView& v,
                          const sa::Options& o) {
  std::fprintf(stderr,
               "call: query %s\n      key %s\n      value %s\n"
               "      head_num=%lld input_layout='%s' scale=%g keep_prob=%.17g pre_tokens=%lld next_tokens=%lld\n"
               "      inner_precise=%lld sparse_mode=%lld pse_type=%lld prefix=%s actual_seq_qlen=%s "
               "actual_seq_kvlen=%s q_start_idx=%s kv_start_idx=%s\n",
               describe(q).c_str(), describe(k).c_str(), describe(v).c_str(), (long long)o.head_num,
               o.input_layout.c_str(), o.scale, o.keep_prob, (long long)o.pre_tokens, (long long)o.next_tokens,
               (long long)o.inner_precise, (long long)o.sparse_mode, (long long)o.pse_type,
               describe_list(o.prefix).c_str(), describe_list(o.actual_seq_qlen).c_str(),
               describe_list(o.actual_seq_kvlen).c_str(), describe_list(o.q_start_idx).c_str(),
               describe_list(o.kv_start_idx).c_str());
  std::fprintf(stderr, "      atten_mask %s\n      pse %s\n      padding_mask %s rng %s\n",
               o.atten_mask ? describe(*o.atten_mask).c_str() : "None", o.pse ? describe(*o.pse).c_str() : "None",
               o.padding_mask ? "set" : "None",
               o.rng ? (std::to_string(o.rng->seed) + "," + std::to_string(o.rng->offset)).c_str() : "None");
}

static void set_isa(FuzzedDataProvider& fdp) {
  static const char* kIsa[] = {nullptr, "scalar", "avx2", "avx512", "amx"};
  const char* isa = pick(fdp, kIsa);
  if (isa) setenv("SPEEDATTN_MAX_ISA", isa, 1);
  else unsetenv("SPEEDATTN_MAX_ISA");
}

// Loose differential check: gross errors only (wrong rows, masks, heads). tol relative to
// (1 + max |reference|).
static void compare(const std::vector<unsigned char>& a, const std::vector<unsigned char>& r, sa::DType dt,
                    double rel, const char* what) {
  const size_t es = elem_size(dt), n = r.size() / es;
  double mx = 0;
  for (size_t i = 0; i < n; ++i) {
    const double x = bits_to_float(&r[i * es], dt);
    if (std::isfinite(x)) mx = std::max(mx, std::fabs(x));
  }
  const double tol = rel * (1.0 + mx);
  for (size_t i = 0; i < n; ++i) {
    const double x = bits_to_float(&a[i * es], dt), y = bits_to_float(&r[i * es], dt);
    if (std::isnan(y) && std::isnan(x)) continue;
    if (std::isfinite(y) != std::isfinite(x) || (std::isfinite(y) && std::fabs(x - y) > tol) ||
        (std::isinf(y) && x != y))
      finding("automatic differs from reference", std::string(what) + " element " + std::to_string(i) + ": auto " +
                                                       std::to_string(x) + " vs reference " + std::to_string(y));
  }
}

static double dtype_tol(sa::DType dt) {
  switch (dt) {
    case sa::DType::bfloat16: return 6e-2;
    case sa::DType::float16: return 1.5e-2;
    default: return 4e-3;
  }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider fdp(data, size);
  Case c;
  sa::Options& o = c.opt;

  // ---- shapes --------------------------------------------------------------------------
  static const sa::DType kDt[] = {sa::DType::float32, sa::DType::bfloat16, sa::DType::float16, sa::DType::float32,
                                  sa::DType::bfloat16, sa::DType::float16, sa::DType::float64, sa::DType::uint8,
                                  sa::DType::int64};
  const sa::DType dt = pick(fdp, kDt);
  const int layout = fdp.ConsumeIntegralInRange<int>(0, 4);
  static const char* kLayoutNames[] = {"BSH", "SBH", "BSND", "BNSD", "TND", "bsh", "", "BSNDX", "TN D"};
  o.input_layout = kLayoutNames[layout];
  if (fdp.ConsumeIntegral<uint8_t>() >= 235) o.input_layout = pick(fdp, kLayoutNames);
  c.shape_layout = layout;

  const int64_t B = 1 + fdp.ConsumeIntegralInRange<int64_t>(0, 3);
  const int64_t N2 = 1 + fdp.ConsumeIntegralInRange<int64_t>(0, 2);
  const int64_t G = 1 + fdp.ConsumeIntegralInRange<int64_t>(0, 2);
  const int64_t N1 = N2 * G;
  static const int64_t kS[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 0, 1025, 1100};
  static const int64_t kD[] = {1, 2, 3, 4, 8, 5, 16, 17, 32, 64, 80, 128, 768, 769, 0};
  int64_t S1 = pick(fdp, kS), S2 = fdp.ConsumeBool() ? S1 : pick(fdp, kS);
  const int64_t D = pick(fdp, kD);

  // TND: sequences (sq, skv); T1/T2 may carry unused tail tokens.
  std::vector<int64_t> sq, skv;
  int64_t T1 = 0, T2 = 0;
  if (layout == 4) {
    const int nseq = fdp.ConsumeIntegralInRange<int>(1, 4);
    for (int b = 0; b < nseq; ++b) {
      int64_t a = fdp.ConsumeIntegralInRange<int64_t>(0, 9), kk = fdp.ConsumeIntegralInRange<int64_t>(0, 9);
      if (a > 0 && kk == 0) kk = a;  // mostly valid
      sq.push_back(a);
      skv.push_back(kk);
      T1 += a;
      T2 += kk;
    }
    T1 += fdp.ConsumeIntegralInRange<int64_t>(0, 2) == 2 ? 1 : 0;
    T2 += fdp.ConsumeIntegralInRange<int64_t>(0, 2) == 2 ? 1 : 0;
    S1 = *std::max_element(sq.begin(), sq.end());
    S2 = *std::max_element(skv.begin(), skv.end());
  }

  std::vector<int64_t> qs = layout_shape(layout, B, layout == 4 ? T1 : S1, N1, D);
  std::vector<int64_t> ks = layout_shape(layout, B, layout == 4 ? T2 : S2, N2, D);
  std::vector<int64_t> vs = ks;
  const int n_mut = fdp.ConsumeIntegral<uint8_t>() >= 200 ? fdp.ConsumeIntegralInRange<int>(1, 3) : 0;
  for (int m = 0; m < n_mut; ++m) {
    switch (fdp.ConsumeIntegralInRange<int>(0, 2)) {
      case 0: mutate_shape(fdp, qs); break;
      case 1: mutate_shape(fdp, ks); break;
      default: mutate_shape(fdp, vs); break;
    }
  }
  sa::DType kdt = dt, vdt = dt;
  if (fdp.ConsumeIntegral<uint8_t>() >= 245) kdt = pick(fdp, kDt);
  if (fdp.ConsumeIntegral<uint8_t>() >= 245) vdt = pick(fdp, kDt);
  const int special = fdp.ConsumeBool() ? 4 : 0;  // NaN/Inf injection in q/k/v sometimes
  c.q = make_tensor(fdp, dt, qs, true, special);
  c.k = make_tensor(fdp, kdt, ks, true, special);
  c.v = make_tensor(fdp, vdt, vs, true, special);
  c.bounded = c.q->finite && c.k->finite && c.v->finite;

  // ---- scalar options ------------------------------------------------------------------
  static const int64_t kHead[] = {0, 0, 0, 0, 0, 0, -1, 1, 2, kI64Max};  // 0 = use N1
  const int64_t hsel = pick(fdp, kHead);
  o.head_num = hsel == 0 ? N1 : (hsel == -1 ? 0 : (hsel == 1 ? N1 + 1 : (hsel == 2 ? 2 * N1 : hsel)));
  static const double kScale[] = {1.0, 0.5, 0.125, 0.0, -1.0, 1e-6, 1e4, NAN, INFINITY, -INFINITY, 1e300, 5e-324};
  o.scale = pick(fdp, kScale);
  if (o.scale == 1.0 && fdp.ConsumeBool()) o.scale = 1.0 / std::sqrt(double(std::max<int64_t>(D, 1)));
  if (!(std::fabs(o.scale) <= 1.0)) c.bounded = false;
  static const double kKeep[] = {1.0, 1.0, 1.0, 0.5, 0.9, 0.1, 1e-6, 0.0, -0.5, 1.0000001, NAN, INFINITY, 0.999999};
  o.keep_prob = pick(fdp, kKeep);
  static const int64_t kMode[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4, -1, 9, kI64Min};
  o.sparse_mode = pick(fdp, kMode);
  static const int64_t kInner[] = {0, 0, 1, 2, 2, -1, 3};
  o.inner_precise = pick(fdp, kInner);
  const std::vector<int64_t> tok = {sa::kMaxTokens, 0, 1, 2, 3, -1, -2, -3, S1, S2, -S2, S1 - S2, S2 - S1,
                                    kI64Max, kI64Min, int64_t(1) << 40, -(int64_t(1) << 40)};
  if (fdp.ConsumeBool()) o.pre_tokens = tok[fdp.ConsumeIntegralInRange<size_t>(0, tok.size() - 1)];
  if (fdp.ConsumeBool()) o.next_tokens = tok[fdp.ConsumeIntegralInRange<size_t>(0, tok.size() - 1)];
  o.gen_mask_parallel = fdp.ConsumeBool();
  o.sync = fdp.ConsumeBool();

  // actual_seq_* (TND; invalid elsewhere)
  if (layout == 4 || fdp.ConsumeIntegral<uint8_t>() >= 250) {
    std::vector<int64_t> cq, ck;
    int64_t aq = 0, ak = 0;
    for (size_t b = 0; b < sq.size(); ++b) cq.push_back(aq += sq[b]), ck.push_back(ak += skv[b]);
    if (cq.empty()) cq.push_back(S1), ck.push_back(S2);
    const uint8_t how = fdp.ConsumeIntegral<uint8_t>();
    if (how >= 200) {
      auto& l = (how & 1) ? cq : ck;
      switch (how % 7) {
        case 0: l.clear(); break;
        case 1: l.pop_back(); break;
        case 2: l.back() += 1; break;
        case 3: l.front() = -1; break;
        case 4: if (l.size() > 1) std::swap(l.front(), l.back()); break;
        case 5: l.assign(1025, 0); break;
        default: l.back() = kI64Max; break;
      }
    }
    if (fdp.ConsumeIntegral<uint8_t>() < 250) o.actual_seq_qlen = cq;
    if (fdp.ConsumeIntegral<uint8_t>() < 250) o.actual_seq_kvlen = ck;
  }
  const int64_t nbatch = layout == 4 ? int64_t(sq.size()) : B;

  // prefix (modes 5/6)
  if ((o.sparse_mode == 5 || o.sparse_mode == 6) ? fdp.ConsumeIntegral<uint8_t>() < 245
                                                  : fdp.ConsumeIntegral<uint8_t>() >= 250) {
    std::vector<int64_t> interesting = {S2, S2 - S1, std::max<int64_t>(0, S2 - S1), 0, S2 / 2, S2 + 1, -1};
    o.prefix = fuzz_int_list(fdp, size_t(nbatch), interesting);
  }

  // ---- atten_mask ----------------------------------------------------------------------
  {
    static std::vector<unsigned char> t2048, t3072;  // the correct templates, made once
    if (t2048.empty()) {
      t2048.resize(2048 * 2048);
      t3072.resize(3072 * 2048);
      for (int i = 0; i < 3072; ++i)
        for (int j = 0; j < 2048; ++j) {
          const bool m = i < 2048 ? j > i : j >= 1024;
          if (i < 2048) t2048[size_t(i) * 2048 + size_t(j)] = m;
          t3072[size_t(i) * 2048 + size_t(j)] = m;
        }
    }
    const bool template_mode = o.sparse_mode >= 2 && o.sparse_mode != 5;
    uint8_t kind = fdp.ConsumeIntegral<uint8_t>() % 12;
    // Sensible default per mode most of the time.
    if (fdp.ConsumeIntegral<uint8_t>() < 160) {
      if (template_mode) kind = o.sparse_mode == 6 ? 7 : 6;
      else if (o.sparse_mode == 5) kind = fdp.ConsumeBool() ? 1 : 2;
    }
    const sa::DType mdt = fdp.ConsumeIntegral<uint8_t>() >= 240 ? sa::DType::float32
                          : fdp.ConsumeBool()                   ? sa::DType::uint8
                                                                : sa::DType::boolean;
    std::vector<int64_t> ms;
    switch (kind) {
      case 1: ms = {nbatch, N1, S1, S2}; break;
      case 2: ms = {nbatch, 1, S1, S2}; break;
      case 3: ms = {1, 1, S1, S2}; break;
      case 4: ms = {S1, S2}; break;
      case 5: ms = {S1 + 1, S2}; break;
      case 6: ms = {2048, 2048}; break;
      case 7: ms = {3072, 2048}; break;
      case 8: ms = {1, S1, S2}; break;
      case 9: ms = {nbatch, N1, S2, S1}; break;
      default: break;  // none
    }
    if (!ms.empty()) {
      if (fdp.ConsumeIntegral<uint8_t>() >= 240) mutate_shape(fdp, ms);
      if ((kind == 6 || kind == 7) && mdt != sa::DType::float32 && ms.size() == 2 && ms[1] == 2048 &&
          (ms[0] == 2048 || ms[0] == 3072)) {
        // a real template (optionally with one element flipped, or the other template)
        const auto& src = ms[0] == 2048 ? t2048 : t3072;
        auto g = std::make_unique<GenTensor>();
        g->bytes = src.size();
        g->mem.reset(new unsigned char[g->bytes]);
        std::memcpy(g->mem.get(), src.data(), g->bytes);
        if (fdp.ConsumeIntegral<uint8_t>() >= 235) {
          const size_t at = fdp.ConsumeIntegralInRange<size_t>(0, g->bytes - 1);
          g->mem[at] = g->mem[at] ? 0 : 1;
        } else if (mdt == sa::DType::uint8 && fdp.ConsumeBool()) {
          for (size_t e = 0; e < g->bytes; e += 977)
            if (g->mem[e]) g->mem[e] = 0xff;  // any nonzero byte means "masked"
        }
        g->view = sa::TensorView::contiguous(g->mem.get(), mdt, ms);
        c.mask = std::move(g);
      } else {
        c.mask = make_tensor(fdp, mdt, ms, true, 0);
      }
      if (c.mask->fake) return 0;  // validation may read any mask: keep masks real
      o.atten_mask = c.mask->view;
    }
  }

  // ---- pse -------------------------------------------------------------------------------
  {
    const uint8_t kind = fdp.ConsumeIntegral<uint8_t>() % 12;
    std::vector<int64_t> ps;
    int64_t ptype = 1;
    sa::DType pdt = dt;
    switch (kind) {
      case 1: ps = {nbatch, N1, S1, S2}, ptype = fdp.ConsumeBool() ? 1 : 0; break;
      case 2: ps = {1, N1, S1, S2}, ptype = fdp.ConsumeBool() ? 1 : 0; break;
      case 3: ps = {nbatch, N1, 1, S2}, ptype = fdp.ConsumeBool() ? 1 : 0; break;
      case 4: ps = {1, N1, 1, S2}, ptype = 0; break;
      case 5: ps = {fdp.ConsumeBool() ? nbatch : 1, N1, 1024, S2}, ptype = 1; break;  // compressed
      case 6: ps = {nbatch, N1}, ptype = fdp.ConsumeBool() ? 2 : 3, pdt = sa::DType::float32; break;
      case 7: ps = {N1}, ptype = fdp.ConsumeBool() ? 2 : 3, pdt = sa::DType::float32; break;
      case 8: ps = {N1, S1, S2}, ptype = 1; break;
      default: ptype = fdp.ConsumeIntegral<uint8_t>() >= 250 ? 0 : 1; break;  // none (0: error)
    }
    static const int64_t kPtypeOverride[] = {-2, 0, 1, 2, 3, -1, 4};
    const int64_t ov = pick(fdp, kPtypeOverride);
    if (ov != -2 && fdp.ConsumeIntegral<uint8_t>() >= 230) ptype = ov;
    if (fdp.ConsumeIntegral<uint8_t>() >= 245) pdt = pick(fdp, kDt);
    o.pse_type = ptype;
    if (!ps.empty()) {
      if (fdp.ConsumeIntegral<uint8_t>() >= 240) mutate_shape(fdp, ps);
      c.pse = make_tensor(fdp, pdt, ps, true, fdp.ConsumeBool() ? 3 : 0);
      if (!c.pse->finite) c.bounded = false;
      o.pse = c.pse->view;
    }
    const std::vector<int64_t> starts = {0, 1, -1, 3, -3, 5, -7, 2048};
    if (fdp.ConsumeIntegral<uint8_t>() >= 200) o.q_start_idx = fuzz_int_list(fdp, 1, starts);
    if (fdp.ConsumeIntegral<uint8_t>() >= 200) o.kv_start_idx = fuzz_int_list(fdp, 1, starts);
  }
  std::unique_ptr<GenTensor> padding;
  if (fdp.ConsumeIntegral<uint8_t>() >= 252) {
    padding = make_tensor(fdp, sa::DType::boolean, {1, 1}, false, 0);
    o.padding_mask = padding->view;
  }
  const bool use_rng_override = fdp.ConsumeBool();
  if (use_rng_override) o.rng = sa::RngState{fdp.ConsumeIntegral<int64_t>(), fdp.ConsumeIntegral<int64_t>()};
  if (o.keep_prob != 1.0 && o.keep_prob < 1e-3) c.bounded = false;  // huge 1/keep_prob
  const int threads = fdp.ConsumeIntegralInRange<int>(2, 3);
  const int64_t seed = fdp.ConsumeIntegral<int64_t>();

  if (g_verbose) describe_call(c.q->view, c.k->view, c.v->view, o);

  // ---- forward validation --------------------------------------------------------------
  const bool any_fake = c.q->fake || c.k->fake || c.v->fake || (c.pse && c.pse->fake);
  std::unique_ptr<sa::Forward> fwd;
  bool fwd_rejected = false;
  try {
    o.backend = sa::Backend::reference;
    fwd = std::make_unique<sa::Forward>(c.q->view, c.k->view, c.v->view, o);
  } catch (const sa::TypeError& e) {
    fwd_rejected = true;
    if (g_verbose) std::fprintf(stderr, "forward: TypeError: %s\n", e.what());
  } catch (const sa::ValueError& e) {
    fwd_rejected = true;
    if (g_verbose) std::fprintf(stderr, "forward: ValueError: %s\n", e.what());
  } catch (const std::exception& e) {
    finding("Forward threw an exception other than TypeError/ValueError:", e.what());
  } catch (...) {
    finding("Forward threw a non-std exception");
  }

  // Backward with the same options must reject the same calls. Use q-shaped dy / saved
  // tensors when the forward was rejected (contents are never read then).
  if (fwd_rejected) {
    auto dy = make_tensor(fdp, dt, qs, false, 0);
    std::vector<int64_t> st = {1, 1, 1, 8};
    auto smax = make_tensor(fdp, sa::DType::float32, st, false, 0);
    auto ssum = make_tensor(fdp, sa::DType::float32, st, false, 0);
    sa::ForwardSaved saved{smax->view, ssum->view, dy->view, 0, 0, 0};
    try {
      sa::Backward bwd(c.q->view, c.k->view, c.v->view, dy->view, o, saved);
      finding("Backward accepted a call whose Forward was rejected");
    } catch (const sa::Error& e) {
      if (!dynamic_cast<const sa::TypeError*>(&e) && !dynamic_cast<const sa::ValueError*>(&e))
        finding("Backward threw a bare speedattn::Error:", e.what());
    } catch (const std::exception& e) {
      finding("Backward threw an exception other than TypeError/ValueError:", e.what());
    }
    return 0;
  }

  // ---- forward runs ----------------------------------------------------------------------
  const sa::OutputSpec out_spec = fwd->attention_out_spec(), stat_spec = fwd->softmax_stat_spec();
  const int64_t work = int64_t(std::min<double>(double(fwd->numels()) * double(std::max<int64_t>(D, 1)), 1e18));
  if (any_fake || work > kRunBudget ||
      double(out_spec.numel()) * double(elem_size(out_spec.dtype)) > double(kMaxOutBytes) ||
      double(stat_spec.numel()) * 4.0 > double(kMaxOutBytes))
    return 0;
  (void)fwd->kernel_name();

  for (GenTensor* t : {c.q.get(), c.k.get(), c.v.get(), c.mask.get(), c.pse.get()})
    if (t && t->bytes) t->snapshot.assign(t->mem.get(), t->mem.get() + t->bytes);

  // Dropout: the same (seed, offset) for every run.
  auto run_forward = [&](sa::Backend backend, int nthreads) {
    RunOut r;
    sa::Options oo = o;
    oo.backend = backend;
    sa::set_num_threads(nthreads);
    try {
      sa::Forward f(c.q->view, c.k->view, c.v->view, oo);
      r.out = alloc_spec(f.attention_out_spec());
      r.smax = alloc_spec(f.softmax_stat_spec());
      r.ssum = alloc_spec(f.softmax_stat_spec());
      sa::manual_seed(seed);
      r.rng = f.run(r.out.data(), reinterpret_cast<float*>(r.smax.data()), reinterpret_cast<float*>(r.ssum.data()));
    } catch (const std::exception& e) {
      finding("forward run of a validated call threw:", e.what());
    }
    return r;
  };
  const RunOut ref = run_forward(sa::Backend::reference, 1);
  set_isa(fdp);
  const RunOut a1 = run_forward(sa::Backend::automatic, 1);
  const RunOut an = run_forward(sa::Backend::automatic, threads);
  if (a1.out != an.out || a1.smax != an.smax || a1.ssum != an.ssum)
    finding("forward not bit-identical across thread counts");
  if (ref.rng.seed != a1.rng.seed || ref.rng.offset != a1.rng.offset) finding("backends used different rng states");
  if (c.bounded) {
    compare(a1.out, ref.out, out_spec.dtype, dtype_tol(out_spec.dtype), "attention_out");
    compare(a1.smax, ref.smax, sa::DType::float32, 2e-3, "softmax_max");
    compare(a1.ssum, ref.ssum, sa::DType::float32, 2e-3, "softmax_sum");
  }
  for (GenTensor* t : {c.q.get(), c.k.get(), c.v.get(), c.mask.get(), c.pse.get()})
    if (t && t->bytes && std::memcmp(t->snapshot.data(), t->mem.get(), t->bytes) != 0)
      finding("forward wrote into an input");

  // ---- backward ----------------------------------------------------------------------------
  // Saved tensors: the reference forward's outputs (contiguous), optionally corrupted.
  const sa::DType out_dt = out_spec.dtype;
  auto dy = make_tensor(fdp, out_dt, out_spec.shape, true, c.bounded ? 0 : 4);
  std::vector<unsigned char> smax_b = ref.smax, ssum_b = ref.ssum, attn_b = ref.out;
  sa::ForwardSaved saved;
  saved.softmax_max = sa::TensorView::contiguous(smax_b.empty() ? nullptr : smax_b.data(), sa::DType::float32, stat_spec.shape);
  saved.softmax_sum = sa::TensorView::contiguous(ssum_b.empty() ? nullptr : ssum_b.data(), sa::DType::float32, stat_spec.shape);
  saved.attention_in = sa::TensorView::contiguous(attn_b.empty() ? nullptr : attn_b.data(), out_dt, out_spec.shape);
  saved.seed = ref.rng.seed;
  saved.offset = ref.rng.offset;
  saved.numels = fwd->numels();
  bool corrupted = false;
  const uint8_t corrupt = fdp.ConsumeIntegral<uint8_t>();
  if (corrupt >= 220) {
    sa::TensorView& mx = saved.softmax_max;
    sa::TensorView& sm = saved.softmax_sum;
    sa::TensorView& ai = saved.attention_in;
    switch (corrupt % 9) {
      case 0: saved.numels += 1, corrupted = true; break;
      case 1: saved.offset = -1, corrupted = true; break;
      case 2: mx.dtype = sa::DType::float16, corrupted = true; break;
      case 3: ai.dtype = out_dt == sa::DType::float32 ? sa::DType::bfloat16 : sa::DType::float32, corrupted = true; break;
      case 4:
        if (sm.ndim > 0) sm.shape[sm.ndim - 1] = 4, corrupted = true;
        break;
      case 5:
        if (mx.ndim > 1 && mx.shape[0] > 1) mx.shape[0] -= 1, corrupted = true;
        break;
      case 6:
        if (ai.ndim > 0) ai.ndim -= 1, corrupted = true;
        break;
      case 7:
        // non-contiguous statistics rows (a shape-preserving view of the same buffer is not
        // possible, so: rows of 8 every 16 floats over half the rows; the shape changes too)
        if (mx.ndim > 1 && mx.shape[mx.ndim - 2] > 1) {
          mx.shape[mx.ndim - 2] /= 2;
          mx.stride[mx.ndim - 2] = 16;
          corrupted = true;
        }
        break;
      default: saved.seed ^= 1; break;  // a different seed is legal
    }
  }
  if (g_verbose)
    std::fprintf(stderr, "forward ran (kernel %s); backward: dy %s corrupt=%d\n", fwd->kernel_name().c_str(),
                 describe(dy->view, dy->fake).c_str(), int(corrupt));
  if (fdp.ConsumeIntegral<uint8_t>() >= 240) {
    dy->view.dtype = out_dt == sa::DType::float32 ? sa::DType::float16 : sa::DType::float32;  // wrong dtype
    corrupted = true;
  }

  std::unique_ptr<sa::Backward> bwd;
  try {
    sa::Options oo = o;
    oo.backend = sa::Backend::reference;
    bwd = std::make_unique<sa::Backward>(c.q->view, c.k->view, c.v->view, dy->view, oo, saved);
  } catch (const sa::TypeError&) {
  } catch (const sa::ValueError&) {
  } catch (const std::exception& e) {
    finding("Backward threw an exception other than TypeError/ValueError:", e.what());
  }
  if (!bwd) {
    const sa::TensorView& dv = dy->view;
    const bool dy_legal = dv.ndim == 0 || dv.shape[dv.ndim - 1] <= 1 || dv.stride[dv.ndim - 1] == 1;
    if (!corrupted && !dy->fake && dy_legal) finding("Backward rejected the saved state of a valid forward");
    return 0;
  }
  if (corrupted) finding("Backward accepted corrupted saved state (numels/offset/dtype/shape)");
  if (dy->fake) return 0;
  if (dy->bytes) dy->snapshot.assign(dy->mem.get(), dy->mem.get() + dy->bytes);
  const std::vector<unsigned char> smax_snap = smax_b, ssum_snap = ssum_b, attn_snap = attn_b;

  struct Grads {
    std::vector<unsigned char> dq, dk, dv, dpse;
  };
  auto run_backward = [&](sa::Backend backend, int nthreads) {
    Grads g;
    sa::Options oo = o;
    oo.backend = backend;
    sa::set_num_threads(nthreads);
    try {
      sa::Backward b(c.q->view, c.k->view, c.v->view, dy->view, oo, saved);
      g.dq = alloc_spec(b.dq_spec());
      g.dk = alloc_spec(b.dk_spec());
      g.dv = alloc_spec(b.dv_spec());
      g.dpse = alloc_spec(b.dpse_spec());
      (void)b.kernel_name();
      b.run(g.dq.data(), g.dk.data(), g.dv.data(), g.dpse.data());
    } catch (const std::exception& e) {
      finding("backward run of a validated call threw:", e.what());
    }
    return g;
  };
  const Grads gr = run_backward(sa::Backend::reference, 1);
  const Grads g1 = run_backward(sa::Backend::automatic, 1);
  const Grads gn = run_backward(sa::Backend::automatic, threads);
  if (g1.dq != gn.dq || g1.dk != gn.dk || g1.dv != gn.dv || g1.dpse != gn.dpse)
    finding("backward not bit-identical across thread counts");
  if (c.bounded && !corrupted && dy->finite) {
    const double tol = 2.5 * dtype_tol(out_dt);
    compare(g1.dq, gr.dq, out_dt, tol, "dq");
    compare(g1.dk, gr.dk, out_dt, tol, "dk");
    compare(g1.dv, gr.dv, out_dt, tol, "dv");
    if (c.pse) compare(g1.dpse, gr.dpse, bwd->dpse_spec().dtype, tol, "dpse");
  }
  for (GenTensor* t : {c.q.get(), c.k.get(), c.v.get(), c.mask.get(), c.pse.get(), dy.get()})
    if (t && t->bytes && std::memcmp(t->snapshot.data(), t->mem.get(), t->bytes) != 0)
      finding("backward wrote into an input");
  if (smax_b != smax_snap || ssum_b != ssum_snap || attn_b != attn_snap) finding("backward wrote into a saved tensor");
  return 0;
}
