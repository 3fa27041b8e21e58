#include "tf_lsh_ops/cc/core/vector_ops.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "tf_lsh_ops/cc/core/vector_kernels.h"

namespace tf_lsh {
namespace {

void AdamUpdatePortable(float alpha, float beta1, float beta2, float epsilon, const float* g,
                        float* w, float* m, float* v, int64_t n) {
  const float one_minus_beta1 = 1.f - beta1, one_minus_beta2 = 1.f - beta2;
  for (int64_t i = 0; i < n; ++i) {
    m[i] += (g[i] - m[i]) * one_minus_beta1;
    v[i] += (g[i] * g[i] - v[i]) * one_minus_beta2;
    w[i] -= alpha * m[i] / (std::sqrt(v[i]) + epsilon);
  }
}

// Adam with beta1 = 0 and no first moment kept (it would equal g).
void AdamUpdateNoFirstMomentPortable(float alpha, float beta2, float epsilon, const float* g,
                                     float* w, float* v, int64_t n) {
  const float one_minus_beta2 = 1.f - beta2;
  for (int64_t i = 0; i < n; ++i) {
    v[i] += (g[i] * g[i] - v[i]) * one_minus_beta2;
    w[i] -= alpha * g[i] / (std::sqrt(v[i]) + epsilon);
  }
}

void MatMulPortable(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                    int64_t ldc, int64_t m, int64_t n, int64_t k) {
  for (int64_t i = 0; i < m; ++i) {
    float* row = c + i * ldc;
    for (int64_t j = 0; j < n; ++j) row[j] = 0.f;
    for (int64_t d = 0; d < k; ++d) PortableKernels::Axpy(a[i * lda + d], b + d * ldb, row, n);
  }
}

void TransposeRowsPortable(const float* const* rows, int64_t num_rows, int64_t cols, float* dst,
                           int64_t ld_dst) {
  for (int64_t r = 0; r < num_rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[c * ld_dst + r] = rows[r][c];
  }
}

#ifdef TF_LSH_X86
__attribute__((target("avx2"))) void TransposeRowsAvx2(const float* const* rows,
                                                        int64_t num_rows, int64_t cols,
                                                        float* dst, int64_t ld_dst) {
  const int64_t rows8 = num_rows - num_rows % 8, cols8 = cols - cols % 8;
  for (int64_t r = 0; r < rows8; r += 8) {
    const float* const* in = rows + r;
    for (int64_t c = 0; c < cols8; c += 8) {
      // Rows r .. r + 7 at columns c .. c + 7, transposed by pairs, quads, then halves.
      __m256 v[8];
      for (int i = 0; i < 8; ++i) v[i] = _mm256_loadu_ps(in[i] + c);
      const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
      const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
      const __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
      const __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
      const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
      const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
      const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
      const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
      const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
      const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
      const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
      const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
      float* out = dst + c * ld_dst + r;
      _mm256_storeu_ps(out, _mm256_permute2f128_ps(s0, s4, 0x20));
      _mm256_storeu_ps(out + ld_dst, _mm256_permute2f128_ps(s1, s5, 0x20));
      _mm256_storeu_ps(out + 2 * ld_dst, _mm256_permute2f128_ps(s2, s6, 0x20));
      _mm256_storeu_ps(out + 3 * ld_dst, _mm256_permute2f128_ps(s3, s7, 0x20));
      _mm256_storeu_ps(out + 4 * ld_dst, _mm256_permute2f128_ps(s0, s4, 0x31));
      _mm256_storeu_ps(out + 5 * ld_dst, _mm256_permute2f128_ps(s1, s5, 0x31));
      _mm256_storeu_ps(out + 6 * ld_dst, _mm256_permute2f128_ps(s2, s6, 0x31));
      _mm256_storeu_ps(out + 7 * ld_dst, _mm256_permute2f128_ps(s3, s7, 0x31));
    }
    for (int64_t i = 0; i < 8; ++i) {  // the last cols % 8 columns of these rows
      for (int64_t c = cols8; c < cols; ++c) dst[c * ld_dst + r + i] = in[i][c];
    }
  }
  TransposeRowsPortable(rows + rows8, num_rows - rows8, cols, dst + rows8, ld_dst);
}

// The depth (k) is walked in blocks of this many rows of b: a block of b (256 rows of up to a
// few hundred floats) stays in L2 while every row of a passes over it. Each c element still
// sums its products in order of d, so the blocking changes no result.
constexpr int64_t kDepthBlock = 256;

// An accumulator's first value: the sum so far (a later depth block) or zero.
__attribute__((target("avx2"), always_inline)) inline __m256 Start(const float* c,
                                                                    bool accumulate) {
  return accumulate ? _mm256_loadu_ps(c) : _mm256_setzero_ps();
}

// Rows [0, kRows), columns [0, 16) of c, summing d < depth: a kRows x 16 block held in
// 2 * kRows registers, each load of b serving kRows rows. Six rows (12 accumulators) keep both
// FMA pipes busy through the FMA latency; four and one are for the last rows.
template <int kRows>
__attribute__((target("avx2,fma"), always_inline)) inline void MatMulBlock(
    const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
    int64_t depth, bool accumulate) {
  __m256 acc[kRows][2];
#pragma GCC unroll 6
  for (int r = 0; r < kRows; ++r) {
    acc[r][0] = Start(c + r * ldc, accumulate);
    acc[r][1] = Start(c + r * ldc + 8, accumulate);
  }
  for (int64_t d = 0; d < depth; ++d) {
    const __m256 b0 = _mm256_loadu_ps(b + d * ldb);
    const __m256 b1 = _mm256_loadu_ps(b + d * ldb + 8);
#pragma GCC unroll 6
    for (int r = 0; r < kRows; ++r) {
      const __m256 x = _mm256_broadcast_ss(a + r * lda + d);
      acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < kRows; ++r) {
    _mm256_storeu_ps(c + r * ldc, acc[r][0]);
    _mm256_storeu_ps(c + r * ldc + 8, acc[r][1]);
  }
}

// b is copied, a depth block of 16 columns at a time, into a contiguous panel when its rows are
// further apart than this many floats and a holds enough rows to reuse the copy: rows of b
// 4 KB apart (a 1,024-wide matrix) all map to the same few L1 sets, and the micro-kernel's
// loads of them miss L1 on every depth step: packed, the products of a shared 1,000-unit set's
// backward at hidden 1,024 ran 1.3x-2.2x faster on one thread.
constexpr int64_t kPackAboveStride = 64;
constexpr int64_t kPackFromRows = 12;

__attribute__((target("avx2,fma"))) void MatMulAvx2(const float* a, int64_t lda, const float* b,
                                                     int64_t ldb, float* c, int64_t ldc,
                                                     int64_t m, int64_t n, int64_t k) {
  const int64_t n16 = n - n % 16;
  const bool pack = ldb > kPackAboveStride && m >= kPackFromRows;
  alignas(32) float panel[kDepthBlock * 16];
  for (int64_t d0 = 0; d0 < k || d0 == 0; d0 += kDepthBlock) {
    const int64_t depth = std::min(k, d0 + kDepthBlock) - d0;
    const bool accumulate = d0 > 0;
    // One strip of 16 columns at a time, over every row of a: the strip (256 x 16 floats,
    // packed or not) stays in L1 while a's rows pass over it.
    for (int64_t j = 0; j < n16; j += 16) {
      // The block's rows of the strip: depth d0 + t at strip[t * ld_strip], t < depth.
      const float* strip = b + d0 * ldb + j;
      int64_t ld_strip = ldb;
      if (pack) {
        for (int64_t t = 0; t < depth; ++t) {
          _mm256_store_ps(panel + t * 16, _mm256_loadu_ps(strip + t * ldb));
          _mm256_store_ps(panel + t * 16 + 8, _mm256_loadu_ps(strip + t * ldb + 8));
        }
        strip = panel;
        ld_strip = 16;
      }
      const float* a_block = a + d0;
      int64_t i = 0;
      for (; i + 6 <= m; i += 6) {
        MatMulBlock<6>(a_block + i * lda, lda, strip, ld_strip, c + i * ldc + j, ldc, depth,
                       accumulate);
      }
      for (; i + 4 <= m; i += 4) {
        MatMulBlock<4>(a_block + i * lda, lda, strip, ld_strip, c + i * ldc + j, ldc, depth,
                       accumulate);
      }
      for (; i < m; ++i) {
        MatMulBlock<1>(a_block + i * lda, lda, strip, ld_strip, c + i * ldc + j, ldc, depth,
                       accumulate);
      }
    }
  }
  if (n16 < n) {  // the last n % 16 columns
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t j = n16; j < n; ++j) {
        float sum = 0.f;
        for (int64_t d = 0; d < k; ++d) sum += a[r * lda + d] * b[d * ldb + j];
        c[r * ldc + j] = sum;
      }
    }
  }
}

__attribute__((target("avx2"))) void AdamUpdateAvx2(float alpha, float beta1, float beta2,
                                                     float epsilon, const float* g, float* w,
                                                     float* m, float* v, int64_t n) {
  const __m256 c1 = _mm256_set1_ps(1.f - beta1), c2 = _mm256_set1_ps(1.f - beta2);
  const __m256 va = _mm256_set1_ps(alpha), ve = _mm256_set1_ps(epsilon);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gi = _mm256_loadu_ps(g + i);
    __m256 mi = _mm256_loadu_ps(m + i), vi = _mm256_loadu_ps(v + i);
    mi = _mm256_add_ps(mi, _mm256_mul_ps(_mm256_sub_ps(gi, mi), c1));
    vi = _mm256_add_ps(vi, _mm256_mul_ps(_mm256_sub_ps(_mm256_mul_ps(gi, gi), vi), c2));
    const __m256 step = _mm256_div_ps(_mm256_mul_ps(va, mi),
                                      _mm256_add_ps(_mm256_sqrt_ps(vi), ve));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    _mm256_storeu_ps(w + i, _mm256_sub_ps(_mm256_loadu_ps(w + i), step));
  }
  AdamUpdatePortable(alpha, beta1, beta2, epsilon, g + i, w + i, m + i, v + i, n - i);
}

