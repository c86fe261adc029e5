// The persistent worker pool of src/common/thread_pool.h and the public
// set_num_threads / get_num_threads.
//
// Guarantees: parallel_for(n, fn) runs fn(task, thread) exactly once for every task in
// [0, n) (unless a task throws: then remaining tasks may be skipped and the first exception
// is rethrown on the caller), with thread in [0, min(get_num_threads(), n)); the caller is
// thread 0. Tasks are handed out by one atomic counter. A parallel_for issued from inside
// fn (nested) runs inline on the calling thread. Top-level calls from different user
// threads are serialised. Workers sleep on a condition variable between jobs; the pool is
// created on first use, grows when set_num_threads asks for more, is never torn down
// (intentionally leaked, so exit() never waits on it) and is recreated in a forked child.
#include "common/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <fstream>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "speedattn/speedattn.h"

#if defined(__linux__)
#include <sched.h>
#include <unistd.h>
#endif

namespace speedattn {

namespace {

using TaskFn = std::function<void(int64_t, int)>;

thread_local bool t_in_pool = false;  // inside a worker, or inside fn on the calling thread
thread_local int t_index = 0;         // this thread's index while t_in_pool

// Physical cores usable by this process: distinct (package, core) pairs among the CPUs of
// the affinity mask (Linux sysfs topology); logical CPUs when the topology is unreadable.
int physical_cores() {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n_logical = CPU_COUNT(&set);
    std::set<std::pair<long, long>> cores;
    bool ok = n_logical > 0;
    for (int cpu = 0; ok && cpu < CPU_SETSIZE; ++cpu) {
      if (!CPU_ISSET(cpu, &set)) continue;
      const std::string dir = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
      long core = -1, pkg = -1;
      std::ifstream fc(dir + "core_id"), fp(dir + "physical_package_id");
      if (!(fc >> core) || !(fp >> pkg)) ok = false;
      cores.emplace(pkg, core);
    }
    if (ok && !cores.empty()) return int(cores.size());
    if (n_logical > 0) return n_logical;
  }
#endif
  const unsigned hc = std::thread::hardware_concurrency();
  return hc > 0 ? int(hc) : 1;
}

std::atomic<int> g_num_threads{0};  // 0: not yet set (default computed on first read)

// Back-to-back jobs (a backward's passes, many small calls) would otherwise pay a futex
// sleep/wake per job (measured ~65 us per 3-task job on the 2-vCPU dev machine, test
// ThreadPool.ManySmallJobs); a short bounded spin before sleeping avoids most of it.
constexpr int kSpinIterations = 2000;  // ~ tens of microseconds of pause instructions

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

template <class Pred>
bool spin_until(Pred pred) {
  for (int s = 0; s < kSpinIterations; ++s) {
    if (pred()) return true;
    cpu_relax();
  }
  return pred();
}

struct Pool {
  std::mutex job_mu;  // held for the whole of one top-level parallel_for
  std::mutex mu;      // guards the fields below
  std::condition_variable wake, done;
  std::vector<std::thread> workers;  // worker w has thread index w + 1
  std::atomic<uint64_t> generation{0};  // written under mu; read lock-free while spinning
  const TaskFn* fn = nullptr;
  int64_t n_tasks = 0;
  int participants = 0;  // thread indices [0, participants) work on the current job
  std::atomic<int> active{0};  // workers of the current job not yet finished (written under mu)
  // Per thread index (under mu): the last job whose participation is settled, by the worker
  // joining it or by the caller excusing it (every task ran before it woke; see parallel_for).
  std::vector<uint64_t> settled;
  std::exception_ptr error;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
#if defined(__linux__)
  pid_t pid = getpid();
#endif

  void run_tasks(const TaskFn& f, int64_t n, int index) {
    while (!failed.load(std::memory_order_relaxed)) {
      const int64_t t = next.fetch_add(1, std::memory_order_relaxed);
      if (t >= n) break;
      try {
        f(t, index);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu);
        if (!error) error = std::current_exception();
        failed.store(true, std::memory_order_relaxed);
      }
    }
  }

