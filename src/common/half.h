// bfloat16 / float16 storage types and exact conversions to and from float (GCC 12 has no
// __bf16). Conversion to the narrow type rounds to nearest even; NaN stays NaN (quiet).
#pragma once

#include <cstdint>
#include <cstring>

namespace speedattn {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct bf16 {
  uint16_t bits = 0;
};
struct fp16 {
  uint16_t bits = 0;
};

inline float to_float(bf16 h) { return bits_float(uint32_t(h.bits) << 16); }

inline bf16 to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40u)};  // NaN: keep, make quiet
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bf16{uint16_t(u >> 16)};
}

inline float to_float(fp16 h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1fu;
  const uint32_t man = h.bits & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp != 0) return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
  // zero or subnormal: man * 2^-24
  float mag = float(man) * bits_float(0x33800000u);  // 2^-24
  return bits_float(sign | float_bits(mag));
}

inline fp16 to_fp16(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return fp16{uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu))};  // NaN, quiet
  if (a >= 0x477ff000u) return fp16{uint16_t(sign | 0x7c00u)};  // rounds to >= 65520: inf
  if (a < 0x38800000u) {
    // result is subnormal or zero: value / 2^-24 rounded to nearest even, done in float
    // arithmetic, which is exact here (the addend 0.5 forces rounding at the 2^-24 unit).
    const float mag = bits_float(a) + 0.5f;  // 0.5 = 2^-1: ulp of [0.5,1) is 2^-24
    return fp16{uint16_t(sign | uint16_t(float_bits(mag) - 0x3f000000u))};
  }
  // normal: rebias exponent (127 -> 15) and round the 13 dropped bits to nearest even
  uint32_t r = a - 0x38000000u;  // exponent - 112
  r += 0xfffu + ((r >> 13) & 1u);
  return fp16{uint16_t(sign | uint16_t(r >> 13))};
}

inline float to_float(float f) { return f; }

}  // namespace speedattn
