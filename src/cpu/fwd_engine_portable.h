// Portable fp32 forward engine for fwd_driver.h: plain C++ loops written so the compiler
// vectorises them (constant-trip inner loops over 16 lanes). Used by the scalar kernel
// (baseline flags, also non-x86) and the AVX2 kernel (same code compiled with -mavx2 -mfma).
// Include inside the SA_NS of the including file, after fwd_driver.h.
//
// Per-thread buffers (Dp = D rounded up to 16):
//   Q  [kBq][Dp]  fp32 query rows of the task (zero padded)
//   Kt [D][kBk]   fp32 keys of the current block, transposed (columns >= jn zeroed)
//   V  [kBk][Dp]  fp32 values of the current block
//   S  [kBq][kBk] fp32 logits; the exp pass overwrites them with P (masked: 0, dropped: 0)
//   O  [kBq][Dp]  fp32 unnormalised output accumulator
#pragma once

// (needs cpu/tile/exp2_poly.h, included by fwd_driver.h)

template <int kBq_, int kBk_>
struct EnginePortable : EngineF32State<kBq_, kBk_, (kBk_ > 256 ? kBk_ : 256) + 16> {
  using Base = EngineF32State<kBq_, kBk_, (kBk_ > 256 ? kBk_ : 256) + 16>;
  using Base::kBq, Base::kBk, Base::D, Base::Dp, Base::Q, Base::Kt, Base::V, Base::S, Base::O, Base::tmp,
      Base::nbad_, Base::bad_, Base::srow, Base::orow;
  struct Shared {
    explicit Shared(const Problem&) {}
  };

  const Problem& p;

  EnginePortable(const Problem& prob, const Shared&) : Base(prob.D), p(prob) {
    Q = this->bq.template get<float>(size_t(kBq * Dp));
    Kt = this->bkt.template get<float>(size_t(D * kBk));
    V = this->bv.template get<float>(size_t(kBk * Dp));
  }

  static void load_row(const void* base, DType dt, int64_t off, float* dst, int64_t D) {
    switch (dt) {
      case DType::float16: {
        const uint16_t* s = static_cast<const uint16_t*>(base) + off;
        for (int64_t d = 0; d < D; ++d) dst[d] = fp16_to_f(s[d]);
        break;
      }
      case DType::bfloat16: {
        const uint16_t* s = static_cast<const uint16_t*>(base) + off;
        for (int64_t d = 0; d < D; ++d) dst[d] = bitsf(uint32_t(s[d]) << 16);
        break;
      }
      default: std::memcpy(dst, static_cast<const float*>(base) + off, size_t(D) * 4); break;
    }
  }
  static void store_row(void* base, DType dt, int64_t off, const float* src, int64_t D) {
    for (int64_t d = 0; d < D; ++d) store_elem(base, dt, off + d, src[d]);
  }

  void begin_task(const Problem& pr, int64_t b, int64_t /*g*/, const RowMeta* rm, int R) {
    for (int r = 0; r < R; ++r) {
      const int64_t off = b * pr.q.sb + (pr.row0_q[size_t(b)] + rm[r].i) * pr.q.ss + rm[r].n * pr.q.sn;
      load_row(pr.q.data, pr.dtype, off, Q + r * Dp, D);
      for (int64_t d = D; d < Dp; ++d) Q[r * Dp + d] = 0.f;
    }
    std::memset(O, 0, size_t(R * Dp) * sizeof(float));
  }

  void load_kv(const Problem& pr, int64_t b, int64_t g, int64_t j0, int jn) {
    const int jn16 = int(round_up(jn, 16));
    float* row = tmp;
    nbad_ = 0;
    for (int jj = 0; jj < jn; ++jj) {
      const int64_t koff = b * pr.k.sb + (pr.row0_kv[size_t(b)] + j0 + jj) * pr.k.ss + g * pr.k.sn;
      load_row(pr.k.data, pr.dtype, koff, row, D);
      for (int64_t d = 0; d < D; ++d) Kt[d * kBk + jj] = row[d];
      const int64_t voff = b * pr.v.sb + (pr.row0_kv[size_t(b)] + j0 + jj) * pr.v.ss + g * pr.v.sn;
      float* vr = V + jj * Dp;
      load_row(pr.v.data, pr.dtype, voff, vr, D);
      uint32_t nonfinite = 0;
      for (int64_t d = 0; d < D; ++d) nonfinite |= uint32_t((fbits(vr[d]) & 0x7f800000u) == 0x7f800000u);
      if (nonfinite) {
        std::memset(vr, 0, size_t(D) * sizeof(float));
        bad_[nbad_++] = jj;
      }
    }
    for (int64_t d = 0; d < D; ++d)
      for (int jj = jn; jj < jn16; ++jj) Kt[d * kBk + jj] = 0.f;
  }

