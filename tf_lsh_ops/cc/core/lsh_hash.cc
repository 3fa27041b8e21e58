#include "tf_lsh_ops/cc/core/lsh_hash.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "tf_lsh_ops/cc/core/id_map.h"
#include "tf_lsh_ops/cc/core/random.h"
#include "tf_lsh_ops/cc/core/vector_ops.h"

namespace tf_lsh {
namespace {

// Densification gives up after this many probes (only an all-zero vector gets that far).
constexpr int kMaxProbes = 64;

// Packs the sign bits of projected[0 .. total_hashes) into one code per table.
void PackSignBits(const LshShape& shape, const float* projected, int32_t* codes) {
  for (int64_t l = 0; l < shape.num_tables; ++l) {
    int32_t code = 0;
    for (int64_t j = 0; j < shape.num_hashes; ++j) {
      code |= static_cast<int32_t>(projected[l * shape.num_hashes + j] > 0.f) << j;
    }
    codes[l] = code;
  }
}

// <x, p_j> for all j, from the rows of `projections` of x's nonzero features. The MIPS data side
// scales by 1 / M and adds sqrt(1 - |x / M|^2) times the extra row.
class SrpProjector {
 public:
  SrpProjector(const LshShape& shape, const float* projections, MipsSide mips, float max_norm)
      : shape_(shape),
        projections_(projections),
        mips_(mips),
        max_norm_(max_norm),
        projected_(shape.total_hashes()) {}

  void Start() { std::fill(projected_.begin(), projected_.end(), 0.f); squared_norm_ = 0.f; }

  void Add(int64_t feature, float value) {
    if (value == 0.f) return;
    Axpy(value, projections_ + feature * shape_.total_hashes(), projected_.data(),
         shape_.total_hashes());
    squared_norm_ += value * value;
  }

  void Finish(int32_t* codes) {
    if (mips_ == MipsSide::kData) {
      const float inv = 1.f / max_norm_;
      const float extra = std::sqrt(std::max(0.f, 1.f - squared_norm_ * inv * inv));
      for (float& p : projected_) p *= inv;
      Axpy(extra, projections_ + shape_.dim * shape_.total_hashes(), projected_.data(),
           shape_.total_hashes());
    }
    PackSignBits(shape_, projected_.data(), codes);
  }

 private:
  const LshShape shape_;
  const float* projections_;
  const MipsSide mips_;
  const float max_norm_;
  std::vector<float> projected_;
  float squared_norm_ = 0.f;
};

uint64_t ProbeHash(int64_t hash, int attempt) {
  uint64_t z = static_cast<uint64_t>(hash) * 0x9E3779B97F4A7C15ull + attempt * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 31)) * 0x94D049BB133111EBull;
  return z ^ (z >> 29);
}

// One row of a sparse input with repeated features summed (as the dense vector it stands
// for), in order of first appearance. Reused across rows to avoid allocations.
class MergedRow {
 public:
  void Load(const int64_t* feature_ids, const float* values, int64_t count) {
    if (count > capacity_) {
      capacity_ = count;
      slot_of_ = IdMap(capacity_);
    }
    slot_of_.Clear();
    features_.clear();
    values_.clear();
    for (int64_t i = 0; i < count; ++i) {
      // WTA bins name int32 coordinates only, and SimHash inputs are no wider (the kernels
      // check): a wider feature id would alias a narrower one in the map.
      if (feature_ids[i] > std::numeric_limits<int32_t>::max()) continue;
      const int32_t slot = slot_of_.FindOrInsert(static_cast<int32_t>(feature_ids[i]),
                                                 static_cast<int32_t>(values_.size()));
      if (slot == static_cast<int32_t>(values_.size())) {
        features_.push_back(feature_ids[i]);
        values_.push_back(0.f);
      }
      values_[slot] += values[i];
    }
  }

  const std::vector<int64_t>& features() const { return features_; }
  const std::vector<float>& values() const { return values_; }
  float ValueOf(int32_t feature) const {
    const int32_t* slot = slot_of_.Find(feature);
    return slot ? values_[*slot] : 0.f;
  }

 private:
  int64_t capacity_ = 64;
  IdMap slot_of_{capacity_};
  std::vector<int64_t> features_;
  std::vector<float> values_;
};

// WTA over one vector whose coordinate f has value value_of(f).
template <typename ValueOf>
void WtaHashOne(const LshShape& shape, const int32_t* bins, int64_t bin_size, bool densified,
                const ValueOf& value_of, std::vector<int32_t>* winners, int32_t* codes) {
  const int64_t total = shape.total_hashes();
  winners->assign(total, -1);
  for (int64_t h = 0; h < total; ++h) {
    const int32_t* bin = bins + h * bin_size;
    int32_t best = -1;
    float best_value = 0.f;
    for (int64_t j = 0; j < bin_size; ++j) {
      const float v = value_of(bin[j]);
      if (densified && v == 0.f) continue;
      if (best < 0 || v > best_value) {
        best = static_cast<int32_t>(j);
        best_value = v;
      }
    }
    (*winners)[h] = best;
  }
  // An empty bin (DWTA only) borrows the winner of the first non-empty bin along its probe
  // sequence; borrowed winners are never lent on, so the result does not depend on order.
  auto winner_of = [&](int64_t h) -> int32_t {
    if ((*winners)[h] >= 0) return (*winners)[h];
    for (int attempt = 1; attempt <= kMaxProbes; ++attempt) {
      const int32_t other = (*winners)[ProbeHash(h, attempt) % total];
      if (other >= 0) return other;
    }
    return 0;
  };
  const int bits = WtaHashBits(bin_size);
  for (int64_t l = 0; l < shape.num_tables; ++l) {
    int32_t code = 0;
    for (int64_t j = 0; j < shape.num_hashes; ++j) {
      code |= winner_of(l * shape.num_hashes + j) << (j * bits);
    }
    codes[l] = code;
  }
}

}  // namespace

