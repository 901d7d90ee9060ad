// The chaos tests' `sojourn node` process: started on its own data dir at a port it keeps
// across restarts, killed with SIGKILL, started again. Its stdout and stderr go to a log file
// (a pipe nobody reads would fill and stall the node), which the test reads for its start-up
// lines and prints the end of when something goes wrong.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace sojourn::test {

class ChaosNode {
 public:
  // `extra_args` go after the node's own flags. set_env's "NAME=VALUE" entries replace or add
  // to the test's environment (the slow-fsync test's LD_PRELOAD).
  ChaosNode(std::string cli, std::string name, std::string dir, std::vector<std::string> extra_args = {})
      : cli_(std::move(cli)), name_(std::move(name)), dir_(std::move(dir)), extra_args_(std::move(extra_args)) {
    std::filesystem::create_directories(dir_);
  }
  ~ChaosNode() { kill(); }
  ChaosNode(const ChaosNode&) = delete;
  ChaosNode& operator=(const ChaosNode&) = delete;

  const std::string& name() const { return name_; }
  std::string data_dir() const { return dir_ + "/data"; }
  std::string log_path() const { return dir_ + "/node.log"; }
  // "127.0.0.1:PORT", known after the first start.
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  bool up() const { return pid_ > 0; }
  int starts() const { return starts_; }
  void set_data_dir(std::string dir) { data_dir_override_ = std::move(dir); }
  void set_env(std::vector<std::string> env) { extra_env_ = std::move(env); }

  // Starts the node (port 0 the first time, the same port after) and waits until it listens.
  // Returns "" once it listens, else what went wrong with the end of its log.
  std::string start(std::chrono::milliseconds timeout = std::chrono::seconds(90)) {
    const std::string log = log_path();
    const auto from = file_size(log);
    // info: the hand-overs and arrivals, which the chaos test quotes for an agent that went wrong.
    std::vector<std::string> argv{cli_, "--log-level", "info", "node", "--listen", "127.0.0.1:" + std::to_string(port_), "--name", name_,
                                  "--data-dir", data_dir_override_.empty() ? data_dir() : data_dir_override_,
                                  "--peer-isolation", "trusted"};
    argv.insert(argv.end(), extra_args_.begin(), extra_args_.end());
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    std::vector<char*> args;
    // SAFETY: posix_spawn does not modify argv or envp strings; the vectors outlive the call.
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    std::vector<std::string> env_text;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string entry(*e);
      const std::string name = entry.substr(0, entry.find('=') + 1);
      bool replaced = false;
      for (const auto& x : extra_env_) replaced = replaced || x.rfind(name, 0) == 0;
      if (!replaced) env_text.push_back(entry);
    }
    env_text.insert(env_text.end(), extra_env_.begin(), extra_env_.end());
    std::vector<char*> env;
    for (auto& e : env_text) env.push_back(e.data());
    env.push_back(nullptr);
    pid_t pid = -1;
    const int spawned = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), env.data());
    posix_spawn_file_actions_destroy(&actions);
    if (spawned != 0) return "cannot start " + cli_ + ": " + std::strerror(spawned);
    pid_ = pid;
    ++starts_;
    const std::string prefix = "node " + name_ + " listening on 127.0.0.1:";
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      const std::string text = read_from(log, from);
      const auto at = text.find(prefix);
      if (at != std::string::npos && text.find('\n', at) != std::string::npos) {
        port_ = std::stoi(text.substr(at + prefix.size()));
        return "";
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return "node " + name_ + " exited at start (status " + std::to_string(status) + "):\n" + tail(text);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    kill();
    return "node " + name_ + " did not listen within " + std::to_string(timeout.count()) + " ms:\n" + tail(read_from(log, from));
  }

  // SIGKILL: no shutdown, no close; reaped before it returns.
  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }

  // Exit status if the node has exited by itself (a crash), -1 while it runs or is down.
  int exited() {
    if (pid_ <= 0) return -1;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) != pid_) return -1;
    pid_ = -1;
    return status;
  }

  std::string log_tail(std::size_t bytes = 3000) const { return tail(read_from(log_path(), 0), bytes); }
  std::string log_text() const { return read_from(log_path(), 0); }

 private:
  static std::uintmax_t file_size(const std::string& path) {
    std::error_code ec;
    auto n = std::filesystem::file_size(path, ec);
    return ec ? 0 : n;
  }
  static std::string read_from(const std::string& path, std::uintmax_t from) {
    std::ifstream in(path, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(from));
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
  }
  static std::string tail(const std::string& text, std::size_t bytes = 3000) {
    return text.size() <= bytes ? text : "..." + text.substr(text.size() - bytes);
  }

  std::string cli_, name_, dir_;
  std::vector<std::string> extra_args_, extra_env_;
  std::string data_dir_override_;
  int port_ = 0;
  pid_t pid_ = -1;
  int starts_ = 0;
};

}  // namespace sojourn::test
