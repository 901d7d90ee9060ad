// Agent records as Value tables: every field checked on the way in, since a record comes
// from a peer.
#include "agents/agent_record.hpp"
#include "agents/record_step.hpp"

#include <algorithm>
#include <chrono>

#include "sojourn/core/bundle.hpp"
#include "sojourn/core/signature.hpp"

namespace sojourn {

std::string new_agent_id() { return random_nonce(); }  // 128 random bits, 32 hex digits

bool is_agent_id(std::string_view text) { return is_lower_hex(text, 32); }

std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string field_string(const Value& table, const char* key) {
  if (!table.is_table()) return {};
  Value v = table.get(key);
  return v.is_string() ? v.as_string() : std::string();
}

std::uint64_t field_u64(const Value& table, const char* key) {
  if (!table.is_table()) return 0;
  Value v = table.get(key);
  if (v.is_integer() && v.as_integer() >= 0) return static_cast<std::uint64_t>(v.as_integer());
  return 0;
}

Value strings_to_value(const std::vector<std::string>& items) {
  Value t = Value::table();
  for (const auto& s : items) t.push(s);
  return t;
}

std::vector<std::string> strings_from_value(const Value& v) {
  std::vector<std::string> out;
  if (!v.is_table()) return out;
  for (std::size_t i = 1; i <= v.length(); ++i) {
    Value item = v.get(static_cast<std::int64_t>(i));
    if (item.is_string()) out.push_back(item.as_string());
  }
  return out;
}

Value hops_to_value(const std::vector<AgentHop>& hops) {
  Value t = Value::table();
  for (const auto& h : hops) {
    Value hop = t.new_table();
    hop.set("node", h.node);
    hop.set("epoch", static_cast<std::int64_t>(h.epoch));
    hop.set("arrived_unix_ms", h.arrived_unix_ms);
    hop.set("spent_ms", h.spent_ms);
    hop.set("state_bytes", static_cast<std::int64_t>(h.state_bytes));
    hop.set("isolation", h.isolation);
    hop.set("mobility", h.mobility);
    hop.set("image_raw_bytes", static_cast<std::int64_t>(h.image_raw_bytes));
    hop.set("image_bytes", static_cast<std::int64_t>(h.image_bytes));
    hop.set("image_us", static_cast<std::int64_t>(h.image_us));
    hop.set("restore_us", static_cast<std::int64_t>(h.restore_us));
    t.push(hop);
  }
  return t;
}

std::vector<AgentHop> hops_from_value(const Value& v) {
  std::vector<AgentHop> out;
  if (!v.is_table()) return out;
  for (std::size_t i = 1; i <= v.length(); ++i) {
    Value h = v.get(static_cast<std::int64_t>(i));
    if (!h.is_table()) continue;
    AgentHop hop;
    hop.node = field_string(h, "node");
    hop.epoch = field_u64(h, "epoch");
    hop.arrived_unix_ms = static_cast<std::int64_t>(field_u64(h, "arrived_unix_ms"));
    hop.spent_ms = static_cast<std::int64_t>(field_u64(h, "spent_ms"));
    hop.state_bytes = field_u64(h, "state_bytes");
    hop.isolation = field_string(h, "isolation");
    hop.mobility = field_string(h, "mobility");
    if (hop.mobility.empty()) hop.mobility = "weak";
    hop.image_raw_bytes = field_u64(h, "image_raw_bytes");
    hop.image_bytes = field_u64(h, "image_bytes");
    hop.image_us = field_u64(h, "image_us");
    hop.restore_us = field_u64(h, "restore_us");
    out.push_back(std::move(hop));
  }
  return out;
}

namespace {
constexpr std::string_view kAgentStateNames[] = {"arriving", "queued", "running", "asleep",
                                                 "moving",   "stranded", "finished", "failed"};
static_assert(std::size(kAgentStateNames) == static_cast<std::size_t>(kLastAgentState) + 1);
}  // namespace

std::string_view agent_state_name(AgentState state) noexcept {
  const auto i = static_cast<std::size_t>(state);
  return i < std::size(kAgentStateNames) ? kAgentStateNames[i] : std::string_view("unknown");
}

std::string_view mobility_name(Mobility mobility) noexcept {
  return mobility == Mobility::strong ? "strong" : "weak";
}

Result<Mobility> parse_mobility(std::string_view name) {
  if (name == "weak") return Mobility::weak;
  if (name == "strong") return Mobility::strong;
  return errors::invalid_argument("unknown mobility " + std::string(name) + " (weak or strong)");
}

Result<AgentState> parse_agent_state(std::string_view name) {
  for (std::size_t i = 0; i < std::size(kAgentStateNames); ++i) {
    if (kAgentStateNames[i] == name) return static_cast<AgentState>(i);
  }
  return errors::invalid_argument("unknown agent state " + std::string(name));
}

Value to_value(const AgentStatus& s) {
  Value v = Value::table();
  v.set("id", s.id);
  v.set("home", s.home);
  v.set("owner", s.owner);
  v.set("location", s.location);
  v.set("epoch", static_cast<std::int64_t>(s.epoch));
  v.set("status", std::string(agent_state_name(s.status)));
  v.set("reason", s.reason);
  v.set("result", s.result.is_table() ? s.result : Value::table());
  v.set("hops", hops_to_value(s.hops));
  v.set("log", strings_to_value(s.log));
  v.set("pending_messages", static_cast<std::int64_t>(s.pending_messages));
  return v;
}

AgentRecord copy_for_step(AgentRecord& r) {
  // Set aside for the copy and given back whatever happens (the copy may throw bad_alloc):
  // `r` is the same record after the call.
  struct SetAside {
    AgentRecord& r;
    std::vector<AgentHop> hops;
    std::vector<Value> mailbox;
    std::vector<std::string> log, delivered, visited;
    explicit SetAside(AgentRecord& record)
        : r(record), hops(std::move(record.hops)), mailbox(std::move(record.mailbox)), log(std::move(record.log)),
          delivered(std::move(record.delivered)), visited(std::move(record.visited)) {}
    ~SetAside() {
      r.hops = std::move(hops);
      r.mailbox = std::move(mailbox);
      r.log = std::move(log);
      r.delivered = std::move(delivered);
      r.visited = std::move(visited);
    }
  };
  const SetAside aside(r);
  return r;
}

Value record_to_value(const AgentRecord& r) {
  Value t = Value::table();
  t.set("id", r.id);
  t.set("home", r.home);
  t.set("owner", r.owner);
  t.set("bundle", r.bundle_hash);
  t.set("entry", r.entry);
  t.set("state", r.state.is_table() ? r.state : Value::table());
  t.set("epoch", static_cast<std::int64_t>(r.epoch));
  t.set("itinerary", strings_to_value(r.itinerary));
  t.set("max_hops", static_cast<std::int64_t>(r.max_hops));
  Value q = t.new_table();
  q.set("cpu", static_cast<std::int64_t>(r.quotas.cpu_instructions));
  q.set("memory", static_cast<std::int64_t>(r.quotas.memory_bytes));
  q.set("wall_ms", static_cast<std::int64_t>(r.quotas.wall_ms));
  t.set("quotas", q);
  if (r.cpu_left) t.set("cpu_left", static_cast<std::int64_t>(*r.cpu_left));
  if (!r.signer.empty()) {
    t.set("signer", r.signer);
    t.set("signature", r.signature);
  }
  t.set("isolation", std::string(isolation_name(r.isolation)));
  t.set("created", r.created_unix_ms);
  t.set("updated", r.updated_unix_ms);
  t.set("hops", hops_to_value(r.hops));
  if (r.hops_reported != 0) t.set("hops_reported", static_cast<std::int64_t>(r.hops_reported));
  if (!r.visited.empty()) t.set("visited", strings_to_value(r.visited));
  t.set("log", strings_to_value(r.log));
  Value mailbox = Value::table();
  for (const auto& m : r.mailbox) mailbox.push(m);
  t.set("mailbox", mailbox);
  t.set("delivered", strings_to_value(r.delivered));
  t.set("launcher", r.launcher);
  t.set("report_token", r.report_token);
  t.set("mobility", std::string(mobility_name(r.mobility)));
  if (!r.image_sha256.empty()) t.set("image_sha256", r.image_sha256);
  if (r.strong_memory != 0) t.set("strong_memory", static_cast<std::int64_t>(r.strong_memory));
  return t;
}

Result<AgentRecord> record_from_value(const Value& v) {
  auto bad = [](const std::string& what) { return errors::invalid_argument("agent record " + what); };
  if (!v.is_table()) return bad("is not a table");
  AgentRecord r;
  r.id = field_string(v, "id");
  r.home = field_string(v, "home");
  r.owner = field_string(v, "owner");
  r.bundle_hash = field_string(v, "bundle");
  r.entry = field_string(v, "entry");
  r.state = v.get("state");
  r.epoch = field_u64(v, "epoch");
  r.itinerary = strings_from_value(v.get("itinerary"));
  r.max_hops = static_cast<std::uint32_t>(field_u64(v, "max_hops"));
  Value q = v.get("quotas");
  r.quotas = Limits{field_u64(q, "cpu"), field_u64(q, "memory"), static_cast<std::uint32_t>(field_u64(q, "wall_ms"))};
  if (Value left = v.get("cpu_left"); !left.is_nil()) {
    if (!left.is_integer() || left.as_integer() < 0) return bad("has an invalid cpu_left");
    r.cpu_left = static_cast<std::uint64_t>(left.as_integer());
  }
  r.signer = field_string(v, "signer");
  r.signature = field_string(v, "signature");
  auto iso = parse_isolation(field_string(v, "isolation"));
  if (!iso) return bad("has an unknown isolation level");
  r.isolation = *iso;
  r.created_unix_ms = static_cast<std::int64_t>(field_u64(v, "created"));
  r.updated_unix_ms = static_cast<std::int64_t>(field_u64(v, "updated"));
  r.hops = hops_from_value(v.get("hops"));
  r.hops_reported = field_u64(v, "hops_reported");
  r.visited = strings_from_value(v.get("visited"));
  r.log = strings_from_value(v.get("log"));
  Value mailbox = v.get("mailbox");
  if (mailbox.is_table()) {
    for (std::size_t i = 1; i <= mailbox.length(); ++i) r.mailbox.push_back(mailbox.get(static_cast<std::int64_t>(i)));
  }
  r.delivered = strings_from_value(v.get("delivered"));
  r.launcher = field_string(v, "launcher");
  r.report_token = field_string(v, "report_token");
  const std::string mobility = field_string(v, "mobility");
  auto kind = parse_mobility(mobility.empty() ? "weak" : mobility);
  if (!kind) return bad("has an unknown mobility");
  r.mobility = *kind;
  r.image_sha256 = field_string(v, "image_sha256");
  r.strong_memory = field_u64(v, "strong_memory");
  if (auto checked = check_record(r); !checked) return checked.error();
  return r;
}

Result<void> check_record(const AgentRecord& r) {
  auto bad = [](const std::string& what) { return errors::invalid_argument("agent record " + what); };
  if (!is_agent_id(r.id)) return bad("has no valid id");
  if (r.home.empty()) return bad("has no home");
  if (!is_bundle_hash(r.bundle_hash)) return bad("has no valid bundle hash");
  if (r.entry.empty()) return bad("has no entry point");
  if (!r.state.is_table()) return bad("state is not a table");
  if (!r.image_sha256.empty() && (r.mobility != Mobility::strong || !is_bundle_hash(r.image_sha256))) {
    return bad("has an invalid image hash");
  }
  return {};
}

void drop_reported_hops(AgentRecord& r, std::size_t n) {
  if (r.hops.empty()) return;
  n = std::min(n, r.hops.size() - 1);
  for (std::size_t i = 0; i < n; ++i) {
    const std::string& node = r.hops[i].node;
    if (std::find(r.visited.begin(), r.visited.end(), node) == r.visited.end()) r.visited.push_back(node);
  }
  r.hops.erase(r.hops.begin(), r.hops.begin() + static_cast<std::ptrdiff_t>(n));
  r.hops_reported += n;
}

void merge_hops(std::vector<AgentHop>& itinerary, const std::vector<AgentHop>& hops, std::uint64_t last_epoch) {
  for (const AgentHop& h : hops) {
    if (h.epoch > last_epoch) continue;
    auto at = std::lower_bound(itinerary.begin(), itinerary.end(), h.epoch,
                               [](const AgentHop& a, std::uint64_t epoch) { return a.epoch < epoch; });
    if (at != itinerary.end() && at->epoch == h.epoch) {
      *at = h;
    } else {
      itinerary.insert(at, h);
    }
  }
}

}  // namespace sojourn
