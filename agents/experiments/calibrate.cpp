// `sojourn calibrate`: the node's fixed costs measured on loopback without an emulated link,
// the constants of the cost model (advise.hpp).
#include <algorithm>
#include <ctime>
#include <unistd.h>

#include "agents/experiments/experiment.hpp"
#include "agents/experiments/testbed.hpp"

namespace sojourn::experiments {

namespace {

Result<double> median_of(Testbed& bed, Paradigm p, const Task& task, int reps) {
  std::vector<double> v;
  for (int i = 0; i < reps; ++i) {
    auto r = bed.run(p, task);
    if (!r) return r.error();
    v.push_back(r->measured_ms);
  }
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

Result<FixedCosts> calibrate(bool quick) {
  Testbed bed(nullptr, 1, {});
  if (auto started = bed.start(); !started) return started.error();
  const int reps = quick ? 15 : 101;
  FixedCosts f;
  auto call = median_of(bed, Paradigm::cs, Task{1, 10, 10, 300}, reps);
  if (!call) return call.error();
  f.call_ms = *call;
  auto big = median_of(bed, Paradigm::cs, Task{1, 10, 1'000'000, 300}, std::max(5, reps / 5));
  if (!big) return big.error();
  f.per_kb_ms = std::max(0.0, (*big - *call) / 1000.0);
  auto eval1 = median_of(bed, Paradigm::rev, Task{1, 10, 10, 300}, reps);
  if (!eval1) return eval1.error();
  auto eval_many = median_of(bed, Paradigm::rev, Task{2001, 10, 10, 300}, std::max(5, reps / 5));
  if (!eval_many) return eval_many.error();
  f.local_call_ms = std::max(0.0, (*eval_many - *eval1) / 2000.0);
  f.eval_ms = std::max(0.0, *eval1 - f.local_call_ms);
  auto fetch = median_of(bed, Paradigm::cod, Task{1, 10, 10, 300}, reps);
  if (!fetch) return fetch.error();
  f.fetch_ms = std::max(0.0, *fetch - f.local_call_ms);
  auto ma = median_of(bed, Paradigm::ma, Task{1, 10, 10, 300}, std::max(5, reps / 3));
  if (!ma) return ma.error();
  // Two loopback round trips are in an agent's round trip (advise.hpp: the TRANSFER, its
  // BundleWanted and the TRANSFER with the code there, the TRANSFER home); the rest is the hops'.
  f.hop_ms = std::max(0.0, (*ma - 2 * f.call_ms - f.local_call_ms) / 2.0);
  auto small = bed.run_migration(1'000);
  auto large = bed.run_migration(4'000'000);
  if (!small) return small.error();
  if (!large) return large.error();
  f.state_per_kb_ms = std::max(0.0, (large->measured_ms - small->measured_ms) / 3'999.0);
  char host[256] = "?";
  gethostname(host, sizeof host - 1);
  std::time_t now = std::time(nullptr);
  char when[32];
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  f.source = std::string("calibrated on ") + host + " at " + when + (quick ? " (quick)" : "");
  return f;
}

}  // namespace sojourn::experiments
