// A minimal check macro and helpers for the core's cc_tests: they build without TensorFlow or
// gtest.
#ifndef TF_LSH_OPS_CC_CORE_TEST_UTIL_H_
#define TF_LSH_OPS_CC_CORE_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <random>
#include <vector>

#include "tf_lsh_ops/cc/core/parallel.h"

#define CHECK_TRUE(cond)                                                         \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::exit(1);                                                              \
    }                                                                            \
  } while (0)

#define CHECK_NEAR(a, b, tol) CHECK_TRUE(std::fabs((a) - (b)) <= (tol))

namespace tf_lsh {

// Fills each vector in turn with draws of `normal` from `rng`.
inline void FillNormal(std::normal_distribution<float>* normal, std::mt19937* rng,
                       std::initializer_list<std::vector<float>*> vectors) {
  for (std::vector<float>* vector : vectors) {
    for (float& v : *vector) v = (*normal)(*rng);
  }
}

// Runs the shards of every call in reverse order, a few units each: results must not depend on
// how work is split or in which order shards finish.
inline ParallelFor ReversedShards() {
  return [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    constexpr int64_t kShard = 3;
    for (int64_t end = total; end > 0; end -= kShard) fn(std::max<int64_t>(end - kShard, 0), end);
  };
}

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_TEST_UTIL_H_
