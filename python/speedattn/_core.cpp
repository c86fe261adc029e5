// speedattn._core — nanobind bindings of the C++ API (include/speedattn/speedattn.h).
//
// No math here. Tensors cross the boundary as tuples
//     (data_ptr: int, dtype: str, shape: list[int], strides_in_elements: list[int])
// built by speedattn/_api.py, which also owns the Python-level type checks and keeps the
// arrays alive while a plan runs. A plan is a validated speedattn::Forward / Backward;
// its run() releases the GIL.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/scratch_cache.h"
#include "speedattn/speedattn.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using speedattn::DType;

const char* const kDTypeNames = "float16, bfloat16, float32, float64, bool, uint8, int64";

DType parse_dtype(const std::string& name, const std::string& what) {
  if (name == "float16") return DType::float16;
  if (name == "bfloat16") return DType::bfloat16;
  if (name == "float32") return DType::float32;
  if (name == "bool") return DType::boolean;
  if (name == "uint8") return DType::uint8;
  if (name == "int64") return DType::int64;
  if (name == "float64") return DType::float64;
  throw speedattn::TypeError(what + ": unsupported dtype '" + name + "'; allowed: " + kDTypeNames);
}

std::string describe(nb::handle h) {
  try {
    return nb::cast<std::string>(nb::repr(h));
  } catch (...) {
    return "<object>";
  }
}

// (data_ptr, dtype, shape, strides) -> TensorView.
speedattn::TensorView to_view(nb::handle obj, const std::string& what) {
  if (!nb::isinstance<nb::tuple>(obj) || nb::len(obj) != 4)
    throw speedattn::TypeError(what + ": expected a tuple (data_ptr, dtype, shape, strides), got " + describe(obj));
  nb::tuple t = nb::borrow<nb::tuple>(obj);
  speedattn::TensorView v;
  std::vector<int64_t> shape, strides;
  std::string dtype;
  uintptr_t ptr = 0;
  try {
    ptr = nb::cast<uintptr_t>(t[0]);
    dtype = nb::cast<std::string>(t[1]);
    shape = nb::cast<std::vector<int64_t>>(t[2]);
    strides = nb::cast<std::vector<int64_t>>(t[3]);
  } catch (const nb::cast_error&) {
    throw speedattn::TypeError(what + ": expected a tuple (data_ptr: int, dtype: str, shape: list[int], "
                               "strides: list[int]), got " + describe(obj));
  }
  if (shape.size() != strides.size())
    throw speedattn::ValueError(what + ": shape and strides differ in length");
  if (shape.size() > static_cast<std::size_t>(speedattn::TensorView::kMaxDims))
    throw speedattn::ValueError(what + ": at most 4 dimensions are supported, got " +
                                std::to_string(shape.size()));
  v.data = reinterpret_cast<const void*>(ptr);
  v.dtype = parse_dtype(dtype, what);
  v.ndim = static_cast<int>(shape.size());
  for (int d = 0; d < v.ndim; ++d) {
    v.shape[d] = shape[d];
    v.stride[d] = strides[d];
  }
  return v;
}

std::optional<speedattn::TensorView> to_opt_view(nb::handle obj, const std::string& what) {
  if (obj.is_none()) return std::nullopt;
  return to_view(obj, what);
}

template <class T>
T cast_opt(nb::handle value, const std::string& key, const char* expected) {
  try {
    return nb::cast<T>(value);
  } catch (const nb::cast_error&) {
    throw speedattn::TypeError("option " + key + ": expected " + expected + ", got " + describe(value));
  }
}

std::optional<std::vector<int64_t>> to_opt_seq(nb::handle value, const std::string& key) {
  if (value.is_none()) return std::nullopt;
  return cast_opt<std::vector<int64_t>>(value, key, "a sequence of int or None");
}

speedattn::Backend parse_backend(const std::string& s) {
  if (s == "auto" || s == "automatic") return speedattn::Backend::automatic;
  if (s == "reference") return speedattn::Backend::reference;
  throw speedattn::ValueError("backend: got '" + s + "'; allowed: 'auto', 'reference'");
}

