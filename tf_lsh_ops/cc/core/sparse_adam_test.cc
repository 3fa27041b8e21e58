#include "tf_lsh_ops/cc/core/sparse_adam.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "tf_lsh_ops/cc/core/test_util.h"

namespace {

// Each distinct row of `indices` with its gradient rows summed, in double precision.
std::map<int32_t, std::vector<double>> SummedRows(int64_t dim, const std::vector<int32_t>& indices,
                                                  const std::vector<float>& grad) {
  std::map<int32_t, std::vector<double>> summed;
  for (size_t i = 0; i < indices.size(); ++i) {
    std::vector<double>& g = summed[indices[i]];
    g.resize(dim, 0.0);
    for (int64_t d = 0; d < dim; ++d) g[d] += grad[i * dim + d];
  }
  return summed;
}

// Lazy rowwise RMSprop in double precision, one distinct row at a time.
void ReferenceRowwiseRmsprop(const tf_lsh::RowwiseRmspropHyperparameters& hyper, int64_t dim,
                             const std::vector<int32_t>& indices, const std::vector<float>& grad,
                             std::vector<double>* var, std::vector<double>* v) {
  for (const auto& [row, g] : SummedRows(dim, indices, grad)) {
    double mean_square = 0.0;
    for (double x : g) mean_square += x * x / dim;
    double& vr = (*v)[row];
    vr += (mean_square - vr) * (1.0 - hyper.beta2);
    for (int64_t d = 0; d < dim; ++d) {
      (*var)[row * dim + d] -= hyper.alpha * g[d] / (std::sqrt(vr) + hyper.epsilon);
    }
  }
}

// Lazy Adam without a first moment (beta1 = 0) in double precision.
void ReferenceAdamNoMomentum(const tf_lsh::AdamHyperparameters& hyper, int64_t dim,
                             const std::vector<int32_t>& indices, const std::vector<float>& grad,
                             std::vector<double>* var, std::vector<double>* v) {
  for (const auto& [row, g] : SummedRows(dim, indices, grad)) {
    for (int64_t d = 0; d < dim; ++d) {
      double& vd = (*v)[row * dim + d];
      vd += (g[d] * g[d] - vd) * (1.0 - hyper.beta2);
      (*var)[row * dim + d] -= hyper.alpha * g[d] / (std::sqrt(vd) + hyper.epsilon);
    }
  }
}

// SparseAdamApply with a null m: against the reference, with duplicates and shards; rows not
// named keep their bits.
void TestSparseAdamWithoutFirstMoment(std::mt19937* rng) {
  std::normal_distribution<float> normal;
  const int64_t rows = 40;
  const tf_lsh::AdamHyperparameters hyper{0.01f, 0.f, 0.9f, 1e-7f};
  for (const int64_t dim : {1, 13}) {
    for (const std::vector<int32_t>& indices :
         {std::vector<int32_t>{1, 4, 5, 39}, std::vector<int32_t>{7, 3, 7, 0, 39, 3, 7}}) {
      for (const bool reversed_shards : {false, true}) {
        std::vector<float> var(rows * dim), v(rows * dim), grad(indices.size() * dim);
        tf_lsh::FillNormal(&normal, rng, {&var, &grad});
        for (float& x : v) x = std::fabs(normal(*rng));
        std::vector<double> ref_var(var.begin(), var.end()), ref_v(v.begin(), v.end());
        const std::vector<float> before = var;
        for (int step = 0; step < 3; ++step) {
          tf_lsh::SparseAdamApply(hyper, dim, indices.data(), grad.data(), indices.size(),
                                  var.data(), /*m=*/nullptr, v.data(),
                                  reversed_shards ? tf_lsh::ReversedShards() : tf_lsh::SerialFor());
          ReferenceAdamNoMomentum(hyper, dim, indices, grad, &ref_var, &ref_v);
        }
        for (int64_t i = 0; i < rows * dim; ++i) {
          CHECK_NEAR(v[i], ref_v[i], 1e-5 * (1.0 + ref_v[i]));
          CHECK_NEAR(var[i], ref_var[i], 1e-5);
        }
        for (int64_t r = 0; r < rows; ++r) {
          bool touched = false;
          for (int32_t i : indices) touched |= i == r;
          if (!touched) {
            CHECK_TRUE(std::memcmp(&var[r * dim], &before[r * dim], dim * sizeof(float)) == 0);
          }
        }
      }
    }
  }
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  const int64_t rows = 50;
  const tf_lsh::RowwiseRmspropHyperparameters hyper{0.01f, 0.9f, 1e-7f};
  for (const int64_t dim : {1, 13, 64}) {
    // Sorted distinct rows (the fast path), and unsorted rows with duplicates (grouped).
    for (const std::vector<int32_t>& indices :
         {std::vector<int32_t>{1, 4, 5, 20, 49}, std::vector<int32_t>{7, 3, 7, 0, 49, 3, 7}}) {
      for (const bool reversed_shards : {false, true}) {
        std::vector<float> var(rows * dim), v(rows), grad(indices.size() * dim);
        tf_lsh::FillNormal(&normal, &rng, {&var, &grad});
        for (float& x : v) x = std::fabs(normal(rng));
        std::vector<double> ref_var(var.begin(), var.end()), ref_v(v.begin(), v.end());
        const std::vector<float> before = var, v_before = v;
        for (int step = 0; step < 3; ++step) {  // the moment carries over between steps
          tf_lsh::SparseRowwiseRmspropApply(
              hyper, dim, indices.data(), grad.data(), indices.size(), var.data(), v.data(),
              reversed_shards ? tf_lsh::ReversedShards() : tf_lsh::SerialFor());
          ReferenceRowwiseRmsprop(hyper, dim, indices, grad, &ref_var, &ref_v);
        }
        for (int64_t r = 0; r < rows; ++r) {
          CHECK_NEAR(v[r], ref_v[r], 1e-5 * (1.0 + ref_v[r]));
          for (int64_t d = 0; d < dim; ++d) {
            CHECK_NEAR(var[r * dim + d], ref_var[r * dim + d], 1e-5);
          }
        }
        // Rows no index names keep their bits, weights and moment.
        for (int64_t r = 0; r < rows; ++r) {
          bool touched = false;
          for (int32_t i : indices) touched |= i == r;
          if (touched) continue;
          CHECK_TRUE(v[r] == v_before[r]);
          CHECK_TRUE(std::memcmp(&var[r * dim], &before[r * dim], dim * sizeof(float)) == 0);
        }
      }
    }
  }
  TestSparseAdamWithoutFirstMoment(&rng);
  std::printf("PASS\n");
  return 0;
}
