#include "tf_lsh_ops/cc/core/row_groups.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace tf_lsh {
namespace {

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

void VisitRows(const RowGroups& groups, const RowVisitor& visit, const ParallelFor& parallel_for) {
  // About a dot product of 128 floats per position.
  const int64_t uses = groups.num_rows > 0 ? groups.offsets[groups.num_rows] / groups.num_rows : 0;
  parallel_for(groups.num_rows, 256 * (uses + 1), [&](int64_t begin, int64_t end) {
    visit({groups.ids + begin, groups.offsets + begin, groups.positions, end - begin});
  });
}

}  // namespace tf_lsh
