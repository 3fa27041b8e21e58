#include "tf_lsh_ops/cc/core/sparse_gather_matmul.h"

#include <algorithm>
#include <cstdio>
#include <initializer_list>
#include <random>
#include <utility>
#include <vector>

#include "tf_lsh_ops/cc/core/sparse_input_gather_matmul.h"
#include "tf_lsh_ops/cc/core/test_util.h"

namespace tf_lsh {
namespace {

// Fills each vector in turn with draws of `normal` from `rng`.
void FillNormal(std::normal_distribution<float>* normal, std::mt19937* rng,
                std::initializer_list<std::vector<float>*> vectors) {
  for (std::vector<float>* vector : vectors) {
    for (float& v : *vector) v = (*normal)(*rng);
  }
}

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

// Runs the shards of every call in reverse order, a few units each: results must not depend on
// how work is split or in which order shards finish.
ParallelFor ReversedShards() {
  return [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    constexpr int64_t kShard = 3;
    for (int64_t end = total; end > 0; end -= kShard) fn(std::max<int64_t>(end - kShard, 0), end);
  };
}

// Against a stable sort, on both ways of grouping: many chunks and three radix passes (ids up
// to 2^21, few entries per neuron), and blocks of neurons counted in cache (many entries per
// neuron; 4,097 neurons end in a block of one).
void TestGroupRowsAgainstSort() {
  for (const int32_t num_neurons : {1 << 21, 70000, 4097}) {
    std::mt19937 rng(3);
    std::uniform_int_distribution<int32_t> id(-1, num_neurons - 1);
    std::vector<int32_t> indices(300000);
    for (auto& v : indices) v = id(rng) % 4 == 0 ? -1 : id(rng);
    indices[7] = num_neurons - 1;
    std::vector<std::pair<int32_t, int32_t>> want;
    for (size_t i = 0; i < indices.size(); ++i) {
      if (indices[i] >= 0) want.emplace_back(indices[i], static_cast<int32_t>(i));
    }
    std::stable_sort(want.begin(), want.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    for (const ParallelFor& parallel_for : {SerialFor(), ReversedShards()}) {
      const ActiveRows rows(indices.data(), indices.size(), parallel_for, num_neurons);
      CHECK_TRUE(rows.positions().size() == want.size());
      CHECK_TRUE(CheckRowGroups(rows.view(), want.size(), num_neurons, indices.size()).empty());
      for (int64_t r = 0; r < rows.size(); ++r) {
        for (int32_t j = rows.offsets()[r]; j < rows.offsets()[r + 1]; ++j) {
          CHECK_TRUE(want[j].first == rows.ids()[r] && want[j].second == rows.positions()[j]);
        }
      }
    }
  }
  // Nothing to group: no rows, one offset.
  const std::vector<int32_t> padding(5, -1);
  const ActiveRows none(padding.data(), padding.size());
  CHECK_TRUE(none.size() == 0 && none.offsets() == std::vector<int32_t>{0});
  const ActiveRows empty(nullptr, 0);
  CHECK_TRUE(empty.size() == 0 && empty.offsets() == std::vector<int32_t>{0});
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

// Sparse inputs times a feature-major kernel, and its gradients, against plain loops: a
// repeated feature within a row (3, 3), across rows (3), an empty row and a row of one entry.
void TestSparseInputMatmulAgainstLoops() {
  std::mt19937 rng(17);
  std::normal_distribution<float> normal;
  const int64_t batch = 4, num_features = 6, units = 21;
  const std::vector<int64_t> offsets = {0, 3, 3, 5, 6};
  const std::vector<int64_t> features = {3, 0, 3, 5, 3, 1};
  std::vector<float> values(features.size()), kernel(num_features * units),
      g(batch * units);
  FillNormal(&normal, &rng, {&values, &kernel, &g});
  const SparseRowsView inputs{offsets.data(), features.data(), values.data()};

  std::vector<float> out(batch * units, 7.f);
  SparseInputMatmulForward(batch, units, inputs, kernel.data(), out.data(), ReversedShards());
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t u = 0; u < units; ++u) {
      double want = 0;
      for (int64_t j = offsets[b]; j < offsets[b + 1]; ++j) {
        want += double{values[j]} * kernel[features[j] * units + u];
      }
      CHECK_NEAR(out[b * units + u], want, 1e-5);
    }
  }

  std::vector<int32_t> features32(features.begin(), features.end());
  const ActiveRows grouped(features32.data(), features32.size());
  CHECK_TRUE((grouped.ids() == std::vector<int32_t>{0, 1, 3, 5}));
  std::vector<float> grad_values(values.size()), grad_rows(grouped.size() * units, 7.f);
  SparseInputMatmulBackward(batch, units, inputs, kernel.data(), g.data(), grouped.view(),
                            grad_values.data(), grad_rows.data(), ReversedShards());
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t j = offsets[b]; j < offsets[b + 1]; ++j) {
      double want = 0;
      for (int64_t u = 0; u < units; ++u) {
        want += double{kernel[features[j] * units + u]} * g[b * units + u];
      }
      CHECK_NEAR(grad_values[j], want, 1e-5);
    }
  }
  for (int64_t r = 0; r < grouped.size(); ++r) {
    for (int64_t u = 0; u < units; ++u) {
      double want = 0;
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t j = offsets[b]; j < offsets[b + 1]; ++j) {
          if (features[j] == grouped.ids()[r]) want += double{values[j]} * g[b * units + u];
        }
      }
      CHECK_NEAR(grad_rows[r * units + u], want, 1e-5);
    }
  }
  // Without the values' gradient, the same kernel rows.
  std::vector<float> rows_only(grad_rows.size(), 7.f);
  SparseInputMatmulBackward(batch, units, inputs, kernel.data(), g.data(), grouped.view(),
                            /*grad_values=*/nullptr, rows_only.data(), ReversedShards());
  CHECK_TRUE(rows_only == grad_rows);
}

