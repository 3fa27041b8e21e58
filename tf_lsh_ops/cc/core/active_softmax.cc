#include "tf_lsh_ops/cc/core/active_softmax.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "tf_lsh_ops/cc/core/vector_kernels.h"
#include "tf_lsh_ops/cc/core/vector_ops.h"

namespace tf_lsh {
namespace {

// The loops of the softmax that touch every unit, written per instruction set: the padding
// (id -1) is left out, so a padded unit is 0 in the output.
struct PortableSoftmaxLoops {
  // The largest logit of a unit that is not padding; -infinity if there is none.
  static float MaxLogit(const int32_t* ids, const float* logits, int64_t n) {
    float max_logit = -std::numeric_limits<float>::infinity();
    for (int64_t k = 0; k < n; ++k) {
      if (ids[k] >= 0) max_logit = std::max(max_logit, logits[k]);
    }
    return max_logit;
  }

  // out[k] = exp(logits[k] - shift) (0 for padding); returns the sum of out, added in double.
  static double ShiftedExp(const int32_t* ids, const float* logits, float shift, float* out,
                           int64_t n) {
    double sum = 0.0;
    for (int64_t k = 0; k < n; ++k) {
      out[k] = ids[k] >= 0 ? std::exp(logits[k] - shift) : 0.f;
      sum += out[k];
    }
    return sum;
  }
};

#ifdef TF_LSH_X86
// exp of 8 floats at most 88 (Cephes' single-precision polynomial: 2^n * exp(r), |r| <= ln 2 /
// 2, within 2 ulp of std::exp); 0 below -87.3, where results would no longer be normal floats.
// NaN stays NaN. A scalar std::exp per unit was most of the loss op's time.
__attribute__((target("avx2,fma"))) inline __m256 Exp(__m256 x) {
  const __m256 lowest = _mm256_set1_ps(-87.33654f);
  const __m256 underflows = _mm256_cmp_ps(x, lowest, _CMP_LT_OQ);
  x = _mm256_max_ps(lowest, x);  // the second operand is kept when one is NaN
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // x - n ln 2, in two parts
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i two_to_n = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflows, _mm256_mul_ps(p, _mm256_castsi256_ps(two_to_n)));
}

struct Avx2SoftmaxLoops {
  // Lanes of padding hold this in place of a logit.
  __attribute__((target("avx2"))) static __m256 Logits(const int32_t* ids, const float* logits,
                                                       float fill) {
    const __m256 padding = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
        _mm256_setzero_si256(),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ids))));
    return _mm256_blendv_ps(_mm256_loadu_ps(logits), _mm256_set1_ps(fill), padding);
  }

  __attribute__((target("avx2"))) static float MaxLogit(const int32_t* ids, const float* logits,
                                                        int64_t n) {
    const float lowest = -std::numeric_limits<float>::infinity();
    __m256 max8 = _mm256_set1_ps(lowest);
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) max8 = _mm256_max_ps(max8, Logits(ids + k, logits + k, lowest));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, max8);
    float max_logit = PortableSoftmaxLoops::MaxLogit(ids + k, logits + k, n - k);  // the tail
    for (const float lane : lanes) max_logit = std::max(max_logit, lane);
    return max_logit;
  }

  __attribute__((target("avx2,fma"))) static double ShiftedExp(const int32_t* ids,
                                                               const float* logits, float shift,
                                                               float* out, int64_t n) {
    const float lowest = -std::numeric_limits<float>::infinity();
    const __m256 shift8 = _mm256_set1_ps(shift);
    __m256d sum_low = _mm256_setzero_pd(), sum_high = _mm256_setzero_pd();
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
      const __m256 e = Exp(_mm256_sub_ps(Logits(ids + k, logits + k, lowest), shift8));
      _mm256_storeu_ps(out + k, e);
      sum_low = _mm256_add_pd(sum_low, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
      sum_high = _mm256_add_pd(sum_high, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, _mm256_add_pd(sum_low, sum_high));
    const double sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    return sum + PortableSoftmaxLoops::ShiftedExp(ids + k, logits + k, shift, out + k, n - k);
  }
};
#endif  // TF_LSH_X86

