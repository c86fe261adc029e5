// The fp32-compute backward worker over kv superblocks (bwd_avx512_fp32, bwd_amx_fp32): include
// inside SA_NS after bwd_driver.h and bwd_engine_avx512.h (E = BwdEngineAvx512<64, 128>).
// Per query head / q tile of E::kBq rows / key tile of E::kBk keys: S = Q K^T and dP = dY V^T
// by the products policy Pr (below), the element pass (grad_rows), then dV, dK, dQ with E::gemm.
//
// Products policy Pr (constructed from (Problem, D, Dp, kSup)):
//   pack_kv(w, b, g, j0, jn)  keys [j0, j0 + jn) of (b, kv head g): K rows into w.Krs ([jn][Dp]
//                             fp32, the dQ operand) and whatever S / dP read;
//   load_q(w, ni)             after rows 0 .. ni of w.Q / w.dY (fp32, row stride Dp) are loaded;
//   products(w, rlo, R, ks, kpad)  S, dP [R][kpad] (row stride W::kLd) of rows rlo .. rlo + R
//                             of the q tile against keys [ks, ks + kpad) of the superblock
//                             (ks, kpad multiples of 16; keys >= jn hold zeros);
//   begin_task() / end_task() around the blocks of one task.
#pragma once

namespace bwd {

// FMA products (bwd_avx512_fp32): E::gemm on fp32 K^T / V^T of the superblock.
template <class E>
struct FmaProducts {
  Buf bkts, bvts;
  int64_t ld;        // row stride of KTs / VTs
  float *KTs, *VTs;  // K^T, V^T [D][ld] of the superblock

  FmaProducts(const Problem&, int64_t D, int64_t, int kSup) : ld(odd_line_stride(kSup)) {
    KTs = bkts.get<float>(size_t(D * ld));
    VTs = bvts.get<float>(size_t(D * ld));
  }
  void begin_task() {}
  void end_task() {}
  template <class W>
  void pack_kv(W& w, int64_t b, int64_t g, int64_t j0, int jn) {
    w.pack_kv(b, g, j0, jn, int(round_up(jn, 16)), KTs, VTs, ld, w.Krs);
  }
  template <class W>
  void load_q(W&, int) {}
  template <class W>
  void products(W& w, int rlo, int R, int ks, int kpad) {
    E::gemm(R, kpad, int(w.D), w.Q + rlo * w.Dp, w.Dp, 1, KTs + ks, ld, w.S, W::kLd, false);
    E::gemm(R, kpad, int(w.D), w.dY + rlo * w.Dp, w.Dp, 1, VTs + ks, ld, w.dP, W::kLd, false);
  }
};

// Worker over kv superblocks of kSup = kSubs * kBk keys (loop: query head n, q tile of kBq
// rows, key tile of kBk keys). A q tile's Q / dY rows are copied once per superblock and its
// dQ partial rows stay in cache across the kSubs key tiles; Worker::kv_block streams the
// whole head's Q, dY and dQ partial (3 MiB at S 2048, D 128) through L3 for every key tile.
// Superblocks meeting a non-finite q / k / v / dy row or Dsum go to Worker::kv_block per key
// tile (FMA products; it takes those rows out of the GEMMs).
template <class E, int kSubs, class Pr>
struct WorkerSuper : Worker<E> {
  using Base = Worker<E>;
  using Base::cls;
  using Base::D;
  using Base::Dp;
  using Base::dKa;
  using Base::dP;
  using Base::dVa;
  using Base::dY;
  using Base::p;
  using Base::Q;
  using Base::S;
  using Base::sh;
  static constexpr int kBq = E::kBq, kBk = E::kBk, kLd = Base::kLd;
  static constexpr int kSup = kSubs * kBk;
  Buf bkrs, bdks, bdvs, bws;
  float* Krs;  // K rows [kSup][Dp] of the superblock
  Pr prod;

  WorkerSuper(const Problem& prob, Shared& s) : Base(prob, s), prod(prob, prob.D, Base::Dp, kSup) {
    Krs = bkrs.get<float>(size_t(kSup * Dp));
    // the base's dK / dV rows and dropout words, sized for a superblock
    dKa = bdks.get<float>(size_t(kSup * Dp));
    dVa = bdvs.get<float>(size_t(kSup * Dp));
    this->words = bws.get<uint32_t>(size_t(kSup + 16));
  }

