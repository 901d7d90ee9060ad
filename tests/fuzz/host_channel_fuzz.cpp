// libFuzzer target: the host's end of a guest channel, fed by a hostile guest. The input is
// everything the guest writes on its socket before it closes it: frames of any kind, length
// and payload (host calls, seccomp reports, a final answer, garbage). The host converses as
// in a real run (an echoing node.call; a run carries two reads, so reads_used frames count),
// then reads the final frame as a run or agent answer, and reads the tail of the input as the
// zygote's control datagrams and as a carried_reads payload (the guest's decoding of it).
#include <sys/socket.h>

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sandbox/process/guest_session.hpp"
#include "sandbox/process/guest_wire.hpp"
#include "sandbox/process/host_channel.hpp"
#include "tests/fuzz/fuzz_check.hpp"

using namespace sojourn;
using namespace sojourn::sandbox;

namespace {

class EchoHost : public HostCalls {
 public:
  Result<Value> call(std::string_view service, const Value& args) override {
    if (service == "fail") return make_error(Errc::service_failed, "service fail failed: asked to");
    return args;
  }
  bool carries(std::string_view service) const override { return service == "kv.get"; }
};

template <class M>
void decode_datagram(std::span<const std::uint8_t> bytes) {
  (void)channel::decode_payload<M>(bytes);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const bool agent = (data[0] & 1) != 0;
  const std::uint64_t memory_limit = 256 + (data[0] >> 1) * 1024u;  // a frame may carry this plus 1 MiB
  std::span<const std::uint8_t> from_guest(data + 1, size - 1);

  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) return 0;
  UniqueFd host_end(pair[0]);
  UniqueFd guest_end(pair[1]);
  // The guest's whole say, then its end half-closed: the host sees a stream that ends.
  // (Inputs are far below the socket buffer; the host's writes land unread in the other way.)
  int bigger = 1 << 20;
  ::setsockopt(guest_end.get(), SOL_SOCKET, SO_SNDBUF, &bigger, sizeof bigger);
  ::setsockopt(host_end.get(), SOL_SOCKET, SO_RCVBUF, &bigger, sizeof bigger);
  ::setsockopt(guest_end.get(), SOL_SOCKET, SO_RCVBUF, &bigger, sizeof bigger);
  std::size_t sent = 0;
  while (sent < from_guest.size()) {
    const ssize_t n = ::send(guest_end.get(), from_guest.data() + sent, from_guest.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<std::size_t>(n);
  }
  ::shutdown(guest_end.get(), SHUT_WR);

  Limits limits{1000, memory_limit, 1000};
  HostChannel host(std::move(host_end), HostChannel::Clock::now() + std::chrono::seconds(5), nullptr);
  EchoHost echo;
  const channel::RunRequest request{"return 1", "=fuzz", Value::table(), limits, false, true};
  const auto frame = agent ? channel::encode_frame(channel::AgentRequest{request, "step", Value::table(), Value::table()})
                           : channel::encode_frame(request);
  CarriedSession carried;
  if (!agent) {
    Value args = Value::table();
    args.push(Value(std::string("k")));
    const std::vector<std::uint8_t> encoded = encode_value(args);
    for (int i = 0; i < 2; ++i) {
      carried.reads.push_back({"kv.get", std::string(encoded.begin(), encoded.end()), Value(std::int64_t{i})});
      carried.read_args.push_back(args);
    }
  }
  Conversation talk = converse(host, frame, agent ? channel::Kind::agent_done : channel::Kind::run_done, limits, &echo, 0,
                               nullptr, 0, nullptr, agent ? nullptr : &carried);
  fuzz::check(carried.used.empty() || (carried.used.size() == carried.reads.size() &&
                                       std::all_of(carried.used.begin(), carried.used.end(),
                                                   [](char c) { return c == 0 || c == 1; })),
              "a run's used reads are one flag per carried read");
  fuzz::check(carried.crossed.size() <= channel::kMaxCarriedReads, "at most kMaxCarriedReads crossed reads are kept");
  fuzz::check(talk.status != ChannelStatus::deadline && talk.status != ChannelStatus::aborted,
              "a guest that closed its channel never keeps the host waiting");
  if (talk.done) {
    fuzz::check(talk.done->size() <= memory_limit + (1u << 20), "no answer larger than the run's memory and slack");
    if (agent) {
      auto outcome = agent_outcome(*talk.done);
      if (!outcome) fuzz::check(outcome.error().code != Errc::ok, "an agent answer refused with an error code");
    } else {
      auto outcome = run_outcome(*talk.done);
      if (!outcome) fuzz::check(outcome.error().code != Errc::ok, "a run answer refused with an error code");
    }
  }
  if (talk.broke) fuzz::check(talk.broke->code == Errc::guest_crashed, "a broken protocol is guest_crashed");

  // The zygote's datagrams, as the host decodes them.
  decode_datagram<channel::Hello>(from_guest);
  decode_datagram<channel::Spawned>(from_guest);
  decode_datagram<channel::CarriedReads>(from_guest);
  if (auto exited = channel::decode_payload<channel::Exited>(from_guest)) {
    (void)classify_guest_end(&*exited, talk.seccomp_syscall, limits);
  }
  return 0;
}
