// The guest's syscall allow-list. After the filter is in place the guest only talks on its
// channel, seeds LuaJIT's PRNG and exits: its Lua heap and its C++ heap are regions mapped
// before the filter (arena.hpp, guest_heap.hpp). Measured with strace (docs/jails.md).
#include "sandbox/guest/syscall_filter.hpp"

#include <fcntl.h>
#include <linux/seccomp.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

namespace sojourn::sandbox::guest {

namespace {

// clang-format off
constexpr SyscallRow kTable[] = {
  {SCMP_SYS(read),          "read",          ArgRule::channel_only,  false, "guest runtime: run requests and host replies from the channel"},
  {SCMP_SYS(write),         "write",         ArgRule::channel_only,  false, "guest runtime: host calls and results; the SIGSYS handler's report"},
  {SCMP_SYS(getrandom),     "getrandom",     ArgRule::any,           false, "lua_newstate: LuaJIT seeds its PRNG (the state is refused without it)"},
  {SCMP_SYS(clock_gettime), "clock_gettime", ArgRule::any,           false, "count hook: the deadline's steady_clock, where no vDSO answers it"},
  {SCMP_SYS(exit_group),    "exit_group",    ArgRule::any,           false, "guest runtime: the end of a run"},
  {SCMP_SYS(mmap),          "mmap",          ArgRule::write_xor_exec, true, "LuaJIT JIT: machine-code areas, mapped writable then executable"},
  {SCMP_SYS(mprotect),      "mprotect",      ArgRule::write_xor_exec, true, "LuaJIT JIT: flips machine code between writable and executable"},
  {SCMP_SYS(munmap),        "munmap",        ArgRule::any,            true, "LuaJIT JIT: frees machine-code areas"},
  {SCMP_SYS(kill),          "kill",          ArgRule::kill,          false, "never allowed: the SIGSYS handler's way to end the guest"},
};
// clang-format on

struct ContextFree {
  void operator()(scmp_filter_ctx ctx) const noexcept { seccomp_release(ctx); }
};
using Context = std::unique_ptr<void, ContextFree>;

Error seccomp_error(const char* what, int rc) {
  return make_error(Errc::internal, std::string("internal error: seccomp filter: ") + what + ": " + std::strerror(-rc));
}

int add_row(scmp_filter_ctx ctx, const SyscallRow& row) {
  switch (row.rule) {
    case ArgRule::any:
      return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, row.nr, 0);
    case ArgRule::channel_only:
      return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, row.nr, 1, SCMP_A0(SCMP_CMP_EQ, kChannelFd));
    case ArgRule::never_exec:
      return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, row.nr, 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
    case ArgRule::write_xor_exec: {
      // Two rules are an OR: without PROT_WRITE, or without PROT_EXEC.
      const int rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, row.nr, 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_WRITE, 0));
      if (rc != 0) return rc;
      return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, row.nr, 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
    }
    case ArgRule::kill:
      return seccomp_rule_add(ctx, SCMP_ACT_KILL_PROCESS, row.nr, 0);
  }
  return -EINVAL;
}

}  // namespace

std::span<const SyscallRow> guest_syscall_table() noexcept { return kTable; }

Result<CompiledFilter> compile_guest_filter(bool allow_jit, DefaultAction action) {
  const std::uint32_t default_action =
      action == DefaultAction::trap_and_report ? SCMP_ACT_TRAP : SCMP_ACT_KILL_PROCESS;
  Context ctx(seccomp_init(default_action));
  if (!ctx) return make_error(Errc::internal, "internal error: seccomp filter: seccomp_init failed");
  // Another ABI (x32, i386) on the same machine is killed, never trapped.
  if (int rc = seccomp_attr_set(ctx.get(), SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS); rc != 0) {
    return seccomp_error("bad-arch action", rc);
  }
  // The child sets no_new_privs itself, right before loading.
  if (int rc = seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_NNP, 0); rc != 0) return seccomp_error("nnp", rc);
  for (const SyscallRow& row : kTable) {
    if (row.jit_only && !allow_jit) continue;
    // libseccomp refuses a rule whose action is the default one.
    if (row.rule == ArgRule::kill && action == DefaultAction::kill_process) continue;
    if (int rc = add_row(ctx.get(), row); rc != 0) return seccomp_error(row.name, rc);
  }
  // libseccomp writes the program to a descriptor: a pipe holds it (a few hundred bytes).
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return seccomp_error("pipe", -errno);
  const int rc = seccomp_export_bpf(ctx.get(), fds[1]);
  ::close(fds[1]);
  std::vector<std::uint8_t> bytes;
  std::uint8_t buf[4096];
  for (;;) {
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    bytes.insert(bytes.end(), buf, buf + n);
  }
  ::close(fds[0]);
  if (rc != 0) return seccomp_error("export", rc);
  if (bytes.empty() || bytes.size() % sizeof(sock_filter) != 0) {
    return make_error(Errc::internal, "internal error: seccomp filter: bad program of " +
                                          std::to_string(bytes.size()) + " bytes");
  }
  CompiledFilter filter;
  filter.program.resize(bytes.size() / sizeof(sock_filter));
  // SAFETY: bytes holds a whole number of sock_filter records, as libseccomp wrote them.
  std::memcpy(filter.program.data(), bytes.data(), bytes.size());
  return filter;
}

int install_filter(const CompiledFilter& filter) noexcept {
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -errno;
  sock_fprog program{};
  program.len = static_cast<unsigned short>(filter.program.size());
  // SAFETY: the kernel only reads the program; it copies it before seccomp returns.
  program.filter = const_cast<sock_filter*>(filter.program.data());
  if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program) != 0) return -errno;
  return 0;
}

}  // namespace sojourn::sandbox::guest
