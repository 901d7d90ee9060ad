// Starting a zygote and talking to it over a SOCK_SEQPACKET control socket: one datagram
// per message, the run's channel (host -> zygote) or the guest's pidfd (zygote -> host)
// attached as SCM_RIGHTS.
#include "sandbox/process/zygote_link.hpp"

#include "sandbox/process/fd_passing.hpp"

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "sojourn/core/log.hpp"


namespace sojourn::sandbox {

namespace {

constexpr std::size_t kMaxReport = 4096;
constexpr int kHelloTimeoutMs = 10'000;
// A zygote that does not answer a spawn request within this is stuck: it is killed, and
// the next run starts a new one.
constexpr auto kSpawnTimeout = std::chrono::seconds(10);

Error unavailable(const std::string& why) { return make_error(Errc::jail_unavailable, "process jail unavailable: " + why); }


// One datagram and the descriptor attached to it, if any. 0 bytes: the zygote is gone.
// `fd_lost`: one was attached but the kernel dropped it (MSG_CTRUNC), because this process
// had no descriptor free for it (RLIMIT_NOFILE).
ssize_t receive(int socket, std::vector<std::uint8_t>& buffer, UniqueFd& fd, bool& fd_lost) {
  buffer.resize(kMaxReport);
  iovec iov{buffer.data(), buffer.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  // SAFETY: CMSG_FIRSTHDR/CMSG_DATA walk the control buffer the kernel filled in.
  if (cmsghdr* c = CMSG_FIRSTHDR(&msg); n > 0 && c != nullptr && c->cmsg_type == SCM_RIGHTS) {
    int received = -1;
    std::memcpy(&received, CMSG_DATA(c), sizeof received);
    fd.reset(received);
  }
  fd_lost = n > 0 && (msg.msg_flags & MSG_CTRUNC) != 0;
  buffer.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return n;
}

template <class M>
Result<M> decode_datagram(const std::vector<std::uint8_t>& datagram) {
  if (datagram.size() < channel::kHeaderBytes || datagram[4] != static_cast<std::uint8_t>(M::kKind)) {
    return channel::bad_message(M::kKind, "unexpected datagram");
  }
  return channel::decode_payload<M>(std::span(datagram).subspan(channel::kHeaderBytes));
}

}  // namespace

Result<std::shared_ptr<ZygoteLink>> ZygoteLink::start(const std::string& guest_path, bool namespaces) {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
    return unavailable(std::string("socketpair: ") + std::strerror(errno));
  }
  UniqueFd ours(pair[0]);
  UniqueFd theirs(pair[1]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  // dup2 clears close-on-exec on descriptor 3: the only one the zygote inherits besides stdio.
  posix_spawn_file_actions_adddup2(&actions, theirs.get(), 3);
  // Everything else the node has open (listening sockets, connections, files: Asio does not
  // mark its sockets close-on-exec) must not reach the zygote: a listening socket kept open
  // there would go on accepting connections that nobody serves after the node closes it.
  posix_spawn_file_actions_addclosefrom_np(&actions, 4);
  std::vector<std::string> args{guest_path, "--zygote"};
  if (!namespaces) args.emplace_back("--no-namespaces");
  std::vector<char*> argv;
  // SAFETY: posix_spawn does not modify the argument strings; `args` outlives the call.
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  // An empty environment: the node's (paths, tokens, settings) is none of a guest's business,
  // and every guest is a fork of the zygote.
  char* empty_environment[] = {nullptr};
  // Scheduled as the node's main thread is, whichever thread starts it (the warm pool's refill
  // thread, a batch thread, restarts a dead zygote: its policy would pass to every guest).
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  sched_param main_param{};
  const int main_policy = ::sched_getscheduler(::getpid());
  if (main_policy >= 0 && ::sched_getparam(::getpid(), &main_param) == 0) {
    posix_spawnattr_setschedpolicy(&attributes, main_policy & ~SCHED_RESET_ON_FORK);
    posix_spawnattr_setschedparam(&attributes, &main_param);
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSCHEDULER);
  }
  const int rc = ::posix_spawn(&pid, guest_path.c_str(), &actions, &attributes, argv.data(), empty_environment);
  posix_spawnattr_destroy(&attributes);
  posix_spawn_file_actions_destroy(&actions);
  theirs.reset();
  if (rc != 0) return unavailable("cannot start " + guest_path + ": " + std::strerror(rc));

