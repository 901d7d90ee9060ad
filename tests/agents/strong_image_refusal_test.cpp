// Strong mobility between nodes (issue 13), hostile images: tampered on the way (whole or as a
// piece), from another guest build, corrupt but well hashed, or pieces that lie about their
// size; each is refused or kills only its own guest, and the node keeps serving.
#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "agents/agent_messages.hpp"  // agents/: the image pieces
#include "agents/node_testing.hpp"  // agents/: the image hook
#include "sandbox/image/heap_image.hpp"
#include "sojourn/agents/node.hpp"
#include "tests/agents/strong_support.hpp"
#include "tests/support/cluster.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;
using namespace sojourn::strong_test;
using namespace std::chrono_literals;
using sojourn::test::Cluster;
namespace image = sojourn::sandbox::image;

// A strong hop from node 0 to node 1 whose sealed image has byte `at(size)` flipped on the way:
// the agent is stranded at its source by the image's hash, and nothing is resident at node 1.
static void check_tampered_hop_refused(Cluster& c, const Value& state, std::size_t (*at)(std::size_t)) {
  testing::set_image_hook(c[0], [at](std::vector<std::uint8_t>& bytes, std::string&) { bytes[at(bytes.size())] ^= 0x01; });
  auto id = launch_strong(c[0], bundle_of(kHop), state);
  REQUIRE(id.ok());
  AgentStatus s = wait_stranded(c[0], *id);
  CHECK(s.status == AgentState::stranded);
  CHECK(s.reason.find("heap image hash mismatch") != std::string::npos);
  CHECK(c[1].stats().agents_resident == 0);
  testing::set_image_hook(c[0], nullptr);
}

TEST_CASE("a tampered image is refused by its hash and the agent stays at its source") {
  Cluster c = strong_cluster(2);
  Value state = Value::table();
  state.set("stops", Value::array({c.addr[1]}));
  check_tampered_hop_refused(c, state, [](std::size_t size) { return size - 1; });
}

TEST_CASE("an image riding whole in its TRANSFER is refused by its hash wherever a byte of it is flipped") {
  // A state of ~192 KB of bytes LZ4 cannot shrink: an image of several 64 KB spans, still well
  // inside one frame (sent whole in the TRANSFER, not in pieces).
  Cluster c = strong_cluster(2);
  std::string pad(192u << 10, '\0');
  std::uint32_t x = 2463534242u;
  for (char& ch : pad) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    ch = static_cast<char>(x & 0xffu);
  }
  Value state = Value::table();
  state.set("stops", Value::array({c.addr[1]}));
  state.set("pad", Value(pad));
  std::size_t seen = 0;
  testing::set_image_hook(c[0], [&seen](std::vector<std::uint8_t>& bytes, std::string&) { seen = bytes.size(); });
  auto honest = launch_strong(c[0], bundle_of(kHop), state);
  REQUIRE(honest.ok());
  AgentStatus fine = run_to_end(c[0], *honest);
  REQUIRE_MESSAGE(fine.status == AgentState::finished, fine.reason);
  CHECK(fine.result.get(1).as_string() == "ok 3 at " + c.addr[1]);
  REQUIRE(seen > (160u << 10));
  // Past the header, at 64 KB, the middle, the last byte.
  check_tampered_hop_refused(c, state, [](std::size_t) { return std::size_t{4096}; });
  check_tampered_hop_refused(c, state, [](std::size_t) { return std::size_t{64u << 10}; });
  check_tampered_hop_refused(c, state, [](std::size_t size) { return size / 2 + 1; });
  check_tampered_hop_refused(c, state, [](std::size_t size) { return size - 1; });
  CHECK(c[1].stats().agents_resident == 0);
}

TEST_CASE("a piece tampered on the way is refused by the image's hash before the guest runs") {
  // Frames of 8 KB: the image (~20 KB) goes in 4 KB pieces.
  Cluster c(2, [](int, NodeOptions& o) {
    o.peer_isolation = Isolation::process;
    o.max_payload = 8u << 10;
  });
  Value state = Value::table();
  state.set("stops", Value::array({c.addr[1]}));
  check_tampered_hop_refused(c, state, [](std::size_t size) { return size / 2; });
  // The destination keeps serving: an honest image of the same size moves.
  auto next = launch_strong(c[0], bundle_of(kHop), state);
  REQUIRE(next.ok());
  AgentStatus n = run_to_end(c[0], *next);
  CHECK(n.status == AgentState::finished);
  CHECK(n.result.get(1).as_string() == "ok 3 at " + c.addr[1]);
}

TEST_CASE("an image from another guest build is refused by name and the agent stays at its source") {
  Cluster c = strong_cluster(2);
  testing::set_image_hook(c[0], [](std::vector<std::uint8_t>& bytes, std::string& sha256) {
    for (std::size_t i = 16; i < 48; ++i) bytes[i] = 0x22;  // the build id field (format 2)
    image::reseal(bytes);
    sha256 = sha256_hex(bytes);
  });
  Value state = Value::table();
  state.set("stops", Value::array({c.addr[1]}));
  auto id = launch_strong(c[0], bundle_of(kHop), state);
  REQUIRE(id.ok());
  // Refused at the TRANSFER: the agent is not lost, it stays at its source.
  AgentStatus s = wait_stranded(c[0], *id);
  CHECK(s.status == AgentState::stranded);
  CHECK(s.reason.find("image from guest build 2222222222222222, this node runs ") != std::string::npos);
  CHECK(c[1].stats().agents_resident == 0);
  CHECK(c[0].stats().agents_resident == 1);
}

