#include "tf_lsh_ops/cc/core/sparse_gather_matmul.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>

#include "tf_lsh_ops/cc/core/vector_kernels.h"
#include "tf_lsh_ops/cc/core/vector_ops.h"

namespace tf_lsh {
namespace {

// Weight rows are read in id order, close together but not contiguous, which leaves the
// hardware prefetchers behind. Each row is prefetched twice: into L2 far ahead (enough rows in
// flight to cover DRAM latency) and into L1 just before use. The per-position values of a row
// (outputs written by the forward pass, upstream gradients read by the backward pass) are
// scattered over [batch, active] and are prefetched far ahead too. Tuned on the Amazon-670K
// shape (benchmarks/README.md).
constexpr int64_t kFarPrefetch = 8;
constexpr int64_t kNearPrefetch = 2;

// Prefetches what row r + kFarPrefetch and r + kNearPrefetch of `rows` will touch.
template <bool kWritesPerPosition>
__attribute__((always_inline)) inline void PrefetchAhead(const float* weights, int64_t dim,
                                                        const RowGroups& rows,
                                                        const float* per_position, int64_t r,
                                                        int64_t end) {
  if (r + kFarPrefetch < end) {
    const int64_t far = r + kFarPrefetch;
    PrefetchRow(weights + int64_t{rows.ids[far]} * dim, dim, false);
    for (int32_t j = rows.offsets[far]; j < rows.offsets[far + 1]; ++j) {
      __builtin_prefetch(per_position + rows.positions[j], kWritesPerPosition ? 1 : 0, 3);
    }
  }
  if (r + kNearPrefetch < end) {
    PrefetchRow(weights + int64_t{rows.ids[r + kNearPrefetch]} * dim, dim, true);
  }
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

// Gradient rows larger than this in all bypass the caches when written: they would not stay
// there until the optimizer reads them, and streaming saves reading each line before writing.
constexpr int64_t kStreamingBytes = int64_t{16} << 20;

// Sorting is cut into chunks of at least kMinSortChunk keys, at most kMaxSortChunks of them
// (fixed by the input size, so the work is the same for any thread count).
constexpr int kDigitBits = 11;
constexpr int64_t kDigits = int64_t{1} << kDigitBits;
constexpr int64_t kMaxSortChunks = 16;
constexpr int64_t kMinSortChunk = 16384;

// Loops over a chunk read end(c) once into a local: stores in the loop body may alias the
// fields, and the division would then run on every iteration.
struct Chunks {
  int64_t total;
  int64_t count;
  int64_t begin(int64_t c) const { return total * c / count; }
  int64_t end(int64_t c) const { return total * (c + 1) / count; }
  int64_t cost(int64_t cycles_per_item) const { return cycles_per_item * (total / count + 1); }
};

Chunks SortChunks(int64_t total) {
  return {total, std::clamp<int64_t>(total / kMinSortChunk, 1, kMaxSortChunks)};
}

// Sort keys: the neuron id in the high half, the position in the low half.
inline uint64_t Key(int32_t id, int64_t position) {
  return static_cast<uint64_t>(id) << 32 | static_cast<uint64_t>(position);
}

// Turns per-chunk digit counts ([chunk][digit]) into the first output slot of each (chunk,
// digit): after all keys of smaller digits and, within a digit, after those of earlier chunks.
// That keeps every pass stable.
void CountsToStarts(int64_t chunks, int64_t* counts) {
  int64_t total = 0;
  for (int64_t digit = 0; digit < kDigits; ++digit) {
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t n = counts[c * kDigits + digit];
      counts[c * kDigits + digit] = total;
      total += n;
    }
  }
}

// One stable counting-sort pass of `count` keys by the digit at `shift`, chunks in parallel.
void CountingSortPass(const uint64_t* __restrict from, int64_t count, int shift,
                      uint64_t* __restrict to, const ParallelFor& parallel_for) {
  const Chunks chunks = SortChunks(count);
  std::vector<int64_t> starts(chunks.count * kDigits, 0);
  parallel_for(chunks.count, chunks.cost(2), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      int64_t* counts = starts.data() + c * kDigits;
      for (int64_t i = chunks.begin(c), last = chunks.end(c); i < last; ++i) {
        ++counts[(from[i] >> shift) & (kDigits - 1)];
      }
    }
  });
  CountsToStarts(chunks.count, starts.data());
  parallel_for(chunks.count, chunks.cost(8), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      int64_t* next = starts.data() + c * kDigits;
      for (int64_t i = chunks.begin(c), last = chunks.end(c); i < last; ++i) {
        const uint64_t key = from[i];
        to[next[(key >> (shift)) & (kDigits - 1)]++] = key;
      }
    }
  });
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls `visit` on the rows of a finished grouping, in parallel runs.
void VisitRows(const RowGroups& groups, const RowVisitor& visit, const ParallelFor& parallel_for) {
  // About a dot product of 128 floats per position.
  const int64_t uses = groups.num_rows > 0 ? groups.offsets[groups.num_rows] / groups.num_rows : 0;
  parallel_for(groups.num_rows, 256 * (uses + 1), [&](int64_t begin, int64_t end) {
    visit({groups.ids + begin, groups.offsets + begin, groups.positions, end - begin});
  });
}

