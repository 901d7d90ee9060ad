// The request and reply messages carried in frame payloads, and their binary
// encoding (Cereal, portable binary; the Cereal headers stay in messages.cpp).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sojourn/core/error.hpp"
#include "sojourn/core/value.hpp"

namespace sojourn {

// Where a piece of code runs; an explicit field of every run request so that the
// jails can slot in. Numbers are part of the protocol.
enum class Isolation : std::uint8_t { trusted = 0, process = 1, microvm = 2 };
std::string_view isolation_name(Isolation level) noexcept;
Result<Isolation> parse_isolation(std::string_view name);

// Resource limits of one Lua run. Zero means "the node's default".
struct Limits {
  std::uint64_t cpu_instructions = 0;  // Lua VM instructions (count hook granularity)
  std::uint64_t memory_bytes = 0;      // bytes the Lua allocator may hold at once
  std::uint32_t wall_ms = 0;           // wall-clock deadline of the run

  friend bool operator==(const Limits&, const Limits&) = default;
};

// Fill zero fields of `asked` from `defaults`, and clamp each to `ceiling`.
Limits effective_limits(const Limits& asked, const Limits& defaults, const Limits& ceiling);

// Client-server: run a named service of the node.
struct CallRequest {
  std::string service;
  Value args;  // an array table of arguments
};

// Remote evaluation: run a Lua chunk at the node, with the node's services at hand.
struct EvalRequest {
  std::string source;      // Lua source text; never bytecode
  std::string chunk_name;  // shown in error messages ("=eval" if empty)
  Value args;              // array table, passed to the chunk as `...`
  Limits limits;
  Isolation isolation = Isolation::trusted;
  // The node the request is addressed to, as the client names it (the address it dials;
  // agents' destination_for). Signed with the rest: a captured signed request is refused
  // at any other node. Empty: addressed to no node in particular (unsigned requests).
  std::string destination;
  // A signed request (core/signature.hpp, sign_eval): the author's raw Ed25519 public key,
  // a nonce and an expiry, and the signature over all of the above. Empty signer: unsigned.
  std::string signer;
  std::string signature;
  std::string nonce;
  std::int64_t expires_unix_ms = 0;
};

// The answer to a CallRequest or EvalRequest.
struct Reply {
  Errc code = Errc::ok;
  std::string message;  // error message when code != ok
  Value result;         // call: the service's result; eval: array of the chunk's returns
  Isolation isolation = Isolation::trusted;  // eval: where it actually ran
};

// Sent (request id 0) just before a connection is closed for a protocol error.
struct ProtocolError {
  Errc code = Errc::ok;
  std::string message;
};

// Encoding never fails for values built through the Value API; decoding checks
// every length against the bytes that remain before allocating.
std::vector<std::uint8_t> encode(const CallRequest& m);
// The same, its buffer sized once for `args_bytes` (the arguments' encoded size, when the
// caller has measured it: an agent's TRANSFER) instead of grown by doubling from 64 bytes.
std::vector<std::uint8_t> encode(const CallRequest& m, std::size_t args_bytes);
std::vector<std::uint8_t> encode(const EvalRequest& m);
std::vector<std::uint8_t> encode(const Reply& m);
std::vector<std::uint8_t> encode(const ProtocolError& m);
std::vector<std::uint8_t> encode_value(const Value& v);

Result<CallRequest> decode_call(std::span<const std::uint8_t> bytes);
// A call request's service name where it lies in `bytes` (valid while they live), read with
// decode_call's own bounds and nothing else decoded; nullopt when the payload is too short to
// hold it (decode_call then fails on it too).
std::optional<std::string_view> peek_call_service(std::span<const std::uint8_t> bytes);
Result<EvalRequest> decode_eval(std::span<const std::uint8_t> bytes);
Result<Reply> decode_reply(std::span<const std::uint8_t> bytes);
// A call's reply straight to what the caller gets: the service's result, or the error the
// reply carries (code and message). It checks what decode_reply checks; a reply that does
// not decode sets `malformed` and returns decode_reply's error. No Reply in between: the
// message of an ok reply is skipped, not copied.
Result<Value> decode_call_reply(std::span<const std::uint8_t> bytes, bool& malformed);
Result<ProtocolError> decode_protocol_error(std::span<const std::uint8_t> bytes);
Result<Value> decode_value(std::span<const std::uint8_t> bytes);

// Reply helpers.
Reply reply_ok(Value result);
Reply reply_error(const Error& error);

}  // namespace sojourn
