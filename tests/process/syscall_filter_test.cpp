// Fork-and-filter tests of the guest's seccomp table: a child installs the compiled filter
// and makes one call; an allowed call returns, a forbidden one ends the child with SIGSYS.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <functional>
#include <set>
#include <string>

#include "sandbox/guest/syscall_filter.hpp"

namespace {

using sojourn::sandbox::guest::compile_guest_filter;
using sojourn::sandbox::guest::CompiledFilter;
using sojourn::sandbox::guest::DefaultAction;
using sojourn::sandbox::guest::guest_syscall_table;
using sojourn::sandbox::guest::install_filter;
using sojourn::sandbox::guest::kChannelFd;

const CompiledFilter& filter(bool jit) {
  static const CompiledFilter plain = compile_guest_filter(false, DefaultAction::kill_process).value();
  static const CompiledFilter with_jit = compile_guest_filter(true, DefaultAction::kill_process).value();
  return jit ? with_jit : plain;
}

// A forked child must never return into the test runner, whatever happens in it.
[[noreturn]] void child_exit(int status) { ::syscall(SYS_exit_group, status); __builtin_unreachable(); }

// Runs `body` in a child under the filter, with a socket as the channel descriptor.
// Returns the wait status; the body's return value is the exit status.
int in_filtered_child(bool jit, const std::function<long()>& body) {
  const CompiledFilter& program = filter(jit);  // compiled in the parent
  int pair[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0);
  // Something for the child to read, written before the fork: a child that is already
  // dead cannot make this write raise SIGPIPE.
  char byte = 'x';
  REQUIRE(::write(pair[0], &byte, 1) == 1);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(pair[1], kChannelFd);
    if (install_filter(program) != 0) child_exit(99);
    child_exit(body() < 0 ? 1 : 0);
  }
  ::close(pair[1]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  ::close(pair[0]);
  return status;
}

bool allowed(int status) { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }
bool killed_by_seccomp(int status) { return WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS; }

long raw_mmap(int prot) {
  return ::syscall(SYS_mmap, nullptr, 4096, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

}  // namespace

TEST_CASE("the filter compiles to a BPF program, with and without the JIT rows") {
  auto plain = compile_guest_filter(false, DefaultAction::trap_and_report);
  auto jit = compile_guest_filter(true, DefaultAction::trap_and_report);
  REQUIRE(plain.ok());
  REQUIRE(jit.ok());
  CHECK(plain->program.size() > 10);
  CHECK(jit->program.size() > plain->program.size());
}

TEST_CASE("every row of the table names who needs its syscall") {
  std::set<std::string> names;
  for (const auto& row : guest_syscall_table()) {
    CHECK(std::string(row.who).size() > 10);
    names.insert(row.name);
  }
  CHECK(names.count("read") == 1);
  CHECK(names.count("open") == 0);
  CHECK(names.count("execve") == 0);
}

TEST_CASE("the allowed syscalls work under the filter") {
  CHECK(allowed(in_filtered_child(false, [] {
    char byte;
    return ::syscall(SYS_read, kChannelFd, &byte, 1);
  })));
  CHECK(allowed(in_filtered_child(false, [] { return ::syscall(SYS_write, kChannelFd, "y", 1); })));
  CHECK(allowed(in_filtered_child(false, [] {
    char seed[16];
    return ::syscall(SYS_getrandom, seed, sizeof seed, 0);
  })));
  CHECK(allowed(in_filtered_child(false, [] {
    timespec now{};
    return ::syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &now);
  })));
}

// The guest waits for its channel in poll (guest_io.cpp, await_readable): one descriptor
// per call, which seccomp can count but not read. ppoll, select and epoll stay refused.
TEST_CASE("poll is allowed on one descriptor only, and no other way to wait is") {
  CHECK(allowed(in_filtered_child(false, [] {
    pollfd channel{kChannelFd, POLLIN, 0};
    const long ready = ::syscall(SYS_poll, &channel, 1UL, -1L);
    return ready == 1 && (channel.revents & POLLIN) != 0 ? 0 : -1;
  })));
  for (bool jit : {false, true}) {
    CAPTURE(jit);
    CHECK(killed_by_seccomp(in_filtered_child(jit, [] {
      pollfd two[2] = {{kChannelFd, POLLIN, 0}, {0, POLLIN, 0}};
      return ::syscall(SYS_poll, two, 2UL, 0L);
    })));
    CHECK(killed_by_seccomp(in_filtered_child(jit, [] { return ::syscall(SYS_poll, nullptr, 0UL, 0L); })));
    for (long nr : {SYS_ppoll, SYS_select, SYS_pselect6, SYS_epoll_create1, SYS_epoll_pwait}) {
      CAPTURE(nr);
      CHECK(killed_by_seccomp(in_filtered_child(jit, [nr] { return ::syscall(nr, 0, 0, 0, 0, 0, 0); })));
    }
  }
}

TEST_CASE("forbidden syscalls kill the process with SIGSYS") {
  CHECK(killed_by_seccomp(in_filtered_child(false, [] { return ::syscall(SYS_open, "/etc/passwd", O_RDONLY); })));
  CHECK(killed_by_seccomp(in_filtered_child(false, [] { return ::syscall(SYS_openat, AT_FDCWD, "/etc/passwd", O_RDONLY); })));
  CHECK(killed_by_seccomp(in_filtered_child(false, [] { return ::syscall(SYS_socket, AF_INET, SOCK_STREAM, 0); })));
  CHECK(killed_by_seccomp(in_filtered_child(false, [] { return ::syscall(SYS_execve, "/bin/true", nullptr, nullptr); })));
  CHECK(killed_by_seccomp(in_filtered_child(false, [] { return ::syscall(SYS_ptrace, 0, 0, 0, 0); })));
  CHECK(killed_by_seccomp(in_filtered_child(false, [] { return ::syscall(SYS_getpid); })));
  CHECK(killed_by_seccomp(in_filtered_child(false, [] { return ::syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0); })));
}