// An LSD radix sort of (id, position) keys: O(count) work and memory for any num_neurons.
bool GroupRowsByRadixSort(const int32_t* indices, int64_t count,
                          const RowGroupAllocator& allocate, const ParallelFor& parallel_for,
                          RowGroups* groups) {
  // Pass 1 over the indices: per chunk, the non-padding entries, the largest id and the counts
  // of the lowest digit of the ids.
  const Chunks input = SortChunks(count);
  std::vector<int64_t> counts(input.count * kDigits, 0);
  std::vector<int64_t> valid(input.count, 0);
  std::vector<int32_t> max_ids(input.count, 0);
  parallel_for(input.count, input.cost(3), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      int64_t* digit_counts = counts.data() + c * kDigits;
      int32_t max_id = 0;
      for (int64_t i = input.begin(c), last = input.end(c); i < last; ++i) {
        const int32_t id = indices[i];
        if (id < 0) continue;
        ++digit_counts[id & (kDigits - 1)];
        max_id = std::max(max_id, id);
      }
      max_ids[c] = max_id;
    }
  });
  int64_t num_positions = 0;
  for (int64_t c = 0; c < input.count; ++c) {
    for (int64_t digit = 0; digit < kDigits; ++digit) num_positions += counts[c * kDigits + digit];
  }
  const int32_t max_id = *std::max_element(max_ids.begin(), max_ids.end());

  // LSD radix sort of the keys (id, position) by id; stable, so positions stay increasing
  // within an id. The first pass reads the indices and writes keys. Scratch is not zeroed.
  std::unique_ptr<uint64_t[]> keys(new uint64_t[num_positions]);
  std::unique_ptr<uint64_t[]> buffer(new uint64_t[num_positions]);
  CountsToStarts(input.count, counts.data());
  parallel_for(input.count, input.cost(8), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      int64_t* next = counts.data() + c * kDigits;
      uint64_t* __restrict out = keys.get();
      for (int64_t i = input.begin(c), last = input.end(c); i < last; ++i) {
        const int32_t id = indices[i];
        if (id >= 0) out[next[id & (kDigits - 1)]++] = Key(id, i);
      }
    }
  });
  for (int shift = 32 + kDigitBits; shift < 64 && (int64_t{1} << (shift - 32)) <= max_id;
       shift += kDigitBits) {
    CountingSortPass(keys.get(), num_positions, shift, buffer.get(), parallel_for);
    keys.swap(buffer);
  }

  // Rows start where the id changes: chunks count their starts, then fill the storage.
  const uint64_t* __restrict sorted_keys = keys.get();
  const Chunks sorted = SortChunks(num_positions);
  const auto starts_row = [sorted_keys](int64_t j) {
    return j == 0 || (sorted_keys[j] >> 32) != (sorted_keys[j - 1] >> 32);
  };
  std::vector<int64_t> rows_before(sorted.count + 1, 0);
  parallel_for(sorted.count, sorted.cost(2), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      int64_t rows = 0;
      for (int64_t j = sorted.begin(c), last = sorted.end(c); j < last; ++j) rows += starts_row(j);
      rows_before[c + 1] = rows;
    }
  });
  for (int64_t c = 0; c < sorted.count; ++c) rows_before[c + 1] += rows_before[c];
  const int64_t num_rows = rows_before[sorted.count];
  int32_t *ids = nullptr, *offsets = nullptr, *positions = nullptr;
  if (!allocate.positions(num_positions, &positions) ||
      !allocate.rows(num_rows, &ids, &offsets)) {
    return false;
  }
  offsets[num_rows] = static_cast<int32_t>(num_positions);
  parallel_for(sorted.count, sorted.cost(4), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      int64_t row = rows_before[c];
      for (int64_t j = sorted.begin(c), last = sorted.end(c); j < last; ++j) {
        if (starts_row(j)) {
          ids[row] = static_cast<int32_t>(sorted_keys[j] >> 32);
          offsets[row++] = static_cast<int32_t>(j);
        }
        positions[j] = static_cast<int32_t>(sorted_keys[j] & 0xffffffffu);
      }
    }
  });
  *groups = {ids, offsets, positions, num_rows};
  return true;
}

