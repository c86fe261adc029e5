// peaks — hardware ceilings a fused attention kernel is measured against on this machine.
//
// Probes (each run with 1 thread and with T threads, one pthread per core, pinned to CPUs 0..T-1):
//   amx_bf16   TDPBF16PS into 4 independent accumulator tiles tmm0-3 from {tmm4,5} x {tmm6,7},
//              16 instructions per loop iteration, no loads. 16*16*32*2 = 16384 flop / instruction.
//   fp32_fma   vfmadd231ps zmm into 12 independent accumulators zmm0-11, 4x unrolled (48 per
//              iteration), operands zmm30/zmm31. 32 flop / instruction.
//   dram_read  sequential 512-bit loads OR-ed into 8 accumulators (512 B / iteration) over a 1 GiB
//              buffer (2 MiB aligned, MADV_HUGEPAGE, pre-touched); with T threads each reads 1/T of it.
//   clock      a dependent chain of `add reg,reg` (1 cycle each): the actual core clock in GHz.
// Method: background/machine-limits.md. The host is shared and noisy (AMX sometimes runs at half
// rate), so every probe is repeated (`--reps`, ~`--seconds` each, interleaved across probes so a
// noisy period hits all of them) and both the MAX (the physical limit) and the MEDIAN (what one
// typically gets) are reported. Output: one JSON object on stdout.
//
// Build: g++ -O3 -march=native -pthread bench/peaks.cpp -o build/bench/peaks   (bench/peaks.py does it)
// Usage: peaks [--reps N] [--seconds S] [--threads T] [--probes amx_bf16,fp32_fma,dram_read,clock]
//              [--dram-mib M]

#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void pin_to_cpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);  // best effort
}

// ---------------------------------------------------------------- AMX-BF16 ------------------------
constexpr long kArchReqXcompPerm = 0x1023;  // ARCH_REQ_XCOMP_PERM
constexpr long kXfeatureXtiledata = 18;     // XFEATURE_XTILEDATA

bool amx_permission() {
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

bool cpu_has_amx_bf16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("amx-bf16") && __builtin_cpu_supports("amx-tile");
}

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// iters loop iterations of 16 TDPBF16PS each (the caller has obtained the AMX permission).
void amx_run(long iters) {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  alignas(64) static thread_local uint16_t src[16 * 32];
  alignas(64) static thread_local float dst[4][16 * 16];
  for (int i = 0; i < 16 * 32; ++i) src[i] = 0x3c80;  // bf16 1/64: no denormals, no overflow
  std::memset(dst, 0, sizeof(dst));
  _tile_loadconfig(&cfg);
  _tile_loadd(0, dst[0], 64);
  _tile_loadd(1, dst[1], 64);
  _tile_loadd(2, dst[2], 64);
  _tile_loadd(3, dst[3], 64);
  _tile_loadd(4, src, 64);
  _tile_loadd(5, src, 64);
  _tile_loadd(6, src, 64);
  _tile_loadd(7, src, 64);
  for (long it = 0; it < iters; ++it) {
    // AT&T operand order: tdpbf16ps B, A, C  means  C += A x B.
    asm volatile(
        "tdpbf16ps %%tmm6, %%tmm4, %%tmm0\n\t"
        "tdpbf16ps %%tmm7, %%tmm4, %%tmm1\n\t"
        "tdpbf16ps %%tmm6, %%tmm5, %%tmm2\n\t"
        "tdpbf16ps %%tmm7, %%tmm5, %%tmm3\n\t"
        "tdpbf16ps %%tmm6, %%tmm4, %%tmm0\n\t"
        "tdpbf16ps %%tmm7, %%tmm4, %%tmm1\n\t"
        "tdpbf16ps %%tmm6, %%tmm5, %%tmm2\n\t"
        "tdpbf16ps %%tmm7, %%tmm5, %%tmm3\n\t"
        "tdpbf16ps %%tmm6, %%tmm4, %%tmm0\n\t"
        "tdpbf16ps %%tmm7, %%tmm4, %%tmm1\n\t"
        "tdpbf16ps %%tmm6, %%tmm5, %%tmm2\n\t"
        "tdpbf16ps %%tmm7, %%tmm5, %%tmm3\n\t"
        "tdpbf16ps %%tmm6, %%tmm4, %%tmm0\n\t"
        "tdpbf16ps %%tmm7, %%tmm4, %%tmm1\n\t"
        "tdpbf16ps %%tmm6, %%tmm5, %%tmm2\n\t"
        "tdpbf16ps %%tmm7, %%tmm5, %%tmm3\n\t" ::
            : "memory");
  }
  _tile_stored(0, dst[0], 64);
  _tile_stored(1, dst[1], 64);
  _tile_stored(2, dst[2], 64);
  _tile_stored(3, dst[3], 64);
  _tile_release();
  volatile float sink = dst[0][0] + dst[1][1] + dst[2][2] + dst[3][3];
  (void)sink;
}