  // S[r][0..jn16) = Q[r] . Kt[:, j]. Row tails read a clamped (duplicate) row and discard
  // it, so the inner loops have no conditionals and the 4 x 16 accumulators stay in registers.
  void qk(int rlo, int rhi, int jn) {
    const int jn16 = int(round_up(jn, 16));
    constexpr int RB = 4;
    for (int r0 = rlo; r0 < rhi; r0 += RB) {
      const int rb = std::min(RB, rhi - r0);
      const float* qrow[RB];
      for (int rr = 0; rr < RB; ++rr) qrow[rr] = Q + std::min(r0 + rr, rhi - 1) * Dp;
      for (int j = 0; j < jn16; j += 16) {
        float acc[RB][16] = {};
        for (int64_t d = 0; d < D; ++d) {
          const float* kt = Kt + d * kBk + j;
          for (int rr = 0; rr < RB; ++rr) {
            const float qv = qrow[rr][d];
            for (int k = 0; k < 16; ++k) acc[rr][k] += qv * kt[k];
          }
        }
        for (int rr = 0; rr < rb; ++rr)
          for (int k = 0; k < 16; ++k) S[(r0 + rr) * kBk + j + k] = acc[rr][k];
      }
    }
  }

  void zero_p(int r, int jn) { std::memset(srow(r), 0, size_t(jn) * sizeof(float)); }
  void zero_p_from(int r, int from, int jn) { std::memset(srow(r) + from, 0, size_t(jn - from) * sizeof(float)); }

  float row_max(const float* s, int jn) {
    float mx[16];
    for (int k = 0; k < 16; ++k) mx[k] = kMasked;
    int j = 0;
    for (; j + 16 <= jn; j += 16)
      for (int k = 0; k < 16; ++k) mx[k] = std::max(mx[k], s[j + k]);
    float m = kMasked;
    for (int k = 0; k < 16; ++k) m = std::max(m, mx[k]);
    for (; j < jn; ++j) m = std::max(m, s[j]);
    return m;
  }

  float logits_row(const Problem& pr, const RowMeta& rm, float* s, int64_t j0, int jn) {
    return logits_row_scalar(pr, rm, s, j0, jn);
  }
  // every key of [j0, j0 + jn) kept: the general logits compute the same x
  float logits_row_kept(const Problem& pr, const RowMeta& rm, float* s, int64_t j0, int jn) {
    return logits_row_scalar(pr, rm, s, j0, jn);
  }

  static inline float exp2f_poly(float t, bool flush) {
    if (t != t) return t;  // NaN propagates (and int(NaN) below would be UB)
    if (flush && t < kPFlush) return 0.f;  // denormal flush (fwd_driver.h)
    t = std::max(t, exp2c::kMinArg);
    int e = int(t);
    if (float(e) > t) e -= 1;
    const float f = t - float(e);
    const float* c = exp2c::d5;
    const float poly = c[0] + f * (c[1] + f * (c[2] + f * (c[3] + f * (c[4] + f * c[5]))));
    return poly * bitsf(uint32_t(e + 127) << 23);
  }

  // P = exp((x - mn)) with x = s * xs; masked (general rows: x == kMasked) -> 0; returns the
  // sum of the pre-dropout P; then dropped positions (w[j] >= thr) -> 0.
  float exp_row(int r, int jn, float xs, float mn, bool general, bool flush, const uint32_t* w, uint32_t thr) {
    float* s = srow(r);
    float acc[16] = {};
    int j = 0;
    auto one = [&](int jj) -> float {
      const float x = s[jj];
      float pv = exp2f_poly((x * xs - mn) * kLog2e, flush);
      if (general && x == kMasked) pv = 0.f;
      return pv;
    };
    for (; j + 16 <= jn; j += 16) {
      for (int k = 0; k < 16; ++k) {
        const float pv = one(j + k);
        acc[k] += pv;
        s[j + k] = pv;
      }
    }
    float sum = 0.f;
    for (int k = 0; k < 16; ++k) sum += acc[k];
    for (; j < jn; ++j) {
      const float pv = one(j);
      sum += pv;
      s[j] = pv;
    }
    if (w)
      for (int jj = 0; jj < jn; ++jj)
        if (!(w[jj] < thr)) s[jj] = 0.f;
    return sum;
  }

  void scale_o(int r, float alpha) {
    float* o = orow(r);
    for (int64_t d = 0; d < Dp; ++d) o[d] *= alpha;
  }

  // O[r] += sum_j P[r][j] V[j] (row tails as in qk)
  void pv(int rlo, int rhi, int jn) {
    constexpr int RB = 4;
    for (int r0 = rlo; r0 < rhi; r0 += RB) {
      const int rb = std::min(RB, rhi - r0);
      const float* prow[RB];
      for (int rr = 0; rr < RB; ++rr) prow[rr] = S + std::min(r0 + rr, rhi - 1) * kBk;
      for (int64_t d0 = 0; d0 < Dp; d0 += 16) {
        float acc[RB][16];
        for (int rr = 0; rr < RB; ++rr)
          for (int k = 0; k < 16; ++k) acc[rr][k] = O[std::min(r0 + rr, rhi - 1) * Dp + d0 + k];
        for (int j = 0; j < jn; ++j) {
          const float* vr = V + j * Dp + d0;
          for (int rr = 0; rr < RB; ++rr) {
            const float pj = prow[rr][j];
            for (int k = 0; k < 16; ++k) acc[rr][k] += pj * vr[k];
          }
        }
        for (int rr = 0; rr < rb; ++rr)
          for (int k = 0; k < 16; ++k) O[(r0 + rr) * Dp + d0 + k] = acc[rr][k];
      }
    }
  }

  void gen_words(uint64_t seed, uint64_t off, uint64_t q0, int64_t nq, uint32_t* w) {
    gen_words_scalar(seed, off, q0, nq, w);
  }
};