// Examples [begin, end): their gradients (not yet divided by the number of examples counted),
// losses and whether they count.
template <typename Loops>
inline void ExampleLosses(int64_t begin, int64_t end, int64_t active, int64_t num_labels,
                          int64_t id_rows, const int32_t* ids, const float* logits,
                          const int32_t* labels, float* grad, double* losses, char* counted) {
  std::vector<char> is_label(active);
  for (int64_t b = begin; b < end; ++b) {
    const int32_t* id = ids + (id_rows == 1 ? 0 : b * active);
    const float* logit = logits + b * active;
    const int32_t* label = labels + b * num_labels;
    float* g = grad + b * active;
    // Which units are labels: one compare per (label, unit), label by label, which the
    // compiler vectorises over the units (a search per unit does not vectorise).
    std::fill(is_label.begin(), is_label.end(), 0);
    for (int64_t m = 0; m < num_labels; ++m) {
      const int32_t wanted = label[m];
      if (wanted < 0) continue;  // padding never matches (ids of padding are -1 too)
      for (int64_t k = 0; k < active; ++k) is_label[k] |= id[k] == wanted;
    }
    int64_t hits = 0;
    for (int64_t k = 0; k < active; ++k) hits += is_label[k];
    if (hits == 0) {
      std::fill(g, g + active, 0.f);
      continue;
    }
    const float max_logit = Loops::MaxLogit(id, logit, active);
    const double sum = Loops::ShiftedExp(id, logit, max_logit, g, active);
    const double log_sum = std::log(sum);
    const float inverse_sum = static_cast<float>(1.0 / sum);
    for (int64_t k = 0; k < active; ++k) g[k] *= inverse_sum;  // the softmax; 0 for padding
    const double target = 1.0 / static_cast<double>(hits);
    double loss = 0.0;
    for (int64_t k = 0; k < active; ++k) {
      if (!is_label[k]) continue;
      loss -= (logit[k] - max_logit - log_sum) * target;
      g[k] -= static_cast<float>(target);
    }
    losses[b] = loss;
    counted[b] = 1;
  }
}

#ifdef TF_LSH_X86
__attribute__((target("avx2,fma"), flatten)) void ExampleLossesAvx2(
    int64_t begin, int64_t end, int64_t active, int64_t num_labels, int64_t id_rows,
    const int32_t* ids, const float* logits, const int32_t* labels, float* grad,
    double* losses, char* counted) {
  ExampleLosses<Avx2SoftmaxLoops>(begin, end, active, num_labels, id_rows, ids, logits, labels,
                                  grad, losses, counted);
}
#endif

}  // namespace

float ActiveSoftmaxCrossEntropy(int64_t batch, int64_t active, int64_t num_labels,
                                int64_t id_rows, const int32_t* ids, const float* logits,
                                const int32_t* labels, float* grad,
                                const ParallelFor& parallel_for) {
  // Per example: its loss, and whether it has a label in its set (it then counts in the mean).
  std::vector<double> losses(batch, 0.0);
  std::vector<char> counted(batch, 0);
  parallel_for(batch, active * (10 + num_labels), [&](int64_t begin, int64_t end) {
#ifdef TF_LSH_X86
    if (UsesAvx2()) {
      return ExampleLossesAvx2(begin, end, active, num_labels, id_rows, ids, logits, labels,
                               grad, losses.data(), counted.data());
    }
#endif
    ExampleLosses<PortableSoftmaxLoops>(begin, end, active, num_labels, id_rows, ids, logits,
                                        labels, grad, losses.data(), counted.data());
  });
  double total = 0.0;
  int64_t examples = 0;
  for (int64_t b = 0; b < batch; ++b) {
    total += losses[b];
    examples += counted[b];
  }
  if (examples > 1) {
    const float scale = 1.f / static_cast<float>(examples);
    parallel_for(batch * active, 2, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) grad[i] *= scale;
    });
  }
  return static_cast<float>(total / std::max<int64_t>(examples, 1));
}

}  // namespace tf_lsh
