// bfloat16 / float16 conversions (src/common/half.h), exhaustively over all 65,536 bit
// patterns of each type, against independent software methods (ldexp decoding, a sorted
// table of representable values for rounding) and, when the CPU has it, F16C hardware.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/cpu_features.h"
#include "common/half.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace speedattn {
namespace {

// A binary format with `man` explicit mantissa bits and `ebits` exponent bits in 16 bits.
struct Format {
  int man, ebits;
  int bias() const { return (1 << (ebits - 1)) - 1; }
};
constexpr Format kFp16{10, 5};
constexpr Format kBf16{7, 8};

bool is_nan_bits(Format f, uint16_t h) {
  const uint32_t e = (h >> f.man) & ((1u << f.ebits) - 1), m = h & ((1u << f.man) - 1);
  return e == (1u << f.ebits) - 1 && m != 0;
}

// Independent decoding with ldexp, in double.
double decode(Format f, uint16_t h) {
  const int sign = h >> 15;
  const int e = (h >> f.man) & ((1 << f.ebits) - 1);
  const int m = h & ((1 << f.man) - 1);
  double v;
  if (e == (1 << f.ebits) - 1) {
    v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else if (e == 0) {
    v = std::ldexp(double(m), 1 - f.bias() - f.man);
  } else {
    v = std::ldexp(double(m + (1 << f.man)), e - f.bias() - f.man);
  }
  return sign ? -v : v;
}

uint16_t convert(Format f, float x) { return f.man == 10 ? to_fp16(x).bits : to_bf16(x).bits; }
float widen(Format f, uint16_t h) { return f.man == 10 ? to_float(fp16{h}) : to_float(bf16{h}); }

// Independent round-to-nearest-even of a float to the format: binary search in the sorted
// table of non-negative finite values (bit patterns 0 .. max_finite are increasing).
uint16_t reference_round(Format f, float x) {
  static std::vector<double> fp16_table, bf16_table;
  std::vector<double>& table = f.man == 10 ? fp16_table : bf16_table;
  const uint16_t inf_bits = uint16_t(((1u << f.ebits) - 1) << f.man);
  if (table.empty())
    for (uint32_t h = 0; h < inf_bits; ++h) table.push_back(decode(f, uint16_t(h)));
  if (std::isnan(x)) return uint16_t(inf_bits | (1u << (f.man - 1)));  // some quiet NaN
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::fabs(double(x));
  // Past the largest finite value the next "value" is 2^(emax+1) (where inf would sit).
  const double max_finite = table.back();
  const double beyond = std::ldexp(1.0, (1 << f.ebits) - 1 - f.bias());
  size_t hi = size_t(std::lower_bound(table.begin(), table.end(), a) - table.begin());
  if (hi < table.size() && table[hi] == a) return uint16_t(sign | hi);
  // a lies strictly between lo = hi - 1 and hi (hi == table.size() means `beyond`)
  const size_t lo = hi - 1;
  const double vlo = table[lo], vhi = hi < table.size() ? table[hi] : beyond;
  (void)max_finite;
  size_t pick;
  if (a - vlo < vhi - a) pick = lo;
  else if (a - vlo > vhi - a) pick = hi;
  else pick = (lo % 2 == 0) ? lo : hi;  // tie: even bit pattern
  if (a >= beyond) pick = table.size();
  return uint16_t(sign | pick);  // pick == table.size() is the inf pattern
}

void check_decode(Format f) {
  for (uint32_t u = 0; u < 65536; ++u) {
    const uint16_t h = uint16_t(u);
    const double want = decode(f, h);
    const float got = widen(f, h);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << u;
    } else {
      ASSERT_EQ(double(got), want) << std::hex << u;
      ASSERT_EQ(std::signbit(got), std::signbit(want)) << std::hex << u;
    }
  }
}

void check_round_trip(Format f) {
  for (uint32_t u = 0; u < 65536; ++u) {
    const uint16_t h = uint16_t(u);
    const uint16_t back = convert(f, widen(f, h));
    if (is_nan_bits(f, h)) {
      ASSERT_TRUE(is_nan_bits(f, back)) << std::hex << u;
      ASSERT_TRUE(back & (1u << (f.man - 1))) << "NaN must be quiet " << std::hex << u;
      ASSERT_EQ(back & 0x8000, h & 0x8000) << "NaN keeps its sign " << std::hex << u;
    } else {
      ASSERT_EQ(back, h) << std::hex << u;
    }
  }
}

// Every pair of adjacent values (h, h+1) of the same sign: the exact midpoint (representable
// in float: one more bit than the format) rounds to the even one; the floats just below and
// above the midpoint go down and up. Includes the overflow boundary (max finite -> inf).
void check_midpoints(Format f) {
  const uint16_t inf_bits = uint16_t(((1u << f.ebits) - 1) << f.man);
  for (uint32_t s = 0; s < 2; ++s) {
    const uint16_t sign = uint16_t(s << 15);
    for (uint32_t h = 0; h < inf_bits; ++h) {
      const double a = decode(f, uint16_t(h));
      const double b = (h + 1 == inf_bits) ? std::ldexp(1.0, (1 << f.ebits) - 1 - f.bias()) : decode(f, uint16_t(h + 1));
      const double mid = (a + b) / 2;
      const float fm = float(mid);
      ASSERT_EQ(double(fm), mid) << "midpoint not exact in float";
      const float sgn = s ? -1.0f : 1.0f;
      const uint16_t even = uint16_t(sign | ((h % 2 == 0) ? h : h + 1));
      ASSERT_EQ(convert(f, sgn * fm), even) << std::hex << h;
      ASSERT_EQ(convert(f, sgn * std::nextafter(fm, 0.0f)), uint16_t(sign | h)) << std::hex << h;
      ASSERT_EQ(convert(f, sgn * std::nextafter(fm, INFINITY)), uint16_t(sign | (h + 1))) << std::hex << h;
      ASSERT_EQ(convert(f, sgn * float(a)), uint16_t(sign | h)) << std::hex << h;
    }
  }
  // inf and huge values
  ASSERT_EQ(convert(f, INFINITY), inf_bits);
  ASSERT_EQ(convert(f, -INFINITY), uint16_t(0x8000 | inf_bits));
  ASSERT_EQ(convert(f, std::numeric_limits<float>::max()), inf_bits);
}

// A broad sample of float bit patterns (every exponent, pseudo-random mantissas) against the
// table-based reference.
void check_sampled(Format f) {
  uint32_t state = 12345;
  for (uint32_t k = 0; k < (1u << 22); ++k) {
    state = state * 1664525u + 1013904223u;
    const uint32_t u = (k << 10) ^ (state >> 22);
    const float x = bits_float(u);
    const uint16_t got = convert(f, x), want = reference_round(f, x);
    if (std::isnan(x)) {
      ASSERT_TRUE(is_nan_bits(f, got)) << std::hex << u;
    } else {
      ASSERT_EQ(got, want) << std::hex << u;
    }
  }
}

TEST(Half, Fp16DecodeExhaustive) { check_decode(kFp16); }
TEST(Half, Bf16DecodeExhaustive) { check_decode(kBf16); }
TEST(Half, Fp16RoundTripExhaustive) { check_round_trip(kFp16); }
TEST(Half, Bf16RoundTripExhaustive) { check_round_trip(kBf16); }
TEST(Half, Fp16MidpointsRoundToEven) { check_midpoints(kFp16); }
TEST(Half, Bf16MidpointsRoundToEven) { check_midpoints(kBf16); }
TEST(Half, Fp16SampledAgainstTable) { check_sampled(kFp16); }
TEST(Half, Bf16SampledAgainstTable) { check_sampled(kBf16); }

TEST(Half, KnownValues) {
  EXPECT_EQ(to_fp16(1.0f).bits, 0x3c00);
  EXPECT_EQ(to_fp16(65504.0f).bits, 0x7bff);
  EXPECT_EQ(to_fp16(65519.996f).bits, 0x7bff);
  EXPECT_EQ(to_fp16(65520.0f).bits, 0x7c00);
  EXPECT_EQ(to_fp16(std::ldexp(1.0f, -24)).bits, 0x0001);
  EXPECT_EQ(to_fp16(std::ldexp(1.0f, -25)).bits, 0x0000);          // tie -> even (0)
  EXPECT_EQ(to_fp16(std::ldexp(1.5f, -25)).bits, 0x0001);
  EXPECT_EQ(to_fp16(-0.0f).bits, 0x8000);
  EXPECT_EQ(to_bf16(1.0f).bits, 0x3f80);
  EXPECT_EQ(to_bf16(-0.0f).bits, 0x8000);
  EXPECT_EQ(to_bf16(bits_float(0x3f808000u)).bits, 0x3f80);  // tie -> even
  EXPECT_EQ(to_bf16(bits_float(0x3f818000u)).bits, 0x3f82);  // tie -> even (up)
  EXPECT_EQ(to_bf16(bits_float(0x7f7fffffu)).bits, 0x7f80);  // FLT_MAX rounds to inf
  EXPECT_EQ(to_bf16(bits_float(0x00000001u)).bits, 0x0000);  // float denormal
  EXPECT_EQ(to_float(bf16{0x7f80}), INFINITY);
}

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
__attribute__((target("f16c"))) uint16_t hw_to_fp16(float x) {
  return uint16_t(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
__attribute__((target("f16c"))) float hw_to_float(uint16_t h) { return _cvtsh_ss(h); }

TEST(Half, Fp16MatchesF16cHardware) {
  if (!speedattn::cpu_info().f16c) GTEST_SKIP() << "no F16C on this CPU";
  for (uint32_t u = 0; u < 65536; ++u) {
    const float hw = hw_to_float(uint16_t(u)), sw = to_float(fp16{uint16_t(u)});
    if (std::isnan(hw)) {  // hardware quiets signalling NaNs when widening; any NaN is fine
      ASSERT_TRUE(std::isnan(sw)) << std::hex << u;
      ASSERT_EQ(float_bits(hw) & 0x803fffffu, float_bits(sw) & 0x803fffffu) << "NaN payload " << std::hex << u;
    } else {
      ASSERT_EQ(float_bits(hw), float_bits(sw)) << std::hex << u;
    }
  }
  // Every float exponent with pseudo-random mantissas, plus all patterns near the fp16 range.
  uint32_t state = 987654321;
  for (uint64_t k = 0; k < (1u << 24); ++k) {
    state = state * 1664525u + 1013904223u;
    const uint32_t u = uint32_t(k << 8) ^ (state >> 24);
    const float x = bits_float(u);
    ASSERT_EQ(hw_to_fp16(x), to_fp16(x).bits) << std::hex << u;
  }
  for (uint32_t u = 0x33000000u; u < 0x47800000u; u += 7) {  // [2^-25, 2^16): subnormal .. overflow
    const float x = bits_float(u);
    ASSERT_EQ(hw_to_fp16(x), to_fp16(x).bits) << std::hex << u;
    ASSERT_EQ(hw_to_fp16(-x), to_fp16(-x).bits) << std::hex << u;
  }
}
#endif

}  // namespace
}  // namespace speedattn
