#include "tf_lsh_ops/cc/core/sparse_input_gather_matmul.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "tf_lsh_ops/cc/core/row_groups.h"
#include "tf_lsh_ops/cc/core/sparse_adam.h"
#include "tf_lsh_ops/cc/core/test_util.h"
#include "tf_lsh_ops/cc/core/vector_ops.h"

namespace tf_lsh {
namespace {

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

// The gather-matmul's backward with lazy Adam per weight (or lazy SGD: `sgd`), against
// SparseInputGatherMatmulBackward followed by one Adam (SGD) step on exactly the weights (id,
// feature) whose feature is in one of the id's examples, bit for bit (SGD's weights to a
// rounding: the compiler may fuse its multiply-add in one place only): padding ids, a unit in
// several examples, a repeated feature within a row, an entry of value 0 (its weight is
// touched: it gets a step with g = 0) and an empty row. Everything else keeps its bits, and
// the result does not depend on the sharding.
// `stride` spreads the features over a wider input: at 1 most of a row's features are touched
// (read off its flags), at 100 few are (sorted).
void TestSparseInputGatherBackwardLazy(int64_t stride, bool sgd) {
  std::mt19937 rng(23);
  std::normal_distribution<float> normal;
  const int64_t batch = 5, dim = 30 * stride, num_neurons = 12, active = 4;
  const std::vector<int64_t> offsets = {0, 4, 4, 7, 9, 12};
  std::vector<int64_t> features = {2, 7, 2, 29, 0, 7, 13, 5, 6, 7, 21, 22};
  for (int64_t& f : features) f *= stride;
  std::vector<float> values(features.size());
  FillNormal(&normal, &rng, {&values});
  values[5] = 0.f;
  const std::vector<int32_t> indices = {3, 0, -1, 11, 3, 5, 6, 7,  //
                                        0, 3, 9, -1, 1, 2, 3, 4,  //
                                        8, 10, 3, -1};
  std::vector<float> grad_out(batch * active);
  FillNormal(&normal, &rng, {&grad_out});
  const SparseRowsView inputs{offsets.data(), features.data(), values.data()};
  const GatherMatmulShape shape{batch, dim, num_neurons, active};
  const ActiveRows rows(indices.data(), indices.size(), SerialFor(), num_neurons);
  std::vector<float> state[3];
  for (int i = 0; i < 3; ++i) {
    state[i].resize(num_neurons * dim);
    for (auto& v : state[i]) v = i == 2 ? std::abs(normal(rng)) : normal(rng);
  }
  const AdamHyperparameters hyper{0.01f, 0.9f, 0.999f, 1e-7f};

  // The reference: dense gradient rows, then the rule on the touched weights one at a time.
  std::vector<float> want_values(values.size()), grad_rows(rows.size() * dim),
      want_bias(rows.size());
  SparseInputGatherMatmulBackward(shape, inputs, state[0].data(), indices.data(),
                                  grad_out.data(), rows.view(), want_values.data(),
                                  grad_rows.data(), want_bias.data(), SerialFor());
  std::vector<float> want[3] = {state[0], state[1], state[2]};
  int64_t touched = 0;
  for (int64_t r = 0; r < rows.size(); ++r) {
    std::vector<bool> present(dim, false);
    for (int32_t p = rows.offsets()[r]; p < rows.offsets()[r + 1]; ++p) {
      const int64_t b = rows.positions()[p] / active;
      // A zero value gives no gradient: its weights are left alone (values[5], feature 7 of
      // example 2, the only one to select unit 9).
      for (int64_t j = offsets[b]; j < offsets[b + 1]; ++j) {
        if (values[j] != 0.f) present[features[j]] = true;
      }
    }
    for (int64_t f = 0; f < dim; ++f) {
      if (!present[f]) continue;
      const int64_t at = int64_t{rows.ids()[r]} * dim + f;
      if (sgd) {
        want[0][at] -= hyper.alpha * grad_rows[r * dim + f];
      } else {
        AdamUpdate(hyper.alpha, hyper.beta1, hyper.beta2, hyper.epsilon,
                   &grad_rows[r * dim + f], &want[0][at], &want[1][at], &want[2][at], 1);
      }
      ++touched;
    }
  }
  CHECK_TRUE(touched > 20 && touched < num_neurons * 30 / 2);

  for (const ParallelFor& parallel_for : {SerialFor(), ReversedShards()}) {
    std::vector<float> got[3] = {state[0], state[1], state[2]};
    std::vector<float> got_values(values.size(), 7.f), got_bias(rows.size(), 7.f);
    if (sgd) {
      SparseInputGatherMatmulBackwardLazySgd(shape, inputs, indices.data(), grad_out.data(),
                                             rows.view(), hyper.alpha, got[0].data(),
                                             got_values.data(), got_bias.data(), parallel_for);
    } else {
      SparseInputGatherMatmulBackwardLazyAdam(shape, inputs, indices.data(), grad_out.data(),
                                              rows.view(), hyper,
                                              {got[0].data(), got[1].data(), got[2].data()},
                                              got_values.data(), got_bias.data(), parallel_for);
    }
    CHECK_TRUE(got_values == want_values);
    CHECK_TRUE(got_bias == want_bias);
    if (sgd) {
      for (int64_t i = 0; i < num_neurons * dim; ++i) {
        CHECK_NEAR(got[0][i], want[0][i], 1e-6 * (1 + std::abs(want[0][i])));
        // Untouched weights keep their bits.
        if (want[0][i] == state[0][i]) CHECK_TRUE(got[0][i] == state[0][i]);
      }
      CHECK_TRUE(got[0] != state[0]);
      for (int i = 1; i < 3; ++i) CHECK_TRUE(got[i] == state[i]);  // no moments
    } else {
      for (int i = 0; i < 3; ++i) CHECK_TRUE(got[i] == want[i]);
    }
  }
}

// The Hogwild pass against sequential SGD, one example after another, each reading the weights
// its predecessors left for its values' gradient (on one thread, examples in order; with
// shards in reverse order when no two examples share a weight), and the biases' gradient as
// the grouped pass's: padding ids, a unit in several examples, an empty row.
void TestSparseInputGatherBackwardHogwildSgd() {
  std::mt19937 rng(29);
  std::normal_distribution<float> normal;
  const int64_t batch = 5, dim = 30, num_neurons = 12, active = 4;
  const std::vector<int64_t> offsets = {0, 4, 4, 7, 9, 12};
  const std::vector<int64_t> features = {2, 7, 11, 29, 0, 7, 13, 5, 6, 7, 21, 22};
  std::vector<float> values(features.size()), grad_out(batch * active), start(num_neurons * dim);
  FillNormal(&normal, &rng, {&values, &grad_out, &start});
  const SparseRowsView inputs{offsets.data(), features.data(), values.data()};
  const GatherMatmulShape shape{batch, dim, num_neurons, active};
  const float lr = 0.1f;
  // Examples 0 and 2 share unit 3 on feature 7; the second set of ids shares no weight.
  const std::vector<int32_t> shared = {3, 0, -1, 11, 3, 5, 6, 7, 0, 3, 9, -1,  //
                                       1, 2, 3, 4, 8, 10, 3, -1};
  const std::vector<int32_t> disjoint = {3, 0, -1, 11, 3, 5, 6, 7, 8, 9, 10, -1,  //
                                         1, 2, 4, 5, 6, 10, 1, -1};
  for (const auto* ids : {&shared, &disjoint}) {
    const ActiveRows rows(ids->data(), ids->size(), SerialFor(), num_neurons);
    std::vector<float> want = start, want_values(values.size(), 0.f), grad_rows(rows.size() * dim),
                       want_bias(rows.size()), unused(values.size());
    SparseInputGatherMatmulBackward(shape, inputs, start.data(), ids->data(), grad_out.data(),
                                    rows.view(), unused.data(), grad_rows.data(),
                                    want_bias.data(), SerialFor());
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t k = 0; k < active; ++k) {
        const int32_t id = (*ids)[b * active + k];
        if (id < 0) continue;
        for (int64_t j = offsets[b]; j < offsets[b + 1]; ++j) {
          float& w = want[id * dim + features[j]];
          want_values[j] += grad_out[b * active + k] * w;
          w -= lr * grad_out[b * active + k] * values[j];
        }
      }
    }
    // Shards in reverse order change the examples' order, which matters when they share one.
    std::vector<ParallelFor> orders = {SerialFor()};
    if (ids == &disjoint) orders.push_back(ReversedShards());
    for (const ParallelFor& parallel_for : orders) {
      std::vector<float> got = start, got_values(values.size(), 7.f), got_bias(rows.size(), 7.f);
      SparseInputGatherMatmulBackwardHogwildSgd(shape, inputs, ids->data(), grad_out.data(),
                                                rows.view(), lr, got.data(), got_values.data(),
                                                got_bias.data(), parallel_for);
      CHECK_TRUE(got_bias == want_bias);
      for (size_t j = 0; j < values.size(); ++j) CHECK_NEAR(got_values[j], want_values[j], 1e-5);
      for (size_t i = 0; i < got.size(); ++i) CHECK_NEAR(got[i], want[i], 1e-6);
      CHECK_TRUE(got != start);
    }
  }
}

