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

// True when Dot and Axpy run the AVX2/FMA code.
bool UsesAvx2();

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_VECTOR_OPS_H_
