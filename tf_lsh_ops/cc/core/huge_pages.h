// Backs large weight matrices with transparent huge pages (2 MB instead of 4 KB).
//
// Active rows are scattered over hundreds of MB, so with 4 KB pages nearly every row read by
// the gather-matmul or written by sparse Adam misses the TLB. On the Amazon-670K shape huge
// pages made the gather-matmul forward 14% and its backward 16% faster (benchmarks/README.md).
// Linux hands out huge pages only to ranges that ask for them when THP is in "madvise" mode (a
// common default), and only at page-fault time; TensorFlow's buffers are already populated,
// so the range is also collapsed (MADV_COLLAPSE, Linux 6.1+; elsewhere the kernel's
// khugepaged collapses it over time), by a background thread at the lowest CPU priority.
//
// Nothing changes in the memory's contents or ownership. TF_LSH_HUGE_PAGES=0 turns it off.
#ifndef TF_LSH_OPS_CC_CORE_HUGE_PAGES_H_
#define TF_LSH_OPS_CC_CORE_HUGE_PAGES_H_

#include <algorithm>
#include <cstdint>

namespace tf_lsh {

// Buffers smaller than this are left alone: their rows fit the TLB's reach well enough.
constexpr int64_t kHugePageMinBytes = int64_t{64} << 20;

// Calls that touch fewer 4 KB pages of a buffer than this leave it alone. The batch-wide
// output layer of the Amazon-670K shape at hidden 1,024 (3,000 rows, a page each, per step)
// ran no faster on huge pages, and collapsing its weights and moments cost 20 s of its first
// 1,200 steps; per-example sets (273,000 rows a step) ran 14-16% faster (benchmarks/README.md).
constexpr int64_t kHugePageMinPagesTouched = 32768;

// The 4 KB pages that `rows_touched` row reads of a matrix whose rows are `row_bytes` long
// touch at most.
inline int64_t PagesTouched(int64_t rows_touched, int64_t row_bytes) {
  return rows_touched * std::max<int64_t>(1, (row_bytes + 4095) / 4096);
}

// Asks for huge pages over the whole 2 MB pages inside [data, data + bytes), once per buffer
// (later calls for it return at once), and queues the range's collapse, when the caller
// touches at least kHugePageMinPagesTouched of its pages. Thread-safe; returns true if this
// call advised it.
bool AdviseHugePages(const void* data, int64_t bytes, int64_t pages_touched);

// Blocks until every queued collapse has been attempted (tests, benchmarks).
void WaitForHugePages();

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_HUGE_PAGES_H_
