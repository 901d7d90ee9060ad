// The paradigms' cost model and the advisor (advise.hpp), and the calibration file.
#include "sojourn/agents/advise.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace sojourn {

std::string_view paradigm_name(Paradigm p) {
  switch (p) {
    case Paradigm::cs: return "cs";
    case Paradigm::rev: return "rev";
    case Paradigm::cod: return "cod";
    case Paradigm::ma: return "ma";
  }
  return "?";
}

std::string_view paradigm_title(Paradigm p) {
  switch (p) {
    case Paradigm::cs: return "client-server";
    case Paradigm::rev: return "remote evaluation";
    case Paradigm::cod: return "code-on-demand";
    case Paradigm::ma: return "mobile agent";
  }
  return "?";
}

namespace {
// Milliseconds to put `bytes` on a link of `bandwidth_bps` (0: unlimited) and through the
// node's encoding.
double transfer_ms(double bytes, std::uint64_t bandwidth_bps, const FixedCosts& f) {
  double wire = bandwidth_bps ? bytes * 8.0 / static_cast<double>(bandwidth_bps) * 1000.0 : 0.0;
  return wire + bytes / 1000.0 * f.per_kb_ms;
}
}  // namespace

ParadigmCost predict(Paradigm p, const Workload& w, const FixedCosts& f) {
  const double n = w.interactions;
  auto transfer = [&](double bytes) { return transfer_ms(bytes, w.bandwidth_bps, f); };
  ParadigmCost c;
  c.paradigm = p;
  switch (p) {
    case Paradigm::cs:
      c.round_trips = n;
      c.bytes = n * static_cast<double>(w.request_bytes + w.reply_bytes);
      c.predicted_ms = n * (w.rtt_ms + transfer(static_cast<double>(w.request_bytes + w.reply_bytes)) + f.call_ms);
      break;
    case Paradigm::rev:
      c.round_trips = 1;
      c.bytes = static_cast<double>(w.code_bytes + w.request_bytes + w.result_bytes);
      c.predicted_ms = w.rtt_ms + transfer(c.bytes) + f.eval_ms + n * f.local_call_ms;
      break;
    case Paradigm::cod:
      c.round_trips = 1;
      c.bytes = static_cast<double>(w.code_bytes);
      c.predicted_ms = w.rtt_ms + transfer(c.bytes) + f.fetch_ms + n * f.local_call_ms;
      break;
    case Paradigm::ma:
      // Two round trips in all. There: the TRANSFER's one way, a BundleWanted back (the code is
      // new there) and the TRANSFER again with the bundle; its COMMIT, and the arrival report
      // home, travel while the agent runs. Home: the TRANSFER's one way (the home has the code;
      // the agent ends as it arrives). Code already at the destination: one round trip less.
      c.round_trips = 2;
      c.bytes = static_cast<double>(w.code_bytes + 3 * w.state_bytes + w.result_bytes);
      c.predicted_ms = 2 * w.rtt_ms + transfer(c.bytes) + 2.0 * static_cast<double>(w.state_bytes) / 1000.0 * f.state_per_kb_ms +
                       2 * f.hop_ms + n * f.local_call_ms;
      break;
  }
  return c;
}

Result<ParadigmCost> predict_itinerary(Paradigm p, const ItineraryWorkload& w, const FixedCosts& f) {
  const double k = w.nodes;
  auto transfer = [&](double bytes) { return transfer_ms(bytes, w.bandwidth_bps, f); };
  ParadigmCost c;
  c.paradigm = p;
  switch (p) {
    case Paradigm::cs:
      c.round_trips = k;
      c.bytes = k * static_cast<double>(w.request_bytes + w.data_bytes);
      c.predicted_ms = k * (w.rtt_ms + transfer(static_cast<double>(w.request_bytes + w.data_bytes)) + f.call_ms);
      return c;
    case Paradigm::rev:
      c.round_trips = k;
      c.bytes = k * static_cast<double>(w.code_bytes + w.request_bytes + w.result_bytes);
      c.predicted_ms = k * (w.rtt_ms + transfer(static_cast<double>(w.code_bytes + w.request_bytes + w.result_bytes)) +
                            f.eval_ms + f.local_call_ms);
      return c;
    case Paradigm::ma: {
      const double state = static_cast<double>(w.state_bytes);
      // A hop to a data node: the TRANSFER's one way, a BundleWanted back (the code is new
      // there) and the TRANSFER again with the bundle; the COMMIT and the arrival report travel
      // while the agent runs. The hop home: the TRANSFER's one way (the home has the code).
      c.round_trips = 1.5 * k + 0.5;
      c.bytes = k * static_cast<double>(w.code_bytes) + (2 * k + 1) * state;
      c.predicted_ms = c.round_trips * w.rtt_ms + transfer(c.bytes) + (k + 1) * (state / 1000.0 * f.state_per_kb_ms + f.hop_ms) +
                       k * f.local_call_ms;
      return c;
    }
    case Paradigm::cod: break;
  }
  return errors::invalid_argument("code-on-demand has no itinerary form (the data is at the nodes, not here)");
}

