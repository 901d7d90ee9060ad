// libFuzzer target: the policy parser over any JSON text, and matching with what it made.
// Key files named in a policy are read below a directory that does not exist; an input that
// could name a device, proc or sys file (directly, through "..", or with JSON escapes) is
// skipped: reading /dev/zero would only hang the fuzzer, and a policy file is the
// operator's, not a peer's.
#include <cstdint>
#include <string_view>

#include "sojourn/agents/policy.hpp"
#include "tests/fuzz/fuzz_check.hpp"

using namespace sojourn;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);  // SAFETY: bytes viewed as chars
  for (std::string_view risky : {"dev/", "proc/", "sys/", "\\/", "\\u"}) {
    if (text.find(risky) != std::string_view::npos) return 0;
  }
  auto p = Policy::parse(text, "/nonexistent-sojourn-fuzz");
  if (!p) {
    fuzz::check(p.error().code == Errc::bad_policy, "a refused policy is bad_policy");
    return 0;
  }
  (void)p->match("", "");
  const std::string fpr(64, 'a');
  (void)p->match(fpr, "peer", fpr);
  (void)p->signer_name(fpr);
  for (const PolicyRule& rule : p->rules()) (void)rule.grants("kv.get");
  (void)policy_refusal(p->default_rule(), "unsigned code");
  return 0;
}
