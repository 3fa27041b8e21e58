#include "tf_lsh_ops/cc/core/sparse_gather_matmul.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "tf_lsh_ops/cc/core/vector_kernels.h"
#include "tf_lsh_ops/cc/core/vector_ops.h"

namespace tf_lsh {
namespace {

// Weight rows are read in id order, close together but not contiguous, which leaves the
// hardware prefetchers behind. Each row is prefetched twice: into L2 far ahead (enough rows in
// flight to cover DRAM latency) and into L1 just before use. The per-position values of a row
// (outputs written by the forward pass, upstream gradients read by the backward pass) are
// scattered over [batch, active] and are prefetched far ahead too. Tuned on the Amazon-670K
// shape (benchmarks/README.md).
constexpr int64_t kFarPrefetch = 8;
constexpr int64_t kNearPrefetch = 2;

// Prefetches what row r + kFarPrefetch and r + kNearPrefetch of `rows` will touch.
template <bool kWritesPerPosition>
__attribute__((always_inline)) inline void PrefetchAhead(const float* weights, int64_t dim,
                                                        const RowGroups& rows,
                                                        const float* per_position, int64_t r,
                                                        int64_t end) {
  if (r + kFarPrefetch < end) {
    const int64_t far = r + kFarPrefetch;
    PrefetchRow(weights + int64_t{rows.ids[far]} * dim, dim, false);
    for (int32_t j = rows.offsets[far]; j < rows.offsets[far + 1]; ++j) {
      __builtin_prefetch(per_position + rows.positions[j], kWritesPerPosition ? 1 : 0, 3);
    }
  }
  if (r + kNearPrefetch < end) {
    PrefetchRow(weights + int64_t{rows.ids[r + kNearPrefetch]} * dim, dim, true);
  }
}

// position / active without an integer division (tens of cycles) per position: a
// floating-point reciprocal, corrected to the exact quotient.
class Divider {
 public:
  explicit Divider(int64_t divisor) : divisor_(divisor), inverse_(1.0 / divisor) {}
  int64_t operator()(int64_t n) const {
    int64_t q = static_cast<int64_t>(n * inverse_);
    if (q * divisor_ > n) --q;
    if ((q + 1) * divisor_ <= n) ++q;
    return q;
  }

