// Validation: user tensors + options -> Problem. See validate.h; the rules are SPEC §2-§7, §10
// and docs/semantics.md.
#include "api/validate.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <string>

#include "common/philox.h"

namespace speedattn {
namespace {

constexpr int64_t kNoLimit = int64_t(1) << 62;  // "unbounded" band offset
constexpr int64_t kMaxD = 768;
constexpr int64_t kMaxSeqs = 1024;  // TND: at most 1024 sequences (SPEC §6)
// Largest batch accepted: validation keeps a few per-sequence int64 vectors (O(B) memory).
// SPEC §2 asks for B <= 2048; 2^20 leaves room for broadcast (stride-0) batches.
constexpr int64_t kMaxBatch = int64_t(1) << 20;
constexpr int64_t kTemplate = 2048;  // side of the compressed causal template

[[noreturn]] void type_error(const std::string& msg) { throw TypeError(msg); }
[[noreturn]] void value_error(const std::string& msg) { throw ValueError(msg); }

std::string shape_str(const TensorView& t) {
  std::ostringstream s;
  s << "(";
  for (int d = 0; d < t.ndim; ++d) s << (d ? ", " : "") << t.shape[d];
  if (t.ndim == 1) s << ",";
  s << ")";
  return s.str();
}

std::string list_str(const std::vector<int64_t>& v) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < v.size(); ++i) s << (i ? ", " : "") << v[i];
  s << "]";
  return s.str();
}

bool is_float_dtype(DType t) {
  return t == DType::float16 || t == DType::bfloat16 || t == DType::float32 || t == DType::float64;
}

// a * b, or a ValueError naming `what` when the product overflows int64.
int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) value_error(std::string(what) + ": size overflows 64-bit indexing");
  return r;
}

void check_view(const TensorView& t, const char* name) {
  if (t.ndim < 0 || t.ndim > TensorView::kMaxDims)
    value_error(std::string(name) + ": got " + std::to_string(t.ndim) + " dimensions; at most 4 are allowed");
  int64_t n = 1;
  for (int d = 0; d < t.ndim; ++d) {
    if (t.shape[d] < 0) value_error(std::string(name) + ": negative dimension in shape " + shape_str(t));
    n = checked_mul(n, t.shape[d], name);
  }
  if (n > 0 && t.data == nullptr) value_error(std::string(name) + ": data pointer is null");
  // the largest element offset must fit in int64 as well
  int64_t span = 0;
  for (int d = 0; d < t.ndim; ++d) {
    if (t.shape[d] == 0) return;
    const int64_t s = t.stride[d] < 0 ? -t.stride[d] : t.stride[d];
    int64_t step = checked_mul(t.shape[d] - 1, s, name);
    if (__builtin_add_overflow(span, step, &span)) value_error(std::string(name) + ": size overflows 64-bit indexing");
  }
}

Layout parse_layout(const std::string& s) {
  if (s == "BSH") return Layout::BSH;
  if (s == "SBH") return Layout::SBH;
  if (s == "BSND") return Layout::BSND;
  if (s == "BNSD") return Layout::BNSD;
  if (s == "TND") return Layout::TND;
  value_error("input_layout: got '" + s + "'; expected one of 'BSH', 'SBH', 'BSND', 'BNSD', 'TND'");
}

// The (B, S, N, D) reading of one q/k/v-shaped tensor under the layout.
struct Dims {
  int64_t B = 0, S = 0, N = 0, D = 0;
  Operand op;
};

