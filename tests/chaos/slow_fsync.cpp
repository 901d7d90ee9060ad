// Preloaded into a `sojourn node` by the slow-fsync test (LD_PRELOAD): fsync and fdatasync
// sleep first for the milliseconds written in the file $SOJOURN_SLOW_FSYNC_FILE (read at each
// call, so the test turns the slowness on and off while the node runs; none when it is
// missing), then do their work. SQLite calls them from libsqlite3 through the dynamic linker,
// which finds these first.
#include <dlfcn.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cstdlib>

namespace {

long delay_ms() {
  const char* path = std::getenv("SOJOURN_SLOW_FSYNC_FILE");
  if (path == nullptr) return 0;
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char text[32] = {};
  const ssize_t n = ::read(fd, text, sizeof text - 1);
  ::close(fd);
  return n > 0 ? std::strtol(text, nullptr, 10) : 0;
}

void wait_as_told() {
  const long ms = delay_ms();
  if (ms <= 0) return;
  timespec left{ms / 1000, (ms % 1000) * 1'000'000L};
  while (::nanosleep(&left, &left) != 0) {
  }
}

template <typename F>
F next(const char* name) {
  // SAFETY: dlsym's answer for these names is the libc function of this very signature.
  return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" int fsync(int fd) {
  static auto real = next<int (*)(int)>("fsync");
  wait_as_told();
  return real(fd);
}

extern "C" int fdatasync(int fd) {
  static auto real = next<int (*)(int)>("fdatasync");
  wait_as_told();
  return real(fd);
}