// The first layer's fused update: SparseInputMatmulBackward then SparseAdamApply, bit for bit,
// on 300 random entries over 40 features (repeats within and across rows, empty rows).
void TestSparseInputBackwardAdamEqualsBackwardThenAdam() {
  std::mt19937 rng(19);
  std::normal_distribution<float> normal;
  const int64_t batch = 23, num_features = 40, units = 37, num_entries = 300;
  std::uniform_int_distribution<int64_t> feature(0, num_features - 1), row(0, batch - 3);
  std::vector<int64_t> rows(num_entries);
  for (auto& r : rows) r = row(rng);  // the last two rows stay empty
  std::sort(rows.begin(), rows.end());
  std::vector<int64_t> offsets(batch + 1, 0), features(num_entries);
  for (const int64_t r : rows) ++offsets[r + 1];
  for (int64_t b = 0; b < batch; ++b) offsets[b + 1] += offsets[b];
  for (auto& f : features) f = feature(rng);
  std::vector<float> values(num_entries), g(batch * units);
  FillNormal(&normal, &rng, {&values, &g});
  const SparseRowsView inputs{offsets.data(), features.data(), values.data()};
  const std::vector<int32_t> features32(features.begin(), features.end());
  const ActiveRows grouped(features32.data(), features32.size());
  // Two copies of the kernel and its moments (moments non-zero, as after some steps).
  std::vector<float> state[2][3];
  for (int i = 0; i < 3; ++i) {
    state[0][i].resize(num_features * units);
    for (auto& v : state[0][i]) v = i == 2 ? std::abs(normal(rng)) : normal(rng);
    state[1][i] = state[0][i];
  }
  const AdamHyperparameters hyper{0.01f, 0.9f, 0.999f, 1e-7f};

  std::vector<float> grad_rows(grouped.size() * units);
  SparseInputMatmulBackward(batch, units, inputs, state[0][0].data(), g.data(), grouped.view(),
                            /*grad_values=*/nullptr, grad_rows.data(), SerialFor());
  SparseAdamApply(hyper, units, grouped.ids().data(), grad_rows.data(), grouped.size(),
                  state[0][0].data(), state[0][1].data(), state[0][2].data(), SerialFor());
  const std::vector<float> before = state[1][0];
  SparseInputMatmulBackwardAdam(batch, units, inputs, g.data(), grouped.view(), hyper,
                                {state[1][0].data(), state[1][1].data(), state[1][2].data()},
                                ReversedShards());
  for (int i = 0; i < 3; ++i) CHECK_TRUE(state[1][i] == state[0][i]);
  CHECK_TRUE(state[1][0] != before);
}

}  // namespace
}  // namespace tf_lsh

int main() {
  tf_lsh::TestSparseInputMatmulAgainstLoops();
  tf_lsh::TestBackwardAdamEqualsBackwardThenAdam();
  tf_lsh::TestSparseInputBackwardAdamEqualsBackwardThenAdam();
  tf_lsh::TestSharedMatchesPerExample();
  tf_lsh::TestExampleFromHeader();
  tf_lsh::TestAgainstLoops();
  tf_lsh::TestGroupRowsAgainstSort();
  tf_lsh::TestGroupAndMultiply();
  tf_lsh::TestLargeBackward();
  std::printf("PASS\n");
  return 0;
}
