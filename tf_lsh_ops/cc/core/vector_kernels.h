// The vector primitives behind vector_ops.h, as two policies with the same static functions:
// PortableKernels (plain loops) and Avx2Kernels (AVX2/FMA intrinsics, x86-64 only).
//
// Hot loops are written once as templates over a policy and instantiated twice; the AVX2
// instantiation is called through a function marked
//   __attribute__((target("avx2,fma"), flatten))
// so that every primitive is inlined into it and no -mavx2 build flag is needed. Callers choose
// the instantiation at run time with UsesAvx2() (vector_ops.h).
#ifndef TF_LSH_OPS_CC_CORE_VECTOR_KERNELS_H_
#define TF_LSH_OPS_CC_CORE_VECTOR_KERNELS_H_

#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#define TF_LSH_X86 1
#endif

namespace tf_lsh {

// Prefetches the `dim` floats of a row, into L1 (`near`) or L2. Always inlined: GCC otherwise
// finds such helpers free of side effects and drops their calls.
__attribute__((always_inline)) inline void PrefetchRow(const float* row, int64_t dim, bool near) {
  for (int64_t i = 0; i < dim; i += 16) {
    if (near) {
      __builtin_prefetch(row + i, 0, 3);
    } else {
      __builtin_prefetch(row + i, 0, 2);
    }
  }
}

// Prefetches the `dim` floats of a row that is about to be written, into L2, with write intent
// (compiled as a plain prefetch unless the build enables PRFCHW, as ours does not).
__attribute__((always_inline)) inline void PrefetchRowForWrite(const float* row, int64_t dim) {
  for (int64_t i = 0; i < dim; i += 16) __builtin_prefetch(row + i, 1, 2);
}

struct PortableKernels {
  static inline float Dot(const float* a, const float* b, int64_t n) {
    // Four partial sums let the compiler vectorise without -ffast-math.
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
      s0 += a[i] * b[i];
      s1 += a[i + 1] * b[i + 1];
      s2 += a[i + 2] * b[i + 2];
      s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; ++i) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
  }

  static inline void Axpy(float alpha, const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
  }

  // out[0, n) = sum over j < count of weight_j * vector_j[0, n), where term(j, &weight,
  // &vector) names the j-th pair; out = 0 when count is 0. `stream` asks for stores that
  // bypass the caches (for outputs too large to be read from cache afterwards).
  template <typename Term>
  static inline void WeightedSum(int64_t n, int64_t count, const Term& term, bool stream,
                                 float* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = 0.f;
    for (int64_t j = 0; j < count; ++j) {
      float weight;
      const float* vector;
      term(j, &weight, &vector);
      Axpy(weight, vector, out, n);
    }
  }

  // Orders the streaming stores of WeightedSum before what follows (a thread hand-off).
  static inline void FinishStores() {}

};

#ifdef TF_LSH_X86
struct Avx2Kernels {
  __attribute__((target("avx2,fma"))) static inline float Dot(const float* a, const float* b,
                                                               int64_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
      acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
      acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
      acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) {
      acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    }
    const __m256 acc = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    half = _mm_add_ps(half, _mm_movehl_ps(half, half));
    half = _mm_add_ss(half, _mm_movehdup_ps(half));
    float sum = _mm_cvtss_f32(half);
    for (; i < n; ++i) sum += a[i] * b[i];
    return sum;
  }

  __attribute__((target("avx2,fma"))) static inline void Axpy(float alpha, const float* x,
                                                               float* y, int64_t n) {
    const __m256 va = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      _mm256_storeu_ps(y + i,
                       _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    }
    for (; i < n; ++i) y[i] += alpha * x[i];
  }

  // Sums 32 columns at a time in registers and writes each output line once; streaming
  // stores (for an aligned `out`) skip reading the line first.
  template <typename Term>
  __attribute__((target("avx2,fma"))) static inline void WeightedSum(int64_t n, int64_t count,
                                                                     const Term& term,
                                                                     bool stream, float* out) {
    stream = stream && (reinterpret_cast<uintptr_t>(out) & 31) == 0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
      __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
      __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
      for (int64_t j = 0; j < count; ++j) {
        float weight;
        const float* vector;
        term(j, &weight, &vector);
        const __m256 w = _mm256_set1_ps(weight);
        s0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vector + i), s0);
        s1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vector + i + 8), s1);
        s2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vector + i + 16), s2);
        s3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vector + i + 24), s3);
      }
      if (stream) {
        _mm256_stream_ps(out + i, s0);
        _mm256_stream_ps(out + i + 8, s1);
        _mm256_stream_ps(out + i + 16, s2);
        _mm256_stream_ps(out + i + 24, s3);
      } else {
        _mm256_storeu_ps(out + i, s0);
        _mm256_storeu_ps(out + i + 8, s1);
        _mm256_storeu_ps(out + i + 16, s2);
        _mm256_storeu_ps(out + i + 24, s3);
      }
    }
    for (; i < n; ++i) {
      float sum = 0.f;
      for (int64_t j = 0; j < count; ++j) {
        float weight;
        const float* vector;
        term(j, &weight, &vector);
        sum += weight * vector[i];
      }
      out[i] = sum;
    }
  }

  __attribute__((target("avx2,fma"))) static inline void FinishStores() { _mm_sfence(); }
};
#endif  // TF_LSH_X86

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_VECTOR_KERNELS_H_
