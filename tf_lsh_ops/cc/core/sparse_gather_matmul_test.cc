#include "tf_lsh_ops/cc/core/sparse_gather_matmul.h"

#include <cstdio>
#include <random>
#include <vector>

#include "tf_lsh_ops/cc/core/test_util.h"

namespace tf_lsh {
namespace {

void TestExampleFromHeader() {
  float x[2] = {1, 2}, w[6] = {1, 0, 0, 1, 1, 1}, bias[3] = {0, 0, 5}, out[2];
  int32_t ids[2] = {2, -1};
  SparseGatherMatmulForward({1, 2, 3, 2}, x, w, bias, ActiveRows(ids, 2).view(), out,
                            SerialFor());
  CHECK_NEAR(out[0], 8.f, 0.f);
  CHECK_NEAR(out[1], 0.f, 0.f);
}

void TestAgainstLoops() {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  const GatherMatmulShape shape{3, 13, 9, 5};
  std::vector<float> x(shape.batch * shape.dim), w(shape.num_neurons * shape.dim),
      bias(shape.num_neurons), g(shape.batch * shape.active);
  for (auto& v : x) v = normal(rng);
  for (auto& v : w) v = normal(rng);
  for (auto& v : bias) v = normal(rng);
  for (auto& v : g) v = normal(rng);
  // Duplicates within a row (4, 4), across rows (4, 0) and padding (-1).
  std::vector<int32_t> ids = {4, 4, 0, -1, 8, 0, 1, 2, 3, 4, -1, -1, -1, -1, -1};
  CHECK_TRUE(FindInvalidIndex(ids.data(), ids.size(), shape.num_neurons) == -1);
  std::vector<int32_t> bad = {0, 9};
  CHECK_TRUE(FindInvalidIndex(bad.data(), 2, shape.num_neurons) == 1);

  const ActiveRows rows(ids.data(), ids.size());
  CHECK_TRUE((rows.ids() == std::vector<int32_t>{0, 1, 2, 3, 4, 8}));
  CHECK_TRUE((rows.offsets() == std::vector<int32_t>{0, 2, 3, 4, 5, 8, 9}));
  CHECK_TRUE(CheckRowGroups(rows.view(), 9, shape.num_neurons, ids.size()).empty());
  CHECK_TRUE(!CheckRowGroups(rows.view(), 9, 5, ids.size()).empty());  // id 8 >= 5
  CHECK_TRUE(!CheckRowGroups(rows.view(), 9, shape.num_neurons, 4).empty());  // positions
  std::vector<float> out(shape.batch * shape.active, 123.f);
  SparseGatherMatmulForward(shape, x.data(), w.data(), bias.data(), rows.view(), out.data(),
                            SerialFor());
  for (int64_t b = 0; b < shape.batch; ++b) {
    for (int64_t k = 0; k < shape.active; ++k) {
      const int32_t id = ids[b * shape.active + k];
      double want = 0;
      if (id >= 0) {
        want = bias[id];
        for (int64_t d = 0; d < shape.dim; ++d) want += x[b * shape.dim + d] * w[id * shape.dim + d];
      }
      CHECK_NEAR(out[b * shape.active + k], want, 1e-4);
    }
  }

  std::vector<float> dx(shape.batch * shape.dim), dw(rows.size() * shape.dim), db(rows.size());
  SparseGatherMatmulBackward(shape, x.data(), w.data(), g.data(), rows.view(), dx.data(), dw.data(),
                             db.data(), SerialFor());
  for (int64_t r = 0; r < rows.size(); ++r) {
    for (int64_t d = 0; d < shape.dim; ++d) {
      double want = 0;
      for (size_t p = 0; p < ids.size(); ++p) {
        if (ids[p] == rows.ids()[r]) want += g[p] * x[(p / shape.active) * shape.dim + d];
      }
      CHECK_NEAR(dw[r * shape.dim + d], want, 1e-4);
    }
  }
  for (int64_t b = 0; b < shape.batch; ++b) {
    for (int64_t d = 0; d < shape.dim; ++d) {
      double want = 0;
      for (int64_t k = 0; k < shape.active; ++k) {
        const int32_t id = ids[b * shape.active + k];
        if (id >= 0) want += g[b * shape.active + k] * w[id * shape.dim + d];
      }
      CHECK_NEAR(dx[b * shape.dim + d], want, 1e-4);
    }
  }
}

}  // namespace
}  // namespace tf_lsh

int main() {
  tf_lsh::TestExampleFromHeader();
  tf_lsh::TestAgainstLoops();
  std::printf("PASS\n");
  return 0;
}
