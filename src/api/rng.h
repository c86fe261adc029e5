// Internal side of the process-wide dropout generator (public side: manual_seed, rng_state).
#pragma once

#include <cstdint>

#include "speedattn/speedattn.h"

namespace speedattn {

// Returns the current state and advances its offset by ceil(numels / 4), atomically.
RngState rng_draw(int64_t numels);

}  // namespace speedattn
