// A small persistent worker pool. parallel_for hands out task indices dynamically (an atomic
// counter); results must depend only on the task index, never on which thread ran it, so
// outputs are bit-identical for any thread count.
#pragma once

#include <cstdint>
#include <functional>

namespace speedattn {

// Runs fn(task, thread) for task in [0, n_tasks) on up to get_num_threads() threads
// (thread in [0, threads)); returns when all tasks are done. Exceptions from fn are
// rethrown on the caller (the first one). Not reentrant from inside fn (runs inline there).
void parallel_for(int64_t n_tasks, const std::function<void(int64_t task, int thread)>& fn);

int pool_threads();  // == get_num_threads()

}  // namespace speedattn
