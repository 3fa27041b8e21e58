#include "tf_lsh_ops/cc/core/sparse_gather_matmul.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "tf_lsh_ops/cc/core/vector_ops.h"

namespace tf_lsh {
namespace {

// Rows ahead to prefetch. Sorted rows are close together but not contiguous, so the hardware
// prefetcher alone leaves the gather waiting on memory.
constexpr int64_t kPrefetchDistance = 8;

// Prefetches every cache line of a weight row.
inline void PrefetchRow(const float* row, int64_t dim) {
  for (int64_t i = 0; i < dim; i += 16) __builtin_prefetch(row + i);
}

// position / active without an integer division (tens of cycles) per position: a
// floating-point reciprocal, corrected to the exact quotient.
class Divider {
 public:
  explicit Divider(int64_t divisor) : divisor_(divisor), inverse_(1.0 / divisor) {}
  int64_t operator()(int64_t n) const {
    int64_t q = static_cast<int64_t>(n * inverse_);
    if (q * divisor_ > n) --q;
    if ((q + 1) * divisor_ <= n) ++q;
    return q;
  }

 private:
  int64_t divisor_;
  double inverse_;
};

// Backward work is cut into up to this many blocks, each with its own grad_inputs accumulator.
// The count depends only on the shapes, never on the thread count: the sums, and so the
// results, are the same on any machine. The accumulators take at most kAccumulatorBytes.
constexpr int64_t kBackwardBlocks = 16;
constexpr int64_t kAccumulatorBytes = int64_t{64} << 20;

// Stable LSD radix sort of `keys` by bits [32, 32 + id_bits): the neuron id in the high half.
void RadixSortByHighBits(std::vector<uint64_t>* keys, int id_bits) {
  constexpr int kDigitBits = 11;
  std::vector<uint64_t> buffer(keys->size());
  for (int shift = 32; shift < 32 + id_bits; shift += kDigitBits) {
    int64_t counts[1 << kDigitBits] = {0};
    for (uint64_t key : *keys) ++counts[(key >> shift) & ((1 << kDigitBits) - 1)];
    int64_t total = 0;
    for (int64_t& count : counts) {
      const int64_t c = count;
      count = total;
      total += c;
    }
    for (uint64_t key : *keys) buffer[counts[(key >> shift) & ((1 << kDigitBits) - 1)]++] = key;
    keys->swap(buffer);
  }
}

}  // namespace

int64_t FindInvalidIndex(const int32_t* indices, int64_t count, int64_t num_neurons) {
  for (int64_t i = 0; i < count; ++i) {
    if (indices[i] < -1 || indices[i] >= num_neurons) return i;
  }
  return -1;
}

ActiveRows::ActiveRows(const int32_t* indices, int64_t count) {
  std::vector<uint64_t> keys;
  keys.reserve(count);
  int32_t max_id = 0;
  for (int64_t i = 0; i < count; ++i) {
    if (indices[i] < 0) continue;
    keys.push_back(static_cast<uint64_t>(indices[i]) << 32 | static_cast<uint64_t>(i));
    max_id = std::max(max_id, indices[i]);
  }
  int id_bits = 0;
  while (id_bits < 31 && (int64_t{1} << id_bits) <= max_id) ++id_bits;
  RadixSortByHighBits(&keys, id_bits);

  positions_.resize(keys.size());
  offsets_.push_back(0);
  for (size_t j = 0; j < keys.size(); ++j) {
    const int32_t id = static_cast<int32_t>(keys[j] >> 32);
    if (ids_.empty() || ids_.back() != id) {
      if (!ids_.empty()) offsets_.push_back(static_cast<int32_t>(j));
      ids_.push_back(id);
    }
    positions_[j] = static_cast<int32_t>(keys[j] & 0xffffffffu);
  }
  if (!ids_.empty()) offsets_.push_back(static_cast<int32_t>(keys.size()));
}

std::string CheckRowGroups(const RowGroups& groups, int64_t num_positions, int64_t num_neurons,
                           int64_t num_slots) {
  if (groups.offsets[0] != 0 || groups.offsets[groups.num_rows] != num_positions) {
    return "row_splits must start at 0 and end at the number of positions";
  }
  for (int64_t r = 0; r < groups.num_rows; ++r) {
    if (groups.offsets[r + 1] <= groups.offsets[r]) return "row_splits must increase";
    if (groups.ids[r] < 0 || groups.ids[r] >= num_neurons ||
        (r > 0 && groups.ids[r] <= groups.ids[r - 1])) {
      return "rows must be increasing neuron ids in [0, " + std::to_string(num_neurons) + ")";
    }
  }
  for (int64_t j = 0; j < num_positions; ++j) {
    if (groups.positions[j] < 0 || groups.positions[j] >= num_slots) {
      return "positions must lie in [0, " + std::to_string(num_slots) + ")";
    }
  }
  return "";
}

void SparseGatherMatmulForward(const GatherMatmulShape& shape, const float* inputs,
                               const float* weights, const float* biases, const RowGroups& rows,
                               float* out, const ParallelFor& parallel_for) {
  const int64_t dim = shape.dim, active = shape.active;
  const Divider example_of(std::max<int64_t>(active, 1));
  // Padding (-1) is never visited below.
  std::fill(out, out + shape.batch * active, 0.f);
  const int32_t* ids = rows.ids;
  const int32_t* offsets = rows.offsets;
  const int32_t* positions = rows.positions;
  const int64_t uses = rows.num_rows > 0 ? 1 + offsets[rows.num_rows] / rows.num_rows : 1;
  // Walking neurons in id order reads each weight row once, nearly as a stream.
  parallel_for(rows.num_rows, uses * (2 * dim + 20), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (r + kPrefetchDistance < end) {
        PrefetchRow(weights + int64_t{ids[r + kPrefetchDistance]} * dim, dim);
      }
      const float* w = weights + int64_t{ids[r]} * dim;
      const float bias = biases[ids[r]];
      for (int64_t j = offsets[r]; j < offsets[r + 1]; ++j) {
        const int64_t pos = positions[j];
        out[pos] = Dot(inputs + example_of(pos) * dim, w, dim) + bias;
      }
    }
  });
}

