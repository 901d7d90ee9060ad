// Errors of sojourn: one numbered enum shared by every module, because error codes
// travel inside reply frames and must mean the same thing on both ends of the wire.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

namespace sojourn {

// Each value's comment is the start of its message; `Error::message` carries the details.
// The numbers are part of the protocol: never renumber, only append.
enum class Errc : std::uint16_t {
  ok = 0,                    // "ok"
  // wire (core)
  bad_magic = 1,             // "bad frame magic 0x..."
  bad_version = 2,           // "unsupported protocol version N (this node speaks M)"
  bad_kind = 3,              // "unknown frame kind N"
  frame_too_large = 4,       // "frame payload of N bytes exceeds the limit of M bytes"
  truncated = 5,             // "truncated frame: ..."
  malformed_payload = 6,     // "malformed payload: ..."
  not_transferable = 7,      // "value at PATH cannot travel: ..."
  invalid_json = 8,          // "invalid JSON: ..."
  invalid_argument = 9,      // "invalid argument: ..."
  internal = 10,             // "internal error: ..." (a bug or a broken host, never the peer's input)
  // node
  no_such_service = 20,      // "no such service: NAME"
  service_failed = 21,       // "service NAME failed: ..."
  shutting_down = 22,        // "node is shutting down"
  overloaded = 23,           // "node is overloaded: ..." (too many connections, or bytes of unfinished frames)
  // sandbox
  lua_error = 40,            // "Lua error at CHUNK:LINE: ..."
  cpu_limit = 41,            // "CPU limit of N instructions exceeded"
  memory_limit = 42,         // "memory limit of N bytes exceeded"
  deadline = 43,             // "wall-clock deadline of N ms exceeded"
  sandbox_refused = 44,      // "refused by the sandbox: ..."
  // jails (sandbox/process, sandbox/guest)
  seccomp_kill = 50,         // "guest killed by seccomp: syscall N"
  guest_crashed = 51,        // "guest crashed: ..." (a signal or an exit without an answer)
  jail_unavailable = 52,     // "process jail unavailable: ..." (no guest binary, no zygote)
  // transports
  connect_failed = 60,       // "cannot connect to PEER: ..."
  connection_closed = 61,    // "connection to PEER closed: ..."
  timeout = 62,              // "request to PEER timed out after N ms"
  bad_address = 63,          // "bad address: ..."
  remote_protocol_error = 64,// "peer PEER reported a protocol error: ..."
  // TLS (transports/tls*): mutual authentication of nodes
  tls_handshake_failed = 65, // "TLS handshake with PEER failed: ..." (not TLS, no common protocol, timed out)
  untrusted_peer = 66,       // "untrusted peer PEER: ..." (certificate from another CA, certificate expired,
                             //  no certificate, pinned key mismatch: expected FP1, got FP2)
  refused_by_peer = 67,      // "peer PEER refused this node's certificate: ..." (the TLS alert it sent)
  tls_config = 68,           // "TLS configuration: ..." (a key, certificate, CA or pin missing, unreadable,
                             //  mismatched or malformed; files that would be overwritten)
  insecure_transport = 69,   // "insecure transport: ..." (plain TCP on a non-loopback address without --insecure)
  // code bundles and mobile agents
  agent_moving = 80,         // "agent is leaving for another node" (ends an agent's run at agent.go)
  bad_bundle = 81,           // "bad bundle: ..." (invalid manifest, module name or file)
  hash_mismatch = 82,        // "bundle hash mismatch: expected H1, got H2"
  no_such_module = 83,       // "no such module: NAME"
  no_such_agent = 84,        // "no such agent: ID"
  stale_epoch = 85,          // "agent ID epoch N is stale (this node has seen epoch M)"
  migration_failed = 86,     // "cannot move agent ID to PEER: ..."
  // trust: signatures, the node's policy, quotas, replay protection (docs/security.md)
  bad_signature = 90,        // "bad signature: ..." (does not verify, or a malformed key or signature)
  bad_key = 91,              // "bad key: ..." (a key or certificate file that cannot be used)
  bad_policy = 92,           // "bad policy: ..." (a policy file that cannot be used, with where)
  policy_refused = 93,       // "refused by the node's policy: ..." (this code or peer may not run here, or not so)
  service_not_granted = 94,  // "service NAME is not granted to this code by the node's policy"
  quota_exhausted = 95,      // "agent ID ran out of its ... budget ..." / "rate limit of N messages per second exceeded"
  quota_raised = 96,         // "agent ID claims ..., above the ... its owner signed" (a node tried to raise a quota)
  replayed = 97,             // "replayed: ..." (a signed request or transfer seen before)
  expired = 98,              // "expired: ..." (a signed request or transfer past its expiry time)
  not_permitted = 99,        // "not permitted: ..." (an agent report from a node that does not hold the agent)
  // the microVM monitor (sandbox/kvm); 100-119 are reserved for it
  kvm_unavailable = 100,     // "KVM unavailable: ..." (no /dev/kvm, wrong API version, missing capability)
  bad_elf = 101,             // "bad guest ELF: ..." (the guest executable cannot be loaded as it is)
  guest_memory = 102,        // "guest memory: ..." (a host-side access or layout outside guest memory)
  vm_setup_failed = 103,     // "microVM setup failed: IOCTL: ..." (an ioctl the monitor needs was refused)
  vm_guest_fault = 104,      // "microVM guest fault: ..." (exception, triple fault, touch outside its map)
  vm_entry_failed = 105,     // "microVM entry failed: ..." (KVM_EXIT_FAIL_ENTRY / KVM_EXIT_INTERNAL_ERROR)
  vm_state = 106,            // "microVM vCPU cannot go from STATE to STATE" (a monitor bug, never the guest's)
  vm_master = 107,           // "microVM master: ..." (the master VM did not reach its first request, or a fork of it failed)
  monitor_filter = 110,      // "microVM monitor filter: ..." (the monitor thread's seccomp table could not be compiled or installed)
};

// The fixed short name of a code ("cpu_limit"), used in JSON output and logs.
std::string_view errc_name(Errc code) noexcept;

const std::error_category& sojourn_category() noexcept;
std::error_code make_error_code(Errc code) noexcept;

// A failure with its human-readable message. Callers act on the code; tests check the code and
// the fields the message names (tests/support/error_checks.hpp), so wording can improve.
struct Error {
  Errc code = Errc::ok;
  std::string message;

