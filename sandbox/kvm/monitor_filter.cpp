// The monitor thread's syscall allow-list, found by reading every path of sandbox/kvm and
// glibc's thread start-up, and checked under the filter in the nested-QEMU tests
// (kvm_monitor_filter_test: a master booted, forks served, a budget kill, a reset, the pool).
//
// The default action is a trap that names the syscall and then ends the whole process with
// SIGSYS. Why not the alternatives:
// - SECCOMP_RET_KILL_PROCESS ends the process without a word: a monitor path missing from the
//   table (a glibc update, a new ioctl) then shows up as a node dying of SIGSYS with nothing
//   to say which call it was. Firecracker ends the same way but traps first to log the number.
// - Ending only the thread (KILL_THREAD, or the handler's exit) would leave the node with a
//   half-torn VM, its locks held and the owner waiting forever; and a thread that reached an
//   unlisted syscall is either a monitor bug or a guest that took over the monitor, after
//   which nothing in the process can be trusted. The node's supervisor restarts it.
// - Answering EPERM would let a taken-over thread keep probing.
// The trap is as strict as the kill: the refused call never runs, and the handler's own exit
// is a syscall the table kills (a nested trap while SIGSYS is blocked kills too).
#include "sandbox/kvm/monitor_filter.hpp"

#include <fcntl.h>
#include <linux/kvm.h>
#include <linux/seccomp.h>
#include <malloc.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/single_threaded.h>
#include <sys/sysinfo.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <string>
#include <thread>

#include "sandbox/kvm/kvm_abi.hpp"
#include "sandbox/kvm/vcpu.hpp"
#include "sandbox/seccomp/seccomp_program.hpp"

