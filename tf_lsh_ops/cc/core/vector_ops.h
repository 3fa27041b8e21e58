// Dense float kernels on short vectors (one neuron's weights, one example's activations).
//
// The AVX2/FMA versions are chosen at run time when the CPU has them; otherwise a portable loop
// runs. The build needs no -mavx2 flag, so one binary serves every x86-64 machine.
#ifndef TF_LSH_OPS_CC_CORE_VECTOR_OPS_H_
#define TF_LSH_OPS_CC_CORE_VECTOR_OPS_H_

#include <cstdint>

namespace tf_lsh {

// Returns sum_i a[i] * b[i].
float Dot(const float* a, const float* b, int64_t n);

// y[i] += alpha * x[i].
void Axpy(float alpha, const float* x, float* y, int64_t n);

// c[i * ldc + j] = sum_d a[i * lda + d] * b[d * ldb + j], for i < m, j < n, d < k.
// Register-blocked (6 rows x 16 columns) and walked over the depth in blocks that stay in L2:
// for hashing many rows against one projection matrix and the products of shared active sets.
void MatMul(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
            int64_t m, int64_t n, int64_t k);

// dst[c * ld_dst + r] = rows[r][c], for r < num_rows, c < cols: rows from anywhere (gathered
// weight rows, or the rows of a matrix) transposed at once, in 8 x 8 blocks of registers.
void TransposeRows(const float* const* rows, int64_t num_rows, int64_t cols, float* dst,
                   int64_t ld_dst);

// One Adam step on n elements:
//   m += (g - m) * (1 - beta1);  v += (g * g - v) * (1 - beta2);
//   w -= alpha * m / (sqrt(v) + epsilon).
// Without fused multiply-adds, so both paths round alike. A null `m` keeps no first moment
// (Adam with beta1 = 0, whose m would be g): w -= alpha * g / (sqrt(v) + epsilon).
void AdamUpdate(float alpha, float beta1, float beta2, float epsilon, const float* g, float* w,
                float* m, float* v, int64_t n);

// True when Dot, Axpy, MatMul, TransposeRows and AdamUpdate run the AVX2/FMA code.
bool UsesAvx2();

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_VECTOR_OPS_H_
