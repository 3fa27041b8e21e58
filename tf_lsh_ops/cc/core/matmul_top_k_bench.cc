// MatmulTopK against its floor, the [batch, units] scores from one MatMul over keys transposed
// beforehand (what the fused op never forms).
//   bazel run //tf_lsh_ops:matmul_top_k_bench -- [threads] [case]
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "tf_lsh_ops/cc/core/bench_util.h"
#include "tf_lsh_ops/cc/core/matmul_top_k.h"
#include "tf_lsh_ops/cc/core/vector_ops.h"

int main(int argc, char** argv) {
  using tf_lsh::MedianMs;
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const int only = argc > 2 ? std::atoi(argv[2]) : -1;  // one case, by its position
  // One thread: the calling one (std::threads started per call would be timed too).
  const tf_lsh::ParallelFor parallel_for =
      threads == 1 ? tf_lsh::SerialFor() : tf_lsh::ThreadsFor(threads);
  constexpr int64_t kDim = 32;
  struct Case {
    int64_t batch, units, k;
  };
  const Case cases[] = {{128, 1024, 50},  {128, 4096, 50},   {128, 16384, 50}, {128, 65536, 50},
                        {1, 65536, 50},   {8, 65536, 50},    {128, 16384, 3000},
                        {128, 65536, 3000}};
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::printf("threads %d, %s\n", threads, tf_lsh::UsesAvx2() ? "avx2" : "portable");
  for (int i = 0; i < static_cast<int>(sizeof(cases) / sizeof(cases[0])); ++i) {
    if (only >= 0 && i != only) continue;
    const Case& c = cases[i];
    std::vector<float> queries(c.batch * kDim), keys(c.units * kDim), biases(c.units);
    for (float& x : queries) x = normal(rng);
    for (float& x : keys) x = normal(rng);
    for (float& x : biases) x = normal(rng);
    std::vector<int32_t> ids(c.batch * c.k);
    const double fused = MedianMs(
        [&] {
          tf_lsh::MatmulTopK(c.batch, kDim, c.units, c.k, queries.data(), keys.data(),
                             biases.data(), ids.data(), parallel_for);
        },
        31);
    std::vector<float> keys_t(kDim * c.units), scores(c.batch * c.units);
    for (int64_t u = 0; u < c.units; ++u) {
      for (int64_t d = 0; d < kDim; ++d) keys_t[d * c.units + u] = keys[u * kDim + d];
    }
    const double matmul = MedianMs(
        [&] {
          parallel_for(c.batch, c.units * kDim, [&](int64_t begin, int64_t end) {
            tf_lsh::MatMul(queries.data() + begin * kDim, kDim, keys_t.data(), c.units,
                           scores.data() + begin * c.units, c.units, end - begin, c.units,
                           kDim);
          });
        },
        31);
    std::printf("batch %4ld units %6ld k %5ld: fused %8.3f ms, scores alone %8.3f ms\n",
                static_cast<long>(c.batch), static_cast<long>(c.units), static_cast<long>(c.k),
                fused, matmul);
  }
  return 0;
}