namespace sojourn::sandbox::kvm {

namespace {

using A = MonitorArg;
// Flags every thread of glibc's pthread_create has; no thread ever asks for a new namespace.
constexpr std::uint64_t kThreadFlags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD;
constexpr std::uint64_t kNamespaceFlags =
    CLONE_NEWNS | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP;

// clang-format off
constexpr MonitorRow kTable[] = {
  // KVM, by request number (arg1). /dev/kvm itself is opened before the filter (KvmSystem::open,
  // with its GET_API_VERSION, CHECK_EXTENSION and GET_VCPU_MMAP_SIZE), so those are not here.
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, KVM_CREATE_VM,              "KVM_CREATE_VM",              false, "Vm::create_empty: a fork without a pooled VM, MasterVm::prewarm"},
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, KVM_SET_TSS_ADDR,           "KVM_SET_TSS_ADDR",           false, "Vm::create_empty: Intel's real-mode TSS pages, set on every new VM"},
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, KVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION", false, "Vm::set_memory/clear_memory: a fork's CoW memory as slot 0; recycle drops it"},
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, KVM_CREATE_VCPU,            "KVM_CREATE_VCPU",            false, "Vcpu::create: the vCPU of a new VM"},
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, abi::kSetCpuid2,            "KVM_SET_CPUID2",             false, "Vcpu::set_cpuid: a pooled shell gets the master's CPUID; set_up"},
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, KVM_RUN,                    "KVM_RUN",                    false, "Vcpu::run_loop: the guest runs"},
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, KVM_GET_REGS,               "KVM_GET_REGS",               false, "Vcpu::run_loop: a syscall's arguments, a fault's RIP; snapshot"},
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, KVM_SET_REGS,               "KVM_SET_REGS",               false, "Vcpu::run_loop: a syscall's result; MicroVmFork::serve; restore"},
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, KVM_GET_SREGS,              "KVM_GET_SREGS",              false, "Vcpu::run_loop: CR2 of a page fault; set_up; snapshot"},
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, KVM_SET_SREGS,              "KVM_SET_SREGS",              false, "Vcpu::restore (a fork, a reset): the master's segments and CRs; set_up"},
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, abi::kSetMsrs,              "KVM_SET_MSRS",               false, "Vcpu::run_loop: FS/GS base after arch_prctl; restore; set_up"},
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, KVM_SET_XCRS,               "KVM_SET_XCRS",               false, "Vcpu::restore: the master's XCR0; set_up"},
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, abi::kSetXsave,             "KVM_SET_XSAVE",              false, "Vcpu::restore: the master's FPU/SSE/AVX state"},
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, KVM_SET_MP_STATE,           "KVM_SET_MP_STATE",           false, "Vcpu::restore: a reused vCPU that ended halted runs again"},
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, abi::kGetSupportedCpuid,    "KVM_GET_SUPPORTED_CPUID",    true,  "Vcpu::set_up, MasterVm::boot: the leaves a booted vCPU gets"},
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, KVM_GET_XCRS,               "KVM_GET_XCRS",               true,  "Vcpu::snapshot: the master's XCR0, once it paused"},
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, abi::kGetXsave,             "KVM_GET_XSAVE",              true,  "Vcpu::snapshot: the master's FPU/SSE/AVX state"},
  {SCMP_SYS(ioctl), "ioctl", A::equals_arg1, abi::kGetMsrs,              "KVM_GET_MSRS",               true,  "Vcpu::snapshot: the master's long-mode MSRs"},
  // Guest memory and the host's own memory; never executable.
  {SCMP_SYS(mmap),     "mmap",     A::never_exec, 0, "", false, "GuestMemory (the memfd, a fork's MAP_PRIVATE view), the kvm_run page, malloc, thread stacks"},
  {SCMP_SYS(munmap),   "munmap",   A::any,        0, "", false, "GuestMemory and RunPage destructors, malloc, a finished thread's stack"},
  {SCMP_SYS(mprotect), "mprotect", A::never_exec, 0, "", false, "malloc growing a thread's arena; the guard page of a thread stack"},
  {SCMP_SYS(mremap),   "mremap",   A::any,        0, "", false, "malloc: realloc of a large block (a guest's channel buffer growing)"},
  {SCMP_SYS(brk),      "brk",      A::any,        0, "", false, "malloc's main arena"},
  {SCMP_SYS(madvise),  "madvise",  A::any,        0, "", false, "GuestMemory::reset_to_pristine (MADV_DONTNEED drops a fork's copies); glibc frees stacks"},
  {SCMP_SYS(memfd_create), "memfd_create", A::equals_arg1, MFD_CLOEXEC, "MFD_CLOEXEC", true, "GuestMemory::create: a booted VM's (or a master's) memory"},
  {SCMP_SYS(ftruncate),    "ftruncate",    A::any,         0,           "",            true, "GuestMemory::create: sizes that memfd"},
  {SCMP_SYS(fcntl),    "fcntl",    A::equals_arg1, F_DUPFD_CLOEXEC, "F_DUPFD_CLOEXEC", false, "GuestMemory::fork_private: a fork's own descriptor of the master's memfd"},
  {SCMP_SYS(close),    "close",    A::any,        0, "", false, "the VM's, vCPU's and memory's descriptors when a microVM ends"},
  // The guest's channel and the host services its syscalls use.
  {SCMP_SYS(read),     "read",     A::channel,    0, "", false, "ChannelEnd: the guest's read(3) is the node's request"},
  {SCMP_SYS(write),    "write",    A::channel,    0, "", false, "ChannelEnd: the guest's write(3); fd 2: SOJOURN_KVM_TRACE and the SIGSYS report"},
  {SCMP_SYS(sendto),   "sendto",   A::channel,    0, "", false, "MicrovmJail's ChannelEnd: the guest's write(3) as send(MSG_NOSIGNAL) on its socket"},
  {SCMP_SYS(shutdown), "shutdown", A::channel,    0, "", false, "MicrovmJail's monitor thread ends the guest's channel once the guest is gone"},
  {SCMP_SYS(poll),     "poll",     A::any,        0, "", false, "a ChannelEnd waiting for the node with a deadline"},
  {SCMP_SYS(ppoll),    "ppoll",    A::any,        0, "", false, "the same, through ppoll"},
  {SCMP_SYS(getrandom),     "getrandom",     A::any, 0, "", false, "host_random: the guest's getrandom; AT_RANDOM of a boot"},
  {SCMP_SYS(clock_gettime), "clock_gettime", A::any, 0, "", false, "host_clock: the guest's clock_gettime; steady_clock without a vDSO; MicrovmJail: the vCPU thread's CPU time"},
  {SCMP_SYS(clock_nanosleep), "clock_nanosleep", A::any, 0, "", false, "sleep_for (a retry back-off of the monitor's owner)"},
  {SCMP_SYS(nanosleep),       "nanosleep",       A::any, 0, "", false, "the same, through nanosleep"},
  // The budget timer: a thread per run that kicks the vCPU thread out of KVM_RUN.
  {SCMP_SYS(clone),    "clone",    A::thread_clone, 0, "", false, "BudgetTimer's std::thread (pthread_create): a thread, never a process"},
  {SCMP_SYS(clone3),   "clone3",   A::enosys,     0, "", false, "pthread_create tries it first; its flags are in memory seccomp cannot read: -ENOSYS, glibc falls back to clone"},
  {SCMP_SYS(futex),    "futex",    A::any,        0, "", false, "BudgetTimer's mutex, condition variable (its timed wait) and join; malloc's locks"},
  {SCMP_SYS(set_robust_list), "set_robust_list", A::any, 0, "", false, "glibc's start of the budget-timer thread"},
  {SCMP_SYS(rseq),     "rseq",     A::any,        0, "", false, "glibc's start of the budget-timer thread (registers its rseq area)"},
  {SCMP_SYS(rt_sigprocmask), "rt_sigprocmask", A::any, 0, "", false, "pthread_create and pthread_kill block signals around their work"},
  {SCMP_SYS(tgkill),   "tgkill",   A::equals_arg2, kKickSignal, "SIGUSR2", false, "BudgetTimer: pthread_kill kicks the vCPU thread out of KVM_RUN (kKickSignal)"},
  {SCMP_SYS(tgkill),   "tgkill",   A::equals_arg2, SIGABRT, "SIGABRT", false, "std::abort (host_random without randomness): the process ends with SIGABRT"},
  {SCMP_SYS(getpid),   "getpid",   A::any,        0, "", false, "pthread_kill names the process for tgkill"},
  {SCMP_SYS(gettid),   "gettid",   A::any,        0, "", false, "glibc's raise (std::abort)"},
  {SCMP_SYS(rt_sigreturn), "rt_sigreturn", A::any, 0, "", false, "the return from the kick handler that interrupted KVM_RUN"},
  {SCMP_SYS(restart_syscall), "restart_syscall", A::any, 0, "", false, "a futex wait or a sleep the kick signal interrupted, restarted by the kernel"},
  {SCMP_SYS(exit),     "exit",     A::any,        0, "", false, "the budget-timer thread's end"},
  {SCMP_SYS(exit_group), "exit_group", A::any,    0, "", false, "the process's end while a monitor thread runs (the node's shutdown)"},
  {SCMP_SYS(kill),     "kill",     A::kill,       0, "", false, "never allowed: the SIGSYS handler's way to end the process"},
};
// clang-format on

