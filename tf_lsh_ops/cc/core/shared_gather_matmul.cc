#include "tf_lsh_ops/cc/core/shared_gather_matmul.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "tf_lsh_ops/cc/core/vector_kernels.h"
#include "tf_lsh_ops/cc/core/vector_ops.h"

namespace tf_lsh {
namespace {

// Rows of the weights are prefetched this many rows ahead of their use: scattered over the
// whole matrix, they come from DRAM.
constexpr int64_t kFarPrefetch = 8;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Shared active sets are multiplied in column blocks of this many units: a block's gathered
// rows (dim x 64 floats) and the inputs stay in L2 while the block is multiplied.
constexpr int64_t kSharedBlock = 64;

// grad_out is transposed this many units (columns) at a time: the transposed tile (64 x batch
// floats) stays in L1 / L2 while it is written.
constexpr int64_t kTransposeTile = 64;

// Scratch of n floats, not zeroed: every element is written before it is read.
std::unique_ptr<float[]> Scratch(int64_t n) { return std::unique_ptr<float[]>(new float[n]); }

// The rows weights[ids[k]] for k < active, padding (-1) as zeros: [active, dim]. The rows are
// scattered over the whole matrix, so each is prefetched kFarPrefetch rows ahead.
std::unique_ptr<float[]> GatherRows(const float* weights, int64_t dim, const int32_t* ids,
                                    int64_t active, const ParallelFor& parallel_for) {
  std::unique_ptr<float[]> selected = Scratch(active * dim);
  parallel_for(active, 2 * dim, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      if (k + kFarPrefetch < active && ids[k + kFarPrefetch] >= 0) {  // maybe another shard's
        PrefetchRow(weights + int64_t{ids[k + kFarPrefetch]} * dim, dim, /*near=*/false);
      }
      float* row = selected.get() + k * dim;
      if (ids[k] >= 0) {
        std::memcpy(row, weights + int64_t{ids[k]} * dim, dim * sizeof(float));
      } else {
        std::fill(row, row + dim, 0.f);
      }
    }
  });
  return selected;
}

}  // namespace

void SharedGatherMatmulForward(const GatherMatmulShape& shape, const float* inputs,
                               const float* weights, const float* biases, const int32_t* ids,
                               float* out, const ParallelFor& parallel_for) {
  const int64_t dim = shape.dim, active = shape.active, batch = shape.batch;
  const int64_t blocks = CeilDiv(active, kSharedBlock);
  // The biases ride along as one more depth row: inputs get a column of ones and each panel a
  // row of biases, so that MatMul adds them (rounded once, as a separate addition would be).
  const int64_t depth = dim + 1;
  const std::unique_ptr<float[]> inputs_and_one = Scratch(batch * depth);
  for (int64_t b = 0; b < batch; ++b) {
    std::memcpy(inputs_and_one.get() + b * depth, inputs + b * dim, dim * sizeof(float));
    inputs_and_one[b * depth + dim] = 1.f;
  }
  const std::vector<float> zeros(dim, 0.f);  // the row of padding (-1)
  const auto row = [&](int64_t k) {
    return ids[k] >= 0 ? weights + int64_t{ids[k]} * dim : zeros.data();
  };
  parallel_for(blocks, batch * kSharedBlock * depth * 2, [&](int64_t begin, int64_t end) {
    // The block's rows, gathered and transposed: panel[d * kSharedBlock + j] = row(first + j)[d].
    const std::unique_ptr<float[]> panel = Scratch(depth * kSharedBlock);
    const float* rows[kSharedBlock];
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * kSharedBlock;
      const int64_t width = std::min(kSharedBlock, active - first);
      for (int64_t j = 0; j < width; ++j) {
        rows[j] = row(first + j);
        panel[dim * kSharedBlock + j] = ids[first + j] >= 0 ? biases[ids[first + j]] : 0.f;
      }
      TransposeRows(rows, width, dim, panel.get(), kSharedBlock);
      // The next block's rows are scattered over the whole matrix: fetched while this one is
      // multiplied.
      for (int64_t k = first + kSharedBlock; k < std::min(first + 2 * kSharedBlock, active); ++k) {
        if (ids[k] >= 0) PrefetchRow(row(k), dim, /*near=*/false);
      }
      MatMul(inputs_and_one.get(), depth, panel.get(), kSharedBlock, out + first, active,
             batch, width, depth);
    }
  });
}

