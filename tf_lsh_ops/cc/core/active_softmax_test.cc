#include "tf_lsh_ops/cc/core/active_softmax.h"

#include <cmath>
#include <cstdio>
#include <vector>

#include "tf_lsh_ops/cc/core/test_util.h"

namespace tf_lsh {
namespace {

void TestExampleFromHeader() {
  const int32_t ids[2] = {4, 9}, labels[1] = {9};
  const float logits[2] = {0.f, 0.f};
  float grad[2];
  const float loss = ActiveSoftmaxCrossEntropy(1, 2, 1, ids, logits, labels, grad, SerialFor());
  CHECK_NEAR(loss, std::log(2.f), 1e-6);
  CHECK_NEAR(grad[0], 0.5f, 1e-6);
  CHECK_NEAR(grad[1], -0.5f, 1e-6);
}

// Padding, two labels in a set, an example without a label, and a finite-difference check.
void TestAgainstFiniteDifferences() {
  const int32_t ids[9] = {1, 2, -1, 3, 5, 7, 8, 6, 4};
  const int32_t labels[6] = {2, -1, 3, 7, 9, 9};  // example 2 has no label in its set
  std::vector<float> logits = {0.3f, -1.f, 50.f, 2.f, 0.5f, -0.25f, 1.f, 1.f, 1.f};
  std::vector<float> grad(9), unused(9);
  const float loss =
      ActiveSoftmaxCrossEntropy(3, 3, 2, ids, logits.data(), labels, grad.data(), SerialFor());
  // Example 0: label 2 among {1, 2}; example 1: labels 3 and 7 among {3, 5, 7}.
  const double e0 = -std::log(std::exp(-1.0) / (std::exp(0.3) + std::exp(-1.0)));
  const double z1 = std::exp(2.0) + std::exp(0.5) + std::exp(-0.25);
  const double e1 = -(std::log(std::exp(2.0) / z1) + std::log(std::exp(-0.25) / z1)) / 2;
  CHECK_NEAR(loss, (e0 + e1) / 2, 1e-5);
  CHECK_TRUE(grad[2] == 0.f && grad[6] == 0.f && grad[7] == 0.f && grad[8] == 0.f);
  for (int i = 0; i < 9; ++i) {
    if (ids[i] < 0) continue;
    std::vector<float> plus = logits, minus = logits;
    plus[i] += 1e-2f;
    minus[i] -= 1e-2f;
    const float numerical = (ActiveSoftmaxCrossEntropy(3, 3, 2, ids, plus.data(), labels,
                                                       unused.data(), SerialFor()) -
                             ActiveSoftmaxCrossEntropy(3, 3, 2, ids, minus.data(), labels,
                                                       unused.data(), SerialFor())) /
                            2e-2f;
    CHECK_NEAR(grad[i], numerical, 1e-3);
  }
}

}  // namespace
}  // namespace tf_lsh

int main() {
  tf_lsh::TestExampleFromHeader();
  tf_lsh::TestAgainstFiniteDifferences();
  std::printf("PASS\n");
  return 0;
}
