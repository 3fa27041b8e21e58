#include "tf_lsh_ops/cc/core/vector_ops.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "tf_lsh_ops/cc/core/test_util.h"

namespace tf_lsh {
namespace {

void TestDotAndAxpy() {
  for (int64_t n : {0, 1, 7, 8, 31, 32, 33, 130}) {
    std::vector<float> a(n), b(n), y(n, 1.f);
    double want = 0;
    for (int64_t i = 0; i < n; ++i) {
      a[i] = 0.5f * i - 3;
      b[i] = 1.f / (i + 1);
      want += double{a[i]} * b[i];
    }
    CHECK_NEAR(Dot(a.data(), b.data(), n), want, 1e-4);
    Axpy(2.f, a.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) CHECK_NEAR(y[i], 1.f + 2.f * a[i], 1e-5);
  }
}

void TestMatMulAllBlockShapes() {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  // m >= 13 with n = 70 (rows of b 73 floats apart): b is packed into panels.
  for (int64_t m : {1, 3, 4, 5, 9, 13}) {
    for (int64_t n : {1, 15, 16, 17, 40, 70}) {
      for (int64_t k : {0, 1, 8, 13, 256, 600}) {  // 256, 600: one and three depth blocks
        const int64_t lda = k + 2, ldb = n + 3, ldc = n + 1;  // strides wider than the blocks
        std::vector<float> a(m * lda), b(k * ldb), c(m * ldc, 99.f);
        for (auto& v : a) v = uniform(rng);
        for (auto& v : b) v = uniform(rng);
        MatMul(a.data(), lda, b.data(), ldb, c.data(), ldc, m, n, k);
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            double want = 0;
            for (int64_t d = 0; d < k; ++d) want += double{a[i * lda + d]} * b[d * ldb + j];
            CHECK_NEAR(c[i * ldc + j], want, 1e-4 + 1e-6 * k);
          }
          CHECK_TRUE(c[i * ldc + n] == 99.f);  // padding between rows untouched
        }
      }
    }
  }
}

void TestTransposeRows() {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  for (int64_t num_rows : {0, 1, 7, 8, 9, 16, 21}) {
    for (int64_t cols : {0, 1, 8, 13, 24, 130}) {
      const int64_t ld_dst = num_rows + 3;  // wider than the rows: the padding stays untouched
      std::vector<std::vector<float>> rows(num_rows, std::vector<float>(cols));
      std::vector<const float*> pointers;
      for (auto& row : rows) {
        for (auto& v : row) v = uniform(rng);
        pointers.push_back(row.data());
      }
      std::reverse(pointers.begin(), pointers.end());  // rows in any order, from anywhere
      std::vector<float> dst(cols * ld_dst, 99.f);
      TransposeRows(pointers.data(), num_rows, cols, dst.data(), ld_dst);
      for (int64_t c = 0; c < cols; ++c) {
        for (int64_t r = 0; r < num_rows; ++r) {
          CHECK_TRUE(dst[c * ld_dst + r] == rows[num_rows - 1 - r][c]);
        }
        for (int64_t r = num_rows; r < ld_dst; ++r) CHECK_TRUE(dst[c * ld_dst + r] == 99.f);
      }
    }
  }
}

void TestAdamUpdate() {
  for (int64_t n : {1, 8, 13}) {
    std::vector<float> g(n), w(n), m(n), v(n);
    for (int64_t i = 0; i < n; ++i) {
      g[i] = 0.3f * i - 1.f;
      w[i] = 0.1f * i;
      m[i] = 0.01f * i;
      v[i] = 0.02f * i;
    }
    std::vector<float> w2 = w, m2 = m, v2 = v;
    AdamUpdate(0.1f, 0.9f, 0.99f, 1e-7f, g.data(), w.data(), m.data(), v.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const float mi = m2[i] + (g[i] - m2[i]) * (1.f - 0.9f);
      const float vi = v2[i] + (g[i] * g[i] - v2[i]) * (1.f - 0.99f);
      CHECK_TRUE(m[i] == mi && v[i] == vi);  // both paths round as this loop does
      CHECK_TRUE(w[i] == w2[i] - 0.1f * mi / (std::sqrt(vi) + 1e-7f));
    }
  }
}

// A null m keeps no first moment: the step uses g itself (Adam with beta1 = 0).
void TestAdamUpdateWithoutFirstMoment() {
  for (int64_t n : {1, 8, 13}) {
    std::vector<float> g(n), w(n), v(n);
    for (int64_t i = 0; i < n; ++i) {
      g[i] = 0.3f * i - 1.f;
      w[i] = 0.1f * i;
      v[i] = 0.02f * i;
    }
    std::vector<float> w2 = w, v2 = v;
    AdamUpdate(0.1f, 0.f, 0.99f, 1e-7f, g.data(), w.data(), /*m=*/nullptr, v.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const float vi = v2[i] + (g[i] * g[i] - v2[i]) * (1.f - 0.99f);
      CHECK_TRUE(v[i] == vi);
      CHECK_TRUE(w[i] == w2[i] - 0.1f * g[i] / (std::sqrt(vi) + 1e-7f));
    }
  }
}

}  // namespace
}  // namespace tf_lsh

int main() {
  tf_lsh::TestDotAndAxpy();
  tf_lsh::TestMatMulAllBlockShapes();
  tf_lsh::TestTransposeRows();
  tf_lsh::TestAdamUpdate();
  tf_lsh::TestAdamUpdateWithoutFirstMoment();
  std::printf("PASS (avx2: %d)\n", tf_lsh::UsesAvx2());
  return 0;
}
