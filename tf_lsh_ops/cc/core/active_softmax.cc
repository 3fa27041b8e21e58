#include "tf_lsh_ops/cc/core/active_softmax.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace tf_lsh {

float ActiveSoftmaxCrossEntropy(int64_t batch, int64_t active, int64_t num_labels,
                                const int32_t* ids, const float* logits, const int32_t* labels,
                                float* grad, const ParallelFor& parallel_for) {
  // Per example: its loss, and whether it has a label in its set (it then counts in the mean).
  std::vector<double> losses(batch, 0.0);
  std::vector<char> counted(batch, 0);
  parallel_for(batch, active * (20 + num_labels), [&](int64_t begin, int64_t end) {
    std::vector<char> is_label(active);
    for (int64_t b = begin; b < end; ++b) {
      const int32_t* id = ids + b * active;
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
      float max_logit = -std::numeric_limits<float>::infinity();
      int64_t hits = 0;
      for (int64_t k = 0; k < active; ++k) {
        if (id[k] < 0) continue;
        max_logit = std::max(max_logit, logit[k]);
        hits += is_label[k];
      }
      if (hits == 0) {
        std::fill(g, g + active, 0.f);
        continue;
      }
      // exp in single precision (a double exp per unit cost more than the rest of the step's
      // loss); sums in double.
      double sum = 0.0;
      for (int64_t k = 0; k < active; ++k) {
        g[k] = id[k] >= 0 ? std::exp(logit[k] - max_logit) : 0.f;
        sum += g[k];
      }
      const double log_sum = std::log(sum);
      const float inverse_sum = static_cast<float>(1.0 / sum);
      const double target = 1.0 / static_cast<double>(hits);
      double loss = 0.0;
      for (int64_t k = 0; k < active; ++k) {
        g[k] *= inverse_sum;  // the softmax; 0 for padding
        if (is_label[k]) {
          loss -= (logit[k] - max_logit - log_sum) * target;
          g[k] -= static_cast<float>(target);
        }
      }
      losses[b] = loss;
      counted[b] = 1;
    }
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