// ---------------------------------------------------------------- FP32 FMA ------------------------
#define FMA12                                 \
  "vfmadd231ps %%zmm31, %%zmm30, %%zmm0\n\t"  \
  "vfmadd231ps %%zmm31, %%zmm30, %%zmm1\n\t"  \
  "vfmadd231ps %%zmm31, %%zmm30, %%zmm2\n\t"  \
  "vfmadd231ps %%zmm31, %%zmm30, %%zmm3\n\t"  \
  "vfmadd231ps %%zmm31, %%zmm30, %%zmm4\n\t"  \
  "vfmadd231ps %%zmm31, %%zmm30, %%zmm5\n\t"  \
  "vfmadd231ps %%zmm31, %%zmm30, %%zmm6\n\t"  \
  "vfmadd231ps %%zmm31, %%zmm30, %%zmm7\n\t"  \
  "vfmadd231ps %%zmm31, %%zmm30, %%zmm8\n\t"  \
  "vfmadd231ps %%zmm31, %%zmm30, %%zmm9\n\t"  \
  "vfmadd231ps %%zmm31, %%zmm30, %%zmm10\n\t" \
  "vfmadd231ps %%zmm31, %%zmm30, %%zmm11\n\t"

// iters loop iterations of 48 FMAs each.
void fma_run(long iters) {
  float init[16], out[16];
  for (int i = 0; i < 16; ++i) init[i] = 1e-3f;
  // zmm0-11 = 0 accumulators, zmm30 = zmm31 = 1e-3 (each FMA adds 1e-6: no denormal, no overflow).
  asm volatile(
      "vmovups (%[init]), %%zmm30\n\t"
      "vmovups (%[init]), %%zmm31\n\t"
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vmovaps %%zmm0, %%zmm1\n\t"
      "vmovaps %%zmm0, %%zmm2\n\t"
      "vmovaps %%zmm0, %%zmm3\n\t"
      "vmovaps %%zmm0, %%zmm4\n\t"
      "vmovaps %%zmm0, %%zmm5\n\t"
      "vmovaps %%zmm0, %%zmm6\n\t"
      "vmovaps %%zmm0, %%zmm7\n\t"
      "vmovaps %%zmm0, %%zmm8\n\t"
      "vmovaps %%zmm0, %%zmm9\n\t"
      "vmovaps %%zmm0, %%zmm10\n\t"
      "vmovaps %%zmm0, %%zmm11\n\t"
      "1:\n\t" FMA12 FMA12 FMA12 FMA12
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vaddps %%zmm1, %%zmm0, %%zmm0\n\t"
      "vaddps %%zmm11, %%zmm0, %%zmm0\n\t"
      "vmovups %%zmm0, (%[out])\n\t"
      : [n] "+r"(iters)
      : [init] "r"(init), [out] "r"(out)
      : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
        "xmm10", "xmm11", "xmm30", "xmm31");
  volatile float sink = out[0];
  (void)sink;
}
#undef FMA12

// ---------------------------------------------------------------- clock ---------------------------
// iters iterations of 64 dependent `add reg,reg` (1 cycle each); returns cycles.
void clock_run(long iters) {
  uint64_t a = 1, b = 1;
#define ADD8 "add %[b], %[a]\n\t" "add %[b], %[a]\n\t" "add %[b], %[a]\n\t" "add %[b], %[a]\n\t" \
             "add %[b], %[a]\n\t" "add %[b], %[a]\n\t" "add %[b], %[a]\n\t" "add %[b], %[a]\n\t"
  asm volatile(
      "1:\n\t" ADD8 ADD8 ADD8 ADD8 ADD8 ADD8 ADD8 ADD8
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      : [n] "+r"(iters), [a] "+r"(a)
      : [b] "r"(b)
      : "cc");
#undef ADD8
  volatile uint64_t sink = a;
  (void)sink;
}

