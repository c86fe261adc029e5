// common/scratch_cache: blocks are reused across calls (smallest fit), 2 MiB-aligned, and the
// cache never holds more than kScratchCacheBytes.
#include <gtest/gtest.h>

#include <cstdint>
#include <thread>
#include <vector>

#include "common/scratch_cache.h"

namespace sa = speedattn;

TEST(ScratchCache, ReusesTheSmallestBlockThatFits) {
  const size_t base = sa::scratch_cached_bytes();
  void *small_p, *big_p;
  {
    sa::Scratch a, b;
    small_p = a.get<float>(1 << 20);  // 4 MiB
    big_p = b.get<float>(4 << 20);    // 16 MiB
    EXPECT_EQ(reinterpret_cast<uintptr_t>(small_p) % (2u << 20), 0u);
    static_cast<float*>(small_p)[(1 << 20) - 1] = 1.f;  // the whole request is usable
  }
  EXPECT_GE(sa::scratch_cached_bytes(), base + (20u << 20));
  sa::Scratch c, d;
  EXPECT_EQ(c.get<uint8_t>(3u << 20), small_p);  // 3 MiB: the 4 MiB block, not the 16 MiB one
  EXPECT_EQ(d.get<uint8_t>(3u << 20), big_p);
}

TEST(ScratchCache, GrowsAndRetainsAtMostTheCap) {
  {
    std::vector<sa::Scratch> held(12);
    for (auto& s : held) s.get<uint8_t>(size_t(24) << 20);  // 288 MiB in flight
    EXPECT_NE(held[0].get<uint8_t>(size_t(24) << 20), held[1].get<uint8_t>(size_t(24) << 20));
  }
  EXPECT_LE(sa::scratch_cached_bytes(), sa::kScratchCacheBytes);
  sa::Scratch s;
  void* p = s.get<uint8_t>(1u << 20);
  EXPECT_EQ(s.get<uint8_t>(1u << 10), p);  // smaller requests keep the block
  EXPECT_NE(s.get<uint8_t>(size_t(200) << 20), nullptr);  // larger: another block
}

TEST(ScratchCache, ConcurrentCallsOwnTheirBlocks) {
  std::vector<std::thread> ts;
  std::vector<int> ok(8, 0);
  for (int t = 0; t < 8; ++t)
    ts.emplace_back([t, &ok] {
      for (int rep = 0; rep < 50; ++rep) {
        sa::Scratch s;
        int* p = s.get<int>(size_t(1 + t) << 18);
        for (size_t e = 0; e < (size_t(1 + t) << 18); e += 4096) p[e] = t;
        bool mine = true;
        for (size_t e = 0; e < (size_t(1 + t) << 18); e += 4096) mine &= p[e] == t;
        ok[size_t(t)] += mine;
      }
    });
  for (auto& th : ts) th.join();
  for (int t = 0; t < 8; ++t) EXPECT_EQ(ok[size_t(t)], 50) << t;
  EXPECT_LE(sa::scratch_cached_bytes(), sa::kScratchCacheBytes);
}

// The output cache (outputs handed to Python): the same blocks, but a cached block serves only
// requests of at least half its size, and it is separate from the scratch cache.
TEST(OutputCache, ReusesBlocksOfAtMostTwiceTheRequest) {
  const sa::ScratchBlock big = sa::output_take(size_t(16) << 20);
  void* const p = big.p;
  sa::output_give(big);
  EXPECT_GE(sa::output_cached_bytes(), size_t(16) << 20);
  const sa::ScratchBlock small = sa::output_take(size_t(2) << 20);  // 1/8 of the block: a new one
  EXPECT_NE(small.p, p);
  const sa::ScratchBlock half = sa::output_take(size_t(8) << 20);  // half: the cached block
  EXPECT_EQ(half.p, p);
  sa::Scratch s;  // scratch never takes an output block
  const sa::ScratchBlock again = sa::output_take(size_t(16) << 20);
  EXPECT_NE(s.get<uint8_t>(size_t(8) << 20), again.p);
  sa::output_give(small);
  sa::output_give(half);
  sa::output_give(again);
  EXPECT_LE(sa::output_cached_bytes(), sa::kOutputCacheBytes);
}
