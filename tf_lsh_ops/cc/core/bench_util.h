// What the core's benchmarks (cc/core/*_bench.cc) share: threads and a median timer.
#ifndef TF_LSH_OPS_CC_CORE_BENCH_UTIL_H_
#define TF_LSH_OPS_CC_CORE_BENCH_UTIL_H_

#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

#include "tf_lsh_ops/cc/core/parallel.h"

namespace tf_lsh {

// Splits [0, total) into `threads` contiguous shards on std::threads.
inline ParallelFor ThreadsFor(int threads) {
  return [threads](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      const int64_t begin = total * t / threads, end = total * (t + 1) / threads;
      if (begin < end) workers.emplace_back(fn, begin, end);
    }
    for (auto& w : workers) w.join();
  };
}

// Median wall time of `reps` calls of f, in milliseconds.
template <typename F>
double MedianMs(F&& f, int reps = 9) {
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    f();
    times.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count());
  }
  std::sort(times.begin(), times.end());
  return times[reps / 2];
}

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_BENCH_UTIL_H_
