#include "tf_lsh_ops/cc/core/huge_pages.h"

#include <cstdlib>
#include <mutex>
#include <set>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace tf_lsh {
namespace {

#if defined(__linux__) && !defined(MADV_COLLAPSE)
constexpr int MADV_COLLAPSE = 25;  // Linux 6.1; older libc headers lack it.
#endif

constexpr uintptr_t kHugePage = uintptr_t{2} << 20;

bool Enabled() {
  static const bool enabled = [] {
    const char* flag = std::getenv("TF_LSH_HUGE_PAGES");
    return !(flag != nullptr && flag[0] == '0');
  }();
  return enabled;
}

// Every buffer advised so far. A collapse copies the range, so it must happen once per buffer,
// not once per step; buffers this large are few (at most memory / kHugePageMinBytes). A new
// buffer at a freed one's address and size is not advised again: it then keeps 4 KB pages.
struct Advised {
  std::mutex mu;
  std::set<std::pair<const void*, int64_t>> buffers;
};

Advised& Recent() {
  static Advised* advised = new Advised;
  return *advised;
}

}  // namespace

bool AdviseHugePages(const void* data, int64_t bytes) {
#if defined(__linux__)
  if (!Enabled() || bytes < kHugePageMinBytes) return false;
  Advised& advised = Recent();
  {
    std::lock_guard<std::mutex> lock(advised.mu);
    if (!advised.buffers.insert({data, bytes}).second) return false;
  }
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHugePage - 1);
  if (end <= begin) return false;
  void* start = reinterpret_cast<void*>(begin);
  // Either call may fail (THP disabled, old kernel, no free huge pages): the memory then stays
  // as it was, which is always correct.
  madvise(start, end - begin, MADV_HUGEPAGE);
  madvise(start, end - begin, MADV_COLLAPSE);
  return true;
#else
  (void)data;
  (void)bytes;
  return false;
#endif
}

}  // namespace tf_lsh