// Grouping by blocks of kBlockNeurons neurons: one counting-sort pass buckets the keys by block
// (few buckets, so the scatter stays in L1), then each block is sorted in L1 by counting its
// neurons, which touches every neuron once: O(count + num_neurons).
constexpr int kBlockBits = 11;
constexpr int64_t kBlockNeurons = int64_t{1} << kBlockBits;

bool GroupRowsByBlocks(const int32_t* indices, int64_t count, int64_t num_neurons,
                       const RowGroupAllocator& allocate, const ParallelFor& parallel_for,
                       const RowVisitor& visit, RowGroups* groups) {
  const int64_t num_blocks = CeilDiv(num_neurons, kBlockNeurons);
  const Chunks input = SortChunks(count);
  // Per chunk, the positions of each block; then, block by block and chunk by chunk (stable),
  // where the chunk's keys of that block go.
  std::vector<int32_t> next(input.count * num_blocks, 0);
  parallel_for(input.count, input.cost(2), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      int32_t* block_counts = next.data() + c * num_blocks;
      for (int64_t i = input.begin(c), last = input.end(c); i < last; ++i) {
        if (indices[i] >= 0) ++block_counts[indices[i] >> kBlockBits];
      }
    }
  });
  std::vector<int64_t> block_start(num_blocks + 1);
  int64_t num_positions = 0;
  for (int64_t block = 0; block < num_blocks; ++block) {
    block_start[block] = num_positions;
    for (int64_t c = 0; c < input.count; ++c) {
      const int32_t n = next[c * num_blocks + block];
      next[c * num_blocks + block] = static_cast<int32_t>(num_positions);
      num_positions += n;
    }
  }
  block_start[num_blocks] = num_positions;
  int32_t* positions = nullptr;
  if (!allocate.positions(num_positions, &positions)) return false;

  // Keys (neuron within the block, position), bucketed by block.
  std::unique_ptr<uint64_t[]> keys(new uint64_t[num_positions]);
  parallel_for(input.count, input.cost(6), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      int32_t* block_next = next.data() + c * num_blocks;
      uint64_t* __restrict out = keys.get();
      for (int64_t i = input.begin(c), last = input.end(c); i < last; ++i) {
        const int32_t id = indices[i];
        if (id >= 0) {
          out[block_next[id >> kBlockBits]++] = Key(id & (kBlockNeurons - 1), i);
        }
      }
    }
  });

  // Each block's rows go to scratch at block_start + block: a block has at most one row per
  // position, plus the closing offset.
  std::unique_ptr<int32_t[]> block_ids(new int32_t[num_positions + num_blocks]);
  std::unique_ptr<int32_t[]> block_offsets(new int32_t[num_positions + num_blocks]);
  std::vector<int64_t> rows_before(num_blocks + 1, 0);
  const int64_t block_cost =
      8 * num_positions / std::max<int64_t>(num_blocks, 1) + 4 * kBlockNeurons;
  parallel_for(num_blocks, block_cost, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> next_position(kBlockNeurons);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block_start[block], last = block_start[block + 1];
      const int64_t neurons = std::min(kBlockNeurons, num_neurons - block * kBlockNeurons);
      int32_t* counts = next_position.data();
      std::fill(counts, counts + neurons, 0);
      for (int64_t j = first; j < last; ++j) ++counts[keys[j] >> 32];
      // Rows and offsets, without a branch per neuron: a slot is kept only if the neuron has
      // positions.
      int32_t* ids = block_ids.get() + first + block;
      int32_t* offsets = block_offsets.get() + first + block;
      int64_t rows = 0;
      int32_t start = static_cast<int32_t>(first);
      for (int64_t n = 0; n < neurons; ++n) {
        const int32_t uses = counts[n];
        ids[rows] = static_cast<int32_t>(block * kBlockNeurons + n);
        offsets[rows] = start;
        rows += uses != 0;
        counts[n] = start;
        start += uses;
      }
      offsets[rows] = static_cast<int32_t>(last);
      for (int64_t j = first; j < last; ++j) {
        positions[counts[keys[j] >> 32]++] = static_cast<int32_t>(keys[j] & 0xffffffffu);
      }
      rows_before[block + 1] = rows;
      if (visit) visit({ids, offsets, positions, rows});
    }
  });

  for (int64_t block = 0; block < num_blocks; ++block) rows_before[block + 1] += rows_before[block];
  const int64_t num_rows = rows_before[num_blocks];
  int32_t *ids = nullptr, *offsets = nullptr;
  if (!allocate.rows(num_rows, &ids, &offsets)) return false;
  parallel_for(num_blocks, 2 * num_rows / std::max<int64_t>(num_blocks, 1) + 1,
               [&](int64_t begin, int64_t end) {
                 for (int64_t block = begin; block < end; ++block) {
                   const int64_t from = block_start[block] + block, to = rows_before[block];
                   const int64_t rows = rows_before[block + 1] - to;
                   std::memcpy(ids + to, block_ids.get() + from, rows * sizeof(int32_t));
                   std::memcpy(offsets + to, block_offsets.get() + from, rows * sizeof(int32_t));
                 }
               });
  offsets[num_rows] = static_cast<int32_t>(num_positions);
  *groups = {ids, offsets, positions, num_rows};
  return true;
}