  // One superblock: keys [j0, j0 + jn), jn <= kSup, of sequence b, kv head g; dQ partial slot c.
  void superblock(int64_t b, int64_t g, int64_t c, int64_t j0, int jn) {
    {
      bool bad = sh.any_qdy_bad(b, g);
      const uint8_t* kb = sh.kbad.data() + g * sh.Tk + sh.kbase[size_t(b)] + j0;
      for (int jj = 0; !bad && jj < jn; ++jj) bad = kb[jj] != 0;
      if (bad) {
        for (int s0 = 0; s0 < jn; s0 += kBk) this->kv_block(b, g, c, j0 + s0, std::min(kBk, jn - s0));
        return;
      }
    }
    prod.pack_kv(*this, b, g, j0, jn);
    std::memset(dKa, 0, size_t(jn * Dp) * 4);
    std::memset(dVa, 0, size_t(jn * Dp) * 4);
    int64_t ia, ie;
    rows_for_keys(p, b, j0, j0 + jn, &ia, &ie);
    for (int64_t n = g * p.G; n < (g + 1) * p.G; ++n) {
      for (int64_t i0 = ia; i0 < ie; i0 += kBq) {
        const int ni = int(std::min<int64_t>(kBq, ie - i0));
        bool loaded = false;  // Q / dY rows i0 .. i0 + ni copied (on the first key tile that needs them)
        this->row_metas(b, n, i0, ni);  // key-independent: once per q tile, not per key tile
        for (int s0 = 0; s0 < jn; s0 += kBk) {
          const int sn = std::min(kBk, jn - s0);
          int rlo, rhi;
          this->classify_keys(ni, j0 + s0, sn, &rlo, &rhi);
          if (rlo >= rhi) continue;
          if (!loaded) {
            this->load_qdy(b, n, i0, ni);
            prod.load_q(*this, ni);
            loaded = true;
          }
          const int R = rhi - rlo;
          const int64_t ib = i0 + rlo;
          // keys [k0, k1) of the tile: outside it the band masks every row of the tile (causal
          // diagonal tiles), so its P' and dS are 0 there; k0 a multiple of 16 (column padding)
          int k0 = sn, k1 = 0;
          for (int r = rlo; r < rhi; ++r)
            if (cls[r] != kNone) {
              const RowMeta& m = this->rm[r];
              k0 = int(std::min<int64_t>(k0, std::max<int64_t>(m.first() - (j0 + s0), 0)));
              k1 = int(std::max<int64_t>(k1, std::min<int64_t>(m.last_end() - (j0 + s0), sn)));
            }
          k0 &= ~15;
          const int kn = k1 - k0, kpad = int(round_up(kn, 16)), ks = s0 + k0;
          const float *qa = Q + rlo * Dp, *dya = dY + rlo * Dp;
          prod.products(*this, rlo, R, ks, kpad);
          this->grad_rows(b, n, c, ib, rlo, R, j0 + ks, kn, S, dP, kLd);
          // dV += P'^T dY, dK += (scale dS)^T Q, dQ += (scale dS) K
          E::gemm(kn, int(D), R, S, 1, kLd, dya, Dp, dVa + ks * Dp, Dp, true);
          E::gemm(kn, int(D), R, dP, 1, kLd, qa, Dp, dKa + ks * Dp, Dp, true);
          E::gemm(R, int(D), kn, dP, kLd, 1, Krs + ks * Dp, Dp, sh.dq_row(c, n, b, ib), D, true);
        }
      }
      if (sh.ucount[size_t(b * p.N1 + n)] > 0) this->uniform_rows(b, n, j0, jn);
    }
    this->store_kv(b, g, j0, jn);
  }

  void run_task(const BTask& t) {
    prod.begin_task();
    for_task_blocks(p, sh, t, kSup, [&](int64_t b, int64_t c, int64_t j0, int jn) { superblock(b, t.g, c, j0, jn); });
    prod.end_task();
  }
};

}  // namespace bwd
