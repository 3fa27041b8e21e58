// Backs large weight matrices with transparent huge pages (2 MB instead of 4 KB).
//
// Active rows are scattered over hundreds of MB, so with 4 KB pages nearly every row read by
// the gather-matmul or written by sparse Adam misses the TLB. On the Amazon-670K shape huge
// pages made the gather-matmul forward 14% and its backward 16% faster (benchmarks/README.md).
// Linux hands out huge pages only to ranges that ask for them when THP is in "madvise" mode (a
// common default), and only at page-fault time; TensorFlow's buffers are already populated,
// so the range is also collapsed synchronously (MADV_COLLAPSE, Linux 6.1+; elsewhere the
// kernel's background khugepaged collapses it over time).
//
// Nothing changes in the memory's contents or ownership. TF_LSH_HUGE_PAGES=0 turns it off.
#ifndef TF_LSH_OPS_CC_CORE_HUGE_PAGES_H_
#define TF_LSH_OPS_CC_CORE_HUGE_PAGES_H_

#include <cstdint>

namespace tf_lsh {

// Buffers smaller than this are left alone: their rows fit the TLB's reach well enough.
constexpr int64_t kHugePageMinBytes = int64_t{64} << 20;

// Asks for huge pages over the whole 2 MB pages inside [data, data + bytes), once per buffer
// (later calls for it return at once). Thread-safe; returns true if this call advised it.
bool AdviseHugePages(const void* data, int64_t bytes);

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_HUGE_PAGES_H_
