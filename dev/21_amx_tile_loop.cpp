// dev/21: the AMX tile loop of the bf16 forward (fwd_amx.cpp EngineAmx<1> qk_rows / pv_rows) on
// the kernel's buffer shapes, timed in TSC cycles per TDPBF16PS, one thing varied at a time.
//   build: g++ -std=c++17 -O3 -march=native dev/21_amx_tile_loop.cpp -o build/amx_tile_loop
//   run:   taskset -c 1 build/amx_tile_loop [rounds] [name filter, e.g. QK / PV / SM]
// Buffers (D 128, kBq 256 rows, kBk 256 keys, 32-row strips, as the kernel):
//   Q  [256][QS] bf16 (QS 128, padded 160)         A of QK, 16 x 64 B tiles at stride QS*2
//   Kp [NB][256/16][64][16] uint32 (64 KiB/block)  B of QK, one contiguous KiB per tile
//   Vp [NB][256/32][128/16][16][16] uint32         B of PV, one contiguous KiB per tile
//   S  [256][SS] fp32 (SS 256, padded 272)         C of QK; P = Ph | Pl written over S (the 128 B
//                                                  of 32 keys hold Ph then Pl): A of PV
//   O  [256][OS] fp32 (OS 128, padded 144)         C of PV, loaded / stored per 32 d
// NB kv blocks in a ring: 1 (the block stays in L2, as for the 7 strips after the first) or 16
// (a 4096-key head: each block comes from L3 for its first strip, like the kernel).
// One "block" = 8 strips x (QK of strip s, PV of strip s-2): 8 x (128 + 256) TDPs. No softmax,
// except in the "SM" lines: the row softmax of strip s-1 (an emulation of the kernel's: max pass,
// degree-4 exp2, Ph/Pl split written over S, ~240 vector uops per row) interleaved as the
// kernel's overlap pipeline does it (a row per 3 QK / 2 PV passes of 4 TDPs, the rest after PV).
// Lines marked "timing" give wrong results (operands not loaded, C tiles not stored, ...).
// Reported: TSC cycles per TDP (min over rounds; the TSC runs at 2.1 GHz, the core at ~2.45,
// so the 16-core-cycle TDP is ~13.7 TSC cycles) and the peak loop (no loads) of the same round.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <x86intrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Variation knobs (one changed per line of the table in main).
struct Cfg {
  const char* name;
  int nb = 16;          // kv blocks in the ring
  int qs = 128;         // Q row stride (bf16)
  int ss = 256;         // S row stride (fp32)
  int os = 128;         // O row stride (fp32)
  int qk_order = 0;     // 0 kernel (A-adjacent: T(A0B0) T(A0B1) T(A1B0) T(A1B1)), 1 B-adjacent (T(A0B0) T(A1B0) T(A0B1) T(A1B1))
  int pv_order = 0;     // 0 kernel; 1 B-adjacent in the Ph term; 2 B-adjacent in both terms
  bool qk_store = true; // C tiles zeroed / stored per 32 keys (false: accumulate across j, timing only)
  bool qk_zero = true;  // (with qk_store) TILEZERO before each 32 keys (false: timing only)
  bool s_l1 = false;    // C tiles stored to a fixed 4 KiB buffer (L1) instead of S
  int lag = -1;         // >= 0: QK with double-buffered C (qk_strip_db), stores after `lag` k-steps
  int ring = 8;         // S strips in a ring (8: S [256][SS] as the kernel; 3 or 4: strip s uses buffer s % ring)
  int kg = 256;         // PV keys per O tile load / store (256: all of the block)
  bool snake = false;   // PV keys in reverse order on odd d-groups (the last P tiles read are reused first)
  bool qk64 = false;    // QK over 64 rows per 32 keys (two 2x2 passes; the second reads K from L1)
  bool o_mem = true;    // PV loads / stores the O tiles (false: timing only)
  int sm_mem = 0;       // softmax emulation: 0 as the kernel; 1 its loads / stores on an L1 row; 2 no stores; 3 no P split
  bool pword = false;   // P as one word per key (ALU split) + PV over 16-key tiles and a duplicated V pack
  bool fine = false;    // (with sm) the softmax in chunks of ~25 uops after every TDP instead of a row per 8-12 TDPs
  bool sm = false;      // the row softmax of strip s - 1 interleaved (a row per 3 QK / 2 PV passes, as the kernel)
  bool stage = false;   // QK C tiles to an L1 staging buffer, copied to S by AVX-512 (see qk_strip)
  bool store_ops = false;  // QK stores tiles 4-7 (operands) instead of the C tiles (timing only)
  bool qk_ilv = false;  // QK C stores interleaved with the next 32 keys' first TDPs
  int qk_depth = 1;     // K-depth per C tile: x D/32 k-steps (2: each k-step twice, timing only)
  bool k_l1 = false;    // QK reads only the first 64 keys of K (16 KiB, L1)
  bool p_same = false;  // PV reads the same P tiles every 32 keys (L1)
  int pf = 0;           // prefetch of the next 32 keys' K (QK) / V (PV): 0 none, 1 t0, 2 t1, 3 (QK) prefetchw of S
  bool no_loads = false;
  int only = 0;         // 0 both, 1 QK only, 2 PV only, 3 neither (the softmax alone, with sm)
};

static constexpr int kD = 128, kBq = 256, kBk = 256, kStrip = 32, kMaxNb = 16;
static uint16_t* Q;
static uint32_t *Kp, *Vp;
static float *S, *O, *Sl1;
static constexpr int64_t kKw = kBk / 2 * kD, kVw = kBk / 2 * kD;  // words per block

template <int Hint>
static inline void pf_range(const void* p, int lines) {
  const char* c = static_cast<const char*>(p);
  for (int i = 0; i < lines; ++i) _mm_prefetch(c + 64 * i, Hint == 1 ? _MM_HINT_T0 : _MM_HINT_T1);
}

