// Shared by the libFuzzer targets: a property that must hold for every input. A failed
// check prints what broke and aborts, which libFuzzer reports as a crash with its input.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace sojourn::fuzz {

inline void check(bool holds, const char* what) {
  if (!holds) {
    std::fprintf(stderr, "fuzz property broken: %s\n", what);
    std::abort();
  }
}

}  // namespace sojourn::fuzz
