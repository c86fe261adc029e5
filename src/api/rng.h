// Internal side of the process-wide dropout generator (public side: manual_seed, rng_state).
#pragma once

#include <cstdint>

#include "speedattn/speedattn.h"

namespace speedattn {


}  // namespace speedattn
