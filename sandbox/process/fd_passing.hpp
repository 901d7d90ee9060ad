// Sending one frame, with or without a descriptor (SCM_RIGHTS), on a Unix socket: how the
// host and the zygote hand each other channels and pidfds. Shared by both sides.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

namespace sojourn::sandbox {

// `fd` < 0 sends the frame alone. Retries EINTR; false on any other failure.
inline bool send_frame(int socket, const std::vector<std::uint8_t>& frame, int fd) {
  iovec iov{const_cast<std::uint8_t*>(frame.data()), frame.size()};  // SAFETY: sendmsg only reads it
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    // SAFETY: the control buffer was sized with CMSG_SPACE for one descriptor.
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  for (;;) {
    if (::sendmsg(socket, &msg, MSG_NOSIGNAL) >= 0) return true;
    if (errno != EINTR) return false;
  }
}

}  // namespace sojourn::sandbox