// d_known: D from the query (0 when reading the query itself; then heads = head_num).
Dims read_dims(const TensorView& t, Layout layout, const char* name, int64_t head_num, int64_t d_known) {
  const int want = (layout == Layout::BSND || layout == Layout::BNSD) ? 4 : 3;
  if (t.ndim != want)
    value_error(std::string(name) + ": got shape " + shape_str(t) + " with " + std::to_string(t.ndim) +
                " dimensions; input_layout requires " + std::to_string(want));
  Dims d;
  const int64_t* sh = t.shape;
  const int64_t* st = t.stride;
  switch (layout) {
    case Layout::BSH:
    case Layout::SBH: {
      const int bi = layout == Layout::BSH ? 0 : 1, si = 1 - bi;
      d.B = sh[bi];
      d.S = sh[si];
      const int64_t H = sh[2];
      if (d_known == 0) {
        if (H % head_num != 0)
          value_error(std::string(name) + ": hidden size H=" + std::to_string(H) + " of shape " + shape_str(t) +
                      " is not divisible by head_num=" + std::to_string(head_num));
        d.D = H / head_num;
      } else {
        d.D = d_known;
        if (H % d_known != 0)
          value_error(std::string(name) + ": hidden size H=" + std::to_string(H) + " of shape " + shape_str(t) +
                      " is not a multiple of the head size D=" + std::to_string(d_known));
      }
      d.N = d.D > 0 ? H / d.D : 0;
      d.op.sb = st[bi];
      d.op.ss = st[si];
      d.op.sn = checked_mul(d.D, st[2], name);
      break;
    }
    case Layout::BSND:
      d.B = sh[0], d.S = sh[1], d.N = sh[2], d.D = sh[3];
      d.op.sb = st[0], d.op.ss = st[1], d.op.sn = st[2];
      break;
    case Layout::BNSD:
      d.B = sh[0], d.N = sh[1], d.S = sh[2], d.D = sh[3];
      d.op.sb = st[0], d.op.sn = st[1], d.op.ss = st[2];
      break;
    case Layout::TND:
      d.B = 1, d.S = sh[0], d.N = sh[1], d.D = sh[2];
      d.op.sb = 0, d.op.ss = st[0], d.op.sn = st[1];
      break;
  }
  if (d.D > 1 && st[t.ndim - 1] != 1)
    value_error(std::string(name) + ": the last dimension must have unit stride (got stride " +
                std::to_string(st[t.ndim - 1]) + "); pass a contiguous copy");
  d.op.data = t.data;
  return d;
}

// Operand of a contiguous tensor with the given shape under the layout (for outputs).
Operand contiguous_operand(const std::vector<int64_t>& shape, Layout layout, int64_t head_num_or_0, int64_t D) {
  TensorView t = TensorView::contiguous(nullptr, DType::float32, shape);
  return read_dims(t, layout, "output", head_num_or_0 ? head_num_or_0 : 1, head_num_or_0 ? 0 : D).op;
}

void check_int_list(const std::optional<std::vector<int64_t>>& v, const char* name, size_t want_len) {
  if (v && v->size() != want_len)
    value_error(std::string(name) + ": got " + list_str(*v) + " of length " + std::to_string(v->size()) +
                "; expected a sequence of length " + std::to_string(want_len));
}

// The compressed causal template: triu(ones(2048, 2048), diagonal=1); for mode 6, 1024 more
// rows [zeros(1024,1024) | ones(1024,1024)].
void check_template(const TensorView& m, int64_t mode, bool content_verified) {
  const int64_t rows = mode == 6 ? 3072 : kTemplate;
  const std::string what = mode == 6 ? "(3072, 2048) prefix template" : "(2048, 2048) causal template";
  if (m.ndim != 2 || m.shape[0] != rows || m.shape[1] != kTemplate)
    value_error("atten_mask: sparse_mode=" + std::to_string(mode) + " requires the " + what + "; got shape " +
                shape_str(m));
  if (content_verified) return;
  const uint8_t* base = static_cast<const uint8_t*>(m.data);
  // Row i keeps (0) its first zeros(i) columns and masks (nonzero) the rest.
  auto zeros = [](int64_t i) { return i < kTemplate ? i + 1 : int64_t(1024); };
  // Fast path for contiguous rows: one read of the mask, OR / AND reductions the compiler
  // vectorises (the masks are 4 / 6 MiB: ~0.3 ms at memory speed, skipped when the caller
  // vouches for the content, Options::template_verified).
  if (m.stride[1] == 1) {
    bool ok = true;
    for (int64_t i = 0; ok && i < rows; ++i) {
      const uint8_t* r = base + i * m.stride[0];
      const int64_t z = zeros(i);
      uint8_t any = 0, none = 0;
      for (int64_t j = 0; j < z; ++j) any |= r[j];
      for (int64_t j = z; j < kTemplate; ++j) none |= uint8_t(r[j] == 0);
      ok = any == 0 && none == 0;
    }
    if (ok) return;
  }
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < kTemplate; ++j) {
      if ((base[i * m.stride[0] + j * m.stride[1]] != 0) != (j >= zeros(i)))
        value_error("atten_mask: sparse_mode=" + std::to_string(mode) + " requires the " + what +
                    (mode == 6 ? " (rows 0..2047 = triu(ones, 1), rows 2048..3071 = [zeros | ones])"
                               : " triu(ones(2048, 2048), diagonal=1)") +
                    "; element (" + std::to_string(i) + ", " + std::to_string(j) + ") differs");
    }
}