// ---------------------------------------------------------------- DRAM read -----------------------
// Reads bytes [begin, end) of buf with 512-bit loads; returns an OR of everything (kept live).
uint64_t read_range(const char* begin, const char* end) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (const char* p = begin; p < end; p += 512) {
    a0 = _mm512_or_si512(a0, _mm512_load_si512(p + 0));
    a1 = _mm512_or_si512(a1, _mm512_load_si512(p + 64));
    a2 = _mm512_or_si512(a2, _mm512_load_si512(p + 128));
    a3 = _mm512_or_si512(a3, _mm512_load_si512(p + 192));
    a4 = _mm512_or_si512(a4, _mm512_load_si512(p + 256));
    a5 = _mm512_or_si512(a5, _mm512_load_si512(p + 320));
    a6 = _mm512_or_si512(a6, _mm512_load_si512(p + 384));
    a7 = _mm512_or_si512(a7, _mm512_load_si512(p + 448));
  }
  a0 = _mm512_or_si512(_mm512_or_si512(_mm512_or_si512(a0, a1), _mm512_or_si512(a2, a3)),
                       _mm512_or_si512(_mm512_or_si512(a4, a5), _mm512_or_si512(a6, a7)));
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, a0);
  uint64_t r = 0;
  for (uint64_t x : lanes) r |= x;
  return r;
}

char* g_dram = nullptr;
size_t g_dram_bytes = 0;

// ---------------------------------------------------------------- threading -----------------------
// Runs work(thread_index) on `threads` pinned pthreads that start together; returns the wall time
// from the common start to the last finish.
double run_parallel(int threads, const std::function<void(int)>& work) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  struct Arg {
    int index;
    const std::function<void(int)>* work;
    std::atomic<int>* ready;
    std::atomic<bool>* go;
  };
  std::vector<pthread_t> tids(threads);
  std::vector<Arg> args(threads);
  for (int t = 0; t < threads; ++t) {
    args[t] = Arg{t, &work, &ready, &go};
    pthread_create(
        &tids[t], nullptr,
        [](void* p) -> void* {
          Arg* a = static_cast<Arg*>(p);
          pin_to_cpu(a->index);
          a->ready->fetch_add(1);
          while (!a->go->load(std::memory_order_acquire)) {
          }
          (*a->work)(a->index);
          return nullptr;
        },
        &args[t]);
  }
  while (ready.load() < threads) {
  }
  double t0 = now_s();
  go.store(true, std::memory_order_release);
  for (auto& tid : tids) pthread_join(tid, nullptr);
  return now_s() - t0;
}

struct Probe {
  std::string name;
  std::string unit;   // "GFLOP/s", "GB/s" (totals over the threads) or "GHz" (per core)
  double per_iter;    // work per iteration and thread (flop, cycle), or per pass over the buffer (byte)
  std::function<void(int thread, int threads, long iters)> body;
  long iters = 1;     // per thread, calibrated to ~seconds on one thread
};

