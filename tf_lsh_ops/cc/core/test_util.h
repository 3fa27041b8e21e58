// A minimal check macro for the core's cc_tests: they build without TensorFlow or gtest.
#ifndef TF_LSH_OPS_CC_CORE_TEST_UTIL_H_
#define TF_LSH_OPS_CC_CORE_TEST_UTIL_H_

#include <cmath>
#include <cstdio>
#include <cstdlib>

#define CHECK_TRUE(cond)                                                         \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::exit(1);                                                              \
    }                                                                            \
  } while (0)

#define CHECK_NEAR(a, b, tol) CHECK_TRUE(std::fabs((a) - (b)) <= (tol))

#endif  // TF_LSH_OPS_CC_CORE_TEST_UTIL_H_