// SPEC §3 legality of (pre, next) for a top-left-aligned band over S1 x S2.
void check_band(int64_t pre, int64_t next, int64_t S1, int64_t S2, int64_t mode, const std::string& orig) {
  auto bad = [&](const std::string& why) {
    value_error("pre_tokens/next_tokens: " + orig + " is illegal for sparse_mode=" + std::to_string(mode) + ": " +
                why);
  };
  if (pre < 0 && next < 0) bad("pre_tokens and next_tokens cannot both be negative");
  if (pre < 0 && next >= 0) {
    if (next < -pre) bad("with negative pre_tokens, next_tokens must be >= |pre_tokens|");
    if (-pre >= S2) bad("|pre_tokens| must be < S2=" + std::to_string(S2));
  }
  if (next < 0 && pre >= 0) {
    if (-next > pre) bad("with negative next_tokens, |next_tokens| must be <= pre_tokens");
    if (-next >= S1) bad("|next_tokens| must be < S1=" + std::to_string(S1));
  }
}

struct Builder {
  Problem p;
  const Options& o;
  int64_t Hq_heads = 0;  // head_num

  explicit Builder(const Options& opt) : o(opt) {}

  void tensors(const TensorView& q, const TensorView& k, const TensorView& v) {
    check_view(q, "query");
    check_view(k, "key");
    check_view(v, "value");
    if (!is_float_dtype(q.dtype))
      type_error(std::string("query: dtype ") + dtype_name(q.dtype) + " is not supported; expected float16, bfloat16 or float32 (float64: reference backend)");
    if (k.dtype != q.dtype)
      type_error(std::string("key: dtype ") + dtype_name(k.dtype) + " differs from query's " + dtype_name(q.dtype));
    if (v.dtype != q.dtype)
      type_error(std::string("value: dtype ") + dtype_name(v.dtype) + " differs from query's " + dtype_name(q.dtype));
    p.dtype = q.dtype;
    p.layout = parse_layout(o.input_layout);
    if (o.head_num < 1) value_error("head_num: got " + std::to_string(o.head_num) + "; expected a positive integer");
    Dims dq = read_dims(q, p.layout, "query", o.head_num, 0);
    if (dq.N != o.head_num)
      value_error("head_num: got " + std::to_string(o.head_num) + " but query " + shape_str(q) + " has N=" +
                  std::to_string(dq.N) + " heads under input_layout '" + o.input_layout + "'");
    if (dq.D < 1 || dq.D > kMaxD)
      value_error("query: head size D=" + std::to_string(dq.D) + " from shape " + shape_str(q) +
                  " is outside the supported range 1..768");
    Dims dk = read_dims(k, p.layout, "key", o.head_num, dq.D);
    Dims dv = read_dims(v, p.layout, "value", o.head_num, dq.D);
    for (int d = 0; d < k.ndim; ++d)
      if (v.shape[d] != k.shape[d])
        value_error("value: shape " + shape_str(v) + " must equal key's shape " + shape_str(k));
    if (dk.D != dq.D)
      value_error("key: head size D=" + std::to_string(dk.D) + " of shape " + shape_str(k) +
                  " differs from query's D=" + std::to_string(dq.D));
    if (p.layout != Layout::TND && dk.B != dq.B)
      value_error("key: batch size " + std::to_string(dk.B) + " of shape " + shape_str(k) +
                  " differs from query's " + std::to_string(dq.B));
    if (dk.N < 1 || dq.N % dk.N != 0)
      value_error("key: N2=" + std::to_string(dk.N) + " kv heads (shape " + shape_str(k) +
                  ") must divide the N1=" + std::to_string(dq.N) + " query heads");
    p.B = dq.B;
    p.N1 = dq.N;
    p.N2 = dk.N;
    p.G = p.N1 / p.N2;
    p.D = dq.D;
    p.q = dq.op;
    p.k = dk.op;
    p.v = dv.op;
    p.S1 = dq.S;
    p.S2 = dk.S;
    Hq_heads = o.head_num;
  }

