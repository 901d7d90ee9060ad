// Tests of the shared seccomp table compiler (sandbox/seccomp): rules with argument conditions
// compiled, installed in a forked child, and the child's calls allowed, answered -ENOSYS or
// killed as the rules say. The guest's and the monitor's own tables have their own tests.
#include <doctest/doctest.h>

#include <linux/seccomp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <functional>
#include <string>
#include <vector>

#include "sandbox/seccomp/seccomp_program.hpp"
#include "sojourn/core/error.hpp"

namespace {

namespace sc = sojourn::sandbox::seccomp;

sojourn::Error report(const std::string& step, int error) {
  return sojourn::make_error(sojourn::Errc::internal, "test filter: " + step + " (" + std::to_string(error) + ")");
}

// What every child needs to run its body and end.
std::vector<sc::Rule> base_rules() {
  return {{SYS_exit_group, sc::Action::allow, {}, "exit_group"}};
}

[[noreturn]] void child_exit(int status) {
  ::syscall(SYS_exit_group, status);
  __builtin_unreachable();
}

// Runs `body` in a child under `program`; its result (0 or 1) is the exit status.
int in_filtered_child(const std::vector<sock_filter>& program, const std::function<bool()>& body) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) child_exit(98);
    sock_fprog fprog{};
    fprog.len = static_cast<unsigned short>(program.size());
    fprog.filter = const_cast<sock_filter*>(program.data());
    if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0) child_exit(99);
    child_exit(body() ? 0 : 1);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

bool exited_ok(int status) { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }
bool killed_by_sigsys(int status) { return WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS; }

std::vector<sock_filter> compile(const std::vector<sc::Rule>& rules, sc::ExportVia via = sc::ExportVia::pipe) {
  auto program = sc::compile<sojourn::Result<std::vector<sock_filter>>>(rules, sc::DefaultAction::kill_process, via, report);
  REQUIRE_MESSAGE(program.ok(), program.error().message);
  return *program;
}

}  // namespace

TEST_CASE("a program compiles through a pipe and through a memfd to the same instructions") {
  auto rules = base_rules();
  rules.push_back({SYS_getpid, sc::Action::allow, {}, "getpid"});
  const auto by_pipe = compile(rules, sc::ExportVia::pipe);
  const auto by_memfd = compile(rules, sc::ExportVia::memfd);
  REQUIRE(!by_pipe.empty());
  REQUIRE(by_pipe.size() == by_memfd.size());
  for (std::size_t i = 0; i < by_pipe.size(); ++i) {
    CHECK(by_pipe[i].code == by_memfd[i].code);
    CHECK(by_pipe[i].k == by_memfd[i].k);
  }
}

TEST_CASE("a syscall outside the rules kills the child, one in them runs") {
  auto rules = base_rules();
  rules.push_back({SYS_getpid, sc::Action::allow, {}, "getpid"});
  const auto program = compile(rules);
  CHECK(exited_ok(in_filtered_child(program, [] { return ::syscall(SYS_getpid) > 0; })));
  CHECK(killed_by_sigsys(in_filtered_child(program, [] { return ::syscall(SYS_getppid) > 0; })));
}

TEST_CASE("an equality condition allows only its value, and two rules of one syscall are an OR") {
  auto rules = base_rules();
  // dup(fd) for two descriptors only; dup of stdin and stderr may run, of stdout not.
  rules.push_back({SYS_dup, sc::Action::allow, {sc::arg_equals(0, 0)}, "dup 0"});
  rules.push_back({SYS_dup, sc::Action::allow, {sc::arg_equals(0, 2)}, "dup 2"});
  const auto program = compile(rules);
  CHECK(exited_ok(in_filtered_child(program, [] { return ::syscall(SYS_dup, 0) >= 0; })));
  CHECK(exited_ok(in_filtered_child(program, [] { return ::syscall(SYS_dup, 2) >= 0; })));
  CHECK(killed_by_sigsys(in_filtered_child(program, [] { return ::syscall(SYS_dup, 1) >= 0; })));
}

TEST_CASE("a masked condition tests only the bits of its mask") {
  auto rules = base_rules();
  // getpriority(which, who) with bit 1 of `which` clear: PRIO_PROCESS (0) and PRIO_PGRP (1)
  // pass, PRIO_USER (2) is killed.
  rules.push_back({SYS_getpriority, sc::Action::allow, {sc::arg_masked(0, 2, 0)}, "getpriority"});
  const auto program = compile(rules);
  CHECK(exited_ok(in_filtered_child(program, [] { return ::syscall(SYS_getpriority, 0, 0) >= 0; })));
  CHECK(exited_ok(in_filtered_child(program, [] { return ::syscall(SYS_getpriority, 1, 0) >= 0; })));
  CHECK(killed_by_sigsys(in_filtered_child(program, [] { return ::syscall(SYS_getpriority, 2, 0) >= 0; })));
}

TEST_CASE("an enosys rule answers -ENOSYS without running the call") {
  auto rules = base_rules();
  rules.push_back({SYS_getppid, sc::Action::enosys, {}, "getppid"});
  const auto program = compile(rules);
  CHECK(exited_ok(in_filtered_child(program, [] { return ::syscall(SYS_getppid) == -1 && errno == ENOSYS; })));
}

TEST_CASE("a kill rule ends the child even where the default is a trap") {
  auto rules = base_rules();
  rules.push_back({SYS_getppid, sc::Action::kill_process, {}, "getppid"});
  auto program = sc::compile<sojourn::Result<std::vector<sock_filter>>>(rules, sc::DefaultAction::trap, sc::ExportVia::pipe, report);
  REQUIRE(program.ok());
  CHECK(killed_by_sigsys(in_filtered_child(*program, [] { return ::syscall(SYS_getppid) > 0; })));
}

TEST_CASE("a rule libseccomp refuses is reported by its name") {
  auto rules = base_rules();
  // Two conditions on one argument: libseccomp refuses the rule.
  rules.push_back({SYS_dup, sc::Action::allow, {sc::arg_equals(0, 0), sc::arg_equals(0, 1)}, "dup twice"});
  auto program = sc::compile<sojourn::Result<std::vector<sock_filter>>>(rules, sc::DefaultAction::kill_process, sc::ExportVia::pipe, report);
  REQUIRE_FALSE(program.ok());
  CHECK(program.error().message.rfind("test filter: dup twice (", 0) == 0);
}
