// Philox4x32-10 and the dropout keep bit (src/common/philox.h, SPEC §7).
// Known answers: Random123 tests/kat_vectors (github.com/DEShawResearch/random123), the three
// "philox4x32 10" lines: CTR (4 words), KEY (2 words) -> EXPECTED (4 words).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>

#include "common/philox.h"

namespace speedattn {
namespace {

struct Kat {
  uint32_t ctr[4], key[2], want[4];
};

TEST(Philox, Random123KnownAnswers) {
  const Kat kats[] = {
      {{0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u},
       {0x00000000u, 0x00000000u},
       {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       {0xffffffffu, 0xffffffffu},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Kat& k : kats) {
    const Philox4 r = philox4x32_10(k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3], k.key[0], k.key[1]);
    for (int w = 0; w < 4; ++w) EXPECT_EQ(r.w[w], k.want[w]) << "word " << w;
  }
}

TEST(Philox, KeepThresholdEdges) {
  EXPECT_EQ(keep_threshold(0.5), 0x80000000u);
  EXPECT_EQ(keep_threshold(0.25), 0x40000000u);
  EXPECT_EQ(keep_threshold(0.7), 3006477107u);  // floor(0.7 * 2^32) = floor(3006477107.2)
  EXPECT_EQ(keep_threshold(0.9), 3865470566u);  // floor(3865470566.4)
  EXPECT_EQ(keep_threshold(std::ldexp(1.0, -32)), 1u);
  EXPECT_EQ(keep_threshold(std::ldexp(1.0, -33)), 0u);
  EXPECT_EQ(keep_threshold(1.0 - std::ldexp(1.0, -32)), 0xffffffffu);
  EXPECT_EQ(keep_threshold(1.0 - std::ldexp(1.0, -31)), 0xfffffffeu);
  EXPECT_EQ(keep_threshold(1.0), 0xffffffffu);  // saturated (keep_prob 1 draws nothing anyway)
  EXPECT_EQ(keep_threshold(std::nextafter(1.0, 0.0)), 0xffffffffu);
}

// e -> counter offset + e/4 (64-bit, low word first, carrying into the high word), word e%4;
// key = (seed low, seed high); keep iff word < threshold (strict).
TEST(Philox, DropoutKeepIndexing) {
  const uint64_t seeds[] = {0, 10, 0x123456789abcdef0ull};
  const uint64_t offsets[] = {0, 7, 0xfffffffeull, 0xffffffffull, 0x1234ffffffffull};
  for (uint64_t seed : seeds) {
    for (uint64_t offset : offsets) {
      for (uint64_t e = 0; e < 64; ++e) {
        const uint64_t c = offset + e / 4;
        const Philox4 r = philox4x32_10(uint32_t(c & 0xffffffffu), uint32_t(c >> 32), 0, 0,
                                        uint32_t(seed & 0xffffffffu), uint32_t(seed >> 32));
        const uint32_t word = r.w[e % 4];
        EXPECT_EQ(dropout_words(seed, offset, e / 4).w[e % 4], word);
        EXPECT_FALSE(dropout_keep(seed, offset, e, word)) << "keep must be strict";
        if (word != 0xffffffffu) {
          EXPECT_TRUE(dropout_keep(seed, offset, e, word + 1));
        }
        EXPECT_FALSE(dropout_keep(seed, offset, e, 0));
      }
    }
  }
  // The carry really reaches the high counter word: offset 0xffffffff + quad 1 = (0, 1).
  const Philox4 carry = dropout_words(5, 0xffffffffull, 1);
  const Philox4 direct = philox4x32_10(0, 1, 0, 0, 5, 0);
  for (int w = 0; w < 4; ++w) EXPECT_EQ(carry.w[w], direct.w[w]);
  // Large element indices (beyond 2^32) are not truncated.
  const uint64_t big = (uint64_t(3) << 33) + 6;  // quad 3*2^31 + 1, word 2
  const Philox4 rb = philox4x32_10(uint32_t((big / 4) & 0xffffffffu), uint32_t((big / 4) >> 32), 0, 0, 1, 0);
  EXPECT_EQ(dropout_words(1, 0, big / 4).w[2], rb.w[2]);
  EXPECT_EQ(dropout_keep(1, 0, big, 0x80000000u), rb.w[2] < 0x80000000u);
}

TEST(Philox, KeepRateMatchesKeepProb) {
  const double probs[] = {0.1, 0.5, 0.7, 0.9};
  const int64_t n = 1 << 20;
  for (double kp : probs) {
    const uint32_t thr = keep_threshold(kp);
    int64_t kept = 0;
    for (int64_t e = 0; e < n; ++e) kept += dropout_keep(42, 1000, uint64_t(e), thr);
    const double rate = double(kept) / double(n);
    const double sigma = std::sqrt(kp * (1 - kp) / double(n));
    EXPECT_NEAR(rate, kp, 6 * sigma) << "keep_prob " << kp;
  }
}

}  // namespace
}  // namespace speedattn
