#include "tf_lsh_ops/cc/core/matmul_top_k.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "tf_lsh_ops/cc/core/vector_kernels.h"
#include "tf_lsh_ops/cc/core/vector_ops.h"

namespace tf_lsh {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Transposed keys per chunk: 64 KB stays in L2 while every row block of the task passes over it.
constexpr int64_t kChunkFloats = 16384;
// Rows scored per MatMul call: the [rows, chunk] scores (48 KB at 512 units) stay in L2 until
// they are scanned.
constexpr int64_t kRowBlock = 24;
// Room beyond k in a row's candidate buffer before it is pruned back to k: pruning costs
// O(capacity), so each pruned candidate costs O(1).
constexpr int64_t kSlack = 64;

struct Candidate {
  float score;
  int32_t id;
};

// The order of the result: higher score first, then lower id. A total order, as candidate
// scores are never NaN (a NaN score enters as -inf, or not at all).
inline bool Better(const Candidate& a, const Candidate& b) {
  return a.score > b.score || (a.score == b.score && a.id < b.id);
}

// One row's candidates within one shard of units, scanned in increasing id order.
struct RowCandidates {
  Candidate* data;
  int64_t size;
  // The k-th best score when the buffer was last pruned (-inf before): a unit scanned later has
  // a higher id than all the buffer's, so it loses to those k unless its score is strictly
  // higher.
  float threshold;

  // Keeps the k best candidates.
  void Prune(int64_t k) {
    std::nth_element(data, data + k - 1, data + size, Better);
    size = k;
    threshold = data[k - 1].score;
  }
};

// Pushes the candidates of a chunk's units [begin, end) that beat `row`'s threshold; score j is
// products[j] + biases[j], of unit first_id + j. A NaN score is never greater.
void ScanPortable(const float* products, const float* biases, int64_t begin, int64_t end,
                  int64_t first_id, int64_t k, int64_t capacity, RowCandidates* row) {
  for (int64_t j = begin; j < end; ++j) {
    const float score = products[j] + biases[j];
    if (score > row->threshold) {
      row->data[row->size++] = {score, static_cast<int32_t>(first_id + j)};
      if (row->size == capacity) row->Prune(k);
    }
  }
}

#ifdef TF_LSH_X86
// ScanPortable, eight scores per comparison: most scores lose, so most groups cost a few
// instructions. The vector sum is the scalar sum (one rounding), so both paths agree.
__attribute__((target("avx2"))) void ScanAvx2(const float* products, const float* biases,
                                              int64_t begin, int64_t end, int64_t first_id,
                                              int64_t k, int64_t capacity, RowCandidates* row) {
  __m256 threshold = _mm256_set1_ps(row->threshold);
  int64_t j = begin;
  for (; j + 8 <= end; j += 8) {
    const __m256 scores = _mm256_add_ps(_mm256_loadu_ps(products + j), _mm256_loadu_ps(biases + j));
    unsigned mask = _mm256_movemask_ps(_mm256_cmp_ps(scores, threshold, _CMP_GT_OQ));
    if (mask == 0) continue;
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, scores);
    // Lanes that passed the old threshold are kept even if a prune raises it meanwhile: the
    // buffer may hold extra candidates, never too few.
    do {
      const int lane = __builtin_ctz(mask);
      mask &= mask - 1;
      row->data[row->size++] = {lanes[lane], static_cast<int32_t>(first_id + j + lane)};
      if (row->size == capacity) row->Prune(k);
    } while (mask != 0);
    threshold = _mm256_set1_ps(row->threshold);
  }
  ScanPortable(products, biases, j, end, first_id, k, capacity, row);
}
#endif

using ScanFn = void (*)(const float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                        RowCandidates*);

ScanFn ChooseScan() {
#ifdef TF_LSH_X86
  if (UsesAvx2()) return ScanAvx2;
#endif
  return ScanPortable;
}

