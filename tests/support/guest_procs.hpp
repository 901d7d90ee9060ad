// Test support: a jail's guests seen from /proc, as the node sees them: the zygote's live
// children and the namespaces each one is in.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace sojourn::test {

// The inode of /proc/PID/ns/KIND: equal inodes, same namespace. 0 when unreadable.
inline std::uint64_t namespace_id(pid_t pid, const char* kind) {
  struct stat st{};
  if (::stat(("/proc/" + std::to_string(pid) + "/ns/" + kind).c_str(), &st) != 0) return 0;
  return st.st_ino;
}

// The live children of the zygote (its guests), from /proc/PID/task/PID/children; a guest
// killed and not yet reaped (a zombie, whose /proc/PID/ns cannot be read) is left out.
inline std::vector<pid_t> live_children_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  std::vector<pid_t> out;
  for (pid_t child = 0; in >> child;) {
    std::ifstream stat("/proc/" + std::to_string(child) + "/stat");
    std::string line;
    std::getline(stat, line);
    const auto close = line.rfind(')');
    if (close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z') out.push_back(child);
  }
  return out;
}

}  // namespace sojourn::test
