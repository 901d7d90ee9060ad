// The home node's side of an agent: where it is (arrival reports), how it ended, and the
// messages sent to it, forwarded in order to wherever it is and delivered exactly once.
#include "agents/agent_runtime.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "sojourn/core/log.hpp"

namespace sojourn {

namespace {
constexpr int kForwardAttempts = 100;
// A report whose outcome is unknown (it may not have reached the home) is tried again.
bool outcome_unknown(Errc code) {
  return code == Errc::connect_failed || code == Errc::connection_closed || code == Errc::timeout ||
         code == Errc::remote_protocol_error || code == Errc::shutting_down;
}
constexpr std::chrono::milliseconds kForwardPause{100};
// Forwarded message ids an agent remembers beyond those its home may resend: a delivery
// is sent again only while it is the home's pending front, so only a copy delayed behind
// this many later deliveries could come back.
constexpr std::size_t kDeliveredWindow = 256;
// A hand-over waits for its visit's arrival answer once the record carries this many finished
// hops the home has not acknowledged (and again at each multiple, when the home is slow or
// away): the trail, about 100 bytes a hop, stays near this length on any tour.
constexpr std::size_t kTrailWaitHops = 8;
// The longest such wait: the answer usually comes within a round trip to the home. A home
// that does not answer in time leaves the hops on the record (they are not acknowledged).
constexpr std::chrono::milliseconds kTrailWaitLimit{250};
// How long a weak agent's arrival report is held (hold_arrival_report): a visit that ends by
// moving on within it costs its home no report of its own, and a longer one is reported this
// late at most.
constexpr std::chrono::milliseconds kArrivalHold{10};

// The hops of the record that an answer to `report` acknowledges: those it carried.
void shed_reported_hops(AgentRecord& r, const ArrivalReport& report) {
  if (report.finished_hops.empty()) return;
  const std::uint64_t through = report.finished_hops.back().epoch;
  std::size_t n = 0;
  while (n < r.hops.size() && r.hops[n].epoch <= through) ++n;
  drop_reported_hops(r, n);
}
}  // namespace

Result<void> AgentRuntime::track_launch(AgentRecord& record) {
  std::lock_guard lock(mutex_);
  Tracked& t = tracked_[record.id];
  t.token = random_nonce();
  record.report_token = t.token;
  t.launcher = record.launcher;
  t.status.id = record.id;
  t.status.home = record.home;
  t.status.owner = record.owner;
  t.status.location = record.home;
  t.status.epoch = 0;
  t.status.status = AgentState::running;
  t.status.hops = record.hops;
  // The launch is answered only once its home will remember it.
  if (auto stored = persist_tracked(record.id, t); !stored) {
    tracked_.erase(record.id);
    return stored.error();
  }
  return {};
}

void AgentRuntime::notify_home(const std::string& home, const ArrivalReport& report) {
  if (home == self()) {
    static const PeerIdentity local{"local", {}, {}};
    if (auto r = on_arrived(report, local); !r) log_warn("agents", "home update agent.arrived refused: " + r.error().message);
    return;
  }
  // The home may be briefly unreachable: a few tries, then the report is dropped and the
  // home learns at the next one (location is advisory).
  spawn(report_home(home, "agent.arrived", encode(report), 5), "report to an agent's home");
}

namespace {
// An end report refused for one of these is never taken: it is owed no more.
bool refused_for_good(Errc code) {
  return code == Errc::no_such_agent || code == Errc::not_permitted || code == Errc::invalid_argument;
}
}  // namespace

void AgentRuntime::notify_home(const std::string& home, const EndReport& report) {
  if (home == self()) {
    static const PeerIdentity local{"local", {}, {}};
    auto r = on_finished(report, local);
    if (!r) log_warn("agents", "home update agent.finished refused: " + r.error().message);
    // Stored at this home (or refused for good): owed no more. A store error keeps it owed.
    if (r || refused_for_good(r.error().code)) forget_end(report.id);
    return;
  }
  // The result is not advisory: an end report is tried until the home has it.
  spawn(send_end(home, report), "end report to an agent's home");
}

asio::awaitable<void> AgentRuntime::send_end(std::string home, EndReport report) {
  auto keep = shared_from_this();
  const Value call_args = message_args(encode(report));
  const auto give_up = std::chrono::steady_clock::now() + options_.ended_agent_retention;
  std::chrono::milliseconds pause{100};
  for (int tries = 0; !runtime_.shutting_down(); ++tries) {
    Result<Value> r = co_await links_.call_peer(home, "agent.finished", call_args);
    if (r || refused_for_good(r.error().code)) {
      if (!r) log_warn("agents", "home " + home + " refused the end report of agent " + report.id + ": " + r.error().message);
      // On a worker: the row's removal waits for the disk, the network thread never does.
      asio::post(runtime_.workers(), [keep, id = report.id] { keep->forget_end(id); });
      co_return;
    }
    if (tries == 0) log_warn("agents", "cannot report the end of agent " + report.id + " to home " + home + ": " + r.error().message + "; retrying");
    if (std::chrono::steady_clock::now() >= give_up) {
      log_warn("agents", "the end report of agent " + report.id + " to home " + home + " is kept" +
                             (store_ ? " and sent again at the next start" : std::string(" in vain (no data dir)")));
      co_return;
    }
    asio::steady_timer timer(runtime_.io(), pause);
    co_await timer.async_wait(asio::use_awaitable);
    pause = std::min(pause * 2, std::chrono::milliseconds(5000));
  }
}

asio::awaitable<void> AgentRuntime::report_home(std::string home, std::string service, AgentMessageBytes message, int tries) {
  auto keep = shared_from_this();
  const Value call_args = message_args(message);
  for (int i = 0; i < tries && !runtime_.shutting_down(); ++i) {
    Result<Value> r = co_await links_.call_peer(home, service, call_args);
    if (r) co_return;
    log_warn("agents", "cannot report " + service + " to home " + home + ": " + r.error().message);
    asio::steady_timer timer(runtime_.io(), std::chrono::milliseconds(100 * (i + 1)));
    co_await timer.async_wait(asio::use_awaitable);
  }
}

Result<void> AgentRuntime::check_reporter(const Tracked& t, std::uint64_t epoch, const std::string& token,
                                          const PeerIdentity& caller, const char* what) {
  const AgentStatus& s = t.status;
  auto refuse = [&](const std::string& why) {
    return make_error(Errc::not_permitted, "not permitted: " + std::string(what) + " of agent " + s.id + " (epoch " +
                                               std::to_string(epoch) + ") from " + caller.to_string() + ": " + why);
  };
  // The holder of the current epoch has the current token; the one before it is that
  // holder's too when the home's answer to its arrival was lost. Anyone else has neither.
  const bool current = !token.empty() && token == t.token;
  const bool previous = !token.empty() && token == t.previous_token;
  if (!current && !previous) return refuse("it does not hold the agent (no valid report token)");
  if (epoch < s.epoch || (previous && epoch != s.epoch && t.token_shown)) {
    return refuse("the home knows it at epoch " + std::to_string(s.epoch));
  }
  // Over TLS, the node that reported this epoch's arrival is the only one to report it again.
  if (epoch == s.epoch && caller.authenticated() && !t.holder_fingerprint.empty() &&
      caller.fingerprint != t.holder_fingerprint) {
    return refuse("epoch " + std::to_string(epoch) + " is held by another node");
  }
  return {};
}

Result<ArrivalAnswer> AgentRuntime::on_arrived(const ArrivalReport& report, const PeerIdentity& caller) {
  const std::string& id = report.id;
  const std::uint64_t epoch = report.epoch;
  {
    std::lock_guard lock(mutex_);
    auto it = tracked_.find(id);
    if (it == tracked_.end()) return errors::no_such_agent(id);
    Tracked& t = it->second;
    AgentStatus& s = t.status;
    if (s.done()) return ArrivalAnswer{};
    // Reports are ordered by epoch. An arrival is reported once the agent's first step there
    // has started, so a report may come after a later holder's (the agent moved on): it
    // changes nothing and hands nothing over (no messages, no token), but is no error.
    if (epoch < s.epoch) return ArrivalAnswer{};
    // With a store, what changes here is committed before the answer; a failed commit
    // leaves the entry as it was and the reporter tries again.
    std::optional<Tracked> before;
    if (store_) before = t;
    auto commit = [&]() -> Result<void> {
      auto stored = persist_tracked(id, t);
      if (!stored && before) t = std::move(*before);
      return stored;
    };
    const bool stranded = report.state == AgentState::stranded;
    if (auto allowed = check_reporter(t, epoch, report.token, caller, stranded ? "a stranding report" : "an arrival report");
        !allowed) {
      return allowed.error();
    }
    // The hops the holder finished before this visit, with their final figures: the home
    // keeps the itinerary, the record sheds them once this is answered.
    if (epoch > 0) merge_hops(s.hops, report.finished_hops, epoch - 1);
    if (stranded) {
      if (epoch >= s.epoch) {
        s.status = AgentState::stranded;
        s.reason = report.reason;
        mark_ended(id, t);  // its waiters hear of it; a stranded agent is not forgotten
        if (auto stored = commit(); !stored) return stored.error();
      }
      return ArrivalAnswer{};
    }
    // A stranding of this epoch stands: an arrival report of it that came later (a retry)
    // does not make the agent look running again.
    if (s.status == AgentState::stranded && epoch == s.epoch) {
      // Its finished hops are kept all the same (the holder sheds them on this answer).
      if (!report.finished_hops.empty()) {
        if (auto stored = commit(); !stored) return stored.error();
      }
      return ArrivalAnswer{};
    }
    // What the agent already has is no longer pending (its record says so).
    for (const auto& delivered : report.delivered) {
      std::erase_if(t.pending, [&](const ForwardedMessage& m) { return m.message_id == delivered; });
    }
    if (report.token == t.token) t.token_shown = true;
    if (epoch > s.epoch) {
      // A new holder: the token it brought is used up; its own goes back in the answer. The
      // one it brought stays good until the new one is shown (its answer may be lost).
      t.previous_token = report.token;
      t.token = random_nonce();
      t.token_shown = false;
      t.holder_fingerprint = caller.authenticated() ? caller.fingerprint : std::string();
    }
    if (epoch > s.epoch || s.hops.empty()) {
      AgentHop hop{report.node, epoch, unix_ms_now(), 0, report.state_bytes, report.isolation};
      hop.mobility = report.mobility.empty() ? "weak" : report.mobility;
      s.hops.push_back(std::move(hop));
    }
    s.epoch = epoch;
    s.location = report.node;
    s.status = AgentState::running;
    s.reason.clear();
    if (auto stored = commit(); !stored) return stored.error();
    // The answer hands over what is waiting; it stays pending until a later report lists
    // it as delivered, so a lost answer loses nothing (the agent drops duplicates by id).
    return ArrivalAnswer{std::vector<ForwardedMessage>(t.pending.begin(), t.pending.end()), t.token};
  }
}

ArrivalReport AgentRuntime::arrival_report(const AgentRecord& r) {
  ArrivalReport report;
  report.id = r.id;
  report.epoch = r.epoch;
  report.node = self();
  report.state_bytes = r.hops.empty() ? 0 : r.hops.back().state_bytes;
  report.isolation = std::string(isolation_name(r.isolation));
  report.mobility = mobility_name(r.mobility);
  report.delivered = r.delivered;
  report.token = r.report_token;
  if (r.hops.size() > 1) report.finished_hops.assign(r.hops.begin(), r.hops.end() - 1);
  return report;
}

asio::awaitable<void> AgentRuntime::report_arrival(std::string home, ArrivalReport report) {
  auto keep = shared_from_this();
  const std::string id = report.id;
  Result<ArrivalAnswer> answer = ArrivalAnswer{};
  if (home == self()) {
    static const PeerIdentity local{"local", {}, {}};
    answer = on_arrived(report, local);
  } else {
    // The agent runs meanwhile: a few tries, then the home learns at the next report
    // (location is advisory; its pending messages wait for that report).
    const Value args = message_args(encode(report));
    for (int i = 0; i < 5 && !runtime_.shutting_down(); ++i) {
      Result<Value> reply = co_await links_.call_peer(home, "agent.arrived", args);
      answer = reply ? decode_message<ArrivalAnswer, decode_arrival_answer>(*reply, "the arrival's answer")
                     : Result<ArrivalAnswer>(reply.error());
      if (answer || !outcome_unknown(answer.error().code)) break;
      // The home may be away: a hand-over waiting for this answer goes on without it.
      if (i == 0) arrival_settled(id, report.epoch);
      asio::steady_timer timer(runtime_.io(), std::chrono::milliseconds(50 * (i + 1)));
      co_await timer.async_wait(asio::use_awaitable);
    }
  }
  if (!answer) {
    arrival_settled(id, report.epoch);
    log_warn("agents", "agent " + id + ": cannot report the arrival home: " + answer.error().message);
    co_return;
  }
  // The waiting messages and the home's token for this epoch (what the next report, or the
  // next holder, shows), unless the agent has left meanwhile: its record is on the wire
  // then, and the home hands the messages to the next holder (they stay pending there).
  const bool taken = take_messages(id, report, answer->messages, answer->token);
  arrival_settled(id, report.epoch);
  if (taken) wake_if_asleep(id);
}

void AgentRuntime::hold_arrival_report(const std::string& id, Resident& res) {
  const AgentRecord& r = res.record;
  const std::size_t unacknowledged = r.hops.empty() ? 0 : r.hops.size() - 1;  // this visit's hop aside
  // Only where the timer belongs (the network thread), for a report that would cost a round
  // trip, and while the trail is short: one that has grown is reported at once, so that its
  // answer can shed the hops (await_trail_ack).
  if (!res.report_owed || r.mobility != Mobility::weak || r.home == self() || unacknowledged >= kTrailWaitHops ||
      runtime_.shutting_down() || !runtime_.on_network_thread()) {
    return;
  }
  auto timer = std::make_shared<asio::steady_timer>(runtime_.io(), kArrivalHold);
  res.report_hold = timer;
  // The handler keeps the timer (destroyed on this thread, whatever happens to `res`), not
  // the runtime.
  timer->async_wait([weak = weak_from_this(), id, epoch = r.epoch, timer](const boost::system::error_code& ec) {
    if (ec) return;  // cancelled: the agent left first (drop_report_hold), or the node stops
    if (auto rt = weak.lock()) rt->end_report_hold(id, epoch);
  });
}

void AgentRuntime::end_report_hold(const std::string& id, std::uint64_t epoch) {
  std::optional<ArrivalReport> report;
  std::string home;
  {
    std::lock_guard lock(mutex_);
    auto it = residents_.find(id);
    if (it == residents_.end() || it->second.record.epoch != epoch || !it->second.report_hold) return;
    Resident& res = it->second;
    // Its first step has not started yet: the report leaves as it starts (run_step).
    if (res.status == AgentState::arriving || res.status == AgentState::queued) {
      res.report_hold.reset();
      return;
    }
    report = release_report_hold(res);
    home = res.record.home;
  }
  if (report) spawn(report_arrival(std::move(home), std::move(*report)), "report of an arrival to its home");
}

std::optional<ArrivalReport> AgentRuntime::release_report_hold(Resident& res) {
  if (!res.report_hold) return std::nullopt;
  // (Its timer, if still waiting, finds no hold when it ends.)
  res.report_hold.reset();
  if (!res.report_owed) return std::nullopt;
  res.report_owed = false;
  // Leaving (its record on the wire or about to be): the next holder's report carries this
  // visit among its finished hops.
  if (res.status == AgentState::moving) return std::nullopt;
  res.arrival_in_flight = true;
  return arrival_report(res.record);
}

void AgentRuntime::drop_report_hold(const std::string& id) {
  std::lock_guard lock(mutex_);
  auto it = residents_.find(id);
  if (it == residents_.end() || !it->second.report_hold) return;
  it->second.report_hold->cancel();  // on the network thread, as its wait
  it->second.report_hold.reset();
  it->second.report_owed = false;
}

void AgentRuntime::arrival_settled(const std::string& id, std::uint64_t epoch) {
  std::lock_guard lock(mutex_);
  auto it = residents_.find(id);
  if (it == residents_.end() || it->second.record.epoch != epoch) return;
  it->second.arrival_in_flight = false;
  if (it->second.trail_wait) it->second.trail_wait->cancel();
}

asio::awaitable<void> AgentRuntime::await_trail_ack(std::string id) {
  auto keep = shared_from_this();
  std::shared_ptr<asio::steady_timer> timer;
  {
    std::lock_guard lock(mutex_);
    auto it = residents_.find(id);
    if (it == residents_.end() || !it->second.arrival_in_flight || runtime_.shutting_down()) co_return;
    const std::vector<AgentHop>& hops = it->second.record.hops;
    const std::size_t unacknowledged = hops.empty() ? 0 : hops.size() - 1;  // this visit's hop aside
    if (unacknowledged < kTrailWaitHops || unacknowledged % kTrailWaitHops != 0) co_return;
    timer = std::make_shared<asio::steady_timer>(runtime_.io(), kTrailWaitLimit);
    it->second.trail_wait = timer;
  }
  boost::system::error_code ec;  // cancelled: the answer (or the first try's failure) came
  co_await timer->async_wait(asio::redirect_error(asio::use_awaitable, ec));
  std::lock_guard lock(mutex_);
  if (auto it = residents_.find(id); it != residents_.end() && it->second.trail_wait == timer) it->second.trail_wait.reset();
}

bool AgentRuntime::take_messages(const std::string& id, const ArrivalReport& report,
                                 const std::vector<ForwardedMessage>& messages, const std::string& token) {
  const std::vector<std::string>& confirmed = report.delivered;
  std::lock_guard lock(mutex_);
  auto it = residents_.find(id);
  if (it == residents_.end() || it->second.record.epoch != report.epoch) return false;
  AgentRecord& r = it->second.record;
  if (!token.empty()) r.report_token = token;
  // The home holds the hops the report carried: the record (and so each later TRANSFER)
  // carries them no more.
  shed_reported_hops(r, report);
  // Leaving: not stored (the row keeps its hand-over as it is; see the header), and the
  // messages go to the next holder.
  if (it->second.status == AgentState::moving) return false;
  const std::set<std::string> gone(confirmed.begin(), confirmed.end());
  std::erase_if(r.delivered, [&](const std::string& m) { return gone.count(m) != 0; });
  it->second.answer_ids.clear();
  for (const ForwardedMessage& m : messages) {
    if (m.message_id.empty()) continue;
    it->second.answer_ids.insert(m.message_id);
    if (std::find(r.delivered.begin(), r.delivered.end(), m.message_id) != r.delivered.end()) continue;
    r.delivered.push_back(m.message_id);
    r.mailbox.push_back(m.body);
  }
  persist_resident(id, it->second);  // its new token and the messages the answer handed over
  return true;
}

Result<void> AgentRuntime::on_finished(const EndReport& report, const PeerIdentity& caller) {
  const std::string& id = report.id;
  std::lock_guard lock(mutex_);
  auto it = tracked_.find(id);
  if (it == tracked_.end()) return errors::no_such_agent(id);
  AgentStatus& s = it->second.status;
  if (s.done()) return {};  // a repeated report
  if (auto allowed = check_reporter(it->second, report.epoch, report.token, caller, "an end report"); !allowed) {
    return allowed.error();
  }
  std::optional<Tracked> before;
  if (store_) before = it->second;
  s.status = report.state;
  s.reason = report.reason;
  s.result = report.result;
  s.location = report.node;
  s.epoch = report.epoch;
  merge_hops(s.hops, report.hops, report.epoch);  // the record's last hops, with their final figures
  s.log = report.log;
  mark_ended(id, it->second);
  // Its retention may be zero: the sweep in mark_ended may have forgotten it already.
  it = tracked_.find(id);
  if (it == tracked_.end()) return {};
  // The result is stored before the end report is acknowledged: the reporter retries else.
  if (auto stored = persist_tracked(id, it->second); !stored) {
    if (before) it->second = std::move(*before);
    return stored.error();
  }
  return {};
}

Result<SendAnswer> AgentRuntime::on_send(const AgentSend& send) {
  const std::string& id = send.id;
  const std::string& message_id = send.message_id;
  if (message_id.empty()) return errors::invalid_argument("a message needs an id");
  {
    std::lock_guard lock(mutex_);
    auto it = tracked_.find(id);
    if (it == tracked_.end()) return errors::no_such_agent(id);
    Tracked& t = it->second;
    if (t.status.done()) return errors::no_such_agent(id + " (it has " + std::string(agent_state_name(t.status.status)) + ")");
    // A sender's retry of the same message is accepted once.
    if (t.message_ids.insert(message_id).second) {
      t.pending.push_back(ForwardedMessage{message_id, send.body});
      // Accepted once stored: a failed commit takes it back and the sender may retry.
      if (auto stored = persist_tracked(id, t); !stored) {
        t.pending.pop_back();
        t.message_ids.erase(message_id);
        return stored.error();
      }
    }
  }
  kick_forwarding(id);
  return SendAnswer{message_id};
}

Result<void> AgentRuntime::on_deliver(const AgentDeliver& deliver) {
  const std::string& id = deliver.id;
  const std::string& message_id = deliver.message.message_id;
  std::lock_guard lock(mutex_);
  auto it = residents_.find(id);
  // While the agent is moving, its record is on the wire: a message added here would stay
  // behind. The home tries again after the arrival.
  if (it == residents_.end() || it->second.status == AgentState::moving) {
    return errors::no_such_agent(id);
  }
  AgentRecord& r = it->second.record;
  // Only the home forwards: it knows the token of the agent's holder (or the one before, if
  // this node has not had the home's answer to its arrival yet).
  if (r.report_token.empty() || (r.report_token != deliver.token && r.report_token != deliver.previous)) {
    return make_error(Errc::not_permitted, "not permitted: a delivery to agent " + id + " that does not come from its home");
  }
  if (std::find(r.delivered.begin(), r.delivered.end(), message_id) == r.delivered.end()) {
    r.delivered.push_back(message_id);
    r.mailbox.push_back(deliver.message.body);
    trim_delivered(it->second);
    persist_resident(id, it->second);  // before the home hears it was delivered
  }
  if (it->second.status == AgentState::asleep) {
    it->second.status = AgentState::queued;
    schedule_worker_run(id);  // only posts the step to the worker pool (mutex_ is held)
  }
  return {};
}

void AgentRuntime::trim_delivered(Resident& res) {
  auto& d = res.record.delivered;
  std::size_t others = 0;
  for (const auto& m : d) others += res.answer_ids.count(m) == 0 ? 1 : 0;
  // Oldest first: the forwarded ids delivered longest ago go.
  for (auto it = d.begin(); others > kDeliveredWindow && it != d.end();) {
    if (res.answer_ids.count(*it) == 0) {
      it = d.erase(it);
      --others;
    } else {
      ++it;
    }
  }
}

void AgentRuntime::kick_forwarding(const std::string& id) {
  {
    std::lock_guard lock(mutex_);
    auto it = tracked_.find(id);
    if (it == tracked_.end() || it->second.forwarding || it->second.pending.empty()) return;
    it->second.forwarding = true;
  }
  spawn(forward_messages(id), "message forwarding");
}

asio::awaitable<void> AgentRuntime::forward_messages(std::string id) {
  auto keep = shared_from_this();
  int failures = 0;
  while (!runtime_.shutting_down()) {
    std::string location, token, previous;
    ForwardedMessage message;
    {
      std::lock_guard lock(mutex_);
      auto it = tracked_.find(id);  // never recreates a forgotten agent
      if (it == tracked_.end()) co_return;
      Tracked& t = it->second;
      if (t.pending.empty() || t.status.done() || failures >= kForwardAttempts) {
        t.forwarding = false;
        co_return;
      }
      location = t.status.location;
      message = t.pending.front();
      token = t.token;
      previous = t.previous_token;
    }
    const AgentDeliver deliver{id, message, token, previous};
    Result<void> r;
    if (location == self()) {
      r = on_deliver(deliver);
    } else {
      Result<Value> reply = co_await links_.call_peer(location, "agent.deliver", message_args(encode(deliver)));
      if (!reply) r = reply.error();
    }
    if (r) {
      failures = 0;
      std::lock_guard lock(mutex_);
      auto it = tracked_.find(id);
      if (it != tracked_.end() && !it->second.pending.empty() && it->second.pending.front().message_id == message.message_id) {
        it->second.pending.pop_front();
        // Not stored: the message is delivered again after a restart, and the agent drops
        // it by its id (record.delivered). Logged, nothing is lost.
        if (auto stored = persist_tracked(id, it->second); !stored) log_warn("agents", stored.error().message);
      }
      continue;
    }
    // Not there (moving, or gone on): wait for the next arrival report or a little while.
    ++failures;
    asio::steady_timer timer(runtime_.io(), kForwardPause);
    co_await timer.async_wait(asio::use_awaitable);
  }
  std::lock_guard lock(mutex_);
  if (auto it = tracked_.find(id); it != tracked_.end()) it->second.forwarding = false;
}

Result<AgentStatus> AgentRuntime::status_of(std::string_view id, const PeerIdentity& caller) {
  const bool all = sees_all(caller);
  const std::string viewer = viewer_of(caller);
  std::lock_guard lock(mutex_);
  prune_locked(now_ms());  // a forgotten agent answers as one that never existed
  auto it = tracked_.find(std::string(id));
  // An agent the caller may not see answers as one that does not exist.
  if (it == tracked_.end() || (!all && it->second.launcher != viewer)) {
    return errors::no_such_agent(id);
  }
  Tracked& t = it->second;
  AgentStatus v = t.status;
  v.pending_messages = t.pending.size();
  // The result has been read: it is forgotten read_agent_retention from now (prune).
  if (t.ended_ms != 0 && t.read_ms == 0) {
    t.read_ms = now_ms();
    // Not stored: after a restart the result is kept longer (until ended_agent_retention).
    if (auto stored = persist_tracked(t.status.id, t); !stored) log_warn("agents", stored.error().message);
    schedule_forget(it->first, t);  // sooner now: its entry moves
    prune_locked(t.read_ms);
  }
  return v;
}

}  // namespace sojourn
