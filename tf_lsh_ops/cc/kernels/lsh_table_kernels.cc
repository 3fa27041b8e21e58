// Kernels that build, update and query the hash tables.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf_lsh_ops/cc/core/id_map.h"
#include "tf_lsh_ops/cc/core/lsh_tables.h"
#include "tf_lsh_ops/cc/core/row_fingerprints.h"
#include "tf_lsh_ops/cc/kernels/input_checks.h"
#include "tf_lsh_ops/cc/kernels/thread_pool.h"
#include "tf_lsh_ops/cc/kernels/variable_access.h"

namespace tf_lsh {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

namespace {

// Input indices, in the order of the ops' registrations (ops/lsh_ops.cc).
struct BuildTablesInput {
  enum : int { kCodes, kSeed };
};
struct UpdateTablesInput {
  enum : int { kTableIds, kTableCounts, kNeuronIds, kOldCodes, kNewCodes, kSeed };
};
struct QueryInput {
  enum : int { kCodes, kTableIds, kTableCounts, kLabels, kSeed };
};
// LshRowFingerprints and ResourceLshRowFingerprints.
struct RowFingerprintsInput {
  enum : int { kWeights };
};

absl::Status ParseOverflow(OpKernelConstruction* ctx, Overflow* overflow) {
  std::string policy;
  TF_RETURN_IF_ERROR(ctx->GetAttr("overflow", &policy));
  *overflow = policy == "reservoir" ? Overflow::kReservoir : Overflow::kFifo;
  return absl::OkStatus();
}

absl::Status CheckCodes(const char* op, const char* name, const Tensor& codes,
                        int64_t num_buckets) {
  const int64_t bad = FindInvalidCode(codes.flat<int32_t>().data(), codes.NumElements(),
                                      num_buckets);
  if (bad < 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      op, ": ", name, " holds bucket ", codes.flat<int32_t>()(bad), " at flat position ", bad,
      ", outside [0, ", num_buckets, ") (", name, " has shape ", codes.shape().DebugString(),
      ")"));
}

// table_ids [L, buckets, capacity] and table_counts [L, buckets] must agree.
absl::Status CheckTables(const char* op, const Tensor& ids, const Tensor& counts,
                         TableShape* shape) {
  TF_RETURN_IF_ERROR(CheckRank(op, "table_ids", ids, 3));
  TF_RETURN_IF_ERROR(CheckRank(op, "table_counts", counts, 2));
  TF_RETURN_IF_ERROR(CheckSameDim(op, "table_ids", ids, 0, "table_counts", counts, 0));
  TF_RETURN_IF_ERROR(CheckSameDim(op, "table_ids", ids, 1, "table_counts", counts, 1));
  if (ids.dim_size(2) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": table_ids must have capacity >= 1, got shape ",
                     ids.shape().DebugString()));
  }
  *shape = {ids.dim_size(0), ids.dim_size(1), ids.dim_size(2)};
  return absl::OkStatus();
}

}  // namespace

class LshBuildTablesOp : public OpKernel {
 public:
  explicit LshBuildTablesOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    int64_t bits;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bucket_bits", &bits));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("capacity", &capacity_));
    OP_REQUIRES_OK(ctx, ParseOverflow(ctx, &overflow_));
    OP_REQUIRES(ctx, bits >= 1 && bits <= 30,
                absl::InvalidArgumentError(
                    absl::StrCat("LshBuildTables: bucket_bits must be in [1, 30], got ", bits)));
    num_buckets_ = int64_t{1} << bits;
  }

  void Compute(OpKernelContext* ctx) override {
    constexpr char kOp[] = "LshBuildTables";
    const Tensor& codes = ctx->input(BuildTablesInput::kCodes);
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "codes", codes, 2));
    OP_REQUIRES(ctx, codes.dim_size(1) >= 1,
                absl::InvalidArgumentError(absl::StrCat(
                    kOp, ": codes must have at least one table, got shape ",
                    codes.shape().DebugString())));
    OP_REQUIRES_OK(ctx, CheckCodes(kOp, "codes", codes, num_buckets_));
    int64_t seed;
    OP_REQUIRES_OK(ctx, ReadScalar(kOp, "seed", ctx->input(BuildTablesInput::kSeed), &seed));
    const TableShape shape{codes.dim_size(1), num_buckets_, capacity_};
    Tensor *ids = nullptr, *counts = nullptr;
    OP_REQUIRES_OK(ctx, AllocateOutput(ctx, kOp, 0, {shape.num_tables, num_buckets_, capacity_},
                                       &ids));
    OP_REQUIRES_OK(ctx, AllocateOutput(ctx, kOp, 1, {shape.num_tables, num_buckets_}, &counts));
    BuildTables(shape, codes.dim_size(0), codes.flat<int32_t>().data(), overflow_, seed,
                ids->flat<int32_t>().data(), counts->flat<int32_t>().data(), TfParallelFor(ctx));
  }

 private:
  int64_t num_buckets_, capacity_;
  Overflow overflow_;
};

