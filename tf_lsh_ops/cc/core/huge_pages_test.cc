#include "tf_lsh_ops/cc/core/huge_pages.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "tf_lsh_ops/cc/core/test_util.h"

int main() {
  using tf_lsh::AdviseHugePages;
  using tf_lsh::kHugePageMinPagesTouched;
  using tf_lsh::PagesTouched;
  CHECK_TRUE(PagesTouched(10, 512) == 10 && PagesTouched(10, 4096) == 10);
  CHECK_TRUE(PagesTouched(10, 4097) == 20 && PagesTouched(3, 65536) == 48);
  // Small buffers are left alone, and large ones few of whose pages a call touches; a large
  // one is advised once, and its contents stay through the collapse.
  std::vector<float> small(1000, 1.f);
  CHECK_TRUE(!AdviseHugePages(small.data(), small.size() * sizeof(float),
                              kHugePageMinPagesTouched));
  std::vector<float> large(tf_lsh::kHugePageMinBytes / sizeof(float) + 12345);
  for (size_t i = 0; i < large.size(); ++i) large[i] = static_cast<float>(i % 1000);
  const int64_t bytes = large.size() * sizeof(float);
  CHECK_TRUE(!AdviseHugePages(large.data(), bytes, kHugePageMinPagesTouched - 1));
  const bool advised = AdviseHugePages(large.data(), bytes, kHugePageMinPagesTouched);
#if defined(__linux__)
  CHECK_TRUE(advised || std::getenv("TF_LSH_HUGE_PAGES") != nullptr);
#endif
  CHECK_TRUE(!AdviseHugePages(large.data(), bytes, kHugePageMinPagesTouched));
  tf_lsh::WaitForHugePages();  // the background collapse has run
  for (size_t i = 0; i < large.size(); ++i) CHECK_TRUE(large[i] == static_cast<float>(i % 1000));
  std::printf("PASS\n");
  return 0;
}
