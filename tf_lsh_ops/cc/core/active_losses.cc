#include "tf_lsh_ops/cc/core/active_losses.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "tf_lsh_ops/cc/core/vector_kernels.h"
#include "tf_lsh_ops/cc/core/vector_ops.h"

namespace tf_lsh {
namespace {

// The loops of the losses that touch every unit, written per instruction set: the padding
// (id -1) is left out, so a padded unit is 0 in the output.
struct PortableLossLoops {
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

  // grad[k] = sigmoid(logits[k]) - is_label[k] (0 for padding); returns the sum of the units'
  // binary cross-entropies, softplus(z) - is_label * z, added in double.
  static double BinaryTerms(const int32_t* ids, const float* logits, const char* is_label,
                            float* grad, int64_t n) {
    double sum = 0.0;
    for (int64_t k = 0; k < n; ++k) {
      if (ids[k] < 0) {
        grad[k] = 0.f;
        continue;
      }
      const float z = logits[k], y = is_label[k] ? 1.f : 0.f;
      const float e = std::exp(-std::fabs(z));  // in (0, 1]: no overflow either way
      grad[k] = (z >= 0.f ? 1.f / (1.f + e) : e / (1.f + e)) - y;
      sum += std::max(z, 0.f) - y * z + std::log1p(e);
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

// log of 8 positive normal floats (Cephes' single-precision logf: the exponent, and a
// polynomial of the mantissa scaled to [sqrt(1/2), sqrt(2))).
__attribute__((target("avx2,fma"))) inline __m256 Log(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256i bits = _mm256_castps_si256(x);
  __m256 e = _mm256_cvtepi32_ps(
      _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126)));
  // The mantissa in [0.5, 1).
  x = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)),
                                          _mm256_set1_epi32(0x3f000000)));
  const __m256 small = _mm256_cmp_ps(x, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
  e = _mm256_sub_ps(e, _mm256_and_ps(one, small));
  x = _mm256_add_ps(_mm256_sub_ps(x, one), _mm256_and_ps(x, small));  // x - 1, or 2x - 1
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(7.0376836292e-2f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.1514610310e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.1676998740e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.2420140846e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.4249322787e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.6668057665e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(2.0000714765e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-2.4999993993e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(3.3333331174e-1f));
  y = _mm256_mul_ps(_mm256_mul_ps(y, x), z);
  y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
  return _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), _mm256_add_ps(x, y));
}

struct Avx2LossLoops {
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
    float max_logit = PortableLossLoops::MaxLogit(ids + k, logits + k, n - k);  // the tail
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
    return sum + PortableLossLoops::ShiftedExp(ids + k, logits + k, shift, out + k, n - k);
  }

  __attribute__((target("avx2,fma"))) static double BinaryTerms(const int32_t* ids,
                                                                const float* logits,
                                                                const char* is_label,
                                                                float* grad, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.f), zero = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.f);
    __m256d sum_low = _mm256_setzero_pd(), sum_high = _mm256_setzero_pd();
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
      const __m256 z = _mm256_loadu_ps(logits + k);
      const __m256 padding = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
          _mm256_setzero_si256(), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ids + k))));
      const __m256 y = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(is_label + k))));
      const __m256 e = Exp(_mm256_or_ps(z, sign));  // exp(-|z|)
      const __m256 u = _mm256_add_ps(one, e);
      const __m256 p = _mm256_div_ps(one, u);  // sigmoid(|z|)
      const __m256 sigmoid = _mm256_blendv_ps(_mm256_mul_ps(e, p), p,
                                              _mm256_cmp_ps(z, zero, _CMP_GE_OQ));
      // log1p(e) as log(u) e / (u - 1), exact where u rounds to 1 (Goldberg's).
      const __m256 rounded = _mm256_sub_ps(u, one);
      const __m256 log1p = _mm256_blendv_ps(
          _mm256_div_ps(_mm256_mul_ps(Log(u), e), rounded), e,
          _mm256_cmp_ps(rounded, zero, _CMP_EQ_OQ));
      const __m256 term = _mm256_andnot_ps(
          padding,
          _mm256_add_ps(_mm256_fnmadd_ps(y, z, _mm256_max_ps(z, zero)), log1p));
      _mm256_storeu_ps(grad + k, _mm256_andnot_ps(padding, _mm256_sub_ps(sigmoid, y)));
      sum_low = _mm256_add_pd(sum_low, _mm256_cvtps_pd(_mm256_castps256_ps128(term)));
      sum_high = _mm256_add_pd(sum_high, _mm256_cvtps_pd(_mm256_extractf128_ps(term, 1)));
    }
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, _mm256_add_pd(sum_low, sum_high));
    const double sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    return sum + PortableLossLoops::BinaryTerms(ids + k, logits + k, is_label + k, grad + k,
                                                n - k);
  }
};
#endif  // TF_LSH_X86

