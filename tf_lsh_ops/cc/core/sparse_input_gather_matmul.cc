#include "tf_lsh_ops/cc/core/sparse_input_gather_matmul.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tf_lsh_ops/cc/core/vector_kernels.h"
#include "tf_lsh_ops/cc/core/vector_ops.h"

namespace tf_lsh {

void SparseInputGatherMatmulForward(const GatherMatmulShape& shape, const SparseRowsView& inputs,
                                    const float* weights, const float* biases,
                                    const int32_t* indices, float* out,
                                    const ParallelFor& parallel_for) {
  const int64_t dim = shape.dim, active = shape.active;
  const int64_t mean_nonzeros =
      1 + inputs.row_offsets[shape.batch] / std::max<int64_t>(shape.batch, 1);
  parallel_for(shape.batch, active * (2 * mean_nonzeros + 10), [&](int64_t begin, int64_t end) {
    // An example's nonzero entries, gathered once for all its units. Zeros are skipped, not
    // multiplied: an LSHDense's candidates beyond its active units come as zeros (most of
    // the entries), and each term is a scattered read.
    std::vector<int64_t> features;
    std::vector<float> values;
    for (int64_t b = begin; b < end; ++b) {
      features.clear();
      values.clear();
      for (int64_t j = inputs.row_offsets[b]; j < inputs.row_offsets[b + 1]; ++j) {
        if (inputs.values[j] == 0.f) continue;
        features.push_back(inputs.features[j]);
        values.push_back(inputs.values[j]);
      }
      const int64_t nonzeros = static_cast<int64_t>(features.size());
      for (int64_t k = 0; k < active; ++k) {
        const int32_t id = indices[b * active + k];
        if (id < 0) {
          out[b * active + k] = 0.f;
          continue;
        }
        const float* w = weights + int64_t{id} * dim;
        float sum = biases[id];
        for (int64_t i = 0; i < nonzeros; ++i) sum += values[i] * w[features[i]];
        out[b * active + k] = sum;
      }
    }
  });
}

void SparseInputProducts(int64_t batch, int64_t units, int64_t dim, const SparseRowsView& inputs,
                         const float* weights, float* out, const ParallelFor& parallel_for) {
  const int64_t entries = inputs.row_offsets[batch];
  parallel_for(units, 2 * entries + 10, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const float* w = weights + u * dim;
      for (int64_t b = 0; b < batch; ++b) {
        float sum = 0.f;
        for (int64_t j = inputs.row_offsets[b]; j < inputs.row_offsets[b + 1]; ++j) {
          if (inputs.values[j] == 0.f) continue;  // as in SparseInputGatherMatmulForward
          sum += inputs.values[j] * w[inputs.features[j]];
        }
        out[b * units + u] = sum;
      }
    }
  });
}

namespace {

// grad_values[j] = sum_k grad_out[b, k] * weights[indices[b, k], features[j]] over the entries
// j of each row b. Each entry is owned by its example, so examples run in parallel.
void InputValueGradients(const GatherMatmulShape& shape, const SparseRowsView& inputs,
                         const float* weights, const int32_t* indices, const float* grad_out,
                         float* grad_values, const ParallelFor& parallel_for) {
  const int64_t dim = shape.dim, active = shape.active;
  parallel_for(shape.batch, active * 8, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = inputs.row_offsets[b], last = inputs.row_offsets[b + 1];
      for (int64_t j = first; j < last; ++j) grad_values[j] = 0.f;
      for (int64_t k = 0; k < active; ++k) {
        const int32_t id = indices[b * active + k];
        const float g = grad_out[b * active + k];
        // A zero gradient (a ReLU unit below 0) adds nothing: its scattered reads are skipped.
        if (id < 0 || g == 0.f) continue;
        const float* w = weights + int64_t{id} * dim;
        for (int64_t j = first; j < last; ++j) grad_values[j] += g * w[inputs.features[j]];
      }
    }
  });
}

}  // namespace

void SparseInputGatherMatmulBackward(const GatherMatmulShape& shape,
                                     const SparseRowsView& inputs, const float* weights,
                                     const int32_t* indices, const float* grad_out,
                                     const RowGroups& rows, float* grad_values,
                                     float* grad_weight_rows, float* grad_bias_rows,
                                     const ParallelFor& parallel_for) {
  const int64_t dim = shape.dim, active = shape.active;
  InputValueGradients(shape, inputs, weights, indices, grad_out, grad_values, parallel_for);
  // One gradient row per neuron, each written by one thread.
  parallel_for(rows.num_rows, 16 * dim, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* dw = grad_weight_rows + r * dim;
      std::memset(dw, 0, dim * sizeof(float));
      float db = 0.f;
      for (int32_t p = rows.offsets[r]; p < rows.offsets[r + 1]; ++p) {
        const int64_t position = rows.positions[p];
        const int64_t b = position / active;
        const float g = grad_out[position];
        for (int64_t j = inputs.row_offsets[b]; j < inputs.row_offsets[b + 1]; ++j) {
          dw[inputs.features[j]] += g * inputs.values[j];
        }
        db += g;
      }
      grad_bias_rows[r] = db;
    }
  });
}

