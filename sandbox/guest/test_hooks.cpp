// Test hooks of the guest: misbehaviours a real guest could only show after a bug, so
// that the host's handling of each is tested end to end. Compiled with SOJOURN_GUEST_TEST_HOOKS only into the test guest
// (sojourn-guest-test); the real guest gets the empty version, so no chunk can reach them.
#include "sandbox/guest/guest_serve.hpp"
#include "sandbox/guest/zygote.hpp"

#ifdef SOJOURN_GUEST_TEST_HOOKS
#include <errno.h>  // program_invocation_name
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <lua.hpp>

#include "sandbox/guest/syscall_filter.hpp"
#include "sandbox/lua/lua_env.hpp"
#endif

namespace sojourn::sandbox::guest {

#ifdef SOJOURN_GUEST_TEST_HOOKS
namespace {
long syscall_number(std::string_view name) {
  if (name == "open") return SYS_open;
  if (name == "openat") return SYS_openat;
  if (name == "socket") return SYS_socket;
  if (name == "execve") return SYS_execve;
  if (name == "ptrace") return SYS_ptrace;
  if (name == "getpid") return SYS_getpid;
  return -1;
}

// Values a strong agent cannot take along, which no real environment hands out: a full
// userdata (a host handle), a light userdata (a host pointer) and an FFI cdata.
int test_handle(lua_State* L) {
  lua_newuserdata(L, 16);
  return 1;
}
int test_pointer(lua_State* L) {
  static int anchor = 0;
  lua_pushlightuserdata(L, &anchor);
  return 1;
}
int test_cdata(lua_State* L) {
  lua_pushcfunction(L, luaopen_ffi);
  lua_call(L, 0, 1);
  lua_getfield(L, -1, "new");
  lua_pushliteral(L, "int[2]");
  lua_call(L, 1, 1);
  return 1;
}
void open_test_handles(lua_State* L) {
  lua_register(L, "test_handle", test_handle);
  lua_register(L, "test_pointer", test_pointer);
  lua_register(L, "test_cdata", test_cdata);
}

// The stack-protector canary of this guest (the TCB's stack_guard, fs:0x28), as hex: the
// zygote gives each guest it forks its own (zygote.cpp, reseed_stack_guard).
int test_canary(lua_State* L) {
  std::uint64_t canary = 0;
  // SAFETY: fs points to this thread's TCB (static glibc, x86-64); 0x28 is its stack_guard.
  asm volatile("movq %%fs:0x28, %0" : "=r"(canary));
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(canary));
  lua_pushstring(L, text);
  return 1;
}

// Writes `bytes` bytes into a 16-byte local buffer: past 16 it overwrites the frame's canary
// copy, and the check on return ends the guest (__stack_chk_fail). Shows that the guest's own
// functions are instrumented (-fstack-protector-strong).
[[gnu::noinline]] void overflow_local_buffer(std::size_t bytes) {
  char buffer[16];
  // volatile: the compiler can neither see the overflow nor drop the stores.
  volatile char* out = buffer;
  for (std::size_t i = 0; i < bytes; ++i) out[i] = 'A';
  asm volatile("" : : "r"(buffer) : "memory");
}
int test_smash(lua_State* L) {
  overflow_local_buffer(static_cast<std::size_t>(luaL_checkinteger(L, 1)));
  return 0;
}
void open_test_canary(lua_State* L) {
  lua_register(L, "test_canary", test_canary);
  lua_register(L, "test_smash", test_smash);
}
}  // namespace

void run_test_hook(std::string_view source) {
  // For this run only: a chunk starting "--@handles" gets test_handle, test_pointer, test_cdata;
  // one starting "--@canary" gets test_canary and test_smash.
  sandbox::detail::TestGlobals globals = nullptr;
  if (source.starts_with("--@handles")) globals = open_test_handles;
  if (source.starts_with("--@canary")) globals = open_test_canary;
  sandbox::detail::set_test_globals(globals);
  constexpr std::string_view kSyscall = "--@syscall ";
  if (source.substr(0, kSyscall.size()) == kSyscall) {
    std::string_view name = source.substr(kSyscall.size());
    name = name.substr(0, name.find('\n'));
    const long nr = syscall_number(name);
    // Harmless arguments: the filter decides on the number alone.
    if (nr >= 0) ::syscall(nr, 0, 0, 0, 0, 0, 0);
  } else if (source.starts_with("--@spin-after-answer")) {
    // A right answer, then a spin: the host has its result and must not wait for the budget.
    channel::RunDone done;
    Value results = Value::table();
    results.push(Value(std::int64_t{1}));
    done.value = results;
    const std::vector<std::uint8_t> frame = channel::encode_frame(done);
    ::syscall(SYS_write, kChannelFd, frame.data(), frame.size());
    for (;;) asm volatile("" ::: "memory");
  } else if (source.starts_with("--@lie-used") && carried_read_count() > 0) {
    // A run that carries reads claims more of them than it was given.
    channel::ReadsUsed lie;
    lie.used.assign(carried_read_count() + 100, '\1');
    const std::vector<std::uint8_t> frame = channel::encode_frame(lie);
    ::syscall(SYS_write, kChannelFd, frame.data(), frame.size());
  } else if (source.substr(0, 7) == "--@spin") {
    // A C loop no Lua hook sees: only the host's kill ends it.
    for (;;) asm volatile("" ::: "memory");
  } else if (source.substr(0, 10) == "--@garbage") {
    // A frame of a kind the host never expects from a guest.
    const unsigned char frame[] = {1, 0, 0, 0, 99, 0};
    ::syscall(SYS_write, kChannelFd, frame, sizeof frame);
  } else if (source.substr(0, 7) == "--@huge") {
    // A header announcing a 2 GiB answer.
    const unsigned char frame[] = {0, 0, 0, 0x80, 11};
    ::syscall(SYS_write, kChannelFd, frame, sizeof frame);
  } else if (source.substr(0, 8) == "--@exit3") {
    ::syscall(SYS_exit_group, 3);
  } else if (source.substr(0, 7) == "--@segv") {
    // SAFETY: deliberately not: page 0 is never mapped, so this store faults (SIGSEGV).
    volatile std::uintptr_t address = 16;  // volatile: the compiler cannot see it is bogus
    *reinterpret_cast<volatile int*>(address) = 1;
  }
}

bool test_refuses_shared_net() {
  // Chosen by the name the test guest was started under (a link a test makes): the zygote
  // gets an empty environment and fixed arguments, and chooses its namespaces before any run.
  constexpr std::string_view kSuffix = "-no-shared-net";
  return std::string_view(program_invocation_name).ends_with(kSuffix);
}
#else
void run_test_hook(std::string_view /*source*/) {}
bool test_refuses_shared_net() { return false; }
#endif

}  // namespace sojourn::sandbox::guest
