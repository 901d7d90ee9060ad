// The zygote's image made inheritable (sandbox/guest/zygote_image.cpp): a fork finds the
// executable's read-only segments already mapped in its page table, and their protections
// are what they were.
#include <doctest/doctest.h>

#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "sandbox/guest/zygote_image.hpp"

namespace {

struct Mapping {
  std::uintptr_t from = 0;
  std::uintptr_t to = 0;
  std::string perms;
  bool operator==(const Mapping&) const = default;
};

// The executable's mappings that are not writable (text, rodata, headers), from /proc/self/maps,
// adjacent ones with the same protections joined.
std::vector<Mapping> image_mappings() {
  const std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
  std::vector<Mapping> out;
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    std::istringstream in(line);
    std::string range, perms, offset, dev, inode, path;
    in >> range >> perms >> offset >> dev >> inode >> path;
    if (path != exe || perms.find('w') != std::string::npos) continue;
    const auto dash = range.find('-');
    const Mapping m{std::stoull(range.substr(0, dash), nullptr, 16), std::stoull(range.substr(dash + 1), nullptr, 16), perms};
    // Adjacent areas with the same protections as one: the kernel may merge two of them
    // (rodata and the RELRO pages after it) once both have been through mprotect, which
    // changes no page's protection.
    if (!out.empty() && out.back().to == m.from && out.back().perms == m.perms) {
      out.back().to = m.to;
    } else {
      out.push_back(m);
    }
  }
  return out;
}

// In a fresh fork: the page faults the child takes reading one byte of every page of those
// mappings (what a guest pays for its code and constants); -1 if the child did not end well.
int faults_in_a_fork(const std::vector<Mapping>& mappings) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    rusage start{};
    ::getrusage(RUSAGE_SELF, &start);
    unsigned char sum = 0;
    for (const Mapping& m : mappings) {
      for (std::uintptr_t at = m.from; at < m.to; at += 4096) sum ^= *reinterpret_cast<volatile const unsigned char*>(at);
    }
    rusage end{};
    ::getrusage(RUSAGE_SELF, &end);
    const long faults = end.ru_minflt - start.ru_minflt + (sum & 0);
    ::syscall(SYS_exit_group, static_cast<int>(faults > 254 ? 254 : faults));
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

TEST_CASE("after the image is shared, a fork inherits its read-only pages mapped, with the same protections") {
  const std::vector<Mapping> before = image_mappings();
  REQUIRE(before.size() >= 2);  // at least the text and the read-only data
  // Before: fork leaves a file mapping without anonymous pages out of the child's page table,
  // and the child faults its pages in again.
  CHECK(faults_in_a_fork(before) > 0);

  const sojourn::sandbox::guest::ImageShare share = sojourn::sandbox::guest::share_image_with_forks();
  CHECK(share.error.empty());
  CHECK(share.segments >= 2);
  CHECK(share.bytes > 0);

  // Nothing of the image became writable, executable or otherwise different.
  CHECK(image_mappings() == before);
  // The fewest of three forks: on a busy machine a child now and then takes a stray fault that
  // is not the image's (one, where an unshared image costs hundreds).
  int fewest = faults_in_a_fork(before);
  for (int i = 0; i < 2 && fewest != 0; ++i) fewest = std::min(fewest, faults_in_a_fork(before));
  CHECK(fewest == 0);
}