namespace {

// The lazy backward passes' shared loop: grad_values from `weights` (before any update), then
// for each row r of `rows` its bias gradient and its weights' gradient on the features present
// with a nonzero value in the row's examples, handed to `update(row, features, gradients, n)`
// (row: the weights' offset of the row; features in increasing order) by the thread that owns
// the row.
template <typename Update>
void LazyRowUpdates(const GatherMatmulShape& shape, const SparseRowsView& inputs,
                    const float* weights, const int32_t* indices, const float* grad_out,
                    const RowGroups& rows, float* grad_values, float* grad_bias_rows,
                    const ParallelFor& parallel_for, const Update& update) {
  const int64_t dim = shape.dim, active = shape.active;
  InputValueGradients(shape, inputs, weights, indices, grad_out, grad_values, parallel_for);
  const int64_t mean_nonzeros =
      1 + inputs.row_offsets[shape.batch] / std::max<int64_t>(shape.batch, 1);
  const int64_t mean_positions =
      1 + rows.offsets[rows.num_rows] / std::max<int64_t>(rows.num_rows, 1);
  const int64_t cost = mean_positions * mean_nonzeros * 12;
  parallel_for(rows.num_rows, cost, [&](int64_t begin, int64_t end) {
    // A row's gradient, dense over the features but touched (and reset) only where the row's
    // examples have entries: O(dim) memory per shard, O(pairs) work per row.
    std::vector<float> gradient(dim, 0.f);
    std::vector<uint8_t> seen(dim, 0);
    std::vector<int64_t> features;
    std::vector<float> g;
    for (int64_t r = begin; r < end; ++r) {
      features.clear();
      float db = 0.f;
      for (int32_t p = rows.offsets[r]; p < rows.offsets[r + 1]; ++p) {
        const int64_t position = rows.positions[p];
        const int64_t b = position / active;
        const float go = grad_out[position];
        for (int64_t j = inputs.row_offsets[b]; j < inputs.row_offsets[b + 1]; ++j) {
          // A zero input (a unit the previous layer computed but did not pass on) gives its
          // weights no gradient: they are left as if the feature were absent.
          if (inputs.values[j] == 0.f) continue;
          const int64_t f = inputs.features[j];
          if (!seen[f]) {
            seen[f] = 1;
            features.push_back(f);
          }
          gradient[f] += go * inputs.values[j];
        }
        db += go;
      }
      grad_bias_rows[r] = db;
      // Features in increasing order: sorted when few, else read off the row's flags (a
      // wide layer's rows with many examples touch much of the row).
      const int64_t touched = static_cast<int64_t>(features.size());
      if (touched * 16 < dim) {
        std::sort(features.begin(), features.end());
      } else {
        features.clear();
        for (int64_t f = 0; f < dim; ++f) {
          if (seen[f]) features.push_back(f);
        }
      }
      const int64_t n = static_cast<int64_t>(features.size());
      g.resize(n);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t f = features[i];
        g[i] = gradient[f];
        gradient[f] = 0.f;
        seen[f] = 0;
      }
      update(int64_t{rows.ids[r]} * dim, features.data(), g.data(), n);
    }
  });
}

}  // namespace

void SparseInputGatherMatmulBackwardLazyAdam(const GatherMatmulShape& shape,
                                             const SparseRowsView& inputs,
                                             const int32_t* indices, const float* grad_out,
                                             const RowGroups& rows,
                                             const AdamHyperparameters& hyper,
                                             const AdamState& weights, float* grad_values,
                                             float* grad_bias_rows,
                                             const ParallelFor& parallel_for) {
  // Gathered into contiguous buffers for the vectorised update, then scattered back; one set
  // of buffers per calling thread.
  thread_local std::vector<float> w, m, v;
  LazyRowUpdates(shape, inputs, weights.var, indices, grad_out, rows, grad_values,
                 grad_bias_rows, parallel_for,
                 [&](int64_t row, const int64_t* features, float* g, int64_t n) {
                   w.resize(n);
                   m.resize(n);
                   v.resize(n);
                   for (int64_t i = 0; i < n; ++i) {
                     w[i] = weights.var[row + features[i]];
                     m[i] = weights.m[row + features[i]];
                     v[i] = weights.v[row + features[i]];
                   }
                   AdamUpdate(hyper.alpha, hyper.beta1, hyper.beta2, hyper.epsilon, g, w.data(),
                              m.data(), v.data(), n);
                   for (int64_t i = 0; i < n; ++i) {
                     weights.var[row + features[i]] = w[i];
                     weights.m[row + features[i]] = m[i];
                     weights.v[row + features[i]] = v[i];
                   }
                 });
}

