// Test support: run a program with its stdout and stderr captured, or start one in
// the background and read its output line by line.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

extern char** environ;

namespace sojourn::test {

class Process {
 public:
  explicit Process(const std::vector<std::string>& argv) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_adddup2(&actions, err[1], 2);
    std::vector<char*> args;
    // SAFETY: posix_spawn does not modify argv strings; the vector outlives the call.
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    if (posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    ::close(err[1]);
    out_ = out[0];
    err_ = err[0];
  }
  ~Process() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      wait();
    }
    if (out_ >= 0) ::close(out_);
    if (err_ >= 0) ::close(err_);
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  bool started() const { return pid_ > 0; }
  void signal(int sig) { ::kill(pid_, sig); }

  // The next line of stdout (without the newline), or "" after `timeout_ms`.
  std::string read_line(int timeout_ms) {
    auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      auto nl = out_buf_.find('\n');
      if (nl != std::string::npos) {
        std::string line = out_buf_.substr(0, nl);
        out_buf_.erase(0, nl + 1);
        return line;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now()).count();
      if (left <= 0 || !read_some(out_, out_buf_, static_cast<int>(left))) return "";
    }
  }

  // Waits for exit; returns the exit code (128+signal when killed).
  int wait() {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  // Reads both streams to their end, together so a child blocked on a full stderr pipe cannot
  // stall us on stdout. A slow child (a sanitizer build on a loaded machine) keeps its output: we
  // stop at the streams' end, after `limit`, or once the child has exited and 10 s pass with no
  // byte (a grandchild that inherited the pipes may hold them open).
  void drain(std::chrono::milliseconds limit = std::chrono::minutes(5)) {
    const auto until = std::chrono::steady_clock::now() + limit;
    auto last_byte = std::chrono::steady_clock::now();
    bool out_open = true, err_open = true;
    while (out_open || err_open) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= until) return;
      if (now - last_byte >= std::chrono::seconds(10) && exited()) return;
      pollfd p[2] = {{out_open ? out_ : -1, POLLIN, 0}, {err_open ? err_ : -1, POLLIN, 0}};
      int ready = ::poll(p, 2, 1000);
      if (ready < 0 && errno != EINTR) return;
      if (ready <= 0) continue;
      if (p[0].revents != 0) out_open = read_once(out_, out_buf_);
      if (p[1].revents != 0) err_open = read_once(err_, err_buf_);
      last_byte = std::chrono::steady_clock::now();
    }
  }
  const std::string& out() const { return out_buf_; }
  const std::string& err() const { return err_buf_; }

 private:
  static bool read_some(int fd, std::string& buf, int timeout_ms) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return false;
    char chunk[4096];
    ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n <= 0) return false;
    buf.append(chunk, static_cast<std::size_t>(n));
    return true;
  }

  // Whether the child has exited, without reaping it (wait() still gets its status).
  bool exited() {
    if (reaped_) return true;
    siginfo_t info{};
    if (::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) != 0) return true;
    return info.si_pid != 0;
  }

  // One read of a ready descriptor; false at its end or on an error.
  static bool read_once(int fd, std::string& buf) {
    char chunk[4096];
    ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) return true;
    if (n <= 0) return false;
    buf.append(chunk, static_cast<std::size_t>(n));
    return true;
  }

  pid_t pid_ = -1;
  int out_ = -1, err_ = -1;
  bool reaped_ = false;
  std::string out_buf_, err_buf_;
};

struct RunResult {
  int exit_code;
  std::string out, err;
};

inline RunResult run(const std::vector<std::string>& argv) {
  Process p(argv);
  p.drain();
  int code = p.wait();
  return {code, p.out(), p.err()};
}

}  // namespace sojourn::test
