#include "tf_lsh_ops/cc/core/row_fingerprints.h"

#include <cstring>

#include "tf_lsh_ops/cc/core/vector_kernels.h"

namespace tf_lsh {
namespace {

constexpr uint64_t kSecret[4] = {0xa0761d6478bd642full, 0xe7037ed1a0b428dbull,
                                 0x8ebc6af09c88c6e3ull, 0x589965cc75374cc3ull};

// The high and low halves of the 128-bit product, folded: every input bit reaches the result.
inline uint64_t Mix(uint64_t a, uint64_t b) {
  const unsigned __int128 product = static_cast<unsigned __int128>(a) * b;
  return static_cast<uint64_t>(product) ^ static_cast<uint64_t>(product >> 64);
}

// Folds 64 bytes into the four lanes, 16 bytes each (independent lanes keep the multiplier
// busy; one chain would wait on each multiply's latency).
inline void Absorb(const unsigned char* bytes, uint64_t lanes[4]) {
  for (int j = 0; j < 4; ++j) {
    uint64_t a, b;
    std::memcpy(&a, bytes + 16 * j, 8);
    std::memcpy(&b, bytes + 16 * j + 8, 8);
    lanes[j] = Mix(a ^ lanes[j], b ^ kSecret[j]);
  }
}

}  // namespace

uint64_t RowFingerprint(const float* row, int64_t dim) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(row);
  const int64_t size = dim * static_cast<int64_t>(sizeof(float));
  uint64_t lanes[4] = {kSecret[0], kSecret[1], kSecret[2], kSecret[3]};
  int64_t i = 0;
  for (; i + 64 <= size; i += 64) Absorb(bytes + i, lanes);
  if (i < size) {  // the last partial block, zero-padded (the size below tells the padding)
    unsigned char tail[64] = {};
    std::memcpy(tail, bytes + i, size - i);
    Absorb(tail, lanes);
  }
  const uint64_t h = Mix(lanes[0] ^ kSecret[1], lanes[1] ^ kSecret[2]) ^
                     Mix(lanes[2] ^ kSecret[3], lanes[3] ^ kSecret[0]);
  return Mix(h ^ kSecret[0], static_cast<uint64_t>(size) ^ kSecret[1]);
}

void RowFingerprints(const float* rows, int64_t num_rows, int64_t dim, uint64_t* fingerprints,
                     const ParallelFor& parallel_for) {
  // About a cycle per byte read from memory, to shard finely enough for every thread.
  parallel_for(num_rows, 4 * dim + 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (r + 4 < end) PrefetchRow(rows + (r + 4) * dim, dim, /*near=*/true);
      fingerprints[r] = RowFingerprint(rows + r * dim, dim);
    }
  });
}

}  // namespace tf_lsh