  friend bool operator==(const Error&, const Error&) = default;
};

Error make_error(Errc code, std::string message);

// One factory for each error raised with the same words in many places, so the wording
// lives here once. Callers and tests compare the code (and the fields they name), never
// the whole sentence.
namespace errors {
Error shutting_down();                          // shutting_down "node is shutting down"
Error no_such_agent(std::string_view id);       // no_such_agent "no such agent: ID"
Error no_such_service(std::string_view name);   // no_such_service "no such service: NAME"
Error invalid_argument(std::string_view what);  // invalid_argument "invalid argument: WHAT"
Error internal(std::string_view what);          // internal "internal error: WHAT"
// Limits, from every jail (the Lua hooks and allocator, the guest, the microVM monitor).
Error cpu_limit(std::uint64_t instructions);    // cpu_limit "CPU limit of N instructions exceeded"
Error memory_limit(std::uint64_t bytes);        // memory_limit "memory limit of N bytes exceeded"
Error deadline(std::uint64_t ms);               // deadline "wall-clock deadline of N ms exceeded"
// A service a chunk called threw: "service NAME failed: WHY".
Error service_failed(std::string_view service, std::string_view why);
// Frames and links (core's frames, transports, the jails' channel).
Error frame_too_large(std::uint64_t bytes, std::uint64_t limit);  // "frame payload of N bytes exceeds the limit of M bytes"
Error connect_failed(std::string_view peer, std::string_view why);      // "cannot connect to PEER: WHY"
Error connection_closed(std::string_view peer, std::string_view why);   // "connection to PEER closed: WHY"
Error remote_protocol_error(std::string_view peer, std::string_view why);  // "peer PEER reported a protocol error: WHY"
Error bad_address(std::string_view text, std::string_view why);        // "bad address 'TEXT': WHY"
Error no_such_module(std::string_view name);    // no_such_module "no such module: NAME"
}  // namespace errors

// A value or an Error; std::expected is C++23.
template <class T>
class [[nodiscard]] Result {
 public:
  // Asio's co_spawn needs default-constructible results.
  Result() requires std::is_default_constructible_v<T> : v_(std::in_place_index<0>) {}
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}     // NOLINT: implicit by design
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {} // NOLINT

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)) {}  // NOLINT
  bool ok() const noexcept { return error_.code == Errc::ok; }
  explicit operator bool() const noexcept { return ok(); }
  const Error& error() const { return error_; }

 private:
  Error error_;
};

}  // namespace sojourn

template <>
struct std::is_error_code_enum<sojourn::Errc> : std::true_type {};
