// Tests of core's error factories (core/include/sojourn/core/error.hpp): each one gives its code
// and names the fields it was given, so call sites and tests depend on those, not on wording.
#include <doctest/doctest.h>

#include "sojourn/core/error.hpp"
#include "tests/support/error_checks.hpp"

using namespace sojourn;

TEST_CASE("the node's common errors carry their code and name what they are about") {
  CHECK_ERROR(errors::shutting_down(), Errc::shutting_down);
  CHECK_ERROR(errors::no_such_agent("a1b2"), Errc::no_such_agent, "a1b2");
  CHECK_ERROR(errors::no_such_service("kv.get"), Errc::no_such_service, "kv.get");
  CHECK_ERROR(errors::service_failed("kv.put", "disk on fire"), Errc::service_failed, "kv.put", "disk on fire");
  CHECK_ERROR(errors::no_such_module("util.text"), Errc::no_such_module, "util.text");
  CHECK_ERROR(errors::invalid_argument("limit must be non-zero"), Errc::invalid_argument, "limit must be non-zero");
  CHECK_ERROR(errors::internal("socketpair: EMFILE"), Errc::internal, "socketpair: EMFILE");
}

TEST_CASE("the limit errors name the limit that was reached") {
  CHECK_ERROR(errors::cpu_limit(100000), Errc::cpu_limit, "100000 instructions");
  CHECK_ERROR(errors::memory_limit(65536), Errc::memory_limit, "65536 bytes");
  CHECK_ERROR(errors::deadline(250), Errc::deadline, "250 ms");
}

TEST_CASE("frame and link errors name the peer, the sizes and the reason") {
  CHECK_ERROR(errors::frame_too_large(4096, 1024), Errc::frame_too_large, "4096 bytes", "1024 bytes");
  CHECK_ERROR(errors::connect_failed("127.0.0.1:1", "Connection refused"), Errc::connect_failed, "127.0.0.1:1",
              "Connection refused");
  CHECK_ERROR(errors::connection_closed("10.0.0.2:7400", "closed locally"), Errc::connection_closed, "10.0.0.2:7400",
              "closed locally");
  CHECK_ERROR(errors::remote_protocol_error("b:7400", "bad frame magic"), Errc::remote_protocol_error, "b:7400",
              "bad frame magic");
  CHECK_ERROR(errors::bad_address("localhost", "expected host:port"), Errc::bad_address, "'localhost'",
              "expected host:port");
}

TEST_CASE("an error's code has a fixed short name for JSON and logs") {
  CHECK(errc_name(errors::deadline(1).code) == "deadline");
  CHECK(errc_name(errors::bad_address("x", "y").code) == "bad_address");
}
