// The guest's syscall allow-list. After the filter is in place the guest only talks on its
// channel, seeds LuaJIT's PRNG and exits: its Lua heap and its C++ heap are regions mapped
// before the filter (arena.hpp, guest_heap.hpp). Measured with strace (docs/jails.md).
#include "sandbox/guest/syscall_filter.hpp"

#include <linux/seccomp.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "sandbox/seccomp/seccomp_program.hpp"

namespace sojourn::sandbox::guest {

namespace {

// clang-format off
constexpr SyscallRow kTable[] = {
  {SCMP_SYS(read),          "read",          ArgRule::channel_only,  false, "guest runtime: run requests and host replies from the channel"},
  {SCMP_SYS(write),         "write",         ArgRule::channel_only,  false, "guest runtime: host calls and results; the SIGSYS handler's report"},
  {SCMP_SYS(poll),          "poll",          ArgRule::one_descriptor, false, "guest runtime: waits for the channel's bytes (a read's wait is also woken each time the host reads)"},
  {SCMP_SYS(getrandom),     "getrandom",     ArgRule::any,           false, "lua_newstate: LuaJIT seeds its PRNG (the state is refused without it)"},
  {SCMP_SYS(clock_gettime), "clock_gettime", ArgRule::any,           false, "count hook: the deadline's steady_clock, where no vDSO answers it"},
  {SCMP_SYS(exit_group),    "exit_group",    ArgRule::any,           false, "guest runtime: the end of a run"},
  {SCMP_SYS(mmap),          "mmap",          ArgRule::write_xor_exec, true, "LuaJIT JIT: machine-code areas, mapped writable then executable"},
  {SCMP_SYS(mprotect),      "mprotect",      ArgRule::write_xor_exec, true, "LuaJIT JIT: flips machine code between writable and executable"},
  {SCMP_SYS(munmap),        "munmap",        ArgRule::any,            true, "LuaJIT JIT: frees machine-code areas"},
  {SCMP_SYS(kill),          "kill",          ArgRule::kill,          false, "never allowed: the SIGSYS handler's way to end the guest"},
};
// clang-format on

Error seccomp_error(const std::string& step, int error) {
  std::string text = "internal error: seccomp filter: " + step;
  if (error != 0) text += std::string(": ") + std::strerror(error);
  return make_error(Errc::internal, text);
}

// A row as the compiler's rules (write_xor_exec is two: without PROT_WRITE, or without PROT_EXEC).
void add_rules(const SyscallRow& row, std::vector<seccomp::Rule>& rules) {
  using seccomp::Action;
  switch (row.rule) {
    case ArgRule::any:
      rules.push_back({row.nr, Action::allow, {}, row.name});
      return;
    case ArgRule::channel_only:
      rules.push_back({row.nr, Action::allow, {seccomp::arg_equals(0, kChannelFd)}, row.name});
      return;
    case ArgRule::one_descriptor:
      rules.push_back({row.nr, Action::allow, {seccomp::arg_equals(1, 1)}, row.name});
      return;
    case ArgRule::never_exec:
      rules.push_back({row.nr, Action::allow, {seccomp::arg_masked(2, PROT_EXEC, 0)}, row.name});
      return;
    case ArgRule::write_xor_exec:
      rules.push_back({row.nr, Action::allow, {seccomp::arg_masked(2, PROT_WRITE, 0)}, row.name});
      rules.push_back({row.nr, Action::allow, {seccomp::arg_masked(2, PROT_EXEC, 0)}, row.name});
      return;
    case ArgRule::kill:
      rules.push_back({row.nr, Action::kill_process, {}, row.name});
      return;
  }
}

}  // namespace

std::span<const SyscallRow> guest_syscall_table() noexcept { return kTable; }

Result<CompiledFilter> compile_guest_filter(bool allow_jit, DefaultAction action) {
  std::vector<seccomp::Rule> rules;
  for (const SyscallRow& row : kTable) {
    if (row.jit_only && !allow_jit) continue;
    add_rules(row, rules);
  }
  const auto fallback =
      action == DefaultAction::trap_and_report ? seccomp::DefaultAction::trap : seccomp::DefaultAction::kill_process;
  // Through a pipe: the zygote compiles under the guest's rlimits (a memfd write counts
  // against RLIMIT_FSIZE).
  auto program = seccomp::compile<Result<std::vector<sock_filter>>>(rules, fallback, seccomp::ExportVia::pipe, seccomp_error);
  if (!program) return program.error();
  CompiledFilter filter;
  filter.program = std::move(*program);
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
