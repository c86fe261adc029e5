// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11; the
// Random123 / CUDA curand generator) and the dropout keep bit of SPEC §7.
//
// keep(seed, offset, e): counter = (c_lo, c_hi, 0, 0) with c = offset + e/4, key = (seed_lo,
// seed_hi), word = output[e % 4]; kept iff word < threshold = floor(keep_prob * 2^32).
// Every backend calls these functions, so masks agree bit for bit.
#pragma once

#include <cstdint>

namespace speedattn {

struct Philox4 {
  uint32_t w[4];
};

inline Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // Weyl key increments
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(kM0) * c0;
    const uint64_t p1 = uint64_t(kM1) * c2;
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n1 = uint32_t(p1);
    const uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    const uint32_t n3 = uint32_t(p0);
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += kW0;
    k1 += kW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// floor(keep_prob * 2^32), saturated; only meaningful for keep_prob in (0, 1).
inline uint32_t keep_threshold(double keep_prob) {
  const double t = keep_prob * 4294967296.0;
  return t >= 4294967295.0 ? 0xffffffffu : uint32_t(t);
}

// The four Philox words for element indices 4*q .. 4*q+3.
inline Philox4 dropout_words(uint64_t seed, uint64_t offset, uint64_t quad) {
  const uint64_t c = offset + quad;
  return philox4x32_10(uint32_t(c), uint32_t(c >> 32), 0, 0, uint32_t(seed), uint32_t(seed >> 32));
}

inline bool dropout_keep(uint64_t seed, uint64_t offset, uint64_t e, uint32_t threshold) {
  return dropout_words(seed, offset, e >> 2).w[e & 3] < threshold;
}

}  // namespace speedattn