TEST_CASE("a corrupt but well-hashed image kills only its guest and the node keeps serving") {
  Cluster c = strong_cluster(2);
  auto build = image::build_id_of(guest_path());
  REQUIRE(build);
  testing::set_image_hook(c[0], [build = *build](std::vector<std::uint8_t>& bytes, std::string& sha256) {
    auto header = image::peek_header(bytes);
    REQUIRE(header);
    auto opened = image::open_image(bytes, {build, header->arena_base, header->arena_bytes});
    REQUIRE(opened);
    std::vector<std::uint8_t> used = opened->used;
    for (std::size_t i = 4096; i < used.size(); i += 8) used[i] ^= 0xa5;
    auto bad = image::take_image({build, header->arena_base, header->arena_bytes, header->agent_handle}, used);
    REQUIRE(bad);
    bytes = std::move(*bad);
    sha256 = sha256_hex(bytes);
  });
  Value state = Value::table();
  state.set("stops", Value::array({c.addr[1]}));
  auto id = launch_strong(c[0], bundle_of(kHop), state);
  REQUIRE(id.ok());
  AgentStatus s = run_to_end(c[0], *id);
  CHECK(s.status == AgentState::failed);
  CHECK_FALSE(s.reason.empty());
  CHECK(s.location == c.addr[1]);
  // The destination goes on: a healthy strong agent launched there moves and finishes.
  Value back = Value::table();
  back.set("stops", Value::array({c.addr[0]}));
  auto next = launch_strong(c[1], bundle_of(kHop), back);
  REQUIRE(next.ok());
  AgentStatus fine = run_to_end(c[1], *next);
  REQUIRE_MESSAGE(fine.status == AgentState::finished, fine.reason);
  CHECK(fine.result.get(1).as_string() == "ok 3 at " + c.addr[0]);
  CHECK(c[1].call_local("kv.get", Value::array({"price"}))->as_integer() == 110);
}

TEST_CASE("image pieces are checked before they are kept, and the node keeps serving") {
  Cluster c = strong_cluster(2);
  auto build = image::build_id_of(guest_path());
  REQUIRE(build.ok());
  // A well-formed image of one page that declares an arena of 64 GiB: refused at its first
  // piece, before anything is kept.
  std::vector<std::uint8_t> page(image::kPageBytes, 0);
  page[0] = 1;
  auto huge = image::take_image({*build, 0x1000'0000'0000, std::uint64_t{64} << 30, 0}, page);
  REQUIRE(huge.ok());
  ImagePart part;
  part.id = std::string(32, 'd');
  part.epoch = 1;
  part.image_sha256 = sha256_hex(*huge);
  part.total_bytes = huge->size();
  part.bytes = *huge;
  CHECK_ERROR(c[0].call(c.addr[1], "agent.image_part", message_args(encode(part))), Errc::sandbox_refused,
              "heap image declares an arena of 68719476736 bytes, above the memory quota's");
  // An honest header with a total far beyond what its payload can seal to.
  auto small = image::take_image({*build, 0x1000'0000'0000, 4u << 20, 0}, page);
  REQUIRE(small.ok());
  part.image_sha256 = sha256_hex(*small);
  part.bytes = *small;
  part.total_bytes = std::uint64_t{1} << 40;
  CHECK_ERROR(c[0].call(c.addr[1], "agent.image_part", message_args(encode(part))), Errc::sandbox_refused,
              "is larger than its payload");
  // A piece with no first piece before it, and a piece past its declared total.
  part.total_bytes = small->size() + 10;
  part.offset = 100;
  const std::vector<std::uint8_t> abc{'a', 'b', 'c'}, eleven(11, 'x');
  part.bytes = abc;
  CHECK_ERROR(c[0].call(c.addr[1], "agent.image_part", message_args(encode(part))), Errc::invalid_argument,
              "follows no piece before it");
  part.offset = small->size();
  part.bytes = eleven;
  CHECK_ERROR(c[0].call(c.addr[1], "agent.image_part", message_args(encode(part))), Errc::invalid_argument,
              "bad agent message: image part: 11 bytes at offset");
  // A staged image that no TRANSFER claims takes no agent's place: a real one still moves.
  part.offset = 0;
  part.total_bytes = small->size();
  part.bytes = *small;
  CHECK(c[0].call(c.addr[1], "agent.image_part", message_args(encode(part))).ok());
  Value state = Value::table();
  state.set("stops", Value::array({c.addr[1]}));
  auto id = launch_strong(c[0], bundle_of(kHop), state);
  REQUIRE(id.ok());
  AgentStatus s = run_to_end(c[0], *id);
  CHECK(s.result.get(1).as_string() == "ok 3 at " + c.addr[1]);
}
