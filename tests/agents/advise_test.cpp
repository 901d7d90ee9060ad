// The cost model and the advisor on textbook cases, and the calibration file.
#include <doctest/doctest.h>

#include "sojourn/agents/advise.hpp"
#include "tests/support/error_checks.hpp"
#include "tests/support/temp_dir.hpp"

using namespace sojourn;

namespace {

Workload task(double rtt_ms, std::uint64_t bps, std::uint32_t n, std::uint64_t request, std::uint64_t reply, std::uint64_t code) {
  Workload w;
  w.rtt_ms = rtt_ms;
  w.bandwidth_bps = bps;
  w.interactions = n;
  w.request_bytes = request;
  w.reply_bytes = reply;
  w.code_bytes = code;
  return w;
}

}  // namespace

TEST_CASE("many interactions over a long round trip: move the code to the data, not the data") {
  // The issue's own example: Washington to Virginia, 10 requests of 200 B for 64 KB each.
  Advice a = advise(task(81.6, 100'000'000, 10, 200, 64'000, 2'000));
  CHECK(a.choice == Paradigm::rev);  // one round trip; the agent's protocol costs four
  CHECK(a.costs[0].predicted_ms > 10 * 81.6);      // client-server pays every round trip
  CHECK(a.costs[1].predicted_ms < 2 * 81.6);       // remote evaluation about one
  CHECK(a.why.find("round trip") != std::string::npos);
}

TEST_CASE("code-on-demand is chosen only when the data is here and the code at the peer") {
  FixedCosts f;
  f.eval_ms = 5;   // a jailed evaluation at the peer
  f.fetch_ms = 1;  // fetching and loading here
  Workload w = task(81.6, 100'000'000, 10, 200, 64'000, 2'000);
  CHECK(advise(w, f).choice == Paradigm::rev);
  w.data_here = true;
  CHECK(advise(w, f).choice == Paradigm::cod);
}

TEST_CASE("one small call: client-server, since shipping code costs as much or more") {
  Advice a = advise(task(81.6, 100'000'000, 1, 100, 100, 50'000));
  CHECK(a.choice == Paradigm::cs);
  CHECK(a.why.rfind("client-server", 0) == 0);
}

TEST_CASE("on a LAN one call is client-server's; with very many, code goes to the data") {
  CHECK(advise(task(0.2, 1'000'000'000, 1, 200, 1000, 2000)).choice == Paradigm::cs);
  CHECK(advise(task(0.2, 1'000'000'000, 1000, 200, 64'000, 2000)).choice != Paradigm::cs);
}

TEST_CASE("on a slow link, big code costs more than a few small calls") {
  // 3G-like: 1.6 Mbit/s; 200 KB of code is a second on the wire, three calls half of that.
  CHECK(advise(task(150, 1'600'000, 3, 100, 200, 200'000)).choice == Paradigm::cs);
  // Big replies on the same link: moving them dwarfs the code.
  CHECK(advise(task(150, 1'600'000, 3, 100, 500'000, 2'000)).choice != Paradigm::cs);
}

TEST_CASE("the model grows client-server linearly with N and keeps remote evaluation nearly flat") {
  FixedCosts f;
  double cs10 = predict(Paradigm::cs, task(81.6, 100'000'000, 10, 200, 1000, 2000), f).predicted_ms;
  double cs20 = predict(Paradigm::cs, task(81.6, 100'000'000, 20, 200, 1000, 2000), f).predicted_ms;
  double rev10 = predict(Paradigm::rev, task(81.6, 100'000'000, 10, 200, 1000, 2000), f).predicted_ms;
  double rev20 = predict(Paradigm::rev, task(81.6, 100'000'000, 20, 200, 1000, 2000), f).predicted_ms;
  CHECK(cs20 == doctest::Approx(2 * cs10).epsilon(0.001));
  CHECK(rev20 - rev10 < 1.0);
  CHECK(predict(Paradigm::ma, task(10, 0, 1, 0, 0, 0), f).round_trips == 2);
  CHECK(predict(Paradigm::cod, task(10, 8000, 1, 0, 0, 1000), f).predicted_ms ==
        doctest::Approx(10 + 1000 + f.per_kb_ms + f.fetch_ms + f.local_call_ms));
}

TEST_CASE("a calibration file round-trips, and a broken one says what is wrong") {
  test::TempDir dir;
  FixedCosts f;
  f.call_ms = 0.42;
  f.hop_ms = 3.5;
  f.source = "test";
  REQUIRE(save_calibration(dir / "c.json", f).ok());
  auto back = load_calibration(dir / "c.json");
  REQUIRE(back.ok());
  CHECK(back->call_ms == 0.42);
  CHECK(back->hop_ms == 3.5);
  CHECK(back->source == "test");
  CHECK_ERROR(load_calibration(dir.write("bad.json", "{\"call_ms\": -1}")), Errc::invalid_json, "call_ms");
  CHECK_ERROR(load_calibration(dir / "missing.json"), Errc::invalid_argument, "missing.json");
}

TEST_CASE("the itinerary model: K round trips for cs and rev, 1.5 K + 0.5 for the agent; big data favours the agent over cs") {
  ItineraryWorkload w;
  w.rtt_ms = 81.6;
  w.bandwidth_bps = 100'000'000;
  w.data_bytes = 1'000;
  FixedCosts zero;
  zero.call_ms = zero.eval_ms = zero.hop_ms = zero.local_call_ms = zero.per_kb_ms = zero.state_per_kb_ms = 0;
  w.nodes = 8;
  auto cs = predict_itinerary(Paradigm::cs, w, zero);
  auto rev = predict_itinerary(Paradigm::rev, w, zero);
  auto ma = predict_itinerary(Paradigm::ma, w, zero);
  REQUIRE(cs.ok());
  REQUIRE(rev.ok());
  REQUIRE(ma.ok());
  CHECK(cs->round_trips == 8);
  CHECK(rev->round_trips == 8);
  CHECK(ma->round_trips == doctest::Approx(12.5));
  // 8 (81.6 + 8 * 1200 B / 100 Mbit/s) = 652.8 + 0.768.
  CHECK(cs->predicted_ms == doctest::Approx(8 * (81.6 + 1200 * 8.0 / 1e5)));
  CHECK(ma->predicted_ms > rev->predicted_ms);
  // One node: the agent's itinerary is the paradigms model's one visit (two round trips).
  w.nodes = 1;
  Workload one;
  one.rtt_ms = 81.6;
  one.bandwidth_bps = 100'000'000;
  one.code_bytes = w.code_bytes;
  one.result_bytes = 0;
  CHECK(predict_itinerary(Paradigm::ma, w, FixedCosts{})->predicted_ms ==
        doctest::Approx(predict(Paradigm::ma, one, FixedCosts{}).predicted_ms));
  // 4 MB at each node: client-server pays 335 ms of wire per node, the agent none of it.
  w.nodes = 4;
  w.data_bytes = 4'000'000;
  CHECK(predict_itinerary(Paradigm::ma, w, zero)->predicted_ms < predict_itinerary(Paradigm::cs, w, zero)->predicted_ms);
  auto cod = predict_itinerary(Paradigm::cod, w, zero);
  REQUIRE_FALSE(cod.ok());
  CHECK(cod.error().message == "invalid argument: code-on-demand has no itinerary form (the data is at the nodes, not here)");
}
