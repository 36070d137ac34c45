// Helpers shared by wsol_jax's XLA:CPU FFI kernels (and benchmarks/blas_dense.py): run
// tasks on XLA's intra-op thread pool, each calling single-threaded OpenBLAS.
#ifndef WSOL_JAX_KERNELS_POOL_TASKS_H_
#define WSOL_JAX_KERNELS_POOL_TASKS_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "cblas.h"
#include "xla/ffi/api/ffi.h"

namespace wsol {

// Runs fn(0..n-1) on the calling thread and XLA's intra-op pool. Items are claimed from a
// shared counter, so the caller never waits for a task that has not started (two kernels
// running at once on a small pool cannot deadlock); late tasks find nothing and return.
inline void ParallelFor(xla::ffi::ThreadPool& pool, int64_t n, std::function<void(int64_t)> fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    int64_t n;
    std::function<void(int64_t)> fn;
    std::mutex mu;
    std::condition_variable cv;
  };
  auto st = std::make_shared<State>();
  st->n = n;
  st->fn = std::move(fn);
  auto work = [st] {
    for (int64_t i; (i = st->next.fetch_add(1)) < st->n;) {
      st->fn(i);
      if (st->done.fetch_add(1) + 1 == st->n) {
        std::lock_guard<std::mutex> l(st->mu);
        st->cv.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> l(st->mu);
  st->cv.wait(l, [&] { return st->done.load() == st->n; });
}

// OpenBLAS runs single-threaded inside the tasks (the parallelism is over tasks).
inline void OneBlasThread() {
  static bool once = (scipy_openblas_set_num_threads(1), true);
  (void)once;
}

}  // namespace wsol

#endif  // WSOL_JAX_KERNELS_POOL_TASKS_H_
