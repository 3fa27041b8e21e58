// A parallel-for callback, so that the core algorithms know nothing of TensorFlow.
//
// The op kernels pass TensorFlow's CPU thread pool; the C++ tests pass `SerialFor()`.
#ifndef TF_LSH_OPS_CC_CORE_PARALLEL_H_
#define TF_LSH_OPS_CC_CORE_PARALLEL_H_

#include <cstdint>
#include <functional>

namespace tf_lsh {

// Calls `fn(begin, end)` on disjoint shards that cover [0, total). `cost_per_unit` is a rough
// count of CPU cycles per unit, used to decide how finely to shard.
using ParallelFor = std::function<void(int64_t total, int64_t cost_per_unit,
                                       const std::function<void(int64_t, int64_t)>& fn)>;

// Runs everything on the calling thread, in one shard.
inline ParallelFor SerialFor() {
  return [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    if (total > 0) fn(0, total);
  };
}

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_PARALLEL_H_