// Scores rows [row_begin, row_end) against units [unit_begin, unit_end) chunk by chunk; leaves
// each row's candidates in rows[r - row_begin], holding its k best of those units.
void ScanShard(int64_t dim, int64_t k, const float* queries, const float* keys,
               const float* biases, int64_t row_begin, int64_t row_end, int64_t unit_begin,
               int64_t unit_end, int64_t chunk, int64_t capacity, RowCandidates* rows) {
  const ScanFn scan = ChooseScan();
  // Zeroed once: the padding columns of a short last chunk are then finite values (scored,
  // never read).
  std::vector<float> keys_t(dim * chunk, 0.f);
  const std::unique_ptr<float[]> products(new float[kRowBlock * chunk]);
  std::vector<const float*> key_rows(chunk);
  // Every unit before this is taken unconditionally: a row's first k units fill its buffer,
  // whatever their scores (-inf included), and set its first threshold.
  const int64_t open_end = unit_begin + k;
  for (int64_t first = unit_begin; first < unit_end; first += chunk) {
    const int64_t width = std::min(chunk, unit_end - first);
    // Padded to whole 16-column blocks so that MatMul scores every unit with its vector code:
    // its scalar tail's rounding is the compiler's choice (a contracted multiply-add or not), and
    // results must not depend on where chunks end.
    const int64_t padded = CeilDiv(width, 16) * 16;
    for (int64_t j = 0; j < width; ++j) key_rows[j] = keys + (first + j) * dim;
    TransposeRows(key_rows.data(), width, dim, keys_t.data(), padded);
    const int64_t open = std::clamp<int64_t>(open_end - first, 0, width);
    for (int64_t block = row_begin; block < row_end; block += kRowBlock) {
      const int64_t block_rows = std::min(kRowBlock, row_end - block);
      MatMul(queries + block * dim, dim, keys_t.data(), padded, products.get(), padded,
             block_rows, padded, dim);
      for (int64_t i = 0; i < block_rows; ++i) {
        const float* row_products = products.get() + i * padded;
        RowCandidates* row = rows + (block + i - row_begin);
        for (int64_t j = 0; j < open; ++j) {
          const float score = row_products[j] + biases[first + j];
          row->data[row->size++] = {std::isnan(score) ? -std::numeric_limits<float>::infinity()
                                                      : score,
                                    static_cast<int32_t>(first + j)};
        }
        if (open > 0 && first + open == open_end) row->Prune(k);
        scan(row_products, biases + first, open, width, first, k, capacity, row);
      }
    }
  }
}

// Writes the ids of the k best of `candidates` [0, size), best first.
void WriteBest(Candidate* candidates, int64_t size, int64_t k, int32_t* ids) {
  if (size > k) std::nth_element(candidates, candidates + k - 1, candidates + size, Better);
  std::sort(candidates, candidates + k, Better);
  for (int64_t i = 0; i < k; ++i) ids[i] = candidates[i].id;
}

}  // namespace

void MatmulTopK(int64_t batch, int64_t dim, int64_t units, int64_t k, const float* queries,
                const float* keys, const float* biases, int32_t* ids,
                const ParallelFor& parallel_for, const MatmulTopKSplit& split) {
  if (batch == 0) return;
  const int64_t chunk =
      split.chunk_units > 0
          ? CeilDiv(split.chunk_units, 16) * 16
          : std::clamp<int64_t>(kChunkFloats / std::max<int64_t>(dim, 1) / 16 * 16, 16, 1024);
  // Shards of at least 4k units: each then yields k candidates a row, and a shard's scan
  // discards most of its units (a shard barely larger than k would keep most of them).
  const int64_t shards = std::clamp<int64_t>(
      units / std::max(split.min_shard_units, 4 * k), 1, std::max<int64_t>(split.target_tasks, 1));
  const int64_t groups =
      std::clamp<int64_t>(CeilDiv(split.target_tasks, shards), 1, CeilDiv(batch, 8));
  const int64_t group_rows = CeilDiv(batch, groups);
  const int64_t capacity = 2 * k + kSlack;
  // With several shards, each row's k best of each shard, merged below: [batch, shards, k].
  std::unique_ptr<Candidate[]> merged;
  if (shards > 1) merged.reset(new Candidate[batch * shards * k]);
  const int64_t task_cost = group_rows * CeilDiv(units, shards) * (2 * dim + 8);
  parallel_for(groups * shards, task_cost, [&](int64_t begin, int64_t end) {
    std::unique_ptr<Candidate[]> buffers;
    std::vector<RowCandidates> rows;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t shard = task % shards, group = task / shards;
      const int64_t row_begin = std::min(group * group_rows, batch);
      const int64_t row_end = std::min(row_begin + group_rows, batch);
      if (row_begin == row_end) continue;
      if (!buffers) buffers.reset(new Candidate[group_rows * capacity]);
      rows.resize(row_end - row_begin);
      for (int64_t r = 0; r < row_end - row_begin; ++r) {
        rows[r] = {buffers.get() + r * capacity, 0, -std::numeric_limits<float>::infinity()};
      }
      ScanShard(dim, k, queries, keys, biases, row_begin, row_end, shard * units / shards,
                (shard + 1) * units / shards, chunk, capacity, rows.data());
      for (int64_t r = row_begin; r < row_end; ++r) {
        RowCandidates& row = rows[r - row_begin];
        if (shards == 1) {
          WriteBest(row.data, row.size, k, ids + r * k);
        } else {  // the shard has at least 4k units, so the row has at least k candidates
          if (row.size > k) row.Prune(k);
          std::copy(row.data, row.data + k, merged.get() + (r * shards + shard) * k);
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