int WtaHashBits(int64_t bin_size) {
  int bits = 0;
  while ((int64_t{1} << bits) < bin_size) ++bits;
  return bits;
}

void MakeSrpProjections(int64_t dim, int64_t total_hashes, double density, uint64_t seed,
                        float* projections) {
  Random random(seed, /*stream=*/1);
  for (int64_t i = 0; i < dim * total_hashes; ++i) {
    if (density >= 1.0) {
      projections[i] = static_cast<float>(random.Normal());
    } else {
      const double u = random.UniformOpen();
      projections[i] = u <= density / 2 ? 1.f : (u <= density ? -1.f : 0.f);
    }
  }
}

void MakeWtaBins(int64_t dim, int64_t total_hashes, int64_t bin_size, uint64_t seed,
                 int32_t* bins) {
  Random random(seed, /*stream=*/2);
  std::vector<int32_t> permutation(dim);
  int64_t used = dim;  // start with a fresh permutation
  for (int64_t i = 0; i < total_hashes * bin_size; ++i) {
    if (used == dim) {
      std::iota(permutation.begin(), permutation.end(), 0);
      for (int64_t j = dim - 1; j > 0; --j) std::swap(permutation[j], permutation[random.Uniform(j + 1)]);
      used = 0;
    }
    bins[i] = permutation[used++];
  }
}

void SrpHashDense(const LshShape& shape, const float* inputs, const float* projections,
                  MipsSide mips, float max_norm, int32_t* codes, const ParallelFor& parallel_for) {
  // Rows are projected a block at a time with a register-blocked matmul: the projection matrix
  // streams from cache once per block instead of once per row.
  constexpr int64_t kBlock = 64;
  const int64_t total = shape.total_hashes(), dim = shape.dim;
  const int64_t blocks = (shape.batch + kBlock - 1) / kBlock;
  parallel_for(blocks, 2 * kBlock * dim * total, [&](int64_t begin, int64_t end) {
    std::vector<float> projected(kBlock * total);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * kBlock, rows = std::min(kBlock, shape.batch - first);
      const float* x = inputs + first * dim;
      MatMul(x, dim, projections, total, projected.data(), total, rows, total, dim);
      for (int64_t r = 0; r < rows; ++r) {
        float* p = projected.data() + r * total;
        if (mips == MipsSide::kData) {
          const float inv = 1.f / max_norm;
          const float squared_norm = Dot(x + r * dim, x + r * dim, dim);
          const float extra = std::sqrt(std::max(0.f, 1.f - squared_norm * inv * inv));
          for (int64_t h = 0; h < total; ++h) p[h] *= inv;
          Axpy(extra, projections + dim * total, p, total);
        }
        PackSignBits(shape, p, codes + (first + r) * shape.num_tables);
      }
    }
  });
}

void SrpHashSparse(const LshShape& shape, const int64_t* row_offsets, const int64_t* feature_ids,
                   const float* values, const float* projections, MipsSide mips, float max_norm,
                   int32_t* codes, const ParallelFor& parallel_for) {
  const int64_t mean_nonzeros = 1 + row_offsets[shape.batch] / std::max<int64_t>(shape.batch, 1);
  parallel_for(shape.batch, 2 * mean_nonzeros * shape.total_hashes(),
               [&](int64_t begin, int64_t end) {
                 SrpProjector projector(shape, projections, mips, max_norm);
                 // Repeated features are summed first: the MIPS norm is the summed vector's.
                 MergedRow row;
                 for (int64_t b = begin; b < end; ++b) {
                   const int64_t first = row_offsets[b];
                   row.Load(feature_ids + first, values + first, row_offsets[b + 1] - first);
                   projector.Start();
                   for (size_t i = 0; i < row.values().size(); ++i) {
                     projector.Add(row.features()[i], row.values()[i]);
                   }
                   projector.Finish(codes + b * shape.num_tables);
                 }
               });
}

void WtaHashDense(const LshShape& shape, const float* inputs, const int32_t* bins,
                  int64_t bin_size, bool densified, int32_t* codes,
                  const ParallelFor& parallel_for) {
  parallel_for(shape.batch, 4 * shape.total_hashes() * bin_size, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> winners;
    for (int64_t b = begin; b < end; ++b) {
      const float* x = inputs + b * shape.dim;
      WtaHashOne(shape, bins, bin_size, densified, [x](int32_t f) { return x[f]; }, &winners,
                 codes + b * shape.num_tables);
    }
  });
}

void WtaHashSparse(const LshShape& shape, const int64_t* row_offsets, const int64_t* feature_ids,
                   const float* values, const int32_t* bins, int64_t bin_size, bool densified,
                   int32_t* codes, const ParallelFor& parallel_for) {
  parallel_for(shape.batch, 20 * shape.total_hashes() * bin_size, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> winners;
    MergedRow row;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = row_offsets[b];
      row.Load(feature_ids + first, values + first, row_offsets[b + 1] - first);
      WtaHashOne(
          shape, bins, bin_size, densified, [&row](int32_t f) { return row.ValueOf(f); },
          &winners, codes + b * shape.num_tables);
    }
  });
}

}  // namespace tf_lsh