void SharedGatherMatmulBackward(const GatherMatmulShape& shape, const float* inputs,
                                const float* weights, const float* grad_out, const int32_t* ids,
                                const RowGroups& rows, float* grad_inputs,
                                float* grad_weight_rows, float* grad_bias_rows,
                                const ParallelFor& parallel_for) {
  const int64_t dim = shape.dim, active = shape.active, batch = shape.batch;
  // grad_inputs = grad_out [batch, active] x (the active rows, padding as zeros) [active, dim].
  const std::unique_ptr<float[]> selected = GatherRows(weights, dim, ids, active, parallel_for);
  // Shards of 16 rows: each pass of MatMul over `selected` then serves 16 rows of grad_out.
  constexpr int64_t kInputRowsPerShard = 16;
  parallel_for(CeilDiv(batch, kInputRowsPerShard), kInputRowsPerShard * active * dim * 2,
               [&](int64_t begin, int64_t end) {
                 const int64_t first = begin * kInputRowsPerShard;
                 const int64_t count = std::min(end * kInputRowsPerShard, batch) - first;
                 MatMul(grad_out + first * active, active, selected.get(), dim,
                        grad_inputs + first * dim, dim, count, dim, active);
               });

  // Per unit k: its column of grad_out (transposed in tiles, so that both sides are read and
  // written by cache lines) times the inputs.
  const std::unique_ptr<float[]> grad_out_t = Scratch(active * batch);
  parallel_for(CeilDiv(active, kTransposeTile), 2 * kTransposeTile * batch,
               [&](int64_t begin, int64_t end) {
                 const int64_t k_end = std::min(end * kTransposeTile, active);
                 std::vector<const float*> rows(batch);
                 for (int64_t k0 = begin * kTransposeTile; k0 < k_end; k0 += kTransposeTile) {
                   for (int64_t b = 0; b < batch; ++b) rows[b] = grad_out + b * active + k0;
                   TransposeRows(rows.data(), batch, std::min(kTransposeTile, k_end - k0),
                                 grad_out_t.get() + k0 * batch, batch);
                 }
               });
  const std::unique_ptr<float[]> per_unit = Scratch(active * dim);
  constexpr int64_t kRowsPerShard = 6;  // MatMul's register block
  parallel_for(CeilDiv(active, kRowsPerShard), kRowsPerShard * batch * dim * 2,
               [&](int64_t begin, int64_t end) {
                 const int64_t first = begin * kRowsPerShard;
                 const int64_t count = std::min(end * kRowsPerShard, active) - first;
                 MatMul(grad_out_t.get() + first * batch, batch, inputs, dim,
                        per_unit.get() + first * dim, dim, count, dim, batch);
               });
  // Gradient rows, in grouping order: the sum over the positions of each neuron.
  const std::vector<float> ones(batch, 1.f);
  parallel_for(rows.num_rows, 2 * (dim + batch), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* dw = grad_weight_rows + r * dim;
      float db = 0.f;
      for (int32_t j = rows.offsets[r]; j < rows.offsets[r + 1]; ++j) {
        const int64_t k = rows.positions[j];
        if (j == rows.offsets[r]) {
          std::memcpy(dw, per_unit.get() + k * dim, dim * sizeof(float));
        } else {
          Axpy(1.f, per_unit.get() + k * dim, dw, dim);
        }
        db += Dot(grad_out_t.get() + k * batch, ones.data(), batch);  // vector partial sums
      }
      grad_bias_rows[r] = db;
    }
  });
}

}  // namespace tf_lsh