// The products with every unit, unit-major, are the example-major gather-matmul's over all
// units with zero biases, bit for bit (same sums in the same order), and near plain loops; an
// empty row gives zeros.
void TestSparseInputProductsEqualGatherOverAllUnits() {
  std::mt19937 rng(23);
  std::normal_distribution<float> normal;
  const int64_t batch = 5, dim = 9, units = 37;
  const std::vector<int64_t> offsets = {0, 3, 3, 5, 6, 9};
  const std::vector<int64_t> features = {8, 0, 3, 5, 3, 1, 2, 2, 7};
  std::vector<float> values(features.size()), weights(units * dim);
  FillNormal(&normal, &rng, {&values, &weights});
  const SparseRowsView inputs{offsets.data(), features.data(), values.data()};

  std::vector<float> products(batch * units, 7.f);
  SparseInputProducts(batch, units, dim, inputs, weights.data(), products.data(),
                      ReversedShards());
  std::vector<int32_t> all_units(batch * units);
  for (int64_t i = 0; i < batch * units; ++i) all_units[i] = static_cast<int32_t>(i % units);
  const std::vector<float> zero_biases(units, 0.f);
  std::vector<float> gathered(batch * units, 7.f);
  SparseInputGatherMatmulForward({batch, dim, units, units}, inputs, weights.data(),
                                 zero_biases.data(), all_units.data(), gathered.data(),
                                 ReversedShards());
  CHECK_TRUE(products == gathered);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t u = 0; u < units; ++u) {
      double want = 0;
      for (int64_t j = offsets[b]; j < offsets[b + 1]; ++j) {
        want += double{values[j]} * weights[u * dim + features[j]];
      }
      CHECK_NEAR(products[b * units + u], want, 1e-5);
    }
  }
  for (int64_t u = 0; u < units; ++u) CHECK_TRUE(products[1 * units + u] == 0.f);
}

}  // namespace
}  // namespace tf_lsh

int main() {
  tf_lsh::TestSparseInputProductsEqualGatherOverAllUnits();
  tf_lsh::TestSparseInputMatmulAgainstLoops();
  tf_lsh::TestSparseInputBackwardAdamEqualsBackwardThenAdam();
  tf_lsh::TestSparseInputGatherBackwardHogwildSgd();
  for (const bool sgd : {false, true}) {
    tf_lsh::TestSparseInputGatherBackwardLazy(/*stride=*/1, sgd);
    tf_lsh::TestSparseInputGatherBackwardLazy(/*stride=*/100, sgd);
  }
  std::printf("PASS\n");
  return 0;
}