__attribute__((target("avx2"))) void AdamUpdateNoFirstMomentAvx2(float alpha, float beta2,
                                                                  float epsilon, const float* g,
                                                                  float* w, float* v,
                                                                  int64_t n) {
  const __m256 c2 = _mm256_set1_ps(1.f - beta2);
  const __m256 va = _mm256_set1_ps(alpha), ve = _mm256_set1_ps(epsilon);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gi = _mm256_loadu_ps(g + i);
    __m256 vi = _mm256_loadu_ps(v + i);
    vi = _mm256_add_ps(vi, _mm256_mul_ps(_mm256_sub_ps(_mm256_mul_ps(gi, gi), vi), c2));
    const __m256 step = _mm256_div_ps(_mm256_mul_ps(va, gi),
                                      _mm256_add_ps(_mm256_sqrt_ps(vi), ve));
    _mm256_storeu_ps(v + i, vi);
    _mm256_storeu_ps(w + i, _mm256_sub_ps(_mm256_loadu_ps(w + i), step));
  }
  AdamUpdateNoFirstMomentPortable(alpha, beta2, epsilon, g + i, w + i, v + i, n - i);
}

bool CpuHasAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
bool CpuHasAvx2() { return false; }
#endif

using DotFn = float (*)(const float*, const float*, int64_t);
using AxpyFn = void (*)(float, const float*, float*, int64_t);
using AdamFn = void (*)(float, float, float, float, const float*, float*, float*, float*,
                       int64_t);
