#include "tf_lsh_ops/cc/core/matmul_top_k.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "tf_lsh_ops/cc/core/vector_kernels.h"
#include "tf_lsh_ops/cc/core/vector_ops.h"

namespace tf_lsh {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Rows scored together: one 16-float product per unit is two AVX2 registers, and MatMul's
// register block is 16 columns wide.
constexpr int64_t kLanes = 16;
// Room beyond k in a row's candidate buffer before it is pruned back to k: pruning costs
// O(capacity), so each pruned candidate costs O(1).
constexpr int64_t kSlack = 64;
constexpr float kInf = std::numeric_limits<float>::infinity();

// A candidate as one integer whose ascending order is the result's order (higher score first,
// then lower id), so that selection and sorting compare plain integers: the high half is the
// score's bits mapped to an order-reversing integer, the low half the id.
using Key = uint64_t;

// A score is never -0, which the bits would order below +0 although they tie: sums start at +0,
// and in round-to-nearest x + y is -0 only if both are.
Key Pack(float score, int32_t id) {
  uint32_t bits;
  std::memcpy(&bits, &score, 4);
  const uint32_t ascending = bits ^ ((bits >> 31) ? 0xffffffffu : 0x80000000u);
  return (Key{~ascending} << 32) | static_cast<uint32_t>(id);
}

float ScoreOf(Key key) {
  const uint32_t ascending = ~static_cast<uint32_t>(key >> 32);
  const uint32_t bits = ascending ^ ((ascending >> 31) ? 0x80000000u : 0xffffffffu);
  float score;
  std::memcpy(&score, &bits, 4);
  return score;
}

// Reorders keys [0, size) so that [0, k) holds the k smallest, the k-th smallest at k - 1. A
// quickselect whose partition has no data-dependent branch (a branch per key mispredicts half
// the time on candidates): about 3 times faster than std::nth_element here. Keys are distinct
// (ids are), so every round places its pivot; an unlucky run of pivots hands over to
// std::nth_element, which bounds the worst case.
void SelectSmallest(Key* keys, int64_t size, int64_t k) {
  const int64_t target = k - 1;
  int64_t lo = 0, hi = size;
  for (int round = 0; hi - lo > 16; ++round) {
    if (round == 64) {
      std::nth_element(keys + lo, keys + target, keys + hi);
      return;
    }
    // The median of the first, middle and last keys, moved to the end.
    const int64_t mid = lo + (hi - lo) / 2;
    const Key a = keys[lo], b = keys[mid], c = keys[hi - 1];
    const int64_t median =
        a < b ? (b < c ? mid : (a < c ? hi - 1 : lo)) : (a < c ? lo : (b < c ? hi - 1 : mid));
    std::swap(keys[median], keys[hi - 1]);
    const Key pivot = keys[hi - 1];
    // [lo, p) < pivot <= [p, it): each key is swapped with *p, and p advances if it is smaller.
    Key* p = keys + lo;
    for (Key* it = keys + lo; it < keys + hi - 1; ++it) {
      const Key x = *it;
      *it = *p;
      *p = x;
      p += x < pivot;
    }
    std::swap(*p, keys[hi - 1]);
    const int64_t position = p - keys;
    if (position == target) return;
    if (target < position) {
      hi = position;
    } else {
      lo = position + 1;
    }
  }
  for (int64_t i = lo + 1; i < hi; ++i) {  // insertion sort of the last few
    const Key x = keys[i];
    int64_t j = i;
    for (; j > lo && keys[j - 1] > x; --j) keys[j] = keys[j - 1];
    keys[j] = x;
  }
}

// Sorts keys [0, n) ascending; `scratch` holds n keys. Many keys go through a radix sort (one
// pass counts all eight bytes; bytes equal in every key, such as an id's high ones, are
// skipped): 4-5 times faster than std::sort at k = 3000.
void SortKeys(Key* keys, int64_t n, Key* scratch) {
  if (n < 256) {
    std::sort(keys, keys + n);
    return;
  }
  uint32_t counts[8][256] = {};
  for (int64_t i = 0; i < n; ++i) {
    for (int byte = 0; byte < 8; ++byte) ++counts[byte][(keys[i] >> (8 * byte)) & 255];
  }
  Key *from = keys, *to = scratch;
  for (int byte = 0; byte < 8; ++byte) {
    uint32_t* offsets = counts[byte];
    if (offsets[(from[0] >> (8 * byte)) & 255] == n) continue;
    uint32_t sum = 0;
    for (int digit = 0; digit < 256; ++digit) {
      const uint32_t count = offsets[digit];
      offsets[digit] = sum;
      sum += count;
    }
    for (int64_t i = 0; i < n; ++i) to[offsets[(from[i] >> (8 * byte)) & 255]++] = from[i];
    std::swap(from, to);
  }
  if (from != keys) std::copy(from, from + n, keys);
}

// One row's candidates within one shard of units, scanned in increasing id order.
struct RowCandidates {
  Key* keys;
  int64_t size;
  // The k-th best score when the buffer was last pruned (-inf before): a unit scanned later has
  // a higher id than all the buffer's, so it loses to those k unless its score is strictly
  // higher.
  float threshold;

