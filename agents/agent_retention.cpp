// Bounded agent state (docs/migration.md, "What a node remembers"): COMMITs and highest
// epochs past the transfer lifetime, expired nonces and ended agents past their retention are forgotten;
// and waiting for an agent's end, woken by the end itself instead of polling.
#include "agents/agent_runtime.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>

#include "sandbox/image/scratch.hpp"
#include "sojourn/core/log.hpp"

namespace sojourn {

namespace {
// A peer's agent.wait holds a timer at the home: at most this long per request, and at most
// this many at once (past that, a wait answers the status at once and the waiter asks again).
constexpr std::chrono::milliseconds kMaxWaitSlice{20'000};
constexpr std::size_t kMaxWaiters = 1024;

bool ended(const AgentStatus& s) { return s.done() || s.status == AgentState::stranded; }
}  // namespace

std::int64_t AgentRuntime::now_ms() const {
  return options_.expiry_clock ? options_.expiry_clock() : unix_ms_now();
}

// Why the retention is the longest lifetime a TRANSFER may have here (max_message_lifetime):
// the replay guard refuses a TRANSFER whose expiry is further ahead than that, so every copy
// of a committed TRANSFER has expired once its commit is forgotten, and check_expiry refuses
// it before the (forgotten) dedup would be asked. Likewise a TRANSFER of an epoch below the
// highest one was made before that epoch's commit, so it has expired when the highest epoch
// is forgotten. Within the retention, a duplicate is answered with the earlier COMMIT.
void AgentRuntime::remember_commit(const std::string& id, std::uint64_t epoch, const AgentCommit& commit) {
  const std::int64_t now = now_ms();
  const std::int64_t forget = now + static_cast<std::int64_t>(options_.max_message_lifetime.count());
  commits_[{id, epoch}] = Commit{commit, forget};
  HighestEpoch& h = highest_epoch_[id];
  h.epoch = std::max(h.epoch, epoch);
  h.forget_at_ms = forget;
  due_.emplace(forget, Due{id, epoch, false});
  prune_locked(now);
}

std::int64_t AgentRuntime::forget_at(const Tracked& t) const {
  std::int64_t at = t.ended_ms + static_cast<std::int64_t>(options_.ended_agent_retention.count());
  if (t.read_ms != 0) at = std::min(at, t.read_ms + static_cast<std::int64_t>(options_.read_agent_retention.count()));
  return at;
}

// One entry per ended agent: an entry left behind by a read would stay in due_ (about 140
// bytes) until ended_agent_retention, long after the agent was forgotten, so a busy home
// would hold one per agent of the last ten minutes.
void AgentRuntime::schedule_forget(const std::string& id, Tracked& t) {
  if (t.due_ms != 0) {
    auto [first, last] = due_.equal_range(t.due_ms);
    for (auto it = first; it != last; ++it) {
      if (it->second.tracked && it->second.id == id) {
        due_.erase(it);
        break;
      }
    }
  }
  t.due_ms = forget_at(t);
  due_.emplace(t.due_ms, Due{id, 0, true});
}

void AgentRuntime::mark_ended(const std::string& id, Tracked& t) {
  wake_waiters_locked(id);
  if (!t.status.done() || t.ended_ms != 0) return;  // stranded: it may still be moved on
  t.ended_ms = now_ms();
  schedule_forget(id, t);
  prune_locked(t.ended_ms);
}

void AgentRuntime::prune_locked(std::int64_t now) {
  std::vector<NodeStore::Write> gone;  // the store's commit rows, on the same schedule
  while (!due_.empty() && due_.begin()->first <= now) {
    const std::int64_t at = due_.begin()->first;
    Due d = std::move(due_.begin()->second);
    due_.erase(due_.begin());
    if (d.tracked) {
      auto it = tracked_.find(d.id);
      if (it == tracked_.end()) continue;
      Tracked& t = it->second;
      if (t.due_ms == at) t.due_ms = 0;  // its entry is gone
      if (t.ended_ms != 0 && forget_at(t) <= now) {
        tracked_.erase(it);
        forget_tracked(d.id);
      } else if (t.ended_ms != 0 && t.due_ms == 0) {
        schedule_forget(d.id, t);  // not due yet (impossible today): looked at again then
      }
      continue;
    }
    auto c = commits_.find({d.id, d.epoch});
    if (c != commits_.end() && c->second.forget_at_ms <= now) {
      commits_.erase(c);
      if (store_) gone.push_back(commit_gone(d.id, d.epoch));
    }
    auto h = highest_epoch_.find(d.id);
    if (h != highest_epoch_.end() && h->second.forget_at_ms <= now) highest_epoch_.erase(h);
  }
  // A row left behind is dropped at the next start (it has expired then): logged only.
  if (!gone.empty()) {
    if (auto r = store_->write(gone); !r) log_warn("agents", r.error().message);
  }
}

void AgentRuntime::prune() {
  const std::int64_t now = now_ms();
  {
    std::lock_guard lock(mutex_);
    prune_locked(now);
  }
  // The replay guard's nonces expire on the same sweep (it prunes itself on admit too, but an
  // idle node admits nothing), and the stored ones with them.
  trust_.replay().prune();
  // A large image buffer kept for the next image staged is freed once it has waited too long,
  // here too: on a node no further image reaches, no take or give would ever free it.
  sandbox::image::drop_idle_image_buffer();
  if (store_) {
    if (auto r = store_->prune_nonces(now); !r) log_warn("agents", r.error().message);
  }
}

void AgentRuntime::start_sweeps() {
  auto timer = std::make_shared<asio::steady_timer>(runtime_.io());
  {
    std::lock_guard lock(mutex_);
    sweep_timer_ = timer;
  }
  // The coroutine takes its own copies (a lambda coroutine must not capture).
  spawn([](std::weak_ptr<AgentRuntime> self, std::shared_ptr<asio::steady_timer> sweep,
           std::chrono::milliseconds every) -> asio::awaitable<void> {
    while (true) {
      sweep->expires_after(every);
      boost::system::error_code ec;
      co_await sweep->async_wait(asio::redirect_error(asio::use_awaitable, ec));
      auto rt = self.lock();
      if (ec || !rt || rt->runtime_.shutting_down()) co_return;  // cancelled by stop()
      rt->prune();
    }
  }(weak_from_this(), timer, options_.prune_interval), "agent state sweep");
}

void AgentRuntime::wake_waiters_locked(const std::string& id) {
  auto [first, last] = waiters_.equal_range(id);
  if (first == last) return;
  std::vector<std::shared_ptr<asio::steady_timer>> timers;
  for (auto it = first; it != last; ++it) timers.push_back(it->second);
  // Timers belong to the network thread; a waiter registered before its wait started is
  // cancelled after it (the waiter does not yield between the two).
  asio::post(runtime_.io(), [timers = std::move(timers)] {
    for (const auto& t : timers) t->cancel();
  });
}

void AgentRuntime::stop() {
  std::lock_guard lock(mutex_);
  if (sweep_timer_) sweep_timer_->cancel();
  for (auto& [id, timer] : waiters_) timer->cancel();
  for (auto& [id, res] : residents_) {
    if (res.trail_wait) res.trail_wait->cancel();  // a hand-over waiting for an arrival answer
  }
}

asio::awaitable<Result<AgentStatus>> AgentRuntime::wait_here(std::string id, std::chrono::milliseconds wait, PeerIdentity caller) {
  auto keep = shared_from_this();
  auto timer = std::make_shared<asio::steady_timer>(runtime_.io(), std::min(wait, kMaxWaitSlice));
  {
    // Registered under the lock that on_finished/on_arrived take to end it: no end is missed.
    std::lock_guard lock(mutex_);
    auto it = tracked_.find(id);
    if (it == tracked_.end() || ended(it->second.status) || wait.count() <= 0 || waiters_.size() >= kMaxWaiters ||
        runtime_.shutting_down()) {
      timer.reset();
    } else {
      waiters_.emplace(id, timer);
    }
  }
  if (timer) {
    boost::system::error_code ec;
    co_await timer->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    std::lock_guard lock(mutex_);
    auto [first, last] = waiters_.equal_range(id);
    for (auto it = first; it != last; ++it) {
      if (it->second == timer) {
        waiters_.erase(it);
        break;
      }
    }
  }
  co_return status_of(id, caller);
}

asio::awaitable<Result<AgentStatus>> AgentRuntime::wait_agent(std::string home, std::string id,
                                                              std::chrono::milliseconds timeout) {
  auto keep = shared_from_this();
  const auto until = std::chrono::steady_clock::now() + timeout;
  const bool here = home.empty() || home == self();
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    const auto slice = std::clamp(left, std::chrono::milliseconds(0), kMaxWaitSlice);
    Result<AgentStatus> answer = AgentStatus{};
    if (here) {
      static const PeerIdentity local{"local", {}, {}};
      answer = co_await wait_here(id, slice, local);
    } else {
      CallRequest call;
      call.service = "agent.wait";
      call.args = message_args(encode(WaitQuery{id, static_cast<std::uint64_t>(slice.count())}));
      std::vector<std::uint8_t> payload = encode(call);
      // The home answers within `slice`; the request timeout is the network's share.
      Result<Reply> reply =
          co_await links_.request_peer(home, FrameKind::call, std::move(payload), slice + options_.request_timeout);
      if (!reply) {
        answer = reply.error();
      } else if (reply->code != Errc::ok) {
        answer = Error{reply->code, std::move(reply->message)};
      } else {
        answer = decode_message<AgentStatus, decode_status>(reply->result, "agent.wait's answer");
      }
    }
    if (!answer) co_return answer.error();
    AgentStatus status = std::move(*answer);
    if (ended(status)) co_return status;
    if (std::chrono::steady_clock::now() >= until) {
      co_return make_error(Errc::timeout, "agent " + id + " did not finish within " + std::to_string(timeout.count()) +
                                              " ms (status: " + std::string(agent_state_name(status.status)) + ")");
    }
  }
}

std::uint64_t AgentRuntime::tracked_count() {
  std::lock_guard lock(mutex_);
  return tracked_.size();
}

std::uint64_t AgentRuntime::commits_count() {
  std::lock_guard lock(mutex_);
  return commits_.size();
}

std::uint64_t AgentRuntime::epochs_count() {
  std::lock_guard lock(mutex_);
  return highest_epoch_.size();
}

}  // namespace sojourn