// The kernel's row softmax (fwd_amx.cpp exp_row + store_p_split, the driver's max pass): max
// pass over the fp32 S row, then per 32 keys the FMA argument, degree-4 exp2 (max clamp,
// vreduceps, 4 FMAs, vscalefps), the row sums, and P = Ph | Pl written over S (vpermt2w; and,
// sub, vcvtne2ps2bf16). ~240 vector uops per 256-key row, as in the kernel (dev/19).
static float g_sink;
static float g_row[kBk];
static bool g_split_alu = false;  // P as one word per key, Ph << 16 | bf16(p - Ph) by integer rounding (no shuffles)
static inline void store_p_alu(float* dst, __m512 p) {
  const __m512i u = _mm512_castps_si512(p), h = _mm512_and_si512(u, _mm512_set1_epi32(int32_t(0xffff0000u)));
  const __m512i r = _mm512_castps_si512(_mm512_sub_ps(p, _mm512_castsi512_ps(h)));
  const __m512i rn = _mm512_add_epi32(r, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(_mm512_srli_epi32(r, 16), _mm512_set1_epi32(1))));
  _mm512_storeu_si512(dst, _mm512_or_si512(h, _mm512_srli_epi32(rn, 16)));
}
static void softmax_row(float* s, int mem) {
  if (mem == 1) s = g_row;
  __m512 mx = _mm512_loadu_ps(s);
  for (int j = 16; j < kBk; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
  const float m = _mm512_reduce_max_ps(mx);
  const __m512 vc = _mm512_set1_ps(1.4426950408889634f * 0.088f), vm = _mm512_set1_ps(m * 1.4426950408889634f * 0.088f);
  const __m512i odd16 = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29,
                                         27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  const __m512 hm = _mm512_castsi512_ps(_mm512_set1_epi32(int32_t(0xffff0000u)));
  auto exp2 = [](__m512 t) {
    t = _mm512_max_ps(_mm512_set1_ps(-126.f), t);
    const __m512 f = _mm512_reduce_ps(t, 0x09);
    __m512 p = _mm512_set1_ps(0.0135f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.0520f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.2413f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6930f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, t);
  };
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  for (int j = 0; j < kBk; j += 32) {
    const __m512 p0 = exp2(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), vc, vm));
    const __m512 p1 = exp2(_mm512_fmsub_ps(_mm512_loadu_ps(s + j + 16), vc, vm));
    s0 = _mm512_add_ps(s0, p0);
    s1 = _mm512_add_ps(s1, p1);
    const __m512i ph = _mm512_permutex2var_epi16(_mm512_castps_si512(p0), odd16, _mm512_castps_si512(p1));
    const __m512bh pl = _mm512_cvtne2ps_pbh(_mm512_sub_ps(p1, _mm512_and_ps(p1, hm)), _mm512_sub_ps(p0, _mm512_and_ps(p0, hm)));
    if (mem == 2) {
      s0 = _mm512_add_ps(s0, _mm512_castsi512_ps(_mm512_xor_si512(ph, reinterpret_cast<const __m512i&>(pl))));
      continue;
    }
    if (mem == 3) {  // timing only: no split, p stored as fp32 (no shuffle / bf16-convert uops)
      _mm512_storeu_ps(s + j, p0);
      _mm512_storeu_ps(s + j + 16, p1);
      continue;
    }
    if (g_split_alu) {
      store_p_alu(s + j, p0);
      store_p_alu(s + j + 16, p1);
      continue;
    }
    _mm512_storeu_si512(s + j, ph);
    _mm512_storeu_si512(s + j + 16, reinterpret_cast<const __m512i&>(pl));
  }
  g_sink += _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}
// The same row in 13 chunks (fine interleave): 4 max chunks of 64 keys, then 8 exp chunks of
// 32 keys (the first also reduces the max), then the sum reduction with the last.
struct RowChunks {
  float* s = nullptr;
  int c = 0;  // next chunk 0..11
  __m512 mx, s0, s1, vm;
  bool chunk() {  // true when the row is done
    if (c < 4) {
      __m512 x = c == 0 ? _mm512_loadu_ps(s) : mx;
      for (int j = 64 * c; j < 64 * c + 64; j += 16) x = _mm512_max_ps(x, _mm512_loadu_ps(s + j));
      mx = x;
      ++c;
      return false;
    }
    if (c == 4) {
      vm = _mm512_set1_ps(_mm512_reduce_max_ps(mx) * 1.4426950408889634f * 0.088f);
      s0 = s1 = _mm512_setzero_ps();
    }
    const __m512 vc = _mm512_set1_ps(1.4426950408889634f * 0.088f);
    const __m512i odd16 = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29,
                                           27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    const __m512 hm = _mm512_castsi512_ps(_mm512_set1_epi32(int32_t(0xffff0000u)));
    auto exp2 = [](__m512 t) {
      t = _mm512_max_ps(_mm512_set1_ps(-126.f), t);
      const __m512 f = _mm512_reduce_ps(t, 0x09);
      __m512 p = _mm512_set1_ps(0.0135f);
      p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.0520f));
      p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.2413f));
      p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6930f));
      p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
      return _mm512_scalef_ps(p, t);
    };
    const int j = 32 * (c - 4);
    const __m512 p0 = exp2(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), vc, vm));
    const __m512 p1 = exp2(_mm512_fmsub_ps(_mm512_loadu_ps(s + j + 16), vc, vm));
    s0 = _mm512_add_ps(s0, p0);
    s1 = _mm512_add_ps(s1, p1);
    _mm512_storeu_si512(s + j, _mm512_permutex2var_epi16(_mm512_castps_si512(p0), odd16, _mm512_castps_si512(p1)));
    const __m512bh pl = _mm512_cvtne2ps_pbh(_mm512_sub_ps(p1, _mm512_and_ps(p1, hm)), _mm512_sub_ps(p0, _mm512_and_ps(p0, hm)));
    _mm512_storeu_si512(s + j + 16, reinterpret_cast<const __m512i&>(pl));
    if (++c < 12) return false;
    g_sink += _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    return true;
  }
};