  // Adds a candidate (never NaN); prunes to the k best when the buffer is full.
  void Push(float score, int64_t id, int64_t k, int64_t capacity) {
    keys[size++] = Pack(score, static_cast<int32_t>(id));
    if (size == capacity) Prune(k);
  }

  // Keeps the k best candidates.
  void Prune(int64_t k) {
    SelectSmallest(keys, size, k);
    size = k;
    threshold = ScoreOf(keys[k - 1]);
  }
};

// A block of up to kLanes rows, scored against the units a chunk at a time.
struct Block {
  int64_t rows;
  // 16, or 8 for a block of at most 8 rows (batch 1 to 8, or the batch's last rows), which is
  // then scored at half the cost.
  int64_t lanes;
  const float* queries_t;     // [dim, lanes]: the rows as columns, then zeros
  RowCandidates* candidates;  // [rows]
  float* thresholds;          // [lanes]: the rows', then +inf (absent rows never take a unit)
};

// products[j * 8 + r] = keys[j, :] . queries_t[:, r] for j < width, r < 8: the arithmetic of
// MatMul's portable loops (each product rounded, then added in order of depth) on 8 columns,
// which MatMul's vector code would leave to its scalar tail.
void ScoreEightPortable(const float* keys, int64_t dim, const float* queries_t, int64_t width,
                        float* products) {
  for (int64_t j = 0; j < width; ++j) {
    float* row = products + j * 8;
    for (int64_t r = 0; r < 8; ++r) row[r] = 0.f;
    for (int64_t d = 0; d < dim; ++d) {
      const float key = keys[j * dim + d];
      for (int64_t r = 0; r < 8; ++r) row[r] += key * queries_t[d * 8 + r];
    }
  }
}

#ifdef TF_LSH_X86
// Units [0, kUnits) of ScoreEight: one register per unit, each load of queries serving kUnits
// units. Fused multiply-adds in order of depth, as MatMul's vector code.
template <int kUnits>
__attribute__((target("avx2,fma"), always_inline)) inline void ScoreEightBlock(
    const float* keys, int64_t dim, const float* queries_t, float* products) {
  __m256 acc[kUnits];
#pragma GCC unroll 6
  for (int u = 0; u < kUnits; ++u) acc[u] = _mm256_setzero_ps();
  for (int64_t d = 0; d < dim; ++d) {
    const __m256 q = _mm256_loadu_ps(queries_t + d * 8);
#pragma GCC unroll 6
    for (int u = 0; u < kUnits; ++u) {
      acc[u] = _mm256_fmadd_ps(_mm256_broadcast_ss(keys + u * dim + d), q, acc[u]);
    }
  }
#pragma GCC unroll 6
  for (int u = 0; u < kUnits; ++u) _mm256_storeu_ps(products + u * 8, acc[u]);
}

__attribute__((target("avx2,fma"))) void ScoreEightAvx2(const float* keys, int64_t dim,
                                                         const float* queries_t, int64_t width,
                                                         float* products) {
  int64_t j = 0;
  for (; j + 6 <= width; j += 6) {
    ScoreEightBlock<6>(keys + j * dim, dim, queries_t, products + j * 8);
  }
  for (; j < width; ++j) ScoreEightBlock<1>(keys + j * dim, dim, queries_t, products + j * 8);
}
#endif

// Pushes the units [begin, end) of a chunk that beat their row's threshold: the score of unit
// first_id + j for row r is products[j * kWidth + r] + biases[j]. A NaN score is never greater.
template <int kWidth>
void ScanPortable(const float* products, const float* biases, int64_t begin, int64_t end,
                  int64_t first_id, int64_t k, int64_t capacity, Block* block) {
  for (int64_t j = begin; j < end; ++j) {
    for (int64_t r = 0; r < block->rows; ++r) {
      const float score = products[j * kWidth + r] + biases[j];
      RowCandidates& row = block->candidates[r];
      if (score > row.threshold) {
        row.Push(score, first_id + j, k, capacity);
        block->thresholds[r] = row.threshold;
      }
    }
  }
}

#ifdef TF_LSH_X86
// ScanPortable, all the rows of a unit in one comparison: most units beat no row's threshold,
// so most cost a dozen instructions. The vector sums are the scalar sums (one rounding each).
template <int kWidth>
__attribute__((target("avx2"))) void ScanAvx2(const float* products, const float* biases,
                                              int64_t begin, int64_t end, int64_t first_id,
                                              int64_t k, int64_t capacity, Block* block) {
  constexpr int kRegisters = kWidth / 8;
  __m256 thresholds[kRegisters];
  for (int i = 0; i < kRegisters; ++i) thresholds[i] = _mm256_loadu_ps(block->thresholds + 8 * i);
  for (int64_t j = begin; j < end; ++j) {
    const __m256 bias = _mm256_broadcast_ss(biases + j);
    __m256 scores[kRegisters];
    unsigned mask = 0;
    for (int i = 0; i < kRegisters; ++i) {
      scores[i] = _mm256_add_ps(_mm256_loadu_ps(products + j * kWidth + 8 * i), bias);
      mask |= _mm256_movemask_ps(_mm256_cmp_ps(scores[i], thresholds[i], _CMP_GT_OQ)) << (8 * i);
    }
    if (mask == 0) continue;
    alignas(32) float lanes[kWidth];
    for (int i = 0; i < kRegisters; ++i) _mm256_store_ps(lanes + 8 * i, scores[i]);
    do {
      const int r = __builtin_ctz(mask);
      mask &= mask - 1;
      RowCandidates& row = block->candidates[r];
      row.Push(lanes[r], first_id + j, k, capacity);
      block->thresholds[r] = row.threshold;
    } while (mask != 0);
    for (int i = 0; i < kRegisters; ++i) {
      thresholds[i] = _mm256_loadu_ps(block->thresholds + 8 * i);
    }
  }
}
#endif

using ScoreFn = void (*)(const float*, int64_t, const float*, int64_t, float*);
using ScanFn = void (*)(const float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                        Block*);

// The kernels of this CPU, chosen once (vector_ops.h decides, as for MatMul).
struct Kernels {
  ScoreFn score_eight = ScoreEightPortable;
  ScanFn scan_eight = ScanPortable<8>;
  ScanFn scan_sixteen = ScanPortable<16>;
  Kernels() {
#ifdef TF_LSH_X86
    if (UsesAvx2()) {
      score_eight = ScoreEightAvx2;
      scan_eight = ScanAvx2<8>;
      scan_sixteen = ScanAvx2<16>;
    }
#endif
  }
};

// Scores `block`'s rows against the units [first, first + width) of a shard whose first k units
// end at `open_end`, and pushes the candidates; `products` is [width, lanes] scratch.
void ScanChunk(int64_t dim, int64_t k, const float* keys, const float* biases, int64_t first,
               int64_t width, int64_t open_end, int64_t capacity, float* products,
               Block* block) {
  static const Kernels kernels;
  // products[j * lanes + r] = keys[first + j] . row r, the keys read in place. Sixteen columns
  // are MatMul's vector block, so its scalar tail (whose rounding is the compiler's choice)
  // never runs; eight have the same arithmetic. Every score is thus rounded alike whatever its
  // block or chunk.
  if (block->lanes == 16) {
    MatMul(keys + first * dim, dim, block->queries_t, 16, products, 16, width, 16, dim);
  } else {
    kernels.score_eight(keys + first * dim, dim, block->queries_t, width, products);
  }
  // A row's first k units are taken unconditionally: they fill its buffer, whatever their
  // scores (-inf included), and set its first threshold.
  const int64_t open = std::clamp<int64_t>(open_end - first, 0, width);
  for (int64_t j = 0; j < open; ++j) {
    for (int64_t r = 0; r < block->rows; ++r) {
      const float score = products[j * block->lanes + r] + biases[first + j];
      RowCandidates& row = block->candidates[r];
      row.keys[row.size++] = Pack(std::isnan(score) ? -kInf : score, first + j);
    }
  }
  if (open > 0 && first + open == open_end) {
    for (int64_t r = 0; r < block->rows; ++r) {
      block->candidates[r].Prune(k);
      block->thresholds[r] = block->candidates[r].threshold;
    }
  }
  const ScanFn scan = block->lanes == 16 ? kernels.scan_sixteen : kernels.scan_eight;
  scan(products, biases + first, open, width, first, k, capacity, block);
}

// Writes the ids of the k best of `keys` [0, size), best first; keys [k, 2k) are scratch (a
// row's buffer holds 2k + kSlack keys, the merged shards of a row at least 2k).
void WriteBest(Key* keys, int64_t size, int64_t k, int32_t* ids) {
  if (size > k) SelectSmallest(keys, size, k);
  SortKeys(keys, k, keys + k);
  for (int64_t i = 0; i < k; ++i) ids[i] = static_cast<int32_t>(keys[i] & 0xffffffffu);
}

}  // namespace

