// The validated, layout-free description of one forward or backward call.
//
// Built once by validation (src/api/validate.cpp) from the user's tensors and options;
// read by the reference backend and every CPU kernel. Kernels never see the layout
// string: every operand is addressed as
//   element (b, n, i, d) = data + b*sb + (row0[b] + i)*ss + n*sn + d      (d stride 1)
// where row0[b] is 0 except for TND, whose sequences are row ranges of one token axis.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "speedattn/speedattn.h"

namespace speedattn {

enum class Layout : int { BSH, SBH, BSND, BNSD, TND };

// A (B, N, S, D)-addressed operand: q, k, v, dy, out, dq, dk, dv.
struct Operand {
  const void* data = nullptr;
  int64_t sb = 0, ss = 0, sn = 0;  // element strides of batch, sequence, head (d stride 1)
};

// The generated part of the mask for one sequence (SPEC §3, §6): row i keeps
// j in [i + lo_off, i + hi_off] ∩ [0, skv), plus every j < prefix (modes 5/6).
// Causal modes are bands with lo_off = -inf. An explicit mask (MaskDesc) is ANDed on top.
struct SeqBand {
  bool banded = false;     // false: every j in [0, skv) (subject to the explicit mask)
  int64_t lo_off = 0;      // keep j >= i + lo_off   (may be very negative)
  int64_t hi_off = 0;      // keep j <= i + hi_off
  int64_t prefix = 0;      // additionally keep j < prefix (modes 5/6)
};

enum class PseKind : int { none = 0, tensor = 1, slopes = 2 };

struct PseDesc {
  PseKind kind = PseKind::none;
  int64_t pse_type = 1;     // 0: scale*qk + pse; 1: scale*(qk + pse); 2: -slope*|d|; 3: -slope*sqrt|d|
  const void* data = nullptr;
  DType dtype = DType::float32;     // tensor: the query dtype; slopes: float32
  int64_t sb = 0, sn = 0, si = 0, sj = 1;  // element strides; broadcast dims are 0
  bool compressed = false;  // (B|1, N1, 1024, S2) ALiBi form (SPEC §5)
  int64_t q_start = 0, kv_start = 0;  // pse_type 2/3 offsets
  // The user's pse tensor shape/strides, for dpse (backward).
  int ndim = 0;
  int64_t shape[4] = {0, 0, 0, 0};
};

struct MaskDesc {
  const uint8_t* data = nullptr;  // nullptr: no explicit mask is read; nonzero byte = masked out
  int64_t sb = 0, sn = 0, si = 0, sj = 1;  // element strides; broadcast dims are 0
};

struct Problem {
  bool backward = false;
  Backend backend = Backend::automatic;
  DType dtype = DType::float32;
  Layout layout = Layout::BSH;

  int64_t B = 0, N1 = 0, N2 = 0, G = 1, D = 0;
  int64_t S1 = 0, S2 = 0;          // non-TND: the common lengths; TND: the maxima over sequences
  int64_t T1 = 0, T2 = 0;          // TND token counts (0 otherwise)
  std::vector<int64_t> sq, skv;    // per sequence lengths, size B
  std::vector<int64_t> row0_q, row0_kv;  // per sequence first token row (0 unless TND)
  std::vector<int64_t> drop_base;  // per sequence dropout element index base (SPEC §7)
  std::vector<int64_t> stat_base;  // per sequence index of (n=0, i=0) in the softmax stats, in rows of 8
  // stats element (b, n, i) lives at stat_base[b] + n*stat_sn[b] + i (times 8 floats)
  std::vector<int64_t> stat_sn;

  Operand q, k, v;                 // inputs
  Operand out;                     // forward: attention_out (contiguous, query shape); backward: attention_in
  Operand dy;                      // backward only
  Operand dq, dk, dv;              // backward outputs (contiguous, shapes of q/k/v); data set at run
  void* dpse_out = nullptr;        // backward: contiguous, pse's shape and dtype; set at run
  float* smax_out = nullptr;       // forward outputs: stats rows of 8 floats (stat_row()); set at run
  float* ssum_out = nullptr;
  const float* smax_in = nullptr;  // backward: saved statistics (stride as stat_* above, 8 floats per row)
  const float* ssum_in = nullptr;
  int64_t stat_row_stride = 8;     // floats between consecutive stats rows (8 contiguous; strided views allowed)

  double scale = 1.0;
  double keep_prob = 1.0;
  uint32_t keep_threshold = 0;     // keep iff philox word < threshold (keep_prob < 1)
  bool dropout = false;
  RngState rng;                    // backward: the saved state; forward: set per run
  std::optional<RngState> given_rng;  // forward: Options::rng

  int64_t sparse_mode = 0;
  MaskDesc mask;                   // explicit mask read (modes 0, 1, 5), else data == nullptr
  std::vector<SeqBand> band;       // per sequence, size B
  bool invalid_line = false;       // fully masked rows -> 0 (inner_precise 2 or automatic, SPEC §4)

  PseDesc pse;
  int64_t numels = 0;

  // Output specs
  OutputSpec out_spec, stat_spec;
  OutputSpec dq_spec, dk_spec, dv_spec, dpse_spec;
};

}  // namespace speedattn