  void worker_main(int index) {
    t_in_pool = true;
    t_index = index;
    uint64_t seen = 0;
    for (;;) {
      spin_until([&] { return generation.load(std::memory_order_acquire) != seen; });
      std::unique_lock<std::mutex> lk(mu);
      wake.wait(lk, [&] { return generation.load(std::memory_order_relaxed) != seen; });
      seen = generation.load(std::memory_order_relaxed);
      // A participant of a job cannot miss it: the job's caller waits for every participant
      // that joined, and excuses the others.
      if (index >= participants || settled[size_t(index)] == seen) continue;
      settled[size_t(index)] = seen;
      const TaskFn* f = fn;
      const int64_t n = n_tasks;
      lk.unlock();
      run_tasks(*f, n, index);
      lk.lock();
      if (active.fetch_sub(1) == 1) done.notify_all();
    }
  }

  // Call with job_mu held.
  void ensure_workers(int count) {
    {
      std::lock_guard<std::mutex> lk(mu);
      if (int(settled.size()) < count + 1) settled.resize(size_t(count + 1), 0);
    }
    while (int(workers.size()) < count) {
      const int index = int(workers.size()) + 1;
      workers.emplace_back([this, index] { worker_main(index); });
    }
  }
};

Pool& pool() {
  static std::mutex mu;
  static Pool* p = nullptr;
  std::lock_guard<std::mutex> lk(mu);
#if defined(__linux__)
  // After fork() the child has none of the parent's workers: abandon (leak) that pool.
  if (p && p->pid != getpid()) p = nullptr;
#endif
  if (!p) p = new Pool();  // intentionally leaked
  return *p;
}

void run_inline(int64_t n_tasks, const TaskFn& fn) {
  const bool was_in = t_in_pool;
  const int index = was_in ? t_index : 0;
  t_in_pool = true;
  t_index = index;
  try {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, index);
  } catch (...) {
    t_in_pool = was_in;
    throw;
  }
  t_in_pool = was_in;
}

}  // namespace

void set_num_threads(int n) {
  if (n < 1) throw ValueError("num_threads: got " + std::to_string(n) + ", expected an integer >= 1");
  g_num_threads.store(n);
}

int get_num_threads() {
  int n = g_num_threads.load();
  if (n > 0) return n;
  static const int kDefault = physical_cores();
  int expected = 0;
  g_num_threads.compare_exchange_strong(expected, kDefault);
  return g_num_threads.load();
}

int pool_threads() { return get_num_threads(); }

void parallel_for(int64_t n_tasks, const std::function<void(int64_t task, int thread)>& fn) {
  if (n_tasks <= 0) return;
  const int threads = get_num_threads();
  if (t_in_pool || threads == 1 || n_tasks == 1) {
    run_inline(n_tasks, fn);
    return;
  }
  Pool& P = pool();
  std::lock_guard<std::mutex> job(P.job_mu);
  const int participants = int(std::min<int64_t>(threads, n_tasks));
  P.ensure_workers(participants - 1);
  {
    std::lock_guard<std::mutex> lk(P.mu);
    P.fn = &fn;
    P.n_tasks = n_tasks;
    P.participants = participants;
    P.active.store(participants - 1);
    P.error = nullptr;
    P.next.store(0);
    P.failed.store(false);
    P.generation.fetch_add(1, std::memory_order_release);
  }
  P.wake.notify_all();
  t_in_pool = true;
  t_index = 0;
  P.run_tasks(fn, n_tasks, 0);
  t_in_pool = false;
  std::exception_ptr err;
  spin_until([&] { return P.active.load(std::memory_order_acquire) == 0; });
  {
    std::unique_lock<std::mutex> lk(P.mu);
    // Every task has been claimed (run_tasks returned). A worker that has not joined yet was
    // asleep when the job was posted and would only wake to find nothing left: excuse it
    // instead of waiting for its wake-up (~50 us per job on a VM; a small call is ~100 us).
    const uint64_t g = P.generation.load(std::memory_order_relaxed);
    for (int w = 1; w < participants; ++w)
      if (P.settled[size_t(w)] != g) {
        P.settled[size_t(w)] = g;
        P.active.fetch_sub(1);
      }
    P.done.wait(lk, [&] { return P.active.load() == 0; });
    err = P.error;
    P.error = nullptr;
    P.fn = nullptr;
  }
  if (err) std::rethrow_exception(err);
}

}  // namespace speedattn
