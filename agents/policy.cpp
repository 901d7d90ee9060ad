// The node policy: parsing its JSON file (every field checked, unknown ones refused) and
// matching a signer and a peer to a rule.
#include "sojourn/agents/policy.hpp"

#include <fstream>
#include <sstream>

#include "sojourn/core/json.hpp"
#include "sojourn/core/signature.hpp"
#include "sojourn/core/value.hpp"
#include "sojourn/transports/address.hpp"

namespace sojourn {

namespace {

// Thrown while parsing, turned into bad_policy at Policy::parse's edge.
struct PolicyError {
  std::string where;
  std::string what;
};

[[noreturn]] void fail(const std::string& where, const std::string& what) { throw PolicyError{where, what}; }

void only_fields(const Value& object, const std::string& where, std::initializer_list<std::string_view> allowed) {
  if (!object.is_table()) fail(where, "must be a JSON object");
  object.for_each([&](const Value& key, const Value&) {
    if (!key.is_string()) fail(where, "must be a JSON object");
    for (auto a : allowed) {
      if (key.as_string() == a) return;
    }
    fail(where, "unknown field '" + key.as_string() + "'");
  });
}

std::string text_field(const Value& v, const std::string& where) {
  if (!v.is_string() || v.as_string().empty()) fail(where, "must be a non-empty string");
  return v.as_string();
}

std::uint64_t count_field(const Value& v, const std::string& where) {
  if (!v.is_integer() || v.as_integer() < 0) fail(where, "must be a whole number, 0 or more");
  return static_cast<std::uint64_t>(v.as_integer());
}

std::uint32_t count32_field(const Value& v, const std::string& where) {
  std::uint64_t n = count_field(v, where);
  if (n > 0xffffffffu) fail(where, "must be at most 4294967295");
  return static_cast<std::uint32_t>(n);
}

std::vector<std::string> strings_field(const Value& v, const std::string& where) {
  if (!v.is_table() || v.size() != v.length()) fail(where, "must be a JSON array of strings");
  std::vector<std::string> out;
  for (std::size_t i = 1; i <= v.length(); ++i) {
    out.push_back(text_field(v.get(static_cast<std::int64_t>(i)), where + "[" + std::to_string(i - 1) + "]"));
  }
  return out;
}

PolicyQuotas parse_quotas(const Value& q, const std::string& where) {
  only_fields(q, where, {"cpu_per_run", "cpu_per_hop", "memory_bytes", "wall_ms", "max_hops", "max_state_bytes",
                         "messages_per_second"});
  PolicyQuotas out;
  auto opt = [&](const char* name, auto& field, auto parse) {
    Value v = q.get(name);
    if (!v.is_nil()) field = parse(v, where + "." + name);
  };
  opt("cpu_per_run", out.cpu_per_run, count_field);
  opt("cpu_per_hop", out.cpu_per_hop, count_field);
  opt("memory_bytes", out.memory_bytes, count_field);
  opt("wall_ms", out.wall_ms, count32_field);
  opt("max_hops", out.max_hops, count32_field);
  opt("max_state_bytes", out.max_state_bytes, count_field);
  opt("messages_per_second", out.messages_per_second, count32_field);
  return out;
}

// Why a `destinations` entry is not one (empty when it is).
std::string destination_pattern_error(const std::string& pattern) {
  if (pattern == "*" || pattern == "peers" || pattern == "known") return {};
  std::string text = pattern;
  // "HOST:*": any port of HOST, checked as an address with some port.
  if (text.size() > 2 && text.compare(text.size() - 2, 2, ":*") == 0) text.replace(text.size() - 1, 1, "0");
  auto address = parse_address(text);
  if (!address || address->kind != Address::Kind::tcp) {
    return "'" + pattern + "' is not HOST:PORT, HOST:*, peers, known or *";
  }
  return {};
}

PolicyRule parse_rule(const Value& r, const std::string& where, bool is_default,
                      const std::map<std::string, std::string>& keys) {
  if (is_default) {
    only_fields(r, where, {"name", "comment", "refuse", "strong", "isolation", "quotas", "services", "destinations"});
  } else {
    only_fields(r, where,
                {"name", "comment", "signer", "peer", "refuse", "strong", "isolation", "quotas", "services", "destinations"});
  }
  PolicyRule rule;
  rule.name = where;
  if (Value v = r.get("name"); !v.is_nil()) rule.name = text_field(v, where + ".name");
  if (Value v = r.get("signer"); !v.is_nil()) {
    std::string s = text_field(v, where + ".signer");
    if (s != "*" && !is_key_fingerprint(s) && keys.count(s) == 0) {
      fail(where + ".signer", "unknown key '" + s + "' (name it under \"keys\", or give its fingerprint)");
    }
    rule.signer = s;
  }
  if (Value v = r.get("peer"); !v.is_nil()) rule.peer = text_field(v, where + ".peer");
  if (Value v = r.get("refuse"); !v.is_nil()) {
    if (!v.is_bool()) fail(where + ".refuse", "must be true or false");
    rule.refuse = v.as_bool();
  }
  if (Value v = r.get("strong"); !v.is_nil()) {
    if (!v.is_bool()) fail(where + ".strong", "must be true or false");
    rule.allow_strong = v.as_bool();
  }
  if (Value v = r.get("isolation"); !v.is_nil()) {
    std::vector<std::string> names = v.is_string() ? std::vector<std::string>{v.as_string()}
                                                   : strings_field(v, where + ".isolation");
    if (names.empty()) fail(where + ".isolation", "must name at least one level");
    rule.isolation.clear();
    for (const auto& n : names) {
      auto level = parse_isolation(n);
      if (!level) fail(where + ".isolation", "unknown level '" + n + "' (expected trusted, process or microvm)");
      rule.isolation.push_back(*level);
    }
  }
  if (Value v = r.get("quotas"); !v.is_nil()) rule.quotas = parse_quotas(v, where + ".quotas");
  if (Value v = r.get("services"); !v.is_nil()) rule.services = strings_field(v, where + ".services");
  if (Value v = r.get("destinations"); !v.is_nil()) {
    rule.destinations = strings_field(v, where + ".destinations");
    for (std::size_t i = 0; i < rule.destinations->size(); ++i) {
      if (auto why = destination_pattern_error((*rule.destinations)[i]); !why.empty()) {
        fail(where + ".destinations[" + std::to_string(i) + "]", why);
      }
    }
  }
  return rule;
}

std::string read_text(const std::string& path, bool* ok) {
  std::ifstream in(path, std::ios::binary);
  *ok = static_cast<bool>(in);
  std::ostringstream text;
  if (*ok) text << in.rdbuf();
  return text.str();
}

}  // namespace

bool PolicyRule::grants(std::string_view service) const {
  if (!services) return true;
  for (const auto& pattern : *services) {
    if (pattern == "*" || pattern == service) return true;
    // "kv.*": the prefix up to and including the dot.
    if (pattern.size() >= 2 && pattern.compare(pattern.size() - 2, 2, ".*") == 0 &&
        service.substr(0, pattern.size() - 1) == std::string_view(pattern).substr(0, pattern.size() - 1)) {
      return true;
    }
  }
  return false;
}

Result<Policy> Policy::parse(std::string_view json, const std::string& base_dir) {
  auto doc = value_from_json(json);
  if (!doc) return make_error(Errc::bad_policy, "bad policy: " + doc.error().message);
  Policy p;
  try {
    only_fields(*doc, "the policy", {"comment", "keys", "rules", "default"});
    if (Value keys = doc->get("keys"); !keys.is_nil()) {
      if (!keys.is_table()) fail("keys", "must be a JSON object of name: fingerprint or key file");
      keys.for_each([&](const Value& k, const Value& v) {
        if (!k.is_string()) fail("keys", "must be a JSON object");
        const std::string where = "keys." + k.as_string();
        std::string spec = text_field(v, where);
        if (!is_key_fingerprint(spec)) {
          // A key or certificate file (PEM), relative to the policy file.
          const std::string path = spec.front() == '/' ? spec : base_dir + "/" + spec;
          bool ok = false;
          std::string pem = read_text(path, &ok);
          if (!ok) fail(where, "cannot read " + path);
          auto pub = public_key_from_pem(pem);
          if (!pub) fail(where, path + ": " + pub.error().message);
          spec = key_fingerprint(*pub);
        }
        p.keys_[k.as_string()] = spec;
      });
    }
    if (Value rules = doc->get("rules"); !rules.is_nil()) {
      if (!rules.is_table() || rules.size() != rules.length()) fail("rules", "must be a JSON array of rules");
      for (std::size_t i = 1; i <= rules.length(); ++i) {
        p.rules_.push_back(parse_rule(rules.get(static_cast<std::int64_t>(i)), "rules[" + std::to_string(i - 1) + "]", false, p.keys_));
      }
    }
    if (Value d = doc->get("default"); !d.is_nil()) {
      p.default_ = parse_rule(d, "default", true, p.keys_);
    } else {
      // Without a default, whatever no rule names is refused.
      p.default_.name = "default";
      p.default_.refuse = true;
    }
  } catch (const PolicyError& e) {
    return make_error(Errc::bad_policy, "bad policy: " + e.where + ": " + e.what);
  }
  return p;
}

Result<Policy> Policy::load(const std::string& path) {
  bool ok = false;
  std::string text = read_text(path, &ok);
  if (!ok) return make_error(Errc::bad_policy, "bad policy: cannot read " + path);
  auto slash = path.find_last_of('/');
  return parse(text, slash == std::string::npos ? "." : path.substr(0, slash));
}

bool Policy::signer_matches(const std::string& wanted, std::string_view signer) const {
  if (signer.empty()) return false;
  if (wanted == "*") return true;
  auto named = keys_.find(wanted);
  return (named != keys_.end() ? named->second : wanted) == signer;
}

const PolicyRule& Policy::match(std::string_view signer, std::string_view peer_name,
                                std::string_view peer_fingerprint) const {
  const bool authenticated = !peer_name.empty() || !peer_fingerprint.empty();
  for (const auto& rule : rules_) {
    if (rule.signer && !signer_matches(*rule.signer, signer)) continue;
    if (rule.peer && (!authenticated || (*rule.peer != "*" && *rule.peer != peer_name && *rule.peer != peer_fingerprint))) {
      continue;
    }
    return rule;
  }
  return default_;
}

std::string Policy::signer_name(std::string_view fingerprint) const {
  for (const auto& [name, fpr] : keys_) {
    if (fpr == fingerprint) return name;
  }
  return std::string(fingerprint.substr(0, 16));
}

Error policy_refusal(const PolicyRule& rule, const std::string& what) {
  return make_error(Errc::policy_refused, "refused by the node's policy: rule " + rule.name + " refuses " + what);
}

}  // namespace sojourn