// Counting per neuron pays when neurons are few next to the entries.
constexpr int64_t kMaxNeuronsPerEntryForBlocks = 4;

}  // namespace

int64_t FindInvalidIndex(const int32_t* indices, int64_t count, int64_t num_neurons) {
  for (int64_t i = 0; i < count; ++i) {
    if (indices[i] < -1 || indices[i] >= num_neurons) return i;
  }
  return -1;
}

bool GroupRows(const int32_t* indices, int64_t count, int64_t num_neurons,
               const RowGroupAllocator& allocate, const ParallelFor& parallel_for,
               RowGroups* groups, const RowVisitor& visit) {
  if (num_neurons <= kMaxNeuronsPerEntryForBlocks * count) {
    return GroupRowsByBlocks(indices, count, num_neurons, allocate, parallel_for, visit, groups);
  }
  if (!GroupRowsByRadixSort(indices, count, allocate, parallel_for, groups)) return false;
  if (visit) VisitRows(*groups, visit, parallel_for);
  return true;
}

ActiveRows::ActiveRows(const int32_t* indices, int64_t count, const ParallelFor& parallel_for,
                       int64_t num_neurons) {
  if (num_neurons < 0) {
    num_neurons = count > 0 ? int64_t{*std::max_element(indices, indices + count)} + 1 : 0;
  }
  const RowGroupAllocator allocate{
      [this](int64_t num_positions, int32_t** positions) {
        positions_.resize(num_positions);
        *positions = positions_.data();
        return true;
      },
      [this](int64_t num_rows, int32_t** ids, int32_t** offsets) {
        ids_.resize(num_rows);
        offsets_.resize(num_rows + 1);
        *ids = ids_.data();
        *offsets = offsets_.data();
        return true;
      }};
  RowGroups groups;
  GroupRows(indices, count, num_neurons, allocate, parallel_for, &groups);
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

namespace {

// The row loops, written once over a vector-kernel policy (vector_kernels.h).
struct GatherMatmulArgs {
  const GatherMatmulShape& shape;
  const float* inputs;
  const float* weights;
  const RowGroups& rows;
  Divider example_of;
};

template <typename Kernels>
inline void ForwardRows(const GatherMatmulArgs& args, const float* biases, float* out,
                        int64_t begin, int64_t end) {
  const int64_t dim = args.shape.dim;
  const RowGroups& rows = args.rows;
  for (int64_t r = begin; r < end; ++r) {
    PrefetchAhead</*kWritesPerPosition=*/true>(args.weights, dim, rows, out, r, end);
    const float* w = args.weights + int64_t{rows.ids[r]} * dim;
    const float bias = biases[rows.ids[r]];
    for (int64_t j = rows.offsets[r]; j < rows.offsets[r + 1]; ++j) {
      const int64_t pos = rows.positions[j];
      out[pos] = Kernels::Dot(args.inputs + args.example_of(pos) * dim, w, dim) + bias;
    }
  }
}

// Rows [begin, end): their part of grad_inputs added to `dx`, and their gradient rows, written
// to grad_weight_rows / grad_bias_rows or, with `adam`, applied to the variables at once.
template <typename Kernels>
inline void BackwardRows(const GatherMatmulArgs& args, const float* grad_out, float* dx,
                         float* grad_weight_rows, float* grad_bias_rows, const AdamTarget* adam,
                         int64_t begin, int64_t end) {
  const int64_t dim = args.shape.dim;
  const RowGroups& rows = args.rows;
  const bool stream = rows.num_rows * dim * int64_t{sizeof(float)} > kStreamingBytes;
  std::vector<float> row_gradient(adam != nullptr ? dim : 0);  // stays in L1
  for (int64_t r = begin; r < end; ++r) {
    PrefetchAhead</*kWritesPerPosition=*/false>(args.weights, dim, rows, grad_out, r, end);
    if (adam != nullptr && r + kFarPrefetch < end) {  // the moments are scattered too
      const int64_t ahead = int64_t{rows.ids[r + kFarPrefetch]} * dim;
      PrefetchRow(adam->weights.m + ahead, dim, false);
      PrefetchRow(adam->weights.v + ahead, dim, false);
    }
    const int32_t* positions = rows.positions + rows.offsets[r];
    const int64_t count = rows.offsets[r + 1] - rows.offsets[r];
    // The weight gradient: sum of grad_out[pos] * inputs[example of pos].
    float* dw = adam != nullptr ? row_gradient.data() : grad_weight_rows + r * dim;
    Kernels::WeightedSum(
        dim, count,
        [&](int64_t j, float* weight, const float** vector) {
          *weight = grad_out[positions[j]];
          *vector = args.inputs + args.example_of(positions[j]) * dim;
        },
        stream && adam == nullptr, dw);
    const int64_t id = rows.ids[r];
    const float* w = args.weights + id * dim;
    float db = 0.f;
    for (int64_t j = 0; j < count; ++j) {
      const float g = grad_out[positions[j]];
      Kernels::Axpy(g, w, dx + args.example_of(positions[j]) * dim, dim);  // weights before
      db += g;                                                             // the update
    }
    if (adam == nullptr) {
      grad_bias_rows[r] = db;
      continue;
    }
    const AdamHyperparameters& h = adam->hyper;
    AdamUpdate(h.alpha, h.beta1, h.beta2, h.epsilon, dw, adam->weights.var + id * dim,
               adam->weights.m + id * dim, adam->weights.v + id * dim, dim);
    AdamUpdate(h.alpha, h.beta1, h.beta2, h.epsilon, &db, adam->biases.var + id,
               adam->biases.m + id, adam->biases.v + id, 1);
  }
  Kernels::FinishStores();
}

#ifdef TF_LSH_X86
__attribute__((target("avx2,fma"), flatten)) void ForwardRowsAvx2(const GatherMatmulArgs& args,
                                                                   const float* biases,
                                                                   float* out, int64_t begin,
                                                                   int64_t end) {
  ForwardRows<Avx2Kernels>(args, biases, out, begin, end);
}

__attribute__((target("avx2,fma"), flatten)) void BackwardRowsAvx2(
    const GatherMatmulArgs& args, const float* grad_out, float* dx, float* grad_weight_rows,
    float* grad_bias_rows, const AdamTarget* adam, int64_t begin, int64_t end) {
  BackwardRows<Avx2Kernels>(args, grad_out, dx, grad_weight_rows, grad_bias_rows, adam, begin,
                            end);
}
#endif

// The backward pass over row blocks with per-block grad_inputs accumulators (see the header).
void Backward(const GatherMatmulShape& shape, const float* inputs, const float* weights,
              const float* grad_out, const RowGroups& rows, float* grad_inputs,
              float* grad_weight_rows, float* grad_bias_rows, const AdamTarget* adam,
              const ParallelFor& parallel_for) {
  const GatherMatmulArgs args{shape, inputs, weights, rows,
                              Divider(std::max<int64_t>(shape.active, 1))};
  const int64_t dim = shape.dim, num_rows = rows.num_rows;
  const int64_t accumulator_bytes = std::max<int64_t>(shape.batch * dim * sizeof(float), 1);
  const int64_t blocks = std::max<int64_t>(
      1, std::min({kBackwardBlocks, num_rows, kAccumulatorBytes / accumulator_bytes}));
  // Each block owns a grad_inputs accumulator; one pass over its rows reads every weight row
  // once and writes every gradient row once.
  std::vector<float> partial_grad_inputs(blocks * shape.batch * dim, 0.f);
  const int64_t cost = int64_t{rows.offsets[num_rows]} * 4 * dim / blocks + 1;
  parallel_for(blocks, cost, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
      float* dx = partial_grad_inputs.data() + block * shape.batch * dim;
      const int64_t begin = num_rows * block / blocks, end = num_rows * (block + 1) / blocks;
#ifdef TF_LSH_X86
      if (UsesAvx2()) {
        BackwardRowsAvx2(args, grad_out, dx, grad_weight_rows, grad_bias_rows, adam, begin, end);
        continue;
      }
#endif
      BackwardRows<PortableKernels>(args, grad_out, dx, grad_weight_rows, grad_bias_rows, adam,
                                    begin, end);
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

}  // namespace

namespace {

// The forward pass over all rows of `rows`: walking neurons in id order reads each weight row
// once, nearly as a stream.
RowVisitor ForwardVisitor(const GatherMatmulShape& shape, const float* inputs,
                          const float* weights, const float* biases, float* out) {
  return [=](const RowGroups& rows) {
    const GatherMatmulArgs args{shape, inputs, weights, rows,
                                Divider(std::max<int64_t>(shape.active, 1))};
#ifdef TF_LSH_X86
    if (UsesAvx2()) return ForwardRowsAvx2(args, biases, out, 0, rows.num_rows);
#endif
    ForwardRows<PortableKernels>(args, biases, out, 0, rows.num_rows);
  };
}

}  // namespace

void SparseGatherMatmulForward(const GatherMatmulShape& shape, const float* inputs,
                               const float* weights, const float* biases, const RowGroups& rows,
                               float* out, const ParallelFor& parallel_for) {
  std::fill(out, out + shape.batch * shape.active, 0.f);  // padding (-1) is never visited
  VisitRows(rows, ForwardVisitor(shape, inputs, weights, biases, out), parallel_for);
}

bool GroupAndMultiply(const GatherMatmulShape& shape, const float* inputs, const float* weights,
                      const float* biases, const int32_t* indices,
                      const RowGroupAllocator& allocate, float* out,
                      const ParallelFor& parallel_for, RowGroups* groups) {
  std::fill(out, out + shape.batch * shape.active, 0.f);
  return GroupRows(indices, shape.batch * shape.active, shape.num_neurons, allocate,
                   parallel_for, groups, ForwardVisitor(shape, inputs, weights, biases, out));
}

void SparseGatherMatmulBackward(const GatherMatmulShape& shape, const float* inputs,
                                const float* weights, const float* grad_out,
                                const RowGroups& rows, float* grad_inputs,
                                float* grad_weight_rows, float* grad_bias_rows,
                                const ParallelFor& parallel_for) {
  Backward(shape, inputs, weights, grad_out, rows, grad_inputs, grad_weight_rows,
           grad_bias_rows, /*adam=*/nullptr, parallel_for);
}

void SparseGatherMatmulBackwardAdam(const GatherMatmulShape& shape, const float* inputs,
                                    const float* grad_out, const RowGroups& rows,
                                    const AdamTarget& adam, float* grad_inputs,
                                    const ParallelFor& parallel_for) {
  Backward(shape, inputs, adam.weights.var, grad_out, rows, grad_inputs,
           /*grad_weight_rows=*/nullptr, /*grad_bias_rows=*/nullptr, &adam, parallel_for);
}

namespace {

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