void SparseInputGatherMatmulBackwardLazySgd(const GatherMatmulShape& shape,
                                            const SparseRowsView& inputs, const int32_t* indices,
                                            const float* grad_out, const RowGroups& rows,
                                            float learning_rate, float* weights,
                                            float* grad_values, float* grad_bias_rows,
                                            const ParallelFor& parallel_for) {
  LazyRowUpdates(shape, inputs, weights, indices, grad_out, rows, grad_values, grad_bias_rows,
                 parallel_for, [&](int64_t row, const int64_t* features, const float* g,
                                   int64_t n) {
                   for (int64_t i = 0; i < n; ++i) {
                     weights[row + features[i]] -= learning_rate * g[i];
                   }
                 });
}

void SparseInputGatherMatmulBackwardHogwildSgd(const GatherMatmulShape& shape,
                                               const SparseRowsView& inputs,
                                               const int32_t* indices, const float* grad_out,
                                               const RowGroups& rows, float learning_rate,
                                               float* weights, float* grad_values,
                                               float* grad_bias_rows,
                                               const ParallelFor& parallel_for) {
  const int64_t dim = shape.dim, active = shape.active;
  parallel_for(rows.num_rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float db = 0.f;
      for (int32_t p = rows.offsets[r]; p < rows.offsets[r + 1]; ++p) {
        db += grad_out[rows.positions[p]];
      }
      grad_bias_rows[r] = db;
    }
  });
  const int64_t mean_nonzeros =
      1 + inputs.row_offsets[shape.batch] / std::max<int64_t>(shape.batch, 1);
  parallel_for(shape.batch, active * mean_nonzeros * 8, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = inputs.row_offsets[b], last = inputs.row_offsets[b + 1];
      for (int64_t j = first; j < last; ++j) grad_values[j] = 0.f;
      for (int64_t k = 0; k < active; ++k) {
        const int32_t id = indices[b * active + k];
        if (id < 0) continue;
        const float go = grad_out[b * active + k], step = learning_rate * go;
        float* w = weights + int64_t{id} * dim;
        for (int64_t j = first; j < last; ++j) {
          // Relaxed atomic loads and stores are plain moves on x86; with them, a race between
          // two threads loses one update instead of being undefined behaviour.
          float* weight = w + inputs.features[j];
          float value;
          __atomic_load(weight, &value, __ATOMIC_RELAXED);
          grad_values[j] += go * value;
          value -= step * inputs.values[j];
          __atomic_store(weight, &value, __ATOMIC_RELAXED);
        }
      }
    }
  });
}

namespace {

// Kernel rows are scattered over the whole matrix (tens of MB for a big vocabulary): each is
// prefetched this many entries ahead.
constexpr int64_t kRowsAhead = 4;

}  // namespace

void SparseInputMatmulForward(int64_t batch, int64_t units, const SparseRowsView& inputs,
                              const float* kernel, float* out, const ParallelFor& parallel_for) {
  const int64_t mean_nonzeros = 1 + inputs.row_offsets[batch] / std::max<int64_t>(batch, 1);
  parallel_for(batch, mean_nonzeros * (units + 20), [&](int64_t begin, int64_t end) {
    const int64_t last_entry = inputs.row_offsets[end];
    for (int64_t b = begin; b < end; ++b) {
      float* row = out + b * units;
      std::fill(row, row + units, 0.f);
      for (int64_t j = inputs.row_offsets[b]; j < inputs.row_offsets[b + 1]; ++j) {
        if (inputs.values[j] == 0.f) continue;  // as in SparseInputGatherMatmulForward
        if (j + kRowsAhead < last_entry) {
          PrefetchRow(kernel + inputs.features[j + kRowsAhead] * units, units, /*near=*/true);
        }
        Axpy(inputs.values[j], kernel + inputs.features[j] * units, row, units);
      }
    }
  });
}

namespace {

// The example of each CSR entry (gradient rows find their grad_out row through it).
std::vector<int32_t> ExampleOfEntries(int64_t batch, const SparseRowsView& inputs,
                                      const ParallelFor& parallel_for) {
  std::vector<int32_t> example_of(inputs.row_offsets[batch]);
  parallel_for(batch, 8, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t j = inputs.row_offsets[b]; j < inputs.row_offsets[b + 1]; ++j) {
        example_of[j] = static_cast<int32_t>(b);
      }
    }
  });
  return example_of;
}