  pollfd ready{ours.get(), POLLIN, 0};
  int polled;
  do {
    polled = ::poll(&ready, 1, kHelloTimeoutMs);
  } while (polled < 0 && errno == EINTR);
  std::vector<std::uint8_t> datagram;
  UniqueFd unused;
  bool unused_lost = false;
  Result<channel::Hello> hello = polled > 0 && receive(ours.get(), datagram, unused, unused_lost) > 0
                                     ? decode_datagram<channel::Hello>(datagram)
                                     : Result<channel::Hello>(unavailable("the zygote did not start"));
  if (hello && hello->protocol != channel::kProtocolVersion) {
    hello = unavailable("the guest speaks channel protocol " + std::to_string(hello->protocol) + ", this node " +
                        std::to_string(channel::kProtocolVersion));
  }
  if (!hello) {
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    return unavailable(guest_path + " --zygote: " + hello.error().message);
  }
  return std::shared_ptr<ZygoteLink>(new ZygoteLink(std::move(ours), pid, std::move(*hello)));
}

ZygoteLink::ZygoteLink(UniqueFd control, int pid, channel::Hello hello)
    : control_(std::move(control)), pid_(pid), hello_(std::move(hello)) {
  reader_ = std::thread([this] { read_reports(); });
}

ZygoteLink::~ZygoteLink() {
  // The zygote sees end-of-file, kills its guests and exits; the reader sees it go.
  ::shutdown(control_.get(), SHUT_RDWR);
  reader_.join();
  while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
}

void ZygoteLink::read_reports() {
  std::vector<std::uint8_t> datagram;
  for (;;) {
    UniqueFd fd;
    bool fd_lost = false;
    if (receive(control_.get(), datagram, fd, fd_lost) <= 0) break;
    std::lock_guard lock(mutex_);
    if (auto spawned = decode_datagram<channel::Spawned>(datagram)) {
      if (auto it = pending_.find(spawned->id); it != pending_.end()) {
        it->second.spawned = std::move(*spawned);
        it->second.pidfd = std::move(fd);
        it->second.pidfd_lost = fd_lost;
      }
    } else if (auto exited = decode_datagram<channel::Exited>(datagram)) {
      if (auto it = pending_.find(exited->id); it != pending_.end()) it->second.exited = *exited;
    } else {
      log_error("process jail", "the zygote sent a bad report; restarting it");
      break;
    }
    changed_.notify_all();
  }
  std::lock_guard lock(mutex_);
  dead_ = true;
  changed_.notify_all();
}

Result<SpawnedGuest> ZygoteLink::spawn(const Limits& limits, bool allow_jit, UniqueFd guest_end) {
  std::unique_lock lock(mutex_);
  if (dead_) return make_error(Errc::guest_crashed, "guest crashed: the zygote died");
  const std::uint64_t id = next_id_++;
  pending_[id];
  lock.unlock();
  channel::SpawnRequest request{id, limits, allow_jit};
  bool sent;
  {
    std::lock_guard send_lock(send_mutex_);
    sent = send_frame(control_.get(), channel::encode_frame(request), guest_end.get());
  }
  guest_end.reset();
  lock.lock();
  if (!sent) dead_ = true;  // the zygote is gone; the reader will see it too
  bool answered = true;
  if (sent) {
    answered = changed_.wait_for(lock, kSpawnTimeout, [&] { return dead_ || pending_[id].spawned.has_value(); });
  }
  if (!answered) {
    pending_.erase(id);
    ::kill(pid_, SIGKILL);  // the reader sees it go and marks the link dead
    return unavailable("the zygote did not answer a spawn request within 10 s");
  }
  Pending& entry = pending_[id];
  if (entry.pidfd_lost) {
    // The guest runs, but cannot be killed race-free without its pidfd: it ends when the
    // caller closes its channel (end-of-file), and the zygote reaps it.
    pending_.erase(id);
    return errors::internal("a guest's pidfd could not be received: Too many open files (the node is at its RLIMIT_NOFILE)");
  }
  if (!entry.spawned || entry.spawned->pid == 0 || !entry.pidfd.valid()) {
    std::string why = entry.spawned ? entry.spawned->error : std::string("the zygote died");
    pending_.erase(id);
    return make_error(Errc::guest_crashed, "guest crashed: " + why);
  }
  return SpawnedGuest{id, static_cast<int>(entry.spawned->pid), std::move(entry.pidfd)};
}

std::optional<channel::Exited> ZygoteLink::wait_exit(std::uint64_t id, std::chrono::steady_clock::time_point until) {
  std::unique_lock lock(mutex_);
  changed_.wait_until(lock, until, [&] { return dead_ || pending_[id].exited.has_value(); });
  std::optional<channel::Exited> exited = pending_[id].exited;
  pending_.erase(id);
  return exited;
}

void ZygoteLink::forget(std::uint64_t id) {
  std::lock_guard lock(mutex_);
  pending_.erase(id);
}

bool ZygoteLink::alive() const {
  std::lock_guard lock(mutex_);
  return !dead_;
}

}  // namespace sojourn::sandbox
