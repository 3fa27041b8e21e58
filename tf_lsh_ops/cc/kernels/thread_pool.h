// Adapts TensorFlow's CPU thread pool to the core's ParallelFor callback.
#ifndef TF_LSH_OPS_CC_KERNELS_THREAD_POOL_H_
#define TF_LSH_OPS_CC_KERNELS_THREAD_POOL_H_

#include "tensorflow/core/framework/op_kernel.h"
#include "tf_lsh_ops/cc/core/parallel.h"

namespace tf_lsh {

inline ParallelFor TfParallelFor(tensorflow::OpKernelContext* ctx) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  return [pool](int64_t total, int64_t cost_per_unit,
                const std::function<void(int64_t, int64_t)>& fn) {
    if (total > 0) {
      pool->ParallelFor(total, tsl::thread::ThreadPool::SchedulingParams::Adaptive(cost_per_unit),
                        fn);
    }
  };
}

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_KERNELS_THREAD_POOL_H_