// dict -> Options. Keys are the keyword names of speed_fusion_attention (plus "backend").
speedattn::Options to_options(const nb::dict& d) {
  speedattn::Options o;
  for (auto [k, value] : d) {
    const std::string key = cast_opt<std::string>(k, "<key>", "str keys");
    if (key == "head_num") o.head_num = cast_opt<int64_t>(value, key, "int");
    else if (key == "input_layout") o.input_layout = cast_opt<std::string>(value, key, "str");
    else if (key == "pse") o.pse = to_opt_view(value, key);
    else if (key == "padding_mask") o.padding_mask = to_opt_view(value, key);
    else if (key == "atten_mask") o.atten_mask = to_opt_view(value, key);
    else if (key == "scale") o.scale = cast_opt<double>(value, key, "float");
    else if (key == "keep_prob") o.keep_prob = cast_opt<double>(value, key, "float");
    else if (key == "pre_tokens") o.pre_tokens = cast_opt<int64_t>(value, key, "int");
    else if (key == "next_tokens") o.next_tokens = cast_opt<int64_t>(value, key, "int");
    else if (key == "inner_precise") o.inner_precise = cast_opt<int64_t>(value, key, "int");
    else if (key == "prefix") o.prefix = to_opt_seq(value, key);
    else if (key == "actual_seq_qlen") o.actual_seq_qlen = to_opt_seq(value, key);
    else if (key == "actual_seq_kvlen") o.actual_seq_kvlen = to_opt_seq(value, key);
    else if (key == "sparse_mode") o.sparse_mode = cast_opt<int64_t>(value, key, "int");
    else if (key == "gen_mask_parallel") o.gen_mask_parallel = cast_opt<bool>(value, key, "bool");
    else if (key == "sync") o.sync = cast_opt<bool>(value, key, "bool");
    else if (key == "template_verified") o.template_verified = cast_opt<bool>(value, key, "bool");
    else if (key == "pse_type") o.pse_type = cast_opt<int64_t>(value, key, "int");
    else if (key == "q_start_idx") o.q_start_idx = to_opt_seq(value, key);
    else if (key == "kv_start_idx") o.kv_start_idx = to_opt_seq(value, key);
    else if (key == "rng") {
      if (!value.is_none()) {
        const auto st = cast_opt<std::pair<int64_t, int64_t>>(value, key, "a (seed, offset) pair of int or None");
        o.rng = speedattn::RngState{st.first, st.second};
      }
    } else if (key == "backend") o.backend = parse_backend(cast_opt<std::string>(value, key, "str"));
    else throw speedattn::ValueError("unknown option '" + key + "'");
  }
  return o;
}

nb::tuple spec_tuple(const speedattn::OutputSpec& s) {
  return nb::make_tuple(std::string(speedattn::dtype_name(s.dtype)), s.shape);
}

