// libFuzzer target: an agent record as a TRANSFER carries it (a Value from the wire, then
// record_from_value). An accepted record converts back and is accepted again, unchanged.
#include <cstdint>
#include <span>

#include "agents/agent_record.hpp"
#include "tests/fuzz/fuzz_check.hpp"

using namespace sojourn;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto v = decode_value(std::span<const std::uint8_t>(data, size));
  if (!v) return 0;
  (void)hops_from_value(*v);
  (void)strings_from_value(*v);
  (void)field_string(*v, "id");
  (void)field_u64(*v, "epoch");
  auto r = record_from_value(*v);
  if (!r) return 0;
  auto again = record_from_value(record_to_value(*r));
  fuzz::check(again.ok(), "a record converted back is accepted");
  fuzz::check(again->id == r->id && again->epoch == r->epoch && again->itinerary == r->itinerary &&
                  again->quotas == r->quotas && again->cpu_left == r->cpu_left && again->log == r->log &&
                  again->delivered == r->delivered && again->mailbox.size() == r->mailbox.size() &&
                  again->hops.size() == r->hops.size() && deep_equal(again->state, r->state),
              "record round trip");
  return 0;
}