 private:
  int64_t divisor_;
  double inverse_;
};

// Backward work is cut into up to this many blocks, each with its own grad_inputs accumulator.
// The count depends only on the shapes, never on the thread count: the sums, and so the
// results, are the same on any machine. The accumulators take at most kAccumulatorBytes.
constexpr int64_t kBackwardBlocks = 16;
constexpr int64_t kAccumulatorBytes = int64_t{64} << 20;

// Gradient rows larger than this in all bypass the caches when written: they would not stay
// there until the optimizer reads them, and streaming saves reading each line before writing.
constexpr int64_t kStreamingBytes = int64_t{16} << 20;

// The row loops, written once over a vector-kernel policy (vector_kernels.h).
struct GatherMatmulArgs {
  const GatherMatmulShape& shape;
  const float* inputs;
  const float* weights;
  const RowGroups& rows;
  Divider example_of;
};

template <typename Kernels>
inline void ForwardRows(const GatherMatmulArgs& args, const float* biases, float* out,
                        int64_t begin, int64_t end) {
  const int64_t dim = args.shape.dim;
  const RowGroups& rows = args.rows;
  for (int64_t r = begin; r < end; ++r) {
    PrefetchAhead</*kWritesPerPosition=*/true>(args.weights, dim, rows, out, r, end);
    const float* w = args.weights + int64_t{rows.ids[r]} * dim;
    const float bias = biases[rows.ids[r]];
    for (int64_t j = rows.offsets[r]; j < rows.offsets[r + 1]; ++j) {
      const int64_t pos = rows.positions[j];
      out[pos] = Kernels::Dot(args.inputs + args.example_of(pos) * dim, w, dim) + bias;
    }
  }
}

// Rows [begin, end): their part of grad_inputs added to `dx`, and their gradient rows, written
// to grad_weight_rows / grad_bias_rows or, with `adam`, applied to the variables at once.
template <typename Kernels>
inline void BackwardRows(const GatherMatmulArgs& args, const float* grad_out, float* dx,
                         float* grad_weight_rows, float* grad_bias_rows, const AdamTarget* adam,
                         int64_t begin, int64_t end) {
  const int64_t dim = args.shape.dim;
  const RowGroups& rows = args.rows;
  const bool stream = rows.num_rows * dim * int64_t{sizeof(float)} > kStreamingBytes;
  std::vector<float> row_gradient(adam != nullptr ? dim : 0);  // stays in L1
  for (int64_t r = begin; r < end; ++r) {
    PrefetchAhead</*kWritesPerPosition=*/false>(args.weights, dim, rows, grad_out, r, end);
    if (adam != nullptr && r + kFarPrefetch < end) {  // the moments are scattered too
      const int64_t ahead = int64_t{rows.ids[r + kFarPrefetch]} * dim;
      if (adam->weights.m != nullptr) PrefetchRow(adam->weights.m + ahead, dim, false);
      PrefetchRow(adam->weights.v + ahead, dim, false);
    }
    const int32_t* positions = rows.positions + rows.offsets[r];
    const int64_t count = rows.offsets[r + 1] - rows.offsets[r];
    // The weight gradient: sum of grad_out[pos] * inputs[example of pos].
    float* dw = adam != nullptr ? row_gradient.data() : grad_weight_rows + r * dim;
    Kernels::WeightedSum(
        dim, count,
        [&](int64_t j, float* weight, const float** vector) {
          *weight = grad_out[positions[j]];
          *vector = args.inputs + args.example_of(positions[j]) * dim;
        },
        stream && adam == nullptr, dw);
    const int64_t id = rows.ids[r];
    const float* w = args.weights + id * dim;
    float db = 0.f;
    for (int64_t j = 0; j < count; ++j) {
      const float g = grad_out[positions[j]];
      Kernels::Axpy(g, w, dx + args.example_of(positions[j]) * dim, dim);  // weights before
      db += g;                                                             // the update
    }
    if (adam == nullptr) {
      grad_bias_rows[r] = db;
      continue;
    }
    const AdamHyperparameters& h = adam->hyper;
    AdamUpdate(h.alpha, h.beta1, h.beta2, h.epsilon, dw, adam->weights.var + id * dim,
               MomentAt(adam->weights.m, id * dim), adam->weights.v + id * dim, dim);
    AdamUpdate(h.alpha, h.beta1, h.beta2, h.epsilon, &db, adam->biases.var + id,
               MomentAt(adam->biases.m, id), adam->biases.v + id, 1);
  }
  Kernels::FinishStores();
}

#ifdef TF_LSH_X86
__attribute__((target("avx2,fma"), flatten)) void ForwardRowsAvx2(const GatherMatmulArgs& args,
                                                                   const float* biases,
                                                                   float* out, int64_t begin,
                                                                   int64_t end) {
  ForwardRows<Avx2Kernels>(args, biases, out, begin, end);
}

__attribute__((target("avx2,fma"), flatten)) void BackwardRowsAvx2(
    const GatherMatmulArgs& args, const float* grad_out, float* dx, float* grad_weight_rows,
    float* grad_bias_rows, const AdamTarget* adam, int64_t begin, int64_t end) {
  BackwardRows<Avx2Kernels>(args, grad_out, dx, grad_weight_rows, grad_bias_rows, adam, begin,
                            end);
}
#endif

// The backward pass over row blocks with per-block grad_inputs accumulators (see the header).
void Backward(const GatherMatmulShape& shape, const float* inputs, const float* weights,
              const float* grad_out, const RowGroups& rows, float* grad_inputs,
              float* grad_weight_rows, float* grad_bias_rows, const AdamTarget* adam,
              const ParallelFor& parallel_for) {
  const GatherMatmulArgs args{shape, inputs, weights, rows,
                              Divider(std::max<int64_t>(shape.active, 1))};
  const int64_t dim = shape.dim, num_rows = rows.num_rows;
  const int64_t accumulator_bytes = std::max<int64_t>(shape.batch * dim * sizeof(float), 1);
  const int64_t blocks = std::max<int64_t>(
      1, std::min({kBackwardBlocks, num_rows, kAccumulatorBytes / accumulator_bytes}));
  // Each block owns a grad_inputs accumulator; one pass over its rows reads every weight row
  // once and writes every gradient row once.
  std::vector<float> partial_grad_inputs(blocks * shape.batch * dim, 0.f);
  const int64_t cost = int64_t{rows.offsets[num_rows]} * 4 * dim / blocks + 1;
  parallel_for(blocks, cost, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
      float* dx = partial_grad_inputs.data() + block * shape.batch * dim;
      const int64_t begin = num_rows * block / blocks, end = num_rows * (block + 1) / blocks;
#ifdef TF_LSH_X86
      if (UsesAvx2()) {
        BackwardRowsAvx2(args, grad_out, dx, grad_weight_rows, grad_bias_rows, adam, begin, end);
        continue;
      }
#endif
      BackwardRows<PortableKernels>(args, grad_out, dx, grad_weight_rows, grad_bias_rows, adam,
                                    begin, end);
    }
  });
  // grad_inputs = sum of the block accumulators, in block order.
  parallel_for(shape.batch, blocks * dim, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      float* dx = grad_inputs + b * dim;
      std::memset(dx, 0, dim * sizeof(float));
      for (int64_t block = 0; block < blocks; ++block) {
        Axpy(1.f, partial_grad_inputs.data() + (block * shape.batch + b) * dim, dx, dim);
      }
    }
  });
}

}  // namespace