class LshUpdateTablesOp : public OpKernel {
 public:
  explicit LshUpdateTablesOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ParseOverflow(ctx, &overflow_));
  }

  void Compute(OpKernelContext* ctx) override {
    constexpr char kOp[] = "LshUpdateTables";
    const Tensor& table_ids = ctx->input(UpdateTablesInput::kTableIds);
    const Tensor& table_counts = ctx->input(UpdateTablesInput::kTableCounts);
    TableShape shape;
    OP_REQUIRES_OK(ctx, CheckTables(kOp, table_ids, table_counts, &shape));
    const Tensor& neuron_ids = ctx->input(UpdateTablesInput::kNeuronIds);
    const Tensor& old_codes = ctx->input(UpdateTablesInput::kOldCodes);
    const Tensor& new_codes = ctx->input(UpdateTablesInput::kNewCodes);
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "neuron_ids", neuron_ids, 1));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "old_codes", old_codes, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "new_codes", new_codes, 2));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "old_codes", old_codes, 0, "neuron_ids", neuron_ids, 0));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "new_codes", new_codes, 0, "neuron_ids", neuron_ids, 0));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "old_codes", old_codes, 1, "table_ids", table_ids, 0));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "new_codes", new_codes, 1, "table_ids", table_ids, 0));
    OP_REQUIRES_OK(ctx, CheckCodes(kOp, "old_codes", old_codes, shape.num_buckets));
    OP_REQUIRES_OK(ctx, CheckCodes(kOp, "new_codes", new_codes, shape.num_buckets));
    int64_t seed;
    OP_REQUIRES_OK(ctx, ReadScalar(kOp, "seed", ctx->input(UpdateTablesInput::kSeed), &seed));
    // A negative count would make an insertion write before its bucket.
    const auto count = table_counts.flat<int32_t>();
    for (int64_t i = 0; i < count.size(); ++i) {
      OP_REQUIRES(ctx, count(i) >= 0,
                  absl::InvalidArgumentError(absl::StrCat(
                      kOp, ": table_counts holds ", count(i), " at flat position ", i,
                      "; counts are never negative: the tables were not made by build_tables")));
    }
    const auto neurons = neuron_ids.flat<int32_t>();
    IdMap seen(neurons.size());
    for (int64_t i = 0; i < neurons.size(); ++i) {
      OP_REQUIRES(ctx, neurons(i) >= 0,
                  absl::InvalidArgumentError(absl::StrCat(kOp, ": neuron_ids[", i, "] = ",
                                                          neurons(i), " is negative")));
      OP_REQUIRES(ctx, seen.FindOrInsert(neurons(i), static_cast<int32_t>(i)) == i,
                  absl::InvalidArgumentError(absl::StrCat(
                      kOp, ": neuron_ids must be distinct; ", neurons(i), " appears twice")));
    }

    // Updates in place when the inputs are not shared (no copy of the tables); else copies.
    Tensor* ids = nullptr;
    Tensor* counts = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({UpdateTablesInput::kTableIds}, 0,
                                                              table_ids.shape(), &ids));
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({UpdateTablesInput::kTableCounts},
                                                              1, table_counts.shape(), &counts));
    for (const auto& [in_tensor, out_tensor] :
         {std::pair<const Tensor*, Tensor*>{&table_ids, ids}, {&table_counts, counts}}) {
      int32_t* out = out_tensor->flat<int32_t>().data();
      const auto in = in_tensor->flat<int32_t>();
      if (out != in.data()) std::copy(in.data(), in.data() + in.size(), out);
    }
    UpdateTables(shape, neurons.size(), neurons.data(), old_codes.flat<int32_t>().data(),
                 new_codes.flat<int32_t>().data(), overflow_, seed, ids->flat<int32_t>().data(),
                 counts->flat<int32_t>().data(), TfParallelFor(ctx));
  }

 private:
  Overflow overflow_;
};