using AdamNoFirstMomentFn = void (*)(float, float, float, const float*, float*, float*,
                                     int64_t);
using MatMulFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t,
                          int64_t, int64_t);
using TransposeFn = void (*)(const float* const*, int64_t, int64_t, float*, int64_t);

struct Dispatch {
  DotFn dot = PortableKernels::Dot;
  AxpyFn axpy = PortableKernels::Axpy;
  MatMulFn matmul = MatMulPortable;
  TransposeFn transpose = TransposeRowsPortable;
  AdamFn adam = AdamUpdatePortable;
  AdamNoFirstMomentFn adam_no_first_moment = AdamUpdateNoFirstMomentPortable;
  bool avx2 = false;
  Dispatch() {
#ifdef TF_LSH_X86
    // TF_LSH_PORTABLE=1 forces the portable path, to test it on AVX2 machines.
    const char* portable = std::getenv("TF_LSH_PORTABLE");
    if (CpuHasAvx2() && !(portable && portable[0] == '1')) {
      dot = Avx2Kernels::Dot;
      axpy = Avx2Kernels::Axpy;
      matmul = MatMulAvx2;
      transpose = TransposeRowsAvx2;
      adam = AdamUpdateAvx2;
      adam_no_first_moment = AdamUpdateNoFirstMomentAvx2;
      avx2 = true;
    }
#endif
  }
};

const Dispatch& GetDispatch() {
  static const Dispatch dispatch;
  return dispatch;
}

}  // namespace

float Dot(const float* a, const float* b, int64_t n) { return GetDispatch().dot(a, b, n); }

void Axpy(float alpha, const float* x, float* y, int64_t n) { GetDispatch().axpy(alpha, x, y, n); }

void MatMul(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
            int64_t m, int64_t n, int64_t k) {
  GetDispatch().matmul(a, lda, b, ldb, c, ldc, m, n, k);
}

void TransposeRows(const float* const* rows, int64_t num_rows, int64_t cols, float* dst,
                   int64_t ld_dst) {
  GetDispatch().transpose(rows, num_rows, cols, dst, ld_dst);
}

void AdamUpdate(float alpha, float beta1, float beta2, float epsilon, const float* g, float* w,
                float* m, float* v, int64_t n) {
  if (m == nullptr) return GetDispatch().adam_no_first_moment(alpha, beta2, epsilon, g, w, v, n);
  GetDispatch().adam(alpha, beta1, beta2, epsilon, g, w, m, v, n);
}

bool UsesAvx2() { return GetDispatch().avx2; }

}  // namespace tf_lsh
