// The payload writer's growth: what it writes does not depend on how its buffer grew, and a
// buffer reserved ahead for a whole message is not zero-filled ahead of the fields.
#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/wire_io.hpp"
#include "sojourn/core/messages.hpp"

using namespace sojourn;

namespace {

// Counts the bytes a vector value-initialises (what resize zero-fills); copies are not counted.
std::size_t g_zero_filled = 0;

template <class T>
struct CountingAlloc {
  using value_type = T;
  CountingAlloc() = default;
  template <class U>
  CountingAlloc(const CountingAlloc<U>&) noexcept {}
  T* allocate(std::size_t n) { return std::allocator<T>().allocate(n); }
  void deallocate(T* p, std::size_t n) noexcept { std::allocator<T>().deallocate(p, n); }
  template <class U>
  void construct(U* p) {
    g_zero_filled += sizeof(U);
    ::new (static_cast<void*>(p)) U();
  }
  template <class U, class A, class... Rest>
  void construct(U* p, A&& a, Rest&&... rest) {
    ::new (static_cast<void*>(p)) U(std::forward<A>(a), std::forward<Rest>(rest)...);
  }
  template <class U>
  bool operator==(const CountingAlloc<U>&) const noexcept { return true; }
};

using CountedBytes = std::vector<std::uint8_t, CountingAlloc<std::uint8_t>>;

// A 1 MB field between small ones, as a TRANSFER's state is.
template <class W>
void write_fields(W& w, const std::string& large, int small_after) {
  w.string("agent.step");
  w.u32(7);
  w.string(large);
  for (int i = 0; i < small_after; ++i) {
    w.u64(static_cast<std::uint64_t>(i) * 2654435761u);
    w.string("k" + std::to_string(i));
  }
}

}  // namespace

TEST_CASE("a writer over a buffer reserved for the whole message zero-fills no more than a few pages") {
  const std::string large(1 << 20, 'x');
  CountedBytes before;
  before.reserve(8 + large.size() + 64 * 1024);
  const std::uint8_t* at = before.data();
  g_zero_filled = 0;
  wire::BasicWriter<CountedBytes> w(std::move(before));
  write_fields(w, large, 2000);
  CountedBytes out = w.take();
  // The reserved room held the message: written in place, no reallocation.
  CHECK(out.data() == at);
  // Before, the first field's growth zero-filled the whole capacity (1.06 MB) and the
  // state was then copied over the zeroes.
  CHECK(g_zero_filled < 64 * 1024);
}

TEST_CASE("what the writer writes does not depend on how its buffer grew") {
  for (std::size_t large_size : {std::size_t{0}, std::size_t{100}, std::size_t{4095}, std::size_t{4096},
                                 std::size_t{64 * 1024 - 1}, std::size_t{64 * 1024}, std::size_t{1 << 20}}) {
    CAPTURE(large_size);
    const std::string large(large_size, 'q');
    for (int small_after : {0, 1, 300, 5000}) {
      CAPTURE(small_after);
      wire::Writer grown;
      write_fields(grown, large, small_after);
      const std::vector<std::uint8_t> a = grown.take();
      for (std::size_t reserved : {std::size_t{0}, std::size_t{16}, a.size() / 2, a.size(), a.size() + 100000}) {
        CAPTURE(reserved);
        std::vector<std::uint8_t> before;
        before.reserve(reserved);
        wire::Writer ahead(std::move(before));
        write_fields(ahead, large, small_after);
        CHECK(ahead.take() == a);
      }
      // After bytes already written (a frame's header before its payload).
      std::vector<std::uint8_t> header{1, 2, 3, 4, 5};
      header.reserve(a.size() + 5);
      wire::Writer after_header(std::move(header));
      write_fields(after_header, large, small_after);
      const std::vector<std::uint8_t> b = after_header.take();
      REQUIRE(b.size() == a.size() + 5);
      CHECK(std::vector<std::uint8_t>(b.begin(), b.begin() + 5) == std::vector<std::uint8_t>{1, 2, 3, 4, 5});
      CHECK(std::vector<std::uint8_t>(b.begin() + 5, b.end()) == a);
    }
  }
}

TEST_CASE("a call sized ahead encodes as one grown from nothing and decodes back") {
  Value state = Value::table();
  state.set("payload", std::string(1 << 20, 'x'));
  state.set("n", Value(std::int64_t{42}));
  Value stops = Value::table();
  for (int i = 1; i <= 200; ++i) stops.set(Value(static_cast<std::int64_t>(i)), Value("127.0.0.1:" + std::to_string(9000 + i)));
  state.set("stops", stops);
  CallRequest call{"agent.transfer", Value::array({state})};
  const std::vector<std::uint8_t> grown = encode(call);
  const std::vector<std::uint8_t> sized = encode(call, wire::encoded_size(call.args));
  CHECK(sized == grown);
  Result<CallRequest> back = decode_call(sized);
  REQUIRE(back.ok());
  CHECK(back->service == "agent.transfer");
  CHECK(deep_equal(back->args, call.args));
}