// The rows of one strip still to softmax, issued one per `step` (the driver's overlap pipeline),
// or chunk by chunk by `tdp(rate)` after every TDP (c.fine: `rate` chunks per TDP on average).
struct Steps {
  float* s = nullptr;  // S row of the next row
  int left = 0, stride = 0, mem = 0;
  float credit = 0.f;
  RowChunks rc;
  void tdp(float rate) {
    for (credit += rate; credit >= 1.f && left > 0; credit -= 1.f) {
      if (rc.c == 0) rc.s = s;
      if (rc.chunk()) {
        rc.c = 0;
        s += stride;
        --left;
      }
    }
  }
  void step() {
    if (left > 0) {
      softmax_row(s, mem);
      s += stride;
      --left;
    }
  }
};
static Steps g_steps;

// A TDP, followed (c.fine) by its share of the softmax chunks (`rate`: set per loop).
#define TDP(x, y, z)                          \
  do {                                        \
    _tile_dpbf16ps(x, y, z);                  \
    if (c.fine) g_steps.tdp(rate);            \
  } while (0)

// QK of one 32-row strip (S[r..r+32)[0..256) = Q K^T): 8 x 16 TDPs.
// c.qk_ilv: the 4 C tiles of keys j are stored (and zeroed) one by one inside the first k-step
// of keys j + 32, each right before the first TDP into it (the last 4 stores after the loop).
static void qk_strip(const Cfg& c, int r, const uint32_t* kb0, int sr) {
  const int64_t qsb = c.qs * 2, kbs = (kD / 2) * 16;
  auto sdst = [&](int j) { return c.s_l1 ? Sl1 : S + int64_t(sr) * c.ss + j; };
  // c.stage: C tiles of keys j go to an L1 staging buffer [2][32 rows][32 keys] (j/32 % 2), copied
  // to S with AVX-512 loads / stores, 8 rows per k-step of the next 32 keys (the last after the loop)
  auto copy_rows = [&](int j, int i0) {
    const float* src = Sl1 + (j / 32 % 2) * 1024;
    for (int i = i0; i < i0 + 8; ++i) {
      float* d = S + int64_t(sr + i) * c.ss + j;
      _mm512_storeu_ps(d, _mm512_load_ps(src + 32 * i));
      _mm512_storeu_ps(d + 16, _mm512_load_ps(src + 32 * i + 16));
    }
  };
  auto store_zero = [&](int t, int j) {  // C tile t of keys j: to S, then zeroed
    if (!c.qk_store || j < 0) return;
    float* s = c.stage ? Sl1 + (j / 32 % 2) * 1024 : sdst(j);
    const int64_t st = c.stage ? 32 : (c.s_l1 ? 32 : c.ss);
    if (c.store_ops) {  // timing only: store the operand tiles instead (no dependence on the TDPs)
      switch (t) {
        case 0: _tile_stored(4, s, st * 4); break;
        case 1: _tile_stored(5, s + 16, st * 4); break;
        case 2: _tile_stored(6, s + 16 * st, st * 4); break;
        default: _tile_stored(7, s + 16 * st + 16, st * 4); break;
      }
      return;
    }
    switch (t) {
      case 0: _tile_stored(0, s, st * 4); if (c.qk_zero) _tile_zero(0); break;
      case 1: _tile_stored(1, s + 16, st * 4); if (c.qk_zero) _tile_zero(1); break;
      case 2: _tile_stored(2, s + 16 * st, st * 4); if (c.qk_zero) _tile_zero(2); break;
      default: _tile_stored(3, s + 16 * st + 16, st * 4); if (c.qk_zero) _tile_zero(3); break;
    }
  };
  if (c.qk_store) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  int npass = 0;
  const float rate = 13.f / 12.f;  // a row per 12 TDPs, as kQkStep 3
  for (int j = 0; j < kBk; j += 32) {
    const int jk = c.k_l1 ? j % 64 : j;
    for (int kk = 0; kk < kD / 32 * c.qk_depth; ++kk) {
      const int k = kk % (kD / 32);
      const int jp = c.qk_ilv && kk == 0 ? j - 32 : -1;  // C tiles of keys jp still to store
      const uint16_t* qa = Q + int64_t(r) * c.qs + 32 * k;
      const uint32_t* kb = kb0 + (jk / 16) * kbs + 256 * k;
      if (c.pf == 1 && j + 32 < kBk) {  // next 32 keys, this k: 2 KiB
        const uint32_t* nx = kb0 + ((jk + 32) / 16) * kbs + 256 * k;
        pf_range<1>(nx, 16);
        pf_range<1>(nx + kbs, 16);
      } else if (c.pf == 2 && j + 32 < kBk) {
        const uint32_t* nx = kb0 + ((jk + 32) / 16) * kbs + 256 * k;
        pf_range<2>(nx, 16);
        pf_range<2>(nx + kbs, 16);
      } else if (c.pf == 3 && j + 32 < kBk && k < 2) {  // prefetchw the S lines of keys j + 32 (16 rows per k)
        for (int i = 0; i < 16; ++i) {
          float* s = sdst(j + 32) + (16 * k + i) * (c.s_l1 ? 32 : c.ss);
          _m_prefetchw(s);
          _m_prefetchw(s + 16);
        }
      }
      if (c.stage && j > 0) copy_rows(j - 32, 8 * k);
      if (c.no_loads) {
      } else if (c.qk_order == 0) {
        _tile_loadd(4, qa, qsb);
        _tile_loadd(6, kb, 64);
      } else {
        _tile_loadd(6, kb, 64);
        _tile_loadd(4, qa, qsb);
      }
      store_zero(0, jp);
      TDP(0, 4, 6);
      if (c.qk_order == 0) {
        if (!c.no_loads) _tile_loadd(7, kb + kbs, 64);
        store_zero(1, jp);
        TDP(1, 4, 7);
        if (!c.no_loads) _tile_loadd(5, qa + 16 * c.qs, qsb);
        store_zero(2, jp);
        TDP(2, 5, 6);
      } else {
        if (!c.no_loads) _tile_loadd(5, qa + 16 * c.qs, qsb);
        store_zero(2, jp);
        TDP(2, 5, 6);
        if (!c.no_loads) _tile_loadd(7, kb + kbs, 64);
        store_zero(1, jp);
        TDP(1, 4, 7);
      }
      store_zero(3, jp);
      TDP(3, 5, 7);
      if (c.sm && !c.fine && ++npass % 3 == 0) g_steps.step();
    }
    if (!c.qk_ilv || j + 32 == kBk)
      for (int t = 0; t < 4; ++t) store_zero(t, j);
  }
  if (c.stage)
    for (int i = 0; i < 32; i += 8) copy_rows(kBk - 32, i);
}

