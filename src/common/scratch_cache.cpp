#include "common/scratch_cache.h"

#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace speedattn {
namespace {

constexpr size_t kPage = size_t(2) << 20;

struct Cache {
  std::mutex mu;
  std::vector<ScratchBlock> blocks;  // oldest first
  size_t held = 0;
};
Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: calls may run during static destruction
  return *c;
}

}  // namespace

ScratchBlock scratch_take(size_t bytes) {
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    size_t best = c.blocks.size();
    for (size_t i = 0; i < c.blocks.size(); ++i)
      if (c.blocks[i].bytes >= bytes && (best == c.blocks.size() || c.blocks[i].bytes < c.blocks[best].bytes))
        best = i;
    if (best < c.blocks.size()) {
      const ScratchBlock b = c.blocks[best];
      c.blocks.erase(c.blocks.begin() + std::ptrdiff_t(best));
      c.held -= b.bytes;
      return b;
    }
  }
  const size_t n = (bytes + kPage - 1) / kPage * kPage;
  void* p = std::aligned_alloc(kPage, n);
  if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  madvise(p, n, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
  return ScratchBlock{p, n};
}

void scratch_give(ScratchBlock b) {
  if (!b.p) return;
  Cache& c = cache();
  std::vector<void*> drop;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    c.blocks.push_back(b);
    c.held += b.bytes;
    while (c.held > kScratchCacheBytes) {
      drop.push_back(c.blocks.front().p);
      c.held -= c.blocks.front().bytes;
      c.blocks.erase(c.blocks.begin());
    }
  }
  for (void* p : drop) std::free(p);
}

size_t scratch_cached_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.held;
}

}  // namespace speedattn