// One timed run on `threads` threads, in the probe's unit.
double measure(const Probe& p, int threads) {
  double t = run_parallel(threads, [&](int i) { p.body(i, threads, p.iters); });
  double work = p.per_iter * double(p.iters);
  if (p.name == "dram_read") return work / t / 1e9;  // the threads share one pass over the buffer
  if (p.name == "clock") return work / t / 1e9;      // per core: every thread runs the same chain
  return work * threads / t / 1e9;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 7;
  double seconds = 0.1;
  int max_threads = int(sysconf(_SC_NPROCESSORS_ONLN));
  size_t dram_mib = 1024;
  std::string probes_arg = "amx_bf16,fp32_fma,dram_read,clock";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "peaks: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--reps") reps = std::max(1, std::atoi(next()));
    else if (a == "--seconds") seconds = std::atof(next());
    else if (a == "--threads") max_threads = std::max(1, std::atoi(next()));
    else if (a == "--probes") probes_arg = next();
    else if (a == "--dram-mib") dram_mib = size_t(std::max(1, std::atoi(next())));
    else {
      std::fprintf(stderr, "peaks: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  auto wanted = [&](const char* name) { return ("," + probes_arg + ",").find(std::string(",") + name + ",") != std::string::npos; };

  std::vector<Probe> probes;
  std::vector<std::string> skipped;
  if (wanted("amx_bf16")) {
    if (cpu_has_amx_bf16() && amx_permission()) {
      probes.push_back({"amx_bf16", "GFLOP/s", 16.0 * 16384.0, [](int, int, long n) { amx_run(n); }});
    } else {
      skipped.push_back("amx_bf16");
    }
  }
  if (wanted("fp32_fma")) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
      probes.push_back({"fp32_fma", "GFLOP/s", 48.0 * 32.0, [](int, int, long n) { fma_run(n); }});
    else
      skipped.push_back("fp32_fma");
  }
  if (wanted("dram_read")) {
    g_dram_bytes = dram_mib << 20;
    void* mem = nullptr;
    if (posix_memalign(&mem, size_t(2) << 20, g_dram_bytes) == 0) {
      g_dram = static_cast<char*>(mem);
      madvise(g_dram, g_dram_bytes, MADV_HUGEPAGE);
      for (size_t i = 0; i < g_dram_bytes; i += 4096) g_dram[i] = char(i >> 12);
      // One pass over the thread's share of the buffer per iteration.
      probes.push_back({"dram_read", "GB/s", double(g_dram_bytes), [](int t, int threads, long n) {
                          size_t share = (g_dram_bytes / threads) & ~size_t(511);
                          const char* b = g_dram + size_t(t) * share;
                          uint64_t acc = 0;
                          for (long k = 0; k < n; ++k) acc |= read_range(b, b + share);
                          volatile uint64_t sink = acc;
                          (void)sink;
                        }});
    } else {
      skipped.push_back("dram_read");
    }
  }
  if (wanted("clock")) probes.push_back({"clock", "GHz", 64.0, [](int, int, long n) { clock_run(n); }});

  // Calibrate iterations per thread so that one single-thread run takes ~seconds.
  for (auto& p : probes) {
    if (p.name == "dram_read") continue;  // one pass over 1 GiB is already ~0.1 s
    long n = 1000;
    for (;;) {
      double t0 = now_s();
      p.body(0, 1, n);
      double t = now_s() - t0;
      if (t > 0.02 || n > (1L << 40)) {
        p.iters = std::max(1L, long(double(n) * seconds / t));
        break;
      }
      n *= 4;
    }
  }

  std::vector<int> thread_counts = {1};
  if (max_threads > 1) thread_counts.push_back(max_threads);
  // results[probe][thread_count index] = samples
  std::vector<std::vector<std::vector<double>>> samples(probes.size(),
                                                        std::vector<std::vector<double>>(thread_counts.size()));
  for (int r = 0; r < reps; ++r)
    for (size_t pi = 0; pi < probes.size(); ++pi)
      for (size_t ti = 0; ti < thread_counts.size(); ++ti) {
        samples[pi][ti].push_back(measure(probes[pi], thread_counts[ti]));
      }

  std::printf("{\n  \"reps\": %d, \"seconds_per_rep\": %.3f, \"threads\": [", reps, seconds);
  for (size_t ti = 0; ti < thread_counts.size(); ++ti) std::printf("%s%d", ti ? ", " : "", thread_counts[ti]);
  std::printf("],\n  \"skipped\": [");
  for (size_t i = 0; i < skipped.size(); ++i) std::printf("%s\"%s\"", i ? ", " : "", skipped[i].c_str());
  std::printf("],\n  \"probes\": {");
  for (size_t pi = 0; pi < probes.size(); ++pi) {
    std::printf("%s\n    \"%s\": {\"unit\": \"%s\"", pi ? "," : "", probes[pi].name.c_str(), probes[pi].unit.c_str());
    for (size_t ti = 0; ti < thread_counts.size(); ++ti) {
      const auto& s = samples[pi][ti];
      std::printf(", \"%d\": {\"max\": %.2f, \"median\": %.2f, \"min\": %.2f}", thread_counts[ti],
                  *std::max_element(s.begin(), s.end()), median(s), *std::min_element(s.begin(), s.end()));
    }
    std::printf("}");
  }
  std::printf("\n  }\n}\n");
  std::free(g_dram);
  return 0;
}