class LshQueryOp : public OpKernel {
 public:
  explicit LshQueryOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string rule;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("k", &options_.k));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_neurons", &options_.num_neurons));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("rule", &rule));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("min_count", &options_.min_count));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("fill_random", &options_.fill_random));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("batch_wide", &options_.batch_wide));
    options_.rule = rule == "union"       ? QueryRule::kUnion
                    : rule == "threshold" ? QueryRule::kThreshold
                                          : QueryRule::kFrequency;
    OP_REQUIRES(ctx, options_.k <= options_.num_neurons,
                absl::InvalidArgumentError(absl::StrCat("LshQuery: k = ", options_.k,
                                                        " is larger than num_neurons = ",
                                                        options_.num_neurons)));
    OP_REQUIRES(ctx, options_.num_neurons <= std::numeric_limits<int32_t>::max(),
                absl::InvalidArgumentError(absl::StrCat(
                    "LshQuery: num_neurons must be at most 2^31 - 1 (ids are int32), got ",
                    options_.num_neurons)));
  }

  void Compute(OpKernelContext* ctx) override {
    constexpr char kOp[] = "LshQuery";
    const Tensor& codes = ctx->input(QueryInput::kCodes);
    const Tensor& table_ids = ctx->input(QueryInput::kTableIds);
    const Tensor& table_counts = ctx->input(QueryInput::kTableCounts);
    const Tensor& labels = ctx->input(QueryInput::kLabels);
    TableShape shape;
    OP_REQUIRES_OK(ctx, CheckTables(kOp, table_ids, table_counts, &shape));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "codes", codes, 2));
    OP_REQUIRES_OK(ctx, CheckRank(kOp, "labels", labels, 2));
    OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "codes", codes, 1, "table_ids", table_ids, 0));
    OP_REQUIRES_OK(ctx, CheckCodes(kOp, "codes", codes, shape.num_buckets));
    const int64_t batch = codes.dim_size(0);
    if (labels.dim_size(1) > 0) {
      OP_REQUIRES_OK(ctx, CheckSameDim(kOp, "labels", labels, 0, "codes", codes, 0));
    }
    const auto label = labels.flat<int32_t>();
    for (int64_t i = 0; i < label.size(); ++i) {
      OP_REQUIRES(ctx, label(i) >= -1 && label(i) < options_.num_neurons,
                  absl::InvalidArgumentError(absl::StrCat(
                      kOp, ": labels[", i / labels.dim_size(1), ", ", i % labels.dim_size(1),
                      "] = ", label(i), " is outside [-1, ", options_.num_neurons,
                      ") (labels has shape ", labels.shape().DebugString(), ")")));
    }
    QueryOptions options = options_;
    int64_t seed;
    OP_REQUIRES_OK(ctx, ReadScalar(kOp, "seed", ctx->input(QueryInput::kSeed), &seed));
    options.seed = seed;
    Tensor* active = nullptr;
    OP_REQUIRES_OK(ctx, AllocateOutput(ctx, kOp, 0, {options.batch_wide ? 1 : batch, options.k},
                                       &active));
    const auto query = [&](BatchQueryScratch* scratch) {
      return QueryTables(shape, batch, codes.flat<int32_t>().data(),
                         table_ids.flat<int32_t>().data(),
                         table_counts.flat<int32_t>().data(), label.data(), labels.dim_size(1),
                         options, active->flat<int32_t>().data(), TfParallelFor(ctx), scratch);
    };
    std::string error;
    if (options.batch_wide) {
      absl::MutexLock lock(&scratch_mutex_);
      error = query(&scratch_);
    } else {
      error = query(nullptr);
    }
    OP_REQUIRES(ctx, error.empty(), absl::InvalidArgumentError(absl::StrCat(kOp, ": ", error)));
  }

 private:
  QueryOptions options_;
  // Batch-wide queries count with this (all zero between queries), one query at a time.
  absl::Mutex scratch_mutex_;
  BatchQueryScratch scratch_ ABSL_GUARDED_BY(scratch_mutex_);
};

// Both LshRowFingerprints (a tensor) and ResourceLshRowFingerprints (a variable, in place).
class LshRowFingerprintsOp : public OpKernel {
 public:
  using OpKernel::OpKernel;

  void Compute(OpKernelContext* ctx) override {
    const char* op = OpName(*this);
    InputTensor weights_input;
    OP_REQUIRES_OK(ctx, weights_input.Init(ctx, op, "weights", RowFingerprintsInput::kWeights));
    const Tensor& weights = weights_input.tensor();
    OP_REQUIRES_OK(ctx, CheckRank(op, "weights", weights, 2));
    Tensor* fingerprints = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, {weights.dim_size(0)}, &fingerprints));
    // int64 holds the unsigned fingerprints' bits (TensorFlow has no uint64 comparisons).
    RowFingerprints(weights.flat<float>().data(), weights.dim_size(0), weights.dim_size(1),
                    reinterpret_cast<uint64_t*>(fingerprints->flat<int64_t>().data()),
                    TfParallelFor(ctx));
  }
};

REGISTER_KERNEL_BUILDER(Name("TfLsh>LshBuildTables").Device(tensorflow::DEVICE_CPU),
                        LshBuildTablesOp);
REGISTER_KERNEL_BUILDER(Name("TfLsh>LshUpdateTables").Device(tensorflow::DEVICE_CPU),
                        LshUpdateTablesOp);
REGISTER_KERNEL_BUILDER(Name("TfLsh>LshQuery").Device(tensorflow::DEVICE_CPU), LshQueryOp);
REGISTER_KERNEL_BUILDER(Name("TfLsh>LshRowFingerprints").Device(tensorflow::DEVICE_CPU),
                        LshRowFingerprintsOp);
REGISTER_KERNEL_BUILDER(Name("TfLsh>ResourceLshRowFingerprints").Device(tensorflow::DEVICE_CPU),
                        LshRowFingerprintsOp);

}  // namespace tf_lsh
