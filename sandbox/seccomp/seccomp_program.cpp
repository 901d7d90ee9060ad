// libseccomp behind seccomp_program.hpp: rules added one by one, the program exported through
// a descriptor and read back as sock_filter records.
#include "sandbox/seccomp/seccomp_program.hpp"

#include <fcntl.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

namespace sojourn::sandbox::seccomp {

namespace {

struct ContextFree {
  void operator()(scmp_filter_ctx ctx) const noexcept { seccomp_release(ctx); }
};
using Context = std::unique_ptr<void, ContextFree>;

std::uint32_t action_code(Action action) {
  switch (action) {
    case Action::allow:
      return SCMP_ACT_ALLOW;
    case Action::enosys:
      return SCMP_ACT_ERRNO(ENOSYS);
    case Action::kill_process:
      return SCMP_ACT_KILL_PROCESS;
  }
  return SCMP_ACT_KILL_PROCESS;
}

int add_rule(scmp_filter_ctx ctx, const Rule& rule) {
  std::vector<scmp_arg_cmp> cmps;
  cmps.reserve(rule.conditions.size());
  for (const ArgCondition& c : rule.conditions) {
    if (c.mask == ~std::uint64_t{0}) {
      cmps.push_back(scmp_arg_cmp{c.index, SCMP_CMP_EQ, c.value, 0});
    } else {
      cmps.push_back(scmp_arg_cmp{c.index, SCMP_CMP_MASKED_EQ, c.mask, c.value});
    }
  }
  return seccomp_rule_add_array(ctx, action_code(rule.action), rule.nr, static_cast<unsigned>(cmps.size()),
                                cmps.data());
}

// Reads a whole descriptor from its start; false on a read error.
bool read_all(int fd, std::vector<std::uint8_t>& bytes) {
  std::uint8_t buffer[4096];
  for (;;) {
    const ssize_t got = ::read(fd, buffer, sizeof buffer);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return false;
    if (got == 0) return true;
    bytes.insert(bytes.end(), buffer, buffer + got);
  }
}

}  // namespace

bool compile_into(std::span<const Rule> rules, DefaultAction fallback, ExportVia via,
                  std::vector<sock_filter>& program, Failure& failure) {
  auto report = [&failure](std::string step, int error) {
    failure = Failure{std::move(step), error};
    return false;
  };
  const std::uint32_t default_code = fallback == DefaultAction::trap ? SCMP_ACT_TRAP : SCMP_ACT_KILL_PROCESS;
  Context ctx(seccomp_init(default_code));
  if (!ctx) return report("seccomp_init failed", 0);
  if (int rc = seccomp_attr_set(ctx.get(), SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS); rc != 0) {
    return report("bad-arch action", -rc);
  }
  if (int rc = seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_NNP, 0); rc != 0) return report("nnp", -rc);
  for (const Rule& rule : rules) {
    if (rule.action == Action::kill_process && fallback == DefaultAction::kill_process) continue;
    if (int rc = add_rule(ctx.get(), rule); rc != 0) return report(rule.name, -rc);
  }

  std::vector<std::uint8_t> bytes;
  int rc = 0;
  if (via == ExportVia::memfd) {
    const int fd = ::memfd_create("sojourn-seccomp", MFD_CLOEXEC);
    if (fd < 0) return report("memfd_create", errno);
    rc = seccomp_export_bpf(ctx.get(), fd);
    if (rc == 0 && (::lseek(fd, 0, SEEK_SET) != 0 || !read_all(fd, bytes))) rc = -errno;
    ::close(fd);
  } else {
    // A few hundred bytes: the pipe's buffer holds the whole program before it is read.
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return report("pipe", errno);
    rc = seccomp_export_bpf(ctx.get(), fds[1]);
    ::close(fds[1]);
    if (rc == 0 && !read_all(fds[0], bytes)) rc = -errno;
    ::close(fds[0]);
  }
  if (rc != 0) return report("export", -rc);
  if (bytes.empty() || bytes.size() % sizeof(sock_filter) != 0) {
    return report("a program of " + std::to_string(bytes.size()) + " bytes", 0);
  }
  program.resize(bytes.size() / sizeof(sock_filter));
  // SAFETY: bytes holds a whole number of sock_filter records, as libseccomp wrote them.
  std::memcpy(program.data(), bytes.data(), bytes.size());
  return true;
}

}  // namespace sojourn::sandbox::seccomp