// QK of 64 rows (two strips) per 32 keys: the kernel's 2x2 pass on rows r and r + 32; the
// second pass finds the 8 KiB of K in L1.
static void qk_strip2(const Cfg& c, int r0, const uint32_t* kb0) {
  const float rate = 13.f / 12.f;
  const int64_t qsb = c.qs * 2, kbs = (kD / 2) * 16;
  for (int j = 0; j < kBk; j += 32)
    for (int r = r0; r < r0 + 64; r += 32) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int k = 0; k < kD / 32; ++k) {
        const uint16_t* qa = Q + int64_t(r) * c.qs + 32 * k;
        const uint32_t* kb = kb0 + (j / 16) * kbs + 256 * k;
        _tile_loadd(4, qa, qsb);
        _tile_loadd(6, kb, 64);
        TDP(0, 4, 6);
        _tile_loadd(7, kb + kbs, 64);
        TDP(1, 4, 7);
        _tile_loadd(5, qa + 16 * c.qs, qsb);
        TDP(2, 5, 6);
        TDP(3, 5, 7);
      }
      float* s = S + int64_t(r) * c.ss + j;
      _tile_stored(0, s, c.ss * 4);
      _tile_stored(1, s + 16, c.ss * 4);
      _tile_stored(2, s + 16 * c.ss, c.ss * 4);
      _tile_stored(3, s + 16 * c.ss + 16, c.ss * 4);
    }
}

// QK with double-buffered C: per 32 keys two 1x2 passes (rows r -> C 0,1 with A in tile 4;
// rows r + 16 -> C 2,3 with A in tile 5; B = the 2 K tiles per k, reloaded for the second pass,
// from L1); the stores of one pass are issued after the first `lag` k-steps of the next, so they
// never wait on the TDPs just issued. 1.5 tile loads per TDP instead of 1.
static void qk_strip_db(const Cfg& c, int r, const uint32_t* kb0, int sr) {
  const float rate = 13.f / 12.f;
  const int64_t qsb = c.qs * 2, kbs = (kD / 2) * 16, st = c.ss * 4;
  float* s0 = S + int64_t(sr) * c.ss;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int j = 0; j < kBk; j += 32) {
    for (int h = 0; h < 2; ++h) {
      for (int k = 0; k < kD / 32; ++k) {
        const uint16_t* qa = Q + int64_t(r + 16 * h) * c.qs + 32 * k;
        const uint32_t* kb = kb0 + (j / 16) * kbs + 256 * k;
        if (k == c.lag) {  // store + zero the other pass's C tiles (keys j for h 1, j - 32 for h 0)
          if (h == 1) {
            _tile_stored(0, s0 + j, st);
            _tile_stored(1, s0 + j + 16, st);
            _tile_zero(0);
            _tile_zero(1);
          } else if (j > 0) {
            _tile_stored(2, s0 + 16 * c.ss + j - 32, st);
            _tile_stored(3, s0 + 16 * c.ss + j - 16, st);
            _tile_zero(2);
            _tile_zero(3);
          }
        }
        if (h == 0) {
          _tile_loadd(4, qa, qsb);
          _tile_loadd(6, kb, 64);
          TDP(0, 4, 6);
          _tile_loadd(7, kb + kbs, 64);
          TDP(1, 4, 7);
        } else {
          _tile_loadd(5, qa, qsb);
          _tile_loadd(6, kb, 64);
          TDP(2, 5, 6);
          _tile_loadd(7, kb + kbs, 64);
          TDP(3, 5, 7);
        }
      }
    }
  }
  _tile_stored(2, s0 + 16 * c.ss + kBk - 32, st);
  _tile_stored(3, s0 + 16 * c.ss + kBk - 16, st);
}