Error filter_error(const std::string& what, int rc) {
  return fail_errno(Cause::filter, what, rc);
}

// The compiler's failures: a step with an errno, or a step alone ("seccomp_init failed").
Error compile_error(const std::string& step, int error) {
  if (error == 0) return fail(Cause::filter, step);
  return filter_error(step, error);
}

// A row as the compiler's rules (a channel row is one rule per allowed descriptor).
void add_rules(const MonitorRow& row, const MonitorFilterOptions& options, std::vector<seccomp::Rule>& rules) {
  using seccomp::Action;
  const std::string name = std::string(row.syscall) + (row.what[0] != '\0' ? std::string(" ") + row.what : "");
  auto allow_if = [&](seccomp::ArgCondition condition) { rules.push_back({row.nr, Action::allow, {condition}, name}); };
  switch (row.rule) {
    case A::any:
      rules.push_back({row.nr, Action::allow, {}, name});
      return;
    case A::equals_arg1:
      allow_if(seccomp::arg_equals(1, row.value));
      return;
    case A::equals_arg2:
      allow_if(seccomp::arg_equals(2, row.value));
      return;
    case A::never_exec:
      allow_if(seccomp::arg_masked(2, PROT_EXEC, 0));
      return;
    case A::thread_clone:
      allow_if(seccomp::arg_masked(0, kThreadFlags | kNamespaceFlags, kThreadFlags));
      return;
    case A::channel:
      if (options.channel_fds.empty()) {
        rules.push_back({row.nr, Action::allow, {}, name});
        return;
      }
      allow_if(seccomp::arg_equals(0, STDERR_FILENO));
      for (const int fd : options.channel_fds) {
        if (fd != STDERR_FILENO) allow_if(seccomp::arg_equals(0, static_cast<std::uint64_t>(fd)));
      }
      return;
    case A::enosys:
      rules.push_back({row.nr, Action::enosys, {}, name});
      return;
    case A::kill:
      rules.push_back({row.nr, Action::kill_process, {}, name});
      return;
  }
}

// Syscall names for the SIGSYS report, resolved before the filter (libseccomp allocates;
// a signal handler may not).
constexpr int kNamedSyscalls = 512;
char g_names[kNamedSyscalls][28];

void resolve_names() {
  for (int nr = 0; nr < kNamedSyscalls; ++nr) {
    char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
    if (name != nullptr) {
      std::strncpy(g_names[nr], name, sizeof g_names[nr] - 1);
      std::free(name);  // NOLINT: libseccomp's strdup
    }
  }
}

// Async-signal-safe: fixed buffers and raw syscalls only.
void report_refused_syscall(int, siginfo_t* info, void*) {
  char line[160];
  std::size_t n = 0;
  auto put = [&](const char* text) {
    while (*text != '\0' && n < sizeof line) line[n++] = *text++;
  };
  const int nr = info->si_syscall;
  put("sojourn microVM monitor: seccomp refused syscall ");
  put(nr >= 0 && nr < kNamedSyscalls && g_names[nr][0] != '\0' ? g_names[nr] : "?");
  put(" (");
  char digits[12];
  int d = 0;
  unsigned value = nr < 0 ? 0U : static_cast<unsigned>(nr);
  do {
    digits[d++] = static_cast<char>('0' + value % 10);
    value /= 10;
  } while (value != 0 && d < 11);
  while (d > 0 && n < sizeof line) line[n++] = digits[--d];
  put("); ending the process\n");
  ::syscall(SYS_write, STDERR_FILENO, line, n);
  ::syscall(SYS_kill, 0, SIGSYS);  // the table's kill row: the process ends with SIGSYS
  ::syscall(SYS_exit_group, 128 + SIGSYS);  // not reached
}