  void scalars() {
    if (!(std::fabs(o.scale) <= 3.4028234663852886e38)) value_error("scale: got " + std::to_string(o.scale) + "; expected a finite float32 number");
    if (!(o.keep_prob > 0.0 && o.keep_prob <= 1.0))
      value_error("keep_prob: got " + std::to_string(o.keep_prob) + "; expected a number in (0, 1]");
    if (o.sparse_mode < 0 || o.sparse_mode > 8)
      value_error("sparse_mode: got " + std::to_string(o.sparse_mode) + "; expected an integer in 0..8");
    if (p.layout == Layout::TND && o.sparse_mode == 5)
      value_error("sparse_mode: got 5; with input_layout 'TND' the legal modes are 0, 1, 2, 3, 4, 6, 7, 8");
    if (p.layout != Layout::TND && o.sparse_mode > 6)
      value_error("sparse_mode: got " + std::to_string(o.sparse_mode) +
                  "; modes 7 and 8 need input_layout 'TND' (legal here: 0..6)");
    if (o.pse_type < 0 || o.pse_type > 3)
      value_error("pse_type: got " + std::to_string(o.pse_type) + "; expected 0, 1, 2 or 3");
    if (o.pse_type != 1 && !o.pse)
      value_error("pse: pse_type=" + std::to_string(o.pse_type) + " requires a pse tensor, got None");
    if (o.inner_precise < 0 || o.inner_precise > 2)
      value_error("inner_precise: got " + std::to_string(o.inner_precise) + "; expected 0, 1 or 2");
    if (o.padding_mask) value_error("padding_mask: is reserved and must be None");
    p.scale = o.scale;
    p.keep_prob = o.keep_prob;
    p.dropout = o.keep_prob < 1.0;
    p.keep_threshold = p.dropout ? keep_threshold(o.keep_prob) : 0xffffffffu;
    p.sparse_mode = o.sparse_mode;
    p.backend = o.backend;
    p.given_rng = o.rng;
    if (o.rng && o.rng->offset < 0)
      value_error("rng: offset " + std::to_string(o.rng->offset) + " is negative; expected >= 0");
  }

  // Sequences: lengths, row offsets, dropout bases, statistics addressing.
  void sequences() {
    const size_t Bn = size_t(p.B);
    if (p.layout != Layout::TND) {
      if (p.B > kMaxBatch)
        value_error("query: batch size B=" + std::to_string(p.B) + " exceeds the supported maximum " +
                    std::to_string(kMaxBatch));
      if (o.actual_seq_qlen) value_error("actual_seq_qlen: only used with input_layout 'TND'; got " + list_str(*o.actual_seq_qlen));
      if (o.actual_seq_kvlen) value_error("actual_seq_kvlen: only used with input_layout 'TND'; got " + list_str(*o.actual_seq_kvlen));
      if (p.S1 > 0 && p.S2 == 0 && p.B > 0)
        value_error("key: sequence length S2=0 while query has S1=" + std::to_string(p.S1) + " rows; every row needs keys");
      p.sq.assign(Bn, p.S1);
      p.skv.assign(Bn, p.S2);
      p.row0_q.assign(Bn, 0);
      p.row0_kv.assign(Bn, 0);
      p.drop_base.resize(Bn);
      p.stat_base.resize(Bn);
      p.stat_sn.assign(Bn, p.S1);
      const int64_t per_b = checked_mul(checked_mul(p.N1, p.S1, "query"), p.S2, "numels");
      p.numels = checked_mul(per_b, p.B, "numels");  // before b * per_b below (no overflow then)
      for (size_t b = 0; b < Bn; ++b) {
        p.drop_base[b] = int64_t(b) * per_b;
        p.stat_base[b] = int64_t(b) * p.N1 * p.S1;
      }
      return;
    }
    p.T1 = p.S1;
    p.T2 = p.S2;
    if (!o.actual_seq_qlen) value_error("actual_seq_qlen: input_layout 'TND' requires actual_seq_qlen, got None");
    if (!o.actual_seq_kvlen) value_error("actual_seq_kvlen: input_layout 'TND' requires actual_seq_kvlen, got None");
    const auto& cq = *o.actual_seq_qlen;
    const auto& ck = *o.actual_seq_kvlen;
    if (cq.size() != ck.size())
      value_error("actual_seq_kvlen: length " + std::to_string(ck.size()) + " differs from actual_seq_qlen's " +
                  std::to_string(cq.size()));
    if (cq.empty() || int64_t(cq.size()) > kMaxSeqs)
      value_error("actual_seq_qlen: got " + std::to_string(cq.size()) + " sequences; expected 1..1024");
    auto check_cum = [&](const std::vector<int64_t>& c, const char* name, int64_t total) {
      int64_t prev = 0;
      for (size_t b = 0; b < c.size(); ++b) {
        if (c[b] < prev)
          value_error(std::string(name) + ": got " + list_str(c) +
                      "; cumulative lengths (no leading 0) must be non-negative and non-decreasing");
        prev = c[b];
      }
      if (prev > total)
        value_error(std::string(name) + ": last value " + std::to_string(prev) + " exceeds the " +
                    std::to_string(total) + " tokens of the " + (name[11] == 'q' ? "query" : "key"));
    };
    check_cum(cq, "actual_seq_qlen", p.T1);
    check_cum(ck, "actual_seq_kvlen", p.T2);
    p.B = int64_t(cq.size());
    const size_t Bn2 = cq.size();
    p.sq.resize(Bn2);
    p.skv.resize(Bn2);
    p.row0_q.resize(Bn2);
    p.row0_kv.resize(Bn2);
    p.drop_base.resize(Bn2);
    p.stat_base.resize(Bn2);
    p.stat_sn.resize(Bn2);
    int64_t drop = 0;
    p.S1 = p.S2 = 0;
    for (size_t b = 0; b < Bn2; ++b) {
      p.row0_q[b] = b ? cq[b - 1] : 0;
      p.row0_kv[b] = b ? ck[b - 1] : 0;
      p.sq[b] = cq[b] - p.row0_q[b];
      p.skv[b] = ck[b] - p.row0_kv[b];
      if (p.sq[b] > 0 && p.skv[b] == 0)
        value_error("actual_seq_kvlen: sequence " + std::to_string(b) + " has " + std::to_string(p.sq[b]) +
                    " query tokens but 0 key tokens");
      p.S1 = std::max(p.S1, p.sq[b]);
      p.S2 = std::max(p.S2, p.skv[b]);
      p.drop_base[b] = drop;
      if (__builtin_add_overflow(drop, checked_mul(checked_mul(p.N1, p.sq[b], "numels"), p.skv[b], "numels"), &drop))
        value_error("numels: size overflows 64-bit indexing");
      p.stat_base[b] = p.N1 * p.row0_q[b];
      p.stat_sn[b] = p.sq[b];
    }
    p.numels = drop;
  }