// Guests share one network namespace (docs/jails.md "Namespaces"): that is safe only while
// no guest can make or reach a socket, nor move to another namespace. And SysV IPC and POSIX
// message queues are closed too, should the IPC namespace ever be shared.
TEST_CASE("no socket, namespace or IPC call is allowed, with or without the JIT") {
  for (bool jit : {false, true}) {
    CAPTURE(jit);
    for (long nr : {SYS_socket, SYS_socketpair, SYS_connect, SYS_bind, SYS_listen, SYS_accept4, SYS_sendto,
                    SYS_sendmsg, SYS_setns, SYS_unshare, SYS_clone3, SYS_msgget, SYS_shmget, SYS_semget,
                    SYS_mq_open}) {
      CAPTURE(nr);
      CHECK(killed_by_seccomp(in_filtered_child(jit, [nr] { return ::syscall(nr, 0, 0, 0, 0, 0, 0); })));
    }
  }
}

TEST_CASE("without the JIT no memory syscall is allowed: both heaps were mapped before the filter") {
  CHECK(killed_by_seccomp(in_filtered_child(false, [] { return ::syscall(SYS_brk, 0); })));
  CHECK(killed_by_seccomp(in_filtered_child(false, [] { return raw_mmap(PROT_READ | PROT_WRITE); })));
  CHECK(killed_by_seccomp(in_filtered_child(false, [] { return ::syscall(SYS_munmap, 0x10000, 4096); })));
  CHECK(killed_by_seccomp(in_filtered_child(false, [] { return ::syscall(SYS_mremap, 0x10000, 4096, 8192, 0); })));
}

TEST_CASE("read and write work only on the channel descriptor") {
  CHECK(killed_by_seccomp(in_filtered_child(false, [] { return ::syscall(SYS_write, 2, "x", 1); })));
  CHECK(killed_by_seccomp(in_filtered_child(false, [] {
    char byte;
    return ::syscall(SYS_read, 0, &byte, 1);
  })));
}

TEST_CASE("without the JIT no memory can be made executable") {
  CHECK(killed_by_seccomp(in_filtered_child(false, [] { return raw_mmap(PROT_READ | PROT_EXEC); })));
  CHECK(killed_by_seccomp(in_filtered_child(false, [] { return ::syscall(SYS_mprotect, 0x10000, 4096, PROT_READ | PROT_EXEC); })));
}

TEST_CASE("with the JIT memory is writable or executable, never both") {
  CHECK(allowed(in_filtered_child(true, [] {
    const long at = raw_mmap(PROT_READ | PROT_WRITE);
    return ::syscall(SYS_mprotect, at, 4096, PROT_READ | PROT_EXEC);
  })));
  CHECK(allowed(in_filtered_child(true, [] { return raw_mmap(PROT_READ | PROT_EXEC); })));
  CHECK(allowed(in_filtered_child(true, [] {
    const long at = raw_mmap(PROT_READ | PROT_WRITE);
    return ::syscall(SYS_munmap, at, 4096);
  })));
  CHECK(killed_by_seccomp(in_filtered_child(true, [] { return raw_mmap(PROT_READ | PROT_WRITE | PROT_EXEC); })));
  CHECK(killed_by_seccomp(in_filtered_child(true, [] {
    const long at = raw_mmap(PROT_READ | PROT_WRITE);
    return ::syscall(SYS_mprotect, at, 4096, PROT_READ | PROT_WRITE | PROT_EXEC);
  })));
}

TEST_CASE("in trap mode a forbidden syscall raises SIGSYS with its number") {
  const CompiledFilter trap = compile_guest_filter(false, DefaultAction::trap_and_report).value();
  int pair[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(pair[1], kChannelFd);
    struct sigaction action{};
    action.sa_flags = SA_SIGINFO;
    action.sa_sigaction = [](int, siginfo_t* info, void*) {
      const int nr = info->si_syscall;
      ::syscall(SYS_write, kChannelFd, &nr, sizeof nr);
      ::syscall(SYS_kill, 0, SIGSYS);  // a KILL_PROCESS row
    };
    ::sigaction(SIGSYS, &action, nullptr);
    if (install_filter(trap) != 0) child_exit(99);
    ::syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
    child_exit(0);
  }
  ::close(pair[1]);
  int nr = -1;
  CHECK(::read(pair[0], &nr, sizeof nr) == sizeof nr);
  CHECK(nr == SYS_socket);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  ::close(pair[0]);
  CHECK(killed_by_seccomp(status));
}
