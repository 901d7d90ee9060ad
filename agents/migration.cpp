// The exactly-once hand-over of an agent (docs/migration.md), one round trip: TRANSFER ->
// COMMIT (or -> BundleWanted, then the TRANSFER again with the bundle, when the destination
// lacks the code). The source keeps the agent until a COMMIT arrives; the destination
// deduplicates by (id, epoch) and answers a repeated TRANSFER with its earlier COMMIT. A
// TRANSFER names its destination and carries a nonce and an expiry time: captured and
// replayed elsewhere or later, it is refused.
#include "agents/agent_runtime.hpp"

#include <algorithm>
#include <chrono>
#include <optional>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "agents/destinations.hpp"
#include "sandbox/image/heap_image.hpp"
#include "sandbox/image/scratch.hpp"
#include "sojourn/core/bundle.hpp"
#include "sojourn/core/log.hpp"

namespace sojourn {

namespace {

// Failures after which the outcome is unknown (the request may have been done): retried.
// Anything else is the destination's definite refusal.
bool outcome_unknown(Errc code) {
  return code == Errc::connect_failed || code == Errc::connection_closed || code == Errc::timeout ||
         code == Errc::remote_protocol_error || code == Errc::shutting_down;
}

// A heap image larger than half a frame travels in pieces of at most this many bytes. 8 and
// 16 MB pieces (9 and 5 round trips for a 64 MB heap instead of 17) made the pieces' phase no
// shorter on the shared two-core machine (bench/RESULTS.md): the phase is CPU (copies and the
// destination's hash), not round trips.
constexpr std::size_t kImagePieceBytes = 4u << 20;
// Pieces after the first sent without waiting for the answers of those before them, so that the
// source encodes and sends the next while the destination copies and hashes the last. One: on
// a two-core machine shared by both nodes and their guests, three in flight made the pieces'
// phase slower, not faster (bench/RESULTS.md); a destination of this version takes them in
// any order, one of an earlier version only in order. Measured again with 1, 2 and 4 in flight
// at load 6-16: no difference beyond the noise (the pieces' phase is ~116 ms of CPU a 64 MB
// hop, mostly the destination's SHA-256 and the copies, with no idle core to overlap on).
constexpr std::size_t kImagePiecesInFlight = 1;

// The pieces of one image in flight (send_image_parts), on the network thread: the next offset
// to send, the senders still running, the first failure. `done` fires when the last sender ends.
struct PieceWindow {
  explicit PieceWindow(asio::io_context& io) : done(io, std::chrono::steady_clock::time_point::max()) {}
  std::size_t next = 0;
  std::size_t running = 0;
  std::optional<Error> failed;
  asio::steady_timer done;
  void sender_ended() {
    if (--running == 0) done.expires_at(std::chrono::steady_clock::time_point::min());  // wakes the waiter, now or later
  }
};

// One sender: takes the next piece until none is left or one failed. `part` has the image's
// fields; `window`, `links`, `image` and `peer` outlive it (send_image_parts waits for it).
asio::awaitable<void> send_pieces(PeerLinks& links, PieceWindow& window, ImagePart part, std::span<const std::uint8_t> image,
                                  std::size_t piece, const std::string& peer) {
  while (!window.failed && window.next < image.size()) {
    const std::size_t at = window.next;
    const std::size_t n = std::min(piece, image.size() - at);
    window.next += n;
    part.offset = at;
    // A view of the record's image: the piece is copied once, into the call's argument.
    part.bytes = image.subspan(at, n);
    Result<Value> sent = co_await links.call_peer(peer, "agent.image_part", image_part_args(part));
    if (!sent && !window.failed) window.failed = sent.error();
  }
}

std::string_view as_text(std::span<const std::uint8_t> bytes) {
  // SAFETY: the bytes are viewed as chars of the same size, for as long as `bytes` lives.
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

}  // namespace

Result<TransferReply> AgentRuntime::on_transfer(AgentTransfer transfer, const PeerIdentity& caller) {
  if (runtime_.shutting_down()) return errors::shutting_down();
  AgentRecord* record = &transfer.record;
  const std::string what = "the TRANSFER of agent " + record->id + " (epoch " + std::to_string(record->epoch) + ")";
  if (auto fresh = trust_.replay().check_expiry(transfer.expires_unix_ms, what); !fresh) return fresh.error();
  // Addressed to this node's id, however the source reached it (any address, a relay).
  if (auto addressed = check_addressed_to(transfer.to, trust_.node_id(), what); !addressed) return addressed.error();
  {
    std::lock_guard lock(mutex_);
    // Checked after the expiry above: a COMMIT is remembered for as long as any copy of its
    // TRANSFER can be unexpired (remember_commit says why), so forgetting it loses no dedup.
    auto done = commits_.find({record->id, record->epoch});
    if (done != commits_.end()) return TransferReply{done->second.reply, {}};  // a retried TRANSFER: the same COMMIT again
    auto seen = highest_epoch_.find(record->id);
    if (seen != highest_epoch_.end() && record->epoch <= seen->second.epoch) {
      return make_error(Errc::stale_epoch, "agent " + record->id + " epoch " + std::to_string(record->epoch) +
                                               " is stale (this node has seen epoch " + std::to_string(seen->second.epoch) + ")");
    }
  }
  std::shared_ptr<const CachedBundle> bundle;
  if (!transfer.bundle_bytes) {
    bundle = cache_.get(record->bundle_hash);
    // Nothing taken, its nonce not spent: the source sends this TRANSFER again with the bundle.
    if (!bundle) return TransferReply{{}, BundleWanted{record->id, record->epoch, record->bundle_hash}};
  }
  // Kept in the store with the COMMIT below, in its transaction.
  if (auto fresh = trust_.replay().admit(transfer.nonce, transfer.expires_unix_ms, what, false); !fresh) return fresh.error();
  if (transfer.bundle_bytes) {
    const std::string& text = *transfer.bundle_bytes;
    // SAFETY: the string's bytes are read as unsigned bytes of the same size.
    // Checked (signature, policy) below, before it is stored: refused code takes no room here.
    auto put = cache_.check(std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()),
                            record->bundle_hash);
    if (!put) return put.error();
    bundle = *put;
  }
  // A strong agent's heap image: the one the record names (the record rides the authenticated
  // TRANSFER, the image beside it), checked before anything else looks at it.
  Result<bool> image_hashed = take_image(transfer, what);
  if (!image_hashed) return image_hashed.error();
  // Its signature, its budget against the manifest's, the policy.
  auto rule = admit_code(*record, *bundle, caller);
  if (!rule) return rule.error();
  // An arriving agent runs here at this node's peer level (or the policy's), or the stronger
  // one it carries: a node may strengthen an agent's jail, never weaken it.
  auto level = trust_.level_for(record->isolation, *rule);
  if (!level) return level.error();
  record->isolation = *level;
  if (record->mobility == Mobility::strong) {
    if (auto built = check_image_build(*record); !built) return built.error();
    if (*level == Isolation::trusted) {
      return sandbox::strong_refused(*level, "its Lua heap is not an arena at a fixed address, and this node runs "
                                             "this agent's code there");
    }
    // The image's arena was made for this memory limit: every step here must grant it.
    const std::uint64_t ceiling = trust_.run_ceiling(*rule).memory_bytes;
    if (record->strong_memory > ceiling) {
      return make_error(Errc::sandbox_refused, "refused by the sandbox: the heap image of agent " + record->id +
                                                   " needs a memory limit of " + std::to_string(record->strong_memory) +
                                                   " bytes, above this node's " + std::to_string(ceiling));
    }
  }
  bundle = cache_.store(std::move(bundle));
  const std::string id = record->id;
  const std::uint64_t epoch = record->epoch;
  const std::uint64_t state_bytes = transfer.state_bytes != 0 ? transfer.state_bytes : encode_value(record->state).size();
  AgentHop hop{self(), epoch, unix_ms_now(), 0, state_bytes, std::string(isolation_name(record->isolation))};
  hop.mobility = mobility_name(record->mobility);
  if (record->image) hop.state_bytes = record->image->size();
  record->hops.push_back(std::move(hop));
  const AgentCommit commit{id, epoch, self()};
  // Resident now (this COMMIT is the source's cue to drop its copy); it runs at once, and
  // its home hears where it is as that first step starts (run_step).
  Resident arrived;
  arrived.record = std::move(*record);
  if (*image_hashed) arrived.hashed_image = arrived.record.image;
  arrived.bundle = std::move(bundle);
  arrived.rule = *rule;
  arrived.hop_cpu_spent = 0;
  arrived.rate = std::make_shared<RateLimiter>(*rule != nullptr ? (*rule)->quotas.messages_per_second : 0);
  arrived.status = AgentState::arriving;
  arrived.report_owed = true;
  arrived.since_unix_ms = unix_ms_now();
  {
    std::lock_guard lock(mutex_);
    // Checked again under the lock: two copies of one TRANSFER may race here.
    auto done = commits_.find({id, epoch});
    if (done != commits_.end()) return TransferReply{done->second.reply, {}};
    // The agent, the COMMIT and the nonce in one transaction before the COMMIT leaves: a
    // restarted destination answers a retried TRANSFER with it, never takes the agent twice.
    if (store_) {
      auto writes = resident_row(id, arrived);
      writes.push_back(commit_row(id, epoch, commit, now_ms() + static_cast<std::int64_t>(options_.max_message_lifetime.count())));
      writes.push_back(nonce_row(transfer.nonce, transfer.expires_unix_ms));
      if (auto stored = store_->write(writes); !stored) {
        log_error("agents", options_.name + ": " + stored.error().message);
        return stored.error();
      }
    }
    remember_commit(id, epoch, commit);
    Resident& resident = residents_[id] = std::move(arrived);
    hold_arrival_report(id, resident);
  }
  // The texts are built only when they are kept (each hop paid ~1.5k instructions for them).
  if (log_level() <= LogLevel::info) log_info("agents", options_.name + ": agent " + id + " arrived (epoch " + std::to_string(epoch) + ")");
  if (tracing()) trace_step("restore_end", id, caller.address, "epoch " + std::to_string(epoch));
  schedule_run(id);
  return TransferReply{commit, {}};
}

namespace {
// hand_over borrows the caller's record for its TRANSFER and gives it back as it was, whatever
// it returns: a retry sends the same record without a copy of it per try. (The tests' image
// hook rewrites the image hash the TRANSFER names: the record gets its own back.)
struct BorrowedRecord {
  AgentRecord& owner;
  AgentRecord& borrowed;
  std::string image_sha256;
  ~BorrowedRecord() {
    owner = std::move(borrowed);
    owner.image_sha256 = std::move(image_sha256);
  }
};
}  // namespace

asio::awaitable<Result<AgentCommit>> AgentRuntime::hand_over(AgentRecord& record, std::shared_ptr<const CachedBundle> bundle,
                                                             std::string peer, bool* transfer_sent) {
  const std::string id = record.id;
  // The node the TRANSFER is addressed to: learned once per link (node.info; over TLS checked
  // against the id its handshake proved), so a hop over a link in use costs no round trip
  // for it. The TRANSFER then goes only to a server proving that id again: a relay or a
  // wrong address cannot redirect the agent to another node.
  Result<std::string> node_id = co_await links_.peer_id(peer);
  if (!node_id) co_return node_id.error();
  trace_step("addressed", id, peer);
  trace_step("serialize_start", id, peer);
  // What the state is as carried (a strong agent's image, a weak one's encoded state, which
  // is not compressed) and before any compression (an image's page map and kept pages).
  const bool strong_image = record.image != nullptr;
  const std::uint64_t image_raw =
      strong_image && !record.hops.empty() && record.hops.back().image_raw_bytes != 0 ? record.hops.back().image_raw_bytes : 0;
  AgentTransfer transfer;
  std::string own_sha256 = record.image_sha256;
  transfer.record = std::move(record);
  const BorrowedRecord give_back{record, transfer.record, std::move(own_sha256)};
  // Bound to this destination and this moment: a captured copy is refused elsewhere or later.
  transfer.to = destination_for(*node_id);
  transfer.nonce = random_nonce();
  transfer.expires_unix_ms = unix_ms_now() + static_cast<std::int64_t>(options_.transfer_lifetime.count());
  std::uint64_t carried = 0;
  // The bytes transfer.image views (the record's image, or the test hook's copy of it): alive
  // for every encoding of the TRANSFER below, the bundle's retry included.
  std::shared_ptr<const std::vector<std::uint8_t>> image = transfer.record.image;
  if (image) {
    carried = image->size();
    if (image_hook_) {  // tests: the copy a tampering path would send
      auto bytes = std::make_shared<std::vector<std::uint8_t>>(*image);
      image_hook_(*bytes, transfer.record.image_sha256);
      image = std::move(bytes);
    }
    if (image->size() > options_.max_payload / 2) {
      // Too large to ride in the TRANSFER's frame: sent ahead in pieces, straight from the
      // record's image, and assembled once at the destination.
      if (auto sent = co_await send_image_parts(transfer.record, *image, peer); !sent) co_return sent.error();
      trace_step("image_sent", id, peer, "image_bytes=" + std::to_string(image->size()));
      transfer.expires_unix_ms = unix_ms_now() + static_cast<std::int64_t>(options_.transfer_lifetime.count());
    } else {
      transfer.image = std::span<const std::uint8_t>(*image);  // encoded straight from it: no copy
    }
  }
  // The state rides beside the TRANSFER, as the call's second argument: encoded once, into
  // the call's frame. Its argument table is made in the state's graph, which the resident's
  // record shares (under mutex_, as every reader of that record), and emptied when the
  // hand-over is over, whatever its outcome.
  std::size_t transfer_size = 0;
  Value transfer_call = transfer_args(transfer, transfer_size, mutex_);
  struct ReleaseArgs {
    Value& args;
    std::mutex& lock;
    ~ReleaseArgs() { release_transfer_args(args, lock); }
  } const release_call{transfer_call, mutex_};
  if (!strong_image && counters_ != nullptr && counters_->trace.has_file()) carried = encoded_value_size(transfer.record.state);
  // A frame this node could not send (nor a peer of the same settings take): a clear refusal
  // here, not an unreachable destination. Heap images make such TRANSFERs possible.
  auto check_size = [&](std::size_t bytes) -> Result<void> {
    if (bytes <= options_.max_payload) return {};
    return errors::invalid_argument("the TRANSFER of agent " + id + " is " + std::to_string(bytes) +
                                    " bytes, over the frame limit of " + std::to_string(options_.max_payload) +
                                    " bytes (max_payload)");
  };
  if (auto fits = check_size(transfer_size); !fits) co_return fits.error();
  if (tracing()) {
    trace_step("serialize_end", id, peer,
               "raw_bytes=" + std::to_string(image_raw != 0 ? image_raw : carried) + " compressed_bytes=" + std::to_string(carried) +
                   " transfer_bytes=" + std::to_string(transfer_size));
  }
  const std::string expect = trust_.tls() ? *node_id : std::string();
  for (int round = 0;; ++round) {
    if (tracing()) trace_step("transfer_sent", id, peer, "transfer_bytes=" + std::to_string(transfer_size));
    *transfer_sent = true;  // from here the destination may commit it, whatever this call returns
    Result<Value> reply = co_await links_.call_peer(peer, "agent.transfer", transfer_call, expect, transfer_size);
    if (!reply) {
      // A node of an older agent protocol cannot read the TRANSFER: said so, not a bad message.
      const Error& e = reply.error();
      if (e.code == Errc::invalid_argument && e.message.find("agent protocol version") != std::string::npos) {
        co_return make_error(Errc::bad_version, "unsupported protocol version: peer " + peer +
                                                    " does not speak agent protocol " + std::to_string(kAgentProtocolVersion) +
                                                    " (" + e.message + ")");
      }
      co_return e;
    }
    auto answer = decode_message<TransferReply, decode_transfer_reply>(*reply, "the TRANSFER's answer");
    if (!answer) co_return answer.error();
    if (!answer->wanted) {
      trace_step("commit_received", id, peer);
      co_return std::move(answer->commit);
    }
    // It lacks the code: nothing was taken there. The same TRANSFER again, with the bundle.
    if (round > 0 || answer->wanted->id != id || answer->wanted->bundle_hash != transfer.record.bundle_hash) {
      co_return errors::remote_protocol_error(peer, "it asked again for the bundle of agent " + id + " it was sent");
    }
    trace_step("bundle_wanted", id, peer);
    transfer.bundle_bytes = std::string(as_text(bundle->bytes));
    ++bundles_sent_;
    release_transfer_args(transfer_call, mutex_);
    transfer_call = transfer_args(transfer, transfer_size, mutex_);
    if (auto fits = check_size(transfer_size); !fits) co_return fits.error();
  }
}

asio::awaitable<void> AgentRuntime::migrate(std::string id, std::string peer, std::string entry, bool resumed) {
  // Leaving within its arrival report's hold: the next holder's report tells the home.
  drop_report_hold(id);
  // A long hop trail first waits for this visit's arrival answer, which sheds it (tracking.cpp).
  co_await await_trail_ack(id);
  AgentRecord next;
  std::shared_ptr<const CachedBundle> bundle;
  DestinationScope scope;
  {
    std::lock_guard lock(mutex_);
    auto it = residents_.find(id);
    if (it == residents_.end()) co_return;
    next = it->second.record;
    bundle = it->second.bundle;
    scope.rule = it->second.rule;
  }
  if (next.epoch + 1 > next.max_hops) {
    finish(id, AgentState::failed, "agent " + id + " ran out of its hop budget of " + std::to_string(next.max_hops) + " hops (at " +
                             self() + ")", Value{});
    co_return;
  }
  // Where it may go is decided on the record as it was here: its home, stops and visits
  // (what destinations.cpp reads: a copy of those only, not of the state and the mailbox).
  AgentRecord here;
  here.id = next.id;
  here.home = next.home;
  here.itinerary = next.itinerary;
  here.hops = next.hops;
  here.visited = next.visited;
  scope.tls = trust_.tls() != nullptr;
  scope.peers = &options_.tls.peers;
  scope.record = &here;
  if (auto allowed = check_destination(scope, peer); !allowed) {
    // The code asked for this destination itself: it stays here, told no more than that.
    log_warn("agents", options_.name + ": " + allowed.error().message);
    strand(id, next.epoch, "cannot move agent " + id + " to " + peer + ": " + kDestinationRefused);
    co_return;
  }
  next.epoch += 1;
  if (!entry.empty()) next.entry = entry;  // empty: a strong move, resumed from its image
  if (!next.itinerary.empty() && next.itinerary.front() == peer) next.itinerary.erase(next.itinerary.begin());
  next.updated_unix_ms = unix_ms_now();

  // Where to try, in order: the asked destination, then the next itinerary stop, then home.
  std::vector<std::string> targets{peer};
  if (!next.itinerary.empty() && next.itinerary.front() != peer) targets.push_back(next.itinerary.front());
  if (next.home != self() && next.home != peer) targets.push_back(next.home);

  const std::uint64_t next_epoch = next.epoch;
  std::string last_error, last_error_for_code;
  for (const std::string& target : targets) {
    if (target != peer) {
      if (auto allowed = check_destination(scope, target); !allowed) {
        log_warn("agents", options_.name + ": not falling back: " + allowed.error().message);
        continue;
      }
      // The row names the fallback: after a restart the agent is offered there first, where
      // a TRANSFER may have gone (a rare write, on this thread).
      std::lock_guard lock(mutex_);
      auto it = residents_.find(id);
      if (it != residents_.end() && it->second.record.epoch + 1 == next_epoch) persist_resident(id, it->second, target, entry);
    }
    // The asked destination borrows `next` itself (given back below if it fails); a fallback
    // stop changes its copy's itinerary. Each try lends it to its TRANSFER (hand_over).
    AgentRecord attempt = target == peer ? std::move(next) : next;
    if (target != peer) {
      // A fallback stop: skip the unreachable one in the itinerary.
      auto& it = attempt.itinerary;
      if (!it.empty() && it.front() == target) it.erase(it.begin());
    }
    auto backoff = options_.retry_backoff;
    // Retries end within transfer_lifetime of the first try: the destination remembers a
    // COMMIT at least that long (docs/migration.md, "What a node remembers"), so a retry
    // after a lost COMMIT always hears `duplicate`, never a second commit.
    // Once a TRANSFER to this target may have been taken (its outcome unknown, or unknown to
    // this node after a restart: `resumed`), the agent may be there: it is never offered to
    // another target, only to this one again, for as long as the target remembers its
    // COMMITs (max_message_lifetime, in its store too), then it is stranded here.
    bool maybe_there = resumed;
    bool unknown = false;
    const auto first_try = std::chrono::steady_clock::now();
    for (std::uint32_t tries = 0;; ++tries) {
      if (runtime_.shutting_down()) co_return;
      const auto elapsed = std::chrono::steady_clock::now() - first_try;
      if (tries > 0 && (maybe_there ? elapsed >= options_.max_message_lifetime
                                    : tries > options_.migration_retries || elapsed >= options_.transfer_lifetime)) {
        break;
      }
      bool transfer_sent = false;
      Result<AgentCommit> commit = co_await hand_over(attempt, bundle, target, &transfer_sent);
      if (commit) {
        {
          std::lock_guard lock(mutex_);
          // The destination holds it now: exactly one live copy. Only this copy goes: the
          // agent may already have come back (a newer epoch) before this COMMIT arrived.
          auto it = residents_.find(id);
          if (it != residents_.end() && it->second.record.epoch + 1 == attempt.epoch) {
            residents_.erase(it);
            forget_resident(id);
          }
        }
        if (log_level() <= LogLevel::info) {
          log_info("agents", options_.name + ": agent " + id + " moved to " + target + " (epoch " +
                                 std::to_string(attempt.epoch) + ")");
        }
        co_return;
      }
      last_error = commit.error().message;
      last_error_for_code = hand_over_failure_for_code(commit.error());
      // A stale epoch: the target has seen this epoch, so it took the agent once.
      unknown = outcome_unknown(commit.error().code) || (maybe_there && commit.error().code == Errc::stale_epoch);
      if (!unknown) break;
      // (A TRANSFER that could not connect never left.)
      if (transfer_sent && commit.error().code != Errc::connect_failed) maybe_there = true;
      log_warn("agents", options_.name + ": moving agent " + id + " to " + target + ": " + last_error + "; retrying");
      asio::steady_timer timer(runtime_.io(), backoff);
      co_await timer.async_wait(asio::use_awaitable);
      backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
    }
    if (target == peer) next = std::move(attempt);
    if (unknown && maybe_there) break;  // never a second destination while the first may hold it
  }
  // Nowhere to go: the agent stays here, stopped. The log has the whole story; the status,
  // which code can read, only what does not make this node a probe of its network.
  log_warn("agents", options_.name + ": cannot move agent " + id + " to " + peer + ": " + last_error);
  strand(id, next_epoch - 1, "cannot move agent " + id + " to " + peer + ": " + last_error_for_code);
}

Result<bool> AgentRuntime::take_image(AgentTransfer& transfer, const std::string& what) {
  AgentRecord& record = transfer.record;
  if (record.mobility != Mobility::strong || record.image_sha256.empty()) {
    if (transfer.image) return errors::invalid_argument(what + " carries a heap image its record does not name");
    return false;
  }
  std::shared_ptr<const std::vector<std::uint8_t>> image;
  bool hashed_as_staged = false;  // the staging hashed every byte as it landed
  if (transfer.image) {
    // A view of the received message: copied once, here, into the buffer the record keeps.
    const std::span<const std::uint8_t> view = *transfer.image;
    std::vector<std::uint8_t> bytes;
    bytes.reserve(view.size());
    sandbox::image::advise_huge_pages(bytes.data(), bytes.capacity());  // filled once, here
    sandbox::image::prefault(bytes.data(), view.size());                 // in one call, not a fault a page
    bytes.insert(bytes.end(), view.begin(), view.end());
    image = std::make_shared<const std::vector<std::uint8_t>>(std::move(bytes));
    transfer.image.reset();
  } else if (auto staged = staged_images_.take(record.id, record.epoch, record.image_sha256, &hashed_as_staged)) {
    // Sent in pieces: no copy. Its buffer is kept for the next image staged when it is let go.
    image = sandbox::image::shared_image(std::move(*staged));
  } else {
    return errors::invalid_argument(what + " names a heap image but carries none, and none was sent ahead of it");
  }
  // One pass: the digest the record names covers every byte of the image (has_digest). In the
  // image's own form (its header names that digest) the pass also proves the header's hash, so
  // the jail that opens these bytes, unchanged since, is spared its own (hashed_image). An
  // image sent in pieces had that pass as its pieces landed (has_sealed_digest's answer,
  // ImageStaging::take), over these very bytes: not a second one.
  const bool sealed_form = sandbox::image::digest_hex(*image) == record.image_sha256;
  if (!(sealed_form && hashed_as_staged) &&
      (sealed_form ? !sandbox::image::has_sealed_digest(*image, record.image_sha256)
                   : !sandbox::image::has_digest(*image, record.image_sha256))) {
    return make_error(Errc::hash_mismatch, "heap image hash mismatch: " + what + " names " + record.image_sha256.substr(0, 16) +
                                               ", the image is " + sandbox::image::computed_digest_hex(*image).substr(0, 16));
  }
  record.image = std::move(image);
  return sealed_form;
}

Result<void> AgentRuntime::on_image_part(ImagePart part) {
  if (runtime_.shutting_down()) return errors::shutting_down();
  {
    std::lock_guard lock(mutex_);
    // Pieces of an epoch this node has committed or passed are not kept.
    if (commits_.count({part.id, part.epoch}) != 0) return {};
    auto seen = highest_epoch_.find(part.id);
    if (seen != highest_epoch_.end() && part.epoch <= seen->second.epoch) {
      return make_error(Errc::stale_epoch, "agent " + part.id + " epoch " + std::to_string(part.epoch) +
                                               " is stale (this node has seen epoch " + std::to_string(seen->second.epoch) + ")");
    }
  }
  return staged_images_.add(std::move(part));
}

asio::awaitable<Result<void>> AgentRuntime::send_image_parts(const AgentRecord& record, std::span<const std::uint8_t> image,
                                                             const std::string& peer) {
  // Pieces well inside a frame of this node's size (the destination's is the same by default).
  const std::size_t piece = std::max<std::size_t>(1024, std::min<std::size_t>(kImagePieceBytes, options_.max_payload / 2));
  ImagePart part;
  part.id = record.id;
  part.epoch = record.epoch;
  part.image_sha256 = record.image_sha256;
  part.total_bytes = image.size();
  // The first piece (the header, which the destination checks against its quota before it
  // keeps a byte) alone; then the rest with a few in flight, which the destination may serve
  // out of order (ImageStaging::add holds a piece that lands early aside).
  PieceWindow window(runtime_.io());
  const std::size_t first = std::min(piece, image.size());
  part.offset = 0;
  part.bytes = image.first(first);
  if (Result<Value> sent = co_await links_.call_peer(peer, "agent.image_part", image_part_args(part)); !sent) {
    co_return sent.error();
  }
  window.next = first;
  part.bytes = {};
  const std::size_t senders = std::min(kImagePiecesInFlight, (image.size() - first + piece - 1) / piece);
  window.running = senders;
  for (std::size_t i = 0; i < senders; ++i) {
    asio::co_spawn(runtime_.io(), send_pieces(links_, window, part, image, piece, peer), [&window](std::exception_ptr e) {
      if (e && !window.failed) window.failed = errors::internal("an image piece's sender failed");
      window.sender_ended();
    });
  }
  // Every sender is waited for, whatever happens: they view `image` and `window`.
  while (window.running > 0) {
    boost::system::error_code ignored;
    co_await window.done.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }
  if (window.failed) co_return *window.failed;
  co_return Result<void>{};
}

Result<void> AgentRuntime::check_image_build(const AgentRecord& record) {
  if (!record.image) return {};
  auto header = sandbox::image::peek_header(*record.image);
  if (!header) return header.error();
  auto build = jails_.guest_build();
  if (!build) return build.error();
  if (header->guest_build != *build) {
    return make_error(Errc::sandbox_refused, "refused by the sandbox: image from guest build " +
                                                 sandbox::image::hex(header->guest_build).substr(0, 16) +
                                                 ", this node runs " + sandbox::image::hex(*build).substr(0, 16));
  }
  return {};
}

void AgentRuntime::strand(const std::string& id, std::uint64_t epoch, const std::string& reason) {
  std::string home, token;
  {
    std::lock_guard lock(mutex_);
    auto it = residents_.find(id);
    if (it == residents_.end() || it->second.record.epoch != epoch) return;
    it->second.status = AgentState::stranded;
    it->second.reason = reason;
    persist_resident(id, it->second);
    home = it->second.record.home;
    token = it->second.record.report_token;
  }
  ArrivalReport report;
  report.id = id;
  report.epoch = epoch;
  report.node = self();
  report.state = AgentState::stranded;
  report.reason = reason;
  report.token = token;  // the home takes reports only from the agent's holder
  notify_home(home, report);
}

}  // namespace sojourn