  void mask_and_band() {
    const int64_t mode = o.sparse_mode;
    p.band.assign(size_t(p.B), SeqBand{});
    // prefix
    if (mode == 5 || mode == 6) {
      if (!o.prefix) value_error("prefix: sparse_mode=" + std::to_string(mode) + " requires prefix, got None");
      check_int_list(o.prefix, "prefix", size_t(p.B));
    } else if (o.prefix) {
      value_error("prefix: must be None for sparse_mode=" + std::to_string(mode) + " (used by modes 5 and 6); got " +
                  list_str(*o.prefix));
    }
    if (!o.atten_mask) {
      // SPEC §3: no mask -> full attention in every mode; pre/next and prefix ranges unused.
      if (mode == 5 || mode == 6) check_prefix_values();
      return;
    }
    const TensorView& m = *o.atten_mask;
    check_view(m, "atten_mask");
    if (m.dtype != DType::boolean && m.dtype != DType::uint8)
      type_error(std::string("atten_mask: dtype ") + dtype_name(m.dtype) + " is not supported; expected bool or uint8");
    const int64_t B = p.B, N1 = p.N1, S1 = p.S1, S2 = p.S2;
    const bool tnd = p.layout == Layout::TND;
    auto use_mask = [&](bool allow_2d, bool allow_11) {
      bool ok = false;
      if (m.ndim == 4 && m.shape[2] == S1 && m.shape[3] == S2 && !tnd) {
        const bool bB = m.shape[0] == B, b1 = m.shape[0] == 1;
        const bool nN = m.shape[1] == N1, n1 = m.shape[1] == 1;
        ok = (bB && (nN || n1)) || (allow_11 && b1 && n1);
        if (ok) {
          p.mask.sb = m.shape[0] == 1 ? 0 : m.stride[0];
          p.mask.sn = m.shape[1] == 1 ? 0 : m.stride[1];
          p.mask.si = m.stride[2];
          p.mask.sj = m.stride[3];
        }
      } else if (allow_2d && m.ndim == 2 && m.shape[0] == S1 && m.shape[1] == S2) {
        ok = true;
        p.mask.sb = p.mask.sn = 0;
        p.mask.si = m.stride[0];
        p.mask.sj = m.stride[1];
      }
      if (!ok) {
        std::string allowed = tnd ? "(" + std::to_string(S1) + ", " + std::to_string(S2) + ") (max query length, max key length)"
                                  : "(B, N1, S1, S2), (B, 1, S1, S2)" +
                                        std::string(allow_11 ? ", (1, 1, S1, S2)" : "") +
                                        std::string(allow_2d ? " or (S1, S2)" : "") + " = (" + std::to_string(B) +
                                        ", " + std::to_string(N1) + ", " + std::to_string(S1) + ", " + std::to_string(S2) + ")";
        value_error("atten_mask: shape " + shape_str(m) + " is not accepted for sparse_mode=" + std::to_string(mode) +
                    "; expected " + allowed);
      }
      p.mask.data = static_cast<const uint8_t*>(m.data);
    };
    switch (mode) {
      case 0:
      case 1:
        use_mask(true, true);
        break;
      case 5:
        use_mask(false, false);
        break;
      case 6:
        check_template(m, 6, o.template_verified);
        break;
      default:  // 2, 3, 4, 7, 8
        check_template(m, mode, o.template_verified);
        break;
    }
    if (mode == 5 || mode == 6) check_prefix_values();

    // The generated band per sequence.
    const int64_t pre = std::clamp(o.pre_tokens, -kNoLimit, kNoLimit), next = std::clamp(o.next_tokens, -kNoLimit, kNoLimit);
    const std::string pn = "(pre_tokens=" + std::to_string(o.pre_tokens) + ", next_tokens=" + std::to_string(o.next_tokens) + ")";
    int64_t first_ne = -1, last_ne = -1;  // first / last non-empty sequence (modes 7, 8)
    for (int64_t b = 0; b < B; ++b)
      if (p.sq[size_t(b)] > 0) {
        if (first_ne < 0) first_ne = b;
        last_ne = b;
      }
    if (mode == 0) check_band(pre, next, S1, S2, 0, pn);
    for (int64_t b = 0; b < B; ++b) {
      SeqBand& sb = p.band[size_t(b)];
      const int64_t sq = p.sq[size_t(b)], skv = p.skv[size_t(b)], diag = skv - sq;
      auto bottom_right_band = [&]() {
        if (sq > 0) check_band(pre + sq - skv, next + skv - sq, sq, skv, mode, pn);
        sb.banded = true;
        sb.lo_off = diag - std::min(pre, kNoLimit);
        sb.hi_off = diag + std::min(next, kNoLimit);
      };
      switch (mode) {
        case 0:
          sb.banded = true;
          sb.lo_off = -std::min(pre, kNoLimit);
          sb.hi_off = std::min(next, kNoLimit);
          break;
        case 1:
          break;
        case 2:
          sb.banded = true, sb.lo_off = -kNoLimit, sb.hi_off = 0;
          break;
        case 3:
          if (tnd && sq > skv)
            value_error("actual_seq_qlen: sparse_mode=3 needs every sequence's query length <= its key length; sequence " +
                        std::to_string(b) + " has " + std::to_string(sq) + " > " + std::to_string(skv));
          sb.banded = true, sb.lo_off = -kNoLimit, sb.hi_off = diag;
          break;
        case 4:
          bottom_right_band();
          break;
        case 5:
        case 6:
          sb.banded = true, sb.lo_off = -kNoLimit, sb.hi_off = diag, sb.prefix = (*o.prefix)[size_t(b)];
          break;
        case 7:
          if (b == last_ne) bottom_right_band();
          else sb.banded = true, sb.lo_off = -kNoLimit, sb.hi_off = diag;
          break;
        case 8:
          if (b == first_ne) bottom_right_band();
          else sb.banded = true, sb.lo_off = -kNoLimit, sb.hi_off = 0;
          break;
      }
    }
    // SPEC §4: automatic invalid-line handling when the parameters alone guarantee empty rows.
    for (int64_t b = 0; b < B; ++b) {
      const int64_t sq = p.sq[size_t(b)], skv = p.skv[size_t(b)];
      if (sq == 0) continue;
      bool empty_rows = false;
      if (mode == 0 || mode == 4) {
        const int64_t pre_tl = mode == 4 ? pre + sq - skv : pre, next_tl = mode == 4 ? next + skv - sq : next;
        empty_rows = next_tl < 0 || pre_tl + skv < sq;
      } else if (mode == 3) {
        empty_rows = sq > skv;
      } else if (mode == 5 || mode == 6) {
        empty_rows = sq > skv && (*o.prefix)[size_t(b)] == 0;
      }
      if (empty_rows) p.invalid_line = true;
    }
  }

