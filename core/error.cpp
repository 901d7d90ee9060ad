// Names and the std::error_category of sojourn's error codes.
#include "sojourn/core/error.hpp"

namespace sojourn {

std::string_view errc_name(Errc code) noexcept {
  switch (code) {
    case Errc::ok: return "ok";
    case Errc::bad_magic: return "bad_magic";
    case Errc::bad_version: return "bad_version";
    case Errc::bad_kind: return "bad_kind";
    case Errc::frame_too_large: return "frame_too_large";
    case Errc::truncated: return "truncated";
    case Errc::malformed_payload: return "malformed_payload";
    case Errc::not_transferable: return "not_transferable";
    case Errc::invalid_json: return "invalid_json";
    case Errc::invalid_argument: return "invalid_argument";
    case Errc::internal: return "internal";
    case Errc::no_such_service: return "no_such_service";
    case Errc::service_failed: return "service_failed";
    case Errc::shutting_down: return "shutting_down";
    case Errc::overloaded: return "overloaded";
    case Errc::lua_error: return "lua_error";
    case Errc::cpu_limit: return "cpu_limit";
    case Errc::memory_limit: return "memory_limit";
    case Errc::deadline: return "deadline";
    case Errc::sandbox_refused: return "sandbox_refused";
    case Errc::seccomp_kill: return "seccomp_kill";
    case Errc::guest_crashed: return "guest_crashed";
    case Errc::jail_unavailable: return "jail_unavailable";
    case Errc::connect_failed: return "connect_failed";
    case Errc::connection_closed: return "connection_closed";
    case Errc::timeout: return "timeout";
    case Errc::bad_address: return "bad_address";
    case Errc::remote_protocol_error: return "remote_protocol_error";
    case Errc::tls_handshake_failed: return "tls_handshake_failed";
    case Errc::untrusted_peer: return "untrusted_peer";
    case Errc::refused_by_peer: return "refused_by_peer";
    case Errc::tls_config: return "tls_config";
    case Errc::insecure_transport: return "insecure_transport";
    case Errc::agent_moving: return "agent_moving";
    case Errc::bad_bundle: return "bad_bundle";
    case Errc::hash_mismatch: return "hash_mismatch";
    case Errc::no_such_module: return "no_such_module";
    case Errc::no_such_agent: return "no_such_agent";
    case Errc::stale_epoch: return "stale_epoch";
    case Errc::migration_failed: return "migration_failed";
    case Errc::bad_signature: return "bad_signature";
    case Errc::bad_key: return "bad_key";
    case Errc::bad_policy: return "bad_policy";
    case Errc::policy_refused: return "policy_refused";
    case Errc::service_not_granted: return "service_not_granted";
    case Errc::quota_exhausted: return "quota_exhausted";
    case Errc::quota_raised: return "quota_raised";
    case Errc::replayed: return "replayed";
    case Errc::expired: return "expired";
    case Errc::not_permitted: return "not_permitted";
    case Errc::kvm_unavailable: return "kvm_unavailable";
    case Errc::bad_elf: return "bad_elf";
    case Errc::guest_memory: return "guest_memory";
    case Errc::vm_setup_failed: return "vm_setup_failed";
    case Errc::vm_guest_fault: return "vm_guest_fault";
    case Errc::vm_entry_failed: return "vm_entry_failed";
    case Errc::vm_state: return "vm_state";
    case Errc::vm_master: return "vm_master";
    case Errc::monitor_filter: return "monitor_filter";
  }
  return "unknown_error";
}

namespace {
class SojournCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "sojourn"; }
  std::string message(int ev) const override { return std::string(errc_name(static_cast<Errc>(ev))); }
};
}  // namespace

const std::error_category& sojourn_category() noexcept {
  static const SojournCategory category;
  return category;
}

std::error_code make_error_code(Errc code) noexcept {
  return {static_cast<int>(code), sojourn_category()};
}

Error make_error(Errc code, std::string message) { return Error{code, std::move(message)}; }

namespace errors {
Error shutting_down() { return Error{Errc::shutting_down, "node is shutting down"}; }
Error no_such_agent(std::string_view id) { return Error{Errc::no_such_agent, "no such agent: " + std::string(id)}; }
Error no_such_service(std::string_view name) {
  return Error{Errc::no_such_service, "no such service: " + std::string(name)};
}
Error invalid_argument(std::string_view what) {
  return Error{Errc::invalid_argument, "invalid argument: " + std::string(what)};
}
Error internal(std::string_view what) { return Error{Errc::internal, "internal error: " + std::string(what)}; }
Error cpu_limit(std::uint64_t instructions) {
  return Error{Errc::cpu_limit, "CPU limit of " + std::to_string(instructions) + " instructions exceeded"};
}
Error memory_limit(std::uint64_t bytes) {
  return Error{Errc::memory_limit, "memory limit of " + std::to_string(bytes) + " bytes exceeded"};
}
Error deadline(std::uint64_t ms) {
  return Error{Errc::deadline, "wall-clock deadline of " + std::to_string(ms) + " ms exceeded"};
}
Error service_failed(std::string_view service, std::string_view why) {
  return Error{Errc::service_failed, "service " + std::string(service) + " failed: " + std::string(why)};
}
Error frame_too_large(std::uint64_t bytes, std::uint64_t limit) {
  return Error{Errc::frame_too_large, "frame payload of " + std::to_string(bytes) + " bytes exceeds the limit of " +
                                          std::to_string(limit) + " bytes"};
}
Error connect_failed(std::string_view peer, std::string_view why) {
  return Error{Errc::connect_failed, "cannot connect to " + std::string(peer) + ": " + std::string(why)};
}
Error connection_closed(std::string_view peer, std::string_view why) {
  return Error{Errc::connection_closed, "connection to " + std::string(peer) + " closed: " + std::string(why)};
}
Error remote_protocol_error(std::string_view peer, std::string_view why) {
  return Error{Errc::remote_protocol_error,
               "peer " + std::string(peer) + " reported a protocol error: " + std::string(why)};
}
Error bad_address(std::string_view text, std::string_view why) {
  return Error{Errc::bad_address, "bad address '" + std::string(text) + "': " + std::string(why)};
}
Error no_such_module(std::string_view name) { return Error{Errc::no_such_module, "no such module: " + std::string(name)}; }
}  // namespace errors

}  // namespace sojourn
