// dev/amx_tile_probe: what a TDPBF16PS costs on one core in the loop shapes of bwd_amx.cpp's
// amx_gemm (dev/bwd_08_amx_tile_loop.md), all operands L1-resident.
//   build: g++ -O2 -march=native dev/amx_tile_probe.cpp -o build/amx_tile_probe
//   run:   taskset -c 0 build/amx_tile_probe
// Per loop: ns per TDPBF16PS (TSC time), the core clock right after the loop (a dependent chain of
// `add reg, reg`, one per cycle, timed with the TSC; this VM's TSC runs at 2.6 GHz) and their
// product, cycles per TDPBF16PS (16 at full rate).
//   * the 2 x 2 step (C in tmm0-3, A in tmm4-5, B in tmm6-7) with no tile loads, with the 4
//     operand loads, on random bf16 data and on zeros: the clock, not the cycle count, moves;
//   * 2 x 2 blocks of K = 4 steps (16 TDPBF16PS; 32 with a B2 "lo" pass as dV / dK) whose C tiles
//     are zeroed or loaded, then stored, at every block (amx_gemm), and the same with the block
//     boundary interleaved: A / B of the next block loaded first, then per C tile i: store, next
//     block's load / zero, its first TDPBF16PS.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <x86intrin.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>

namespace {

constexpr double kTscGHz = 2.6;

struct TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

alignas(64) uint16_t A[8 * 1024], B[8 * 1024];  // 8 tiles each
alignas(64) float C[4][4096];                   // 4 blocks of 2 x 2 fp32 tiles, row stride 128 B

#define LA(t, k) _tile_loadd(t, A + ((k) & 7) * 1024, 64)
#define LB(t, k) _tile_loadd(t, B + ((k) & 7) * 1024, 64)
#define TDP4                \
  _tile_dpbf16ps(0, 4, 6);  \
  _tile_dpbf16ps(1, 4, 7);  \
  _tile_dpbf16ps(2, 5, 6);  \
  _tile_dpbf16ps(3, 5, 7);
#define OPS(k) LA(4, k); LA(5, k + 1); LB(6, k); LB(7, k + 1);
#define STEP(k) OPS(k) TDP4
#define STEPLO(k) OPS(k) TDP4 LB(6, k + 2); LB(7, k + 3); TDP4
#define ZC _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
#define LDC(c) _tile_loadd(0, c, 128); _tile_loadd(1, c + 16, 128); _tile_loadd(2, c + 2048, 128); _tile_loadd(3, c + 2064, 128);
#define STC(c) _tile_stored(0, c, 128); _tile_stored(1, c + 16, 128); _tile_stored(2, c + 2048, 128); _tile_stored(3, c + 2064, 128);
// interleaved boundary: store C_i of this block, load C_i of the next block (nc), its first TDP
#define XL(c, nc)                                                                                \
  _tile_stored(0, c, 128); _tile_loadd(0, nc, 128); _tile_dpbf16ps(0, 4, 6);                    \
  _tile_stored(1, c + 16, 128); _tile_loadd(1, nc + 16, 128); _tile_dpbf16ps(1, 4, 7);          \
  _tile_stored(2, c + 2048, 128); _tile_loadd(2, nc + 2048, 128); _tile_dpbf16ps(2, 5, 6);      \
  _tile_stored(3, c + 2064, 128); _tile_loadd(3, nc + 2064, 128); _tile_dpbf16ps(3, 5, 7);
#define XZ(c)                                                                                    \
  _tile_stored(0, c, 128); _tile_zero(0); _tile_dpbf16ps(0, 4, 6);                              \
  _tile_stored(1, c + 16, 128); _tile_zero(1); _tile_dpbf16ps(1, 4, 7);                         \
  _tile_stored(2, c + 2048, 128); _tile_zero(2); _tile_dpbf16ps(2, 5, 6);                       \
  _tile_stored(3, c + 2064, 128); _tile_zero(3); _tile_dpbf16ps(3, 5, 7);

double clock_ghz() {
  const uint64_t t0 = __rdtsc();
  long x = 0, y = 1;
  for (int i = 0; i < 500; ++i) asm volatile("add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0" : "+r"(x) : "r"(y));
  return 2000.0 / double(__rdtsc() - t0) * kTscGHz;
}

// f(i) issues tdp TDPBF16PS; 30 runs of 4000 calls, each followed by a clock reading
template <class F>
void run(const char* name, int tdp, F&& f) {
  double ns = 0, ghz = 0;
  constexpr int kRuns = 30;
  constexpr long kCalls = 4000;
  for (int r = 0; r < kRuns; ++r) {
    const uint64_t t0 = __rdtsc();
    for (long i = 0; i < kCalls; ++i) f(i);
    ns += double(__rdtsc() - t0) / kTscGHz / double(kCalls * tdp);
    ghz += clock_ghz();
  }
  ns /= kRuns, ghz /= kRuns;
  std::printf("%-52s %5.2f ns/TDP  clock %.2f GHz  %4.1f cycles/TDP\n", name, ns, ghz, ns * ghz);
}

void fill(bool zero) {
  for (int i = 0; i < 8 * 1024; ++i) A[i] = B[i] = zero ? 0 : uint16_t(0x3c00 + (std::rand() & 0xff));
}

}  // namespace

int main() {
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) != 0) {
    std::printf("no AMX permission\n");
    return 1;
  }
  alignas(64) TileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.colsb[t] = 64, cfg.rows[t] = 16;
  _tile_loadconfig(&cfg);
  for (const bool zero : {false, true}) {
    fill(zero);
    OPS(0)
    run(zero ? "2x2 step, no tile loads, zero data" : "2x2 step, no tile loads, random data", 4, [](long) { TDP4 });
    run(zero ? "2x2 step, 4 operand loads, zero data" : "2x2 step, 4 operand loads, random data", 4,
        [](long i) { STEP(i) });
  }
  fill(false);
  run("block K4: zero C, 16 TDP, store C (S, dP)", 16, [](long i) {
    float* c = C[i & 3];
    ZC STEP(0) STEP(1) STEP(2) STEP(3) STC(c)
  });
  run("block K4: load C, 16 TDP, store C", 16, [](long i) {
    float* c = C[i & 3];
    LDC(c) STEP(0) STEP(1) STEP(2) STEP(3) STC(c)
  });
  run("block K4 + lo: load C, 32 TDP, store C (dV, dK)", 32, [](long i) {
    float* c = C[i & 3];
    LDC(c) STEPLO(0) STEPLO(1) STEPLO(2) STEPLO(3) STC(c)
  });
  run("  same, boundary interleaved (zero C)", 16, [](long i) {
    float* c = C[i & 3];
    STEP(1) STEP(2) STEP(3) OPS(0) XZ(c)
  });
  run("  same, boundary interleaved (load C)", 16, [](long i) {
    float *c = C[i & 3], *nc = C[(i + 1) & 3];
    STEP(1) STEP(2) STEP(3) OPS(0) XL(c, nc)
  });
  run("  same, boundary interleaved (load C, + lo)", 32, [](long i) {
    float *c = C[i & 3], *nc = C[(i + 1) & 3];
    STEPLO(1) STEPLO(2) STEPLO(3) OPS(0) XL(c, nc) LB(6, 2); LB(7, 3); TDP4
  });
  _tile_release();
  return 0;
}
