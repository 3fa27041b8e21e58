#include "tf_lsh_ops/cc/core/active_losses.h"

#include <algorithm>
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
  const float loss = ActiveSoftmaxCrossEntropy(1, 2, 1, 1, ids, logits, labels, grad, SerialFor());
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
      ActiveSoftmaxCrossEntropy(3, 3, 2, 3, ids, logits.data(), labels, grad.data(), SerialFor());
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
    const float numerical = (ActiveSoftmaxCrossEntropy(3, 3, 2, 3, ids, plus.data(), labels,
                                                       unused.data(), SerialFor()) -
                             ActiveSoftmaxCrossEntropy(3, 3, 2, 3, ids, minus.data(), labels,
                                                       unused.data(), SerialFor())) /
                            2e-2f;
    CHECK_NEAR(grad[i], numerical, 1e-3);
  }
}

// A batch of sets wide enough for the vector code (with a tail): padding (-1) anywhere, three
// labels an example (example 4 has none), and `logit(i, random)` as the i-th logit; with each
// example's labels among its units and their number, as double-precision references need.
struct WideCase {
  static constexpr int64_t kBatch = 5, kActive = 1003, kNumLabels = 3;
  std::vector<int32_t> ids, labels;
  std::vector<float> logits;
  std::vector<std::vector<bool>> is_label;
  std::vector<int> hits;
};

template <typename Logit>
WideCase MakeWideCase(uint32_t seed, const Logit& logit) {
  constexpr int64_t kBatch = WideCase::kBatch, kActive = WideCase::kActive;
  constexpr int64_t kNumLabels = WideCase::kNumLabels;
  WideCase c;
  c.ids.resize(kBatch * kActive);
  c.logits.resize(kBatch * kActive);
  c.labels.resize(kBatch * kNumLabels);
  uint32_t state = seed;
  const auto next = [&state] { return state = state * 1664525u + 1013904223u; };
  for (int64_t i = 0; i < kBatch * kActive; ++i) {
    c.ids[i] = next() % 7 == 0 ? -1 : static_cast<int32_t>(i % kActive);
    c.logits[i] = logit(i, next());
  }
  for (int64_t b = 0; b < kBatch; ++b) {
    for (int64_t m = 0; m < kNumLabels; ++m) {
      c.labels[b * kNumLabels + m] =
          b == 4 ? -1 : static_cast<int32_t>((b * 31 + m * 17) % kActive);
    }
  }
  for (int64_t b = 0; b < kBatch; ++b) {
    c.is_label.emplace_back(kActive, false);
    c.hits.push_back(0);
    for (int64_t k = 0; k < kActive; ++k) {
      const int32_t id = c.ids[b * kActive + k];
      for (int64_t m = 0; m < kNumLabels; ++m) {
        if (id >= 0 && id == c.labels[b * kNumLabels + m]) c.is_label[b][k] = true;
      }
      c.hits[b] += c.is_label[b][k];
    }
  }
  return c;
}

// Against double-precision loops on sets wide enough for the vector code (with a tail), padding
// anywhere, logits far below the maximum (exp underflows to 0) and a NaN, which must reach the
// loss.
void TestAgainstDoubleLoops() {
  constexpr int64_t batch = WideCase::kBatch, active = WideCase::kActive;
  constexpr int64_t num_labels = WideCase::kNumLabels;
  WideCase c = MakeWideCase(12345, [](int64_t i, uint32_t random) {
    return i % 97 == 0 ? -200.f : static_cast<float>(random % 20000) / 1000.f - 10.f;
  });
  std::vector<int32_t>& ids = c.ids;
  std::vector<float>& logits = c.logits;
  const std::vector<int32_t>& labels = c.labels;
  std::vector<float> grad(batch * active);
  const float loss = ActiveSoftmaxCrossEntropy(batch, active, num_labels, batch, ids.data(),
                                               logits.data(), labels.data(), grad.data(),
                                               SerialFor());
  double want_loss = 0.0;
  int examples = 0;
  std::vector<double> want_grad(batch * active, 0.0);
  for (int64_t b = 0; b < batch; ++b) {
    const int32_t* id = ids.data() + b * active;
    const float* logit = logits.data() + b * active;
    const std::vector<bool>& is_label = c.is_label[b];
    const int hits = c.hits[b];
    if (hits == 0) continue;
    ++examples;
    double max_logit = -1e300, sum = 0.0;
    for (int64_t k = 0; k < active; ++k) {
      if (id[k] >= 0) max_logit = std::max(max_logit, static_cast<double>(logit[k]));
    }
    for (int64_t k = 0; k < active; ++k) sum += id[k] >= 0 ? std::exp(logit[k] - max_logit) : 0;
    for (int64_t k = 0; k < active; ++k) {
      if (id[k] < 0) continue;
      const double softmax = std::exp(logit[k] - max_logit) / sum;
      want_grad[b * active + k] = softmax - (is_label[k] ? 1.0 / hits : 0.0);
      if (is_label[k]) want_loss -= (logit[k] - max_logit - std::log(sum)) / hits;
    }
  }
  CHECK_TRUE(examples == 4);
  CHECK_NEAR(loss, want_loss / examples, 1e-5);
  for (int64_t i = 0; i < batch * active; ++i) {  // a few float roundings of each value
    const double want = want_grad[i] / examples;
    CHECK_NEAR(grad[i], want, 2e-6 * std::abs(want) + 1e-30);
  }

  ids[2 * active + 62] = 62;  // example 2 keeps its label 62, so its softmax is computed
  logits[2 * active + 5] = std::nanf("");
  ids[2 * active + 5] = 5;
  const float nan_loss = ActiveSoftmaxCrossEntropy(batch, active, num_labels, batch, ids.data(),
                                                   logits.data(), labels.data(), grad.data(),
                                                   SerialFor());
  CHECK_TRUE(std::isnan(nan_loss));
}

