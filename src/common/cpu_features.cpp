// CPUID / XGETBV feature detection, the AMX tile permission request, the ISA tier of this
// machine and the SPEEDATTN_MAX_ISA cap (src/api/dispatch.h, src/common/cpu_features.h).
// Compiled without ISA flags: only <cpuid.h> and an inline-asm xgetbv are used.
#include "common/cpu_features.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>

#include "api/dispatch.h"
#include "speedattn/speedattn.h"

#if defined(__x86_64__) || defined(__i386__)
#define SPEEDATTN_X86 1
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

namespace speedattn {

namespace {

#if defined(SPEEDATTN_X86)
struct Regs {
  unsigned a = 0, b = 0, c = 0, d = 0;
};

bool cpuid(unsigned leaf, unsigned sub, Regs& r) {
  return __get_cpuid_count(leaf, sub, &r.a, &r.b, &r.c, &r.d) != 0;
}

uint64_t xgetbv0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

inline bool bit(unsigned v, int b) { return ((v >> b) & 1u) != 0; }

// XCR0 state components.
constexpr uint64_t kXcr0Ymm = (1u << 1) | (1u << 2);                // SSE, AVX
constexpr uint64_t kXcr0Zmm = (1u << 5) | (1u << 6) | (1u << 7);    // opmask, ZMM_Hi256, Hi16_ZMM
constexpr uint64_t kXcr0Tile = (uint64_t(1) << 17) | (uint64_t(1) << 18);  // XTILECFG, XTILEDATA
#endif

std::once_flag g_amx_once;
bool g_amx_granted = false;

CpuFeatures detect() {
  CpuFeatures f;
#if defined(SPEEDATTN_X86)
  Regs l0;
  if (!cpuid(0, 0, l0)) return f;
  const unsigned max_leaf = l0.a;
  Regs l1;
  if (max_leaf < 1 || !cpuid(1, 0, l1)) return f;
  const bool osxsave = bit(l1.c, 27);
  const bool avx = bit(l1.c, 28);
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = xgetbv0();
  const bool os_ymm = (xcr0 & kXcr0Ymm) == kXcr0Ymm;
  const bool os_zmm = os_ymm && (xcr0 & kXcr0Zmm) == kXcr0Zmm;
  const bool os_tile = (xcr0 & kXcr0Tile) == kXcr0Tile;
  if (!os_ymm) return f;

  f.fma = bit(l1.c, 12);
  f.f16c = bit(l1.c, 29);
  Regs l7, l7s1;
  if (max_leaf >= 7 && cpuid(7, 0, l7)) {
    f.avx2 = bit(l7.b, 5);
    if (os_zmm) {
      f.avx512f = bit(l7.b, 16);
      f.avx512dq = bit(l7.b, 17);
      f.avx512bw = bit(l7.b, 30);
      f.avx512vl = bit(l7.b, 31);
      f.avx512_fp16 = bit(l7.d, 23);
      if (l7.a >= 1 && cpuid(7, 1, l7s1)) f.avx512_bf16 = bit(l7s1.a, 5);
    }
    if (os_tile) {
      f.amx_bf16 = bit(l7.d, 22);
      f.amx_tile = bit(l7.d, 24);
      if (l7.a >= 1 && cpuid(7, 1, l7s1)) f.amx_fp16 = bit(l7s1.a, 21);
    }
  }
  if (f.amx_tile) f.amx_usable = request_amx_permission();
#endif
  return f;
}

// Parses SPEEDATTN_MAX_ISA; returns false when unset or empty. Throws ValueError otherwise.
bool env_isa_cap(Isa& cap, std::string& canonical) {
  const char* raw = std::getenv("SPEEDATTN_MAX_ISA");
  if (!raw) return false;
  std::string s(raw);
  s.erase(0, s.find_first_not_of(" \t"));
  s.erase(s.find_last_not_of(" \t") + 1);  // npos + 1 == 0: all blank
  if (s.empty()) return false;
  std::string lower = s;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  static const Isa kAll[] = {Isa::scalar, Isa::avx2, Isa::avx512, Isa::amx};
  for (Isa i : kAll) {
    if (lower == isa_name(i)) {
      cap = i;
      canonical = lower;
      return true;
    }
  }
  throw ValueError("SPEEDATTN_MAX_ISA: got '" + std::string(raw) + "', expected one of scalar, avx2, avx512, amx");
}

}  // namespace

bool request_amx_permission() {
  std::call_once(g_amx_once, [] {
#if defined(SPEEDATTN_X86) && defined(__linux__) && defined(SYS_arch_prctl)
    constexpr long kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023;
    constexpr int kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0) {
      unsigned long perm = 0;
      g_amx_granted = syscall(SYS_arch_prctl, kArchGetXcompPerm, &perm) == 0 &&
                      ((perm >> kXfeatureXtiledata) & 1ul) != 0;
    }
#endif
  });
  return g_amx_granted;
}

std::vector<std::string> CpuFeatures::names() const {
  std::vector<std::string> v;
  const std::pair<bool, const char*> all[] = {
      {avx2, "avx2"},         {fma, "fma"},           {f16c, "f16c"},
      {avx512f, "avx512f"},   {avx512bw, "avx512bw"}, {avx512vl, "avx512vl"},
      {avx512dq, "avx512dq"}, {avx512_bf16, "avx512_bf16"}, {avx512_fp16, "avx512_fp16"},
      {amx_tile, "amx_tile"}, {amx_bf16, "amx_bf16"}, {amx_fp16, "amx_fp16"},
  };
  for (const auto& [on, name] : all)
    if (on) v.emplace_back(name);
  if (amx_tile && !amx_usable) v.emplace_back("amx_permission_denied");
  return v;
}

const CpuFeatures& cpu_info() {
  static const CpuFeatures f = detect();
  return f;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::amx: return "amx";
  }
  return "unknown";
}

Isa detected_isa() {
  const CpuFeatures& f = cpu_info();
  if (f.amx_tier()) return Isa::amx;
  if (f.avx512_tier()) return Isa::avx512;
  if (f.avx2_tier()) return Isa::avx2;
  return Isa::scalar;
}

Isa isa_limit() {
  const Isa det = detected_isa();
  Isa cap;
  std::string name;
  if (!env_isa_cap(cap, name)) return det;
  return static_cast<int>(cap) < static_cast<int>(det) ? cap : det;
}

std::vector<std::string> cpu_features() { return cpu_info().names(); }

std::string isa_cap() {
  Isa cap;
  std::string name;
  return env_isa_cap(cap, name) ? name : std::string("none");
}

}  // namespace speedattn
