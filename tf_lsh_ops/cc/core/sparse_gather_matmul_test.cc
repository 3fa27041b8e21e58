#include "tf_lsh_ops/cc/core/sparse_gather_matmul.h"

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "tf_lsh_ops/cc/core/row_groups.h"
#include "tf_lsh_ops/cc/core/sparse_adam.h"
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
  FillNormal(&normal, &rng, {&x, &w, &bias, &g});
  // Duplicates within a row (4, 4), across rows (4, 0) and padding (-1).
  std::vector<int32_t> ids = {4, 4, 0, -1, 8, 0, 1, 2, 3, 4, -1, -1, -1, -1, -1};
  const ActiveRows rows(ids.data(), ids.size());
  std::vector<float> out(shape.batch * shape.active, 123.f);
  SparseGatherMatmulForward(shape, x.data(), w.data(), bias.data(), rows.view(), out.data(),
                            SerialFor());
  for (int64_t b = 0; b < shape.batch; ++b) {
    for (int64_t k = 0; k < shape.active; ++k) {
      const int32_t id = ids[b * shape.active + k];
      double want = 0;
      if (id >= 0) {
        want = bias[id];
        for (int64_t d = 0; d < shape.dim; ++d) {
          want += x[b * shape.dim + d] * w[id * shape.dim + d];
        }
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

// GroupAndMultiply gives the grouping and the product of GroupRows followed by
// SparseGatherMatmulForward, bit for bit, on both ways of grouping (few and many neurons per
// entry), and stops when an allocation fails.
void TestGroupAndMultiply() {
  std::mt19937 rng(13);
  std::normal_distribution<float> normal;
  for (const GatherMatmulShape shape : {GatherMatmulShape{40, 24, 5000, 50},
                                        GatherMatmulShape{40, 24, 50000, 50}}) {
    std::uniform_int_distribution<int32_t> neuron(-1, shape.num_neurons - 1);
    std::vector<float> x(shape.batch * shape.dim), w(shape.num_neurons * shape.dim),
        bias(shape.num_neurons);
    FillNormal(&normal, &rng, {&x, &w, &bias});
    std::vector<int32_t> ids(shape.batch * shape.active);
    for (auto& v : ids) v = neuron(rng);
    const ActiveRows want_rows(ids.data(), ids.size(), SerialFor(), shape.num_neurons);
    std::vector<float> want(ids.size());
    SparseGatherMatmulForward(shape, x.data(), w.data(), bias.data(), want_rows.view(),
                              want.data(), SerialFor());

    std::vector<int32_t> group_ids, offsets, positions;
    const RowGroupAllocator allocate{
        [&](int64_t num_positions, int32_t** data) {
          positions.resize(num_positions);
          *data = positions.data();
          return true;
        },
        [&](int64_t num_rows, int32_t** ids_data, int32_t** offsets_data) {
          group_ids.resize(num_rows);
          offsets.resize(num_rows + 1);
          *ids_data = group_ids.data();
          *offsets_data = offsets.data();
          return true;
        }};
    std::vector<float> out(ids.size(), 123.f);
    RowGroups rows;
    CHECK_TRUE(GroupAndMultiply(shape, x.data(), w.data(), bias.data(), ids.data(), allocate,
                                out.data(), ReversedShards(), &rows));
    CHECK_TRUE(out == want);
    CHECK_TRUE(group_ids == want_rows.ids() && offsets == want_rows.offsets() &&
               positions == want_rows.positions());
    CHECK_TRUE(rows.ids == group_ids.data() && rows.num_rows == want_rows.size());

    const RowGroupAllocator no_rows{allocate.positions,
                                    [](int64_t, int32_t**, int32_t**) { return false; }};
    CHECK_TRUE(!GroupAndMultiply(shape, x.data(), w.data(), bias.data(), ids.data(), no_rows,
                                 out.data(), SerialFor(), &rows));
    const RowGroupAllocator nothing{[](int64_t, int32_t**) { return false; }, allocate.rows};
    CHECK_TRUE(!GroupAndMultiply(shape, x.data(), w.data(), bias.data(), ids.data(), nothing,
                                 out.data(), SerialFor(), &rows));
  }
}

// Gradient rows of more than 16 MB take the streaming-store path; compare it with loops.
void TestLargeBackward() {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  const GatherMatmulShape shape{12, 136, 60000, 5000};
  std::uniform_int_distribution<int32_t> neuron(0, shape.num_neurons - 1);
  std::vector<float> x(shape.batch * shape.dim), w(shape.num_neurons * shape.dim),
      g(shape.batch * shape.active);
  FillNormal(&normal, &rng, {&x, &w, &g});
  std::vector<int32_t> ids(shape.batch * shape.active);
  for (auto& v : ids) v = neuron(rng);
  const ActiveRows rows(ids.data(), ids.size(), ReversedShards());
  CHECK_TRUE(rows.size() * shape.dim * 4 > (16 << 20));
  std::vector<float> dx(shape.batch * shape.dim), dw(rows.size() * shape.dim), db(rows.size());
  SparseGatherMatmulBackward(shape, x.data(), w.data(), g.data(), rows.view(), dx.data(),
                             dw.data(), db.data(), ReversedShards());
  for (int64_t r = 0; r < rows.size(); r += 97) {
    for (int64_t d = 0; d < shape.dim; ++d) {
      double want = 0;
      for (int32_t j = rows.offsets()[r]; j < rows.offsets()[r + 1]; ++j) {
        const int32_t p = rows.positions()[j];
        want += g[p] * x[(p / shape.active) * shape.dim + d];
      }
      CHECK_NEAR(dw[r * shape.dim + d], want, 1e-4);
    }
  }
  for (int64_t b = 0; b < shape.batch; ++b) {
    for (int64_t d = 0; d < shape.dim; ++d) {
      double want = 0;
      for (int64_t k = 0; k < shape.active; ++k) {
        want += g[b * shape.active + k] * w[ids[b * shape.active + k] * shape.dim + d];
      }
      CHECK_NEAR(dx[b * shape.dim + d], want, 1e-2);
    }
  }
}

// The fused backward + Adam gives, bit for bit, the backward followed by SparseAdamApply.
void TestBackwardAdamEqualsBackwardThenAdam() {
  std::mt19937 rng(13);
  std::normal_distribution<float> normal;
  const GatherMatmulShape shape{5, 37, 30, 9};
  std::uniform_int_distribution<int32_t> neuron(-1, shape.num_neurons - 1);
  std::vector<float> x(shape.batch * shape.dim), g(shape.batch * shape.active);
  FillNormal(&normal, &rng, {&x, &g});
  std::vector<int32_t> ids(shape.batch * shape.active);
  for (auto& v : ids) v = neuron(rng);
  // Two copies of weights, biases and moments (moments start non-zero, as after some steps).
  std::vector<float> state[2][6];
  const int64_t sizes[6] = {shape.num_neurons * shape.dim, shape.num_neurons * shape.dim,
                            shape.num_neurons * shape.dim, shape.num_neurons,
                            shape.num_neurons,           shape.num_neurons};
  for (int i = 0; i < 6; ++i) {
    state[0][i].resize(sizes[i]);
    for (auto& v : state[0][i]) v = i == 2 || i == 5 ? std::abs(normal(rng)) : normal(rng);
    state[1][i] = state[0][i];
  }
  const AdamHyperparameters hyper{0.01f, 0.9f, 0.999f, 1e-7f};
  const ActiveRows rows(ids.data(), ids.size());

  std::vector<float> dx(shape.batch * shape.dim), dw(rows.size() * shape.dim), db(rows.size());
  SparseGatherMatmulBackward(shape, x.data(), state[0][0].data(), g.data(), rows.view(),
                             dx.data(), dw.data(), db.data(), SerialFor());
  SparseAdamApply(hyper, shape.dim, rows.ids().data(), dw.data(), rows.size(),
                  state[0][0].data(), state[0][1].data(), state[0][2].data(), SerialFor());
  SparseAdamApply(hyper, 1, rows.ids().data(), db.data(), rows.size(), state[0][3].data(),
                  state[0][4].data(), state[0][5].data(), SerialFor());

  std::vector<float> fused_dx(dx.size());
  const AdamTarget adam{hyper,
                        {state[1][0].data(), state[1][1].data(), state[1][2].data()},
                        {state[1][3].data(), state[1][4].data(), state[1][5].data()}};
  SparseGatherMatmulBackwardAdam(shape, x.data(), g.data(), rows.view(), adam, fused_dx.data(),
                                 ReversedShards());
  CHECK_TRUE(fused_dx == dx);
  for (int i = 0; i < 6; ++i) CHECK_TRUE(state[1][i] == state[0][i]);
}

}  // namespace
}  // namespace tf_lsh

int main() {
  tf_lsh::TestExampleFromHeader();
  tf_lsh::TestAgainstLoops();
  tf_lsh::TestGroupAndMultiply();
  tf_lsh::TestLargeBackward();
  tf_lsh::TestBackwardAdamEqualsBackwardThenAdam();
  std::printf("PASS\n");
  return 0;
}
