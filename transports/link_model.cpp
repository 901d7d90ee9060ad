// The emulated link's parsers, profiles and shaper (link_model.hpp).
#include "sojourn/transports/link_model.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>

namespace sojourn {

namespace {

Error bad(std::string_view what, std::string_view text, std::string_view why) {
  return errors::invalid_argument("bad " + std::string(what) + " '" + std::string(text) + "': " + std::string(why));
}

// A non-negative decimal number and the unit letters after it.
bool split_number(std::string_view text, double& number, std::string& unit) {
  std::size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  if (i == 0) return false;
  std::string digits(text.substr(0, i));
  char* end = nullptr;
  number = std::strtod(digits.c_str(), &end);
  if (end != digits.c_str() + digits.size() || !std::isfinite(number) || number < 0) return false;
  unit.clear();
  for (char c : text.substr(i)) unit.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  return true;
}

std::string trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

std::string format_us(std::chrono::microseconds d) {
  char buf[48];
  if (d.count() % 1000 == 0) {
    std::snprintf(buf, sizeof buf, "%lldms", static_cast<long long>(d.count() / 1000));
  } else {
    std::snprintf(buf, sizeof buf, "%lldus", static_cast<long long>(d.count()));
  }
  return buf;
}

}  // namespace

Result<std::chrono::microseconds> parse_duration(std::string_view text) {
  double n = 0;
  std::string unit;
  if (!split_number(text, n, unit)) return bad("duration", text, "expected a number and a unit (us, ms, s)");
  double us = 0;
  if (unit == "us") us = n;
  else if (unit == "ms") us = n * 1e3;
  else if (unit == "s") us = n * 1e6;
  else if (unit.empty() && n == 0) us = 0;
  else return bad("duration", text, "unknown unit '" + unit + "' (us, ms, s)");
  if (us > 3600e6) return bad("duration", text, "longer than an hour");
  return std::chrono::microseconds(static_cast<std::int64_t>(std::llround(us)));
}

Result<std::uint64_t> parse_bandwidth(std::string_view text) {
  double n = 0;
  std::string unit;
  if (!split_number(text, n, unit)) return bad("bandwidth", text, "expected a number and a unit (bit, kbit, mbit, gbit, B/s, KB/s, MB/s)");
  double bps = 0;
  if (unit == "bit" || unit == "bps") bps = n;
  else if (unit == "kbit" || unit == "kbps") bps = n * 1e3;
  else if (unit == "mbit" || unit == "mbps") bps = n * 1e6;
  else if (unit == "gbit" || unit == "gbps") bps = n * 1e9;
  else if (unit == "b/s") bps = n * 8;
  else if (unit == "kb/s") bps = n * 8e3;
  else if (unit == "mb/s") bps = n * 8e6;
  else if (unit == "gb/s") bps = n * 8e9;
  else return bad("bandwidth", text, "unknown unit '" + unit + "' (bit, kbit, mbit, gbit, B/s, KB/s, MB/s)");
  if (bps < 1000) return bad("bandwidth", text, "below 1 kbit/s");
  if (bps > 1e12) return bad("bandwidth", text, "above 1 Tbit/s");
  return static_cast<std::uint64_t>(std::llround(bps));
}

Result<std::uint64_t> parse_size(std::string_view text) {
  double n = 0;
  std::string unit;
  if (!split_number(text, n, unit)) return bad("size", text, "expected a number and a unit (B, KB, KiB, MB, MiB, GB)");
  double bytes = 0;
  if (unit == "b" || unit.empty()) bytes = n;
  else if (unit == "kb") bytes = n * 1e3;
  else if (unit == "kib") bytes = n * 1024;
  else if (unit == "mb") bytes = n * 1e6;
  else if (unit == "mib") bytes = n * 1024 * 1024;
  else if (unit == "gb") bytes = n * 1e9;
  else if (unit == "gib") bytes = n * 1024.0 * 1024 * 1024;
  else return bad("size", text, "unknown unit '" + unit + "' (B, KB, KiB, MB, MiB, GB)");
  if (bytes > 1e12) return bad("size", text, "above 1 TB");
  return static_cast<std::uint64_t>(std::llround(bytes));
}

Result<LinkSpec> parse_link_spec(std::string_view text) {
  LinkSpec spec;
  if (trim(text).empty()) return bad("link", text, "empty (expected e.g. delay:40ms,bw:100mbit)");
  std::string_view rest = text;
  while (!rest.empty()) {
    std::size_t comma = rest.find(',');
    std::string field = trim(rest.substr(0, comma));
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    std::size_t colon = field.find(':');
    if (colon == std::string::npos) return bad("link", text, "'" + field + "' is not KEY:VALUE");
    std::string key = field.substr(0, colon), value = field.substr(colon + 1);
    if (key == "delay" || key == "jitter" || key == "setup") {
      auto d = parse_duration(value);
      if (!d) return bad("link", text, d.error().message.substr(d.error().message.find("bad ")));
      (key == "delay" ? spec.delay : key == "jitter" ? spec.jitter : spec.setup) = *d;
    } else if (key == "bw" || key == "bandwidth") {
      auto b = parse_bandwidth(value);
      if (!b) return bad("link", text, b.error().message.substr(b.error().message.find("bad ")));
      spec.bandwidth_bps = *b;
    } else if (key == "burst") {
      auto s = parse_size(value);
      if (!s) return bad("link", text, s.error().message.substr(s.error().message.find("bad ")));
      spec.burst_bytes = *s;
    } else {
      return bad("link", text, "unknown key '" + key + "' (delay, jitter, bw, burst, setup)");
    }
  }
  if (spec.jitter > spec.delay) return bad("link", text, "jitter larger than the delay");
  return spec;
}

Result<LinkRule> parse_link_rule(std::string_view text) {
  std::size_t eq = text.find('=');
  if (eq == std::string_view::npos) return bad("link", text, "expected HOST:PORT=SPEC (e.g. 10.0.0.2:7000=delay:40ms,bw:100mbit)");
  std::string where = trim(text.substr(0, eq));
  auto spec = parse_link_spec(text.substr(eq + 1));
  if (!spec) return spec.error();
  LinkRule rule;
  rule.spec = *spec;
  if (where.empty()) return bad("link", text, "no destination before '='");
  std::string host = where, port;
  if (where.front() == '[') {
    std::size_t close = where.find(']');
    if (close == std::string::npos) return bad("link", text, "unclosed '[' in the destination");
    host = where.substr(1, close - 1);
    if (close + 1 < where.size()) {
      if (where[close + 1] != ':') return bad("link", text, "expected ':' after ']'");
      port = where.substr(close + 2);
    }
  } else if (std::size_t colon = where.rfind(':'); colon != std::string::npos) {
    if (where.find(':') != colon) return bad("link", text, "an IPv6 destination needs brackets: [ADDR]:PORT");
    host = where.substr(0, colon);
    port = where.substr(colon + 1);
  }
  if (host.empty()) return bad("link", text, "no host in the destination");
  rule.host = host;
  if (!port.empty() && port != "*") {
    unsigned value = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (ec != std::errc{} || end != port.data() + port.size() || value == 0 || value > 65535) {
      return bad("link", text, "bad port '" + port + "'");
    }
    rule.port = static_cast<std::uint16_t>(value);
  }
  return rule;
}

const LinkRule* LinkModel::match(std::string_view host, std::uint16_t port) const {
  const LinkRule* by_host = nullptr;
  const LinkRule* any = nullptr;
  for (const auto& r : rules) {
    if (r.host == host && r.port && *r.port == port) return &r;
    if (r.host == host && !r.port && !by_host) by_host = &r;
    if (r.host == "*" && !any) any = &r;
  }
  return by_host ? by_host : any;
}

std::string LinkSpec::to_string() const {
  std::string out;
  auto add = [&](const std::string& s) { out += (out.empty() ? "" : ",") + s; };
  if (delay.count()) add("delay:" + format_us(delay));
  if (jitter.count()) add("jitter:" + format_us(jitter));
  if (bandwidth_bps) add("bw:" + std::to_string(bandwidth_bps) + "bit");
  if (burst_bytes) add("burst:" + std::to_string(burst_bytes) + "B");
  if (setup.count()) add("setup:" + format_us(setup));
  return out.empty() ? "delay:0" : out;
}

const std::vector<LinkProfile>& link_profiles() {
  static const std::vector<LinkProfile> profiles = {
      {"seed-wan",
       "the project's seed measurements of DNS/WAN dispatching (RTTs); bandwidth assumed 100 Mbit/s",
       {{"wa-virginia", 81.6, 100'000'000, "a client in Washington to Virginia"},
        {"wa-local", 22.5, 100'000'000, "a client in Washington to its local region"},
        {"va-washington", 62.3, 100'000'000, "a client on EC2 in Virginia to Washington"},
        {"va-local", 1.3, 100'000'000, "a client on EC2 in Virginia to its own region"}}},
      {"lan", "a switched gigabit LAN (issue 14's figures)", {{"lan", 0.2, 1'000'000'000, "0.2 ms, 1 Gbit/s"}}},
      {"wifi",
       "a home 802.11n/ac link: a few ms RTT, 30 Mbit/s (the order of Chrome DevTools' former 'WiFi' "
       "throttling preset, 30 Mbit/s down); an assumption, not a measurement",
       {{"wifi", 5.0, 30'000'000, "5 ms, 30 Mbit/s"}}},
      {"3g",
       "Lighthouse's mobile throttling (= WebPageTest 'Mobile 3G - Fast'): 150 ms RTT, 1.6 Mbit/s down, "
       "750 kbit/s up; modelled symmetric at 1.6 Mbit/s",
       {{"3g", 150.0, 1'600'000, "150 ms, 1.6 Mbit/s"}}},
  };
  return profiles;
}

Result<LinkProfile> find_link_profile(std::string_view name) {
  std::string known;
  for (const auto& p : link_profiles()) {
    if (p.name == name) return p;
    known += (known.empty() ? "" : ", ") + p.name;
  }
  return errors::invalid_argument("unknown link profile '" + std::string(name) + "' (known: " + known + ")");
}

LinkSpec one_way_spec(const ProfileLink& link) {
  LinkSpec spec;
  spec.delay = std::chrono::microseconds(static_cast<std::int64_t>(std::llround(link.rtt_ms * 500)));
  spec.bandwidth_bps = link.bandwidth_bps;
  spec.setup = std::chrono::microseconds(static_cast<std::int64_t>(std::llround(link.rtt_ms * 1000)));
  return spec;
}

Result<LinkSpec> profile_link_spec(std::string_view name) {
  std::size_t colon = name.find(':');
  auto profile = find_link_profile(name.substr(0, colon));
  if (!profile) return profile.error();
  if (colon == std::string_view::npos) return one_way_spec(profile->links.front());
  std::string known;
  for (const auto& l : profile->links) {
    if (l.name == name.substr(colon + 1)) return one_way_spec(l);
    known += (known.empty() ? "" : ", ") + l.name;
  }
  return errors::invalid_argument("unknown link '" + std::string(name.substr(colon + 1)) + "' in profile '" + profile->name +
                                  "' (known: " + known + ")");
}

std::uint64_t link_seed(std::uint64_t seed, std::string_view destination) {
  std::uint64_t h = 0xcbf29ce484222325ull ^ seed;  // FNV-1a over the destination, then a splitmix finish
  for (char c : destination) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

LinkShaper::LinkShaper(LinkSpec spec, std::uint64_t seed, std::shared_ptr<std::atomic<std::uint64_t>> sent_bytes)
    : spec_(spec), random_(seed), sent_bytes_(std::move(sent_bytes)), tokens_(static_cast<double>(spec.burst_bytes)) {}

LinkShaper::Clock::time_point LinkShaper::arrival(Clock::time_point now, std::size_t bytes) {
  Clock::time_point leaves = now;
  if (sent_bytes_) sent_bytes_->fetch_add(bytes, std::memory_order_relaxed);
  if (spec_.bandwidth_bps > 0) {
    const double bytes_per_s = static_cast<double>(spec_.bandwidth_bps) / 8.0;
    if (refilled_ != Clock::time_point{}) {
      double elapsed = std::chrono::duration<double>(now - refilled_).count();
      tokens_ = std::min(static_cast<double>(spec_.burst_bytes), tokens_ + elapsed * bytes_per_s);
    }
    refilled_ = now;
    tokens_ -= static_cast<double>(bytes);
    // A deficit is paid in time: the last byte leaves once the bucket has refilled it.
    if (tokens_ < 0) leaves = now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(-tokens_ / bytes_per_s));
  }
  auto delay = spec_.delay;
  if (spec_.jitter.count() > 0) {
    std::uniform_int_distribution<std::int64_t> draw(-spec_.jitter.count(), spec_.jitter.count());
    delay += std::chrono::microseconds(draw(random_));
    if (delay.count() < 0) delay = std::chrono::microseconds(0);
  }
  Clock::time_point at = std::max(leaves + delay, last_arrival_);
  last_arrival_ = at;
  return at;
}

}  // namespace sojourn
