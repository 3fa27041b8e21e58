#include "tf_lsh_ops/cc/core/huge_pages.h"

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
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

#if defined(__linux__)
// Collapses advised ranges into huge pages on one background thread at the lowest CPU
// priority, kCollapseChunk at a time: done inline, collapsing the Amazon-670K shape's weights
// and Adam moments (8 GB) held up the model's build and first training step for 25 s.
// Collapsing changes how memory is backed, never its contents, so a range freed (or reused)
// meanwhile is harmless: the call fails or collapses the new owner's pages.
class Collapser {
 public:
  static Collapser& Get() {
    static Collapser* collapser = new Collapser;  // never destroyed: its thread may still run
    return *collapser;
  }

  void Enqueue(uintptr_t begin, uintptr_t end) {
    std::lock_guard<std::mutex> lock(mu_);
    ranges_.emplace_back(begin, end);
    if (!started_) {
      started_ = true;
      std::thread([this] { Run(); }).detach();
    }
    work_.notify_one();
  }

  void WaitUntilIdle() {
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait(lock, [this] { return ranges_.empty() && !busy_; });
  }

 private:
  static constexpr uintptr_t kCollapseChunk = uintptr_t{32} << 20;

  void Run() {
    setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 19);
    while (true) {
      std::pair<uintptr_t, uintptr_t> range;
      {
        std::unique_lock<std::mutex> lock(mu_);
        busy_ = false;
        if (ranges_.empty()) idle_.notify_all();
        work_.wait(lock, [this] { return !ranges_.empty(); });
        range = ranges_.front();
        ranges_.pop_front();
        busy_ = true;
      }
      for (uintptr_t at = range.first; at < range.second; at += kCollapseChunk) {
        const uintptr_t chunk = std::min(kCollapseChunk, range.second - at);
        madvise(reinterpret_cast<void*>(at), chunk, MADV_COLLAPSE);  // may fail: then 4 KB
      }
    }
  }

  std::mutex mu_;
  std::condition_variable work_, idle_;
  std::deque<std::pair<uintptr_t, uintptr_t>> ranges_;
  bool started_ = false, busy_ = false;
};
#endif

}  // namespace

bool AdviseHugePages(const void* data, int64_t bytes, int64_t pages_touched) {
#if defined(__linux__)
  if (!Enabled() || bytes < kHugePageMinBytes || pages_touched < kHugePageMinPagesTouched) {
    return false;
  }
  Advised& advised = Recent();
  {
    std::lock_guard<std::mutex> lock(advised.mu);
    if (!advised.buffers.insert({data, bytes}).second) return false;
  }
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHugePage - 1);
  if (end <= begin) return false;
  // Either call may fail (THP disabled, old kernel, no free huge pages): the memory then stays
  // as it was, which is always correct. Pages faulted in from here on come huge; those already
  // there are collapsed in the background.
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  Collapser::Get().Enqueue(begin, end);
  return true;
#else
  (void)data;
  (void)bytes;
  (void)pages_touched;
  return false;
#endif
}

void WaitForHugePages() {
#if defined(__linux__)
  if (Enabled()) Collapser::Get().WaitUntilIdle();
#endif
}

}  // namespace tf_lsh