  void check_prefix_values() {
    const auto& pf = *o.prefix;
    for (size_t b = 0; b < pf.size(); ++b) {
      const int64_t sq = p.sq[b], skv = p.skv[b];
      const int64_t lo = sq > skv ? 0 : skv - sq;
      if (pf[b] < lo || pf[b] > skv)
        value_error("prefix: value " + std::to_string(pf[b]) + " for batch " + std::to_string(b) +
                    " is out of range; expected " + std::to_string(lo) + " <= prefix <= S2=" + std::to_string(skv) +
                    " (S1=" + std::to_string(sq) + ")");
    }
  }

  void pse() {
    p.invalid_line = p.invalid_line || o.inner_precise == 2;
    if (!o.pse) return;
    const TensorView& t = *o.pse;
    check_view(t, "pse");
    PseDesc& d = p.pse;
    d.pse_type = o.pse_type;
    d.data = t.data;
    d.dtype = t.dtype;
    d.ndim = t.ndim;
    for (int i = 0; i < t.ndim; ++i) d.shape[i] = t.shape[i];
    const int64_t B = p.B, N1 = p.N1, S1 = p.S1, S2 = p.S2;
    if (o.pse_type == 2 || o.pse_type == 3) {
      d.kind = PseKind::slopes;
      if (t.dtype != DType::float32)
        type_error(std::string("pse: pse_type=") + std::to_string(o.pse_type) + " takes float32 slopes; got dtype " +
                   dtype_name(t.dtype));
      if (t.ndim == 2 && t.shape[0] == B && t.shape[1] == N1) {
        d.sb = t.stride[0], d.sn = t.stride[1];
      } else if (t.ndim == 1 && t.shape[0] == N1) {
        d.sb = 0, d.sn = t.stride[0];
      } else {
        value_error("pse: slopes for pse_type=" + std::to_string(o.pse_type) + " must have shape (B, N1) = (" +
                    std::to_string(B) + ", " + std::to_string(N1) + ") or (N1,) = (" + std::to_string(N1) + ",); got " +
                    shape_str(t));
      }
      check_int_list(o.q_start_idx, "q_start_idx", 1);
      check_int_list(o.kv_start_idx, "kv_start_idx", 1);
      d.q_start = o.q_start_idx ? (*o.q_start_idx)[0] : 0;
      d.kv_start = o.kv_start_idx ? (*o.kv_start_idx)[0] : 0;
      return;
    }
    d.kind = PseKind::tensor;
    if (t.dtype != p.dtype)
      type_error(std::string("pse: dtype ") + dtype_name(t.dtype) + " must equal query's " + dtype_name(p.dtype));
    const bool tnd = p.layout == Layout::TND;
    const bool rows_ok = t.ndim == 4 && (t.shape[0] == B || t.shape[0] == 1) && t.shape[1] == N1 && t.shape[3] == S2 &&
                         (t.shape[2] == S1 || t.shape[2] == 1 || (!tnd && t.shape[2] == 1024));
    if (!rows_ok)
      value_error("pse: shape " + shape_str(t) + " is not accepted; expected (B|1, N1, S1|1, S2) = (" + std::to_string(B) +
                  "|1, " + std::to_string(N1) + ", " + std::to_string(S1) + "|1, " + std::to_string(S2) + ")" +
                  (tnd ? " with S1/S2 the longest query/key sequence" : " or the compressed (B|1, N1, 1024, S2)"));
    d.sb = t.shape[0] == 1 ? 0 : t.stride[0];
    d.sn = t.stride[1];
    d.si = t.shape[2] == 1 ? 0 : t.stride[2];
    d.sj = t.stride[3];
    d.compressed = t.shape[2] == 1024 && S1 != 1024;
    if (d.compressed) {
      const int64_t mode = o.sparse_mode;
      bool causal = o.atten_mask && (mode == 2 || mode == 3);
      if (o.atten_mask && mode == 0 && S1 == S2) causal = mask_is_causal();
      if (!(S1 == S2 && S1 > 1024) || !causal)
        value_error("pse: the compressed (B|1, N1, 1024, S2) form needs S1 == S2 > 1024 and a causal mask "
                    "(sparse_mode 2 or 3 with its template, or mode 0 with a causal atten_mask); got S1=" +
                    std::to_string(S1) + ", S2=" + std::to_string(S2) + ", sparse_mode=" + std::to_string(mode) +
                    (o.atten_mask ? "" : " and atten_mask=None"));
    }
  }

