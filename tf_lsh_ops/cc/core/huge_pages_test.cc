#include "tf_lsh_ops/cc/core/huge_pages.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "tf_lsh_ops/cc/core/test_util.h"

int main() {
  using tf_lsh::AdviseHugePages;
  // Small buffers are left alone; a large one is advised once, and its contents stay.
  std::vector<float> small(1000, 1.f);
  CHECK_TRUE(!AdviseHugePages(small.data(), small.size() * sizeof(float)));
  std::vector<float> large(tf_lsh::kHugePageMinBytes / sizeof(float) + 12345);
  for (size_t i = 0; i < large.size(); ++i) large[i] = static_cast<float>(i % 1000);
  const bool advised = AdviseHugePages(large.data(), large.size() * sizeof(float));
#if defined(__linux__)
  CHECK_TRUE(advised || std::getenv("TF_LSH_HUGE_PAGES") != nullptr);
#endif
  CHECK_TRUE(!AdviseHugePages(large.data(), large.size() * sizeof(float)));
  for (size_t i = 0; i < large.size(); ++i) CHECK_TRUE(large[i] == static_cast<float>(i % 1000));
  std::printf("PASS\n");
  return 0;
}
