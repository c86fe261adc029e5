// The worker pool (src/common/thread_pool.h) and set_num_threads / get_num_threads.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/thread_pool.h"
#include "speedattn/speedattn.h"

namespace speedattn {
namespace {

// Restores the thread count a test changed.
struct ThreadsGuard {
  int saved = get_num_threads();
  ~ThreadsGuard() { set_num_threads(saved); }
};

TEST(ThreadPool, DefaultIsPositive) {
  EXPECT_GE(get_num_threads(), 1);
  EXPECT_EQ(pool_threads(), get_num_threads());
}

TEST(ThreadPool, SetNumThreadsValidates) {
  ThreadsGuard guard;
  for (int bad : {0, -1, -100}) {
    try {
      set_num_threads(bad);
      FAIL() << "expected ValueError for " << bad;
    } catch (const ValueError& e) {
      EXPECT_NE(std::string(e.what()).find("num_threads"), std::string::npos) << e.what();
    }
  }
  set_num_threads(3);
  EXPECT_EQ(get_num_threads(), 3);
  EXPECT_EQ(pool_threads(), 3);
  set_num_threads(1);
  EXPECT_EQ(get_num_threads(), 1);
}

TEST(ThreadPool, EveryTaskRunsOnceWithValidThreadIndex) {
  ThreadsGuard guard;
  for (int threads : {1, 2, 3, 8}) {
    set_num_threads(threads);
    for (int64_t n : {0, 1, 2, 7, 64, 1000}) {
      std::vector<std::atomic<int>> count(size_t(n) + 1);
      std::atomic<int> bad_thread{0};
      parallel_for(n, [&](int64_t t, int th) {
        count[size_t(t)].fetch_add(1);
        if (th < 0 || th >= threads || th >= std::max<int64_t>(n, 1)) bad_thread.fetch_add(1);
      });
      for (int64_t t = 0; t < n; ++t) ASSERT_EQ(count[size_t(t)].load(), 1) << "threads " << threads << " n " << n;
      EXPECT_EQ(count[size_t(n)].load(), 0);
      EXPECT_EQ(bad_thread.load(), 0);
    }
  }
}

TEST(ThreadPool, UsesSeveralThreads) {
  ThreadsGuard guard;
  set_num_threads(4);
  std::vector<std::atomic<int>> seen(4);
  parallel_for(4000, [&](int64_t, int th) {
    seen[size_t(th)].fetch_add(1);
    std::this_thread::yield();
  });
  int total = 0;
  for (auto& s : seen) total += s.load();
  EXPECT_EQ(total, 4000);
}

TEST(ThreadPool, ExceptionPropagatesAndPoolSurvives) {
  ThreadsGuard guard;
  for (int threads : {1, 2, 4}) {
    set_num_threads(threads);
    EXPECT_THROW(parallel_for(100,
                              [&](int64_t t, int) {
                                if (t == 37) throw std::runtime_error("task 37 failed");
                              }),
                 std::runtime_error);
    try {
      parallel_for(10, [&](int64_t t, int) {
        if (t % 2 == 1) throw ValueError("odd task");
      });
      FAIL() << "expected an exception";
    } catch (const ValueError& e) {
      EXPECT_STREQ(e.what(), "odd task");
    }
    std::atomic<int64_t> sum{0};
    parallel_for(100, [&](int64_t t, int) { sum.fetch_add(t); });
    EXPECT_EQ(sum.load(), 4950);
  }
}

TEST(ThreadPool, NestedCallsRunInline) {
  ThreadsGuard guard;
  set_num_threads(4);
  std::vector<std::atomic<int>> count(16 * 16);
  std::atomic<int> mismatched{0};
  parallel_for(16, [&](int64_t outer, int th) {
    std::thread::id me = std::this_thread::get_id();
    parallel_for(16, [&](int64_t inner, int th2) {
      if (std::this_thread::get_id() != me || th2 != th) mismatched.fetch_add(1);
      count[size_t(outer * 16 + inner)].fetch_add(1);
    });
  });
  for (auto& c : count) ASSERT_EQ(c.load(), 1);
  EXPECT_EQ(mismatched.load(), 0);
  // The pool still works at top level afterwards.
  std::atomic<int> n{0};
  parallel_for(50, [&](int64_t, int) { n.fetch_add(1); });
  EXPECT_EQ(n.load(), 50);
}

TEST(ThreadPool, NestedExceptionPropagates) {
  ThreadsGuard guard;
  set_num_threads(3);
  EXPECT_THROW(parallel_for(8,
                            [&](int64_t outer, int) {
                              parallel_for(8, [&](int64_t inner, int) {
                                if (outer == 5 && inner == 3) throw std::logic_error("inner");
                              });
                            }),
               std::logic_error);
}

TEST(ThreadPool, ConcurrentCallersAreSerialisedSafely) {
  ThreadsGuard guard;
  set_num_threads(3);
  constexpr int kCallers = 4, kRounds = 50;
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&] {
      for (int r = 0; r < kRounds; ++r) parallel_for(20, [&](int64_t t, int) { total.fetch_add(t + 1); });
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(total.load(), int64_t(kCallers) * kRounds * 210);
}

TEST(ThreadPool, ManySmallJobs) {
  ThreadsGuard guard;
  set_num_threads(2);
  int64_t total = 0;
  for (int r = 0; r < 20000; ++r) {
    std::atomic<int> c{0};
    parallel_for(3, [&](int64_t, int) { c.fetch_add(1); });
    total += c.load();
  }
  EXPECT_EQ(total, 60000);
}

// Jobs posted while the worker sleeps (after an idle pause longer than its spin): the caller
// may run every task itself and excuse the worker; a worker that wakes late must neither run a
// task twice nor miss the next job. Short and long jobs alternate (long ones: the worker joins).
TEST(ThreadPool, JobsAfterIdlePausesRunEveryTaskOnce) {
  ThreadsGuard guard;
  set_num_threads(2);
  for (int r = 0; r < 300; ++r) {
    std::this_thread::sleep_for(std::chrono::microseconds(r % 3 == 0 ? 300 : 5));
    const int64_t n = r % 2 ? 3 : 64;
    std::vector<std::atomic<int>> count(static_cast<size_t>(n));
    parallel_for(n, [&](int64_t t, int) {
      if (n == 64) std::this_thread::sleep_for(std::chrono::microseconds(20));
      count[size_t(t)].fetch_add(1);
    });
    for (int64_t t = 0; t < n; ++t) ASSERT_EQ(count[size_t(t)].load(), 1) << "round " << r << " task " << t;
  }
}

}  // namespace
}  // namespace speedattn
