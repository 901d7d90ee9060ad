// bench_criu_holder: a process holding the same LuaJIT heap as a strong agent of
// bench_migration_cost (heap_fill.hpp), for bench/run_criu.sh to dump and restore with CRIU.
//
//   bench_criu_holder KB READY_FILE CHECK_FILE
//
// It builds the data in a LuaJIT state, writes "ready PID" to READY_FILE and waits for SIGUSR1.
// On each SIGUSR1 it walks the heap (the strings' count and total length) and writes
// "KB BYTES" to CHECK_FILE: after a restore that line is the process running again, its heap
// intact. SIGTERM ends it. It keeps no descriptor open while it waits (CRIU restores open
// files by path, and the caller's would not be there).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include <lua.hpp>

#include "bench/heap_fill.hpp"

namespace {

// Written whole to a temporary name, then renamed: a reader never sees half a line.
bool write_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  return ok && ::rename(tmp.c_str(), path.c_str()) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: bench_criu_holder KB READY_FILE CHECK_FILE\n");
    return 2;
  }
  // Whatever the caller left open (bench_migration_cost's node sockets reach here through
  // popen and the script: Asio does not open them close-on-exec) would be dumped too, and CRIU
  // refuses a connected TCP socket without --tcp-established.
  ::close_range(3, ~0U, 0);
  const long kb = std::strtol(argv[1], nullptr, 10);
  const std::string ready = argv[2], check = argv[3];
  lua_State* L = luaL_newstate();
  if (L == nullptr) return 1;
  luaL_openlibs(L);
  const std::string code = std::string(sojourn::bench::kFillLua) + "blob = fill(" + std::to_string(kb) +
                           ")\n"
                           "function check() local n = 0 for _, s in ipairs(blob) do n = n + #s end return #blob, n end\n";
  if (luaL_dostring(L, code.c_str()) != 0) {
    std::fprintf(stderr, "bench_criu_holder: %s\n", lua_tostring(L, -1));
    return 1;
  }
  sigset_t wanted;
  sigemptyset(&wanted);
  sigaddset(&wanted, SIGUSR1);
  sigaddset(&wanted, SIGTERM);
  sigprocmask(SIG_BLOCK, &wanted, nullptr);
  if (!write_file(ready, "ready " + std::to_string(::getpid()) + "\n")) return 1;
  for (;;) {
    int sig = 0;
    if (sigwait(&wanted, &sig) != 0 || sig == SIGTERM) break;
    lua_getglobal(L, "check");
    if (lua_pcall(L, 0, 2, 0) != 0) return 1;
    const std::string line = std::to_string(lua_tointeger(L, -2)) + " " + std::to_string(lua_tointeger(L, -1)) + "\n";
    lua_pop(L, 2);
    if (!write_file(check, line)) return 1;
  }
  lua_close(L);
  return 0;
}