void TestBinaryExampleFromHeader() {
  const int32_t ids[2] = {4, 9}, labels[1] = {9};
  const float logits[2] = {0.f, 0.f};
  float grad[2];
  const float loss = ActiveBinaryCrossEntropy(1, 2, 1, 1, ids, logits, labels, grad, SerialFor());
  CHECK_NEAR(loss, 2 * std::log(2.f), 1e-6);
  CHECK_NEAR(grad[0], 0.5f, 1e-6);
  CHECK_NEAR(grad[1], -0.5f, 1e-6);
}

// The binary loss against double-precision loops, on sets wide enough for the vector code (with
// a tail): padding anywhere, two labels in a set, an example without a label, logits from -200
// (softplus underflows) to 120 (its exp would overflow), and a NaN, which must reach the loss.
void TestBinaryAgainstDoubleLoops() {
  constexpr int64_t batch = WideCase::kBatch, active = WideCase::kActive;
  constexpr int64_t num_labels = WideCase::kNumLabels;
  WideCase c = MakeWideCase(777, [](int64_t i, uint32_t random) {
    if (i % 97 == 0) return -200.f;
    if (i % 89 == 0) return 120.f;
    if (i % 83 == 0) return 1e-9f;
    return static_cast<float>(random % 40000) / 1000.f - 20.f;
  });
  std::vector<int32_t>& ids = c.ids;
  std::vector<float>& logits = c.logits;
  const std::vector<int32_t>& labels = c.labels;
  std::vector<float> grad(batch * active);
  const float loss = ActiveBinaryCrossEntropy(batch, active, num_labels, batch, ids.data(),
                                              logits.data(), labels.data(), grad.data(),
                                              SerialFor());
  double want_loss = 0.0;
  int examples = 0;
  std::vector<double> want_grad(batch * active, 0.0);
  for (int64_t b = 0; b < batch; ++b) {
    const int hits = c.hits[b];
    if (hits == 0) continue;
    ++examples;
    for (int64_t k = 0; k < active; ++k) {
      if (ids[b * active + k] < 0) continue;
      const double z = logits[b * active + k], y = c.is_label[b][k] ? 1.0 : 0.0;
      want_loss += (std::max(z, 0.0) - y * z + std::log1p(std::exp(-std::abs(z)))) / hits;
      want_grad[b * active + k] = (1.0 / (1.0 + std::exp(-z)) - y) / hits;
    }
  }
  CHECK_TRUE(examples == 4);
  CHECK_NEAR(loss, want_loss / examples, 1e-5 * want_loss / examples);
  // sigmoid(z) - 1 is computed in float, as TensorFlow's own gradient does: near 1 its
  // rounding (6e-8) is the error, whatever the gradient's size.
  for (int64_t i = 0; i < batch * active; ++i) {
    const double want = want_grad[i] / examples;
    CHECK_NEAR(grad[i], want, 2e-6 * std::abs(want) + 1e-7);
  }

  logits[2 * active + 5] = std::nanf("");
  ids[2 * active + 5] = 5;
  const float nan_loss = ActiveBinaryCrossEntropy(batch, active, num_labels, batch, ids.data(),
                                                  logits.data(), labels.data(), grad.data(),
                                                  SerialFor());
  CHECK_TRUE(std::isnan(nan_loss));
}

// One active set for the batch ([1, active] ids) gives what the set repeated per example gives.
void TestSharedIds() {
  const int64_t batch = 4, active = 37, num_labels = 2;
  std::vector<int32_t> ids(active), tiled, labels = {3, -1, 40, 5, -1, -1, 7, 3};
  std::vector<float> logits(batch * active), grad(batch * active), want_grad(batch * active);
  for (int64_t k = 0; k < active; ++k) ids[k] = k % 9 == 4 ? -1 : static_cast<int32_t>(k);
  for (int64_t b = 0; b < batch; ++b) tiled.insert(tiled.end(), ids.begin(), ids.end());
  for (int64_t i = 0; i < batch * active; ++i) logits[i] = std::sin(0.7f * i);
  for (const auto& loss_fn : {ActiveSoftmaxCrossEntropy, ActiveBinaryCrossEntropy}) {
    const float loss = loss_fn(batch, active, num_labels, 1, ids.data(), logits.data(),
                               labels.data(), grad.data(), SerialFor());
    const float want = loss_fn(batch, active, num_labels, batch, tiled.data(), logits.data(),
                               labels.data(), want_grad.data(), SerialFor());
    CHECK_TRUE(loss == want && grad == want_grad && loss > 0.f);
  }
}

}  // namespace
}  // namespace tf_lsh

int main() {
  tf_lsh::TestExampleFromHeader();
  tf_lsh::TestAgainstFiniteDifferences();
  tf_lsh::TestAgainstDoubleLoops();
  tf_lsh::TestBinaryExampleFromHeader();
  tf_lsh::TestBinaryAgainstDoubleLoops();
  tf_lsh::TestSharedIds();
  std::printf("PASS\n");
  return 0;
}
