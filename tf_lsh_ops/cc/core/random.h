// A small, portable pseudo-random generator (SplitMix64).
//
// Used for hash parameters, reservoir sampling and random fill: the same seed gives the same
// numbers on every machine and compiler, which std::normal_distribution does not promise.
#ifndef TF_LSH_OPS_CC_CORE_RANDOM_H_
#define TF_LSH_OPS_CC_CORE_RANDOM_H_

#include <cmath>
#include <cstdint>

namespace tf_lsh {

class Random {
 public:
  // `stream` separates independent sequences of one seed (a table, an example).
  explicit Random(uint64_t seed, uint64_t stream = 0)
      : state_(seed * 0x9E3779B97F4A7C15ull + Mix(stream + 0x632BE59BD9B4E019ull)) {}

  uint64_t Next() {
    state_ += 0x9E3779B97F4A7C15ull;
    return Mix(state_);
  }

  // Uniform in [0, n), n > 0 (Lemire's multiply-shift; the tiny bias is irrelevant here).
  uint64_t Uniform(uint64_t n) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(Next()) * n) >> 64);
  }

  // Uniform in (0, 1].
  double UniformOpen() { return (static_cast<double>(Next() >> 11) + 1.0) * 0x1.0p-53; }

  // Standard normal (Box-Muller).
  double Normal() {
    const double radius = std::sqrt(-2.0 * std::log(UniformOpen()));
    return radius * std::cos(6.283185307179586 * UniformOpen());
  }

 private:
  static uint64_t Mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  uint64_t state_;
};

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_RANDOM_H_