// PV over the one-word P (Ph << 16 | Pl per key): per 16 keys one 2x2 pass, A = P rows (16 keys
// = 64 B at the S row stride), B = a V tile of 16 keys x 16 d with each value twice (VNNI pair
// (V, V): Pl V + Ph V in one TDP). Same TDPs as Ph V + Pl V over 32 keys; V pack 2x (128 KiB).
static void pv_strip_word(const Cfg& c, int r, const uint32_t* vb0, int sr) {
  const int64_t osb = c.os * 4, psb = c.ss * 4;
  int npass = 0;
  const float rate = 13.f / 8.f;
  for (int d = 0; d < kD; d += 32) {
    float* o = O + int64_t(r) * c.os + d;
    _tile_loadd(0, o, osb);
    _tile_loadd(1, o + 16, osb);
    _tile_loadd(2, o + 16 * c.os, osb);
    _tile_loadd(3, o + 16 * c.os + 16, osb);
    for (int k = 0; k < kBk; k += 16) {
      const float* pa = S + int64_t(sr) * c.ss + k;
      const uint32_t* vb = vb0 + (k / 16) * (kD / 16) * 256 + (d / 16) * 256;
      _tile_loadd(4, pa, psb);
      _tile_loadd(6, vb, 64);
      TDP(0, 4, 6);
      _tile_loadd(7, vb + 256, 64);
      TDP(1, 4, 7);
      _tile_loadd(5, pa + 16 * c.ss, psb);
      TDP(2, 5, 6);
      TDP(3, 5, 7);
      if (c.sm && !c.fine && ++npass % 2 == 0) g_steps.step();
    }
    _tile_stored(0, o, osb);
    _tile_stored(1, o + 16, osb);
    _tile_stored(2, o + 16 * c.os, osb);
    _tile_stored(3, o + 16 * c.os + 16, osb);
  }
}

// PV of one 32-row strip (O[r..r+32)[0..128) += Ph V + Pl V over 256 keys): 4 x 64 TDPs.
static void pv_strip(const Cfg& c, int r, const uint32_t* vb0, int sr) {
  const int64_t osb = c.os * 4, psb = c.ss * 4;
  int npass = 0;
  const float rate = 13.f / 8.f;  // a row per 8 TDPs, as kPvStep 2
  for (int k0 = 0; k0 < kBk; k0 += c.kg)
  for (int d = 0; d < kD; d += 32) {
    float* o = O + int64_t(r) * c.os + d;
    if (c.o_mem) {
      _tile_loadd(0, o, osb);
      _tile_loadd(1, o + 16, osb);
      _tile_loadd(2, o + 16 * c.os, osb);
      _tile_loadd(3, o + 16 * c.os + 16, osb);
    }
    for (int kk = 0; kk < c.kg; kk += 32) {
      const int k = k0 + (c.snake && (d / 32) % 2 ? c.kg - 32 - kk : kk);
      const uint16_t* ph = reinterpret_cast<const uint16_t*>(S + int64_t(sr) * c.ss + (c.p_same ? 0 : k));
      const uint16_t* pl = ph + 32;
      const uint32_t* vb = vb0 + (k / 32) * (kD / 16) * 256 + (d / 16) * 256;
      if (c.pf && k + 32 < kBk) {
        const uint32_t* nx = vb + (kD / 16) * 256;
        if (c.pf == 1) pf_range<1>(nx, 32);
        else pf_range<2>(nx, 32);
      }
      if (c.no_loads) {
        for (int t = 0; t < 2; ++t) {
          TDP(0, 4, 6);
          TDP(1, 4, 7);
          TDP(2, 5, 6);
          TDP(3, 5, 7);
          if (c.sm && !c.fine && ++npass % 2 == 0) g_steps.step();
        }
        continue;
      }
      if (c.pv_order == 0) {
        _tile_loadd(4, ph, psb);
        _tile_loadd(6, vb, 64);
        TDP(0, 4, 6);
        _tile_loadd(7, vb + 256, 64);
        TDP(1, 4, 7);
        _tile_loadd(5, ph + 16 * c.ss * 2, psb);
        TDP(2, 5, 6);
        TDP(3, 5, 7);
        if (c.sm && !c.fine && ++npass % 2 == 0) g_steps.step();
      } else {
        _tile_loadd(6, vb, 64);
        _tile_loadd(4, ph, psb);
        TDP(0, 4, 6);
        _tile_loadd(5, ph + 16 * c.ss * 2, psb);
        TDP(2, 5, 6);
        _tile_loadd(7, vb + 256, 64);
        TDP(1, 4, 7);
        TDP(3, 5, 7);
        if (c.sm && !c.fine && ++npass % 2 == 0) g_steps.step();
      }
      if (c.pv_order == 2) {  // Pl: A1 first (its tile was read first above), then A0
        _tile_loadd(4, pl, psb);
        TDP(0, 4, 6);
        TDP(1, 4, 7);
        _tile_loadd(5, pl + 16 * c.ss * 2, psb);
        TDP(3, 5, 7);
        TDP(2, 5, 6);
      } else {
        _tile_loadd(4, pl, psb);
        TDP(0, 4, 6);
        TDP(1, 4, 7);
        _tile_loadd(5, pl + 16 * c.ss * 2, psb);
        TDP(2, 5, 6);
        TDP(3, 5, 7);
      }
      if (c.sm && !c.fine && ++npass % 2 == 0) g_steps.step();
    }
    if (c.o_mem) {
      _tile_stored(0, o, osb);
      _tile_stored(1, o + 16, osb);
      _tile_stored(2, o + 16 * c.os, osb);
      _tile_stored(3, o + 16 * c.os + 16, osb);
    }
  }
}