Result<void> install_report_handler() {
  static std::once_flag once;
  static int rc = 0;
  std::call_once(once, [] {
    resolve_names();
    struct sigaction action{};
    action.sa_sigaction = report_refused_syscall;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    rc = ::sigaction(SIGSYS, &action, nullptr) == 0 ? 0 : errno;
  });
  if (rc != 0) return filter_error("sigaction(SIGSYS)", rc);
  return {};
}

// Compiling costs ~100 us (libseccomp); a node installs the filter on a monitor thread per run,
// whose channel descriptor numbers the kernel keeps reusing: programs are kept per options.
Result<std::vector<sock_filter>> cached_program(const MonitorFilterOptions& options) {
  using Key = std::tuple<std::vector<int>, bool, MonitorDefault>;
  static std::mutex mutex;
  static std::map<Key, std::vector<sock_filter>> programs;
  Key key{options.channel_fds, options.allow_boot, options.default_action};
  std::sort(std::get<0>(key).begin(), std::get<0>(key).end());
  {
    std::lock_guard lock(mutex);
    if (auto found = programs.find(key); found != programs.end()) return found->second;
  }
  auto program = compile_monitor_filter(options);
  if (!program) return program.error();
  std::lock_guard lock(mutex);
  if (programs.size() >= 256) programs.clear();  // a bound, never reached by a node's few descriptors
  programs.emplace(std::move(key), *program);
  return program;
}

// Once-per-process work glibc does lazily, in syscalls the table refuses; done now, before
// the filter:
// - its first pthread_create sets up its internal signals (SIGCANCEL, SIGSETXID) with
//   rt_sigaction: a process that never made a thread makes one;
// - malloc, when a thread needs a ninth arena, sizes the arena limit from the number of CPUs,
//   read from /sys with openat (seen in a node: its threads, then a monitor thread's first
//   malloc). Unless the user set a limit, the same default (8 per CPU) is set explicitly.
void finish_glibc_lazy_setup() {
  if (__libc_single_threaded) std::thread([] {}).join();
  static std::once_flag once;
  std::call_once(once, [] {
    const char* tunables = std::getenv("GLIBC_TUNABLES");
    const bool user_limit = std::getenv("MALLOC_ARENA_MAX") != nullptr ||
                            (tunables != nullptr && std::strstr(tunables, "glibc.malloc.arena_max") != nullptr);
    if (!user_limit) ::mallopt(M_ARENA_MAX, 8 * ::get_nprocs());
  });
}

}  // namespace

std::span<const MonitorRow> monitor_syscall_table() noexcept { return kTable; }

Result<std::vector<sock_filter>> compile_monitor_filter(const MonitorFilterOptions& options) {
  std::vector<seccomp::Rule> rules;
  for (const MonitorRow& row : kTable) {
    if (row.boot_only && !options.allow_boot) continue;
    add_rules(row, options, rules);
  }
  const auto fallback = options.default_action == MonitorDefault::trap_and_report ? seccomp::DefaultAction::trap
                                                                                   : seccomp::DefaultAction::kill_process;
  // Through a memfd: memfd_create is in the table (a thread already filtered may compile the
  // program of other options), pipe2 is not.
  return seccomp::compile<Result<std::vector<sock_filter>>>(rules, fallback, seccomp::ExportVia::memfd, compile_error);
}

Result<void> install_monitor_filter() { return install_monitor_filter(MonitorFilterOptions{}); }

Result<void> install_monitor_filter(const MonitorFilterOptions& options) {
  auto program = cached_program(options);
  if (!program) return program.error();
  if (options.default_action == MonitorDefault::trap_and_report) {
    if (auto handler = install_report_handler(); !handler) return handler.error();
  }
  prepare_kick_signal();
  finish_glibc_lazy_setup();
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return filter_error("PR_SET_NO_NEW_PRIVS", errno);
  sock_fprog fprog{};
  fprog.len = static_cast<unsigned short>(program->size());
  fprog.filter = program->data();
  // SAFETY: the kernel copies the program before seccomp returns. No TSYNC flag: this thread only.
  if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0) return filter_error("seccomp", errno);
  return {};
}

}  // namespace sojourn::sandbox::kvm
