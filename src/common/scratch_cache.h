// Large per-call scratch kept across calls: the forward's K/V packs and the backward's dQ
// partials and packed Q / dY (tens of MiB per call).
//
// Why: a fresh multi-MiB buffer costs the kernel a page fault and a zero fill per page, and glibc
// hands blocks this large back to the kernel when they are freed, so every call paid it again:
// ~13% of a bf16 backward (dev/bwd_06_cold_calls.md), ~15 us per (kv head, 256 keys) of forward
// pack, a quarter of a causal block's work (dev/17_causal_fixed_cost.txt).
//
// How: one process-wide cache (scratch_cache.cpp, one instance whatever ISA file uses it).
// Blocks are 2 MiB-aligned, advised to use transparent huge pages, and NEVER zeroed: every user
// writes what it reads. A call takes the smallest cached block that fits (else a new one) and
// gives it back when it ends; the cache then frees its oldest blocks while it holds more than
// kScratchCacheBytes. Thread-safe: concurrent calls each own the blocks they took, so memory is
// bounded by the calls in flight plus the cap.
#pragma once

#include <cstddef>

namespace speedattn {

// Retained between calls at most (the scratch of one B1 N16 S4096 D128 bf16 backward, or of a
// forward and a backward at S2048).
constexpr size_t kScratchCacheBytes = size_t(128) << 20;

struct ScratchBlock {
  void* p = nullptr;
  size_t bytes = 0;
};
ScratchBlock scratch_take(size_t bytes);  // throws std::bad_alloc
void scratch_give(ScratchBlock b);
size_t scratch_cached_bytes();  // what the cache holds now (tests)

// A second cache, of the same blocks, for the outputs handed to Python callers (_core.cpp
// output_block). A fresh multi-MiB output is page-faulted in by the kernel as it writes it:
// ~4100 faults, 3-5 ms in a bf16 B1 N16 S4096 forward whenever glibc maps it anew, which it
// does in some calls depending on its heap (docs/performance.md "Causal"). Outputs freed by
// the caller come back here and the next call's outputs reuse their pages. A block is reused
// only for requests of at least half its size; outputs the caller keeps are not counted.
constexpr size_t kOutputCacheBytes = size_t(128) << 20;
ScratchBlock output_take(size_t bytes);  // throws std::bad_alloc
void output_give(ScratchBlock b);
size_t output_cached_bytes();

// A cached block held for one call: get() returns at least `count` T (uninitialised), the same
// block while it is large enough; the destructor gives it back.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { scratch_give(b_); }
  template <class T>
  T* get(size_t count) {
    const size_t bytes = count * sizeof(T) + 64;
    if (b_.bytes < bytes) {
      scratch_give(b_);
      b_ = ScratchBlock{};
      b_ = scratch_take(bytes);
    }
    return static_cast<T*>(b_.p);
  }

 private:
  ScratchBlock b_;
};

}  // namespace speedattn
