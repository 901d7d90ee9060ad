#pragma once
// Sockets a node opens are not inherited by programs its process executes (an application
// that links the library and runs a child, a bench that starts a helper): Asio 1.18 opens and
// accepts without SOCK_CLOEXEC, so each socket is marked right after it exists.
#include <fcntl.h>

namespace sojourn::transports {

inline void set_close_on_exec(int fd) {
  const int flags = ::fcntl(fd, F_GETFD);
  if (flags >= 0) ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

}  // namespace sojourn::transports
