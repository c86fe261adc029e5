// The process-wide dropout generator (SPEC §7): (seed, offset); manual_seed(s) sets (s, 0);
// each call with keep_prob < 1 takes the current state and advances offset by ceil(numels/4).
#include <mutex>

#include "speedattn/speedattn.h"

namespace speedattn {
namespace {
std::mutex g_mutex;
RngState g_state{0, 0};  // seed 0 until manual_seed is called
}  // namespace

void manual_seed(int64_t seed) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_state = RngState{seed, 0};
}

RngState rng_state() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_state;
}

RngState reserve_rng(int64_t numels) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const RngState used = g_state;
  g_state.offset += (numels + 3) / 4;
  return used;
}

}  // namespace speedattn
