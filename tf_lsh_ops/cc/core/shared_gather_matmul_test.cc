#include "tf_lsh_ops/cc/core/shared_gather_matmul.h"

#include <cstdio>
#include <random>
#include <vector>

#include "tf_lsh_ops/cc/core/row_groups.h"
#include "tf_lsh_ops/cc/core/sparse_gather_matmul.h"
#include "tf_lsh_ops/cc/core/test_util.h"

namespace tf_lsh {
namespace {

// A shared active set gives what the per-example path gives on the set repeated per example.
void TestSharedMatchesPerExample() {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  for (const GatherMatmulShape shape : {GatherMatmulShape{6, 13, 40, 70},
                                        GatherMatmulShape{129, 128, 5000, 300}}) {
    std::uniform_int_distribution<int32_t> neuron(-1, shape.num_neurons - 1);
    std::vector<float> x(shape.batch * shape.dim), w(shape.num_neurons * shape.dim),
        bias(shape.num_neurons), g(shape.batch * shape.active);
    FillNormal(&normal, &rng, {&x, &w, &bias, &g});
    std::vector<int32_t> ids(shape.active);
    for (auto& v : ids) v = neuron(rng);
    ids[1] = ids[0] = 7;  // a duplicate
    std::vector<int32_t> tiled;
    for (int64_t b = 0; b < shape.batch; ++b) tiled.insert(tiled.end(), ids.begin(), ids.end());

    const ActiveRows per_example(tiled.data(), tiled.size());
    std::vector<float> out(shape.batch * shape.active), want_out(out.size());
    SparseGatherMatmulForward(shape, x.data(), w.data(), bias.data(), per_example.view(),
                              want_out.data(), SerialFor());
    SharedGatherMatmulForward(shape, x.data(), w.data(), bias.data(), ids.data(), out.data(),
                              ReversedShards());
    for (size_t i = 0; i < out.size(); ++i) CHECK_NEAR(out[i], want_out[i], 1e-3);

    const ActiveRows shared(ids.data(), ids.size());
    CHECK_TRUE(shared.ids() == per_example.ids());
    const int64_t rows = shared.size();
    std::vector<float> dx(shape.batch * shape.dim), dw(rows * shape.dim), db(rows);
    std::vector<float> want_dx(dx.size()), want_dw(dw.size()), want_db(db.size());
    SparseGatherMatmulBackward(shape, x.data(), w.data(), g.data(), per_example.view(),
                               want_dx.data(), want_dw.data(), want_db.data(), SerialFor());
    SharedGatherMatmulBackward(shape, x.data(), w.data(), g.data(), ids.data(), shared.view(),
                               dx.data(), dw.data(), db.data(), ReversedShards());
    for (size_t i = 0; i < dx.size(); ++i) CHECK_NEAR(dx[i], want_dx[i], 1e-3);
    for (size_t i = 0; i < dw.size(); ++i) CHECK_NEAR(dw[i], want_dw[i], 1e-3);
    for (size_t i = 0; i < db.size(); ++i) CHECK_NEAR(db[i], want_db[i], 1e-3);
  }
}

}  // namespace
}  // namespace tf_lsh

int main() {
  tf_lsh::TestSharedMatchesPerExample();
  std::printf("PASS\n");
  return 0;
}