namespace {

// The forward pass over all rows of `rows`: walking neurons in id order reads each weight row
// once, nearly as a stream.
RowVisitor ForwardVisitor(const GatherMatmulShape& shape, const float* inputs,
                          const float* weights, const float* biases, float* out) {
  return [=](const RowGroups& rows) {
    const GatherMatmulArgs args{shape, inputs, weights, rows,
                                Divider(std::max<int64_t>(shape.active, 1))};
#ifdef TF_LSH_X86
    if (UsesAvx2()) return ForwardRowsAvx2(args, biases, out, 0, rows.num_rows);
#endif
    ForwardRows<PortableKernels>(args, biases, out, 0, rows.num_rows);
  };
}

}  // namespace

void SparseGatherMatmulForward(const GatherMatmulShape& shape, const float* inputs,
                               const float* weights, const float* biases, const RowGroups& rows,
                               float* out, const ParallelFor& parallel_for) {
  std::fill(out, out + shape.batch * shape.active, 0.f);  // padding (-1) is never visited
  VisitRows(rows, ForwardVisitor(shape, inputs, weights, biases, out), parallel_for);
}

bool GroupAndMultiply(const GatherMatmulShape& shape, const float* inputs, const float* weights,
                      const float* biases, const int32_t* indices,
                      const RowGroupAllocator& allocate, float* out,
                      const ParallelFor& parallel_for, RowGroups* groups) {
  std::fill(out, out + shape.batch * shape.active, 0.f);
  return GroupRows(indices, shape.batch * shape.active, shape.num_neurons, allocate,
                   parallel_for, groups, ForwardVisitor(shape, inputs, weights, biases, out));
}

void SparseGatherMatmulBackward(const GatherMatmulShape& shape, const float* inputs,
                                const float* weights, const float* grad_out,
                                const RowGroups& rows, float* grad_inputs,
                                float* grad_weight_rows, float* grad_bias_rows,
                                const ParallelFor& parallel_for) {
  Backward(shape, inputs, weights, grad_out, rows, grad_inputs, grad_weight_rows,
           grad_bias_rows, /*adam=*/nullptr, parallel_for);
}

void SparseGatherMatmulBackwardAdam(const GatherMatmulShape& shape, const float* inputs,
                                    const float* grad_out, const RowGroups& rows,
                                    const AdamTarget& adam, float* grad_inputs,
                                    const ParallelFor& parallel_for) {
  Backward(shape, inputs, adam.weights.var, grad_out, rows, grad_inputs,
           /*grad_weight_rows=*/nullptr, /*grad_bias_rows=*/nullptr, &adam, parallel_for);
}

}  // namespace tf_lsh
