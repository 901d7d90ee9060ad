// What carrying closures costs: N closures leave one run (to_value), cross the wire codec,
// and are rebuilt in a new run (push_value), for N closures of one function (counters made
// in a loop) and N distinct functions. Prints a table of medians over repeated runs.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/stats.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace {

using sojourn::Value;
using Clock = std::chrono::steady_clock;

constexpr int kRepeats = 15;

double elapsed_us(Clock::time_point since) {
  return std::chrono::duration<double, std::micro>(Clock::now() - since).count();
}

sojourn::Result<Value> run(const std::string& source, Value args) {
  sojourn::sandbox::RunInput input;
  input.source = source;
  input.args = std::move(args);
  input.limits = sojourn::Limits{1'000'000'000, 512u << 20, 60'000};
  return sojourn::sandbox::run_lua(input, nullptr);
}

// The median time of `body`, which returns false on failure.
template <class F>
double median_us(F&& body) {
  std::vector<double> samples;
  for (int i = 0; i < kRepeats; ++i) {
    const auto start = Clock::now();
    if (!body()) return -1;
    samples.push_back(elapsed_us(start));
  }
  return sojourn::bench::summarize(samples).median_us;
}

struct Row {
  std::string workload;
  std::size_t wire_bytes = 0;
  double out_us = 0, wire_us = 0, in_us = 0;
};

// `make` builds table t of closures; the same chunk returning only #t is the baseline,
// so the difference is the conversion of the closures.
Row measure(const std::string& workload, const std::string& make) {
  Row row{workload};
  const double bare = median_us([&] { return run(make + "\nreturn #t", {}).ok(); });
  Value state;
  const double with_out = median_us([&] {
    auto r = run(make + "\nreturn t", {});
    if (r.ok()) state = *r;
    return r.ok();
  });
  std::vector<std::uint8_t> bytes;
  row.wire_us = median_us([&] {
    bytes = sojourn::encode_value(state);
    return sojourn::decode_value(bytes).ok();
  });
  row.wire_bytes = bytes.size();
  const double empty_in = median_us([] { return run("return select('#', ...)", Value::array({1})).ok(); });
  const double with_in = median_us([&] { return run("return select('#', ...)", state).ok(); });
  row.out_us = with_out - bare;
  row.in_us = with_in - empty_in;
  return row;
}

std::string distinct_functions(int n) {
  std::string s = "local t, base = {}, 0\n";
  for (int i = 1; i <= n; ++i) {
    s += "t[" + std::to_string(i) + "] = function(x) base = base + x return base * " + std::to_string(i) + " end\n";
  }
  return s;
}

}  // namespace

int main() {
  std::vector<Row> rows;
  for (int n : {1, 100, 1000, 10000}) {
    rows.push_back(measure(std::to_string(n) + " counters (one function)",
                           "local t = {} for i = 1, " + std::to_string(n) +
                               " do local k = i t[i] = function() k = k + 1 return k end end"));
  }
  for (int n : {1, 100, 1000}) rows.push_back(measure(std::to_string(n) + " distinct functions", distinct_functions(n)));

  std::printf("| %-32s | %10s | %15s | %15s | %15s | %13s |\n", "closures carried", "wire bytes", "to_value (us)",
              "encode+decode", "rebuild (us)", "per closure");
  std::printf("|----------------------------------|-----------:|----------------:|----------------:|----------------:|--------------:|\n");
  for (const Row& r : rows) {
    const int n = std::stoi(r.workload);
    std::printf("| %-32s | %10zu | %15.1f | %15.1f | %15.1f | %10.2f us |\n", r.workload.c_str(), r.wire_bytes, r.out_us,
                r.wire_us, r.in_us, (r.out_us + r.wire_us + r.in_us) / n);
  }
  std::printf("\nto_value and rebuild are medians of %d runs minus the same run without the closures\n", kRepeats);
  return 0;
}
