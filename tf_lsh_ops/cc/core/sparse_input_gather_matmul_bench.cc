// Times the lazy per-weight backward updates (Adam and SGD) of a wide hidden layer over sparse
// inputs, without TensorFlow, at bench_wide's 16k shape: a batch of 128, each example's 50
// active units of the previous layer as inputs, 50 active units here. Beside them, the row
// grouping and the forward product (whose scattered reads the grouped passes' values' gradient
// repeats, and the Hogwild pass folds into its updates).
//   bazel run -c opt //tf_lsh_ops:sparse_input_gather_matmul_bench -- [width] [threads]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "tf_lsh_ops/cc/core/bench_util.h"
#include "tf_lsh_ops/cc/core/row_groups.h"
#include "tf_lsh_ops/cc/core/sparse_input_gather_matmul.h"

namespace tf_lsh {
namespace {

void Run(int64_t width, int threads) {
  const int64_t batch = 128, active = 50, nonzeros = 50;
  std::mt19937 rng(3);
  std::uniform_int_distribution<int32_t> unit(0, static_cast<int32_t>(width) - 1);
  std::normal_distribution<float> normal;
  std::vector<int64_t> offsets(batch + 1), features;
  std::vector<float> values;
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<int64_t> row;
    while (static_cast<int64_t>(row.size()) < nonzeros) {
      const int64_t f = unit(rng);
      if (std::find(row.begin(), row.end(), f) == row.end()) row.push_back(f);
    }
    std::sort(row.begin(), row.end());
    for (int64_t f : row) {
      features.push_back(f);
      values.push_back(std::abs(normal(rng)));
    }
    offsets[b + 1] = static_cast<int64_t>(features.size());
  }
  std::vector<int32_t> indices(batch * active);
  for (auto& id : indices) id = unit(rng);
  std::vector<float> grad_out(batch * active);
  for (auto& g : grad_out) g = normal(rng) * 1e-3f;
  std::vector<float> w(width * width, 0.01f), m(width * width, 0.f), v(width * width, 0.f);
  const SparseRowsView inputs{offsets.data(), features.data(), values.data()};
  const GatherMatmulShape shape{batch, width, width, active};
  const ParallelFor parallel_for = ThreadsFor(threads);
  const ActiveRows rows(indices.data(), indices.size(), parallel_for, width);
  std::vector<float> grad_values(values.size()), grad_bias(rows.size());
  const AdamHyperparameters hyper{1e-3f, 0.9f, 0.999f, 1e-7f};
  const double adam = MedianMs([&] {
    SparseInputGatherMatmulBackwardLazyAdam(shape, inputs, indices.data(), grad_out.data(),
                                            rows.view(), hyper, {w.data(), m.data(), v.data()},
                                            grad_values.data(), grad_bias.data(), parallel_for);
  }, 21);
  const double sgd = MedianMs([&] {
    SparseInputGatherMatmulBackwardLazySgd(shape, inputs, indices.data(), grad_out.data(),
                                           rows.view(), 1e-3f, w.data(), grad_values.data(),
                                           grad_bias.data(), parallel_for);
  }, 21);
  const double hogwild = MedianMs([&] {
    SparseInputGatherMatmulBackwardHogwildSgd(shape, inputs, indices.data(), grad_out.data(),
                                              rows.view(), 1e-3f, w.data(), grad_values.data(),
                                              grad_bias.data(), parallel_for);
  }, 21);
  std::vector<float> biases(width, 0.f), out(batch * active);
  const double forward = MedianMs([&] {
    SparseInputGatherMatmulForward(shape, inputs, w.data(), biases.data(), indices.data(),
                                   out.data(), parallel_for);
  }, 21);
  const double grouping = MedianMs([&] {
    const ActiveRows again(indices.data(), indices.size(), parallel_for, width);
  }, 21);
  std::printf("width %lld, %d thread(s): rows %lld, lazy Adam %.2f ms, lazy SGD %.2f ms "
              "(Hogwild %.2f ms), "
              "grouping %.2f ms, forward %.2f ms\n",
              static_cast<long long>(width), threads, static_cast<long long>(rows.size()),
              adam, sgd, hogwild, grouping, forward);
}

}  // namespace
}  // namespace tf_lsh

int main(int argc, char** argv) {
  const int64_t width = argc > 1 ? std::atoll(argv[1]) : 16384;
  if (argc > 2) {
    tf_lsh::Run(width, std::atoi(argv[2]));
  } else {
    for (int threads : {1, 2, 1, 2}) tf_lsh::Run(width, threads);
  }
  return 0;
}