// Row r of `features`' kernel gradient: the sum of values[j] * grad_out[example of j, :] over
// its entries, in entry order.
inline void KernelGradientRow(int64_t units, const SparseRowsView& inputs, const float* grad_out,
                              const RowGroups& features, const std::vector<int32_t>& example_of,
                              int64_t r, float* dw) {
  std::fill(dw, dw + units, 0.f);
  for (int32_t p = features.offsets[r]; p < features.offsets[r + 1]; ++p) {
    const int64_t j = features.positions[p];
    Axpy(inputs.values[j], grad_out + int64_t{example_of[j]} * units, dw, units);
  }
}

}  // namespace

void SparseInputMatmulBackward(int64_t batch, int64_t units, const SparseRowsView& inputs,
                               const float* kernel, const float* grad_out,
                               const RowGroups& features, float* grad_values,
                               float* grad_kernel_rows, const ParallelFor& parallel_for) {
  if (grad_values != nullptr) {
    parallel_for(batch, 2 * units, [&](int64_t begin, int64_t end) {
      const int64_t last_entry = inputs.row_offsets[end];
      for (int64_t b = begin; b < end; ++b) {
        const float* g = grad_out + b * units;
        for (int64_t j = inputs.row_offsets[b]; j < inputs.row_offsets[b + 1]; ++j) {
          if (j + kRowsAhead < last_entry) {
            PrefetchRow(kernel + inputs.features[j + kRowsAhead] * units, units, /*near=*/true);
          }
          grad_values[j] = Dot(kernel + inputs.features[j] * units, g, units);
        }
      }
    });
  }
  // One gradient row per feature, each written by one thread.
  const std::vector<int32_t> example_of = ExampleOfEntries(batch, inputs, parallel_for);
  parallel_for(features.num_rows, 4 * units, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      KernelGradientRow(units, inputs, grad_out, features, example_of, r,
                        grad_kernel_rows + r * units);
    }
  });
}

namespace {

// Calls `update(row, gradient)` with each feature row's kernel gradient (sparse_input_matmul's),
// computed into a buffer that stays in L1; `prefetch(row)` runs kAdamRowsAhead rows ahead.
template <typename Prefetch, typename Update>
void ForEachKernelGradientRow(int64_t batch, int64_t units, const SparseRowsView& inputs,
                              const float* grad_out, const RowGroups& features,
                              int64_t cost_per_row, const ParallelFor& parallel_for,
                              const Prefetch& prefetch, const Update& update) {
  const std::vector<int32_t> example_of = ExampleOfEntries(batch, inputs, parallel_for);
  parallel_for(features.num_rows, cost_per_row, [&](int64_t begin, int64_t end) {
    std::vector<float> row_gradient(units);
    for (int64_t r = begin; r < end; ++r) {
      if (r + kAdamRowsAhead < end) prefetch(int64_t{features.ids[r + kAdamRowsAhead]});
      KernelGradientRow(units, inputs, grad_out, features, example_of, r, row_gradient.data());
      update(int64_t{features.ids[r]}, row_gradient.data());
    }
  });
}

}  // namespace

void SparseInputMatmulBackwardAdam(int64_t batch, int64_t units, const SparseRowsView& inputs,
                                   const float* grad_out, const RowGroups& features,
                                   const AdamHyperparameters& hyper, const AdamState& kernel,
                                   const ParallelFor& parallel_for) {
  ForEachKernelGradientRow(
      batch, units, inputs, grad_out, features, 12 * units, parallel_for,
      [&](int64_t row) { PrefetchAdamRow(kernel, row, units); },
      [&](int64_t row, const float* g) {
        const int64_t base = row * units;
        AdamUpdate(hyper.alpha, hyper.beta1, hyper.beta2, hyper.epsilon, g, kernel.var + base,
                   MomentAt(kernel.m, base), kernel.v + base, units);
      });
}

void SparseInputMatmulBackwardRowwiseRmsprop(int64_t batch, int64_t units,
                                             const SparseRowsView& inputs, const float* grad_out,
                                             const RowGroups& features,
                                             const RowwiseRmspropHyperparameters& hyper,
                                             float* kernel, float* kernel_v,
                                             const ParallelFor& parallel_for) {
  ForEachKernelGradientRow(
      batch, units, inputs, grad_out, features, 6 * units, parallel_for,
      [&](int64_t row) { PrefetchRowForWrite(kernel + row * units, units); },
      [&](int64_t row, const float* g) {
        RowwiseRmspropRow(hyper, units, g, kernel + row * units, kernel_v + row);
      });
}

}  // namespace tf_lsh
