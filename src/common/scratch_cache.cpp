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

// Cached blocks, oldest first; take() reuses the smallest block that fits and, when
// max_ratio != 0, is at most max_ratio times the request; give() drops the oldest blocks
// while more than cap bytes are held.
class Cache {
 public:
  Cache(size_t cap, size_t max_ratio) : cap_(cap), max_ratio_(max_ratio) {}

  ScratchBlock take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      size_t best = blocks_.size();
      for (size_t i = 0; i < blocks_.size(); ++i) {
        const size_t b = blocks_[i].bytes;
        if (b >= bytes && (max_ratio_ == 0 || b / max_ratio_ <= bytes) &&
            (best == blocks_.size() || b < blocks_[best].bytes))
          best = i;
      }
      if (best < blocks_.size()) {
        const ScratchBlock b = blocks_[best];
        blocks_.erase(blocks_.begin() + std::ptrdiff_t(best));
        held_ -= b.bytes;
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

  void give(ScratchBlock b) {
    if (!b.p) return;
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks_.push_back(b);
      held_ += b.bytes;
      while (held_ > cap_) {
        drop.push_back(blocks_.front().p);
        held_ -= blocks_.front().bytes;
        blocks_.erase(blocks_.begin());
      }
    }
    for (void* p : drop) std::free(p);
  }

  size_t held() {
    std::lock_guard<std::mutex> lock(mu_);
    return held_;
  }

 private:
  const size_t cap_, max_ratio_;
  std::mutex mu_;
  std::vector<ScratchBlock> blocks_;
  size_t held_ = 0;
};

// Never destroyed: calls (and arrays returning their blocks) may outlive static destruction.
Cache& scratch_cache() {
  static Cache* c = new Cache(kScratchCacheBytes, 0);
  return *c;
}
Cache& output_cache() {
  static Cache* c = new Cache(kOutputCacheBytes, 2);
  return *c;
}

}  // namespace

ScratchBlock scratch_take(size_t bytes) { return scratch_cache().take(bytes); }
void scratch_give(ScratchBlock b) { scratch_cache().give(b); }
size_t scratch_cached_bytes() { return scratch_cache().held(); }

ScratchBlock output_take(size_t bytes) { return output_cache().take(bytes); }
void output_give(ScratchBlock b) { output_cache().give(b); }
size_t output_cached_bytes() { return output_cache().held(); }

}  // namespace speedattn
