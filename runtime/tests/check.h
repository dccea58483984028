// The one assertion of the C++ tests: CHECK(cond) reports a failed condition with its place and
// counts it; main() returns check_failures() == 0 ? 0 : 1, so every check runs.
#pragma once

#include <cstdio>

namespace sdar::testing {

inline int& failure_count() {
  static int failures = 0;
  return failures;
}

}  // namespace sdar::testing

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::fprintf(stderr, "%s:%d: CHECK(%s)\n", __FILE__, __LINE__, #cond);   \
      ++sdar::testing::failure_count();                                        \
    }                                                                          \
  } while (0)