enum class Loss { kSoftmax, kBinary };

// Examples [begin, end): their gradients (not yet divided by the number of examples counted),
// losses and whether they count.
template <Loss kLoss, typename Loops>
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
    const double target = 1.0 / static_cast<double>(hits);
    double loss = 0.0;
    if constexpr (kLoss == Loss::kSoftmax) {
      const float max_logit = Loops::MaxLogit(id, logit, active);
      const double sum = Loops::ShiftedExp(id, logit, max_logit, g, active);
      const double log_sum = std::log(sum);
      const float inverse_sum = static_cast<float>(1.0 / sum);
      for (int64_t k = 0; k < active; ++k) g[k] *= inverse_sum;  // the softmax; 0 for padding
      for (int64_t k = 0; k < active; ++k) {
        if (!is_label[k]) continue;
        loss -= (logit[k] - max_logit - log_sum) * target;
        g[k] -= static_cast<float>(target);
      }
    } else {
      loss = Loops::BinaryTerms(id, logit, is_label.data(), g, active) * target;
      const float scale = static_cast<float>(target);
      for (int64_t k = 0; k < active; ++k) g[k] *= scale;
    }
    losses[b] = loss;
    counted[b] = 1;
  }
}

#ifdef TF_LSH_X86
template <Loss kLoss>
__attribute__((target("avx2,fma"), flatten)) void ExampleLossesAvx2(
    int64_t begin, int64_t end, int64_t active, int64_t num_labels, int64_t id_rows,
    const int32_t* ids, const float* logits, const int32_t* labels, float* grad,
    double* losses, char* counted) {
  ExampleLosses<kLoss, Avx2LossLoops>(begin, end, active, num_labels, id_rows, ids, logits,
                                      labels, grad, losses, counted);
}
#endif

// The mean of the examples' losses over those with a label in their set; the gradient divided
// by their number.
template <Loss kLoss>
float MeanOverLabelledExamples(int64_t batch, int64_t active, int64_t num_labels,
                               int64_t id_rows, const int32_t* ids, const float* logits,
                               const int32_t* labels, float* grad,
                               const ParallelFor& parallel_for) {
  // Per example: its loss, and whether it has a label in its set (it then counts in the mean).
  std::vector<double> losses(batch, 0.0);
  std::vector<char> counted(batch, 0);
  parallel_for(batch, active * (10 + num_labels), [&](int64_t begin, int64_t end) {
#ifdef TF_LSH_X86
    if (UsesAvx2()) {
      return ExampleLossesAvx2<kLoss>(begin, end, active, num_labels, id_rows, ids, logits,
                                      labels, grad, losses.data(), counted.data());
    }
#endif
    ExampleLosses<kLoss, PortableLossLoops>(begin, end, active, num_labels, id_rows, ids,
                                            logits, labels, grad, losses.data(),
                                            counted.data());
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

}  // namespace

float ActiveSoftmaxCrossEntropy(int64_t batch, int64_t active, int64_t num_labels,
                                int64_t id_rows, const int32_t* ids, const float* logits,
                                const int32_t* labels, float* grad,
                                const ParallelFor& parallel_for) {
  return MeanOverLabelledExamples<Loss::kSoftmax>(batch, active, num_labels, id_rows, ids,
                                                  logits, labels, grad, parallel_for);
}

float ActiveBinaryCrossEntropy(int64_t batch, int64_t active, int64_t num_labels,
                               int64_t id_rows, const int32_t* ids, const float* logits,
                               const int32_t* labels, float* grad,
                               const ParallelFor& parallel_for) {
  return MeanOverLabelledExamples<Loss::kBinary>(batch, active, num_labels, id_rows, ids,
                                                 logits, labels, grad, parallel_for);
}

}  // namespace tf_lsh
