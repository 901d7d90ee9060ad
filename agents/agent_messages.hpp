// Internal: the agent protocol's messages (launch, hand-over, reports to the home, messages
// to an agent, status, list, wait, code.fetch), one struct each with one encode/decode pair.
// Each travels as the one binary-string argument (or answer) of a peers-only service call;
// the Cereal codec stays in agent_messages.cpp. docs/protocol.md has the message table.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "agents/agent_record.hpp"
#include "sojourn/agents/mobility.hpp"
#include "sojourn/core/error.hpp"
#include "sojourn/core/value.hpp"

namespace sojourn {

// The first byte of every encoded agent message: which message it is. A message decoded as
// another is refused. Numbers are part of the protocol (version kAgentProtocolVersion).
// 3 and 4 were protocol 3's OFFER and its answer: kept out of use, so that an older peer's
// OFFER is named as such in the version error.
enum class AgentMessageKind : std::uint8_t {
  launch = 1, launch_answer, retired_offer, retired_offer_answer, transfer, commit, arrival, arrival_answer, end,
  send, send_answer, deliver, status_answer, list_answer, wait_query, fetch_query,
  fetch_answer, image_part, bundle_wanted,
};
// The agent protocol's version; the second byte of every encoded agent message.
// 2: OfferAnswer names the destination's node id; a TRANSFER is addressed to that id.
// 3: strong mobility: a launch names the mobility, a TRANSFER may carry a heap image, hops
//    and listings carry the mobility and the image's figures.
// 4: one round trip per hop: no OFFER; the TRANSFER goes first, addressed to the id the
//    destination's node.info (over TLS its handshake) proved, and is answered with a COMMIT
//    or, when the destination lacks the code, a BundleWanted (then the TRANSFER again, with
//    the bundle). The arrival report to the home leaves once the first step has started.
// 5: the TRANSFER carries the record field by field (no Value table) and only the hops the
//    home has not acknowledged (with a count and the nodes of the others); an arrival report
//    carries the finished hops' figures, which the home keeps.
// 6: a heap image is named by its digest (the hash field of its header, computed when it was
//    sealed) instead of the SHA-256 of all its bytes; a node of 5 would refuse such a name.
// 7: the TRANSFER's record carries no state: the state rides beside the TRANSFER, as the
//    second argument of the agent.transfer call (a Value table), so that it is encoded once,
//    into the call's frame, and decoded once, out of it (transfer_args, decode_transfer_call).
inline constexpr std::uint8_t kAgentProtocolVersion = 7;

// agent.launch: a new agent, launched at the node called.
struct AgentLaunchRequest {
  std::string bundle_bytes;  // the bundle's canonical encoding
  std::string entry;         // empty: "start"
  Value state;               // a table (nil: an empty one)
  std::vector<std::string> itinerary;
  std::string owner;         // empty: "anonymous"
  std::uint32_t max_hops = 0;
  std::string signer, signature;  // empty: unsigned
  Mobility mobility = Mobility::weak;
};
struct AgentLaunchAnswer {
  std::string id, home;
};

// agent.transfer: the agent itself, bound to one destination and one moment.
struct AgentTransfer {
  // Field by field (agent_messages.cpp, write_record), all but its state: the state is the
  // call's second argument (transfer_args), not part of the encoded TRANSFER.
  AgentRecord record;
  std::string to;      // the destination's node id, as its node.info (over TLS: its handshake) proved it
  std::string nonce;
  std::int64_t expires_unix_ms = 0;
  std::optional<std::string> bundle_bytes;  // when the destination asked for it (BundleWanted)
  // A strong agent's heap image, in place of a meaningful state table: present exactly when
  // the record names its SHA-256 (record.image_sha256), which the destination checks first.
  // A view, never a copy (on the wire a string field, as before): at the source of the
  // record's own image, encoded straight from it; from decode_transfer, of the message bytes
  // it was decoded from, valid for as long as they are (the destination copies it once,
  // where it keeps it). Whoever fills it keeps the bytes alive while the message is in use.
  std::optional<std::span<const std::uint8_t>> image;
  // Not sent: the TRANSFER's bytes decode_transfer_call took out of the call's arguments (so
  // that the state, which stays in their graph, does not keep them alive); `image` views them.
  std::shared_ptr<const std::string> received;
  // Not sent: decode_transfer(_call) sets it to the size encode_value gives the record's
  // state, as it came (the arrival's hop figure), counted without encoding the state.
  std::uint64_t state_bytes = 0;
};
// agent.image_part: a piece of a strong agent's heap image, sent in order before a TRANSFER
// whose image would not fit in one frame (that TRANSFER then carries no image, and the
// destination takes the one it assembled for (id, epoch), checked against the record's hash).
// The first piece holds the image's header: its declared sizes are checked against the
// memory quota before anything is kept.
struct ImagePart {
  std::string id;
  std::uint64_t epoch = 0;
  std::string image_sha256;     // the image's digest, as the record names it
  std::uint64_t total_bytes = 0;  // of the whole image
  std::uint64_t offset = 0;       // of this piece; pieces come in order, from 0
  // A view, never a copy: of the image being sent, or (decode_image_part) of the message
  // bytes it was decoded from, valid for as long as they are.
  std::span<const std::uint8_t> bytes;
};
// The destination's COMMIT: it holds (id, epoch) now.
struct AgentCommit {
  std::string id;
  std::uint64_t epoch = 0;
  std::string node;
};

// The destination's answer to a TRANSFER without the bundle when it does not have that
// bundle: nothing was taken (nor its nonce spent); the source sends the TRANSFER again with
// the bundle's bytes.
struct BundleWanted {
  std::string id;
  std::uint64_t epoch = 0;
  std::string bundle_hash;
};
// What agent.transfer answers: a COMMIT, or (wanted set) a BundleWanted.
struct TransferReply {
  AgentCommit commit;
  std::optional<BundleWanted> wanted;
};

// agent.arrived, to the home: the agent is at `node` (state running), or could not move
// from there (state stranded, with a reason).
struct ArrivalReport {
  std::string id;
  std::uint64_t epoch = 0;
  std::string node;
  AgentState state = AgentState::running;  // running or stranded
  std::string reason;
  std::uint64_t state_bytes = 0;
  std::string isolation;
  std::string mobility = "weak";       // how it arrived: "weak" or "strong"
  std::vector<std::string> delivered;  // message ids the agent has had
  std::string token;                   // the home's secret for this epoch's holder
  // The record's hops before this visit's, with their final figures: the home keeps them,
  // and once it has answered, the record carries them no more (drop_reported_hops).
  std::vector<AgentHop> finished_hops;
};
// A message the home hands over (in an arrival's answer) or forwards (agent.deliver).
struct ForwardedMessage {
  std::string message_id;
  Value body;
};
struct ArrivalAnswer {
  std::vector<ForwardedMessage> messages;
  std::string token;  // the holder's token from now on
};

// agent.finished, to the home: how the agent ended (finished or failed).
struct EndReport {
  std::string id;
  std::uint64_t epoch = 0;
  std::string node;
  AgentState state = AgentState::finished;  // finished or failed
  std::string reason;
  Value result;  // the entry's return values (a table)
  std::vector<AgentHop> hops;
  std::vector<std::string> log;
  std::string token;
};

// agent.send, to the home: a message for the agent; a retry with the same id counts once.
struct AgentSend {
  std::string id;
  std::string message_id;
  std::string from;
  Value body;
};
struct SendAnswer {
  std::string message_id;
};

// agent.deliver, from the home to the node that holds the agent.
struct AgentDeliver {
  std::string id;
  ForwardedMessage message;
  std::string token, previous;  // the home's current and previous tokens for the agent
};

// agent.wait: the agent's AgentStatus once it has ended, or after wait_ms (0: at once).
// agent.list has no argument and answers the agents the caller may see. (agent.status,
// which Lua code may call too, takes the id and answers to_value(AgentStatus).)
struct WaitQuery {
  std::string id;
  std::uint64_t wait_ms = 0;
};

// code.fetch: a published module by name (with the hash the asker holds, if any) or a
// bundle by hash; the answer has the bytes unless the asker has them.
struct FetchQuery {
  std::string module;
  std::string hash;
  std::string have;
};
struct FetchAnswer {
  std::string hash;
  std::optional<std::string> bundle_bytes;
};

using AgentMessageBytes = std::vector<std::uint8_t>;
AgentMessageBytes encode(const AgentLaunchRequest& m);
AgentMessageBytes encode(const AgentLaunchAnswer& m);
AgentMessageBytes encode(const AgentTransfer& m);
AgentMessageBytes encode(const ImagePart& m);
AgentMessageBytes encode(const AgentCommit& m);
AgentMessageBytes encode(const BundleWanted& m);
AgentMessageBytes encode(const TransferReply& m);  // its BundleWanted, or else its COMMIT
AgentMessageBytes encode(const ArrivalReport& m);
AgentMessageBytes encode(const ArrivalAnswer& m);
AgentMessageBytes encode(const EndReport& m);
AgentMessageBytes encode(const AgentSend& m);
AgentMessageBytes encode(const SendAnswer& m);
AgentMessageBytes encode(const AgentDeliver& m);
AgentMessageBytes encode(const AgentStatus& m);
AgentMessageBytes encode(const std::vector<AgentSummary>& m);
AgentMessageBytes encode(const WaitQuery& m);
AgentMessageBytes encode(const FetchQuery& m);
AgentMessageBytes encode(const FetchAnswer& m);

// Each refuses, with invalid_argument "invalid argument: bad agent message: KIND: WHY", bytes
// of another message, another protocol version, a length past the end, an unknown state or
// trailing bytes. Nothing is allocated for a length before it is checked.
Result<AgentLaunchRequest> decode_launch(std::span<const std::uint8_t> bytes);
Result<AgentLaunchAnswer> decode_launch_answer(std::span<const std::uint8_t> bytes);
// The TRANSFER's bytes alone: its record's state is an empty table (the state travels beside
// them: decode_transfer_call).
Result<AgentTransfer> decode_transfer(std::span<const std::uint8_t> bytes);
Result<ImagePart> decode_image_part(std::span<const std::uint8_t> bytes);
Result<AgentCommit> decode_commit(std::span<const std::uint8_t> bytes);
Result<BundleWanted> decode_bundle_wanted(std::span<const std::uint8_t> bytes);
Result<TransferReply> decode_transfer_reply(std::span<const std::uint8_t> bytes);  // either answer
Result<ArrivalReport> decode_arrival(std::span<const std::uint8_t> bytes);
Result<ArrivalAnswer> decode_arrival_answer(std::span<const std::uint8_t> bytes);
Result<EndReport> decode_end(std::span<const std::uint8_t> bytes);
Result<AgentSend> decode_send(std::span<const std::uint8_t> bytes);
Result<SendAnswer> decode_send_answer(std::span<const std::uint8_t> bytes);
Result<AgentDeliver> decode_deliver(std::span<const std::uint8_t> bytes);
Result<AgentStatus> decode_status(std::span<const std::uint8_t> bytes);
Result<std::vector<AgentSummary>> decode_list(std::span<const std::uint8_t> bytes);
Result<WaitQuery> decode_wait_query(std::span<const std::uint8_t> bytes);
Result<FetchQuery> decode_fetch_query(std::span<const std::uint8_t> bytes);
Result<FetchAnswer> decode_fetch_answer(std::span<const std::uint8_t> bytes);

// How a message rides a service call: its bytes as the one string argument (or the answer),
// and back. as_message_bytes refuses anything but a string (invalid_argument "invalid
// argument: bad agent message: WHAT is not a binary string").
Value message_value(const AgentMessageBytes& bytes);
Value message_args(const AgentMessageBytes& bytes);  // {bytes}: a call's argument array
// message_args(encode(m)), with the piece's bytes copied once, straight into the argument.
Value image_part_args(const ImagePart& m);
// agent.transfer's arguments {encode(m), m.record.state}. The TRANSFER is encoded straight into
// the first argument's string; the argument table is made in the state's graph, so that the
// state is referenced, not copied (the call's frame encodes it, once). That adds a table to
// the state's graph: it is done under `graph_lock`, the lock every other user of that graph
// (the node's copy of the record) holds. `bytes` is set to the arguments' encoded size.
// release_transfer_args empties that table (under the lock) once the call is over.
Value transfer_args(const AgentTransfer& m, std::size_t& bytes, std::mutex& graph_lock);
void release_transfer_args(Value& args, std::mutex& graph_lock);
// The same arguments with the state copied into their own graph: for a caller that does not
// share the record's graph (a test, a tool); a node sends transfer_args.
Value transfer_call_args(const AgentTransfer& m);
// agent.transfer's arguments decoded: exactly {TRANSFER bytes, state table}, the TRANSFER
// checked as decode_transfer checks it (its kind and version first), its record's state the
// second argument, referenced where it lies in `args` (not copied). The first argument's bytes
// are moved out of `args` (it becomes an empty string) into the message's `received`, so that
// the state does not keep them alive and the image's view lives as long as the message. Refuses, with invalid_argument "invalid argument: bad agent
// message: transfer: WHY", any other number of arguments or a state that is not a table.
Result<AgentTransfer> decode_transfer_call(const Value& args);
// encode_value(v).size(), counted without encoding v (no buffer, no copy of its strings).
std::size_t encoded_value_size(const Value& v);
Result<std::span<const std::uint8_t>> as_message_bytes(const Value& v, const char* what);
// as_message_bytes(args.get(1), what) without copying the string out of `args`: a view of it,
// valid while `args` lives and is not changed.
Result<std::span<const std::uint8_t>> first_argument_bytes(const Value& args, const char* what);

// Decodes `v` (a service's argument or answer) as a message: T's decoder over its bytes.
template <class T, Result<T> (*Decode)(std::span<const std::uint8_t>)>
Result<T> decode_message(const Value& v, const char* what) {
  auto bytes = as_message_bytes(v, what);
  if (!bytes) return bytes.error();
  return Decode(*bytes);
}

}  // namespace sojourn