  // Mode 0 with the compressed pse: every j > i must be masked, so pse reads stay in range
  // (the band is ANDed with the mask, so it cannot re-open those positions).
  bool mask_is_causal() const {
    const int64_t nb = p.mask.sb ? p.B : 1, nn = p.mask.sn ? p.N1 : 1;
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t n = 0; n < nn; ++n)
        for (int64_t i = 0; i < p.S1; ++i)
          for (int64_t j = i + 1; j < p.S2; ++j)
            if (p.mask.data[b * p.mask.sb + n * p.mask.sn + i * p.mask.si + j * p.mask.sj] == 0) return false;
    return true;
  }
};

std::vector<int64_t> shape_vec(const TensorView& t) { return std::vector<int64_t>(t.shape, t.shape + t.ndim); }

Problem build(const TensorView& q, const TensorView& k, const TensorView& v, const Options& o) {
  Builder bl(o);
  bl.tensors(q, k, v);
  bl.scalars();
  bl.sequences();
  bl.mask_and_band();
  bl.pse();
  Problem& p = bl.p;
  p.out_spec = OutputSpec{q.dtype, shape_vec(q)};
  p.out = contiguous_operand(p.out_spec.shape, p.layout, o.head_num, p.D);
  if (p.layout == Layout::TND)
    p.stat_spec = OutputSpec{DType::float32, {p.T1, p.N1, 8}};
  else
    p.stat_spec = OutputSpec{DType::float32, {p.B, p.N1, p.S1, 8}};
  return std::move(bl.p);
}

