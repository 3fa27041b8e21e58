#include "tf_lsh_ops/cc/core/sparse_adam.h"

#include <cmath>
#include <vector>

#include "tf_lsh_ops/cc/core/sparse_gather_matmul.h"

namespace tf_lsh {

void SparseAdamApply(const AdamHyperparameters& hyper, int64_t dim, const int32_t* indices,
                     const float* grad, int64_t count, float* var, float* m, float* v,
                     const ParallelFor& parallel_for) {
  // Groups duplicate rows, sorted by row so that the updates stream through memory.
  const ActiveRows rows(indices, count);
  const std::vector<int32_t>& ids = rows.ids();
  const std::vector<int64_t>& offsets = rows.offsets();
  const std::vector<int64_t>& positions = rows.positions();
  const float one_minus_beta1 = 1.f - hyper.beta1, one_minus_beta2 = 1.f - hyper.beta2;
  parallel_for(rows.size(), 12 * dim, [&](int64_t begin, int64_t end) {
    std::vector<float> summed(dim);
    for (int64_t r = begin; r < end; ++r) {
      const float* g = grad + positions[offsets[r]] * dim;
      if (offsets[r + 1] - offsets[r] > 1) {
        for (int64_t d = 0; d < dim; ++d) summed[d] = g[d];
        for (int64_t j = offsets[r] + 1; j < offsets[r + 1]; ++j) {
          const float* more = grad + positions[j] * dim;
          for (int64_t d = 0; d < dim; ++d) summed[d] += more[d];
        }
        g = summed.data();
      }
      const int64_t base = int64_t{ids[r]} * dim;
      float* w = var + base;
      float* mr = m + base;
      float* vr = v + base;
      for (int64_t d = 0; d < dim; ++d) {
        mr[d] += (g[d] - mr[d]) * one_minus_beta1;
        vr[d] += (g[d] * g[d] - vr[d]) * one_minus_beta2;
        w[d] -= hyper.alpha * mr[d] / (std::sqrt(vr[d]) + hyper.epsilon);
      }
    }
  });
}

}  // namespace tf_lsh
