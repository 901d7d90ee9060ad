// The zygote is started from the node's process: none of the node's descriptors (here a
// listening socket opened without close-on-exec, as Asio opens them) may reach it.
#include <doctest/doctest.h>

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <set>
#include <string>

#include "sojourn/sandbox/process_jail.hpp"

TEST_CASE("the zygote inherits only the standard streams and its channel, not the node's sockets") {
  const int low = ::socket(AF_INET, SOCK_STREAM, 0);  // no SOCK_CLOEXEC, on purpose
  REQUIRE(low >= 0);
  const int listener = ::fcntl(low, F_DUPFD, 40);   // above the zygote's own descriptors
  ::close(low);
  REQUIRE(listener >= 40);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  // SAFETY: sockaddr_in is a sockaddr of the size given.
  REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(listener, 4) == 0);

  auto jail = sojourn::sandbox::ProcessJail::start({});
  REQUIRE(jail.ok());
  const int zygote = (*jail)->status().zygote_pid;
  REQUIRE(zygote > 0);
  std::set<int> fds;
  const std::string dir = "/proc/" + std::to_string(zygote) + "/fd";
  DIR* d = ::opendir(dir.c_str());
  REQUIRE(d != nullptr);
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') fds.insert(std::stoi(e->d_name));
  }
  ::closedir(d);
  CHECK(fds.count(listener) == 0);
  CHECK(fds.count(3) == 1);  // its channel to the host
  for (int fd : fds) CHECK_MESSAGE(fd <= 3, "the zygote holds descriptor " << fd);
  ::close(listener);
}