void MatmulTopK(int64_t batch, int64_t dim, int64_t units, int64_t k, const float* queries,
                const float* keys, const float* biases, int32_t* ids,
                const ParallelFor& parallel_for, const MatmulTopKSplit& split) {
  if (batch == 0) return;
  // Chunks of about 32 KB of keys, which a group's blocks share while they are in L1 / L2.
  const int64_t chunk = split.chunk_units > 0
                            ? split.chunk_units
                            : std::clamp<int64_t>(8192 / std::max<int64_t>(dim, 1), 16, 256);
  const int64_t target_tasks = std::max<int64_t>(split.target_tasks, 1);
  const int64_t blocks = CeilDiv(batch, kLanes);
  // Units are split only when the blocks of rows are too few to keep the threads busy: each
  // shard's rows select again from scratch (k unconditional units, then a rising threshold).
  // Shards of at least 4k units yield k candidates a row each, after discarding most units.
  const int64_t shards =
      std::clamp<int64_t>(CeilDiv(target_tasks, blocks), 1,
                          std::max<int64_t>(units / std::max(split.min_shard_units, 4 * k), 1));
  const int64_t groups = std::clamp<int64_t>(CeilDiv(target_tasks, shards), 1, blocks);
  const int64_t group_blocks = CeilDiv(blocks, groups);
  const int64_t capacity = 2 * k + kSlack;
  // With several shards, each row's k best of each shard, merged below: [batch, shards, k].
  std::unique_ptr<Key[]> merged;
  if (shards > 1) merged.reset(new Key[batch * shards * k]);
  const int64_t task_cost = group_blocks * kLanes * CeilDiv(units, shards) * (2 * dim + 8);
  parallel_for(groups * shards, task_cost, [&](int64_t begin, int64_t end) {
    const int64_t group_rows = group_blocks * kLanes;
    const std::unique_ptr<Key[]> buffers(new Key[group_rows * capacity]);
    const std::unique_ptr<RowCandidates[]> candidates(new RowCandidates[group_rows]);
    const std::unique_ptr<float[]> queries_t(new float[group_blocks * dim * kLanes]);
    const std::unique_ptr<float[]> thresholds(new float[group_blocks * kLanes]);
    const std::unique_ptr<float[]> products(new float[chunk * kLanes]);
    std::unique_ptr<Block[]> block_state(new Block[group_blocks]);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t shard = task % shards, group = task / shards;
      const int64_t row_begin = std::min(group * group_rows, batch);
      const int64_t row_end = std::min(row_begin + group_rows, batch);
      const int64_t unit_begin = shard * units / shards, unit_end = (shard + 1) * units / shards;
      const int64_t num_blocks = CeilDiv(row_end - row_begin, kLanes);
      for (int64_t b = 0; b < num_blocks; ++b) {
        const int64_t first_row = row_begin + b * kLanes;
        const int64_t rows = std::min(kLanes, row_end - first_row);
        const int64_t lanes = rows <= 8 ? 8 : 16;
        float* block_queries = queries_t.get() + b * dim * kLanes;
        std::fill(block_queries, block_queries + dim * lanes, 0.f);
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t d = 0; d < dim; ++d) {
            block_queries[d * lanes + r] = queries[(first_row + r) * dim + d];
          }
        }
        float* block_thresholds = thresholds.get() + b * kLanes;
        std::fill(block_thresholds, block_thresholds + kLanes, kInf);
        std::fill(block_thresholds, block_thresholds + rows, -kInf);
        RowCandidates* block_candidates = candidates.get() + b * kLanes;
        for (int64_t r = 0; r < rows; ++r) {
          block_candidates[r] = {buffers.get() + (b * kLanes + r) * capacity, 0, -kInf};
        }
        block_state[b] = {rows, lanes, block_queries, block_candidates, block_thresholds};
      }
      // Chunks outermost, so that the group's blocks share each chunk of keys.
      for (int64_t first = unit_begin; first < unit_end; first += chunk) {
        const int64_t width = std::min(chunk, unit_end - first);
        for (int64_t b = 0; b < num_blocks; ++b) {
          ScanChunk(dim, k, keys, biases, first, width, unit_begin + k, capacity,
                    products.get(), &block_state[b]);
        }
      }
      for (int64_t r = row_begin; r < row_end; ++r) {
        RowCandidates& row = candidates[r - row_begin];
        if (shards == 1) {
          WriteBest(row.keys, row.size, k, ids + r * k);
        } else {  // the shard has at least 4k units, so the row has at least k candidates
          if (row.size > k) row.Prune(k);
          std::copy(row.keys, row.keys + k, merged.get() + (r * shards + shard) * k);
        }
      }
    }
  });
  if (shards == 1) return;
  parallel_for(batch, shards * k * 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      WriteBest(merged.get() + r * shards * k, shards * k, k, ids + r * k);
    }
  });
}

}  // namespace tf_lsh