void* as_ptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "speedattn C++ core (nanobind). Use the speedattn package, not this module directly.";

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const speedattn::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const speedattn::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const speedattn::Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  nb::class_<speedattn::Forward>(m, "ForwardPlan",
                                 "A validated forward call; run(out_ptr, smax_ptr, ssum_ptr) -> (seed, offset).")
      .def_prop_ro("attention_out_spec", [](const speedattn::Forward& f) { return spec_tuple(f.attention_out_spec()); })
      .def_prop_ro("softmax_stat_spec", [](const speedattn::Forward& f) { return spec_tuple(f.softmax_stat_spec()); })
      .def_prop_ro("numels", &speedattn::Forward::numels)
      .def_prop_ro("kernel_name", &speedattn::Forward::kernel_name)
      .def(
          "run",
          [](const speedattn::Forward& f, uintptr_t out, uintptr_t smax, uintptr_t ssum) {
            speedattn::RngState st;
            {
              nb::gil_scoped_release release;
              st = f.run(as_ptr(out), static_cast<float*>(as_ptr(smax)), static_cast<float*>(as_ptr(ssum)));
            }
            return std::make_pair(st.seed, st.offset);
          },
          "out_ptr"_a, "smax_ptr"_a, "ssum_ptr"_a);

  nb::class_<speedattn::Backward>(m, "BackwardPlan",
                                  "A validated backward call; run(dq_ptr, dk_ptr, dv_ptr, dpse_ptr).")
      .def_prop_ro("dq_spec", [](const speedattn::Backward& b) { return spec_tuple(b.dq_spec()); })
      .def_prop_ro("dk_spec", [](const speedattn::Backward& b) { return spec_tuple(b.dk_spec()); })
      .def_prop_ro("dv_spec", [](const speedattn::Backward& b) { return spec_tuple(b.dv_spec()); })
      .def_prop_ro("dpse_spec", [](const speedattn::Backward& b) { return spec_tuple(b.dpse_spec()); })
      .def_prop_ro("kernel_name", &speedattn::Backward::kernel_name)
      .def(
          "run",
          [](const speedattn::Backward& b, uintptr_t dq, uintptr_t dk, uintptr_t dv, uintptr_t dpse) {
            nb::gil_scoped_release release;
            b.run(as_ptr(dq), as_ptr(dk), as_ptr(dv), as_ptr(dpse));
          },
          "dq_ptr"_a, "dk_ptr"_a, "dv_ptr"_a, "dpse_ptr"_a);

  m.def(
      "forward_plan",
      [](nb::handle query, nb::handle key, nb::handle value, nb::dict options) {
        const speedattn::TensorView q = to_view(query, "query");
        const speedattn::TensorView k = to_view(key, "key");
        const speedattn::TensorView v = to_view(value, "value");
        const speedattn::Options opt = to_options(options);
        nb::gil_scoped_release release;
        return speedattn::Forward(q, k, v, opt);
      },
      "query"_a, "key"_a, "value"_a, "options"_a,
      "Validate a forward call (raises TypeError / ValueError); returns a ForwardPlan.");

  m.def(
      "backward_plan",
      [](nb::handle query, nb::handle key, nb::handle value, nb::handle dy, nb::dict options, nb::dict saved) {
        const speedattn::TensorView q = to_view(query, "query");
        const speedattn::TensorView k = to_view(key, "key");
        const speedattn::TensorView v = to_view(value, "value");
        const speedattn::TensorView g = to_view(dy, "dy");
        const speedattn::Options opt = to_options(options);
        speedattn::ForwardSaved s;
        bool have_max = false, have_sum = false, have_out = false;
        for (auto [kh, val] : saved) {
          const std::string key_name = cast_opt<std::string>(kh, "<key>", "str keys");
          if (key_name == "softmax_max") s.softmax_max = to_view(val, key_name), have_max = true;
          else if (key_name == "softmax_sum") s.softmax_sum = to_view(val, key_name), have_sum = true;
          else if (key_name == "attention_in") s.attention_in = to_view(val, key_name), have_out = true;
          else if (key_name == "seed") s.seed = cast_opt<int64_t>(val, key_name, "int");
          else if (key_name == "offset") s.offset = cast_opt<int64_t>(val, key_name, "int");
          else if (key_name == "numels") s.numels = cast_opt<int64_t>(val, key_name, "int");
          else throw speedattn::ValueError("unknown saved entry '" + key_name + "'");
        }
        if (!have_max || !have_sum || !have_out)
          throw speedattn::ValueError("saved: softmax_max, softmax_sum and attention_in are required");
        nb::gil_scoped_release release;
        return speedattn::Backward(q, k, v, g, opt, s);
      },
      "query"_a, "key"_a, "value"_a, "dy"_a, "options"_a, "saved"_a,
      "Validate a backward call (raises TypeError / ValueError); returns a BackwardPlan.");

  m.def("manual_seed", &speedattn::manual_seed, "seed"_a);
  m.def("rng_state", []() {
    const speedattn::RngState s = speedattn::rng_state();
    return std::make_pair(s.seed, s.offset);
  });
  m.def(
      "reserve_rng",
      [](int64_t numels) {
        const speedattn::RngState s = speedattn::reserve_rng(numels);
        return std::make_pair(s.seed, s.offset);
      },
      "numels"_a, "Take the generator's (seed, offset) and advance the offset by ceil(numels / 4).");
  m.def(
      "output_block",
      [](size_t nbytes) {
        auto* blk = new speedattn::ScratchBlock(speedattn::output_take(nbytes));
        nb::capsule owner(blk, [](void* p) noexcept {
          auto* b = static_cast<speedattn::ScratchBlock*>(p);
          speedattn::output_give(*b);
          delete b;
        });
        return nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>(blk->p, {nbytes}, owner);
      },
      "nbytes"_a,
      "nbytes of uninitialised memory for an output, as a writable uint8 numpy array, from the "
      "cache of output buffers freed earlier (common/scratch_cache.h); the block goes back to "
      "the cache when the array (and every view of it) is gone.");
  m.def("output_cached_bytes", &speedattn::output_cached_bytes, "Bytes the output cache holds now.");
  m.def("set_num_threads", &speedattn::set_num_threads, "n"_a);
  m.def("get_num_threads", &speedattn::get_num_threads);
  m.def("version", &speedattn::version);
  m.def("cpu_features", &speedattn::cpu_features);
  m.def("isa_cap", &speedattn::isa_cap);
  m.def(
      "forward_kernel_for", [](const std::string& dtype) { return speedattn::forward_kernel_for(parse_dtype(dtype, "dtype")); },
      "dtype"_a);
  m.def(
      "backward_kernel_for",
      [](const std::string& dtype) { return speedattn::backward_kernel_for(parse_dtype(dtype, "dtype")); }, "dtype"_a);
  m.def("dtype_size", [](const std::string& dtype) { return speedattn::dtype_size(parse_dtype(dtype, "dtype")); },
        "dtype"_a);
}