// TSC cycles per TDP of `blocks` kv blocks (8 strips each).
static double run(const Cfg& c, int blocks) {
  int tdps = 0;
  const uint64_t t0 = __rdtsc();
  for (int b = 0; b < blocks; ++b) {
    const int blk = b % c.nb;
    for (int s = 0; s < kBq / kStrip; ++s) {
      if (c.sm) g_steps = Steps{S + int64_t(((s + 7) % c.ring) * kStrip) * c.ss, kStrip, c.ss, c.sm_mem, 0.f, RowChunks{}};  // strip s - 1
      if (c.only == 3) {  // the softmax rows alone (TDPs counted as if run, for comparison)
        tdps += 384;
      } else if (c.only == 4) {  // a plain loop: per row 12 register-only TDPs, then the row
        for (int i = 0; i < kStrip; ++i) {
          for (int t = 0; t < 3; ++t) {
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
          if (c.sm) g_steps.step();
        }
        tdps += 384;
      } else if (c.only != 2 && c.qk64) {
        if (s % 2 == 0) qk_strip2(c, s * kStrip, Kp + blk * kKw);
        tdps += 128;
      } else if (c.only != 2 && c.lag >= 0) {
        qk_strip_db(c, s * kStrip, Kp + blk * kKw, (s % c.ring) * kStrip);
        tdps += 128;
      } else if (c.only != 2) {
        qk_strip(c, s * kStrip, Kp + blk * kKw, (s % c.ring) * kStrip);
        tdps += 128 * c.qk_depth;
      }
      if (c.only != 1 && c.only != 3 && c.only != 4) {
        if (c.pword) pv_strip_word(c, ((s + 6) % 8) * kStrip, Vp + blk * 2 * kVw, ((s + 6) % c.ring) * kStrip);
        else pv_strip(c, ((s + 6) % 8) * kStrip, Vp + blk * kVw, ((s + 6) % c.ring) * kStrip);
        tdps += 256;
      }
      while (c.sm && g_steps.left) {
        if (c.fine) g_steps.tdp(1.f);
        else g_steps.step();
      }
    }
  }
  return double(__rdtsc() - t0) / tdps;
}

// The peak: tmm0-3 += {tmm4,5} x {tmm6,7}, 16 TDPs per iteration, no loads.
static double peak(int iters) {
  const uint64_t t0 = __rdtsc();
  for (int i = 0; i < iters; ++i) {
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  return double(__rdtsc() - t0) / (16.0 * iters);
}

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? atoi(argv[1]) : 9;
  if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) { std::fprintf(stderr, "no AMX permission\n"); return 1; }
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) { cfg.colsb[t] = 64; cfg.rows[t] = 16; }
  _tile_loadconfig(&cfg);
  auto alloc = [](size_t bytes) {
    void* p = std::aligned_alloc(4096, bytes);
    std::memset(p, 0, bytes);
    return p;
  };
  Q = static_cast<uint16_t*>(alloc(size_t(kBq) * 160 * 2));
  Kp = static_cast<uint32_t*>(alloc(size_t(kMaxNb) * kKw * 4));
  Vp = static_cast<uint32_t*>(alloc(size_t(kMaxNb) * kVw * 4 * 2));
  S = static_cast<float*>(alloc(size_t(kBq) * 272 * 4));
  O = static_cast<float*>(alloc(size_t(kBq) * 144 * 4));
  Sl1 = static_cast<float*>(alloc(8192));
  // small normal bf16 values (0x3c00..0x3cff: ~0.008): no Inf / NaN / denormals anywhere
  for (int i = 0; i < kBq * 160; ++i) Q[i] = uint16_t(0x3c00 + (i * 37) % 256);
  for (int64_t i = 0; i < kMaxNb * kKw; ++i) Kp[i] = 0x3c003c00u + uint32_t((i * 13) % 256) * 0x10001u;
  for (int64_t i = 0; i < kMaxNb * kVw * 2; ++i) Vp[i] = 0x3c003c00u + uint32_t((i * 7) % 256) * 0x10001u;
  for (int i = 0; i < kBq * 272; ++i) S[i] = 0x1p-8f;

  std::vector<Cfg> cs;
  auto add = [&](Cfg c) { cs.push_back(c); };
  Cfg base{"kernel (QK+PV, NB 16)"};
  add(base);
  { Cfg c = base; c.name = "  NB 1 (block in L2)"; c.nb = 1; add(c); }
  { Cfg c = base; c.name = "  no tile loads"; c.no_loads = true; add(c); }
  { Cfg c = base; c.name = "  PV snake"; c.snake = true; add(c); }
  { Cfg c = base; c.name = "  PV snake + B-adjacent"; c.snake = true; c.pv_order = 1; add(c); }
  { Cfg c = base; c.name = "  QK ilv, PV snake + B-adjacent"; c.snake = true; c.pv_order = 1; c.qk_ilv = true; add(c); }
  { Cfg c = base; c.name = "  S stride 272"; c.ss = 272; add(c); }
  { Cfg c = base; c.name = "SM kernel + softmax"; c.sm = true; add(c); }
  { Cfg c = base; c.name = "SM  S 272, O 144"; c.sm = true; c.ss = 272; c.os = 144; add(c); }
  { Cfg c = base; c.name = "SM  one-word P (ALU split, dup V)"; c.sm = true; c.pword = true; add(c); }
  { Cfg c = base; c.name = "SM  one-word P, S 272, O 144"; c.sm = true; c.pword = true; c.ss = 272; c.os = 144; add(c); }
  { Cfg c = base; c.name = "SM  one-word P, softmax alone"; c.sm = true; c.pword = true; c.only = 3; add(c); }
  { Cfg c = base; c.name = "SM  one-word P, tiles alone"; c.pword = true; add(c); }
  { Cfg c = base; c.name = "SM  tiles alone"; add(c); }
  { Cfg c = base; c.name = "SM  no tile loads"; c.sm = true; c.no_loads = true; add(c); }
  { Cfg c = base; c.name = "SM  softmax rows alone"; c.sm = true; c.only = 3; add(c); }
  { Cfg c = base; c.name = "SM  fine interleave"; c.sm = true; c.fine = true; add(c); }
  { Cfg c = base; c.name = "SM  fine, S 272, O 144"; c.sm = true; c.fine = true; c.ss = 272; c.os = 144; add(c); }
  { Cfg c = base; c.name = "SM  fine, no tile memory ops (timing)"; c.sm = true; c.fine = true; c.no_loads = true; c.qk_store = false; c.o_mem = false; add(c); }
  { Cfg c = base; c.name = "SM  fine, softmax alone"; c.sm = true; c.fine = true; c.only = 3; add(c); }
  { Cfg c = base; c.name = "SM  no tile memory ops (timing)"; c.sm = true; c.no_loads = true; c.qk_store = false; c.o_mem = false; add(c); }
  { Cfg c = base; c.name = "SM  no tile memory ops, no P stores"; c.sm = true; c.sm_mem = 2; c.no_loads = true; c.qk_store = false; c.o_mem = false; add(c); }
  { Cfg c = base; c.name = "SM  no tile memory ops, softmax on L1 row"; c.sm = true; c.sm_mem = 1; c.no_loads = true; c.qk_store = false; c.o_mem = false; add(c); }
  { Cfg c = base; c.name = "SM  no split (fp32 P), no tile memory ops"; c.sm = true; c.sm_mem = 3; c.no_loads = true; c.qk_store = false; c.o_mem = false; add(c); }
  { Cfg c = base; c.name = "SM  no split (fp32 P), alone"; c.sm = true; c.sm_mem = 3; c.only = 3; add(c); }
  { Cfg c = base; c.name = "SM  no split (fp32 P)"; c.sm = true; c.sm_mem = 3; add(c); }
  { Cfg c = base; c.name = "SM  plain loop: 12 TDPs + a row"; c.sm = true; c.only = 4; add(c); }
  { Cfg c = base; c.name = "SM  plain loop: 12 TDPs + a row (L1 row)"; c.sm = true; c.sm_mem = 1; c.only = 4; add(c); }
  { Cfg c = base; c.name = "SM  plain loop: 12 TDPs alone"; c.only = 4; add(c); }
  { Cfg c = base; c.name = "SM  tile work, no tile memory ops"; c.no_loads = true; c.qk_store = false; c.o_mem = false; add(c); }
  { Cfg c = base; c.name = "SM  softmax on one L1 row"; c.sm = true; c.sm_mem = 1; add(c); }
  { Cfg c = base; c.name = "SM  softmax on one L1 row, alone"; c.sm = true; c.sm_mem = 1; c.only = 3; add(c); }
  { Cfg c = base; c.name = "SM  softmax without P stores"; c.sm = true; c.sm_mem = 2; add(c); }
  { Cfg c = base; c.name = "SM  softmax without P stores, alone"; c.sm = true; c.sm_mem = 2; c.only = 3; add(c); }
  { Cfg c = base; c.name = "SM  no tile loads, softmax on L1 row"; c.sm = true; c.no_loads = true; c.sm_mem = 1; add(c); }
  { Cfg c = base; c.name = "SM  NB 1"; c.sm = true; c.nb = 1; add(c); }
  { Cfg c = base; c.name = "SM  QK K 16 KiB (L1)"; c.sm = true; c.k_l1 = true; add(c); }
  { Cfg c = base; c.name = "SM  PV same P (L1)"; c.sm = true; c.p_same = true; add(c); }
  { Cfg c = base; c.name = "SM  QK stores to L1"; c.sm = true; c.s_l1 = true; add(c); }
  { Cfg c = base; c.name = "SM  S ring 4"; c.sm = true; c.ring = 4; add(c); }
  { Cfg c = base; c.name = "SM  S 272, O 144, QK 64 rows"; c.sm = true; c.ss = 272; c.os = 144; c.qk64 = true; add(c); }
  { Cfg c = base; c.name = "SM  S 272, O 144, PV B-adjacent"; c.sm = true; c.ss = 272; c.os = 144; c.pv_order = 1; add(c); }
  { Cfg c = base; c.name = "  S 272, O 144, PV B-adj, QK staging"; c.ss = 272; c.os = 144; c.pv_order = 1; c.stage = true; add(c); }
  { Cfg c = base; c.name = "  S 272, O 144, QK db lag 2"; c.ss = 272; c.os = 144; c.lag = 2; add(c); }
  { Cfg c = base; c.name = "  S 272, O 144"; c.ss = 272; c.os = 144; add(c); }
  { Cfg c = base; c.name = "  S ring 4"; c.ring = 4; add(c); }
  { Cfg c = base; c.name = "  S ring 4, snake"; c.ring = 4; c.snake = true; add(c); }
  { Cfg c = base; c.name = "  S ring 4, 272, O 144, snake"; c.ring = 4; c.snake = true; c.ss = 272; c.os = 144; add(c); }
  { Cfg c = base; c.name = "  S 272, O 144, QK ilv"; c.ss = 272; c.os = 144; c.qk_ilv = true; add(c); }
  { Cfg c = base; c.name = "  S 272, O 144, QK 64 rows"; c.ss = 272; c.os = 144; c.qk64 = true; add(c); }
  { Cfg c = base; c.name = "  S 272, O 144, PV B-adjacent"; c.ss = 272; c.os = 144; c.pv_order = 1; add(c); }
  { Cfg c = base; c.name = "QK only"; c.only = 1; add(c); }
  { Cfg c = base; c.name = "  QK, K 16 KiB (L1)"; c.only = 1; c.k_l1 = true; add(c); }
  { Cfg c = base; c.name = "  QK, 64 rows per 32 keys (K reuse)"; c.only = 1; c.qk64 = true; add(c); }
  { Cfg c = base; c.name = "  QK, double-buffered C, lag 1"; c.only = 1; c.lag = 1; add(c); }
  { Cfg c = base; c.name = "  QK, double-buffered C, lag 2"; c.only = 1; c.lag = 2; add(c); }
  { Cfg c = base; c.name = "  QK, double-buffered C, lag 3"; c.only = 1; c.lag = 3; add(c); }
  { Cfg c = base; c.name = "  QK, double-buffered C, lag 2, S 272"; c.only = 1; c.lag = 2; c.ss = 272; add(c); }
  { Cfg c = base; c.name = "  QK, no zero / store"; c.only = 1; c.qk_store = false; add(c); }
  { Cfg c = base; c.name = "  QK, no loads"; c.only = 1; c.no_loads = true; add(c); }
  { Cfg c = base; c.name = "  QK, no loads, no zero/store"; c.only = 1; c.no_loads = true; c.qk_store = false; add(c); }
  { Cfg c = base; c.name = "  QK, store, no zero"; c.only = 1; c.qk_zero = false; add(c); }
  { Cfg c = base; c.name = "  QK, no loads, store to L1"; c.only = 1; c.no_loads = true; c.s_l1 = true; add(c); }
  { Cfg c = base; c.name = "  QK, stores interleaved"; c.only = 1; c.qk_ilv = true; add(c); }
  { Cfg c = base; c.name = "  QK, L1 staging + AVX copy"; c.only = 1; c.stage = true; add(c); }
  { Cfg c = base; c.name = "  QK, L1 staging + AVX copy, S 272"; c.only = 1; c.stage = true; c.ss = 272; add(c); }
  { Cfg c = base; c.name = "  QK, staging, ilv"; c.only = 1; c.stage = true; c.qk_ilv = true; add(c); }
  { Cfg c = base; c.name = "  QK, no loads, store op tiles to L1"; c.only = 1; c.no_loads = true; c.s_l1 = true; c.store_ops = true; add(c); }
  { Cfg c = base; c.name = "  QK, no loads, store op tiles to S"; c.only = 1; c.no_loads = true; c.store_ops = true; add(c); }
  { Cfg c = base; c.name = "  QK, no loads, ilv store op tiles L1"; c.only = 1; c.no_loads = true; c.s_l1 = true; c.store_ops = true; c.qk_ilv = true; add(c); }
  { Cfg c = base; c.name = "  QK, no loads, stores interleaved"; c.only = 1; c.no_loads = true; c.qk_ilv = true; add(c); }
  { Cfg c = base; c.name = "  QK, ilv + B-adjacent"; c.only = 1; c.qk_ilv = true; c.qk_order = 1; add(c); }
  { Cfg c = base; c.name = "  QK, prefetchw next S"; c.only = 1; c.pf = 3; add(c); }
  { Cfg c = base; c.name = "  QK, ilv + prefetchw next S"; c.only = 1; c.pf = 3; c.qk_ilv = true; add(c); }
  { Cfg c = base; c.name = "  QK, store to 4 KiB (L1)"; c.only = 1; c.s_l1 = true; add(c); }
  { Cfg c = base; c.name = "  QK, depth x2 (8 k-steps)"; c.only = 1; c.qk_depth = 2; add(c); }
  { Cfg c = base; c.name = "  QK, B-adjacent order"; c.only = 1; c.qk_order = 1; add(c); }
  { Cfg c = base; c.name = "  QK, Q stride 160"; c.only = 1; c.qs = 160; add(c); }
  { Cfg c = base; c.name = "  QK, S stride 272"; c.only = 1; c.ss = 272; add(c); }
  { Cfg c = base; c.name = "  QK, prefetcht0 next K"; c.only = 1; c.pf = 1; add(c); }
  { Cfg c = base; c.name = "  QK, prefetcht1 next K"; c.only = 1; c.pf = 2; add(c); }
  { Cfg c = base; c.name = "PV only"; c.only = 2; add(c); }
  { Cfg c = base; c.name = "  PV, same P tiles (L1)"; c.only = 2; c.p_same = true; add(c); }
  { Cfg c = base; c.name = "  PV, snake"; c.only = 2; c.snake = true; add(c); }
  { Cfg c = base; c.name = "  PV, 128 keys per O load"; c.only = 2; c.kg = 128; add(c); }
  { Cfg c = base; c.name = "  PV, 128 keys per O load, snake"; c.only = 2; c.kg = 128; c.snake = true; add(c); }
  { Cfg c = base; c.name = "  PV, 64 keys per O load"; c.only = 2; c.kg = 64; add(c); }
  { Cfg c = base; c.name = "  PV, snake + B-adjacent"; c.only = 2; c.snake = true; c.pv_order = 1; add(c); }
  { Cfg c = base; c.name = "  PV, snake + B-adj + S 272"; c.only = 2; c.snake = true; c.pv_order = 1; c.ss = 272; add(c); }
  { Cfg c = base; c.name = "  PV, B-adjacent Ph term"; c.only = 2; c.pv_order = 1; add(c); }
  { Cfg c = base; c.name = "  PV, B-adjacent both"; c.only = 2; c.pv_order = 2; add(c); }
  { Cfg c = base; c.name = "  PV, S stride 272"; c.only = 2; c.ss = 272; add(c); }
  { Cfg c = base; c.name = "  PV, O stride 144"; c.only = 2; c.os = 144; add(c); }
  { Cfg c = base; c.name = "  PV, prefetcht0 next V"; c.only = 2; c.pf = 1; add(c); }
  { Cfg c = base; c.name = "  PV, prefetcht1 next V"; c.only = 2; c.pf = 2; add(c); }
  if (argc > 2) {  // a filter substring
    std::vector<Cfg> keep;
    for (const Cfg& c : cs) if (std::string(c.name).find(argv[2]) != std::string::npos) keep.push_back(c);
    cs = keep;
  }
  std::vector<double> best(cs.size(), 1e30);
  double pk = 1e30;
  for (int rd = 0; rd < rounds; ++rd) {
    pk = std::min(pk, peak(20000));
    for (size_t i = 0; i < cs.size(); ++i) {
      g_split_alu = cs[i].pword;
      run(cs[i], 2);  // warm-up
      best[i] = std::min(best[i], run(cs[i], 160));
    }
  }
  std::printf("peak (no loads): %.2f TSC cycles per TDP\n", pk);
  for (size_t i = 0; i < cs.size(); ++i)
    std::printf("%-32s %6.2f TSC/TDP  %5.1f%% of peak\n", cs[i].name, best[i], 100.0 * pk / best[i]);
  _tile_release();
  return 0;
}