void check_same(const TensorView& t, const OutputSpec& want, const char* name) {
  check_view(t, name);
  if (t.dtype != want.dtype)
    type_error(std::string(name) + ": dtype " + dtype_name(t.dtype) + " must be " + dtype_name(want.dtype));
  if (shape_vec(t) != want.shape) {
    TensorView w = TensorView::contiguous(nullptr, want.dtype, want.shape);
    value_error(std::string(name) + ": shape " + shape_str(t) + " must be " + shape_str(w));
  }
}

// Saved statistics: the stats shape, float32, rows of 8 contiguous floats at stat_row() * 8.
const float* stat_pointer(const TensorView& t, const OutputSpec& spec, const char* name) {
  check_same(t, spec, name);
  TensorView c = TensorView::contiguous(t.data, t.dtype, spec.shape);
  for (int d = 0; d < t.ndim; ++d)
    if (t.shape[d] > 1 && t.stride[d] != c.stride[d])
      value_error(std::string(name) + ": must be contiguous (strides in elements must be row-major)");
  return static_cast<const float*>(t.data);
}

}  // namespace

Problem validate_forward(const TensorView& query, const TensorView& key, const TensorView& value,
                         const Options& options) {
  return build(query, key, value, options);
}

Problem validate_backward(const TensorView& query, const TensorView& key, const TensorView& value,
                          const TensorView& dy, const Options& options, const ForwardSaved& saved) {
  Problem p = build(query, key, value, options);
  p.backward = true;
  check_same(dy, p.out_spec, "dy");
  check_same(saved.attention_in, p.out_spec, "attention_in");
  p.dy = read_dims(dy, p.layout, "dy", options.head_num, 0).op;
  p.out = read_dims(saved.attention_in, p.layout, "attention_in", options.head_num, 0).op;
  p.smax_in = stat_pointer(saved.softmax_max, p.stat_spec, "softmax_max");
  p.ssum_in = stat_pointer(saved.softmax_sum, p.stat_spec, "softmax_sum");
  if (saved.numels != p.numels)
    value_error("numels: got " + std::to_string(saved.numels) + "; the inputs give " + std::to_string(p.numels));
  if (saved.offset < 0) value_error("offset: got " + std::to_string(saved.offset) + "; expected a non-negative offset");
  p.rng = RngState{saved.seed, saved.offset};
  p.dq_spec = OutputSpec{p.dtype, shape_vec(query)};
  p.dk_spec = OutputSpec{p.dtype, shape_vec(key)};
  p.dv_spec = OutputSpec{p.dtype, shape_vec(value)};
  p.dq = contiguous_operand(p.dq_spec.shape, p.layout, options.head_num, p.D);
  p.dk = contiguous_operand(p.dk_spec.shape, p.layout, 0, p.D);
  p.dv = p.dk;
  if (p.pse.kind == PseKind::none)
    p.dpse_spec = OutputSpec{p.dtype, {0}};
  else
    p.dpse_spec = OutputSpec{p.pse.dtype, std::vector<int64_t>(p.pse.shape, p.pse.shape + p.pse.ndim)};
  return p;
}

}  // namespace speedattn