Advice advise(const Workload& w, const FixedCosts& fixed) {
  Advice a;
  for (Paradigm p : kParadigms) a.costs.push_back(predict(p, w, fixed));
  const ParadigmCost* best = &a.costs.front();
  for (const auto& c : a.costs) {
    if (c.paradigm == Paradigm::cod && !w.data_here) continue;  // nothing here to run fetched code on
    if (c.predicted_ms < best->predicted_ms) best = &c;
  }
  a.choice = best->paradigm;
  const ParadigmCost& cs = a.costs.front();
  char buf[256];
  if (a.choice == Paradigm::cs) {
    std::snprintf(buf, sizeof buf, "client-server: %u round trip%s of %.1f ms cost less than moving %llu bytes of code",
                  w.interactions, w.interactions == 1 ? "" : "s", w.rtt_ms, static_cast<unsigned long long>(w.code_bytes));
  } else {
    std::snprintf(buf, sizeof buf, "%s: %.0f round trip%s and %.0f bytes instead of client-server's %.0f round trips and %.0f bytes",
                  std::string(paradigm_title(a.choice)).c_str(), best->round_trips, best->round_trips == 1 ? "" : "s",
                  best->bytes, cs.round_trips, cs.bytes);
  }
  a.why = buf;
  return a;
}

std::string calibration_path() {
  if (const char* p = std::getenv("SOJOURN_CALIBRATION"); p && *p) return p;
  if (const char* p = std::getenv("XDG_DATA_HOME"); p && *p) return std::string(p) + "/sojourn/calibration.json";
  if (const char* p = std::getenv("HOME"); p && *p) return std::string(p) + "/.local/share/sojourn/calibration.json";
  return "calibration.json";
}

Result<FixedCosts> load_calibration(const std::string& path) {
  std::ifstream in(path);
  if (!in) return errors::invalid_argument("cannot read calibration file '" + path + "': " + std::strerror(errno));
  std::stringstream text;
  text << in.rdbuf();
  auto j = nlohmann::json::parse(text.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error(Errc::invalid_json, "invalid JSON: calibration file '" + path + "'");
  FixedCosts f;
  const std::pair<const char*, double*> fields[] = {{"call_ms", &f.call_ms},     {"eval_ms", &f.eval_ms},
                                                    {"fetch_ms", &f.fetch_ms},   {"hop_ms", &f.hop_ms},
                                                    {"local_call_ms", &f.local_call_ms}, {"per_kb_ms", &f.per_kb_ms},
                                                    {"state_per_kb_ms", &f.state_per_kb_ms}};
  for (auto [name, field] : fields) {
    if (!j.contains(name) || !j[name].is_number() || j[name].get<double>() < 0) {
      return make_error(Errc::invalid_json, "invalid JSON: calibration file '" + path + "' lacks a non-negative number '" + name + "'");
    }
    *field = j[name].get<double>();
  }
  f.source = j.value("source", "calibration file " + path);
  return f;
}

Result<void> save_calibration(const std::string& path, const FixedCosts& f) {
  nlohmann::json j = {{"call_ms", f.call_ms},   {"eval_ms", f.eval_ms},           {"fetch_ms", f.fetch_ms},
                      {"hop_ms", f.hop_ms},     {"local_call_ms", f.local_call_ms}, {"per_kb_ms", f.per_kb_ms},
                      {"state_per_kb_ms", f.state_per_kb_ms}, {"source", f.source}};
  std::ofstream out(path, std::ios::trunc);
  if (!out) return errors::invalid_argument("cannot write calibration file '" + path + "': " + std::strerror(errno));
  out << j.dump(2) << "\n";
  if (!out) return errors::invalid_argument("cannot write calibration file '" + path + "'");
  return {};
}

}  // namespace sojourn
