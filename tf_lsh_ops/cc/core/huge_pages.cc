#include "tf_lsh_ops/cc/core/huge_pages.h"

#include <array>
#include <cstdlib>
#include <mutex>

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

// The buffers advised last: a layer has a weight matrix and two Adam moments.
struct Advised {
  std::mutex mu;
  std::array<std::pair<const void*, int64_t>, 8> buffers{};
  size_t next = 0;
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
    for (const auto& buffer : advised.buffers) {
      if (buffer.first == data && buffer.second == bytes) return false;
    }
    advised.buffers[advised.next] = {data, bytes};
    advised.next = (advised.next + 1) % advised.buffers.size();
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
