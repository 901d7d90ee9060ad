// The emulated link: its parsers, its shaper's arithmetic, and delay and bandwidth measured
// on loopback TCP between a client and a server both configured.
#include <doctest/doctest.h>

#include "sojourn/transports/asio.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_future.hpp>
#include <future>
#include <optional>
#include <thread>

#include "sojourn/transports/link.hpp"
#include "sojourn/transports/link_model.hpp"
#include "tests/support/echo_server.hpp"
#include "tests/support/error_checks.hpp"
#include "tests/support/time_scale.hpp"

using namespace sojourn;
using namespace std::chrono_literals;

namespace {

class ReplyHandler : public RequestHandler {
 public:
  std::size_t reply_bytes = 1;
  asio::awaitable<Result<std::vector<std::uint8_t>>> handle(FrameKind, std::vector<std::uint8_t>, PeerIdentity) override {
    co_return std::vector<std::uint8_t>(reply_bytes, 0x5A);
  }
};

struct Loopback : test::ServerThread<ReplyHandler> {
  explicit Loopback(TransportOptions server_options) : test::ServerThread<ReplyHandler>(server_options) {}
  // Milliseconds one request of `bytes` took on `link`.
  double timed_request(const std::shared_ptr<Link>& link, std::size_t bytes) {
    auto start = std::chrono::steady_clock::now();
    auto frame = asio::co_spawn(io, [link, bytes]() -> asio::awaitable<Result<Frame>> {
      co_return co_await link->request(FrameKind::call, std::vector<std::uint8_t>(bytes, 1), 10'000ms);
    }, asio::use_future).get();
    REQUIRE(frame.ok());
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  }
};

std::shared_ptr<const LinkModel> model_of(const std::string& rule, std::uint64_t seed = 1) {
  auto parsed = parse_link_rule(rule);
  REQUIRE(parsed.ok());
  auto model = std::make_shared<LinkModel>();
  model->rules.push_back(*parsed);
  model->seed = seed;
  return model;
}

}  // namespace

TEST_CASE("durations, bandwidths and sizes parse with their units") {
  CHECK(parse_duration("40ms").value() == 40ms);
  CHECK(parse_duration("1.5s").value() == 1500ms);
  CHECK(parse_duration("250us").value() == 250us);
  CHECK(parse_duration("0").value() == 0us);
  CHECK(parse_bandwidth("100mbit").value() == 100'000'000u);
  CHECK(parse_bandwidth("1gbit").value() == 1'000'000'000u);
  CHECK(parse_bandwidth("12.5MB/s").value() == 100'000'000u);
  CHECK(parse_size("200B").value() == 200u);
  CHECK(parse_size("64KB").value() == 64'000u);
  CHECK(parse_size("2KiB").value() == 2048u);
}

TEST_CASE("a bad link says which part is wrong, in exact words") {
  CHECK(parse_duration("40").error().message == "invalid argument: bad duration '40': unknown unit '' (us, ms, s)");
  CHECK(parse_bandwidth("fast").error().message ==
        "invalid argument: bad bandwidth 'fast': expected a number and a unit (bit, kbit, mbit, gbit, B/s, KB/s, MB/s)");
  CHECK(parse_link_rule("10.0.0.2:7000").error().message ==
        "invalid argument: bad link '10.0.0.2:7000': expected HOST:PORT=SPEC (e.g. 10.0.0.2:7000=delay:40ms,bw:100mbit)");
  CHECK(parse_link_rule("h:7000=delay:40ms,speed:3").error().message ==
        "invalid argument: bad link 'delay:40ms,speed:3': unknown key 'speed' (delay, jitter, bw, burst, setup)");
  CHECK(parse_link_rule("h:7000=delay:4xs").error().message ==
        "invalid argument: bad link 'delay:4xs': bad duration '4xs': unknown unit 'xs' (us, ms, s)");
  CHECK(parse_link_rule("h:0=delay:1ms").error().message == "invalid argument: bad link 'h:0=delay:1ms': bad port '0'");
  CHECK(parse_link_rule("::1:80=delay:1ms").error().message ==
        "invalid argument: bad link '::1:80=delay:1ms': an IPv6 destination needs brackets: [ADDR]:PORT");
  CHECK(parse_link_spec("delay:1ms,jitter:2ms").error().message ==
        "invalid argument: bad link 'delay:1ms,jitter:2ms': jitter larger than the delay");
  CHECK(find_link_profile("moon").error().message ==
        "invalid argument: unknown link profile 'moon' (known: seed-wan, lan, wifi, 3g)");
}

TEST_CASE("rules match the most specific destination, and profiles give one-way specs") {
  LinkModel model;
  model.rules.push_back(*parse_link_rule("*=delay:1ms"));
  model.rules.push_back(*parse_link_rule("10.0.0.2=delay:2ms"));
  model.rules.push_back(*parse_link_rule("10.0.0.2:7000=delay:3ms"));
  model.rules.push_back(*parse_link_rule("[::1]:7000=delay:4ms"));
  CHECK(model.match("10.0.0.2", 7000)->spec.delay == 3ms);
  CHECK(model.match("10.0.0.2", 7001)->spec.delay == 2ms);
  CHECK(model.match("10.0.0.3", 7000)->spec.delay == 1ms);
  CHECK(model.match("::1", 7000)->spec.delay == 4ms);
  CHECK(LinkModel{}.match("10.0.0.2", 7000) == nullptr);

  auto wan = profile_link_spec("seed-wan:wa-virginia");
  REQUIRE(wan.ok());
  CHECK(wan->delay == 40800us);  // half of 81.6 ms each way
  CHECK(wan->setup == 81600us);
  CHECK(profile_link_spec("seed-wan:va-local")->delay == 650us);
  CHECK(profile_link_spec("lan")->bandwidth_bps == 1'000'000'000u);
  CHECK_ERROR(profile_link_spec("seed-wan:mars"), Errc::invalid_argument, "wa-virginia");
  CHECK(parse_link_spec("delay:40ms,bw:100mbit")->to_string() == "delay:40ms,bw:100000000bit");
}

TEST_CASE("the shaper charges size over bandwidth, keeps order, and its jitter repeats with the seed") {
  using Clock = LinkShaper::Clock;
  Clock::time_point t0 = Clock::now();
  LinkShaper shaper(*parse_link_spec("delay:10ms,bw:8mbit"), 1);  // 1 byte per microsecond
  CHECK(shaper.arrival(t0, 1000) - t0 == 11ms);
  // Sent at once behind it: waits for the first to drain.
  CHECK(shaper.arrival(t0, 1000) - t0 == 12ms);
  // After the bucket drained, idle time does not bank tokens beyond the burst (0 here).
  CHECK(shaper.arrival(t0 + 1s, 1000) - t0 == 1s + 11ms);

  auto draws = [](std::uint64_t seed) {
    LinkShaper s(*parse_link_spec("delay:20ms,jitter:5ms"), seed);
    std::vector<Clock::duration> out;
    Clock::time_point base{};
    for (int i = 0; i < 50; ++i) out.push_back(s.arrival(base + std::chrono::seconds(i), 10) - (base + std::chrono::seconds(i)));
    return out;
  };
  auto a = draws(7), b = draws(7), c = draws(8);
  CHECK(a == b);
  CHECK(a != c);
  for (auto d : a) {
    CHECK(d >= 15ms);
    CHECK(d <= 25ms);
  }
}

TEST_CASE("on loopback a round trip costs two one-way delays when both ends are configured") {
  TransportOptions server_side;
  server_side.links = model_of("*=delay:25ms");
  Loopback net(server_side);
  TransportOptions client_side;
  client_side.links = model_of(net.bound.to_string() + "=delay:25ms,setup:30ms");
  auto link = make_link(net.io.get_executor(), net.bound, client_side);
  double first = net.timed_request(link, 100);  // pays the set-up too
  std::vector<double> rtts;
  for (int i = 0; i < 5; ++i) rtts.push_back(net.timed_request(link, 100));
  std::sort(rtts.begin(), rtts.end());
  // The lower bounds are the link's; the upper ones leave room for a loaded machine's scheduling
  // (tests/support/time_scale.hpp), never as far as a broken link's time (each delay paid twice).
  using test_support::slack_bound_ms;
  CHECK(rtts[2] >= 50.0);
  CHECK(rtts[2] < slack_bound_ms(50.0, 25.0, 100.0));
  CHECK(first >= 80.0);

  // Without the server's rule only the request is delayed.
  Loopback plain(TransportOptions{});
  TransportOptions one_side;
  one_side.links = model_of(plain.bound.to_string() + "=delay:25ms");
  auto half = make_link(plain.io.get_executor(), plain.bound, one_side);
  (void)plain.timed_request(half, 10);
  double one_way = plain.timed_request(half, 10);
  CHECK(one_way >= 25.0);
  CHECK(one_way < slack_bound_ms(25.0, 20.0, 50.0));  // broken: the reply delayed too
}

TEST_CASE("on loopback a big payload costs its size over the bandwidth") {
  TransportOptions server_side;
  Loopback net(server_side);
  TransportOptions client_side;
  client_side.links = model_of(net.bound.to_string() + "=bw:40mbit");
  auto link = make_link(net.io.get_executor(), net.bound, client_side);
  (void)net.timed_request(link, 10);
  // 1 MB at 40 Mbit/s (5 MB/s): 200 ms.
  double took = net.timed_request(link, 1'000'000);
  CHECK(took >= 199.0);
  // Room for scheduling (tests/support/time_scale.hpp), below a broken link's 400 ms (the
  // bytes charged twice).
  CHECK(took < test_support::slack_bound_ms(200.0, 100.0, 400.0));
}