void SparseGatherMatmulBackward(const GatherMatmulShape& shape, const float* inputs,
                                const float* weights, const float* grad_out,
                                const RowGroups& rows, float* grad_inputs,
                                float* grad_weight_rows, float* grad_bias_rows,
                                const ParallelFor& parallel_for) {
  const int64_t dim = shape.dim, active = shape.active, num_rows = rows.num_rows;
  const Divider example_of(std::max<int64_t>(active, 1));
  const int32_t* ids = rows.ids;
  const int32_t* offsets = rows.offsets;
  const int32_t* positions = rows.positions;
  const int64_t accumulator_bytes = std::max<int64_t>(shape.batch * dim * sizeof(float), 1);
  const int64_t blocks = std::max<int64_t>(
      1, std::min({kBackwardBlocks, num_rows, kAccumulatorBytes / accumulator_bytes}));
  // Each block owns a grad_inputs accumulator; one pass over its rows reads every weight row
  // once and writes every gradient row once.
  std::vector<float> partial_grad_inputs(blocks * shape.batch * dim, 0.f);
  const int64_t cost = int64_t{offsets[num_rows]} * 4 * dim / blocks + 1;
  parallel_for(blocks, cost, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
      float* dx = partial_grad_inputs.data() + block * shape.batch * dim;
      const int64_t end = num_rows * (block + 1) / blocks;
      for (int64_t r = num_rows * block / blocks; r < end; ++r) {
        if (r + kPrefetchDistance < end) {
          PrefetchRow(weights + int64_t{ids[r + kPrefetchDistance]} * dim, dim);
        }
        const float* w = weights + int64_t{ids[r]} * dim;
        float* dw = grad_weight_rows + r * dim;
        std::memset(dw, 0, dim * sizeof(float));
        float db = 0.f;
        for (int64_t j = offsets[r]; j < offsets[r + 1]; ++j) {
          const int64_t pos = positions[j];
          const int64_t b = example_of(pos);
          const float g = grad_out[pos];
          Axpy(g, inputs + b * dim, dw, dim);
          Axpy(g, w, dx + b * dim, dim);
          db += g;
        }
        grad_bias_rows[r] = db;
      }
    }
  });
  // grad_inputs = sum of the block accumulators, in block order.
  parallel_for(shape.batch, blocks * dim, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      float* dx = grad_inputs + b * dim;
      std::memset(dx, 0, dim * sizeof(float));
      for (int64_t block = 0; block < blocks; ++block) {
        Axpy(1.f, partial_grad_inputs.data() + (block * shape.batch + b) * dim, dx, dim);
      }
    }
  });
}

}  // namespace tf_lsh
