// "0x..." formatting for addresses in the monitor's error messages.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace sojourn::sandbox::kvm {

inline std::string hex(std::uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%llx", static_cast<unsigned long long>(value));
  return text;
}

}  // namespace sojourn::sandbox::kvm
